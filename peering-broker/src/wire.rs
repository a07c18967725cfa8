//! The peering API's request and response bodies, and the proof of possession.

use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::key::{ClusterKey, parse_public_b64, verify_b64};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Requested or granted resources (Kubernetes quantities as text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<String>,
}

/// `POST /v1/peerings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeeringRequest {
    /// The peering token.
    pub token: String,
    /// The consumer's cluster ID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// The consumer's Ed25519 public key (base64, raw 32 bytes).
    pub public_key: String,
    /// A PKCS#10 CSR (PEM) for `CN=` [`consumer_user`] of the cluster ID and the token's `jti`.
    pub csr: String,
    /// Signature (base64) by the consumer key over [`proof_message`].
    pub proof: String,
    /// The consumer gateway's WireGuard public key.
    #[serde(default)]
    pub wireguard_public_key: String,
    /// The consumer's pod CIDRs.
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    /// The consumer's service CIDRs.
    #[serde(rename = "serviceCIDRs", default)]
    pub service_cidrs: Vec<String>,
    /// What the consumer asks for.
    #[serde(default)]
    pub resources: Resources,
    /// Where the consumer's gateway can be reached (`host:base-port`), if it can: then the provider's
    /// gateway dials it as well, which is what a provider behind NAT needs (roles swapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// Tunnel-link addresses the consumer already uses with other providers (the provider picks a free
    /// link for both sides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_addresses_in_use: Vec<String>,
}

/// `POST /v1/namespaces` (mTLS, the tenant's identity): make a namespace on the provider for an
/// offloaded consumer namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffloadRequest {
    /// The consumer's namespace.
    pub namespace: String,
    /// `DefaultName` (`<namespace>-<consumer ID>`) or `EnforceSameName`.
    #[serde(default)]
    pub mapping: ferry_crds::kinds::NamespaceMappingStrategy,
}

/// The answer to [`OffloadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffloadResponse {
    /// The namespace on the provider.
    pub namespace: String,
}

/// `POST /v1/identity` (mTLS, the tenant's current certificate): a certificate for a new key of the same
/// identity, before the current one expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    /// A PKCS#10 CSR (PEM) for the same user name as the current certificate.
    pub csr: String,
}

/// The answer to [`RenewRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    /// The new client certificate (PEM).
    pub certificate: String,
}

/// The provider namespace for consumer namespace `ns` of consumer `consumer`: `<ns>-<consumer>` (cut
/// to 63 characters with a hash suffix when longer) or `ns` itself under `EnforceSameName`.
pub fn remote_namespace(
    ns: &str,
    consumer: &str,
    mapping: ferry_crds::kinds::NamespaceMappingStrategy,
) -> String {
    use sha2::Digest;
    if mapping == ferry_crds::kinds::NamespaceMappingStrategy::EnforceSameName {
        return ns.to_string();
    }
    let full = format!("{ns}-{consumer}");
    if full.len() <= 63 {
        return full;
    }
    let h = hex::encode(&sha2::Sha256::digest(full.as_bytes())[..4]);
    format!("{}-{h}", full[..54].trim_end_matches('-'))
}

/// The answer to a successful peering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeeringResponse {
    /// The provider's cluster ID.
    #[serde(rename = "providerClusterID")]
    pub provider_cluster_id: String,
    /// The namespace the identity is confined to.
    pub tenant_namespace: String,
    /// The provider's apiserver URL for the identity.
    pub api_server: String,
    /// The apiserver's CA (PEM).
    pub ca: String,
    /// The signed client certificate (PEM) for the identity's [`consumer_user`].
    pub certificate: String,
    /// What the provider granted.
    pub granted: Resources,
    /// The provider gateway's WireGuard public key, if it has one.
    #[serde(default)]
    pub wireguard_public_key: String,
    /// The provider's pod CIDRs.
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
    /// The provider's service CIDRs.
    #[serde(rename = "serviceCIDRs", default)]
    pub service_cidrs: Vec<String>,
    /// Where the provider's gateway listens for this peering (`host:port`), if it is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// The tunnel link of this peering (slot of `169.254.64.0/18`): provider `.1`, consumer `.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_slot: Option<u32>,
    /// Where the provider's other gateway replicas listen for this peering (`host:port`, at most
    /// [`MAX_STANDBY_ENDPOINTS`]): the consumer's gateway tries them while the active one does not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby_gateway_endpoints: Vec<String>,
}

