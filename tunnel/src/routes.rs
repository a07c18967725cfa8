//! The route agent's plan (`ferry-gateway route-agent`, a DaemonSet): on every node that is not the active
//! gateway's, the peers' CIDRs as this cluster sees them (each `PeerNetwork`'s `status.remaps` values, the
//! same prefixes the gateway routes into its tunnel) are routed via the active gateway's node address
//! (`status.gatewayNodeIP`, written by the gateway). Replies need nothing here: the peer's packets leave
//! the gateway node with a destination in this cluster's pod CIDR, which the CNI already routes to the pod's
//! node.
//!
//! ferry's routes carry their own routing protocol number, [`ROUTE_PROTO`], so the agent finds exactly its
//! own routes again (after a restart too) and removes them and only them. Pure: the apply layer is
//! `apply::sync_node_routes`.
//!
//! Where the gateway node is on a subnet this node shares (the same L2, as most clusters' nodes are), the
//! route is direct. Across subnets the router between them knows nothing of the peers' CIDRs, so the
//! packets go through an overlay instead: a VXLAN device [`OVERLAY_DEV`] on every node ([`overlay_for`],
//! VNI [`OVERLAY_VNI`], UDP [`OVERLAY_PORT`], not the CNI's 4789), whose MAC address each node derives from
//! its own address ([`overlay_mac`]), so a sender needs no control plane: its device's default remote is
//! the gateway node, and the gateway node's address on it resolves to the gateway's derived MAC. The
//! gateway node decapsulates and forwards into its tunnel as it does for a direct route; replies need
//! nothing (the CNI routes this cluster's pod CIDR, across subnets too). The device's MTU is the link's
//! minus VXLAN's 50 (70 over IPv6), which is above the tunnel MTU (path minus 60 or 80) on the same links,
//! so the gateway's MSS clamp stays the tighter one; a larger packet gets "fragmentation needed" from the
//! sending node itself.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// The routing protocol number of ferry's routes (`ip route … proto 102`; 0–4 and the numbers in
/// `/etc/iproute2/rt_protos` are taken by the kernel and routing daemons, 102 by nothing common).
pub const ROUTE_PROTO: u8 = 102;
/// The metric of ferry's node routes: above the gateway's own routes into its tunnel (the kernel's
/// defaults, 0 for IPv4 and 1024 for IPv6). A route agent whose view is stale for a moment (the active
/// gateway moved to its node, and the status it read still names the old one) adds its route beside the
/// tunnel's, never in place of it (`ip route replace` replaces only a route of the same metric), and the
/// tunnel's route, the lower metric, keeps carrying the traffic.
pub const ROUTE_METRIC: u32 = 2048;

/// What one `PeerNetwork` tells the route agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The `PeerNetwork`'s name (for messages).
    pub name: String,
    /// The peer's CIDRs as seen here (`status.remaps` values).
    pub views: Vec<IpNet>,
    /// The active gateway's node address (`status.gatewayNodeIP`); absent until a gateway runs it.
    pub gateway: Option<IpAddr>,
}

/// One route of the agent: `dst` via `via`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct NodeRoute {
    /// Destination (a peer CIDR as seen here).
    pub dst: IpNet,
    /// Next hop: the active gateway's node.
    pub via: IpAddr,
    /// Through the overlay device ([`OVERLAY_DEV`], the gateway node on another subnet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlay: bool,
}

/// The overlay's VXLAN device on every node.
pub const OVERLAY_DEV: &str = "ferry-vx";
/// Its VXLAN network identifier.
pub const OVERLAY_VNI: u32 = 102;
/// Its UDP port (not 4789, which VXLAN CNIs use).
pub const OVERLAY_PORT: u16 = 4790;

/// This node's overlay device: its own address, and the gateway node it sends to (none on the gateway's
/// node, which only receives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    /// The node's address (the chart passes `status.hostIP`).
    pub local: IpAddr,
    /// The gateway node behind the overlay, when this node is not on its subnet.
    pub remote: Option<IpAddr>,
}

