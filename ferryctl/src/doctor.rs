//! `ferryctl doctor`: the checks for the failures cross-cluster networking is known for (overlapping CIDRs
//! that misroute, an MTU blackhole, a DNS forwarding loop, a tunnel that drops, a gateway out of
//! conntrack entries or ports) and for the peering itself (certificates, clocks, the virtual node, the
//! grant). [`gather`] reads one cluster through its API into a [`Side`]; [`run`] is pure: it turns one side,
//! and the peer's when a second kubeconfig is given, into [`Check`]s, each with its evidence and its fix.
//! Start reading at [`run`].

pub mod corefile;
pub mod gather;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use ferry_crds::PeerNetwork;

/// Rules found removed this recently fail the check; earlier, they warn.
pub const RULES_REMOVED_RECENTLY_SECS: i64 = 120;
/// A gateway whose diagnostics are older than this has stopped reporting (it writes them every 5 s).
pub const STALE_AFTER_SECS: i64 = 30;
/// WireGuard rekeys every 120 s; no handshake for longer than this means handshakes fail.
pub const HANDSHAKE_STALE_SECS: u64 = 180;
/// Heartbeat loss (over 10 s) above this warns.
pub const LOSS_WARN_PERCENT: f64 = 5.0;
/// Conntrack use (count / max) at which the check warns and fails.
pub const CONNTRACK_WARN: f64 = 0.75;
/// See [`CONNTRACK_WARN`].
pub const CONNTRACK_FAIL: f64 = 0.90;
/// Clock skew (seconds) at which the check warns; above [`SKEW_FAIL_SECS`] tokens and fresh
/// certificates are refused.
pub const SKEW_WARN_SECS: f64 = 5.0;
/// The peering token's leeway.
pub const SKEW_FAIL_SECS: f64 = 60.0;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works now, but needs a look.
    Warn,
    /// Broken.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// `cidr`, `mtu`, `dns`, `tunnel`, `capacity`, `peering`, `clock`.
    pub check: &'static str,
    /// The cluster and the peer it is about (`c1 → provider-c2`), or the cluster alone.
    pub subject: String,
    /// Outcome.
    pub level: Level,
    /// What was seen.
    pub evidence: String,
    /// What to do (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What doctor read from one cluster.
#[derive(Clone, Debug, Default)]
pub struct Side {
    /// How the operator named it (the kubeconfig's context, or its cluster ID).
    pub name: String,
    /// Its ferry cluster ID, if ferry runs there.
    pub cluster_id: Option<String>,
    /// Now, on this machine (unix seconds).
    pub now: i64,
    /// The apiserver's clock minus this machine's (seconds), from its `Date` header.
    pub clock_skew: Option<f64>,
    /// Each real node's pod CIDRs (`spec.podCIDRs`; virtual nodes left out).
    pub node_pod_cidrs: Vec<(String, IpNet)>,
    /// Each peer.
    pub peers: Vec<PeerFacts>,
    /// The cluster DNS.
    pub dns: DnsFacts,
}

/// The cluster DNS's configuration.
#[derive(Clone, Debug, Default)]
pub struct DnsFacts {
    /// Corefiles found: (where, text) — `kube-system/coredns` and the server blocks of `coredns-custom`.
    pub corefiles: Vec<(String, String)>,
    /// ferry-dns's Service address, if installed.
    pub ferry_dns_ip: Option<IpAddr>,
    /// Where ferry is installed.
    pub namespace: String,
    /// Ready addresses behind ferry-dns's Service, if installed.
    pub ferry_dns_ready: Option<usize>,
    /// A live query of an exported name, when the cluster imports one.
    pub live: Option<LiveQuery>,
}

/// One exported name asked of ferry-dns, against what the cluster's imports say it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveQuery {
    /// Where it was asked.
    pub server: SocketAddr,
    /// The operator named the server (`--dns-server`); else it is the Service's address, which may not
    /// be routable from where doctor runs.
    pub explicit: bool,
    /// The name (`<svc>.<ns>.svc.clusterset.local.`).
    pub name: String,
    /// Its addresses by the ServiceImports and EndpointSlices now (sorted).
    pub expected: Vec<IpAddr>,
    /// The addresses answered (sorted), or why none were.
    pub answer: Result<Vec<IpAddr>, String>,
    /// How long the answer took.
    pub millis: u64,
}

