//! ferry's virtual node: the provider cluster as a `Node` in the consumer. Start reading at
//! [`translate`], the pure pod and status translation, and [`VirtualNodeIdentity`], which names the node.
//! The pure parts: [`node`] (the Node object and its status), [`quantity`] (resource arithmetic),
//! [`admission`] (the pod webhook's decision). The controllers: [`consumer`] (the virtual kubelet of one
//! peering: node, lease, pod reflection) and [`provider`] (the `ShadowPod` controller and slice
//! availability).

/// `Resource` (a core/v1 Pod) and `Metadata` for a slim pod type with a `metadata: ObjectMeta` field, so
/// that kube's `Api` lists and watches pods into it: `core_pod_resource!(T)`, or `core_pod_resource!(T<S>; S)`
/// for a type generic over `S`.
macro_rules! core_pod_resource {
    ($t:ty $(; $g:ident)?) => {
        impl$(<$g>)? k8s_openapi::Resource for $t {
            const API_VERSION: &'static str = "v1";
            const GROUP: &'static str = "";
            const KIND: &'static str = "Pod";
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = "pods";
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl$(<$g>)? k8s_openapi::Metadata for $t {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }
    };
}

pub mod admission;
pub mod consumer;
pub mod heartbeat;
pub mod kubelet_api;
pub mod kubelet_server;
pub mod kubelet_stats;
pub mod kubelet_stream;
pub mod lite;
pub mod metrics;
pub mod node;
pub mod objects;
pub mod peer;
pub mod pods;
pub mod policy;
pub mod provider;
pub mod provider_pod;
pub mod quantity;
pub mod reflect;
pub mod remote;
pub mod status_writer;
pub mod supervisor;
pub mod translate;

/// Errors of the virtual kubelet and the provider-side controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver said no (or could not be reached).
    #[error("{what}: {source}")]
    Api {
        /// What was being done, naming the object and the cluster.
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// Waiting for something to appear (a remote store to sync, a namespace mapping).
    #[error("{0}")]
    NotYet(String),
    /// A `ShadowPod` template that is not a pod this provider runs.
    #[error("ShadowPod {0}: {1}")]
    Template(String, String),
}

/// `map_err` helper: an apiserver error while doing `what`.
pub(crate) fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// Label on everything a tenant owns on the provider (its namespaces above all): the tenant's cluster ID.
/// Only the provider writes it; a namespace without it belongs to no tenant.
pub const TENANT_LABEL: &str = "ferry.dev/tenant";

/// Annotation the provider puts on a `ShadowPod` it refuses (`<reason>: <message>`), so the consumer,
/// which watches `ShadowPod`s as metadata only, can show the reason on its pod.
pub const REFUSAL_ANNOTATION: &str = "ferry.dev/refusal";

/// Name of the `ResourceSlice` the provider grants in a tenant namespace.
pub const GRANTED_SLICE: &str = "granted";

/// Label every virtual node carries.
pub const VIRTUAL_NODE_LABEL: (&str, &str) = ("type", "virtual-node");
/// Label with the provider's cluster ID.
pub const REMOTE_CLUSTER_LABEL: &str = "ferry.dev/remote-cluster-id";
/// Taint key that keeps DaemonSets and unaware pods off virtual nodes (effect NoExecute).
pub const VIRTUAL_NODE_TAINT: &str = "virtual-node.ferry.dev/not-allowed";

/// How a provider appears in the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNodeIdentity {
    /// Node name, `ferry-<cluster id>`.
    pub node_name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
}

impl VirtualNodeIdentity {
    /// The identity of the virtual node for provider `cluster_id` (a DNS-1123 label, so the name fits).
    pub fn for_provider(cluster_id: &str) -> Self {
        Self {
            node_name: format!("ferry-{cluster_id}"),
            labels: vec![
                (VIRTUAL_NODE_LABEL.0.to_string(), VIRTUAL_NODE_LABEL.1.to_string()),
                (REMOTE_CLUSTER_LABEL.to_string(), cluster_id.to_string()),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_is_named_after_the_provider_and_labelled() {
        let id = VirtualNodeIdentity::for_provider("prod-eu");
        assert_eq!(id.node_name, "ferry-prod-eu");
        assert!(id.labels.contains(&("type".into(), "virtual-node".into())));
        assert!(
            id.labels
                .contains(&(REMOTE_CLUSTER_LABEL.into(), "prod-eu".into()))
        );
    }
}
