//! Arbitrary bytes as an AdmissionReview of a pod, checked against the default tenant policy as the
//! provider's webhook does. Never a panic.
#![no_main]

use ferry_crds::kinds::TenantPolicy;
use ferry_virtual_kubelet::policy::{Stage, check};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(data) else {
        return;
    };
    let Ok(req): Result<AdmissionRequest<Pod>, _> = review.try_into() else {
        return;
    };
    if let Some(p) = req.object {
        let spec = p.spec.clone().unwrap_or_default();
        let ann = p.metadata.annotations.clone().unwrap_or_default();
        let _ = check(&spec, &ann, &TenantPolicy::default(), Stage::Admitted);
    }
});
