//! What `ferryctl install` finds out about the cluster when the values do not say it: the pod CIDRs (the
//! kube-proxy configuration's `clusterCIDR`, as kubeadm writes it, else the smallest prefix per family that
//! covers every Node's `spec.podCIDRs`) and the service CIDRs (the `ServiceCIDR` objects of clusters that
//! have them, else the range the apiserver names when refusing a Service that asks for an address outside
//! it), and the gateway endpoint (the `ExternalIP` of a node labelled to run the gateway).
//! The parsing is pure and unit-tested; the async functions do the reads.

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

/// A discovered list of CIDRs and where it came from (printed, so the operator can check it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The CIDRs.
    pub cidrs: Vec<IpNet>,
    /// Where they were read.
    pub source: String,
}

/// `clusterCIDR` of a kube-proxy configuration (`KubeProxyConfiguration` YAML, comma-separated for dual
/// stack); `None` when absent, empty or not CIDRs.
pub fn kube_proxy_cluster_cidrs(config: &str) -> Option<Vec<IpNet>> {
    let v: serde_yaml::Value = serde_yaml::from_str(config).ok()?;
    let cidrs: Vec<IpNet> = v
        .get("clusterCIDR")?
        .as_str()?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (!cidrs.is_empty()).then_some(cidrs)
}

/// The smallest prefix per address family that covers every node's pod CIDR (IPv4 first).
pub fn covering_prefixes(node_cidrs: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let mut family = node_cidrs.iter().filter(|n| n.addr().is_ipv6() == v6);
        let Some(first) = family.next() else { continue };
        let mut cover = first.trunc();
        for n in family {
            while !cover.contains(n) {
                let Some(wider) = cover.supernet() else { break };
                cover = wider;
            }
        }
        out.push(cover);
    }
    out
}

/// The range in an apiserver's refusal of a Service address outside it ("… The range of valid IPs is
/// 10.96.0.0/12").
pub fn service_range_from_refusal(message: &str) -> Option<IpNet> {
    let at = message.find("range of valid IPs is ")? + "range of valid IPs is ".len();
    message[at..]
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .next()?
        .trim_end_matches('.')
        .parse()
        .ok()
}

/// Reads the pod CIDRs from the cluster (see the module docs).
pub async fn pod_cidrs(client: &Client) -> Option<Found> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    if let Ok(Some(cm)) = cms.get_opt("kube-proxy").await
        && let Some(cidrs) = cm
            .data
            .as_ref()
            .and_then(|d| d.get("config.conf"))
            .and_then(|c| kube_proxy_cluster_cidrs(c))
    {
        return Some(Found {
            cidrs,
            source: "clusterCIDR of kube-system/kube-proxy".into(),
        });
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .ok()?;
    let per_node: Vec<IpNet> = nodes
        .items
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| {
            s.pod_cidrs
                .clone()
                .unwrap_or_else(|| s.pod_cidr.clone().into_iter().collect())
        })
        .filter_map(|c| c.parse().ok())
        .collect();
    let cidrs = covering_prefixes(&per_node);
    (!cidrs.is_empty()).then(|| Found {
        cidrs,
        source: format!("the prefix covering {} nodes' spec.podCIDRs", nodes.items.len()),
    })
}

/// Reads the service CIDRs from the cluster (see the module docs). The probe Service asks for 0.0.0.1,
/// which no service range holds, so the apiserver refuses it and nothing is created.
pub async fn service_cidrs(client: &Client) -> Option<Found> {
    if let Ok(list) = Api::<k8s_openapi::api::networking::v1::ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        let cidrs: Vec<IpNet> = list
            .items
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cidrs.clone())
            .flatten()
            .filter_map(|c| c.parse().ok())
            .collect();
        if !cidrs.is_empty() {
            return Some(Found {
                cidrs,
                source: "the cluster's ServiceCIDRs".into(),
            });
        }
    }
    let probe: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ferry-discover-service-cidr"},
        "spec": {"clusterIP": "0.0.0.1", "ports": [{"port": 1, "protocol": "TCP"}]}
    }))
    .expect("a Service");
    // not a dry run: a dry run skips the allocation (1.20), so nothing would be refused
    let services = Api::<Service>::namespaced(client.clone(), "default");
    match services.create(&PostParams::default(), &probe).await {
        Err(kube::Error::Api(e)) => service_range_from_refusal(&e.message).map(|n| Found {
            cidrs: vec![n],
            source: "the apiserver's service IP range".into(),
        }),
        Ok(_) => {
            // a range that holds 0.0.0.1 is no range to learn from; leave nothing behind
            let _ = services
                .delete("ferry-discover-service-cidr", &Default::default())
                .await;
            None
        }
        Err(_) => None,
    }
}