/// Most standby gateway endpoints a peer may announce.
pub const MAX_STANDBY_ENDPOINTS: usize = 4;

/// What a cluster tells its peer about its network in the handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNetwork {
    /// Pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Service CIDRs.
    pub service_cidrs: Vec<String>,
    /// The WireGuard public key (base64).
    pub wireguard_public_key: String,
    /// The gateway's endpoint, when peers can reach it (`host:port`).
    pub gateway_endpoint: Option<String>,
    /// The other gateway replicas' endpoints (`host:port`), for a failover of the provider's gateway.
    pub standby_gateway_endpoints: Vec<String>,
}

impl LocalNetwork {
    /// Pod then service CIDRs.
    pub fn cidrs(&self) -> Vec<String> {
        self.pod_cidrs
            .iter()
            .chain(&self.service_cidrs)
            .cloned()
            .collect()
    }
}

/// Prefix of every consumer identity's user name on a provider.
pub const CONSUMER_USER_PREFIX: &str = "ferry:consumer:";

/// The user name a consumer's identity has on the provider for the peering made with token `jti`:
/// `ferry:consumer:<id>:<12 hex of SHA-256(jti)>`. Each peering has its own, so after an unpeer no
/// certificate of an earlier peering is bound to anything again, even when the same ID peers anew.
pub fn consumer_user(cluster_id: &str, jti: &str) -> String {
    use sha2::Digest;
    let nonce = hex::encode(&sha2::Sha256::digest(jti.as_bytes())[..6]);
    format!("{CONSUMER_USER_PREFIX}{cluster_id}:{nonce}")
}

/// The consumer cluster ID of a consumer identity's user name (`None`: not one).
pub fn consumer_of(user: &str) -> Option<&str> {
    let (id, nonce) = user.strip_prefix(CONSUMER_USER_PREFIX)?.rsplit_once(':')?;
    (nonce.len() == 12
        && nonce.chars().all(|c| c.is_ascii_hexdigit())
        && id.parse::<crate::ClusterId>().is_ok())
    .then_some(id)
}

/// What the proof signs: `jti|provider|consumer`.
pub fn proof_message(jti: &str, provider: &str, consumer: &str) -> Vec<u8> {
    format!("{jti}|{provider}|{consumer}").into_bytes()
}

/// The consumer's proof.
pub fn sign_proof(key: &ClusterKey, jti: &str, provider: &str, consumer: &str) -> String {
    key.sign_b64(&proof_message(jti, provider, consumer))
}

impl PeeringRequest {
    /// Parses and bounds a body: size, JSON shape, required fields.
    pub fn parse(body: &[u8]) -> Result<Self, BrokerError> {
        if body.len() > MAX_BODY {
            return Err(BrokerError::TooLarge(MAX_BODY));
        }
        let req: Self = serde_json::from_slice(body).map_err(|e| BrokerError::Malformed(e.to_string()))?;
        req.cluster_id
            .parse::<crate::ClusterId>()
            .map_err(|e| BrokerError::invalid("clusterID", &format!("is not valid: {e}")))?;
        if !req.csr.contains("BEGIN CERTIFICATE REQUEST") {
            return Err(BrokerError::invalid(
                "csr",
                "is not a PEM certificate request; fix: send a PKCS#10 CSR in PEM",
            ));
        }
        if !req.wireguard_public_key.is_empty()
            && crate::wireguard::parse_public(&req.wireguard_public_key).is_none()
        {
            return Err(BrokerError::invalid(
                "wireguardPublicKey",
                "is not a WireGuard public key (32 bytes, base64); fix: send what `wg pubkey` prints, or leave it out",
            ));
        }
        check_cidrs("podCIDRs", &req.pod_cidrs)?;
        check_cidrs("serviceCIDRs", &req.service_cidrs)?;
        if let Some(e) = &req.gateway_endpoint {
            check_endpoint("gatewayEndpoint", e)?;
        }
        if req.tunnel_addresses_in_use.len() > MAX_TUNNEL_ADDRESSES {
            return Err(BrokerError::invalid(
                "tunnelAddressesInUse",
                &format!("has more than {MAX_TUNNEL_ADDRESSES} entries"),
            ));
        }
        for a in &req.tunnel_addresses_in_use {
            a.parse::<std::net::IpAddr>().map_err(|_| {
                BrokerError::invalid(
                    "tunnelAddressesInUse",
                    &format!("has {a:?}, which is not an IP address"),
                )
            })?;
        }
        check_resources(&req.resources)?;
        Ok(req)
    }

