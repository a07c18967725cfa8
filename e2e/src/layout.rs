//! The lab's shape as plain data: clusters, ports, CIDRs, node subnets and pod IPs. No I/O.
//!
//! [`LabLayout::plan`] turns what the operator typed into a validated layout, or one [`LayoutError`] that
//! names the flag and the fix. [`SubnetPool`] hands out pod IPs inside one node's subnet.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Ports each cluster takes, counted from the lab's base port.
pub const PORTS_PER_CLUSTER: u16 = 10;

/// A bad input, worded for the operator: what is wrong, and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A CIDR flag that does not parse.
    #[error("{flag} {value:?} is not a CIDR ({reason}); fix: pass a prefix such as {example}")]
    BadCidr {
        /// The flag, e.g. `--pod-cidr`.
        flag: &'static str,
        /// What was given.
        value: String,
        /// Why it does not parse.
        reason: String,
        /// A valid example.
        example: &'static str,
    },
    /// A CIDR with host bits set, e.g. `10.244.1.0/16`.
    #[error("{flag} {value:?} has host bits set; fix: use its network address {network}")]
    HostBits {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// The network the operator probably meant.
        network: String,
    },
    /// The node mask does not fit inside the pod CIDR.
    #[error(
        "--node-cidr-mask {mask} does not fit in --pod-cidr {cidr} for {nodes} nodes; fix: use a larger pod CIDR or a mask between /{min} and /{max}"
    )]
    NodeMask {
        /// The mask given.
        mask: u8,
        /// The cluster's pod CIDR.
        cidr: IpNet,
        /// Nodes that need a subnet.
        nodes: u32,
        /// Smallest usable mask.
        min: u8,
        /// Largest usable mask.
        max: u8,
    },
    /// Service CIDRs of two clusters, or a service CIDR and a pod CIDR, overlap.
    #[error("{what}: {a} overlaps {b}; fix: give each cluster its own --service-cidr outside the pod CIDRs")]
    Overlap {
        /// Which ranges.
        what: String,
        /// One range.
        a: IpNet,
        /// The other.
        b: IpNet,
    },
    /// A count out of range.
    #[error("{flag} {value} is out of range; fix: pass a value from {min} to {max}")]
    Range {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A repeatable flag given neither once nor once per cluster.
    #[error(
        "{flag} given {given} times for {clusters} clusters; fix: pass it once (for every cluster) or once per cluster"
    )]
    Count {
        /// The flag.
        flag: &'static str,
        /// How often it was given.
        given: usize,
        /// Clusters.
        clusters: u32,
    },
    /// Real nodes asked for on an IPv6-only pod CIDR.
    #[error(
        "--real-nodes needs an IPv4 --pod-cidr (real nodes' bridge, routes and kube-proxy are IPv4 here), got {0}; fix: pass --real-nodes 0 with an IPv6 pod CIDR, or an IPv4 pod CIDR"
    )]
    RealNodesIpv6(IpNet),
    /// A lab name that cannot be used in interface and namespace names.
    #[error(
        "--name {0:?} is not a lab name; fix: use 1 to 10 lowercase letters or digits, starting with a letter"
    )]
    Name(String),
}

