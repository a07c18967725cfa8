//! The in-cluster mode (`ferry-gateway serve`): one tunnel per `PeerNetwork` the peering wrote.
//!
//! The WireGuard private key comes from the Secret `ferry-system/ferry-wireguard` (made by ferry-agent); each
//! `PeerNetwork`'s spec becomes a [`GatewayConfig`] ([`config_for`], pure); a tunnel starts when its
//! `PeerNetwork` appears, restarts when its spec changes, and is removed (interface, routes, rules, nft
//! table) when the `PeerNetwork` is deleted, i.e. on unpeer. The tunnel's health goes to the
//! `PeerNetwork` status: phase `Connected`/`NotConnected` at once when it changes, counters every 5 s; a spec
//! the gateway cannot use gets phase `Invalid` and a condition naming the field and the fix.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Context, Result};
use ferry_crds::{PeerNetwork, PeerNetworkSpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::gateway::{GatewayConfig, GatewayStatus};

/// Where ferry-agent keeps the cluster's WireGuard key.
pub const KEY_SECRET: (&str, &str) = ("ferry-system", "ferry-wireguard");

/// What `serve` needs besides the `PeerNetwork`s.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Directory for the key file, remaps and status files.
    pub state_dir: PathBuf,
    /// Underlay networks (never used as remaps).
    pub underlay_cidrs: Vec<String>,
    /// Where remaps come from (empty: RFC 1918 and ferry's ULA /48).
    pub remap_pool: Vec<String>,
    /// `/metrics` of the tunnel on link `n` at this address with port + n; absent: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// The node this gateway runs on and its address, told in each `PeerNetwork`'s status so that every
    /// other node's route agent routes the peer's CIDRs there; absent: not told (no route agents follow).
    pub node: Option<(String, IpAddr)>,
    /// Active/standby with the other replicas ([`crate::election`]); absent: this replica is always active.
    pub election: Option<crate::election::Election>,
}

