//! Pod translation between a consumer and a provider, plain data in and out (no I/O).
//!
//! [`to_remote`] turns a consumer pod bound to a virtual node into the pod the provider runs (the
//! `ShadowPod` template): scheduling constraints that only mean something in the consumer are dropped,
//! the consumer's service-account token volume is not carried over, and origin labels are added. A pod that
//! would need the provider's host (host namespaces, hostPath, privileged containers, host ports) is refused
//! with one [`Refusal`] per offending field. [`to_local_status`] brings the provider pod's status back, with
//! its IPs translated into the consumer's view of the provider's (possibly remapped) pod CIDR.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Label on provider pods: the consumer cluster they belong to.
pub const ORIGIN_CLUSTER_LABEL: &str = "ferry.dev/origin-cluster";
/// Label on provider pods: the consumer pod's UID (adoption after restarts keys on it).
pub const ORIGIN_UID_LABEL: &str = "ferry.dev/origin-pod-uid";
/// Annotation kubectl writes that must not travel.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why a pod cannot run on a virtual node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `spec.hostNetwork`.
    #[error(
        "spec.hostNetwork is true: the pod would share the provider's host network; fix: drop hostNetwork or keep the pod on local nodes"
    )]
    HostNetwork,
    /// `spec.hostPID`.
    #[error(
        "spec.hostPID is true: the pod would see the provider's host processes; fix: drop hostPID or keep the pod on local nodes"
    )]
    HostPid,
    /// `spec.hostIPC`.
    #[error(
        "spec.hostIPC is true: the pod would share the provider's host IPC; fix: drop hostIPC or keep the pod on local nodes"
    )]
    HostIpc,
    /// A hostPath volume.
    #[error(
        "volume {0:?} is a hostPath: it would mount the provider's host filesystem; fix: use a ConfigMap, Secret, emptyDir or PVC"
    )]
    HostPath(String),
    /// A privileged container.
    #[error(
        "container {0:?} is privileged; fix: drop securityContext.privileged or keep the pod on local nodes"
    )]
    Privileged(String),
    /// A host port.
    #[error("container {container:?} asks for hostPort {port}; fix: use a Service instead of a host port")]
    HostPort {
        /// Container.
        container: String,
        /// Port.
        port: i32,
    },
}

/// Where the pod goes on the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The consumer's cluster ID.
    pub consumer_cluster_id: String,
    /// The namespace on the provider (from the namespace mapping).
    pub namespace: String,
}

/// Whether `remote` is `local`'s twin on the provider: it carries `local`'s UID as its origin (a pod of the
/// same name that is not, is not).
pub fn is_twin_of(remote: &Pod, local: &Pod) -> bool {
    let uid = local.metadata.uid.as_deref().unwrap_or_default();
    !uid.is_empty()
        && remote
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ORIGIN_UID_LABEL))
            .is_some_and(|v| v == uid)
}

/// Every reason a pod cannot be offloaded (empty: it can).
pub fn refusals(spec: &PodSpec) -> Vec<Refusal> {
    let mut out = Vec::new();
    if spec.host_network == Some(true) {
        out.push(Refusal::HostNetwork);
    }
    if spec.host_pid == Some(true) {
        out.push(Refusal::HostPid);
    }
    if spec.host_ipc == Some(true) {
        out.push(Refusal::HostIpc);
    }
    for v in spec.volumes.iter().flatten() {
        if v.host_path.is_some() {
            out.push(Refusal::HostPath(v.name.clone()));
        }
    }
    let all = spec.init_containers.iter().flatten().chain(&spec.containers);
    for c in all {
        if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
            out.push(Refusal::Privileged(c.name.clone()));
        }
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|hp| *hp != 0) {
                out.push(Refusal::HostPort {
                    container: c.name.clone(),
                    port: hp,
                });
            }
        }
    }
    out
}

/// Where Kubernetes mounts a pod's service-account token.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The consumer's token volumes: the projected `kube-api-access-*` (1.21+) or the `<sa>-token-*` Secret
/// (1.20 and older), found by where they are mounted.
fn token_volumes(spec: &PodSpec) -> std::collections::BTreeSet<String> {
    let mut out: std::collections::BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name.starts_with("kube-api-access-"))
        .map(|v| v.name.clone())
        .collect();
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        for m in c.volume_mounts.iter().flatten() {
            if m.mount_path.trim_end_matches('/') == TOKEN_PATH {
                out.insert(m.name.clone());
            }
        }
    }
    out
}

