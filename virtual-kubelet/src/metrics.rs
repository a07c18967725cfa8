//! The pod reflection's metrics, per peer: `ferry_offloaded_pods{peer,phase}` (the pods on the virtual
//! node, by phase), `ferry_reflection_queue_depth{peer}` (pods whose last reconcile still had work to do:
//! a ShadowPod to create, a status to copy, a deletion to finish — what the reflection has not caught up
//! with) and `ferry_reflection_lag_seconds{peer}` (from the provider pod turning Ready, by its condition's
//! time, to the consumer pod saying so) and `ferry_status_patch_batch_size{peer}` (status patches sent in
//! one tick, [`crate::status_writer`]). [`PodStates`] keeps each pod's last state so the gauges move by
//! one per change, whatever the number of pods (pure; [`observe`] feeds the process's registry).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use ferry_plumbing::metrics::prometheus_client::metrics::family::Family;
use ferry_plumbing::metrics::prometheus_client::metrics::gauge::Gauge;
use ferry_plumbing::metrics::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use ferry_plumbing::metrics::{Labels, duration_buckets, register};

/// A pod's state as counted: (peer, phase, behind).
pub type PodState = (String, String, bool);

/// Each pod's last counted state, by UID (pure bookkeeping). The peer and phase names are kept once, not
/// once per pod: an entry is the UID, three small numbers and the Ready transition last timed.
#[derive(Default, Debug)]
pub struct PodStates {
    pods: HashMap<Box<str>, Entry>,
    names: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// (peer, phase, behind), the names as indices into `names`.
    state: (u32, u32, bool),
    /// The provider's Ready `lastTransitionTime` (unix seconds) whose lag was recorded.
    timed: Option<i64>,
}

/// How the gauges move for one observation: -1 for what the pod was, +1 for what it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Moves {
    /// The state before, if counted.
    pub was: Option<PodState>,
    /// The state now, if the pod still counts.
    pub is: Option<PodState>,
}

impl PodStates {
    fn id(&mut self, name: &str) -> u32 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.names.push(name.to_string());
                self.names.len() as u32 - 1
            }
        }
    }

    /// Records pod `uid` as `now` (`None`: gone) and says how the gauges move.
    pub fn set(&mut self, uid: &str, now: Option<PodState>) -> Moves {
        let code = now
            .as_ref()
            .map(|(peer, phase, behind)| (self.id(peer), self.id(phase), *behind));
        let was = match code {
            Some(state) => match self.pods.get_mut(uid) {
                Some(e) => Some(std::mem::replace(&mut e.state, state)),
                None => {
                    self.pods.insert(uid.into(), Entry { state, timed: None });
                    None
                }
            },
            None => self.pods.remove(uid).map(|e| e.state),
        };
        if was == code {
            return Moves { was: None, is: None };
        }
        let was = was.map(|(peer, phase, behind)| {
            let name = |i: u32| self.names[i as usize].clone();
            (name(peer), name(phase), behind)
        });
        Moves { was, is: now }
    }

    /// Whether the Ready transition at `at` (unix seconds) of pod `uid` is timed for the first time (and
    /// marks it): a second patch of the same transition, from a cache not yet showing the first, is not a
    /// second lag. A pod not counted (gone) is not timed.
    pub fn first_timing(&mut self, uid: &str, at: i64) -> bool {
        match self.pods.get_mut(uid) {
            Some(e) if e.timed != Some(at) => {
                e.timed = Some(at);
                true
            }
            _ => false,
        }
    }
}

struct Reflection {
    states: Mutex<PodStates>,
    offloaded: Family<Labels, Gauge>,
    depth: Family<Labels, Gauge>,
    lag: Family<Labels, Histogram>,
    batches: Family<Labels, Histogram>,
}

fn reflection() -> &'static Reflection {
    static R: OnceLock<Reflection> = OnceLock::new();
    R.get_or_init(|| {
        let r = Reflection {
            states: Mutex::default(),
            offloaded: Family::default(),
            depth: Family::default(),
            lag: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            batches: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 12))),
        };
        register(
            "offloaded_pods",
            "pods on the peer's virtual node, by phase",
            r.offloaded.clone(),
        );
        register(
            "reflection_queue_depth",
            "pods on the peer's virtual node whose last reconcile still had work to do",
            r.depth.clone(),
        );
        register(
            "reflection_lag_seconds",
            "from the provider pod turning Ready to the consumer pod saying so",
            r.lag.clone(),
        );
        register(
            "status_patch_batch_size",
            "status patches of the peer's pods sent in one tick",
            r.batches.clone(),
        );
        r
    })
}

fn peer_labels(peer: &str) -> Labels {
    vec![("peer".to_string(), peer.to_string())]
}

/// Counts pod `uid` of `peer` as in `phase` and, when `behind`, as work left (`phase` `None`: the pod is
/// gone).
pub fn observe(peer: &str, uid: &str, phase: Option<&str>, behind: bool) {
    let r = reflection();
    let now = phase.map(|p| (peer.to_string(), p.to_string(), behind));
    let moves = r.states.lock().expect("lock").set(uid, now);
    for (state, by) in [(moves.was, -1), (moves.is, 1)] {
        let Some((peer, phase, behind)) = state else {
            continue;
        };
        let mut labels = peer_labels(&peer);
        labels.push(("phase".to_string(), phase));
        r.offloaded.get_or_create(&labels).inc_by(by);
        // touched for every peer, so the gauge exists (at 0) before anything is behind
        let depth = r.depth.get_or_create(&peer_labels(&peer));
        if behind {
            depth.inc_by(by);
        }
    }
}

