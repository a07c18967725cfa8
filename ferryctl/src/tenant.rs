//! A consumer's tenancy on this (provider) cluster: `ferryctl cordon|uncordon|drain tenant ID`.
//!
//! - **cordon** sets `Tenant.spec.cordoned`: the ShadowPod controller refuses the tenant's new pods
//!   (reason `Cordoned`), the tenant's `ResourceSlice` says so and offers nothing, and the consumer's
//!   virtual node gets a `NoSchedule` taint; pods already running keep running.
//! - **drain** cordons, then deletes the tenant's ShadowPods (their pods go with them, gracefully) and
//!   waits until none of its pods is left here. On the consumer, each of those pods is evicted when its
//!   controller will recreate it (the new one is scheduled off the tainted virtual node: on a local node,
//!   or Pending), and a pod no controller recreates stays Pending with the provider's reason: none is lost.
//! - **uncordon** clears the flag.

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_crds::{ShadowPod, Tenant};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::progress::{self, Waiting};

async fn tenant(client: &Client, id: &str) -> Result<Tenant> {
    Api::<Tenant>::all(client.clone())
        .get_opt(id)
        .await?
        .with_context(|| {
            format!("no Tenant {id} on this cluster; fix: run this against the provider, with the consumer's cluster ID (kubectl get tenants)")
        })
}

/// Sets or clears `spec.cordoned` of tenant `id`.
pub async fn set_cordoned(client: &Client, id: &str, cordoned: bool) -> Result<()> {
    tenant(client, id).await?;
    Api::<Tenant>::all(client.clone())
        .patch(
            id,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "cordoned": cordoned } })),
        )
        .await
        .with_context(|| format!("patching Tenant {id}"))?;
    Ok(())
}

/// The tenant's namespaces here.
async fn namespaces(client: &Client, id: &str) -> Result<Vec<String>> {
    let label = format!("{}={id}", ferry_virtual_kubelet::TENANT_LABEL);
    Ok(Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&label))
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect())
}

/// Cordons tenant `id`, deletes its ShadowPods and waits (up to `limit`) until none of its pods is left.
/// Returns how many ShadowPods were deleted.
pub async fn drain(client: &Client, id: &str, limit: Duration) -> Result<usize> {
    set_cordoned(client, id, true).await?;
    let nss = namespaces(client, id).await?;
    let mut deleted = 0;
    for ns in &nss {
        let shadows: Api<ShadowPod> = Api::namespaced(client.clone(), ns);
        for sp in shadows.list(&ListParams::default()).await?.items {
            match shadows.delete(&sp.name_any(), &DeleteParams::default()).await {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("deleting ShadowPod {ns}/{}", sp.name_any()));
                }
            }
        }
    }
    let label = format!("{}={id}", ferry_virtual_kubelet::translate::ORIGIN_CLUSTER_LABEL);
    let what = format!("drain tenant {id}");
    let wake = futures::stream::select_all(nss.iter().map(|ns| {
        progress::changes(
            Api::<Pod>::namespaced(client.clone(), ns),
            kube::runtime::watcher::Config::default().labels(&label),
        )
        .boxed()
    }));
    progress::wait(
        &what,
        limit,
        "no pod of it runs here, tenant cordoned",
        wake,
        || {
            let (client, nss, label) = (client.clone(), nss.clone(), label.clone());
            async move {
                let mut left = Vec::new();
                for ns in &nss {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                    for p in pods.list(&ListParams::default().labels(&label)).await?.items {
                        let phase = p
                            .status
                            .as_ref()
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_default();
                        let state = if p.metadata.deletion_timestamp.is_some() {
                            format!("{phase}, terminating")
                        } else {
                            phase
                        };
                        left.push(format!("{ns}/{} ({state})", p.name_any()));
                    }
                }
                Ok((!left.is_empty()).then(|| {
                    let shown: Vec<&str> = left.iter().take(3).map(String::as_str).collect();
                    let more = if left.len() > 3 {
                        format!(", and {} more", left.len() - 3)
                    } else {
                        String::new()
                    };
                    Waiting::new(
                        format!("{} pod(s) of tenant {id}", left.len()),
                        format!("{}{more}", shown.join(", ")),
                    )
                }))
            }
        },
    )
    .await?;
    Ok(deleted)
}
