//! ferry's DNS for `clusterset.local` (MCS, KEP-1645), built on hickory-proto's wire format.
//!
//! [`Zone::build`] (pure) turns `ServiceImport`s and their EndpointSlices into records:
//! - `<svc>.<ns>.svc.clusterset.local` A/AAAA: the clusterset IP of a `ClusterSetIP` import, or every
//!   ready endpoint of a `Headless` one (dual stack: both families);
//! - `_<port>._<proto>.<svc>.<ns>.svc.clusterset.local` SRV for each named port;
//! - `<hostname>.<cluster>.<svc>.<ns>.svc.clusterset.local` A/AAAA for headless endpoints with a hostname.
//!
//! [`answer`] (pure) is authoritative for `clusterset.local` only. Every other name is `REFUSED` at once,
//! without recursion: the server has no upstream, so a CoreDNS stub domain that points here can never
//! form a forwarding loop. Unknown names in the zone get `NXDOMAIN`, names without the asked type `NOERROR`
//! with the SOA (negative TTL = the record TTL, so removed endpoints vanish within it).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ferry_crds::mcs::{LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImport, ServiceImportType};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kube::ResourceExt;

/// The zone ferry answers for.
pub const ZONE: &str = "clusterset.local.";

/// Records by lowercase absolute name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Zone {
    /// Name → records.
    pub names: BTreeMap<String, Vec<RData>>,
    /// TTL of every record, seconds.
    pub ttl: u32,
    /// Every name that exists: those with records and the empty non-terminals above them, down to the apex
    /// (computed once per build, so a query costs one lookup).
    pub nodes: std::collections::BTreeSet<String>,
}

fn addr_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

