//! The lab's network, made of real network namespaces with iproute2 and nftables:
//!
//! ```text
//!   pod netns ──veth── [host netns cN: bridge pods0, one gateway address per node subnet] ── wanN ──┐
//!                                                                          [WAN netns: a router] ┘
//! ```
//! Each cluster's host namespace holds the pod bridge and a routed link to the WAN namespace, which routes
//! between clusters. The WAN's link MTU, a hidden bottleneck MTU, ICMP "fragmentation needed" filtering and
//! an outage switch are set with [`WanSettings`].

use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::layout::{ClusterLayout, LabLayout};
use crate::procs::run;

/// Name of the pod bridge in each cluster's host namespace.
pub const POD_BRIDGE: &str = "pods0";
/// Name of the host's WAN interface in each cluster's host namespace.
pub const HOST_WAN_IF: &str = "wan0";

fn ip(args: &[&str]) -> Result<String> {
    Ok(run("ip", args)?)
}

/// `ip -n NS ...`
pub fn ipn(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    run(
        "ip",
        &["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")],
    )?;
    Ok(())
}

/// Every network namespace whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Creates a namespace with loopback up.
pub fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns]).with_context(|| format!("creating network namespace {ns}"))?;
    ipn(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Kills every process inside `ns`, then deletes it. Missing namespaces are fine.
pub fn delete_netns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

fn wan_if(c: &ClusterLayout) -> String {
    format!("wan{}", c.index)
}

/// Builds the WAN namespace and every cluster's host namespace with its bridge and WAN link.
pub fn create(lab: &LabLayout) -> Result<()> {
    let wan = lab.wan_netns();
    add_netns(&wan)?;
    sysctl(&wan, "net.ipv4.ip_forward", "1")?;
    sysctl(&wan, "net.ipv6.conf.all.forwarding", "1")?;
    for c in &lab.clusters {
        let host = lab.host_netns(c);
        add_netns(&host)?;
        sysctl(&host, "net.ipv4.ip_forward", "1")?;
        sysctl(&host, "net.ipv6.conf.all.forwarding", "1")?;
        sysctl(&host, "net.ipv6.conf.default.accept_dad", "0")?;
        ipn(&host, &["link", "add", POD_BRIDGE, "type", "bridge"])?;
        ipn(&host, &["link", "set", POD_BRIDGE, "up"])?;
        // the routed link host <-> WAN router
        let wif = wan_if(c);
        let mtu = lab.wan_mtu.to_string();
        ipn(
            &host,
            &[
                "link",
                "add",
                HOST_WAN_IF,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                &wif,
                "netns",
                &wan,
            ],
        )?;
        ipn(&wan, &["link", "set", &wif, "mtu", &mtu])?;
        let (gw4, gw6) = c.wan_gateways();
        for a in [c.wan_ip, c.wan_ip2()] {
            ipn(&host, &["addr", "add", &format!("{a}/24"), "dev", HOST_WAN_IF])?;
        }
        ipn(
            &host,
            &[
                "addr",
                "add",
                &format!("{}/64", c.wan_ip6),
                "dev",
                HOST_WAN_IF,
                "nodad",
            ],
        )?;
        ipn(&wan, &["addr", "add", &format!("{gw4}/24"), "dev", &wif])?;
        ipn(&wan, &["addr", "add", &format!("{gw6}/64"), "dev", &wif, "nodad"])?;
        ipn(&host, &["link", "set", HOST_WAN_IF, "up"])?;
        ipn(&wan, &["link", "set", &wif, "up"])?;
        ipn(&host, &["route", "add", "default", "via", &gw4.to_string()])?;
        ipn(&host, &["-6", "route", "add", "default", "via", &gw6.to_string()])?;
    }
    Ok(())
}

/// Name of the node network's bridge in a cluster's host namespace (real nodes hang on it).
pub const NODE_BRIDGE: &str = "nodes0";
/// The bridge of the second node network (`--second-subnet`).
pub const NODE_BRIDGE_2: &str = "nodes1";

/// The root namespace's end of a cluster's node-network link (15 characters at most).
pub fn control_plane_link(lab: &LabLayout, c: &ClusterLayout) -> String {
    format!("fl{}c{}", lab.name, c.index)
}

/// A cluster's node network: a bridge in its host namespace (the router, [`ClusterLayout::node_router`])
/// and a link from the root namespace, where the control plane listens at
/// [`ClusterLayout::control_plane_ip`] (so the apiserver reaches kubelets and nodes reach the apiserver).
pub fn create_node_network(lab: &LabLayout, c: &ClusterLayout) -> Result<()> {
    let host = lab.host_netns(c);
    let net = c.node_network();
    let taken = ip(&[
        "-o",
        "addr",
        "show",
        "to",
        &format!("{}/32", c.control_plane_ip()),
    ])?;
    if !taken.trim().is_empty() {
        anyhow::bail!(
            "the node network {net} of cluster {} is in use on this machine ({}); fix: move the lab with --base-port (the node network follows the ports)",
            c.id,
            taken.split_whitespace().nth(1).unwrap_or("?")
        );
    }
    ipn(&host, &["link", "add", NODE_BRIDGE, "type", "bridge"])?;
    ipn(
        &host,
        &[
            "addr",
            "add",
            &format!("{}/{}", c.node_router(), net.prefix_len()),
            "dev",
            NODE_BRIDGE,
        ],
    )?;
    ipn(&host, &["link", "set", NODE_BRIDGE, "up"])?;
    let link = control_plane_link(lab, c);
    ip(&[
        "link", "add", &link, "type", "veth", "peer", "name", "ctl0", "netns", &host,
    ])
    .with_context(|| format!("creating the control plane's link {link}"))?;
    ipn(&host, &["link", "set", "ctl0", "master", NODE_BRIDGE, "up"])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/{}", c.control_plane_ip(), net.prefix_len()),
        "dev",
        &link,
    ])?;
    ip(&["link", "set", &link, "up"])?;
    if c.node_networks().len() > 1 {
        // the second node network: another bridge behind the same router; the control plane reaches it
        // (kubelets, their serving ports) through the router
        let second = c.second_network();
        ipn(&host, &["link", "add", NODE_BRIDGE_2, "type", "bridge"])?;
        ipn(
            &host,
            &[
                "addr",
                "add",
                &format!("{}/{}", c.real_node_router(1), second.prefix_len()),
                "dev",
                NODE_BRIDGE_2,
            ],
        )?;
        ipn(&host, &["link", "set", NODE_BRIDGE_2, "up"])?;
        ip(&[
            "route",
            "replace",
            &second.to_string(),
            "via",
            &c.node_router().to_string(),
            "dev",
            &link,
        ])
        .with_context(|| format!("routing the second node network {second} from the control plane"))?;
    }
    // the second real node is a gateway node with a public address of its own too (the second WAN address)
    let second_gateway = if c.real_nodes > 1 {
        format!(
            "  iifname \"{HOST_WAN_IF}\" ip daddr {} udp dport {}-{} dnat to {}\n",
            c.wan_ip2(),
            EDGE_GATEWAY_PORTS.0,
            EDGE_GATEWAY_PORTS.1,
            c.real_node_ip(1)
        )
    } else {
        String::new()
    };
    let masquerade: String = c
        .node_networks()
        .iter()
        .map(|n| format!("  oifname \"{HOST_WAN_IF}\" ip saddr {n} masquerade\n"))
        .collect();
    // The host namespace is also the cluster's edge router, as a NAT gateway in front of a private node
    // network: the nodes reach the WAN with its address, and from the WAN its address forwards the
    // apiserver (:6443, to the control plane's front), the broker (:8443, to the broker NodePort on the
    // first node) and the tunnels' UDP ports (to the first node, where the installed gateway runs), so
    // components installed as pods can peer and tunnel.
    nft_in(
        &host,
        &format!(
            "table ip ferry-lab-edge {{\n chain pre {{\n  type nat hook prerouting priority -100;\n  iifname \"{wan}\" tcp dport {api} dnat to {cp}:{api}\n  iifname \"{wan}\" tcp dport {broker} dnat to {node}:{node_port}\n  iifname \"{wan}\" ip daddr {wan_ip} udp dport {wg_lo}-{wg_hi} dnat to {node}\n{second_gateway} }}\n chain post {{\n  type nat hook postrouting priority 100;\n{masquerade}  oifname \"{bridge}\" ip daddr {cp} tcp dport {api} masquerade\n }}\n}}\n",
            wan = HOST_WAN_IF,
            api = crate::layout::APISERVER_FRONT_PORT,
            cp = c.control_plane_ip(),
            broker = EDGE_BROKER_PORT,
            node = c.real_node_ip(0),
            node_port = EDGE_BROKER_NODE_PORT,
            wg_lo = EDGE_GATEWAY_PORTS.0,
            wg_hi = EDGE_GATEWAY_PORTS.1,
            wan_ip = c.wan_ip,
            bridge = NODE_BRIDGE,
        ),
    )?;
    Ok(())
}

