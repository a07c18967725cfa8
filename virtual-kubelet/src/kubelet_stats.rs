//! Resource usage of offloaded pods, pure part: the kubelet's `/stats/summary` types (the part
//! metrics-server reads: CPU and memory of the node, its pods and their containers), what the provider
//! passes a tenant (its pods only), the consumer's summary of a virtual node (each of its pods matched to
//! its twin's stats, renamed to the pod's own name, namespace and UID; the node is their sum), and the same
//! as `/metrics/resource` (Prometheus text).
//!
//! The provider's figures are untrusted: they are matched to this cluster's own pods (a figure for a pod
//! that is not one of them, or a container the pod has not, is dropped), and only numbers and times pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// CPU usage at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// When it was measured (RFC 3339).
    pub time: String,
    /// Usage now, in billionths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative usage, in core-nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// When it was measured (RFC 3339).
    pub time: String,
    /// The working set (what metrics-server reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    /// All memory in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
}

/// A container's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container.
    pub name: String,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// Which pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
}

/// A pod's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    pub pod_ref: PodRef,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Its containers.
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// The node's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node.
    pub node_name: String,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// `/stats/summary` (the fields read here; a kubelet's has more, which are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Its pods.
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

/// What a provider's broker answers a tenant (`GET /v1/stats`): its pods' usage, as the provider names
/// them (the namespace is the provider's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStats {
    /// The tenant's pods.
    pub pods: Vec<PodStats>,
}

/// The most pods a tenant's answer carries, and containers a pod.
pub const MAX_PODS: usize = 20_000;
/// See [`MAX_PODS`].
pub const MAX_CONTAINERS: usize = 64;

/// The pods of `summaries` (the provider's kubelets) in `namespaces` (the tenant's), at most [`MAX_PODS`].
pub fn tenant_pods<'a>(
    summaries: impl IntoIterator<Item = &'a Summary>,
    namespaces: &BTreeSet<String>,
) -> TenantStats {
    TenantStats {
        pods: summaries
            .into_iter()
            .flat_map(|s| &s.pods)
            .filter(|p| namespaces.contains(&p.pod_ref.namespace))
            .take(MAX_PODS)
            .cloned()
            .collect(),
    }
}

/// One of this cluster's pods on a virtual node, and where its twin is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offloaded {
    /// The pod, here.
    pub pod: PodRef,
    /// Its containers (figures for other names are dropped).
    pub containers: BTreeSet<String>,
    /// The twin's namespace on the provider (same name).
    pub remote_namespace: String,
}

/// An RFC 3339 time, or nothing (a provider's garbage does not pass).
fn time(t: &Option<String>) -> Option<String> {
    t.as_ref()
        .filter(|t| t.len() <= 64 && chrono::DateTime::parse_from_rfc3339(t).is_ok())
        .cloned()
}

fn cpu(c: &Option<Cpu>) -> Option<Cpu> {
    let c = c.as_ref()?;
    Some(Cpu {
        time: time(&Some(c.time.clone()))?,
        usage_nano_cores: c.usage_nano_cores,
        usage_core_nano_seconds: c.usage_core_nano_seconds,
    })
}

fn memory(m: &Option<Memory>) -> Option<Memory> {
    let m = m.as_ref()?;
    Some(Memory {
        time: time(&Some(m.time.clone()))?,
        working_set_bytes: m.working_set_bytes,
        usage_bytes: m.usage_bytes,
    })
}

/// The summary of virtual node `node`: [`pods_of`] `pods` and `remote`, as [`summary`] has it.
pub fn node_summary(node: &str, pods: &[Offloaded], remote: &TenantStats) -> Summary {
    summary(node, pods_of(pods, remote))
}

