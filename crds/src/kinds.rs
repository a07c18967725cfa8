//! The provider-side and shared kinds: `Tenant`, `ResourceSlice`, `VirtualNode`, `NamespaceOffloading`,
//! `ShadowPod`, `PeerNetwork`. (`ForeignCluster` has its own module.)

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ObjectRef, PackedJson, ResourceAmounts, preserve_unknown_object};

/// A consumer admitted by this (provider) cluster.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.clusterID"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.tenantNamespace"}"#,
    printcolumn = r#"{"name":"Cordoned","type":"boolean","jsonPath":".spec.cordoned"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The consumer's cluster ID.
    #[serde(rename = "clusterID")]
    #[schemars(regex(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub cluster_id: String,
    /// SHA-256 fingerprint (hex) of the consumer's Ed25519 cluster key.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub public_key_fingerprint: String,
    /// The namespace the consumer's identity is confined to.
    pub tenant_namespace: String,
    /// The user name of the consumer's identity for the current peering (what RBAC binds); certificates of
    /// earlier peerings carry other names and are bound to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// No new offloading is accepted while true.
    #[serde(default)]
    pub cordoned: bool,
    /// What this tenant's pods may do here. The defaults are safe (like Pod Security "baseline" with
    /// "restricted"-style volumes); the provider's operator widens them per tenant.
    #[serde(default)]
    pub policy: TenantPolicy,
}

/// The provider's policy for one tenant's pods. The provider's `ShadowPod` controller builds every pod
/// under it and its validating webhook refuses any pod in a tenant namespace that breaks it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicy {
    /// Linux capabilities containers may add beyond the baseline set (AUDIT_WRITE, CHOWN, DAC_OVERRIDE,
    /// FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_capabilities: Vec<String>,
    /// Volume types allowed beyond the safe set (configMap, secret, emptyDir, projected, downwardAPI,
    /// persistentVolumeClaim, ephemeral), e.g. `csi` or `nfs`. `hostPath` is never allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_volume_types: Vec<String>,
    /// Node labels every pod of this tenant is confined to (the provider's choice, not the consumer's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints every pod of this tenant tolerates (the provider's choice: nodes it dedicates to tenants
    /// with a taint, together with `nodeSelector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Runtime class every pod of this tenant runs with (e.g. a sandbox such as gVisor or Kata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

/// Tenant status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Whether a slice was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SlicePhase {
    /// Granted as asked.
    Accepted,
    /// Granted in part (see `granted`).
    Partial,
    /// Refused (see `reason`).
    Denied,
}

/// Resources a consumer asks a provider for.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ResourceSlice",
    namespaced,
    status = "ResourceSliceStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.providerClusterID"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSliceSpec {
    /// The provider asked.
    #[serde(rename = "providerClusterID")]
    pub provider_cluster_id: String,
    /// The consumer asking.
    #[serde(rename = "consumerClusterID")]
    pub consumer_cluster_id: String,
    /// What is asked for.
    pub resources: ResourceAmounts,
}

/// What the provider granted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSliceStatus {
    /// Accepted, Partial or Denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SlicePhase>,
    /// The granted amounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<ResourceAmounts>,
    /// Why not all was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the tenant can use now: the grant, capped by what it uses plus what the provider's nodes have
    /// free (the virtual node's allocatable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<ResourceAmounts>,
    /// The provider cordoned this tenant (`ferryctl cordon tenant`): its new pods are refused, and the
    /// consumer's virtual node takes none (`available` is zero, the node gets a `NoSchedule` taint).
    #[serde(default)]
    pub cordoned: bool,
}

/// A virtual node in the consumer, backed by a provider's granted slice.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "VirtualNode",
    namespaced,
    status = "VirtualNodeStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.clusterID"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNodeSpec {
    /// The provider's cluster ID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// The granted slice behind it.
    pub resource_slice: ObjectRef,
    /// Node name (default `ferry-<clusterID>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Extra node labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Virtual node status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualNodeStatus {
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where an offloaded namespace's pods may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PodOffloadingStrategy {
    /// Local nodes and virtual nodes.
    #[default]
    LocalAndRemote,
    /// Local nodes only.
    Local,
    /// Virtual nodes only.
    Remote,
}

/// How the namespace is named on the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NamespaceMappingStrategy {
    /// `<namespace>-<consumer cluster ID>`: never clashes.
    #[default]
    DefaultName,
    /// The same name (fails when it exists on the provider).
    EnforceSameName,
}

/// Offloading of the namespace it lives in.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "NamespaceOffloading",
    namespaced,
    status = "NamespaceOffloadingStatus",
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.podOffloadingStrategy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceOffloadingSpec {
    /// Where pods may run.
    #[serde(default)]
    pub pod_offloading_strategy: PodOffloadingStrategy,
    /// Which providers (by virtual node labels, as in a node selector term); empty: all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_selector: BTreeMap<String, String>,
    /// How the namespace is named on providers.
    #[serde(default)]
    pub namespace_mapping_strategy: NamespaceMappingStrategy,
}

/// Offloading status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceOffloadingStatus {
    /// Provider cluster ID → namespace there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_namespaces: BTreeMap<String, String>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A pod the provider's controller owns, so it survives a lost consumer.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "ShadowPod",
    namespaced,
    status = "ShadowPodStatus",
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.consumerClusterID"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPodSpec {
    /// The consumer the pod belongs to.
    #[serde(rename = "consumerClusterID")]
    pub consumer_cluster_id: String,
    /// The consumer pod's UID (reflection adopts by it after restarts).
    #[serde(rename = "consumerPodUID")]
    pub consumer_pod_uid: String,
    /// The pod template (metadata and spec), translated for the provider.
    #[schemars(schema_with = "preserve_unknown_object")]
    pub template: PackedJson,
}

