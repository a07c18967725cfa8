//! What one virtual kubelet knows of its peering ([`Peer`]): shared by the node's heartbeat, the pod
//! reflection and the object reflection, so none of them imports another for it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::Client;

use crate::VirtualNodeIdentity;

/// What one virtual kubelet needs to know.
pub struct Peer {
    /// The provider's cluster ID.
    pub provider: String,
    /// This (consumer) cluster's ID.
    pub consumer: String,
    /// The tenant namespace on the provider (home of the `ResourceSlice`).
    pub tenant_namespace: String,
    /// How this cluster sees the provider's pod CIDRs (identity where not remapped).
    pub remaps: BTreeMap<IpNet, IpNet>,
    /// How the provider sees this cluster's pod CIDRs (for the endpoints copied there).
    pub provider_view: BTreeMap<IpNet, IpNet>,
    /// This cluster.
    pub local: Client,
    /// The provider, as the tenant's identity.
    pub remote: Client,
    /// Version string shown as the node's kubelet version.
    pub version: String,
    /// Where this cluster's kubelet API for virtual nodes is reached (the node's `InternalIP` and
    /// daemon endpoint), if it runs.
    pub kubelet_endpoint: Option<std::net::SocketAddr>,
    /// How fast its pods are reflected.
    pub pace: Pace,
}

/// How fast a virtual kubelet reflects its pods: what an operator trades between the pace of a burst,
/// the load on this cluster's control plane and the agent's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// How long the local pods' status patches gather before they are sent together (zero: each at once
    /// from its reconcile); see [`crate::status_writer`].
    pub status_tick: std::time::Duration,
    /// Pod reconciles at once (and status patches of a tick in flight at once); each holds a connection
    /// and its buffers on both sides.
    pub reconciles: u16,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            status_tick: crate::status_writer::TICK,
            reconciles: crate::consumer::RECONCILES,
        }
    }
}

impl Peer {
    pub(crate) fn node_name(&self) -> String {
        VirtualNodeIdentity::for_provider(&self.provider).node_name
    }

    pub(crate) fn translate(&self, ip: IpAddr) -> IpAddr {
        ferry_tunnel::ipam::translate(ip, &self.remaps).unwrap_or(ip)
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
