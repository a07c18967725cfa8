//! Arbitrary bytes as a peer's export list: parsed, checked one by one, translated, merged. Never a panic;
//! nothing outside the routed range or the allowed namespaces is kept.
#![no_main]

use std::collections::BTreeMap;

use ferry_mcs::{Exchange, ExportList, merge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = serde_json::from_slice::<ExportList>(data) else {
        return;
    };
    let x = Exchange::default();
    let remaps = BTreeMap::from([("10.244.0.0/16".parse().unwrap(), "10.0.0.0/16".parse().unwrap())]);
    let _ = x.receive("peer", list, &remaps, &|ns| ns == "shop");
    let kept = x.remote.lock().unwrap()["peer"].0.clone();
    for e in &kept {
        assert_eq!(e.namespace, "shop");
        for ep in &e.endpoints {
            for a in &ep.addresses {
                assert!(a.starts_with("10.0."), "{a}");
            }
        }
    }
    let _ = merge(&kept);
});
