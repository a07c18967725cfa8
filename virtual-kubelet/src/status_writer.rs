//! The local pods' status patches, sent in ticks.
//!
//! Every status patch of a pod wakes its ReplicaSet's and then its Deployment's sync in the consumer's
//! controller-manager, and each of those syncs lists and matches every pod of the namespace. In a direct
//! burst the pods turn Ready while the ReplicaSet is still creating them; in an offloaded burst their
//! statuses come back from the provider over the rest of the burst, a few at a time, and each few cost
//! another O(pods) sync: quadratic in the burst (README, "Profiles of the control planes"). With ticks on
//! (`--status-tick-ms`, by default [`TICK`]) the reflection does not patch at once: a
//! patch waits for the next tick, where all waiting patches go out together and the controllers' queues
//! merge their wake-ups into one sync.
//!
//! A tick after a quiet spell starts at once: one pod's status is not delayed; under a stream of them each
//! waits at most one tick. A pod has at most one waiting patch (a newer one replaces it: both were
//! computed from the pod's cached status, and the newer is the whole difference to the newer provider
//! status). A patch names the pod's UID, so it never lands on a new pod of the same name. One that fails
//! otherwise brings the pod back to a reconcile at once, which computes it anew and sends it itself, so a
//! failure there goes through the controller's error backoff (no retry timer here).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::peer::Peer;
use crate::reflect::PodView;

/// The default tick: under a stream of patches, the longest one waits (`--status-tick-ms`; 0 turns ticks
/// off). In the README's A/B, 250 ms made a 10,000-pod burst 26 % faster and 1,000-pod bursts 8–12 %
/// slower (README, "Profiles of the control planes").
pub const TICK: Duration = Duration::from_millis(250);

/// One local pod's status patch.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPatch {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID (the patch applies to this pod only).
    pub uid: String,
    /// The merge patch (`{"status": …}`).
    pub patch: serde_json::Value,
    /// Whether the pod was Ready already when the patch was computed (for the reflection lag metric).
    pub locally_ready: bool,
}

impl StatusPatch {
    /// The merge patch as sent: the status and, as a precondition, the pod's UID (a pod of the same name
    /// but another UID refuses it).
    pub fn body(&self) -> serde_json::Value {
        let mut body = self.patch.clone();
        if let Some(o) = body.as_object_mut() {
            o.insert("metadata".into(), serde_json::json!({ "uid": self.uid }));
        }
        body
    }
}

/// Where the reflection hands its status patches (shared by its reconciles and the writer).
#[derive(Debug)]
pub struct Statuses {
    /// To the writer; `None` when ticks are off.
    tx: Option<mpsc::UnboundedSender<StatusPatch>>,
    /// Pods (namespace, name) whose last patch failed in a tick: the next is sent by the reconcile.
    failed: Mutex<HashSet<(String, String)>>,
}

impl Statuses {
    /// The queue and the writer's end of it, for ticks of `tick` (zero: off, no writer's end).
    pub fn new(tick: Duration) -> (Arc<Self>, Option<mpsc::UnboundedReceiver<StatusPatch>>) {
        let (tx, rx) = if tick.is_zero() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded();
            (Some(tx), Some(rx))
        };
        let me = Self {
            tx,
            failed: Mutex::default(),
        };
        (Arc::new(me), rx)
    }

    /// Queues `p` for its tick, or gives it back to be sent at once by the caller: ticks are off, the
    /// writer is gone, or the pod's last patch failed in a tick (the caller's error then takes the
    /// reconcile's backoff).
    pub fn queue(&self, p: StatusPatch) -> Option<StatusPatch> {
        let key = (p.namespace.clone(), p.name.clone());
        if self.failed.lock().expect("lock").remove(&key) {
            return Some(p);
        }
        match &self.tx {
            Some(tx) => tx.unbounded_send(p).err().map(|e| e.into_inner()),
            None => Some(p),
        }
    }

    fn failed(&self, p: &StatusPatch) {
        self.failed
            .lock()
            .expect("lock")
            .insert((p.namespace.clone(), p.name.clone()));
    }
}

/// The patches waiting for a tick, one per pod, the newest kept (pure).
#[derive(Debug, Default)]
pub struct Batch {
    waiting: HashMap<(String, String), StatusPatch>,
}

impl Batch {
    /// Adds `p`, replacing the patch waiting for the same pod (namespace and name), if any.
    pub fn put(&mut self, p: StatusPatch) {
        self.waiting.insert((p.namespace.clone(), p.name.clone()), p);
    }

