//! Lab e2e tests: they run against a lab that is up (`ferry-lab up`, as root; `make test` starts one named
//! by FERRY_LAB_NAME, default `ferry`) and prove the lab's clusters, nodes and network are real.
//! Compiled only with `--features lab`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_crds::{ForeignCluster, ForeignClusterStatus, PeeringRole};
use ferry_e2e::demo::{echo_from_pod, ensure_echo_deployment, pods_of};
use ferry_e2e::lab::{Lab, client_from};
use ferry_e2e::net;
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

fn root() -> PathBuf {
    ferry_e2e::lab::env_root()
}
fn name() -> String {
    ferry_e2e::lab::env_name()
}
fn lab() -> Lab {
    Lab::from_env()
}
fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry-lab"))
}

async fn fresh_namespace(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await.unwrap().is_some() {
        api.delete(ns, &DeleteParams::default()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get_opt(ns).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "namespace {ns} not deleted in 60s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn two_clusters_with_identical_pod_cidrs_run_deployments_and_pods_talk_tcp() {
    let lab = lab();
    assert!(lab.layout.clusters.len() >= 2, "the lab has two clusters");
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    assert_eq!(c1.pod_cidr, c2.pod_cidr, "pod CIDRs overlap on purpose");
    assert_eq!(c1.pod_cidr.to_string(), "10.244.0.0/16");
    for c in [c1, c2] {
        let client = lab.client(c).await.unwrap();
        fresh_namespace(&client, "t-deploy").await;
        ensure_echo_deployment(&client, "t-deploy", "web", 3)
            .await
            .unwrap();
        let pods = pods_of(&lab, &c.id, "t-deploy", "web").await.unwrap();
        assert_eq!(pods.len(), 3, "{pods:?}");
        for p in &pods {
            assert_eq!(p.phase, "Running");
            let ip: std::net::IpAddr = p.ip.parse().unwrap();
            assert!(c.pod_cidr.contains(&ip), "{ip} in {}", c.pod_cidr);
            assert!(
                net::netns_exists(&p.netns),
                "pod {} has a real network namespace",
                p.name
            );
            // the address really sits on the pod's eth0
            let addrs = net::ipn(&p.netns, &["-br", "addr", "show", "eth0"]).unwrap();
            assert!(addrs.contains(&p.ip), "{addrs}");
        }
    }
    // TCP between two pods of c1, across nodes when the scheduler spread them
    let pods = pods_of(&lab, &c1.id, "t-deploy", "web").await.unwrap();
    let a = &pods[0];
    let b = pods.iter().find(|p| p.node != a.node).unwrap_or(&pods[1]);
    let report = echo_from_pod(&exe(), a, SocketAddr::new(b.ip.parse().unwrap(), 8080), 4 << 20).unwrap();
    assert_eq!(report["ok"], json!(true), "{report}");
    assert_eq!(report["bytes"], json!(4 << 20));
    // and the connection is refused where no echo server listens: the check can fail
    let refused = echo_from_pod(&exe(), a, SocketAddr::new(b.ip.parse().unwrap(), 9), 1024);
    assert!(refused.is_err());
}

#[tokio::test]
async fn deleted_pod_is_terminated_gracefully_its_namespace_removed_and_replaced() {
    let lab = lab();
    let c = &lab.layout.clusters[1];
    let client = lab.client(c).await.unwrap();
    fresh_namespace(&client, "t-delete").await;
    ensure_echo_deployment(&client, "t-delete", "victim", 2)
        .await
        .unwrap();
    let before = pods_of(&lab, &c.id, "t-delete", "victim").await.unwrap();
    let gone = &before[0];
    assert!(net::netns_exists(&gone.netns));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "t-delete");
    pods.delete(&gone.name, &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let still = pods.get_opt(&gone.name).await.unwrap().is_some();
        if !still && !net::netns_exists(&gone.netns) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod {} or its namespace still there after 30s",
            gone.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "t-delete");
    ferry_e2e::bench::wait_ready(&deps, "victim", 2, Duration::from_secs(60))
        .await
        .unwrap();
    let after = pods_of(&lab, &c.id, "t-delete", "victim").await.unwrap();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| p.name != gone.name));
}