/// Each of `pods` with its twin's figures from `remote` (matched by the twin's namespace and name; pods
/// without figures are left out, as a kubelet leaves out pods it has not measured yet), renamed to the
/// pod's own reference.
pub fn pods_of(pods: &[Offloaded], remote: &TenantStats) -> Vec<PodStats> {
    let by_twin: BTreeMap<(&str, &str), &PodStats> = remote
        .pods
        .iter()
        .map(|p| ((p.pod_ref.namespace.as_str(), p.pod_ref.name.as_str()), p))
        .collect();
    let mut out = Vec::new();
    for o in pods {
        let Some(r) = by_twin.get(&(o.remote_namespace.as_str(), o.pod.name.as_str())) else {
            continue;
        };
        let mut seen = BTreeSet::new();
        let containers = r
            .containers
            .iter()
            .filter(|c| o.containers.contains(&c.name) && seen.insert(c.name.clone()))
            .take(MAX_CONTAINERS)
            .map(|c| ContainerStats {
                name: c.name.clone(),
                start_time: time(&c.start_time),
                cpu: cpu(&c.cpu),
                memory: memory(&c.memory),
            })
            .collect();
        out.push(PodStats {
            pod_ref: o.pod.clone(),
            start_time: time(&r.start_time),
            containers,
            cpu: cpu(&r.cpu),
            memory: memory(&r.memory),
        });
    }
    out
}

/// The summary of node `node` running `pods`: its CPU and memory are their sums (none when none is
/// measured).
pub fn summary(node: &str, pods: Vec<PodStats>) -> Summary {
    let latest = |times: Vec<&String>| times.into_iter().max().cloned();
    let node_cpu = latest(
        pods.iter()
            .filter_map(|p| p.cpu.as_ref().map(|c| &c.time))
            .collect(),
    )
    .map(|time| Cpu {
        time,
        usage_nano_cores: Some(sum(pods.iter().filter_map(|p| p.cpu.as_ref()?.usage_nano_cores))),
        usage_core_nano_seconds: Some(sum(pods
            .iter()
            .filter_map(|p| p.cpu.as_ref()?.usage_core_nano_seconds))),
    });
    let node_memory = latest(
        pods.iter()
            .filter_map(|p| p.memory.as_ref().map(|m| &m.time))
            .collect(),
    )
    .map(|time| Memory {
        time,
        working_set_bytes: Some(sum(pods
            .iter()
            .filter_map(|p| p.memory.as_ref()?.working_set_bytes))),
        usage_bytes: Some(sum(pods.iter().filter_map(|p| p.memory.as_ref()?.usage_bytes))),
    });
    Summary {
        node: NodeStats {
            node_name: node.to_string(),
            start_time: None,
            cpu: node_cpu,
            memory: node_memory,
        },
        pods,
    }
}

