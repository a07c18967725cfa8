//! Arbitrary bytes as a DNS query to ferry-dns (UDP and TCP limits): never a panic, and a UDP answer never
//! larger than the amplification cap.
#![no_main]

use ferry_mcs::dns::{MAX_UDP_ANSWER, Zone, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let zone = Zone::default();
    if let Some(out) = answer(data, &zone, Some(512)) {
        assert!(out.len() <= MAX_UDP_ANSWER.max(512));
    }
    let _ = answer(data, &zone, Some(usize::from(u16::MAX)));
});