/// The provider-side pod for a consumer pod, or every reason it cannot be offloaded.
pub fn to_remote(pod: &Pod, target: &RemoteTarget) -> Result<Pod, Vec<Refusal>> {
    let spec = pod.spec.clone().unwrap_or_default();
    let refused = refusals(&spec);
    if !refused.is_empty() {
        return Err(refused);
    }
    let mut labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert(ORIGIN_CLUSTER_LABEL.into(), target.consumer_cluster_id.clone());
    labels.insert(
        ORIGIN_UID_LABEL.into(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    let mut s = spec;
    // scheduling in the consumer chose the virtual node; the provider's scheduler places the pod itself
    s.node_name = None;
    s.node_selector = None;
    s.affinity = None;
    s.tolerations = None;
    s.scheduler_name = None;
    s.priority_class_name = None;
    s.priority = None;
    s.preemption_policy = None;
    s.topology_spread_constraints = None;
    // the consumer's service-account token means nothing to the provider's apiserver: it is rewritten, i.e.
    // dropped here so the provider mounts a token of the offload namespace's `default` ServiceAccount
    // (unless the pod opted out of automounting)
    let tokens = token_volumes(&s);
    s.service_account_name = None;
    s.service_account = None;
    if let Some(vols) = s.volumes.as_mut() {
        vols.retain(|v| !tokens.contains(&v.name));
    }
    for c in s
        .init_containers
        .iter_mut()
        .flatten()
        .chain(s.containers.iter_mut())
    {
        if let Some(m) = c.volume_mounts.as_mut() {
            m.retain(|m| !tokens.contains(&m.name));
        }
    }
    Ok(Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: Some(target.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(s),
        status: None,
    })
}

/// The consumer-side status for a provider pod's status; `translate` maps a provider pod IP to how the
/// consumer reaches it (identity when the CIDR is not remapped). `host_ip` is the virtual node's address.
pub fn to_local_status(
    remote: &PodStatus,
    host_ip: Option<&str>,
    translate: impl Fn(IpAddr) -> IpAddr,
) -> PodStatus {
    let tr = |ip: &str| {
        ip.parse::<IpAddr>()
            .map(|a| translate(a).to_string())
            .unwrap_or_else(|_| ip.to_string())
    };
    PodStatus {
        phase: remote.phase.clone(),
        conditions: remote.conditions.clone(),
        message: remote.message.clone(),
        reason: remote.reason.clone(),
        start_time: remote.start_time.clone(),
        container_statuses: remote.container_statuses.clone(),
        init_container_statuses: remote.init_container_statuses.clone(),
        qos_class: remote.qos_class.clone(),
        pod_ip: remote.pod_ip.as_deref().map(tr),
        pod_ips: remote
            .pod_ips
            .as_ref()
            .map(|ips| ips.iter().map(|p| PodIP { ip: tr(&p.ip) }).collect()),
        host_ip: host_ip.map(str::to_string),
        ..Default::default()
    }
}

/// Label of EndpointSlices ferry writes on the provider (so the provider's EndpointSlice controller leaves
/// them alone).
pub const MANAGED_BY: (&str, &str) = ("endpointslice.kubernetes.io/managed-by", "ferry.dev");

/// The provider-side copy of a consumer Service: same ports and selector (which then picks the offloaded
/// pods on the provider); addresses, node ports and load balancers are the provider's own to choose.
pub fn service_to_remote(
    svc: &k8s_openapi::api::core::v1::Service,
    namespace: &str,
    consumer: &str,
) -> serde_json::Value {
    let spec = svc.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports: Vec<serde_json::Value> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            serde_json::json!({"name": p.name, "port": p.port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                "targetPort": p.target_port})
        })
        .collect();
    let mut out = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.metadata.name, "namespace": namespace, "labels": {ORIGIN_CLUSTER_LABEL: consumer}},
        "spec": {"type": "ClusterIP", "ports": ports, "selector": spec.selector.unwrap_or_default()},
    });
    if headless {
        out["spec"]["clusterIP"] = "None".into();
    }
    out
}