fn sum(v: impl Iterator<Item = u64>) -> u64 {
    v.fold(0u64, u64::saturating_add)
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn millis(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `summary` as the kubelet's `/metrics/resource` (Prometheus text format 0.0.4): node, pod and
/// container CPU (cumulative seconds) and working set, container start times, `scrape_error`.
pub fn resource_metrics(summary: &Summary, scrape_error: bool) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64, Option<i64>)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v, at) in samples {
            let _ = match at {
                Some(ms) => writeln!(out, "{name}{labels} {v} {ms}"),
                None => writeln!(out, "{name}{labels} {v}"),
            };
        }
    };
    let cpu_s = |c: &Cpu| {
        c.usage_core_nano_seconds
            .map(|n| (n as f64 / 1e9, millis(&c.time)))
    };
    let ws = |m: &Memory| m.working_set_bytes.map(|b| (b as f64, millis(&m.time)));
    let containers = || {
        summary.pods.iter().flat_map(|p| {
            p.containers.iter().map(move |c| {
                (
                    labels(&[
                        ("container", &c.name),
                        ("namespace", &p.pod_ref.namespace),
                        ("pod", &p.pod_ref.name),
                    ]),
                    c,
                )
            })
        })
    };
    let pods = || {
        summary.pods.iter().map(|p| {
            (
                labels(&[("namespace", &p.pod_ref.namespace), ("pod", &p.pod_ref.name)]),
                p,
            )
        })
    };
    family(
        "container_cpu_usage_seconds_total",
        "counter",
        "[ALPHA] Cumulative cpu time consumed by the container in core-seconds",
        containers()
            .filter_map(|(l, c)| c.cpu.as_ref().and_then(cpu_s).map(|(v, at)| (l, v, at)))
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "gauge",
        "[ALPHA] Current working set of the container in bytes",
        containers()
            .filter_map(|(l, c)| c.memory.as_ref().and_then(ws).map(|(v, at)| (l, v, at)))
            .collect(),
    );
    family(
        "container_start_time_seconds",
        "gauge",
        "[ALPHA] Start time of the container since unix epoch in seconds",
        containers()
            .filter_map(|(l, c)| {
                let ms = millis(c.start_time.as_deref()?)?;
                Some((l, ms as f64 / 1e3, None))
            })
            .collect(),
    );
    let node = labels(&[]);
    family(
        "node_cpu_usage_seconds_total",
        "counter",
        "[ALPHA] Cumulative cpu time consumed by the node in core-seconds",
        summary
            .node
            .cpu
            .as_ref()
            .and_then(cpu_s)
            .map(|(v, at)| vec![(node.clone(), v, at)])
            .unwrap_or_default(),
    );
    family(
        "node_memory_working_set_bytes",
        "gauge",
        "[ALPHA] Current working set of the node in bytes",
        summary
            .node
            .memory
            .as_ref()
            .and_then(ws)
            .map(|(v, at)| vec![(node.clone(), v, at)])
            .unwrap_or_default(),
    );
    family(
        "pod_cpu_usage_seconds_total",
        "counter",
        "[ALPHA] Cumulative cpu time consumed by the pod in core-seconds",
        pods()
            .filter_map(|(l, p)| p.cpu.as_ref().and_then(cpu_s).map(|(v, at)| (l, v, at)))
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "gauge",
        "[ALPHA] Current working set of the pod in bytes",
        pods()
            .filter_map(|(l, p)| p.memory.as_ref().and_then(ws).map(|(v, at)| (l, v, at)))
            .collect(),
    );
    family(
        "scrape_error",
        "gauge",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
        vec![(node, if scrape_error { 1.0 } else { 0.0 }, None)],
    );
    out
}

