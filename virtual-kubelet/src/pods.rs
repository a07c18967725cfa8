//! Pod reflection: a kube-runtime `Controller` over the local pods bound to the virtual node. Each
//! reconcile observes the pod, its `ShadowPod` and the provider pod, asks [`crate::reflect::decide`] what
//! to do, and carries the effects out in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_crds::{NamespaceOffloading, PackedJson, ShadowPod, ShadowPodSpec};
use ferry_plumbing::events::{Event, EventType, Recorder};
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, GetParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use crate::lite::{Lite, RemotePodLite, ShadowLite};
use crate::peer::{Peer, now};
use crate::reflect::{self, Effect, LocalPod, Peering, PodView, Remote, Shadow};
use crate::status_writer::{self, StatusPatch, Statuses};
use crate::translate::{
    ORIGIN_CLUSTER_LABEL, ORIGIN_UID_LABEL, Refusal, RemoteTarget, to_local_status, to_remote,
};
use crate::{Error, api_err};

/// The provider side of one offloaded namespace: reflectors and the task that runs them (started by
/// [`crate::remote`]; read here when a pod is reconciled).
pub struct RemoteNamespace {
    /// The namespace on the provider.
    pub name: String,
    /// ShadowPods there (watched metadata only: the consumer pod's UID is a label).
    pub shadows: Arc<Lite<ShadowLite>>,
    /// Pods there (of this consumer): their statuses.
    pub pods: Arc<Lite<RemotePodLite>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteNamespace {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pod reflection controller's shared state.
pub struct PodReflector {
    /// The peering.
    pub peer: Arc<Peer>,
    /// Local pods bound to the virtual node (the controller's own store; metadata and status).
    pub local_pods: Store<PodView>,
    /// `NamespaceOffloading` objects of this cluster.
    pub offloadings: Store<NamespaceOffloading>,
    /// Local namespace → its provider side.
    pub remote: Mutex<HashMap<String, Arc<RemoteNamespace>>>,
    /// Events on local pods.
    pub recorder: Recorder,
    pub(crate) triggers: mpsc::UnboundedSender<ObjectRef<PodView>>,
    /// Where status patches wait for their tick ([`crate::status_writer`]).
    pub(crate) statuses: Arc<Statuses>,
}

/// The provider namespace `local_ns` maps to, per its `NamespaceOffloading`.
fn mapped(offloadings: &Store<NamespaceOffloading>, provider: &str, local_ns: &str) -> Option<String> {
    offloadings
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(local_ns))
        .find_map(|o| o.status.as_ref()?.remote_namespaces.get(provider).cloned())
}

/// The provider namespace `local_ns` is offloaded to, read now (for the kubelet API, outside the
/// controller's stores).
pub(crate) async fn remote_namespace_of(peer: &crate::peer::Peer, local_ns: &str) -> Option<String> {
    Api::<NamespaceOffloading>::namespaced(peer.local.clone(), local_ns)
        .list(&Default::default())
        .await
        .ok()?
        .items
        .iter()
        .find_map(|o| o.status.as_ref()?.remote_namespaces.get(&peer.provider).cloned())
}

impl PodReflector {
    pub(crate) async fn event(&self, pod: &PodView, kind: EventType, reason: &str, note: String) {
        let ev = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(note),
            action: "Offload".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &pod.object_ref(&())).await {
            debug!("event on {}: {e}", pod.name_any());
        }
    }

