//! A pod of the provider's cluster as the provider's controllers cache it (pure, no I/O).
//!
//! The provider's agent watches every pod of its cluster: the `ShadowPod` controller finds each
//! `ShadowPod`'s pod, the ledger counts what each tenant's pods hold, the availability loop sums what
//! every node's pods request. None of them reads more than a pod's identity, its controller, its node, its
//! phase and the sum of its requests. A whole `k8s_openapi` `Pod` (every container, every status
//! condition) cost the agent 737.6 MiB at 30,000 pods; a [`ProviderPod`] keeps only what is read: the spec
//! is never kept (its requests are summed while it is parsed), and [`slim_meta`] drops the metadata
//! nobody reads.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::quantity::Amounts;
use crate::translate::ORIGIN_CLUSTER_LABEL;

/// A provider pod: metadata (slimmed by [`slim_meta`] where it is watched), what its spec asks and its
/// phase.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ProviderPod {
    /// Name, namespace, UID, the origin label, the controller and the deletion mark.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the spec asks.
    #[serde(default)]
    pub spec: Asks,
    /// The phase.
    #[serde(default)]
    pub status: Phase,
}

/// What a pod's spec asks: its node, whether it runs forever and what it takes on a node.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "SpecOnTheWire")]
pub struct Asks {
    /// The node it is bound to.
    pub node_name: Option<String>,
    /// Whether its restart policy is `Always` (the default).
    pub restarts_always: bool,
    /// Its requests as [`Amounts::of_pod`] counts them (one pod included).
    pub requests: Amounts,
}

impl Default for Asks {
    fn default() -> Self {
        Self {
            node_name: None,
            restarts_always: true,
            requests: Amounts::default(),
        }
    }
}

/// A pod's phase (`None` before the kubelet or the scheduler wrote one).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Phase {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
}

/// The parts of a pod spec an [`Asks`] is made of; everything else is skipped unparsed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecOnTheWire {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    containers: Vec<ContainerOnTheWire>,
    #[serde(default, deserialize_with = "null_as_empty")]
    init_containers: Vec<ContainerOnTheWire>,
}

#[derive(Deserialize)]
struct ContainerOnTheWire {
    #[serde(default)]
    resources: Option<ResourcesOnTheWire>,
}

#[derive(Deserialize)]
struct ResourcesOnTheWire {
    #[serde(default)]
    requests: Option<BTreeMap<String, Quantity>>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl From<SpecOnTheWire> for Asks {
    fn from(s: SpecOnTheWire) -> Self {
        fn req(c: &ContainerOnTheWire) -> Option<&BTreeMap<String, Quantity>> {
            c.resources.as_ref()?.requests.as_ref()
        }
        Self {
            requests: Amounts::of_requests(s.containers.iter().map(req), s.init_containers.iter().map(req)),
            restarts_always: s.restart_policy.as_deref().is_none_or(|r| r == "Always"),
            node_name: s.node_name,
        }
    }
}

impl ProviderPod {
    /// The phase, if written.
    pub fn phase(&self) -> Option<&str> {
        self.status.phase.as_deref()
    }

    /// Whether the pod has ended (`Succeeded` or `Failed`).
    pub fn ended(&self) -> bool {
        matches!(self.phase(), Some("Succeeded" | "Failed"))
    }

    /// The tenant (consumer cluster) a pod belongs to: its origin label, which only the provider's
    /// `ShadowPod` controller writes.
    pub fn tenant(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ORIGIN_CLUSTER_LABEL))
            .map(String::as_str)
    }
}

/// Keeps of a watched pod's metadata what the provider's controllers read: name, namespace, UID, the
/// origin label, the controller owner reference (the `ShadowPod` controller maps a pod to its
/// `ShadowPod` by it) and the deletion mark. Annotations, other labels, managed fields, finalizers and the
/// rest are dropped.
pub fn slim_meta(m: &mut ObjectMeta) {
    let labels = m
        .labels
        .take()
        .and_then(|mut l| l.remove_entry(ORIGIN_CLUSTER_LABEL))
        .map(|(k, v)| BTreeMap::from([(k, v)]));
    let owner_references = m
        .owner_references
        .take()
        .map(|o| {
            o.into_iter()
                .filter(|o| o.controller == Some(true))
                .collect::<Vec<_>>()
        })
        .filter(|o| !o.is_empty());
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        labels,
        owner_references,
        ..ObjectMeta::default()
    };
}