fn label_ok(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Zone {
    /// The A and AAAA addresses of `name` (absolute, lowercase), sorted.
    pub fn addresses(&self, name: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .names
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|rd| match rd {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// A service's name (`<svc>.<ns>.svc.clusterset.local.`) that has addresses, the first in order:
    /// what a live check asks for.
    pub fn a_service_name(&self) -> Option<&str> {
        self.names
            .keys()
            .filter(|n| n.split('.').count() == 6 && n.ends_with(".svc.clusterset.local."))
            .find(|n| !self.addresses(n).is_empty())
            .map(String::as_str)
    }

    /// The records for `imports` and their EndpointSlices (JSON, any `discovery.k8s.io` version).
    pub fn build(imports: &[ServiceImport], slices: &[serde_json::Value], ttl: u32) -> Self {
        let mut z = Zone {
            names: BTreeMap::new(),
            ttl,
            nodes: Default::default(),
        };
        for si in imports {
            let (ns, svc) = (si.namespace().unwrap_or_default(), si.name_any());
            if !label_ok(&ns) || !label_ok(&svc) {
                continue;
            }
            let base = format!("{svc}.{ns}.svc.{ZONE}");
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut per_pod: Vec<(String, IpAddr)> = Vec::new();
            match si.spec.type_ {
                ServiceImportType::ClusterSetIP => {
                    addrs.extend(si.spec.ips.iter().filter_map(|i| IpAddr::from_str(i).ok()));
                }
                ServiceImportType::Headless => {
                    for s in slices.iter().filter(|s| {
                        s["metadata"]["namespace"].as_str() == Some(ns.as_str())
                            && s["metadata"]["labels"][LABEL_SERVICE_NAME].as_str() == Some(svc.as_str())
                    }) {
                        let cluster = s["metadata"]["labels"][LABEL_SOURCE_CLUSTER]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        for ep in s["endpoints"].as_array().into_iter().flatten() {
                            if !ep["conditions"]["ready"].as_bool().unwrap_or(true) {
                                continue;
                            }
                            let ips: Vec<IpAddr> = ep["addresses"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|a| a.as_str()?.parse().ok())
                                .collect();
                            if let Some(h) = ep["hostname"].as_str().filter(|h| label_ok(h))
                                && label_ok(&cluster)
                            {
                                for ip in &ips {
                                    per_pod.push((format!("{h}.{cluster}.{base}"), *ip));
                                }
                            }
                            addrs.extend(ips);
                        }
                    }
                }
            }
            addrs.sort();
            addrs.dedup();
            z.names
                .entry(base.clone())
                .or_default()
                .extend(addrs.into_iter().map(addr_rdata));
            for (name, ip) in per_pod {
                z.names.entry(name).or_default().push(addr_rdata(ip));
            }
            for p in &si.spec.ports {
                let Some(pname) = p.name.as_deref().filter(|n| label_ok(n)) else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let Ok(target) = Name::from_str(&base) else {
                    continue;
                };
                z.names
                    .entry(format!("_{pname}._{proto}.{base}"))
                    .or_default()
                    .push(RData::SRV(SRV::new(0, 100, p.port as u16, target)));
            }
        }
        for name in z.names.keys() {
            let mut n = name.as_str();
            while n.len() > ZONE.len() {
                z.nodes.insert(n.to_string());
                n = n.split_once('.').map_or(ZONE, |(_, rest)| rest);
            }
        }
        z.nodes.insert(ZONE.to_string());
        z
    }

    fn soa(&self) -> Record {
        let apex = Name::from_str(ZONE).expect("literal");
        let mname = Name::from_str("ns.dns.clusterset.local.").expect("literal");
        let rname = Name::from_str("hostmaster.clusterset.local.").expect("literal");
        Record::from_rdata(
            apex,
            self.ttl,
            RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, self.ttl)),
        )
    }

    /// Whether `name` is in the zone: the apex, a name with records, or an empty non-terminal above one.
    fn exists(&self, name: &str) -> bool {
        name == ZONE || self.nodes.contains(name)
    }
}

/// Whether `name` (lowercase, absolute) is `clusterset.local.` or below it.
pub fn in_zone(name: &str) -> bool {
    name.strip_suffix(ZONE)
        .is_some_and(|above| above.is_empty() || above.ends_with('.'))
}

/// The answer to one DNS message (`max`: the UDP size limit; `None` over TCP). `None` when the request is
/// not even a DNS header (dropped, as servers do).
pub fn answer(request: &[u8], zone: &Zone, max: Option<usize>) -> Option<Vec<u8>> {
    let req = match Message::from_vec(request) {
        Ok(m) => m,
        Err(_) if request.len() >= 12 => {
            let mut m = Message::new();
            m.set_id(u16::from_be_bytes([request[0], request[1]]))
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return m.to_vec().ok();
        }
        Err(_) => return None,
    };
    if req.message_type() != MessageType::Query {
        return None;
    }
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(false);
    resp.add_queries(req.queries().to_vec());
    if req.op_code() != OpCode::Query || req.queries().len() != 1 {
        resp.set_response_code(if req.op_code() != OpCode::Query {
            ResponseCode::NotImp
        } else {
            ResponseCode::FormErr
        });
        return resp.to_vec().ok();
    }
    let q = &req.queries()[0];
    let name = q.name().to_ascii().to_ascii_lowercase();
    let name = if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    };
    if !in_zone(&name) {
        // not ours, never forwarded: a loop through this server is impossible
        resp.set_response_code(ResponseCode::Refused);
        return resp.to_vec().ok();
    }
    resp.set_authoritative(true);
    let qtype = q.query_type();
    let mut answers: Vec<Record> = Vec::new();
    if qtype == RecordType::SOA && name == ZONE {
        answers.push(zone.soa());
    }
    // ANY gets one RRset, not everything (RFC 8482): no amplification through ANY
    let any_type = zone
        .names
        .get(&name)
        .and_then(|v| v.first())
        .map(|rd| rd.record_type());
    for rd in zone.names.get(&name).into_iter().flatten() {
        if (qtype == RecordType::ANY && Some(rd.record_type()) == any_type) || rd.record_type() == qtype {
            answers.push(Record::from_rdata(q.name().clone(), zone.ttl, rd.clone()));
        }
    }
    if answers.is_empty() {
        resp.set_response_code(if zone.exists(&name) {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        });
        resp.add_name_server(zone.soa());
    } else {
        resp.set_response_code(ResponseCode::NoError);
        resp.add_answers(answers);
    }
    // UDP: what the client's EDNS buffer allows, never past MAX_UDP_ANSWER; TCP: the 64 KiB frame
    let limit = max.map(|m| {
        if m > MAX_UDP_ANSWER {
            m
        } else {
            m.max(usize::from(req.max_payload()).min(MAX_UDP_ANSWER)).max(512)
        }
    });
    let bytes = resp.to_vec().ok()?;
    match limit {
        Some(l) if bytes.len() > l => {
            resp.answers_mut().clear();
            resp.name_servers_mut().clear();
            resp.set_truncated(true);
            resp.to_vec().ok()
        }
        _ => Some(bytes),
    }
}

