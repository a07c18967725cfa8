//! `ferry-lab demo`: what `make demo` shows on a running lab. In every cluster a 3-replica Deployment
//! reaches 3/3 Running through the real scheduler and controller-manager on lab nodes (pods run no
//! containers: each has a real network namespace and IP and ferry-lab's echo server); two pods of cluster 1
//! ping each other and exchange 1 MiB over TCP. Then ferry is installed into both clusters with `ferryctl
//! install` (every component a pod of ferry's image on the real nodes; nothing started by the lab), cluster
//! 1 peers with cluster 2 (`ferryctl token create` / `peer`), bursts a Deployment onto the virtual node,
//! and, through the installed gateways, a pod of cluster 1 fetches 10 MB from an offloaded pod and a
//! `clusterset.local` name although both clusters use the same pod CIDR.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::lab::Lab;
pub use crate::workload::{PodView, ensure_echo_deployment, pods_of};
use crate::workload::{WEB_PORT, kubectl, wait_ready};

/// Runs `ferry-lab echo-client` inside pod `from`'s namespace against `to:port`; returns its JSON.
pub fn echo_from_pod(
    exe: &std::path::Path,
    from: &PodView,
    to: SocketAddr,
    bytes: u64,
) -> Result<serde_json::Value> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &from.netns])
        .arg(exe)
        .args([
            "echo-client",
            "--to",
            &to.to_string(),
            "--bytes",
            &bytes.to_string(),
            "--timeout",
            "20",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "echo from {} to {to} failed: {}",
            from.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Pings `to` from pod `from`'s namespace; returns the summary line.
pub fn ping_from_pod(from: &PodView, to: &str) -> Result<String> {
    let out = crate::procs::run(
        "ip",
        &[
            "netns",
            "exec",
            &from.netns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            to,
        ],
    )?;
    Ok(out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string())
}

/// `ferry-lab demo`.
pub async fn run(lab: &Lab, exe: &std::path::Path) -> Result<()> {
    let mut summary = Vec::new();
    for c in &lab.layout.clusters {
        let client = lab.client(c).await?;
        println!(
            "== cluster {} ({}; pod CIDR {}, service CIDR {})",
            c.id,
            c.apiserver_url(),
            c.pod_cidr,
            c.service_cidr
        );
        let secs = ensure_echo_deployment(&client, "demo", "echo", 3).await?;
        let pods = pods_of(lab, &c.id, "demo", "echo").await?;
        for p in &pods {
            println!("   {:<28} {:<12} {:<15} {}", p.name, p.node, p.ip, p.phase);
        }
        summary.push(format!(
            "{}: Deployment demo/echo 3/3 Running after {secs:.1}s",
            c.id
        ));
    }
    let c1 = &lab.layout.clusters[0];
    let pods = pods_of(lab, &c1.id, "demo", "echo").await?;
    let (a, b) = match (
        pods.first(),
        pods.iter().find(|p| p.node != pods[0].node).or(pods.get(1)),
    ) {
        (Some(a), Some(b)) => (a.clone(), b.clone()),
        _ => bail!("cluster {} has fewer than 2 demo pods", c1.id),
    };
    println!(
        "== pod to pod in {}: {} ({}, {}) -> {} ({}, {})",
        c1.id, a.name, a.node, a.ip, b.name, b.node, b.ip
    );
    let ping = ping_from_pod(&a, &b.ip)?;
    println!("   ping: {ping}");
    let to: SocketAddr = SocketAddr::new(b.ip.parse().context("pod IP")?, 8080);
    let echo = echo_from_pod(exe, &a, to, 1 << 20)?;
    println!(
        "   tcp echo: {} bytes, sha256 match: {}",
        echo["bytes"], echo["ok"]
    );
    summary.push(format!("{}: ping {} -> {}: {ping}", c1.id, a.ip, b.ip));
    summary.push(format!(
        "{}: 1 MiB TCP echo {} -> {}:8080 checksummed: {}",
        c1.id, a.ip, b.ip, echo["ok"]
    ));
    if lab.layout.clusters.len() >= 2 {
        anyhow::ensure!(
            lab.layout.clusters.iter().all(|c| c.real_nodes > 0),
            "the demo installs ferry onto real nodes; fix: ferry-lab up --real-nodes 2 (make demo does)"
        );
        summary.extend(peer_and_tunnel(lab, exe).await?);
    }
    println!("\n== summary");
    for s in &summary {
        println!("   {s}");
    }
    println!(
        "   both clusters use pod CIDR {} (overlapping on purpose, the kubeadm default)",
        c1.pod_cidr
    );
    println!(
        "   kubectl: kubectl --kubeconfig {} get pods -A -o wide",
        lab.paths.kubeconfig(c1).display()
    );
    println!("   tear down: ferry-lab down --name {}", lab.layout.name);
    if echo["ok"] != json!(true) {
        bail!("the TCP echo did not come back intact");
    }
    Ok(())
}

fn shell(cmd: &mut std::process::Command, shown: &str) -> Result<String> {
    println!("   $ {shown}");
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// ferry installed into both clusters with `ferryctl install` (every component a pod of ferry's image on
/// the real nodes), then peering, offloading, the tunnel and discovery through those pods.
async fn peer_and_tunnel(lab: &Lab, exe: &std::path::Path) -> Result<Vec<String>> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let ferryctl = exe.with_file_name("ferryctl");
    let mut summary = Vec::new();
    for c in [c1, c2] {
        println!(
            "== install: ferryctl --kubeconfig {} install   (the chart charts/ferry, rendered by ferryctl; {})",
            lab.paths.kubeconfig(c).display(),
            if c.index == 1 {
                "pod and service CIDRs discovered"
            } else {
                "pod and service CIDRs given with --set"
            }
        );
        let done = crate::install::install(lab, c, c.index == 1, &[]).await?;
        for l in done
            .progress
            .lines()
            .filter(|l| l.contains("discovered") || l.contains("every component Ready"))
        {
            println!("     {}", l.trim());
        }
        let (_, pods, _) = kubectl(lab, c, &["-n", "ferry-system", "get", "pods", "-o", "wide"]);
        println!("   $ kubectl --context {} -n ferry-system get pods -o wide", c.id);
        for l in pods.lines() {
            println!("     {l}");
        }
        summary.push(format!(
            "install: ferry in {} (2 agents, one active by Lease; the gateway on {}; ferry-dns) Ready {:.1}s after ferryctl install",
            c.id,
            c.real_node_name(0),
            done.seconds
        ));
    }
    println!(
        "== peering: {} (consumer) borrows from {} (provider), through the installed agents",
        c1.id, c2.id
    );
    let (k1, k2) = (lab.paths.kubeconfig(c1), lab.paths.kubeconfig(c2));
    let token = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k2)
            .args(["token", "create", "--ttl", "1h"]),
        &format!("ferryctl --kubeconfig {} token create --ttl 1h", k2.display()),
    )?;
    let token = token.trim();
    println!("     {}…", &token[..token.len().min(60)]);
    let peered = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .args(["peer", "--token", token, "--cpu", "4", "--memory", "8Gi"]),
        &format!(
            "ferryctl --kubeconfig {} peer --token <token> --cpu 4 --memory 8Gi",
            k1.display()
        ),
    )?;
    print!("     {peered}");
    let status = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .arg("status"),
        "ferryctl status",
    )?;
    for l in status.lines() {
        println!("     {l}");
    }
    summary.push(format!(
        "peering: {} authenticated with {} (ferryctl status above)",
        c1.id, c2.id
    ));
    summary.push(offload_and_burst(lab, &ferryctl).await?);
    summary.push(tunnel_between_real_pods(lab, &ferryctl).await?);
    summary.push(crate::seed_demo::run(lab).await?);
    println!("   (ferry keeps running in both clusters until ferry-lab down, or ferryctl uninstall)");
    Ok(summary)
}

