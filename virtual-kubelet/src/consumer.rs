//! The virtual kubelet of one peering (run by the consumer's `ferry-agent`, one per provider).
//!
//! Start at [`run`]. It keeps three things going, each in its own module:
//! - the **node** ([`crate::heartbeat`]): the `Node`, its status and its Lease;
//! - the **pod reflection** ([`crate::pods`], a kube-runtime `Controller` over the pods bound to the
//!   node, deciding in [`crate::reflect`]): each pod becomes a `ShadowPod` in the namespace its
//!   `NamespaceOffloading` maps to, and the provider pod's status (IPs translated to this cluster's view)
//!   comes back;
//! - per offloaded namespace ([`crate::remote`]): reflectors of the provider's ShadowPods and pods there,
//!   the ConfigMaps, Secrets and Services copied over ([`crate::objects`]), and the provider pods' Events
//!   brought back.
//!
//! Restart safety: on start everything is adopted by name and the consumer pod's UID; a remote pod is
//! deleted only when its local pod is known to be gone (the local store has synced *and* a direct GET
//! says 404 or another UID), never because a cache is empty or an apiserver is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_crds::NamespaceOffloading;
use ferry_plumbing::events::{Recorder, Reporter};
use futures::channel::mpsc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::heartbeat::ensure_node;
pub use crate::heartbeat::{heartbeat, livez, remove_node};
pub use crate::peer::Peer;
pub use crate::pods::{PodReflector, RemoteNamespace};
use crate::reflect::PodView;
use crate::remote::track_namespaces;
use crate::{Error, VirtualNodeIdentity, api_err};

/// Pod reconciles at once, unless the agent is told otherwise ([`crate::peer::Pace`]).
pub const RECONCILES: u16 = 16;

/// Runs the virtual kubelet of one peering until the task is dropped.
pub async fn run(peer: Arc<Peer>) -> Result<(), Error> {
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
    let (local_pods, lw) = reflector::store::<PodView>();
    // pods the watch saw deleted: (namespace, name, UID), for their ShadowPods (`remote::deleted_locally`)
    let (deleted_tx, deleted_rx) = mpsc::unbounded::<(String, String, String)>();
    let local_watch = reflector(
        lw,
        watcher(
            Api::<PodView>::all(peer.local.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        .modify(|p| {
            // what reconciles read: name, UID, deletion, the owners' kinds and whether one is the
            // controller, and the status fields the reflection owns (the only ones `PodView` parses); the
            // spec is never parsed here, it is read on creation
            slim_local_meta(&mut p.metadata);
        }),
    )
    .default_backoff()
    .inspect({
        // a pod that leaves the node (deleted, whoever finished it) leaves the reflection's gauges, and
        // its ShadowPod if one is left (a forced deletion)
        let provider = peer.provider.clone();
        move |e| {
            if let Ok(watcher::Event::Delete(p)) = e {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                crate::metrics::observe(&provider, &uid, None, false);
                let _ = deleted_tx.unbounded_send((p.namespace().unwrap_or_default(), p.name_any(), uid));
            }
        }
    })
    .applied_objects();
    // 64 reconciles at once held four times the connections and their buffers of 16 (10 MiB at 10,000
    // pods, 7 MiB at 1,000) for the same pace at both sizes (README); the agent's --pod-reconciles
    // status patches go out in ticks when the agent is given one (zero: each at once, from its reconcile)
    let (statuses, status_rx) = crate::status_writer::Statuses::new(peer.pace.status_tick);
    let writer = crate::status_writer::run(peer.clone(), statuses.clone(), status_rx, tx.clone());
    let controller = Controller::for_stream(local_watch, local_pods)
        .with_config(kube::runtime::controller::Config::default().concurrency(peer.pace.reconciles.max(1)));
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
        statuses,
    });
    let reflection = controller
        .reconcile_on(rx)
        .run(
            |pod, ctx| {
                ferry_plumbing::metrics::reconciled("pod-reflection", PodReflector::reconcile(pod, ctx))
            },
            PodReflector::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let deleted =
        deleted_rx.for_each_concurrent(usize::from(peer.pace.reconciles.max(1)), |(ns, name, uid)| {
            let ctx = ctx.clone();
            async move { crate::remote::deleted_locally(&ctx, &ns, &name, &uid).await }
        });
    info!(node, provider = peer.provider, "virtual kubelet running");
    tokio::select! {
        _ = heartbeat(peer.clone()) => {},
        _ = reflection => warn!("pod reflection stopped"),
        _ = deleted => warn!("deleted pods' stream stopped"),
        _ = writer => warn!("status writer stopped"),
        _ = offloading_watch => warn!("NamespaceOffloading watch stopped"),
        _ = track_namespaces(ctx.clone(), change_rx) => {},
    }
    Ok(())
}

/// Drops what the reflection never reads of a cached local pod's metadata. An owner reference keeps its
/// kind and controller flag only ([`crate::pods`] asks "a DaemonSet's?" and "controlled?").
pub fn slim_local_meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.labels = None;
    m.generate_name = None;
    for o in m.owner_references.iter_mut().flatten() {
        o.api_version = String::new();
        o.name = String::new();
        o.uid = String::new();
        o.block_owner_deletion = None;
    }
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
