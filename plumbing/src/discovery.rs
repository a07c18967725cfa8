//! Which version of an API group a cluster serves, found once, in one place.

use kube::Client;
use kube::discovery::ApiResource;

/// The `discovery.k8s.io` EndpointSlice version a cluster serves: v1 on current clusters, v1beta1 on
/// 1.20 (the lab's). `None` when the cluster serves neither (or discovery failed).
pub async fn endpoint_slice_resource(c: &Client) -> Option<ApiResource> {
    kube::discovery::group(c, "discovery.k8s.io")
        .await
        .ok()?
        .recommended_kind("EndpointSlice")
        .map(|(ar, _)| ar)
}
