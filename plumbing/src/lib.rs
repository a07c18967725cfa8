//! What every ferry binary shares, and nothing else: building a client ([`client`]), finding the version
//! of an API a cluster serves ([`discovery`]), writing status conditions with one timestamp format and one
//! `lastTransitionTime` rule ([`conditions`]), reading certificates ([`certs`]), errors that name the failed step ([`context`]), events that join repeats into series with a bounded memory ([`events`]), flag value parsers that refuse bad input up front ([`flags`]), the plain-HTTP admin server with `/metrics`, `/healthz` and
//! `/readyz` ([`admin`]), the process's metrics registry and controller timing ([`metrics`]), listening with connection limits where peers reach ([`listen`]), tracing set-up ([`telemetry`]), reflector stores whose changes trigger a
//! reconcile ([`triggers`]), and, behind the `fixtures` feature, builders and a mocked apiserver for
//! controller tests ([`fixtures`]).
//!
//! It sits just above `ferry-crds`; every other ferry crate may use it, it uses none of them.

pub mod admin;
pub mod certs;
pub mod client;
pub mod conditions;
pub mod context;
pub mod discovery;
pub mod events;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod flags;
pub mod leader;
pub mod listen;
pub mod metrics;
pub mod telemetry;
pub mod triggers;

/// What can go wrong in the shared plumbing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error(
        "kubeconfig {path}: {source}; fix: pass --kubeconfig with a readable kubeconfig, or run in a Pod"
    )]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor an in-cluster service account was found.
    #[error("no cluster to talk to: {0}; fix: pass --kubeconfig (or set KUBECONFIG), or run in a Pod")]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// A call to the apiserver failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The apiserver's or the transport's error.
        #[source]
        source: kube::Error,
    },
    /// Waiting for a condition ended without it.
    #[error("{0}")]
    Wait(String),
    /// A socket could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Wraps a `kube::Error` with what was being done, keeping it as the source.
pub fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}
