//! `ferry-lab bench offload --pods N`: the same N-replica Deployment of hollow pods (a) created directly on
//! the provider (c2) and (b) created in the consumer (c1) in a namespace offloaded to c2 with strategy
//! Remote, so every pod goes through the virtual kubelet, a `ShadowPod`, the provider's controller and its
//! scheduler, and its status comes back. Both are timed to all N Ready as each cluster's Deployment
//! reports it. Real ferry-agents (processes) on both clusters; the provider gets in-process hollow bench
//! nodes for the pods. Prints the consumer agent's peak RSS (the virtual kubelet runs in it).
//!
//! Fair by default: each cluster's processes (control plane, nodes and their children, its ferry-agent)
//! run on their own CPU set, as two machines would, in the direct and the offloaded runs alike (c1 on the
//! first half of the CPUs, c2 and this process, which hosts c2's hollow bench nodes, on the second);
//! `--unpinned` lets them share. Direct and offloaded runs alternate, `--runs` of each; `ratio` is the
//! median of the pairs' ratios. Each apiserver's own request and watch counters give the API writes and
//! watch events per pod on each side.

use std::collections::BTreeMap;
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
use crate::workload::{deployment, wait_ready_traced};

/// One direct run and the offloaded run after it.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    /// Seconds to N Ready, created directly on the provider.
    pub direct_seconds: f64,
    /// Seconds to N Ready, created in the consumer and offloaded.
    pub offloaded_seconds: f64,
    /// offloaded / direct.
    pub ratio: f64,
    /// CPU seconds the lab's processes (both clusters: etcd, apiserver, controller-manager, scheduler, nodes)
    /// spent in the direct run.
    pub direct_control_plane_cpu_seconds: f64,
    /// The same in the offloaded run.
    pub offloaded_control_plane_cpu_seconds: f64,
    /// CPU seconds both ferry-agents spent in the offloaded run.
    pub offloaded_agents_cpu_seconds: f64,
    /// CPU seconds by process in the direct run (`c2-apiserver`, …; `c2-hollow-nodes`: the bench's
    /// in-process nodes).
    pub direct_cpu_by_process: BTreeMap<String, f64>,
    /// The same in the offloaded run, both agents included.
    pub offloaded_cpu_by_process: BTreeMap<String, f64>,
    /// Seconds from deleting the direct Deployment and its pods (grace 0) until the provider holds none of
    /// them (`null`: not within the run's timeout).
    pub direct_teardown_seconds: Option<f64>,
    /// The same for the offloaded pods, deleted in the consumer: until the provider holds none of them.
    pub offloaded_teardown_seconds: Option<f64>,
    /// Pods Ready over time `(seconds, pods)`, direct (for `--plot`; not in the JSON).
    #[serde(skip)]
    pub direct_trace: Vec<(f64, f64)>,
    /// The same, offloaded.
    #[serde(skip)]
    pub offloaded_trace: Vec<(f64, f64)>,
}

/// A ferry-agent's figures over the whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct AgentFigures {
    /// CPU seconds used during the offloaded runs.
    pub cpu_seconds: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
}

/// The result line.
#[derive(Debug, Serialize)]
pub struct OffloadBench {
    /// Always `offload`.
    pub bench: &'static str,
    /// Replicas.
    pub pods: u32,
    /// Whether each cluster ran on its own CPU set.
    pub pinned: bool,
    /// The CPU sets (`c1`, `c2`) when pinned.
    pub cpu_sets: BTreeMap<String, String>,
    /// Each pair of runs, in order.
    pub runs: Vec<Pair>,
    /// Median seconds to N Ready, direct.
    pub direct_seconds: f64,
    /// Median seconds to N Ready, offloaded.
    pub offloaded_seconds: f64,
    /// The median of the pairs' ratios (offloaded / direct).
    pub ratio: f64,
    /// Median control-plane CPU seconds offloaded / direct (both control planes do the work: about 2 at
    /// best).
    pub work_amplification: f64,
    /// Peak resident memory of the consumer's ferry-agent (virtual kubelet included), MiB.
    pub virtual_kubelet_peak_rss_mib: f64,
    /// Its resident memory at the end, MiB.
    pub virtual_kubelet_rss_mib: f64,
    /// Its resident memory with N pods offloaded and Ready minus before the first offloaded run, per pod
    /// (median over the runs): what each offloaded pod costs the virtual kubelet, bytes.
    pub virtual_kubelet_bytes_per_pod: f64,
    /// The consumer's agent.
    pub consumer_agent: AgentFigures,
    /// The provider's agent.
    pub provider_agent: AgentFigures,
    /// API writes per pod (POST, PUT, PATCH, DELETE, APPLY by resource), as each apiserver counted them in
    /// the last pair: `direct c2`, `offloaded c1`, `offloaded c2`.
    pub writes_per_pod: BTreeMap<String, BTreeMap<String, f64>>,
    /// API reads (GET, LIST by resource) per pod, the same way.
    pub reads_per_pod: BTreeMap<String, BTreeMap<String, f64>>,
    /// Watch events sent per pod by kind, the same way.
    pub watch_events_per_pod: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// An apiserver's request and watch counters.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Writes (POST, PUT, PATCH, DELETE, APPLY) by resource (`pods`, `pods/status`, …).
    pub writes: BTreeMap<String, f64>,
    /// Reads (GET, LIST) by resource; watches, which last, are not counted here.
    pub reads: BTreeMap<String, f64>,
    /// Watch events sent, by kind.
    pub events: BTreeMap<String, f64>,
}