/// The gateway endpoint peers can dial, from `nodes` (those labelled to run the gateway): the first by name
/// with an `ExternalIP`, at `port`; otherwise why there is none. An `InternalIP` is never taken: a peer in
/// another network rarely reaches it, and a wrong endpoint is worse than none (with none, this cluster dials
/// its peers' gateways; only a provider whose consumers cannot be dialled needs one).
pub fn gateway_endpoint_of(nodes: &[Node], port: u16) -> Result<(String, String), String> {
    let mut named: Vec<&Node> = nodes.iter().collect();
    named.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if named.is_empty() {
        return Err("no node is labelled to run the gateway".into());
    }
    for n in &named {
        let external = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "ExternalIP")
            .find_map(|a| a.address.parse::<std::net::IpAddr>().ok());
        if let Some(ip) = external {
            let name = n.metadata.name.as_deref().unwrap_or("?");
            return Ok((
                std::net::SocketAddr::new(ip, port).to_string(),
                format!("the ExternalIP of gateway node {name}"),
            ));
        }
    }
    Err(format!(
        "no gateway node ({}) has an ExternalIP",
        named
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Reads the gateway endpoint from the nodes labelled `label=true` (see [`gateway_endpoint_of`]).
pub async fn gateway_endpoint(client: &Client, label: &str, port: u16) -> Result<(String, String), String> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{label}=true")))
        .await
        .map_err(|e| format!("listing the nodes labelled {label}=true: {e}"))?;
    gateway_endpoint_of(&nodes.items, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn kubeadms_kube_proxy_config_names_the_cluster_cidr() {
        let conf = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nmode: iptables\n";
        assert_eq!(
            kube_proxy_cluster_cidrs(conf),
            Some(vec![n("10.244.0.0/16"), n("fd00:10:244::/56")])
        );
        assert_eq!(kube_proxy_cluster_cidrs("clusterCIDR: \"\"\n"), None);
        assert_eq!(kube_proxy_cluster_cidrs("mode: ipvs\n"), None);
        assert_eq!(kube_proxy_cluster_cidrs("clusterCIDR: nonsense\n"), None);
    }

    #[test]
    fn the_nodes_pod_cidrs_give_the_smallest_covering_prefix_per_family() {
        let nodes = [
            n("10.244.1.0/24"),
            n("10.244.200.0/24"),
            n("fd00:10:244:1::/64"),
            n("10.244.0.0/24"),
        ];
        assert_eq!(
            covering_prefixes(&nodes),
            [n("10.244.0.0/16"), n("fd00:10:244:1::/64")]
        );
        assert_eq!(
            covering_prefixes(&[n("10.244.2.0/24"), n("10.244.3.0/24")]),
            [n("10.244.2.0/23")]
        );
        assert!(covering_prefixes(&[]).is_empty());
    }

    #[test]
    fn the_service_range_is_read_from_the_apiservers_refusal() {
        let m = "Service \"x\" is invalid: spec.clusterIPs: Invalid value: []string{\"0.0.0.1\"}: failed to allocated ip:0.0.0.1 with error:provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/16";
        assert_eq!(service_range_from_refusal(m), Some(n("10.96.0.0/16")));
        assert_eq!(
            service_range_from_refusal("The range of valid IPs is 10.97.0.0/12."),
            Some(n("10.97.0.0/12"))
        );
        assert_eq!(service_range_from_refusal("forbidden"), None);
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": addresses.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    #[test]
    fn the_gateway_endpoint_is_the_first_gateway_nodes_external_ip_never_an_internal_one() {
        let nodes = [
            node(
                "gw-b",
                &[("InternalIP", "10.0.0.2"), ("ExternalIP", "203.0.113.7")],
            ),
            node("gw-a", &[("InternalIP", "10.0.0.1"), ("Hostname", "gw-a")]),
            node("gw-c", &[("ExternalIP", "203.0.113.9")]),
        ];
        assert_eq!(
            gateway_endpoint_of(&nodes, 51820),
            Ok((
                "203.0.113.7:51820".into(),
                "the ExternalIP of gateway node gw-b".into()
            ))
        );
        let v6 = [node("gw", &[("ExternalIP", "2001:db8::7")])];
        assert_eq!(gateway_endpoint_of(&v6, 51820).unwrap().0, "[2001:db8::7]:51820");
        let internal_only = [node("gw-a", &[("InternalIP", "10.0.0.1")]), node("gw-b", &[])];
        assert_eq!(
            gateway_endpoint_of(&internal_only, 51820),
            Err("no gateway node (gw-a, gw-b) has an ExternalIP".into())
        );
        assert_eq!(
            gateway_endpoint_of(&[], 51820),
            Err("no node is labelled to run the gateway".into())
        );
        let garbage = [node("gw", &[("ExternalIP", "not-an-ip")])];
        assert!(gateway_endpoint_of(&garbage, 51820).is_err());
    }
}