/// Records one tick's batch of `size` status patches of `peer`'s pods.
pub fn status_batch(peer: &str, size: usize) {
    reflection()
        .batches
        .get_or_create(&peer_labels(peer))
        .observe(size as f64);
}

/// Records the lag of pod `uid` of `peer` turning Ready, `lag` as [`lag_of`] gives it: once per
/// transition (see [`PodStates::first_timing`]).
pub fn lag(peer: &str, uid: &str, (at, seconds): (i64, f64)) {
    let r = reflection();
    if r.states.lock().expect("lock").first_timing(uid, at) {
        r.lag.get_or_create(&peer_labels(peer)).observe(seconds.max(0.0));
    }
}

/// The lag a status patch shows: when it makes the pod Ready (the local pod is not yet), the provider's
/// Ready condition's `lastTransitionTime` (unix seconds) and the seconds since (pure; `now` in unix
/// seconds, fractional).
pub fn lag_of(patch: &serde_json::Value, locally_ready: bool, now: f64) -> Option<(i64, f64)> {
    if locally_ready {
        return None;
    }
    let ready = patch["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    let at = chrono::DateTime::parse_from_rfc3339(ready["lastTransitionTime"].as_str()?).ok()?;
    Some((at.timestamp(), now - at.timestamp() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn st(peer: &str, phase: &str, behind: bool) -> Option<PodState> {
        Some((peer.into(), phase.into(), behind))
    }

    #[test]
    fn each_change_moves_the_gauges_once_and_a_repeat_not_at_all() {
        let mut s = PodStates::default();
        assert_eq!(
            s.set("u1", st("p", "Pending", true)),
            Moves {
                was: None,
                is: st("p", "Pending", true)
            }
        );
        // the same state again: nothing moves (a reconcile that changed nothing)
        assert_eq!(
            s.set("u1", st("p", "Pending", true)),
            Moves { was: None, is: None }
        );
        assert_eq!(
            s.set("u1", st("p", "Running", false)),
            Moves {
                was: st("p", "Pending", true),
                is: st("p", "Running", false)
            }
        );
        assert_eq!(
            s.set("u1", None),
            Moves {
                was: st("p", "Running", false),
                is: None
            }
        );
        // a pod never counted, gone: nothing
        assert_eq!(s.set("u2", None), Moves { was: None, is: None });
    }

    #[test]
    fn a_ready_transition_is_timed_once_and_a_new_one_again() {
        let mut s = PodStates::default();
        assert!(!s.first_timing("u1", 10), "a pod not counted");
        s.set("u1", st("p", "Running", false));
        assert!(s.first_timing("u1", 10));
        assert!(!s.first_timing("u1", 10), "the same transition, patched twice");
        // the state moving keeps the mark; a later transition (the container restarted) is timed
        s.set("u1", st("p", "Running", true));
        assert!(!s.first_timing("u1", 10));
        assert!(s.first_timing("u1", 30));
        // gone and back (the same UID cannot, but the store must not remember it): timed anew
        s.set("u1", None);
        s.set("u1", st("p", "Running", false));
        assert!(s.first_timing("u1", 30));
    }

    #[test]
    fn the_gauges_follow_pods_through_the_registry() {
        for i in 0..3 {
            observe("metrics-peer", &format!("m{i}"), Some("Pending"), true);
        }
        observe("metrics-peer", "m0", Some("Running"), false);
        observe("metrics-peer", "m1", None, false);
        let text = ferry_plumbing::metrics::render();
        let v = |name: &str, labels: &[(&str, &str)]| ferry_plumbing::metrics::sample(&text, name, labels);
        let peer = ("peer", "metrics-peer");
        assert_eq!(
            v("ferry_offloaded_pods", &[peer, ("phase", "Pending")]),
            Some(1.0)
        );
        assert_eq!(
            v("ferry_offloaded_pods", &[peer, ("phase", "Running")]),
            Some(1.0)
        );
        assert_eq!(v("ferry_reflection_queue_depth", &[peer]), Some(1.0));
        lag("metrics-peer", "m0", (100, 0.25));
        // the same transition patched again (a stale cache), and a pod not counted: not timed
        lag("metrics-peer", "m0", (100, 0.5));
        lag("metrics-peer", "m1", (100, 0.5));
        let text = ferry_plumbing::metrics::render();
        let v = |name: &str| ferry_plumbing::metrics::sample(&text, name, &[peer]);
        assert_eq!(v("ferry_reflection_lag_seconds_count"), Some(1.0));
        assert_eq!(v("ferry_reflection_lag_seconds_sum"), Some(0.25));
    }

    #[test]
    fn the_lag_counts_from_the_providers_ready_transition_only_when_the_pod_becomes_ready() {
        let patch = json!({"status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-05T10:00:00Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-05T10:00:10Z"},
        ]}});
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:10Z")
            .unwrap()
            .timestamp() as f64;
        assert_eq!(lag_of(&patch, false, at + 1.5), Some((at as i64, 1.5)));
        assert_eq!(lag_of(&patch, true, at + 1.5), None);
        assert_eq!(lag_of(&json!({"status": {"phase": "Pending"}}), false, at), None);
    }
}