/// The gateway config for one `PeerNetwork`. Errors name the `PeerNetwork` field and the fix.
pub fn config_for(spec: &PeerNetworkSpec, opts: &ServeOptions, key_file: &str) -> Result<GatewayConfig> {
    let missing = |field: &str| {
        invalid!(
            "spec.{field} is missing; fix: peer again with this version of ferry (the handshake assigns the tunnel link)"
        )
    };
    let tunnel = spec
        .tunnel_address
        .clone()
        .ok_or_else(|| missing("tunnelAddress"))?;
    let tunnel_ip: IpAddr = tunnel
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            invalid!("spec.tunnelAddress {tunnel:?} is not an address/prefix; fix: e.g. 169.254.64.1/30")
        })?;
    let slot = crate::ipam::tunnel_slot(tunnel_ip).ok_or_else(|| {
        invalid!(
            "spec.tunnelAddress {tunnel:?} is outside {}; fix: peer again",
            crate::ipam::TUNNEL_LINKS
        )
    })?;
    let peer_tunnel = spec
        .peer_tunnel_address
        .as_deref()
        .ok_or_else(|| missing("peerTunnelAddress"))?;
    let remote_tunnel_addr: IpAddr = peer_tunnel.parse().map_err(|_| {
        invalid!("spec.peerTunnelAddress {peer_tunnel:?} is not an IP address; fix: peer again")
    })?;
    let listen_port = spec.listen_port.ok_or_else(|| missing("listenPort"))?;
    let peer_endpoint = match spec.peer_endpoint.as_deref() {
        None => None,
        Some(e) => Some(e.parse::<SocketAddr>().map_err(|_| {
            invalid!("spec.peerEndpoint {e:?} is not IP:port; fix: start the provider's agent with --gateway-endpoint <IP>:<port> and peer again")
        })?),
    };
    if spec.peer_standby_endpoints.len() > 4 {
        return Err(invalid!(
            "spec.peerStandbyEndpoints has {} entries, more than 4; fix: peer again (the provider announces at most 4)",
            spec.peer_standby_endpoints.len()
        ));
    }
    let peer_standby_endpoints = spec
        .peer_standby_endpoints
        .iter()
        .map(|e| {
            e.parse::<SocketAddr>().map_err(|_| {
                invalid!("spec.peerStandbyEndpoints has {e:?}, not IP:port; fix: start the provider's agent with --standby-gateway-endpoint <IP>:<port> and peer again")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GatewayConfig {
        peer: spec.cluster_id.clone(),
        interface: None,
        local_cidrs: spec.local_cidrs.clone(),
        underlay_cidrs: opts.underlay_cidrs.clone(),
        remote_cidrs: spec.remote_cidrs.clone(),
        remap_pool: opts.remap_pool.clone(),
        private_key_file: key_file.to_string(),
        listen_port,
        peer_public_key: spec.peer_public_key.clone(),
        peer_endpoint,
        peer_standby_endpoints,
        peer_underlay: None,
        local_tunnel_addr: tunnel,
        remote_tunnel_addr,
        underlay_mtu: spec.underlay_mtu,
        tunnel_mtu_override: None,
        mss_clamp: true,
        probe_port: None,
        state_dir: opts.state_dir.clone(),
        metrics_addr: opts
            .metrics_addr
            .map(|a| SocketAddr::new(a.ip(), a.port().saturating_add(slot as u16))),
        path_mtu_hint: None,
    })
}

/// Where the active gateway runs, as its `PeerNetwork` status tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActiveAt {
    /// The node and its address ([`ServeOptions::node`]); absent: not told.
    pub node: Option<(String, IpAddr)>,
    /// The replica's identity on the gateway Lease; absent without an election.
    pub replica: Option<String>,
    /// When it became active (RFC 3339); absent without an election.
    pub since: Option<String>,
}

impl ActiveAt {
    /// The status fields naming the active gateway (route agents follow `gatewayNodeIP`).
    pub fn fields(&self) -> serde_json::Value {
        json!({
            "gatewayNode": self.node.as_ref().map(|n| n.0.clone()),
            "gatewayNodeIP": self.node.as_ref().map(|n| n.1.to_string()),
            "gatewayReplica": self.replica,
            "gatewayActiveSince": self.since,
        })
    }
}

/// The `PeerNetwork` status for a gateway status.
/// `since`: when the tunnel last changed between connected and not (the condition's lastTransitionTime);
/// `at`: where this gateway runs.
pub fn status_patch(s: &GatewayStatus, since: &str, at: &ActiveAt) -> serde_json::Value {
    let mut patch = json!({ "status": {
        "phase": s.phase,
        "remaps": s.remaps,
        "latencyMs": s.latency_ms.map(|l| (l * 100.0).round() / 100.0),
        "pathMTU": s.path_mtu,
        "tunnelMTU": s.tunnel_mtu,
        "mtuChanges": s.mtu_changes,
        "lastMTUChange": s.last_mtu_change,
        "rxBytes": s.rx_bytes,
        "txBytes": s.tx_bytes,
        "diagnostics": diagnostics(&s.diagnostics),
        "conditions": [{
            "type": "TunnelConnected",
            "status": if s.connected { "True" } else { "False" },
            "reason": if s.connected { "HeartbeatsAnswered" } else { "HeartbeatsMissed" },
            "message": format!("backend {}, tunnel MTU {}, path MTU {}", s.backend, s.tunnel_mtu, s.path_mtu),
            "lastTransitionTime": since,
        }],
    }});
    if let (Some(st), serde_json::Value::Object(f)) = (patch["status"].as_object_mut(), at.fields()) {
        st.extend(f);
    }
    patch
}

/// The diagnostics as a merge patch: a fact not measured this time is written as `null`, so that no old
/// value stays behind.
fn diagnostics(d: &ferry_crds::PeerNetworkDiagnostics) -> serde_json::Value {
    let mut v = serde_json::to_value(d).expect("diagnostics serialise");
    if let serde_json::Value::Object(m) = &mut v {
        for key in [
            "checkedAt",
            "publicKey",
            "handshakeAgeSeconds",
            "lossPercent",
            "lastRulesRemoved",
            "dfProbe",
            "conntrackCount",
            "conntrackMax",
            "ephemeralPorts",
        ] {
            m.entry(key).or_insert(serde_json::Value::Null);
        }
        if let Some(l) = m
            .get_mut("lossPercent")
            .and_then(|l| l.as_f64())
            .map(|l| (l * 10.0).round() / 10.0)
        {
            m.insert("lossPercent".into(), json!(l));
        }
    }
    v
}

/// The Event a status calls for: the path MTU changed since the status that had `seen` changes. A core/v1
/// Event in `default` (`PeerNetwork`s are cluster-scoped: the one form every apiserver takes for them;
/// events.k8s.io/v1 on servers before 1.22 refuses a cluster-scoped object's event in any namespace).
/// `instance`: the gateway's node; `now`: RFC 3339.
pub fn mtu_event(
    seen: u64,
    s: &GatewayStatus,
    about: ObjectReference,
    instance: &str,
    now: &str,
) -> Option<CoreEvent> {
    (s.mtu_changes > seen).then(|| {
        // generated names: a restarted gateway counts its changes from 0 again
        let prefix = format!("{}.pmtu.", about.name.as_deref().unwrap_or("peernetwork"));
        serde_json::from_value(json!({
            "metadata": { "generateName": prefix, "namespace": "default" },
            "involvedObject": about,
            "type": "Warning",
            "reason": "PathMTUChanged",
            "action": "ProbePathMTU",
            "message": format!(
                "{}; the MSS clamp follows, larger packets from pods get ICMP fragmentation needed / packet too big from the gateway",
                s.last_mtu_change.as_deref().unwrap_or("path MTU changed")
            ),
            "source": { "component": "ferry-gateway", "host": instance },
            "reportingComponent": "ferry-gateway",
            "reportingInstance": instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }))
        .expect("a well-formed Event")
    })
}

fn invalid_patch(msg: &str) -> serde_json::Value {
    json!({ "status": {
        "phase": "Invalid",
        "conditions": [{
            "type": "TunnelConnected", "status": "False", "reason": "InvalidSpec",
            "message": msg, "lastTransitionTime": chrono_now(),
        }],
    }})
}

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Running {
    spec: PeerNetworkSpec,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// `body` (a merge patch) with `metadata.resourceVersion` set to `rv`: a precondition, the apiserver
/// refuses the patch (409) when the object changed since that version. Without `rv`, as it is.
pub fn fenced(body: &serde_json::Value, rv: Option<&str>) -> serde_json::Value {
    let mut b = body.clone();
    if let (Some(rv), serde_json::Value::Object(m)) = (rv, &mut b) {
        m.insert("metadata".into(), json!({ "resourceVersion": rv }));
    }
    b
}

/// The active replica's status writes for one tunnel, fenced: every write after the first carries the
/// resourceVersion its last write produced ([`fenced`]). A deposed active's write that arrives late (a
/// PATCH held in a cut network's TCP buffers and delivered once the cut ends, after the standby took
/// over and wrote) is refused, instead of naming the old gateway again and sending every route agent
/// back to it. A writer refused reads the object and writes again, once, unless what it read names
/// another replica ([`deposed`]). A tunnel being stopped writes nothing more (`quiet`): a replica that
/// steps down takes seconds to tear its tunnel down, and its "not connected" written meanwhile named it
/// the active gateway again (make test's install e2e saw the status swing back and forth after a cut).
struct StatusWriter {
    api: Api<PeerNetwork>,
    name: String,
    rv: Option<String>,
    /// This replica's identity on the gateway Lease (none without an election).
    me: Option<String>,
    /// Set when the tunnel is told to stop.
    quiet: Arc<AtomicBool>,
}

/// Whether `pn`'s status names an active replica other than `me`: this replica's status writes are over.
pub fn deposed(pn: &PeerNetwork, me: Option<&str>) -> bool {
    let named = pn.status.as_ref().and_then(|s| s.gateway_replica.as_deref());
    matches!((named, me), (Some(named), Some(me)) if named != me)
}

impl StatusWriter {
    async fn write(&mut self, body: &serde_json::Value) {
        for attempt in 0..2 {
            if self.quiet.load(Ordering::SeqCst) {
                return;
            }
            let patch = fenced(body, self.rv.as_deref());
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(pn) => {
                    self.rv = pn.metadata.resource_version;
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 => {
                    match self.api.get_opt(&self.name).await {
                        Ok(Some(pn)) if deposed(&pn, self.me.as_deref()) => {
                            warn!(
                                peer = self.name,
                                "the PeerNetwork names another active gateway replica: not writing its status"
                            );
                            return;
                        }
                        Ok(Some(pn)) => self.rv = pn.metadata.resource_version,
                        Ok(None) => return,
                        Err(e) => {
                            warn!(peer = self.name, "reading PeerNetwork after a conflict: {e}");
                            return;
                        }
                    }
                }
                // gone (unpeered) is fine; anything else is worth a line
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    warn!(peer = self.name, "writing PeerNetwork status: {e}");
                    return;
                }
            }
        }
    }
}

async fn patch_status(api: &Api<PeerNetwork>, name: &str, body: &serde_json::Value) {
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(body))
        .await
    {
        // gone (unpeered) is fine; anything else is worth a line
        if !matches!(&e, kube::Error::Api(a) if a.code == 404) {
            warn!(peer = name, "writing PeerNetwork status: {e}");
        }
    }
}

