//! The virtual `Node` as plain data (no I/O): labels, taints, capacity and conditions.
//!
//! Start at [`virtual_node`] (the object created once) and [`node_status`] (the status the virtual kubelet
//! posts). Two taints: [`crate::VIRTUAL_NODE_TAINT`] (`NoExecute`) keeps DaemonSets and pods of namespaces
//! that are not offloaded away, [`BURST_TAINT`] (`PreferNoSchedule`, never tolerated) makes the scheduler
//! prefer local nodes, so the virtual node takes the overflow. The node has no `kubernetes.io/hostname`
//! label on purpose: topology spreading then ignores it instead of pulling pods onto an empty node.

use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::quantity::Amounts;
use crate::{VIRTUAL_NODE_TAINT, VirtualNodeIdentity};

/// Taint that makes the scheduler fill local nodes first (effect `PreferNoSchedule`).
pub const BURST_TAINT: &str = "virtual-node.ferry.dev/burst";

/// What the virtual kubelet knows of the provider when it posts status.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// `Ok` when the provider's `/livez` answered in time, else why not (shown in the Ready condition).
    pub livez: Result<(), String>,
    /// The tunnel: `Some(true)` connected, `Some(false)` down, `None` not known (no `PeerNetwork`).
    pub network: Option<bool>,
    /// The grant (node capacity).
    pub granted: Amounts,
    /// What the provider can run for this tenant now (node allocatable), within the grant.
    pub available: Amounts,
    /// The provider cordoned this tenant (its `ResourceSlice` says so): the node gets [`CORDON_TAINT`].
    pub cordoned: bool,
}

/// Taint the virtual node carries while the provider has cordoned this tenant (effect `NoSchedule`): no
/// new pod is scheduled there, the pods already there keep running. A taint of its own, not
/// `spec.unschedulable`, so that the provider's uncordon never undoes a `kubectl cordon` of the consumer.
pub const CORDON_TAINT: &str = "virtual-node.ferry.dev/provider-cordoned";

