//! `ferry-lab up/down/status`: real Kubernetes 1.20.2 control planes (etcd, kube-apiserver,
//! kube-controller-manager with the lab CA as CSR signer, kube-scheduler) on 127.0.0.1, one lab kubelet
//! per cluster, and the lab network. Everything started is recorded, so `down` (and a failed `up`) stops
//! exactly that and leaves no process or namespace behind.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::layout::{ClusterLayout, LabLayout};
use crate::net;
use crate::node;
use crate::pki::{self, ClusterPki};
use crate::procs::{ProcessTable, Tracked};

/// Fails unless running as root, with the fix.
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} must run as root: the lab creates network namespaces and bridges; fix: run it as root (sudo {what})"
        );
    }
    Ok(())
}

pub use crate::state::{Lab, LabPaths, client_from, default_k8s_bin, default_root, env_name, env_root};

/// Checks every port of the layout is free on 127.0.0.1.
pub fn check_ports(layout: &LabLayout) -> Result<()> {
    for c in &layout.clusters {
        for (port, what) in c.ports.named() {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port 127.0.0.1:{port} ({what} of cluster {}) is already in use; fix: stop what holds it (ss -ltnp 'sport = :{port}') or move the lab with --base-port",
                    c.id
                );
            }
        }
    }
    Ok(())
}

/// Options of `up` besides the layout.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Root of all labs.
    pub root: PathBuf,
    /// Kubernetes binaries.
    pub k8s_bin: PathBuf,
    /// The ferry-lab binary (started as each cluster's lab kubelet).
    pub exe: PathBuf,
}

