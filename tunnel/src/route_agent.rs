//! `ferry-gateway route-agent`: keeps this node's routes to the peers ([`crate::routes`]) in step with the
//! `PeerNetwork`s. It recomputes on every change of a `PeerNetwork` (a new peer, a remap, the active gateway
//! moving) and every [`RESYNC`] (a route someone deleted comes back), and removes its routes on SIGTERM.

use std::time::Duration;

use ferry_crds::PeerNetwork;
use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::{info, warn};

use crate::Result;
use crate::routes::{PeerView, desired};

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

/// Runs until SIGTERM/SIGINT, then removes this node's ferry routes.
pub async fn run(client: Client, health: std::sync::Arc<ferry_plumbing::admin::Health>) -> Result<()> {
    health.register("routes", "PeerNetworks not listed yet");
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
        let (want, problems) = desired(&peers, &local);
        if problems != last_problems {
            for p in &problems {
                warn!("{p}");
            }
            last_problems = problems;
        }
        match crate::apply::sync_node_routes(&want) {
            Ok(0) => health.set("routes", Ok(())),
            Ok(n) => {
                info!(changed = n, routes = ?want, "node routes in step with the PeerNetworks");
                health.set("routes", Ok(()));
            }
            Err(e) => {
                warn!("setting node routes: {e}");
                health.set("routes", Err(format!("{e}")));
            }
        }
    }
    match crate::apply::sync_node_routes(&[]) {
        Ok(n) => info!(removed = n, "node routes removed"),
        Err(e) => warn!("removing node routes: {e}"),
    }
    Ok(())
}
