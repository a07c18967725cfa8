//! `ferry-gateway route-agent`: keeps this node's routes to the peers ([`crate::routes`]) in step with the
//! `PeerNetwork`s. It recomputes on every change of a `PeerNetwork` (a new peer, a remap, the active gateway
//! moving) and every [`RESYNC`] (a route someone deleted comes back), and removes its routes on SIGTERM.
//! After each sync it reports its node ([`crate::routes::NodeReport`]) on a Lease `ferry-routes-<node>` in
//! ferry's namespace (renewed every sync, deleted on SIGTERM), which `ferryctl status` shows per node.

use std::time::Duration;

use ferry_crds::PeerNetwork;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::{info, warn};

use crate::Result;
use crate::routes::{NodeReport, PeerView, REPORT_ANNOTATION, REPORT_LABEL, desired, overlay_for};

/// How often the routes are checked even when no `PeerNetwork` changed.
pub const RESYNC: Duration = Duration::from_secs(10);

/// What the route agent reads from one `PeerNetwork`.
pub fn view_of(pn: &PeerNetwork) -> PeerView {
    PeerView {
        name: pn.metadata.name.clone().unwrap_or_default(),
        views: crate::remaps::reported(pn)
            .map(|r| r.into_values().collect())
            .unwrap_or_default(),
        gateway: pn
            .status
            .as_ref()
            .and_then(|s| s.gateway_node_ip.as_deref())
            .and_then(|a| a.parse().ok()),
    }
}

/// Where a route agent reports: this node's name and ferry's namespace.
#[derive(Clone, Debug)]
pub struct ReportTo {
    /// The node this agent runs on.
    pub node: String,
    /// ferry's namespace (the Lease lives there).
    pub namespace: String,
}

impl ReportTo {
    /// The Lease's name.
    pub fn lease_name(&self) -> String {
        lease_name(&self.node)
    }
}

/// The name of a node's report Lease.
pub fn lease_name(node: &str) -> String {
    format!("ferry-routes-{node}")
}

/// The Lease that carries `report` (server-side applied; `renewTime` now).
pub fn report_lease(to: &ReportTo, report: &NodeReport) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": to.lease_name(),
            "namespace": to.namespace,
            "labels": { REPORT_LABEL: "true", "app.kubernetes.io/name": "ferry" },
            "annotations": { REPORT_ANNOTATION: serde_json::to_string(report).expect("report serialises") },
        },
        "spec": {
            "holderIdentity": to.node,
            "leaseDurationSeconds": 3 * RESYNC.as_secs(),
            "renewTime": now,
        },
    })
}

async fn write_report(api: &Api<Lease>, to: &ReportTo, report: &NodeReport) {
    let pp = PatchParams::apply("ferry-route-agent").force();
    if let Err(e) = api
        .patch(&to.lease_name(), &pp, &Patch::Apply(report_lease(to, report)))
        .await
    {
        warn!(
            "writing this node's route report (Lease {}/{}): {e}",
            to.namespace,
            to.lease_name()
        );
    }
}

/// Runs until SIGTERM/SIGINT, then removes this node's ferry routes (and its report, if it writes one).
pub async fn run(
    client: Client,
    health: std::sync::Arc<ferry_plumbing::admin::Health>,
    report_to: Option<ReportTo>,
    node_ip: Option<std::net::IpAddr>,
) -> Result<()> {
    health.register("routes", "PeerNetworks not listed yet");
    // a device left by an earlier agent is made again from what the PeerNetworks say
    crate::apply::remove_overlay();
    let mut overlay_now = None;
    let leases: Option<Api<Lease>> = report_to
        .as_ref()
        .map(|t| Api::namespaced(client.clone(), &t.namespace));
    let api: Api<PeerNetwork> = Api::all(client);
    let (reader, writer) = reflector::store();
    let mut events =
        std::pin::pin!(reflector(writer, watcher(api, watcher::Config::default())).default_backoff());
    let mut shutdown = std::pin::pin!(crate::gateway::shutdown_signal());
    let mut resync = tokio::time::interval(RESYNC);
    let mut synced = false;
    let mut last_problems: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Err(e)) => {
                    warn!("watching PeerNetworks: {e}");
                    continue;
                }
                Some(_) => {}
                None => break,
            },
            _ = resync.tick() => {}
        }
        if !synced {
            continue;
        }
        let peers: Vec<PeerView> = reader.state().iter().map(|p| view_of(p)).collect();
        let local = match crate::apply::local_addrs() {
            Ok(l) => l,
            Err(e) => {
                health.set("routes", Err(format!("reading this node's addresses: {e}")));
                continue;
            }
        };
        let (want, mut problems) = desired(&peers, &local, node_ip);
        match crate::apply::sync_overlay(overlay_for(&peers, &local, node_ip).as_ref(), &mut overlay_now) {
            Ok(p) => problems.extend(p),
            Err(e) => problems.push(format!("the overlay device {}: {e}", crate::routes::OVERLAY_DEV)),
        }
        if problems != last_problems {
            for p in &problems {
                warn!("{p}");
            }
            last_problems = problems;
        }
        let synced_ok = match crate::apply::sync_node_routes(&want) {
            Ok(0) => true,
            Ok(n) => {
                info!(changed = n, routes = ?want, "node routes in step with the PeerNetworks");
                true
            }
            Err(e) => {
                warn!("setting node routes: {e}");
                health.set("routes", Err(format!("{e}")));
                false
            }
        };
        if synced_ok {
            health.set("routes", Ok(()));
        }
        if let (Some(api), Some(to)) = (&leases, &report_to) {
            let mut report = NodeReport::after_sync(&peers, &local, &want, &last_problems);
            if !synced_ok {
                report.routes.clear();
                report
                    .problems
                    .push("setting this node's routes failed: see the route agent's log".into());
            }
            write_report(api, to, &report).await;
        }
    }
    if let (Some(api), Some(to)) = (&leases, &report_to) {
        let _ = api.delete(&to.lease_name(), &DeleteParams::default()).await;
    }
    match crate::apply::sync_node_routes(&[]) {
        Ok(n) => info!(removed = n, "node routes removed"),
        Err(e) => warn!("removing node routes: {e}"),
    }
    crate::apply::remove_overlay();
    Ok(())
}
