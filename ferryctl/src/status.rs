//! `ferryctl status`: every peer (role, conditions, virtual node, tunnel: phase, active gateway node, path
//! and tunnel MTU, its last change) and every node (whether the peers are routed from it: the route
//! agents' reports, `ferry_tunnel::routes::NodeReport`). Gathering reads the API; [`table`] is pure.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{Value, json};

use ferry_tunnel::routes::{NodeReport, REPORT_ANNOTATION, REPORT_LABEL, node_state};

/// A route report unrenewed for longer than this is stale (three of the agent's 10 s syncs).
const STALE_AFTER: Duration = Duration::from_secs(30);

/// Everything `status` shows, as JSON: `{ "peers": [...], "nodes": [...] }`.
pub async fn gather(c: &Client, namespace: &str) -> Result<Value> {
    let fcs = Api::<ferry_crds::ForeignCluster>::all(c.clone())
        .list(&Default::default())
        .await?;
    let pns = Api::<ferry_crds::PeerNetwork>::all(c.clone())
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let nodes: Api<Node> = Api::all(c.clone());
    let mut peers = Vec::new();
    for fc in &fcs.items {
        let conds: Vec<Value> = fc
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| json!({ "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message }))
                    .collect()
            })
            .unwrap_or_default();
        // the peer's virtual node here, if this cluster consumes from it
        let name = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(&fc.spec.cluster_id).node_name;
        let node = match nodes.get_opt(&name).await? {
            Some(n) => json!({ "name": name, "ready": ferry_virtual_kubelet::node::is_ready(&n),
                "pods": ferry_virtual_kubelet::consumer::pods_on_node(c, &fc.spec.cluster_id).await? }),
            None => Value::Null,
        };
        let tunnel = pns
            .iter()
            .find(|p| p.spec.cluster_id == fc.spec.cluster_id)
            .and_then(|p| p.status.as_ref())
            .map(|s| {
                json!({ "phase": s.phase, "gatewayNode": s.gateway_node, "gatewayNodeIP": s.gateway_node_ip,
                    "gatewayReplica": s.gateway_replica, "gatewayActiveSince": s.gateway_active_since,
                    "pathMTU": s.path_mtu, "tunnelMTU": s.tunnel_mtu, "mtuChanges": s.mtu_changes,
                    "lastMTUChange": s.last_mtu_change, "latencyMs": s.latency_ms })
            })
            .unwrap_or(Value::Null);
        peers.push(
            json!({ "peer": fc.spec.cluster_id, "role": fc.spec.role, "conditions": conds,
            "node": node, "tunnel": tunnel,
            "age": fc.metadata.creation_timestamp.as_ref().map(|t| crate::age(t.0.as_second())) }),
        );
    }
    let reports = Api::<Lease>::namespaced(c.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{REPORT_LABEL}=true")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows = Vec::new();
    for n in nodes.list(&Default::default()).await?.items {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        if labels.get("type").map(String::as_str) == Some("virtual-node") {
            continue; // a peer's node: nothing is routed from it
        }
        let name = n.metadata.name.clone().unwrap_or_default();
        let report = reports
            .iter()
            .find(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(name.as_str()))
            .and_then(|l| {
                let r: NodeReport =
                    serde_json::from_str(l.metadata.annotations.as_ref()?.get(REPORT_ANNOTATION)?).ok()?;
                let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
                let age = now.duration_since(renewed).as_secs().max(0) as u64;
                Some((r, Duration::from_secs(age)))
            });
        let (state, detail) = node_state(report.as_ref().map(|(r, a)| (r, *a)), STALE_AFTER);
        rows.push(json!({ "node": name, "routes": state, "detail": detail }));
    }
    Ok(json!({ "peers": peers, "nodes": rows }))
}

/// The table `status` prints.
pub fn table(v: &Value) -> String {
    let empty = vec![];
    let mut s = format!(
        "{:<20} {:<9} {:<40} {:<10} {:<6} {:<13} {:<14} {:<9} {}\n",
        "PEER", "ROLE", "CONDITIONS", "NODE", "PODS", "TUNNEL", "GATEWAY NODE", "MTU", "AGE"
    );
    for r in v["peers"].as_array().unwrap_or(&empty) {
        let conds: Vec<String> = r["conditions"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or("")
                )
            })
            .collect();
        let (node, pods) = match r["node"]["ready"].as_bool() {
            Some(ready) => (
                if ready { "Ready" } else { "NotReady" }.to_string(),
                r["node"]["pods"].to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        let t = &r["tunnel"];
        // the MTU column: tunnel/path, e.g. 1340/1400
        let mtu = match (t["tunnelMTU"].as_u64(), t["pathMTU"].as_u64()) {
            (Some(tm), Some(pm)) => format!("{tm}/{pm}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:<20} {:<9} {:<40} {:<10} {:<6} {:<13} {:<14} {:<9} {}\n",
            r["peer"].as_str().unwrap_or(""),
            r["role"].as_str().unwrap_or(""),
            conds.join(","),
            node,
            pods,
            t["phase"].as_str().unwrap_or("-"),
            t["gatewayNode"].as_str().unwrap_or("-"),
            mtu,
            r["age"].as_str().unwrap_or("")
        ));
        if let Some(replica) = t["gatewayReplica"].as_str() {
            s.push_str(&format!(
                "  active gateway replica: {replica} since {}\n",
                t["gatewayActiveSince"].as_str().unwrap_or("?")
            ));
        }
        if let Some(change) = t["lastMTUChange"].as_str() {
            s.push_str(&format!("  last MTU change: {change}\n"));
        }
    }
    let nodes = v["nodes"].as_array().unwrap_or(&empty);
    if !nodes.is_empty() {
        s.push_str(&format!("\n{:<24} {:<10} {}\n", "NODE", "ROUTES", "DETAIL"));
        for n in nodes {
            s.push_str(&format!(
                "{:<24} {:<10} {}\n",
                n["node"].as_str().unwrap_or(""),
                n["routes"].as_str().unwrap_or(""),
                n["detail"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_peers_tunnel_and_each_nodes_routes() {
        let v = json!({
            "peers": [{ "peer": "provider-c2", "role": "Provider",
                "conditions": [{ "type": "Peered", "status": "True" }],
                "node": { "ready": true, "pods": 4 },
                "tunnel": { "phase": "Connected", "gatewayNode": "real-node-1", "pathMTU": 1400, "tunnelMTU": 1340,
                    "gatewayReplica": "real-node-1_1-0a1b2c3d", "gatewayActiveSince": "2026-12-05T08:40:29.100Z",
                    "lastMTUChange": "path MTU 1500 -> 1400, tunnel MTU 1440 -> 1340 at 2026-12-05T06:00:00Z" },
                "age": "5m" },
                { "peer": "consumer-c3", "role": "Consumer", "conditions": [], "node": null, "tunnel": null, "age": "1m" }],
            "nodes": [{ "node": "real-node-1", "routes": "Gateway", "detail": "the active gateway's node" },
                { "node": "real-node-2", "routes": "Routed", "detail": "10.0.0.0/16 via 198.19.0.2" }],
        });
        let t = table(&v);
        let line = t.lines().find(|l| l.starts_with("provider-c2")).unwrap();
        for want in [
            "Peered=True",
            "Ready",
            "Connected",
            "real-node-1",
            "1340/1400",
            "5m",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert!(t.contains("  last MTU change: path MTU 1500 -> 1400"), "{t}");
        assert!(
            t.contains("  active gateway replica: real-node-1_1-0a1b2c3d since 2026-12-05T08:40:29.100Z"),
            "{t}"
        );
        let line = t.lines().find(|l| l.starts_with("consumer-c3")).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["consumer-c3", "Consumer", "-", "-", "-", "-", "-", "1m"]
        );
        let line = t.lines().find(|l| l.starts_with("real-node-2")).unwrap();
        assert!(
            line.contains("Routed") && line.contains("10.0.0.0/16 via 198.19.0.2"),
            "{line}"
        );
        assert!(t.contains("\nNODE                     ROUTES"), "{t}");
    }
}
