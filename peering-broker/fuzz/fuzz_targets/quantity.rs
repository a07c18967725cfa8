//! Arbitrary text as a Kubernetes quantity from a peer. Never a panic (no overflow); a bounded quantity is
//! never negative nor above the cap.
#![no_main]

use ferry_virtual_kubelet::quantity::{MAX_AMOUNT, parse, parse_bounded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse(text);
    if let Ok(v) = parse_bounded(text) {
        assert!((0..=MAX_AMOUNT).contains(&v));
    }
});
