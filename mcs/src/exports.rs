//! Multi-Cluster Services (KEP-1645) across peerings.
//!
//! Each agent turns its cluster's `ServiceExport`s (with their Services and EndpointSlices) into
//! [`ExportedService`]s. The consumer's agent sends its exports to each provider's broker
//! (`POST /v1/exports`, mTLS) every second and gets the provider's back, so both sides know both sides' exports.
//! Addresses are translated into the receiving cluster's view with the tunnel's remaps.
//!
//! [`merge`] (pure) makes one import per exported name: the oldest export defines ports and type; an export
//! whose ports or type differ is left out and gets `Conflict=True`, as the KEP says. Every cluster in the
//! clusterset then has a `ServiceImport`. Its endpoints are EndpointSlices labelled
//! `multicluster.kubernetes.io/service-name` and `.../source-cluster`, one per exporting cluster. A
//! `ClusterSetIP` import gets its IP from a selector-less Service `ferry-mcs-<name>` in the importing cluster,
//! whose EndpointSlices they also are (so kube-proxy load-balances the clusterset IP). An import no cluster
//! exports any more is deleted, with its Service and slices (owner references).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_crds::mcs::{LABEL_SERVICE_NAME, LABEL_SOURCE_CLUSTER, ServiceImportType, ServicePort};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Label on everything ferry creates for an import.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_VALUE: &str = "ferry-mcs";
/// Prefix of the Service that holds a `ClusterSetIP` import's IP.
pub const DERIVED_PREFIX: &str = "ferry-mcs-";

/// One endpoint of an exported service.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedEndpoint {
    /// Addresses (as the receiving side sees them once translated).
    pub addresses: Vec<String>,
    /// The pod's hostname, when it has one (headless per-pod DNS names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// One cluster's export of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    /// The exporting cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// When the `ServiceExport` was created (RFC 3339): the oldest export wins a conflict.
    pub created: String,
    /// `ClusterSetIP`, or `Headless` for a Service with `clusterIP: None`.
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Ready endpoints.
    pub endpoints: Vec<ExportedEndpoint>,
    /// The ports the endpoints listen on (the EndpointSlices' ports: a Service's `targetPort`, by port
    /// name); empty: the Service ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_ports: Vec<ServicePort>,
}

/// `POST /v1/exports` both ways: the sender's exports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportList {
    /// Exports.
    pub exports: Vec<ExportedService>,
}

/// One merged import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// Type and ports (of the oldest export).
    pub type_: ServiceImportType,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints per exporting cluster (conflicting clusters left out).
    pub endpoints: BTreeMap<String, Vec<ExportedEndpoint>>,
    /// The ports each exporting cluster's endpoints listen on (absent: the import's ports).
    pub endpoint_ports: BTreeMap<String, Vec<ServicePort>>,
    /// Clusters whose export conflicts with the winner.
    pub conflicts: BTreeSet<String>,
}

/// Imports by `(namespace, name)`.
pub type Imports = BTreeMap<(String, String), Import>;

/// Merges every cluster's exports into one import per `(namespace, name)`.
pub fn merge(all: &[ExportedService]) -> Imports {
    let mut by_name: BTreeMap<(String, String), Vec<&ExportedService>> = BTreeMap::new();
    for e in all {
        by_name
            .entry((e.namespace.clone(), e.name.clone()))
            .or_default()
            .push(e);
    }
    by_name
        .into_iter()
        .map(|(key, mut exports)| {
            exports.sort_by(|a, b| (&a.created, &a.cluster).cmp(&(&b.created, &b.cluster)));
            let winner = exports[0];
            let mut ports = winner.ports.clone();
            ports.sort();
            let mut imp = Import {
                type_: winner.type_,
                ports: ports.clone(),
                ..Default::default()
            };
            for e in exports {
                let mut p = e.ports.clone();
                p.sort();
                if p != ports || e.type_ != winner.type_ {
                    imp.conflicts.insert(e.cluster.clone());
                } else {
                    imp.endpoints
                        .entry(e.cluster.clone())
                        .or_default()
                        .extend(e.endpoints.iter().cloned());
                    if !e.endpoint_ports.is_empty() {
                        imp.endpoint_ports
                            .insert(e.cluster.clone(), e.endpoint_ports.clone());
                    }
                }
            }
            (key, imp)
        })
        .collect()
}