/// An A and AAAA question for `name` (absolute or not), as a client sends it (pure): with id `id`, recursion
/// desired, EDNS for 1232 bytes. `None` when `name` is not a DNS name.
pub fn question(name: &str, qtype: RecordType, id: u16) -> Option<Vec<u8>> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    let name = Name::from_str(name).ok()?;
    m.add_query(hickory_proto::op::Query::query(name, qtype));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(MAX_UDP_ANSWER as u16);
    m.set_edns(edns);
    m.to_vec().ok()
}

/// How [`addresses`] begins its error when something other than ferry-dns answered.
pub const NOT_FERRY_DNS: &str = "not ferry-dns";

/// What an answer to [`question`] `id` says (pure): the addresses, or why there are none (the response
/// code, a truncated answer, another id, not DNS). `Ok(None)` when `bytes` answer another id (a stray
/// datagram: keep waiting).
pub fn addresses(bytes: &[u8], id: u16) -> Result<Option<Vec<IpAddr>>, String> {
    let m = Message::from_vec(bytes).map_err(|e| format!("not a DNS answer: {e}"))?;
    if m.id() != id || m.message_type() != MessageType::Response {
        return Ok(None);
    }
    // ferry-dns is authoritative for clusterset.local and says so in every answer of its zone; a resolver
    // on the way that answers for whatever it is asked (a transparent DNS proxy) does not
    if !m.authoritative() {
        return Err(format!(
            "{NOT_FERRY_DNS}: the answer ({}) is not authoritative for {ZONE}",
            m.response_code()
        ));
    }
    if m.response_code() != ResponseCode::NoError {
        return Err(m.response_code().to_string());
    }
    if m.truncated() {
        return Err("truncated (TC): the answer does not fit in UDP".into());
    }
    let ips: Vec<IpAddr> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok(Some(ips))
}

