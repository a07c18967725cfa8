//! `ferry-lab bench pods`: seconds from creating an N-replica Deployment on lab nodes to all N Running,
//! through the real scheduler and controller-manager. The pods are hollow (an IP and a status, no
//! namespace) on dedicated bench nodes served in-process, so 10,000 fit on this machine.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::kubelet::{KubeletConfig, LabKubelet, LabNode};
use crate::lab::Lab;
use crate::layout::{ClusterLayout, NodeCapacity};
pub use crate::workload::{deployment, wait_ready};

/// Pods per bench node (a /24 node subnet holds 253).
pub const PODS_PER_BENCH_NODE: u32 = 250;
/// Bench nodes take node subnets from this index on, clear of the lab nodes.
pub const BENCH_NODE_FIRST_SUBNET: u32 = 128;

/// The result line of `bench pods`.
#[derive(Debug, Serialize)]
pub struct PodsBench {
    /// Always `pods`.
    pub bench: &'static str,
    /// Cluster.
    pub cluster: String,
    /// Replicas.
    pub count: u32,
    /// Bench nodes used.
    pub nodes: u32,
    /// Seconds from the Deployment's creation to all replicas Running and Ready.
    pub seconds: f64,
    /// count / seconds.
    pub pods_per_second: f64,
}

/// The bench nodes for `count` pods.
pub fn bench_nodes(c: &ClusterLayout, count: u32) -> Result<Vec<LabNode>> {
    let n = count.div_ceil(PODS_PER_BENCH_NODE).max(1);
    (0..n)
        .map(|j| {
            Ok(LabNode {
                name: format!("bench-node-{}", j + 1),
                subnet: c.node_subnet(BENCH_NODE_FIRST_SUBNET + j).with_context(|| {
                    format!("--count {count} needs {n} bench nodes; the pod CIDR {} has no room; fix: a smaller --count", c.pod_cidr)
                })?,
            })
        })
        .collect()
}

/// Registers hollow bench `nodes` (pool `bench`) in cluster `c` and serves them in-process until the
/// returned task is aborted.
pub async fn start_bench_nodes(
    lab: &Lab,
    c: &ClusterLayout,
    client: &Client,
    nodes: &[LabNode],
    exe: &std::path::Path,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let cfg = KubeletConfig {
        lab: lab.layout.name.clone(),
        cluster_id: c.id.clone(),
        host_netns: lab.layout.host_netns(c),
        nodes: nodes.to_vec(),
        capacity: NodeCapacity {
            cpu: "256".into(),
            memory: "1Ti".into(),
            pods: PODS_PER_BENCH_NODE,
        },
        pool: "bench".into(),
        hollow: true,
        exe: exe.to_path_buf(),
    };
    let kubelet = LabKubelet::new(client.clone(), cfg);
    kubelet.register_nodes().await?;
    Ok(tokio::spawn(kubelet.clone().run()))
}

/// Runs the benchmark against `cluster` of `lab`.
pub async fn pods(lab: &Lab, cluster: &str, count: u32, exe: &std::path::Path) -> Result<PodsBench> {
    let c = lab.cluster(cluster)?.clone();
    let client = lab.client(&c).await?;
    let nodes = bench_nodes(&c, count)?;
    let task = start_bench_nodes(lab, &c, &client, &nodes, exe).await?;
    let ns = format!("bench-{}", chrono::Utc::now().format("%H%M%S"));
    let result = run_bench(&client, &ns, count).await;
    cleanup(&client, &ns, &nodes).await;
    task.abort();
    let seconds = result?;
    Ok(PodsBench {
        bench: "pods",
        cluster: c.id.clone(),
        count,
        nodes: nodes.len() as u32,
        seconds,
        pods_per_second: f64::from(count) / seconds,
    })
}

async fn run_bench(client: &Client, ns: &str, count: u32) -> Result<f64> {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": ns } }))?,
    )
    .await?;
    // the namespace's default ServiceAccount must exist before pods can be admitted
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "namespace {ns} has no default ServiceAccount after 30s: is kube-controller-manager running?"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eprintln!("[bench] creating Deployment {ns}/pods with {count} replicas");
    deps.create(
        &PostParams::default(),
        &deployment("pods", count, "bench", true, None),
    )
    .await?;
    let timeout = Duration::from_secs(60 + u64::from(count) / 10);
    wait_ready(&deps, "pods", count, timeout).await
}

