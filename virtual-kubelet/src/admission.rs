//! What the pod admission webhook does to a new pod (no I/O): [`decide`] takes the pod and its namespace's
//! `NamespaceOffloading` (if any) and answers leave it, patch it, or deny it with the reason.
//!
//! - not offloaded, `Local`, or a DaemonSet's pod: unchanged (the virtual node's `NoExecute` taint keeps it
//!   off);
//! - `LocalAndRemote`: tolerate the virtual node, prefer nodes that are not virtual (so local capacity is
//!   used first); a pod that needs the host (see [`crate::translate::refusals`]) is left unchanged and so
//!   stays local;
//! - `Remote`: tolerate and *require* a virtual node; a pod that needs the host is denied with every reason.
//!
//! A `clusterSelector` narrows which virtual nodes qualify (local nodes stay eligible under
//! `LocalAndRemote`).

use ferry_crds::NamespaceOffloadingSpec;
use ferry_crds::kinds::PodOffloadingStrategy;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PreferredSchedulingTerm, Toleration,
};
use serde_json::{Value, json};

use crate::{VIRTUAL_NODE_LABEL, VIRTUAL_NODE_TAINT};

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Admit unchanged.
    Unchanged,
    /// Admit with these JSON-patch operations.
    Patch(Vec<Value>),
    /// Refuse, with the message the user sees.
    Deny(String),
}

fn owned_by_daemonset(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
}

fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

/// The pod's required node-selector terms, each extended by `extra` (one copy per alternative), so
/// `existing AND (alt1 OR alt2)` stays in the disjunctive form Kubernetes wants.
fn and_terms(
    existing: &[NodeSelectorTerm],
    alternatives: &[Vec<NodeSelectorRequirement>],
) -> Vec<NodeSelectorTerm> {
    let base = if existing.is_empty() {
        vec![NodeSelectorTerm::default()]
    } else {
        existing.to_vec()
    };
    let mut out = Vec::new();
    for t in &base {
        for alt in alternatives {
            let mut t = t.clone();
            t.match_expressions
                .get_or_insert_with(Vec::new)
                .extend(alt.iter().cloned());
            out.push(t);
        }
    }
    out
}