/// From an apiserver's `/metrics`: writes and reads by resource (`apiserver_request_total`) and watch
/// events by kind (`apiserver_watch_events_total`).
pub fn api_counters(metrics: &str) -> ApiCounters {
    let mut c = ApiCounters::default();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let label = |k: &str| {
            let at = series.find(&format!("{k}=\""))? + k.len() + 2;
            series[at..].split('"').next()
        };
        if series.starts_with("apiserver_request_total{") {
            let to = match label("verb") {
                Some("POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") => &mut c.writes,
                Some("GET" | "LIST") => &mut c.reads,
                _ => continue,
            };
            let mut r = label("resource").unwrap_or_default().to_string();
            if let Some(sub) = label("subresource").filter(|s| !s.is_empty()) {
                r = format!("{r}/{sub}");
            }
            *to.entry(r).or_insert(0.0) += value;
        } else if series.starts_with("apiserver_watch_events_total{") {
            let kind = label("kind").unwrap_or_default().to_string();
            *c.events.entry(kind).or_insert(0.0) += value;
        }
    }
    c
}

/// `after - before` per pod for each side, as `what` picks the counters.
fn per_pod_table(
    sides: [(&str, &ApiCounters, &ApiCounters); 3],
    what: fn(&ApiCounters) -> &BTreeMap<String, f64>,
    pods: u32,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    sides
        .iter()
        .map(|(side, before, after)| (side.to_string(), per_pod(what(before), what(after), pods)))
        .collect()
}

/// `after - before`, per pod, leaving out what did not change.
fn per_pod(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    pods: u32,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| {
            (
                k.clone(),
                (a - before.get(k).copied().unwrap_or(0.0)) / f64::from(pods.max(1)),
            )
        })
        .map(|(k, d)| (k, (d * 100.0).round() / 100.0))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

