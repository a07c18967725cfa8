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

/// This cluster's exports, and the validity of each `ServiceExport` (`None`: valid; `Some(reason, message)`).
async fn collect_local(
    client: &Client,
    ar: &SliceResource,
    cluster: &str,
) -> kube::Result<(
    Vec<ExportedService>,
    Vec<(ServiceExport, Option<(String, String)>)>,
)> {
    let exports: Api<ServiceExport> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut validity = Vec::new();
    for se in exports.list(&ListParams::default()).await? {
        let ns = se.namespace().unwrap_or_default();
        let name = se.name_any();
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let Some(svc) = services.get_opt(&name).await? else {
            validity.push((
                se,
                Some((
                    "ServiceMissing".into(),
                    format!("no Service {ns}/{name}; fix: create the Service, or delete this ServiceExport"),
                )),
            ));
            continue;
        };
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            validity.push((
                se,
                Some((
                    "UnsupportedServiceType".into(),
                    "an ExternalName Service cannot be exported; fix: export a ClusterIP or headless Service"
                        .into(),
                )),
            ));
            continue;
        }
        let slices = list_slices(client, ar, &ns, &format!("kubernetes.io/service-name={name}")).await?;
        let created = se
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        out.push(export_of(cluster, &created, &svc, &slices));
        validity.push((se, None));
    }
    Ok((out, validity))
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
    /// The providers this cluster exchanges exports with as a consumer.
    fn providers(&self) -> impl Future<Output = BTreeSet<String>> + Send;
    /// Sends this cluster's exports (`body`, an [`ExportList`]) to `provider`; its status and body.
    fn exchange(
        &self,
        provider: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<(u16, Vec<u8>), String>> + Send;
}

/// This cluster's tenants (it is their provider): they send their exports to its broker.
async fn tenants(client: &Client) -> BTreeSet<String> {
    Api::<ferry_crds::Tenant>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().map(|t| t.spec.cluster_id).collect())
        .unwrap_or_default()
}

/// The MCS loop of one agent, every second (an unexport reaches the other cluster's answers within about
/// two rounds): collect local exports, exchange them with each provider, merge
/// with what tenants sent to the broker, write imports and `ServiceExport` conditions.
pub async fn run<P: Peers>(client: Client, cluster: String, exchange: Arc<Exchange>, peers: P) {
    let mut state = SyncState::default();
    loop {
        if let Err(e) = sync_once(&client, &cluster, &exchange, &peers, &mut state).await {
            // write everything again next time
            state.applied = None;
            warn!("multi-cluster services: {e:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the loop keeps between rounds.
#[derive(Default)]
struct SyncState {
    /// The EndpointSlice version the cluster serves (discovered once).
    slices: SliceResource,
    /// The imports last written, and when: unchanged imports are written again only every 30 s (to heal
    /// what someone else changed), not every round.
    applied: Option<(Imports, Instant)>,
}

async fn sync_once<P: Peers>(
    client: &Client,
    cluster: &str,
    exchange: &Exchange,
    peers: &P,
    state: &mut SyncState,
) -> Result<(), Error> {
    if state.slices.is_none() {
        state.slices = slice_resource(client).await;
    }
    let ar = &state.slices;
    let (local, validity) = collect_local(client, ar, cluster)
        .await
        .map_err(crate::api_err("listing ServiceExports"))?;
    *exchange.local.lock().expect("lock") = local.clone();
    let (providers, tenants) = (peers.providers().await, tenants(client).await);
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
                    let remaps = ferry_tunnel::remaps::for_peer(client, provider, (&[], &[])).await;
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
