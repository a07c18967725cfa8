//! The agent's MCS sync: this cluster's exports out to each provider (and, as a provider, tenants' in
//! through the broker), the merged imports written as `ServiceImport`s, derived Services and
//! EndpointSlices, and each `ServiceExport`'s conditions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_crds::mcs::{
    CONDITION_CONFLICT, CONDITION_VALID, ClusterStatus, LABEL_SERVICE_NAME, ServiceExport, ServiceImport,
    ServiceImportSpec, ServiceImportStatus, ServiceImportType,
};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::Error;
use crate::exports::*;

type SliceResource = Option<kube::discovery::ApiResource>;

async fn slice_resource(client: &Client) -> SliceResource {
    ferry_plumbing::discovery::endpoint_slice_resource(client).await
}

fn slice_api(client: &Client, ar: &SliceResource, ns: &str) -> Option<Api<kube::core::DynamicObject>> {
    ar.as_ref().map(|ar| Api::namespaced_with(client.clone(), ns, ar))
}

async fn list_slices(
    client: &Client,
    ar: &SliceResource,
    ns: &str,
    selector: &str,
) -> kube::Result<Vec<serde_json::Value>> {
    let Some(api) = slice_api(client, ar, ns) else {
        return Ok(Vec::new());
    };
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect())
}

/// Why a `ServiceExport` is not exported: `(reason, message)`.
pub type Invalid = Option<(String, String)>;

