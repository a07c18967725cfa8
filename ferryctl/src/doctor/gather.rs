//! Reads one cluster into a [`Side`] for the checks: only GETs and LISTs, through the operator's
//! kubeconfig. What cannot be read (a CRD not installed, a Secret the operator may not read) is left out,
//! and the check that needs it says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Node, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client};

use ferry_crds::identity::{SYSTEM_NAMESPACE, identity_secret};
use ferry_crds::{ForeignCluster, PeerNetwork, PeeringRole, Tenant};

use super::{DnsFacts, LiveQuery, PeerFacts, Side, VirtualNodeFacts};

/// Reads `client`'s cluster. `name`: how the report calls it; `namespace`: where ferry is installed;
/// `dns_server`: where to ask ferry-dns a live question (else its Service address).
pub async fn side(
    client: &Client,
    name: &str,
    namespace: &str,
    dns_server: Option<SocketAddr>,
) -> Result<Side> {
    let clock_skew = clock_skew(client).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let cluster_id = secrets
        .get_opt(ferry_peering_broker::identity::IDENTITY_SECRET)
        .await
        .ok()
        .flatten()
        .and_then(|s| text(&s, "clusterID"));
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?;
    let (virtual_key, virtual_value) = ferry_virtual_kubelet::VIRTUAL_NODE_LABEL;
    let node_pod_cidrs = nodes
        .items
        .iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(virtual_key))
                .map(String::as_str)
                != Some(virtual_value)
        })
        .flat_map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let spec = n.spec.clone().unwrap_or_default();
            spec.pod_cidrs
                .unwrap_or_else(|| spec.pod_cidr.into_iter().collect())
                .into_iter()
                .filter_map(move |c| Some((name.clone(), c.parse().ok()?)))
        })
        .collect();
    let fcs = Api::<ForeignCluster>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let pns = Api::<PeerNetwork>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let tenants = Api::<Tenant>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let node_api: Api<Node> = Api::all(client.clone());
    // every peer this cluster knows: its ForeignClusters (the providers it consumes from), and on a provider
    // the consumers' Tenants and PeerNetworks
    let mut ids: Vec<String> = fcs.iter().map(|f| f.spec.cluster_id.clone()).collect();
    for id in tenants
        .iter()
        .map(|t| &t.spec.cluster_id)
        .chain(pns.iter().map(|p| &p.spec.cluster_id))
    {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let mut peers = Vec::new();
    for id in ids {
        let fc = fcs.iter().find(|f| f.spec.cluster_id == id);
        let consumes = fc.is_some_and(|f| f.spec.role == PeeringRole::Provider);
        let conditions = fc
            .and_then(|f| f.status.as_ref())
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| {
                        (
                            c.type_.clone(),
                            c.status.clone(),
                            c.reason.clone(),
                            c.message.clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (mut virtual_node, mut cert) = (None, None);
        if consumes {
            let vn = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(&id).node_name;
            if let Some(n) = node_api.get_opt(&vn).await? {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
                virtual_node = Some(VirtualNodeFacts {
                    name: vn,
                    ready: ferry_virtual_kubelet::node::is_ready(&n),
                    why: ready.map_or("no Ready condition".into(), |c| {
                        format!(
                            "{} ({})",
                            c.reason.clone().unwrap_or_default(),
                            c.message.clone().unwrap_or_default()
                        )
                    }),
                    pods: ferry_virtual_kubelet::consumer::pods_on_node(client, &id).await?,
                    pods_allocatable: n
                        .status
                        .as_ref()
                        .and_then(|s| s.allocatable.as_ref())
                        .and_then(|a| a.get("pods"))
                        .and_then(|q| q.0.parse().ok()),
                });
            }
            cert = secrets
                .get_opt(&identity_secret(&id))
                .await
                .ok()
                .flatten()
                .and_then(|s| text(&s, "tls.crt"))
                .and_then(|pem| ferry_plumbing::certs::pem_validity(&pem))
                .map(|(nb, na, _)| (nb, na));
        }
        let cordoned = tenants
            .iter()
            .find(|t| t.spec.cluster_id == id)
            .map(|t| t.spec.cordoned);
        peers.push(PeerFacts {
            network: pns.iter().find(|p| p.spec.cluster_id == id).cloned(),
            id,
            conditions,
            consumes,
            virtual_node,
            cert,
            cordoned,
        });
    }
    Ok(Side {
        name: name.to_string(),
        cluster_id,
        now: chrono::Utc::now().timestamp(),
        clock_skew,
        node_pod_cidrs,
        peers,
        dns: dns(client, namespace, dns_server).await,
    })
}

fn text(s: &Secret, key: &str) -> Option<String> {
    let data: &BTreeMap<String, k8s_openapi::ByteString> = s.data.as_ref()?;
    String::from_utf8(data.get(key)?.0.clone()).ok()
}

/// The Corefiles (`kube-system/coredns`'s `Corefile`, and every `*.server` of `coredns-custom`, where
/// ferry's chart puts its stanza), ferry-dns's Service address and ready endpoints, and a live query of
/// one imported name at `server` (else at the Service) against what the imports say.
async fn dns(client: &Client, namespace: &str, server: Option<SocketAddr>) -> DnsFacts {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let mut corefiles = Vec::new();
    if let Ok(Some(cm)) = cms.get_opt("coredns").await
        && let Some(c) = cm.data.as_ref().and_then(|d| d.get("Corefile"))
    {
        corefiles.push(("kube-system/coredns".to_string(), c.clone()));
    }
    if let Ok(Some(cm)) = cms.get_opt("coredns-custom").await {
        for (k, v) in cm.data.unwrap_or_default() {
            if k.ends_with(".server") {
                corefiles.push((format!("kube-system/coredns-custom {k}"), v));
            }
        }
    }
    let ferry_dns_ip = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt("ferry-dns")
        .await
        .ok()
        .flatten()
        .and_then(|s| s.spec?.cluster_ip?.parse().ok());
    let ferry_dns_ready = Api::<Endpoints>::namespaced(client.clone(), namespace)
        .get_opt("ferry-dns")
        .await
        .ok()
        .flatten()
        .map(|e| {
            e.subsets
                .unwrap_or_default()
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum()
        });
    let mut live = None;
    let target = server
        .map(|s| (s, true))
        .or(ferry_dns_ip.map(|ip| (SocketAddr::new(ip, 53), false)));
    if let Some((server, explicit)) = target
        && let Ok(zone) = ferry_mcs::dns::zone_now(client, 5).await
        && let Some(name) = zone.a_service_name()
    {
        let t0 = std::time::Instant::now();
        let answer = ferry_mcs::dns::lookup(server, name, std::time::Duration::from_millis(800), 2).await;
        live = Some(LiveQuery {
            server,
            explicit,
            name: name.to_string(),
            expected: zone.addresses(name),
            answer,
            millis: t0.elapsed().as_millis() as u64,
        });
    }
    DnsFacts {
        corefiles,
        ferry_dns_ip,
        namespace: namespace.to_string(),
        ferry_dns_ready,
        live,
    }
}

/// The apiserver's clock minus this machine's, from the `Date` header of `GET /version` against the
/// midpoint of the request (the header has whole seconds).
async fn clock_skew(client: &Client) -> Option<f64> {
    let before = SystemTime::now();
    let req = http::Request::get("/version").body(Vec::new()).ok()?;
    let resp = client.send(req.map(kube::client::Body::from)).await.ok()?;
    let after = SystemTime::now();
    let date = resp.headers().get(http::header::DATE)?.to_str().ok()?;
    let server = chrono::DateTime::parse_from_rfc2822(date).ok()?.timestamp() as f64;
    let mid = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64());
    let local = (mid(before).ok()? + mid(after).ok()?) / 2.0;
    // the header truncates to the second: the server's clock is on average half a second later
    Some(server + 0.5 - local)
}