/// Reads the WireGuard key from its Secret (waiting for ferry-agent to make it) into `state_dir/wireguard.key`.
async fn key_file(client: &Client, state_dir: &std::path::Path) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), KEY_SECRET.0);
    if secrets
        .get_opt(KEY_SECRET.1)
        .await
        .with_context(|| format!("reading Secret {}/{}", KEY_SECRET.0, KEY_SECRET.1))?
        .is_none()
    {
        info!(
            "waiting for Secret {}/{} (ferry-agent makes it)",
            KEY_SECRET.0, KEY_SECRET.1
        );
    }
    // by watch: the Secret appears when ferry-agent first starts
    let s = kube::runtime::wait::await_condition(secrets, KEY_SECRET.1, |s: Option<&Secret>| s.is_some())
        .await
        .map_err(|e| invalid!("waiting for Secret {}/{}: {e}", KEY_SECRET.0, KEY_SECRET.1))?
        .ok_or_else(|| invalid!("Secret {}/{} vanished", KEY_SECRET.0, KEY_SECRET.1))?;
    let key = s
        .data
        .as_ref()
        .and_then(|d| d.get("privateKey"))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            invalid!(
                "Secret {}/{} has no privateKey; fix: delete it and restart ferry-agent",
                KEY_SECRET.0,
                KEY_SECRET.1
            )
        })?;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join("wireguard.key");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(key.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path.to_string_lossy().into_owned())
}

