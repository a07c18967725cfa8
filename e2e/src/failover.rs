//! The gateway failover, done to a lab under traffic (the failover e2e and `ferry-lab bench failover`).
//! ferry installed into c1 and c2 and peered, both real nodes of one side labelled as gateways (two
//! replicas, one active by the Lease `ferry-gateway`); a c2 pod echoes ([`crate::flowprobe::serve`]) and
//! a c1 pod (both on nodes that are *not* the active gateway's) probes it through the tunnel (UDP every 10 ms and a
//! continuous TCP stream, [`crate::flowprobe::run`]). Then the active replica is lost — its process
//! SIGKILLed ([`Loss::Kill`]) or its node cut from the network ([`Loss::Cut`], undone once the standby
//! has taken over) — and the old active comes back (the kubelet restarts the container; the cut ends).
//! Measured: the longest probe gap, whether the TCP stream survived, how long until the `PeerNetwork`
//! named the new active, every change of the active replica during the run (one change: no flapping),
//! and a new flow after the old active is back.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_crds::PeerNetwork;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde_json::json;

use crate::flowprobe::Flow;
use crate::lab::Lab;
use crate::layout::ClusterLayout;

const NS: &str = "failover";
const PORT: u16 = 7100;
/// Whose gateway is lost: the consumer's (c1) or the provider's (c2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// c1's: the provider learns the new active's address by WireGuard roaming.
    Consumer,
    /// c2's: c1's gateway, hearing nothing, dials c2's standby endpoint (`agent.standbyGatewayEndpoints`).
    Provider,
}

impl Side {
    fn cluster<'a>(&self, lab: &'a Lab) -> &'a ClusterLayout {
        &lab.layout.clusters[match self {
            Side::Consumer => 0,
            Side::Provider => 1,
        }]
    }

    /// The PeerNetwork that side has for the other.
    fn peer_network(&self) -> &'static str {
        match self {
            Side::Consumer => "provider-c2",
            Side::Provider => "consumer-c1",
        }
    }
}

/// The echo servers: one per real node of c2, by address as c1 sees it.
pub struct Servers {
    /// c1's view of the server on c2's real node k.
    pub to: [SocketAddr; 2],
    procs: Vec<std::process::Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// How the active gateway is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// SIGKILL of the active replica's process (its container is restarted by the kubelet).
    Kill,
    /// The active replica's node cut from its network (every packet on its link dropped), for
    /// [`CUT_SECONDS`] after the standby took over.
    Cut,
}

/// How long a cut lasts after the standby took over.
pub const CUT_SECONDS: f64 = 3.0;

/// One failover under traffic.
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    /// How the active was lost.
    pub loss: Loss,
    /// Whose gateway.
    pub side: Side,
    /// The node of the replica lost, and of the one that took over.
    pub from_node: String,
    /// The new active's node.
    pub to_node: String,
    /// The longest time without a UDP answer (10 ms probes), seconds.
    pub gap_seconds: f64,
    /// The TCP stream lived through it (no reset, every byte echoed).
    pub tcp_survived: bool,
    /// The longest TCP echo stall, seconds (retransmission backoff makes it longer than the gap).
    pub tcp_stall_seconds: f64,
    /// From the loss to the `PeerNetwork` naming the new active, seconds.
    pub takeover_seconds: f64,
    /// Active replicas in order during the run and the return (from the old one: no flapping is 2).
    pub active_changes: Vec<String>,
    /// The lost replica came back (restarted, or its node reconnected) and stood by.
    pub returned_seconds: f64,
    /// After the return: a new flow's gap (seconds) and whether its TCP stream survived.
    pub after_return: Flow,
    /// The whole probe during the loss.
    pub during: Flow,
}

/// Labels both of `c`'s real nodes as gateway nodes and waits for two Ready gateway replicas.
pub async fn two_gateways(lab: &Lab, c: &ClusterLayout) -> Result<()> {
    let k = lab.client(c).await?;
    let nodes: Api<Node> = Api::all(k.clone());
    for i in 0..c.real_nodes.min(2) {
        nodes
            .patch(
                &c.real_node_name(i),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {crate::install::GATEWAY_LABEL: "true"}}})),
            )
            .await?;
    }
    let ds: Api<DaemonSet> = Api::namespaced(k, "ferry-system");
    tokio::time::timeout(
        Duration::from_secs(120),
        kube::runtime::wait::await_condition(ds, "ferry-gateway", |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.number_ready >= 2 && s.desired_number_scheduled >= 2)
        }),
    )
    .await
    .context("two Ready ferry-gateway replicas: not after 120s")??;
    Ok(())
}

