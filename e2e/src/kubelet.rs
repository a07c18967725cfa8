//! Lab nodes: a kubelet stand-in with real networking (like kubemark/kwok, but each pod gets a network
//! namespace and a real IP). No container runtime exists here, so **pods run no containers**: a pod that
//! asks for it (annotation [`ECHO_ANNOTATION`]) gets ferry-lab's built-in TCP/HTTP echo server inside its
//! namespace; a *hollow* pod ([`HOLLOW_ANNOTATION`], or every pod on a hollow node) gets an IP and a status
//! and no namespace, so 10,000 pods fit on this machine.
//!
//! Start reading at [`step`], the pure pod lifecycle; [`LabKubelet::run`] feeds it from a pod watcher and
//! carries out its [`Effect`]s.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::layout::{NodeCapacity, SubnetPool, pod_netns, pod_veth};
use crate::net;

/// Pod annotation: run the built-in echo server on this TCP port inside the pod's namespace.
pub const ECHO_ANNOTATION: &str = "lab.ferry.dev/echo-port";
/// Pod annotation `"true"`: give the pod an IP and a Running status but no network namespace.
pub const HOLLOW_ANNOTATION: &str = "lab.ferry.dev/hollow";
/// Node label naming the pool a lab node belongs to (`default`, `bench`).
pub const POOL_LABEL: &str = "lab.ferry.dev/pool";

/// One lab node.
#[derive(Clone, Debug)]
pub struct LabNode {
    /// Node name.
    pub name: String,
    /// The node's pod subnet.
    pub subnet: IpNet,
}

/// What a lab kubelet serves.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Lab name (prefix of pod namespaces).
    pub lab: String,
    /// Cluster id (`c1`).
    pub cluster_id: String,
    /// The cluster's host namespace, where the pod bridge lives.
    pub host_netns: String,
    /// Nodes served.
    pub nodes: Vec<LabNode>,
    /// Node capacity.
    pub capacity: NodeCapacity,
    /// Node pool label value.
    pub pool: String,
    /// Every pod on these nodes is hollow.
    pub hollow: bool,
    /// Path of the ferry-lab binary (runs the echo server inside pods).
    pub exe: std::path::PathBuf,
}

/// What the kubelet knows of a pod it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// The pod's IP.
    pub ip: IpAddr,
    /// Its node.
    pub node: String,
    /// Its network namespace, `None` when hollow.
    pub netns: Option<String>,
}

/// A pod as the watcher shows it, reduced to what the lifecycle needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Bound to one of our nodes.
    Bound {
        /// `metadata.deletionTimestamp` is set.
        terminating: bool,
        /// `status.podIP`, if any (adopted after a kubelet restart).
        status_ip: Option<IpAddr>,
        /// Status already says Running and Ready with the IP we gave it. Not Ready again when someone else
        /// wrote it (the node lifecycle controller marks every pod of a node that missed its heartbeats not
        /// Ready): like a real kubelet's status manager, the node reports its pod as it is once more.
        reported_ready: bool,
    },
    /// Deleted from the API (or no longer ours).
    Gone,
}

/// What the kubelet must do for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Allocate an IP (prefer `ip_hint`), build the namespace unless hollow, start the echo server.
    Start {
        /// IP to keep when adopting a pod after a restart.
        ip_hint: Option<IpAddr>,
    },
    /// Patch status: Running, Ready, IPs.
    ReportRunning,
    /// Stop the pod's processes (SIGTERM, SIGKILL after the grace period), remove its namespace, free its IP.
    Stop,
    /// Delete the API object with grace 0 (what a kubelet does once the containers are gone).
    DeleteFinal,
}

/// The pod lifecycle: given what the kubelet knows and what the API shows, what to do next.
pub fn step(known: Option<&PodRecord>, observed: &Observed) -> Vec<Effect> {
    match (known, observed) {
        (
            _,
            Observed::Bound {
                terminating: true, ..
            },
        ) => vec![Effect::Stop, Effect::DeleteFinal],
        (None, Observed::Bound { status_ip, .. }) => {
            vec![Effect::Start { ip_hint: *status_ip }, Effect::ReportRunning]
        }
        (
            Some(rec),
            Observed::Bound {
                reported_ready,
                status_ip,
                ..
            },
        ) => {
            if *reported_ready && *status_ip == Some(rec.ip) {
                vec![]
            } else {
                vec![Effect::ReportRunning]
            }
        }
        (Some(_), Observed::Gone) => vec![Effect::Stop],
        (None, Observed::Gone) => vec![],
    }
}