/// The MAC address of a node's overlay device, derived from its address (locally administered,
/// `02:66` and the address's last four bytes): every node knows every other one's without asking.
pub fn overlay_mac(node: IpAddr) -> String {
    let b: [u8; 4] = match node {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("02:66:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// The overlay device this node keeps (pure): one as long as a peer has an active gateway of the node's
/// address family (every node may receive: any node may become the gateway's), sending to the first
/// gateway off this node's subnets. `None` without the node's address or a gateway.
pub fn overlay_for(peers: &[PeerView], local: &[IpNet], node_ip: Option<IpAddr>) -> Option<Overlay> {
    let me = node_ip?;
    let gateways: Vec<IpAddr> = peers
        .iter()
        .filter_map(|p| p.gateway)
        .filter(|g| g.is_ipv4() == me.is_ipv4())
        .collect();
    if gateways.is_empty() {
        return None;
    }
    let remote = gateways
        .into_iter()
        .find(|g| !local.iter().any(|n| n.contains(g)));
    Some(Overlay { local: me, remote })
}

/// The routes this node should have, and a line per peer it cannot route (with the reason).
///
/// `local`: this node's addresses with their prefixes (a gateway in one of them is on-link; a node that
/// holds the gateway's address is the gateway's node and routes into the tunnel itself).
///
/// `node_ip`: this node's address (the overlay's source); a gateway off this node's subnets is routed
/// through the overlay when it has that address's family, else reported.
pub fn desired(
    peers: &[PeerView],
    local: &[IpNet],
    node_ip: Option<IpAddr>,
) -> (Vec<NodeRoute>, Vec<String>) {
    let overlay = overlay_for(peers, local, node_ip);
    let mut routes: BTreeMap<IpNet, NodeRoute> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in peers {
        let Some(gw) = p.gateway else {
            problems.push(format!(
                "{}: no active gateway yet (status.gatewayNodeIP)",
                p.name
            ));
            continue;
        };
        if local.iter().any(|n| n.addr() == gw) {
            // this is the gateway's node: its tunnel routes are the gateway's
            continue;
        }
        let on_link = local.iter().any(|n| n.contains(&gw));
        if !on_link {
            match &overlay {
                Some(o) if o.remote == Some(gw) => {}
                Some(o) => {
                    problems.push(format!(
                        "{}: the gateway node {gw} is off this node's subnets and the overlay goes to {}; fix: wait for every PeerNetwork to name the same active gateway",
                        p.name,
                        o.remote.map_or_else(|| "nowhere".to_string(), |r| r.to_string())
                    ));
                    continue;
                }
                None => {
                    problems.push(format!(
                        "{}: the gateway node {gw} is not on a subnet of this node and the overlay needs this node's address of its family; fix: run the route agent with --node-ip (the chart passes status.hostIP)",
                        p.name
                    ));
                    continue;
                }
            }
        }
        for v in &p.views {
            if v.addr().is_ipv4() != gw.is_ipv4() {
                // a dual-stack peer's other family goes via the gateway node's address of that family
                continue;
            }
            // two peers never share a view (remaps are unique per cluster); the first one wins if they do
            routes.entry(*v).or_insert(NodeRoute {
                dst: *v,
                via: gw,
                overlay: !on_link,
            });
        }
    }
    (routes.into_values().collect(), problems)
}

/// The annotation of a route agent's report (on the Lease `ferry-routes-<node>` in ferry's namespace,
/// renewed every sync, so a silent agent shows as stale).
pub const REPORT_ANNOTATION: &str = "ferry.dev/routes";
/// The label that marks those Leases.
pub const REPORT_LABEL: &str = "ferry.dev/route-report";

/// What a route agent tells about its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// This node holds the active gateway of at least one peer (it routes into the tunnel itself).
    pub gateway: bool,
    /// The routes in place after the last sync.
    pub routes: Vec<NodeRoute>,
    /// Peers this node cannot route, with the reason ([`desired`]).
    pub problems: Vec<String>,
}

impl NodeReport {
    /// The report after a sync: `want` was put in place on a node with addresses `local`.
    pub fn after_sync(peers: &[PeerView], local: &[IpNet], want: &[NodeRoute], problems: &[String]) -> Self {
        NodeReport {
            gateway: peers
                .iter()
                .any(|p| p.gateway.is_some_and(|g| local.iter().any(|n| n.addr() == g))),
            routes: want.to_vec(),
            problems: problems.to_vec(),
        }
    }
}

/// One node's line in `ferryctl status`: a word and its detail.
/// `report`: the node's report and how long ago it was renewed; `stale_after`: when silence means the
/// agent is gone (three syncs).
pub fn node_state(
    report: Option<(&NodeReport, std::time::Duration)>,
    stale_after: std::time::Duration,
) -> (&'static str, String) {
    let Some((r, age)) = report else {
        return (
            "NoAgent",
            "no route agent reports from this node: pods here do not reach the peers (fix: routeAgent.enabled=true, placement.* must select this node)".into(),
        );
    };
    if age > stale_after {
        return (
            "Stale",
            format!("the route agent last reported {}s ago", age.as_secs()),
        );
    }
    if !r.problems.is_empty() {
        return ("NotRouted", r.problems.join("; "));
    }
    let routes = r
        .routes
        .iter()
        .map(|x| {
            let through = if x.overlay { " (overlay)" } else { "" };
            format!("{} via {}{through}", x.dst, x.via)
        })
        .collect::<Vec<_>>()
        .join(", ");
    match (r.gateway, routes.is_empty()) {
        (true, true) => (
            "Gateway",
            "the active gateway's node: routes into the tunnel".into(),
        ),
        (true, false) => (
            "Gateway",
            format!("the active gateway's node; other peers: {routes}"),
        ),
        (false, true) => ("Routed", "no peers to route".into()),
        (false, false) => ("Routed", routes),
    }
}

/// What to change: routes to add or replace (absent, with another next hop, or with another metric than
/// [`ROUTE_METRIC`]) and ferry's routes to delete, by destination and metric (no longer wanted, or left
/// with another metric: the new one is added first).
pub fn diff(want: &[NodeRoute], have: &[(NodeRoute, u32)]) -> (Vec<NodeRoute>, Vec<(IpNet, u32)>) {
    let set: Vec<NodeRoute> = want
        .iter()
        .filter(|r| !have.contains(&(**r, ROUTE_METRIC)))
        .copied()
        .collect();
    let del: Vec<(IpNet, u32)> = have
        .iter()
        .filter(|(h, metric)| *metric != ROUTE_METRIC || !want.iter().any(|w| w.dst == h.dst))
        .map(|(h, metric)| (h.dst, *metric))
        .collect();
    (set, del)
}

/// Parses `ip [-6] route show proto 102` lines (`10.0.0.0/16 via 198.19.247.10 dev eth0 … metric 2048`)
/// into each route and its metric (0 when not shown, as `ip` leaves out IPv4's 0); lines that are not a
/// prefix via a next hop are skipped.
pub fn parse_routes(text: &str) -> Vec<(NodeRoute, u32)> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let dst = words.first()?;
            let dst: IpNet = if dst.contains('/') {
                dst.parse().ok()?
            } else {
                IpNet::from(dst.parse::<IpAddr>().ok()?)
            };
            let after = |key: &str| {
                words
                    .iter()
                    .position(|t| *t == key)
                    .and_then(|i| words.get(i + 1))
            };
            let via = after("via")?.parse().ok()?;
            let metric = after("metric").and_then(|m| m.parse().ok()).unwrap_or(0);
            Some((
                NodeRoute {
                    dst,
                    via,
                    overlay: after("dev") == Some(&OVERLAY_DEV),
                },
                metric,
            ))
        })
        .collect()
}