/// Brings a lab up. On any failure everything started so far is stopped again.
pub async fn up(layout: LabLayout, opts: UpOptions) -> Result<Lab> {
    require_root("ferry-lab up")?;
    let paths = LabPaths::new(&opts.root, &layout.name, &opts.k8s_bin);
    if paths.layout_file().exists() {
        let table = ProcessTable::new(paths.pids())?;
        if table.list().iter().any(Tracked::alive) {
            bail!(
                "lab {:?} is already up (ferry-lab status); fix: ferry-lab down --name {0} first, or pick another --name",
                layout.name
            );
        }
    }
    // leftovers of a lab that died without `down`
    teardown(&opts.root, &layout.name, &layout);
    for bin in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        if !opts.k8s_bin.join(bin).is_file() {
            bail!(
                "{bin} not found in {}; fix: run scripts/provision.sh (or make deps) to build Kubernetes 1.20.2 once",
                opts.k8s_bin.display()
            );
        }
    }
    if which("etcd").is_none() {
        bail!("etcd not found on PATH; fix: apt-get install etcd-server (or make deps)");
    }
    check_ports(&layout)?;
    let lab = Lab { layout, paths };
    match start(&lab, &opts).await {
        Ok(()) => Ok(lab),
        Err(e) => {
            teardown(&opts.root, &lab.layout.name, &lab.layout);
            Err(e)
        }
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn progress(msg: &str) {
    eprintln!("[ferry-lab] {msg}");
}

async fn start(lab: &Lab, opts: &UpOptions) -> Result<()> {
    let t0 = Instant::now();
    let (layout, paths) = (&lab.layout, &lab.paths);
    std::fs::create_dir_all(&paths.dir)?;
    std::fs::write(paths.layout_file(), serde_json::to_string_pretty(lab)?)?;
    let table = lab.processes()?;
    progress("creating the lab network (host, WAN namespaces)");
    net::create(layout)?;
    for c in &layout.clusters {
        let dir = paths.cluster_dir(c);
        std::fs::create_dir_all(dir.join("logs"))?;
        let first_service_ip = c
            .service_cidr
            .hosts()
            .next()
            .context("service CIDR has no hosts")?;
        let nodes: Vec<(String, IpAddr)> = (0..c.real_nodes)
            .map(|k| (c.real_node_name(k), c.real_node_ip(k)))
            .collect();
        // the apiserver is reached on the node network and, through the edge, at the cluster's WAN address
        let pki = ClusterPki::generate(&c.id, first_service_ip, &[c.control_plane_ip(), c.wan_ip], &nodes)?;
        pki.write(&dir.join("pki"))?;
        if c.real_nodes > 0 {
            progress(&format!(
                "{}: node network {} with {} real nodes",
                c.id,
                c.node_network(),
                c.real_nodes
            ));
            net::create_node_network(layout, c)?;
            for k in 0..c.real_nodes {
                net::add_real_node(
                    layout,
                    c,
                    k,
                    &crate::layout::real_node_netns(&layout.name, &c.id, k),
                )?;
                node::prepare(lab, c, k, &pki)?;
            }
        }
        let ctx = format!("{}-{}", layout.name, c.id);
        std::fs::write(
            paths.kubeconfig(c),
            pki::kubeconfig(&ctx, &c.apiserver_url(), &pki.ca.cert, &pki.admin),
        )?;
        let data = LabPaths::etcd_data(&layout.name, c);
        let _ = std::fs::remove_dir_all(&data);
        let peer = format!("http://127.0.0.1:{}", c.ports.etcd_peer);
        let client = format!("http://127.0.0.1:{}", c.ports.etcd_client);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &c.id, "--data-dir"]).arg(&data).args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("{}={peer}", c.id),
            "--log-level",
            "warn",
            "--logger",
            "zap",
            "--quota-backend-bytes",
            "8589934592",
        ]);
        progress(&format!(
            "{}: starting etcd on 127.0.0.1:{}",
            c.id, c.ports.etcd_client
        ));
        table.spawn(&format!("{}-etcd", c.id), cmd, &paths.log(c, "etcd"))?;
    }
    for c in &layout.clusters {
        wait_port(
            c.ports.etcd_client,
            Duration::from_secs(30),
            &paths.log(c, "etcd"),
            "etcd",
            &c.id,
        )?;
        let pki = paths.cluster_dir(c).join("pki");
        let p = |f: &str| pki.join(f).to_string_lossy().to_string();
        let mut cmd = Command::new(paths.k8s_bin.join("kube-apiserver"));
        cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{}", c.ports.etcd_client),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", c.ports.apiserver),
            "--insecure-port=0".into(),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-cluster-ip-range={}", c.service_cidr),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            format!("--kubelet-certificate-authority={}", p("ca.crt")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            format!(
                "--cert-dir={}",
                paths.cluster_dir(c).join("apiserver-certs").display()
            ),
            "--max-requests-inflight=1000".into(),
            "--max-mutating-requests-inflight=500".into(),
            format!("--profiling={}", profile_port().is_some()),
            "--v=1".into(),
        ]);
        progress(&format!(
            "{}: starting kube-apiserver 1.20.2 on https://127.0.0.1:{}",
            c.id, c.ports.apiserver
        ));
        table.spawn(&format!("{}-apiserver", c.id), cmd, &paths.log(c, "apiserver"))?;
    }
    for c in &layout.clusters {
        wait_apiserver(lab, c, &table).await?;
        let pki = paths.cluster_dir(c).join("pki");
        let p = |f: &str| pki.join(f).to_string_lossy().to_string();
        let kc = paths.kubeconfig(c).to_string_lossy().to_string();
        let mut cm = Command::new(paths.k8s_bin.join("kube-controller-manager"));
        cm.args([
            format!("--kubeconfig={kc}"),
            "--controllers=*,csrsigning".into(),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--use-service-account-credentials=false".into(),
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=2000".into(),
            "--concurrent-replicaset-syncs=10".into(),
            "--concurrent-deployment-syncs=10".into(),
            "--v=1".into(),
        ]);
        cm.args(kcm_port(c));
        table.spawn(
            &format!("{}-controllermanager", c.id),
            cm,
            &paths.log(c, "controller-manager"),
        )?;
        let mut sched = Command::new(paths.k8s_bin.join("kube-scheduler"));
        sched.args([
            format!("--kubeconfig={kc}"),
            "--leader-elect=false".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=2000".into(),
            "--v=1".into(),
        ]);
        table.spawn(&format!("{}-scheduler", c.id), sched, &paths.log(c, "scheduler"))?;
        let mut kubelet = Command::new(&opts.exe);
        kubelet
            .args(["kubelet", "--name", &layout.name, "--cluster", &c.id])
            .arg("--root")
            .arg(&opts.root);
        progress(&format!(
            "{}: starting kube-controller-manager, kube-scheduler and {} lab nodes",
            c.id, c.nodes
        ));
        table.spawn(&format!("{}-kubelet", c.id), kubelet, &paths.log(c, "kubelet"))?;
    }
    for c in &layout.clusters {
        wait_cluster_ready(lab, c, &table).await?;
    }
    if layout.clusters.iter().any(|c| c.real_nodes > 0) {
        start_real_nodes(lab, opts, &table).await?;
    }
    progress(&format!(
        "lab {:?} up in {:.1}s",
        layout.name,
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Real nodes: the cluster's services (apiserver front, DNS), RBAC for kube-proxy, the image archives, then
/// one `ferry-lab node` per node; waits until every real node is Ready.
async fn start_real_nodes(lab: &Lab, opts: &UpOptions, table: &ProcessTable) -> Result<()> {
    let t0 = Instant::now();
    let bins = opts.exe.parent().context("ferry-lab's directory")?;
    let t = Instant::now();
    node::write_images(lab, bins)?;
    progress(&format!(
        "images written (pause, busybox, {}) in {:.1}s",
        crate::image::FERRY_IMAGE,
        t.elapsed().as_secs_f64()
    ));
    for c in lab.layout.clusters.iter().filter(|c| c.real_nodes > 0) {
        let client = lab.client(c).await?;
        let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(
            serde_json::json!({
                "metadata": {"name": "ferry-lab:kube-proxy"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-proxy"}]
            }),
        )?;
        Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(client)
            .patch(
                "ferry-lab:kube-proxy",
                &kube::api::PatchParams::apply("ferry-lab").force(),
                &kube::api::Patch::Apply(&binding),
            )
            .await
            .context("binding system:kube-proxy to system:node-proxier")?;
        let mut svc = Command::new(&opts.exe);
        svc.args(["--name", &lab.layout.name])
            .arg("--root")
            .arg(&opts.root)
            .args(["services", "--cluster", &c.id]);
        table.spawn(&format!("{}-services", c.id), svc, &lab.paths.log(c, "services"))?;
        progress(&format!(
            "{}: starting {} real nodes (containerd, kubelet 1.20.2, kube-proxy)",
            c.id, c.real_nodes
        ));
        for k in 0..c.real_nodes {
            let cmd = node::command(lab, c, k, &opts.exe, &opts.root);
            let name = c.real_node_name(k);
            table.spawn(&format!("{}-{name}", c.id), cmd, &lab.paths.log(c, &name))?;
        }
    }
    for c in lab.layout.clusters.iter().filter(|c| c.real_nodes > 0) {
        let nodes: Api<Node> = Api::all(lab.client(c).await?);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for k in 0..c.real_nodes {
                let name = c.real_node_name(k);
                check_alive(table, &format!("{}-{name}", c.id), &lab.paths.log(c, &name))?;
            }
            check_alive(
                table,
                &format!("{}-services", c.id),
                &lab.paths.log(c, "services"),
            )?;
            let listed = nodes
                .list(&ListParams::default().labels(&format!(
                    "{}={}",
                    crate::kubelet::POOL_LABEL,
                    node::REAL_POOL
                )))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            // each registered node gets its pod subnet in spec.podCIDR(s), as a controller-manager that
            // allocates node CIDRs would write it (the lab's CNI config already uses that subnet)
            for n in listed
                .iter()
                .filter(|n| n.spec.as_ref().is_none_or(|s| s.pod_cidr.is_none()))
            {
                let name = n.metadata.name.clone().unwrap_or_default();
                if let Some(k) = (0..c.real_nodes).find(|k| c.real_node_name(*k) == name) {
                    let subnet = c.real_node_subnet(k)?.to_string();
                    nodes
                        .patch(
                            &name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(serde_json::json!({
                                "spec": {"podCIDR": subnet, "podCIDRs": [subnet]}})),
                        )
                        .await
                        .with_context(|| format!("setting spec.podCIDR of {name}"))?;
                }
            }
            let ready = listed.iter().filter(|n| node_ready(n)).count();
            if ready >= c.real_nodes as usize {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "real nodes of {} not Ready after 120s ({ready}/{}); logs in {}",
                    c.id,
                    c.real_nodes,
                    lab.paths.cluster_dir(c).join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    progress(&format!("real nodes Ready in {:.1}s", t0.elapsed().as_secs_f64()));
    Ok(())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n  ")
}

fn wait_port(port: u16, timeout: Duration, log: &Path, what: &str, cid: &str) -> Result<()> {
    crate::procs::wait_until(what, timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .with_context(|| {
        format!(
            "{what} of {cid} did not listen on {port}; its log ({}):\n  {}",
            log.display(),
            log_tail(log)
        )
    })?;
    Ok(())
}

fn check_alive(table: &ProcessTable, name: &str, log: &Path) -> Result<()> {
    if let Some(t) = table.list().into_iter().find(|t| t.name == name)
        && !t.alive()
    {
        bail!("{name} exited; its log ({}):\n  {}", log.display(), log_tail(log));
    }
    Ok(())
}

/// `FERRY_LAB_PROFILE_PORT=P`: the port base for the control planes' Go profiles while diagnosing, if set.
fn profile_port() -> Option<u32> {
    std::env::var("FERRY_LAB_PROFILE_PORT")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
}

/// kube-controller-manager's insecure port: none, unless `FERRY_LAB_PROFILE_PORT=P` asks for one on
/// 127.0.0.1 (cluster N's at P+N-1) to read its Go profiles while diagnosing (`go tool pprof
/// http://127.0.0.1:P/debug/pprof/profile`): Debian's binary is stripped, but Go's own profiles carry the
/// function names. The same variable turns the apiservers' `/debug/pprof` on (admin kubeconfig).
fn kcm_port(c: &ClusterLayout) -> Vec<String> {
    match profile_port() {
        Some(p) => vec![
            format!("--port={}", p + c.index - 1),
            "--address=127.0.0.1".into(),
        ],
        None => vec!["--port=0".into()],
    }
}

async fn wait_apiserver(lab: &Lab, c: &ClusterLayout, table: &ProcessTable) -> Result<()> {
    let log = lab.paths.log(c, "apiserver");
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = lab.client(c).await?;
    loop {
        check_alive(table, &format!("{}-apiserver", c.id), &log)?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        if let Ok(text) = client.request_text(req).await
            && text.trim() == "ok"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver of {} not ready after 90s; its log ({}):\n  {}",
                c.id,
                log.display(),
                log_tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_cluster_ready(lab: &Lab, c: &ClusterLayout, table: &ProcessTable) -> Result<()> {
    let client = lab.client(c).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (name, log) in [
            ("controllermanager", "controller-manager"),
            ("scheduler", "scheduler"),
            ("kubelet", "kubelet"),
        ] {
            check_alive(table, &format!("{}-{name}", c.id), &lab.paths.log(c, log))?;
        }
        let sa_ok = sas.get_opt("default").await.ok().flatten().is_some();
        let ready = nodes
            .list(&ListParams::default().labels("type=lab-node"))
            .await
            .map(|l| l.items.iter().filter(|n| node_ready(n)).count())
            .unwrap_or(0);
        if sa_ok && ready >= c.nodes as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "cluster {} not ready after 90s (default ServiceAccount: {sa_ok}, Ready lab nodes: {ready}/{}); logs in {}",
                c.id,
                c.nodes,
                lab.paths.cluster_dir(c).join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a Node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Stops every process of lab `name`, removes its namespaces, etcd data and directory. Returns what was
/// stopped and removed.
pub fn teardown(root: &Path, name: &str, layout: &LabLayout) -> (Vec<String>, Vec<String>) {
    let dir = root.join(name);
    let table = ProcessTable::new(dir.join("pids")).ok();
    let stopped: Vec<String> = table
        .as_ref()
        .map(|t| {
            t.list()
                .into_iter()
                .filter(Tracked::alive)
                .map(|t| t.name)
                .collect()
        })
        .unwrap_or_default();
    if let Some(t) = table {
        // real nodes stop together (each stops its kubelet, its pods' containers, then containerd)
        let nodes: Vec<Tracked> = t
            .list()
            .into_iter()
            .filter(|p| p.name.contains("-real-node-") && p.alive())
            .collect();
        for p in &nodes {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = crate::procs::wait_until("real nodes stopped", Duration::from_secs(15), || {
            nodes.iter().all(|p| !p.alive())
        });
        t.stop_all();
    }
    // what a killed node left: containers, shims, cgroups, mounts
    node::sweep(name, &dir);
    let removed = net::destroy(name);
    for c in &layout.clusters {
        let _ = std::fs::remove_dir_all(LabPaths::etcd_data(name, c));
    }
    let _ = std::fs::remove_dir_all(&dir);
    (stopped, removed)
}

/// `ferry-lab down`.
pub fn down(root: &Path, name: &str) -> Result<String> {
    require_root("ferry-lab down")?;
    let layout = match Lab::load(root, name) {
        Ok(lab) => lab.layout,
        Err(_) => LabLayout {
            name: name.into(),
            clusters: vec![],
            node_capacity: crate::layout::NodeCapacity {
                cpu: "0".into(),
                memory: "0".into(),
                pods: 0,
            },
            wan_mtu: 1500,
        },
    };
    let (stopped, removed) = teardown(root, name, &layout);
    Ok(if stopped.is_empty() && removed.is_empty() {
        format!("lab {name:?} is not up; nothing to stop")
    } else {
        format!(
            "lab {name:?} down: stopped {} processes, removed {} network namespaces",
            stopped.len(),
            removed.len()
        )
    })
}

/// One row of `ferry-lab status`.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// Cluster id.
    pub cluster: String,
    /// apiserver URL.
    pub apiserver: String,
    /// Kubeconfig path.
    pub kubeconfig: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Service CIDR.
    pub service_cidr: String,
    /// Processes and whether each runs.
    pub processes: Vec<(String, bool)>,
    /// Ready nodes / nodes.
    pub nodes: String,
    /// Running pods.
    pub running_pods: usize,
    /// The host's WAN address.
    pub wan_ip: IpAddr,
}

/// `ferry-lab status`.
pub async fn status(root: &Path, name: &str) -> Result<Vec<ClusterStatus>> {
    let lab = Lab::load(root, name)?;
    let procs = lab.processes()?.list();
    let mut out = Vec::new();
    for c in &lab.layout.clusters {
        let processes: Vec<(String, bool)> = procs
            .iter()
            .filter(|t| t.name.starts_with(&format!("{}-", c.id)))
            .map(|t| (t.name.clone(), t.alive()))
            .collect();
        let (nodes, running_pods) = match lab.client(c).await {
            Ok(client) => {
                let nodes = Api::<Node>::all(client.clone())
                    .list(&ListParams::default())
                    .await;
                let pods = Api::<k8s_openapi::api::core::v1::Pod>::all(client)
                    .list(&ListParams::default().fields("status.phase=Running"))
                    .await;
                match (nodes, pods) {
                    (Ok(n), Ok(p)) => (
                        format!(
                            "{}/{}",
                            n.items.iter().filter(|n| node_ready(n)).count(),
                            n.items.len()
                        ),
                        p.items.len(),
                    ),
                    _ => ("apiserver unreachable".into(), 0),
                }
            }
            Err(_) => ("apiserver unreachable".into(), 0),
        };
        out.push(ClusterStatus {
            cluster: c.id.clone(),
            apiserver: c.apiserver_url(),
            kubeconfig: lab.paths.kubeconfig(c).display().to_string(),
            pod_cidr: c.pod_cidr.to_string(),
            service_cidr: c.service_cidr.to_string(),
            processes,
            nodes,
            running_pods,
            wan_ip: c.wan_ip,
        });
    }
    Ok(out)
}

/// Polls `check` every 200 ms until it is true; panics after `secs` naming `what` (and the last error).
pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = format!(" (last error: {e:#})"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after {secs}s{last}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The IP of pod `ns/name` once it is Running (watched, up to 90 s).
pub async fn running_pod_ip(c: &Client, ns: &str, name: &str) -> Result<IpAddr> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), ns);
    let p = tokio::time::timeout(
        Duration::from_secs(90),
        kube::runtime::wait::await_condition(api, name, kube::runtime::conditions::is_pod_running()),
    )
    .await
    .with_context(|| format!("pod {ns}/{name} not Running after 90s"))??;
    let ip = p
        .and_then(|p| p.status?.pod_ip)
        .with_context(|| format!("pod {ns}/{name} Running without an IP"))?;
    ip.parse()
        .with_context(|| format!("pod {ns}/{name}: status.podIP {ip:?} is not an address"))
}

/// Namespace `ns` on `c`, new (an old one deleted and awaited first), with its default ServiceAccount and
/// that account's token.
pub async fn fresh_namespace(c: &Client, ns: &str) {
    use kube::api::{DeleteParams, PostParams};
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    let _ = nss.delete(ns, &DeleteParams::default()).await;
    eventually(&format!("old namespace {ns} gone"), 90, || async {
        Ok(nss.get_opt(ns).await?.is_none())
    })
    .await;
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    // the namespace's default ServiceAccount with its token (1.20 refuses pods until the token controller
    // added its Secret: "No API token found for service account")
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    eventually("default ServiceAccount with its token", 30, || async {
        Ok(sas
            .get_opt("default")
            .await?
            .is_some_and(|sa| sa.secrets.is_some_and(|s| !s.is_empty())))
    })
    .await;
}
