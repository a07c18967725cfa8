//! Workloads the lab's demo, benches and tests start and look at: echo Deployments, (hollow) bench
//! Deployments, waiting for them, and pods as the demo prints them.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::kubelet::{HOLLOW_ANNOTATION, POOL_LABEL};
use crate::lab::Lab;
use crate::layout::pod_netns;

/// A pod as the demo prints it.
#[derive(Clone, Debug)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// Pod IP.
    pub ip: String,
    /// Phase.
    pub phase: String,
    /// Network namespace on this machine.
    pub netns: String,
}

/// Creates (or scales) Deployment `name` in `ns` with `replicas` echo pods on the default lab nodes and
/// waits until all are ready.
pub async fn ensure_echo_deployment(client: &Client, ns: &str, name: &str, replicas: u32) -> Result<f64> {
    let nss: Api<Namespace> = Api::all(client.clone());
    match nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } }))?,
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    for _ in 0..300 {
        if sas.get_opt("default").await?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match deps
        .create(
            &PostParams::default(),
            &deployment(name, replicas, "default", false, Some(8080)),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            deps.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    wait_ready(&deps, name, replicas, Duration::from_secs(120)).await
}

/// Running pods of `app` in `ns`, with their namespaces on this machine.
pub async fn pods_of(lab: &Lab, cluster: &str, ns: &str, app: &str) -> Result<Vec<PodView>> {
    let c = lab.cluster(cluster)?;
    let api: Api<Pod> = Api::namespaced(lab.client(c).await?, ns);
    let list = api
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    let mut out: Vec<PodView> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| PodView {
            name: p.name_any(),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            phase: p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            netns: pod_netns(&lab.layout.name, &c.id, &p.uid().unwrap_or_default()),
        })
        .collect();
    out.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    Ok(out)
}

/// A Deployment of `replicas` (hollow) pods pinned to nodes of `pool` (empty: anywhere).
pub fn deployment(name: &str, replicas: u32, pool: &str, hollow: bool, echo_port: Option<u16>) -> Deployment {
    let mut annotations = serde_json::Map::new();
    if hollow {
        annotations.insert(HOLLOW_ANNOTATION.into(), json!("true"));
    }
    if let Some(p) = echo_port {
        annotations.insert(crate::kubelet::ECHO_ANNOTATION.into(), json!(p.to_string()));
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name }, "annotations": annotations },
                "spec": {
                    "nodeSelector": if pool.is_empty() { json!({}) } else { json!({ POOL_LABEL: pool }) },
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{ "name": "app", "image": "ferry-lab/echo:none (lab pods run no containers)" }],
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

/// Waits until a Deployment has `replicas` ready replicas, printing progress; returns seconds waited.
pub async fn wait_ready(api: &Api<Deployment>, name: &str, replicas: u32, timeout: Duration) -> Result<f64> {
    Ok(wait_ready_traced(api, name, replicas, timeout).await?.0)
}

/// [`wait_ready`], also returning the trace `(seconds, ready)` of every change the polls saw (from
/// `(0, 0)` to the moment all are Ready), for a plot.
pub async fn wait_ready_traced(
    api: &Api<Deployment>,
    name: &str,
    replicas: u32,
    timeout: Duration,
) -> Result<(f64, Vec<(f64, f64)>)> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut trace = vec![(0.0, 0.0)];
    loop {
        let d = api.get(name).await?;
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) as u32;
        let t = start.elapsed().as_secs_f64();
        if trace.last().is_some_and(|(_, r)| *r != f64::from(ready)) {
            trace.push((t, f64::from(ready)));
        }
        if ready >= replicas {
            return Ok((t, trace));
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!("[bench] {name}: {ready}/{replicas} ready after {t:.1}s");
            last_print = Instant::now();
        }
        if start.elapsed() > timeout {
            bail!(
                "{name}: only {ready}/{replicas} ready after {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Port the busybox web server listens on.
pub const WEB_PORT: u16 = 8080;

/// A Deployment of `replicas` HTTP servers of the lab's busybox image on real nodes (spread one per node),
/// each serving its own pod name at `/` and logging every request (`httpd -vv`), and a ClusterIP Service
/// `name` on port 80 in front of them. Nothing is pulled: the image is in every real node's containerd.
pub fn busybox_web(name: &str, replicas: u32) -> (Deployment, k8s_openapi::api::core::v1::Service) {
    let labels = json!({ "app": name });
    let deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "nodeSelector": { POOL_LABEL: crate::node::REAL_POOL },
                    "tolerations": [{ "key": crate::node::REAL_NODE_TAINT, "operator": "Exists" }],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": { "matchLabels": labels }
                    }],
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "httpd",
                        "image": crate::image::WORKLOAD_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", format!(
                            "mkdir -p /srv && hostname > /srv/index.html && exec httpd -f -vv -p {WEB_PORT} -h /srv")],
                        "ports": [{ "containerPort": WEB_PORT, "name": "http", "protocol": "TCP" }],
                        "readinessProbe": { "tcpSocket": { "port": WEB_PORT }, "periodSeconds": 1 },
                    }],
                },
            },
        },
    }))
    .expect("a valid Deployment");
    let service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": { "selector": labels, "ports": [{ "name": "http", "protocol": "TCP", "port": 80, "targetPort": WEB_PORT }] },
    }))
    .expect("a valid Service");
    (deployment, service)
}

/// `kubectl` against cluster `c` of `lab` (the real client, as an operator runs it): (success, stdout,
/// stderr).
pub fn kubectl(lab: &Lab, c: &crate::layout::ClusterLayout, args: &[&str]) -> (bool, String, String) {
    match std::process::Command::new("kubectl")
        .env("KUBECONFIG", lab.paths.kubeconfig(c))
        .args(args)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("running kubectl: {e}")),
    }
}