/// Parses a CIDR flag into a network, refusing host bits.
pub fn parse_cidr(flag: &'static str, value: &str) -> Result<IpNet, LayoutError> {
    let example = if value.contains(':') {
        "fd00:10:244::/56"
    } else {
        "10.244.0.0/16"
    };
    let net: IpNet = value
        .trim()
        .parse()
        .map_err(|e: ipnet::AddrParseError| LayoutError::BadCidr {
            flag,
            value: value.to_string(),
            reason: e.to_string(),
            example,
        })?;
    if net.trunc() != net {
        return Err(LayoutError::HostBits {
            flag,
            value: value.to_string(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// What the operator asked for (flags of `ferry-lab up`), before validation.
#[derive(Clone, Debug)]
pub struct LabRequest {
    /// Lab name: prefix of every namespace and state directory.
    pub name: String,
    /// Number of clusters.
    pub clusters: u32,
    /// Pod CIDRs, one for all clusters or one per cluster.
    pub pod_cidrs: Vec<String>,
    /// Service CIDRs, one per cluster; empty means 10.96.0.0/16, 10.97.0.0/16, ...
    pub service_cidrs: Vec<String>,
    /// Prefix length of each node's pod subnet in an IPv4 pod CIDR.
    pub node_cidr_mask: u8,
    /// Prefix length of each node's pod subnet in an IPv6 pod CIDR.
    pub node_cidr_mask_v6: u8,
    /// Lab nodes per cluster.
    pub nodes: u32,
    /// Real nodes (kubelet 1.20.2 + containerd) per cluster.
    pub real_nodes: u32,
    /// Every second real node (real-node-2, -4, …) on a second node network behind the cluster's
    /// router, so that routing to the gateway's node has to cross subnets.
    pub second_subnet: bool,
    /// First port; cluster i uses `base_port + 10 * i ..`.
    pub base_port: u16,
    /// Node capacity.
    pub node_capacity: NodeCapacity,
    /// WAN MTU.
    pub wan_mtu: u32,
}

/// What one lab node advertises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// CPU, as a Kubernetes quantity (e.g. `4`).
    pub cpu: String,
    /// Memory, as a Kubernetes quantity (e.g. `8Gi`).
    pub memory: String,
    /// Pods.
    pub pods: u32,
}

/// Ports of one cluster on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPorts {
    /// etcd client port.
    pub etcd_client: u16,
    /// etcd peer port.
    pub etcd_peer: u16,
    /// kube-apiserver secure port.
    pub apiserver: u16,
}

impl ClusterPorts {
    /// Each port with what uses it, for error messages.
    pub fn named(&self) -> [(u16, &'static str); 3] {
        [
            (self.etcd_client, "etcd client"),
            (self.etcd_peer, "etcd peer"),
            (self.apiserver, "kube-apiserver"),
        ]
    }
}

/// One cluster of the lab, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    /// 1-based index.
    pub index: u32,
    /// Short name, `c1`, `c2`, ...
    pub id: String,
    /// Pod CIDR.
    pub pod_cidr: IpNet,
    /// Service CIDR.
    pub service_cidr: IpNet,
    /// Prefix length of each node's subnet.
    pub node_cidr_mask: u8,
    /// Ports on 127.0.0.1.
    pub ports: ClusterPorts,
    /// Lab nodes.
    pub nodes: u32,
    /// Real nodes (kubelet 1.20.2 + containerd, each in its own network namespace).
    #[serde(default)]
    pub real_nodes: u32,
    /// Third octet of the node network `198.19.<n>.0/24`. Its control-plane end lives in the machine's root
    /// namespace, so labs running side by side need distinct ones: derived from the lab's ports, which
    /// are distinct already.
    #[serde(default)]
    pub node_net: u8,
    /// Every second real node on the second node network ([`ClusterLayout::second_network`]).
    #[serde(default)]
    pub second_subnet: bool,
    /// The host's address on its WAN link (IPv4, /24); the WAN router is `.1` of that /24.
    pub wan_ip: IpAddr,
    /// The host's address on its WAN link (IPv6, /64); the WAN router is `::1` of that /64.
    pub wan_ip6: IpAddr,
}

impl ClusterLayout {
    /// The apiserver URL.
    pub fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// The name of lab node `k` (0-based).
    pub fn node_name(&self, k: u32) -> String {
        format!("lab-node-{}", k + 1)
    }

    /// The WAN router's address on this cluster's link (IPv4, IPv6).
    pub fn wan_gateways(&self) -> (IpAddr, IpAddr) {
        (
            IpAddr::from([198, 18, self.index as u8, 1]),
            format!("fd00:198:18:{:x}::1", self.index)
                .parse()
                .expect("literal address"),
        )
    }

    /// The pod subnet of lab node `k` (0-based).
    pub fn node_subnet(&self, k: u32) -> Result<IpNet, LayoutError> {
        node_subnet(self.pod_cidr, self.node_cidr_mask, k)
    }

    /// The node network that real nodes sit on (`198.19.<node_net>.0/24`, in the benchmarking range like
    /// the WAN): the cluster's host namespace is its router at `.1`, the control plane's front is `.254`.
    pub fn node_network(&self) -> IpNet {
        IpNet::new(IpAddr::from([198, 19, self.node_net, 0]), 24).expect("literal prefix")
    }

    /// The node network's router: the cluster's host namespace (where the gateway runs).
    pub fn node_router(&self) -> IpAddr {
        IpAddr::from([198, 19, self.node_net, 1])
    }

    /// The control plane's address on the node network (the root namespace's end of its link): nodes reach
    /// the apiserver at `https://<this>:6443` and the cluster DNS at `<this>:53`.
    pub fn control_plane_ip(&self) -> IpAddr {
        IpAddr::from([198, 19, self.node_net, 254])
    }

    /// The host's second WAN address (`.3` beside [`Self::wan_ip`]): its edge forwards the tunnels' UDP
    /// ports there to the second real node, as a gateway node's own public address.
    pub fn wan_ip2(&self) -> IpAddr {
        match self.wan_ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                IpAddr::from([o[0], o[1], o[2], 3])
            }
            v6 => v6,
        }
    }

    /// The second node network (`198.19.<node_net + 128>.0/24`), where every second real node sits when
    /// the lab was started with `--second-subnet`; its router is the cluster's host namespace too (`.1`).
    pub fn second_network(&self) -> IpNet {
        IpNet::new(IpAddr::from([198, 19, self.node_net.wrapping_add(128), 0]), 24).expect("literal prefix")
    }

    /// Whether real node `k` sits on the second node network.
    pub fn on_second_network(&self, k: u32) -> bool {
        self.second_subnet && k % 2 == 1
    }

    /// The node network real node `k` sits on.
    pub fn real_node_network(&self, k: u32) -> IpNet {
        if self.on_second_network(k) {
            self.second_network()
        } else {
            self.node_network()
        }
    }

    /// Real node `k`'s router: the host namespace's address on its node network.
    pub fn real_node_router(&self, k: u32) -> IpAddr {
        match self.real_node_network(k).addr() {
            IpAddr::V4(a) => {
                let o = a.octets();
                IpAddr::from([o[0], o[1], o[2], 1])
            }
            v6 => v6,
        }
    }

    /// Every node network in use (one, or two with `--second-subnet` and two real nodes or more).
    pub fn node_networks(&self) -> Vec<IpNet> {
        let mut v = vec![self.node_network()];
        if self.second_subnet && self.real_nodes > 1 {
            v.push(self.second_network());
        }
        v
    }

    /// The name of real node `k` (0-based).
    pub fn real_node_name(&self, k: u32) -> String {
        format!("real-node-{}", k + 1)
    }

    /// The address of real node `k` on the node network.
    pub fn real_node_ip(&self, k: u32) -> IpAddr {
        match self.real_node_network(k).addr() {
            IpAddr::V4(a) => {
                let o = a.octets();
                IpAddr::from([o[0], o[1], o[2], 10 + k as u8])
            }
            v6 => v6,
        }
    }

    /// The pod subnet of real node `k`: subnets from [`REAL_NODE_SUBNET_BASE`] on, after the lab nodes'.
    pub fn real_node_subnet(&self, k: u32) -> Result<IpNet, LayoutError> {
        node_subnet(self.pod_cidr, self.node_cidr_mask, REAL_NODE_SUBNET_BASE + k)
    }

    /// The cluster DNS Service's IP (the tenth address of the service CIDR, as kubeadm picks).
    pub fn dns_service_ip(&self) -> IpAddr {
        self.service_cidr
            .hosts()
            .nth(9)
            .expect("a validated service CIDR has ten addresses")
    }
}

/// Port of the apiserver's front on the node network (and on the cluster's WAN address, through its edge).
pub const APISERVER_FRONT_PORT: u16 = 6443;

/// Name of the network namespace of real node `k` (0-based) of cluster `cluster_id` in lab `lab`.
pub fn real_node_netns(lab: &str, cluster_id: &str, k: u32) -> String {
    format!("{lab}-{cluster_id}-n{}", k + 1)
}

/// Index of the first real node's pod subnet in the pod CIDR (lab nodes take `0..64`, the bench's hollow
/// nodes start at 100).
pub const REAL_NODE_SUBNET_BASE: u32 = 200;
/// Most real nodes per cluster (each runs a kubelet, a containerd and a kube-proxy on this one machine).
pub const MAX_REAL_NODES: u32 = 8;

/// The whole lab, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabLayout {
    /// Lab name.
    pub name: String,
    /// Clusters.
    pub clusters: Vec<ClusterLayout>,
    /// Node capacity.
    pub node_capacity: NodeCapacity,
    /// WAN MTU.
    pub wan_mtu: u32,
}