/// ShadowPod status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPodStatus {
    /// The provider pod's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Times the provider pod was recreated.
    #[serde(default)]
    pub recreations: u32,
    /// `Admitted`: whether the provider's policy and the tenant's grant let the pod run (False with the
    /// field at fault and the fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The network of one peering: CIDRs, remaps, WireGuard, MTU, and the tunnel's health.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "PeerNetwork",
    status = "PeerNetworkStatus",
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.clusterID"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Latency","type":"number","jsonPath":".status.latencyMs"}"#,
    printcolumn = r#"{"name":"MTU","type":"integer","jsonPath":".status.tunnelMTU"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerNetworkSpec {
    /// The peer's cluster ID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// This cluster's pod and service CIDRs.
    #[serde(rename = "localCIDRs")]
    pub local_cidrs: Vec<String>,
    /// The peer's pod and service CIDRs.
    #[serde(rename = "remoteCIDRs")]
    pub remote_cidrs: Vec<String>,
    /// The peer's WireGuard public key (base64).
    pub peer_public_key: String,
    /// The peer's WireGuard endpoint (`host:port`); absent on the side that waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_endpoint: Option<String>,
    /// Underlay MTU; absent: probed.
    #[serde(rename = "underlayMTU", default, skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u32>,
    /// This side's address on the tunnel link, with prefix (e.g. `169.254.64.1/30`; the provider
    /// picks the link in the handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_address: Option<String>,
    /// The peer's address on the tunnel link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tunnel_address: Option<String>,
    /// This side's WireGuard UDP port (the probe responder listens on the next port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// The peer's standby gateway endpoints (`IP:port`, at most 4): where its gateway is reached when
    /// another replica is active. The gateway tries them in turn while its peer does not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_standby_endpoints: Vec<String>,
}

/// Tunnel health as the gateway sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerNetworkStatus {
    /// `Connected` / `NotConnected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Remote CIDR → how it is seen here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remaps: BTreeMap<String, String>,
    /// Heartbeat round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Probed path MTU.
    #[serde(rename = "pathMTU", default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    /// Tunnel MTU.
    #[serde(rename = "tunnelMTU", default, skip_serializing_if = "Option::is_none")]
    pub tunnel_mtu: Option<u32>,
    /// Times the path MTU changed while the tunnel was up (the gateway keeps probing it).
    #[serde(rename = "mtuChanges", default)]
    pub mtu_changes: u64,
    /// The last change, e.g. `path MTU 1500 -> 1400, tunnel MTU 1440 -> 1340 at 2026-12-05T06:00:00Z`.
    #[serde(rename = "lastMTUChange", default, skip_serializing_if = "Option::is_none")]
    pub last_mtu_change: Option<String>,
    /// Bytes received.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent.
    #[serde(default)]
    pub tx_bytes: u64,
    /// The node the active gateway runs on (route agents on the other nodes route the peer's CIDRs
    /// there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_node: Option<String>,
    /// That node's address.
    #[serde(rename = "gatewayNodeIP", default, skip_serializing_if = "Option::is_none")]
    pub gateway_node_ip: Option<String>,
    /// When the active gateway replica became active (RFC 3339): a failover shows as a new time and node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_active_since: Option<String>,
    /// The active replica's identity on the gateway Lease (`<node>_<instance>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_replica: Option<String>,
    /// What the active gateway measured on its node (read by `ferryctl doctor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<PeerNetworkDiagnostics>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The datapath facts the active gateway measures on its node every 2 s: what only that node can see
/// (WireGuard's handshake, its nftables rules, conntrack, DF probes through the tunnel).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerNetworkDiagnostics {
    /// When these were measured (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    /// This side's WireGuard public key (the peer's `peerPublicKey` must equal it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Seconds since WireGuard's last completed handshake (it rekeys every 2 minutes; none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_seconds: Option<u64>,
    /// Heartbeats through the tunnel lost among the last 20 (10 s), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<f64>,
    /// Times the gateway found its nftables rules (NAT, MSS clamp) removed and applied them again.
    #[serde(default)]
    pub rules_removed: u64,
    /// The last time it found them removed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rules_removed: Option<String>,
    /// The MSS clamp is part of the rules.
    #[serde(default)]
    pub mss_clamp: bool,
    /// DF probes through the tunnel at the tunnel MTU and at the clamped MSS's packet size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub df_probe: Option<DfProbe>,
    /// `nf_conntrack_count` on the gateway's node (absent: conntrack not loaded there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_count: Option<u64>,
    /// `nf_conntrack_max` on the gateway's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_max: Option<u64>,
    /// `net.ipv4.ip_local_port_range` on the gateway's node, e.g. `32768-60999`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_ports: Option<String>,
}

/// DF probes sent through the tunnel to the peer gateway's responder: a full-size packet that is lost while
/// a small one passes is an MTU blackhole, found even where ICMP is filtered. With the MSS clamp, a full TCP
/// segment (MSS + 40 bytes of IPv4 and TCP headers) is exactly the tunnel MTU, so the first probe is also
/// the MSS-sized one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DfProbe {
    /// The probe at the tunnel MTU (whole IP packet, bytes).
    pub mtu_bytes: u32,
    /// It was answered.
    pub mtu_answered: bool,
    /// The probe at 1280 bytes (the least any IPv6 path carries).
    pub floor_bytes: u32,
    /// It was answered.
    pub floor_answered: bool,
}
