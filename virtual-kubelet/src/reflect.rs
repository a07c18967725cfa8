//! Pod reflection's decisions, pure: [`decide`] takes what the virtual kubelet sees of one local pod,
//! its `ShadowPod` and the provider's pod, and returns the [`Effect`]s that bring them together. The
//! controller in [`crate::pods`] gathers the observation and carries the effects out, in order.
//!
//! The rules, in the order they apply:
//! - a pod in a namespace not offloaded to this provider stays Pending with a reason (or, when it is
//!   being deleted, its deletion is finished at once: nothing was sent);
//! - a pod being deleted deletes its own `ShadowPod` and provider pod (with the pod's grace period) and
//!   waits for them to go; only then is its deletion finished;
//! - a DaemonSet's pod is refused (it belongs on local nodes);
//! - a `ShadowPod` of the same name but another pod (a StatefulSet's predecessor) is replaced;
//! - a `ShadowPod` the provider refused keeps the pod Pending with the provider's reason, unless the
//!   provider cordoned the tenant and a controller owns the pod: then the pod is evicted (deleted, with
//!   an Event) and its controller's new pod is scheduled elsewhere;
//! - no `ShadowPod` yet: one is created;
//! - the provider pod's status, once it has something to say, is copied onto the pod when it differs
//!   in a field the reflection owns.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use serde_json::json;

/// The local pod, as the controller's cache holds it.
#[derive(Clone, Debug, Default)]
pub struct LocalPod<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its UID.
    pub uid: &'a str,
    /// Whether it is being deleted, and with what grace period (seconds).
    pub deleting: Option<u32>,
    /// Whether a DaemonSet owns it.
    pub daemonset: bool,
    /// Whether a controller (ReplicaSet, StatefulSet, Job, …) owns it and recreates it when it is gone.
    pub controlled: bool,
    /// The status fields the reflection owns.
    pub status: Option<&'a OwnedStatus>,
}

/// The `ShadowPod` of the pod's name in the provider namespace.
#[derive(Clone, Debug, Default)]
pub struct Shadow<'a> {
    /// The UID of the consumer pod it was made for.
    pub origin_uid: Option<&'a str>,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// The provider's refusal (`<reason>: <message>`), if it refused it.
    pub refusal: Option<&'a str>,
}

/// The peering the decision is made for (named in messages).
#[derive(Clone, Copy, Debug)]
pub struct Peering<'a> {
    /// The provider's cluster ID.
    pub provider: &'a str,
    /// The virtual node's name.
    pub node: &'a str,
}

/// What the provider side looks like, for a pod whose namespace is offloaded to this provider.
#[derive(Clone, Debug, Default)]
pub struct Remote<'a> {
    /// The `ShadowPod` of that name, if any.
    pub shadow: Option<Shadow<'a>>,
    /// Whether a provider pod of that name exists, and its status as this cluster sees it (IPs
    /// translated), if it reports one.
    pub pod: Option<Option<PodStatus>>,
}

/// One thing to do. Effects are carried out in the order given; the first that fails stops the rest.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Keep the pod Pending with this reason and message (and an event saying so).
    Refuse {
        /// The pod status reason.
        reason: &'static str,
        /// What is wrong and the fix.
        message: String,
    },
    /// Create the `ShadowPod` (from the whole pod, read once; the translation may still refuse it).
    CreateShadow,
    /// Delete the `ShadowPod` observed (precondition: its UID).
    DeleteShadow,
    /// Delete the provider pod with this grace period (seconds).
    DeleteRemotePod(u32),
    /// Merge this into the pod's status.
    PatchStatus(serde_json::Value),
    /// Delete the pod (precondition: its UID) so that its controller makes a new one, which the scheduler
    /// places elsewhere, and say why in an Event: the provider cordoned this tenant.
    Evict {
        /// Why.
        message: String,
    },
    /// Finish the pod's deletion (grace 0, precondition: its UID), as a kubelet does.
    Finalize,
    /// Look again after this long (without it, the next change brings the pod back).
    Requeue(Duration),
}

/// How a provider's refusal of a cordoned tenant's pod begins (`<reason>: <message>`).
pub const CORDONED: &str = "Cordoned:";