    /// Keeps the pod Pending with `reason`, with an event saying why ([`reflect::refuse`] decides
    /// whether the pod already says so).
    async fn refuse(&self, pod: &PodView, reason: &str, message: String) -> Result<(), Error> {
        self.event(pod, EventType::Warning, reason, message.clone()).await;
        let pods: Api<Pod> = Api::namespaced(self.peer.local.clone(), &pod.namespace().unwrap_or_default());
        let status = json!({"status": {"phase": "Pending", "reason": reason, "message": message, "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
            {"type": "Ready", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now()},
        ]}});
        pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(api_err(format!(
                "pod {}/{} status",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            )))?;
        Ok(())
    }

    pub(crate) fn remote_ns(&self, local_ns: &str) -> Option<Arc<RemoteNamespace>> {
        self.remote.lock().ok()?.get(local_ns).cloned()
    }

    /// One reconcile of one local pod bound to the virtual node: observe, [`reflect::decide`], carry out.
    #[tracing::instrument(skip_all, fields(pod = %pod.name_any(), ns = pod.namespace().unwrap_or_default()))]
    pub async fn reconcile(pod: Arc<PodView>, ctx: Arc<Self>) -> Result<Action, Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let node = ctx.peer.node_name();
        let peering = Peering {
            provider: &ctx.peer.provider,
            node: &node,
        };
        let local = LocalPod {
            namespace: &ns,
            uid: &uid,
            deleting: pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .map(|_| pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u32),
            daemonset: pod.owner_references().iter().any(|o| o.kind == "DaemonSet"),
            controlled: pod.owner_references().iter().any(|o| o.controller == Some(true)),
            status: pod.status.as_ref(),
        };
        let mapped = mapped(&ctx.offloadings, &ctx.peer.provider, &ns);
        let Some(rns_name) = mapped else {
            let effects = reflect::decide(peering, &local, None);
            return ctx.carry_out(&pod, None, None, effects).await;
        };
        let Some(rns) = ctx.remote_ns(&ns).filter(|r| r.name == rns_name) else {
            return Err(Error::NotYet(format!(
                "provider namespace {rns_name} not watched yet"
            )));
        };
        if !rns.shadows.ready() || !rns.pods.ready() {
            return Err(Error::NotYet(format!(
                "provider namespace {rns_name} not synced yet"
            )));
        }
        let shadow = rns.shadows.get(&name);
        let remote_pod = rns.pods.get(&name);
        let remote = Remote {
            shadow: shadow.as_ref().map(|s| Shadow {
                origin_uid: s.origin_uid.as_deref(),
                deleting: s.deleting,
                refusal: s.refusal.as_deref(),
            }),
            pod: remote_pod.as_ref().map(|rp| {
                rp.status()
                    .map(|rs| to_local_status(&rs, None, |ip| ctx.peer.translate(ip)))
            }),
        };
        let effects = reflect::decide(peering, &local, Some(&remote));
        ctx.carry_out(&pod, Some(&rns_name), shadow.as_ref(), effects)
            .await
    }

    /// Carries `effects` out in order; the first failure stops the rest (the reconcile is retried).
    async fn carry_out(
        &self,
        pod: &PodView,
        rns: Option<&str>,
        shadow: Option<&ShadowLite>,
        effects: Vec<Effect>,
    ) -> Result<Action, Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let local: Api<Pod> = Api::namespaced(self.peer.local.clone(), &ns);
        let rns = rns.unwrap_or_default();
        let shadows: Api<ShadowPod> = Api::namespaced(self.peer.remote.clone(), rns);
        let mut then = Action::await_change();
        let st = pod.status.as_ref();
        let phase = st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let gone = effects.contains(&Effect::Finalize);
        let behind = effects.iter().any(|e| !matches!(e, Effect::Requeue(_)));
        crate::metrics::observe(&self.peer.provider, &uid, (!gone).then_some(phase), behind);
        for effect in effects {
            match effect {
                Effect::Refuse { reason, message } => self.refuse(pod, reason, message).await?,
                Effect::DeleteShadow => {
                    if let Some(s) = shadow {
                        delete_shadow(&shadows, &name, &s.uid).await?;
                    }
                }
                Effect::DeleteRemotePod(grace) => {
                    let rpods: Api<Pod> = Api::namespaced(self.peer.remote.clone(), rns);
                    match rpods
                        .delete(&name, &DeleteParams::default().grace_period(grace))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(api_err(format!("deleting provider pod {rns}/{name}"))(e)),
                    }
                }
                Effect::CreateShadow => {
                    if !self.create_shadow(pod, &local, &shadows, rns).await? {
                        return Ok(Action::await_change());
                    }
                }
                Effect::PatchStatus(patch) => {
                    let p = StatusPatch {
                        namespace: ns.clone(),
                        name: name.clone(),
                        uid: uid.clone(),
                        patch,
                        locally_ready: st.is_some_and(reflect::OwnedStatus::ready),
                    };
                    // the last effect (`decide` puts it last): it may wait for its tick; one that failed
                    // there comes back here and is sent now
                    if let Some(p) = self.statuses.queue(p) {
                        status_writer::write(&self.peer, &p).await?;
                    }
                }
                Effect::Evict { message } => {
                    self.event(pod, EventType::Warning, "Evicted", message).await;
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid.clone()),
                            resource_version: None,
                        }),
                        ..Default::default()
                    };
                    match local.delete(&name, &dp).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                        Err(e) => return Err(api_err(format!("evicting pod {ns}/{name}"))(e)),
                    }
                }
                Effect::Finalize => return finalize(&local, &name, &uid).await,
                Effect::Requeue(after) => then = Action::requeue(after),
            }
        }
        Ok(then)
    }

    /// Sends the pod to the provider as a `ShadowPod`. False when there is nothing more to do for now (the
    /// pod went, or the translation refused it and the pod says so).
    async fn create_shadow(
        &self,
        pod: &PodView,
        local: &Api<Pod>,
        shadows: &Api<ShadowPod>,
        rns: &str,
    ) -> Result<bool, Error> {
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        // the cache keeps no specs (memory at 10,000 pods): read the whole pod once, to send it
        let Some(full) = read_pod(local, &name, &uid).await.map_err(api_err(format!(
            "reading pod {}/{name}",
            pod.namespace().unwrap_or_default()
        )))?
        else {
            return Ok(false);
        };
        let target = RemoteTarget {
            consumer_cluster_id: self.peer.consumer.clone(),
            namespace: rns.to_string(),
        };
        let remote = match to_remote(&full, &target) {
            Ok(p) => p,
            Err(refusals) => {
                let why: Vec<String> = refusals.iter().map(Refusal::to_string).collect();
                let local_view = LocalPod {
                    status: pod.status.as_ref(),
                    ..Default::default()
                };
                if let Some(Effect::Refuse { reason, message }) =
                    reflect::refuse(&local_view, "OffloadingRefused", why.join("; "))
                {
                    self.refuse(pod, reason, message).await?;
                }
                return Ok(false);
            }
        };
        let mut sp = ShadowPod::new(
            &name,
            ShadowPodSpec {
                consumer_cluster_id: self.peer.consumer.clone(),
                consumer_pod_uid: uid.clone(),
                template: PackedJson::of(&remote).unwrap_or_default(),
            },
        );
        sp.metadata.namespace = Some(rns.to_string());
        sp.metadata.labels = Some(
            [
                (ORIGIN_CLUSTER_LABEL.to_string(), self.peer.consumer.clone()),
                (ORIGIN_UID_LABEL.to_string(), uid),
            ]
            .into(),
        );
        match shadows.create(&PostParams::default(), &sp).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
            Err(e) => Err(api_err(format!(
                "creating ShadowPod {rns}/{name} on the provider"
            ))(e)),
        }
    }

    /// After a failed reconcile: retry; the cause is logged.
    pub fn error_policy(_pod: Arc<PodView>, e: &Error, _ctx: Arc<Self>) -> Action {
        match e {
            Error::NotYet(m) => {
                debug!("{m}");
                Action::requeue(Duration::from_millis(500))
            }
            Error::Api { .. } | Error::Template(..) => {
                warn!("{e}");
                Action::requeue(Duration::from_secs(2))
            }
        }
    }
}

