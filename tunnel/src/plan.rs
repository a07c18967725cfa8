//! The gateway plan for one peering, from plain data to typed operations (no I/O).
//!
//! Translation (the side that chose a remap translates it): with remote CIDR `X` seen locally as `R`,
//! conntrack only ever sees `R`, the local view, so every flow's two directions match one conntrack entry
//! (kube-proxy drops packets conntrack calls INVALID, and its Service DNAT needs the entry):
//! - a local packet to `R` is routed by the main table's route `R → tunnel` (no policy routing: `R` never
//!   overlaps a local CIDR), and on its way out of the tunnel device, after conntrack, its destination
//!   prefix is rewritten `R → X` (postrouting);
//! - a packet arriving from the tunnel with source in `X` has its source prefix rewritten `X → R` before
//!   conntrack (prerouting, raw priority), so local pods see the remote at `R` and their replies go to `R`,
//!   back through the first rule.
//!
//! Both rewrites are stateless prefix maps (mask-and-or). TCP SYNs in and out of the tunnel are clamped to
//! the tunnel MTU (IPv4 MTU − 40, IPv6 MTU − 60).
//!
//! Start at [`GatewaySpec::plan`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Everything the planner needs for one peering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The tunnel interface (at most 15 characters).
    pub interface: String,
    /// MTU of the tunnel interface.
    pub tunnel_mtu: u32,
    /// Clamp TCP MSS to the tunnel MTU.
    pub mss_clamp: bool,
    /// This gateway's tunnel address, with prefix (e.g. `169.254.77.1/30`).
    pub local_tunnel_addr: IpNet,
    /// The peer gateway's tunnel address.
    pub remote_tunnel_addr: IpAddr,
    /// Each remote CIDR (real) and how it is seen locally (equal when not remapped).
    pub remaps: BTreeMap<IpNet, IpNet>,
}

/// One change to the host, applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set the interface MTU.
    SetMtu {
        /// Interface.
        dev: String,
        /// MTU.
        mtu: u32,
    },
    /// Add an address to the interface.
    AddAddress {
        /// Interface.
        dev: String,
        /// Address with prefix.
        addr: IpNet,
    },
    /// Bring the interface up.
    LinkUp {
        /// Interface.
        dev: String,
    },
    /// Route `dst` via the interface (main table).
    AddRoute {
        /// Destination.
        dst: IpNet,
        /// Interface.
        dev: String,
    },
    /// Load an nftables table atomically (replacing an older version of it).
    LoadNft {
        /// Table name (family `inet`).
        table: String,
        /// The full `nft -f` text.
        ruleset: String,
    },
    /// Teardown: delete the nftables table (family `inet`), if it exists.
    DeleteNft {
        /// Table name.
        table: String,
    },
    /// Teardown: delete the interface (its addresses and main-table routes go with it) and the
    /// userspace WireGuard device behind it.
    DeleteLink {
        /// Interface.
        dev: String,
    },
}

impl Op {
    /// Whether this op removes state (a teardown op) rather than adding it.
    pub fn is_teardown(&self) -> bool {
        matches!(self, Op::DeleteNft { .. } | Op::DeleteLink { .. })
    }
}

/// What [`GatewaySpec::plan`] returns: the ops to apply and the ones that undo them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPlan {
    /// Apply in order.
    pub apply: Vec<Op>,
    /// Undo in order, each best-effort: [`GatewaySpec::teardown`].
    pub teardown: Vec<Op>,
    /// nftables table name.
    pub nft_table: String,
    /// The ruleset (also inside `apply`).
    pub nft_ruleset: String,
}

/// A spec that cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Interface name too long or with odd characters.
    #[error("interface name {0:?} is not valid; fix: 1 to 15 characters of [a-z0-9_-]")]
    Interface(String),
    /// A remap changes the prefix size or family.
    #[error(
        "remap {remote} -> {local} changes the prefix length or family; fix: remap 1:1 onto a prefix of the same size"
    )]
    Remap {
        /// Remote CIDR.
        remote: IpNet,
        /// Local view.
        local: IpNet,
    },
    /// Tunnel MTU below the minimum of a family that crosses the tunnel.
    #[error(
        "tunnel MTU {mtu} is below the IPv6 minimum of 1280 while IPv6 CIDRs cross the tunnel; fix: raise the underlay MTU to at least {need}"
    )]
    Ipv6Mtu {
        /// MTU.
        mtu: u32,
        /// Underlay needed (assuming WireGuard over IPv6).
        need: u32,
    },
}

