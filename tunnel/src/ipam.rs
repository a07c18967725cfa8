//! IPAM for remote CIDRs: each remote CIDR that overlaps a reserved range (local pod/service CIDRs, the
//! underlay, remaps already in use) is remapped 1:1 onto a free prefix of the same size from a pool
//! (RFC 1918 for IPv4, ULA for IPv6). Existing remaps are kept (stable across restarts), choices are
//! deterministic (the lowest free prefix in pool order), and no two remote CIDRs share a prefix.

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The default IPv4 pool: RFC 1918.
pub fn default_pool_v4() -> Vec<IpNet> {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        .iter()
        .map(|s| s.parse().expect("literal"))
        .collect()
}

/// The default IPv6 pool: a ULA /48 of ferry's.
pub fn default_pool_v6() -> Vec<IpNet> {
    vec!["fd66:6572:7279::/48".parse().expect("literal")]
}

/// A remap that cannot be made, worded for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// No free prefix of the needed size is left in the pool.
    #[error(
        "remote CIDR {remote} overlaps {overlaps} and the remap pool {pool} has no free /{len} left; fix: give a larger --remap-pool (or one without the ranges in use: {in_use})"
    )]
    PoolExhausted {
        /// The remote CIDR.
        remote: IpNet,
        /// What it overlaps.
        overlaps: IpNet,
        /// The pool, as text.
        pool: String,
        /// The prefix length needed.
        len: u8,
        /// Reserved ranges inside the pool.
        in_use: String,
    },
    /// A remap given as existing is not the same size as its remote CIDR.
    #[error(
        "stored remap {remote} -> {remap} changes the prefix length; fix: delete the stored remap, ferry will pick a new one"
    )]
    SizeMismatch {
        /// Remote CIDR.
        remote: IpNet,
        /// Stored remap.
        remap: IpNet,
    },
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The remap of every remote CIDR: itself when it overlaps nothing, else a free same-size prefix.
///
/// `reserved`: local pod/service CIDRs and the underlay. `existing`: remaps chosen before (kept when still
/// valid). `pool`: where new remaps come from.
pub fn plan_remaps(
    remote: &[IpNet],
    reserved: &[IpNet],
    existing: &BTreeMap<IpNet, IpNet>,
    pool: &[IpNet],
) -> Result<BTreeMap<IpNet, IpNet>, IpamError> {
    let mut out = BTreeMap::new();
    // every prefix in use: the reserved ranges, plus each remote CIDR that will be reachable as itself
    let mut taken: Vec<IpNet> = reserved.to_vec();
    for r in remote {
        if let Some(m) = existing.get(r)
            && (m.prefix_len() != r.prefix_len() || m.addr().is_ipv4() != r.addr().is_ipv4())
        {
            return Err(IpamError::SizeMismatch {
                remote: *r,
                remap: *m,
            });
        }
    }
    let needs_remap = |r: &IpNet, taken: &[IpNet]| taken.iter().any(|t| overlaps(r, t));
    // first the remote CIDRs that need no remap (they occupy their own range), then kept remaps
    for r in remote {
        if !needs_remap(r, reserved) && !existing.contains_key(r) {
            out.insert(*r, *r);
            taken.push(*r);
        }
    }
    for r in remote {
        if let Some(m) = existing.get(r)
            && (m == r || !taken.iter().any(|t| overlaps(m, t)))
        {
            out.insert(*r, *m);
            taken.push(*m);
        }
    }
    for r in remote {
        if out.contains_key(r) {
            continue;
        }
        if !needs_remap(r, &taken) {
            out.insert(*r, *r);
            taken.push(*r);
            continue;
        }
        let family_pool: Vec<IpNet> = pool
            .iter()
            .filter(|p| p.addr().is_ipv4() == r.addr().is_ipv4())
            .copied()
            .collect();
        let found = family_pool
            .iter()
            .filter(|p| p.prefix_len() <= r.prefix_len())
            .find_map(|p| first_free(*p, r.prefix_len(), &taken));
        match found {
            Some(m) => {
                out.insert(*r, m);
                taken.push(m);
            }
            None => {
                let overlapped = *taken.iter().find(|t| overlaps(r, t)).expect("needs_remap");
                let in_use: Vec<String> = taken
                    .iter()
                    .filter(|t| family_pool.iter().any(|p| overlaps(p, t)))
                    .map(|t| t.to_string())
                    .collect();
                return Err(IpamError::PoolExhausted {
                    remote: *r,
                    overlaps: overlapped,
                    pool: family_pool
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    len: r.prefix_len(),
                    in_use: if in_use.is_empty() {
                        "none".into()
                    } else {
                        in_use.join(",")
                    },
                });
            }
        }
    }
    Ok(out)
}

