//! The Multi-Cluster Services API (KEP-1645), `multicluster.x-k8s.io/v1alpha1`, with the upstream schema
//! (sigs.k8s.io/mcs-api): `ServiceExport` (no spec; status conditions `Valid` and `Conflict`) and
//! `ServiceImport` (ports, IPs, type `ClusterSetIP`/`Headless`, session affinity; status lists the
//! exporting clusters). Also the EndpointSlice labels the spec defines.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The MCS API group.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// EndpointSlice label: the imported service's name.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// EndpointSlice label: the cluster the endpoints come from.
pub const LABEL_SOURCE_CLUSTER: &str = "multicluster.kubernetes.io/source-cluster";
/// `ServiceExport` condition: the export is valid (its Service exists and can be exported).
pub const CONDITION_VALID: &str = "Valid";
/// `ServiceExport` condition: the export conflicts with another cluster's export of the same name.
pub const CONDITION_CONFLICT: &str = "Conflict";

/// `ServiceExport`: the Service of the same name and namespace is exported to the clusterset. It has no
/// spec, as upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceExport {
    /// `multicluster.x-k8s.io/v1alpha1`.
    #[serde(rename = "apiVersion", default = "export_api_version")]
    pub api_version: String,
    /// `ServiceExport`.
    #[serde(default = "export_kind")]
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceExportStatus>,
}

/// `ServiceExport` status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceExportStatus {
    /// `Valid` and `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn export_api_version() -> String {
    format!("{MCS_GROUP}/v1alpha1")
}

fn export_kind() -> String {
    "ServiceExport".into()
}

impl Default for ServiceExport {
    fn default() -> Self {
        Self {
            api_version: export_api_version(),
            kind: export_kind(),
            metadata: ObjectMeta::default(),
            status: None,
        }
    }
}

impl ServiceExport {
    /// A `ServiceExport` for Service `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            api_version: export_api_version(),
            kind: export_kind(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            status: None,
        }
    }
}

impl kube::Resource for ServiceExport {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ServiceExport".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        MCS_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "serviceexports".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl ServiceExport {
    /// The CRD, as upstream's `multicluster.x-k8s.io_serviceexports.yaml` (v1alpha1).
    pub fn crd() -> CustomResourceDefinition {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": "serviceexports.multicluster.x-k8s.io" },
            "spec": {
                "group": MCS_GROUP,
                "names": { "kind": "ServiceExport", "listKind": "ServiceExportList", "plural": "serviceexports",
                           "singular": "serviceexport", "shortNames": ["svcex"] },
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "subresources": { "status": {} },
                    "additionalPrinterColumns": [
                        { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" }
                    ],
                    "schema": { "openAPIV3Schema": {
                        "description": "ServiceExport declares that the Service with the same name and namespace as this export should be consumable from other clusters.",
                        "type": "object",
                        "properties": {
                            "apiVersion": { "type": "string" },
                            "kind": { "type": "string" },
                            "metadata": { "type": "object" },
                            "status": {
                                "description": "status describes the current state of an exported service.",
                                "type": "object",
                                "properties": {
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
                                            "properties": {
                                                "lastTransitionTime": { "type": "string", "format": "date-time" },
                                                "message": { "type": "string", "maxLength": 32768 },
                                                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0 },
                                                "reason": { "type": "string", "maxLength": 1024, "minLength": 1,
                                                            "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$" },
                                                "status": { "type": "string", "enum": ["True", "False", "Unknown"] },
                                                "type": { "type": "string", "maxLength": 316 }
                                            }
                                        },
                                        "x-kubernetes-list-map-keys": ["type"],
                                        "x-kubernetes-list-type": "map"
                                    }
                                }
                            }
                        }
                    }}
                }]
            }
        }))
        .expect("a literal CRD")
    }
}

/// `ServiceImport` spec: how the clusterset's service looks from this cluster.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// The service's ports.
    pub ports: Vec<ServicePort>,
    /// The clusterset IP (at most one), for `ClusterSetIP` imports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub ips: Vec<String>,
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// `ClientIP` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// Session affinity settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::preserve_unknown_object")]
    pub session_affinity_config: Option<serde_json::Value>,
}

/// How an import is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum ServiceImportType {
    /// One clusterset IP, load-balanced over every exporting cluster's endpoints.
    #[default]
    ClusterSetIP,
    /// No IP: DNS answers with the endpoints.
    Headless,
}

/// A port of an imported service.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (must be set when there is more than one port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Application protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port number.
    pub port: i32,
}

/// `ServiceImport` status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceImportStatus {
    /// The clusters that export the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

/// One exporting cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    /// Cluster ID.
    pub cluster: String,
}