/// This cluster's exports from what the stores hold, and the validity of each `ServiceExport` (pure).
/// `slices`: the EndpointSlices (JSON, any version) of the exported Services.
pub fn local_exports(
    exports: &[Arc<ServiceExport>],
    service: &dyn Fn(&str, &str) -> Option<Arc<Service>>,
    slices: &[serde_json::Value],
    cluster: &str,
) -> (Vec<ExportedService>, Vec<(Arc<ServiceExport>, Invalid)>) {
    let mut out = Vec::new();
    let mut validity = Vec::new();
    for se in exports {
        let ns = se.namespace().unwrap_or_default();
        let name = se.name_any();
        let Some(svc) = service(&ns, &name) else {
            validity.push((
                se.clone(),
                Some((
                    "ServiceMissing".into(),
                    format!("no Service {ns}/{name}; fix: create the Service, or delete this ServiceExport"),
                )),
            ));
            continue;
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            validity.push((
                se.clone(),
                Some((
                    "UnsupportedServiceType".into(),
                    "an ExternalName Service cannot be exported; fix: export a ClusterIP or headless Service"
                        .into(),
                )),
            ));
            continue;
        }
        let own: Vec<serde_json::Value> = slices
            .iter()
            .filter(|s| {
                s["metadata"]["namespace"] == ns.as_str()
                    && s["metadata"]["labels"]["kubernetes.io/service-name"] == name.as_str()
            })
            .cloned()
            .collect();
        let created = se
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        out.push(export_of(cluster, &created, &svc, &own));
        validity.push((se.clone(), None));
    }
    (out, validity)
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> serde_json::Value {
    use ferry_plumbing::conditions;
    conditions::condition(type_, ok, reason, message, &conditions::now())
}

async fn set_export_status(
    client: &Client,
    se: &ServiceExport,
    invalid: &Option<(String, String)>,
    conflict: Option<&BTreeSet<String>>,
) {
    let api: Api<ServiceExport> = Api::namespaced(client.clone(), &se.namespace().unwrap_or_default());
    let valid = match invalid {
        None => condition(
            CONDITION_VALID,
            true,
            "Exported",
            "the Service is exported to the clusterset",
        ),
        Some((reason, msg)) => condition(CONDITION_VALID, false, reason, msg),
    };
    let conflict = match conflict {
        Some(c) if !c.is_empty() => condition(
            CONDITION_CONFLICT,
            true,
            "PortConflict",
            &format!(
                "the export of {} differs in ports or type from the oldest export of this name; this cluster's endpoints are left out of the import; fix: export the same ports and type from every cluster",
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        _ => condition(CONDITION_CONFLICT, false, "NoConflict", "no conflicting export"),
    };
    // keep lastTransitionTime when the status does not change
    let old = se.status.clone().unwrap_or_default().conditions;
    let mut conds = vec![valid, conflict];
    for c in &mut conds {
        if let Some(o) = old
            .iter()
            .find(|o| o.type_ == c["type"].as_str().unwrap_or_default())
            && o.status == c["status"].as_str().unwrap_or_default()
            && o.message == c["message"].as_str().unwrap_or_default()
        {
            c["lastTransitionTime"] = json!(o.last_transition_time);
        }
    }
    if old.len() == 2
        && conds.iter().all(|c| {
            old.iter().any(|o| {
                o.type_ == c["type"].as_str().unwrap_or_default()
                    && o.status == c["status"].as_str().unwrap_or_default()
                    && o.message == c["message"].as_str().unwrap_or_default()
            })
        })
    {
        return;
    }
    let patch = json!({ "status": { "conditions": conds } });
    if let Err(e) = api
        .patch_status(&se.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        warn!(
            "ServiceExport {}/{} status: {e}",
            se.namespace().unwrap_or_default(),
            se.name_any()
        );
    }
}

async fn apply_imports(client: &Client, ar: &SliceResource, merged: &Imports) -> Result<(), Error> {
    let pp = PatchParams::apply("ferry-mcs").force();
    let version = ar.as_ref().map(|a| a.api_version.clone()).unwrap_or_default();
    for ((ns, name), imp) in merged {
        if imp.endpoints.is_empty() && !imp.conflicts.is_empty() && imp.ports.is_empty() {
            continue;
        }
        let imports: Api<ServiceImport> = Api::namespaced(client.clone(), ns);
        let mut ips = Vec::new();
        if imp.type_ == ServiceImportType::ClusterSetIP {
            let services: Api<Service> = Api::namespaced(client.clone(), ns);
            let derived = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": format!("{DERIVED_PREFIX}{name}"), "namespace": ns,
                              "labels": { MANAGED_LABEL: MANAGED_VALUE, LABEL_SERVICE_NAME: name } },
                "spec": { "type": "ClusterIP", "ports": imp.ports.iter().map(|p| json!({
                    "name": p.name.clone().unwrap_or_default(), "protocol": p.protocol, "port": p.port })).collect::<Vec<_>>() },
            });
            let svc = services
                .patch(&format!("{DERIVED_PREFIX}{name}"), &pp, &Patch::Apply(&derived))
                .await?;
            if let Some(ip) = svc.spec.and_then(|s| s.cluster_ip).filter(|ip| ip != "None") {
                ips.push(ip);
            }
        }
        let si = ServiceImport {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some([(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string())].into()),
                ..Default::default()
            },
            spec: ServiceImportSpec {
                ports: imp.ports.clone(),
                ips,
                type_: imp.type_,
                session_affinity: None,
                session_affinity_config: None,
            },
            status: None,
        };
        let si = imports.patch(name, &pp, &Patch::Apply(&si)).await?;
        let status = ServiceImportStatus {
            clusters: imp
                .endpoints
                .keys()
                .map(|c| ClusterStatus { cluster: c.clone() })
                .collect(),
        };
        if si.status.as_ref() != Some(&status) {
            imports
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({ "status": status })),
                )
                .await?;
        }
        let owner = json!({
            "apiVersion": ServiceImport::api_version(&()), "kind": "ServiceImport",
            "name": name, "uid": si.uid().unwrap_or_default(),
        });
        let want: BTreeSet<String> = imp.endpoints.keys().map(|c| slice_name(name, c)).collect();
        if let Some(api) = slice_api(client, ar, ns) {
            for (cluster, eps) in &imp.endpoints {
                let body = import_slice(&version, ns, name, cluster, imp, eps, &owner);
                let sname = slice_name(name, cluster);
                api.patch(&sname, &pp, &Patch::Apply(&body)).await?;
            }
            let selector = format!("{LABEL_SERVICE_NAME}={name},{MANAGED_LABEL}={MANAGED_VALUE}");
            for s in list_slices(client, ar, ns, &selector).await? {
                let sname = s["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if !want.contains(&sname) {
                    let _ = api.delete(&sname, &DeleteParams::background()).await;
                }
            }
        }
    }
    // imports nobody exports any more (their derived Service and slices go with them: owner references,
    // and the derived Service explicitly)
    let all: Api<ServiceImport> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{MANAGED_LABEL}={MANAGED_VALUE}"));
    for si in all.list(&lp).await? {
        let key = (si.namespace().unwrap_or_default(), si.name_any());
        if !merged.contains_key(&key) {
            info!(
                namespace = key.0,
                name = key.1,
                "no cluster exports it any more: removing the import"
            );
            let api: Api<ServiceImport> = Api::namespaced(client.clone(), &key.0);
            let _ = api.delete(&key.1, &DeleteParams::background()).await;
            let services: Api<Service> = Api::namespaced(client.clone(), &key.0);
            let _ = services
                .delete(&format!("{DERIVED_PREFIX}{}", key.1), &DeleteParams::background())
                .await;
            let selector = format!("{LABEL_SERVICE_NAME}={},{MANAGED_LABEL}={MANAGED_VALUE}", key.1);
            if let Some(api) = slice_api(client, ar, &key.0) {
                for s in list_slices(client, ar, &key.0, &selector).await? {
                    let sname = s["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    let _ = api.delete(&sname, &DeleteParams::background()).await;
                }
            }
        }
    }
    Ok(())
}

