//! The tenants' pod usage (`GET /v1/stats`): read from this cluster's kubelets (`/stats/summary`, with
//! this component's own identity, which needs `nodes/stats` only), kept for [`STATS_TTL`] and shared by
//! every tenant, so a scrape costs no call while the figures are fresh and one round of kubelet calls
//! (one per node, at once) when they are not, however many tenants and scrapes there are. A tenant gets
//! its own namespaces' pods only ([`ferry_virtual_kubelet::kubelet_stats::tenant_pods`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_virtual_kubelet::kubelet_stats::{Summary, TenantStats, tenant_pods};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tracing::debug;

use crate::provider::TENANT_LABEL;

/// How long figures are served before they are read again (metrics-server scrapes every 15 s).
pub const STATS_TTL: Duration = Duration::from_secs(10);
/// How long one kubelet may take.
pub const KUBELET_TIMEOUT: Duration = Duration::from_secs(3);

/// The figures of the last round.
struct Round {
    at: Instant,
    summaries: Arc<Vec<Summary>>,
    /// Each tenant's namespaces here.
    tenants: BTreeMap<String, BTreeSet<String>>,
}

/// The kubelets' figures, read at most once per [`STATS_TTL`].
#[derive(Default)]
pub struct StatsCache {
    last: tokio::sync::Mutex<Option<Round>>,
}

impl StatsCache {
    /// The pods of `consumer`'s namespaces, from figures at most [`STATS_TTL`] old. Concurrent callers
    /// wait for the one round in flight.
    pub async fn tenant(&self, client: &Client, consumer: &str) -> Result<TenantStats, String> {
        let mut last = self.last.lock().await;
        if last.as_ref().is_none_or(|r| r.at.elapsed() > STATS_TTL) {
            *last = Some(round(client).await?);
        }
        let r = last.as_ref().expect("just read");
        let none = BTreeSet::new();
        Ok(tenant_pods(
            r.summaries.iter(),
            r.tenants.get(consumer).unwrap_or(&none),
        ))
    }
}

/// A node's kubelet: its `InternalIP` and the port it reports; `None` for a node with none (a virtual
/// node reports this cluster's own kubelet API, whose pods are elsewhere: skipped too).
fn kubelet_of(n: &Node) -> Option<String> {
    if n.labels().get("type").map(String::as_str) == Some("virtual-node") {
        return None;
    }
    let st = n.status.as_ref()?;
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let port = st.daemon_endpoints.as_ref()?.kubelet_endpoint.as_ref()?.port;
    let ip: std::net::IpAddr = st
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    (ready && port > 0).then(|| format!("https://{}", std::net::SocketAddr::new(ip, port as u16)))
}

async fn round(client: &Client) -> Result<Round, String> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing nodes: {e}"))?;
    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default().labels(TENANT_LABEL))
        .await
        .map_err(|e| format!("listing the tenants' namespaces: {e}"))?;
    let mut tenants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ns in namespaces.items {
        if let Some(t) = ns.labels().get(TENANT_LABEL) {
            tenants.entry(t.clone()).or_default().insert(ns.name_any());
        }
    }
    // this component's own identity (in a pod, its ServiceAccount), towards each kubelet, verified with
    // the cluster's CA
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("this component's identity: {e}"))?;
    let reads = nodes.items.iter().filter_map(kubelet_of).map(|url| {
        let config = config.clone();
        async move {
            let got = summary_of(config, &url).await;
            if let Err(e) = &got {
                debug!(kubelet = url, "stats: {e}");
            }
            got.ok()
        }
    });
    let summaries = futures::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(Round {
        at: Instant::now(),
        summaries: Arc::new(summaries),
        tenants,
    })
}

async fn summary_of(mut config: kube::Config, url: &str) -> Result<Summary, String> {
    config.cluster_url = url.parse().map_err(|e| format!("{url}: {e}"))?;
    config.read_timeout = Some(KUBELET_TIMEOUT);
    config.connect_timeout = Some(KUBELET_TIMEOUT);
    let kubelet = Client::try_from(config).map_err(|e| e.to_string())?;
    let req = axum::http::Request::get("/stats/summary")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(KUBELET_TIMEOUT, kubelet.request::<Summary>(req))
        .await
        .map_err(|_| format!("no answer within {KUBELET_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, ready: &str, port: i32, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": labels},
            "status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": ip}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn kubelets_are_the_ready_real_nodes_at_their_reported_port() {
        assert_eq!(
            kubelet_of(&node(serde_json::json!({}), "True", 10250, "10.0.0.5")).as_deref(),
            Some("https://10.0.0.5:10250")
        );
        assert_eq!(
            kubelet_of(&node(serde_json::json!({}), "True", 10250, "fd00::5")).as_deref(),
            Some("https://[fd00::5]:10250")
        );
        assert!(kubelet_of(&node(serde_json::json!({}), "False", 10250, "10.0.0.5")).is_none());
        assert!(kubelet_of(&node(serde_json::json!({}), "True", 0, "10.0.0.5")).is_none());
        assert!(
            kubelet_of(&node(
                serde_json::json!({"type": "virtual-node"}),
                "True",
                10260,
                "10.0.0.5"
            ))
            .is_none()
        );
    }
}
