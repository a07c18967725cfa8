//! ferry's peering API. The pure core: [`ClusterId`], the cluster key ([`key`]), the signed single-use
//! token ([`token`]), the request/response bodies and proof of possession ([`wire`]), and every refusal
//! with its HTTP status ([`error`]). Start reading at [`wire::PeeringRequest`].

/// Refuses with a message naming the field and the fix: `return Err(Error::Invalid(format!(…)))`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error::Invalid(format!($($t)*)))
    };
}

/// An [`Error::Invalid`] with a formatted message naming the field and the fix.
macro_rules! invalid {
    ($($t:tt)*) => {
        $crate::Error::Invalid(format!($($t)*))
    };
}

pub mod consumer;
pub mod error;
pub mod exchange;
pub mod identity;
pub mod key;
pub mod offloading;
pub mod provider;
pub mod reconciler;
pub mod server;
pub mod stats;
pub mod tls;
pub mod token;
pub mod wire;
pub mod wireguard;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A bad cluster ID, worded for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cluster ID {0:?} is not valid; fix: use 1 to 50 lowercase letters, digits or '-', starting and ending with a letter or digit"
)]
pub struct InvalidClusterId(pub String);

/// A cluster's stable ID: a DNS-1123 label of at most 50 characters, so it can name namespaces
/// (`ferry-tenant-<id>`, 63 at most) and nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

impl ClusterId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterId {
    type Err = InvalidClusterId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = (1..=50).contains(&s.len())
            && s.chars().all(|c| alnum(c) || c == '-')
            && s.starts_with(alnum)
            && s.ends_with(alnum);
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidClusterId(s.to_string()))
        }
    }
}

impl TryFrom<String> for ClusterId {
    type Error = InvalidClusterId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ClusterId> for String {
    fn from(id: ClusterId) -> String {
        id.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Errors of the peering machinery outside the broker's answers (those are [`error::BrokerError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// A step failed; it names what was being done and keeps the cause as its source (a `kube::Error`
    /// among them: [`ferry_plumbing::context::Failed::kube`]).
    #[error(transparent)]
    Failed(#[from] ferry_plumbing::context::Failed),
    /// A watch failed.
    #[error("watch: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    /// A kubeconfig (the peering identity's) does not load.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Making a key, a CSR or a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM block does not parse.
    #[error("PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// TLS set-up or a handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A socket or file failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A body or a stored document is not the JSON it must be.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Text that must be UTF-8 is not.
    #[error("not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
    /// Text that must be base64 is not.
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Input or an answer that is not what it must be; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_cluster_ids_and_nothing_else_is() {
        for ok in ["a", "c1", "prod-eu-1", &"x".repeat(50)] {
            assert_eq!(ok.parse::<ClusterId>().unwrap().as_str(), ok);
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(51)] {
            let e = bad.parse::<ClusterId>().unwrap_err();
            assert!(e.to_string().contains("fix:"), "{e}");
        }
    }

    #[test]
    fn serde_refuses_an_invalid_id() {
        assert!(serde_json::from_str::<ClusterId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<ClusterId>("\"Bad\"").is_err());
    }
}