/// The `k`-th subnet of length `mask` inside `cidr`.
pub fn node_subnet(cidr: IpNet, mask: u8, k: u32) -> Result<IpNet, LayoutError> {
    let too_small = || LayoutError::NodeMask {
        mask,
        cidr,
        nodes: k + 1,
        min: cidr.prefix_len(),
        max: cidr.max_prefix_len().saturating_sub(2),
    };
    if mask < cidr.prefix_len() || mask > cidr.max_prefix_len().saturating_sub(2) {
        return Err(too_small());
    }
    let bits = u32::from(mask - cidr.prefix_len());
    if bits < 32 && u64::from(k) >= (1u64 << bits) {
        return Err(too_small());
    }
    cidr.subnets(mask)
        .map_err(|_| too_small())?
        .nth(k as usize)
        .ok_or_else(too_small)
}

impl LabLayout {
    /// Validates a request into a layout.
    pub fn plan(req: &LabRequest) -> Result<Self, LayoutError> {
        let name_ok = !req.name.is_empty()
            && req.name.len() <= 10
            && req.name.starts_with(|c: char| c.is_ascii_lowercase())
            && req
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !name_ok {
            return Err(LayoutError::Name(req.name.clone()));
        }
        if !(1..=8).contains(&req.clusters) {
            return Err(LayoutError::Range {
                flag: "--clusters",
                value: req.clusters.into(),
                min: 1,
                max: 8,
            });
        }
        if !(1..=64).contains(&req.nodes) {
            return Err(LayoutError::Range {
                flag: "--nodes",
                value: req.nodes.into(),
                min: 1,
                max: 64,
            });
        }
        if req.real_nodes > MAX_REAL_NODES {
            return Err(LayoutError::Range {
                flag: "--real-nodes",
                value: req.real_nodes.into(),
                min: 0,
                max: MAX_REAL_NODES.into(),
            });
        }
        if !(1280..=9000).contains(&req.wan_mtu) {
            return Err(LayoutError::Range {
                flag: "--wan-mtu",
                value: req.wan_mtu.into(),
                min: 1280,
                max: 9000,
            });
        }
        let last_port = u64::from(req.base_port) + u64::from(PORTS_PER_CLUSTER) * u64::from(req.clusters + 1);
        if req.base_port < 1024 || last_port > 65535 {
            return Err(LayoutError::Range {
                flag: "--base-port",
                value: req.base_port.into(),
                min: 1024,
                max: 65535 - u64::from(PORTS_PER_CLUSTER) * u64::from(req.clusters + 1),
            });
        }
        let n = req.clusters as usize;
        for (flag, list) in [
            ("--pod-cidr", &req.pod_cidrs),
            ("--service-cidr", &req.service_cidrs),
        ] {
            if list.len() > 1 && list.len() != n {
                return Err(LayoutError::Count {
                    flag,
                    given: list.len(),
                    clusters: req.clusters,
                });
            }
        }
        let pick = |list: &[String], i: usize, flag: &'static str, default: String| {
            let value = match list.len() {
                0 => default,
                1 => list[0].clone(),
                _ => list[i].clone(),
            };
            parse_cidr(flag, &value)
        };
        let mut clusters = Vec::with_capacity(n);
        for i in 0..n {
            let pod_cidr = pick(&req.pod_cidrs, i, "--pod-cidr", "10.244.0.0/16".into())?;
            let service_cidr = pick(
                &req.service_cidrs,
                i,
                "--service-cidr",
                format!("10.{}.0.0/16", 96 + i),
            )?;
            let index = i as u32 + 1;
            let base = req.base_port + PORTS_PER_CLUSTER * index as u16;
            let cluster = ClusterLayout {
                index,
                id: format!("c{index}"),
                pod_cidr,
                service_cidr,
                node_cidr_mask: if pod_cidr.addr().is_ipv6() {
                    req.node_cidr_mask_v6
                } else {
                    req.node_cidr_mask
                },
                ports: ClusterPorts {
                    etcd_client: base,
                    etcd_peer: base + 1,
                    apiserver: base + 2,
                },
                nodes: req.nodes,
                real_nodes: req.real_nodes,
                node_net: ((u32::from(base) / u32::from(PORTS_PER_CLUSTER)) % 256) as u8,
                second_subnet: req.second_subnet,
                wan_ip: IpAddr::from([198, 18, index as u8, 2]),
                wan_ip6: format!("fd00:198:18:{index:x}::2")
                    .parse()
                    .expect("literal address"),
            };
            // every lab node (and the bench's hollow nodes, which start at index 100) needs a subnet
            cluster.node_subnet(req.nodes - 1)?;
            if req.real_nodes > 0 {
                if pod_cidr.addr().is_ipv6() {
                    return Err(LayoutError::RealNodesIpv6(pod_cidr));
                }
                cluster.real_node_subnet(req.real_nodes - 1)?;
            }
            if pod_cidr.contains(&service_cidr) || service_cidr.contains(&pod_cidr) {
                return Err(LayoutError::Overlap {
                    what: format!("cluster {} service and pod CIDRs", cluster.id),
                    a: service_cidr,
                    b: pod_cidr,
                });
            }
            clusters.push(cluster);
        }
        let services: Vec<IpNet> = clusters.iter().map(|c| c.service_cidr).collect();
        for (i, a) in services.iter().enumerate() {
            for b in &services[i + 1..] {
                if a.contains(b) || b.contains(a) {
                    return Err(LayoutError::Overlap {
                        what: "service CIDRs of two clusters".into(),
                        a: *a,
                        b: *b,
                    });
                }
            }
        }
        Ok(Self {
            name: req.name.clone(),
            clusters,
            node_capacity: req.node_capacity.clone(),
            wan_mtu: req.wan_mtu,
        })
    }

    /// One cluster by 1-based index or `cN` id.
    pub fn cluster(&self, which: &str) -> Option<&ClusterLayout> {
        let idx: Option<u32> = which.trim_start_matches('c').parse().ok();
        self.clusters
            .iter()
            .find(|c| Some(c.index) == idx || c.id == which)
    }

    /// Name of a cluster's host network namespace.
    pub fn host_netns(&self, c: &ClusterLayout) -> String {
        format!("{}-{}", self.name, c.id)
    }

    /// Name of the WAN network namespace.
    pub fn wan_netns(&self) -> String {
        format!("{}-wan", self.name)
    }

    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("{}-", self.name)
    }
}

