//! What `ferryctl install` finds out about the cluster when the values do not say it: the pod CIDRs (the
//! kube-proxy configuration's `clusterCIDR`, as kubeadm writes it, else the smallest prefix per family that
//! covers every Node's `spec.podCIDRs`) and the service CIDRs (the `ServiceCIDR` objects of clusters that
//! have them, else the range the apiserver names when refusing a Service that asks for an address outside
//! it).
//! The parsing is pure and unit-tested; [`discover`] does the reads.

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
}
