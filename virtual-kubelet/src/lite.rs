//! The consumer's caches of the provider side of one offloaded namespace, kept small: a [`Lite`] store
//! holds, for each watched object, only the value the reflection reads of it ([`ShadowLite`] of a
//! `ShadowPod`, [`RemotePodLite`] of a provider pod), keyed by name (one store per namespace). A
//! kube-runtime reflector store would keep each whole deserialized object: an `ObjectMeta` with its label
//! map and, for a pod, a `PodStatus` with room for every field, about 4 KB per offloaded pod for the two
//! stores where these keep about 1 KB.
//!
//! Readiness follows a reflector's: the store is ready once the first list is complete, and a relist
//! replaces the contents at once when it is complete (pure: [`Lite::apply`] takes the watcher's events).

use std::collections::HashMap;
use std::sync::RwLock;

use ferry_crds::ShadowPod;
use k8s_openapi::api::core::v1::PodStatus;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use crate::reflect::RemotePodView;
use crate::translate::ORIGIN_UID_LABEL;

#[derive(Debug)]
struct State<V> {
    objects: HashMap<Box<str>, V>,
    // the relist under way, replacing `objects` when complete
    listing: Option<HashMap<Box<str>, V>>,
    ready: bool,
}

/// Small values of the objects of one namespace, by name.
#[derive(Debug)]
pub struct Lite<V> {
    state: RwLock<State<V>>,
}

impl<V> Default for Lite<V> {
    fn default() -> Self {
        Self {
            state: RwLock::new(State {
                objects: HashMap::new(),
                listing: None,
                ready: false,
            }),
        }
    }
}

impl<V: Clone> Lite<V> {
    /// The value kept of object `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<V> {
        self.state.read().ok()?.objects.get(name).cloned()
    }

    /// Whether the first list is complete.
    pub fn ready(&self) -> bool {
        self.state.read().is_ok_and(|s| s.ready)
    }

    /// How many objects are kept.
    pub fn len(&self) -> usize {
        self.state.read().map(|s| s.objects.len()).unwrap_or(0)
    }

    /// Whether no object is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watcher event; `lite` makes the value kept of an object.
    pub fn apply<K: ResourceExt>(&self, ev: &watcher::Event<K>, lite: impl Fn(&K) -> V) {
        let Ok(mut s) = self.state.write() else {
            return;
        };
        match ev {
            watcher::Event::Init => s.listing = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let v = lite(o);
                s.listing
                    .get_or_insert_with(HashMap::new)
                    .insert(o.name_any().into(), v);
            }
            watcher::Event::InitDone => {
                if let Some(listed) = s.listing.take() {
                    s.objects = listed;
                }
                s.ready = true;
            }
            watcher::Event::Apply(o) => {
                let v = lite(o);
                s.objects.insert(o.name_any().into(), v);
            }
            watcher::Event::Delete(o) => {
                s.objects.remove(o.name_any().as_str());
            }
        }
    }
}

/// What the reflection reads of a `ShadowPod`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShadowLite {
    /// Its UID (the precondition of its deletion).
    pub uid: Box<str>,
    /// The UID of the consumer pod it was made for (its label).
    pub origin_uid: Option<Box<str>>,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// The provider's refusal, if it refused it.
    pub refusal: Option<Box<str>>,
}

impl ShadowLite {
    /// The value kept of a watched `ShadowPod`.
    pub fn of(s: &PartialObjectMeta<ShadowPod>) -> Self {
        Self {
            uid: s.metadata.uid.as_deref().unwrap_or_default().into(),
            origin_uid: s.labels().get(ORIGIN_UID_LABEL).map(|u| u.as_str().into()),
            deleting: s.metadata.deletion_timestamp.is_some(),
            refusal: s
                .annotations()
                .get(crate::REFUSAL_ANNOTATION)
                .map(|r| r.as_str().into()),
        }
    }
}

/// What the reflection reads of a provider pod: its status (the fields that come back), packed as JSON
/// (a few hundred bytes where a `PodStatus` with its conditions and container statuses takes 2–3 KB), and
/// unpacked only when its local pod is reconciled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemotePodLite {
    status: Option<Box<[u8]>>,
}