fn start(
    api: Api<PeerNetwork>,
    name: String,
    cfg: GatewayConfig,
    spec: PeerNetworkSpec,
    ended: tokio::sync::mpsc::UnboundedSender<()>,
    at: ActiveAt,
) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (tx, mut rx) = tokio::sync::watch::channel(GatewayStatus::default());
    let task = tokio::spawn(async move {
        // the serve loop hears of every tunnel that ends (to restart it), without polling
        struct Ended(tokio::sync::mpsc::UnboundedSender<()>);
        impl Drop for Ended {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let _ended = Ended(ended);
        let writer_api = api.clone();
        let writer_name = name.clone();
        let events: Api<CoreEvent> = Api::namespaced(api.clone().into_client(), "default");
        let instance = at
            .node
            .as_ref()
            .map_or_else(|| "ferry-gateway".to_string(), |n| n.0.clone());
        let quiet = Arc::new(AtomicBool::new(false));
        let mut status = StatusWriter {
            api: api.clone(),
            name: name.clone(),
            rv: None,
            me: at.replica.clone(),
            quiet: quiet.clone(),
        };
        // the route agents move their routes here while the tunnel comes up
        if at.node.is_some() {
            status.write(&json!({ "status": at.fields() })).await;
        }
        let writer = tokio::spawn(async move {
            let mut last: Option<(String, std::collections::BTreeMap<String, String>, u32)> = None;
            let mut mtu_changes = 0;
            let mut last_write = Instant::now();
            let mut since = chrono_now();
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                crate::metrics::observe_peer(&writer_name, &s);
                let key = (s.phase.clone(), s.remaps.clone(), s.tunnel_mtu);
                if last.as_ref().is_some_and(|l| l.0 != key.0) {
                    since = chrono_now();
                }
                if last.as_ref() != Some(&key) || last_write.elapsed() >= Duration::from_secs(5) {
                    status.write(&status_patch(&s, &since, &at)).await;
                    last = Some(key);
                    last_write = Instant::now();
                }
                if s.mtu_changes > mtu_changes
                    && let Ok(Some(pn)) = writer_api.get_opt(&writer_name).await
                    && let Some(ev) = mtu_event(mtu_changes, &s, pn.object_ref(&()), &instance, &chrono_now())
                {
                    mtu_changes = s.mtu_changes;
                    if let Err(e) = events.create(&Default::default(), &ev).await {
                        warn!(peer = writer_name, "event on PeerNetwork: {e}");
                    }
                }
            }
        });
        info!(peer = name, "starting the tunnel");
        let told = quiet.clone();
        let result = crate::gateway::run_until(
            cfg,
            async {
                let _ = stopped.await;
                // told to stop (stepping down, or the PeerNetwork changed): the teardown's statuses are
                // not the active gateway's to write
                told.store(true, Ordering::SeqCst);
            },
            Some(tx),
        )
        .await;
        writer.abort();
        crate::metrics::forget_peer(&name);
        match result {
            Ok(()) => info!(peer = name, "tunnel removed"),
            Err(e) => {
                warn!(peer = name, "tunnel failed: {e:#}");
                if !quiet.load(Ordering::SeqCst) {
                    patch_status(&api, &name, &invalid_patch(&format!("{e:#}"))).await;
                }
            }
        }
    });
    Running { spec, stop, task }
}

async fn stop(r: Running) {
    let _ = r.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), r.task).await;
}

/// How long after a tunnel failed (or ended) it is started again.
pub const RETRY: Duration = Duration::from_secs(10);

