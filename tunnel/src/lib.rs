//! ferry's datapath. The sans-IO planner lives here as plain functions on plain data; start reading at
//! [`mtu`], the MTU/MSS calculator for an encapsulation stack. (The IPAM remap, the NAT/route plan and the
//! thin netlink/nftables/WireGuard apply layer come with the tunnel issue.)

pub mod apply;
pub mod controller;
pub mod gateway;
pub mod ipam;
pub mod metrics;
pub mod mtu;
pub mod plan;
pub mod probe;