/// `{k="v",…}` with Prometheus escaping; nothing for no labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-12-05T12:00:00Z";

    fn usage(cores: u64, total: u64, ws: u64) -> (Option<Cpu>, Option<Memory>) {
        (
            Some(Cpu {
                time: T.into(),
                usage_nano_cores: Some(cores),
                usage_core_nano_seconds: Some(total),
            }),
            Some(Memory {
                time: T.into(),
                working_set_bytes: Some(ws),
                usage_bytes: Some(ws * 2),
            }),
        )
    }

    fn remote_pod(ns: &str, name: &str, containers: &[&str], cores: u64) -> PodStats {
        let (cpu, memory) = usage(cores, cores * 1000, cores * 10);
        PodStats {
            pod_ref: PodRef {
                name: name.into(),
                namespace: ns.into(),
                uid: format!("remote-{name}"),
            },
            start_time: Some(T.into()),
            containers: containers
                .iter()
                .map(|c| ContainerStats {
                    name: c.to_string(),
                    start_time: Some(T.into()),
                    cpu: cpu.clone(),
                    memory: memory.clone(),
                })
                .collect(),
            cpu,
            memory,
        }
    }

    fn offloaded(name: &str, containers: &[&str]) -> Offloaded {
        Offloaded {
            pod: PodRef {
                name: name.into(),
                namespace: "shop".into(),
                uid: format!("local-{name}"),
            },
            containers: containers.iter().map(|c| c.to_string()).collect(),
            remote_namespace: "shop-consumer-c1".into(),
        }
    }

    #[test]
    fn a_kubelet_summary_parses_and_only_the_tenants_pods_pass() {
        let kubelet = serde_json::json!({
            "node": {"nodeName": "n1", "startTime": T, "cpu": {"time": T, "usageNanoCores": 5}, "fs": {"x": 1}},
            "pods": [
                {"podRef": {"name": "a", "namespace": "shop-consumer-c1", "uid": "u1"}, "containers": [],
                 "network": {"rxBytes": 3}, "volume": []},
                {"podRef": {"name": "b", "namespace": "kube-system", "uid": "u2"}},
                {"podRef": {"name": "c", "namespace": "other-tenant", "uid": "u3"}}
            ]
        });
        let s: Summary = serde_json::from_value(kubelet).unwrap();
        let mine = tenant_pods([&s], &["shop-consumer-c1".to_string()].into());
        assert_eq!(mine.pods.len(), 1);
        assert_eq!(mine.pods[0].pod_ref.name, "a");
    }

    #[test]
    fn the_node_summary_is_this_clusters_pods_under_their_own_names() {
        let remote = TenantStats {
            pods: vec![
                remote_pod("shop-consumer-c1", "web", &["app", "side", "intruder"], 100),
                remote_pod("shop-consumer-c1", "db", &["db"], 50),
                // not a twin of any pod here: dropped
                remote_pod("shop-consumer-c1", "stranger", &["x"], 7),
                // a namesake in another namespace: dropped
                remote_pod("elsewhere", "web", &["app"], 9),
            ],
        };
        let pods = [
            offloaded("web", &["app", "side"]),
            offloaded("db", &["db"]),
            offloaded("new", &["n"]),
        ];
        let s = node_summary("ferry-provider-c2", &pods, &remote);
        assert_eq!(s.node.node_name, "ferry-provider-c2");
        let names: Vec<&str> = s.pods.iter().map(|p| p.pod_ref.name.as_str()).collect();
        assert_eq!(names, ["web", "db"], "measured pods only, the stranger dropped");
        assert_eq!(s.pods[0].pod_ref, pods[0].pod);
        let cs: Vec<&str> = s.pods[0].containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cs, ["app", "side"], "a container the pod has not is dropped");
        // the node is the sum of its pods
        let node_cpu = s.node.cpu.as_ref().unwrap();
        assert_eq!(node_cpu.usage_nano_cores, Some(150));
        assert_eq!(node_cpu.usage_core_nano_seconds, Some(150_000));
        assert_eq!(s.node.memory.as_ref().unwrap().working_set_bytes, Some(1500));
        // nothing measured: no node figures rather than zeros
        let empty = node_summary("n", &[], &remote);
        assert!(empty.node.cpu.is_none() && empty.pods.is_empty());
    }

    #[test]
    fn a_providers_garbage_times_do_not_pass() {
        let mut bad = remote_pod("shop-consumer-c1", "web", &["app"], 1);
        bad.start_time = Some("yesterday".into());
        bad.cpu.as_mut().unwrap().time = "<script>".into();
        let s = node_summary(
            "n",
            &[offloaded("web", &["app"])],
            &TenantStats { pods: vec![bad] },
        );
        assert!(s.pods[0].start_time.is_none() && s.pods[0].cpu.is_none());
        assert!(s.pods[0].memory.is_some());
    }

    #[test]
    fn resource_metrics_are_prometheus_text() {
        let remote = TenantStats {
            pods: vec![remote_pod("shop-consumer-c1", "web", &["app"], 2_000_000)],
        };
        let s = node_summary("n", &[offloaded("web", &["app"])], &remote);
        let text = resource_metrics(&s, false);
        let at = millis(T).unwrap();
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter".to_string(),
            format!(
                "container_cpu_usage_seconds_total{{container=\"app\",namespace=\"shop\",pod=\"web\"}} 2 {at}"
            ),
            format!(
                "container_memory_working_set_bytes{{container=\"app\",namespace=\"shop\",pod=\"web\"}} 20000000 {at}"
            ),
            format!("pod_cpu_usage_seconds_total{{namespace=\"shop\",pod=\"web\"}} 2 {at}"),
            format!("node_memory_working_set_bytes 20000000 {at}"),
            "scrape_error 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in\n{text}");
        }
        assert!(resource_metrics(&s, true).contains("scrape_error 1"));
        assert_eq!(labels(&[("a", "x\"y\\z\n")]), "{a=\"x\\\"y\\\\z\\n\"}");
    }
}
