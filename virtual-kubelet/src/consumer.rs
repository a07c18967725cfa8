//! The virtual kubelet of one peering (run by the consumer's `ferry-agent`, one per provider).
//!
//! Start at [`run`]. It keeps three things going:
//! - the **node** ([`heartbeat`]): `Node` `ferry-<provider>` with capacity = the grant and allocatable =
//!   the provider's `ResourceSlice` `status.available`, `Ready` from the provider apiserver's `/livez`
//!   (1 s timeout), `NetworkUnavailable` from the `PeerNetwork`, and its Lease renewed every 10 s;
//! - the **pod reflection** ([`PodReflector`], a kube-runtime `Controller` over the pods bound to the
//!   node): each pod becomes a `ShadowPod` in the namespace its `NamespaceOffloading` maps to, and the
//!   provider pod's status (IPs translated to this cluster's view) comes back. Remote changes trigger the
//!   local pod's reconcile;
//! - per offloaded namespace ([`RemoteNamespace`]): reflectors of the provider's ShadowPods and pods there,
//!   the ConfigMaps and Secrets copied over, and the provider pods' Events brought back.
//!
//! Restart safety: on start everything is adopted by name and the consumer pod's UID; a remote pod is
//! deleted only when its local pod is known to be gone (the local store has synced *and* a direct GET
//! says 404 or another UID), never because a cache is empty or an apiserver is unreachable.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_crds::{NamespaceOffloading, PeerNetwork, ResourceSlice, ShadowPod, ShadowPodSpec};
use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod, PodStatus};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::node::{Observed, keep_transition_times, node_status, virtual_node};
use crate::quantity::Amounts;
use crate::translate::{
    ORIGIN_CLUSTER_LABEL, ORIGIN_UID_LABEL, Refusal, RemoteTarget, to_local_status, to_remote,
};
use crate::{Error, GRANTED_SLICE, VirtualNodeIdentity, api_err};

/// What one virtual kubelet needs to know.
pub struct Peer {
    /// The provider's cluster ID.
    pub provider: String,
    /// This (consumer) cluster's ID.
    pub consumer: String,
    /// The tenant namespace on the provider (home of the `ResourceSlice`).
    pub tenant_namespace: String,
    /// How this cluster sees the provider's pod CIDRs (identity where not remapped).
    pub remaps: BTreeMap<IpNet, IpNet>,
    /// How the provider sees this cluster's pod CIDRs (for the endpoints copied there).
    pub provider_view: BTreeMap<IpNet, IpNet>,
    /// This cluster.
    pub local: Client,
    /// The provider, as the tenant's identity.
    pub remote: Client,
    /// Version string shown as the node's kubelet version.
    pub version: String,
}

impl Peer {
    fn node_name(&self) -> String {
        VirtualNodeIdentity::for_provider(&self.provider).node_name
    }

    fn translate(&self, ip: IpAddr) -> IpAddr {
        ferry_tunnel::ipam::translate(ip, &self.remaps).unwrap_or(ip)
    }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `GET /livez` on the provider's apiserver, 1 s timeout.
pub async fn livez(remote: &Client) -> Result<(), String> {
    let req = http::Request::get("/livez")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(1), remote.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(format!("provider /livez answered {:?}", body.trim())),
        Ok(Err(e)) => Err(format!("provider /livez: {e}")),
        Err(_) => Err("provider /livez did not answer within 1 s".into()),
    }
}

/// Creates the node if it is missing (an existing one is adopted as it is).
async fn ensure_node(peer: &Peer) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(peer.local.clone());
    let node = virtual_node(&VirtualNodeIdentity::for_provider(&peer.provider));
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {
            info!(node = peer.node_name(), "virtual node created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("creating Node {}", peer.node_name()))(e)),
    }
}

async fn renew_lease(peer: &Peer) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(peer.local.clone(), "kube-node-lease");
    let name = peer.node_name();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
    });
    leases
        .patch(
            &name,
            &PatchParams::apply("ferry-virtual-kubelet").force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
}

