//! `ferry-lab bench offload --pods N`: the same N-replica Deployment of hollow pods (a) created directly on
//! the provider (c2) and (b) created in the consumer (c1) in a namespace offloaded to c2 with strategy
//! Remote, so every pod goes through the virtual kubelet, a `ShadowPod`, the provider's controller and its
//! scheduler, and its status comes back. Both are timed to all N Ready as each cluster's Deployment
//! reports it. Real ferry-agents (processes) on both clusters; the provider gets in-process hollow bench
//! nodes for the pods. Prints the consumer agent's peak RSS (the virtual kubelet runs in it).

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::agents;
use crate::bench::{bench_nodes, drain, start_bench_nodes};
use crate::lab::Lab;
use crate::workload::{deployment, wait_ready};

/// The result line.
#[derive(Debug, Serialize)]
pub struct OffloadBench {
    /// Always `offload`.
    pub bench: &'static str,
    /// Replicas.
    pub pods: u32,
    /// Seconds to N Ready, created directly on the provider.
    pub direct_seconds: f64,
    /// Seconds to N Ready, created in the consumer and offloaded.
    pub offloaded_seconds: f64,
    /// offloaded / direct.
    pub ratio: f64,
    /// Peak resident memory of the consumer's ferry-agent (virtual kubelet included), MiB.
    pub virtual_kubelet_peak_rss_mib: f64,
    /// Its resident memory once all N are Ready, MiB.
    pub virtual_kubelet_rss_mib: f64,
    /// CPU seconds the lab's control planes (both clusters: etcd, apiserver, controller-manager, scheduler,
    /// lab kubelets) spent in (a).
    pub direct_control_plane_cpu_seconds: f64,
    /// The same in (b).
    pub offloaded_control_plane_cpu_seconds: f64,
    /// CPU seconds both ferry-agents spent in (b).
    pub offloaded_agents_cpu_seconds: f64,
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // after the command: state is field 3, utime 14 and stime 15 (1-based over the whole line)
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// CPU seconds of every process the lab started (its pid table) so far.
fn control_plane_cpu(lab: &Lab) -> f64 {
    crate::procs::ProcessTable::new(lab.paths.pids())
        .map(|t| {
            t.list()
                .iter()
                .filter(|p| p.alive())
                .map(|p| cpu_seconds(p.pid))
                .sum()
        })
        .unwrap_or(0.0)
}

/// `VmHWM` (peak) or `VmRSS` (now) of a process, MiB.
fn rss_mib(pid: u32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kb / 1024.0)
}

