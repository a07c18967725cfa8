//! ferry's datapath. The sans-IO planner lives here as plain functions on plain data: [`ipam`] (1:1
//! remaps of overlapping CIDRs, tunnel links), [`plan`] (typed ops and the nftables ruleset) and [`mtu`]
//! (the MTU/MSS calculator for an encapsulation stack), [`pmtud`] (path MTU discovery that keeps probing,
//! RFC 8899 style), [`health`] (the tunnel's health as `step(state,
//! observed) -> (state, effects)`); [`remaps`] is the one place a peer's remaps are read
//! from (feature `client`: the `PeerNetwork` the gateway wrote). With the default feature `gateway`: the thin apply
//! layer ([`apply`]: `ip`, `nft`, WireGuard through wireguard-control, boringtun embedded), the gateway
//! runtime ([`gateway`], [`probe`], [`metrics`]) and its in-cluster mode ([`controller`]). Crates that
//! need only the planner depend on it with `default-features = false`.

/// Refuses with a message naming the field and the fix: `return Err(Error::Invalid(format!(…)))`.
#[cfg(feature = "gateway")]
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error::Invalid(format!($($t)*)))
    };
}

/// An [`Error::Invalid`] with a formatted message naming the field and the fix.
#[cfg(feature = "gateway")]
macro_rules! invalid {
    ($($t:tt)*) => {
        $crate::Error::Invalid(format!($($t)*))
    };
}

#[cfg(feature = "gateway")]
pub mod apply;
#[cfg(feature = "gateway")]
pub mod controller;
#[cfg(feature = "gateway")]
pub mod election;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod health;
pub mod ipam;
#[cfg(feature = "gateway")]
pub mod metrics;
pub mod mtu;
pub mod plan;
pub mod pmtud;
#[cfg(feature = "gateway")]
pub mod probe;
pub mod remaps;
#[cfg(feature = "gateway")]
pub mod route_agent;
pub mod routes;

/// Errors of the tunnel's apply layer, controller and gateway: each names what was being done and keeps
/// the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call, a file or a command failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (the file, command or device, and the fix where there is one).
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An apiserver call failed.
    #[cfg(feature = "client")]
    #[error("{what}: {source}")]
    Kube {
        /// What was being done (the object).
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// The peer's pod CIDRs cannot be remapped into the pool (the field and the fix are named).
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    /// The gateway's spec does not make a plan (the field and the fix are named).
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// Input or state that is not what it must be; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` helper: an I/O error while doing `what`.
#[cfg(feature = "gateway")]
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `map_err` helper: an apiserver error while doing `what`.
#[cfg(feature = "gateway")]
pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Names the step that failed, keeping the cause (an I/O or apiserver error) as the source.
#[cfg(feature = "gateway")]
pub(crate) trait Context<T> {
    /// The failure, saying `what` was being done.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Like [`Context::context`], the text built only on failure.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

#[cfg(feature = "gateway")]
impl<T> Context<T> for std::io::Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(io_err(what))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what().into(),
            source,
        })
    }
}

#[cfg(feature = "gateway")]
impl<T> Context<T> for kube::Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(kube_err(what))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Kube {
            what: what().into(),
            source,
        })
    }
}