/// Runs every tunnel the cluster's `PeerNetwork`s ask for until SIGTERM/SIGINT; then removes them all.
/// Event-driven: PeerNetwork changes (watch), tunnels that end, and the retry time of failed ones.
pub async fn serve(
    client: Client,
    opts: ServeOptions,
    health: std::sync::Arc<ferry_plumbing::admin::Health>,
    role: std::sync::Arc<crate::election::Role>,
) -> Result<()> {
    crate::metrics::register_gateway();
    health.register("wireguard-key", "waiting for Secret ferry-system/ferry-wireguard");
    health.register("peernetworks", "not listed yet");
    let key = key_file(&client, &opts.state_dir).await?;
    health.set("wireguard-key", Ok(()));
    // with an election, tunnels run only while this replica holds the gateway Lease; a standby is ready
    // (key read, PeerNetworks watched) and takes over when the active's Lease expires
    let (active_tx, mut active) = tokio::sync::watch::channel(opts.election.is_none());
    let elector = opts.election.clone().map(|e| {
        info!(me = e.me, lease = e.lease, "gateway: electing the active replica");
        tokio::spawn(crate::election::run(client.clone(), e, role.clone(), active_tx))
    });
    let api: Api<PeerNetwork> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let mut events =
        std::pin::pin!(reflector(writer, watcher(api.clone(), watcher::Config::default())).default_backoff());
    let mut synced = false;
    let mut pruned = false;
    let mut shutdown = std::pin::pin!(crate::gateway::shutdown_signal());
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut failed: HashMap<String, (PeerNetworkSpec, Instant)> = HashMap::new();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<()>();
    loop {
        // a failed tunnel is tried again RETRY after it failed (unless its PeerNetwork changes first)
        let next_retry = failed.values().map(|(_, at)| *at + RETRY).min();
        let retry = async {
            match next_retry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            ev = events.next() => {
                match ev {
                    Some(Ok(watcher::Event::InitDone)) => {
                        synced = true;
                        health.set("peernetworks", Ok(()));
                    }
                    Some(Err(e)) => warn!("watching PeerNetworks: {e}"),
                    _ => {}
                }
            }
            _ = ended.recv() => {}
            _ = retry => {}
            _ = active.changed() => {}
        }
        if !synced {
            continue;
        }
        if !pruned {
            // the first full list: tunnels whose PeerNetwork went while no gateway ran are removed now
            pruned = true;
            // a standby keeps nothing: what a killed active left on this node goes too
            let live = if *active.borrow() {
                reader
                    .state()
                    .iter()
                    .map(|pn| pn.spec.cluster_id.clone())
                    .collect()
            } else {
                Default::default()
            };
            for (peer, path, ops) in crate::gateway::orphaned_journals(&opts.state_dir, &live) {
                match ops {
                    Some(ops) => {
                        info!(
                            peer,
                            "its PeerNetwork went while the gateway was down: removing its tunnel"
                        );
                        crate::apply::teardown(&ops);
                    }
                    None => warn!(
                        peer,
                        "unreadable teardown journal {}: removed, host state left",
                        path.display()
                    ),
                }
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(opts.state_dir.join(format!("{peer}.status.json")));
            }
        }
        let is_active = *active.borrow();
        let desired: HashMap<String, std::sync::Arc<PeerNetwork>> = reader
            .state()
            .into_iter()
            .filter(|pn| is_active && pn.metadata.deletion_timestamp.is_none())
            .map(|pn| (pn.name_any(), pn))
            .collect();
        // stop what is gone, changed, or ended by itself (it is restarted below, at most every 10 s)
        let stale: Vec<String> = running
            .iter()
            .filter(|(n, r)| desired.get(*n).map(|pn| &pn.spec) != Some(&r.spec) || r.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            if let Some(r) = running.remove(&n) {
                if r.task.is_finished() {
                    failed.insert(n.clone(), (r.spec.clone(), Instant::now()));
                } else {
                    info!(peer = n, "PeerNetwork deleted or changed: removing its tunnel");
                }
                stop(r).await;
            }
        }
        for (n, pn) in desired {
            if running.contains_key(&n) {
                continue;
            }
            let spec = pn.spec.clone();
            if let Some((s, at)) = failed.get(&n)
                && *s == spec
                && at.elapsed() < RETRY
            {
                continue;
            }
            match config_for(&spec, &opts, &key) {
                Ok(mut cfg) => {
                    failed.remove(&n);
                    if opts.election.is_some() {
                        take_over(&mut cfg, &pn);
                    }
                    let at = ActiveAt {
                        node: opts.node.clone(),
                        replica: opts.election.as_ref().map(|e| e.me.clone()),
                        since: role.since(),
                    };
                    running.insert(n.clone(), start(api.clone(), n, cfg, spec, ended_tx.clone(), at));
                }
                Err(e) => {
                    if failed.get(&n).map(|(s, _)| s) != Some(&spec) {
                        warn!(peer = n, "{e:#}");
                        patch_status(&api, &n, &invalid_patch(&format!("{e:#}"))).await;
                    }
                    failed.insert(n, (spec, Instant::now()));
                }
            }
        }
    }
    info!("shutting down: removing {} tunnel(s)", running.len());
    if let Some(e) = elector {
        e.abort();
    }
    for (_, r) in running.drain() {
        stop(r).await;
    }
    if let Some(e) = &opts.election
        && role.is_active()
    {
        crate::election::release(client, e).await;
    }
    Ok(())
}