/// The provider-side copy of a consumer EndpointSlice (any `discovery.k8s.io` version, as JSON): only the
/// endpoints of pods that run in the consumer (pods in `offloaded` are on the provider already, where the
/// copied Service selects them), addresses translated to how the provider reaches the consumer, node and
/// zone fields dropped. `None` when no endpoint is left.
pub fn endpoint_slice_to_remote(
    slice: &serde_json::Value,
    offloaded: &std::collections::HashSet<String>,
    translate: impl Fn(IpAddr) -> IpAddr,
    namespace: &str,
    consumer: &str,
) -> Option<serde_json::Value> {
    let service = slice
        .pointer("/metadata/labels/kubernetes.io~1service-name")?
        .as_str()?;
    let endpoints: Vec<serde_json::Value> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            let pod = e.pointer("/targetRef/name").and_then(|n| n.as_str());
            !pod.is_some_and(|p| offloaded.contains(p))
        })
        .map(|e| {
            let addresses: Vec<String> = e["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map(|ip| translate(ip).to_string())
                        .unwrap_or_else(|_| a.to_string())
                })
                .collect();
            let mut out = serde_json::json!({"addresses": addresses, "conditions": e["conditions"]});
            if let Some(h) = e.get("hostname") {
                out["hostname"] = h.clone();
            }
            out
        })
        .collect();
    if endpoints.is_empty() {
        return None;
    }
    let name = slice.pointer("/metadata/name")?.as_str()?;
    Some(serde_json::json!({
        "apiVersion": slice["apiVersion"], "kind": "EndpointSlice",
        "metadata": {"name": format!("ferry-{name}"), "namespace": namespace, "labels": {
            "kubernetes.io/service-name": service, MANAGED_BY.0: MANAGED_BY.1, ORIGIN_CLUSTER_LABEL: consumer}},
        "addressType": slice["addressType"],
        "ports": slice["ports"],
        "endpoints": endpoints,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_token_volume_of_older_clusters_is_dropped_by_where_it_is_mounted() {
        let p = pod(json!({
            "volumes": [{ "name": "default-token-abcde", "secret": { "secretName": "default-token-abcde" } },
                        { "name": "data", "emptyDir": {} }],
            "containers": [{ "name": "c", "image": "x", "volumeMounts": [
                { "name": "default-token-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount/" },
                { "name": "data", "mountPath": "/data" }] }]
        }));
        let s = to_remote(&p, &target()).unwrap().spec.unwrap();
        let vols: Vec<String> = s.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(vols, ["data"]);
        assert_eq!(s.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_service_copy_keeps_ports_and_selector_and_lets_the_provider_pick_addresses() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}}))
        .unwrap();
        let r = service_to_remote(&svc, "demo-c1", "c1");
        assert_eq!(r["metadata"]["namespace"], "demo-c1");
        assert_eq!(r["spec"]["type"], "ClusterIP");
        assert!(r["spec"].get("clusterIP").is_none());
        assert_eq!(r["spec"]["selector"]["app"], "web");
        assert_eq!(r["spec"]["ports"][0]["targetPort"], 8080);
        assert!(r["spec"]["ports"][0].get("nodePort").is_none());
        let mut headless = svc.clone();
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert_eq!(
            service_to_remote(&headless, "x", "c1")["spec"]["clusterIP"],
            "None"
        );
    }

    #[test]
    fn endpoint_slices_carry_only_consumer_pods_with_translated_addresses() {
        let slice = json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "local-1"},
             "topology": {"kubernetes.io/hostname": "lab-node-1"}},
            {"addresses": ["10.0.0.7"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "offloaded-1"}},
        ]});
        let offloaded: std::collections::HashSet<String> = ["offloaded-1".to_string()].into();
        let remap = |ip: IpAddr| match ip {
            IpAddr::V4(v) => IpAddr::V4(std::net::Ipv4Addr::new(10, 1, v.octets()[2], v.octets()[3])),
            v => v,
        };
        let r = endpoint_slice_to_remote(&slice, &offloaded, remap, "demo-c1", "c1").unwrap();
        assert_eq!(r["metadata"]["name"], "ferry-web-abc");
        assert_eq!(r["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(r["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        let eps = r["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0]["addresses"][0], "10.1.0.5");
        assert!(
            eps[0].get("topology").is_none(),
            "consumer node names mean nothing on the provider"
        );
        assert_eq!(r["apiVersion"], "discovery.k8s.io/v1beta1");
        let only_offloaded: std::collections::HashSet<String> =
            ["local-1".to_string(), "offloaded-1".to_string()].into();
        assert!(endpoint_slice_to_remote(&slice, &only_offloaded, remap, "x", "c1").is_none());
    }
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut base = json!({
            "metadata": { "name": "web-1", "namespace": "shop", "uid": "u-1", "labels": { "app": "web" },
                          "annotations": { LAST_APPLIED: "{}", "team": "a" } },
            "spec": {
                "nodeName": "ferry-provider", "nodeSelector": { "type": "virtual-node" }, "schedulerName": "default-scheduler",
                "priorityClassName": "high", "serviceAccountName": "web",
                "tolerations": [{ "key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists" }],
                "affinity": { "nodeAffinity": {} },
                "volumes": [{ "name": "kube-api-access-x1", "projected": { "sources": [] } }, { "name": "cfg", "configMap": { "name": "c" } }],
                "containers": [{ "name": "app", "image": "nginx", "ports": [{ "containerPort": 80 }],
                                 "volumeMounts": [{ "name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }, { "name": "cfg", "mountPath": "/etc/cfg" }] }],
            }
        });
        if let (Some(b), Some(e)) = (base["spec"].as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }
    fn target() -> RemoteTarget {
        RemoteTarget {
            consumer_cluster_id: "consumer-c1".into(),
            namespace: "shop-consumer-c1".into(),
        }
    }

    #[test]
    fn scheduling_constraints_and_the_token_volume_stay_behind_origin_labels_go_along() {
        let local = pod(json!({}));
        let r = to_remote(&local, &target()).unwrap();
        assert_eq!(r.metadata.namespace.as_deref(), Some("shop-consumer-c1"));
        // the twin is found by the origin UID (the kubelet API's logs), a namesake is not one
        assert!(is_twin_of(&r, &local));
        let mut other = local.clone();
        other.metadata.uid = Some("u-2".into());
        assert!(!is_twin_of(&r, &other));
        other.metadata.uid = None;
        assert!(!is_twin_of(&r, &other));
        let labels = r.metadata.labels.unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[ORIGIN_CLUSTER_LABEL], "consumer-c1");
        assert_eq!(labels[ORIGIN_UID_LABEL], "u-1");
        let ann = r.metadata.annotations.unwrap();
        assert!(!ann.contains_key(LAST_APPLIED));
        assert_eq!(ann["team"], "a");
        assert!(r.metadata.uid.is_none() && r.metadata.resource_version.is_none());
        let s = r.spec.unwrap();
        assert!(
            s.node_name.is_none()
                && s.node_selector.is_none()
                && s.affinity.is_none()
                && s.tolerations.is_none()
        );
        assert!(
            s.scheduler_name.is_none() && s.priority_class_name.is_none() && s.service_account_name.is_none()
        );
        assert_eq!(
            s.automount_service_account_token, None,
            "the provider mounts its own token"
        );
        let vols: Vec<String> = s.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(vols, ["cfg"]);
        let mounts: Vec<String> = s.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(mounts, ["cfg"]);
        assert_eq!(s.containers[0].image.as_deref(), Some("nginx"));
    }

    #[test]
    fn host_access_is_refused_with_every_reason_and_its_fix() {
        let bad = pod(json!({
            "hostNetwork": true, "hostPID": true, "hostIPC": true,
            "volumes": [{ "name": "root", "hostPath": { "path": "/" } }],
            "initContainers": [{ "name": "setup", "securityContext": { "privileged": true } }],
            "containers": [{ "name": "app", "ports": [{ "containerPort": 80, "hostPort": 8080 }] }],
        }));
        let e = to_remote(&bad, &target()).unwrap_err();
        assert_eq!(
            e,
            vec![
                Refusal::HostNetwork,
                Refusal::HostPid,
                Refusal::HostIpc,
                Refusal::HostPath("root".into()),
                Refusal::Privileged("setup".into()),
                Refusal::HostPort {
                    container: "app".into(),
                    port: 8080
                },
            ]
        );
        for r in &e {
            assert!(r.to_string().contains("fix:"), "{r}");
        }
        assert!(
            Refusal::HostPath("root".into())
                .to_string()
                .starts_with("volume \"root\" is a hostPath")
        );
        // a hostPort of 0 is no host port
        let ok = pod(
            json!({ "containers": [{ "name": "app", "ports": [{ "containerPort": 80, "hostPort": 0 }] }] }),
        );
        assert!(to_remote(&ok, &target()).is_ok());
    }

    #[test]
    fn status_comes_back_with_ips_in_the_consumers_view() {
        let remote: PodStatus = serde_json::from_value(json!({
            "phase": "Running", "podIP": "10.244.1.7", "podIPs": [{ "ip": "10.244.1.7" }, { "ip": "fd00::7" }],
            "hostIP": "192.168.5.5", "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "app", "ready": true, "restartCount": 2, "image": "nginx", "imageID": "" }],
        }))
        .unwrap();
        let remap = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::from([10, 0, o[2], o[3]])
            }
            v6 => v6,
        };
        let local = to_local_status(&remote, Some("10.96.0.10"), remap);
        assert_eq!(local.phase.as_deref(), Some("Running"));
        assert_eq!(local.pod_ip.as_deref(), Some("10.0.1.7"));
        let ips: Vec<String> = local.pod_ips.unwrap().into_iter().map(|p| p.ip).collect();
        assert_eq!(ips, ["10.0.1.7", "fd00::7"]);
        assert_eq!(
            local.host_ip.as_deref(),
            Some("10.96.0.10"),
            "the provider's host address does not leak"
        );
        assert_eq!(local.container_statuses.unwrap()[0].restart_count, 2);
        assert_eq!(local.conditions.unwrap()[0].type_, "Ready");
        // a status without IPs stays without IPs
        let pending = to_local_status(
            &PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            },
            None,
            |i| i,
        );
        assert!(pending.pod_ip.is_none() && pending.pod_ips.is_none());
    }
}
