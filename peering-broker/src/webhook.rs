//! The pod admission webhook (served by the consumer's `ferry-agent` over TLS and registered as the
//! `MutatingWebhookConfiguration` `ferry-pod-offloading` with its CA bundle). The decision is
//! [`ferry_virtual_kubelet::admission::decide`]; this module only finds the pod's `NamespaceOffloading`
//! and speaks AdmissionReview.
//!
//! No race when a namespace and its pods are created together: the offloading is looked up in a watch
//! cache and, on a miss, with a direct GET, so a `NamespaceOffloading` created a moment before the pod is
//! always seen.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use ferry_crds::NamespaceOffloading;

use crate::offloading::OFFLOADED_LABEL;
use ferry_virtual_kubelet::admission::{Decision, decide};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::warn;

/// Name of the webhook configuration.
pub const WEBHOOK_NAME: &str = "ferry-pod-offloading";

/// What the handler needs.
pub struct Webhook {
    /// This cluster.
    pub client: Client,
    /// Watch cache of `NamespaceOffloading`.
    pub offloadings: Store<NamespaceOffloading>,
}

impl Webhook {
    /// The namespace's offloading: from the cache, else from the apiserver.
    async fn offloading(&self, ns: &str) -> Option<NamespaceOffloading> {
        let cached = self
            .offloadings
            .state()
            .iter()
            .find(|o| o.namespace().as_deref() == Some(ns))
            .map(|o| (**o).clone());
        if cached.is_some() {
            return cached;
        }
        let api: Api<NamespaceOffloading> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default())
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
    }
}

async fn mutate(State(w): State<Arc<Webhook>>, body: axum::body::Bytes) -> Response {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {e}"),
            )
                .into_response();
        }
    };
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return axum::Json(AdmissionResponse::invalid(e.to_string()).into_review()).into_response();
        }
    };
    let resp = AdmissionResponse::from(&req);
    let resp = match &req.object {
        Some(pod) => {
            let ns = req
                .namespace
                .clone()
                .or_else(|| pod.namespace())
                .unwrap_or_default();
            let off = w.offloading(&ns).await;
            match decide(pod, off.as_ref().map(|o| &o.spec)) {
                Decision::Unchanged => resp,
                Decision::Deny(msg) => resp.deny(msg),
                Decision::Patch(ops) => {
                    match serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops)) {
                        Ok(p) => resp.clone().with_patch(p).unwrap_or(resp),
                        Err(e) => {
                            warn!("webhook patch: {e}");
                            resp
                        }
                    }
                }
            }
        }
        None => resp,
    };
    let review: AdmissionReview<DynamicObject> = resp.into_review();
    axum::Json(review).into_response()
}

/// The webhook's routes, with the `NamespaceOffloading` watch that feeds its cache running beside.
pub fn router(client: Client) -> (Router, impl std::future::Future<Output = ()>) {
    let (offloadings, writer) = reflector::store();
    let watch = reflector(
        writer,
        watcher(
            Api::<NamespaceOffloading>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| async {});
    let w = Arc::new(Webhook { client, offloadings });
    (
        Router::new().route("/mutate-pods", post(mutate)).with_state(w),
        watch,
    )
}

/// Registers the webhook at `url` with the serving certificate as its CA bundle (server-side apply, so a
/// restart with a new certificate updates it). Two entries:
/// - namespaces labelled [`OFFLOADED_LABEL`]: `failurePolicy: Fail`, so a pod is never created there
///   without its offloading (while the agent restarts, the ReplicaSet retries);
/// - every other namespace: `Ignore`, and the webhook looks the offloading up itself; this covers a
///   `NamespaceOffloading` created a moment before its pods, before the label is set.
pub async fn register(client: &Client, url: &str, cert_pem: &str) -> kube::Result<()> {
    let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let hook = |name: &str, op: &str, policy: &str| {
        json!({
            "name": name,
            "clientConfig": {
                "url": format!("{}/mutate-pods", url.trim_end_matches('/')),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(cert_pem),
            },
            "namespaceSelector": {"matchExpressions": [{"key": OFFLOADED_LABEL, "operator": op}]},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        })
    };
    let body = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            hook("offloaded.pods.ferry.dev", "Exists", "Fail"),
            hook("pods.ferry.dev", "DoesNotExist", "Ignore"),
        ],
    });
    api.patch(
        WEBHOOK_NAME,
        &PatchParams::apply("ferry-agent").force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}
