//! ferry's datapath. The sans-IO planner lives here as plain functions on plain data: [`ipam`] (1:1
//! remaps of overlapping CIDRs, tunnel links), [`plan`] (typed ops and the nftables ruleset) and [`mtu`]
//! (the MTU/MSS calculator for an encapsulation stack); [`remaps`] is the one place a peer's remaps are read
//! from (feature `client`: the `PeerNetwork` the gateway wrote). With the default feature `gateway`: the thin apply
//! layer ([`apply`]: `ip`, `nft`, WireGuard through wireguard-control, boringtun embedded), the gateway
//! runtime ([`gateway`], [`probe`], [`metrics`]) and its in-cluster mode ([`controller`]). Crates that
//! need only the planner depend on it with `default-features = false`.

#[cfg(feature = "gateway")]
pub mod apply;
#[cfg(feature = "gateway")]
pub mod controller;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod ipam;
#[cfg(feature = "gateway")]
pub mod metrics;
pub mod mtu;
pub mod plan;
#[cfg(feature = "gateway")]
pub mod probe;
pub mod remaps;
