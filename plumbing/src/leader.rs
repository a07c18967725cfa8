//! Leader election on a `coordination.k8s.io/v1` Lease, so a component can run as several replicas with
//! one active: [`decide`] is the pure rule (take a Lease that is free or expired, renew one's own, else
//! wait for its expiry); [`acquire`] blocks until this replica holds the Lease, [`hold`] renews it and
//! returns only when it is lost (the caller then exits, as controller-runtime's managers do, so a lost
//! leader never keeps writing). Writes carry the Lease's `resourceVersion`, so of two replicas racing for
//! a free Lease exactly one wins.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

/// What a Lease says, as far as the decision needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity` (empty: released).
    pub holder: String,
    /// `spec.renewTime` (absent: never renewed).
    pub renewed: Option<DateTime<Utc>>,
    /// `spec.leaseDurationSeconds`.
    pub duration_seconds: i64,
}

/// What a replica does about the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is free or expired: take it.
    Take,
    /// It is ours: renew it.
    Renew,
    /// Another replica holds it until `until`.
    Wait {
        /// The holder.
        holder: String,
        /// When it expires unless renewed.
        until: DateTime<Utc>,
    },
}

/// The rule (pure): no Lease, a released one or one not renewed within its duration is taken; one's own
/// is renewed; any other is waited for.
pub fn decide(lease: Option<&Observed>, me: &str, now: DateTime<Utc>) -> Decision {
    let Some(l) = lease else { return Decision::Take };
    if l.holder == me {
        return Decision::Renew;
    }
    if l.holder.is_empty() {
        return Decision::Take;
    }
    let until =
        l.renewed.unwrap_or(DateTime::<Utc>::MIN_UTC) + chrono::TimeDelta::seconds(l.duration_seconds.max(1));
    if until <= now {
        Decision::Take
    } else {
        Decision::Wait {
            holder: l.holder.clone(),
            until,
        }
    }
}

/// What a Lease says ([`Observed`]).
pub fn observe(l: &Lease) -> Observed {
    let spec = l.spec.clone().unwrap_or_default();
    let v = serde_json::to_value(&spec).unwrap_or_default();
    Observed {
        holder: spec.holder_identity.unwrap_or_default(),
        renewed: v["renewTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        duration_seconds: spec.lease_duration_seconds.unwrap_or(15).into(),
    }
}

fn micro_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// One attempt: reads the Lease and takes or renews it when [`decide`] says so. `Ok(true)`: this replica
/// holds it now; `Ok(false)`: another does (or won a race for it).
pub async fn try_hold(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(name).await?;
    try_hold_from(api, current, name, me, duration).await
}

/// [`try_hold`] from a copy of the Lease already in hand (a watch's), saving the read; a stale copy
/// loses the write race (409) and reads as `Ok(false)`.
pub async fn try_hold_from(
    api: &Api<Lease>,
    current: Option<Lease>,
    name: &str,
    me: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let now = Utc::now();
    let decision = decide(current.as_ref().map(observe).as_ref(), me, now);
    if matches!(decision, Decision::Wait { .. }) {
        return Ok(false);
    }
    let transitions = current
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.lease_transitions)
        .unwrap_or(0);
    let taking = decision == Decision::Take;
    let acquired = match (&current, taking) {
        (Some(l), false) => l
            .spec
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| v["acquireTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| micro_time(now)),
        _ => micro_time(now),
    };
    let mut body: Lease = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": duration.as_secs().max(1),
            "acquireTime": acquired,
            "renewTime": micro_time(now),
            "leaseTransitions": if taking && current.is_some() { transitions + 1 } else { transitions },
        }
    }))
    .expect("a Lease");
    let written = match current {
        None => api.create(&PostParams::default(), &body).await.map(drop),
        Some(l) => {
            body.metadata.resource_version = l.metadata.resource_version;
            api.replace(name, &PostParams::default(), &body).await.map(drop)
        }
    };
    match written {
        Ok(()) => Ok(true),
        // another replica wrote first: it won this round
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives Lease `name` up if `me` holds it (holder emptied), so a standby takes it at once instead of
/// waiting for it to expire.
pub async fn release(api: &Api<Lease>, name: &str, me: &str) -> Result<(), kube::Error> {
    let Some(mut l) = api.get_opt(name).await? else {
        return Ok(());
    };
    let Some(spec) = l.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(me) {
        return Ok(());
    }
    spec.holder_identity = Some(String::new());
    match api.replace(name, &PostParams::default(), &l).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// When a Lease as observed expires unless renewed (`None`: never, it is released or absent).
pub fn expiry(l: &Lease) -> Option<DateTime<Utc>> {
    let o = observe(l);
    (!o.holder.is_empty()).then(|| {
        o.renewed.unwrap_or(DateTime::<Utc>::MIN_UTC) + chrono::TimeDelta::seconds(o.duration_seconds.max(1))
    })
}

/// Who holds a Lease as observed (empty: nobody).
pub fn holder(l: &Lease) -> String {
    observe(l).holder
}

/// Blocks until this replica (`me`) holds Lease `name`, retrying every `duration / 4`.
pub async fn acquire(api: &Api<Lease>, name: &str, me: &str, duration: Duration) {
    let mut waiting_logged = false;
    loop {
        match try_hold(api, name, me, duration).await {
            Ok(true) => {
                tracing::info!(lease = name, me, "leader: this replica is active");
                return;
            }
            Ok(false) if !waiting_logged => {
                tracing::info!(lease = name, me, "leader: another replica is active; standing by");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(lease = name, "leader election: {e}"),
        }
        tokio::time::sleep(duration / 4).await;
    }
}

/// Renews Lease `name` every `duration / 3`; returns (with why) once this replica no longer holds it or
/// could not renew it before it would expire.
pub async fn hold(api: &Api<Lease>, name: &str, me: &str, duration: Duration) -> String {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(duration / 3).await;
        match try_hold(api, name, me, duration).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => return format!("another replica took the Lease {name}"),
            Err(e) if last_renewal.elapsed() >= duration => {
                return format!("the Lease {name} could not be renewed within {duration:?}: {e}");
            }
            Err(e) => tracing::warn!(lease = name, "renewing: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn held(by: &str, renewed: i64) -> Observed {
        Observed {
            holder: by.into(),
            renewed: Some(t(renewed)),
            duration_seconds: 15,
        }
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_ones_own_renewed_anothers_waited_for() {
        assert_eq!(decide(None, "a", t(0)), Decision::Take);
        assert_eq!(decide(Some(&held("", 0)), "a", t(1)), Decision::Take);
        assert_eq!(decide(Some(&held("a", 0)), "a", t(100)), Decision::Renew);
        assert_eq!(
            decide(Some(&held("b", 0)), "a", t(14)),
            Decision::Wait {
                holder: "b".into(),
                until: t(15)
            }
        );
        // expiry is exact: at renewTime + duration it is free
        assert_eq!(decide(Some(&held("b", 0)), "a", t(15)), Decision::Take);
        // never renewed: expired
        let never = Observed {
            renewed: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&never), "a", t(0)), Decision::Take);
    }

    #[test]
    fn a_lease_round_trips_through_its_json_with_micro_time() {
        let l: Lease = serde_json::from_value(json!({"metadata": {"name": "x"},
            "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15, "renewTime": micro_time(t(3))}}))
        .unwrap();
        assert_eq!(observe(&l), held("b", 3));
    }
}