fn observe(pod: &Pod, ours: &HashSet<String>) -> Observed {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if !ours.contains(&node) {
        return Observed::Gone;
    }
    let status = pod.status.as_ref();
    let status_ip = status
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|s| s.parse().ok());
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Observed::Bound {
        terminating: pod.metadata.deletion_timestamp.is_some(),
        status_ip,
        reported_ready: running && ready,
    }
}

fn wants_hollow(pod: &Pod, node_hollow: bool) -> bool {
    node_hollow || pod.annotations().get(HOLLOW_ANNOTATION).map(String::as_str) == Some("true")
}

fn echo_port(pod: &Pod) -> Option<u16> {
    pod.annotations()
        .get(ECHO_ANNOTATION)
        .and_then(|p| p.parse().ok())
}

/// The status a lab node reports for a running pod.
pub fn running_status(pod: &Pod, ip: IpAddr, host_ip: IpAddr, now: &str) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("ferry-lab://{}/{}", pod.uid().unwrap_or_default(), c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": { "running": { "startedAt": now } },
            })
        })
        .collect();
    let cond = |t: &str| json!({ "type": t, "status": "True", "lastTransitionTime": now });
    json!({
        "status": {
            "phase": "Running",
            "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "hostIP": host_ip.to_string(),
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
            "startTime": now,
            "containerStatuses": containers,
        }
    })
}

fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn now_micro() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

struct State {
    records: HashMap<String, PodRecord>,
    pools: HashMap<String, SubnetPool>,
}

