//! Arbitrary JSON as a ShadowPod template, read as the provider's watch reads it (packed into its text)
//! and built into a pod under the default tenant policy. Never a panic; a built pod always carries the
//! provider's origin label and service account.
#![no_main]

use ferry_crds::PackedJson;
use ferry_crds::kinds::TenantPolicy;
use ferry_virtual_kubelet::policy::{Owner, build_pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = serde_json::from_slice::<PackedJson>(data) else {
        return;
    };
    let owner = Owner {
        name: "p",
        namespace: "ns",
        tenant: "consumer-c1",
        consumer_pod_uid: "u",
        owner_reference: OwnerReference::default(),
    };
    if let Ok(pod) = build_pod(template.as_str(), &owner, &TenantPolicy::default()) {
        assert_eq!(pod.metadata.labels.unwrap()["ferry.dev/origin-cluster"], "consumer-c1");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("default"));
        assert!(spec.host_network != Some(true) && spec.node_name.is_none() && spec.tolerations.is_none());
    }
});