/// The port a cluster's WAN address forwards to its broker.
pub const EDGE_BROKER_PORT: u16 = 8443;
/// The UDP ports the edge forwards to the first real node (an installed gateway's, whose chart value
/// `agent.gatewayEndpoint` is `<WAN address>:52820`): WireGuard at 52820 + 2·link and each link's probe
/// responder one above, for the first 64 links. Not 51820: the lab's own gateway processes listen there
/// on the WAN in the host namespace.
pub const EDGE_GATEWAY_PORTS: (u16, u16) = (52820, 52820 + 2 * 64 - 1);
/// The broker's NodePort the edge forwards to (the chart's `agent.brokerNodePort`).
pub const EDGE_BROKER_NODE_PORT: u16 = 30443;

/// Real node `k`'s host: its namespace `netns` on the node network (`eth0`, default route via the
/// cluster's router), forwarding on, bridged traffic through iptables (kube-proxy's Services between pods
/// of one node), and host-gw routes: the router and every other real node reach this node's pod subnet
/// through its node address.
pub fn add_real_node(lab: &LabLayout, c: &ClusterLayout, k: u32, netns: &str) -> Result<()> {
    let host = lab.host_netns(c);
    add_netns(netns)?;
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.ipv4.conf.all.route_localnet", "1"),
    ] {
        sysctl(netns, key, value)?;
    }
    let veth = format!("node{}", k + 1);
    ipn(
        &host,
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )?;
    let bridge = if c.on_second_network(k) {
        NODE_BRIDGE_2
    } else {
        NODE_BRIDGE
    };
    ipn(&host, &["link", "set", &veth, "master", bridge, "up"])?;
    let net = c.real_node_network(k);
    ipn(
        netns,
        &[
            "addr",
            "add",
            &format!("{}/{}", c.real_node_ip(k), net.prefix_len()),
            "dev",
            "eth0",
        ],
    )?;
    ipn(netns, &["link", "set", "eth0", "up"])?;
    ipn(
        netns,
        &[
            "route",
            "add",
            "default",
            "via",
            &c.real_node_router(k).to_string(),
        ],
    )?;
    // The control plane's end sits in the root namespace, shared by clusters whose pod CIDRs are the same:
    // it has no route back to pods, so what pods send it (the cluster DNS, the `kubernetes` Service) leaves
    // the node with the node's address, as a cloud load balancer in front of an apiserver would see it.
    nft_in(
        netns,
        &format!(
            "table ip ferry-lab-node {{\n chain post {{\n  type nat hook postrouting priority 100;\n  ip daddr {} masquerade\n }}\n}}\n",
            c.control_plane_ip()
        ),
    )?;
    let subnet = c.real_node_subnet(k)?.to_string();
    let via = c.real_node_ip(k).to_string();
    ipn(&host, &["route", "replace", &subnet, "via", &via])?;
    for j in (0..c.real_nodes).filter(|j| *j != k) {
        let other = crate::layout::real_node_netns(&lab.name, &c.id, j);
        if netns_exists(&other) {
            // host-gw between nodes of one node network; across the two, through the router
            let shared = c.real_node_network(j) == net;
            let to_k = if shared {
                via.clone()
            } else {
                c.real_node_router(j).to_string()
            };
            let to_j = if shared {
                c.real_node_ip(j).to_string()
            } else {
                c.real_node_router(k).to_string()
            };
            ipn(&other, &["route", "replace", &subnet, "via", &to_k])?;
            ipn(
                netns,
                &[
                    "route",
                    "replace",
                    &c.real_node_subnet(j)?.to_string(),
                    "via",
                    &to_j,
                ],
            )?;
        }
    }
    Ok(())
}

