//! How this cluster sees a peer's addresses, from one place: the remaps the gateway chose and wrote in the
//! `PeerNetwork` status. Before the gateway has reported (or where no gateway runs), the same
//! deterministic choice the gateway makes ([`remaps_for`], pure), so both agree without talking.

use std::collections::BTreeMap;

use ipnet::IpNet;

/// The gateway's choice for a peer's `remote` CIDRs given this cluster's `local` ones: a CIDR keeps its
/// addresses where it overlaps nothing, else gets a same-size prefix from ferry's pool (deterministic, so
/// every restart and every reader picks the same).
pub fn remaps_for(remote: &[IpNet], local: &[IpNet]) -> BTreeMap<IpNet, IpNet> {
    let pool: Vec<IpNet> = crate::ipam::default_pool_v4()
        .into_iter()
        .chain(crate::ipam::default_pool_v6())
        .collect();
    crate::ipam::plan_remaps(remote, local, &BTreeMap::new(), &pool).unwrap_or_default()
}

/// The remaps a gateway reported in a `PeerNetwork` status, if any (unparsable entries left out).
#[cfg(feature = "client")]
pub fn reported(pn: &ferry_crds::PeerNetwork) -> Option<BTreeMap<IpNet, IpNet>> {
    let remaps: BTreeMap<IpNet, IpNet> = pn
        .status
        .as_ref()?
        .remaps
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect();
    (!remaps.is_empty()).then_some(remaps)
}

/// The remaps of a `PeerNetwork`: what its gateway reported, else the gateway's own choice from its spec.
#[cfg(feature = "client")]
pub fn of(pn: &ferry_crds::PeerNetwork) -> BTreeMap<IpNet, IpNet> {
    if let Some(r) = reported(pn) {
        return r;
    }
    let parse = |v: &[String]| -> Vec<IpNet> { v.iter().filter_map(|c| c.parse().ok()).collect() };
    remaps_for(&parse(&pn.spec.remote_cidrs), &parse(&pn.spec.local_cidrs))
}

/// How this cluster sees `peer`'s addresses: [`of`] its `PeerNetwork` (one GET); without one, the
/// gateway's choice for `fallback` (remote, local CIDRs).
#[cfg(feature = "client")]
pub async fn for_peer(
    client: &kube::Client,
    peer: &str,
    fallback: (&[IpNet], &[IpNet]),
) -> BTreeMap<IpNet, IpNet> {
    let pn = kube::Api::<ferry_crds::PeerNetwork>::all(client.clone())
        .get_opt(peer)
        .await
        .ok()
        .flatten();
    match pn {
        Some(pn) => of(&pn),
        None => remaps_for(fallback.0, fallback.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_cidrs_are_remapped_the_same_way_every_time() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let a = remaps_for(&[net("10.244.0.0/16")], &[net("10.244.0.0/16")]);
        let b = remaps_for(&[net("10.244.0.0/16")], &[net("10.244.0.0/16")]);
        assert_eq!(a, b);
        assert_ne!(a[&net("10.244.0.0/16")], net("10.244.0.0/16"));
        assert_eq!(a[&net("10.244.0.0/16")].prefix_len(), 16);
        let c = remaps_for(&[net("10.245.0.0/16")], &[net("10.244.0.0/16")]);
        assert_eq!(c[&net("10.245.0.0/16")], net("10.245.0.0/16"));
    }
}
