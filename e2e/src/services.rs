//! What a lab cluster's control plane offers its real nodes, on its node-network address
//! ([`ClusterLayout::control_plane_ip`]), from one process per cluster (`ferry-lab services`):
//!
//! - the apiserver at `:6443` (a TCP relay to the apiserver on 127.0.0.1; TLS passes through, the
//!   serving certificate names this address), also as the endpoint of the `kubernetes` Service;
//! - the cluster DNS at `:53` (UDP), the `kube-dns` Service's endpoint. **It stands in for CoreDNS**, which
//!   is not in reach here: it answers `cluster.local` from Services and Endpoints and forwards
//!   `clusterset.local` to ferry-dns (the installed ferry-dns Service's endpoint, else the lab's process on the
//!   cluster's host namespace), exactly as the chart's CoreDNS stanza
//!   does; every other name is refused (no upstream), so no forwarding loop can form.
//!
//! [`ClusterZone::build`] and [`resolve`] are pure; [`run`] feeds them from reflectors.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::layout::{APISERVER_FRONT_PORT, ClusterLayout};
use crate::state::Lab;

/// The zone the lab resolver is authoritative for.
pub const CLUSTER_ZONE: &str = "cluster.local.";
/// The name of the chart's ferry-dns Service (and its Endpoints).
pub const INSTALLED_FERRY_DNS: &str = "ferry-dns";
/// The zone forwarded to ferry-dns.
pub const CLUSTERSET_ZONE: &str = "clusterset.local.";
/// TTL of every answer, seconds.
pub const TTL: u32 = 5;

/// `cluster.local` names → addresses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterZone {
    /// Lowercase absolute name → addresses.
    pub names: BTreeMap<String, Vec<IpAddr>>,
    /// Where `clusterset.local` goes when ferry is installed: a ready endpoint of the chart's `ferry-dns`
    /// Service (what CoreDNS reaches through that Service's ClusterIP; this resolver has no kube-proxy in
    /// front of it). `None`: the lab's ferry-dns process on the cluster's router.
    pub clusterset: Option<SocketAddr>,
}

impl ClusterZone {
    /// `<svc>.<ns>.svc.cluster.local` → the ClusterIP(s), or for a headless Service every ready endpoint
    /// address; `<hostname>.<svc>.<ns>.svc.cluster.local` → a headless endpoint with a hostname.
    pub fn build(services: &[Service], endpoints: &[Endpoints]) -> Self {
        let mut names: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for s in services {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            let base = format!("{name}.{ns}.svc.{CLUSTER_ZONE}").to_ascii_lowercase();
            let spec = s.spec.clone().unwrap_or_default();
            let cluster_ips: Vec<IpAddr> = spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default()
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if !cluster_ips.is_empty() {
                names.insert(base, cluster_ips);
                continue;
            }
            // headless (clusterIP None): the ready endpoints
            let Some(ep) = endpoints
                .iter()
                .find(|e| e.namespace() == s.namespace() && e.name_any() == name)
            else {
                continue;
            };
            for subset in ep.subsets.iter().flatten() {
                for a in subset.addresses.iter().flatten() {
                    let Ok(ip) = a.ip.parse::<IpAddr>() else { continue };
                    names.entry(base.clone()).or_default().push(ip);
                    if let Some(h) = &a.hostname {
                        names
                            .entry(format!("{h}.{base}").to_ascii_lowercase())
                            .or_default()
                            .push(ip);
                    }
                }
            }
        }
        for v in names.values_mut() {
            v.sort();
            v.dedup();
        }
        let clusterset = endpoints
            .iter()
            .filter(|e| e.name_any() == INSTALLED_FERRY_DNS)
            .flat_map(|e| e.subsets.iter().flatten())
            .find_map(|subset| {
                let port = subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "UDP")?
                    .port;
                let ip: IpAddr = subset.addresses.iter().flatten().next()?.ip.parse().ok()?;
                Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
            });
        Self { names, clusterset }
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// A `clusterset.local` name: pass the query to ferry-dns unchanged and its answer back.
    Forward,
    /// Not a DNS query: drop it.
    Drop,
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// Answers one query from `zone`: `cluster.local` authoritatively (A/AAAA; NXDOMAIN for unknown names,
/// NOERROR without answers for a name that lacks the asked family), `clusterset.local` by forwarding, every
/// other name REFUSED.
pub fn resolve(request: &[u8], zone: &ClusterZone) -> Resolution {
    let Ok(req) = Message::from_vec(request) else {
        return Resolution::Drop;
    };
    if req.message_type() != MessageType::Query {
        return Resolution::Drop;
    }
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(false);
    resp.add_queries(req.queries().to_vec());
    let reply = |m: Message| m.to_vec().map(Resolution::Reply).unwrap_or(Resolution::Drop);
    if req.op_code() != OpCode::Query || req.queries().len() != 1 {
        resp.set_response_code(ResponseCode::NotImp);
        return reply(resp);
    }
    let q = &req.queries()[0];
    let mut name = q.name().to_ascii().to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    if in_zone(&name, CLUSTERSET_ZONE) {
        return Resolution::Forward;
    }
    if !in_zone(&name, CLUSTER_ZONE) {
        resp.set_response_code(ResponseCode::Refused);
        return reply(resp);
    }
    resp.set_authoritative(true);
    match zone.names.get(&name) {
        None => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
        Some(addrs) => {
            for ip in addrs {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(a), RecordType::A | RecordType::ANY) => RData::A(A(*a)),
                    (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*a)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
            }
        }
    }
    reply(resp)
}

