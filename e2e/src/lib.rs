//! ferry-lab: real local Kubernetes clusters for ferry's tests, benchmarks and demo.
//!
//! Start reading at [`lab::up`], which brings up N control planes (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, Kubernetes 1.20.2) on 127.0.0.1 and one [`kubelet`] per
//! cluster whose lab nodes give each pod a real network namespace and IP ([`net`]). [`layout`] is the pure
//! plan of ports, CIDRs and pod IPs.

pub mod agents;
pub mod bench;
pub mod demo;
pub mod dns_bench;
pub mod echo;
pub mod failover;
pub mod flood;
pub mod flowprobe;
pub mod heap;
pub mod image;
pub mod install;
pub mod kubelet;
pub mod lab;
pub mod layout;
pub mod mcs;
pub mod net;
pub mod node;
pub mod offload_bench;
pub mod pki;
pub mod plot;
pub mod procs;
pub mod relay;
pub mod route_bench;
pub mod seed_demo;
pub mod services;
pub mod state;
pub mod tunnel;
pub mod workload;