/// The node's taints with [`CORDON_TAINT`] added (`cordoned`) or removed; `None` when they already are
/// so (pure).
pub fn cordon_taints(taints: &[Taint], cordoned: bool) -> Option<Vec<Taint>> {
    let has = taints.iter().any(|t| t.key == CORDON_TAINT);
    if has == cordoned {
        return None;
    }
    let mut out: Vec<Taint> = taints.iter().filter(|t| t.key != CORDON_TAINT).cloned().collect();
    if cordoned {
        out.push(Taint {
            key: CORDON_TAINT.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    Some(out)
}

/// The virtual node, as first created.
pub fn virtual_node(id: &VirtualNodeIdentity) -> Node {
    let mut labels: std::collections::BTreeMap<String, String> = id.labels.iter().cloned().collect();
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("kubernetes.io/role".into(), "agent".into());
    Node {
        metadata: ObjectMeta {
            name: Some(id.node_name.clone()),
            labels: Some(labels),
            annotations: Some([("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(vec![
                Taint {
                    key: VIRTUAL_NODE_TAINT.into(),
                    value: Some("true".into()),
                    effect: "NoExecute".into(),
                    ..Default::default()
                },
                Taint {
                    key: BURST_TAINT.into(),
                    value: Some("true".into()),
                    effect: "PreferNoSchedule".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": kind, "status": if status { "True" } else { "False" }, "reason": reason, "message": message,
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    })
}

/// The `status` merge patch the virtual kubelet posts. `now` is RFC 3339.
///
/// `lastTransitionTime` is set to `now` here; the caller keeps the old one when a condition's status did
/// not change ([`keep_transition_times`]).
/// `kubelet`: where the kubelet API for the virtual nodes is reached (its `InternalIP` and daemon
/// endpoint; the apiserver dials it for `kubectl logs`), if it runs.
pub fn node_status(o: &Observed, now: &str, version: &str, kubelet: Option<std::net::SocketAddr>) -> Value {
    let (cap_cpu, cap_mem, cap_pods) = o.granted.to_quantities();
    let (cpu, mem, pods) = o.available.to_quantities();
    let mut conditions = vec![
        match &o.livez {
            Ok(()) => condition(
                "Ready",
                true,
                "ProviderReachable",
                "the provider's apiserver answers /livez",
                now,
            ),
            Err(e) => condition("Ready", false, "ProviderUnreachable", e, now),
        },
        condition(
            "MemoryPressure",
            false,
            "ProviderManaged",
            "the provider evicts",
            now,
        ),
        condition(
            "DiskPressure",
            false,
            "ProviderManaged",
            "the provider evicts",
            now,
        ),
        condition(
            "PIDPressure",
            false,
            "ProviderManaged",
            "the provider evicts",
            now,
        ),
    ];
    if let Some(up) = o.network {
        conditions.push(if up {
            condition(
                "NetworkUnavailable",
                false,
                "TunnelConnected",
                "the tunnel to the provider is up",
                now,
            )
        } else {
            condition(
                "NetworkUnavailable",
                true,
                "TunnelDown",
                "the tunnel to the provider is down (see its PeerNetwork)",
                now,
            )
        });
    }
    let (addresses, port) = match kubelet {
        Some(k) => (
            json!([{ "type": "InternalIP", "address": k.ip().to_string() }]),
            k.port(),
        ),
        None => (json!([]), 0),
    };
    json!({ "status": {
        "addresses": addresses,
        "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
        "capacity": { "cpu": cap_cpu, "memory": cap_mem, "pods": cap_pods },
        "allocatable": { "cpu": cpu, "memory": mem, "pods": pods },
        "conditions": conditions,
        "nodeInfo": {
            "kubeletVersion": version, "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            "containerRuntimeVersion": "ferry://provider", "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": "", "osImage": "ferry virtual node",
        },
    }})
}

/// Keeps each condition's old `lastTransitionTime` when its status did not change.
pub fn keep_transition_times(patch: &mut Value, old: &Node) {
    let old: Vec<_> = old
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(conds) = patch
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conds {
            let kind = c["type"].as_str().unwrap_or_default().to_string();
            if let Some(prev) = old.iter().find(|p| p.type_ == kind)
                && Some(prev.status.as_str()) == c["status"].as_str()
                && let Some(t) = &prev.last_transition_time
            {
                c["lastTransitionTime"] = serde_json::to_value(t).unwrap_or(Value::Null);
            }
        }
    }
}

/// Whether a node posted by [`node_status`] says Ready.
pub fn is_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        Observed {
            livez: Ok(()),
            network: None,
            granted: Amounts {
                cpu: 8000,
                memory: 16 * 1000 * (1 << 30),
                pods: 110_000,
            },
            available: Amounts {
                cpu: 6000,
                memory: 8 * 1000 * (1 << 30),
                pods: 100_000,
            },
            cordoned: false,
        }
    }

    #[test]
    fn a_cordon_adds_its_taint_once_and_an_uncordon_removes_only_it() {
        let base = virtual_node(&VirtualNodeIdentity::for_provider("p1"))
            .spec
            .unwrap()
            .taints
            .unwrap();
        assert_eq!(cordon_taints(&base, false), None);
        let cordoned = cordon_taints(&base, true).unwrap();
        assert_eq!(cordoned.len(), base.len() + 1);
        let t = cordoned.last().unwrap();
        assert_eq!((t.key.as_str(), t.effect.as_str()), (CORDON_TAINT, "NoSchedule"));
        // the other taints (and a consumer's own, e.g. from kubectl cordon) stay, in order
        assert_eq!(&cordoned[..base.len()], &base[..]);
        assert_eq!(cordon_taints(&cordoned, true), None);
        assert_eq!(cordon_taints(&cordoned, false).unwrap(), base);
        assert_eq!(cordon_taints(&[], true).unwrap().len(), 1);
    }

    #[test]
    fn the_node_is_tainted_twice_and_has_no_hostname_label() {
        let n = virtual_node(&VirtualNodeIdentity::for_provider("p1"));
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["type"], "virtual-node");
        assert_eq!(labels["ferry.dev/remote-cluster-id"], "p1");
        assert!(!labels.contains_key("kubernetes.io/hostname"));
        let taints = n.spec.unwrap().taints.unwrap();
        let effects: Vec<_> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            effects,
            [
                (VIRTUAL_NODE_TAINT, "NoExecute"),
                (BURST_TAINT, "PreferNoSchedule")
            ]
        );
    }

    #[test]
    fn capacity_is_the_grant_and_allocatable_what_is_free() {
        let s = node_status(&observed(), "2026-01-01T00:00:00Z", "v", None);
        assert_eq!(s["status"]["capacity"]["cpu"], "8000m");
        assert_eq!(s["status"]["capacity"]["pods"], "110");
        assert_eq!(s["status"]["allocatable"]["cpu"], "6000m");
        assert_eq!(s["status"]["allocatable"]["memory"], (8u64 << 30).to_string());
        assert_eq!(s["status"]["allocatable"]["pods"], "100");
    }

    #[test]
    fn the_kubelet_api_is_the_nodes_internal_ip_and_daemon_endpoint() {
        let s = node_status(&observed(), "t", "v", Some("198.19.97.10:10260".parse().unwrap()));
        assert_eq!(
            s["status"]["addresses"],
            json!([{ "type": "InternalIP", "address": "198.19.97.10" }])
        );
        assert_eq!(s["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10260);
        // without it: no address (the apiserver then says so instead of dialling a wrong one)
        let s = node_status(&observed(), "t", "v", None);
        assert_eq!(s["status"]["addresses"], json!([]));
    }

    #[test]
    fn ready_follows_livez_and_network_unavailable_follows_the_tunnel() {
        let mut o = observed();
        let s = node_status(&o, "t", "v", None);
        assert_eq!(s["status"]["conditions"][0]["status"], "True");
        assert!(
            !s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "NetworkUnavailable")
        );
        o.livez = Err("GET https://x/livez: timed out after 1s".into());
        o.network = Some(false);
        let s = node_status(&o, "t", "v", None);
        assert_eq!(s["status"]["conditions"][0]["status"], "False");
        assert_eq!(s["status"]["conditions"][0]["reason"], "ProviderUnreachable");
        assert!(
            s["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );
        let net = &s["status"]["conditions"][4];
        assert_eq!(
            (net["type"].as_str(), net["status"].as_str()),
            (Some("NetworkUnavailable"), Some("True"))
        );
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let first = node_status(&observed(), "2026-01-01T00:00:00Z", "v", None);
        let old: Node = serde_json::from_value(json!({"metadata": {}, "status": first["status"]})).unwrap();
        let mut o = observed();
        let mut same = node_status(&o, "2026-01-01T00:01:00Z", "v", None);
        keep_transition_times(&mut same, &old);
        assert_eq!(
            same["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            same["status"]["conditions"][0]["lastHeartbeatTime"],
            "2026-01-01T00:01:00Z"
        );
        o.livez = Err("down".into());
        let mut changed = node_status(&o, "2026-01-01T00:02:00Z", "v", None);
        keep_transition_times(&mut changed, &old);
        assert_eq!(
            changed["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:02:00Z"
        );
        assert!(is_ready(&old));
    }
}