/// The objects that make the node network's services reachable inside the cluster: the `kubernetes`
/// Service's Endpoints (the apiserver front) and the `kube-dns` Service with its Endpoints.
pub fn cluster_objects(c: &ClusterLayout) -> Vec<(String, serde_json::Value)> {
    let cp = c.control_plane_ip().to_string();
    vec![
        (
            "default/kubernetes".into(),
            json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [{"addresses": [{"ip": cp}], "ports": [{"name": "https", "port": APISERVER_FRONT_PORT, "protocol": "TCP"}]}]}),
        ),
        (
            "kube-system/kube-dns".into(),
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system",
                    "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "ferry-lab-dns"}},
                "spec": {"clusterIP": c.dns_service_ip().to_string(), "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}),
        ),
        (
            "kube-system/kube-dns".into(),
            json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "subsets": [{"addresses": [{"ip": cp}], "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}]}),
        ),
    ]
}

async fn apply_objects(client: &Client, c: &ClusterLayout) -> Result<()> {
    let pp = PatchParams::apply("ferry-lab").force();
    for (key, obj) in cluster_objects(c) {
        let (ns, name) = key.split_once('/').expect("ns/name");
        let r = match obj["kind"].as_str() {
            Some("Service") => Api::<Service>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(&obj))
                .await
                .map(|_| ()),
            _ => Api::<Endpoints>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(&obj))
                .await
                .map(|_| ()),
        };
        r.with_context(|| format!("applying {} {key}", obj["kind"]))?;
    }
    Ok(())
}

/// Sends `query` to `to` from the cluster's router namespace `netns` (which routes to the node network and,
/// host-gw, to every node's pods; this namespace cannot tell two clusters' pod CIDRs apart) and returns the
/// answer.
async fn forward(query: &[u8], to: SocketAddr, netns: String) -> Option<Vec<u8>> {
    let sock = tokio::task::spawn_blocking(move || crate::relay::udp_in_netns(&netns))
        .await
        .ok()?
        .ok()?;
    let sock = tokio::net::UdpSocket::from_std(sock).ok()?;
    sock.send_to(query, to).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(n);
    Some(buf)
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_response_code(ResponseCode::ServFail);
    m.add_queries(req.queries().to_vec());
    m.to_vec().ok()
}

