//! This cluster's WireGuard key (X25519) and the `PeerNetwork` each side of a peering gets.
//!
//! The key is created on first use and kept in the Secret `ferry-system/ferry-wireguard` (`privateKey`,
//! `publicKey`, base64 as `wg` prints them); its public half travels in the peering handshake both ways.
//! [`peer_network`] is the object both agents write: this cluster's CIDRs, the peer's CIDRs, key and
//! endpoint, for the gateway to build the tunnel from.

use base64::Engine;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ferry_crds::{PeerNetwork, PeerNetworkSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};

use ferry_crds::identity::SYSTEM_NAMESPACE;

/// The Secret that holds this cluster's WireGuard key.
pub const WIREGUARD_SECRET: &str = "ferry-wireguard";

/// An X25519 key pair, as WireGuard uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct WireGuardKey {
    /// Private key (32 bytes, clamped when used).
    pub private: [u8; 32],
}

impl std::fmt::Debug for WireGuardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WireGuardKey {{ public: {} }}", self.public_b64())
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl WireGuardKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut private = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut private);
        // the clamping WireGuard applies (and `wg genkey` stores)
        private[0] &= 248;
        private[31] = (private[31] & 127) | 64;
        Self { private }
    }

    /// From the base64 text `wg genkey` prints.
    pub fn from_b64(s: &str) -> Option<Self> {
        let v = base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()?;
        Some(Self {
            private: v.try_into().ok()?,
        })
    }

    /// The private key in base64.
    pub fn private_b64(&self) -> String {
        b64(&self.private)
    }

    /// The public key in base64 (what `wg pubkey` prints).
    pub fn public_b64(&self) -> String {
        b64(&MontgomeryPoint::mul_base_clamped(self.private).to_bytes())
    }
}

/// A WireGuard public key in base64, if it is one (32 bytes).
pub fn parse_public(s: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?
        .try_into()
        .ok()
}

/// This cluster's WireGuard key: read from its Secret, or created there on first use.
pub async fn ensure_key(client: &Client) -> crate::Result<WireGuardKey> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    if let Some(s) = secrets.get_opt(WIREGUARD_SECRET).await? {
        let text = ferry_crds::identity::text(&s, "privateKey").unwrap_or_default();
        return WireGuardKey::from_b64(&text).ok_or_else(|| {
            invalid!(
                "Secret {SYSTEM_NAMESPACE}/{WIREGUARD_SECRET} has no valid privateKey; fix: delete it and restart ferry-agent (a new key is made)"
            )
        });
    }
    let key = WireGuardKey::generate();
    let mut s = Secret::default();
    s.metadata.name = Some(WIREGUARD_SECRET.into());
    s.data = Some(
        [
            (
                "privateKey".to_string(),
                ByteString(key.private_b64().into_bytes()),
            ),
            ("publicKey".to_string(), ByteString(key.public_b64().into_bytes())),
        ]
        .into(),
    );
    match secrets.create(&PostParams::default(), &s).await {
        Ok(_) => Ok(key),
        // another agent made one a moment ago: use that one
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(ensure_key(client)).await,
        Err(e) => Err(e.into()),
    }
}

/// The `PeerNetwork` for peer `peer`.
pub fn peer_network(
    peer: &str,
    local_cidrs: &[String],
    remote_cidrs: &[String],
    peer_public_key: &str,
    peer_endpoint: Option<&str>,
) -> PeerNetwork {
    PeerNetwork::new(
        peer,
        PeerNetworkSpec {
            cluster_id: peer.to_string(),
            local_cidrs: local_cidrs.to_vec(),
            remote_cidrs: remote_cidrs.to_vec(),
            peer_public_key: peer_public_key.to_string(),
            peer_endpoint: peer_endpoint.map(str::to_string),
            underlay_mtu: None,
            tunnel_address: None,
            peer_tunnel_address: None,
            listen_port: None,
            peer_standby_endpoints: vec![],
        },
    )
}

