//! The pod admission webhooks, served by each `ferry-agent` over TLS and registered with their CA bundle.
//! Consumer side: the `MutatingWebhookConfiguration` `ferry-pod-offloading`. Provider side: the
//! `ValidatingWebhookConfiguration` `ferry-tenant-pods`, which refuses any pod in a tenant namespace that
//! breaks the tenant's policy, whoever creates it (the second wall behind the `ShadowPod` controller). The decision is
//! [`ferry_virtual_kubelet::admission::decide`]; this module only finds the pod's `NamespaceOffloading`
//! and speaks AdmissionReview.
//!
//! Only pods of namespaces labelled offloaded reach the webhook, so ferry costs every other pod creation
//! nothing. No race when an offloading and its pods are created together: the offloading is looked up in
//! a watch cache and, on a miss, with a direct GET, so a `NamespaceOffloading` created a moment before the
//! pod is always seen.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use ferry_crds::NamespaceOffloading;

use ferry_crds::Tenant;
use ferry_crds::kinds::TenantPolicy;
use ferry_peering_broker::offloading::OFFLOADED_LABEL;
use ferry_virtual_kubelet::TENANT_LABEL;
use ferry_virtual_kubelet::admission::{Decision, decide};
use ferry_virtual_kubelet::policy::{Stage, check};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::warn;

/// Name of the webhook configuration.
pub const WEBHOOK_NAME: &str = "ferry-pod-offloading";
/// Name of the provider's validating webhook configuration for pods in tenant namespaces.
pub const TENANT_WEBHOOK_NAME: &str = "ferry-tenant-pods";

/// What the handler needs.
pub struct Webhook {
    /// This cluster.
    pub client: Client,
    /// Watch cache of `NamespaceOffloading`.
    pub offloadings: Store<NamespaceOffloading>,
    /// Watch cache of the tenant namespaces (labelled [`TENANT_LABEL`]; metadata only).
    pub tenant_namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Watch cache of `Tenant`s.
    pub tenants: Store<Tenant>,
}

impl Webhook {
    /// The namespace's offloading: from the cache, else from the apiserver. One being deleted counts as
    /// none (`ferryctl unoffload`: pods recreated from then on stay local).
    async fn offloading(&self, ns: &str) -> Option<NamespaceOffloading> {
        let live = |o: &NamespaceOffloading| o.metadata.deletion_timestamp.is_none();
        let cached = self
            .offloadings
            .state()
            .iter()
            .find(|o| o.namespace().as_deref() == Some(ns))
            .map(|o| (**o).clone());
        if let Some(o) = cached {
            return live(&o).then_some(o);
        }
        let api: Api<NamespaceOffloading> = Api::namespaced(self.client.clone(), ns);
        api.list(&ListParams::default())
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
            .filter(live)
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

/// The provider's second wall: any pod created in a tenant namespace (labelled [`TENANT_LABEL`]) must keep
/// to that tenant's policy, whoever creates it ([`ferry_virtual_kubelet::policy::check`], after admission).
async fn validate_tenant_pod(State(w): State<Arc<Webhook>>, body: axum::body::Bytes) -> Response {
    let req: AdmissionRequest<Pod> = match serde_json::from_slice::<AdmissionReview<Pod>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.try_into()
                .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
        }) {
        Ok(r) => r,
        Err(e) => return axum::Json(AdmissionResponse::invalid(e).into_review()).into_response(),
    };
    let resp = AdmissionResponse::from(&req);
    let resp = match (&req.object, req.namespace.as_deref()) {
        (Some(pod), Some(ns)) => match w.tenant_policy(ns).await {
            Ok(Some((tenant, policy))) => {
                let spec = pod.spec.clone().unwrap_or_default();
                let violations = check(&spec, pod.annotations(), &policy, Stage::Admitted);
                if violations.is_empty() {
                    resp
                } else {
                    let why: Vec<String> = violations.iter().map(ToString::to_string).collect();
                    resp.deny(format!(
                        "namespace {ns} belongs to tenant {tenant}, whose policy refuses this pod: {}",
                        why.join("; ")
                    ))
                }
            }
            Ok(None) => resp,
            // the namespace is a tenant's but its policy cannot be read now: refuse rather than guess
            Err(e) => resp.deny(format!(
                "the tenant policy of namespace {ns} could not be read: {e}"
            )),
        },
        _ => resp,
    };
    let review: AdmissionReview<DynamicObject> = resp.into_review();
    axum::Json(review).into_response()
}