/// The node loop: Lease every 10 s; `/livez` every 2 s; node status posted on every change and at least
/// every 10 s.
pub async fn heartbeat(peer: Arc<Peer>) {
    let nodes: Api<Node> = Api::all(peer.local.clone());
    let slices: Api<ResourceSlice> = Api::namespaced(peer.remote.clone(), &peer.tenant_namespace);
    let networks: Api<PeerNetwork> = Api::all(peer.local.clone());
    let name = peer.node_name();
    let mut last: Option<Observed> = None;
    let mut granted = Amounts::default();
    let mut available = Amounts::default();
    let mut tick = 0u64;
    loop {
        if tick.is_multiple_of(5)
            && let Err(e) = renew_lease(&peer).await
        {
            warn!(node = name, "renewing the Lease: {e}");
        }
        let live = livez(&peer.remote).await;
        if live.is_ok()
            && let Ok(Ok(Some(s))) =
                tokio::time::timeout(Duration::from_secs(2), slices.get_opt(GRANTED_SLICE)).await
        {
            let st = s.status.as_ref();
            if let Some(g) = st
                .and_then(|s| s.granted.as_ref())
                .map(Amounts::from_resource_amounts)
            {
                granted = g;
                available = st
                    .and_then(|s| s.available.as_ref())
                    .map(Amounts::from_resource_amounts)
                    .unwrap_or(g)
                    .min(g);
            }
        }
        let network = match networks.get_opt(&peer.provider).await {
            Ok(Some(n)) => n.status.and_then(|s| s.phase).map(|p| p == "Connected"),
            _ => None,
        };
        let state = Observed {
            livez: live,
            network,
            granted,
            available,
        };
        if last.as_ref() != Some(&state) || tick.is_multiple_of(5) {
            let mut patch = node_status(&state, &now(), &peer.version);
            match nodes.get_opt(&name).await {
                Ok(Some(old)) => {
                    keep_transition_times(&mut patch, &old);
                    match nodes
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => last = Some(state),
                        Err(e) => warn!(node = name, "posting node status: {e}"),
                    }
                }
                Ok(None) => {
                    if let Err(e) = ensure_node(&peer).await {
                        warn!("{e}");
                    }
                }
                Err(e) => warn!(node = name, "reading the node: {e}"),
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The provider side of one offloaded namespace: reflectors and the task that runs them.
pub struct RemoteNamespace {
    /// The namespace on the provider.
    pub name: String,
    /// ShadowPods there (metadata only: the consumer pod's UID is a label).
    pub shadows: Store<PartialObjectMeta<ShadowPod>>,
    /// Pods there (of this consumer).
    pub pods: Store<Pod>,
    task: tokio::task::JoinHandle<()>,
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
    /// Local pods bound to the virtual node (the controller's own store).
    pub local_pods: Store<Pod>,
    /// `NamespaceOffloading` objects of this cluster.
    pub offloadings: Store<NamespaceOffloading>,
    /// Local namespace → its provider side.
    pub remote: Mutex<HashMap<String, Arc<RemoteNamespace>>>,
    /// Events on local pods.
    pub recorder: Recorder,
    triggers: mpsc::UnboundedSender<ObjectRef<Pod>>,
}

/// The provider namespace `local_ns` maps to, per its `NamespaceOffloading`.
fn mapped(offloadings: &Store<NamespaceOffloading>, provider: &str, local_ns: &str) -> Option<String> {
    offloadings
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(local_ns))
        .find_map(|o| o.status.as_ref()?.remote_namespaces.get(provider).cloned())
}

fn reason_of(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.reason.as_deref())
}

/// The status fields the reflection owns, for comparison (so an unchanged status is not written again).
fn owned_fields(s: &PodStatus) -> serde_json::Value {
    json!({
        "phase": s.phase, "podIP": s.pod_ip, "podIPs": s.pod_ips, "reason": s.reason, "message": s.message,
        "conditions": s.conditions.iter().flatten().map(|c| (&c.type_, &c.status, &c.reason)).collect::<Vec<_>>(),
        "containerStatuses": s.container_statuses.iter().flatten()
            .map(|c| (&c.name, c.ready, c.restart_count, c.state.as_ref().map(|s| (s.running.is_some(), s.terminated.is_some()))))
            .collect::<Vec<_>>(),
    })
}

/// Keeps only what [`owned_fields`] compares (a local pod's cached status is never written back).
fn slim_status(s: &mut PodStatus) {
    s.host_ip = None;
    s.host_ips = None;
    s.start_time = None;
    s.qos_class = None;
    s.nominated_node_name = None;
    s.init_container_statuses = None;
    s.ephemeral_container_statuses = None;
    for c in s.conditions.iter_mut().flatten() {
        c.message = None;
        c.last_probe_time = None;
        c.last_transition_time = None;
    }
    for c in s.container_statuses.iter_mut().flatten() {
        c.image = String::new();
        c.image_id = String::new();
        c.container_id = None;
        c.last_state = None;
        c.allocated_resources = None;
        c.resources = None;
        c.volume_mounts = None;
        if let Some(st) = c.state.as_mut() {
            st.waiting = None;
            if let Some(r) = st.running.as_mut() {
                r.started_at = None;
            }
        }
    }
}

impl PodReflector {
    async fn event(&self, pod: &Pod, kind: EventType, reason: &str, note: String) {
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

    /// Keeps the pod Pending with `reason` (an event says why, once).
    async fn refuse(&self, pod: &Pod, reason: &str, message: String) -> Result<Action, Error> {
        if reason_of(pod) == Some(reason) {
            return Ok(Action::await_change());
        }
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
        Ok(Action::await_change())
    }

    fn remote_ns(&self, local_ns: &str) -> Option<Arc<RemoteNamespace>> {
        self.remote.lock().ok()?.get(local_ns).cloned()
    }

    /// One reconcile of one local pod bound to the virtual node.
    #[tracing::instrument(skip_all, fields(pod = %pod.name_any(), ns = pod.namespace().unwrap_or_default()))]
    pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Self>) -> Result<Action, Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let local: Api<Pod> = Api::namespaced(ctx.peer.local.clone(), &ns);
        let Some(rns_name) = mapped(&ctx.offloadings, &ctx.peer.provider, &ns) else {
            if pod.metadata.deletion_timestamp.is_some() {
                // nothing was sent: finish the deletion as a kubelet would
                return finalize(&local, &name, &uid).await;
            }
            return ctx
                .refuse(
                    &pod,
                    "NamespaceNotOffloaded",
                    format!(
                        "namespace {ns:?} is not offloaded to {}; fix: `ferryctl offload namespace {ns}`, or keep the pod off node {}",
                        ctx.peer.provider,
                        ctx.peer.node_name()
                    ),
                )
                .await;
        };
        let Some(rns) = ctx.remote_ns(&ns).filter(|r| r.name == rns_name) else {
            return Err(Error::NotYet(format!(
                "provider namespace {rns_name} not watched yet"
            )));
        };
        if pending(rns.shadows.wait_until_ready()) || pending(rns.pods.wait_until_ready()) {
            return Err(Error::NotYet(format!(
                "provider namespace {rns_name} not synced yet"
            )));
        }
        let key = ObjectRef::new(&name).within(&rns_name);
        let shadow = rns.shadows.get(&key);
        let remote_pod = rns.pods.get(&ObjectRef::new(&name).within(&rns_name));
        let shadows: Api<ShadowPod> = Api::namespaced(ctx.peer.remote.clone(), &rns_name);
        let rpods: Api<Pod> = Api::namespaced(ctx.peer.remote.clone(), &rns_name);
        let ours = |s: &PartialObjectMeta<ShadowPod>| s.labels().get(ORIGIN_UID_LABEL) == Some(&uid);

        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(s) = shadow
                .as_ref()
                .filter(|s| ours(s) && s.meta().deletion_timestamp.is_none())
            {
                delete_shadow(&shadows, s).await?;
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u32;
                match rpods
                    .delete(&name, &DeleteParams::default().grace_period(grace))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(api_err(format!("deleting provider pod {rns_name}/{name}"))(e)),
                }
            }
            if shadow.as_ref().is_some_and(|s| ours(s)) || remote_pod.is_some() {
                // the provider pod terminates gracefully; its deletion event brings us back
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            return finalize(&local, &name, &uid).await;
        }

        if pod.owner_references().iter().any(|o| o.kind == "DaemonSet") {
            return ctx
                .refuse(
                    &pod,
                    "DaemonSetPod",
                    "a DaemonSet's pod belongs on local nodes; the virtual node is not a host to run it on"
                        .into(),
                )
                .await;
        }
        match shadow {
            Some(s) if !ours(&s) => {
                // a pod of the same name from before (e.g. a StatefulSet's predecessor): replace it
                delete_shadow(&shadows, &s).await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Some(s) => {
                // the provider refused it (policy, grant, cordon): say why on the pod, which stays Pending
                if let Some(why) = s.annotations().get(crate::REFUSAL_ANNOTATION)
                    && remote_pod.is_none()
                {
                    let why: String = why.chars().take(1024).collect();
                    let message = format!("provider {} refused the pod: {why}", ctx.peer.provider);
                    return ctx.refuse(&pod, "ProviderRefused", message).await;
                }
            }
            None => {
                let target = RemoteTarget {
                    consumer_cluster_id: ctx.peer.consumer.clone(),
                    namespace: rns_name.clone(),
                };
                // the cache keeps no specs (memory at 10,000 pods): read the whole pod once, to send it
                let Some(full) = local
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("reading pod {ns}/{name}")))?
                    .filter(|p| p.uid().as_deref() == Some(&uid))
                else {
                    return Ok(Action::await_change());
                };
                let remote = match to_remote(&full, &target) {
                    Ok(p) => p,
                    Err(refusals) => {
                        let why: Vec<String> = refusals.iter().map(Refusal::to_string).collect();
                        return ctx.refuse(&pod, "OffloadingRefused", why.join("; ")).await;
                    }
                };
                let sp = ShadowPod::new(
                    &name,
                    ShadowPodSpec {
                        consumer_cluster_id: ctx.peer.consumer.clone(),
                        consumer_pod_uid: uid.clone(),
                        template: serde_json::to_value(&remote).unwrap_or_default(),
                    },
                );
                let mut sp = sp;
                sp.metadata.namespace = Some(rns_name.clone());
                sp.metadata.labels = Some(
                    [
                        (ORIGIN_CLUSTER_LABEL.to_string(), ctx.peer.consumer.clone()),
                        (ORIGIN_UID_LABEL.to_string(), uid.clone()),
                    ]
                    .into(),
                );
                match shadows.create(&PostParams::default(), &sp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        return Err(api_err(format!(
                            "creating ShadowPod {rns_name}/{name} on the provider"
                        ))(e));
                    }
                }
            }
        }
        if let Some(rp) = remote_pod
            && let Some(rs) = &rp.status
        {
            let want = to_local_status(rs, None, |ip| ctx.peer.translate(ip));
            let have = pod.status.clone().unwrap_or_default();
            // a provider pod that is merely Pending, with nothing to say yet, is not worth a write
            let unschedulable = want
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False");
            let news = want.phase.as_deref() != Some("Pending")
                || want.reason.is_some()
                || want.message.is_some()
                || unschedulable;
            if news && owned_fields(&want) != owned_fields(&have) {
                let mut patch = json!({"status": want});
                // fields the provider no longer reports are cleared, not left stale
                for k in ["reason", "message"] {
                    if patch["status"].get(k).is_none() {
                        patch["status"][k] = serde_json::Value::Null;
                    }
                }
                local
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!("pod {ns}/{name} status")))?;
            }
        }
        Ok(Action::await_change())
    }

    /// After a failed reconcile: retry; the cause is logged.
    pub fn error_policy(_pod: Arc<Pod>, e: &Error, _ctx: Arc<Self>) -> Action {
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
fn pending(ready: impl std::future::Future) -> bool {
    futures::FutureExt::now_or_never(ready).is_none()
}

async fn delete_shadow(shadows: &Api<ShadowPod>, s: &PartialObjectMeta<ShadowPod>) -> Result<(), Error> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: s.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match shadows.delete(&s.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("deleting ShadowPod {}", s.name_any()))(e)),
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