/// A `Refuse` effect, or nothing when the pod already says so (one event per refusal, not one per look).
pub fn refuse(pod: &LocalPod<'_>, reason: &'static str, message: String) -> Option<Effect> {
    let current = pod.status.and_then(|s| s.reason.as_deref());
    (current != Some(reason)).then_some(Effect::Refuse { reason, message })
}

/// The effects for one pod. `remote` is `None` when the pod's namespace is not offloaded to this
/// provider.
pub fn decide(peering: Peering<'_>, pod: &LocalPod<'_>, remote: Option<&Remote<'_>>) -> Vec<Effect> {
    let ns = pod.namespace;
    let Some(remote) = remote else {
        if pod.deleting.is_some() {
            return vec![Effect::Finalize];
        }
        let message = format!(
            "namespace {ns:?} is not offloaded to {}; fix: `ferryctl offload namespace {ns}`, or keep the pod off node {}",
            peering.provider, peering.node
        );
        return refuse(pod, "NamespaceNotOffloaded", message)
            .into_iter()
            .collect();
    };
    let ours = remote.shadow.as_ref().filter(|s| s.origin_uid == Some(pod.uid));

    if let Some(grace) = pod.deleting {
        let mut effects = Vec::new();
        if ours.is_some_and(|s| !s.deleting) {
            effects.push(Effect::DeleteShadow);
            effects.push(Effect::DeleteRemotePod(grace));
        }
        if ours.is_some() || remote.pod.is_some() {
            // the provider pod terminates gracefully; its deletion event brings the pod back
            effects.push(Effect::Requeue(Duration::from_secs(5)));
        } else {
            effects.push(Effect::Finalize);
        }
        return effects;
    }

    if pod.daemonset {
        let message =
            "a DaemonSet's pod belongs on local nodes; the virtual node is not a host to run it on".into();
        return refuse(pod, "DaemonSetPod", message).into_iter().collect();
    }
    let mut effects = Vec::new();
    match (&remote.shadow, ours) {
        (Some(_), None) => {
            // a pod of the same name from before (e.g. a StatefulSet's predecessor): replace it
            return vec![Effect::DeleteShadow, Effect::Requeue(Duration::from_secs(1))];
        }
        (Some(_), Some(s)) => {
            // the provider refused it (policy, grant, cordon): say why on the pod, which stays Pending
            if let Some(why) = s.refusal
                && remote.pod.is_none()
            {
                let why: String = why.chars().take(1024).collect();
                // cordoned (or drained): a pod its controller recreates goes back to it, and the virtual
                // node, tainted while cordoned, takes none of the new ones
                if pod.controlled && why.starts_with(CORDONED) {
                    let message = format!(
                        "provider {} cordoned this cluster's tenant ({why}): the pod is deleted so that its controller makes a new one, scheduled off node {}",
                        peering.provider, peering.node
                    );
                    return vec![Effect::Evict { message }];
                }
                let message = format!("provider {} refused the pod: {why}", peering.provider);
                return refuse(pod, "ProviderRefused", message).into_iter().collect();
            }
        }
        (None, _) => effects.push(Effect::CreateShadow),
    }
    if let Some(Some(want)) = &remote.pod
        && let Some(patch) = status_patch(want, pod.status)
    {
        effects.push(Effect::PatchStatus(patch));
    }
    effects
}

/// Whether a local pod that the watch saw deleted (UID `gone_uid`: a UID never comes back) leaves a
/// `ShadowPod` to delete: its own (made for that UID), not already being deleted. A deletion that went
/// through the pod's reconciles (a grace period) has left none by then. A forced one (grace 0) shows the
/// pod terminating only for an instant: in a burst its reconcile runs after the pod left the cache and
/// does nothing, so this is what deletes it.
pub fn shadow_outlives(gone_uid: &str, shadow: Option<&Shadow<'_>>) -> bool {
    shadow.is_some_and(|s| s.origin_uid == Some(gone_uid) && !s.deleting)
}