/// What one cluster knows about one peer.
#[derive(Clone, Debug, Default)]
pub struct PeerFacts {
    /// The peer's cluster ID.
    pub id: String,
    /// The ForeignCluster's conditions: (type, status, reason, message).
    pub conditions: Vec<(String, String, String, String)>,
    /// The peering's network (tunnel), with its status.
    pub network: Option<PeerNetwork>,
    /// This cluster consumes from the peer: its virtual node is expected.
    pub consumes: bool,
    /// That virtual node, if it exists.
    pub virtual_node: Option<VirtualNodeFacts>,
    /// The identity certificate this cluster holds for the peer: (not before, not after), unix seconds.
    pub cert: Option<(i64, i64)>,
    /// The peer is a consumer of this cluster and its Tenant is cordoned.
    pub cordoned: Option<bool>,
}

/// A virtual node.
#[derive(Clone, Debug, Default)]
pub struct VirtualNodeFacts {
    /// Its name.
    pub name: String,
    /// Ready.
    pub ready: bool,
    /// The Ready condition's reason and message.
    pub why: String,
    /// Pods on it.
    pub pods: usize,
    /// Pods it can take (`status.allocatable.pods`).
    pub pods_allocatable: Option<u64>,
}

/// Every check for `side` (and, when known, the peer's side `theirs`, which makes the checks that need
/// both ends — keys, endpoints, the peer's CIDRs, a DNS loop, clock skew between clusters — exact),
/// restricted to peer `only` when given.
pub fn run(side: &Side, theirs: Option<&Side>, only: Option<&str>) -> Vec<Check> {
    let mut out = vec![clock(side, theirs), dns(side, theirs)];
    for p in side.peers.iter().filter(|p| only.is_none_or(|o| o == p.id)) {
        // the peer's record of this cluster, when the peer's side was read and is this peer
        let their = theirs
            .filter(|t| t.cluster_id.as_deref() == Some(p.id.as_str()))
            .and_then(|t| {
                t.peers
                    .iter()
                    .find(|q| Some(q.id.as_str()) == side.cluster_id.as_deref())
                    .map(|q| (t, q))
            });
        let subject = format!("{} → {}", side.name, p.id);
        let mut add = |check, (level, evidence, fix): (Level, String, Option<String>)| {
            out.push(Check {
                check,
                subject: subject.clone(),
                level,
                evidence,
                fix,
            })
        };
        add("cidr", cidr(side, p, their));
        add("mtu", mtu(p));
        add("tunnel", tunnel(side, p, their));
        add("capacity", capacity(p));
        add("peering", peering(side, p));
    }
    out
}

/// Whether any check failed (the exit code).
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// The report as a table: one line per check, its fix on the next.
pub fn table(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let level = match c.level {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        s.push_str(&format!(
            "{level:<5} {:<9} {:<28} {}\n",
            c.check, c.subject, c.evidence
        ));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("{:<44} fix: {fix}\n", ""));
        }
    }
    let (f, w) = (
        checks.iter().filter(|c| c.level == Level::Fail).count(),
        checks.iter().filter(|c| c.level == Level::Warn).count(),
    );
    s.push_str(&format!("{} checks: {f} failed, {w} warned\n", checks.len()));
    s
}

type Outcome = (Level, String, Option<String>);

fn ok(evidence: String) -> Outcome {
    (Level::Ok, evidence, None)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn nets(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|c| c.parse().ok()).collect()
}