/// Starts the provider-side reflectors of one offloaded namespace, plus ConfigMap/Secret copying and
/// Event reflection.
fn watch_remote(ctx: &Arc<PodReflector>, local_ns: String, rns: String) -> RemoteNamespace {
    let peer = ctx.peer.clone();
    let sel = format!("{ORIGIN_CLUSTER_LABEL}={}", peer.consumer);
    let (shadows, sw) = reflector::store::<PartialObjectMeta<ShadowPod>>();
    let (pods, pw) = reflector::store::<Pod>();
    let cfg = watcher::Config::default().labels(&sel);
    let trigger = |tx: mpsc::UnboundedSender<ObjectRef<Pod>>, local_ns: String| {
        move |name: String| {
            let _ = tx.unbounded_send(ObjectRef::new(&name).within(&local_ns));
        }
    };
    let t1 = trigger(ctx.triggers.clone(), local_ns.clone());
    let ctx1 = ctx.clone();
    let ns1 = local_ns.clone();
    let shadow_watch = reflector(
        sw,
        watcher(
            Api::<PartialObjectMeta<ShadowPod>>::namespaced(peer.remote.clone(), &rns),
            cfg.clone(),
        )
        .modify(|s| s.metadata.managed_fields = None),
    )
    .default_backoff()
    .touched_objects()
    .for_each(move |s| {
        let (t1, ctx1, ns1) = (t1.clone(), ctx1.clone(), ns1.clone());
        async move {
            if let Ok(s) = s {
                t1(s.name_any());
                orphan_check(&ctx1, &ns1, &s).await;
            }
        }
    });
    let t2 = trigger(ctx.triggers.clone(), local_ns.clone());
    // only the status is read back: the spec and managed fields are not kept
    let pod_watch = reflector(
        pw,
        watcher(Api::<Pod>::namespaced(peer.remote.clone(), &rns), cfg).modify(|p| {
            p.metadata.managed_fields = None;
            p.metadata.annotations = None;
            p.metadata.owner_references = None;
            p.spec = None;
        }),
    )
    .default_backoff()
    .touched_objects()
    .for_each(move |p| {
        if let Ok(p) = p {
            t2(p.name_any());
        }
        async {}
    });
    let copies = crate::objects::copy_config(peer.clone(), local_ns.clone(), rns.clone());
    let services = crate::objects::reflect_services(ctx.clone(), local_ns.clone(), rns.clone());
    let events = reflect_events(ctx.clone(), local_ns.clone(), rns.clone());
    let task = tokio::spawn(async move {
        tokio::join!(shadow_watch, pod_watch, copies, events, services);
    });
    RemoteNamespace {
        name: rns,
        shadows,
        pods,
        task,
    }
}

