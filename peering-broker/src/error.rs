//! Every refusal the broker gives: an HTTP status, a machine-readable reason, the field at fault, and a
//! sentence with the fix. Serialised as the JSON body of the response.

use serde::{Deserialize, Serialize};

/// A broker error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The token does not parse as a JWT.
    #[error("token is malformed: {0}; fix: paste the whole token printed by `ferryctl token create`")]
    TokenMalformed(String),
    /// Not signed by this cluster's key.
    #[error(
        "token signature does not verify against this cluster's key; fix: create the token on the provider you are peering with"
    )]
    TokenSignature,
    /// Audience is not `ferry-peering`.
    #[error("token audience is not ferry-peering; fix: use a peering token from `ferryctl token create`")]
    TokenAudience,
    /// Issued by another cluster.
    #[error("token was issued by {0}, not by this cluster; fix: use a token of this provider")]
    TokenIssuer(String),
    /// Expired.
    #[error(
        "token expired at {0} (unix time); fix: create a new token with `ferryctl token create --ttl 1h`"
    )]
    TokenExpired(u64),
    /// Already used by another consumer (or with another key).
    #[error("token {0} was already used; fix: create a new token (tokens are single-use)")]
    TokenReused(String),
    /// The proof of possession does not verify.
    #[error(
        "proof does not verify with publicKey; fix: sign jti|provider|consumer with the consumer's cluster key"
    )]
    ProofInvalid,
    /// The CSR asks for another user name.
    #[error("csr subject is {got:?}, expected {want:?}; fix: request CN={want}")]
    CsrSubject {
        /// Subject asked for.
        got: String,
        /// Subject allowed.
        want: String,
    },
    /// The client certificate does not belong to this tenant.
    #[error(
        "client certificate {0:?} may not act for this peering; fix: use the identity the peering issued"
    )]
    Forbidden(String),
    /// A field is missing or invalid.
    #[error("{field} {problem}")]
    Invalid {
        /// The field (JSON name).
        field: String,
        /// What is wrong with it, and the fix where there is one.
        problem: String,
    },
    /// Body is not JSON of the expected shape.
    #[error("request body is not valid JSON for this endpoint: {0}")]
    Malformed(String),
    /// Body too large.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// No such peering.
    #[error("no peering with consumer {0}")]
    NotFound(String),
    /// Something on the provider failed (apiserver, CSR signer).
    #[error("provider error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// An invalid field.
    pub fn invalid(field: &str, problem: &str) -> Self {
        Self::Invalid {
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::TokenMalformed(_)
            | Self::TokenSignature
            | Self::TokenAudience
            | Self::TokenIssuer(_)
            | Self::TokenExpired(_) => 401,
            Self::ProofInvalid | Self::CsrSubject { .. } | Self::Forbidden(_) => 403,
            Self::TokenReused(_) => 409,
            Self::Invalid { .. } | Self::Malformed(_) => 422,
            Self::TooLarge(_) => 413,
            Self::NotFound(_) => 404,
            Self::Internal(_) => 500,
        }
    }

    /// Machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TokenMalformed(_) => "TokenMalformed",
            Self::TokenSignature => "TokenSignature",
            Self::TokenAudience => "TokenAudience",
            Self::TokenIssuer(_) => "TokenIssuer",
            Self::TokenExpired(_) => "TokenExpired",
            Self::TokenReused(_) => "TokenReused",
            Self::ProofInvalid => "ProofInvalid",
            Self::CsrSubject { .. } => "CsrSubject",
            Self::Forbidden(_) => "Forbidden",
            Self::Invalid { .. } => "Invalid",
            Self::Malformed(_) => "Malformed",
            Self::TooLarge(_) => "TooLarge",
            Self::NotFound(_) => "NotFound",
            Self::Internal(_) => "Internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let field = match self {
            Self::Invalid { field, .. } => Some(field.clone()),
            Self::TokenMalformed(_)
            | Self::TokenSignature
            | Self::TokenAudience
            | Self::TokenIssuer(_)
            | Self::TokenExpired(_)
            | Self::TokenReused(_) => Some("token".into()),
            Self::ProofInvalid => Some("proof".into()),
            Self::CsrSubject { .. } => Some("csr".into()),
            _ => None,
        };
        ErrorBody {
            status: self.status(),
            reason: self.reason().into(),
            field,
            message: self.to_string(),
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable reason (`TokenExpired`, ...).
    pub reason: String,
    /// The request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong and the fix.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies() {
        assert_eq!(BrokerError::TokenExpired(5).status(), 401);
        assert_eq!(BrokerError::TokenReused("j".into()).status(), 409);
        assert_eq!(BrokerError::ProofInvalid.status(), 403);
        assert_eq!(BrokerError::TooLarge(1).status(), 413);
        let b = BrokerError::invalid("podCIDRs", "must not be empty").body();
        assert_eq!(
            b,
            ErrorBody {
                status: 422,
                reason: "Invalid".into(),
                field: Some("podCIDRs".into()),
                message: "podCIDRs must not be empty".into()
            }
        );
        assert_eq!(
            BrokerError::TokenExpired(5).body().field.as_deref(),
            Some("token")
        );
    }
}
