//! ferry's CustomResourceDefinitions, group `ferry.dev`, version `v1alpha1`.
//!
//! Pure types: no I/O. [`identity`] is the identity Secret's format, shared by its writer and readers. `crdgen` prints the YAML that `charts/ferry/crds/` installs; start reading at
//! [`all_crds`], which lists every kind ferry serves. [`mcs`] has the upstream Multi-Cluster Services kinds.
#![recursion_limit = "256"]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub mod common;
pub mod foreign_cluster;
pub mod identity;
pub mod kinds;
pub mod mcs;

pub use common::PackedJson;
pub use foreign_cluster::{ForeignCluster, ForeignClusterSpec, ForeignClusterStatus, PeeringRole};
pub use kinds::{
    DfProbe, NamespaceOffloading, NamespaceOffloadingSpec, PeerNetwork, PeerNetworkDiagnostics,
    PeerNetworkSpec, PeerNetworkStatus, ResourceSlice, ResourceSliceSpec, ResourceSliceStatus, ShadowPod,
    ShadowPodSpec, Tenant, TenantSpec, VirtualNode, VirtualNodeSpec,
};

/// The API group of every ferry kind.
pub const GROUP: &str = "ferry.dev";

/// Every CRD ferry installs, in the order the chart applies them.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        ForeignCluster::crd(),
        Tenant::crd(),
        ResourceSlice::crd(),
        VirtualNode::crd(),
        NamespaceOffloading::crd(),
        ShadowPod::crd(),
        PeerNetwork::crd(),
        mcs::ServiceExport::crd(),
        mcs::ServiceImport::crd(),
    ]
}

/// The YAML stream (`---`-separated) that `crdgen` prints and the chart ships.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD always serialises"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_in_the_ferry_or_mcs_group_with_a_status_subresource() {
        for crd in all_crds() {
            let want = if crd.spec.names.kind.starts_with("Service") {
                mcs::MCS_GROUP
            } else {
                GROUP
            };
            assert_eq!(crd.spec.group, want);
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1alpha1");
            assert!(
                v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{} has no status subresource",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn every_kind_is_there_with_printer_columns() {
        let kinds: Vec<String> = all_crds().iter().map(|c| c.spec.names.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                "ForeignCluster",
                "Tenant",
                "ResourceSlice",
                "VirtualNode",
                "NamespaceOffloading",
                "ShadowPod",
                "PeerNetwork",
                "ServiceExport",
                "ServiceImport"
            ]
        );
        for crd in all_crds() {
            let cols = crd.spec.versions[0]
                .additional_printer_columns
                .clone()
                .unwrap_or_default();
            assert!(!cols.is_empty(), "{} has no printer columns", crd.spec.names.kind);
        }
    }

    #[test]
    fn validation_is_in_the_schema() {
        let tenant = serde_json::to_value(Tenant::crd()).unwrap();
        let props =
            &tenant["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            props["clusterID"]["pattern"],
            "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
        );
        assert_eq!(props["publicKeyFingerprint"]["pattern"], "^[0-9a-f]{64}$");
        let off = serde_json::to_value(NamespaceOffloading::crd()).unwrap();
        let s = &off["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let strategies: Vec<String> =
            serde_json::from_value(s["podOffloadingStrategy"]["enum"].clone()).unwrap();
        assert_eq!(strategies, ["LocalAndRemote", "Local", "Remote"]);
        assert_eq!(common::CLUSTER_ID_PATTERN, props["clusterID"]["pattern"]);
    }

    #[test]
    fn mcs_kinds_have_the_upstream_shape() {
        let imp = serde_json::to_value(mcs::ServiceImport::crd()).unwrap();
        let v = &imp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let spec = &v["spec"]["properties"];
        assert_eq!(
            spec["type"]["enum"],
            serde_json::json!(["ClusterSetIP", "Headless"])
        );
        assert_eq!(spec["ips"]["maxItems"], 1);
        assert!(spec["ports"]["items"]["properties"]["port"].is_object());
        assert_eq!(imp["spec"]["scope"], "Namespaced");
        assert!(v["status"]["properties"]["clusters"].is_object());
        let exp = serde_json::to_value(mcs::ServiceExport::crd()).unwrap();
        let v = &exp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        assert!(v.get("spec").is_none(), "upstream ServiceExport has no spec");
        assert_eq!(
            v["status"]["properties"]["conditions"]["x-kubernetes-list-type"],
            "map"
        );
        // a ServiceExport round-trips through the kube Resource impl's paths
        use kube::Resource;
        assert_eq!(
            mcs::ServiceExport::url_path(&(), Some("default")),
            "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceexports"
        );
        let v = serde_json::to_value(mcs::ServiceExport::new("default", "echo")).unwrap();
        assert_eq!(v["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
        assert_eq!(v["kind"], "ServiceExport");
    }

    #[test]
    fn chart_crds_are_not_stale() {
        // compiled in (not read from a path baked at build time): cargo rebuilds the test when the file
        // changes, and a test binary built in another checkout of the workspace checks the same file
        let in_chart = include_str!("../../charts/ferry/crds/ferry.yaml");
        assert!(
            in_chart == crds_yaml(),
            "charts/ferry/crds/ferry.yaml is stale; fix: make crds (cargo run -p ferry-crds --bin crdgen > charts/ferry/crds/ferry.yaml)"
        );
    }
}
