//! The peering token: a JWT signed (EdDSA) by the provider's cluster key, single use, expiring.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::key::ClusterKey;

/// The only audience ferry accepts.
pub const AUDIENCE: &str = "ferry-peering";

/// What a token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringClaims {
    /// Provider cluster ID.
    pub iss: String,
    /// Always [`AUDIENCE`].
    pub aud: String,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Single-use token ID.
    pub jti: String,
    /// The provider's broker URL.
    pub broker_url: String,
    /// SHA-256 (hex) of the broker's TLS certificate (DER): the consumer pins it.
    pub tls_pin: String,
}

/// Issues a token valid for `ttl_secs` from `now`.
pub fn issue(
    key: &ClusterKey,
    provider: &str,
    broker_url: &str,
    tls_pin: &str,
    ttl_secs: u64,
    now: u64,
) -> String {
    let claims = PeeringClaims {
        iss: provider.into(),
        aud: AUDIENCE.into(),
        exp: now + ttl_secs,
        iat: now,
        jti: random_jti(),
        broker_url: broker_url.into(),
        tls_pin: tls_pin.into(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &claims,
        &EncodingKey::from_ed_der(&key.to_der()),
    )
    .expect("EdDSA signing with a valid key")
}

fn random_jti() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Reads the claims without verifying the signature: the consumer's side, which trusts the broker through
/// the TLS pin instead. Rejects what is not a JWT or not a ferry token.
pub fn peek(token: &str) -> Result<PeeringClaims, BrokerError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<PeeringClaims>(token.trim())
        .map_err(|e| BrokerError::TokenMalformed(e.to_string()))?;
    if data.header.alg != Algorithm::EdDSA {
        return Err(BrokerError::TokenMalformed(format!(
            "algorithm {:?}, expected EdDSA",
            data.header.alg
        )));
    }
    Ok(data.claims)
}

/// How far past `exp` a token is still taken: the token's `exp` comes from the clock of the machine that ran
/// `ferryctl token create`, the check from the broker's; a minute covers ordinary skew between them.
pub const EXP_LEEWAY_SECS: u64 = 60;

/// The provider's check: signature by `key`, issuer `provider`, audience, expiry at `now` (with
/// [`EXP_LEEWAY_SECS`] of leeway).
pub fn verify(token: &str, key: &ClusterKey, provider: &str, now: u64) -> Result<PeeringClaims, BrokerError> {
    let claims = peek(token)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.validate_exp = false; // checked below against the caller's clock
    v.validate_aud = false; // checked below, for a precise error
    v.required_spec_claims = ["exp", "aud", "iss"].iter().map(|s| s.to_string()).collect();
    let raw = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key.public_b64())
        .expect("own key");
    jsonwebtoken::decode::<PeeringClaims>(token.trim(), &DecodingKey::from_ed_der(&raw), &v).map_err(
        |e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => BrokerError::TokenSignature,
            _ => BrokerError::TokenMalformed(e.to_string()),
        },
    )?;
    if claims.aud != AUDIENCE {
        return Err(BrokerError::TokenAudience);
    }
    if claims.iss != provider {
        return Err(BrokerError::TokenIssuer(claims.iss));
    }
    if claims.exp.saturating_add(EXP_LEEWAY_SECS) <= now {
        return Err(BrokerError::TokenExpired(claims.exp));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_fresh_token_verifies_and_peeks() {
        let k = ClusterKey::generate();
        let t = issue(&k, "prov", "https://127.0.0.1:1", "ab", 3600, NOW);
        let c = verify(&t, &k, "prov", NOW + 10).unwrap();
        assert_eq!(c.aud, AUDIENCE);
        assert_eq!(c.exp, NOW + 3600);
        assert_eq!(c.jti.len(), 32);
        assert_eq!(peek(&t).unwrap(), c);
        let t2 = issue(&k, "prov", "https://127.0.0.1:1", "ab", 3600, NOW);
        assert_ne!(peek(&t2).unwrap().jti, c.jti, "every token has its own jti");
    }

    #[test]
    fn expired_other_key_other_issuer_wrong_audience_and_garbage_are_refused() {
        let k = ClusterKey::generate();
        let t = issue(&k, "prov", "u", "p", 60, NOW);
        // within the clock-skew leeway a token still counts; past it, it has expired
        assert!(verify(&t, &k, "prov", NOW + 60 + EXP_LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            verify(&t, &k, "prov", NOW + 60 + EXP_LEEWAY_SECS),
            Err(BrokerError::TokenExpired(NOW + 60))
        );
        assert_eq!(
            verify(&t, &ClusterKey::generate(), "prov", NOW),
            Err(BrokerError::TokenSignature)
        );
        assert_eq!(
            verify(&t, &k, "other", NOW),
            Err(BrokerError::TokenIssuer("prov".into()))
        );
        // a token for another audience, properly signed
        let mut claims = peek(&t).unwrap();
        claims.aud = "kubernetes".into();
        let wrong_aud = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(&k.to_der()),
        )
        .unwrap();
        assert_eq!(
            verify(&wrong_aud, &k, "prov", NOW),
            Err(BrokerError::TokenAudience)
        );
        // tampered claims: signature breaks
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&PeeringClaims {
                exp: NOW + 999_999,
                ..peek(&t).unwrap()
            })
            .unwrap(),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(verify(&forged, &k, "prov", NOW), Err(BrokerError::TokenSignature));
        for garbage in ["", "abc", "a.b.c", "....", "eyJ.eyJ.x"] {
            assert!(
                matches!(
                    verify(garbage, &k, "prov", NOW),
                    Err(BrokerError::TokenMalformed(_))
                ),
                "{garbage:?}"
            );
        }
    }
}