/// Removes every namespace of the lab (pods, hosts, WAN), killing what runs inside, and the control
/// plane's node-network links (at once: a namespace's own links vanish only when the kernel gets to it,
/// and the next lab may want the same addresses).
pub fn destroy(lab_name: &str) -> Vec<String> {
    let prefix = format!("fl{lab_name}c");
    for link in ip(&["-o", "link", "show"]).unwrap_or_default().lines() {
        if let Some(name) = link.split(": ").nth(1).and_then(|n| n.split('@').next())
            && name.starts_with(&prefix)
            && name[prefix.len()..].chars().all(|c| c.is_ascii_digit())
        {
            let _ = ip(&["link", "del", name]);
        }
    }
    let all = netns_with_prefix(&format!("{lab_name}-"));
    for ns in &all {
        delete_netns(ns);
    }
    all
}

/// Ensures the node gateway address of `subnet` sits on the pod bridge (idempotent).
pub fn ensure_node_gateway(host: &str, subnet: IpNet, gateway: IpAddr) -> Result<()> {
    ipn(
        host,
        &[
            "addr",
            "replace",
            &format!("{gateway}/{}", subnet.prefix_len()),
            "dev",
            POD_BRIDGE,
        ],
    )?;
    Ok(())
}

/// A pod's network: its namespace, a veth on the pod bridge, its address and default route.
pub fn add_pod(
    host: &str,
    pod_ns: &str,
    veth: &str,
    ip: IpAddr,
    subnet: IpNet,
    gateway: IpAddr,
) -> Result<()> {
    let result = (|| -> Result<()> {
        add_netns(pod_ns)?;
        ipn(
            host,
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns,
            ],
        )?;
        ipn(host, &["link", "set", veth, "master", POD_BRIDGE, "up"])?;
        let cidr = format!("{ip}/{}", subnet.prefix_len());
        if ip.is_ipv6() {
            ipn(pod_ns, &["addr", "add", &cidr, "dev", "eth0", "nodad"])?;
        } else {
            ipn(pod_ns, &["addr", "add", &cidr, "dev", "eth0"])?;
        }
        ipn(pod_ns, &["link", "set", "eth0", "up"])?;
        let family = if ip.is_ipv6() { "-6" } else { "-4" };
        ipn(
            pod_ns,
            &[family, "route", "add", "default", "via", &gateway.to_string()],
        )?;
        Ok(())
    })();
    if result.is_err() {
        // nothing half-made stays behind
        delete_netns(pod_ns);
        let _ = ipn(host, &["link", "del", veth]);
    }
    result.with_context(|| format!("setting up pod network {pod_ns} ({ip})"))
}