/// Name of the network namespace of a pod (by its UID) in cluster `c` of lab `lab`.
pub fn pod_netns(lab: &str, cluster_id: &str, uid: &str) -> String {
    format!("{lab}-{cluster_id}-p{}", short_uid(uid))
}

/// Name of the host-side veth of a pod (15 characters at most).
pub fn pod_veth(uid: &str) -> String {
    format!("v{}", short_uid(uid))
}

fn short_uid(uid: &str) -> String {
    uid.chars().filter(|c| c.is_ascii_hexdigit()).take(10).collect()
}

/// Pod IPs of one node's subnet: `.1` is the node's gateway, the network and broadcast addresses are never
/// handed out.
#[derive(Clone, Debug)]
pub struct SubnetPool {
    subnet: IpNet,
    used: BTreeSet<IpAddr>,
}

impl SubnetPool {
    /// A pool over `subnet`.
    pub fn new(subnet: IpNet) -> Self {
        Self {
            subnet,
            used: BTreeSet::new(),
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The node's gateway address (first host).
    pub fn gateway(&self) -> IpAddr {
        self.subnet
            .hosts()
            .next()
            .expect("a node subnet has at least 2 hosts")
    }

    /// Marks an address as in use (adopting a pod that already has it). False if outside the subnet.
    pub fn claim(&mut self, ip: IpAddr) -> bool {
        if !self.subnet.contains(&ip) || ip == self.gateway() {
            return false;
        }
        self.used.insert(ip);
        true
    }

    /// The lowest free address, or `None` when the subnet is full.
    pub fn allocate(&mut self) -> Option<IpAddr> {
        let gw = self.gateway();
        let ip = self
            .subnet
            .hosts()
            .find(|ip| *ip != gw && !self.used.contains(ip))?;
        self.used.insert(ip);
        Some(ip)
    }

    /// Gives an address back.
    pub fn release(&mut self, ip: IpAddr) {
        self.used.remove(&ip);
    }

    /// Addresses in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req() -> LabRequest {
        LabRequest {
            name: "ferrylab".into(),
            clusters: 2,
            pod_cidrs: vec![],
            service_cidrs: vec![],
            node_cidr_mask: 24,
            node_cidr_mask_v6: 64,
            nodes: 2,
            real_nodes: 0,
            second_subnet: false,
            base_port: 20000,
            node_capacity: NodeCapacity {
                cpu: "4".into(),
                memory: "8Gi".into(),
                pods: 110,
            },
            wan_mtu: 1500,
        }
    }

    #[test]
    fn default_lab_has_overlapping_pod_cidrs_and_distinct_service_cidrs_and_ports() {
        let lab = LabLayout::plan(&req()).unwrap();
        assert_eq!(lab.clusters.len(), 2);
        let (a, b) = (&lab.clusters[0], &lab.clusters[1]);
        assert_eq!(a.pod_cidr, b.pod_cidr);
        assert_eq!(a.pod_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(a.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(b.service_cidr.to_string(), "10.97.0.0/16");
        assert_eq!(a.ports.apiserver, 20012);
        assert_eq!(b.ports.etcd_client, 20020);
        assert_ne!(a.wan_ip, b.wan_ip);
        assert_eq!(lab.host_netns(a), "ferrylab-c1");
    }

    #[test]
    fn bad_pod_cidr_names_the_flag_and_the_fix() {
        let mut r = req();
        r.pod_cidrs = vec!["10.244.0.0/33".into()];
        let e = LabLayout::plan(&r).unwrap_err().to_string();
        assert!(e.starts_with("--pod-cidr \"10.244.0.0/33\" is not a CIDR"), "{e}");
        assert!(e.contains("fix: pass a prefix such as 10.244.0.0/16"), "{e}");
        r.pod_cidrs = vec!["banana".into()];
        assert!(matches!(LabLayout::plan(&r), Err(LayoutError::BadCidr { .. })));
        r.pod_cidrs = vec!["10.244.1.0/16".into()];
        let e = LabLayout::plan(&r).unwrap_err().to_string();
        assert!(e.contains("use its network address 10.244.0.0/16"), "{e}");
    }

    #[test]
    fn per_cluster_pod_cidrs_and_too_many_of_them() {
        let mut r = req();
        r.pod_cidrs = vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()];
        let lab = LabLayout::plan(&r).unwrap();
        assert_eq!(lab.clusters[1].pod_cidr.to_string(), "fd00:10:244::/56");
        assert_eq!(lab.clusters[1].node_cidr_mask, 64);
        assert_eq!(
            lab.clusters[1].node_subnet(1).unwrap().to_string(),
            "fd00:10:244:1::/64"
        );
        assert_eq!(
            lab.clusters[0].node_subnet(1).unwrap().to_string(),
            "10.244.1.0/24"
        );
        r.pod_cidrs = vec!["10.1.0.0/16".into(), "10.2.0.0/16".into(), "10.3.0.0/16".into()];
        let e = LabLayout::plan(&r).unwrap_err().to_string();
        assert!(
            e.starts_with("--pod-cidr given 3 times for 2 clusters; fix:"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_service_cidrs_are_refused() {
        let mut r = req();
        r.service_cidrs = vec!["10.96.0.0/12".into()];
        let e = LabLayout::plan(&r).unwrap_err().to_string();
        assert!(e.contains("service CIDRs of two clusters"), "{e}");
        r.service_cidrs = vec!["10.244.0.0/20".into(), "10.97.0.0/16".into()];
        assert!(
            LabLayout::plan(&r)
                .unwrap_err()
                .to_string()
                .contains("service and pod CIDRs")
        );
    }

    #[test]
    fn ranges_and_names() {
        for (f, v) in [("clusters", 0u32), ("clusters", 9), ("nodes", 0), ("nodes", 65)] {
            let mut r = req();
            if f == "clusters" {
                r.clusters = v
            } else {
                r.nodes = v
            }
            assert!(
                matches!(LabLayout::plan(&r), Err(LayoutError::Range { .. })),
                "{f}={v}"
            );
        }
        let mut r = req();
        r.base_port = 65530;
        assert!(
            LabLayout::plan(&r)
                .unwrap_err()
                .to_string()
                .starts_with("--base-port 65530")
        );
        for bad in ["", "Lab", "1lab", "a-b", "abcdefghijk"] {
            let mut r = req();
            r.name = bad.into();
            assert_eq!(LabLayout::plan(&r), Err(LayoutError::Name(bad.into())));
        }
        let mut r = req();
        r.wan_mtu = 1000;
        assert!(matches!(
            LabLayout::plan(&r),
            Err(LayoutError::Range {
                flag: "--wan-mtu",
                ..
            })
        ));
    }

    #[test]
    fn node_subnets() {
        let cidr: IpNet = "10.244.0.0/16".parse().unwrap();
        assert_eq!(node_subnet(cidr, 24, 0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(node_subnet(cidr, 24, 255).unwrap().to_string(), "10.244.255.0/24");
        assert!(node_subnet(cidr, 24, 256).is_err());
        assert!(node_subnet(cidr, 15, 0).is_err());
        assert!(node_subnet(cidr, 31, 0).is_err());
        let v6: IpNet = "fd00:10:244::/56".parse().unwrap();
        assert_eq!(node_subnet(v6, 64, 3).unwrap().to_string(), "fd00:10:244:3::/64");
        let mut r = req();
        r.node_cidr_mask = 16;
        r.nodes = 2;
        assert!(matches!(LabLayout::plan(&r), Err(LayoutError::NodeMask { .. })));
    }

    #[test]
    fn real_nodes_get_their_own_addresses_subnets_and_a_clear_refusal_on_ipv6() {
        let mut r = req();
        r.real_nodes = 2;
        let lab = LabLayout::plan(&r).unwrap();
        let c2 = &lab.clusters[1];
        assert_eq!(c2.real_nodes, 2);
        // base port 20000: cluster 2's ports start at 20020, so its node network is 2002 % 256 = 210
        assert_eq!(c2.node_network().to_string(), "198.19.210.0/24");
        assert_eq!(c2.node_router().to_string(), "198.19.210.1");
        assert_eq!(c2.control_plane_ip().to_string(), "198.19.210.254");
        assert_eq!(c2.real_node_ip(1).to_string(), "198.19.210.11");
        assert_eq!(lab.clusters[0].node_network().to_string(), "198.19.209.0/24");
        // labs side by side (distinct ports) get distinct node networks
        let mut other = r.clone();
        other.base_port = 24000;
        let o = LabLayout::plan(&other).unwrap();
        assert_eq!(o.clusters[0].node_network().to_string(), "198.19.97.0/24");
        assert_eq!(c2.real_node_name(0), "real-node-1");
        assert_eq!(c2.real_node_subnet(1).unwrap().to_string(), "10.244.201.0/24");
        assert_eq!(c2.dns_service_ip().to_string(), "10.97.0.10");
        // real node subnets never meet the lab nodes' (0..64) or the bench's hollow nodes' (100..)
        assert!(
            !c2.real_node_subnet(0)
                .unwrap()
                .contains(&c2.node_subnet(63).unwrap())
        );
        assert!(!c2.node_network().contains(&c2.wan_ip));
        r.real_nodes = MAX_REAL_NODES + 1;
        assert!(
            LabLayout::plan(&r)
                .unwrap_err()
                .to_string()
                .starts_with("--real-nodes 9 is out of range")
        );
        r.real_nodes = 1;
        r.pod_cidrs = vec!["fd00:10:244::/56".into()];
        let e = LabLayout::plan(&r).unwrap_err();
        assert!(matches!(e, LayoutError::RealNodesIpv6(_)));
        assert!(e.to_string().contains("fix: pass --real-nodes 0"));
        r.real_nodes = 0;
        assert!(LabLayout::plan(&r).is_ok());
    }
    #[test]
    fn pool_skips_gateway_network_and_broadcast_and_reuses_released() {
        let mut p = SubnetPool::new("10.244.1.0/29".parse().unwrap());
        assert_eq!(p.gateway().to_string(), "10.244.1.1");
        let got: Vec<String> = std::iter::from_fn(|| p.allocate())
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
        );
        p.release("10.244.1.4".parse().unwrap());
        assert_eq!(p.allocate().unwrap().to_string(), "10.244.1.4");
        assert!(!p.claim("10.244.2.9".parse().unwrap()));
        assert!(!p.claim("10.244.1.1".parse().unwrap()));
    }

    #[test]
    fn netns_and_veth_names_fit_kernel_limits() {
        let uid = "3f2a9c1e-55aa-4b7c-9d0e-0123456789ab";
        assert_eq!(pod_veth(uid), "v3f2a9c1e55");
        assert!(pod_veth(uid).len() <= 15);
        assert_eq!(pod_netns("ferrylab", "c1", uid), "ferrylab-c1-p3f2a9c1e55");
    }

    proptest! {
        #[test]
        fn pool_never_hands_out_an_address_twice_or_outside(k in 0u32..16, n in 1usize..80) {
            let subnet = node_subnet("10.244.0.0/16".parse().unwrap(), 25, k).unwrap();
            let mut p = SubnetPool::new(subnet);
            let mut seen = BTreeSet::new();
            for _ in 0..n {
                match p.allocate() {
                    Some(ip) => {
                        prop_assert!(subnet.contains(&ip));
                        prop_assert!(ip != subnet.network() && ip != subnet.broadcast() && ip != p.gateway());
                        prop_assert!(seen.insert(ip));
                    }
                    None => prop_assert_eq!(seen.len(), 125),
                }
            }
        }
    }
}
