//! The consumer's side of offloading (run by `ferry-agent`).
//!
//! [`reconcile`] (a kube-runtime `Controller` over `NamespaceOffloading`): for every provider this cluster
//! is peered with (an identity Secret exists) whose virtual node matches `clusterSelector`, ask the
//! provider's broker (mTLS, the tenant's identity) for the namespace the pods go to, and record it in
//! `status.remoteNamespaces`. Every offloading is reconciled again when an identity Secret changes (a
//! peering made, renewed or removed), so a new peering picks up offloaded namespaces at once; a 30 s
//! requeue remains as a resync (a provider's broker can refuse for a while, e.g. its quota).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{ForeignCluster, NamespaceOffloading};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::consumer::identity_secret;
use crate::wire::{OffloadRequest, OffloadResponse};
use ferry_crds::identity::SYSTEM_NAMESPACE;
use ferry_crds::identity::text;

/// Reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Asking a provider or writing status failed; retried.
    #[error("{0}")]
    Transient(String),
}

/// Peerings with an identity: provider ID → its identity Secret.
pub async fn identities(client: &Client) -> Result<BTreeMap<String, Secret>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let mut out = BTreeMap::new();
    for fc in fcs.list(&ListParams::default()).await? {
        let name = fc.name_any();
        if let Some(s) = secrets.get_opt(&identity_secret(&name)).await? {
            out.insert(name, s);
        }
    }
    Ok(out)
}

/// Whether the virtual node of `provider` matches a `clusterSelector`.
pub fn selected(selector: &BTreeMap<String, String>, provider: &str) -> bool {
    let labels: BTreeMap<String, String> = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(provider)
        .labels
        .into_iter()
        .collect();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Label on a consumer namespace whose pods the webhook must see (`failurePolicy: Fail` for it).
pub const OFFLOADED_LABEL: &str = "ferry.dev/offloaded";

/// Finalizer on `NamespaceOffloading`: the provider namespaces go when it goes.
pub const FINALIZER: &str = "ferry.dev/offloading";

/// Sets or clears [`OFFLOADED_LABEL`] on namespace `ns`.
pub async fn label_namespace(client: &Client, ns: &str, on: bool) -> Result<(), kube::Error> {
    let v = if on {
        json!("true")
    } else {
        serde_json::Value::Null
    };
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {OFFLOADED_LABEL: v}}})),
        )
        .await
        .map(|_| ())
}

/// One reconcile of one `NamespaceOffloading` (with its finalizer).
#[tracing::instrument(skip_all, fields(ns = no.namespace().unwrap_or_default()))]
pub async fn reconcile(
    no: Arc<NamespaceOffloading>,
    client: Arc<Client>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let api: Api<NamespaceOffloading> =
        Api::namespaced((*client).clone(), &no.namespace().unwrap_or_default());
    kube::runtime::finalizer(&api, FINALIZER, no, |ev| async {
        match ev {
            kube::runtime::finalizer::Event::Apply(no) => apply(no, client.clone()).await,
            kube::runtime::finalizer::Event::Cleanup(no) => cleanup(no, client.clone()).await,
        }
    })
    .await
}

/// The provider namespaces are deleted through each broker (best effort: an unreachable provider must
/// not keep the consumer namespace from being deleted; unpeering removes them anyway), and the label goes.
async fn cleanup(no: Arc<NamespaceOffloading>, client: Arc<Client>) -> Result<Action, Error> {
    let ns = no.namespace().unwrap_or_default();
    let ids = identities(&client).await.unwrap_or_default();
    let remote = no
        .status
        .as_ref()
        .map(|s| s.remote_namespaces.clone())
        .unwrap_or_default();
    for (provider, rns) in remote {
        let Some(s) = ids.get(&provider) else { continue };
        let url = text(s, "brokerURL").unwrap_or_default();
        let path = format!("/v1/namespaces/{rns}");
        let r = crate::consumer::call_broker(s, "DELETE", &path, None).await;
        match r {
            Ok((200 | 404, _)) => info!(provider, namespace = rns, "provider namespace deleted"),
            Ok((status, b)) => warn!(
                provider,
                "{url}{path} answered {status}: {}",
                String::from_utf8_lossy(&b)
            ),
            Err(e) => warn!(provider, "{url}{path}: {e:#}"),
        }
    }
    if let Err(e) = label_namespace(&client, &ns, false).await {
        // the namespace itself may be going away
        tracing::debug!("unlabelling namespace {ns}: {e}");
    }
    Ok(Action::await_change())
}