/// How this cluster reaches its providers: the peering layer's business, handed in by the agent, so this
/// crate knows nothing of brokers, tokens or TLS.
pub trait Peers: Send + Sync {
    /// The providers this cluster exchanges exports with as a consumer (asked every pass: answer from a
    /// cache, not the apiserver).
    fn providers(&self) -> impl Future<Output = BTreeSet<String>> + Send;
    /// Sends this cluster's exports (`body`, an [`ExportList`]) to `provider`; its status and body.
    fn exchange(
        &self,
        provider: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<(u16, Vec<u8>), String>> + Send;
}

/// How often the exchange with each provider runs. This is the one timer of the sync: a provider's
/// exports are learned only by asking its broker (no watch crosses the trust boundary); everything local
/// arrives by watch and triggers a pass at once.
pub const EXCHANGE_PERIOD: Duration = Duration::from_secs(1);

/// What the sync reads, each kept by watch.
struct Stores {
    exports: Store<ServiceExport>,
    services: Store<Service>,
    slices: Option<Store<kube::core::DynamicObject>>,
    tenants: Store<ferry_crds::Tenant>,
    peer_networks: Store<ferry_crds::PeerNetwork>,
}

impl Stores {
    fn ready(&self) -> bool {
        use futures::FutureExt;
        let ok = |r: Option<Result<(), _>>| matches!(r, Some(Ok(())));
        ok(self.exports.wait_until_ready().now_or_never())
            && ok(self.services.wait_until_ready().now_or_never())
            && ok(self.tenants.wait_until_ready().now_or_never())
            && ok(self.peer_networks.wait_until_ready().now_or_never())
            && self
                .slices
                .as_ref()
                .is_none_or(|s| ok(s.wait_until_ready().now_or_never()))
    }
}

/// The MCS sync of one agent until the task is dropped: on every local change (ServiceExports,
/// Services, EndpointSlices, Tenants) and every [`EXCHANGE_PERIOD`] (the peer exchange), local exports
/// are computed from the stores ([`local_exports`]), exchanged with each provider, merged with what
/// tenants sent to the broker, and imports and `ServiceExport` conditions written where they changed.
pub async fn run<P: Peers>(client: Client, cluster: String, exchange: Arc<Exchange>, peers: P) {
    use ferry_plumbing::triggers::{dynamic_store_with_changes, store_with_changes};
    use futures::StreamExt;
    let ar = slice_resource(&client).await;
    let (exports, export_changes) = store_with_changes(
        Api::<ServiceExport>::all(client.clone()),
        watcher::Config::default(),
    );
    let (services, service_changes) =
        store_with_changes(Api::<Service>::all(client.clone()), watcher::Config::default());
    let (tenants, tenant_changes) = store_with_changes(
        Api::<ferry_crds::Tenant>::all(client.clone()),
        watcher::Config::default(),
    );
    let (peer_networks, pn_changes) = store_with_changes(
        Api::<ferry_crds::PeerNetwork>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut changes = futures::stream::select_all([
        export_changes.boxed(),
        service_changes.boxed(),
        tenant_changes.boxed(),
        pn_changes.boxed(),
    ]);
    let slices = ar.as_ref().map(|ar| {
        let (store, slice_changes) = dynamic_store_with_changes(
            client.clone(),
            ar,
            watcher::Config::default().labels("kubernetes.io/service-name"),
        );
        changes.push(slice_changes.boxed());
        store
    });
    let stores = Stores {
        exports,
        services,
        slices,
        tenants,
        peer_networks,
    };
    let mut state = SyncState {
        slices: ar,
        applied: None,
    };
    let mut tick = tokio::time::interval(EXCHANGE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = changes.next() => if c.is_none() { return },
            _ = tick.tick() => {},
        }
        // a burst of changes is one pass
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
        if !stores.ready() {
            continue;
        }
        if let Err(e) = sync_once(&client, &cluster, &exchange, &peers, &stores, &mut state).await {
            // write everything again next time
            state.applied = None;
            warn!("multi-cluster services: {e}");
        }
    }
}

/// What the sync keeps between passes.
struct SyncState {
    /// The EndpointSlice version the cluster serves (discovered once).
    slices: SliceResource,
    /// The imports last written, and when: unchanged imports are written again only every 30 s (to heal
    /// what someone else changed), not every pass.
    applied: Option<(Imports, Instant)>,
}

async fn sync_once<P: Peers>(
    client: &Client,
    cluster: &str,
    exchange: &Exchange,
    peers: &P,
    stores: &Stores,
    state: &mut SyncState,
) -> Result<(), Error> {
    let ar = &state.slices;
    let slices: Vec<serde_json::Value> = stores
        .slices
        .as_ref()
        .map(|s| {
            s.state()
                .iter()
                .map(|o| serde_json::to_value(&**o).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let service = |ns: &str, name: &str| stores.services.get(&ObjectRef::new(name).within(ns));
    let (local, validity) = local_exports(&stores.exports.state(), &service, &slices, cluster);
    *exchange.local.lock().expect("lock") = local.clone();
    let tenants: BTreeSet<String> = stores
        .tenants
        .state()
        .iter()
        .map(|t| t.spec.cluster_id.clone())
        .collect();
    let providers = peers.providers().await;
    let body = serde_json::to_vec(&ExportList {
        exports: local.clone(),
    })
    .unwrap_or_default();
    // every provider at once, each bounded in time: one unreachable peer never holds up the others
    let calls = providers.iter().map(|provider| {
        let body = &body;
        async move {
            let r = tokio::time::timeout(EXCHANGE_TIMEOUT, peers.exchange(provider, body)).await;
            (provider, r)
        }
    });
    for (provider, r) in futures::future::join_all(calls).await {
        match r {
            Ok(Ok((200, resp))) => match serde_json::from_slice::<ExportList>(&resp) {
                Ok(list) => {
                    let remaps = stores
                        .peer_networks
                        .get(&ObjectRef::new(provider))
                        .map(|pn| ferry_tunnel::remaps::of(&pn))
                        .unwrap_or_default();
                    // a provider exports its own namespaces (namespace sameness), never the reserved ones
                    for e in exchange.receive(provider, list, &remaps, &|_| true) {
                        warn!(provider, "export refused: {e}");
                    }
                }
                Err(e) => warn!(provider, "exports from the broker: {e}"),
            },
            Ok(Ok((code, resp))) => warn!(
                provider,
                code,
                "POST /v1/exports: {}",
                String::from_utf8_lossy(&resp)
            ),
            Ok(Err(e)) => warn!(provider, "POST /v1/exports: {e}"),
            Err(_) => warn!(
                provider,
                "POST /v1/exports: no answer within {EXCHANGE_TIMEOUT:?}"
            ),
        }
    }
    let all: Vec<ExportedService> = {
        let mut remote = exchange.remote.lock().expect("lock");
        // peers gone (unpeered) take their exports with them; a tenant that stopped calling for 30 s too
        remote.retain(|peer, (_, at)| {
            providers.contains(peer) || (tenants.contains(peer) && at.elapsed() < Duration::from_secs(30))
        });
        local
            .iter()
            .cloned()
            .chain(remote.values().flat_map(|(v, _)| v.iter().cloned()))
            .collect()
    };
    let merged = merge(&all);
    let fresh = state
        .applied
        .as_ref()
        .is_some_and(|(m, at)| *m == merged && at.elapsed() < Duration::from_secs(30));
    if !fresh {
        apply_imports(client, ar, &merged).await?;
        state.applied = Some((merged.clone(), Instant::now()));
    }
    for (se, invalid) in &validity {
        let key = (se.namespace().unwrap_or_default(), se.name_any());
        let conflict = merged
            .get(&key)
            .filter(|m| m.conflicts.contains(cluster))
            .map(|m| &m.conflicts);
        set_export_status(client, se, invalid, conflict).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(ns: &str, name: &str) -> Arc<ServiceExport> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-12-04T00:00:00Z"},
            }))
            .unwrap(),
        )
    }