/// Removes a pod's network (its veth goes with its namespace).
pub fn remove_pod(pod_ns: &str) {
    delete_netns(pod_ns);
}

/// Whether a namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// What tests set on the WAN.
#[derive(Clone, Debug, Default)]
pub struct WanSettings {
    /// MTU of every WAN link, both ends (the underlay MTU the hosts see).
    pub link_mtu: Option<u32>,
    /// A bottleneck inside the WAN: MTU of the *last* cluster's WAN link (both ends). Every other host keeps
    /// its own link MTU, so it cannot see the bottleneck: the WAN router must send ICMP "fragmentation
    /// needed", which `drop_frag_needed` swallows (the classic MTU blackhole).
    pub bottleneck_mtu: Option<u32>,
    /// Drop ICMP "fragmentation needed" / ICMPv6 "packet too big" inside the WAN.
    pub drop_frag_needed: Option<bool>,
    /// Take every WAN link down (true) or up (false).
    pub down: Option<bool>,
}

const WAN_TABLE: &str = "ferrylab_wan";

/// Applies WAN settings.
pub fn set_wan(lab: &LabLayout, s: &WanSettings) -> Result<()> {
    let wan = lab.wan_netns();
    // "fragmentation needed" is dropped before a path narrows, so that none slips through in between
    if s.drop_frag_needed == Some(true) {
        drop_frag_needed(&wan, true)?;
    }
    for c in &lab.clusters {
        let host = lab.host_netns(c);
        let wif = wan_if(c);
        if let Some(mtu) = s.link_mtu {
            ipn(&host, &["link", "set", HOST_WAN_IF, "mtu", &mtu.to_string()])?;
            ipn(&wan, &["link", "set", &wif, "mtu", &mtu.to_string()])?;
        }
        if let (Some(mtu), true) = (s.bottleneck_mtu, Some(c) == lab.clusters.last()) {
            ipn(&wan, &["link", "set", &wif, "mtu", &mtu.to_string()])?;
            ipn(&host, &["link", "set", HOST_WAN_IF, "mtu", &mtu.to_string()])?;
        }
        if let Some(down) = s.down {
            let state = if down { "down" } else { "up" };
            ipn(&wan, &["link", "set", &wif, state])?;
        }
    }
    if s.down == Some(false) {
        // links came back: routes via them were flushed when they went down
        for c in &lab.clusters {
            let host = lab.host_netns(c);
            let (gw4, gw6) = c.wan_gateways();
            let _ = ipn(&host, &["route", "replace", "default", "via", &gw4.to_string()]);
            let _ = ipn(
                &host,
                &["-6", "route", "replace", "default", "via", &gw6.to_string()],
            );
        }
    }
    if s.drop_frag_needed == Some(false) {
        drop_frag_needed(&wan, false)?;
    }
    if s.link_mtu.is_some() || s.bottleneck_mtu.is_some() {
        // the path MTUs the hosts learned before belong to the old path: a test starts from what it set
        for c in &lab.clusters {
            let host = lab.host_netns(c);
            ipn(&host, &["-4", "route", "flush", "cache"])?;
            ipn(&host, &["-6", "route", "flush", "cache"])?;
        }
    }
    Ok(())
}

/// Drops (or lets through again) the WAN's ICMP "fragmentation needed" / ICMPv6 "packet too big".
fn drop_frag_needed(wan: &str, drop: bool) -> Result<()> {
    let _ = run(
        "ip",
        &["netns", "exec", wan, "nft", "delete", "table", "inet", WAN_TABLE],
    );
    if drop {
        let rules = format!(
            "table inet {WAN_TABLE} {{\n  chain icmp_out {{ type filter hook output priority 0; policy accept;\n    icmp type destination-unreachable icmp code frag-needed counter drop\n    icmpv6 type packet-too-big counter drop\n  }}\n  chain icmp_forward {{ type filter hook forward priority 0; policy accept;\n    icmp type destination-unreachable icmp code frag-needed counter drop\n    icmpv6 type packet-too-big counter drop\n  }}\n}}\n"
        );
        nft_in(wan, &rules)?;
    }
    Ok(())
}

/// Loads an nftables ruleset into namespace `ns` atomically (`nft -f -`).
pub fn nft_in(ns: &str, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft; fix: apt-get install nftables (make deps)")?;
    child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft in {ns} refused the rules: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