/// Where the active gateway is, as the `PeerNetwork` tells it: (node, replica).
fn active_of(pn: &PeerNetwork) -> Option<(String, String)> {
    let s = pn.status.as_ref()?;
    (s.phase.as_deref() == Some("Connected")).then_some(())?;
    Some((s.gateway_node.clone()?, s.gateway_replica.clone()?))
}

/// The pid of a process in network namespace `netns` whose command line contains `needle`.
pub fn pid_in(netns: &str, needle: &str) -> Option<u32> {
    let ns_ino = std::fs::metadata(format!("/var/run/netns/{netns}")).ok()?.ino();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains(needle) && std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino() == ns_ino)
            .then_some(pid)
    })
}

/// The pid of the first process whose command line contains `needle` (a pod's, by its marker).
fn pid_of(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
            .then_some(pid)
    })
}

fn pod(name: &str, node: &str, marker: &str) -> Result<Pod> {
    // the marker in the command line finds the pod's process, whose network namespace the probes enter
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": name, "image": crate::image::WORKLOAD_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", format!("mkdir -p /m/{marker} && exec httpd -f -p 8080 -h /m/{marker}")]}]}
    }))?)
}

fn marker(lab: &Lab, what: &str) -> String {
    format!("ferry-failover-{}-{what}", lab.layout.name)
}

/// The workload: an echo server on each of c2's two real nodes, a probe client on each of c1's.
pub async fn workload(lab: &Lab, exe: &Path) -> Result<Servers> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, k2) = (lab.client(c1).await?, lab.client(c2).await?);
    crate::lab::fresh_namespace(&k1, NS).await;
    crate::lab::fresh_namespace(&k2, NS).await;
    let (p1, p2): (Api<Pod>, Api<Pod>) = (Api::namespaced(k1.clone(), NS), Api::namespaced(k2.clone(), NS));
    for i in 0..2 {
        let (server, client) = (format!("server{i}"), format!("client{i}"));
        p2.create(
            &PostParams::default(),
            &pod(&server, &c2.real_node_name(i), &marker(lab, &server))?,
        )
        .await?;
        p1.create(
            &PostParams::default(),
            &pod(&client, &c1.real_node_name(i), &marker(lab, &client))?,
        )
        .await?;
    }
    let remaps =
        ferry_tunnel::remaps::reported(&Api::<PeerNetwork>::all(k1.clone()).get("provider-c2").await?)
            .context("c1's PeerNetwork reports no remaps")?;
    let mut servers = Servers {
        to: [SocketAddr::from(([0, 0, 0, 0], 0)); 2],
        procs: Vec::new(),
    };
    for i in 0..2 {
        crate::lab::running_pod_ip(&k1, NS, &format!("client{i}")).await?;
        let server = format!("server{i}");
        let ip = crate::lab::running_pod_ip(&k2, NS, &server).await?;
        let pid = pid_of(&format!("/m/{}", marker(lab, &server))).context("a server pod's process")?;
        servers.procs.push(
            std::process::Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-n"])
                .arg(exe)
                .args(["flow-probe", "serve", "--port", &PORT.to_string()])
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("nsenter (util-linux) into the server pod")?,
        );
        let seen = ferry_tunnel::ipam::translate(ip, &remaps).context("a server's IP in c1's view")?;
        servers.to[i as usize] = SocketAddr::new(seen, PORT);
    }
    Ok(servers)
}

/// Runs the probe from c1's pod on real node `k` for `seconds`.
fn probe(lab: &Lab, exe: &Path, k: u32, to: SocketAddr, seconds: f64) -> Result<std::process::Child> {
    let pid = pid_of(&format!("/m/{}", marker(lab, &format!("client{k}"))))
        .with_context(|| format!("the c1 client pod's process on real node {}", k + 1))?;
    Ok(std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n"])
        .arg(exe)
        .args([
            "flow-probe",
            "run",
            "--to",
            &to.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?)
}

async fn finish(child: std::process::Child) -> Result<Flow> {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "flow probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .with_context(|| format!("flow probe output {text:?}"))
}

const CUT_TABLE: &str = "ferry-lab-cut";

fn cut(netns: &str) -> Result<()> {
    crate::net::nft_in(
        netns,
        &format!(
            "table inet {CUT_TABLE} {{\n chain i {{ type filter hook input priority -400; iifname \"eth0\" drop; }}\n chain f {{ type filter hook forward priority -400; iifname \"eth0\" drop; oifname \"eth0\" drop; }}\n chain o {{ type filter hook output priority -400; oifname \"eth0\" drop; }}\n}}\n"
        ),
    )
}

fn uncut(netns: &str) {
    let _ = std::process::Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "delete", "table", "inet", CUT_TABLE,
        ])
        .output();
}

