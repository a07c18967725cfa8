//! `ForeignCluster`: one peer cluster, as seen from this cluster (both sides have one).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the peer is to this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PeeringRole {
    /// The peer lends resources to this cluster.
    Provider,
    /// The peer borrows resources from this cluster.
    Consumer,
}

/// The desired peering with one remote cluster.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ForeignCluster",
    status = "ForeignClusterStatus",
    shortname = "fc",
    printcolumn = r#"{"name":"Cluster ID","type":"string","jsonPath":".spec.clusterID"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ForeignClusterSpec {
    /// The peer's stable cluster ID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// What the peer is to this cluster.
    pub role: PeeringRole,
    /// The peer's peering-broker URL (`https://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
    /// Consumer side: the Secret in `ferry-system` whose key `token` holds the peering token; the agent's
    /// ForeignCluster reconciler performs the handshake with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// Resources to ask the provider for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::common::ResourceAmounts>,
}

/// What ferry observed about the peering, one condition per module.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForeignClusterStatus {
    /// `Authenticated`, `Network`, `VirtualNode`, each a `metav1.Condition`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last error, naming the endpoint (URL, port) that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