    /// How many pods have a patch waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes every waiting patch.
    pub fn take(&mut self) -> Vec<StatusPatch> {
        self.waiting.drain().map(|(_, p)| p).collect()
    }
}

/// When the tick that sends a patch arriving `now` starts, the last one having started at `last` (pure):
/// at once after a quiet spell of a tick or more, else one tick after the last.
pub fn tick_at(last: Option<Instant>, now: Instant, tick: Duration) -> Instant {
    match last {
        Some(l) if now < l + tick => l + tick,
        _ => now,
    }
}

/// Gathers patches from `rx` into ticks of `tick` and hands each tick's batch to `send`, awaiting it
/// before the next tick starts (a slow apiserver slows the ticks, not the reflection's memory: a pod keeps
/// one waiting patch). Ends when `rx` ends, after sending what it holds.
pub async fn batches<F, Fut>(mut rx: mpsc::UnboundedReceiver<StatusPatch>, tick: Duration, mut send: F)
where
    F: FnMut(Vec<StatusPatch>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut batch = Batch::default();
    let mut last: Option<Instant> = None;
    let mut open = true;
    while open {
        match rx.next().await {
            Some(p) => batch.put(p),
            None => break,
        }
        let at = tick_at(last, Instant::now(), tick);
        let until = tokio::time::sleep_until(at);
        tokio::pin!(until);
        loop {
            tokio::select! {
                biased;
                p = rx.next() => match p {
                    Some(p) => batch.put(p),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = &mut until => break,
            }
        }
        // what is queued already joins this tick
        while let Ok(p) = rx.try_recv() {
            batch.put(p);
        }
        last = Some(Instant::now());
        send(batch.take()).await;
    }
}

/// The writer of one peering's local pod statuses: runs [`batches`] over the reflection's patches (`rx`
/// from [`Statuses::new`]) for as long as the virtual kubelet runs; with ticks off (`rx` `None`) there is
/// nothing to write, and it waits. A patch that fails (not because the pod went or was replaced) marks its
/// pod in `statuses` and sends it to `retry`, the reflection's trigger.
pub async fn run(
    peer: Arc<Peer>,
    statuses: Arc<Statuses>,
    rx: Option<mpsc::UnboundedReceiver<StatusPatch>>,
    retry: mpsc::UnboundedSender<ObjectRef<PodView>>,
) {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    let concurrency = usize::from(peer.pace.reconciles.max(1));
    batches(rx, peer.pace.status_tick, |batch| {
        let (peer, statuses, retry) = (peer.clone(), statuses.clone(), retry.clone());
        async move {
            crate::metrics::status_batch(&peer.provider, batch.len());
            stream::iter(batch)
                .for_each_concurrent(concurrency, |p| {
                    let (peer, statuses, retry) = (peer.clone(), statuses.clone(), retry.clone());
                    async move {
                        if let Err(e) = write(&peer, &p).await {
                            warn!(
                                pod = p.name,
                                ns = p.namespace,
                                "status patch failed (its reconcile sends it again): {e}"
                            );
                            statuses.failed(&p);
                            let _ = retry.unbounded_send(ObjectRef::new(&p.name).within(&p.namespace));
                        }
                    }
                })
                .await;
        }
    })
    .await;
}

/// Sends one patch now, and records the pod's reflection lag when it made the pod Ready. A pod that went
/// (404) or was replaced by one of the same name (its UID differs: 409 or 422) is not an error: there is
/// nothing to patch, and a new pod has its own reconcile.
pub async fn write(peer: &Peer, p: &StatusPatch) -> Result<(), crate::Error> {
    let pods: Api<Pod> = Api::namespaced(peer.local.clone(), &p.namespace);
    match pods
        .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&p.body()))
        .await
    {
        Ok(_) => {
            let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
            if let Some(lag) = crate::metrics::lag_of(&p.patch, p.locally_ready, now) {
                crate::metrics::lag(&peer.provider, &p.uid, lag);
            }
            Ok(())
        }
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => {
            debug!(
                pod = p.name,
                ns = p.namespace,
                code = e.code,
                "status patch not applied: {}",
                e.message
            );
            Ok(())
        }
        Err(e) => Err(crate::api_err(format!("pod {}/{} status", p.namespace, p.name))(
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;

    fn patch(name: &str, phase: &str) -> StatusPatch {
        StatusPatch {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            patch: json!({"status": {"phase": phase}}),
            locally_ready: false,
        }
    }

    #[test]
    fn the_body_names_the_pods_uid_beside_the_status() {
        assert_eq!(
            patch("a", "Running").body(),
            json!({"status": {"phase": "Running"}, "metadata": {"uid": "uid-a"}})
        );
    }

    #[test]
    fn a_pod_keeps_one_waiting_patch_the_newest() {
        let mut b = Batch::default();
        b.put(patch("a", "Pending"));
        b.put(patch("b", "Running"));
        b.put(patch("a", "Running"));
        assert_eq!(b.len(), 2);
        let mut got = b.take();
        got.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(got, vec![patch("a", "Running"), patch("b", "Running")]);
        assert!(b.is_empty());
        // same name in another namespace is another pod
        let mut other = patch("a", "Failed");
        other.namespace = "other".into();
        b.put(patch("a", "Running"));
        b.put(other);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_patch_is_queued_unless_ticks_are_off_or_its_pods_last_one_failed() {
        let (off, none) = Statuses::new(Duration::ZERO);
        assert!(none.is_none());
        assert_eq!(off.queue(patch("a", "Running")), Some(patch("a", "Running")));

        let (on, rx) = Statuses::new(TICK);
        let mut rx = rx.expect("a writer's end");
        assert_eq!(on.queue(patch("a", "Running")), None);
        assert_eq!(rx.try_recv().ok(), Some(patch("a", "Running")));
        // failed in a tick: the next is the reconcile's to send, and only the next
        on.failed(&patch("a", "Running"));
        assert_eq!(on.queue(patch("a", "Ready")), Some(patch("a", "Ready")));
        assert_eq!(on.queue(patch("a", "Ready")), None);
        assert_eq!(on.queue(patch("b", "Running")), None);
        // the writer gone: sent at once
        drop(rx);
        assert_eq!(on.queue(patch("c", "Running")), Some(patch("c", "Running")));
    }

    #[test]
    fn a_tick_starts_at_once_after_a_quiet_spell_else_one_tick_after_the_last() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(250);
        assert_eq!(tick_at(None, t0, tick), t0);
        let now = t0 + Duration::from_millis(100);
        assert_eq!(tick_at(Some(t0), now, tick), t0 + tick);
        let late = t0 + Duration::from_millis(250);
        assert_eq!(tick_at(Some(t0), late, tick), late);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(tick_at(Some(t0), later, tick), later);
    }

    /// A batch as sent: milliseconds after the start, and its pods' `name=phase`, sorted.
    type Sent = (u64, Vec<String>);

    #[tokio::test(start_paused = true)]
    async fn patches_go_at_once_after_a_quiet_spell_and_in_ticks_under_a_stream() {
        let start = Instant::now();
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded();
        let log = sent.clone();
        let writer = tokio::spawn(batches(rx, TICK, move |batch| {
            let mut names: Vec<String> = batch
                .into_iter()
                .map(|p| {
                    format!(
                        "{}={}",
                        p.name,
                        p.patch["status"]["phase"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            names.sort();
            log.lock()
                .unwrap()
                .push((start.elapsed().as_millis() as u64, names));
            async {}
        }));
        let at = |ms: u64| tokio::time::sleep_until(start + Duration::from_millis(ms));
        // quiet: the first goes at once
        tx.unbounded_send(patch("a", "Running")).unwrap();
        at(10).await;
        // a stream: these wait for the tick at 250 ms, b's newer patch replacing its older one
        tx.unbounded_send(patch("b", "Pending")).unwrap();
        at(60).await;
        tx.unbounded_send(patch("c", "Running")).unwrap();
        at(120).await;
        tx.unbounded_send(patch("b", "Running")).unwrap();
        // one during the next tick's wait goes at 500 ms
        at(300).await;
        tx.unbounded_send(patch("d", "Running")).unwrap();
        // quiet again: at once
        at(2000).await;
        tx.unbounded_send(patch("e", "Running")).unwrap();
        at(2100).await;
        drop(tx);
        writer.await.unwrap();
        let sent = sent.lock().unwrap().clone();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            sent,
            vec![
                (0, names(&["a=Running"])),
                (250, names(&["b=Running", "c=Running"])),
                (500, names(&["d=Running"])),
                (2000, names(&["e=Running"])),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_held_is_sent_when_the_patches_end() {
        let sent: Arc<Mutex<Vec<usize>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded();
        let log = sent.clone();
        tx.unbounded_send(patch("a", "Running")).unwrap();
        tx.unbounded_send(patch("b", "Running")).unwrap();
        drop(tx);
        batches(rx, TICK, move |batch| {
            log.lock().unwrap().push(batch.len());
            async {}
        })
        .await;
        assert_eq!(*sent.lock().unwrap(), vec![2]);
    }
}
