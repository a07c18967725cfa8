//! Arbitrary bytes as an offload request: parsed, mapped to a provider namespace. Never a panic; the name
//! is a DNS label whenever the request's namespace is one.
#![no_main]

use ferry_peering_broker::provider::reserved_namespace;
use ferry_peering_broker::wire::{OffloadRequest, remote_namespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<OffloadRequest>(data) else {
        return;
    };
    if req.namespace.is_empty() || req.namespace.len() > 63 || !req.namespace.is_ascii() {
        return;
    }
    let name = remote_namespace(&req.namespace, "consumer-c1", req.mapping);
    assert!(name.len() <= 63 || req.namespace.len() > 63);
    let _ = reserved_namespace(&name);
});
