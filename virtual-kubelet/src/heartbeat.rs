//! The virtual node's heartbeat: the `Node` `ferry-<provider>` with capacity = the grant and allocatable =
//! the provider's `ResourceSlice` `status.available`, `Ready` from the provider apiserver's `/livez`
//! (1 s timeout), `NetworkUnavailable` from the `PeerNetwork`, and its Lease renewed every 10 s. What the
//! status says is decided in [`crate::node`] (pure); this module reads and writes.

use std::sync::Arc;
use std::time::Duration;

use ferry_crds::{PeerNetwork, ResourceSlice};
use ferry_plumbing::triggers::store_with_changes;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{info, warn};

use crate::node::{Observed, keep_transition_times, node_status, virtual_node};
use crate::peer::{Peer, now};
use crate::quantity::Amounts;
use crate::{Error, GRANTED_SLICE, VirtualNodeIdentity, api_err};

/// `GET /livez` on the provider's apiserver, 1 s timeout.
pub async fn livez(remote: &Client) -> Result<(), String> {
    let req = http::Request::get("/livez")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(1), remote.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(format!("provider /livez answered {:?}", body.trim())),
        Ok(Err(e)) => Err(format!("provider /livez: {e}")),
        Err(_) => Err("provider /livez did not answer within 1 s".into()),
    }
}

/// Creates the node if it is missing (an existing one is adopted as it is).
pub(crate) async fn ensure_node(peer: &Peer) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(peer.local.clone());
    let node = virtual_node(&VirtualNodeIdentity::for_provider(&peer.provider));
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {
            info!(node = peer.node_name(), "virtual node created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(api_err(format!("creating Node {}", peer.node_name()))(e)),
    }
}

async fn renew_lease(peer: &Peer) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(peer.local.clone(), "kube-node-lease");
    let name = peer.node_name();
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now()},
    });
    leases
        .patch(
            &name,
            &PatchParams::apply("ferry-virtual-kubelet").force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
}

/// How often the provider's `/livez` is probed (health has no watch).
pub const PROBE: Duration = Duration::from_secs(2);
/// Every how many probes the Lease is renewed and the status posted even if nothing changed (10 s: a
/// Lease is a heartbeat by definition, and the node controller reads `Ready`'s heartbeat time).
const BEAT_EVERY: u64 = 5;

/// The node loop. The grant (the provider's `ResourceSlice`) and the tunnel's state (the `PeerNetwork`)
/// come from watches, so a change is posted at once; `/livez` is probed every [`PROBE`]; the Lease is
/// renewed and the status posted at least every 10 s.
pub async fn heartbeat(peer: Arc<Peer>) {
    let nodes: Api<Node> = Api::all(peer.local.clone());
    let name = peer.node_name();
    let (slices, slice_changes) = store_with_changes(
        Api::<ResourceSlice>::namespaced(peer.remote.clone(), &peer.tenant_namespace),
        watcher::Config::default().fields(&format!("metadata.name={GRANTED_SLICE}")),
    );
    let (networks, network_changes) = store_with_changes(
        Api::<PeerNetwork>::all(peer.local.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", peer.provider)),
    );
    let changes = futures::stream::select(slice_changes, network_changes);
    futures::pin_mut!(changes);
    let mut probe = tokio::time::interval(PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Observed> = None;
    let mut live = Err("not probed yet".to_string());
    let mut tick = 0u64;
    loop {
        let beat = tokio::select! {
            _ = probe.tick() => {
                tick += 1;
                live = livez(&peer.remote).await;
                (tick - 1).is_multiple_of(BEAT_EVERY)
            }
            Some(()) = changes.next() => false,
        };
        if beat && let Err(e) = renew_lease(&peer).await {
            warn!(node = name, "renewing the Lease: {e}");
        }
        let slice = slices.state().into_iter().next();
        let st = slice.as_ref().and_then(|s| s.status.as_ref());
        let granted = st
            .and_then(|s| s.granted.as_ref())
            .map(Amounts::from_resource_amounts)
            .unwrap_or_default();
        let available = st
            .and_then(|s| s.available.as_ref())
            .map(Amounts::from_resource_amounts)
            .unwrap_or(granted)
            .min(granted);
        let network = networks
            .state()
            .into_iter()
            .next()
            .and_then(|n| n.status.clone()?.phase)
            .map(|p| p == "Connected");
        let state = Observed {
            livez: live.clone(),
            network,
            granted,
            available,
            cordoned: st.is_some_and(|s| s.cordoned),
        };
        if last.as_ref() == Some(&state) && !beat {
            continue;
        }
        let mut patch = node_status(&state, &now(), &peer.version, peer.kubelet_endpoint);
        match nodes.get_opt(&name).await {
            Ok(Some(old)) => {
                let taints = old
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default();
                if let Some(taints) = crate::node::cordon_taints(&taints, state.cordoned) {
                    match nodes
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"spec": {"taints": taints}})),
                        )
                        .await
                    {
                        Ok(_) => info!(
                            node = name,
                            cordoned = state.cordoned,
                            "the provider (un)cordoned this tenant"
                        ),
                        Err(e) => warn!(node = name, "tainting the node: {e}"),
                    }
                }
                keep_transition_times(&mut patch, &old);
                match nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => last = Some(state),
                    Err(e) => warn!(node = name, "posting node status: {e}"),
                }
            }
            Ok(None) => {
                if let Err(e) = ensure_node(&peer).await {
                    warn!("{e}");
                }
            }
            Err(e) => warn!(node = name, "reading the node: {e}"),
        }
    }
}

/// Removes the virtual node and its Lease (on unpeer). Remote pods are the provider's to clean up.
pub async fn remove_node(local: &Client, provider: &str) -> Result<(), Error> {
    let name = VirtualNodeIdentity::for_provider(provider).node_name;
    for r in [
        Api::<Node>::all(local.clone())
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
        Api::<Lease>::namespaced(local.clone(), "kube-node-lease")
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting virtual node {name}"))(e)),
        }
    }
    Ok(())
}
