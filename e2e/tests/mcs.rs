//! Multi-cluster services e2e on the lab: ferry-agents peered (c1 consumer, c2 provider, both pod CIDRs
//! 10.244.0.0/16), ferry-gateway building the tunnel from the peering, and ferry-dns in each cluster's host
//! namespace, which every pod reaches at its default gateway (where a cluster's CoreDNS would forward
//! `clusterset.local`). Pods resolve names with `dig` and fetch with `curl` from their own network
//! namespace. Compiled only with `--features lab`; needs a running lab (`make test` starts one).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_crds::mcs::{ServiceExport, ServiceImport};
use ferry_e2e::agents;
use ferry_e2e::demo::{ensure_echo_deployment, pods_of};
use ferry_e2e::lab::Lab;
use ferry_e2e::mcs::{curl, resolve};
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const NS: &str = "t-mcs";

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

async fn service(c: &Client, name: &str, port: i32, port_name: &str) {
    let api: Api<Service> = Api::namespaced(c.clone(), NS);
    let _ = api.delete(name, &DeleteParams::default()).await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": NS },
        "spec": { "clusterIP": "None", "selector": { "app": "echo" },
                  "ports": [{ "name": port_name, "port": port, "targetPort": 8080 }] }
    }))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
}

async fn export(c: &Client, name: &str) {
    let api: Api<ServiceExport> = Api::namespaced(c.clone(), NS);
    match api
        .create(&PostParams::default(), &ServiceExport::new(NS, name))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceExport {NS}/{name}: {e}"),
    }
}

async fn unexport(c: &Client, name: &str) {
    let api: Api<ServiceExport> = Api::namespaced(c.clone(), NS);
    let _ = api.delete(name, &DeleteParams::default()).await;
}

async fn condition(c: &Client, name: &str, t: &str) -> Option<String> {
    let api: Api<ServiceExport> = Api::namespaced(c.clone(), NS);
    let se = api.get_opt(name).await.ok()??;
    se.status?
        .conditions
        .into_iter()
        .find(|x| x.type_ == t)
        .map(|x| x.status)
}

struct Peered {
    _procs: Vec<agents::HostProcess>,
    _agents: Vec<agents::Agent>,
    lab: Lab,
}

impl Drop for Peered {
    fn drop(&mut self) {
        // while the agents still run, so the offloading's finalizer removes the namespace's webhook label
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.lab.paths.kubeconfig(&self.lab.layout.clusters[0]))
            .args([
                "-n",
                NS,
                "delete",
                "namespaceoffloadings.ferry.dev",
                "offloading",
                "--wait=true",
                "--timeout=30s",
            ])
            .output();
        let _ = agents::ferryctl(
            &self.lab.paths.kubeconfig(&self.lab.layout.clusters[0]),
            &["unpeer", "provider-c2"],
        );
    }
}