/// The status patch that brings `have` to `want` (the provider pod's status in this cluster's view), or
/// `None` when nothing the reflection owns differs or the provider pod is merely Pending with nothing to
/// say yet. Fields the provider no longer reports are cleared, not left stale.
pub fn status_patch(want: &PodStatus, have: Option<&OwnedStatus>) -> Option<serde_json::Value> {
    let unschedulable = want
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.status == "False");
    let news = want.phase.as_deref() != Some("Pending")
        || want.reason.is_some()
        || want.message.is_some()
        || unschedulable;
    let empty = OwnedStatus::default();
    if !news || OwnedStatus::of(want) == *have.unwrap_or(&empty) {
        return None;
    }
    let mut patch = json!({"status": want});
    for k in ["reason", "message"] {
        if patch["status"].get(k).is_none() {
            patch["status"][k] = serde_json::Value::Null;
        }
    }
    Some(patch)
}

/// The status fields the reflection owns, and all a cached local pod keeps of its status: what a status
/// patch compares (so an unchanged status is not written again). It deserializes from a pod status and
/// never allocates for the fields it does not keep (serde skips them): the cached local pods cost a few
/// hundred bytes of status each instead of a `PodStatus` with its conditions and container statuses.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    /// `phase`.
    #[serde(default)]
    pub phase: Option<String>,
    /// `podIP`.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `podIPs[].ip`.
    #[serde(default, rename = "podIPs", deserialize_with = "ips")]
    pub pod_ips: Vec<String>,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// `message`.
    #[serde(default)]
    pub message: Option<String>,
    /// `conditions[]`: type, status and reason.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub conditions: Vec<OwnedCondition>,
    /// `containerStatuses[]`: name, ready, restarts and whether running or terminated.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub container_statuses: Vec<OwnedContainer>,
}

/// A pod condition as [`OwnedStatus`] keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct OwnedCondition {
    /// `type`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `status`.
    pub status: String,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A container status as [`OwnedStatus`] keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedContainer {
    /// `name`.
    pub name: String,
    /// `ready`.
    #[serde(default)]
    pub ready: bool,
    /// `restartCount`.
    #[serde(default)]
    pub restart_count: i32,
    /// Whether `state.running` / `state.terminated` are set.
    #[serde(default)]
    pub state: OwnedState,
}

/// Which container state is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct OwnedState {
    /// `state.running` is set.
    #[serde(default, deserialize_with = "present")]
    pub running: bool,
    /// `state.terminated` is set.
    #[serde(default, deserialize_with = "present")]
    pub terminated: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::Deserialize;
    Ok(Option::<serde::de::IgnoredAny>::deserialize(d)?.is_some())
}

fn null_as_empty<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn ips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Ip {
        ip: String,
    }
    Ok(null_as_empty::<D, Ip>(d)?.into_iter().map(|i| i.ip).collect())
}

impl OwnedStatus {
    /// The owned fields of a full status.
    pub fn of(s: &PodStatus) -> Self {
        Self {
            phase: s.phase.clone(),
            pod_ip: s.pod_ip.clone(),
            pod_ips: s.pod_ips.iter().flatten().map(|p| p.ip.clone()).collect(),
            reason: s.reason.clone(),
            message: s.message.clone(),
            conditions: s
                .conditions
                .iter()
                .flatten()
                .map(|c| OwnedCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                })
                .collect(),
            container_statuses: s
                .container_statuses
                .iter()
                .flatten()
                .map(|c| OwnedContainer {
                    name: c.name.clone(),
                    ready: c.ready,
                    restart_count: c.restart_count,
                    state: OwnedState {
                        running: c.state.as_ref().is_some_and(|s| s.running.is_some()),
                        terminated: c.state.as_ref().is_some_and(|s| s.terminated.is_some()),
                    },
                })
                .collect(),
        }
    }

    /// Whether the pod's `Ready` condition is `True`.
    pub fn ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

/// A pod as a reflection cache holds it: metadata and a status of type `S`, and no spec. A watch into a
/// store of these never parses a pod's spec (serde skips the field) nor keeps it: the spec is most of a
/// pod's bytes, and `k8s_openapi`'s `Pod` keeps room for every spec field even when the spec is dropped.
/// The spec of a pod to offload is read once, when its `ShadowPod` is created.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct View<S> {
    /// The pod's metadata (what each watch keeps of it: see where it is started).
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// The pod's status.
    #[serde(default)]
    pub status: Option<S>,
}