/// Parses `ip -o addr show` lines into the addresses with their prefixes.
pub fn parse_addrs(text: &str) -> Vec<IpNet> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|t| *t != "inet" && *t != "inet6");
            w.next()?;
            w.next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_is_gateway_routed_not_routed_stale_or_without_an_agent() {
        use std::time::Duration;
        let stale = Duration::from_secs(30);
        let local = [n("198.19.0.3/24")];
        let peers = [peer("provider-c2", &["10.0.0.0/16"], Some("198.19.0.2"))];
        let (want, problems) = desired(&peers, &local, None);
        let r = NodeReport::after_sync(&peers, &local, &want, &problems);
        assert!(!r.gateway);
        let (word, detail) = node_state(Some((&r, Duration::from_secs(3))), stale);
        assert_eq!((word, detail.as_str()), ("Routed", "10.0.0.0/16 via 198.19.0.2"));
        // the same report, unrenewed for longer than three syncs
        assert_eq!(node_state(Some((&r, Duration::from_secs(31))), stale).0, "Stale");
        // the gateway's own node
        let gw = [n("198.19.0.2/24")];
        let (want, problems) = desired(&peers, &gw, None);
        let r = NodeReport::after_sync(&peers, &gw, &want, &problems);
        assert!(r.gateway && r.routes.is_empty());
        assert_eq!(node_state(Some((&r, Duration::ZERO)), stale).0, "Gateway");
        // a gateway off this node's subnets: named, not guessed
        let far = [n("10.9.0.3/24")];
        let (want, problems) = desired(&peers, &far, None);
        let r = NodeReport::after_sync(&peers, &far, &want, &problems);
        let (word, detail) = node_state(Some((&r, Duration::ZERO)), stale);
        assert_eq!(word, "NotRouted");
        // with its address known, the same node routes through the overlay, and says so
        let (want_o, problems_o) = desired(&peers, &far, Some(ip("10.9.0.3")));
        let ro = NodeReport::after_sync(&peers, &far, &want_o, &problems_o);
        assert_eq!(
            node_state(Some((&ro, Duration::ZERO)), stale),
            ("Routed", "10.0.0.0/16 via 198.19.0.2 (overlay)".to_string())
        );
        assert!(
            detail.contains("provider-c2") && detail.contains("198.19.0.2"),
            "{detail}"
        );
        let (word, detail) = node_state(None, stale);
        assert_eq!(word, "NoAgent");
        assert!(detail.contains("routeAgent.enabled"), "{detail}");
        // the report survives its annotation
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<NodeReport>(&text).unwrap(), r);
    }

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn route(dst: &str, via: &str) -> NodeRoute {
        NodeRoute {
            dst: n(dst),
            via: ip(via),
            overlay: false,
        }
    }
    fn peer(name: &str, views: &[&str], gw: Option<&str>) -> PeerView {
        PeerView {
            name: name.into(),
            views: views.iter().map(|v| n(v)).collect(),
            gateway: gw.map(ip),
        }
    }

    #[test]
    fn a_node_routes_each_peers_views_via_the_gateway_node_on_its_subnet() {
        let local = [n("198.19.247.11/24"), n("10.244.201.1/24")];
        let (routes, problems) = desired(
            &[
                peer(
                    "provider-c2",
                    &["10.0.0.0/16", "10.97.0.0/16"],
                    Some("198.19.247.10"),
                ),
                peer("provider-c3", &["10.1.0.0/16"], None),
            ],
            &local,
            None,
        );
        assert_eq!(
            routes,
            [
                route("10.0.0.0/16", "198.19.247.10"),
                route("10.97.0.0/16", "198.19.247.10"),
            ]
        );
        assert_eq!(
            problems,
            ["provider-c3: no active gateway yet (status.gatewayNodeIP)"]
        );
    }

    #[test]
    fn the_gateways_own_node_adds_nothing_and_a_gateway_off_subnet_is_reported_not_guessed() {
        let peers = [peer("p", &["10.0.0.0/16"], Some("198.19.247.10"))];
        let (routes, problems) = desired(&peers, &[n("198.19.247.10/24")], None);
        assert!(routes.is_empty() && problems.is_empty());
        let (routes, problems) = desired(&peers, &[n("192.168.9.4/24")], None);
        assert!(routes.is_empty());
        assert!(
            problems[0].contains("not on a subnet of this node"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_gateway_on_another_subnet_is_reached_through_the_overlay_device() {
        let peers = [peer("p", &["10.0.0.0/16", "10.97.0.0/16"], Some("198.19.97.10"))];
        // a node on another subnet: both views via the overlay, whose remote is the gateway node
        let far = [n("198.19.225.11/24"), n("10.244.201.1/24")];
        let me = Some(ip("198.19.225.11"));
        let (routes, problems) = desired(&peers, &far, me);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            routes.iter().all(|r| r.overlay && r.via == ip("198.19.97.10")),
            "{routes:?}"
        );
        assert_eq!(routes.len(), 2);
        assert_eq!(
            overlay_for(&peers, &far, me),
            Some(Overlay {
                local: ip("198.19.225.11"),
                remote: Some(ip("198.19.97.10"))
            })
        );
        // the gateway's own node keeps a receiving device (no remote), a node on its subnet too, and
        // routes directly
        let gw = [n("198.19.97.10/24")];
        assert_eq!(
            overlay_for(&peers, &gw, Some(ip("198.19.97.10"))),
            Some(Overlay {
                local: ip("198.19.97.10"),
                remote: None
            })
        );
        let near = [n("198.19.97.11/24")];
        let (routes, _) = desired(&peers, &near, Some(ip("198.19.97.11")));
        assert!(routes.iter().all(|r| !r.overlay), "{routes:?}");
        assert_eq!(
            overlay_for(&peers, &near, Some(ip("198.19.97.11")))
                .unwrap()
                .remote,
            None
        );
        // no gateway (unpeered, or none yet): no device
        assert_eq!(overlay_for(&[peer("p", &["10.0.0.0/16"], None)], &far, me), None);
        // an IPv6 node address: no overlay for an IPv4 gateway, said so
        let (routes, problems) = desired(&peers, &far, Some(ip("fd00::11")));
        assert!(
            routes.is_empty() && problems[0].contains("--node-ip"),
            "{problems:?}"
        );
        // two peers naming different gateways off-subnet (a failover half written): the second waits
        let two = [
            peer("a", &["10.0.0.0/16"], Some("198.19.97.10")),
            peer("b", &["10.1.0.0/16"], Some("198.19.97.12")),
        ];
        let (routes, problems) = desired(&two, &far, me);
        assert_eq!(routes.len(), 1);
        assert!(problems[0].contains("same active gateway"), "{problems:?}");
    }

    #[test]
    fn overlay_macs_are_derived_from_the_node_address() {
        assert_eq!(overlay_mac(ip("198.19.97.10")), "02:66:c6:13:61:0a");
        assert_eq!(overlay_mac(ip("fd00::c613:610a")), "02:66:c6:13:61:0a");
        assert_ne!(overlay_mac(ip("198.19.97.10")), overlay_mac(ip("198.19.97.11")));
    }

    #[test]
    fn only_the_gateways_family_is_routed_and_a_shared_view_is_routed_once() {
        let (routes, _) = desired(
            &[
                peer("a", &["10.0.0.0/16", "fd66::/64"], Some("198.19.247.10")),
                peer("b", &["10.0.0.0/16"], Some("198.19.247.12")),
            ],
            &[n("198.19.247.11/24")],
            None,
        );
        assert_eq!(routes, [route("10.0.0.0/16", "198.19.247.10")]);
    }

    #[test]
    fn the_diff_replaces_a_moved_next_hop_and_deletes_only_unwanted_destinations() {
        let want = [
            route("10.0.0.0/16", "198.19.247.12"),
            route("10.97.0.0/16", "198.19.247.12"),
        ];
        let ours = |r: NodeRoute| (r, ROUTE_METRIC);
        let have = [
            ours(route("10.0.0.0/16", "198.19.247.10")),
            ours(route("10.97.0.0/16", "198.19.247.12")),
            ours(route("10.1.0.0/16", "198.19.247.10")),
        ];
        let (set, del) = diff(&want, &have);
        assert_eq!(set, [want[0]]);
        assert_eq!(del, [(n("10.1.0.0/16"), ROUTE_METRIC)]);
        assert_eq!(diff(&want, &want.map(ours)), (vec![], vec![]));
        // a route of ferry's with another metric (an agent before ROUTE_METRIC) is put at ours, then the
        // other deleted by its own metric: the gateway's tunnel route, at the kernel's default, never is
        let old = [(want[0], 0), ours(want[1])];
        assert_eq!(diff(&want, &old), (vec![want[0]], vec![(want[0].dst, 0)]));
    }

    #[test]
    fn ip_route_and_ip_addr_output_parse() {
        let routes = "10.0.0.0/16 via 198.19.247.10 dev eth0 proto 102 metric 2048 \n10.97.0.0/16 via 198.19.247.10 dev eth0 proto 102\nfd66::/64 via fe80::1 dev eth0 proto 102 metric 1024 pref medium\n10.9.9.9 via 198.19.247.10 dev eth0\nblackhole 10.5.0.0/16 proto 102\n";
        assert_eq!(
            parse_routes(routes),
            [
                (route("10.0.0.0/16", "198.19.247.10"), ROUTE_METRIC),
                (route("10.97.0.0/16", "198.19.247.10"), 0),
                (route("fd66::/64", "fe80::1"), 1024),
                (route("10.9.9.9/32", "198.19.247.10"), 0),
            ]
        );
        let over = parse_routes("10.0.0.0/16 via 198.19.97.10 dev ferry-vx proto 102 metric 2048 onlink \n");
        assert_eq!(
            over,
            [(
                NodeRoute {
                    overlay: true,
                    ..route("10.0.0.0/16", "198.19.97.10")
                },
                ROUTE_METRIC
            )]
        );
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n2: eth0    inet 198.19.247.11/24 brd 198.19.247.255 scope global eth0\\ \n2: eth0    inet6 fe80::1/64 scope link \\ \n";
        assert_eq!(
            parse_addrs(addrs),
            [n("127.0.0.1/8"), n("198.19.247.11/24"), n("fe80::1/64")]
        );
    }
}
