//! Active/standby gateway replicas. Every replica (one per node labelled as a gateway) is ready — the
//! WireGuard key in its state dir, the `PeerNetwork`s watched — but only the holder of the Lease
//! `ferry-gateway` in ferry's namespace runs tunnels. [`step`] is the rule (pure); [`run`] drives it with a
//! watch on that one Lease and a timer: the active renews every quarter of the Lease's duration and steps
//! down once it has not renewed for three quarters, counted from when its last renewal began, however
//! long that renewal waited for its answer ([`attempt_budget`]): a replica cut from the apiserver stops
//! its tunnels before anyone may take over, never two active; a standby wakes at the Lease's expiry as last seen
//! (every renewal reaches it by the watch, so it never polls) and takes it. Identities are
//! `<node>_<instance>`, new for every start: a restarted replica does not mistake its previous life's Lease
//! for its own, so it waits like any standby (no flapping back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_plumbing::leader::{self, Decision, Observed};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{info, warn};

/// The Lease the gateway replicas of a cluster share.
pub const LEASE: &str = "ferry-gateway";
/// Its default duration: a failover's detection takes at most this (the Lease carries whole seconds).
pub const DURATION: Duration = Duration::from_secs(2);

/// Who takes part in the election.
#[derive(Clone, Debug)]
pub struct Election {
    /// ferry's namespace (the Lease lives there).
    pub namespace: String,
    /// The Lease's name ([`LEASE`]).
    pub lease: String,
    /// This replica: `<node>_<instance>` ([`identity`]).
    pub me: String,
    /// The Lease's duration ([`DURATION`]).
    pub duration: Duration,
}

/// A new identity for a replica on `node`: the node, then a per-start instance (pid and start time).
pub fn identity(node: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{node}_{}-{nanos:08x}", std::process::id())
}

/// The node of an identity made by [`identity`].
pub fn node_of(identity: &str) -> &str {
    identity.rsplit_once('_').map_or(identity, |(n, _)| n)
}

/// What a replica does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write the Lease as ours (taking it, or renewing it).
    Hold,
    /// Stop being active (someone else holds it, or it could not be renewed in time).
    StepDown,
    /// Standing by: nothing to do before `until` (the Lease's expiry as last seen) or the next change.
    WaitUntil(DateTime<Utc>),
}

/// The rule (pure). `since_renewal`: how long ago this replica last renewed, when it is active;
/// `since_start`: how long this replica has run. A replica younger than one Lease duration leaves a Lease
/// someone held to the standbys that were already waiting for it: the replacement of a killed active
/// comes back within a second, and the warm standby on another node, not it, takes over.
pub fn step(
    active: bool,
    lease: Option<&Observed>,
    me: &str,
    now: DateTime<Utc>,
    (since_renewal, since_start): (Duration, Duration),
    duration: Duration,
) -> Step {
    if active && since_renewal >= step_down_after(duration) {
        return Step::StepDown;
    }
    let young = since_start < duration && lease.is_some_and(|l| !l.holder.is_empty());
    match (active, leader::decide(lease, me, now)) {
        (false, Decision::Take | Decision::Renew) if young => {
            Step::WaitUntil(now + chrono::TimeDelta::from_std(duration - since_start).unwrap_or_default())
        }
        (_, Decision::Take | Decision::Renew) => Step::Hold,
        (true, Decision::Wait { .. }) => Step::StepDown,
        (false, Decision::Wait { until, .. }) => Step::WaitUntil(until),
    }
}

/// How long after its last renewal began an active replica steps down: three quarters of the Lease's
/// duration, a quarter before a standby may take over ([`step`] and [`attempt_budget`] share it).
pub fn step_down_after(duration: Duration) -> Duration {
    duration * 3 / 4
}

/// How long one write of the Lease may wait for its answer. An active replica's renewal may take until it
/// must step down (three quarters of a duration after its last renewal began): an apiserver that answers
/// in 0.8 s under load keeps the active one active, where a fixed quarter of the duration (0.5 s) gave
/// up on every such answer and stepped it down, and a standby took over from a healthy active. A
/// standby's take may take as long: what it holds is counted from the take's start.
pub fn attempt_budget(active: bool, since_renewal: Duration, duration: Duration) -> Duration {
    let deadline = step_down_after(duration);
    if active {
        deadline.saturating_sub(since_renewal)
    } else {
        deadline
    }
}

/// This replica's role, for `/metrics` and the status the active writes.
#[derive(Debug, Default)]
pub struct Role {
    active: AtomicBool,
    transitions: AtomicU64,
    since: std::sync::Mutex<Option<String>>,
}

impl Role {
    /// Whether this replica is the active one.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// When it last became active (RFC 3339).
    pub fn since(&self) -> Option<String> {
        self.since.lock().expect("lock").clone()
    }