/// A ShadowPod whose local pod is not in the (synced) local store: delete it if a direct GET confirms
/// that pod is gone (404, or the name now belongs to another pod).
async fn orphan_check(ctx: &Arc<PodReflector>, local_ns: &str, s: &PartialObjectMeta<ShadowPod>) {
    let origin_uid = s.labels().get(ORIGIN_UID_LABEL).cloned().unwrap_or_default();
    if s.meta().deletion_timestamp.is_some() || pending(ctx.local_pods.wait_until_ready()) {
        return;
    }
    let key = ObjectRef::new(&s.name_any()).within(local_ns);
    if ctx
        .local_pods
        .get(&key)
        .is_some_and(|p| p.uid().as_deref() == Some(&origin_uid))
    {
        return;
    }
    let local: Api<Pod> = Api::namespaced(ctx.peer.local.clone(), local_ns);
    let gone = match local.get_opt(&s.name_any()).await {
        Ok(None) => true,
        Ok(Some(p)) => p.uid().as_deref() != Some(&origin_uid),
        Err(_) => false, // unknown: never delete on doubt
    };
    if gone {
        info!(
            pod = s.name_any(),
            ns = local_ns,
            "local pod is gone; deleting its ShadowPod"
        );
        let shadows: Api<ShadowPod> =
            Api::namespaced(ctx.peer.remote.clone(), &s.namespace().unwrap_or_default());
        if let Err(e) = delete_shadow(&shadows, s).await {
            warn!("{e}");
        }
    }
}

