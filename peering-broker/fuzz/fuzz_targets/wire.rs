//! Arbitrary bytes into everything the broker parses from the network: the request body, the token (peek
//! and full verification) and the CSR. None may panic; `make fuzz` runs it for a bounded time.
#![no_main]

use std::sync::OnceLock;

use ferry_peering_broker::{key::ClusterKey, provider::csr_subject, token, wire::PeeringRequest};
use libfuzzer_sys::fuzz_target;

static KEY: OnceLock<ClusterKey> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(ClusterKey::generate);
    if let Ok(req) = PeeringRequest::parse(data) {
        let _ = req.verify_proof("jti", "provider");
        let _ = req.key_fingerprint();
        let _ = token::verify(&req.token, key, "provider", 1_800_000_000);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::peek(text);
        let _ = token::verify(text, key, "provider", 1_800_000_000);
        let _ = csr_subject(text);
    }
});
