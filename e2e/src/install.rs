//! ferry installed into a lab cluster as an operator would: `ferryctl install` with the values a lab
//! cluster needs, every component a pod of ferry's image on the cluster's real nodes. Shared by the install
//! e2e test and `ferry-lab demo`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::lab::Lab;
use crate::layout::ClusterLayout;

/// The node label that places ferry's gateway (the chart's `gateway.nodeSelector`).
pub const GATEWAY_LABEL: &str = "ferry.dev/gateway";

/// The `--set` values for cluster `c`: its ID, two agent replicas (one active by Lease), the WAN
/// addresses its edge forwards to the broker, the apiserver and (on every cluster but the first, the
/// providers) the tunnels' UDP ports, and placement on the real nodes. With `discover`, the pod and
/// service CIDRs are left to `ferryctl install` to find; otherwise they are given.
pub fn values(c: &ClusterLayout, discover: bool) -> Vec<String> {
    let mut sets = vec![
        format!("clusterID={}", crate::agents::cluster_id(c.index as usize - 1)),
        "agent.quotaPods=500".to_string(),
        "agent.replicas=2".to_string(),
        format!(
            "gateway.underlayCIDRs={}",
            c.node_networks()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        format!(
            "agent.brokerURL=https://{}:{}",
            c.wan_ip,
            crate::net::EDGE_BROKER_PORT
        ),
        format!("agent.apiServerURL=https://{}:6443", c.wan_ip),
        format!("placement.nodeLabel={}", crate::kubelet::POOL_LABEL),
        format!("placement.nodeLabelValue={}", crate::node::REAL_POOL),
        format!("placement.tolerate={}", crate::node::REAL_NODE_TAINT),
    ];
    if !discover {
        sets.extend([
            format!("podCIDRs={}", c.pod_cidr),
            format!("serviceCIDRs={}", c.service_cidr),
            format!(
                "dns.serviceIP={}",
                c.service_cidr
                    .hosts()
                    .nth(52)
                    .expect("a service CIDR of 53+ hosts")
            ),
        ]);
    }
    if c.index > 1 {
        // the provider's gateway is reached at its WAN address, whose edge forwards the tunnels' ports to
        // the first real node, and (a standby replica's own address) at its second WAN address, forwarded
        // to the second real node
        sets.push(format!(
            "agent.gatewayEndpoint={}:{}",
            c.wan_ip,
            crate::net::EDGE_GATEWAY_PORTS.0
        ));
        if c.real_nodes > 1 {
            sets.push(format!(
                "agent.standbyGatewayEndpoints={}:{}",
                c.wan_ip2(),
                crate::net::EDGE_GATEWAY_PORTS.0
            ));
        }
    }
    sets
}

/// What one install did.
pub struct Installed {
    /// From `ferryctl install` to every component Ready.
    pub seconds: f64,
    /// ferryctl's progress lines (stderr).
    pub progress: String,
}

/// Labels `c`'s first real node as the gateway node and runs `ferryctl install` with [`values`] plus
/// `extra` `--set`s; fails with ferryctl's output when it does.
pub async fn install(lab: &Lab, c: &ClusterLayout, discover: bool, extra: &[&str]) -> Result<Installed> {
    if c.real_nodes == 0 {
        bail!(
            "{}: ferry installs onto real nodes; fix: ferry-lab up --real-nodes 2",
            c.id
        );
    }
    Api::<Node>::all(lab.client(c).await?)
        .patch(
            &c.real_node_name(0),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {GATEWAY_LABEL: "true"}}})),
        )
        .await
        .with_context(|| format!("{}: labelling the gateway node", c.id))?;
    let sets = values(c, discover);
    let mut args = vec!["install", "--timeout", "120"];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.extend(["--set", s]);
    }
    let t0 = Instant::now();
    let (ok, out, err) = crate::agents::ferryctl(&lab.paths.kubeconfig(c), &args);
    if !ok {
        bail!("{}: ferryctl install failed: {out}{err}", c.id);
    }
    Ok(Installed {
        seconds: t0.elapsed().as_secs_f64(),
        progress: err,
    })
}