/// A running lab kubelet.
pub struct LabKubelet {
    client: Client,
    cfg: KubeletConfig,
    ours: HashSet<String>,
    state: Mutex<State>,
    /// Latest observed pod per UID: the per-pod worker always acts on the newest view.
    latest: Mutex<HashMap<String, Option<Pod>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl LabKubelet {
    /// A kubelet for `cfg`'s nodes.
    pub fn new(client: Client, cfg: KubeletConfig) -> Arc<Self> {
        let ours = cfg.nodes.iter().map(|n| n.name.clone()).collect();
        let pools = cfg
            .nodes
            .iter()
            .map(|n| (n.name.clone(), SubnetPool::new(n.subnet)))
            .collect();
        Arc::new(Self {
            client,
            cfg,
            ours,
            state: Mutex::new(State {
                records: HashMap::new(),
                pools,
            }),
            latest: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn gateway(&self, node: &str) -> Option<IpAddr> {
        self.state
            .lock()
            .expect("state lock")
            .pools
            .get(node)
            .map(|p| p.gateway())
    }

    /// Registers (or refreshes) every node: object, status, gateway address on the pod bridge.
    pub async fn register_nodes(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in &self.cfg.nodes {
            let gw = self.gateway(&n.name).expect("pool per node");
            if !self.cfg.hollow {
                let (host, subnet) = (self.cfg.host_netns.clone(), n.subnet);
                tokio::task::spawn_blocking(move || net::ensure_node_gateway(&host, subnet, gw)).await??;
            }
            let obj: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": n.name, "labels": {
                    "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                    "type": "lab-node", POOL_LABEL: self.cfg.pool,
                }},
                "spec": { "podCIDR": n.subnet.to_string(), "podCIDRs": [n.subnet.to_string()] },
            }))?;
            match nodes.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("registering node {}", n.name)),
            }
            self.patch_node_status(&nodes, n, gw).await?;
        }
        Ok(())
    }

    async fn patch_node_status(&self, nodes: &Api<Node>, n: &LabNode, gw: IpAddr) -> Result<()> {
        let now = now_rfc3339();
        let c = &self.cfg.capacity;
        let res = json!({ "cpu": c.cpu, "memory": c.memory, "pods": c.pods.to_string(), "ephemeral-storage": "100Gi" });
        let cond = |t: &str, s: &str, reason: &str, msg: &str| {
            json!({ "type": t, "status": s, "reason": reason, "message": msg,
                    "lastHeartbeatTime": now, "lastTransitionTime": now })
        };
        let status = json!({ "status": {
            "capacity": res, "allocatable": res,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "ferry-lab node is posting ready status"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "lab node"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "lab node"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "lab node"),
            ],
            "addresses": [{ "type": "InternalIP", "address": gw.to_string() }, { "type": "Hostname", "address": n.name }],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "ferry-lab (pods run no containers)",
                "containerRuntimeVersion": "ferry-lab://0.1.0", "kubeletVersion": "v1.20.2-ferry-lab",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        nodes
            .patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("posting status of node {}", n.name))?;
        Ok(())
    }

    /// Renews every node's Lease in `kube-node-lease` (what the node lifecycle controller watches).
    pub async fn renew_leases(&self) -> Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in &self.cfg.nodes {
            let now = now_micro();
            let spec =
                json!({ "spec": { "holderIdentity": n.name, "leaseDurationSeconds": 40, "renewTime": now } });
            match leases
                .patch(&n.name, &PatchParams::default(), &Patch::Merge(&spec))
                .await
            {
                Ok(_) => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).context("renewing lease"),
            }
            let uid = nodes.get(&n.name).await?.uid().unwrap_or_default();
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": { "name": n.name, "namespace": "kube-node-lease",
                  "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": n.name, "uid": uid }] },
                "spec": { "holderIdentity": n.name, "leaseDurationSeconds": 40, "renewTime": now },
            }))?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).context("creating lease"),
            }
        }
        Ok(())
    }

    /// Runs until the watcher ends: registers nodes, renews leases every 10 s, posts node status every
    /// 60 s, and drives every pod bound to these nodes.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        self.register_nodes().await?;
        self.renew_leases().await?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                tick += 1;
                if let Err(e) = me.renew_leases().await {
                    warn!("lease renewal: {e:#}");
                }
                if tick.is_multiple_of(6) {
                    let nodes: Api<Node> = Api::all(me.client.clone());
                    for n in &me.cfg.nodes {
                        let gw = me.gateway(&n.name).expect("pool");
                        if let Err(e) = me.patch_node_status(&nodes, n, gw).await {
                            warn!("node status: {e:#}");
                        }
                    }
                }
            }
        });
        let pods: Api<Pod> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().fields("spec.nodeName!=");
        let mut stream = watcher(pods, cfg).default_backoff().boxed();
        let mut listed: HashSet<String> = HashSet::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => listed.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    if let Some(uid) = p.uid() {
                        listed.insert(uid);
                    }
                    self.clone().observe_pod(p, false);
                }
                Ok(watcher::Event::Apply(p)) => self.clone().observe_pod(p, false),
                Ok(watcher::Event::Delete(p)) => self.clone().observe_pod(p, true),
                Ok(watcher::Event::InitDone) => {
                    // pods we run that the fresh list no longer has were deleted while we were not watching
                    let known: Vec<String> = self
                        .state
                        .lock()
                        .expect("state")
                        .records
                        .keys()
                        .cloned()
                        .collect();
                    for uid in known.into_iter().filter(|u| !listed.contains(u)) {
                        self.latest.lock().expect("latest").insert(uid.clone(), None);
                        self.clone().spawn_worker(uid);
                    }
                }
                Err(e) => warn!("pod watch: {e}"),
            }
        }
        Ok(())
    }

    fn observe_pod(self: Arc<Self>, pod: Pod, deleted: bool) {
        let Some(uid) = pod.uid() else { return };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let known = self.state.lock().expect("state").records.contains_key(&uid);
        if !self.ours.contains(&node) && !known {
            return;
        }
        self.latest
            .lock()
            .expect("latest")
            .insert(uid.clone(), if deleted { None } else { Some(pod) });
        self.spawn_worker(uid);
    }

    fn spawn_worker(self: Arc<Self>, uid: String) {
        let lock = self
            .locks
            .lock()
            .expect("locks")
            .entry(uid.clone())
            .or_default()
            .clone();
        tokio::spawn(async move {
            let _guard = lock.lock().await;
            let pod = self.latest.lock().expect("latest").get(&uid).cloned().flatten();
            let observed = pod
                .as_ref()
                .map(|p| observe(p, &self.ours))
                .unwrap_or(Observed::Gone);
            let known = self.state.lock().expect("state").records.get(&uid).cloned();
            for effect in step(known.as_ref(), &observed) {
                if let Err(e) = self.apply(&uid, pod.as_ref(), effect.clone()).await {
                    let name = pod
                        .as_ref()
                        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()));
                    warn!(pod = name.unwrap_or(uid.clone()), "{effect:?}: {e:#}");
                    if let (Effect::Start { .. }, Some(p)) = (&effect, pod.as_ref()) {
                        self.report_failure(p, &format!("{e:#}")).await;
                    }
                    break;
                }
            }
            if observed == Observed::Gone {
                self.locks.lock().expect("locks").remove(&uid);
                self.latest.lock().expect("latest").remove(&uid);
            }
        });
    }

    async fn report_failure(&self, pod: &Pod, msg: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let body = json!({ "status": { "phase": "Pending", "conditions": [{
            "type": "Ready", "status": "False", "reason": "LabNetworkSetupFailed", "message": msg,
            "lastTransitionTime": now_rfc3339() }] } });
        let _ = api
            .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&body))
            .await;
    }

    async fn apply(&self, uid: &str, pod: Option<&Pod>, effect: Effect) -> Result<()> {
        match effect {
            Effect::Start { ip_hint } => {
                let pod = pod.expect("Start comes from a bound pod");
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let (ip, subnet, gw) = {
                    let mut st = self.state.lock().expect("state");
                    let pool = st
                        .pools
                        .get_mut(&node)
                        .context("pod bound to a node this kubelet does not serve")?;
                    let ip = match ip_hint {
                        Some(ip) if pool.claim(ip) => ip,
                        _ => pool.allocate().with_context(|| {
                            format!("node {node}'s pod subnet {} is full; fix: add lab nodes or lower the pod count", pool.subnet())
                        })?,
                    };
                    (ip, pool.subnet(), pool.gateway())
                };
                let hollow = wants_hollow(pod, self.cfg.hollow);
                let netns = (!hollow).then(|| pod_netns(&self.cfg.lab, &self.cfg.cluster_id, uid));
                if let Some(ns) = netns.clone() {
                    let (host, veth, exe, port) = (
                        self.cfg.host_netns.clone(),
                        pod_veth(uid),
                        self.cfg.exe.clone(),
                        echo_port(pod),
                    );
                    let podname = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
                    let res = tokio::task::spawn_blocking(move || -> Result<()> {
                        if !net::netns_exists(&ns) {
                            net::add_pod(&host, &ns, &veth, ip, subnet, gw)?;
                        }
                        if let Some(port) = port {
                            let busy = crate::procs::run("ip", &["netns", "pids", &ns]).unwrap_or_default();
                            if busy.trim().is_empty() {
                                start_echo(&exe, &ns, port, &podname)?;
                            }
                        }
                        Ok(())
                    })
                    .await?;
                    if let Err(e) = res {
                        if let Some(p) = self.state.lock().expect("state").pools.get_mut(&node) {
                            p.release(ip);
                        }
                        return Err(e);
                    }
                }
                debug!(uid, %ip, hollow, "pod started");
                self.state
                    .lock()
                    .expect("state")
                    .records
                    .insert(uid.to_string(), PodRecord { ip, node, netns });
                Ok(())
            }
            Effect::ReportRunning => {
                let pod = pod.expect("ReportRunning comes from a bound pod");
                let rec = self
                    .state
                    .lock()
                    .expect("state")
                    .records
                    .get(uid)
                    .cloned()
                    .context("no record")?;
                let host_ip = self.gateway(&rec.node).expect("pool");
                let api: Api<Pod> =
                    Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let body = running_status(pod, rec.ip, host_ip, &now_rfc3339());
                match api
                    .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&body))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Effect::Stop => {
                let rec = self.state.lock().expect("state").records.remove(uid);
                let grace = pod
                    .and_then(|p| p.metadata.deletion_grace_period_seconds)
                    .unwrap_or(30)
                    .clamp(0, 300) as u64;
                let ns = rec
                    .as_ref()
                    .and_then(|r| r.netns.clone())
                    .or_else(|| Some(pod_netns(&self.cfg.lab, &self.cfg.cluster_id, uid)));
                if let Some(ns) = ns {
                    tokio::task::spawn_blocking(move || stop_pod_processes(&ns, Duration::from_secs(grace)))
                        .await?;
                }
                if let Some(rec) = rec
                    && let Some(pool) = self.state.lock().expect("state").pools.get_mut(&rec.node)
                {
                    pool.release(rec.ip);
                }
                Ok(())
            }
            Effect::DeleteFinal => {
                let pod = pod.expect("DeleteFinal comes from a bound pod");
                let api: Api<Pod> =
                    Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pod.name_any(), &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Pods this kubelet currently runs.
    pub fn running(&self) -> usize {
        self.state.lock().expect("state").records.len()
    }
}

fn start_echo(exe: &std::path::Path, ns: &str, port: u16, pod: &str) -> Result<()> {
    let exe = exe.to_string_lossy().to_string();
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns,
        &exe,
        "echo-server",
        "--port",
        &port.to_string(),
        "--pod",
        pod,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    // Dropped at once: tokio reaps it when it exits; Stop finds it through the namespace's PID list.
    let _child = cmd.spawn().context("starting the echo server")?;
    info!(ns, port, "echo server started");
    Ok(())
}

/// Graceful termination: SIGTERM to every process in the pod's namespace, SIGKILL to what is left after
/// `grace`, then the namespace goes.
fn stop_pod_processes(ns: &str, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids = |ns: &str| -> Vec<i32> {
        crate::procs::run("ip", &["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    if net::netns_exists(ns) {
        for pid in pids(ns) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        while !pids(ns).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    net::remove_pod(ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> PodRecord {
        PodRecord {
            ip: "10.244.0.5".parse().unwrap(),
            node: "lab-node-1".into(),
            netns: None,
        }
    }
    fn bound(terminating: bool, ip: Option<&str>, running: bool) -> Observed {
        Observed::Bound {
            terminating,
            status_ip: ip.map(|s| s.parse().unwrap()),
            reported_ready: running,
        }
    }

    #[test]
    fn new_pod_is_started_and_reported() {
        assert_eq!(
            step(None, &bound(false, None, false)),
            vec![Effect::Start { ip_hint: None }, Effect::ReportRunning]
        );
    }

    #[test]
    fn pod_with_an_ip_is_adopted_with_that_ip_after_a_restart() {
        let e = step(None, &bound(false, Some("10.244.0.9"), true));
        assert_eq!(
            e[0],
            Effect::Start {
                ip_hint: Some("10.244.0.9".parse().unwrap())
            }
        );
    }

    #[test]
    fn a_pod_marked_not_ready_by_the_node_controller_is_reported_ready_again() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "n", "uid": "u" },
            "spec": { "nodeName": "lab-node-1", "containers": [{ "name": "c" }] },
            "status": { "phase": "Running", "podIP": "10.244.0.5", "conditions": [
                { "type": "Ready", "status": "True" }, { "type": "ContainersReady", "status": "True" } ] }
        }))
        .unwrap();
        let ours: HashSet<String> = ["lab-node-1".to_string()].into();
        assert!(step(Some(&rec()), &observe(&pod, &ours)).is_empty());
        // what kube-controller-manager writes after the node missed its heartbeats
        pod.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert_eq!(
            step(Some(&rec()), &observe(&pod, &ours)),
            vec![Effect::ReportRunning]
        );
    }

    #[test]
    fn running_pod_is_left_alone_until_its_status_drifts() {
        assert!(step(Some(&rec()), &bound(false, Some("10.244.0.5"), true)).is_empty());
        assert_eq!(
            step(Some(&rec()), &bound(false, None, false)),
            vec![Effect::ReportRunning]
        );
        assert_eq!(
            step(Some(&rec()), &bound(false, Some("10.244.0.6"), true)),
            vec![Effect::ReportRunning]
        );
    }

    #[test]
    fn terminating_pod_is_stopped_then_deleted_and_a_vanished_one_only_stopped() {
        assert_eq!(
            step(Some(&rec()), &bound(true, None, true)),
            vec![Effect::Stop, Effect::DeleteFinal]
        );
        assert_eq!(
            step(None, &bound(true, None, false)),
            vec![Effect::Stop, Effect::DeleteFinal]
        );
        assert_eq!(step(Some(&rec()), &Observed::Gone), vec![Effect::Stop]);
        assert!(step(None, &Observed::Gone).is_empty());
    }

    #[test]
    fn running_status_carries_ip_conditions_and_one_status_per_container() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "d", "uid": "u1" },
            "spec": { "nodeName": "lab-node-1", "containers": [{ "name": "a", "image": "x" }, { "name": "b" }] }
        }))
        .unwrap();
        let s = running_status(
            &pod,
            "10.244.0.7".parse().unwrap(),
            "10.244.0.1".parse().unwrap(),
            "T",
        );
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["podIP"], "10.244.0.7");
        assert_eq!(s["status"]["hostIP"], "10.244.0.1");
        assert_eq!(s["status"]["containerStatuses"].as_array().unwrap().len(), 2);
        assert_eq!(
            s["status"]["containerStatuses"][1]["containerID"],
            "ferry-lab://u1/b"
        );
        let ready = s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
    }

    #[test]
    fn observe_ignores_pods_of_other_nodes() {
        let ours: HashSet<String> = ["lab-node-1".to_string()].into();
        let pod: Pod = serde_json::from_value(json!({ "metadata": { "name": "p", "uid": "u" }, "spec": { "nodeName": "other", "containers": [] } })).unwrap();
        assert_eq!(observe(&pod, &ours), Observed::Gone);
        let mut p2 = pod.clone();
        p2.spec.as_mut().unwrap().node_name = Some("lab-node-1".into());
        p2.metadata.annotations = Some([(HOLLOW_ANNOTATION.to_string(), "true".to_string())].into());
        assert_eq!(observe(&p2, &ours), bound(false, None, false));
        assert!(wants_hollow(&p2, false));
        assert!(!wants_hollow(&pod, false));
    }
}