/// The lowest prefix of length `len` in `pool` that overlaps nothing in `taken`. Skips whole taken ranges
/// at once, so a /8 pool is scanned in a few steps.
fn first_free(pool: IpNet, len: u8, taken: &[IpNet]) -> Option<IpNet> {
    let step: u128 = 1u128 << (u32::from(pool.max_prefix_len() - len));
    let (start, end) = (to_u128(pool.network()), to_u128(pool.broadcast()));
    let mut cur = start;
    while cur <= end && end - cur + 1 >= step {
        let cand = from_u128(cur, len, pool.addr().is_ipv4());
        match taken
            .iter()
            .filter(|t| overlaps(&cand, t))
            .map(|t| to_u128(t.broadcast()))
            .max()
        {
            None => return Some(cand),
            Some(last) => {
                // jump past the blocking range, aligned up to the next prefix boundary
                let next = (last / step + 1).checked_mul(step)?;
                cur = next;
            }
        }
    }
    None
}

fn to_u128(a: std::net::IpAddr) -> u128 {
    match a {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(x: u128, len: u8, v4: bool) -> IpNet {
    if v4 {
        IpNet::V4(Ipv4Net::new((x as u32).into(), len).expect("valid length"))
    } else {
        IpNet::V6(Ipv6Net::new(x.into(), len).expect("valid length"))
    }
}

/// Where a remote address appears locally, given the remaps (`None` if it is in no remote CIDR).
pub fn translate(addr: std::net::IpAddr, remaps: &BTreeMap<IpNet, IpNet>) -> Option<std::net::IpAddr> {
    let (remote, local) = remaps.iter().find(|(r, _)| r.contains(&addr))?;
    let offset = to_u128(addr) - to_u128(remote.network());
    Some(
        match from_u128(
            to_u128(local.network()) + offset,
            local.max_prefix_len(),
            addr.is_ipv4(),
        ) {
            IpNet::V4(n) => n.addr().into(),
            IpNet::V6(n) => n.addr().into(),
        },
    )
}

/// Where the per-peering tunnel links come from: `169.254.64.0/18`, cut into /30s (4096 links). Link `n` is
/// `169.254.64.0 + 4n`; the provider takes `.1`, the consumer `.2`.
pub const TUNNEL_LINKS: &str = "169.254.64.0/18";

/// Number of tunnel links in [`TUNNEL_LINKS`].
pub const TUNNEL_SLOTS: u32 = 1 << (30 - 18);

fn links_base() -> u32 {
    u32::from(std::net::Ipv4Addr::new(169, 254, 64, 0))
}

/// Tunnel link `slot`: `(provider address/30, consumer address/30)`.
pub fn tunnel_link(slot: u32) -> Option<(IpNet, IpNet)> {
    if slot >= TUNNEL_SLOTS {
        return None;
    }
    let net = links_base() + 4 * slot;
    let at = |host: u32| IpNet::new(std::net::Ipv4Addr::from(net + host).into(), 30).ok();
    Some((at(1)?, at(2)?))
}

/// The slot of a tunnel address (either end, any prefix length), if it lies in [`TUNNEL_LINKS`].
pub fn tunnel_slot(addr: std::net::IpAddr) -> Option<u32> {
    let std::net::IpAddr::V4(a) = addr else {
        return None;
    };
    let off = u32::from(a).checked_sub(links_base())?;
    (off / 4 < TUNNEL_SLOTS).then_some(off / 4)
}

/// The lowest slot no address in `in_use` occupies (addresses outside [`TUNNEL_LINKS`] are ignored).
pub fn free_tunnel_slot(in_use: &[std::net::IpAddr]) -> Option<u32> {
    let used: std::collections::BTreeSet<u32> = in_use.iter().filter_map(|a| tunnel_slot(*a)).collect();
    (0..TUNNEL_SLOTS).find(|s| !used.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn kubeadm_local() -> Vec<IpNet> {
        vec![n("10.244.0.0/16"), n("10.96.0.0/16"), n("198.18.1.0/24")]
    }

    #[test]
    fn identical_kubeadm_pod_cidrs_are_remapped_to_the_first_free_same_size_prefix() {
        let remote = [n("10.244.0.0/16"), n("10.97.0.0/16")];
        let m = plan_remaps(&remote, &kubeadm_local(), &BTreeMap::new(), &default_pool_v4()).unwrap();
        assert_eq!(m[&n("10.244.0.0/16")], n("10.0.0.0/16"));
        assert_eq!(m[&n("10.97.0.0/16")], n("10.97.0.0/16"), "no overlap, no remap");
        let ip = translate("10.244.1.7".parse().unwrap(), &m).unwrap();
        assert_eq!(ip.to_string(), "10.0.1.7");
    }

    #[test]
    fn remaps_are_stable_and_two_peers_never_share_a_prefix() {
        let mut reserved = kubeadm_local();
        let first = plan_remaps(
            &[n("10.244.0.0/16")],
            &reserved,
            &BTreeMap::new(),
            &default_pool_v4(),
        )
        .unwrap();
        // a restart with the stored remap keeps it
        let again = plan_remaps(&[n("10.244.0.0/16")], &reserved, &first, &default_pool_v4()).unwrap();
        assert_eq!(first, again);
        // a second peer with the same CIDR: the first peer's remap is reserved now
        reserved.extend(first.values());
        let second = plan_remaps(
            &[n("10.244.0.0/16")],
            &reserved,
            &BTreeMap::new(),
            &default_pool_v4(),
        )
        .unwrap();
        assert_eq!(second[&n("10.244.0.0/16")], n("10.1.0.0/16"));
    }

    #[test]
    fn a_stored_remap_that_now_collides_is_replaced() {
        let stored = BTreeMap::from([(n("10.244.0.0/16"), n("10.0.0.0/16"))]);
        let mut reserved = kubeadm_local();
        reserved.push(n("10.0.0.0/12")); // the underlay grew over it
        let m = plan_remaps(&[n("10.244.0.0/16")], &reserved, &stored, &default_pool_v4()).unwrap();
        assert_eq!(m[&n("10.244.0.0/16")], n("10.16.0.0/16"));
        let bad = BTreeMap::from([(n("10.244.0.0/16"), n("10.0.0.0/24"))]);
        assert!(matches!(
            plan_remaps(&[n("10.244.0.0/16")], &reserved, &bad, &default_pool_v4()),
            Err(IpamError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn ipv6_remaps_come_from_the_ula_pool() {
        let local = [n("fd00:10:244::/56")];
        let m = plan_remaps(
            &[n("fd00:10:244::/56")],
            &local,
            &BTreeMap::new(),
            &default_pool_v6(),
        )
        .unwrap();
        assert_eq!(m[&n("fd00:10:244::/56")], n("fd66:6572:7279::/56"));
        let ip = translate("fd00:10:244:1::5".parse().unwrap(), &m).unwrap();
        assert_eq!(ip.to_string(), "fd66:6572:7279:1::5");
    }

    #[test]
    fn a_pool_too_small_names_the_cidr_the_pool_and_the_fix() {
        let e = plan_remaps(
            &[n("10.244.0.0/16")],
            &kubeadm_local(),
            &BTreeMap::new(),
            &[n("192.168.0.0/24")],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("remote CIDR 10.244.0.0/16 overlaps 10.244.0.0/16"),
            "{text}"
        );
        assert!(text.contains("pool 192.168.0.0/24 has no free /16"), "{text}");
        assert!(text.contains("fix: give a larger --remap-pool"), "{text}");
    }

    #[test]
    fn first_free_skips_taken_ranges_and_aligns() {
        let taken = [n("10.0.0.0/16"), n("10.1.128.0/17")];
        assert_eq!(first_free(n("10.0.0.0/8"), 16, &taken), Some(n("10.2.0.0/16")));
        assert_eq!(first_free(n("10.0.0.0/8"), 8, &taken), None);
        assert_eq!(first_free(n("10.0.0.0/15"), 16, &taken), None);
    }

    proptest! {
        #[test]
        fn remaps_never_overlap_anything_reserved_or_each_other(
            remotes in proptest::collection::btree_set((0u8..=255, 16u8..=24), 1..6),
            reserved in proptest::collection::vec((0u8..=255, 8u8..=24), 0..6),
        ) {
            let remote: Vec<IpNet> = remotes.iter().map(|(b, l)| IpNet::V4(Ipv4Net::new([10, *b, 0, 0].into(), *l).unwrap()).trunc()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            // remote CIDRs of one peer never overlap each other
            let remote: Vec<IpNet> = remote.iter().filter(|r| !remote.iter().any(|o| o != *r && o.contains(&r.network()))).copied().collect();
            let reserved: Vec<IpNet> = reserved.iter().map(|(b, l)| IpNet::V4(Ipv4Net::new([10, *b, 0, 0].into(), *l).unwrap()).trunc()).collect();
            if let Ok(m) = plan_remaps(&remote, &reserved, &BTreeMap::new(), &default_pool_v4()) {
                prop_assert_eq!(m.len(), remote.len());
                let vals: Vec<IpNet> = m.values().copied().collect();
                for (r, v) in &m {
                    prop_assert_eq!(r.prefix_len(), v.prefix_len());
                    prop_assert!(!reserved.iter().any(|t| overlaps(v, t)), "{} overlaps reserved", v);
                }
                for (i, a) in vals.iter().enumerate() {
                    for b in &vals[i + 1..] {
                        prop_assert!(!overlaps(a, b), "{} and {}", a, b);
                    }
                }
            }
        }
    }

    #[test]
    fn tunnel_links_are_30s_from_the_link_local_block_and_slots_round_trip() {
        let (p, c) = tunnel_link(0).unwrap();
        assert_eq!(
            (p.to_string(), c.to_string()),
            ("169.254.64.1/30".into(), "169.254.64.2/30".into())
        );
        let (p, c) = tunnel_link(5).unwrap();
        assert_eq!(p.to_string(), "169.254.64.21/30");
        assert_eq!(tunnel_slot(p.addr()), Some(5));
        assert_eq!(tunnel_slot(c.addr()), Some(5));
        let last = tunnel_link(TUNNEL_SLOTS - 1).unwrap().1;
        assert_eq!(last.to_string(), "169.254.127.254/30");
        assert!(tunnel_link(TUNNEL_SLOTS).is_none());
        assert_eq!(tunnel_slot("169.254.128.1".parse().unwrap()), None);
        assert_eq!(tunnel_slot("169.254.63.255".parse().unwrap()), None);
        assert_eq!(tunnel_slot("fd00::1".parse().unwrap()), None);
    }

    #[test]
    fn the_free_slot_skips_what_either_side_uses() {
        assert_eq!(free_tunnel_slot(&[]), Some(0));
        let used: Vec<std::net::IpAddr> = ["169.254.64.1", "169.254.64.6", "10.0.0.1", "169.254.64.14"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(free_tunnel_slot(&used), Some(2));
        let all: Vec<std::net::IpAddr> = (0..TUNNEL_SLOTS)
            .map(|s| tunnel_link(s).unwrap().0.addr())
            .collect();
        assert_eq!(free_tunnel_slot(&all), None);
    }
}
