//! The provider side (run by the provider's `ferry-agent`): the `ShadowPod` controller and the slice
//! availability loop.
//!
//! [`ShadowPodReconciler`]: every `ShadowPod` has exactly one pod of the same name, owned by it (controller
//! owner reference), created from its template after the provider re-checks that the pod needs no host
//! access. A pod deleted or evicted on the provider is recreated here, whether or not the consumer is
//! reachable; deleting the `ShadowPod` lets the garbage collector delete the pod gracefully.
//!
//! [`run_availability`]: every few seconds each tenant's `ResourceSlice` gets `status.available` =
//! min(grant, what the tenant's pods use + what the provider's nodes have free), which the consumer turns
//! into its virtual node's allocatable.

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::common::ResourceAmounts;
use ferry_crds::{ResourceSlice, ShadowPod, Tenant};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::quantity::{Amounts, available};
use crate::translate::{ORIGIN_CLUSTER_LABEL, refusals};
use crate::{Error, api_err};

/// What the reconciler shares.
pub struct ShadowPodReconciler {
    /// The provider's client.
    pub client: Client,
    /// Every pod of the provider (shared with the availability loop).
    pub pods: Store<Pod>,
}

/// Whether a pod ended in a way the provider's controller heals (evicted, or failed while it should run
/// forever).
fn needs_replacement(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    let always = p
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .is_none_or(|r| r == "Always");
    phase == Some("Failed") && always
}

impl ShadowPodReconciler {
    /// One reconcile of one `ShadowPod`.
    #[tracing::instrument(skip_all, fields(shadow = %sp.name_any(), ns = sp.namespace().unwrap_or_default()))]
    pub async fn reconcile(sp: Arc<ShadowPod>, ctx: Arc<Self>) -> Result<Action, Error> {
        if sp.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let ns = sp.namespace().unwrap_or_default();
        let name = sp.name_any();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let existing = ctx.pods.get(&ObjectRef::new(&name).within(&ns));
        let uid = sp.uid().unwrap_or_default();
        match existing {
            Some(p) if p.owner_references().iter().any(|o| o.uid == uid) => {
                if needs_replacement(&p) && p.metadata.deletion_timestamp.is_none() {
                    info!(pod = name, "provider pod failed; replacing it");
                    pods.delete(&name, &DeleteParams::default().grace_period(0))
                        .await
                        .map_err(api_err(format!("deleting failed pod {ns}/{name}")))?;
                    let recreations = sp.status.as_ref().map_or(0, |s| s.recreations) + 1;
                    let api: Api<ShadowPod> = Api::namespaced(ctx.client.clone(), &ns);
                    api.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"recreations": recreations, "phase": "Replacing"}})),
                    )
                    .await
                    .map_err(api_err(format!("ShadowPod {ns}/{name} status")))?;
                }
                Ok(Action::await_change())
            }
            Some(_) => {
                warn!(
                    pod = name,
                    "a pod of this name exists and is not the ShadowPod's; leaving it"
                );
                Ok(Action::requeue(Duration::from_secs(30)))
            }
            None => {
                let mut pod: Pod = serde_json::from_value(sp.spec.template.clone())
                    .map_err(|e| Error::Template(format!("{ns}/{name}"), format!("template: {e}")))?;
                let spec = pod.spec.clone().unwrap_or_default();
                let refused = refusals(&spec);
                if !refused.is_empty() {
                    let why: Vec<String> = refused.iter().map(ToString::to_string).collect();
                    return Err(Error::Template(format!("{ns}/{name}"), why.join("; ")));
                }
                pod.metadata.name = Some(name.clone());
                pod.metadata.namespace = Some(ns.clone());
                pod.metadata.resource_version = None;
                pod.metadata.uid = None;
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(ORIGIN_CLUSTER_LABEL.into(), sp.spec.consumer_cluster_id.clone());
                pod.metadata.owner_references = Some(vec![OwnerReference {
                    api_version: ShadowPod::api_version(&()).to_string(),
                    kind: ShadowPod::kind(&()).to_string(),
                    name: name.clone(),
                    uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]);
                pod.status = None;
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(Action::await_change()),
                    // the store lags behind a pod created a moment ago: the next event settles it
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(Duration::from_secs(2))),
                    Err(e) => Err(api_err(format!("creating pod {ns}/{name}"))(e)),
                }
            }
        }
    }

    /// After a failed reconcile: retry soon, a template that will not become valid only slowly.
    pub fn error_policy(_sp: Arc<ShadowPod>, e: &Error, _ctx: Arc<Self>) -> Action {
        warn!("{e}");
        match e {
            Error::Template(..) => Action::requeue(Duration::from_secs(300)),
            Error::Api { .. } | Error::NotYet(_) => Action::requeue(Duration::from_secs(2)),
        }
    }
}