/// Asks `server` over UDP for `name`'s A and AAAA records, each question tried `tries` times with
/// `timeout` each: the addresses (sorted), or why not (no answer, the response code).
pub async fn lookup(
    server: std::net::SocketAddr,
    name: &str,
    timeout: std::time::Duration,
    tries: u32,
) -> Result<Vec<IpAddr>, String> {
    let bind: std::net::SocketAddr = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .expect("an address");
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("binding a UDP socket: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("no route to {server}: {e}"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    for (i, qtype) in [RecordType::A, RecordType::AAAA].into_iter().enumerate() {
        let id = (std::process::id() as u16).wrapping_add(i as u16);
        let q = question(name, qtype, id).ok_or_else(|| format!("{name} is not a DNS name"))?;
        let mut got = None;
        'tries: for _ in 0..tries.max(1) {
            sock.send(&q)
                .await
                .map_err(|e| format!("sending to {server}: {e}"))?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => break,
                    // ICMP port unreachable: nothing listens there
                    Ok(Err(e)) => return Err(format!("{server}: {e}")),
                    Ok(Ok(n)) => {
                        if let Some(ips) = addresses(&buf[..n], id)? {
                            got = Some(ips);
                            break 'tries;
                        }
                    }
                }
            }
        }
        match got {
            Some(ips) => out.extend(ips),
            None => {
                return Err(format!(
                    "no answer from {server} in {} x {} ms",
                    tries.max(1),
                    timeout.as_millis()
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The zone as the server holds it: swapped whole when imports or endpoints change.
pub type SharedZone = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Zone>>>;

/// The largest UDP answer, whatever EDNS buffer a query claims (the DNS flag day's 1232 bytes): a spoofed
/// query cannot make ferry-dns a large amplifier.
pub const MAX_UDP_ANSWER: usize = 1232;

/// What an answer says, as `ferry_dns_queries_total{result}` counts it (pure): `answered`, `nxdomain`,
/// `refused` (another zone), `servfail`/`formerr`/`other` by the response code, `dropped` when no answer
/// was sent (not a DNS query).
pub fn result_of(answer: Option<&[u8]>) -> &'static str {
    let Some(a) = answer else {
        return "dropped";
    };
    match a.get(3).map(|b| b & 0x0f) {
        Some(0) => "answered",
        Some(1) => "formerr",
        Some(2) => "servfail",
        Some(3) => "nxdomain",
        Some(5) => "refused",
        _ => "other",
    }
}

/// Counts one query by [`result_of`].
fn count(answer: Option<&[u8]>) {
    static FAMILY: ferry_plumbing::metrics::CounterCell = std::sync::OnceLock::new();
    ferry_plumbing::metrics::count(
        &FAMILY,
        "dns_queries",
        "queries by result: answered, nxdomain, refused (not clusterset.local), dropped, …",
        &[("result", result_of(answer))],
    );
}

/// Serves UDP until the socket fails (a failing receive or send is logged and retried).
pub async fn serve_udp(sock: tokio::net::UdpSocket, zone: SharedZone) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("udp receive: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let z = zone.read().expect("lock").clone();
        let out = answer(&buf[..n], &z, Some(512));
        count(out.as_deref());
        if let Some(out) = out {
            let _ = sock.send_to(&out, from).await;
        }
    }
}

/// Serves DNS over TCP (2-byte length prefix, several queries per connection) within `limits`: connections
/// capped in total and per source, each query read within the idle timeout (a slow or idle client is
/// closed), one query's buffer at most 64 KiB, `accept` errors retried. Never returns on its own.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    zone: SharedZone,
    limits: ferry_plumbing::listen::Limits,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tracker = std::sync::Arc::new(ferry_plumbing::listen::ConnTracker::default());
    loop {
        let (mut conn, _, slot) = ferry_plumbing::listen::accept_admitted(&listener, &tracker, &limits).await;
        let zone = zone.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let read = async {
                    let len = usize::from(conn.read_u16().await?);
                    let mut msg = vec![0u8; len];
                    conn.read_exact(&mut msg).await?;
                    std::io::Result::Ok(msg)
                };
                let Ok(Ok(msg)) = tokio::time::timeout(idle, read).await else {
                    return;
                };
                let z = zone.read().expect("lock").clone();
                let out = answer(&msg, &z, Some(usize::from(u16::MAX)));
                count(out.as_deref());
                let Some(out) = out else {
                    return;
                };
                let write = async {
                    conn.write_u16(out.len() as u16).await?;
                    conn.write_all(&out).await
                };
                if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
                    return;
                }
            }
        });
    }
}

/// The zone as the cluster's `ServiceImport`s and MCS EndpointSlices say it is now (one LIST of each):
/// what a ferry-dns that is up to date answers. `ferryctl doctor` compares it with a live answer.
pub async fn zone_now(client: &kube::Client, ttl: u32) -> Result<Zone, crate::Error> {
    let ar = ferry_plumbing::discovery::endpoint_slice_resource(client)
        .await
        .ok_or_else(|| {
            crate::Error::NotServed(
                "discovery.k8s.io EndpointSlice is not served; fix: Kubernetes 1.17 or later".into(),
            )
        })?;
    let lp = kube::api::ListParams::default();
    let imports = kube::Api::<ServiceImport>::all(client.clone())
        .list(&lp)
        .await?
        .items;
    let slices: Vec<serde_json::Value> =
        kube::Api::<kube::core::DynamicObject>::all_with(client.clone(), &ar)
            .list(&lp.labels(LABEL_SERVICE_NAME))
            .await?
            .items
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect();
    Ok(Zone::build(&imports, &slices, ttl))
}

