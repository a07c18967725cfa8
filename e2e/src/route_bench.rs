//! `ferry-lab bench route`: what the route agent's extra hop costs. On a lab with real nodes, ferry installed
//! into both clusters and peered (done here when it is not), a c2 pod on c2's gateway node serves N MB;
//! a c1 pod on c1's gateway node and a c1 pod on another node fetch it in turn through the tunnel (the
//! second one via the route agent's route to the gateway node). Each fetch is timed inside its pod; the
//! figure per node is the median of the runs, and the ratio is other node / gateway node.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde::Serialize;
use serde_json::json;

use crate::lab::Lab;
use crate::workload::kubectl;

const NS: &str = "route-bench";
const PORT: u16 = 8080;

/// What `bench route` prints.
#[derive(Debug, Serialize)]
pub struct RouteBench {
    /// Megabytes per fetch.
    pub mb: u32,
    /// Fetches per node.
    pub runs: u32,
    /// Each fetch from the gateway's node, Mbit/s.
    pub gateway_node_mbps_runs: Vec<f64>,
    /// Each fetch from the other node (through the route agent's route), Mbit/s.
    pub other_node_mbps_runs: Vec<f64>,
    /// Median from the gateway's node.
    pub gateway_node_mbps: f64,
    /// Median from the other node.
    pub other_node_mbps: f64,
    /// other / gateway.
    pub ratio: f64,
}

/// Installs ferry into the lab's first two clusters and peers them, unless c1 already has a connected
/// `PeerNetwork` to c2.
pub async fn ensure_peered(lab: &Lab, exe: &std::path::Path) -> Result<()> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let pns: Api<ferry_crds::PeerNetwork> = Api::all(lab.client(c1).await?);
    let connected = |pn: Option<ferry_crds::PeerNetwork>| {
        pn.and_then(|p| p.status)
            .and_then(|s| s.phase)
            .is_some_and(|p| p == "Connected")
    };
    if connected(pns.get_opt("provider-c2").await.ok().flatten()) {
        return Ok(());
    }
    for c in [c1, c2] {
        let done = crate::install::install(lab, c, false, &[]).await?;
        eprintln!("bench route: ferry installed in {} ({:.1}s)", c.id, done.seconds);
    }
    let ferryctl = exe.with_file_name("ferryctl");
    let run = |kc: std::path::PathBuf, args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(kc)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "ferryctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let token = run(lab.paths.kubeconfig(c2), &["token", "create", "--ttl", "10m"])?;
    run(lab.paths.kubeconfig(c1), &["peer", "--token", &token])?;
    let is_connected = |pn: Option<&ferry_crds::PeerNetwork>| connected(pn.cloned());
    tokio::time::timeout(
        Duration::from_secs(90),
        kube::runtime::wait::await_condition(pns, "provider-c2", is_connected),
    )
    .await
    .context("PeerNetwork provider-c2 not Connected after 90s")??;
    Ok(())
}

fn pod_on(name: &str, node: &str, script: String) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": crate::node::REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": name, "image": crate::image::WORKLOAD_IMAGE,
                "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}]}
    }))?)
}

/// Runs the benchmark (see the module doc).
pub async fn run(lab: &Lab, exe: &std::path::Path, mb: u32, runs: u32) -> Result<RouteBench> {
    if lab.layout.clusters.len() < 2 || lab.layout.clusters.iter().any(|c| c.real_nodes < 2) {
        bail!("bench route needs two clusters with two real nodes each; fix: ferry-lab up --real-nodes 2");
    }
    anyhow::ensure!(mb > 0 && runs > 0, "--mb and --runs must be at least 1");
    ensure_peered(lab, exe).await?;
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, k2) = (lab.client(c1).await?, lab.client(c2).await?);
    crate::lab::fresh_namespace(&k1, NS).await;
    crate::lab::fresh_namespace(&k2, NS).await;
    let (p1, p2): (Api<Pod>, Api<Pod>) = (Api::namespaced(k1.clone(), NS), Api::namespaced(k2.clone(), NS));
    p2.create(
        &PostParams::default(),
        &pod_on(
            "server",
            &c2.real_node_name(0),
            format!("mkdir -p /www && head -c {}000000 /dev/urandom > /www/big && exec httpd -f -p {PORT} -h /www", mb),
        )?,
    )
    .await?;
    let clients = [c1.real_node_name(0), c1.real_node_name(1)];
    for (i, node) in clients.iter().enumerate() {
        p1.create(
            &PostParams::default(),
            &pod_on(&format!("client{i}"), node, "exec sleep 100000".into())?,
        )
        .await?;
    }
    let server_ip = crate::lab::running_pod_ip(&k2, NS, "server").await?;
    for i in 0..clients.len() {
        crate::lab::running_pod_ip(&k1, NS, &format!("client{i}")).await?;
    }
    let remaps =
        ferry_tunnel::remaps::reported(&Api::<ferry_crds::PeerNetwork>::all(k1).get("provider-c2").await?)
            .context("c1's PeerNetwork provider-c2 reports no remaps")?;
    let seen = ferry_tunnel::ipam::translate(server_ip, &remaps).context("the server's IP in c1's view")?;
    let url = format!("http://{seen}:{PORT}/big");
    // timed inside the pod (/proc/uptime, 10 ms resolution, around wget), so kubectl exec's own time does
    // not count (busybox's date has no %N)
    let fetch = format!(
        "read s _ < /proc/uptime; timeout 300 wget -q -O /dev/null {url} || exit 1; read e _ < /proc/uptime; echo $s $e"
    );
    let time_fetch = |client: &str| -> Result<f64> {
        let (ok, out, err) = kubectl(lab, c1, &["-n", NS, "exec", client, "--", "sh", "-c", &fetch]);
        anyhow::ensure!(ok, "{client}: fetching {url} failed: {out}{err}");
        let t: Vec<f64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        anyhow::ensure!(t.len() == 2, "{client}: not two uptimes: {out:?}");
        let secs = (t[1] - t[0]).max(0.01);
        Ok(f64::from(mb) * 8.0 / secs)
    };
    // the server writes its file before it serves: the first fetch of each client waits for it, untimed
    for (i, node) in clients.iter().enumerate() {
        let t0 = Instant::now();
        while time_fetch(&format!("client{i}")).is_err() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "client{i} on {node} cannot fetch {url}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let (mut gw, mut other) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // side by side: the two alternate, so a slower moment of the machine hits both
        gw.push(time_fetch("client0")?);
        other.push(time_fetch("client1")?);
    }
    for c in [c1, c2] {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(lab.client(c).await?);
        let _ = nss.delete(NS, &Default::default()).await;
    }
    let (g, o) = (
        crate::bench::median(gw.clone()),
        crate::bench::median(other.clone()),
    );
    let round = |v: f64| (v * 10.0).round() / 10.0;
    Ok(RouteBench {
        mb,
        runs,
        gateway_node_mbps_runs: gw.into_iter().map(round).collect(),
        other_node_mbps_runs: other.into_iter().map(round).collect(),
        gateway_node_mbps: round(g),
        other_node_mbps: round(o),
        ratio: (o / g * 1000.0).round() / 1000.0,
    })
}