async fn cleanup(client: &Client, ns: &str, nodes: &[LabNode]) {
    drain(client, ns).await;
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        let _ = api.delete(&n.name, &DeleteParams::default()).await;
    }
}

/// Deletes the bench Deployment `pods` of `ns`, its pods at once (grace 0), then the namespace.
pub async fn drain(client: &Client, ns: &str) {
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let _ = deps.delete("pods", &DeleteParams::background()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods
        .delete_collection(
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
            &ListParams::default(),
        )
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// The result line of `bench tunnel`.
#[derive(Debug, Serialize)]
pub struct TunnelBench {
    /// Always `tunnel`.
    pub bench: &'static str,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Runs per path, ferry and plain WireGuard alternating; each figure is the median.
    pub runs: u32,
    /// Pod → pod through ferry-gateway (WireGuard + prefix NAT + MSS clamp), Gbit/s.
    pub ferry_gbps: f64,
    /// The same two pods through plain userspace WireGuard (the same embedded boringtun, same MTU, same hops; no NAT,
    /// no marks, no clamp): the ceiling.
    pub plain_wireguard_gbps: f64,
    /// Host → host over the bare WAN.
    pub bare_wan_gbps: f64,
    /// ferry / plain WireGuard: the median of each run's ratio (neighbouring measurements).
    pub ratio: f64,
    /// Gbit/s in each second of the median run (by ratio), ferry (for `--plot`; not in the JSON).
    #[serde(skip)]
    pub ferry_trace: Vec<(f64, f64)>,
    /// The same, plain WireGuard.
    #[serde(skip)]
    pub plain_trace: Vec<(f64, f64)>,
}

/// One iperf3 run: Gbit/s received, and Gbit/s in each interval `(end second, Gbit/s)`.
struct Iperf {
    gbps: f64,
    intervals: Vec<(f64, f64)>,
}

/// From iperf3's JSON (`-J`): the received rate and each interval's rate.
fn iperf_result(v: &serde_json::Value) -> Option<Iperf> {
    let gbps = v["end"]["sum_received"]["bits_per_second"].as_f64()? / 1e9;
    let intervals = v["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i["sum"]["end"].as_f64()?,
                        i["sum"]["bits_per_second"].as_f64()? / 1e9,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Iperf { gbps, intervals })
}

/// `--plot`: throughput per second in the median run, ferry vs plain WireGuard.
pub fn tunnel_chart(b: &TunnelBench) -> crate::plot::Chart {
    let line = |name: &str, t: &[(f64, f64)]| crate::plot::Series {
        name: name.to_string(),
        points: std::iter::once((0.0, 0.0)).chain(t.iter().copied()).collect(),
    };
    crate::plot::Chart {
        title: format!("pod to pod through the tunnel (median run, ratio {:.2})", b.ratio),
        x_label: "seconds".into(),
        y_label: "Gbit/s".into(),
        series: vec![
            line("ferry (WireGuard + NAT + MSS clamp)", &b.ferry_trace),
            line("plain WireGuard", &b.plain_trace),
        ],
    }
}

fn iperf(client_ns: &str, server_ns: &str, bind: &str, target: &str, seconds: u32) -> Result<Iperf> {
    iperf_from(client_ns, server_ns, bind, target, None, seconds)
}

/// iperf3 from `client_ns` (optionally from source address `client_bind`) to a one-off server in
/// `server_ns` bound to `bind`; Gbit/s received.
fn iperf_from(
    client_ns: &str,
    server_ns: &str,
    bind: &str,
    target: &str,
    client_bind: Option<&str>,
    seconds: u32,
) -> Result<Iperf> {
    let mut server = std::process::Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", bind, "-p", "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("iperf3; fix: apt-get install iperf3 (make deps)")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut client = std::process::Command::new("ip");
    client.args([
        "netns",
        "exec",
        client_ns,
        "iperf3",
        "-c",
        target,
        "-p",
        "5201",
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    if let Some(src) = client_bind {
        client.args(["-B", src]);
    }
    let out = client.output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    iperf_result(&v).with_context(|| format!("iperf3 {client_ns} -> {target}: {}", v["error"]))
}

/// `ferry-lab bench tunnel`: the three measured side by side, each `seconds` long.
pub async fn tunnel(lab: &Lab, seconds: u32, runs: u32) -> Result<TunnelBench> {
    let runs = runs.max(1);
    use crate::tunnel::{GatewayPair, PairOptions};
    let (ca, cb) = match lab.layout.clusters.as_slice() {
        [a, b, ..] => (a.clone(), b.clone()),
        _ => bail!("bench tunnel needs a lab with two clusters"),
    };
    let (host_a, host_b) = (lab.layout.host_netns(&ca), lab.layout.host_netns(&cb));
    let mut pods = Vec::new();
    for c in [&ca, &cb] {
        let client = lab.client(c).await?;
        crate::demo::ensure_echo_deployment(&client, "bench-tunnel", "iperf", 1).await?;
        pods.push(
            crate::demo::pods_of(lab, &c.id, "bench-tunnel", "iperf")
                .await?
                .remove(0),
        );
    }
    let (pa, pb) = (pods[0].clone(), pods[1].clone());
    eprintln!("[bench] bare WAN: {} -> {}", ca.wan_ip, cb.wan_ip);
    let bare = iperf(
        &host_a,
        &host_b,
        &cb.wan_ip.to_string(),
        &cb.wan_ip.to_string(),
        seconds,
    )?
    .gbps;
    // ferry and plain WireGuard alternate, run by run, so that both see the same machine load; each
    // run's ratio compares two neighbouring measurements, and the figures are medians
    let (mut ferry_runs, mut plain_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut traces = Vec::new();
    for run_no in 1..=runs {
        let pair = tokio::task::block_in_place(|| {
            GatewayPair::start(lab, &PairOptions::default(), Duration::from_secs(30))
        })?;
        let mtu = pair
            .status(0)
            .and_then(|s| s["tunnelMtu"].as_u64())
            .unwrap_or(1440) as u32;
        let b_seen = pair
            .translate(0, pb.ip.parse()?)
            .context("remap of the provider pod")?;
        eprintln!(
            "[bench] run {run_no}/{runs} ferry: pod {} -> pod {} (seen as {b_seen}), tunnel MTU {mtu}",
            pa.ip, pb.ip
        );
        let f = iperf(&pa.netns, &pb.netns, &pb.ip, &b_seen.to_string(), seconds);
        pair.stop();
        let f = f?;
        let f_trace = f.intervals.clone();
        eprintln!(
            "[bench] run {run_no}/{runs} plain WireGuard: the same two pods, extra addresses 172.31.1.2 -> 172.31.2.2, MTU {mtu}, no NAT"
        );
        let up = plain_wireguard_up(&host_a, &host_b, &ca, &cb, &pa, &pb, mtu);
        let p = up.and_then(|()| {
            iperf_from(
                &pa.netns,
                &pb.netns,
                "172.31.2.2",
                "172.31.2.2",
                Some("172.31.1.2"),
                seconds,
            )
        });
        plain_wireguard_down(&host_a, &host_b, &pa, &pb);
        let p = p?;
        let p_trace = p.intervals.clone();
        let (f, p, ratio) = (f.gbps, p.gbps, f.gbps / p.gbps);
        eprintln!("[bench] run {run_no}/{runs}: ferry {f:.3} / plain {p:.3} Gbit/s = {ratio:.3}");
        ferry_runs.push(f);
        plain_runs.push(p);
        ratios.push(ratio);
        traces.push((ratio, f_trace, p_trace));
    }
    traces.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, ferry_trace, plain_trace) = traces.swap_remove(traces.len() / 2);
    Ok(TunnelBench {
        bench: "tunnel",
        seconds,
        runs,
        ferry_gbps: median(ferry_runs),
        plain_wireguard_gbps: median(plain_runs),
        bare_wan_gbps: bare,
        ratio: median(ratios),
        ferry_trace,
        plain_trace,
    })
}

/// The bare devices of the plain-WireGuard baseline (processes of `ferry-gateway device`).
static PLAIN_DEVICES: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

fn plain_wireguard_down(host_a: &str, host_b: &str, pa: &crate::demo::PodView, pb: &crate::demo::PodView) {
    for mut c in PLAIN_DEVICES.lock().expect("lock").drain(..) {
        // `ip netns exec` execs the gateway, so the child's PID is the device's
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
    for (ns, dev) in [(host_a, "fyplain"), (host_b, "fyplainb")] {
        let _ = crate::procs::run("ip", &["-n", ns, "link", "del", dev]);
    }
    for (ns, host, ip) in [
        (&pa.netns, host_a, "172.31.1.2"),
        (&pb.netns, host_b, "172.31.2.2"),
    ] {
        let _ = crate::procs::run(
            "ip",
            &["-n", ns, "addr", "del", &format!("{ip}/32"), "dev", "eth0"],
        );
        let _ = crate::procs::run("ip", &["-n", host, "route", "del", ip]);
    }
}

/// Plain userspace WireGuard between the two hosts, carrying the same two pods' traffic on extra,
/// non-overlapping addresses: the same hops as ferry's path, minus ferry (no NAT, no marks, no clamp).
fn plain_wireguard_up(
    host_a: &str,
    host_b: &str,
    ca: &ClusterLayout,
    cb: &ClusterLayout,
    pa: &crate::demo::PodView,
    pb: &crate::demo::PodView,
    mtu: u32,
) -> Result<()> {
    use crate::procs::run;
    let dir = std::env::temp_dir().join(format!("ferry-plain-wg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut pubs = Vec::new();
    for side in ["a", "b"] {
        let k = dir.join(side);
        std::fs::write(&k, run("wg", &["genkey"])?.trim())?;
        let p = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&k)?)
            .output()?;
        pubs.push(String::from_utf8_lossy(&p.stdout).trim().to_string());
    }
    let sides = [
        (
            host_a,
            "fyplain",
            "a",
            &pubs[1],
            "169.254.99.1/30",
            "169.254.99.2/32,172.31.2.0/24",
            format!("{}:51999", cb.wan_ip),
            &pa.netns,
            "172.31.1.2",
            "172.31.2.0/24",
        ),
        (
            host_b,
            "fyplainb",
            "b",
            &pubs[0],
            "169.254.99.2/30",
            "169.254.99.1/32,172.31.1.0/24",
            format!("{}:51999", ca.wan_ip),
            &pb.netns,
            "172.31.2.2",
            "172.31.1.0/24",
        ),
    ];
    for (ns, dev, key, peer, addr, allowed, ep, pod_ns, pod_ip, remote_net) in sides {
        // the same userspace WireGuard as ferry's tunnel (embedded boringtun), as a bare device
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(crate::tunnel::gateway_bin())
            .args(["device", dev])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting ferry-gateway device")?;
        PLAIN_DEVICES.lock().expect("lock").push(child);
        let key = dir.join(key).to_string_lossy().to_string();
        let mut ok = false;
        for _ in 0..50 {
            if run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "wg",
                    "set",
                    dev,
                    "private-key",
                    &key,
                    "listen-port",
                    "51999",
                    "peer",
                    peer,
                    "allowed-ips",
                    allowed,
                    "endpoint",
                    &ep,
                ],
            )
            .is_ok()
            {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::ensure!(ok, "configuring plain WireGuard {dev}");
        run("ip", &["-n", ns, "addr", "add", addr, "dev", dev])?;
        run(
            "ip",
            &["-n", ns, "link", "set", dev, "mtu", &mtu.to_string(), "up"],
        )?;
        run("ip", &["-n", ns, "route", "add", remote_net, "dev", dev])?;
        // the pod gets a second address; its host reaches it over the pod bridge
        run(
            "ip",
            &[
                "-n",
                pod_ns,
                "addr",
                "add",
                &format!("{pod_ip}/32"),
                "dev",
                "eth0",
            ],
        )?;
        run(
            "ip",
            &["-n", ns, "route", "add", pod_ip, "dev", crate::net::POD_BRIDGE],
        )?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_json_gives_the_rate_and_each_second() {
        let v = serde_json::json!({
            "intervals": [
                {"sum": {"start": 0.0, "end": 1.0, "bits_per_second": 4.0e8}},
                {"sum": {"start": 1.0, "end": 2.0, "bits_per_second": 6.0e8}},
                {"streams": []}
            ],
            "end": {"sum_received": {"bits_per_second": 5.0e8}}
        });
        let r = iperf_result(&v).unwrap();
        assert!((r.gbps - 0.5).abs() < 1e-9);
        assert_eq!(r.intervals, vec![(1.0, 0.4), (2.0, 0.6)]);
        assert!(iperf_result(&serde_json::json!({"error": "unable to connect"})).is_none());
    }
}