/// The postrouting chain's priority: after source NAT (100), so a masquerade decision (kube-proxy's, the
/// CNI's) sees the local view as every other hook did.
const POSTROUTING_PRIORITY: i32 = 300;

fn fam(n: &IpNet) -> &'static str {
    if n.addr().is_ipv4() { "ip" } else { "ip6" }
}

impl GatewaySpec {
    /// Whether any CIDR crossing the tunnel is IPv6.
    pub fn carries_ipv6(&self) -> bool {
        self.remaps.keys().any(|n| n.addr().is_ipv6())
    }

    /// Whether every route the plan puts into the tunnel (each remap's local view) is in `listing`, the
    /// output of `ip [-6] route show dev <interface>` (pure). A route replaced from elsewhere (another
    /// next hop for the same prefix and metric) is missing from that listing too.
    pub fn routes_listed(&self, listing: &str) -> bool {
        let listed: Vec<IpNet> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        self.remaps.values().all(|v| listed.contains(v))
    }

    /// Name of this peering's nftables table.
    pub fn nft_table(&self) -> String {
        format!("ferry_{}", self.interface.replace('-', "_"))
    }

    /// The ops that remove everything a plan of this peering (its interface) may have made, in order:
    /// the nftables table first (nothing is translated any more), then the interface with its
    /// addresses and routes. They do not depend on the remaps or the MTU, so they also clean up after a
    /// run that crashed halfway, or after a plan that no longer validates; each is applied best-effort
    /// (what is already gone is fine).
    pub fn teardown(&self) -> Vec<Op> {
        vec![
            Op::DeleteNft {
                table: self.nft_table(),
            },
            Op::DeleteLink {
                dev: self.interface.clone(),
            },
        ]
    }

    /// The plan.
    pub fn plan(&self) -> Result<GatewayPlan, PlanError> {
        let ok_name = !self.interface.is_empty()
            && self.interface.len() <= 15
            && self
                .interface
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok_name {
            return Err(PlanError::Interface(self.interface.clone()));
        }
        for (r, l) in &self.remaps {
            if r.prefix_len() != l.prefix_len() || r.addr().is_ipv4() != l.addr().is_ipv4() {
                return Err(PlanError::Remap {
                    remote: *r,
                    local: *l,
                });
            }
        }
        if self.carries_ipv6() && self.tunnel_mtu < 1280 {
            return Err(PlanError::Ipv6Mtu {
                mtu: self.tunnel_mtu,
                need: 1280 + 80,
            });
        }
        let dev = self.interface.clone();
        let mut apply = vec![
            Op::SetMtu {
                dev: dev.clone(),
                mtu: self.tunnel_mtu,
            },
            Op::AddAddress {
                dev: dev.clone(),
                addr: self.local_tunnel_addr,
            },
            Op::LinkUp { dev: dev.clone() },
        ];
        for local in self.remaps.values() {
            // the local view is what is routed (for a remapped CIDR, the rewrite to the remote prefix
            // happens as the packet leaves through the tunnel)
            apply.push(Op::AddRoute {
                dst: *local,
                dev: dev.clone(),
            });
        }
        let table = self.nft_table();
        let ruleset = self.render_nft(&table);
        apply.push(Op::LoadNft {
            table: table.clone(),
            ruleset: ruleset.clone(),
        });
        Ok(GatewayPlan {
            apply,
            teardown: self.teardown(),
            nft_table: table,
            nft_ruleset: ruleset,
        })
    }