/// A replica taking over a peering keeps what the peers and this cluster already see: the remaps the
/// previous active reported (written where [`GatewayConfig::prepare`] reads its stored remaps) and its
/// path MTU as the starting point.
fn take_over(cfg: &mut GatewayConfig, pn: &PeerNetwork) {
    if let Some(r) = crate::remaps::reported(pn) {
        let file = cfg.remaps_file();
        let text = serde_json::to_string_pretty(&r).expect("remaps serialise");
        if let Err(e) = std::fs::create_dir_all(&cfg.state_dir).and_then(|()| std::fs::write(&file, text)) {
            warn!(
                peer = cfg.peer,
                "keeping the reported remaps in {}: {e}",
                file.display()
            );
        }
    }
    cfg.path_mtu_hint = pn.status.as_ref().and_then(|s| s.path_mtu);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_patch_carries_the_version_and_keeps_the_body() {
        let body = json!({"status": {"gatewayNode": "real-node-1", "phase": "Connected"}});
        assert_eq!(fenced(&body, None), body);
        let f = fenced(&body, Some("42"));
        assert_eq!(f["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(f["status"], body["status"]);
    }

    /// The status writer against a mocked apiserver: the first write is unconditional, each later one
    /// names the version the last one produced; refused, it reads the object and tries once more.
    #[tokio::test]
    async fn status_writes_are_fenced_by_the_version_the_last_one_wrote_and_a_refused_one_rereads_once() {
        use ferry_plumbing::fixtures::{Expect, MockApi};
        const PATH: &str = "/apis/ferry.dev/v1alpha1/peernetworks/provider-c2";
        let pn = |rv: &str| {
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "PeerNetwork",
                   "metadata": {"name": "provider-c2", "resourceVersion": rv},
                   "spec": serde_json::to_value(spec()).unwrap()})
        };
        let status = format!("{PATH}/status");
        let (client, mock) = MockApi::new();
        let sent = mock.run(vec![
            Expect::ok("PATCH", &status, pn("5")),
            // someone wrote meanwhile (a late write of a deposed active, say): read again, write again
            Expect::status("PATCH", &status, 409, "Conflict"),
            Expect::ok("GET", PATH, pn("9")),
            Expect::ok("PATCH", &status, pn("10")),
            // refused twice: given up until the next status
            Expect::status("PATCH", &status, 409, "Conflict"),
            Expect::ok("GET", PATH, pn("11")),
            Expect::status("PATCH", &status, 409, "Conflict"),
            Expect::ok("PATCH", &status, pn("12")),
        ]);
        let mut w = StatusWriter {
            api: Api::all(client),
            name: "provider-c2".into(),
            rv: None,
            me: Some("real-node-1_7-0000abcd".into()),
            quiet: Default::default(),
        };
        let body = json!({"status": {"phase": "Connected"}});
        for _ in 0..4 {
            w.write(&body).await;
        }
        let sent = sent.await.unwrap();
        let versions: Vec<Option<&str>> = sent
            .iter()
            .filter(|s| s.method == "PATCH")
            .map(|s| s.body["metadata"]["resourceVersion"].as_str())
            .collect();
        assert_eq!(
            versions,
            [None, Some("5"), Some("9"), Some("10"), Some("11"), Some("11")]
        );
        assert!(
            sent.iter()
                .all(|s| s.method != "PATCH" || s.body["status"] == body["status"])
        );
        assert_eq!(w.rv.as_deref(), Some("12"));
    }

    /// A refused writer whose re-read names another active replica writes no more (it was deposed: its
    /// write would name it again); one whose tunnel is being stopped writes nothing at all.
    #[tokio::test]
    async fn a_deposed_or_stopping_writer_leaves_the_status_to_the_active_replica() {
        use ferry_plumbing::fixtures::{Expect, MockApi};
        const PATH: &str = "/apis/ferry.dev/v1alpha1/peernetworks/provider-c2";
        let status = format!("{PATH}/status");
        let (client, mock) = MockApi::new();
        let taken_over = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "PeerNetwork",
            "metadata": {"name": "provider-c2", "resourceVersion": "9"},
            "spec": serde_json::to_value(spec()).unwrap(),
            "status": {"gatewayReplica": "real-node-2_8-0000beef"}});
        let sent = mock.run_exactly(vec![
            Expect::status("PATCH", &status, 409, "Conflict"),
            Expect::ok("GET", PATH, taken_over.clone()),
        ]);
        let quiet = Arc::new(AtomicBool::new(false));
        let mut w = StatusWriter {
            api: Api::all(client),
            name: "provider-c2".into(),
            rv: Some("5".into()),
            me: Some("real-node-1_7-0000abcd".into()),
            quiet: quiet.clone(),
        };
        w.write(&json!({"status": {"phase": "NotConnected"}})).await;
        quiet.store(true, Ordering::SeqCst);
        w.write(&json!({"status": {"phase": "NotConnected"}})).await;
        drop(w);
        let sent = sent.await.unwrap();
        let methods: Vec<&str> = sent.iter().map(|s| s.method.as_str()).collect();
        assert_eq!(
            methods,
            ["PATCH", "GET"],
            "no write after the re-read, none once quiet"
        );
        // the rule itself
        let pn: PeerNetwork = serde_json::from_value(taken_over).unwrap();
        assert!(deposed(&pn, Some("real-node-1_7-0000abcd")));
        assert!(!deposed(&pn, Some("real-node-2_8-0000beef")));
        assert!(!deposed(&pn, None), "no election: nobody to defer to");
        let unnamed: PeerNetwork = serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": serde_json::to_value(spec()).unwrap()}))
        .unwrap();
        assert!(!deposed(&unnamed, Some("real-node-1_7-0000abcd")));
    }

    fn spec() -> PeerNetworkSpec {
        PeerNetworkSpec {
            cluster_id: "provider-c2".into(),
            local_cidrs: vec!["10.244.0.0/16".into(), "10.96.0.0/16".into()],
            remote_cidrs: vec!["10.244.0.0/16".into(), "10.97.0.0/16".into()],
            peer_public_key: "KEY".into(),
            peer_endpoint: Some("198.18.2.2:51822".into()),
            underlay_mtu: None,
            tunnel_address: Some("169.254.64.6/30".into()),
            peer_tunnel_address: Some("169.254.64.5".into()),
            listen_port: Some(51822),
            peer_standby_endpoints: vec![],
        }
    }

    fn opts() -> ServeOptions {
        ServeOptions {
            state_dir: "/var/lib/ferry".into(),
            underlay_cidrs: vec!["198.18.1.0/24".into()],
            remap_pool: vec![],
            metrics_addr: Some("127.0.0.1:9470".parse().unwrap()),
            node: None,
            election: None,
        }
    }

    #[test]
    fn a_peer_network_becomes_a_gateway_config_with_a_port_and_metrics_port_per_link() {
        let c = config_for(&spec(), &opts(), "/k").unwrap();
        assert_eq!(c.peer, "provider-c2");
        assert_eq!(c.listen_port, 51822);
        assert_eq!(c.peer_endpoint, Some("198.18.2.2:51822".parse().unwrap()));
        assert_eq!(c.local_tunnel_addr, "169.254.64.6/30");
        assert_eq!(c.remote_tunnel_addr, "169.254.64.5".parse::<IpAddr>().unwrap());
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9471".parse().unwrap()));
        assert_eq!(c.interface(), "fyprovider-c2");
        // and it plans: the overlapping 10.244/16 is remapped
        let p = c.prepare(1500).unwrap();
        assert_ne!(
            p.spec.remaps[&"10.244.0.0/16".parse().unwrap()].to_string(),
            "10.244.0.0/16"
        );
    }

    #[test]
    fn unusable_specs_name_the_field_and_the_fix() {
        let mut s = spec();
        s.tunnel_address = None;
        let e = config_for(&s, &opts(), "/k").unwrap_err().to_string();
        assert!(
            e.contains("spec.tunnelAddress is missing") && e.contains("fix: peer again"),
            "{e}"
        );
        let mut s = spec();
        s.tunnel_address = Some("10.0.0.1/30".into());
        let e = config_for(&s, &opts(), "/k").unwrap_err().to_string();
        assert!(e.contains("outside 169.254.64.0/18"), "{e}");
        let mut s = spec();
        s.peer_endpoint = Some("gw.example:51820".into());
        let e = config_for(&s, &opts(), "/k").unwrap_err().to_string();
        assert!(
            e.contains("spec.peerEndpoint") && e.contains("--gateway-endpoint"),
            "{e}"
        );
        let mut s = spec();
        s.listen_port = None;
        assert!(
            config_for(&s, &opts(), "/k")
                .unwrap_err()
                .to_string()
                .contains("spec.listenPort")
        );
        let mut s = spec();
        s.peer_endpoint = None;
        assert_eq!(config_for(&s, &opts(), "/k").unwrap().peer_endpoint, None);
        let mut s = spec();
        s.peer_standby_endpoints = vec!["198.18.2.3:51822".into()];
        let c = config_for(&s, &opts(), "/k").unwrap();
        assert_eq!(
            c.dial_endpoints(),
            [
                "198.18.2.2:51822".parse().unwrap(),
                "198.18.2.3:51822".parse().unwrap()
            ]
        );
        s.peer_standby_endpoints = vec!["gw2.example:51822".into()];
        let e = config_for(&s, &opts(), "/k").unwrap_err().to_string();
        assert!(
            e.contains("spec.peerStandbyEndpoints") && e.contains("--standby-gateway-endpoint"),
            "{e}"
        );
    }

    #[test]
    fn the_status_patch_carries_phase_remaps_and_counters() {
        let s = GatewayStatus {
            connected: true,
            phase: "Connected".into(),
            latency_ms: Some(1.23456),
            path_mtu: 1500,
            tunnel_mtu: 1440,
            remaps: [("10.244.0.0/16".to_string(), "10.0.0.0/16".to_string())].into(),
            rx_bytes: 7,
            tx_bytes: 9,
            backend: "userspace".into(),
            diagnostics: ferry_crds::PeerNetworkDiagnostics {
                handshake_age_seconds: Some(40),
                loss_percent: Some(100.0 / 3.0),
                rules_removed: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let at = ActiveAt {
            node: Some(("real-node-1".to_string(), "198.19.247.10".parse().unwrap())),
            replica: Some("real-node-1_77-0000abcd".into()),
            since: Some("2026-11-28T03:59:00.000Z".into()),
        };
        let p = status_patch(&s, "2026-11-28T04:00:00Z", &at);
        assert_eq!(p["status"]["gatewayReplica"], "real-node-1_77-0000abcd");
        assert_eq!(p["status"]["gatewayActiveSince"], "2026-11-28T03:59:00.000Z");
        assert_eq!(p["status"]["gatewayNode"], "real-node-1");
        assert_eq!(p["status"]["gatewayNodeIP"], "198.19.247.10");
        assert_eq!(p["status"]["phase"], "Connected");
        assert_eq!(p["status"]["remaps"]["10.244.0.0/16"], "10.0.0.0/16");
        assert_eq!(p["status"]["latencyMs"], 1.23);
        assert_eq!(p["status"]["tunnelMTU"], 1440);
        assert_eq!(p["status"]["conditions"][0]["status"], "True");
        // the transition time is the last change of phase, not the time of this write
        assert_eq!(
            p["status"]["conditions"][0]["lastTransitionTime"],
            "2026-11-28T04:00:00Z"
        );
        let st: ferry_crds::PeerNetworkStatus = serde_json::from_value(p["status"].clone()).unwrap();
        assert_eq!((st.tx_bytes, st.mtu_changes, st.last_mtu_change), (9, 0, None));
        // the diagnostics: measured facts, rounded loss, and null for what was not measured (merge patch)
        let d = &p["status"]["diagnostics"];
        assert_eq!(d["handshakeAgeSeconds"], 40);
        assert_eq!(d["lossPercent"], 33.3);
        assert_eq!(d["rulesRemoved"], 2);
        assert!(d["dfProbe"].is_null() && d["conntrackMax"].is_null(), "{d}");
        let d = st.diagnostics.unwrap();
        assert_eq!((d.rules_removed, d.df_probe), (2, None));
    }

    #[test]
    fn each_path_mtu_change_is_one_event_and_reaches_the_status() {
        let about = ObjectReference {
            api_version: Some("ferry.dev/v1alpha1".into()),
            kind: Some("PeerNetwork".into()),
            name: Some("provider-c2".into()),
            ..Default::default()
        };
        let ev = |seen, s: &GatewayStatus| {
            mtu_event(seen, s, about.clone(), "real-node-1", "2026-12-05T06:00:00Z")
        };
        let mut s = GatewayStatus {
            path_mtu: 1500,
            tunnel_mtu: 1440,
            ..Default::default()
        };
        assert!(ev(0, &s).is_none(), "no change, no event");
        s.path_mtu = 1400;
        s.tunnel_mtu = 1340;
        s.mtu_changes = 1;
        s.last_mtu_change =
            Some("path MTU 1500 -> 1400, tunnel MTU 1440 -> 1340 at 2026-12-05T06:00:00Z".into());
        let e = ev(0, &s).expect("an event");
        assert_eq!(e.reason.as_deref(), Some("PathMTUChanged"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.metadata.generate_name.as_deref(), Some("provider-c2.pmtu."));
        assert_eq!(e.involved_object.name.as_deref(), Some("provider-c2"));
        assert_eq!(e.involved_object.namespace, None, "a cluster-scoped object");
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .starts_with("path MTU 1500 -> 1400, tunnel MTU 1440 -> 1340")
        );
        assert!(ev(1, &s).is_none(), "already told");
        let p = status_patch(&s, "2026-12-05T06:00:00Z", &ActiveAt::default());
        let st: ferry_crds::PeerNetworkStatus = serde_json::from_value(p["status"].clone()).unwrap();
        assert_eq!(
            (st.path_mtu, st.tunnel_mtu, st.mtu_changes),
            (Some(1400), Some(1340), 1)
        );
        assert_eq!(st.last_mtu_change, s.last_mtu_change);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = chrono_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