/// The first WireGuard port; link `n` uses `base + 2n` (and the probe responder `base + 2n + 1`).
pub const WIREGUARD_BASE_PORT: u16 = 51820;

/// The WireGuard port of tunnel link `slot` from base port `base`.
pub fn link_port(base: u16, slot: u32) -> Option<u16> {
    u16::try_from(u32::from(base) + 2 * slot).ok()
}

/// The base port of an endpoint `host:port` (its port), else [`WIREGUARD_BASE_PORT`].
pub fn base_port(endpoint: Option<&str>) -> u16 {
    endpoint
        .and_then(|e| e.rsplit_once(':')?.1.parse().ok())
        .unwrap_or(WIREGUARD_BASE_PORT)
}

/// `host:port` moved to link `slot`'s port (`host:base` → `host:base+2·slot`).
pub fn link_endpoint(endpoint: &str, slot: u32) -> Option<String> {
    let (host, port) = endpoint.rsplit_once(':')?;
    Some(format!("{host}:{}", link_port(port.parse().ok()?, slot)?))
}

/// Sets the tunnel link of a `PeerNetwork`: this side's address/30, the peer's address, the UDP port.
pub fn set_link(pn: &mut PeerNetwork, slot: u32, provider_side: bool, base_port: u16) {
    if let Some((p, c)) = ferry_tunnel::ipam::tunnel_link(slot) {
        let (me, peer) = if provider_side { (p, c) } else { (c, p) };
        pn.spec.tunnel_address = Some(me.to_string());
        pn.spec.peer_tunnel_address = Some(peer.addr().to_string());
        pn.spec.listen_port = link_port(base_port, slot);
    }
}

/// Tunnel-link addresses (both ends) of this cluster's `PeerNetwork`s, except the one of `except`.
pub async fn tunnel_addresses_in_use(client: &Client, except: &str) -> kube::Result<Vec<String>> {
    let api: Api<PeerNetwork> = Api::all(client.clone());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|pn| pn.spec.cluster_id != except)
        .flat_map(|pn| [pn.spec.tunnel_address, pn.spec.peer_tunnel_address])
        .flatten()
        .collect())
}

/// A free tunnel link for a peering with `peer` (one LIST of this cluster's `PeerNetwork`s): see
/// [`pick_slot`].
pub async fn choose_slot(client: &Client, peer: &str, peer_in_use: &[String]) -> kube::Result<Option<u32>> {
    let api: Api<PeerNetwork> = Api::all(client.clone());
    let all = api.list(&Default::default()).await?.items;
    let existing = all
        .iter()
        .find(|pn| pn.spec.cluster_id == peer)
        .and_then(|pn| addr_slot(pn.spec.tunnel_address.as_deref()?));
    let ours: Vec<String> = all
        .into_iter()
        .filter(|pn| pn.spec.cluster_id != peer)
        .flat_map(|pn| [pn.spec.tunnel_address, pn.spec.peer_tunnel_address])
        .flatten()
        .collect();
    Ok(pick_slot(existing, &ours, peer_in_use))
}

/// The link for a peering: the one it already had (a re-peering keeps its link) unless the peer now
/// uses it elsewhere, else the lowest that neither this cluster (`ours`) nor the peer (`theirs`) uses.
pub fn pick_slot(existing: Option<u32>, ours: &[String], theirs: &[String]) -> Option<u32> {
    if let Some(s) = existing
        && !theirs.iter().any(|a| addr_slot(a) == Some(s))
    {
        return Some(s);
    }
    let used: Vec<std::net::IpAddr> = ours
        .iter()
        .chain(theirs)
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    ferry_tunnel::ipam::free_tunnel_slot(&used)
}

fn addr_slot(a: &str) -> Option<u32> {
    ferry_tunnel::ipam::tunnel_slot(a.split('/').next()?.parse().ok()?)
}

