//! Object reflection of one offloaded namespace: ConfigMaps, Secrets and Services are copied to the
//! provider (server-side apply, labelled with the consumer's ID), and EndpointSlices follow with the
//! endpoints of the pods that run here, addresses in the provider's view. A copy goes with its original.
//!
//! After every (re)list of the originals, copies whose original is gone are pruned ([`stale`]), so an
//! object deleted while the agent was down (or during a watch gap) does not live on at the provider.
//! The copies are found by their label at the provider, except Secrets: the tenant may write Secrets
//! there but never read or list them, so the consumer keeps a ledger of the Secrets it copied
//! ([`Ledger`], a ConfigMap in its own `ferry-system`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::peer::Peer;
use crate::pods::PodReflector;
use crate::translate::{MANAGED_BY, ORIGIN_CLUSTER_LABEL};

/// The field manager of every copy.
const MANAGER: &str = "ferry-virtual-kubelet";

/// The copies to delete after a complete list: those present at the provider whose original was not in
/// the list (pure).
pub fn stale(expected: &BTreeSet<String>, copies: impl IntoIterator<Item = String>) -> Vec<String> {
    copies.into_iter().filter(|c| !expected.contains(c)).collect()
}

/// Tracks one watch's initial list: the copy names it should leave in place once the list is complete.
#[derive(Debug, Default)]
pub struct Relist {
    seen: BTreeSet<String>,
}

impl Relist {
    /// Consumes one watch event (`copy`: the name of the copy the event's object has, if reflected);
    /// returns the expected copy names when the event completes a list.
    pub fn on<K>(
        &mut self,
        ev: &watcher::Event<K>,
        copy: impl Fn(&K) -> Option<String>,
    ) -> Option<BTreeSet<String>> {
        match ev {
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::InitApply(o) => {
                if let Some(n) = copy(o) {
                    self.seen.insert(n);
                }
                None
            }
            watcher::Event::InitDone => Some(std::mem::take(&mut self.seen)),
            _ => None,
        }
    }
}

/// Deletes the copies at `remote` (selected by `selector`) that are not `expected`.
async fn prune(remote: &Api<DynamicObject>, selector: &str, expected: &BTreeSet<String>, what: &str) {
    let copies = match remote
        .list_metadata(&ListParams::default().labels(selector))
        .await
    {
        Ok(l) => l.items.into_iter().map(|o| o.name_any()),
        Err(e) => {
            warn!("listing copied {what}s at the provider: {e}");
            return;
        }
    };
    for name in stale(expected, copies) {
        info!(
            name,
            "the original {what} is gone; deleting its copy at the provider"
        );
        if let Err(e) = remote.delete(&name, &DeleteParams::default()).await
            && !matches!(&e, kube::Error::Api(a) if a.code == 404)
        {
            warn!(name, "deleting the copied {what}: {e}");
        }
    }
}

/// The consumer's own record of the Secrets it copied to one provider: ConfigMap
/// `ferry-system/ferry-secret-copies-<provider>`, one key `<namespace>.<name>` per copy (both DNS names,
/// so the key is a valid ConfigMap key and unambiguous: a namespace has no dots).
#[derive(Clone)]
pub struct Ledger {
    api: Api<ConfigMap>,
    name: String,
}

impl Ledger {
    /// The ledger of the copies to `provider`, kept in `local`.
    pub fn new(local: &kube::Client, provider: &str) -> Self {
        Self {
            api: Api::namespaced(local.clone(), ferry_crds::identity::SYSTEM_NAMESPACE),
            name: format!("ferry-secret-copies-{provider}"),
        }
    }

    fn key(ns: &str, name: &str) -> String {
        format!("{ns}.{name}")
    }

    /// Records (`true`) or forgets (`false`) the copy of `ns/name`.
    async fn set(&self, ns: &str, name: &str, copied: bool) {
        let v = if copied {
            json!("")
        } else {
            serde_json::Value::Null
        };
        let patch = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "ferry"}},
            "data": {Self::key(ns, name): v}});
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // the first record creates the ledger
            Err(kube::Error::Api(e)) if e.code == 404 && copied => {
                let cm: ConfigMap = serde_json::from_value(patch).unwrap_or_default();
                if let Err(e) = self.api.create(&Default::default(), &cm).await {
                    warn!("creating the Secret copy ledger {}: {e}", self.name);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!("the Secret copy ledger {}: {e}", self.name),
        }
    }

    /// The Secrets of `ns` recorded as copied.
    async fn names(&self, ns: &str) -> Result<Vec<String>, kube::Error> {
        let prefix = format!("{ns}.");
        Ok(self
            .api
            .get_opt(&self.name)
            .await?
            .and_then(|c| c.data)
            .unwrap_or_default()
            .into_keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }
}