/// What to do with `pod`, created in a namespace offloaded by `offloading` (`None`: not offloaded).
pub fn decide(pod: &Pod, offloading: Option<&NamespaceOffloadingSpec>) -> Decision {
    let Some(off) = offloading else {
        return Decision::Unchanged;
    };
    if off.pod_offloading_strategy == PodOffloadingStrategy::Local || owned_by_daemonset(pod) {
        return Decision::Unchanged;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let refused = crate::translate::refusals(&spec);
    let remote_only = off.pod_offloading_strategy == PodOffloadingStrategy::Remote;
    if !refused.is_empty() {
        if remote_only {
            let why: Vec<String> = refused.iter().map(ToString::to_string).collect();
            return Decision::Deny(format!(
                "namespace {:?} offloads every pod (podOffloadingStrategy Remote) but this pod cannot run on a provider: {}",
                pod.metadata.namespace.clone().unwrap_or_default(),
                why.join("; ")
            ));
        }
        return Decision::Unchanged;
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    if !tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some(VIRTUAL_NODE_TAINT))
    {
        tolerations.push(Toleration {
            key: Some(VIRTUAL_NODE_TAINT.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        });
    }
    let mut affinity: Affinity = spec.affinity.clone().unwrap_or_default();
    let na: &mut NodeAffinity = affinity.node_affinity.get_or_insert_with(Default::default);
    let (k, v) = VIRTUAL_NODE_LABEL;
    let mut virtual_node = vec![req(k, "In", &[v])];
    virtual_node.extend(off.cluster_selector.iter().map(|(sk, sv)| req(sk, "In", &[sv])));
    let existing = na
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    let alternatives = if remote_only {
        Some(vec![virtual_node])
    } else if off.cluster_selector.is_empty() {
        None
    } else {
        Some(vec![vec![req(k, "NotIn", &[v])], virtual_node])
    };
    if let Some(alts) = alternatives {
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: and_terms(&existing, &alts),
        });
    }
    if !remote_only {
        na.preferred_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(PreferredSchedulingTerm {
                weight: 100,
                preference: NodeSelectorTerm {
                    match_expressions: Some(vec![req(k, "NotIn", &[v])]),
                    ..Default::default()
                },
            });
    }
    Decision::Patch(vec![
        json!({"op": "add", "path": "/spec/tolerations", "value": tolerations}),
        json!({"op": "add", "path": "/spec/affinity", "value": affinity}),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "demo"}, "spec": spec})).unwrap()
    }
    fn plain() -> Pod {
        pod(json!({"containers": [{"name": "c", "image": "x"}]}))
    }
    fn off(strategy: PodOffloadingStrategy, sel: &[(&str, &str)]) -> NamespaceOffloadingSpec {
        NamespaceOffloadingSpec {
            pod_offloading_strategy: strategy,
            cluster_selector: sel.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            namespace_mapping_strategy: Default::default(),
        }
    }
    /// The pod after the patch.
    fn apply(p: &Pod, d: &Decision) -> Pod {
        let Decision::Patch(ops) = d else {
            panic!("expected a patch, got {d:?}")
        };
        let mut v = serde_json::to_value(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
        json_patch::patch(&mut v, &patch).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_of_namespaces_not_offloaded_or_local_and_daemonset_pods_are_left_alone() {
        assert_eq!(decide(&plain(), None), Decision::Unchanged);
        assert_eq!(
            decide(&plain(), Some(&off(PodOffloadingStrategy::Local, &[]))),
            Decision::Unchanged
        );
        let mut ds = plain();
        ds.metadata.owner_references = Some(vec![
            serde_json::from_value(
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u"}),
            )
            .unwrap(),
        ]);
        assert_eq!(
            decide(&ds, Some(&off(PodOffloadingStrategy::LocalAndRemote, &[]))),
            Decision::Unchanged
        );
    }

    #[test]
    fn local_and_remote_tolerates_and_prefers_local_nodes() {
        let p = apply(
            &plain(),
            &decide(&plain(), Some(&off(PodOffloadingStrategy::LocalAndRemote, &[]))),
        );
        let s = p.spec.unwrap();
        let t = &s.tolerations.unwrap()[0];
        assert_eq!(
            (t.key.as_deref(), t.effect.as_deref()),
            (Some(VIRTUAL_NODE_TAINT), Some("NoExecute"))
        );
        let na = s.affinity.unwrap().node_affinity.unwrap();
        assert!(na.required_during_scheduling_ignored_during_execution.is_none());
        let pref = &na.preferred_during_scheduling_ignored_during_execution.unwrap()[0];
        assert_eq!(pref.weight, 100);
        assert_eq!(
            pref.preference.match_expressions.as_ref().unwrap()[0].operator,
            "NotIn"
        );
    }

    #[test]
    fn remote_requires_a_virtual_node_and_keeps_the_pods_own_terms() {
        let p = pod(
            json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}}),
        );
        let out = apply(
            &p,
            &decide(&p, Some(&off(PodOffloadingStrategy::Remote, &[("region", "eu")]))),
        );
        let terms = out
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for t in &terms {
            let keys: Vec<_> = t
                .match_expressions
                .as_ref()
                .unwrap()
                .iter()
                .map(|e| e.key.as_str())
                .collect();
            assert_eq!(keys, ["zone", "type", "region"]);
        }
    }

    #[test]
    fn a_cluster_selector_under_local_and_remote_keeps_local_nodes_eligible() {
        let out = apply(
            &plain(),
            &decide(
                &plain(),
                Some(&off(PodOffloadingStrategy::LocalAndRemote, &[("region", "eu")])),
            ),
        );
        let na = out.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let terms = na
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].operator, "NotIn");
        assert_eq!(terms[1].match_expressions.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn host_access_stays_local_or_is_denied_with_the_reason() {
        let p = pod(json!({"hostNetwork": true, "containers": [{"name": "c"}]}));
        assert_eq!(
            decide(&p, Some(&off(PodOffloadingStrategy::LocalAndRemote, &[]))),
            Decision::Unchanged
        );
        let Decision::Deny(msg) = decide(&p, Some(&off(PodOffloadingStrategy::Remote, &[]))) else {
            panic!("expected a denial")
        };
        assert!(msg.contains("hostNetwork") && msg.contains("fix:"), "{msg}");
    }

    #[test]
    fn an_existing_toleration_is_not_doubled() {
        let p = pod(json!({"containers": [{"name": "c"}], "tolerations": [
            {"key": VIRTUAL_NODE_TAINT, "operator": "Exists", "effect": "NoExecute"}]}));
        let out = apply(
            &p,
            &decide(&p, Some(&off(PodOffloadingStrategy::LocalAndRemote, &[]))),
        );
        assert_eq!(out.spec.unwrap().tolerations.unwrap().len(), 1);
    }
}