/// One failover under traffic (see the module doc). Needs ferry installed and peered with two gateway
/// replicas on `side` ([`two_gateways`]) and the [`workload`] up. The probe runs between a c1 pod and a
/// c2 pod on nodes that are not lost.
pub async fn once(lab: &Lab, exe: &Path, servers: &Servers, side: Side, loss: Loss) -> Result<Failover> {
    let c1 = side.cluster(lab);
    let peer = side.peer_network();
    let k1 = lab.client(c1).await?;
    let pns: Api<PeerNetwork> = Api::all(k1.clone());
    let (from_node, from_replica) = tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(pns.clone(), peer, |p: Option<&PeerNetwork>| {
            p.and_then(active_of).is_some()
        }),
    )
    .await
    .with_context(|| {
        format!(
            "{}'s PeerNetwork {peer} Connected with an active gateway: not after 60s",
            c1.id
        )
    })??
    .as_ref()
    .and_then(active_of)
    .context("no active gateway")?;
    let k_lost = (0..2)
        .find(|k| c1.real_node_name(*k) == from_node)
        .with_context(|| {
            format!(
                "the active gateway runs on {from_node}, not a real node of {}",
                c1.id
            )
        })?;
    // the probe's ends live on: the client off the lost node (consumer side), the server off it (provider)
    let (k_client, to) = match side {
        Side::Consumer => (1 - k_lost, servers.to[0]),
        Side::Provider => (0, servers.to[1 - k_lost as usize]),
    };
    let lost_ns = crate::layout::real_node_netns(&lab.layout.name, &c1.id, k_lost);
    // every change of the active replica, by watch, from now on
    let (changes_tx, mut changes_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String, String)>();
    let watch = tokio::spawn({
        let pns = pns.clone();
        async move {
            let cfg = watcher::Config::default().fields(&format!("metadata.name={peer}"));
            let mut s = std::pin::pin!(watcher(pns, cfg).default_backoff().applied_objects());
            while let Some(Ok(pn)) = s.next().await {
                if let Some((node, replica)) = pn
                    .status
                    .as_ref()
                    .and_then(|s| Some((s.gateway_node.clone()?, s.gateway_replica.clone()?)))
                {
                    let _ = changes_tx.send((Instant::now(), node, replica));
                }
            }
        }
    });
    let seconds = 14.0;
    let during = probe(lab, exe, k_client, to, seconds)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lost_at = Instant::now();
    let killed_pid = match loss {
        Loss::Kill => {
            let pid = pid_in(&lost_ns, "ferry-gateway serve")
                .with_context(|| format!("ferry-gateway serve on {from_node}"))?;
            kill_9(pid)?;
            Some(pid)
        }
        Loss::Cut => {
            cut(&lost_ns)?;
            None
        }
    };
    // the takeover: the PeerNetwork names another replica
    let mut order = vec![from_replica.clone()];
    let mut takeover = None;
    let mut to_node = String::new();
    let deadline = lost_at + Duration::from_secs(30);
    while takeover.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, changes_rx.recv()).await {
            Ok(Some((t, node, replica))) => {
                if order.last() != Some(&replica) {
                    order.push(replica);
                    if node != from_node {
                        takeover = Some(t.duration_since(lost_at).as_secs_f64());
                        to_node = node;
                    }
                }
            }
            _ => {
                if loss == Loss::Cut {
                    uncut(&lost_ns);
                }
                watch.abort();
                bail!("no other gateway replica took over within 30s of the loss ({order:?})");
            }
        }
    }
    if loss == Loss::Cut {
        tokio::time::sleep(Duration::from_secs_f64(CUT_SECONDS)).await;
        uncut(&lost_ns);
    }
    let during = finish(during).await?;
    // the return: the lost replica runs again (a new process after a kill; the same one after a cut) and
    // says on its own /metrics that it stands by
    let admin = SocketAddr::new(c1.real_node_ip(k_lost), ADMIN_PORT);
    let killed = killed_pid;
    let returned = async {
        loop {
            let pid = pid_in(&lost_ns, "ferry-gateway serve");
            if pid.is_some()
                && pid != killed
                && http_get(admin).is_some_and(|m| m.contains("\nferry_gateway_active 0"))
            {
                return;
            }
            // a process coming back is watched from outside the cluster: there is no object to watch
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(90), returned)
        .await
        .with_context(|| {
            format!("the lost gateway replica on {from_node} not back as a standby after 90s")
        })?;
    let returned_seconds = lost_at.elapsed().as_secs_f64();
    // a new flow while the old active stands by; nothing may move meanwhile
    let after_return = finish(probe(lab, exe, k_client, to, 5.0)?).await;
    while let Ok((_, _, replica)) = changes_rx.try_recv() {
        if order.last() != Some(&replica) {
            order.push(replica);
        }
    }
    watch.abort();
    let after_return = match after_return {
        Ok(f) => f,
        Err(e) => bail!(
            "a new flow after the lost replica returned: {e:#}\n{}",
            failure_report(lab, exe, (k_client, to), &order, &during).await
        ),
    };
    if order.len() > 2 {
        // it flapped (the e2e fails on the count): the gateways' own lines say who stepped down and why
        eprintln!(
            "the active gateway replica changed {} times: {}",
            order.len() - 1,
            failure_report(lab, exe, (k_client, to), &order, &during).await
        );
    }
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    Ok(Failover {
        loss,
        side,
        from_node,
        to_node,
        gap_seconds: during.gap_seconds,
        tcp_survived: during.tcp_survived,
        tcp_stall_seconds: during.tcp_stall_seconds,
        takeover_seconds: round(takeover.unwrap_or_default()),
        active_changes: order,
        returned_seconds: round(returned_seconds),
        after_return,
        during,
    })
}