/// Events about provider pods, published on the local pod ("Scheduled" stays behind: here the pod was
/// scheduled to the virtual node). Only events that happen while running; old ones are not replayed.
async fn reflect_events(ctx: Arc<PodReflector>, local_ns: String, rns: String) {
    let api: Api<CoreEvent> = Api::namespaced(ctx.peer.remote.clone(), &rns);
    let stream = watcher(api, watcher::Config::default().fields("involvedObject.kind=Pod")).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let Ok(watcher::Event::Apply(e)) = ev else {
            continue;
        };
        if e.reason.as_deref() == Some("Scheduled") {
            continue;
        }
        let name = e.involved_object.name.clone().unwrap_or_default();
        let Some(pod) = ctx.local_pods.get(&ObjectRef::new(&name).within(&local_ns)) else {
            continue;
        };
        let kind = if e.type_.as_deref() == Some("Warning") {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = format!(
            "on provider {}: {}",
            ctx.peer.provider,
            e.message.unwrap_or_default()
        );
        ctx.event(&pod, kind, e.reason.as_deref().unwrap_or("Provider"), note)
            .await;
    }
}

/// Keeps one [`RemoteNamespace`] per namespace offloaded to this provider.
async fn track_namespaces(ctx: Arc<PodReflector>, changes: impl futures::Stream<Item = ()>) {
    futures::pin_mut!(changes);
    loop {
        let want: HashMap<String, String> = ctx
            .offloadings
            .state()
            .iter()
            .filter_map(|o| {
                let rns = o
                    .status
                    .as_ref()?
                    .remote_namespaces
                    .get(&ctx.peer.provider)?
                    .clone();
                Some((o.namespace()?, rns))
            })
            .collect();
        let mut started = Vec::new();
        if let Ok(mut m) = ctx.remote.lock() {
            m.retain(|ns, r| want.get(ns) == Some(&r.name));
            for (ns, rns) in &want {
                if !m.contains_key(ns) {
                    info!(ns, remote = rns, "reflecting namespace");
                    m.insert(ns.clone(), Arc::new(watch_remote(&ctx, ns.clone(), rns.clone())));
                    started.push(ns.clone());
                }
            }
        }
        // pods already bound in a newly mapped namespace get another look
        for ns in started {
            for p in ctx.local_pods.state() {
                if p.namespace().as_deref() == Some(&ns) {
                    let _ = ctx.triggers.unbounded_send(ObjectRef::from_obj(p.as_ref()));
                }
            }
        }
        if changes.next().await.is_none() {
            return;
        }
    }
}