fn peered(lab: &Lab) -> Peered {
    // the consumer sends its pods' statuses in ticks (the default, said here because the metrics test
    // below counts them going through the writer)
    let ags = vec![
        agents::start(lab, 0, &["--status-tick-ms", "250"]).unwrap(),
        agents::start(lab, 1, &[]).unwrap(),
    ];
    let _ = agents::ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[0]),
        &["unpeer", "provider-c2"],
    );
    let procs = vec![
        agents::start_gateway(lab, 0).unwrap(),
        agents::start_gateway(lab, 1).unwrap(),
        agents::start_dns(lab, 0).unwrap(),
        agents::start_dns(lab, 1).unwrap(),
    ];
    agents::peer(lab, &[]).unwrap();
    // a consumer exports services of namespaces it offloaded, and of no other (the provider refuses the
    // rest); Local keeps this test's c1 pods on c1
    let (ok, _, err) = agents::ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[0]),
        &["offload", "namespace", NS, "--strategy", "Local"],
    );
    assert!(ok, "ferryctl offload namespace {NS}: {err}");
    Peered {
        _procs: procs,
        _agents: ags,
        lab: lab.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exported_service_answers_by_its_clusterset_name_across_overlapping_cidrs_and_follows_its_exports()
{
    let _g = SERIAL.lock().await;
    let lab = Lab::from_env();
    let (c1, c2) = (
        lab.client(&lab.layout.clusters[0]).await.unwrap(),
        lab.client(&lab.layout.clusters[1]).await.unwrap(),
    );
    for (c, id) in [(&c1, "c1"), (&c2, "c2")] {
        ensure_echo_deployment(c, NS, "echo", 2).await.unwrap();
        service(c, "echo", 8080, "http").await;
        unexport(c, "echo").await;
        unexport(c, "conf").await;
        let _ = id;
    }
    let mut p = tokio::task::block_in_place(|| peered(&lab));
    let a = pods_of(&lab, "c1", NS, "echo").await.unwrap();
    let b = pods_of(&lab, "c2", NS, "echo").await.unwrap();
    let client = a[0].clone();
    let b_names: BTreeSet<String> = b.iter().map(|p| format!("{NS}/{}", p.name)).collect();
    let a_names: BTreeSet<String> = a.iter().map(|p| format!("{NS}/{}", p.name)).collect();
    let name = format!("echo.{NS}.svc.clusterset.local");

    // export from c2 only: c1 gets a ServiceImport and its pods resolve c2's pods at their remapped IPs
    export(&c2, "echo").await;
    let imports: Api<ServiceImport> = Api::namespaced(c1.clone(), NS);
    let t0 = Instant::now();
    let b_ips = tokio::task::block_in_place(|| {
        let mut got;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            got = resolve(&client, &name);
            if got.len() == 2 {
                break;
            }
            if Instant::now() > deadline {
                let state = |k: &std::path::Path, what: &str| {
                    let o = Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(k)
                        .args(["-n", NS, "get", what, "-o", "yaml"])
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&o.stdout).to_string()
                };
                panic!(
                    "c1 does not resolve c2's two echo pods after 30s (got {got:?}); c2 exports:\n{}\nc1 imports:\n{}",
                    state(&lab.paths.kubeconfig(&lab.layout.clusters[1]), "serviceexports"),
                    state(&lab.paths.kubeconfig(&lab.layout.clusters[0]), "serviceimports"),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        got
    });
    eprintln!(
        "export in c2 -> name resolves in c1 after {:?}: {b_ips:?}",
        t0.elapsed()
    );
    for ip in &b_ips {
        assert!(
            ip.starts_with("10.0."),
            "c2's 10.244/16 pods are seen at the remap 10.0/16: {ip}"
        );
    }
    // doctor, run on c1's host (as on a node), asks ferry-dns an imported name live and compares the
    // answer with what the imports say; with ferry-dns stopped, the dns check fails and says what to do
    let dns_check = |lab: &Lab| -> (bool, serde_json::Value) {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.layout.host_netns(&lab.layout.clusters[0])])
            .arg(agents::bin("ferryctl"))
            .arg("--kubeconfig")
            .arg(lab.paths.kubeconfig(&lab.layout.clusters[0]))
            .args(["doctor", "-o", "json", "--dns-server", "127.0.0.1:53"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "dns")
            .cloned()
            .unwrap();
        (out.status.success(), c)
    };
    let (_, c) = tokio::task::block_in_place(|| dns_check(&lab));
    let e = c["evidence"].as_str().unwrap();
    assert_ne!(c["level"], "fail", "{c}");
    let live = format!("live: ferry-dns at 127.0.0.1:53 answers {name}. with ");
    assert!(e.contains(&live) && e.contains("as its imports say"), "{c}");
    for ip in &b_ips {
        assert!(e.contains(ip.as_str()), "the live answer has c2's {ip}: {c}");
    }
    eprintln!("doctor, live: {e}");
    p._procs[2].stop();
    let (ok, c) = tokio::task::block_in_place(|| dns_check(&lab));
    assert!(!ok, "a failed dns check makes doctor exit non-zero: {c}");
    assert_eq!(c["level"], "fail", "{c}");
    assert!(
        c["evidence"].as_str().unwrap().contains(&format!(
            "live: ferry-dns at 127.0.0.1:53 does not answer {name}."
        )),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("listens at 127.0.0.1:53"),
        "{c}"
    );
    eprintln!("doctor, ferry-dns stopped: {} | {}", c["evidence"], c["fix"]);
    p._procs[2] = tokio::task::block_in_place(|| agents::start_dns(&lab, 0)).unwrap();
    // answering SOA comes before the first zone build: wait for the name again
    tokio::task::block_in_place(|| {
        wait_for(
            "ferry-dns restarted with its zone",
            Duration::from_secs(15),
            || resolve(&client, &name).len() == 2,
        )
    });

    let si = imports.get("echo").await.unwrap();
    assert_eq!(si.spec.type_, ferry_crds::mcs::ServiceImportType::Headless);
    assert_eq!(si.spec.ports[0].port, 8080);
    let clusters: Vec<String> = si
        .status
        .unwrap()
        .clusters
        .into_iter()
        .map(|c| c.cluster)
        .collect();
    assert_eq!(clusters, ["provider-c2"]);
    assert_eq!(condition(&c2, "echo", "Valid").await.as_deref(), Some("True"));
    // SRV for the named port, from the pod too
    let srv = tokio::task::block_in_place(|| {
        let gw = ferry_e2e::mcs::gateway_of(&client).unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.netns,
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .arg(format!("@{gw}"))
            .args([&format!("_http._tcp.{name}"), "SRV"])
            .output()
            .unwrap()
    });
    assert_eq!(
        String::from_utf8_lossy(&srv.stdout).trim(),
        format!("0 100 8080 {name}."),
        "SRV of the named port"
    );
    // an HTTP answer by name, from a c2 pod, through the tunnel
    let body =
        tokio::task::block_in_place(|| curl(&client, &format!("http://{name}:8080/"))).expect("HTTP answer");
    assert!(
        b_names.contains(body["pod"].as_str().unwrap()),
        "answered by a c2 pod: {body}"
    );

    // export the same service from c1 too: both sets of endpoints answer
    export(&c1, "echo").await;
    let a_ips: BTreeSet<String> = a.iter().map(|p| p.ip.clone()).collect();
    tokio::task::block_in_place(|| {
        wait_for("both clusters' endpoints", Duration::from_secs(15), || {
            resolve(&client, &name).len() == 4
        })
    });
    let all = tokio::task::block_in_place(|| resolve(&client, &name));
    assert!(
        a_ips.iter().all(|ip| all.contains(ip)),
        "{all:?} has c1's {a_ips:?}"
    );
    let mut answered = BTreeSet::new();
    for ip in &all {
        let body =
            tokio::task::block_in_place(|| curl(&client, &format!("http://{ip}:8080/"))).expect("HTTP");
        let pod = body["pod"].as_str().unwrap().to_string();
        answered.insert(if a_names.contains(&pod) {
            "c1"
        } else if b_names.contains(&pod) {
            "c2"
        } else {
            "?"
        });
    }
    assert_eq!(answered, BTreeSet::from(["c1", "c2"]));

    // remove c2's export: its endpoints disappear within 5 s
    unexport(&c2, "echo").await;
    let gone = tokio::task::block_in_place(|| {
        wait_for("c2's endpoints gone", Duration::from_secs(5), || {
            let now = resolve(&client, &name);
            now.len() == 2 && now.iter().all(|ip| a_ips.contains(ip))
        })
    });
    eprintln!("unexport in c2 -> its endpoints gone from c1's answers after {gone:?}");

    // conflicting ports: c2 exports `conf` first on 8080, c1 later on 9090 -> Conflict on c1, c2's import kept
    service(&c2, "conf", 8080, "http").await;
    service(&c1, "conf", 9090, "http").await;
    export(&c2, "conf").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    export(&c1, "conf").await;
    let t0 = Instant::now();
    loop {
        if condition(&c1, "conf", "Conflict").await.as_deref() == Some("True") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no Conflict condition on c1's export"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(condition(&c2, "conf", "Conflict").await.as_deref(), Some("False"));
    let si = imports.get("conf").await.unwrap();
    assert_eq!(
        si.spec.ports[0].port, 8080,
        "the oldest export (c2) defines the ports"
    );
    let clusters: Vec<String> = si
        .status
        .unwrap()
        .clusters
        .into_iter()
        .map(|c| c.cluster)
        .collect();
    assert_eq!(clusters, ["provider-c2"], "no broken import: only c2's endpoints");
    let conf = tokio::task::block_in_place(|| resolve(&client, &format!("conf.{NS}.svc.clusterset.local")));
    assert_eq!(conf.len(), 2);
    assert!(conf.iter().all(|ip| ip.starts_with("10.0.")), "{conf:?}");

    // a headless endpoint with a hostname has its own name: <hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local
    service(&c2, "named", 8080, "http").await;
    let svcs: Api<Service> = Api::namespaced(c2.clone(), NS);
    svcs.patch(
        "named",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "selector": { "app": "named" } } })),
    )
    .await
    .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c2.clone(), NS);
    let _ = pods.delete("web-0", &DeleteParams::default()).await;
    let t0 = Instant::now();
    while pods.get_opt("web-0").await.unwrap().is_some() {
        assert!(t0.elapsed() < Duration::from_secs(30), "old web-0 not gone");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "name": "web-0", "namespace": NS, "labels": { "app": "named" } },
        "spec": { "hostname": "web-0", "subdomain": "named",
                  "containers": [{ "name": "web", "image": "lab/echo" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    export(&c2, "named").await;
    let per_pod = format!("web-0.provider-c2.named.{NS}.svc.clusterset.local");
    let got = tokio::task::block_in_place(|| {
        let mut got = Vec::new();
        wait_for("the per-pod name resolves", Duration::from_secs(30), || {
            got = resolve(&client, &per_pod);
            got.len() == 1
        });
        got
    });
    let real = pods.get("web-0").await.unwrap().status.unwrap().pod_ip.unwrap();
    assert_ne!(got[0], real, "the name gives the remapped address, not c2's own");
    assert!(
        got[0].starts_with("10.0.") && got[0].ends_with(real.trim_start_matches("10.244")),
        "{got:?} vs {real}"
    );
    unexport(&c2, "named").await;
    let _ = pods.delete("web-0", &DeleteParams::default()).await;

    // unexport everything: the imports go
    for c in [&c1, &c2] {
        unexport(c, "echo").await;
        unexport(c, "conf").await;
    }
    let t0 = Instant::now();
    while imports.get_opt("echo").await.unwrap().is_some() || imports.get_opt("conf").await.unwrap().is_some()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "imports not removed after unexport"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ferry-dns follows within its watch (and the 5 s TTL bounds any cache in front of it)
    tokio::task::block_in_place(|| {
        wait_for("the name no longer resolves", Duration::from_secs(5), || {
            resolve(&client, &name).is_empty()
        })
    });
}

#[test]
fn other_zones_are_refused_at_once_1000_queries_none_forwarded_none_hanging() {
    let _g = SERIAL.blocking_lock();
    let lab = Lab::from_env();
    let ns = lab.layout.host_netns(&lab.layout.clusters[0]);
    let _dns = agents::start_dns(&lab, 0).unwrap();
    // count every DNS packet that leaves the host namespace other than on loopback: a forward would show
    let table = "ferry_test_dnsfwd";
    let rules = format!(
        "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  oifname != \"lo\" udp dport 53 counter\n  oifname != \"lo\" tcp dport 53 counter\n }}\n}}\n"
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    drop(nft.stdin.take());
    assert!(nft.wait().unwrap().success());
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_ferry-lab"));
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(&exe)
        .args([
            "bench",
            "dns",
            "--server",
            "127.0.0.1:53",
            "--queries",
            "1000",
            "--refused",
        ])
        .output()
        .unwrap();
    let counters = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "table", "inet", table])
        .output()
        .unwrap();
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "delete", "table", "inet", table])
        .status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    eprintln!("{r}");
    assert_eq!(r["queries"], 1000);
    assert_eq!(
        r["refused"], 1000,
        "every query for example.com. / cluster.local. refused: {r}"
    );
    assert_eq!(r["timeouts"], 0, "none hangs: {r}");
    assert!(r["max_ms"].as_f64().unwrap() < 1000.0, "answered at once: {r}");
    let c = String::from_utf8_lossy(&counters.stdout);
    assert_eq!(
        c.matches("counter packets 0 bytes 0").count(),
        2,
        "nothing forwarded: {c}"
    );
}