/// An export as the receiving cluster sees it: every address translated with that side's remaps.
pub fn translate(e: &ExportedService, remaps: &BTreeMap<IpNet, IpNet>) -> ExportedService {
    let mut out = e.clone();
    for ep in &mut out.endpoints {
        ep.addresses = ep
            .addresses
            .iter()
            .map(|a| match a.parse() {
                Ok(ip) => ferry_tunnel::ipam::translate(ip, remaps)
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| a.clone()),
                Err(_) => a.clone(),
            })
            .collect();
    }
    out
}

/// The export of Service `svc` by cluster `cluster`, with the ready endpoints of its EndpointSlices (as
/// JSON, any version: v1 and v1beta1 share the fields used here).
pub fn export_of(
    cluster: &str,
    created: &str,
    svc: &Service,
    slices: &[serde_json::Value],
) -> ExportedService {
    let spec = svc.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut ports: Vec<ServicePort> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| ServicePort {
            name: p.name,
            protocol: Some(p.protocol.unwrap_or_else(|| "TCP".into())),
            app_protocol: p.app_protocol,
            port: p.port,
        })
        .collect();
    ports.sort();
    let mut endpoints: Vec<ExportedEndpoint> = slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|ep| ep["conditions"]["ready"].as_bool().unwrap_or(true))
        .map(|ep| ExportedEndpoint {
            addresses: ep["addresses"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            hostname: ep["hostname"].as_str().map(str::to_string),
        })
        .collect();
    endpoints.sort();
    endpoints.dedup();
    // the slices' ports are the endpoints' (a Service's targetPort); slices of one Service share them
    let mut endpoint_ports: Vec<ServicePort> = slices
        .iter()
        .find(|s| s["endpoints"].as_array().is_some_and(|e| !e.is_empty()))
        .and_then(|s| s["ports"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                name: p["name"].as_str().filter(|n| !n.is_empty()).map(str::to_string),
                protocol: Some(p["protocol"].as_str().unwrap_or("TCP").to_string()),
                app_protocol: None,
                port: i32::try_from(p["port"].as_i64()?).ok()?,
            })
        })
        .collect();
    endpoint_ports.sort();
    ExportedService {
        cluster: cluster.into(),
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        created: created.into(),
        type_: if headless {
            ServiceImportType::Headless
        } else {
            ServiceImportType::ClusterSetIP
        },
        ports,
        endpoints,
        endpoint_ports,
    }
}

/// What the two sides of peerings have told each other, shared by the broker and the sync loop.
#[derive(Default)]
pub struct Exchange {
    /// This cluster's exports, as last computed.
    pub local: Mutex<Vec<ExportedService>>,
    /// Each peer's exports (already translated), with when they were received.
    pub remote: Mutex<HashMap<String, (Vec<ExportedService>, Instant)>>,
    /// When this side first saw each peer export (`cluster`, namespace, name): bounds the conflict order.
    pub first_seen: Mutex<HashMap<(String, String, String), chrono::DateTime<chrono::Utc>>>,
}

/// Namespaces no peer's export may name on either side.
pub const RESERVED_NAMESPACES: [&str; 5] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "default",
    "ferry-system",
];

