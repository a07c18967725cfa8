//! The provider side of each offloaded namespace (a [`RemoteNamespace`]): reflectors of the provider's
//! ShadowPods and pods there (their changes trigger the local pod's reconcile), the ConfigMaps, Secrets
//! and Services copied over ([`crate::objects`]), and the provider pods' Events brought back. A ShadowPod
//! whose local pod is gone is deleted only when a direct GET confirms it ([`orphan_check`]).

use std::collections::HashMap;
use std::sync::Arc;

use ferry_crds::ShadowPod;
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::lite::{Lite, RemotePodLite, ShadowLite};
use crate::pods::{PodReflector, RemoteNamespace, delete_shadow, pending};
use crate::reflect::{PodView, RemotePodView, slim_remote_status};
use crate::translate::{ORIGIN_CLUSTER_LABEL, ORIGIN_UID_LABEL};

/// Starts the provider-side reflectors of one offloaded namespace, plus ConfigMap/Secret copying and
/// Event reflection.
fn watch_remote(ctx: &Arc<PodReflector>, local_ns: String, rns: String) -> RemoteNamespace {
    let peer = ctx.peer.clone();
    let sel = format!("{ORIGIN_CLUSTER_LABEL}={}", peer.consumer);
    let shadows = Arc::new(Lite::<ShadowLite>::default());
    let pods = Arc::new(Lite::<RemotePodLite>::default());
    let cfg = watcher::Config::default().labels(&sel);
    let trigger = |tx: mpsc::UnboundedSender<ObjectRef<PodView>>, local_ns: String| {
        move |name: String| {
            let _ = tx.unbounded_send(ObjectRef::new(&name).within(&local_ns));
        }
    };
    let t1 = trigger(ctx.triggers.clone(), local_ns.clone());
    let (ctx1, ns1, store1) = (ctx.clone(), local_ns.clone(), shadows.clone());
    let shadow_watch = watcher(
        Api::<PartialObjectMeta<ShadowPod>>::namespaced(peer.remote.clone(), &rns),
        cfg.clone(),
    )
    .default_backoff()
    .for_each(move |ev| {
        let (t1, ctx1, ns1) = (t1.clone(), ctx1.clone(), ns1.clone());
        let touched = ev.ok().and_then(|ev| {
            store1.apply(&ev, ShadowLite::of);
            match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s) => {
                    Some(s)
                }
                _ => None,
            }
        });
        async move {
            if let Some(s) = touched {
                t1(s.name_any());
                orphan_check(&ctx1, &ns1, &s).await;
            }
        }
    });
    let t2 = trigger(ctx.triggers.clone(), local_ns.clone());
    let store2 = pods.clone();
    // only the status is read back: the spec is never parsed, and the store keeps the status packed
    let pod_watch = watcher(Api::<RemotePodView>::namespaced(peer.remote.clone(), &rns), cfg)
        .default_backoff()
        .for_each(move |ev| {
            if let Ok(mut ev) = ev {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = &mut ev
                    && let Some(s) = p.status.as_mut()
                {
                    slim_remote_status(s);
                }
                store2.apply(&ev, RemotePodLite::of);
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p) =
                    ev
                {
                    t2(p.name_any());
                }
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
        if let Err(e) = delete_shadow(&shadows, &s.name_any(), s.uid().as_deref().unwrap_or_default()).await {
            warn!("{e}");
        }
    }
}

/// A local pod that the watch saw deleted (UID `uid`): its ShadowPod goes too, when the store still holds
/// it ([`crate::reflect::shadow_outlives`]). A watch's delete event is certain, so no GET confirms it, as
/// [`orphan_check`] needs for a pod merely missing from a cache. A failed deletion is left to
/// [`orphan_check`] (the next relist of the provider's ShadowPods, as after the provider was away).
pub(crate) async fn deleted_locally(ctx: &PodReflector, local_ns: &str, name: &str, uid: &str) {
    let Some(rns) = ctx.remote_ns(local_ns) else {
        return;
    };
    let Some(s) = rns.shadows.get(name) else {
        return;
    };
    let seen = crate::reflect::Shadow {
        origin_uid: s.origin_uid.as_deref(),
        deleting: s.deleting,
        refusal: None,
    };
    if !crate::reflect::shadow_outlives(uid, Some(&seen)) {
        return;
    }
    info!(
        pod = name,
        ns = local_ns,
        "local pod deleted without a grace period; deleting its ShadowPod"
    );
    let shadows: Api<ShadowPod> = Api::namespaced(ctx.peer.remote.clone(), &rns.name);
    if let Err(e) = delete_shadow(&shadows, name, &s.uid).await {
        warn!("{e}");
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
pub(crate) async fn track_namespaces(ctx: Arc<PodReflector>, changes: impl futures::Stream<Item = ()>) {
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