/// How a kind's copies at the provider are found for pruning.
#[derive(Clone)]
enum Found {
    /// By the consumer's label, listing at the provider.
    ByLabel,
    /// In the consumer's ledger (the tenant cannot list the kind there).
    InLedger(Box<Ledger>),
}

/// Deletes the Secrets of `ns` in the ledger whose original is not `expected`.
async fn prune_ledger(
    ledger: &Ledger,
    remote: &Api<DynamicObject>,
    local_ns: &str,
    expected: &BTreeSet<String>,
) {
    let recorded = match ledger.names(local_ns).await {
        Ok(n) => n,
        Err(e) => {
            warn!("reading the Secret copy ledger: {e}");
            return;
        }
    };
    for name in stale(expected, recorded) {
        info!(
            name,
            "the original Secret is gone; deleting its copy at the provider"
        );
        match remote.delete(&name, &DeleteParams::default()).await {
            Ok(_) => ledger.set(local_ns, &name, false).await,
            Err(kube::Error::Api(e)) if e.code == 404 => ledger.set(local_ns, &name, false).await,
            Err(e) => warn!(name, "deleting the copied Secret: {e}"),
        }
    }
}

/// A dynamic API of `K` at the provider, for pruning by label.
fn dynamic<K: Resource<DynamicType = ()>>(peer: &Peer, rns: &str) -> Api<DynamicObject> {
    let ar = kube::discovery::ApiResource::erase::<K>(&());
    Api::namespaced_with(peer.remote.clone(), rns, &ar)
}

/// Copies objects of kind `K` that `keep` accepts from `local_ns` to `rns` until the task is dropped.
async fn copy<K>(peer: Arc<Peer>, local_ns: String, rns: String, keep: fn(&K) -> bool, found: Found)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let remote: Api<K> = Api::namespaced(peer.remote.clone(), &rns);
    let pruner = dynamic::<K>(&peer, &rns);
    let selector = format!("{ORIGIN_CLUSTER_LABEL}={}", peer.consumer);
    let stream = watcher(
        Api::<K>::namespaced(peer.local.clone(), &local_ns),
        watcher::Config::default(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    let mut relist = Relist::default();
    while let Some(ev) = stream.next().await {
        let Ok(ev) = ev else { continue };
        if let Some(expected) = relist.on(&ev, |o: &K| keep(o).then(|| o.name_any())) {
            match &found {
                Found::ByLabel => prune(&pruner, &selector, &expected, &kind).await,
                Found::InLedger(l) => prune_ledger(l, &pruner, &local_ns, &expected).await,
            }
        }
        match ev {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) if keep(&o) => {
                let mut v = serde_json::to_value(&o).unwrap_or_default();
                v["metadata"] = json!({
                    "name": o.name_any(), "namespace": rns,
                    "labels": {ORIGIN_CLUSTER_LABEL: peer.consumer},
                });
                if let Err(e) = remote
                    .patch(
                        &o.name_any(),
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&v),
                    )
                    .await
                {
                    warn!(
                        ns = rns,
                        name = o.name_any(),
                        "copying the {kind} to the provider: {e}"
                    );
                }
            }
            watcher::Event::Delete(o) if keep(&o) => {
                let _ = remote.delete(&o.name_any(), &DeleteParams::default()).await;
            }
            _ => {}
        }
    }
}

/// ConfigMaps and Secrets of the offloaded namespace, copied to the provider. Service-account tokens
/// and the cluster CA bundle stay home.
pub(crate) async fn copy_config(peer: Arc<Peer>, local_ns: String, rns: String) {
    fn keep_cm(c: &ConfigMap) -> bool {
        c.name_any() != "kube-root-ca.crt"
    }
    fn keep_secret(s: &Secret) -> bool {
        s.type_.as_deref() != Some("kubernetes.io/service-account-token")
    }
    let ledger = Found::InLedger(Box::new(Ledger::new(&peer.local, &peer.provider)));
    tokio::join!(
        copy::<ConfigMap>(
            peer.clone(),
            local_ns.clone(),
            rns.clone(),
            keep_cm,
            Found::ByLabel
        ),
        copy::<Secret>(peer, local_ns, rns, keep_secret, ledger),
    );
}