impl Webhook {
    /// The tenant owning namespace `ns` and its policy (`None`: no tenant's namespace). From the watch
    /// caches, so a burst of pods costs the apiserver no reads; a namespace or Tenant the caches have not
    /// seen yet (created a moment ago) is read directly.
    async fn tenant_policy(&self, ns: &str) -> Result<Option<(String, TenantPolicy)>, kube::Error> {
        let cached = self
            .tenant_namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.labels().get(TENANT_LABEL).cloned());
        let tenant = match cached {
            Some(t) => t,
            None => {
                let Some(n) = Api::<Namespace>::all(self.client.clone()).get_opt(ns).await? else {
                    return Ok(None);
                };
                let Some(t) = n.labels().get(TENANT_LABEL).cloned() else {
                    return Ok(None);
                };
                t
            }
        };
        // a tenant namespace whose Tenant is gone gets the default (safe) policy
        let policy = match self.tenants.get(&ObjectRef::new(&tenant)) {
            Some(t) => Some(t.spec.policy.clone()),
            None => Api::<Tenant>::all(self.client.clone())
                .get_opt(&tenant)
                .await?
                .map(|t| t.spec.policy),
        };
        Ok(Some((tenant, policy.unwrap_or_default())))
    }
}

/// The webhook's routes, with the watches that feed its caches (offloadings, tenant namespaces, Tenants)
/// running beside.
pub fn router(client: Client) -> (Router, impl std::future::Future<Output = ()>) {
    use ferry_plumbing::triggers::store;
    let (offloadings, offloading_watch) = store(
        Api::<NamespaceOffloading>::all(client.clone()),
        watcher::Config::default(),
    );
    let (tenant_namespaces, namespace_watch) = store(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default().labels(TENANT_LABEL),
    );
    let (tenants, tenant_watch) = store(Api::<Tenant>::all(client.clone()), watcher::Config::default());
    let w = Arc::new(Webhook {
        client,
        offloadings,
        tenant_namespaces,
        tenants,
    });
    let watches = async move {
        tokio::join!(offloading_watch, namespace_watch, tenant_watch);
    };
    (
        Router::new()
            .route("/mutate-pods", post(mutate))
            .route("/validate-tenant-pods", post(validate_tenant_pod))
            .with_state(w),
        watches,
    )
}

/// Registers the webhook at `url` with the serving certificate as its CA bundle (server-side apply, so a
/// restart with a new certificate updates it, and an entry an older agent registered is removed). One
/// entry, for namespaces labelled [`OFFLOADED_LABEL`] only, with `failurePolicy: Fail`, so a pod is never
/// created there without its offloading (while the agent restarts, the ReplicaSet retries). No other
/// namespace's pods wait for ferry: `ferryctl offload` labels the namespace before it creates the
/// `NamespaceOffloading`, and the offloading controller labels one created otherwise.
pub async fn register(client: &Client, url: &str, cert_pem: &str) -> kube::Result<()> {
    let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    let body = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [{
            "name": "offloaded.pods.ferry.dev",
            "clientConfig": {
                "url": format!("{}/mutate-pods", url.trim_end_matches('/')),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(cert_pem),
            },
            "namespaceSelector": {"matchExpressions": [{"key": OFFLOADED_LABEL, "operator": "Exists"}]},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    api.patch(
        WEBHOOK_NAME,
        &PatchParams::apply("ferry-agent").force(),
        &Patch::Apply(&body),
    )
    .await?;
    // the provider side: every pod in a tenant namespace is checked against its tenant's policy;
    // `Fail`, so no pod slips in while the agent restarts (the ShadowPod controller retries)
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": TENANT_WEBHOOK_NAME},
        "webhooks": [{
            "name": "tenant-pods.ferry.dev",
            "clientConfig": {
                "url": format!("{}/validate-tenant-pods", url.trim_end_matches('/')),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(cert_pem),
            },
            "namespaceSelector": {"matchExpressions": [{"key": TENANT_LABEL, "operator": "Exists"}]},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    Api::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            TENANT_WEBHOOK_NAME,
            &PatchParams::apply("ferry-agent").force(),
            &Patch::Apply(&validating),
        )
        .await
        .map(|_| ())
}