    fn service(ns: &str, name: &str, type_: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": type_, "ports": [{"port": 80}]},
            }))
            .unwrap(),
        )
    }

    fn slice(ns: &str, service: &str, ip: &str) -> serde_json::Value {
        json!({"metadata": {"name": format!("{service}-x"), "namespace": ns,
                            "labels": {"kubernetes.io/service-name": service}},
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
    }

    #[test]
    fn local_exports_come_from_the_stores_and_each_export_says_why_it_is_not_exported() {
        let exports = [
            export("a", "web"),
            export("a", "missing"),
            export("a", "ext"),
            export("b", "web"),
        ];
        let services = [
            service("a", "web", "ClusterIP"),
            service("a", "ext", "ExternalName"),
            service("b", "web", "ClusterIP"),
        ];
        let lookup = |ns: &str, name: &str| {
            services
                .iter()
                .find(|s| s.namespace().as_deref() == Some(ns) && s.name_any() == name)
                .cloned()
        };
        // a slice of the same Service name in another namespace must not leak into a's export
        let slices = [slice("a", "web", "10.244.1.5"), slice("b", "web", "10.244.9.9")];
        let (out, validity) = local_exports(&exports, &lookup, &slices, "c1");
        assert_eq!(out.len(), 2);
        let a = out.iter().find(|e| e.namespace == "a").unwrap();
        assert_eq!(a.cluster, "c1");
        assert_eq!(a.endpoints.len(), 1);
        assert_eq!(a.endpoints[0].addresses, ["10.244.1.5"]);
        let why = |name: &str| {
            validity
                .iter()
                .find(|(se, _)| se.name_any() == name)
                .and_then(|(_, w)| w.clone())
                .map(|w| w.0)
        };
        assert_eq!(why("missing").as_deref(), Some("ServiceMissing"));
        assert_eq!(why("ext").as_deref(), Some("UnsupportedServiceType"));
        assert_eq!(why("web"), None);
    }
}
