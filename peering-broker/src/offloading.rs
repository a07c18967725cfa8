//! The consumer's side of offloading (run by `ferry-agent`).
//!
//! [`reconcile`] (a kube-runtime `Controller` over `NamespaceOffloading`): for every provider this cluster
//! is peered with (an identity Secret exists) whose virtual node matches `clusterSelector`, ask the
//! provider's broker (mTLS, the tenant's identity) for the namespace the pods go to, and record it in
//! `status.remoteNamespaces`. Looked at again every 30 s, so a new peering picks up offloaded namespaces.
//!
//! [`run_virtual_kubelets`]: one [`ferry_virtual_kubelet::consumer::run`] task per authenticated peering,
//! started when the identity appears and stopped (node removed) when the peering goes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{ForeignCluster, NamespaceOffloading};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::consumer::identity_secret;
use crate::identity::text;
use crate::provider::SYSTEM_NAMESPACE;
use crate::wire::{OffloadRequest, OffloadResponse};

/// Reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Asking a provider or writing status failed; retried.
    #[error("{0}")]
    Transient(String),
}

/// Peerings with an identity: provider ID → its identity Secret.
pub async fn identities(client: &Client) -> Result<BTreeMap<String, Secret>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let mut out = BTreeMap::new();
    for fc in fcs.list(&ListParams::default()).await? {
        let name = fc.name_any();
        if let Some(s) = secrets.get_opt(&identity_secret(&name)).await? {
            out.insert(name, s);
        }
    }
    Ok(out)
}

/// Whether the virtual node of `provider` matches a `clusterSelector`.
pub fn selected(selector: &BTreeMap<String, String>, provider: &str) -> bool {
    let labels: BTreeMap<String, String> = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(provider)
        .labels
        .into_iter()
        .collect();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Label on a consumer namespace whose pods the webhook must see (`failurePolicy: Fail` for it).
pub const OFFLOADED_LABEL: &str = "ferry.dev/offloaded";

/// Finalizer on `NamespaceOffloading`: the provider namespaces go when it goes.
pub const FINALIZER: &str = "ferry.dev/offloading";

/// Sets or clears [`OFFLOADED_LABEL`] on namespace `ns`.
pub async fn label_namespace(client: &Client, ns: &str, on: bool) -> Result<(), kube::Error> {
    let v = if on {
        json!("true")
    } else {
        serde_json::Value::Null
    };
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {OFFLOADED_LABEL: v}}})),
        )
        .await
        .map(|_| ())
}

/// One reconcile of one `NamespaceOffloading` (with its finalizer).
#[tracing::instrument(skip_all, fields(ns = no.namespace().unwrap_or_default()))]
pub async fn reconcile(
    no: Arc<NamespaceOffloading>,
    client: Arc<Client>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let api: Api<NamespaceOffloading> =
        Api::namespaced((*client).clone(), &no.namespace().unwrap_or_default());
    kube::runtime::finalizer(&api, FINALIZER, no, |ev| async {
        match ev {
            kube::runtime::finalizer::Event::Apply(no) => apply(no, client.clone()).await,
            kube::runtime::finalizer::Event::Cleanup(no) => cleanup(no, client.clone()).await,
        }
    })
    .await
}

/// The provider namespaces are deleted through each broker (best effort: an unreachable provider must
/// not keep the consumer namespace from being deleted; unpeering removes them anyway), and the label goes.
async fn cleanup(no: Arc<NamespaceOffloading>, client: Arc<Client>) -> Result<Action, Error> {
    let ns = no.namespace().unwrap_or_default();
    let ids = identities(&client).await.unwrap_or_default();
    let remote = no
        .status
        .as_ref()
        .map(|s| s.remote_namespaces.clone())
        .unwrap_or_default();
    for (provider, rns) in remote {
        let Some(s) = ids.get(&provider) else { continue };
        let url = text(s, "brokerURL").unwrap_or_default();
        let path = format!("/v1/namespaces/{rns}");
        let r = crate::consumer::call_broker(s, "DELETE", &path, None).await;
        match r {
            Ok((200 | 404, _)) => info!(provider, namespace = rns, "provider namespace deleted"),
            Ok((status, b)) => warn!(
                provider,
                "{url}{path} answered {status}: {}",
                String::from_utf8_lossy(&b)
            ),
            Err(e) => warn!(provider, "{url}{path}: {e:#}"),
        }
    }
    if let Err(e) = label_namespace(&client, &ns, false).await {
        // the namespace itself may be going away
        tracing::debug!("unlabelling namespace {ns}: {e}");
    }
    Ok(Action::await_change())
}