#[tokio::test]
async fn approved_client_csr_gets_a_certificate_that_authenticates() {
    let lab = lab();
    let c = &lab.layout.clusters[0];
    let client = lab.client(c).await.unwrap();
    let user = format!("ferry-csr-test-{}", std::process::id());
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user.clone());
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    use base64::Engine;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": { "name": user },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "usages": ["client auth"],
        }
    }))
    .unwrap();
    csrs.create(&PostParams::default(), &csr).await.unwrap();
    let approval = json!({ "status": { "conditions": [{
        "type": "Approved", "status": "True", "reason": "FerryLabTest", "message": "approved by the lab e2e test" }] } });
    csrs.patch_approval(&user, &PatchParams::default(), &Patch::Merge(&approval))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let cert_pem = loop {
        let got = csrs.get(&user).await.unwrap();
        if let Some(cert) = got.status.and_then(|s| s.certificate) {
            break String::from_utf8(cert.0).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "kube-controller-manager did not sign the CSR in 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ca = std::fs::read_to_string(lab.paths.cluster_dir(c).join("pki/ca.crt")).unwrap();
    let kc = ferry_e2e::pki::kubeconfig(
        "csr",
        &c.apiserver_url(),
        &ca,
        &ferry_e2e::pki::CertPem {
            cert: cert_pem,
            key: key.serialize_pem(),
        },
    );
    let path = std::env::temp_dir().join(format!("{user}.kubeconfig"));
    std::fs::write(&path, kc).unwrap();
    let as_user = client_from(&path).await.unwrap();
    // authenticated as the user (403 names it), not anonymous (401)
    let err = Api::<Pod>::namespaced(as_user.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains(&format!("User \"{user}\"")), "{}", e.message);
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // grant it view in default: now the same identity can list
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), "default");
    let rb = serde_json::from_value(json!({
        "metadata": { "name": user },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
    }))
    .unwrap();
    rbs.create(&PostParams::default(), &rb).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Api::<Pod>::namespaced(as_user.clone(), "default")
        .list(&ListParams::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "RoleBinding did not take effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rbs.delete(&user, &DeleteParams::default()).await.unwrap();
    csrs.delete(&user, &DeleteParams::default()).await.unwrap();
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn lease_crd_with_status_subresource_and_watch_work_from_kube_rs() {
    let lab = lab();
    let c = &lab.layout.clusters[0];
    let client = lab.client(c).await.unwrap();
    // Lease: create, renew, read back
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let name = format!("t-lease-{}", std::process::id());
    let lease: Lease = serde_json::from_value(json!({ "metadata": { "name": name },
        "spec": { "holderIdentity": "t", "leaseDurationSeconds": 10 } }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let renew =
        json!({ "spec": { "renewTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string() } });
    leases
        .patch(&name, &PatchParams::default(), &Patch::Merge(&renew))
        .await
        .unwrap();
    assert!(
        leases
            .get(&name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .renew_time
            .is_some()
    );
    leases.delete(&name, &DeleteParams::default()).await.unwrap();
    // lab nodes renew their Leases
    let node_lease = Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .get("lab-node-1")
        .await
        .unwrap();
    assert_eq!(
        node_lease.spec.unwrap().holder_identity.as_deref(),
        Some("lab-node-1")
    );

    // CRD with status subresource: ferry's own ForeignCluster (installed as ferry-agent installs it)
    ferry_peering_broker::identity::ensure_crds(&client)
        .await
        .unwrap();
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let fc_name = format!("t-fc-{}", std::process::id());
    let mut stream = watcher(fcs.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let fc = ForeignCluster::new(
        &fc_name,
        ferry_crds::ForeignClusterSpec {
            cluster_id: "abc".into(),
            role: PeeringRole::Provider,
            broker_url: None,
            token_secret: None,
            resources: None,
        },
    );
    fcs.create(&PostParams::default(), &fc).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = stream.next().await {
            if ev.unwrap().name_any() == fc_name {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch delivered the new ForeignCluster");
    // status goes through the subresource; the main resource ignores it
    let status = ForeignClusterStatus {
        conditions: vec![],
        last_error: Some("broker https://x:1 refused".into()),
    };
    fcs.patch_status(
        &fc_name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
    fcs.patch(
        &fc_name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "lastError": "overwritten?" } })),
    )
    .await
    .unwrap();
    let got = fcs.get(&fc_name).await.unwrap();
    assert_eq!(
        got.status.unwrap().last_error.as_deref(),
        Some("broker https://x:1 refused")
    );
    fcs.delete(&fc_name, &DeleteParams::default()).await.unwrap();
}

fn ferry_lab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(exe())
        .env("FERRY_LAB_ROOT", root())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn nothing_left(name: &str) {
    let left = net::netns_with_prefix(&format!("{name}-"));
    assert!(left.is_empty(), "stray namespaces of lab {name}: {left:?}");
    assert!(
        !root().join(name).exists(),
        "lab {name}'s directory is left behind"
    );
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("[ferry-lab]")).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    lines[0]
}

#[test]
fn bad_input_gives_one_line_with_the_fix_and_leaves_nothing_behind() {
    // a port in use: hold cluster 1's apiserver port (base + 12) of a base whose other ports (etcd's,
    // base + 10 and + 11) are free, so the error names the apiserver and not an unrelated holder
    let (holder, port) = (0..100)
        .find_map(|_| {
            let holder = TcpListener::bind("127.0.0.1:0").ok()?;
            let port = holder.local_addr().ok()?.port();
            let etcd_free = port > 1024
                && TcpListener::bind(("127.0.0.1", port - 2)).is_ok()
                && TcpListener::bind(("127.0.0.1", port - 1)).is_ok();
            etcd_free.then_some((holder, port))
        })
        .expect("no ephemeral port whose two ports below are free");
    let base = (port - 12).to_string(); // cluster 1's apiserver = base + 12
    let (ok, _, err) = ferry_lab(&["--name", "tport", "up", "--clusters", "1", "--base-port", &base]);
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains(&format!(
            "port 127.0.0.1:{port} (kube-apiserver of cluster c1) is already in use"
        )),
        "{line}"
    );
    assert!(line.contains("fix:"), "{line}");
    nothing_left("tport");
    drop(holder);

    // a pod CIDR that does not parse
    let (ok, _, err) = ferry_lab(&[
        "--name",
        "tcidr",
        "up",
        "--pod-cidr",
        "10.244.0.0/33",
        "--base-port",
        "25000",
    ]);
    assert!(!ok);
    let line = one_line(&err);
    assert!(
        line.contains("--pod-cidr \"10.244.0.0/33\" is not a CIDR") && line.contains("fix:"),
        "{line}"
    );
    nothing_left("tcidr");

    // not root
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe())
        .args(["--name", "troot", "up", "--base-port", "25100"])
        .env("FERRY_LAB_ROOT", std::env::temp_dir().join("ferry-lab-nonroot"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = one_line(&err);
    assert!(
        line.contains("must run as root") && line.contains("fix:"),
        "{line}"
    );
    nothing_left("troot");
}

/// An executable at `path` that prints `message` to stderr and exits 1 (a binary that refuses to start).
fn refusing_binary(path: &std::path::Path, message: &str) {
    std::fs::write(path, format!("#!/bin/sh\necho '{message}' >&2\nexit 1\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_control_plane_that_fails_midway_is_torn_down_completely() {
    // a kube-apiserver that refuses to start, after the network and etcd are already up
    let bin = std::env::temp_dir().join(format!("ferry-fake-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        refusing_binary(&bin.join(b), "fake apiserver: refusing to start");
    }
    let (ok, _, err) = ferry_lab(&[
        "--name",
        "tfail",
        "up",
        "--clusters",
        "1",
        "--base-port",
        "25200",
        "--k8s-bin",
        bin.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("c1-apiserver exited") && err.contains("fake apiserver: refusing to start"),
        "{err}"
    );
    nothing_left("tfail");
    // etcd of that lab is gone too: its port is free again
    assert!(
        TcpListener::bind("127.0.0.1:25210").is_ok(),
        "etcd of the failed lab still holds its port"
    );
    std::fs::remove_dir_all(bin).unwrap();
}

/// `down` stops exactly what `up` started, real nodes included: after a container ran, no containerd,
/// shim, kubelet or container process is left, no cgroup and no mount under the lab's directory.
#[tokio::test]
async fn down_stops_exactly_what_up_started() {
    let (ok, out, err) = ferry_lab(&[
        "--name",
        "tdown",
        "up",
        "--clusters",
        "1",
        "--nodes",
        "1",
        "--real-nodes",
        "1",
        "--base-port",
        "25300",
    ]);
    assert!(ok, "{out}{err}");
    let table = ferry_e2e::procs::ProcessTable::new(root().join("tdown/pids")).unwrap();
    let procs = table.list();
    // etcd, apiserver, controller-manager, scheduler, lab kubelet, services, one real node
    assert_eq!(procs.len(), 7, "{procs:?}");
    assert!(procs.iter().all(|p| p.alive()));
    assert!(!net::netns_with_prefix("tdown-").is_empty());
    // a container runs on the real node
    let tlab = Lab::load(&root(), "tdown").unwrap();
    let c = tlab.layout.clusters[0].clone();
    let client = tlab.client(&c).await.unwrap();
    let (mut dep, _) = ferry_e2e::workload::busybox_web("web", 1);
    dep.metadata.namespace = Some("default".into());
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, "default");
    deps.create(&PostParams::default(), &dep).await.unwrap();
    ferry_e2e::workload::wait_ready(&deps, "web", 1, Duration::from_secs(60))
        .await
        .unwrap();
    let lab_dir = root().join("tdown");
    let cgroup = std::path::Path::new("/sys/fs/cgroup/pids/ferry-lab-tdown");
    let mut containers = Vec::new();
    let mut stack = vec![cgroup.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            containers.extend(t.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(
        containers.len() >= 2,
        "pause and httpd run in the node's cgroups: {containers:?}"
    );
    let node_procs = ferry_e2e::node::processes_mentioning(&format!("{}/", lab_dir.display()));
    assert!(
        node_procs.len() >= 3,
        "containerd, shim, kubelet, kube-proxy: {node_procs:?}"
    );

    let (ok, out, _) = ferry_lab(&["--name", "tdown", "down"]);
    assert!(ok);
    assert!(out.contains("stopped 7 processes"), "{out}");
    assert!(procs.iter().all(|p| !p.alive()), "a process outlived down");
    // a killed process stays a zombie until its parent or init reaps it: count those that still run
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    let left: Vec<&i32> = containers
        .iter()
        .chain(&node_procs)
        .filter(|p| alive(p))
        .collect();
    assert!(
        left.is_empty(),
        "container, containerd, shim or kubelet processes left: {left:?}"
    );
    assert!(
        ferry_e2e::node::processes_mentioning(&format!("{}/", lab_dir.display())).is_empty(),
        "a process still names the lab's directory"
    );
    assert!(!cgroup.exists(), "the lab's cgroups are left");
    assert!(
        ferry_e2e::node::mounts_under(&lab_dir).is_empty(),
        "mounts left under {}",
        lab_dir.display()
    );
    nothing_left("tdown");
    // the main lab is untouched
    let (ok, out, err) = ferry_lab(&["--name", &name(), "status", "-o", "json"]);
    assert!(ok, "{err}");
    assert!(!out.contains("false"), "a process of the main lab died: {out}");
}

/// A real node that fails midway (its kubelet exits at once) fails `up` with the node's log, and takes
/// everything down: containerd, the other processes, the namespaces, cgroups and mounts.
#[test]
fn a_real_node_that_fails_midway_is_torn_down_completely() {
    let real = ferry_e2e::lab::default_k8s_bin();
    let bin = std::env::temp_dir().join(format!("ferry-fake-kubelet-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "pause",
    ] {
        std::os::unix::fs::symlink(real.join(b), bin.join(b)).unwrap();
    }
    refusing_binary(&bin.join("kubelet"), "fake kubelet: refusing to start");
    let (ok, _, err) = ferry_lab(&[
        "--name",
        "tnode",
        "up",
        "--clusters",
        "1",
        "--nodes",
        "1",
        "--real-nodes",
        "1",
        "--base-port",
        "25400",
        "--k8s-bin",
        bin.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("c1-real-node-1 exited") && err.contains("kubelet of real-node-1 exited"),
        "{err}"
    );
    nothing_left("tnode");
    let dir = root().join("tnode");
    assert!(ferry_e2e::node::processes_mentioning(&format!("{}/", dir.display())).is_empty());
    assert!(!std::path::Path::new("/sys/fs/cgroup/pids/ferry-lab-tnode").exists());
    assert!(ferry_e2e::node::mounts_under(&dir).is_empty());
    std::fs::remove_dir_all(bin).unwrap();
}

#[test]
fn bench_pods_prints_json_as_its_last_line() {
    let count = std::env::var("FERRY_BENCH_PODS").unwrap_or_else(|_| "1000".into());
    let (ok, out, err) = ferry_lab(&[
        "--name",
        &name(),
        "bench",
        "pods",
        "--count",
        &count,
        "--cluster",
        "c2",
    ]);
    assert!(ok, "{err}");
    let last = out.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["count"].to_string(), count);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    eprintln!("bench pods: {last}");
}

#[tokio::test]
async fn every_ferry_crd_installs_on_the_lab_apiserver_and_serves_objects_and_status() {
    use ferry_crds::common::{ObjectRef, PackedJson, ResourceAmounts};
    use ferry_crds::kinds::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let lab = lab();
    let c = &lab.layout.clusters[1];
    let client = lab.client(c).await.unwrap();
    // every CRD is accepted and Established by the 1.20 apiserver (ensure_crds fails naming the CRD otherwise)
    ferry_peering_broker::identity::ensure_crds(&client)
        .await
        .unwrap();
    let ns = "t-crds";
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap(),
        )
        .await;
    let pp = PostParams::default();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let t = Tenant::new(
        "t-consumer",
        TenantSpec {
            cluster_id: "consumer-1".into(),
            public_key_fingerprint: "ab".repeat(32),
            tenant_namespace: "ferry-tenant-consumer-1".into(),
            cordoned: false,
            policy: Default::default(),
            user: None,
        },
    );
    let _ = tenants.delete("t-consumer", &DeleteParams::default()).await;
    tenants.create(&pp, &t).await.unwrap();
    // schema validation is enforced by the apiserver: a cluster ID that is not a DNS label is refused
    let mut bad = t.clone();
    bad.metadata.name = Some("t-bad".into());
    bad.spec.cluster_id = "Not_A_Label".into();
    let err = tenants.create(&pp, &bad).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 422), "{err:?}");

    let slices: Api<ResourceSlice> = Api::namespaced(client.clone(), ns);
    let s = ResourceSlice::new(
        "s1",
        ResourceSliceSpec {
            provider_cluster_id: "p".into(),
            consumer_cluster_id: "c".into(),
            resources: ResourceAmounts {
                cpu: Some(Quantity("4".into())),
                memory: Some(Quantity("8Gi".into())),
                ..Default::default()
            },
        },
    );
    let _ = slices.delete("s1", &DeleteParams::default()).await;
    slices.create(&pp, &s).await.unwrap();
    let status = json!({ "status": { "phase": "Partial", "granted": { "cpu": "2" }, "reason": "quota" } });
    slices
        .patch_status("s1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let got = slices.get("s1").await.unwrap().status.unwrap();
    assert_eq!(got.phase, Some(SlicePhase::Partial));
    assert_eq!(got.granted.unwrap().cpu, Some(Quantity("2".into())));

    let vns: Api<VirtualNode> = Api::namespaced(client.clone(), ns);
    let _ = vns.delete("v1", &DeleteParams::default()).await;
    vns.create(
        &pp,
        &VirtualNode::new(
            "v1",
            VirtualNodeSpec {
                cluster_id: "p".into(),
                resource_slice: ObjectRef {
                    name: "s1".into(),
                    namespace: Some(ns.into()),
                },
                node_name: None,
                labels: Default::default(),
            },
        ),
    )
    .await
    .unwrap();
    let offs: Api<NamespaceOffloading> = Api::namespaced(client.clone(), ns);
    let _ = offs.delete("offloading", &DeleteParams::default()).await;
    offs.create(
        &pp,
        &NamespaceOffloading::new(
            "offloading",
            NamespaceOffloadingSpec {
                pod_offloading_strategy: PodOffloadingStrategy::Remote,
                cluster_selector: Default::default(),
                namespace_mapping_strategy: Default::default(),
            },
        ),
    )
    .await
    .unwrap();
    // an enum value outside the schema is refused
    let bad_off = json!({ "apiVersion": "ferry.dev/v1alpha1", "kind": "NamespaceOffloading", "metadata": { "name": "bad" }, "spec": { "podOffloadingStrategy": "Everywhere" } });
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::erase::<NamespaceOffloading>(&()),
    );
    let err = dynamic
        .create(&pp, &serde_json::from_value(bad_off).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 422),
        "unknown strategy accepted: {err:?}"
    );

    let shadows: Api<ShadowPod> = Api::namespaced(client.clone(), ns);
    let _ = shadows.delete("sp1", &DeleteParams::default()).await;
    let template = json!({ "metadata": { "labels": { "app": "x" } }, "spec": { "containers": [{ "name": "a", "image": "i", "futureField": 1 }] } });
    shadows
        .create(
            &pp,
            &ShadowPod::new(
                "sp1",
                ShadowPodSpec {
                    consumer_cluster_id: "c".into(),
                    consumer_pod_uid: "u".into(),
                    template: PackedJson::from(&template),
                },
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        shadows
            .get("sp1")
            .await
            .unwrap()
            .spec
            .template
            .parse::<serde_json::Value>()
            .unwrap(),
        template,
        "the embedded pod template is kept whole"
    );

    let pns: Api<PeerNetwork> = Api::all(client.clone());
    let _ = pns.delete("p", &DeleteParams::default()).await;
    pns.create(
        &pp,
        &PeerNetwork::new(
            "p",
            PeerNetworkSpec {
                cluster_id: "p".into(),
                local_cidrs: vec!["10.244.0.0/16".into()],
                remote_cidrs: vec!["10.244.0.0/16".into()],
                peer_public_key: "k".into(),
                peer_endpoint: None,
                underlay_mtu: None,
                tunnel_address: Some("169.254.64.1/30".into()),
                peer_tunnel_address: Some("169.254.64.2".into()),
                listen_port: Some(51820),
                peer_standby_endpoints: vec![],
            },
        ),
    )
    .await
    .unwrap();
    let st = json!({ "status": { "phase": "Connected", "tunnelMTU": 1440, "remaps": { "10.244.0.0/16": "10.0.0.0/16" } } });
    pns.patch_status("p", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(pns.get("p").await.unwrap().status.unwrap().tunnel_mtu, Some(1440));
    tenants
        .delete("t-consumer", &DeleteParams::default())
        .await
        .unwrap();
    pns.delete("p", &DeleteParams::default()).await.unwrap();
}

#[test]
fn ferryctl_works_as_the_kubectl_plugin_kubectl_ferry() {
    // kubectl finds plugins as `kubectl-<name>` on PATH; `make build` links kubectl-ferry to ferryctl
    let dir = std::env::temp_dir().join(format!("ferry-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ferryctl = ferry_e2e::tunnel::gateway_bin().with_file_name("ferryctl");
    let link = dir.join("kubectl-ferry");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&ferryctl, &link).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("kubectl")
        .args(["ferry", "mtu", "--underlay", "1500", "--stack", "vxlan,wireguard"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().next(), Some("1390"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// The parts a real lab node is made of (issue: real nodes), provisioned by `scripts/provision.sh`:
/// kubelet and kube-proxy 1.20.2 from the same source as the control plane, a static pause binary, and
/// Debian's containerd 1.6, runc, CNI plugins, iptables and a static busybox. Not yet a node: this checks
/// only that the parts are there and are what they claim.
#[test]
fn real_node_parts_are_provisioned_kubelet_kube_proxy_static_pause_and_debians_runtime() {
    let k8s = ferry_e2e::lab::default_k8s_bin();
    for b in ["kubelet", "kube-proxy"] {
        let out = Command::new(k8s.join(b)).arg("--version").output().unwrap();
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.contains("Kubernetes v1.20.2"), "{b} --version: {v}");
    }
    // the pause image and the workload image hold one binary each: it must need no shared library
    for bin in [k8s.join("pause"), PathBuf::from("/bin/busybox")] {
        let out = Command::new("ldd").arg(&bin).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("not a dynamic executable") || text.contains("statically linked"),
            "{}: {text}",
            bin.display()
        );
    }
    // pause waits for a signal and exits on it, as a pod's infra container must
    let mut pause = Command::new(k8s.join("pause")).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(pause.try_wait().unwrap().is_none(), "pause exited on its own");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pause.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pause.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pause ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = Command::new("containerd").arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(" 1.6."), "{v:?}");
    assert!(
        Command::new("runc")
            .arg("--version")
            .output()
            .unwrap()
            .status
            .success()
    );
    assert!(
        Command::new("iptables")
            .arg("--version")
            .output()
            .unwrap()
            .status
            .success()
    );
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        assert!(
            PathBuf::from("/usr/lib/cni").join(plugin).is_file(),
            "CNI plugin {plugin} missing from /usr/lib/cni"
        );
    }
}

/// Images without a registry: the lab's own OCI archives import into a private containerd (its own
/// root, state and socket under the lab's directory) and run with runc; nothing is pulled.
#[test]
fn the_labs_own_images_import_into_a_private_containerd_and_run_with_no_registry() {
    use ferry_e2e::image;
    let dir = root().join(format!("containerd-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    // no CRI plugin here (the kubelet's comes with the real nodes); nothing from /etc/containerd
    std::fs::write(
        &config,
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .unwrap();
    struct Stop(std::process::Child, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            // a container's rootfs mount may outlive a failed run: unmount before removing
            if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
                for line in m.lines().filter(|l| l.contains(&*self.1.to_string_lossy())) {
                    if let Some(p) = line.split_whitespace().nth(1) {
                        let _ = Command::new("umount").arg("-l").arg(p).status();
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _stop = Stop(
        Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--address")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap(),
        dir.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let k8s = ferry_e2e::lab::default_k8s_bin();
    for (name, archive) in [
        (
            image::WORKLOAD_IMAGE,
            image::workload(std::path::Path::new("/bin/busybox")).unwrap(),
        ),
        (image::PAUSE_IMAGE, image::pause(&k8s.join("pause")).unwrap()),
    ] {
        let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&file, archive).unwrap();
        let (ok, out) = ctr(&["images", "import", &file.to_string_lossy()]);
        assert!(ok, "import {name}: {out}");
    }
    let (ok, out) = ctr(&["images", "ls", "-q"]);
    assert!(
        ok && out.contains(image::WORKLOAD_IMAGE) && out.contains(image::PAUSE_IMAGE),
        "{out}"
    );
    let (ok, out) = ctr(&[
        "run",
        "--rm",
        image::WORKLOAD_IMAGE,
        "ferry-lab-test",
        "/bin/sh",
        "-c",
        "echo from-busybox-$((6*7)); ls /bin/httpd",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("from-busybox-42") && out.contains("/bin/httpd"),
        "{out}"
    );
}

/// Real nodes (issue 14), on both clusters: a busybox Deployment reaches Ready with one pod on each real
/// node; `kubectl logs`, `exec` and `port-forward` work through the apiserver and the kubelets; the
/// ClusterIP Service answers a pod on one node from the pod on the other (kube-proxy, host-gw routes);
/// `nslookup` of a cluster.local name answers from the lab's resolver, and a name outside the cluster's
/// zones is refused (no upstream, no loop).
#[tokio::test]
async fn real_nodes_run_containers_with_logs_exec_port_forward_cluster_ip_and_dns() {
    use ferry_e2e::workload::{busybox_web, kubectl, wait_ready};
    let lab = lab();
    const NS: &str = "t-real";
    for cid in ["c1", "c2"] {
        let c = lab.cluster(cid).unwrap().clone();
        assert!(
            c.real_nodes >= 2,
            "{cid}: the lab needs --real-nodes 2 (make test passes it)"
        );
        let client = lab.client(&c).await.unwrap();
        ferry_e2e::lab::fresh_namespace(&client, NS).await;
        let (dep, svc) = busybox_web("web", 2);
        let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), NS);
        deps.create(&PostParams::default(), &dep).await.unwrap();
        let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), NS);
        let svc = svcs.create(&PostParams::default(), &svc).await.unwrap();
        let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
        let secs = wait_ready(&deps, "web", 2, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{cid}: {e:#}"));
        eprintln!("{cid}: busybox Deployment Ready on real nodes in {secs:.1}s");
        let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        let nodes: std::collections::BTreeSet<String> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        assert_eq!(
            nodes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["real-node-1", "real-node-2"],
            "{cid}: one pod per real node"
        );
        let (a, b) = (pods[0].name_any(), pods[1].name_any());
        let k = |args: &[&str]| kubectl(&lab, &c, &[&["-n", NS][..], args].concat());

        // exec: a shell runs inside the container
        let (ok, out, err) = k(&["exec", &a, "--", "sh", "-c", "echo $((6*7)) $(hostname)"]);
        assert!(ok, "{cid}: kubectl exec: {err}");
        assert_eq!(out.trim(), format!("42 {a}"), "{cid}");

        // the ClusterIP from pod a reaches pod b on the other node (kube-proxy picks; ask until b answers)
        let (ok, out, err) = k(&[
            "exec",
            &a,
            "--",
            "sh",
            "-c",
            // kube-proxy programs a new endpoint within its sync period: ask for up to 20 s, each try
            // bounded (a connection begun before the rules exist keeps its SYNs on an entry without them)
            &format!(
                "for i in $(seq 1 100); do r=$(timeout 5 wget -qO- http://{cluster_ip}/); echo \"$r\"; [ \"$r\" = {b} ] && break; sleep 0.2; done"
            ),
        ]);
        assert!(ok, "{cid}: wget of the ClusterIP from {a}: {err}");
        assert!(
            out.lines().any(|l| l == b),
            "{cid}: pod {b} on the other node never answered the ClusterIP {cluster_ip}: {out}"
        );

        // logs: b's httpd logged those requests
        let (ok, out, err) = k(&["logs", &b]);
        assert!(ok, "{cid}: kubectl logs: {err}");
        assert!(
            out.contains("url:/") && out.contains("response:200"),
            "{cid}: logs of {b}: {out}"
        );

        // DNS: the Service's name resolves to its ClusterIP; a name outside the zones is refused
        let (ok, out, err) = k(&[
            "exec",
            &a,
            "--",
            "nslookup",
            &format!("web.{NS}.svc.cluster.local"),
        ]);
        assert!(ok, "{cid}: nslookup: {out}{err}");
        assert!(out.contains(&format!("Address: {cluster_ip}")), "{cid}: {out}");
        let (_, out, err) = k(&["exec", &a, "--", "nslookup", "example.com"]);
        assert!(
            out.contains("REFUSED") || err.contains("REFUSED"),
            "{cid}: {out}{err}"
        );

        // port-forward: a local port reaches pod a's container port through the kubelet
        let mut pf = Command::new("kubectl")
            .env("KUBECONFIG", lab.paths.kubeconfig(&c))
            .args(["-n", NS, "port-forward", &format!("pod/{a}"), ":8080"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        // kept open until the end: kubectl writes a line per connection and must not get EPIPE
        let mut pf_out = std::io::BufReader::new(pf.stdout.take().unwrap());
        pf_out.read_line(&mut line).unwrap();
        // "Forwarding from 127.0.0.1:41235 -> 8080"
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{cid}: port-forward said {line:?}"));
        let body = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            // port-forward may keep the local connection open after the pod closes: read until the body
            let (mut r, mut buf) = (Vec::new(), [0u8; 4096]);
            while !String::from_utf8_lossy(&r).trim_end().ends_with(&a) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => r.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&r).into_owned()
        };
        let _ = pf.kill();
        let _ = pf.wait();
        drop(pf_out);
        assert!(
            body.starts_with("HTTP/1.") && body.trim_end().ends_with(&a),
            "{cid}: {body}"
        );
        // ferry's own image is in every real node's containerd: its binaries run there
        let ferry_pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "ferry-version"},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"lab.ferry.dev/pool": "real"},
                "tolerations": [{"key": "lab.ferry.dev/real-node", "operator": "Exists"}],
                "containers": [{"name": "ferryctl", "image": ferry_e2e::image::FERRY_IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["/usr/bin/ferryctl", "--version"]}]
            }
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        pods.create(&PostParams::default(), &ferry_pod).await.unwrap();
        ferry_e2e::lab::eventually(
            &format!("{cid}: ferryctl --version in ferry's image"),
            60,
            || async {
                let p = pods.get("ferry-version").await?;
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                anyhow::ensure!(phase != "Failed", "the pod failed");
                Ok(phase == "Succeeded")
            },
        )
        .await;
        let (ok, out, err) = k(&["logs", "ferry-version"]);
        assert!(ok && out.starts_with("ferryctl "), "{cid}: {out}{err}");
        Api::<Namespace>::all(client)
            .delete(NS, &DeleteParams::default())
            .await
            .unwrap();
    }
}