core_pod_resource!(ProviderPod);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// A pod as a lab kubelet reports it: labels and annotations of its own, a ShadowPod controller, two
    /// containers and an init container with requests, a full status.
    fn watched() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "ferry-tenant-c1-app", "uid": "u-1", "resourceVersion": "42",
                "generateName": "web-", "creationTimestamp": "2026-12-07T06:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "abc", ORIGIN_CLUSTER_LABEL: "c1"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "now"},
                "finalizers": ["x/y"],
                "ownerReferences": [
                    {"apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod", "name": "web-1", "uid": "s-1",
                     "controller": true, "blockOwnerDeletion": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "c-1"}
                ],
                "managedFields": [{"manager": "ferry", "operation": "Update", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:containers": {}}}}]
            },
            "spec": {
                "nodeName": "node-7", "restartPolicy": "Always",
                "containers": [
                    {"name": "a", "image": "busybox", "command": ["sleep", "3600"],
                     "env": [{"name": "X", "value": "1"}],
                     "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                    {"name": "b", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}
                ],
                "initContainers": [{"name": "i", "image": "busybox", "resources": {"requests": {"cpu": "500m"}}}],
                "volumes": [{"name": "v", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}]
            },
            "status": {
                "phase": "Running", "podIP": "10.244.0.9", "hostIP": "10.0.0.2",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "image": "busybox",
                    "imageID": "sha256:1", "state": {"running": {"startedAt": "2026-12-07T06:00:01Z"}}}]
            }
        })
    }

    #[test]
    fn a_provider_pod_keeps_what_its_spec_asks_and_counts_it_as_a_whole_pod_would() {
        let v: ProviderPod = serde_json::from_value(watched()).unwrap();
        let whole: Pod = serde_json::from_value(watched()).unwrap();
        assert_eq!(v.spec.requests, Amounts::of_pod(&whole));
        // the largest init container (500m) outweighs the containers' sum (350m)
        assert_eq!((v.spec.requests.cpu, v.spec.requests.pods), (500, 1000));
        assert_eq!(v.spec.requests.memory, 64 * 1024 * 1024 * 1000);
        assert_eq!(v.spec.node_name.as_deref(), Some("node-7"));
        assert!(v.spec.restarts_always);
        assert_eq!(v.phase(), Some("Running"));
        assert!(!v.ended());
        assert_eq!(v.tenant(), Some("c1"));
    }

    #[test]
    fn a_missing_or_null_spec_asks_for_one_pod_slot_only_and_restarts_by_default() {
        let bare: ProviderPod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(bare.spec, Asks::default());
        assert!(bare.spec.restarts_always && bare.phase().is_none());
        let nulls: ProviderPod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": null, "initContainers": null, "restartPolicy": "Never"},
            "status": {"phase": "Failed"}
        }))
        .unwrap();
        assert_eq!((nulls.spec.requests.cpu, nulls.spec.requests.pods), (0, 1000));
        assert!(!nulls.spec.restarts_always && nulls.ended());
    }

    #[test]
    fn slimmed_metadata_keeps_identity_the_origin_label_the_controller_and_the_deletion_mark() {
        let mut v: ProviderPod = serde_json::from_value(watched()).unwrap();
        v.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        slim_meta(&mut v.metadata);
        let m = &v.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref(), m.uid.as_deref()),
            (Some("web-1"), Some("ferry-tenant-c1-app"), Some("u-1"))
        );
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(
            m.labels,
            Some(BTreeMap::from([(
                ORIGIN_CLUSTER_LABEL.to_string(),
                "c1".to_string()
            )]))
        );
        let owners = m.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1, "only the controller is kept");
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].api_version.as_str(),
                owners[0].uid.as_str()
            ),
            ("ShadowPod", "ferry.dev/v1alpha1", "s-1")
        );
        assert!(m.annotations.is_none() && m.managed_fields.is_none() && m.finalizers.is_none());
        assert!(m.resource_version.is_none() && m.generate_name.is_none() && m.creation_timestamp.is_none());
        // a pod of no tenant and no controller keeps no label map and no owner list at all
        let mut local = ObjectMeta {
            labels: Some(BTreeMap::from([("app".into(), "x".into())])),
            ..Default::default()
        };
        slim_meta(&mut local);
        assert!(local.labels.is_none() && local.owner_references.is_none());
    }

    #[test]
    fn a_provider_pod_is_a_pod_to_the_api_and_far_smaller_than_one() {
        use kube::Resource;
        assert_eq!(ProviderPod::kind(&()), "Pod");
        assert_eq!(
            ProviderPod::url_path(&(), Some("n")),
            Pod::url_path(&(), Some("n"))
        );
        assert!(std::mem::size_of::<ProviderPod>() * 2 < std::mem::size_of::<Pod>());
    }
}
