//! Events on objects, as a controller publishes them ([`Recorder`]): an event repeated within six minutes
//! (same object, type, reason, action, related object) becomes a series on the first one (its count and
//! last time patched), as kube-runtime's `Recorder` does. Unlike that recorder, what is remembered of each
//! event is a hash of its key, its name, count and time, in a bounded cache ([`Series`], oldest forgotten
//! first): a controller that publishes an event for each of 10,000 pods keeps about a hundred bytes for
//! each instead of the whole Event, and a publish costs O(1) instead of a scan of every cached event.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long a repeated event joins the series of the first (as client-go and kube-runtime do).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How many events a [`Recorder`] remembers at most.
pub const REMEMBERED: usize = 4096;

/// What to write for an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A new Event object.
    Create,
    /// Another occurrence of the Event `name`: its series count becomes `count`.
    Repeat {
        /// The Event's name.
        name: String,
        /// The series count to write.
        count: i32,
    },
}

#[derive(Debug)]
struct Seen {
    name: Box<str>,
    count: i32,
    last: i64,
}

/// The events written lately, by key hash (pure; times in microseconds). Bounded twice: entries older
/// than the window are forgotten, and beyond `cap` entries the oldest go first.
#[derive(Debug)]
pub struct Series {
    seen: HashMap<u64, Seen>,
    // (time written, key) in the order written; a key written again has a newer mark, its old one is stale
    order: VecDeque<(i64, u64)>,
    cap: usize,
    window: i64,
}

impl Series {
    /// An empty cache of at most `cap` events, each remembered for `window`.
    pub fn new(cap: usize, window: Duration) -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            window: i64::try_from(window.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// How many events are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget(&mut self, now: i64) {
        while let Some(&(at, key)) = self.order.front() {
            let expired = at.saturating_add(self.window) <= now;
            let over = self.seen.len() > self.cap || self.order.len() > 2 * self.cap;
            if !expired && !over {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key).is_some_and(|s| s.last == at) {
                self.seen.remove(&key);
            }
        }
    }

    /// What to write for the event `key` at `now`.
    pub fn next(&mut self, key: u64, now: i64) -> Next {
        self.forget(now);
        match self.seen.get(&key) {
            Some(s) => Next::Repeat {
                name: s.name.to_string(),
                count: s.count.saturating_add(1),
            },
            None => Next::Create,
        }
    }

    /// Records that the event `key` was written at `now` as `name`, `count` times so far.
    pub fn record(&mut self, key: u64, name: &str, count: i32, now: i64) {
        self.seen.insert(
            key,
            Seen {
                name: name.into(),
                count,
                last: now,
            },
        );
        self.order.push_back((now, key));
        self.forget(now);
    }
}

/// The key of an event: what makes two events the same series.
pub fn key(reporter: &Reporter, ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (&reporter.controller, &reporter.instance).hash(&mut h);
    (matches!(ev.type_, EventType::Warning), &ev.action, &ev.reason).hash(&mut h);
    for r in std::iter::once(regarding).chain(ev.secondary.as_ref()) {
        (
            &r.api_version,
            &r.kind,
            &r.namespace,
            &r.name,
            &r.uid,
            &r.field_path,
        )
            .hash(&mut h);
    }
    h.finish()
}

/// Publishes events (`events.k8s.io/v1`) as one reporter, joining repeats into series.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    series: Mutex<Series>,
}

impl Recorder {
    /// A recorder publishing as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::new(Series::new(REMEMBERED, SERIES_WINDOW)),
        }
    }

    /// Publishes `ev` about `regarding`, in its namespace (`default` for a cluster-scoped object).
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let micros = now.as_microsecond();
        let key = key(&self.reporter, ev, regarding);
        let next = self
            .series
            .lock()
            .map(|mut s| s.next(key, micros))
            .unwrap_or(Next::Create);
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        if let Next::Repeat { name, count } = next {
            let series = serde_json::json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    if let Ok(mut s) = self.series.lock() {
                        s.record(key, &name, count, micros);
                    }
                    return Ok(());
                }
                // the first one is gone (expired or deleted): start again
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(ev, regarding, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        if let Ok(mut s) = self.series.lock() {
            s.record(key, &name, 1, micros);
        }
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let base = regarding.name.as_deref().unwrap_or(&self.reporter.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_repeat_within_the_window_joins_the_series_and_one_after_it_starts_anew() {
        let mut s = Series::new(10, Duration::from_secs(60));
        assert_eq!(s.next(1, 0), Next::Create);
        s.record(1, "p.1", 1, 0);
        assert_eq!(
            s.next(1, 30 * S),
            Next::Repeat {
                name: "p.1".into(),
                count: 2
            }
        );
        s.record(1, "p.1", 2, 30 * S);
        // the window counts from the last occurrence
        assert_eq!(
            s.next(1, 80 * S),
            Next::Repeat {
                name: "p.1".into(),
                count: 3
            }
        );
        assert_eq!(s.next(1, 91 * S), Next::Create);
        assert!(s.is_empty(), "expired entries are forgotten: {s:?}");
        // another key is another series
        s.record(1, "p.2", 1, 100 * S);
        assert_eq!(s.next(2, 100 * S), Next::Create);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_cap_and_forgets_the_oldest_first() {
        let mut s = Series::new(100, Duration::from_secs(600));
        for k in 0..10_000u64 {
            s.record(k, "e", 1, k as i64);
            assert!(s.len() <= 100);
        }
        assert!(s.order.len() <= 200, "{}", s.order.len());
        assert_eq!(s.next(0, 10_000), Next::Create, "the oldest went");
        assert!(
            matches!(s.next(9_999, 10_000), Next::Repeat { .. }),
            "the newest stays"
        );
        // one key written again and again stays one entry, and its marks stay bounded
        for t in 0..1_000 {
            s.record(7, "e7", t, 20_000 + i64::from(t));
        }
        assert!(s.order.len() <= 200 && s.len() <= 100);
        assert_eq!(
            s.next(7, 30_000),
            Next::Repeat {
                name: "e7".into(),
                count: 1_000
            }
        );
    }

    #[test]
    fn the_key_tells_objects_reasons_and_types_apart() {
        let reporter = Reporter {
            controller: "c".into(),
            instance: Some("i".into()),
        };
        let ev = |reason: &str, type_| Event {
            type_,
            reason: reason.into(),
            note: Some("n".into()),
            action: "a".into(),
            secondary: None,
        };
        let obj = |name: &str| ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        };
        let k = key(&reporter, &ev("R", EventType::Normal), &obj("a"));
        assert_eq!(k, key(&reporter, &ev("R", EventType::Normal), &obj("a")));
        // the note is not part of the key: a changed message still joins the series
        let mut other_note = ev("R", EventType::Normal);
        other_note.note = Some("m".into());
        assert_eq!(k, key(&reporter, &other_note, &obj("a")));
        assert_ne!(k, key(&reporter, &ev("R", EventType::Normal), &obj("b")));
        assert_ne!(k, key(&reporter, &ev("S", EventType::Normal), &obj("a")));
        assert_ne!(k, key(&reporter, &ev("R", EventType::Warning), &obj("a")));
    }
}