/// The tunnel between the installed gateways: the provider pins this tenant's pods to its gateway node (the
/// route agent that lets every node reach the gateway is issue 19), a pod offloaded there serves 10 MB,
/// and a c1 pod on c1's gateway node fetches it at the pod's remapped address (both clusters use the same
/// pod CIDR) and compares checksums.
async fn tunnel_between_real_pods(lab: &Lab, ferryctl: &std::path::Path) -> Result<String> {
    const NS: &str = "tunnel";
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, k2) = (lab.client(c1).await?, lab.client(c2).await?);
    println!(
        "== tunnel: the peering wrote a PeerNetwork on each side; each installed ferry-gateway (userspace WireGuard, NAT for the overlapping CIDRs) built the tunnel from it"
    );
    let networks: Api<ferry_crds::PeerNetwork> = Api::all(k1.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let pn = loop {
        if let Some(pn) = networks
            .get_opt("provider-c2")
            .await?
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Connected"))
        {
            break pn;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "PeerNetwork provider-c2 not Connected after 60s (kubectl -n ferry-system logs -l app=ferry-gateway)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = pn.status.clone().unwrap_or_default();
    println!(
        "   $ kubectl get peernetwork provider-c2: Connected, {} sees {}'s pods at {} (path MTU {}, tunnel MTU {}, TCP MSS clamped)",
        c1.id,
        c2.id,
        st.remaps
            .get(&c2.pod_cidr.to_string())
            .map_or("?", String::as_str),
        st.path_mtu.unwrap_or(0),
        st.tunnel_mtu.unwrap_or(0),
    );
    let (gw1, gw2) = (c1.real_node_name(0), c2.real_node_name(0));
    Api::<ferry_crds::Tenant>::all(k2.clone())
        .patch(
            "consumer-c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": {
                "nodeSelector": {"kubernetes.io/hostname": gw2},
                "tolerations": [{"key": crate::node::REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}}})),
        )
        .await?;
    println!(
        "   $ kubectl --context {} patch tenant consumer-c1 ...   (its pods on {gw2}, the gateway node)",
        c2.id
    );
    crate::lab::fresh_namespace(&k1, NS).await;
    let offloaded = shell(
        std::process::Command::new(ferryctl)
            .arg("--kubeconfig")
            .arg(lab.paths.kubeconfig(c1))
            .args(["offload", "namespace", NS]),
        &format!("ferryctl offload namespace {NS}"),
    )?;
    for l in offloaded.lines() {
        println!("     {l}");
    }
    let pod = |name: &str, script: String, placement: serde_json::Value| -> Result<Pod> {
        let mut spec = json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": name, "image": crate::image::WORKLOAD_IMAGE,
                "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}]
        });
        for (k, v) in placement.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}}, "spec": spec
        }))?)
    };
    let server = pod(
        "server",
        format!(
            "mkdir -p /www && head -c 10000000 /dev/urandom > /www/big && md5sum /www/big > /www/big.md5 && exec httpd -f -vv -p {WEB_PORT} -h /www"
        ),
        json!({"nodeName": "ferry-provider-c2",
               "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}]}),
    )?;
    let client = pod(
        "client",
        "exec sleep 3600".into(),
        json!({"nodeSelector": {"kubernetes.io/hostname": gw1},
               "tolerations": [{"key": crate::node::REAL_NODE_TAINT, "operator": "Exists"}]}),
    )?;
    let pods: Api<Pod> = Api::namespaced(k1.clone(), NS);
    let pp = PatchParams::apply("ferry-demo").force();
    pods.patch("server", &pp, &Patch::Apply(&server)).await?;
    pods.patch("client", &pp, &Patch::Apply(&client)).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let server_ip = loop {
        let s = pods.get("server").await?.status.unwrap_or_default();
        let c = pods.get("client").await?.status.unwrap_or_default();
        if let (Some("Running"), Some("Running"), Some(ip)) =
            (s.phase.as_deref(), c.phase.as_deref(), s.pod_ip)
        {
            break ip;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods {NS}/server (offloaded) and {NS}/client not Running after 90s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "   {NS}/server: offloaded, runs on {gw2} of {}, shown in {} at {server_ip}; {NS}/client on {gw1} of {}",
        c2.id, c1.id, c1.id
    );
    let url = format!("http://{server_ip}:{WEB_PORT}/big");
    // the server writes its 10 MB and their md5sum before it serves: ask until it answers
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetch = format!("timeout 20 wget -q -O- {url} | md5sum && timeout 5 wget -q -O- {url}.md5");
    let (sum, secs) = loop {
        let t0 = Instant::now();
        let (ok, out, err) = kubectl(lab, c1, &["-n", NS, "exec", "client", "--", "sh", "-c", &fetch]);
        let sums: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
        if ok && sums.len() == 2 {
            if sums[0] != sums[1] {
                bail!(
                    "10 MB through the tunnel: md5 {}, but the server's is {}",
                    sums[0],
                    sums[1]
                );
            }
            break (sums[0].to_string(), t0.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} pod client -> {url}: {}{}",
            c1.id,
            out.trim(),
            err.trim()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "   $ kubectl --context {} -n {NS} exec client -- sh -c '{fetch}'\n     {sum}  -\n     {sum}  /www/big   (10 MB and the server's md5sum, in {secs:.2}s)",
        c1.id
    );
    // the offloaded server's log, in c1, through the virtual node's kubelet API (its container runs on c2)
    let (ok, out, err) = kubectl(lab, c1, &["-n", NS, "logs", "server", "--tail=4"]);
    anyhow::ensure!(
        ok && out.contains("/big"),
        "kubectl -n {NS} logs server (offloaded, through the virtual node's kubelet API): {}{}",
        out.trim(),
        err.trim()
    );
    println!(
        "   $ kubectl --context {} -n {NS} logs server --tail=4   (the offloaded pod's log, served by the virtual node)",
        c1.id
    );
    for l in out.lines() {
        println!("     {l}");
    }
    kubelet_streams(lab, c1, NS, &sum, &fetch)?;
    Ok(format!(
        "tunnel: {} pod fetched 10 MB from the offloaded pod at {server_ip} (remapped: identical pod CIDRs) through the installed gateways, md5 intact; logs -f, exec and port-forward on it through the virtual node",
        c1.id
    ))
}

/// `kubectl logs -f`, `exec` and `port-forward` on the offloaded `server` (its container on c2's real
/// node), in c1, through the virtual node's kubelet API; `sum` is the md5 the client fetched.
fn kubelet_streams(
    lab: &Lab,
    c1: &crate::layout::ClusterLayout,
    ns: &str,
    sum: &str,
    fetch: &str,
) -> Result<()> {
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};
    let kubeconfig = lab.paths.kubeconfig(c1);
    let spawn = |args: &[&str]| {
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("kubectl {}", args.join(" ")))
    };
    // logs -f: the request the client makes next arrives in the followed log
    let mut follow = spawn(&["-n", ns, "logs", "-f", "server", "--tail=0"])?;
    let out = follow.stdout.take().context("kubectl logs -f: no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let _ = kubectl(lab, c1, &["-n", ns, "exec", "client", "--", "sh", "-c", fetch]);
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        let done = l.contains("/big.md5");
        lines.push(l);
        if done {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    anyhow::ensure!(
        lines.iter().any(|l| l.contains("/big")),
        "kubectl -n {ns} logs -f server: the client's request did not arrive in 5s ({lines:?})"
    );
    println!(
        "   $ kubectl --context {} -n {ns} logs -f server --tail=0   (while the client fetches again)",
        c1.id
    );
    for l in &lines {
        println!("     {l}");
    }
    // exec: the server's own checksum, computed in its container on c2
    let (ok, out, err) = kubectl(lab, c1, &["-n", ns, "exec", "server", "--", "md5sum", "/www/big"]);
    anyhow::ensure!(
        ok && out.starts_with(sum),
        "kubectl -n {ns} exec server -- md5sum /www/big: {}{} (the client fetched {sum})",
        out.trim(),
        err.trim()
    );
    println!(
        "   $ kubectl --context {} -n {ns} exec server -- md5sum /www/big   (runs in the offloaded pod's container)\n     {}",
        c1.id,
        out.trim()
    );
    // port-forward: the same 10 MB from this machine, through c1's apiserver
    let mut pf = spawn(&["-n", ns, "port-forward", "pod/server", &format!(":{WEB_PORT}")])?;
    let mut first = String::new();
    std::io::BufReader::new(pf.stdout.as_mut().context("kubectl port-forward: no stdout")?)
        .read_line(&mut first)?;
    let port: Option<u16> = first
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok());
    let fetched = port
        .context("kubectl port-forward printed no local port")
        .and_then(|port| {
            let t0 = Instant::now();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(s, "GET /big HTTP/1.0\r\nHost: server\r\n\r\n")?;
            let mut all = Vec::new();
            s.read_to_end(&mut all)?;
            let at = all
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .context("no HTTP answer")?;
            Ok((all.split_off(at + 4), t0.elapsed().as_secs_f64(), port))
        });
    let _ = pf.kill();
    let _ = pf.wait();
    let (body, secs, port) = fetched.with_context(|| format!("kubectl -n {ns} port-forward pod/server"))?;
    let md5 = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("piped").write_all(&body)?;
            c.wait_with_output()
        })?;
    let got = String::from_utf8_lossy(&md5.stdout);
    anyhow::ensure!(
        got.starts_with(sum),
        "10 MB through kubectl port-forward: md5 {}, the server's is {sum}",
        got.trim()
    );
    println!(
        "   $ kubectl --context {} -n {ns} port-forward pod/server :{WEB_PORT}   (local port {port}; GET /big)\n     {} bytes in {secs:.2}s, md5 {}",
        c1.id,
        body.len(),
        got.split_whitespace().next().unwrap_or_default()
    );
    Ok(())
}