/// `ferry-lab services --cluster cN`: the apiserver front and the cluster DNS of one cluster, until
/// SIGTERM.
pub async fn run(lab: &Lab, cluster: &str) -> Result<()> {
    let c = lab.cluster(cluster)?.clone();
    let client = lab.client(&c).await?;
    apply_objects(&client, &c).await?;
    let cp = c.control_plane_ip();
    let front = std::net::TcpListener::bind((cp, APISERVER_FRONT_PORT))
        .with_context(|| format!("binding the apiserver front {cp}:{APISERVER_FRONT_PORT}"))?;
    front.set_nonblocking(true)?;
    let apiserver: SocketAddr = ([127, 0, 0, 1], c.ports.apiserver).into();
    tokio::spawn(async move {
        if let Err(e) = crate::relay::relay(front, apiserver).await {
            warn!("apiserver front: {e:#}");
        }
    });
    let zone = Arc::new(RwLock::new(ClusterZone::default()));
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (ep_store, ep_writer) = reflector::store::<Endpoints>();
    let svcs = reflector(
        svc_writer,
        watcher(Api::<Service>::all(client.clone()), watcher::Config::default()),
    )
    .applied_objects()
    .map(|_| ());
    let eps = reflector(
        ep_writer,
        watcher(Api::<Endpoints>::all(client.clone()), watcher::Config::default()),
    )
    .applied_objects()
    .map(|_| ());
    let rebuild = {
        let zone = zone.clone();
        futures::stream::select(svcs, eps).for_each(move |_| {
            let services: Vec<Service> = svc_store.state().iter().map(|s| (**s).clone()).collect();
            let endpoints: Vec<Endpoints> = ep_store.state().iter().map(|e| (**e).clone()).collect();
            *zone.write().expect("zone lock") = ClusterZone::build(&services, &endpoints);
            futures::future::ready(())
        })
    };
    tokio::spawn(rebuild);
    let udp = Arc::new(
        tokio::net::UdpSocket::bind((cp, 53))
            .await
            .with_context(|| format!("binding the cluster DNS {cp}:53"))?,
    );
    let ferry_dns: SocketAddr = (c.node_router(), 53).into();
    let router_netns = lab.layout.host_netns(&c);
    info!(cluster = %c.id, "apiserver front on {cp}:{APISERVER_FRONT_PORT}, cluster DNS on {cp}:53");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            got = udp.recv_from(&mut buf) => {
                let (n, from) = got?;
                let query = buf[..n].to_vec();
                let decision = resolve(&query, &zone.read().expect("zone lock"));
                match decision {
                    Resolution::Reply(bytes) => { let _ = udp.send_to(&bytes, from).await; }
                    Resolution::Drop => {}
                    Resolution::Forward => {
                        let udp = udp.clone();
                        let to = zone.read().expect("zone lock").clusterset.unwrap_or(ferry_dns);
                        let netns = router_netns.clone();
                        tokio::spawn(async move {
                            if let Some(bytes) = forward(&query, to, netns).await.or_else(|| servfail(&query)) {
                                let _ = udp.send_to(&bytes, from).await;
                            }
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn svc(ns: &str, name: &str, ip: Option<&str>) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip.unwrap_or("None")}}))
        .unwrap()
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn reply(r: Resolution) -> Message {
        match r {
            Resolution::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn zone() -> ClusterZone {
        let eps: Endpoints = serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "prod"},
            "subsets": [{"addresses": [{"ip": "10.244.200.7", "hostname": "db-0"}, {"ip": "10.244.201.9"}],
                         "notReadyAddresses": [{"ip": "10.244.201.10"}]}]}))
        .unwrap();
        ClusterZone::build(
            &[svc("default", "web", Some("10.96.4.5")), svc("prod", "db", None)],
            &[eps],
        )
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_and_headless_ones_to_ready_endpoints() {
        let z = zone();
        let m = reply(resolve(
            &query("web.default.svc.cluster.local.", RecordType::A),
            &z,
        ));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative());
        assert_eq!(m.answers().len(), 1);
        assert_eq!(m.answers()[0].data().ip_addr().unwrap().to_string(), "10.96.4.5");
        let m = reply(resolve(&query("DB.prod.svc.cluster.local.", RecordType::A), &z));
        let ips: Vec<String> = m
            .answers()
            .iter()
            .map(|r| r.data().ip_addr().unwrap().to_string())
            .collect();
        assert_eq!(
            ips,
            ["10.244.200.7", "10.244.201.9"],
            "not-ready endpoints stay out"
        );
        let m = reply(resolve(
            &query("db-0.db.prod.svc.cluster.local.", RecordType::A),
            &z,
        ));
        assert_eq!(m.answers().len(), 1);
    }

    #[test]
    fn clusterset_goes_to_the_installed_ferry_dns_endpoint_once_there_is_one() {
        assert_eq!(
            zone().clusterset,
            None,
            "no installed ferry-dns: the lab's process"
        );
        let eps: Endpoints = serde_json::from_value(
            json!({"metadata": {"name": "ferry-dns", "namespace": "ferry-system"},
            "subsets": [{"addresses": [{"ip": "10.244.200.4"}], "notReadyAddresses": [{"ip": "10.244.200.5"}],
                         "ports": [{"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                                   {"name": "dns", "port": 5353, "protocol": "UDP"}]}]}),
        )
        .unwrap();
        let z = ClusterZone::build(&[svc("ferry-system", "ferry-dns", Some("10.96.0.53"))], &[eps]);
        assert_eq!(z.clusterset, Some("10.244.200.4:5353".parse().unwrap()));
        let none_ready: Endpoints = serde_json::from_value(json!({"metadata": {"name": "ferry-dns", "namespace": "ferry-system"},
            "subsets": [{"notReadyAddresses": [{"ip": "10.244.200.5"}], "ports": [{"port": 5353, "protocol": "UDP"}]}]}))
        .unwrap();
        assert_eq!(ClusterZone::build(&[], &[none_ready]).clusterset, None);
    }

    #[test]
    fn unknown_names_missing_families_foreign_zones_and_clusterset_each_get_their_answer() {
        let z = zone();
        let m = reply(resolve(
            &query("nope.default.svc.cluster.local.", RecordType::A),
            &z,
        ));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = reply(resolve(
            &query("web.default.svc.cluster.local.", RecordType::AAAA),
            &z,
        ));
        assert_eq!((m.response_code(), m.answers().len()), (ResponseCode::NoError, 0));
        // no upstream: every other name is refused, never forwarded (no loop can form)
        let m = reply(resolve(&query("example.com.", RecordType::A), &z));
        assert_eq!(m.response_code(), ResponseCode::Refused);
        let m = reply(resolve(&query("notcluster.local.", RecordType::A), &z));
        assert_eq!(m.response_code(), ResponseCode::Refused);
        assert_eq!(
            resolve(&query("web.default.svc.clusterset.local.", RecordType::A), &z),
            Resolution::Forward
        );
        assert_eq!(resolve(&[1, 2, 3], &z), Resolution::Drop);
    }

    #[test]
    fn the_kubernetes_and_kube_dns_endpoints_point_at_the_control_planes_node_address() {
        let l = crate::layout::LabLayout::plan(&crate::layout::LabRequest {
            name: "e2e".into(),
            clusters: 1,
            pod_cidrs: vec![],
            service_cidrs: vec![],
            node_cidr_mask: 24,
            node_cidr_mask_v6: 64,
            nodes: 1,
            real_nodes: 1,
            second_subnet: false,
            base_port: 24000,
            node_capacity: crate::layout::NodeCapacity {
                cpu: "1".into(),
                memory: "1Gi".into(),
                pods: 10,
            },
            wan_mtu: 1500,
        })
        .unwrap();
        let objs = cluster_objects(&l.clusters[0]);
        assert_eq!(objs[0].1["subsets"][0]["addresses"][0]["ip"], "198.19.97.254");
        assert_eq!(objs[0].1["subsets"][0]["ports"][0]["port"], APISERVER_FRONT_PORT);
        assert_eq!(objs[1].1["spec"]["clusterIP"], "10.96.0.10");
    }
}