/// Services of the offloaded namespace, copied to the provider (its copy selects the offloaded pods
/// there), and their EndpointSlices with the endpoints of the pods that run here.
pub(crate) async fn reflect_services(ctx: Arc<PodReflector>, local_ns: String, rns: String) {
    let peer = ctx.peer.clone();
    let pp = PatchParams::apply(MANAGER).force();
    let selector = format!("{ORIGIN_CLUSTER_LABEL}={}", peer.consumer);
    let services = async {
        let remote: Api<Service> = Api::namespaced(peer.remote.clone(), &rns);
        let pruner = dynamic::<Service>(&peer, &rns);
        let stream = watcher(
            Api::<Service>::namespaced(peer.local.clone(), &local_ns),
            watcher::Config::default(),
        )
        .default_backoff();
        futures::pin_mut!(stream);
        let mut relist = Relist::default();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            if let Some(expected) = relist.on(&ev, |s: &Service| Some(s.name_any())) {
                prune(&pruner, &selector, &expected, "Service").await;
            }
            match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                    let body = crate::translate::service_to_remote(&s, &rns, &peer.consumer);
                    if let Err(e) = remote.patch(&s.name_any(), &pp, &Patch::Apply(&body)).await {
                        warn!(
                            ns = rns,
                            service = s.name_any(),
                            "copying the Service to the provider: {e}"
                        );
                    }
                }
                watcher::Event::Delete(s) => {
                    let _ = remote.delete(&s.name_any(), &DeleteParams::default()).await;
                }
                _ => {}
            }
        }
    };
    let slices = async {
        use ferry_plumbing::discovery::endpoint_slice_resource;
        let (Some(local_ar), Some(remote_ar)) = (
            endpoint_slice_resource(&peer.local).await,
            endpoint_slice_resource(&peer.remote).await,
        ) else {
            warn!("discovery.k8s.io EndpointSlice is not served on both clusters; endpoints are not copied");
            return;
        };
        let remote: Api<DynamicObject> = Api::namespaced_with(peer.remote.clone(), &rns, &remote_ar);
        let local: Api<DynamicObject> = Api::namespaced_with(peer.local.clone(), &local_ns, &local_ar);
        let slice_selector = format!("{selector},{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let ours = |o: &DynamicObject| o.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
        let stream = watcher(local, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let translate = |ip: IpAddr| ferry_tunnel::ipam::translate(ip, &peer.provider_view).unwrap_or(ip);
        let mut relist = Relist::default();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            if let Some(expected) = relist.on(&ev, |o: &DynamicObject| {
                (!ours(o)).then(|| format!("ferry-{}", o.name_any()))
            }) {
                prune(&remote, &slice_selector, &expected, "EndpointSlice").await;
            }
            match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    if ours(&o) {
                        continue;
                    }
                    let offloaded: std::collections::HashSet<String> = ctx
                        .local_pods
                        .state()
                        .iter()
                        .filter(|p| p.namespace().as_deref() == Some(&local_ns))
                        .map(|p| p.name_any())
                        .collect();
                    let v = serde_json::to_value(&o).unwrap_or_default();
                    let name = format!("ferry-{}", o.name_any());
                    match crate::translate::endpoint_slice_to_remote(
                        &v,
                        &offloaded,
                        translate,
                        &rns,
                        &peer.consumer,
                    ) {
                        Some(mut body) => {
                            body["apiVersion"] = remote_ar.api_version.clone().into();
                            if let Err(e) = remote.patch(&name, &pp, &Patch::Apply(&body)).await {
                                warn!(
                                    ns = rns,
                                    slice = name,
                                    "copying the EndpointSlice to the provider: {e}"
                                );
                            }
                        }
                        None => {
                            let _ = remote.delete(&name, &DeleteParams::default()).await;
                        }
                    }
                }
                watcher::Event::Delete(o) => {
                    let _ = remote
                        .delete(&format!("ferry-{}", o.name_any()), &DeleteParams::default())
                        .await;
                }
                _ => {}
            }
        }
    };
    tokio::join!(services, slices);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn copies_whose_original_is_gone_are_stale_and_no_other() {
        let expected: BTreeSet<String> = ["a".into(), "b".into()].into();
        assert_eq!(
            stale(&expected, ["a".into(), "gone".into(), "b".into()]),
            vec!["gone".to_string()]
        );
        assert!(stale(&expected, Vec::<String>::new()).is_empty());
        assert_eq!(stale(&BTreeSet::new(), ["x".into()]), vec!["x".to_string()]);
    }

    #[test]
    fn a_complete_list_yields_the_reflected_names_and_a_relist_starts_afresh() {
        let mut r = Relist::default();
        let copy = |c: &ConfigMap| (c.name_any() != "kube-root-ca.crt").then(|| c.name_any());
        assert_eq!(r.on(&watcher::Event::Init, copy), None);
        assert_eq!(r.on(&watcher::Event::InitApply(cm("app")), copy), None);
        assert_eq!(
            r.on(&watcher::Event::InitApply(cm("kube-root-ca.crt")), copy),
            None
        );
        assert_eq!(
            r.on(&watcher::Event::Apply(cm("later")), copy),
            None,
            "not part of a list"
        );
        assert_eq!(
            r.on(&watcher::Event::<ConfigMap>::InitDone, copy),
            Some(["app".to_string()].into())
        );
        // the watch restarts (desync or agent restart): what was seen before does not count
        r.on(&watcher::Event::Init, copy);
        r.on(&watcher::Event::InitApply(cm("other")), copy);
        assert_eq!(
            r.on(&watcher::Event::<ConfigMap>::InitDone, copy),
            Some(["other".to_string()].into())
        );
    }
}