/// True while a store's first list has not arrived (`Store::wait_until_ready` without waiting).
pub(crate) fn pending(ready: impl std::future::Future) -> bool {
    futures::FutureExt::now_or_never(ready).is_none()
}

/// Deletes ShadowPod `name` if it is still the one of UID `uid`.
pub(crate) async fn delete_shadow(shadows: &Api<ShadowPod>, name: &str, uid: &str) -> Result<(), Error> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match shadows.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("deleting ShadowPod {name}"))(e)),
    }
}

/// The last step of a pod's deletion, as a kubelet does it: delete with grace 0 (this exact pod only).
async fn finalize(local: &Api<Pod>, name: &str, uid: &str) -> Result<Action, Error> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match local.delete(name, &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(api_err(format!("finishing the deletion of pod {name}"))(e)),
    }
}

/// The pod `name` with `uid`, whole: first from the apiserver's watch cache (`resourceVersion=0`: no etcd
/// read; the pod is read when it is first sent, and its spec is all but immutable), and only when that
/// cache does not have it yet (another apiserver's watch fed ours), a quorum read. `None`: the pod is gone
/// or replaced.
async fn read_pod(local: &Api<Pod>, name: &str, uid: &str) -> kube::Result<Option<Pod>> {
    let ours = |p: &Pod| p.uid().as_deref() == Some(uid);
    match local.get_with(name, &GetParams::any()).await {
        Ok(p) if ours(&p) => return Ok(Some(p)),
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(local.get_opt(name).await?.filter(ours))
}