    fn set(&self, active: bool) {
        if self.active.swap(active, Ordering::SeqCst) != active {
            self.transitions.fetch_add(1, Ordering::SeqCst);
            if active {
                *self.since.lock().expect("lock") =
                    Some(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            }
        }
    }

    /// Times this replica became active or standby.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::SeqCst)
    }
}

/// Takes part in `e` until dropped: `active` turns true while this replica holds the Lease (and `role`
/// says so). Never returns.
pub async fn run(client: Client, e: Election, role: Arc<Role>, active: tokio::sync::watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", e.lease));
    let mut leases = std::pin::pin!(watcher(api.clone(), cfg).default_backoff());
    let mut seen: Option<Lease> = None;
    let mut is_active = false;
    let mut renewed = tokio::time::Instant::now();
    let mut wake = tokio::time::Instant::now();
    let attempt = e.duration / 4;
    let mut waiting_logged = false;
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            ev = leases.next() => match ev {
                Some(Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l))) => seen = Some(l),
                Some(Ok(watcher::Event::Delete(_))) => seen = None,
                Some(Ok(_)) => {}
                Some(Err(err)) => warn!(lease = e.lease, "watching the gateway Lease: {err}"),
                None => {}
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = tokio::time::Instant::now();
        let observed = seen.as_ref().map(leader::observe);
        let ages = (renewed.elapsed(), started.elapsed());
        match step(is_active, observed.as_ref(), &e.me, Utc::now(), ages, e.duration) {
            Step::Hold => {
                if is_active && now < wake {
                    // a watch event (our own renewal coming back): the timer says when to renew
                    continue;
                }
                // the Lease will say it was renewed about now (the body is written before the request
                // goes): counting from here, not from the answer, a slow renewal that lands still steps
                // this replica down before a standby may take over, so it may take until that deadline
                let start = tokio::time::Instant::now();
                let budget = attempt_budget(is_active, renewed.elapsed(), e.duration);
                let held = tokio::time::timeout(
                    budget,
                    leader::try_hold_from(&api, seen.clone(), &e.lease, &e.me, e.duration),
                )
                .await;
                match held {
                    Ok(Ok(true)) => {
                        renewed = start;
                        if !is_active {
                            is_active = true;
                            waiting_logged = false;
                            role.set(true);
                            let _ = active.send(true);
                            info!(lease = e.lease, me = e.me, "gateway: this replica is active");
                        }
                        wake = renewed + attempt;
                    }
                    Ok(Ok(false)) => {
                        // a stale copy or a lost race: read it again and decide at once
                        seen = tokio::time::timeout(attempt, api.get_opt(&e.lease))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                        wake = tokio::time::Instant::now();
                    }
                    Ok(Err(err)) => {
                        warn!(lease = e.lease, "gateway Lease: {err}");
                        wake = tokio::time::Instant::now() + attempt / 2;
                    }
                    Err(_) => {
                        warn!(lease = e.lease, "gateway Lease: no answer within {budget:?}");
                        wake = tokio::time::Instant::now();
                    }
                }
            }
            Step::StepDown => {
                is_active = false;
                role.set(false);
                let _ = active.send(false);
                warn!(
                    lease = e.lease,
                    me = e.me,
                    "gateway: no longer active (Lease taken or not renewed in time); standing by"
                );
                wake = tokio::time::Instant::now() + attempt;
            }
            Step::WaitUntil(until) => {
                if !waiting_logged {
                    info!(
                        lease = e.lease,
                        me = e.me,
                        holder = observed.as_ref().map(|o| o.holder.as_str()).unwrap_or(""),
                        "gateway: another replica is active; standing by"
                    );
                    waiting_logged = true;
                }
                let left = (until - Utc::now()).to_std().unwrap_or_default();
                wake = tokio::time::Instant::now() + left;
            }
        }
    }
}