/// The `ferry_…` names the chart's Grafana dashboard queries (read from its template).
fn dashboard_metrics() -> BTreeSet<String> {
    let tpl = include_str!("../../charts/ferry/templates/dashboard.yaml");
    let json: String = tpl
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ferry.json: |"))
        .skip(1)
        .take_while(|l| !l.starts_with("{{"))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let d: serde_json::Value = serde_json::from_str(&json).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            let mut rest = e;
            while let Some(i) = rest.find("ferry_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    names
}

/// Whether `text` (a scrape) has a sample named `name`.
fn has_sample(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        !l.starts_with('#') && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_component_serves_its_metrics_and_health_after_a_burst_and_the_dashboard_reads_only_those() {
    use ferry_plumbing::metrics::sample;
    let _g = SERIAL.lock().await;
    let lab = Lab::from_env();
    let c1 = lab.client(&lab.layout.clusters[0]).await.unwrap();
    ferry_e2e::lab::fresh_namespace(&c1, NS).await;
    let peered = peered(&lab);
    // a burst of 20 hollow pods, offloaded (Remote): reflected, with status and lag
    let ns = "t-metrics";
    ferry_e2e::lab::fresh_namespace(&c1, ns).await;
    let (ok, _, err) = agents::ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[0]),
        &["offload", "namespace", ns, "--strategy", "Remote"],
    );
    assert!(ok, "{err}");
    let deploy: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "burst"},
        "spec": {"replicas": 20, "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}, "annotations": {"lab.ferry.dev/hollow": "true"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c1.clone(), ns)
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c1.clone(), ns);
    ferry_e2e::lab::eventually("20 pods Running on the virtual node", 90, || async {
        let l = pods.list(&Default::default()).await?.items;
        Ok(l.len() == 20
            && l.iter().all(|p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("ferry-provider-c2")
            }))
    })
    .await;
    // DNS: one name answered, one unknown, one of another zone
    let ns1 = lab.layout.host_netns(&lab.layout.clusters[0]);
    for (name, t) in [
        ("clusterset.local.", "SOA"),
        ("nope.t-metrics.svc.clusterset.local.", "A"),
        ("example.com.", "A"),
    ] {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns1,
                "dig",
                "+time=1",
                "+tries=1",
                "@127.0.0.1",
                name,
                t,
            ])
            .output();
    }

    let scrape = |idx: Option<usize>, addr: &str| {
        for path in ["/healthz", "/readyz"] {
            let (status, body) = agents::http_get(&lab, idx, addr, path);
            assert!(status.contains(" 200 "), "{addr}{path}: {status} {body}");
        }
        let (status, body) = agents::http_get(&lab, idx, addr, "/metrics");
        assert!(
            status.contains(" 200 ") && body.ends_with("# EOF\n"),
            "{addr}/metrics: {status}\n{body}"
        );
        body
    };
    // reflection and lag come with the pods' status: eventually on the consumer's agent
    let t0 = Instant::now();
    let consumer = loop {
        let m = scrape(None, &agents::admin_addr(&lab, 0));
        let peer = ("peer", "provider-c2");
        if sample(&m, "ferry_offloaded_pods", &[peer, ("phase", "Running")]) == Some(20.0)
            && sample(&m, "ferry_reflection_queue_depth", &[peer]) == Some(0.0)
        {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the consumer's reflection metrics:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let v = |m: &str, name: &str, labels: &[(&str, &str)]| sample(m, name, labels).unwrap_or(-1.0);
    let ctl = |c: &'static str| [("controller", c), ("result", "ok")];
    assert!(
        v(
            &consumer,
            "ferry_controller_reconciles_total",
            &ctl("pod-reflection")
        ) >= 20.0,
        "{consumer}"
    );
    assert!(
        v(
            &consumer,
            "ferry_controller_reconciles_total",
            &ctl("foreign-cluster")
        ) >= 1.0,
        "{consumer}"
    );
    assert!(
        v(
            &consumer,
            "ferry_controller_reconcile_duration_seconds_count",
            &[("controller", "pod-reflection")]
        ) >= 20.0
    );
    // the consumer's figures for its one peer
    let of_peer = |name: &str| v(&consumer, name, &[("peer", "provider-c2")]);
    let lags = of_peer("ferry_reflection_lag_seconds_count");
    let lag_sum = of_peer("ferry_reflection_lag_seconds_sum");
    assert!(
        (1.0..=20.0).contains(&lags) && lag_sum >= 0.0 && lag_sum / lags < 30.0,
        "lags {lags}, sum {lag_sum}"
    );
    // the statuses went out through the writer's ticks (`--status-tick-ms 250` above): every Running
    // pod's patch among them
    let patches = of_peer("ferry_status_patch_batch_size_sum");
    let ticks = of_peer("ferry_status_patch_batch_size_count");
    assert!(
        patches >= 20.0 && (1.0..=patches).contains(&ticks),
        "status patches {patches} in {ticks} ticks"
    );
    let provider = scrape(None, &agents::admin_addr(&lab, 1));
    assert!(
        v(&provider, "ferry_controller_reconciles_total", &ctl("shadowpod")) >= 20.0,
        "{provider}"
    );
    assert!(
        v(
            &provider,
            "ferry_broker_requests_total",
            &[("route", "POST /v1/peerings"), ("code", "200")]
        ) >= 1.0,
        "{provider}"
    );
    assert!(
        v(
            &provider,
            "ferry_broker_requests_total",
            &[("route", "POST /v1/namespaces"), ("code", "200")]
        ) >= 1.0,
        "{provider}"
    );
    let gateway = scrape(Some(0), agents::GATEWAY_ADMIN);
    let peer = [("peer", "provider-c2")];
    assert_eq!(v(&gateway, "ferry_gateway_tunnels", &[]), 1.0, "{gateway}");
    assert_eq!(
        v(&gateway, "ferry_gateway_tunnel_connected", &peer),
        1.0,
        "{gateway}"
    );
    assert!(
        v(&gateway, "ferry_gateway_tunnel_received_bytes_total", &peer) > 0.0,
        "{gateway}"
    );
    assert!(
        v(&gateway, "ferry_gateway_tunnel_sent_bytes_total", &peer) > 0.0,
        "{gateway}"
    );
    let age = v(&gateway, "ferry_gateway_tunnel_handshake_age_seconds", &peer);
    assert!((0.0..=180.0).contains(&age), "{gateway}");
    let latency = v(&gateway, "ferry_gateway_tunnel_latency_seconds", &peer);
    assert!(latency > 0.0 && latency < 0.5, "{gateway}");
    let dns = scrape(Some(0), agents::DNS_ADMIN);
    for r in ["answered", "nxdomain", "refused"] {
        assert!(
            v(&dns, "ferry_dns_queries_total", &[("result", r)]) >= 1.0,
            "{r}: {dns}"
        );
    }
    // every metric the dashboard reads is served by one of the components
    let all = [&consumer, &provider, &gateway, &dns];
    let missing: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|n| !all.iter().any(|m| has_sample(m, n)))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics nothing serves: {missing:?}"
    );
    eprintln!(
        "metrics after a burst of 20: reflection lag mean {:.2} s over {lags} pods, tunnel latency {:.2} ms, handshake {age} s ago",
        lag_sum / lags,
        latency * 1000.0
    );

    // unpeered: the gateway has no tunnel, and says so, still live and ready
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(c1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    let (ok, _, err) = agents::ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[0]),
        &["unpeer", "provider-c2"],
    );
    assert!(ok, "{err}");
    let t0 = Instant::now();
    loop {
        let g = scrape(Some(0), agents::GATEWAY_ADMIN);
        if v(&g, "ferry_gateway_tunnels", &[]) == 0.0 {
            assert!(!g.contains("ferry_gateway_tunnel_connected{"), "{g}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{g}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(peered);
}