/// What is worth knowing when a new flow failed after the return, or the active replica moved more than
/// once: who was active when, the loss's own flow, the client node's routes, whether a second flow 5 s
/// later gets through, and the last lines of every gateway and route agent of both clusters.
async fn failure_report(
    lab: &Lab,
    exe: &Path,
    (k_client, to): (u32, SocketAddr),
    order: &[String],
    during: &Flow,
) -> String {
    let client_cluster = &lab.layout.clusters[0];
    let ns = crate::layout::real_node_netns(&lab.layout.name, &client_cluster.id, k_client);
    let routes = crate::procs::run("ip", &["-n", &ns, "route"]).unwrap_or_else(|e| format!("{e:#}\n"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = match probe(lab, exe, k_client, to, 2.0) {
        Ok(p) => match finish(p).await {
            Ok(f) => format!("got through (gap {} s)", f.gap_seconds),
            Err(e) => format!("failed too: {e:#}"),
        },
        Err(e) => format!("not started: {e:#}"),
    };
    let mut text = format!(
        "active replicas in order {order:?}; during the loss: gap {} s, TCP survived {}; routes on the client's node {}:\n{routes}a second new flow 5 s later {again}\n",
        during.gap_seconds,
        during.tcp_survived,
        client_cluster.real_node_name(k_client)
    );
    for c in &lab.layout.clusters[..2] {
        let Ok(k) = lab.client(c).await else { continue };
        let pods: Api<Pod> = Api::namespaced(k, "ferry-system");
        let Ok(list) = pods.list(&Default::default()).await else {
            continue;
        };
        for p in list.items {
            let name = p.metadata.name.unwrap_or_default();
            if !(name.starts_with("ferry-gateway") || name.starts_with("ferry-route-agent")) {
                continue;
            }
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            let lp = kube::api::LogParams {
                tail_lines: Some(25),
                ..Default::default()
            };
            let log = pods.logs(&name, &lp).await.unwrap_or_else(|e| e.to_string());
            text.push_str(&format!("--- {} {name} on {node}:\n{log}", c.id));
        }
    }
    text
}

/// The gateway's admin port (the chart's `gateway.adminPort`).
const ADMIN_PORT: u16 = 9469;

/// The body of `GET /metrics` at `addr`, if it answers within a second.
fn http_get(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn kill_9(pid: u32) -> Result<()> {
    let out = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kill -KILL {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `ferry-lab bench failover`: ferry installed and peered (done here when it is not), two gateway
/// replicas on `side`, the workload, then `runs` losses of the active replica under traffic.
pub async fn bench(lab: &Lab, exe: &Path, side: Side, loss: Loss, runs: u32) -> Result<Vec<Failover>> {
    if lab.layout.clusters.len() < 2 || lab.layout.clusters.iter().any(|c| c.real_nodes < 2) {
        bail!("bench failover needs two clusters with two real nodes each; fix: ferry-lab up --real-nodes 2");
    }
    crate::route_bench::ensure_peered(lab, exe).await?;
    two_gateways(lab, side.cluster(lab)).await?;
    let servers = workload(lab, exe).await?;
    let mut out = Vec::new();
    for _ in 0..runs.max(1) {
        out.push(once(lab, exe, &servers, side, loss).await?);
    }
    drop(servers);
    for c in &lab.layout.clusters[..2] {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(lab.client(c).await?);
        let _ = nss.delete(NS, &Default::default()).await;
    }
    Ok(out)
}