/// Keeps `zone` equal to the cluster's `ServiceImport`s and MCS EndpointSlices (rebuilt within 200 ms of a
/// change).
pub async fn watch(
    client: kube::Client,
    zone: SharedZone,
    ttl: u32,
    health: std::sync::Arc<ferry_plumbing::admin::Health>,
) -> Result<(), crate::Error> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let ar = ferry_plumbing::discovery::endpoint_slice_resource(&client)
        .await
        .ok_or_else(|| {
            crate::Error::NotServed(
                "discovery.k8s.io EndpointSlice is not served; fix: Kubernetes 1.17 or later".into(),
            )
        })?;
    let (imports, iw) = reflector::store::<ServiceImport>();
    let sw = reflector::store::Writer::<kube::core::DynamicObject>::new(ar.clone());
    let slices = sw.as_reader();
    let si_stream = reflector(
        iw,
        watcher(
            kube::Api::<ServiceImport>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|_| ());
    let sl_stream = reflector(
        sw,
        watcher(
            kube::Api::<kube::core::DynamicObject>::all_with(client.clone(), &ar),
            watcher::Config::default().labels(LABEL_SERVICE_NAME),
        ),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = futures::stream::select(Box::pin(si_stream), Box::pin(sl_stream));
    loop {
        if events.next().await.is_none() {
            return Err(crate::Error::WatchEnded("ServiceImport/EndpointSlice"));
        }
        // let a burst of events settle, then rebuild once
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(events.next()) {}
        let imps: Vec<ServiceImport> = imports.state().iter().map(|s| (**s).clone()).collect();
        let sls: Vec<serde_json::Value> = slices
            .state()
            .iter()
            .map(|s| serde_json::to_value(&**s).unwrap_or_default())
            .collect();
        let z = Zone::build(&imps, &sls, ttl);
        *zone.write().expect("lock") = std::sync::Arc::new(z);
        health.set("zone", Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::mcs::{ServiceImportSpec, ServicePort};
    use hickory_proto::op::Query;
    use serde_json::json;

    fn import(name: &str, t: ServiceImportType, ips: &[&str]) -> ServiceImport {
        let mut si = ServiceImport::new(
            name,
            ServiceImportSpec {
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                    port: 8080,
                }],
                ips: ips.iter().map(|s| s.to_string()).collect(),
                type_: t,
                ..Default::default()
            },
        );
        si.metadata.namespace = Some("default".into());
        si
    }

    fn slice(svc: &str, cluster: &str, eps: serde_json::Value) -> serde_json::Value {
        json!({ "metadata": { "namespace": "default", "labels": {
            LABEL_SERVICE_NAME: svc, LABEL_SOURCE_CLUSTER: cluster } }, "endpoints": eps })
    }

    #[test]
    fn the_zone_names_a_service_with_addresses_and_gives_them_sorted() {
        let z = zone();
        assert_eq!(z.a_service_name(), Some("echo.default.svc.clusterset.local."));
        assert_eq!(
            z.addresses("echo.default.svc.clusterset.local."),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "10.244.0.7".parse().unwrap(),
                "fd00::7".parse().unwrap()
            ]
        );
        assert!(z.addresses("nope.default.svc.clusterset.local.").is_empty());
        assert_eq!(Zone::default().a_service_name(), None);
    }

    #[test]
    fn a_question_round_trips_through_the_server_and_its_answer_gives_the_addresses() {
        let z = zone();
        let q = question("web.default.svc.clusterset.local", RecordType::A, 7).unwrap();
        let a = answer(&q, &z, Some(512)).unwrap();
        assert_eq!(addresses(&a, 7), Ok(Some(vec!["10.96.0.50".parse().unwrap()])));
        // a stray answer to another question: not this one's
        assert_eq!(addresses(&a, 8), Ok(None));
        let q = question("echo.default.svc.clusterset.local.", RecordType::AAAA, 9).unwrap();
        let a = answer(&q, &z, Some(512)).unwrap();
        assert_eq!(addresses(&a, 9), Ok(Some(vec!["fd00::7".parse().unwrap()])));
        let q = question("gone.default.svc.clusterset.local", RecordType::A, 10).unwrap();
        let a = answer(&q, &z, Some(512)).unwrap();
        assert_eq!(addresses(&a, 10), Err("Non-Existent Domain".to_string()));
        let q = question("example.com", RecordType::A, 11).unwrap();
        let a = answer(&q, &z, Some(512)).unwrap();
        // ferry-dns refuses other zones without authority: that answer is not one of its zone's
        assert_eq!(
            addresses(&a, 11),
            Err(
                "not ferry-dns: the answer (Query Refused) is not authoritative for clusterset.local."
                    .to_string()
            )
        );
        assert!(addresses(b"\x00", 1).unwrap_err().starts_with("not a DNS answer"));
        // another server's answer (a recursive resolver on the way): not ferry-dns's, whatever it says
        let mut m =
            Message::from_vec(&question("web.default.svc.clusterset.local", RecordType::A, 12).unwrap())
                .unwrap();
        m.set_message_type(MessageType::Response)
            .set_response_code(ResponseCode::NXDomain);
        assert_eq!(
            addresses(&m.to_vec().unwrap(), 12),
            Err(
                "not ferry-dns: the answer (Non-Existent Domain) is not authoritative for clusterset.local."
                    .to_string()
            )
        );
        assert_eq!(question("a..b", RecordType::A, 1), None);
    }

    fn zone() -> Zone {
        Zone::build(
            &[
                import("echo", ServiceImportType::Headless, &[]),
                import("web", ServiceImportType::ClusterSetIP, &["10.96.0.50"]),
            ],
            &[
                slice(
                    "echo",
                    "provider-c2",
                    json!([
                        { "addresses": ["10.0.0.5"], "conditions": { "ready": true }, "hostname": "echo-0" },
                        { "addresses": ["10.0.1.5"], "conditions": { "ready": false } },
                    ]),
                ),
                slice(
                    "echo",
                    "consumer-c1",
                    json!([{ "addresses": ["10.244.0.7"] }, { "addresses": ["fd00::7"] }]),
                ),
            ],
            5,
        )
    }

    fn ask(name: &str, t: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        Message::from_vec(&answer(&m.to_vec().unwrap(), &zone(), Some(512)).unwrap()).unwrap()
    }

    fn addrs(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn headless_imports_answer_every_ready_endpoint_of_every_cluster_in_both_families() {
        let m = ask("echo.default.svc.clusterset.local.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && !m.recursion_available());
        assert_eq!(m.id(), 4242);
        assert_eq!(addrs(&m), ["10.0.0.5", "10.244.0.7"]);
        assert_eq!(m.answers()[0].ttl(), 5);
        assert_eq!(
            addrs(&ask("echo.default.svc.clusterset.local.", RecordType::AAAA)),
            ["fd00::7"]
        );
        // a name without a trailing dot and in capitals is the same name
        assert_eq!(
            addrs(&ask("ECHO.default.svc.clusterset.local", RecordType::A)).len(),
            2
        );
    }

    #[test]
    fn clusterset_ip_srv_and_per_pod_names() {
        assert_eq!(
            addrs(&ask("web.default.svc.clusterset.local.", RecordType::A)),
            ["10.96.0.50"]
        );
        let srv = ask("_http._tcp.web.default.svc.clusterset.local.", RecordType::SRV);
        assert_eq!(srv.answers().len(), 1);
        assert_eq!(
            srv.answers()[0].data().to_string(),
            "0 100 8080 web.default.svc.clusterset.local."
        );
        assert_eq!(
            addrs(&ask(
                "echo-0.provider-c2.echo.default.svc.clusterset.local.",
                RecordType::A
            )),
            ["10.0.0.5"]
        );
    }

    #[test]
    fn each_answer_is_counted_by_what_it_says() {
        let raw = |name: &str| {
            let mut m = Message::new();
            m.set_id(1)
                .add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
            answer(&m.to_vec().unwrap(), &zone(), Some(512))
        };
        assert_eq!(
            result_of(raw("web.default.svc.clusterset.local.").as_deref()),
            "answered"
        );
        assert_eq!(
            result_of(raw("nope.default.svc.clusterset.local.").as_deref()),
            "nxdomain"
        );
        assert_eq!(result_of(raw("example.com.").as_deref()), "refused");
        assert_eq!(
            result_of(answer(b"junk", &zone(), Some(512)).as_deref()),
            "dropped"
        );
        count(raw("example.com.").as_deref());
        let text = ferry_plumbing::metrics::render();
        assert!(
            ferry_plumbing::metrics::sample(&text, "ferry_dns_queries_total", &[("result", "refused")])
                .is_some_and(|v| v >= 1.0),
            "{text}"
        );
    }

    #[test]
    fn other_zones_are_refused_without_recursion_and_unknown_names_are_nxdomain() {
        for n in [
            "example.com.",
            "cluster.local.",
            "kubernetes.default.svc.cluster.local.",
            "local.",
            "xclusterset.local.",
        ] {
            let m = ask(n, RecordType::A);
            assert_eq!(m.response_code(), ResponseCode::Refused, "{n}");
            assert!(m.answers().is_empty() && !m.recursion_available(), "{n}");
        }
        let m = ask("nope.default.svc.clusterset.local.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);
        // an existing name without the type, and an empty non-terminal: NODATA
        assert_eq!(
            ask("web.default.svc.clusterset.local.", RecordType::AAAA).response_code(),
            ResponseCode::NoError
        );
        let m = ask("default.svc.clusterset.local.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        assert_eq!(ask("clusterset.local.", RecordType::SOA).answers().len(), 1);
        // the apex exists even in an empty zone (before the first build): NODATA, not NXDOMAIN
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_str("clusterset.local.").unwrap(),
            RecordType::A,
        ));
        let r =
            Message::from_vec(&answer(&m.to_vec().unwrap(), &Zone::default(), Some(512)).unwrap()).unwrap();
        assert_eq!(r.response_code(), ResponseCode::NoError);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing_and_big_answers_are_truncated_over_udp() {
        assert!(answer(b"xy", &zone(), Some(512)).is_none());
        let r = Message::from_vec(
            &answer(&[0x12, 0x34, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1], &zone(), Some(512)).unwrap(),
        )
        .unwrap();
        assert_eq!((r.id(), r.response_code()), (0x1234, ResponseCode::FormErr));
        let eps: Vec<serde_json::Value> = (0..200)
            .map(|i| json!({ "addresses": [format!("10.1.{}.{}", i / 250, i % 250)] }))
            .collect();
        let z = Zone::build(
            &[import("big", ServiceImportType::Headless, &[])],
            &[slice("big", "c", json!(eps))],
            5,
        );
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_str("big.default.svc.clusterset.local.").unwrap(),
            RecordType::A,
        ));
        let udp = Message::from_vec(&answer(&m.to_vec().unwrap(), &z, Some(512)).unwrap()).unwrap();
        assert!(udp.truncated() && udp.answers().is_empty());
        let tcp = Message::from_vec(&answer(&m.to_vec().unwrap(), &z, None).unwrap()).unwrap();
        assert_eq!(tcp.answers().len(), 200);
        // a huge EDNS buffer does not buy a huge UDP answer (no amplification)
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(65000);
        m.set_edns(edns);
        let udp = answer(&m.to_vec().unwrap(), &z, Some(512)).unwrap();
        assert!(udp.len() <= MAX_UDP_ANSWER, "{} bytes", udp.len());
        assert!(Message::from_vec(&udp).unwrap().truncated());
        // within the cap, EDNS is honoured: a small answer is not truncated
        let mut m = Message::new();
        m.add_query(Query::query(
            Name::from_str("echo.default.svc.clusterset.local.").unwrap(),
            RecordType::A,
        ));
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        m.set_edns(edns);
        let r = Message::from_vec(&answer(&m.to_vec().unwrap(), &zone(), Some(512)).unwrap()).unwrap();
        assert_eq!(r.answers().len(), 2);
    }

    #[test]
    fn any_gets_one_rrset_not_everything() {
        let any = ask("echo.default.svc.clusterset.local.", RecordType::ANY);
        let types: std::collections::BTreeSet<RecordType> =
            any.answers().iter().map(|r| r.record_type()).collect();
        assert_eq!(types.len(), 1, "{types:?}");
        assert!(!any.answers().is_empty());
    }
}