/// Runs the virtual kubelet of one peering until the task is dropped.
pub async fn run(peer: Peer) -> Result<(), Error> {
    let peer = Arc::new(peer);
    ensure_node(&peer).await?;
    let node = peer.node_name();
    let (offloadings, ow) = reflector::store::<NamespaceOffloading>();
    let (tx, rx) = mpsc::unbounded();
    let (change_tx, change_rx) = mpsc::unbounded::<()>();
    let offloading_watch = reflector(
        ow,
        watcher(
            Api::<NamespaceOffloading>::all(peer.local.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .try_for_each(move |_| {
        let _ = change_tx.unbounded_send(());
        async { Ok(()) }
    });
    // the controller's own cache of the pods on the node, without managed fields
    let (local_pods, lw) = reflector::store::<Pod>();
    let local_watch = reflector(
        lw,
        watcher(
            Api::<Pod>::all(peer.local.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        .modify(|p| {
            // what reconciles read: metadata (owners, deletion) and the status fields the reflection owns;
            // the spec is fetched on creation
            p.metadata.managed_fields = None;
            p.metadata.annotations = None;
            p.spec = None;
            if let Some(s) = p.status.as_mut() {
                slim_status(s);
            }
        }),
    )
    .default_backoff()
    .applied_objects();
    let controller = Controller::for_stream(local_watch, local_pods)
        .with_config(kube::runtime::controller::Config::default().concurrency(64));
    let ctx = Arc::new(PodReflector {
        peer: peer.clone(),
        local_pods: controller.store(),
        offloadings,
        remote: Mutex::new(HashMap::new()),
        recorder: Recorder::new(
            peer.local.clone(),
            Reporter {
                controller: "ferry-virtual-kubelet".into(),
                instance: Some(node.clone()),
            },
        ),
        triggers: tx,
    });
    let reflection = controller
        .reconcile_on(rx)
        .run(PodReflector::reconcile, PodReflector::error_policy, ctx.clone())
        .for_each(|_| async {});
    info!(node, provider = peer.provider, "virtual kubelet running");
    tokio::select! {
        _ = heartbeat(peer.clone()) => {},
        _ = reflection => warn!("pod reflection stopped"),
        _ = offloading_watch => warn!("NamespaceOffloading watch stopped"),
        _ = track_namespaces(ctx.clone(), change_rx) => {},
    }
    Ok(())
}

/// Removes the virtual node and its Lease (on unpeer). Remote pods are the provider's to clean up.
pub async fn remove_node(local: &Client, provider: &str) -> Result<(), Error> {
    let name = VirtualNodeIdentity::for_provider(provider).node_name;
    for r in [
        Api::<Node>::all(local.clone())
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
        Api::<Lease>::namespaced(local.clone(), "kube-node-lease")
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting virtual node {name}"))(e)),
        }
    }
    Ok(())
}

/// How many local pods are bound to the virtual node of `provider` (for `ferryctl status`).
pub async fn pods_on_node(local: &Client, provider: &str) -> Result<usize, Error> {
    let name = VirtualNodeIdentity::for_provider(provider).node_name;
    let pods: Api<Pod> = Api::all(local.clone());
    let l = pods
        .list_metadata(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await
        .map_err(api_err("listing pods"))?;
    Ok(l.items.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slimming_a_cached_status_keeps_every_field_the_comparison_reads() {
        let st: PodStatus = serde_json::from_value(json!({
            "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}], "hostIP": "10.0.0.1",
            "startTime": "2026-01-01T00:00:00Z", "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2, "image": "nginx", "imageID": "sha",
                                   "containerID": "x://1", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }))
        .unwrap();
        let mut slim = st.clone();
        slim_status(&mut slim);
        assert_eq!(owned_fields(&slim), owned_fields(&st));
        assert!(slim.host_ip.is_none() && slim.start_time.is_none());
        assert_eq!(slim.container_statuses.as_ref().unwrap()[0].image, "");
        let mut changed = st.clone();
        changed.container_statuses.as_mut().unwrap()[0].restart_count = 3;
        assert_ne!(
            owned_fields(&slim),
            owned_fields(&changed),
            "a restart is still seen"
        );
    }
}