/// Gives the Lease up when this replica holds it (on SIGTERM, after its tunnels are removed), so a
/// standby takes over at once.
pub async fn release(client: Client, e: &Election) {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    match tokio::time::timeout(Duration::from_secs(2), leader::release(&api, &e.lease, &e.me)).await {
        Ok(Ok(())) => info!(lease = e.lease, "gateway Lease released"),
        Ok(Err(err)) => warn!(lease = e.lease, "releasing the gateway Lease: {err}"),
        Err(_) => warn!(lease = e.lease, "releasing the gateway Lease: no answer in 2s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_may_wait_for_its_answer_until_the_step_down_deadline_and_no_longer() {
        let d = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // renewing on time (a quarter after the last): a whole second for the answer, not 0.5 s
        assert_eq!(attempt_budget(true, ms(500), d), ms(1000));
        assert_eq!(attempt_budget(true, ms(1400), d), ms(100));
        // the deadline itself: nothing left (the rule steps down first)
        assert_eq!(attempt_budget(true, ms(1500), d), Duration::ZERO);
        assert_eq!(attempt_budget(true, ms(3000), d), Duration::ZERO);
        // a standby taking the Lease: three quarters, counted from its own start
        assert_eq!(attempt_budget(false, ms(9000), d), ms(1500));
        // never past the step-down, which is a quarter before a standby may take over
        for since in (0..2000).step_by(100) {
            let b = attempt_budget(true, ms(since), d);
            assert!(ms(since) + b <= d * 3 / 4 || b.is_zero(), "{since} ms: {b:?}");
        }
    }

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn held(by: &str, renewed_ms: i64) -> Observed {
        Observed {
            holder: by.into(),
            renewed: Some(t(renewed_ms)),
            duration_seconds: 2,
        }
    }

    const D: Duration = DURATION;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_standby_waits_for_the_expiry_it_saw_then_takes_the_lease() {
        let l = held("node-1_1-a", 0);
        assert_eq!(
            step(false, Some(&l), "node-2_2-b", t(500), (MS(0), MS(5000)), D),
            Step::WaitUntil(t(2000))
        );
        // at the expiry (not renewed since): take it
        assert_eq!(
            step(false, Some(&l), "node-2_2-b", t(2000), (MS(0), MS(5000)), D),
            Step::Hold
        );
        // nothing there, or released (a clean shutdown): at once
        assert_eq!(
            step(false, None, "node-2_2-b", t(0), (MS(0), MS(5000)), D),
            Step::Hold
        );
        assert_eq!(
            step(
                false,
                Some(&held("", 0)),
                "node-2_2-b",
                t(1),
                (MS(0), MS(5000)),
                D
            ),
            Step::Hold
        );
    }

    #[test]
    fn the_active_renews_and_steps_down_before_anyone_may_take_over() {
        let l = held("node-1_1-a", 0);
        assert_eq!(
            step(true, Some(&l), "node-1_1-a", t(500), (MS(500), MS(5000)), D),
            Step::Hold
        );
        // 1.5 s without a renewal: it steps down, half a second before a standby may take the Lease
        assert_eq!(
            step(true, Some(&l), "node-1_1-a", t(1500), (MS(1500), MS(5000)), D),
            Step::StepDown
        );
        assert!(D * 3 / 4 < D, "step-down comes before the expiry");
        // someone else holds it (this replica was cut off and came back): standby, never two active
        let other = held("node-2_2-b", 1400);
        assert_eq!(
            step(true, Some(&other), "node-1_1-a", t(1500), (MS(100), MS(5000)), D),
            Step::StepDown
        );
    }

    #[test]
    fn a_replica_younger_than_the_lease_leaves_an_expired_lease_to_the_waiting_standby() {
        let l = held("node-1_1-a", 0);
        // the killed active's replacement, 900 ms old at the expiry: it waits out its first duration
        assert_eq!(
            step(false, Some(&l), "node-1_1-c", t(2000), (MS(0), MS(900)), D),
            Step::WaitUntil(t(3100))
        );
        // the standby, long running: takes it at the expiry
        assert_eq!(
            step(false, Some(&l), "node-2_2-b", t(2000), (MS(0), MS(60_000)), D),
            Step::Hold
        );
        // if nobody else took it, the young one does once it is a duration old
        assert_eq!(
            step(false, Some(&l), "node-1_1-c", t(3100), (MS(0), MS(2000)), D),
            Step::Hold
        );
        // no Lease at all, or a released one (first start, clean shutdown): no waiting
        assert_eq!(
            step(false, None, "node-1_1-c", t(0), (MS(0), MS(0)), D),
            Step::Hold
        );
        assert_eq!(
            step(false, Some(&held("", 0)), "node-1_1-c", t(10), (MS(0), MS(0)), D),
            Step::Hold
        );
    }

    #[test]
    fn a_restarted_replica_is_a_new_identity_and_waits_like_any_standby() {
        let before = identity("real-node-1");
        std::thread::sleep(MS(2));
        let after = identity("real-node-1");
        assert_ne!(before, after);
        assert_eq!(node_of(&before), "real-node-1");
        assert_eq!(node_of("node_with_underscores_12-ab"), "node_with_underscores");
        let l = held(&before, 0);
        assert_eq!(
            step(false, Some(&l), &after, t(100), (MS(0), MS(5000)), D),
            Step::WaitUntil(t(2000))
        );
    }

    #[test]
    fn the_role_counts_changes() {
        let r = Role::default();
        assert!(!r.is_active() && r.transitions() == 0);
        r.set(true);
        r.set(true);
        assert!(r.is_active() && r.since().is_some());
        assert_eq!(r.transitions(), 1);
        r.set(false);
        assert_eq!(r.transitions(), 2);
    }
}