async fn scrape(c: &Client) -> ApiCounters {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    api_counters(&c.request_text(req).await.unwrap_or_default())
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

/// CPU seconds so far of every process the lab started (its pid table), by name (`c1-etcd`, …).
fn cpu_by_process(lab: &Lab) -> BTreeMap<String, f64> {
    crate::procs::ProcessTable::new(lab.paths.pids())
        .map(|t| {
            t.list()
                .iter()
                .filter(|p| p.alive())
                .map(|p| (p.name.clone(), cpu_seconds(p.pid)))
                .collect()
        })
        .unwrap_or_default()
}

/// `after - before` by name, to 0.1 s, leaving out what stayed under 0.05 s.
fn cpu_spent(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| (k.clone(), a - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 0.05)
        .map(|(k, d)| (k, tenth(d)))
        .collect()
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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

/// Waits until namespace `ns` has no pods left; the seconds since `from` when it had none (`None`: not
/// within `timeout`).
async fn until_empty(client: &Client, ns: &str, from: std::time::Instant, timeout: Duration) -> Option<f64> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match pods.list_metadata(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => return Some(tenth(from.elapsed().as_secs_f64())),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// Waits until namespace `ns` is gone (everything in it deleted).
async fn until_gone(client: &Client, ns: &str, timeout: Duration) {
    let api: Api<Namespace> = Api::all(client.clone());
    let gone = kube::runtime::wait::await_condition(api, ns, |n: Option<&Namespace>| n.is_none());
    let _ = tokio::time::timeout(timeout, gone).await;
}

/// Deletes what an interrupted bench left (its namespaces, `bench-direct-…` on the provider and
/// `bench-offload-…` on the consumer, their pods at once) and waits until they are gone: their pods would
/// hold the bench nodes' capacity, and the next direct run would wait for it forever.
async fn clear_leftovers(c1: &Client, c2: &Client, k1: &std::path::Path, timeout: Duration) -> Result<()> {
    for (client, prefix) in [(c1, "bench-offload-"), (c2, "bench-direct-")] {
        let names: Vec<String> = Api::<Namespace>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with(prefix))
            .collect();
        for ns in &names {
            eprintln!("[bench] deleting namespace {ns}, left by an interrupted run");
            drain(client, ns).await;
            if prefix == "bench-offload-" {
                let _ = agents::ferryctl(k1, &["unoffload", "namespace", ns, "--force"]);
            }
        }
        for ns in &names {
            until_gone(client, ns, timeout).await;
            let left = Api::<Namespace>::all(client.clone()).get_opt(ns).await?;
            anyhow::ensure!(
                left.is_none(),
                "namespace {ns}, left by an interrupted run, is still there after {}s; fix: delete it \
                 (and its pods, with --grace-period=0 --force) before the next run",
                timeout.as_secs()
            );
        }
    }
    Ok(())
}

/// How the benchmark runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Replicas.
    pub pods: u32,
    /// Pairs of runs.
    pub runs: u32,
    /// Each cluster on its own CPU set.
    pub pinned: bool,
}

/// The CPU sets of c1 and c2: the first and the second half of this machine's CPUs.
fn cpu_sets() -> Result<(Vec<usize>, Vec<usize>)> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    anyhow::ensure!(
        n >= 2,
        "a pinned benchmark needs 2 CPUs or more (this machine has {n}); fix: --unpinned"
    );
    Ok(((0..n / 2).collect(), (n / 2..n).collect()))
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

/// Pins each cluster's processes (by the lab's pid table: `c1-…`, `c2-…`, and everything below them) and
/// the extra PIDs given for each (those alone: the bench's own process, which hosts c2's hollow nodes, is
/// the parent of both agents) to its CPU set, and checks where the extra ones run; `None`: every CPU for
/// all.
fn pin_clusters(lab: &Lab, sets: Option<&(Vec<usize>, Vec<usize>)>, extra: [&[u32]; 2]) -> Result<()> {
    let all: Vec<usize> = (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect();
    let tracked = crate::procs::ProcessTable::new(lab.paths.pids())?.list();
    let cpus = |i: usize| match sets {
        Some(s) if i == 0 => &s.0,
        Some(s) => &s.1,
        None => &all,
    };
    for (i, c) in lab.layout.clusters.iter().take(2).enumerate() {
        let pids: Vec<u32> = tracked
            .iter()
            .filter(|t| t.alive() && t.name.starts_with(&format!("{}-", c.id)))
            .map(|t| t.pid)
            .collect();
        crate::procs::pin(&pids, cpus(i))?;
        crate::procs::pin_only(extra[i], cpus(i))?;
    }
    for (i, pids) in extra.iter().enumerate() {
        for p in *pids {
            let now = crate::procs::affinity(*p);
            anyhow::ensure!(
                now == *cpus(i),
                "process {p} runs on CPUs {now:?}, not on cluster {}'s {:?}",
                i + 1,
                cpus(i)
            );
        }
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(lab: &Lab, o: Options, exe: &std::path::Path) -> Result<OffloadBench> {
    let (c1l, c2l) = (lab.layout.clusters[0].clone(), lab.layout.clusters[1].clone());
    let (c1, c2) = (lab.client(&c1l).await?, lab.client(&c2l).await?);
    let sets = if o.pinned { Some(cpu_sets()?) } else { None };
    let nodes = bench_nodes(&c2l, o.pods)?;
    let task = start_bench_nodes(lab, &c2l, &c2, &nodes, exe).await?;
    let stamp = chrono::Utc::now().format("%H%M%S").to_string();
    let result = measure(lab, &c1, &c2, o, sets.as_ref(), &stamp).await;
    // the lab as it was: every process on every CPU
    let _ = pin_clusters(lab, None, [&[], &[std::process::id()]]);
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(c2.clone());
    for n in &nodes {
        let _ = api.delete(&n.name, &DeleteParams::default()).await;
    }
    task.abort();
    result
}

/// Waits until the virtual node's allocatable counts `count` pods (it follows the provider's free
/// capacity), so an offloaded run does not start against a smaller node than the direct one had.
async fn until_allocatable(c1: &Client, count: u32) -> Result<()> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c1.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pods = nodes.get_opt("ferry-provider-c2").await?.and_then(|n| {
            n.status?
                .allocatable?
                .get("pods")
                .map(|q| ferry_virtual_kubelet::quantity::parse(&q.0).unwrap_or(0) / 1000)
        });
        if pods.is_some_and(|p| p >= i128::from(count)) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the virtual node's allocatable pods stay at {pods:?}, below {count}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(
    lab: &Lab,
    c1: &Client,
    c2: &Client,
    o: Options,
    sets: Option<&(Vec<usize>, Vec<usize>)>,
    stamp: &str,
) -> Result<OffloadBench> {
    let count = o.pods;
    let timeout = Duration::from_secs(120 + u64::from(count) / 20);
    let quota = (count * 2).to_string();
    let mut consumer = agents::start(lab, 0, &[])?;
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
    pin_clusters(
        lab,
        sets,
        [&[consumer.pid()], &[provider.pid(), std::process::id()]],
    )?;
    if let Some((a, b)) = sets {
        eprintln!(
            "[bench] pinned: c1 (control plane, nodes, agent) on CPUs {}, c2 (control plane, nodes, agent, hollow bench nodes) on CPUs {}",
            cpu_list(a),
            cpu_list(b)
        );
    } else {
        eprintln!("[bench] unpinned: both clusters share every CPU");
    }
    let k1 = lab.paths.kubeconfig(&lab.layout.clusters[0]);
    clear_leftovers(c1, c2, &k1, timeout).await?;
    let _ = agents::ferryctl(&k1, &["unpeer", "provider-c2"]);
    agents::peer(
        lab,
        &["--pods", &count.to_string(), "--cpu", "100000", "--memory", "1Pi"],
    )?;
    let (mut pairs, mut agents_cpu) = (Vec::new(), (0.0, 0.0));
    // the consumer agent's memory with nothing offloaded yet, and with N pods offloaded in each run
    let (mut idle_rss, mut rss_per_pod) = (None, Vec::new());
    let (mut writes, mut reads, mut events) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for run in 0..o.runs {
        // (a) directly on the provider
        let direct_ns = format!("bench-direct-{stamp}-{run}");
        namespace(c2, &direct_ns).await?;
        let deps: Api<Deployment> = Api::namespaced(c2.clone(), &direct_ns);
        eprintln!(
            "[bench] run {}/{}: (a) {count} pods directly on the provider",
            run + 1,
            o.runs
        );
        let (cpu0, api2) = (cpu_by_process(lab), scrape(c2).await);
        let bench0 = cpu_seconds(std::process::id());
        deps.create(&PostParams::default(), &deployment("pods", count, "", true, None))
            .await?;
        let direct = wait_ready_traced(&deps, "pods", count, timeout).await;
        let mut direct_by = cpu_spent(&cpu0, &cpu_by_process(lab));
        let direct_cpu = direct_by.values().sum();
        direct_by.insert(
            "c2-hollow-nodes".into(),
            tenth(cpu_seconds(std::process::id()) - bench0),
        );
        let after2 = scrape(c2).await;
        let t = std::time::Instant::now();
        drain(c2, &direct_ns).await;
        let (direct, direct_trace) = direct?;
        let direct_teardown = until_empty(c2, &direct_ns, t, timeout).await;
        let _ = Api::<Namespace>::all(c2.clone())
            .delete(&direct_ns, &DeleteParams::default())
            .await;

        // (b) in the consumer, offloaded
        let ns = format!("bench-offload-{stamp}-{run}");
        namespace(c1, &ns).await?;
        let (ok, out, err) = agents::ferryctl(
            &k1,
            &["offload", "namespace", &ns, "--strategy", "Remote", "-o", "json"],
        );
        anyhow::ensure!(ok, "ferryctl offload namespace: {err}");
        let remote_ns = serde_json::from_str::<BTreeMap<String, String>>(&out)?
            .remove("provider-c2")
            .context("no provider namespace")?;
        until_allocatable(c1, count).await?;
        let deps: Api<Deployment> = Api::namespaced(c1.clone(), &ns);
        eprintln!(
            "[bench] run {}/{}: (b) {count} pods in the consumer, offloaded",
            run + 1,
            o.runs
        );
        let (cpu1, a1, a2, bench1) = (
            cpu_by_process(lab),
            cpu_seconds(consumer.pid()),
            cpu_seconds(provider.pid()),
            cpu_seconds(std::process::id()),
        );
        let (b1, b2) = (scrape(c1).await, scrape(c2).await);
        let idle = *idle_rss.get_or_insert(rss_mib(consumer.pid(), "VmRSS:")?);
        deps.create(&PostParams::default(), &deployment("pods", count, "", true, None))
            .await?;
        let offloaded = wait_ready_traced(&deps, "pods", count, timeout).await;
        let loaded = rss_mib(consumer.pid(), "VmRSS:")?;
        rss_per_pod.push((loaded - idle).max(0.0) * 1024.0 * 1024.0 / f64::from(count.max(1)));
        let mut offloaded_by = cpu_spent(&cpu1, &cpu_by_process(lab));
        let offloaded_cpu = offloaded_by.values().sum();
        let (d1, d2) = (cpu_seconds(consumer.pid()) - a1, cpu_seconds(provider.pid()) - a2);
        offloaded_by.extend([
            ("c1-ferry-agent".to_string(), tenth(d1)),
            ("c2-ferry-agent".to_string(), tenth(d2)),
            (
                "c2-hollow-nodes".to_string(),
                tenth(cpu_seconds(std::process::id()) - bench1),
            ),
        ]);
        agents_cpu = (agents_cpu.0 + d1, agents_cpu.1 + d2);
        let (e1, e2) = (scrape(c1).await, scrape(c2).await);
        let t = std::time::Instant::now();
        drain(c1, &ns).await;
        let offloaded_teardown = until_empty(c2, &remote_ns, t, timeout).await;
        let _ = agents::ferryctl(&k1, &["unoffload", "namespace", &ns, "--force"]);
        // the next direct run starts on a quiet provider: the offloaded namespace and its ShadowPods gone
        until_gone(c2, &remote_ns, timeout).await;
        let (offloaded, offloaded_trace) = offloaded?;
        let sides = [
            ("direct c2", &api2, &after2),
            ("offloaded c1", &b1, &e1),
            ("offloaded c2", &b2, &e2),
        ];
        writes = per_pod_table(sides, |c| &c.writes, count);
        reads = per_pod_table(sides, |c| &c.reads, count);
        events = per_pod_table(sides, |c| &c.events, count);
        let pair = Pair {
            direct_seconds: direct,
            offloaded_seconds: offloaded,
            ratio: offloaded / direct,
            direct_control_plane_cpu_seconds: direct_cpu,
            offloaded_control_plane_cpu_seconds: offloaded_cpu,
            offloaded_agents_cpu_seconds: d1 + d2,
            direct_teardown_seconds: direct_teardown,
            offloaded_teardown_seconds: offloaded_teardown,
            direct_trace,
            offloaded_trace,
            direct_cpu_by_process: direct_by,
            offloaded_cpu_by_process: offloaded_by,
        };
        eprintln!("[bench] run {}: {}", run + 1, serde_json::to_string(&pair)?);
        pairs.push(pair);
    }
    let figures = |pid: u32, cpu: f64| -> Result<AgentFigures> {
        Ok(AgentFigures {
            cpu_seconds: cpu,
            peak_rss_mib: rss_mib(pid, "VmHWM:")?,
            rss_mib: rss_mib(pid, "VmRSS:")?,
        })
    };
    let consumer_agent = figures(consumer.pid(), agents_cpu.0)?;
    let provider_agent = figures(provider.pid(), agents_cpu.1)?;
    let _ = agents::ferryctl(&k1, &["unpeer", "provider-c2"]);
    // gracefully: an agent built with `dhat-heap` writes its heap profile on the way out
    consumer.stop(Duration::from_secs(30));
    let med = |f: fn(&Pair) -> f64| median(pairs.iter().map(f).collect());
    let cpu_sets = sets
        .map(|(a, b)| BTreeMap::from([("c1".to_string(), cpu_list(a)), ("c2".to_string(), cpu_list(b))]))
        .unwrap_or_default();
    Ok(OffloadBench {
        bench: "offload",
        pods: count,
        pinned: sets.is_some(),
        cpu_sets,
        direct_seconds: med(|p| p.direct_seconds),
        offloaded_seconds: med(|p| p.offloaded_seconds),
        ratio: med(|p| p.ratio),
        work_amplification: med(|p| p.offloaded_control_plane_cpu_seconds)
            / med(|p| p.direct_control_plane_cpu_seconds).max(1e-9),
        virtual_kubelet_peak_rss_mib: consumer_agent.peak_rss_mib,
        virtual_kubelet_rss_mib: consumer_agent.rss_mib,
        virtual_kubelet_bytes_per_pod: median(rss_per_pod).round(),
        consumer_agent,
        provider_agent,
        writes_per_pod: writes,
        reads_per_pod: reads,
        watch_events_per_pod: events,
        runs: pairs,
    })
}

/// The pair whose ratio is the median one (the lower middle of an even count).
pub fn median_pair(pairs: &[Pair]) -> Option<&Pair> {
    let mut order: Vec<&Pair> = pairs.iter().collect();
    order.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    order.get(order.len().saturating_sub(1) / 2).copied()
}

/// `--plot`: pods Ready over time in the median pair, direct vs offloaded.
pub fn chart(b: &OffloadBench) -> crate::plot::Chart {
    let pair = median_pair(&b.runs);
    let line = |name: &str, trace: Option<&Vec<(f64, f64)>>| crate::plot::Series {
        name: name.to_string(),
        points: crate::plot::steps(trace.map(Vec::as_slice).unwrap_or_default()),
    };
    crate::plot::Chart {
        title: format!(
            "{} pods Ready over time ({}; median pair, ratio {:.2})",
            b.pods,
            if b.pinned {
                "each cluster on its own CPUs"
            } else {
                "unpinned"
            },
            pair.map(|p| p.ratio).unwrap_or_default()
        ),
        x_label: "seconds since the Deployment was created".into(),
        y_label: "pods Ready".into(),
        series: vec![
            line("direct on the provider", pair.map(|p| &p.direct_trace)),
            line("offloaded from the consumer", pair.map(|p| &p.offloaded_trace)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_api_counters() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let m = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",group="",resource="pods",scope="namespace",subresource="status",verb="PATCH",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 99
apiserver_request_total{code="201",component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="POST",version="v1"} 2
apiserver_watch_events_total{group="",kind="Pod",version="v1"} 40
"#;
        let c = api_counters(m);
        let (w, e) = (&c.writes, &c.events);
        assert_eq!(w.get("pods"), Some(&12.0));
        assert_eq!(w.get("pods/status"), Some(&7.0));
        assert_eq!(w.len(), 2, "reads are not writes: {w:?}");
        assert_eq!(c.reads, BTreeMap::from([("pods".to_string(), 99.0)]));
        assert_eq!(e.get("Pod"), Some(&40.0));
        let pair = |ratio: f64| Pair {
            direct_seconds: 1.0,
            offloaded_seconds: ratio,
            ratio,
            direct_control_plane_cpu_seconds: 0.0,
            offloaded_control_plane_cpu_seconds: 0.0,
            offloaded_agents_cpu_seconds: 0.0,
            direct_teardown_seconds: Some(0.5),
            offloaded_teardown_seconds: None,
            direct_cpu_by_process: BTreeMap::new(),
            offloaded_cpu_by_process: BTreeMap::new(),
            direct_trace: vec![(0.0, 0.0), (1.0, 10.0)],
            offloaded_trace: vec![(0.0, 0.0), (ratio, 10.0)],
        };
        let pairs = [pair(3.0), pair(1.5), pair(2.0)];
        assert_eq!(median_pair(&pairs).map(|p| p.ratio), Some(2.0));
        assert_eq!(median_pair(&pairs[..2]).map(|p| p.ratio), Some(1.5));
        assert!(median_pair(&[]).is_none());
        let after = BTreeMap::from([("pods".to_string(), 32.0), ("leases".to_string(), 1.0)]);
        let before = BTreeMap::from([("pods".to_string(), 12.0), ("leases".to_string(), 1.0)]);
        assert_eq!(
            per_pod(&before, &after, 10),
            BTreeMap::from([("pods".to_string(), 2.0)])
        );
    }
}