async fn namespace(client: &Client, ns: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !matches!(sas.get_opt("default").await, Ok(Some(_))) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "namespace {ns}: no default ServiceAccount after 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until namespace `ns` has no pods left.
async fn until_empty(client: &Client, ns: &str, timeout: Duration) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match pods.list_metadata(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => return,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs the benchmark.
pub async fn run(lab: &Lab, count: u32, exe: &std::path::Path) -> Result<OffloadBench> {
    let (c1l, c2l) = (lab.layout.clusters[0].clone(), lab.layout.clusters[1].clone());
    let (c1, c2) = (lab.client(&c1l).await?, lab.client(&c2l).await?);
    let nodes = bench_nodes(&c2l, count)?;
    let task = start_bench_nodes(lab, &c2l, &c2, &nodes, exe).await?;
    let stamp = chrono::Utc::now().format("%H%M%S").to_string();
    let result = measure(lab, &c1, &c2, count, &stamp).await;
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(c2.clone());
    for n in &nodes {
        let _ = api.delete(&n.name, &DeleteParams::default()).await;
    }
    task.abort();
    result
}

async fn measure(lab: &Lab, c1: &Client, c2: &Client, count: u32, stamp: &str) -> Result<OffloadBench> {
    let timeout = Duration::from_secs(120 + u64::from(count) / 20);
    // (a) directly on the provider
    let direct_ns = format!("bench-direct-{stamp}");
    namespace(c2, &direct_ns).await?;
    let deps: Api<Deployment> = Api::namespaced(c2.clone(), &direct_ns);
    eprintln!("[bench] (a) {count} pods directly on the provider");
    let cpu0 = control_plane_cpu(lab);
    deps.create(&PostParams::default(), &deployment("pods", count, "", true, None))
        .await?;
    let direct = wait_ready(&deps, "pods", count, timeout).await;
    let direct_cpu = control_plane_cpu(lab) - cpu0;
    drain(c2, &direct_ns).await;
    let direct = direct?;
    until_empty(c2, &direct_ns, timeout).await;

    // (b) in the consumer, offloaded
    let quota = (count * 2).to_string();
    let consumer = agents::start(lab, 0, &[])?;
    let provider = agents::start(
        lab,
        1,
        &[
            "--quota-pods",
            &quota,
            "--quota-cpu",
            "100000",
            "--quota-memory",
            "1Pi",
        ],
    )?;
    let k1 = lab.paths.kubeconfig(&lab.layout.clusters[0]);
    let _ = agents::ferryctl(&k1, &["unpeer", "provider-c2"]);
    agents::peer(
        lab,
        &["--pods", &count.to_string(), "--cpu", "100000", "--memory", "1Pi"],
    )?;
    let ns = format!("bench-offload-{stamp}");
    namespace(c1, &ns).await?;
    let (ok, out, err) = agents::ferryctl(
        &k1,
        &["offload", "namespace", &ns, "--strategy", "Remote", "-o", "json"],
    );
    anyhow::ensure!(ok, "ferryctl offload namespace: {err}");
    let remote_ns = serde_json::from_str::<std::collections::BTreeMap<String, String>>(&out)?
        .remove("provider-c2")
        .context("no provider namespace")?;
    // the virtual node's allocatable follows the provider's free capacity: wait until it counts the bench
    // nodes, so (b) does not start against a smaller node than (a) had
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c1.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pods = nodes.get_opt("ferry-provider-c2").await?.and_then(|n| {
            n.status?
                .allocatable?
                .get("pods")
                .map(|q| ferry_virtual_kubelet::quantity::parse(&q.0).unwrap_or(0) / 1000)
        });
        if pods.is_some_and(|p| p >= i128::from(count)) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the virtual node's allocatable pods stay at {pods:?}, below {count}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deps: Api<Deployment> = Api::namespaced(c1.clone(), &ns);
    eprintln!("[bench] (b) {count} pods in the consumer, offloaded");
    let (cpu1, agents0) = (
        control_plane_cpu(lab),
        cpu_seconds(consumer.pid()) + cpu_seconds(provider.pid()),
    );
    deps.create(&PostParams::default(), &deployment("pods", count, "", true, None))
        .await?;
    let offloaded = wait_ready(&deps, "pods", count, timeout).await;
    let offloaded_cpu = control_plane_cpu(lab) - cpu1;
    let agents_cpu = cpu_seconds(consumer.pid()) + cpu_seconds(provider.pid()) - agents0;
    let rss = rss_mib(consumer.pid(), "VmHWM:");
    let rss_now = rss_mib(consumer.pid(), "VmRSS:");
    drain(c1, &ns).await;
    until_empty(c2, &remote_ns, timeout).await;
    let _ = agents::ferryctl(&k1, &["unpeer", "provider-c2"]);
    let offloaded = offloaded?;
    Ok(OffloadBench {
        bench: "offload",
        pods: count,
        direct_seconds: direct,
        offloaded_seconds: offloaded,
        ratio: offloaded / direct,
        virtual_kubelet_peak_rss_mib: rss?,
        virtual_kubelet_rss_mib: rss_now?,
        direct_control_plane_cpu_seconds: direct_cpu,
        offloaded_control_plane_cpu_seconds: offloaded_cpu,
        offloaded_agents_cpu_seconds: agents_cpu,
    })
}