/// Runs the `ShadowPod` controller and the availability loop until one stops. They start once this cluster
/// has a `Tenant` (it is a provider), so a consumer-only agent keeps no cache of every pod.
pub async fn run(client: Client) {
    let tenants: Api<Tenant> = Api::all(client.clone());
    while !matches!(tenants.list_metadata(&Default::default()).await, Ok(l) if !l.items.is_empty()) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    info!("this cluster is a provider: ShadowPod controller and slice availability starting");
    let (pods, writer) = reflector::store();
    let pod_events = reflector(
        writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .modify(|p| p.metadata.managed_fields = None),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|p| async move {
        match p {
            // only pods a ShadowPod owns trigger it; every pod still counts in the store for availability
            Ok(p) if p.labels().contains_key(ORIGIN_CLUSTER_LABEL) => Some(Ok(p)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let ctx = Arc::new(ShadowPodReconciler {
        client: client.clone(),
        pods: pods.clone(),
    });
    let controller = Controller::new(Api::<ShadowPod>::all(client.clone()), watcher::Config::default())
        .owns_stream(pod_events)
        .with_config(kube::runtime::controller::Config::default().concurrency(32))
        .run(
            ShadowPodReconciler::reconcile,
            ShadowPodReconciler::error_policy,
            ctx,
        )
        .for_each(|_| async {});
    tokio::select! {
        _ = controller => warn!("the ShadowPod controller stopped"),
        _ = run_availability(client, pods) => warn!("the availability loop stopped"),
    }
}

fn running_on_a_node(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn schedulable(n: &Node) -> bool {
    let virtual_node =
        n.labels().get(crate::VIRTUAL_NODE_LABEL.0).map(String::as_str) == Some(crate::VIRTUAL_NODE_LABEL.1);
    !virtual_node
        && !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
        && crate::node::is_ready(n)
}

/// Keeps each tenant's `ResourceSlice` `status.available` current (every 3 s, written only on change).
pub async fn run_availability(client: Client, pods: Store<Pod>) {
    let (nodes, writer) = reflector::store::<Node>();
    let node_watch = reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| async {});
    let lp = async {
        let tenants: Api<Tenant> = Api::all(client.clone());
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
                continue;
            }
            let Ok(list) = tenants.list(&Default::default()).await else {
                continue;
            };
            let all = pods.state();
            let capacity = nodes
                .state()
                .iter()
                .filter(|n| schedulable(n))
                .fold(Amounts::default(), |a, n| a.plus(Amounts::of_node(n)));
            let used = all
                .iter()
                .filter(|p| running_on_a_node(p))
                .fold(Amounts::default(), |a, p| a.plus(Amounts::of_pod(p)));
            let free = capacity.minus(used);
            for t in list {
                let consumer = &t.spec.cluster_id;
                let tenant_used = all
                    .iter()
                    .filter(|p| {
                        running_on_a_node(p) && p.labels().get(ORIGIN_CLUSTER_LABEL) == Some(consumer)
                    })
                    .fold(Amounts::default(), |a, p| a.plus(Amounts::of_pod(p)));
                let slices: Api<ResourceSlice> = Api::namespaced(client.clone(), &t.spec.tenant_namespace);
                let Ok(Some(slice)) = slices.get_opt(crate::GRANTED_SLICE).await else {
                    continue;
                };
                let granted = slice
                    .status
                    .as_ref()
                    .and_then(|s| s.granted.as_ref())
                    .map(Amounts::from_resource_amounts)
                    .unwrap_or_default();
                let (cpu, memory, pods_q) = available(granted, tenant_used, free).to_quantities();
                let avail = ResourceAmounts {
                    cpu: Some(cpu),
                    memory: Some(memory),
                    pods: Some(pods_q),
                    extended: Default::default(),
                };
                if slice.status.as_ref().and_then(|s| s.available.as_ref()) != Some(&avail) {
                    let r = slices
                        .patch_status(
                            crate::GRANTED_SLICE,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"available": avail}})),
                        )
                        .await;
                    if let Err(e) = r {
                        warn!(tenant = consumer, "ResourceSlice status: {e}");
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = node_watch => {},
        _ = lp => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_failed_pods_that_should_run_forever_are_replaced() {
        let failed =
            pod(json!({"spec": {"containers": []}, "status": {"phase": "Failed", "reason": "Evicted"}}));
        assert!(needs_replacement(&failed));
        let job =
            pod(json!({"spec": {"containers": [], "restartPolicy": "Never"}, "status": {"phase": "Failed"}}));
        assert!(!needs_replacement(&job));
        let running = pod(json!({"spec": {"containers": []}, "status": {"phase": "Running"}}));
        assert!(!needs_replacement(&running));
    }

    #[test]
    fn virtual_and_not_ready_nodes_add_no_capacity() {
        let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        let n = |labels: serde_json::Value, status: serde_json::Value| -> Node {
            serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}, "status": status}))
                .unwrap()
        };
        assert!(schedulable(&n(json!({}), ready.clone())));
        assert!(!schedulable(&n(json!({"type": "virtual-node"}), ready)));
        assert!(!schedulable(&n(
            json!({}),
            json!({"conditions": [{"type": "Ready", "status": "False"}]})
        )));
    }
}