fn remaps(pn: &PeerNetwork) -> BTreeMap<IpNet, IpNet> {
    pn.status
        .as_ref()
        .map(|s| {
            s.remaps
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn seconds_since(now: i64, rfc3339: Option<&str>) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339?).ok()?;
    Some(now - t.timestamp())
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peer (and the CIDR, as declared and as seen here) that `ip` belongs to, from this side.
fn peer_of(side: &Side, ip: IpAddr) -> Option<(String, IpNet, IpNet)> {
    side.peers.iter().find_map(|p| {
        let pn = p.network.as_ref()?;
        let remaps = remaps(pn);
        nets(&pn.spec.remote_cidrs).into_iter().find_map(|r| {
            let seen = remaps.get(&r).copied().unwrap_or(r);
            seen.contains(&ip).then(|| (p.id.clone(), r, seen))
        })
    })
}

fn cidr(side: &Side, p: &PeerFacts, their: Option<(&Side, &PeerFacts)>) -> Outcome {
    let Some(pn) = &p.network else {
        return (
            Level::Warn,
            "no PeerNetwork: no tunnel to this peer, pods cannot reach it".into(),
            Some("give the provider's agent a gateway endpoint (ferryctl install --set agent.gatewayEndpoint=host:port) and peer again".into()),
        );
    };
    let (local, remote, remaps) = (
        nets(&pn.spec.local_cidrs),
        nets(&pn.spec.remote_cidrs),
        remaps(pn),
    );
    let (mut fails, mut fixes, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    let undeclared: Vec<String> = side
        .node_pod_cidrs
        .iter()
        .filter(|(_, c)| !local.iter().any(|l| l.contains(c)))
        .map(|(n, c)| format!("{c} (node {n})"))
        .collect();
    if !undeclared.is_empty() {
        fails.push(format!(
            "pod CIDRs here that the peering does not declare: {}; the peer cannot reach those pods",
            undeclared.join(", ")
        ));
        fixes.push(
            "give ferry every node's pod CIDR (ferryctl install --set podCIDRs=…) and peer again".to_string(),
        );
    }
    if let Some((t, _)) = their {
        let unrouted: Vec<String> = t
            .node_pod_cidrs
            .iter()
            .filter(|(_, c)| !remote.iter().any(|r| r.contains(c)))
            .map(|(n, c)| format!("{c} (node {n})"))
            .collect();
        if !unrouted.is_empty() {
            fails.push(format!(
                "the peer's pods use {}, which this peering does not route (it has {})",
                unrouted.join(", "),
                join(&remote)
            ));
            fixes.push("on the peer, give ferry every node's pod CIDR (ferryctl install --set podCIDRs=…) and peer again".to_string());
        }
    }
    let ours: Vec<IpNet> = local
        .iter()
        .copied()
        .chain(side.node_pod_cidrs.iter().map(|(_, c)| *c))
        .collect();
    for r in &remote {
        let Some(l) = ours.iter().find(|l| overlaps(r, l)) else {
            continue;
        };
        match remaps.get(r) {
            Some(v) if !ours.iter().any(|l| overlaps(v, l)) => {
                seen.push(format!("{r} overlaps {l} here and is remapped to {v}"))
            }
            _ => {
                fails.push(format!(
                    "the peer's {r} overlaps {l} here and is not remapped: packets for it stay in this cluster"
                ));
                fixes.push("the gateway remaps every overlap its PeerNetwork declares: check that it runs and has written status.remaps (ferryctl status)".to_string());
            }
        }
    }
    let d = pn
        .status
        .as_ref()
        .and_then(|s| s.diagnostics.clone())
        .unwrap_or_default();
    let node = gateway_node(pn);
    if d.rules_removed > 0 {
        let ago = seconds_since(side.now, d.last_rules_removed.as_deref());
        let what = format!(
            "the gateway found its NAT and MSS-clamp rules removed {} time(s), last {} and re-applied them: until then, traffic to the remapped CIDRs misroutes",
            d.rules_removed,
            ago.map_or("at an unknown time".into(), |a| format!("{a} s ago"))
        );
        let fix = format!(
            "find what rewrites nftables on {node} (a firewalld reload, `nft flush ruleset`, an iptables-restore in nft mode) and keep it off ferry's tables (inet ferry_*)"
        );
        if ago.is_none_or(|a| a <= RULES_REMOVED_RECENTLY_SECS) {
            fails.push(what);
            fixes.push(fix);
        } else if fails.is_empty() {
            return (Level::Warn, what, Some(fix));
        }
    }
    if !fails.is_empty() {
        return (Level::Fail, fails.join("; "), Some(fixes.join("; ")));
    }
    let checked = d
        .checked_at
        .as_deref()
        .map_or("never checked".into(), |_| format!("rules in place on {node}"));
    ok(match seen.is_empty() {
        true => format!(
            "no overlap: here {}, the peer {}; {checked}",
            join(&local),
            join(&remote)
        ),
        false => format!("{}; {checked}", seen.join("; ")),
    })
}

fn gateway_node(pn: &PeerNetwork) -> String {
    pn.status
        .as_ref()
        .and_then(|s| s.gateway_node.as_ref())
        .map_or_else(|| "the gateway's node".into(), |n| format!("node {n}"))
}

fn mtu(p: &PeerFacts) -> Outcome {
    let Some(pn) = &p.network else {
        return ok("no tunnel".into());
    };
    let st = pn.status.clone().unwrap_or_default();
    let (Some(path), Some(tunnel)) = (st.path_mtu, st.tunnel_mtu) else {
        return (
            Level::Warn,
            "the gateway has not reported a tunnel MTU yet".into(),
            Some("check that ferry-gateway runs (ferryctl status)".into()),
        );
    };
    let outer_v6 = pn
        .spec
        .peer_endpoint
        .as_deref()
        .and_then(|e| e.parse::<SocketAddr>().ok())
        .is_some_and(|e| e.is_ipv6());
    let inner_v6 = nets(&pn.spec.remote_cidrs).iter().any(|c| c.addr().is_ipv6());
    let stack = [ferry_tunnel::mtu::Encap::WireGuard];
    let fits = ferry_tunnel::mtu::MtuPlan::compute(path, &stack, outer_v6, inner_v6).map(|p| p.mtu);
    let d = st.diagnostics.unwrap_or_default();
    let pinned = pn.spec.underlay_mtu.map_or(String::new(), |u| {
        format!(" (underlay MTU pinned to {u} in spec.underlayMTU: the gateway does not probe the path)")
    });
    let family = if outer_v6 { "IPv6" } else { "IPv4" };
    let mut evidence = format!("path MTU {path}{pinned}, tunnel MTU {tunnel}");
    match fits {
        Ok(max) if tunnel > max => {
            return (
                Level::Fail,
                format!(
                    "{evidence}: more than a {path}-byte path carries with WireGuard over {family} ({max})"
                ),
                Some(format!(
                    "set the tunnel MTU to {max} or less (ferryctl mtu --underlay {path} --stack wireguard)"
                )),
            );
        }
        Ok(_) => {}
        Err(e) => {
            return (
                Level::Fail,
                format!("{evidence}: {e}"),
                Some("a larger underlay MTU".into()),
            );
        }
    }
    let clamp = if d.mss_clamp {
        format!(
            ", MSS clamped to {}",
            tunnel.saturating_sub(if inner_v6 { 60 } else { 40 })
        )
    } else {
        ", no MSS clamp".into()
    };
    evidence.push_str(&clamp);
    let blackhole_fix = format!(
        "the path carries less than {} bytes and the ICMP \"fragmentation needed\" that would say so does not arrive: {}, or allow ICMP type 3 code 4 (ICMPv6 type 2) on the path",
        tunnel + (path - fits.as_ref().copied().unwrap_or(tunnel)),
        if pn.spec.underlay_mtu.is_some() {
            "remove spec.underlayMTU (the agent's --underlay-mtu) so that the gateway probes the path itself, or set it to the path's real MTU"
        } else {
            "set the underlay MTU to the path's real MTU (the agent's --underlay-mtu)"
        }
    );
    match &d.df_probe {
        None => (
            Level::Warn,
            format!("{evidence}; not probed: the tunnel has not been connected since the gateway started"),
            Some("see the tunnel check".into()),
        ),
        Some(probe) if probe.mtu_answered => {
            let e = format!(
                "{evidence}; a DF probe of {} B through the tunnel was answered",
                probe.mtu_bytes
            );
            if d.mss_clamp {
                ok(e)
            } else {
                (
                    Level::Warn,
                    e,
                    Some(
                        "turn the MSS clamp on: without it TCP relies on ICMP to find the tunnel MTU".into(),
                    ),
                )
            }
        }
        Some(probe) if probe.floor_answered => (
            Level::Fail,
            format!(
                "{evidence}; MTU blackhole: a DF probe of {} B through the tunnel is lost while {} B passes (small packets and pings work, full-size TCP segments hang)",
                probe.mtu_bytes, probe.floor_bytes
            ),
            Some(blackhole_fix),
        ),
        Some(probe) => (
            Level::Warn,
            format!(
                "{evidence}; neither DF probe ({} B, {} B) was answered: the tunnel is down",
                probe.mtu_bytes, probe.floor_bytes
            ),
            Some("see the tunnel check".into()),
        ),
    }
}

fn tunnel(side: &Side, p: &PeerFacts, their: Option<(&Side, &PeerFacts)>) -> Outcome {
    let Some(pn) = &p.network else {
        return ok("no tunnel".into());
    };
    let st = pn.status.clone().unwrap_or_default();
    let d = st.diagnostics.clone().unwrap_or_default();
    let node = gateway_node(pn);
    let endpoint = pn
        .spec
        .peer_endpoint
        .clone()
        .unwrap_or_else(|| "none (the peer dials)".into());
    let (mut fails, mut fixes) = (Vec::new(), Vec::new());
    // both ends: each expects the key the other's gateway has, and dials the port it listens on
    if let Some((_, q)) = their
        && let Some(qn) = &q.network
    {
        let their_key = qn
            .status
            .as_ref()
            .and_then(|s| s.diagnostics.as_ref())
            .and_then(|d| d.public_key.clone());
        if let Some(k) = their_key
            && k != pn.spec.peer_public_key
        {
            fails.push(format!(
                "this side expects the peer's key {}, the peer's gateway has {k}",
                pn.spec.peer_public_key
            ));
            fixes.push(
                "keys are exchanged when peering: unpeer and peer again (ferryctl unpeer, ferryctl peer)"
                    .to_string(),
            );
        }
        if let Some(mine) = &d.public_key
            && let k = &qn.spec.peer_public_key
            && mine != k
        {
            fails.push(format!(
                "the peer expects key {k}, this side's gateway has {mine}"
            ));
            fixes.push(
                "the gateway's key Secret (ferry-wireguard) changed after peering: unpeer and peer again"
                    .into(),
            );
        }
        if let (Some(ep), Some(port)) = (
            pn.spec
                .peer_endpoint
                .as_deref()
                .and_then(|e| e.parse::<SocketAddr>().ok()),
            qn.spec.listen_port,
        ) && ep.port() != port
        {
            fails.push(format!(
                "this side dials port {} but the peer's gateway listens on {port}",
                ep.port()
            ));
            fixes.push("the peer's agent announces its gateway endpoint: set agent.gatewayEndpoint there to the port it listens on and peer again".into());
        }
    }
    let stale = seconds_since(side.now, d.checked_at.as_deref()).filter(|a| *a > STALE_AFTER_SECS);
    if let Some(a) = stale {
        fails.push(format!("the active gateway ({node}) last reported {a} s ago"));
        fixes.push(format!(
            "the gateway stopped or lost its Lease: kubectl -n ferry-system get pods -o wide | grep gateway; its logs on {node}"
        ));
    } else if st.phase.as_deref() != Some("Connected") {
        fails.push(format!(
            "not connected: no heartbeat answered through the tunnel (loss {}% over 10 s), last WireGuard handshake {}; peer endpoint {endpoint}",
            d.loss_percent.map_or("?".into(), |l| format!("{l:.0}")),
            d.handshake_age_seconds.map_or("none completed".into(), |a| format!("{a} s ago"))
        ));
        fixes.push(format!(
            "check that UDP to {endpoint} reaches the peer's gateway (a firewall, the WAN, its node), and run ferryctl doctor on the peer"
        ));
    } else if let Some(a) = d.handshake_age_seconds.filter(|a| *a > HANDSHAKE_STALE_SECS) {
        fails.push(format!(
            "connected, but the last WireGuard handshake was {a} s ago (it rekeys every 120 s): handshakes fail, the session expires at 180 s"
        ));
        fixes.push("check both clocks and that the peer's gateway still has this side's key (doctor with --peer-kubeconfig)".into());
    }
    if !fails.is_empty() {
        return (Level::Fail, fails.join("; "), Some(fixes.join("; ")));
    }
    let evidence = format!(
        "{}, last handshake {}, loss {}% over 10 s, latency {} ms, active gateway on {node}{}",
        st.phase.as_deref().unwrap_or("?"),
        d.handshake_age_seconds
            .map_or("none completed".into(), |a| format!("{a} s ago")),
        d.loss_percent.map_or("?".into(), |l| format!("{l:.0}")),
        st.latency_ms.map_or("?".into(), |l| format!("{l:.2}")),
        if their.is_some() {
            ", keys and endpoints match on both sides"
        } else {
            ""
        }
    );
    match d.loss_percent {
        Some(l) if l > LOSS_WARN_PERCENT => (
            Level::Warn,
            evidence,
            Some("packets are lost between the gateways: check the underlay (ferryctl bench tunnel)".into()),
        ),
        _ => ok(evidence),
    }
}

fn capacity(p: &PeerFacts) -> Outcome {
    let Some(pn) = &p.network else {
        return ok("no tunnel".into());
    };
    let d = pn
        .status
        .as_ref()
        .and_then(|s| s.diagnostics.clone())
        .unwrap_or_default();
    let node = gateway_node(pn);
    let ports = d.ephemeral_ports.as_deref().and_then(|r| {
        let (lo, hi) = r.split_once('-')?;
        Some((r, hi.parse::<u64>().ok()?.saturating_sub(lo.parse().ok()?) + 1))
    });
    let ports_text = ports.map_or("port range unknown".into(), |(r, n)| {
        format!("ephemeral ports {r} ({n})")
    });
    let (Some(count), Some(max)) = (d.conntrack_count, d.conntrack_max) else {
        return ok(format!(
            "conntrack not loaded on {node}; {ports_text}; ferry's NAT is stateless (prefix translation) and uses no ports"
        ));
    };
    let used = count as f64 / max.max(1) as f64;
    let evidence = format!(
        "conntrack {count}/{max} ({:.0}%) on {node}; {ports_text}; ferry's NAT is stateless and uses no ports",
        used * 100.0
    );
    let fix = format!(
        "on {node}: sysctl -w net.netfilter.nf_conntrack_max={} (and in /etc/sysctl.d/ to keep it), and look for what opens that many flows (conntrack -S, conntrack -L)",
        max * 2
    );
    if used >= CONNTRACK_FAIL {
        return (
            Level::Fail,
            format!("{evidence}: new flows through the gateway are dropped when the table is full"),
            Some(fix),
        );
    }
    if used >= CONNTRACK_WARN {
        return (Level::Warn, evidence, Some(fix));
    }
    match ports {
        Some((_, n)) if count >= n * 9 / 10 => (
            Level::Warn,
            format!(
                "{evidence}: more flows than ephemeral ports, so a masquerade to one address on this node runs out of source ports"
            ),
            Some(format!(
                "on {node}: sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
            )),
        ),
        _ => ok(evidence),
    }
}

fn peering(side: &Side, p: &PeerFacts) -> Outcome {
    let (mut fails, mut warns, mut fixes, mut seen) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (t, s, reason, message) in &p.conditions {
        if s != "True" {
            fails.push(format!("ForeignCluster {t}={s} ({reason}: {message})"));
            fixes.push(format!("see kubectl describe foreignclusters {}", p.id));
        }
    }
    if let Some((nb, na)) = p.cert {
        let left = na - side.now;
        if left <= 0 {
            fails.push(format!("the identity certificate expired {} s ago", -left));
            fixes.push(format!(
                "the agent renews it at 2/3 of its life: check its logs; or unpeer and peer again ({})",
                p.id
            ));
        } else if left * 10 < (na - nb) {
            warns.push(format!(
                "the identity certificate expires in {left} s, past the moment it should have been renewed"
            ));
            fixes.push("check the agent's logs for the renewal (POST /v1/identity)".into());
        } else {
            seen.push(format!("certificate valid for {} h more", left / 3600));
        }
    }
    if p.consumes {
        match &p.virtual_node {
            None => {
                fails.push("no virtual node for this provider".into());
                fixes.push("the agent creates it once the identity is stored: check its logs".into());
            }
            Some(v) if !v.ready => {
                fails.push(format!("virtual node {} is not Ready: {}", v.name, v.why));
                fixes.push("see the tunnel check and the agent's logs; kubectl describe node".into());
            }
            Some(v) => {
                seen.push(format!("virtual node {} Ready", v.name));
                match v.pods_allocatable {
                    Some(n) if v.pods as u64 >= n => {
                        warns.push(format!(
                            "virtual node {} holds {}/{n} pods: the grant is used up, new pods stay Pending",
                            v.name, v.pods
                        ));
                        fixes.push("ask the provider for a larger grant (ferryctl peer --pods)".into());
                    }
                    Some(n) => seen.push(format!("{}/{n} pods of the grant used", v.pods)),
                    None => {}
                }
            }
        }
    }
    match p.cordoned {
        Some(true) => {
            warns.push(format!(
                "the Tenant of consumer {} is cordoned: its new pods are refused",
                p.id
            ));
            fixes.push(format!(
                "when it may run pods again: ferryctl uncordon tenant {}",
                p.id
            ));
        }
        Some(false) => seen.push(format!("consumer {}'s Tenant admitted, not cordoned", p.id)),
        None => {}
    }
    let level = if !fails.is_empty() {
        Level::Fail
    } else if !warns.is_empty() {
        Level::Warn
    } else {
        Level::Ok
    };
    let evidence = fails.into_iter().chain(warns).chain(seen).collect::<Vec<_>>();
    let evidence = if evidence.is_empty() {
        "peered".to_string()
    } else {
        evidence.join("; ")
    };
    (level, evidence, (!fixes.is_empty()).then(|| fixes.join("; ")))
}

fn clock(side: &Side, theirs: Option<&Side>) -> Check {
    let mut c = Check {
        check: "clock",
        subject: side.name.clone(),
        level: Level::Ok,
        evidence: String::new(),
        fix: None,
    };
    let Some(skew) = side.clock_skew else {
        c.level = Level::Warn;
        c.evidence = "the apiserver sent no Date header".into();
        return c;
    };
    let (skew, what) = match theirs.and_then(|t| t.clock_skew.map(|s| (s, t))) {
        Some((s, t)) => (
            skew - s,
            format!("{} is {:+.1} s from {}", side.name, skew - s, t.name),
        ),
        None => (skew, format!("the apiserver is {skew:+.1} s from this machine")),
    };
    c.evidence = what;
    if skew.abs() > SKEW_FAIL_SECS {
        c.level = Level::Fail;
        c.evidence
            .push_str(": peering tokens (60 s leeway) and fresh certificates are refused");
    } else if skew.abs() > SKEW_WARN_SECS {
        c.level = Level::Warn;
    }
    if c.level != Level::Ok {
        c.fix = Some("run NTP (chrony, systemd-timesyncd) on every node of both clusters".into());
    }
    c
}

fn dns(side: &Side, theirs: Option<&Side>) -> Check {
    let (mut level, mut evidence, mut fix) = dns_outcome(side, theirs);
    if let Some((l, e, f)) = dns_live(&side.dns) {
        evidence = format!("{evidence}; {e}");
        if l > level {
            (level, fix) = (l, f);
        } else if let (Some(a), Some(b)) = (&fix, f) {
            fix = Some(format!("{a}; {b}"));
        }
    }
    Check {
        check: "dns",
        subject: side.name.clone(),
        level,
        evidence,
        fix,
    }
}

/// The live half of the DNS check: is ferry-dns up, and does it answer an exported name with what the
/// imports say? `None` when there is nothing to say (no ferry-dns Service, nothing imported).
fn dns_live(d: &DnsFacts) -> Option<Outcome> {
    let ns = if d.namespace.is_empty() {
        "ferry-system"
    } else {
        &d.namespace
    };
    let logs = format!(
        "kubectl -n {ns} logs deploy/ferry-dns; it must list and watch ServiceImports and EndpointSlices (the chart's ClusterRole ferry-dns)"
    );
    if d.ferry_dns_ready == Some(0) {
        return Some((
            Level::Fail,
            "ferry-dns's Service has no ready endpoint: clusterset.local names resolve nowhere".into(),
            Some(format!(
                "get ferry-dns running: kubectl -n {ns} describe pods -l app=ferry-dns; {logs}"
            )),
        ));
    }
    let q = d.live.as_ref()?;
    let want = join(&q.expected);
    Some(match &q.answer {
        Ok(got) if got == &q.expected => ok(format!(
            "live: ferry-dns at {} answers {} with {want} in {} ms, as its imports say",
            q.server, q.name, q.millis
        )),
        Ok(got) => (
            Level::Fail,
            format!(
                "live: ferry-dns at {} answers {} with {}, but its imports say {want}: its zone is stale",
                q.server,
                q.name,
                if got.is_empty() {
                    "no address".to_string()
                } else {
                    join(got)
                }
            ),
            Some(format!(
                "restart ferry-dns (kubectl -n {ns} rollout restart deploy/ferry-dns); {logs}"
            )),
        ),
        Err(why)
            if !q.explicit
                && (why.starts_with("no answer") || why.starts_with(ferry_mcs::dns::NOT_FERRY_DNS)) =>
        {
            (
                Level::Ok,
                format!(
                    "live query of {} not made: {why} (the Service address does not reach ferry-dns from here)",
                    q.name
                ),
                None,
            )
        }
        Err(why) => (
            Level::Fail,
            format!(
                "live: ferry-dns at {} does not answer {}: {why}",
                q.server, q.name
            ),
            Some(format!(
                "check that ferry-dns runs and listens at {} (its /readyz), and that nothing filters UDP port {} on the way; {logs}",
                q.server,
                q.server.port()
            )),
        ),
    })
}

/// Where the root zone (every name outside the cluster's own) is forwarded: the addresses that belong to
/// a peer, with the peer.
fn root_forwards_to_peers(side: &Side) -> Vec<(IpAddr, String, IpNet)> {
    let blocks = blocks(side);
    corefile::forward_targets(&blocks, "ferry-doctor.example")
        .unwrap_or_default()
        .iter()
        .filter_map(|t| corefile::target_ip(t))
        .filter_map(|ip| peer_of(side, ip).map(|(id, real, _)| (ip, id, real)))
        .collect()
}

fn blocks(side: &Side) -> Vec<corefile::ServerBlock> {
    side.dns
        .corefiles
        .iter()
        .flat_map(|(_, text)| corefile::parse(text))
        .collect()
}

fn dns_outcome(side: &Side, theirs: Option<&Side>) -> Outcome {
    if side.dns.corefiles.is_empty() {
        return (
            Level::Warn,
            "no Corefile (ConfigMaps kube-system/coredns, coredns-custom): the cluster DNS was not checked".into(),
            Some("if the cluster DNS is not CoreDNS, check by hand that only clusterset.local goes to ferry-dns and `.` goes upstream".into()),
        );
    }
    let from: Vec<&str> = side.dns.corefiles.iter().map(|(w, _)| w.as_str()).collect();
    let loopfix = "forward `.` to upstream resolvers (forward . /etc/resolv.conf) and only clusterset.local to ferry-dns, on both clusters";
    let to_peers = root_forwards_to_peers(side);
    if let Some((ip, peer, real)) = to_peers.first() {
        // the peer's side, read too: does it send every name back here?
        let back = theirs
            .filter(|t| t.cluster_id.as_deref() == Some(peer.as_str()))
            .map(root_forwards_to_peers)
            .unwrap_or_default()
            .into_iter()
            .find(|(_, id, _)| Some(id.as_str()) == side.cluster_id.as_deref());
        return match back {
            Some((ip2, _, real2)) => (
                Level::Fail,
                format!(
                    "forwarding loop: {} forwards every name (`.`) to {ip} (peer {peer}'s {real}) and {peer} forwards every name back to {ip2} ({}'s {real2}): each query circles until CoreDNS gives up, at 100% CPU on both",
                    side.name,
                    side.cluster_id.as_deref().unwrap_or(&side.name)
                ),
                Some(loopfix.into()),
            ),
            None => (
                Level::Fail,
                format!(
                    "{} forwards every name (`.`) to {ip}, an address of peer {peer} ({real}): this cluster's DNS depends on the peer, and loops as soon as the peer forwards back (give --peer-kubeconfig to check)",
                    from.join(", ")
                ),
                Some(loopfix.into()),
            ),
        };
    }
    let blocks = blocks(side);
    let own_block = blocks
        .iter()
        .any(|b| b.zones.iter().any(|z| z == "clusterset.local"));
    let (true, Some(targets)) = (own_block, corefile::forward_targets(&blocks, "clusterset.local")) else {
        return (
            Level::Warn,
            "no server block forwards clusterset.local to ferry-dns: pods cannot resolve exported services".into(),
            Some("add ferry's server block (ConfigMap kube-system/coredns-custom, key clusterset.server, from the chart) to the Corefile".into()),
        );
    };
    let ips: Vec<IpAddr> = targets.iter().filter_map(|t| corefile::target_ip(t)).collect();
    if let Some((ip, (peer, real, _))) = ips.iter().find_map(|ip| peer_of(side, *ip).map(|p| (ip, p))) {
        return (
            Level::Fail,
            format!(
                "clusterset.local goes to {ip}, an address of peer {peer} ({real}), not to ferry-dns here"
            ),
            Some(loopfix.into()),
        );
    }
    if let Some(fd) = side.dns.ferry_dns_ip
        && !ips.contains(&fd)
    {
        return (
            Level::Fail,
            format!(
                "clusterset.local goes to {}, not to ferry-dns ({fd})",
                targets.join(" ")
            ),
            Some(format!(
                "forward clusterset.local to {fd} (the chart's coredns-custom stanza)"
            )),
        );
    }
    let root = corefile::forward_targets(&blocks, "ferry-doctor.example")
        .map_or("not forwarded".into(), |t| t.join(" "));
    ok(format!(
        "only clusterset.local goes to {} (ferry-dns answers it and forwards nothing); `.` goes to {root}",
        targets.join(" ")
    ))
}

#[cfg(test)]
mod tests;
