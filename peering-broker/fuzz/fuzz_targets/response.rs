//! Arbitrary bytes as a broker's answer to the consumer: parsed and checked before anything is built from
//! it. Never a panic; an answer that passes has an https apiServer and checked CIDRs.
#![no_main]

use ferry_peering_broker::consumer::check_response;
use ferry_peering_broker::wire::PeeringResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = serde_json::from_slice::<PeeringResponse>(data) else {
        return;
    };
    if check_response(&resp, "provider", "ferry:consumer:c1", b"key", 1_800_000_000).is_ok() {
        assert!(resp.api_server.starts_with("https://"));
    }
});