async fn apply(no: Arc<NamespaceOffloading>, client: Arc<Client>) -> Result<Action, Error> {
    let ns = no.namespace().unwrap_or_default();
    label_namespace(&client, &ns, true)
        .await
        .map_err(|e| Error::Transient(format!("labelling namespace {ns}: {e}")))?;
    let ids = identities(&client)
        .await
        .map_err(|e| Error::Transient(format!("listing peerings: {e}")))?;
    let mut remote = no
        .status
        .as_ref()
        .map(|s| s.remote_namespaces.clone())
        .unwrap_or_default();
    let mut errors = Vec::new();
    for (provider, s) in &ids {
        if !selected(&no.spec.cluster_selector, provider) {
            remote.remove(provider);
            continue;
        }
        let body = serde_json::to_vec(&OffloadRequest {
            namespace: ns.clone(),
            mapping: no.spec.namespace_mapping_strategy,
        })
        .unwrap_or_default();
        let url = text(s, "brokerURL").unwrap_or_default();
        let r = crate::consumer::call_broker(s, "POST", "/v1/namespaces", Some(&body)).await;
        match r {
            Ok((200, b)) => match serde_json::from_slice::<OffloadResponse>(&b) {
                Ok(o) => {
                    remote.insert(provider.clone(), o.namespace);
                }
                Err(e) => errors.push(format!("{url}/v1/namespaces: {e}")),
            },
            Ok((status, b)) => errors.push(format!(
                "{url}/v1/namespaces answered {status}: {}",
                String::from_utf8_lossy(&b)
            )),
            Err(e) => errors.push(format!("{url}/v1/namespaces: {e:#}")),
        }
    }
    remote.retain(|p, _| ids.contains_key(p));
    let ready = errors.is_empty();
    let message = if ready {
        format!("offloaded to {} provider(s)", remote.len())
    } else {
        errors.join("; ")
    };
    let old_ready = no
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let changed = no.status.as_ref().map(|s| &s.remote_namespaces) != Some(&remote)
        || old_ready.map(|c| (c.status.as_str(), c.message.as_str()))
            != Some((if ready { "True" } else { "False" }, message.as_str()));
    if changed {
        use ferry_plumbing::conditions;
        let old = no
            .status
            .as_ref()
            .map(|s| conditions::values(&s.conditions))
            .unwrap_or_default();
        let reason = if ready { "Offloaded" } else { "ProviderRefused" };
        let ready_now = conditions::condition("Ready", ready, reason, &message, &conditions::now());
        let status = json!({"status": {
            "remoteNamespaces": remote,
            "conditions": conditions::merge(&old, vec![ready_now]),
        }});
        Api::<NamespaceOffloading>::namespaced((*client).clone(), &ns)
            .patch_status(&no.name_any(), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| Error::Transient(format!("NamespaceOffloading {ns} status: {e}")))?;
    }
    if !ready {
        warn!("{message}");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Runs the `NamespaceOffloading` reconciler.
pub async fn run(client: Client) {
    // a peering made, renewed or removed changes an identity Secret: every offloading is looked at again
    let (_identities, identity_changes) = ferry_plumbing::triggers::store_with_changes(
        Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        watcher::Config::default(),
    );
    Controller::new(
        Api::<NamespaceOffloading>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(identity_changes)
    .run(
        |no, ctx| ferry_plumbing::metrics::reconciled("namespace-offloading", reconcile(no, ctx)),
        |_, e, _| {
            warn!("{e}");
            Action::requeue(Duration::from_secs(5))
        },
        Arc::new(client),
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_selectors_match_virtual_node_labels() {
        let sel = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(selected(&sel(&[]), "p1"));
        assert!(selected(&sel(&[("ferry.dev/remote-cluster-id", "p1")]), "p1"));
        assert!(!selected(&sel(&[("ferry.dev/remote-cluster-id", "p2")]), "p1"));
        assert!(!selected(&sel(&[("region", "eu")]), "p1"));
    }

    /// Controller tests: the reconciler (with its finalizer) against a mocked apiserver.
    mod controller {
        use super::*;
        use ferry_plumbing::fixtures::{Expect, MockApi, list, object};

        const NO_PATH: &str = "/apis/ferry.dev/v1alpha1/namespaces/app/namespaceoffloadings/offloading";
        const FC_PATH: &str = "/apis/ferry.dev/v1alpha1/foreignclusters";
        const SECRETS: &str = "/api/v1/namespaces/ferry-system/secrets";

        fn offloading(
            finalized: bool,
            deleting: bool,
            remote: serde_json::Value,
        ) -> Arc<NamespaceOffloading> {
            let mut v = json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "NamespaceOffloading",
                "metadata": {"name": "offloading", "namespace": "app"},
                "spec": {},
                "status": {"remoteNamespaces": remote},
            });
            if finalized {
                v["metadata"]["finalizers"] = json!([FINALIZER]);
            }
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-12-04T00:00:00Z");
            }
            Arc::new(object(v))
        }

        fn ns_app() -> serde_json::Value {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}})
        }

        fn no_json() -> serde_json::Value {
            serde_json::to_value(offloading(true, false, json!({})).as_ref()).unwrap()
        }

        fn fc(name: &str) -> ForeignCluster {
            object(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "ForeignCluster",
                "metadata": {"name": name},
                "spec": {"clusterID": name, "role": "Provider"},
            }))
        }

        #[tokio::test]
        async fn a_new_offloading_gets_its_finalizer_first() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![Expect::ok(
                "PATCH",
                NO_PATH,
                serde_json::to_value(offloading(true, false, json!({})).as_ref()).unwrap(),
            )]);
            let action = reconcile(offloading(false, false, json!({})), Arc::new(client))
                .await
                .unwrap();
            assert_eq!(action, Action::await_change());
            let sent = sent.await.unwrap();
            assert!(sent[0].body.to_string().contains(FINALIZER), "{}", sent[0].body);
        }

        #[tokio::test]
        async fn without_peerings_the_namespace_is_labelled_and_ready_with_no_provider() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![
                Expect::ok("PATCH", "/api/v1/namespaces/app", ns_app()),
                Expect::ok(
                    "GET",
                    FC_PATH,
                    list(
                        "ferry.dev/v1alpha1",
                        "ForeignCluster",
                        &Vec::<ForeignCluster>::new(),
                    ),
                ),
                Expect::ok("PATCH", format!("{NO_PATH}/status"), no_json()),
            ]);
            let action = reconcile(offloading(true, false, json!({"gone": "x"})), Arc::new(client))
                .await
                .unwrap();
            assert_eq!(action, Action::requeue(Duration::from_secs(30)));
            let sent = sent.await.unwrap();
            assert_eq!(sent[0].body["metadata"]["labels"][OFFLOADED_LABEL], "true");
            let status = &sent[2].body["status"];
            assert_eq!(
                status["remoteNamespaces"],
                json!({}),
                "a provider no longer peered is dropped"
            );
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["conditions"][0]["message"], "offloaded to 0 provider(s)");
        }

        #[tokio::test]
        async fn an_unreachable_provider_makes_it_not_ready_naming_the_broker_and_retries_soon() {
            let (client, mock) = MockApi::new();
            let identity = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "ferry-identity-p1", "namespace": "ferry-system"},
                "data": {"brokerURL": "aHR0cHM6Ly8xMjcuMC4wLjE6MQ==" /* https://127.0.0.1:1 */}});
            let sent = mock.run(vec![
                Expect::ok("PATCH", "/api/v1/namespaces/app", ns_app()),
                Expect::ok(
                    "GET",
                    FC_PATH,
                    list("ferry.dev/v1alpha1", "ForeignCluster", &[fc("p1")]),
                ),
                Expect::ok("GET", format!("{SECRETS}/ferry-identity-p1"), identity),
                Expect::ok("PATCH", format!("{NO_PATH}/status"), no_json()),
            ]);
            let action = reconcile(offloading(true, false, json!({})), Arc::new(client))
                .await
                .unwrap();
            assert_eq!(action, Action::requeue(Duration::from_secs(5)));
            let sent = sent.await.unwrap();
            let cond = &sent[3].body["status"]["conditions"][0];
            assert_eq!(cond["status"], "False");
            assert_eq!(cond["reason"], "ProviderRefused");
            assert!(
                cond["message"]
                    .as_str()
                    .unwrap()
                    .contains("https://127.0.0.1:1/v1/namespaces"),
                "{cond}"
            );
        }

        #[tokio::test]
        async fn deletion_unlabels_the_namespace_then_releases_the_finalizer() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![
                Expect::ok(
                    "GET",
                    FC_PATH,
                    list(
                        "ferry.dev/v1alpha1",
                        "ForeignCluster",
                        &Vec::<ForeignCluster>::new(),
                    ),
                ),
                Expect::ok("PATCH", "/api/v1/namespaces/app", ns_app()),
                Expect::ok(
                    "PATCH",
                    NO_PATH,
                    serde_json::to_value(offloading(false, true, json!({})).as_ref()).unwrap(),
                ),
            ]);
            reconcile(offloading(true, true, json!({})), Arc::new(client))
                .await
                .unwrap();
            let sent = sent.await.unwrap();
            assert!(sent[1].body["metadata"]["labels"][OFFLOADED_LABEL].is_null());
            assert!(
                sent[2].body.to_string().contains("remove"),
                "the finalizer is removed last: {}",
                sent[2].body
            );
        }
    }
}