async fn apply(no: Arc<NamespaceOffloading>, client: Arc<Client>) -> Result<Action, Error> {
    let ns = no.namespace().unwrap_or_default();
    label_namespace(&client, &ns, true)
        .await
        .map_err(|e| Error::Transient(format!("labelling namespace {ns}: {e}")))?;
    let ids = identities(&client)
        .await
        .map_err(|e| Error::Transient(format!("listing peerings: {e}")))?;
    let mut remote = no
        .status
        .as_ref()
        .map(|s| s.remote_namespaces.clone())
        .unwrap_or_default();
    let mut errors = Vec::new();
    for (provider, s) in &ids {
        if !selected(&no.spec.cluster_selector, provider) {
            remote.remove(provider);
            continue;
        }
        let body = serde_json::to_vec(&OffloadRequest {
            namespace: ns.clone(),
            mapping: no.spec.namespace_mapping_strategy,
        })
        .unwrap_or_default();
        let url = text(s, "brokerURL").unwrap_or_default();
        let r = crate::consumer::call_broker(s, "POST", "/v1/namespaces", Some(&body)).await;
        match r {
            Ok((200, b)) => match serde_json::from_slice::<OffloadResponse>(&b) {
                Ok(o) => {
                    remote.insert(provider.clone(), o.namespace);
                }
                Err(e) => errors.push(format!("{url}/v1/namespaces: {e}")),
            },
            Ok((status, b)) => errors.push(format!(
                "{url}/v1/namespaces answered {status}: {}",
                String::from_utf8_lossy(&b)
            )),
            Err(e) => errors.push(format!("{url}/v1/namespaces: {e:#}")),
        }
    }
    remote.retain(|p, _| ids.contains_key(p));
    let ready = errors.is_empty();
    let message = if ready {
        format!("offloaded to {} provider(s)", remote.len())
    } else {
        errors.join("; ")
    };
    let old_ready = no
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let changed = no.status.as_ref().map(|s| &s.remote_namespaces) != Some(&remote)
        || old_ready.map(|c| (c.status.as_str(), c.message.as_str()))
            != Some((if ready { "True" } else { "False" }, message.as_str()));
    if changed {
        let status = json!({"status": {
            "remoteNamespaces": remote,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                "reason": if ready { "Offloaded" } else { "ProviderRefused" }, "message": message,
                "lastTransitionTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()}],
        }});
        Api::<NamespaceOffloading>::namespaced((*client).clone(), &ns)
            .patch_status(&no.name_any(), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| Error::Transient(format!("NamespaceOffloading {ns} status: {e}")))?;
    }
    if !ready {
        warn!("{message}");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Runs the `NamespaceOffloading` reconciler.
pub async fn run(client: Client) {
    Controller::new(
        Api::<NamespaceOffloading>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile,
        |_, e, _| {
            warn!("{e}");
            Action::requeue(Duration::from_secs(5))
        },
        Arc::new(client),
    )
    .for_each(|_| async {})
    .await;
}

/// How this cluster sees the provider's pod CIDRs: itself where it does not overlap ours, else a
/// same-size prefix from ferry's pool (deterministic, so every restart picks the same).
pub fn remaps_for(provider_cidrs: &[IpNet], local_cidrs: &[IpNet]) -> BTreeMap<IpNet, IpNet> {
    let pool: Vec<IpNet> = ferry_tunnel::ipam::default_pool_v4()
        .into_iter()
        .chain(ferry_tunnel::ipam::default_pool_v6())
        .collect();
    ferry_tunnel::ipam::plan_remaps(provider_cidrs, local_cidrs, &BTreeMap::new(), &pool).unwrap_or_default()
}

/// The remaps the gateway applied for `peer` (its `PeerNetwork` status), if it has reported them.
fn applied_remaps(pn: &ferry_crds::PeerNetwork) -> Option<BTreeMap<IpNet, IpNet>> {
    let remaps: BTreeMap<IpNet, IpNet> = pn
        .status
        .as_ref()?
        .remaps
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect();
    (!remaps.is_empty()).then_some(remaps)
}

/// How this cluster sees `peer`'s addresses: the remaps its gateway applied (the `PeerNetwork` status);
/// before the gateway has reported, the same deterministic choice the gateway makes from the
/// `PeerNetwork`'s CIDRs; without a `PeerNetwork`, that choice for `fallback` (remote, local CIDRs).
/// One GET of the `PeerNetwork`.
pub async fn peer_remaps(
    client: &Client,
    peer: &str,
    fallback: (&[IpNet], &[IpNet]),
) -> BTreeMap<IpNet, IpNet> {
    let pn = Api::<ferry_crds::PeerNetwork>::all(client.clone())
        .get_opt(peer)
        .await
        .ok()
        .flatten();
    let Some(pn) = pn else {
        return remaps_for(fallback.0, fallback.1);
    };
    if let Some(r) = applied_remaps(&pn) {
        return r;
    }
    let parse = |v: &[String]| -> Vec<IpNet> { v.iter().filter_map(|c| c.parse().ok()).collect() };
    remaps_for(&parse(&pn.spec.remote_cidrs), &parse(&pn.spec.local_cidrs))
}

/// The remaps the gateway reported for `peer`, if it has (`None` also when the `PeerNetwork` is absent).
pub async fn gateway_remaps(client: &Client, peer: &str) -> Option<BTreeMap<IpNet, IpNet>> {
    let pn = Api::<ferry_crds::PeerNetwork>::all(client.clone())
        .get_opt(peer)
        .await
        .ok()??;
    applied_remaps(&pn)
}

/// Starts and stops the virtual kubelets: one per peering with an identity. A virtual kubelet translates
/// addresses with the remaps the gateway reports in the `PeerNetwork` status (restarted when they change),
/// or, until the gateway has reported, with the same deterministic choice the gateway makes.
pub async fn run_virtual_kubelets(client: Client, consumer: String, local_cidrs: Vec<IpNet>) {
    // per provider: the virtual kubelet, the remaps and the client certificate it runs with
    type Running = (tokio::task::JoinHandle<()>, BTreeMap<IpNet, IpNet>, String);
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        match identities(&client).await {
            Ok(ids) => {
                for (provider, (task, remaps, cert)) in running.iter_mut() {
                    if task.is_finished() && ids.contains_key(provider) {
                        warn!(provider, "virtual kubelet stopped; restarting it");
                    }
                    if ids
                        .get(provider)
                        .is_some_and(|s| text(s, "tls.crt").as_ref() != Some(cert))
                    {
                        info!(
                            provider,
                            "the identity was renewed; restarting the virtual kubelet with it"
                        );
                        task.abort();
                    }
                    if let Some(applied) = gateway_remaps(&client, provider).await
                        && &applied != remaps
                    {
                        info!(
                            provider,
                            ?applied,
                            "the gateway's remaps differ; restarting the virtual kubelet with them"
                        );
                        task.abort();
                    }
                }
                running.retain(|_, (t, _, _)| !t.is_finished());
                let gone: Vec<String> = running
                    .keys()
                    .filter(|p| !ids.contains_key(*p))
                    .cloned()
                    .collect();
                for p in gone {
                    if let Some((t, _, _)) = running.remove(&p) {
                        t.abort();
                    }
                    info!(provider = p, "peering gone; removing its virtual node");
                    if let Err(e) = ferry_virtual_kubelet::consumer::remove_node(&client, &p).await {
                        warn!("{e}");
                    }
                }
                for (provider, s) in ids {
                    if running.contains_key(&provider) {
                        continue;
                    }
                    match start_one(&client, &consumer, &local_cidrs, &provider, &s).await {
                        Ok((t, remaps)) => {
                            running.insert(provider, (t, remaps, text(&s, "tls.crt").unwrap_or_default()));
                        }
                        Err(e) => warn!(provider, "virtual kubelet not started: {e:#}"),
                    }
                }
            }
            Err(e) => warn!("listing peerings: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn start_one(
    client: &Client,
    consumer: &str,
    local_cidrs: &[IpNet],
    provider: &str,
    s: &Secret,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, BTreeMap<IpNet, IpNet>)> {
    let get = |k: &str| text(s, k).unwrap_or_default();
    let kc = kube::config::Kubeconfig::from_yaml(&get("kubeconfig"))?;
    crate::consumer::check_kubeconfig(&kc).map_err(|e| anyhow::anyhow!("identity of {provider}: {e}"))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    cfg.connect_timeout = Some(Duration::from_secs(2));
    let remote = Client::try_from(cfg)?;
    let provider_cidrs: Vec<IpNet> = get("podCIDRs")
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let peer = ferry_virtual_kubelet::consumer::Peer {
        provider: provider.to_string(),
        consumer: consumer.to_string(),
        tenant_namespace: get("tenantNamespace"),
        remaps: peer_remaps(client, provider, (&provider_cidrs, local_cidrs)).await,
        provider_view: remaps_for(local_cidrs, &provider_cidrs),
        local: client.clone(),
        remote,
        version: format!("ferry-{}", env!("CARGO_PKG_VERSION")),
    };
    info!(provider, remaps = ?peer.remaps, "starting the virtual kubelet");
    let remaps = peer.remaps.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = ferry_virtual_kubelet::consumer::run(peer).await {
            warn!("virtual kubelet: {e}");
        }
    });
    Ok((task, remaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_selectors_match_virtual_node_labels() {
        let sel = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(selected(&sel(&[]), "p1"));
        assert!(selected(&sel(&[("ferry.dev/remote-cluster-id", "p1")]), "p1"));
        assert!(!selected(&sel(&[("ferry.dev/remote-cluster-id", "p2")]), "p1"));
        assert!(!selected(&sel(&[("region", "eu")]), "p1"));
    }

    #[test]
    fn an_overlapping_provider_cidr_is_remapped_the_same_way_every_time() {
        let kubeadm: IpNet = "10.244.0.0/16".parse().unwrap();
        let a = remaps_for(&[kubeadm], &[kubeadm]);
        assert_ne!(a[&kubeadm], kubeadm);
        assert_eq!(a[&kubeadm].prefix_len(), 16);
        assert_eq!(a, remaps_for(&[kubeadm], &[kubeadm]));
        let other: IpNet = "10.245.0.0/16".parse().unwrap();
        assert_eq!(remaps_for(&[other], &[kubeadm])[&other], other);
    }
}