/// A local pod on the virtual node: its status is what the reflection owns.
pub type PodView = View<OwnedStatus>;

/// A provider pod: its whole status, which comes back to the local pod.
pub type RemotePodView = View<PodStatus>;

core_pod_resource!(View<S>; S);

/// Drops the fields of a provider pod's status that [`crate::translate::to_local_status`] does not copy.
pub fn slim_remote_status(s: &mut PodStatus) {
    s.host_ip = None;
    s.host_ips = None;
    s.nominated_node_name = None;
    s.ephemeral_container_statuses = None;
    s.resize = None;
    s.resource_claim_statuses = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_view_reads_metadata_and_status_and_skips_the_spec() {
        let watched = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "uid": "u-1", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
            "status": {"phase": "Running", "podIP": "10.244.0.9"}
        });
        let v: PodView = serde_json::from_value(watched).unwrap();
        assert_eq!(v.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(
            v.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
            Some("10.244.0.9")
        );
        // the same kind, version and path as a Pod: an Api<PodView> lists and watches pods
        use kube::Resource;
        assert_eq!(PodView::kind(&()), "Pod");
        assert_eq!(
            PodView::url_path(&(), Some("n")),
            k8s_openapi::api::core::v1::Pod::url_path(&(), Some("n"))
        );
        // nothing of the spec is kept: a view is far smaller than the Pod it came from
        assert!(std::mem::size_of::<PodView>() * 2 < std::mem::size_of::<k8s_openapi::api::core::v1::Pod>());
    }

    #[test]
    fn a_pod_deleted_by_force_leaves_only_its_own_live_shadowpod_to_delete() {
        let live = |origin| Shadow {
            origin_uid: Some(origin),
            ..Default::default()
        };
        assert!(shadow_outlives("u1", Some(&live("u1"))));
        // a later pod's of the same name (a StatefulSet's successor) stays
        assert!(!shadow_outlives("u1", Some(&live("u2"))));
        // the reconciles already deleted it, or there is none
        let deleting = Shadow {
            deleting: true,
            ..live("u1")
        };
        assert!(!shadow_outlives("u1", Some(&deleting)));
        assert!(!shadow_outlives("u1", None));
        // one without an origin label is not known to be this pod's
        assert!(!shadow_outlives("u1", Some(&Shadow::default())));
    }

    const P: Peering<'static> = Peering {
        provider: "p1",
        node: "ferry-p1",
    };

    fn status(v: serde_json::Value) -> PodStatus {
        serde_json::from_value(v).unwrap()
    }

    fn pod<'a>(status: Option<&'a OwnedStatus>) -> LocalPod<'a> {
        LocalPod {
            namespace: "app",
            uid: "u1",
            status,
            ..Default::default()
        }
    }

    fn ours() -> Shadow<'static> {
        Shadow {
            origin_uid: Some("u1"),
            ..Default::default()
        }
    }

    fn remote(shadow: Option<Shadow<'_>>, pod: Option<Option<PodStatus>>) -> Remote<'_> {
        Remote { shadow, pod }
    }

    fn reasons(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Refuse { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_pod_in_a_namespace_not_offloaded_is_refused_once_naming_the_fix() {
        let e = decide(P, &pod(None), None);
        let [Effect::Refuse { reason, message }] = e.as_slice() else {
            panic!("{e:?}")
        };
        assert_eq!(*reason, "NamespaceNotOffloaded");
        assert!(message.contains("ferryctl offload namespace app") && message.contains("ferry-p1"));
        // already says so: no second event, no second write
        let st = status(json!({"phase": "Pending", "reason": "NamespaceNotOffloaded"}));
        assert_eq!(decide(P, &pod(Some(&OwnedStatus::of(&st))), None), vec![]);
    }

    #[test]
    fn a_deleted_pod_whose_namespace_is_not_offloaded_is_finished_at_once() {
        let p = LocalPod {
            deleting: Some(30),
            ..pod(None)
        };
        assert_eq!(decide(P, &p, None), vec![Effect::Finalize]);
    }

    #[test]
    fn a_new_pod_gets_a_shadowpod() {
        let r = remote(None, None);
        assert_eq!(decide(P, &pod(None), Some(&r)), vec![Effect::CreateShadow]);
    }

    #[test]
    fn a_deleted_pod_deletes_its_shadowpod_and_provider_pod_with_its_grace_and_waits() {
        let p = LocalPod {
            deleting: Some(7),
            ..pod(None)
        };
        let r = remote(Some(ours()), Some(None));
        assert_eq!(
            decide(P, &p, Some(&r)),
            vec![
                Effect::DeleteShadow,
                Effect::DeleteRemotePod(7),
                Effect::Requeue(Duration::from_secs(5))
            ]
        );
        // already being deleted: only wait
        let going = Shadow {
            deleting: true,
            ..ours()
        };
        let r = remote(Some(going), Some(None));
        assert_eq!(
            decide(P, &p, Some(&r)),
            vec![Effect::Requeue(Duration::from_secs(5))]
        );
        // all gone on the provider: finish
        assert_eq!(decide(P, &p, Some(&remote(None, None))), vec![Effect::Finalize]);
    }

    #[test]
    fn deleting_never_touches_a_shadowpod_made_for_another_pod() {
        let p = LocalPod {
            deleting: Some(30),
            ..pod(None)
        };
        let other = Shadow {
            origin_uid: Some("u0"),
            ..Default::default()
        };
        // its pod still runs on the provider: wait for it, delete nothing
        let r = remote(Some(other.clone()), Some(None));
        assert_eq!(
            decide(P, &p, Some(&r)),
            vec![Effect::Requeue(Duration::from_secs(5))]
        );
        let r = remote(Some(other), None);
        assert_eq!(decide(P, &p, Some(&r)), vec![Effect::Finalize]);
    }

    #[test]
    fn a_daemonset_pod_is_refused() {
        let p = LocalPod {
            daemonset: true,
            ..pod(None)
        };
        let e = decide(P, &p, Some(&remote(None, None)));
        assert_eq!(reasons(&e), ["DaemonSetPod"]);
        assert_eq!(e.len(), 1, "nothing is created: {e:?}");
    }

    #[test]
    fn a_predecessors_shadowpod_is_replaced() {
        let other = Shadow {
            origin_uid: Some("u0"),
            ..Default::default()
        };
        let r = remote(Some(other), Some(None));
        assert_eq!(
            decide(P, &pod(None), Some(&r)),
            vec![Effect::DeleteShadow, Effect::Requeue(Duration::from_secs(1))]
        );
    }

    #[test]
    fn a_refusal_of_the_provider_shows_on_the_pod_bounded() {
        let long = format!("Grant: {}", "x".repeat(5000));
        let refused = Shadow {
            refusal: Some(&long),
            ..ours()
        };
        let r = remote(Some(refused.clone()), None);
        let e = decide(P, &pod(None), Some(&r));
        let [Effect::Refuse { reason, message }] = e.as_slice() else {
            panic!("{e:?}")
        };
        assert_eq!(*reason, "ProviderRefused");
        assert!(message.starts_with("provider p1 refused the pod: Grant: xxx"));
        assert!(message.len() < 1100, "bounded: {}", message.len());
        // once the provider runs a pod after all, its status wins over the old refusal
        let running = status(json!({"phase": "Running"}));
        let r = remote(Some(refused), Some(Some(running)));
        assert!(matches!(
            decide(P, &pod(None), Some(&r)).as_slice(),
            [Effect::PatchStatus(_)]
        ));
    }

    #[test]
    fn a_cordoned_tenants_controlled_pod_is_evicted_and_a_bare_one_stays_pending_with_the_reason() {
        let why = "Cordoned: tenant c1 is cordoned on this provider: no new pods";
        let refused = Shadow {
            refusal: Some(why),
            ..ours()
        };
        let r = remote(Some(refused.clone()), None);
        let controlled = LocalPod {
            controlled: true,
            ..pod(None)
        };
        let e = decide(P, &controlled, Some(&r));
        let [Effect::Evict { message }] = e.as_slice() else {
            panic!("{e:?}")
        };
        assert!(
            message.contains("provider p1 cordoned") && message.contains("off node ferry-p1"),
            "{message}"
        );
        // no controller would make it again: it is not deleted, it waits with the reason
        assert_eq!(reasons(&decide(P, &pod(None), Some(&r))), ["ProviderRefused"]);
        // other refusals of a controlled pod keep it Pending as before
        let grant = Shadow {
            refusal: Some("OverGrant: cpu"),
            ..ours()
        };
        assert_eq!(
            reasons(&decide(P, &controlled, Some(&remote(Some(grant), None)))),
            ["ProviderRefused"]
        );
        // a pod the provider still runs is not evicted by a later cordon: only new pods are refused
        let running = status(json!({"phase": "Running"}));
        assert!(matches!(
            decide(P, &controlled, Some(&remote(Some(refused), Some(Some(running))))).as_slice(),
            [Effect::PatchStatus(_)]
        ));
    }

    #[test]
    fn the_provider_status_is_copied_when_it_differs_and_says_something() {
        let running =
            status(json!({"phase": "Running", "podIP": "10.1.0.7", "podIPs": [{"ip": "10.1.0.7"}]}));
        let r = remote(Some(ours()), Some(Some(running.clone())));
        let e = decide(P, &pod(None), Some(&r));
        let [Effect::PatchStatus(patch)] = e.as_slice() else {
            panic!("{e:?}")
        };
        assert_eq!(patch["status"]["podIP"], "10.1.0.7");
        assert!(
            patch["status"]["reason"].is_null() && patch["status"].get("reason").is_some(),
            "cleared"
        );
        // the same status again: no write
        assert_eq!(
            decide(P, &pod(Some(&OwnedStatus::of(&running))), Some(&r)),
            vec![]
        );
        // Pending with nothing to say: no write; unschedulable: written
        let pending = status(json!({"phase": "Pending"}));
        let r = remote(Some(ours()), Some(Some(pending)));
        assert_eq!(decide(P, &pod(None), Some(&r)), vec![]);
        let unsched =
            status(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}));
        let r = remote(Some(ours()), Some(Some(unsched)));
        assert!(matches!(
            decide(P, &pod(None), Some(&r)).as_slice(),
            [Effect::PatchStatus(_)]
        ));
    }

    #[test]
    fn a_cached_status_keeps_every_field_the_comparison_reads_and_nothing_else() {
        let full = json!({
            "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}],
            "hostIP": "10.0.0.1", "startTime": "2026-01-01T00:00:00Z", "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2, "image": "nginx", "imageID": "sha",
                                   "containerID": "x://1", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        });
        // read from the wire, the cache keeps exactly what the comparison of a full status reads
        let cached: OwnedStatus = serde_json::from_value(full.clone()).unwrap();
        let st = status(full);
        assert_eq!(cached, OwnedStatus::of(&st));
        assert_eq!(cached.pod_ips, ["10.0.0.7", "fd00::7"]);
        assert!(cached.ready());
        assert_eq!(
            cached.container_statuses[0].state,
            OwnedState {
                running: true,
                terminated: false
            }
        );
        // an unchanged pod is not written again
        assert_eq!(status_patch(&st, Some(&cached)), None);
        // each owned field is still seen
        let mut changed = st.clone();
        changed.container_statuses.as_mut().unwrap()[0].restart_count = 3;
        assert!(status_patch(&changed, Some(&cached)).is_some(), "a restart");
        let mut changed = st.clone();
        changed.conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(status_patch(&changed, Some(&cached)).is_some(), "not Ready");
        let mut changed = st.clone();
        changed.container_statuses.as_mut().unwrap()[0].state = Some(Default::default());
        assert!(status_patch(&changed, Some(&cached)).is_some(), "stopped");
        // nulls read as empty; a status from an older apiserver without lists reads too
        let sparse: OwnedStatus =
            serde_json::from_value(json!({"phase": "Pending", "conditions": null, "podIPs": null})).unwrap();
        assert_eq!(sparse.phase.as_deref(), Some("Pending"));
        assert!(sparse.conditions.is_empty() && sparse.pod_ips.is_empty() && !sparse.ready());
    }
}