    /// Checks the proof of possession against the request's own public key.
    pub fn verify_proof(&self, jti: &str, provider: &str) -> Result<(), BrokerError> {
        let key = parse_public_b64("publicKey", &self.public_key)?;
        if verify_b64(&key, &proof_message(jti, provider, &self.cluster_id), &self.proof) {
            Ok(())
        } else {
            Err(BrokerError::ProofInvalid)
        }
    }

    /// SHA-256 fingerprint of the consumer's key.
    pub fn key_fingerprint(&self) -> Result<String, BrokerError> {
        Ok(crate::key::fingerprint_of(
            parse_public_b64("publicKey", &self.public_key)?.as_bytes(),
        ))
    }
}

/// The most CIDRs a peer may announce per list.
pub const MAX_CIDRS: usize = 8;
/// The most tunnel-link addresses a consumer may say it uses.
pub const MAX_TUNNEL_ADDRESSES: usize = 4096;

/// Ranges no peer's pods or services can live in: this host, link-local (where ferry's tunnel links are),
/// multicast, "this network", broadcast and reserved, in both families.
const SPECIAL_RANGES: [&str; 10] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/127",
    "::ffff:0:0/96",
    "fe80::/10",
    "ff00::/8",
    "64:ff9b::/96",
];

/// Checks CIDRs that came from a peer: each a proper prefix (no host bits), no shorter than /8 (IPv4) or
/// /32 (IPv6), outside this host's, link-local, multicast and reserved ranges, at most [`MAX_CIDRS`].
/// A peer's ranges may overlap this cluster's own (the gateway remaps them); they may never be special.
pub fn check_cidrs(field: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, BrokerError> {
    if list.len() > MAX_CIDRS {
        return Err(BrokerError::invalid(
            field,
            &format!(
                "has {} entries, more than {MAX_CIDRS}; fix: announce the cluster's pod and service CIDRs only",
                list.len()
            ),
        ));
    }
    let special: Vec<ipnet::IpNet> = SPECIAL_RANGES
        .iter()
        .map(|s| s.parse().expect("literal"))
        .collect();
    let mut out = Vec::new();
    for c in list {
        let bad = |why: &str| BrokerError::invalid(field, &format!("has {c:?}, which {why}"));
        let net: ipnet::IpNet = c
            .parse()
            .map_err(|_| bad("is not a CIDR; fix: e.g. 10.244.0.0/16"))?;
        if net.trunc() != net {
            return Err(bad(&format!("has host bits set; fix: {}", net.trunc())));
        }
        let min = if net.addr().is_ipv4() { 8 } else { 32 };
        if net.prefix_len() < min {
            return Err(bad(&format!(
                "is wider than /{min}: a peer cannot claim that much address space; fix: announce the real pod or service CIDR"
            )));
        }
        if let Some(s) = special
            .iter()
            .find(|s| s.contains(&net.network()) || net.contains(&s.network()))
        {
            return Err(bad(&format!(
                "overlaps {s} (loopback, link-local, multicast or reserved), where no pod or service can live; fix: announce the real pod or service CIDR"
            )));
        }
        out.push(net);
    }
    Ok(out)
}

/// Checks a gateway endpoint that came from a peer: `ip:port` or `host:port`, a non-zero port, and never
/// an address of this host, link-local, multicast or unspecified (the gateway must not be made to send
/// packets anywhere a peer likes).
pub fn check_endpoint(field: &str, e: &str) -> Result<(), BrokerError> {
    let bad = |why: &str| BrokerError::invalid(field, &format!("{e:?} {why}"));
    let (host, port) = e
        .rsplit_once(':')
        .ok_or_else(|| bad("is not host:port; fix: e.g. 203.0.113.7:51820"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("has no valid port; fix: e.g. 203.0.113.7:51820"))?;
    let host = host.trim_matches(['[', ']']);
    if port == 0 || host.is_empty() || host.len() > 253 {
        return Err(bad("is not host:port; fix: e.g. 203.0.113.7:51820"));
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let link_local = match ip {
            std::net::IpAddr::V4(v) => v.is_link_local() || v.is_broadcast(),
            std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local {
            return Err(bad(
                "is a loopback, unspecified, multicast or link-local address; fix: announce the gateway's reachable address",
            ));
        }
    } else if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad("has a host that is neither an IP address nor a DNS name"));
    }
    Ok(())
}

/// Checks requested or granted quantities that came from a peer: each parses, is zero or more and sane.
pub fn check_resources(r: &Resources) -> Result<(), BrokerError> {
    for (field, q) in [
        ("resources.cpu", &r.cpu),
        ("resources.memory", &r.memory),
        ("resources.pods", &r.pods),
    ] {
        if let Some(q) = q {
            ferry_virtual_kubelet::quantity::parse_bounded(q).map_err(|e| BrokerError::invalid(field, &e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wireguard_key_that_is_not_32_bytes_is_refused_naming_the_field() {
        let key = ClusterKey::generate();
        let mut r = request(&key, "j");
        r.wireguard_public_key = "bm90IGEga2V5".into();
        let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("wireguardPublicKey is not"), "{e}");
        r.wireguard_public_key = crate::wireguard::WireGuardKey::generate().public_b64();
        assert!(PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).is_ok());
    }

    #[test]
    fn each_peering_has_its_own_user_name_and_the_id_can_be_read_back() {
        let a = consumer_user("consumer-c1", "jti-1");
        let b = consumer_user("consumer-c1", "jti-2");
        assert!(
            a.starts_with("ferry:consumer:consumer-c1:")
                && a.len() == "ferry:consumer:consumer-c1:".len() + 12
        );
        assert_ne!(a, b, "a new peering of the same ID is another user");
        assert_eq!(consumer_of(&a), Some("consumer-c1"));
        for bad in [
            "ferry:consumer:consumer-c1",
            "ferry:consumer::abcdefabcdef",
            "system:admin",
            "ferry:consumer:Bad:abcdefabcdef",
            "ferry:consumer:c1:xyz",
        ] {
            assert_eq!(consumer_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_namespaces_are_unique_per_consumer_and_fit_a_dns_label() {
        use ferry_crds::kinds::NamespaceMappingStrategy::{DefaultName, EnforceSameName};
        assert_eq!(remote_namespace("demo", "c1", DefaultName), "demo-c1");
        assert_eq!(remote_namespace("demo", "c1", EnforceSameName), "demo");
        let long = "n".repeat(60);
        let a = remote_namespace(&long, "consumer-a", DefaultName);
        let b = remote_namespace(&long, "consumer-b", DefaultName);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(!a.ends_with('-'));
    }

    pub(crate) fn request(key: &ClusterKey, jti: &str) -> PeeringRequest {
        PeeringRequest {
            token: "t".into(),
            cluster_id: "consumer-1".into(),
            public_key: key.public_b64(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".into(),
            proof: sign_proof(key, jti, "prov", "consumer-1"),
            wireguard_public_key: String::new(),
            pod_cidrs: vec!["10.244.0.0/16".into()],
            service_cidrs: vec![],
            resources: Resources::default(),
            gateway_endpoint: None,
            tunnel_addresses_in_use: vec![],
        }
    }

    #[test]
    fn a_good_request_parses_and_its_proof_verifies() {
        let k = ClusterKey::generate();
        let r = request(&k, "j1");
        let parsed = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(parsed, r);
        parsed.verify_proof("j1", "prov").unwrap();
        assert_eq!(parsed.key_fingerprint().unwrap(), k.fingerprint());
    }

    #[test]
    fn forged_proofs_are_refused() {
        let k = ClusterKey::generate();
        let r = request(&k, "j1");
        assert_eq!(
            r.verify_proof("j2", "prov"),
            Err(BrokerError::ProofInvalid),
            "proof for another token"
        );
        assert_eq!(
            r.verify_proof("j1", "other"),
            Err(BrokerError::ProofInvalid),
            "proof for another provider"
        );
        let mut stolen = r.clone();
        stolen.public_key = ClusterKey::generate().public_b64(); // someone else's key with this proof
        assert_eq!(stolen.verify_proof("j1", "prov"), Err(BrokerError::ProofInvalid));
        let mut renamed = r.clone();
        renamed.cluster_id = "consumer-2".into();
        assert_eq!(renamed.verify_proof("j1", "prov"), Err(BrokerError::ProofInvalid));
    }

    #[test]
    fn malformed_oversize_and_invalid_bodies_name_the_problem() {
        assert!(matches!(
            PeeringRequest::parse(b"{not json"),
            Err(BrokerError::Malformed(_))
        ));
        assert!(matches!(
            PeeringRequest::parse(b"{}"),
            Err(BrokerError::Malformed(_))
        ));
        assert_eq!(
            PeeringRequest::parse(&vec![b' '; MAX_BODY + 1]),
            Err(BrokerError::TooLarge(MAX_BODY))
        );
        let k = ClusterKey::generate();
        let mut r = request(&k, "j");
        r.cluster_id = "Bad_ID".into();
        let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(
            matches!(&e, BrokerError::Invalid { field, .. } if field == "clusterID"),
            "{e}"
        );
        let mut r = request(&k, "j");
        r.pod_cidrs = vec!["10.244.0.0/33".into()];
        let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
        assert!(e.to_string().starts_with("podCIDRs has \"10.244.0.0/33\""), "{e}");
        // hostile network input: every case names the field and the value
        for (field, bad) in [
            ("podCIDRs", "0.0.0.0/0"),
            ("podCIDRs", "10.0.0.0/4"),
            ("podCIDRs", "10.244.1.0/16"),
            ("podCIDRs", "127.0.0.0/8"),
            ("podCIDRs", "169.254.64.0/18"),
            ("podCIDRs", "224.0.0.0/8"),
            ("podCIDRs", "::/0"),
            ("podCIDRs", "fe80::/64"),
            ("serviceCIDRs", "::1/128"),
        ] {
            let mut r = request(&k, "j");
            if field == "podCIDRs" {
                r.pod_cidrs = vec![bad.into()];
            } else {
                r.service_cidrs = vec![bad.into()];
            }
            let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
            assert!(
                matches!(&e, BrokerError::Invalid { field: f, problem } if f == field && problem.contains(bad)),
                "{bad}: {e}"
            );
        }
        let mut r = request(&k, "j");
        r.pod_cidrs = (0..9).map(|i| format!("10.{i}.0.0/16")).collect();
        assert!(PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).is_err());
        for ep in [
            "127.0.0.1:51820",
            "0.0.0.0:1",
            "[::1]:51820",
            "169.254.1.1:5",
            "198.18.2.2:0",
            "x",
            "a b:1",
        ] {
            let mut r = request(&k, "j");
            r.gateway_endpoint = Some(ep.into());
            let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
            assert!(
                matches!(&e, BrokerError::Invalid { field, .. } if field == "gatewayEndpoint"),
                "{ep}: {e}"
            );
        }
        let mut r = request(&k, "j");
        r.gateway_endpoint = Some("198.18.2.2:51820".into());
        r.pod_cidrs = vec!["10.244.0.0/16".into(), "fd00:10:244::/48".into()];
        assert!(PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).is_ok());
        for (q, bad) in [("cpu", "-1"), ("memory", "1e40"), ("pods", "lots")] {
            let mut r = request(&k, "j");
            match q {
                "cpu" => r.resources.cpu = Some(bad.into()),
                "memory" => r.resources.memory = Some(bad.into()),
                _ => r.resources.pods = Some(bad.into()),
            }
            let e = PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).unwrap_err();
            assert!(
                matches!(&e, BrokerError::Invalid { field, .. } if *field == format!("resources.{q}")),
                "{e}"
            );
        }
        let mut r = request(&k, "j");
        r.tunnel_addresses_in_use = vec!["not-an-ip".into()];
        assert!(PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()).is_err());
        let mut r = request(&k, "j");
        r.csr = "hello".into();
        assert!(matches!(
            PeeringRequest::parse(&serde_json::to_vec(&r).unwrap()),
            Err(BrokerError::Invalid { .. })
        ));
        let mut v = serde_json::to_value(request(&k, "j")).unwrap();
        v["unexpected"] = serde_json::json!(1);
        assert!(matches!(
            PeeringRequest::parse(v.to_string().as_bytes()),
            Err(BrokerError::Malformed(_))
        ));
    }
}
