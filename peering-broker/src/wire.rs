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
    /// A PKCS#10 CSR (PEM) for `CN=ferry:consumer:<clusterID>`.
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
    /// The signed client certificate (PEM) for `ferry:consumer:<id>`.
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
}

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

/// The user name a consumer's identity has on the provider.
pub fn consumer_user(cluster_id: &str) -> String {
    format!("ferry:consumer:{cluster_id}")
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
        for (field, list) in [("podCIDRs", &req.pod_cidrs), ("serviceCIDRs", &req.service_cidrs)] {
            for c in list {
                if c.parse::<ipnet_lite::Cidr>().is_err() {
                    return Err(BrokerError::invalid(
                        field,
                        &format!("has {c:?}, which is not a CIDR; fix: e.g. 10.244.0.0/16"),
                    ));
                }
            }
        }
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

/// A minimal CIDR syntax check (address/prefix within the family's bounds), without a dependency.
mod ipnet_lite {
    /// A parsed CIDR.
    pub struct Cidr;
    impl std::str::FromStr for Cidr {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (addr, len) = s.split_once('/').ok_or(())?;
            let addr: std::net::IpAddr = addr.parse().map_err(|_| ())?;
            let len: u8 = len.parse().map_err(|_| ())?;
            if len > if addr.is_ipv4() { 32 } else { 128 } {
                return Err(());
            }
            Ok(Cidr)
        }
    }
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
