//! A cluster's Ed25519 key: it signs peering tokens (provider) and proofs of possession (consumer).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::BrokerError;

/// A cluster key.
#[derive(Clone)]
pub struct ClusterKey(SigningKey);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl ClusterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// PKCS#8 PEM (what the identity Secret stores).
    pub fn to_pem(&self) -> String {
        self.0
            .to_pkcs8_pem(Default::default())
            .expect("an Ed25519 key encodes")
            .to_string()
    }

    /// From PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, BrokerError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| BrokerError::Internal(format!("cluster key is not a PKCS#8 Ed25519 PEM: {e}")))
    }

    /// PKCS#8 DER (what jsonwebtoken signs with).
    pub fn to_der(&self) -> Vec<u8> {
        self.0
            .to_pkcs8_der()
            .expect("an Ed25519 key encodes")
            .as_bytes()
            .to_vec()
    }

    /// The raw public key, base64.
    pub fn public_b64(&self) -> String {
        STANDARD.encode(self.0.verifying_key().as_bytes())
    }

    /// SHA-256 of the raw public key, hex.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(self.0.verifying_key().as_bytes())
    }

    /// Signs bytes; base64 signature.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        STANDARD.encode(self.0.sign(msg).to_bytes())
    }
}

/// SHA-256 hex of raw public key bytes.
pub fn fingerprint_of(raw: &[u8]) -> String {
    hex::encode(Sha256::digest(raw))
}

/// Parses a base64 raw Ed25519 public key; `field` names it in the error.
pub fn parse_public_b64(field: &'static str, b64: &str) -> Result<VerifyingKey, BrokerError> {
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| BrokerError::invalid(field, "is not base64"))?;
    let arr: [u8; 32] = raw
        .try_into()
        .map_err(|_| BrokerError::invalid(field, "is not a 32-byte Ed25519 public key"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| BrokerError::invalid(field, "is not a valid Ed25519 point"))
}

/// Verifies a base64 signature over `msg` by `key`.
pub fn verify_b64(key: &VerifyingKey, msg: &[u8], sig_b64: &str) -> bool {
    let Ok(raw) = STANDARD.decode(sig_b64) else {
        return false;
    };
    let Ok(arr) = <[u8; 64]>::try_from(raw.as_slice()) else {
        return false;
    };
    key.verify(msg, &Signature::from_bytes(&arr)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_signs_and_verifies() {
        let k = ClusterKey::generate();
        let back = ClusterKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(back.fingerprint(), k.fingerprint());
        assert_eq!(k.fingerprint().len(), 64);
        let vk = parse_public_b64("publicKey", &k.public_b64()).unwrap();
        let sig = back.sign_b64(b"hello");
        assert!(verify_b64(&vk, b"hello", &sig));
        assert!(!verify_b64(&vk, b"hellO", &sig));
        assert!(!verify_b64(&vk, b"hello", "bm90IGEgc2ln"));
        let other = parse_public_b64("publicKey", &ClusterKey::generate().public_b64()).unwrap();
        assert!(!verify_b64(&other, b"hello", &sig));
    }

    #[test]
    fn bad_public_keys_name_the_field() {
        let e = parse_public_b64("publicKey", "***").unwrap_err();
        assert_eq!(e.to_string(), "publicKey is not base64");
        assert!(
            parse_public_b64("publicKey", "AAAA")
                .unwrap_err()
                .to_string()
                .contains("32-byte")
        );
    }
}
