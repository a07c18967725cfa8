//! Multi-Cluster Services (KEP-1645) across ferry's peerings, depending on no peering or virtual-kubelet
//! code: the pure export model ([`exports`]: what a cluster exports, checks of what a peer sends, the
//! merge into imports), the agent's sync ([`sync`]: local exports out, peers' exports in, imports
//! written; the transport to a peer is the caller's, [`sync::Peers`]) and the `clusterset.local` DNS
//! server ([`dns`], binary `ferry-dns`).

pub mod dns;
pub mod exports;
pub mod sync;

pub use exports::*;

/// What can go wrong in the MCS sync or the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the apiserver failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// A call to the apiserver failed (where the call says enough).
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The cluster does not serve an API ferry needs.
    #[error("{0}")]
    NotServed(String),
    /// A watch ended.
    #[error("{0} watch ended")]
    WatchEnded(&'static str),
}