/// Offloads namespace `burst` from c1 to c2 and scales a Deployment of 1-CPU pods past c1's local capacity:
/// local nodes fill first, the rest run on c2 through the virtual node. Prints where each pod runs.
async fn offload_and_burst(lab: &Lab, ferryctl: &std::path::Path) -> Result<String> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, client1) = (lab.paths.kubeconfig(c1), lab.client(c1).await?);
    println!(
        "== virtual node: {} appears in {} as node ferry-provider-c2",
        c2.id, c1.id
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client1.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !nodes
        .get_opt("ferry-provider-c2")
        .await?
        .is_some_and(|n| ferry_virtual_kubelet::node::is_ready(&n))
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the virtual node is not Ready after 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nss: Api<Namespace> = Api::all(client1.clone());
    if nss.get_opt("burst").await?.is_none() {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "burst"}}))?,
        )
        .await?;
    }
    let offloaded = shell(
        std::process::Command::new(ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .args(["offload", "namespace", "burst"]),
        "ferryctl offload namespace burst",
    )?;
    for l in offloaded.lines() {
        println!("     {l}");
    }
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {crate::kubelet::ECHO_ANNOTATION: "8080"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "web", "image": "echo (lab pods run no containers)",
                    "resources": {"requests": {"cpu": "1"}}}]}}}
    }))?;
    let deps: Api<Deployment> = Api::namespaced(client1.clone(), "burst");
    if deps.get_opt("web").await?.is_none() {
        deps.create(&PostParams::default(), &deploy).await?;
    }
    wait_ready(&deps, "web", 4, Duration::from_secs(60)).await?;
    println!(
        "   Deployment burst/web: 4 replicas of 1 CPU each; scaling to 12 (local nodes have 4 CPUs each)"
    );
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 12}})),
    )
    .await?;
    wait_ready(&deps, "web", 12, Duration::from_secs(90)).await?;
    let here = pods_of(lab, &c1.id, "burst", "web").await?;
    let there = pods_of(lab, &c2.id, "burst-consumer-c1", "web").await?;
    println!(
        "   {:<24} {:<18} {:<12} RUNS ON",
        "POD (c1)", "NODE (c1)", "IP (c1)"
    );
    let mut remote = 0;
    for p in &here {
        let on = match there.iter().find(|q| q.name == p.name) {
            Some(q) => {
                remote += 1;
                format!("{} {} as {} ({})", c2.id, q.node, q.ip, q.phase)
            }
            None => format!("{} {}", c1.id, p.node),
        };
        println!("   {:<24} {:<18} {:<12} {on}", p.name, p.node, p.ip);
    }
    Ok(format!(
        "offloading: burst/web scaled to 12 → {} on local nodes, {remote} on {} through the virtual node",
        here.len() - remote,
        c2.id
    ))
}