/// The most exports, ports and endpoints one peer may send (far above real use; bounds memory and DNS).
pub const MAX_EXPORTS: usize = 1000;
/// Ports per export.
pub const MAX_PORTS: usize = 100;
/// Endpoints per export.
pub const MAX_ENDPOINTS: usize = 5000;

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether peer `cluster` may send export `e` (pure): it speaks for itself only, names a namespace it may
/// use (`may_use`) that is not reserved, carries sane names and ports, and every address lies inside the
/// ranges its peering routes (`routed`, the peer's CIDRs as the peer sees them). The reason names the
/// field and the fix.
pub fn check_export(
    e: &ExportedService,
    cluster: &str,
    may_use: &dyn Fn(&str) -> bool,
    routed: &[IpNet],
) -> Result<(), String> {
    let at = format!("exports[{}/{}]", e.namespace, e.name);
    if e.cluster != cluster {
        return Err(format!(
            "{at}.cluster {:?} is not the caller ({cluster}); fix: send only this cluster's exports",
            e.cluster
        ));
    }
    if !dns_label(&e.namespace) || !dns_label(&e.name) {
        return Err(format!("{at}: namespace and name must be DNS labels"));
    }
    if RESERVED_NAMESPACES.contains(&e.namespace.as_str()) || !may_use(&e.namespace) {
        return Err(format!(
            "{at}.namespace {:?} is not a namespace this peer offloaded; fix: export services of offloaded namespaces only (ferryctl offload namespace {})",
            e.namespace, e.namespace
        ));
    }
    if e.ports.len() > MAX_PORTS || e.endpoint_ports.len() > MAX_PORTS || e.endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{at}: more than {MAX_PORTS} ports or {MAX_ENDPOINTS} endpoints"
        ));
    }
    if let Some(p) = e
        .ports
        .iter()
        .chain(&e.endpoint_ports)
        .find(|p| !(1..=65535).contains(&p.port))
    {
        return Err(format!("{at}.ports: {} is not a port", p.port));
    }
    for ep in &e.endpoints {
        if ep.addresses.len() > 16 || ep.hostname.as_deref().is_some_and(|h| !dns_label(h)) {
            return Err(format!(
                "{at}.endpoints: too many addresses or a hostname that is not a DNS label"
            ));
        }
        for a in &ep.addresses {
            let ip: std::net::IpAddr = a
                .parse()
                .map_err(|_| format!("{at}.endpoints: {a:?} is not an IP address"))?;
            if !routed.iter().any(|n| n.contains(&ip)) {
                return Err(format!(
                    "{at}.endpoints: {a} is outside the ranges this peering routes ({}); fix: export services whose endpoints are the peer's own pods",
                    routed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// How long one exchange with one provider may take (the others are not held up meanwhile).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How far before this side first saw an export the sender's own creation time is believed.
pub const CLAIM_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// The time an export counts from in a conflict (pure): what the sender claims, but never more than
/// [`CLAIM_WINDOW`] before this side first saw it, and never after; so no peer wins a conflict by
/// backdating, and an export that appeared moments apart on two clusters keeps its real order.
pub fn conflict_time(claimed: &str, first_seen: chrono::DateTime<chrono::Utc>) -> String {
    let floor = first_seen - CLAIM_WINDOW;
    let t = chrono::DateTime::parse_from_rfc3339(claimed)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or(first_seen)
        .clamp(floor, first_seen);
    ferry_plumbing::conditions::stamp(t)
}

impl Exchange {
    /// Stores what peer `cluster` exports, translated with `remaps` (whose keys are the ranges the peering
    /// routes). Each export is checked on its own ([`check_export`]): a bad one is left out and named in the
    /// answer, the others are kept. The conflict order is bounded by this side's clock ([`conflict_time`]).
    pub fn receive(
        &self,
        cluster: &str,
        list: ExportList,
        remaps: &BTreeMap<IpNet, IpNet>,
        may_use: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let routed: Vec<IpNet> = remaps.keys().copied().collect();
        let mut refused = Vec::new();
        if list.exports.len() > MAX_EXPORTS {
            refused.push(format!("more than {MAX_EXPORTS} exports; the rest are left out"));
        }
        let now = chrono::Utc::now();
        let mut seen = self.first_seen.lock().expect("lock");
        let mut keep = Vec::new();
        for e in list.exports.iter().take(MAX_EXPORTS) {
            match check_export(e, cluster, may_use, &routed) {
                Ok(()) => {
                    let mut t = translate(e, remaps);
                    let first = *seen
                        .entry((cluster.to_string(), e.namespace.clone(), e.name.clone()))
                        .or_insert(now);
                    t.created = conflict_time(&e.created, first);
                    keep.push(t);
                }
                Err(why) => refused.push(why),
            }
        }
        // forget first sightings of what this peer no longer exports
        seen.retain(|(c, ns, n), _| c != cluster || keep.iter().any(|e| &e.namespace == ns && &e.name == n));
        drop(seen);
        self.remote
            .lock()
            .expect("lock")
            .insert(cluster.to_string(), (keep, Instant::now()));
        refused
    }

    /// This cluster's exports.
    pub fn local(&self) -> ExportList {
        ExportList {
            exports: self.local.lock().expect("lock").clone(),
        }
    }
}

pub(crate) fn slice_name(name: &str, cluster: &str) -> String {
    let full = format!("{DERIVED_PREFIX}{name}-{cluster}");
    if full.len() <= 63 {
        return full;
    }
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(full.as_bytes())[..4]);
    format!("{}-{h}", full[..54].trim_end_matches('-'))
}

/// The EndpointSlice (as JSON, in `version`) of `cluster`'s endpoints of import `name`, with the ports
/// those endpoints listen on.
pub fn import_slice(
    version: &str,
    ns: &str,
    name: &str,
    cluster: &str,
    imp: &Import,
    endpoints: &[ExportedEndpoint],
    owner: &serde_json::Value,
) -> serde_json::Value {
    let v6 = endpoints
        .iter()
        .flat_map(|e| e.addresses.first())
        .any(|a| a.contains(':'));
    let mut labels = json!({
        LABEL_SERVICE_NAME: name, LABEL_SOURCE_CLUSTER: cluster,
        MANAGED_LABEL: MANAGED_VALUE,
        "endpointslice.kubernetes.io/managed-by": "ferry.dev",
    });
    if imp.type_ == ServiceImportType::ClusterSetIP {
        labels["kubernetes.io/service-name"] = json!(format!("{DERIVED_PREFIX}{name}"));
    }
    json!({
        "apiVersion": version, "kind": "EndpointSlice",
        "metadata": { "name": slice_name(name, cluster), "namespace": ns, "labels": labels,
                      "ownerReferences": [owner] },
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints.iter().map(|e| {
            let mut ep = json!({ "addresses": e.addresses, "conditions": { "ready": true } });
            if let Some(h) = &e.hostname { ep["hostname"] = json!(h); }
            ep
        }).collect::<Vec<_>>(),
        "ports": imp.endpoint_ports.get(cluster).unwrap_or(&imp.ports).iter().map(|p| json!({ "name": p.name.clone().unwrap_or_default(), "protocol": p.protocol, "port": p.port })).collect::<Vec<_>>(),
    })
}

/// Writes the imports of `merged` into this cluster and removes imports, slices and derived Services that
/// no export backs any more.
#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, p: i32) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            protocol: Some("TCP".into()),
            app_protocol: None,
            port: p,
        }
    }

    fn export(cluster: &str, created: &str, ports: Vec<ServicePort>, ips: &[&str]) -> ExportedService {
        ExportedService {
            cluster: cluster.into(),
            namespace: "default".into(),
            name: "echo".into(),
            created: created.into(),
            type_: ServiceImportType::Headless,
            ports,
            endpoints: ips
                .iter()
                .map(|ip| ExportedEndpoint {
                    addresses: vec![ip.to_string()],
                    hostname: None,
                })
                .collect(),
            endpoint_ports: Vec::new(),
        }
    }

    #[test]
    fn two_clusters_exporting_the_same_ports_give_one_import_with_both_endpoint_sets() {
        let m = merge(&[
            export(
                "b",
                "2026-01-02T00:00:00Z",
                vec![port("http", 8080)],
                &["10.0.0.5"],
            ),
            export(
                "a",
                "2026-01-01T00:00:00Z",
                vec![port("http", 8080)],
                &["10.244.0.5"],
            ),
        ]);
        let imp = &m[&("default".to_string(), "echo".to_string())];
        assert_eq!(imp.endpoints.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(imp.conflicts.is_empty());
        assert_eq!(imp.ports, [port("http", 8080)]);
    }

    #[test]
    fn different_ports_conflict_and_the_oldest_export_wins() {
        let m = merge(&[
            export(
                "b",
                "2026-01-01T00:00:00Z",
                vec![port("http", 8080)],
                &["10.0.0.5"],
            ),
            export(
                "a",
                "2026-01-02T00:00:00Z",
                vec![port("http", 9090)],
                &["10.244.0.5"],
            ),
        ]);
        let imp = &m[&("default".to_string(), "echo".to_string())];
        assert_eq!(
            imp.ports,
            [port("http", 8080)],
            "the oldest (b) defines the ports"
        );
        assert_eq!(imp.conflicts, BTreeSet::from(["a".to_string()]));
        assert_eq!(
            imp.endpoints.keys().collect::<Vec<_>>(),
            ["b"],
            "no broken import: a's endpoints are left out"
        );
        // a type mismatch is a conflict too
        let mut c = export("c", "2026-01-03T00:00:00Z", vec![port("http", 8080)], &[]);
        c.type_ = ServiceImportType::ClusterSetIP;
        let m = merge(&[
            export("b", "2026-01-01T00:00:00Z", vec![port("http", 8080)], &[]),
            c,
        ]);
        assert!(
            m[&("default".to_string(), "echo".to_string())]
                .conflicts
                .contains("c")
        );
    }

    #[test]
    fn received_exports_are_translated_and_may_not_speak_for_another_cluster() {
        let x = Exchange::default();
        let remaps = BTreeMap::from([("10.244.0.0/16".parse().unwrap(), "10.0.0.0/16".parse().unwrap())]);
        let mut e = export("b", "t", vec![port("http", 8080)], &["10.244.1.7"]);
        e.namespace = "shop".into();
        let list = ExportList { exports: vec![e] };
        assert!(x.receive("b", list.clone(), &remaps, &|_| true).is_empty());
        let got = x.remote.lock().unwrap()["b"].0.clone();
        assert_eq!(got[0].endpoints[0].addresses, ["10.0.1.7"]);
        let refused = x.receive("c", list, &remaps, &|_| true);
        assert!(
            refused[0].contains(".cluster \"b\" is not the caller (c)"),
            "{refused:?}"
        );
        assert!(x.remote.lock().unwrap()["c"].0.is_empty());
    }

    #[test]
    fn a_claimed_creation_time_counts_within_thirty_seconds_of_the_first_sighting() {
        let seen = chrono::DateTime::parse_from_rfc3339("2026-12-03T20:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            conflict_time("2026-12-03T19:59:50Z", seen),
            "2026-12-03T19:59:50Z"
        );
        assert_eq!(
            conflict_time("1999-01-01T00:00:00Z", seen),
            "2026-12-03T19:59:30Z"
        );
        assert_eq!(
            conflict_time("2030-01-01T00:00:00Z", seen),
            "2026-12-03T20:00:00Z"
        );
        assert_eq!(conflict_time("garbage", seen), "2026-12-03T20:00:00Z");
    }

    #[test]
    fn hijacking_exports_are_refused_one_by_one_and_the_good_ones_kept() {
        let x = Exchange::default();
        let remaps = BTreeMap::from([("10.244.0.0/16".parse().unwrap(), "10.0.0.0/16".parse().unwrap())]);
        let mk = |ns: &str, name: &str, addr: &str| {
            let mut e = export("b", "1999-01-01T00:00:00Z", vec![port("http", 8080)], &[addr]);
            e.namespace = ns.into();
            e.name = name.into();
            e
        };
        let list = ExportList {
            exports: vec![
                mk("shop", "web", "10.244.1.7"),             // fine
                mk("kube-system", "kube-dns", "10.244.1.8"), // reserved
                mk("other", "web", "10.244.1.9"),            // not offloaded by b
                mk("shop", "evil", "10.96.0.10"),            // outside b's routed ranges
                mk("shop", "bad", "not-an-ip"),
                mk("Shop", "x", "10.244.1.1"),
            ],
        };
        let refused = x.receive("b", list, &remaps, &|ns| ns == "shop" || ns == "Shop");
        assert_eq!(refused.len(), 5, "{refused:?}");
        assert!(
            refused
                .iter()
                .any(|r| r.contains("kube-system") && r.contains("fix:"))
        );
        assert!(refused.iter().any(|r| r.contains("10.96.0.10 is outside")));
        let got = x.remote.lock().unwrap()["b"].0.clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "web");
        // the sender's timestamp is not believed: a backdated export is at most 30 s older than its first
        // sighting here
        assert_ne!(got[0].created, "1999-01-01T00:00:00Z");
        let t = chrono::DateTime::parse_from_rfc3339(&got[0].created).unwrap();
        assert!(chrono::Utc::now().signed_duration_since(t) <= chrono::TimeDelta::seconds(31));
        // and the first sighting is kept across rounds
        let first = got[0].created.clone();
        let again = ExportList {
            exports: vec![mk("shop", "web", "10.244.1.7")],
        };
        x.receive("b", again, &remaps, &|_| true);
        assert_eq!(x.remote.lock().unwrap()["b"].0[0].created, first);
    }

    #[test]
    fn an_export_reads_ports_type_and_ready_endpoints() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": "echo", "namespace": "default" },
            "spec": { "clusterIP": "None", "ports": [{ "name": "http", "port": 8080 }] }
        }))
        .unwrap();
        let slices = vec![json!({ "endpoints": [
            { "addresses": ["10.244.0.5"], "conditions": { "ready": true }, "hostname": "echo-0" },
            { "addresses": ["10.244.0.6"], "conditions": { "ready": false } },
        ]})];
        let e = export_of("b", "t", &svc, &slices);
        assert_eq!(e.type_, ServiceImportType::Headless);
        assert_eq!(e.ports, [port("http", 8080)]);
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints[0].hostname.as_deref(), Some("echo-0"));
    }

    #[test]
    fn the_import_slice_carries_the_ports_the_exporters_endpoints_listen_on_not_the_service_port() {
        // Service port 80 → targetPort 8080: the exporting cluster's slice says 8080
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "clusterIP": "10.97.0.9", "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
        }))
        .unwrap();
        let slices = vec![json!({
            "endpoints": [{ "addresses": ["10.244.0.5"], "conditions": { "ready": true } }],
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
        })];
        let e = export_of("c2", "t", &svc, &slices);
        assert_eq!(e.ports, [port("http", 80)]);
        assert_eq!(e.endpoint_ports, [port("http", 8080)]);
        // the import of one export, and the slice of its cluster's endpoints
        let imported = |e: &ExportedService| {
            let imports = merge(std::slice::from_ref(e));
            let imp = imports[&("shop".to_string(), "web".to_string())].clone();
            let slice = import_slice(
                "discovery.k8s.io/v1",
                "shop",
                "web",
                "c2",
                &imp,
                &imp.endpoints["c2"],
                &json!({}),
            );
            (imp, slice)
        };
        let (imp, s) = imported(&e);
        assert_eq!(
            imp.ports,
            [port("http", 80)],
            "the clusterset port is the Service's"
        );
        assert_eq!(s["ports"][0]["port"], 8080, "{s}");
        // an exporter that sent no endpoint ports (older agents): the Service ports
        let mut old = e;
        old.endpoint_ports.clear();
        assert_eq!(imported(&old).1["ports"][0]["port"], 80);
        // a peer's endpoint port outside 1..=65535 is refused naming the field
        let mut bad = export_of("c2", "t", &svc, &slices);
        bad.endpoint_ports[0].port = 70000;
        let routed = ["10.244.0.0/16".parse().unwrap()];
        let err = check_export(&bad, "c2", &|_| true, &routed).unwrap_err();
        assert!(err.contains("ports"), "{err}");
    }

    #[test]
    fn import_slices_carry_the_mcs_labels_and_the_derived_service_for_clusterset_ips() {
        let mut imp = Import {
            type_: ServiceImportType::ClusterSetIP,
            ports: vec![port("http", 8080)],
            ..Default::default()
        };
        let eps = vec![ExportedEndpoint {
            addresses: vec!["10.0.0.5".into()],
            hostname: None,
        }];
        let s = import_slice(
            "discovery.k8s.io/v1",
            "default",
            "echo",
            "b",
            &imp,
            &eps,
            &json!({}),
        );
        assert_eq!(s["metadata"]["labels"][LABEL_SERVICE_NAME], "echo");
        assert_eq!(s["metadata"]["labels"][LABEL_SOURCE_CLUSTER], "b");
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "ferry-mcs-echo"
        );
        assert_eq!(s["addressType"], "IPv4");
        imp.type_ = ServiceImportType::Headless;
        let s = import_slice(
            "discovery.k8s.io/v1",
            "default",
            "echo",
            "b",
            &imp,
            &eps,
            &json!({}),
        );
        assert!(
            s["metadata"]["labels"]
                .get("kubernetes.io/service-name")
                .is_none()
        );
        assert!(slice_name(&"x".repeat(80), "b").len() <= 63);
    }
}