impl RemotePodLite {
    /// The value kept of a watched provider pod.
    pub fn of(p: &RemotePodView) -> Self {
        Self {
            status: p
                .status
                .as_ref()
                .and_then(|s| serde_json::to_vec(s).ok())
                .map(Vec::into_boxed_slice),
        }
    }

    /// The pod's status, if it reports one.
    pub fn status(&self) -> Option<PodStatus> {
        serde_json::from_slice(self.status.as_deref()?).ok()
    }

    /// Bytes the packed status takes.
    pub fn packed_len(&self) -> usize {
        self.status.as_deref().map_or(0, <[u8]>::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, phase: &str) -> RemotePodView {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "r"}, "status": {"phase": phase}}),
        )
        .unwrap()
    }

    #[test]
    fn a_store_is_ready_after_its_first_list_and_a_relist_replaces_it_whole() {
        let l = Lite::<RemotePodLite>::default();
        let phase =
            |l: &Lite<RemotePodLite>, n: &str| l.get(n).and_then(|p| p.status()).and_then(|s| s.phase);
        l.apply(&watcher::Event::Init, RemotePodLite::of);
        l.apply(&watcher::Event::InitApply(pod("a", "Running")), RemotePodLite::of);
        assert!(
            !l.ready() && l.get("a").is_none(),
            "nothing shows before the list completes"
        );
        l.apply(&watcher::Event::InitDone, RemotePodLite::of);
        assert!(l.ready());
        assert_eq!(phase(&l, "a").as_deref(), Some("Running"));
        l.apply(&watcher::Event::Apply(pod("b", "Pending")), RemotePodLite::of);
        l.apply(&watcher::Event::Apply(pod("a", "Succeeded")), RemotePodLite::of);
        assert_eq!(phase(&l, "a").as_deref(), Some("Succeeded"));
        l.apply(&watcher::Event::Delete(pod("b", "Pending")), RemotePodLite::of);
        assert!(l.get("b").is_none() && l.len() == 1);
        // a relist (after a lost watch): the old contents stay readable until it completes, then go whole
        l.apply(&watcher::Event::Init, RemotePodLite::of);
        l.apply(&watcher::Event::InitApply(pod("c", "Running")), RemotePodLite::of);
        assert!(l.get("a").is_some() && l.get("c").is_none() && l.ready());
        l.apply(&watcher::Event::InitDone, RemotePodLite::of);
        assert!(l.get("a").is_none(), "deleted while the watch was lost");
        assert_eq!(phase(&l, "c").as_deref(), Some("Running"));
    }

    #[test]
    fn a_packed_status_unpacks_to_what_was_watched_and_is_small() {
        let watched: RemotePodView = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "r"},
            "status": {"phase": "Running", "podIP": "10.0.0.7", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "busybox",
                    "imageID": "sha256:1", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        }))
        .unwrap();
        let lite = RemotePodLite::of(&watched);
        assert_eq!(lite.status(), watched.status);
        assert!(lite.packed_len() < 400, "{}", lite.packed_len());
        assert!(std::mem::size_of::<PodStatus>() > 300);
        assert_eq!(RemotePodLite::of(&RemotePodView::default()).status(), None);
    }

    #[test]
    fn a_shadow_keeps_its_uid_origin_deletion_and_refusal() {
        let s: PartialObjectMeta<ShadowPod> = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod",
            "metadata": {"name": "p", "namespace": "r", "uid": "s-1",
                "labels": {ORIGIN_UID_LABEL: "u-1", "other": "x"},
                "annotations": {crate::REFUSAL_ANNOTATION: "OverGrant: no room"},
                "deletionTimestamp": "2026-01-01T00:00:00Z"}
        }))
        .unwrap();
        assert_eq!(
            ShadowLite::of(&s),
            ShadowLite {
                uid: "s-1".into(),
                origin_uid: Some("u-1".into()),
                deleting: true,
                refusal: Some("OverGrant: no room".into()),
            }
        );
    }
}