/// Creates or replaces the `PeerNetwork` of `peer` (server-side apply: a re-peering updates keys and CIDRs).
pub async fn apply_peer_network(client: &Client, pn: &PeerNetwork) -> kube::Result<()> {
    let api: Api<PeerNetwork> = Api::all(client.clone());
    let name = pn.spec.cluster_id.clone();
    api.patch(
        &name,
        &kube::api::PatchParams::apply("ferry-agent").force(),
        &kube::api::Patch::Apply(pn),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_is_x25519_of_the_private_one() {
        // RFC 7748, section 6.1 (Alice)
        let private =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let k = WireGuardKey::from_b64(&b64(&private)).unwrap();
        let public = base64::engine::general_purpose::STANDARD
            .decode(k.public_b64())
            .unwrap();
        assert_eq!(
            hex::encode(public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn generated_keys_are_clamped_distinct_and_round_trip() {
        let (a, b) = (WireGuardKey::generate(), WireGuardKey::generate());
        assert_ne!(a, b);
        assert_eq!(a.private[0] & 7, 0);
        assert_eq!(a.private[31] & 0xc0, 0x40);
        assert_eq!(WireGuardKey::from_b64(&a.private_b64()), Some(a.clone()));
        assert!(WireGuardKey::from_b64("too short").is_none());
        assert!(
            !format!("{a:?}").contains(&a.private_b64()),
            "Debug must not print the private key"
        );
    }

    #[test]
    fn a_peer_network_names_the_peer_and_both_sides_cidrs() {
        let pn = peer_network(
            "p1",
            &["10.244.0.0/16".into()],
            &["10.245.0.0/16".into()],
            "KEY",
            Some("192.0.2.1:51820"),
        );
        assert_eq!(pn.metadata.name.as_deref(), Some("p1"));
        assert_eq!(pn.spec.remote_cidrs, ["10.245.0.0/16"]);
        assert_eq!(pn.spec.peer_endpoint.as_deref(), Some("192.0.2.1:51820"));
    }

    #[test]
    fn each_link_has_its_own_port_and_both_sides_agree_on_the_addresses() {
        assert_eq!(
            link_endpoint("198.18.2.2:51820", 3).as_deref(),
            Some("198.18.2.2:51826")
        );
        assert_eq!(
            link_endpoint("[fd00::2]:51820", 1).as_deref(),
            Some("[fd00::2]:51822")
        );
        assert_eq!(link_endpoint("no-port", 1), None);
        assert_eq!(link_port(65535, 1), None);
        assert_eq!(base_port(Some("198.18.1.2:40000")), 40000);
        assert_eq!(base_port(None), WIREGUARD_BASE_PORT);
        let mut p = peer_network("c1", &[], &[], "K", None);
        let mut c = peer_network("p1", &[], &[], "K", Some("198.18.2.2:51822"));
        set_link(&mut p, 1, true, 51820);
        set_link(&mut c, 1, false, 51820);
        assert_eq!(p.spec.tunnel_address.as_deref(), Some("169.254.64.5/30"));
        assert_eq!(c.spec.tunnel_address.as_deref(), Some("169.254.64.6/30"));
        assert_eq!(p.spec.peer_tunnel_address.as_deref(), Some("169.254.64.6"));
        assert_eq!(c.spec.peer_tunnel_address.as_deref(), Some("169.254.64.5"));
        assert_eq!(
            (p.spec.listen_port, c.spec.listen_port),
            (Some(51822), Some(51822))
        );
        assert_eq!(addr_slot("169.254.64.6/30"), Some(1));
    }

    #[test]
    fn a_repeering_keeps_its_link_unless_the_peer_took_it_and_new_links_avoid_both_sides() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_slot(Some(3), &s(&[]), &s(&[])), Some(3));
        // the peer uses link 3 with another cluster now: a fresh one, free on both sides
        assert_eq!(
            pick_slot(
                Some(3),
                &s(&["169.254.64.1/30", "169.254.64.2"]),
                &s(&["169.254.64.14/30", "169.254.64.6"])
            ),
            Some(2)
        );
        assert_eq!(pick_slot(None, &s(&[]), &s(&[])), Some(0));
    }
}