    fn render_nft(&self, table: &str) -> String {
        let dev = &self.interface;
        let remapped: Vec<(&IpNet, &IpNet)> = self.remaps.iter().filter(|(r, l)| r != l).collect();
        let mut s = String::new();
        // `add` + `delete` first makes loading idempotent and atomic: the old table goes in the same transaction
        let _ = writeln!(
            s,
            "add table inet {table}\ndelete table inet {table}\ntable inet {table} {{"
        );
        // 1:1 same-size remaps are bijections, so the translation is stateless (no NAT state per flow);
        // sources from the tunnel are rewritten before conntrack sees them (raw priority) ...
        let _ = writeln!(
            s,
            "  chain prerouting_nat {{\n    type filter hook prerouting priority raw; policy accept;"
        );
        for (remote, local) in &remapped {
            let f = fam(remote);
            let _ = writeln!(
                s,
                "    iifname \"{dev}\" {f} saddr {remote} {f} saddr set {f} saddr & {} | {}",
                remote.hostmask(),
                local.network()
            );
        }
        let _ = writeln!(s, "  }}");
        // ... and destinations into the tunnel after it (and after routing, which used the local view)
        let _ = writeln!(
            s,
            "  chain postrouting_nat {{\n    type filter hook postrouting priority {POSTROUTING_PRIORITY}; policy accept;"
        );
        for (remote, local) in &remapped {
            let f = fam(local);
            let _ = writeln!(
                s,
                "    oifname \"{dev}\" {f} daddr {local} {f} daddr set {f} daddr & {} | {}",
                local.hostmask(),
                remote.network()
            );
        }
        let _ = writeln!(s, "  }}");
        if self.mss_clamp {
            let (mss4, mss6) = (
                self.tunnel_mtu.saturating_sub(40),
                self.tunnel_mtu.saturating_sub(60),
            );
            for (hook, chain, dirs) in [
                ("forward", "forward_clamp", &["oifname", "iifname"][..]),
                ("output", "output_clamp", &["oifname"][..]),
            ] {
                let _ = writeln!(
                    s,
                    "  chain {chain} {{\n    type filter hook {hook} priority mangle; policy accept;"
                );
                for d in dirs {
                    let _ = writeln!(
                        s,
                        "    meta nfproto ipv4 {d} \"{dev}\" tcp flags syn tcp option maxseg size > {mss4} tcp option maxseg size set {mss4}"
                    );
                    let _ = writeln!(
                        s,
                        "    meta nfproto ipv6 {d} \"{dev}\" tcp flags syn tcp option maxseg size > {mss6} tcp option maxseg size set {mss6}"
                    );
                }
                let _ = writeln!(s, "  }}");
            }
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn spec() -> GatewaySpec {
        GatewaySpec {
            interface: "fyc2".into(),
            tunnel_mtu: 1340,
            mss_clamp: true,
            local_tunnel_addr: n("169.254.77.1/30"),
            remote_tunnel_addr: "169.254.77.2".parse().unwrap(),
            remaps: BTreeMap::from([
                (n("10.244.0.0/16"), n("10.0.0.0/16")),
                (n("10.97.0.0/16"), n("10.97.0.0/16")),
            ]),
        }
    }

    #[test]
    fn the_tunnel_routes_are_found_in_the_devices_route_listing_or_missed() {
        let s = spec();
        assert!(s.routes_listed("10.0.0.0/16 scope link \n10.97.0.0/16 scope link \n"));
        // one gone (replaced by a route via another node, or deleted): not intact
        assert!(!s.routes_listed("10.97.0.0/16 scope link \n"));
        assert!(!s.routes_listed(""));
        // IPv6 lines carry a metric; an address is not a prefix of the plan
        let mut v6 = spec();
        v6.remaps = BTreeMap::from([(n("fd00:10:244::/64"), n("fd66:0:1::/64"))]);
        assert!(v6.routes_listed("fd66:0:1::/64 metric 1024 pref medium\n"));
        assert!(!v6.routes_listed("fd66:0:1::1 metric 1024 pref medium\n"));
    }

    #[test]
    fn overlapping_cidr_gets_stateless_prefix_nat_both_ways_with_conntrack_seeing_only_the_local_view() {
        let p = spec().plan().unwrap();
        let r = &p.nft_ruleset;
        // out of the tunnel device: the local view becomes the remote prefix
        assert!(
            r.contains(
                "oifname \"fyc2\" ip daddr 10.0.0.0/16 ip daddr set ip daddr & 0.0.255.255 | 10.244.0.0"
            ),
            "{r}"
        );
        // in from it: the remote prefix becomes the local view
        assert!(
            r.contains(
                "iifname \"fyc2\" ip saddr 10.244.0.0/16 ip saddr set ip saddr & 0.0.255.255 | 10.0.0.0"
            ),
            "{r}"
        );
        // sources before conntrack (raw), destinations after it and after source NAT: both directions of
        // a flow are one conntrack entry in the local view (a reply kube-proxy saw as INVALID is dropped)
        let pre = r.find("type filter hook prerouting priority raw").expect(r);
        let post = r.find("type filter hook postrouting priority 300").expect(r);
        assert!(
            r[pre..post].contains("saddr set") && !r[pre..post].contains("daddr set"),
            "{r}"
        );
        assert!(
            r[post..].contains("daddr set") && !r[post..].contains("saddr set"),
            "{r}"
        );
        // stateless: no nat chain, no ct expression, no marks or policy routing
        assert!(
            !r.contains("type nat") && !r.contains(" ct ") && !r.contains("mark"),
            "{r}"
        );
        // the service CIDR does not overlap: routed as itself, never rewritten
        assert!(!r.contains("10.97.0.0/16 ip"), "{r}");
        // what is routed is the local view only
        let routes: Vec<IpNet> = p
            .apply
            .iter()
            .filter_map(|o| match o {
                Op::AddRoute { dst, .. } => Some(*dst),
                _ => None,
            })
            .collect();
        assert_eq!(routes, [n("10.97.0.0/16"), n("10.0.0.0/16")]);
        assert_eq!(
            p.apply[0],
            Op::SetMtu {
                dev: "fyc2".into(),
                mtu: 1340
            }
        );
        assert!(matches!(p.apply.last(), Some(Op::LoadNft { .. })));
    }

    #[test]
    fn mss_clamp_follows_the_tunnel_mtu_and_can_be_switched_off() {
        let r = spec().plan().unwrap().nft_ruleset;
        assert!(r.contains("meta nfproto ipv4 oifname \"fyc2\" tcp flags syn tcp option maxseg size > 1300 tcp option maxseg size set 1300"));
        assert!(r.contains("meta nfproto ipv6 iifname \"fyc2\" tcp flags syn tcp option maxseg size > 1280 tcp option maxseg size set 1280"));
        assert!(r.contains("chain output_clamp"));
        let mut s = spec();
        s.mss_clamp = false;
        assert!(!s.plan().unwrap().nft_ruleset.contains("maxseg"));
    }

    #[test]
    fn ipv6_cidrs_use_ip6_rules() {
        let mut s = spec();
        s.remaps = BTreeMap::from([(n("fd00:10:244::/56"), n("fd66:6572:7279::/56"))]);
        let p = s.plan().unwrap();
        assert!(p.nft_ruleset.contains(
            "oifname \"fyc2\" ip6 daddr fd66:6572:7279::/56 ip6 daddr set ip6 daddr & ::ff:ffff:ffff:ffff:ffff | fd00:10:244::"
        ), "{}", p.nft_ruleset);
        assert!(p.nft_ruleset.contains(
            "ip6 saddr fd00:10:244::/56 ip6 saddr set ip6 saddr & ::ff:ffff:ffff:ffff:ffff | fd66:6572:7279::"
        ), "{}", p.nft_ruleset);
        assert!(p.apply.contains(&Op::AddRoute {
            dst: n("fd66:6572:7279::/56"),
            dev: "fyc2".into(),
        }));
    }

    #[test]
    fn loading_replaces_the_old_table_in_one_transaction() {
        let r = spec().plan().unwrap().nft_ruleset;
        assert!(
            r.starts_with("add table inet ferry_fyc2\ndelete table inet ferry_fyc2\ntable inet ferry_fyc2 {")
        );
    }

    #[test]
    fn the_teardown_undoes_every_op_of_the_plan_and_adds_nothing() {
        for s in [spec(), {
            let mut s = spec();
            s.remaps.insert(n("fd00:10:244::/48"), n("fd00:99:1::/48"));
            s
        }] {
            let p = s.plan().unwrap();
            assert!(p.teardown.iter().all(Op::is_teardown));
            assert!(!p.apply.iter().any(Op::is_teardown));
            // the table goes first, so nothing is translated while the rest is removed
            assert_eq!(
                p.teardown[0],
                Op::DeleteNft {
                    table: p.nft_table.clone()
                }
            );
            assert_eq!(
                p.teardown.last(),
                Some(&Op::DeleteLink {
                    dev: s.interface.clone()
                })
            );
            for op in &p.apply {
                let undone = match op {
                    Op::SetMtu { dev, .. } | Op::AddAddress { dev, .. } | Op::LinkUp { dev } => {
                        p.teardown.contains(&Op::DeleteLink { dev: dev.clone() })
                    }
                    Op::AddRoute { dev, .. } => p.teardown.contains(&Op::DeleteLink { dev: dev.clone() }),
                    Op::LoadNft { table, .. } => p.teardown.contains(&Op::DeleteNft { table: table.clone() }),
                    other => panic!("a teardown op in the apply list: {other:?}"),
                };
                assert!(undone, "{op:?} is not undone by {:?}", p.teardown);
            }
        }
        // a spec that no longer plans can still be torn down (what a crashed run left)
        let mut bad = spec();
        bad.tunnel_mtu = 1000;
        bad.remaps.insert(n("fd00:10:244::/48"), n("fd00:99:1::/48"));
        assert!(bad.plan().is_err());
        assert_eq!(bad.teardown(), spec().teardown());
    }

    #[test]
    fn bad_specs_are_refused_before_anything_is_applied() {
        let mut s = spec();
        s.interface = "a-very-long-interface".into();
        assert!(matches!(s.plan(), Err(PlanError::Interface(_))));
        let mut s = spec();
        s.remaps.insert(n("10.1.0.0/16"), n("10.2.0.0/24"));
        assert!(s.plan().unwrap_err().to_string().contains("fix: remap 1:1"));
        let mut s = spec();
        s.remaps.insert(n("fd00::/64"), n("fd00::/64"));
        s.tunnel_mtu = 1200;
        assert_eq!(
            s.plan().unwrap_err(),
            PlanError::Ipv6Mtu {
                mtu: 1200,
                need: 1360
            }
        );
    }

    proptest::proptest! {
        /// What the rules compute (address & hostmask | prefix) is the remap, and the two rules invert each
        /// other: a reply is translated back to the address the flow started with.
        #[test]
        fn the_mask_and_or_rewrite_is_the_remap_and_its_inverse(host in 0u32..65536, v6host in proptest::num::u128::ANY) {
            let (remote, local) = (n("10.244.0.0/16"), n("10.0.0.0/16"));
            let real = std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) | host));
            let rewrite = |a: std::net::IpAddr, mask: std::net::IpAddr, to: std::net::IpAddr| match (a, mask, to) {
                (std::net::IpAddr::V4(a), std::net::IpAddr::V4(m), std::net::IpAddr::V4(t)) =>
                    std::net::IpAddr::V4((u32::from(a) & u32::from(m) | u32::from(t)).into()),
                (std::net::IpAddr::V6(a), std::net::IpAddr::V6(m), std::net::IpAddr::V6(t)) =>
                    std::net::IpAddr::V6((u128::from(a) & u128::from(m) | u128::from(t)).into()),
                _ => unreachable!(),
            };
            let seen = rewrite(real, remote.hostmask(), local.network());
            let remaps = BTreeMap::from([(remote, local)]);
            proptest::prop_assert_eq!(Some(seen), crate::ipam::translate(real, &remaps));
            proptest::prop_assert_eq!(rewrite(seen, local.hostmask(), remote.network()), real);
            let (r6, l6) = (n("fd00:10:244::/56"), n("fd66:6572:7279::/56"));
            let real6 = std::net::IpAddr::V6((u128::from(std::net::Ipv6Addr::from([0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0])) | (v6host & ((1u128 << 72) - 1))).into());
            let seen6 = rewrite(real6, r6.hostmask(), l6.network());
            proptest::prop_assert!(l6.contains(&seen6));
            proptest::prop_assert_eq!(Some(seen6), crate::ipam::translate(real6, &BTreeMap::from([(r6, l6)])));
            proptest::prop_assert_eq!(rewrite(seen6, l6.hostmask(), r6.network()), real6);
        }
    }
}
