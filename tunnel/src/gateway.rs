//! `ferry-gateway`: one peering's tunnel end. Reads a [`GatewayConfig`], picks remaps ([`crate::ipam`]),
//! finds the path MTU ([`crate::probe`]), computes tunnel MTU and MSS ([`crate::mtu`]), plans
//! ([`crate::plan`]) and applies ([`crate::apply`]); then watches: heartbeats inside the tunnel every
//! 500 ms (down after 3 misses), rules checked every 2 s and re-applied when removed, status written as JSON.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::apply::{self, WgSettings};
use crate::health::{Effect, Health, Observed, step};
use crate::ipam;
use crate::mtu::{Encap, MtuPlan};
use crate::plan::GatewaySpec;

/// The gateway's configuration for one peering (what a `PeerNetwork` carries).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Peer cluster ID.
    pub peer: String,
    /// Tunnel interface; default `fy` + peer (at most 15 characters).
    #[serde(default)]
    pub interface: Option<String>,
    /// Local pod and service CIDRs (never used as remaps).
    pub local_cidrs: Vec<String>,
    /// Underlay networks (never used as remaps).
    #[serde(default)]
    pub underlay_cidrs: Vec<String>,
    /// The peer's pod and service CIDRs.
    pub remote_cidrs: Vec<String>,
    /// Where remaps come from (default: RFC 1918 and ferry's ULA /48).
    #[serde(default)]
    pub remap_pool: Vec<String>,
    /// Private key file (base64).
    pub private_key_file: String,
    /// WireGuard UDP port.
    pub listen_port: u16,
    /// Peer public key (base64).
    pub peer_public_key: String,
    /// Peer's WireGuard endpoint; absent on the side that waits (the provider, by default).
    #[serde(default)]
    pub peer_endpoint: Option<SocketAddr>,
    /// The peer's standby gateway replicas' endpoints: dialled in turn after `peerEndpoint` while the
    /// peer does not answer ([`crate::health::redial`]).
    #[serde(default)]
    pub peer_standby_endpoints: Vec<SocketAddr>,
    /// The peer's underlay address for probes (default: the endpoint's address).
    #[serde(default)]
    pub peer_underlay: Option<IpAddr>,
    /// This side's tunnel address with prefix, e.g. `169.254.77.1/30`.
    pub local_tunnel_addr: String,
    /// The peer's tunnel address.
    pub remote_tunnel_addr: IpAddr,
    /// Underlay path MTU; absent: probed (DF probes to the peer, no reliance on ICMP).
    #[serde(default)]
    pub underlay_mtu: Option<u32>,
    /// Force the tunnel MTU (testing only: e.g. 1500 to reproduce a blackhole).
    #[serde(default)]
    pub tunnel_mtu_override: Option<u32>,
    /// Clamp TCP MSS (default on).
    #[serde(default = "yes")]
    pub mss_clamp: bool,
    /// UDP port of this side's underlay probe responder; default listen port + 1. The peer's responder
    /// is probed at its endpoint's port + 1 (the two sides' ports differ when either is forwarded).
    #[serde(default)]
    pub probe_port: Option<u16>,
    /// Directory for remaps (kept across restarts) and status.
    pub state_dir: PathBuf,
    /// Where `/metrics` and `/health` are served (e.g. `127.0.0.1:9470`); absent: not served.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// The path MTU another replica last found on this peering: a replica taking over starts with it
    /// instead of a first search, and follows the path from there like any other (a wrong hint is
    /// caught by the first confirmations).
    #[serde(default)]
    pub path_mtu_hint: Option<u32>,
}

fn yes() -> bool {
    true
}

pub use crate::health::GatewayStatus;

const JOURNAL_SUFFIX: &str = ".teardown.json";

/// Host state left by peerings that are gone: for each teardown journal in `state_dir` whose peer is not
/// in `live` (a gateway killed, then its `PeerNetwork` deleted while it was down), the peer and the ops
/// that remove its interface, table and rules. A journal that does not parse is reported with no ops.
pub fn orphaned_journals(
    state_dir: &std::path::Path,
    live: &std::collections::HashSet<String>,
) -> Vec<(String, PathBuf, Option<Vec<crate::plan::Op>>)> {
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let peer = name.strip_suffix(JOURNAL_SUFFIX)?.to_string();
            if live.contains(&peer) {
                return None;
            }
            let ops = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            Some((peer, e.path(), ops))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The ranges the other peers' tunnels route (each remote CIDR as this cluster sees it, remapped or not),
/// from their stored remaps in `state_dir`.
pub fn routed_by_other_peers(state_dir: &std::path::Path, peer: &str) -> Vec<IpNet> {
    let own = format!("{peer}.remaps.json");
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.ends_with(".remaps.json") && n != own
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<BTreeMap<IpNet, IpNet>>(&t).ok())
        .flat_map(|m| m.into_values())
        .collect()
}

fn parse_cidrs(field: &str, list: &[String]) -> Result<Vec<IpNet>> {
    list.iter()
        .map(|s| {
            let n: IpNet = s.parse().map_err(|e| {
                invalid!("{field}: {s:?} is not a CIDR ({e}); fix: write a prefix such as 10.244.0.0/16")
            })?;
            if n.trunc() != n {
                bail!("{field}: {s:?} has host bits set; fix: use {}", n.trunc());
            }
            Ok(n)
        })
        .collect()
}

/// The validated, planned peering: everything decided before anything is applied.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The spec handed to the planner.
    pub spec: GatewaySpec,
    /// Path MTU used.
    pub path_mtu: u32,
}

impl GatewayConfig {
    /// The interface name.
    pub fn interface(&self) -> String {
        self.interface
            .clone()
            .unwrap_or_else(|| format!("fy{}", self.peer).chars().take(15).collect())
    }

    /// Where this peering's remaps are kept across restarts.
    pub fn remaps_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.remaps.json", self.peer))
    }

    /// Where status is written.
    pub fn status_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}.status.json", self.peer))
    }

    fn probe_port(&self) -> u16 {
        self.probe_port.unwrap_or(self.listen_port + 1)
    }

    /// Where the peer's underlay probe responder listens: its endpoint's port + 1 (as [`Self::probe_port`]
    /// on its side), or the configured port where the peer has no endpoint here.
    fn peer_probe_port(&self) -> u16 {
        match (self.probe_port, self.peer_endpoint) {
            (Some(p), _) => p,
            (None, Some(e)) => e.port().saturating_add(1),
            (None, None) => self.probe_port(),
        }
    }

    /// Where the probes for `endpoint` go (its underlay responder): the configured underlay address and
    /// probe port for the configured endpoint, else the endpoint's address and port + 1.
    fn probe_target(&self, endpoint: SocketAddr) -> SocketAddr {
        let ip = match self.peer_underlay {
            Some(u) if Some(endpoint) == self.peer_endpoint => u,
            _ => endpoint.ip(),
        };
        let port = self.probe_port.unwrap_or(endpoint.port().saturating_add(1));
        SocketAddr::new(ip, port)
    }

    fn peer_underlay(&self) -> Option<IpAddr> {
        self.peer_underlay.or(self.peer_endpoint.map(|e| e.ip()))
    }

    /// Validates and decides everything except the path MTU: remaps (stable), spec with a given MTU.
    pub fn prepare(&self, path_mtu: u32) -> Result<Prepared> {
        let local = parse_cidrs("localCidrs", &self.local_cidrs)?;
        let underlay = parse_cidrs("underlayCidrs", &self.underlay_cidrs)?;
        let remote = parse_cidrs("remoteCidrs", &self.remote_cidrs)?;
        let mut pool = parse_cidrs("remapPool", &self.remap_pool)?;
        if pool.is_empty() {
            pool = ipam::default_pool_v4()
                .into_iter()
                .chain(ipam::default_pool_v6())
                .collect();
        }
        let local_tunnel: IpNet = self.local_tunnel_addr.parse().map_err(|e| {
            invalid!(
                "localTunnelAddr: {:?} is not an address with prefix ({e}); fix: e.g. 169.254.77.1/30",
                self.local_tunnel_addr
            )
        })?;
        let stored: BTreeMap<IpNet, IpNet> = std::fs::read_to_string(self.remaps_file())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        // other peers' routed ranges are taken too: a peer that announces another peer's CIDR gets a remap,
        // never a route that would pull the other peer's traffic into its own tunnel
        let reserved: Vec<IpNet> = local
            .iter()
            .chain(&underlay)
            .copied()
            .chain([local_tunnel.trunc()])
            .chain(routed_by_other_peers(&self.state_dir, &self.peer))
            .collect();
        let remaps = ipam::plan_remaps(&remote, &reserved, &stored, &pool)?;
        let outer_v6 = self.peer_underlay().is_some_and(|a| a.is_ipv6());
        let inner_v6 = remote.iter().any(|n| n.addr().is_ipv6());
        let tunnel_mtu = match self.tunnel_mtu_override {
            Some(m) => m,
            None => {
                MtuPlan::compute(path_mtu, &[Encap::WireGuard], outer_v6, inner_v6)
                    .map_err(|e| invalid!("path MTU {path_mtu} to peer {}: {e}", self.peer))?
                    .mtu
            }
        };
        let spec = GatewaySpec {
            interface: self.interface(),
            tunnel_mtu,
            mss_clamp: self.mss_clamp,
            local_tunnel_addr: local_tunnel,
            remote_tunnel_addr: self.remote_tunnel_addr,
            remaps,
        };
        spec.plan()?;
        Ok(Prepared { spec, path_mtu })
    }

    /// Where the teardown of this peering's host state is journalled while it exists.
    pub fn journal_file(&self) -> PathBuf {
        self.state_dir.join(format!("{}{JOURNAL_SUFFIX}", self.peer))
    }

    fn write_journal(&self, ops: &[crate::plan::Op]) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let text = serde_json::to_string_pretty(ops).expect("ops serialise");
        std::fs::write(self.journal_file(), text)
            .with_context(|| format!("writing {}", self.journal_file().display()))
    }

    fn save_remaps(&self, spec: &GatewaySpec) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        let text = serde_json::to_string_pretty(&spec.remaps).expect("remaps serialise");
        std::fs::write(self.remaps_file(), text)
            .with_context(|| format!("writing {}", self.remaps_file().display()))?;
        Ok(())
    }

    /// The local link MTU towards the peer's underlay address.
    fn local_mtu(&self) -> u32 {
        let Some(peer) = self.peer_underlay() else {
            return 1500;
        };
        let out = Command::new("ip")
            .args(["route", "get", &peer.to_string()])
            .output();
        let dev = out
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| {
                s.split_whitespace()
                    .skip_while(|w| *w != "dev")
                    .nth(1)
                    .map(str::to_string)
            });
        dev.and_then(|d| std::fs::read_to_string(format!("/sys/class/net/{d}/mtu")).ok())
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1500)
    }

    /// Where path MTU probes go and the sizes they may take (`lo` the family's minimum, `hi` the local
    /// link's MTU); `None` when the peer's underlay address is not known here.
    fn probe_range(&self) -> Option<(SocketAddr, u32, u32)> {
        let peer = self.peer_underlay()?;
        let lo = if peer.is_ipv6() {
            crate::mtu::IPV6_MIN_MTU
        } else {
            crate::mtu::IPV4_MIN_MTU
        };
        Some((
            SocketAddr::new(peer, self.peer_probe_port()),
            lo,
            self.local_mtu(),
        ))
    }

    /// Whether the path MTU keeps being probed while the tunnel is up: not when it is configured (an
    /// underlay MTU, or a forced tunnel MTU), nor when the peer's address is unknown here.
    pub fn follows_path_mtu(&self) -> bool {
        self.underlay_mtu.is_none() && self.tunnel_mtu_override.is_none() && self.peer_underlay().is_some()
    }

    /// The underlay path MTU: configured, or probed (retrying for up to `wait`), or the local link MTU.
    pub async fn discover_path_mtu(&self, wait: Duration) -> u32 {
        if let Some(m) = self.underlay_mtu {
            return m;
        }
        let Some((target, lo, local)) = self.probe_range() else {
            return self.local_mtu();
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match crate::probe::path_mtu(target, lo, local).await {
                Ok(Some(m)) => return m,
                Ok(None) => tokio::time::sleep(Duration::from_millis(300)).await,
                Err(e) => {
                    warn!("path MTU probe to {target}: {e}");
                    break;
                }
            }
        }
        warn!("no answer to path MTU probes from {target}; using the local link MTU {local}");
        local
    }
}

impl GatewayConfig {
    /// The peer's endpoints this side dials, in order (none when it only waits to be dialled).
    pub fn dial_endpoints(&self) -> Vec<SocketAddr> {
        self.peer_endpoint
            .into_iter()
            .chain(self.peer_standby_endpoints.iter().copied())
            .collect()
    }

    /// WireGuard's settings for `spec`, dialling `endpoint`.
    fn wg_settings(&self, spec: &GatewaySpec, endpoint: Option<SocketAddr>) -> WgSettings {
        WgSettings {
            private_key_file: self.private_key_file.clone(),
            listen_port: self.listen_port,
            peer_public_key: self.peer_public_key.clone(),
            peer_endpoint: endpoint,
            allowed_ips: spec
                .remaps
                .keys()
                .map(|n| n.to_string())
                .chain([IpNet::from(spec.remote_tunnel_addr).to_string()])
                .collect(),
        }
    }
}

/// Applies a prepared peering: interface, WireGuard, plan. Undoes everything if any step fails.
pub fn bring_up(cfg: &GatewayConfig, p: &Prepared) -> Result<apply::Backend> {
    let plan = p.spec.plan()?;
    // the teardown is journalled before the host is touched: a gateway killed at any point leaves what
    // removes its state, for the next start to carry out if the peering is gone by then
    cfg.write_journal(&plan.teardown)?;
    let result = (|| {
        let backend = apply::create_interface(&p.spec.interface)?;
        apply::configure_wireguard(&p.spec.interface, &cfg.wg_settings(&p.spec, cfg.peer_endpoint))?;
        apply::apply(&plan)?;
        cfg.save_remaps(&p.spec)?;
        Ok(backend)
    })();
    if result.is_err() {
        apply::undo(&p.spec);
    }
    result
}

/// Runs a peering until SIGTERM/SIGINT, then removes everything it made.
pub async fn run(cfg: GatewayConfig) -> Result<()> {
    run_until(cfg, shutdown_signal(), None).await
}

/// Resolves at SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs a peering until `stop` resolves, then removes everything it made. Each status (every 500 ms) is
/// written to the status file and, if given, sent on `report`.
pub async fn run_until(
    cfg: GatewayConfig,
    stop: impl std::future::Future<Output = ()>,
    report: Option<tokio::sync::watch::Sender<GatewayStatus>>,
) -> Result<()> {
    // everything is validated before the host is touched (a bad CIDR, pool or MTU fails here)
    cfg.prepare(cfg.underlay_mtu.unwrap_or(1500))?;
    let probe_port = cfg.probe_port();
    let underlay_bind = SocketAddr::new("::".parse().expect("literal"), probe_port);
    let responder = tokio::spawn(crate::probe::respond(underlay_bind));
    let path_mtu = match cfg.path_mtu_hint.filter(|_| cfg.follows_path_mtu()) {
        Some(hint) => hint,
        None => cfg.discover_path_mtu(Duration::from_secs(10)).await,
    };
    let prepared = cfg.prepare(path_mtu)?;
    let backend = bring_up(&cfg, &prepared)?;
    let spec = prepared.spec.clone();
    info!(
        interface = spec.interface,
        path_mtu,
        tunnel_mtu = spec.tunnel_mtu,
        ?backend,
        "tunnel up"
    );
    let status = GatewayStatus {
        path_mtu,
        tunnel_mtu: spec.tunnel_mtu,
        mss_clamp: spec.mss_clamp,
        remaps: spec
            .remaps
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        backend: format!("{backend:?}").to_lowercase(),
        phase: "NotConnected".into(),
        ..Default::default()
    };
    let result = watch(&cfg, &spec, status, stop, report).await;
    responder.abort();
    apply::undo(&spec);
    let _ = std::fs::remove_file(cfg.status_file());
    let _ = std::fs::remove_file(cfg.journal_file());
    info!(interface = spec.interface, "tunnel removed");
    result
}

/// Reads WireGuard's state and checks the rules, conntrack and the port range, off the async threads and
/// bounded: a WireGuard device that does not answer its UAPI must not stall the heartbeats or SIGTERM
/// handling. While the tunnel is connected (`probe`), DF probes go through it at the same time.
async fn check_host(spec: &GatewaySpec, probe: bool) -> Observed {
    let (dev, s2) = (spec.interface.clone(), spec.clone());
    let blocking = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::task::spawn_blocking(move || {
            (
                apply::wg_state(&dev),
                apply::intact(&s2),
                apply::conntrack(),
                apply::ephemeral_ports(),
            )
        }),
    );
    let probes = async {
        match probe {
            true => df_probe(spec).await,
            false => None,
        }
    };
    let (checked, df_probe) = tokio::join!(blocking, probes);
    match checked {
        Ok(Ok((wg, intact, conntrack, ephemeral_ports))) => Observed::HostCheck {
            counters: wg.as_ref().map(|w| (w.rx, w.tx)),
            intact,
            facts: crate::health::HostFacts {
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                handshake_age: wg.as_ref().and_then(|w| w.handshake_age),
                df_probe,
                conntrack,
                ephemeral_ports,
                public_key: wg.and_then(|w| w.public_key),
            },
        },
        _ => Observed::HostCheckTimedOut,
    }
}

/// DF probes through the tunnel to the peer's responder: one at the tunnel MTU (tried twice, so that one
/// lost packet is not taken for a blackhole) and one at 1280 bytes.
async fn df_probe(spec: &GatewaySpec) -> Option<ferry_crds::DfProbe> {
    let peer = SocketAddr::new(spec.remote_tunnel_addr, crate::probe::TUNNEL_PROBE_PORT);
    let sock = crate::probe::mtu_socket(peer).await.ok()?;
    let floor = spec.tunnel_mtu.min(1280);
    let mut mtu_answered = false;
    for _ in 0..2 {
        mtu_answered = crate::probe::mtu_probe(&sock, peer, spec.tunnel_mtu).await;
        if mtu_answered {
            break;
        }
    }
    Some(ferry_crds::DfProbe {
        mtu_bytes: spec.tunnel_mtu,
        mtu_answered,
        floor_bytes: floor,
        floor_answered: crate::probe::mtu_probe(&sock, peer, floor).await,
    })
}

async fn watch(
    cfg: &GatewayConfig,
    spec: &GatewaySpec,
    status: GatewayStatus,
    stop: impl std::future::Future<Output = ()>,
    report: Option<tokio::sync::watch::Sender<GatewayStatus>>,
) -> Result<()> {
    let mut stop = std::pin::pin!(stop);
    let local_tunnel_ip = spec.local_tunnel_addr.addr();
    let tunnel_responder = tokio::spawn(crate::probe::respond(SocketAddr::new(
        local_tunnel_ip,
        crate::probe::TUNNEL_PROBE_PORT,
    )));
    let metrics = std::sync::Arc::new(crate::metrics::GatewayMetrics::new());
    let metrics_server = match cfg.metrics_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metricsAddr {addr}"))?;
            Some(tokio::spawn(crate::metrics::serve(l, metrics.clone())))
        }
        None => None,
    };
    let hb_sock = tokio::net::UdpSocket::bind(SocketAddr::new(local_tunnel_ip, 0))
        .await
        .with_context(|| format!("binding the heartbeat socket on {local_tunnel_ip}"))?;
    let peer = SocketAddr::new(spec.remote_tunnel_addr, crate::probe::TUNNEL_PROBE_PORT);
    let up = Instant::now();
    let mut spec = spec.clone();
    let (pmtu_tx, mut pmtu_rx) = tokio::sync::mpsc::channel::<(u32, u32)>(4);
    // the path MTU is followed to the endpoint dialled now (the seeker moves it)
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let pmtud = match (cfg.follows_path_mtu(), cfg.probe_range()) {
        (true, Some((target, lo, hi))) => {
            target_tx.send_replace(Some(target));
            Some(tokio::spawn(follow_path_mtu(
                target_rx,
                crate::pmtud::Pmtud::confirmed(lo, hi, status.path_mtu),
                pmtu_tx,
            )))
        }
        _ => None,
    };
    let mut health = Health {
        status,
        ..Default::default()
    };
    let mut tick = tokio::time::interval(crate::health::HEARTBEAT);
    // looking for the peer's active gateway runs beside the heartbeats, which wait for their answers
    let (answered_tx, answered_rx) = tokio::sync::watch::channel(None);
    let endpoints = cfg.dial_endpoints();
    let seeker = (!endpoints.is_empty()).then(|| {
        let settings = cfg.wg_settings(&spec, None);
        let targets = endpoints.iter().map(|e| cfg.probe_target(*e)).collect();
        tokio::spawn(seek_peer(
            cfg.peer.clone(),
            spec.interface.clone(),
            settings,
            (endpoints, targets),
            up,
            answered_rx,
            target_tx,
        ))
    });
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some((from, to)) = pmtu_rx.recv() => {
                match cfg.prepare(to) {
                    Ok(p) => {
                        let old_tunnel = spec.tunnel_mtu;
                        // the whole plan again: interface MTU, and the MSS clamp in the atomically replaced table
                        apply::apply(&p.spec.plan()?)?;
                        spec = p.spec;
                        let s = &mut health.status;
                        s.path_mtu = to;
                        s.tunnel_mtu = spec.tunnel_mtu;
                        s.mtu_changes += 1;
                        let change = format!(
                            "path MTU {from} -> {to}, tunnel MTU {old_tunnel} -> {} at {}",
                            spec.tunnel_mtu,
                            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        );
                        info!(peer = cfg.peer, interface = spec.interface, "path MTU changed: {change}");
                        s.last_mtu_change = Some(change);
                        report_status(cfg, &health.status, &metrics, report.as_ref())?;
                    }
                    Err(e) => warn!(peer = cfg.peer, "path MTU now {to} (was {from}), kept tunnel MTU {}: {e}", spec.tunnel_mtu),
                }
            }
            _ = tick.tick() => {
                let rtt = crate::probe::heartbeat(&hb_sock, peer, Duration::from_millis(450)).await;
                let (h, effects) = step(health, Observed::Heartbeat { now: up.elapsed(), rtt });
                health = h;
                answered_tx.send_replace(health.last_ok);
                for effect in effects {
                    match effect {
                        Effect::Changed { connected } => info!(peer = cfg.peer, connected, "tunnel health changed"),
                        Effect::CheckHost => {
                            let observed = check_host(&spec, health.status.connected).await;
                            let (h, more) = step(health, observed);
                            health = h;
                            for e in more {
                                match e {
                                    Effect::Reapply => {
                                        warn!(table = spec.nft_table(), "rules removed by someone else; re-applying");
                                        apply::apply(&spec.plan()?)?;
                                    }
                                    Effect::CheckStuck => warn!(
                                        interface = spec.interface,
                                        "WireGuard counters / rule check did not answer within 1 s"
                                    ),
                                    _ => {}
                                }
                            }
                        }
                        Effect::Report => report_status(cfg, &health.status, &metrics, report.as_ref())?,
                        Effect::Reapply | Effect::CheckStuck => {}
                    }
                }
            }
        }
    }
    tunnel_responder.abort();
    if let Some(t) = seeker {
        t.abort();
    }
    if let Some(t) = pmtud {
        t.abort();
    }
    if let Some(m) = metrics_server {
        m.abort();
    }
    Ok(())
}

/// While the tunnel is silent ([`crate::health::seeking`]), every [`crate::health::SEEK_EVERY`]: probes the
/// peer's endpoints and dials the one whose responder answers ([`crate::health::redial`]) with a fresh
/// handshake. `last_ok`: when the tunnel last answered (time since `up`), from the heartbeats. Each
/// endpoint comes with its responder's address (`targets`); the one dialled is sent on `dialled_target`
/// (the path MTU follower probes it).
async fn seek_peer(
    peer: String,
    interface: String,
    mut settings: WgSettings,
    (endpoints, targets): (Vec<SocketAddr>, Vec<SocketAddr>),
    up: Instant,
    last_ok: tokio::sync::watch::Receiver<Option<Duration>>,
    dialled_target: tokio::sync::watch::Sender<Option<SocketAddr>>,
) {
    let mut seek = tokio::time::interval(crate::health::SEEK_EVERY);
    seek.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut dialled, mut last_redial) = (0usize, None);
    let mut rx_seen = None;
    loop {
        seek.tick().await;
        let now = up.elapsed();
        let ok = *last_ok.borrow();
        if !crate::health::seeking(ok, last_redial, now) {
            rx_seen = None;
            continue;
        }
        // no re-dial while bytes still arrive: see health::still_hearing
        let iface = interface.clone();
        let rx = tokio::task::spawn_blocking(move || apply::wg_state(&iface).map(|w| w.rx))
            .await
            .ok()
            .flatten();
        let hearing = crate::health::still_hearing(rx_seen, rx);
        rx_seen = rx;
        if hearing {
            continue;
        }
        let answered = answering(&targets).await;
        let Some(next) = crate::health::redial(&answered, dialled) else {
            continue;
        };
        // logged once per silence, or when it moves to another endpoint
        if next != dialled || last_redial.is_none_or(|r| ok.is_some_and(|o| o > r)) {
            info!(peer, endpoint = %endpoints[next], "no answer through the tunnel for {:?}: dialling the peer's active gateway", crate::health::REDIAL_AFTER);
        }
        settings.peer_endpoint = Some(endpoints[next]);
        if let Err(e) = apply::configure_wireguard(&interface, &settings) {
            warn!(peer, "dialling {}: {e}", endpoints[next]);
        }
        if next != dialled {
            dialled_target.send_if_modified(|t| {
                // only where the path MTU is followed at all
                let moved = t.is_some() && *t != Some(targets[next]);
                if moved {
                    *t = Some(targets[next]);
                }
                moved
            });
        }
        dialled = next;
        last_redial = Some(up.elapsed());
    }
}

/// Which of the peer's endpoints answer at their underlay responders (`targets`) within 150 ms, probed at
/// once.
async fn answering(targets: &[SocketAddr]) -> Vec<bool> {
    let probes = targets.iter().map(|&target| async move {
        let bind = if target.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        match tokio::net::UdpSocket::bind(bind).await {
            Ok(sock) => crate::probe::heartbeat(&sock, target, Duration::from_millis(150))
                .await
                .is_some(),
            Err(_) => false,
        }
    });
    futures::future::join_all(probes).await
}

/// Writes a status: metrics, the controller's channel, the status file (atomically).
fn report_status(
    cfg: &GatewayConfig,
    status: &GatewayStatus,
    metrics: &crate::metrics::GatewayMetrics,
    report: Option<&tokio::sync::watch::Sender<GatewayStatus>>,
) -> Result<()> {
    metrics.observe(status);
    if let Some(r) = report {
        r.send_replace(status.clone());
    }
    let tmp = cfg.status_file().with_extension("tmp");
    let text = serde_json::to_string_pretty(status).expect("status serialises");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, cfg.status_file())
        .with_context(|| format!("writing {}", cfg.status_file().display()))
}

/// Keeps probing the path MTU to the target `target` holds ([`crate::pmtud`]) and sends each change
/// (from, to) on `changes`, until the task is aborted or the receiver is gone. When the target moves (the
/// peer's gateway failed over), the new path is searched at once ([`crate::pmtud::Pmtud::new_path`]).
async fn follow_path_mtu(
    mut target: tokio::sync::watch::Receiver<Option<SocketAddr>>,
    mut m: crate::pmtud::Pmtud,
    changes: tokio::sync::mpsc::Sender<(u32, u32)>,
) {
    // the target can move while a seeker holds its sender (a side that dials)
    let mut movable = true;
    'path: loop {
        let Some(to) = *target.borrow_and_update() else {
            return;
        };
        let sock = match crate::probe::mtu_socket(to).await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("path MTU probes to {to}: {e}; the path MTU is not followed there");
                None
            }
        };
        loop {
            let (size, wait) = m.next();
            let answered = tokio::select! {
                moved = target.changed(), if movable => {
                    if moved.is_err() {
                        movable = false;
                        continue;
                    }
                    if let Some(t) = *target.borrow() {
                        info!("path MTU: the peer's gateway moved; now probing the path to {t}");
                    }
                    m.new_path();
                    continue 'path;
                }
                answered = async {
                    tokio::time::sleep(wait).await;
                    match &sock {
                        Some(sock) => crate::probe::mtu_probe(sock, to, size).await,
                        None => std::future::pending().await,
                    }
                } => answered,
            };
            match m.observe(answered) {
                crate::pmtud::Outcome::Settled { from: Some(from), to }
                    if changes.send((from, to)).await.is_err() =>
                {
                    return;
                }
                crate::pmtud::Outcome::NoAnswer { kept } => {
                    tracing::debug!(?kept, "no answer to path MTU probes from {to}");
                }
                _ => {}
            }
        }
    }
}

/// Loads a config file; errors name the file and the field.
pub fn load(path: &std::path::Path) -> Result<GatewayConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| invalid!("{}: not a valid gateway config: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_probe_responder_is_at_its_endpoints_port_plus_one_not_ours() {
        let cfg = |endpoint: Option<&str>, probe: Option<u16>| {
            let mut c: GatewayConfig = serde_json::from_value(serde_json::json!({
                "peer": "provider-c2", "localCidrs": ["10.244.0.0/16"], "remoteCidrs": ["10.244.0.0/16"],
                "privateKeyFile": "/k", "listenPort": 51820, "peerPublicKey": "K",
                "localTunnelAddr": "169.254.64.2/30", "remoteTunnelAddr": "169.254.64.1",
                "stateDir": "/tmp",
            }))
            .unwrap();
            c.peer_endpoint = endpoint.map(|e| e.parse().unwrap());
            c.probe_port = probe;
            c
        };
        // the provider is forwarded at 52820: its responder is at 52821, ours stays at 51821
        let c = cfg(Some("198.18.2.2:52820"), None);
        assert_eq!((c.probe_port(), c.peer_probe_port()), (51821, 52821));
        assert_eq!(cfg(None, None).peer_probe_port(), 51821);
        assert_eq!(cfg(Some("198.18.2.2:52820"), Some(7000)).peer_probe_port(), 7000);
        // each endpoint's responder, for the seeker and the path MTU follower: the configured underlay
        // address belongs to the configured endpoint only; a standby's is its own address
        let mut c = cfg(Some("198.18.2.2:52820"), None);
        c.peer_underlay = Some("10.1.0.2".parse().unwrap());
        let standby: SocketAddr = "198.18.2.3:52830".parse().unwrap();
        assert_eq!(
            c.probe_target(c.peer_endpoint.unwrap()),
            "10.1.0.2:52821".parse().unwrap()
        );
        assert_eq!(c.probe_target(standby), "198.18.2.3:52831".parse().unwrap());
        c.probe_port = Some(7000);
        assert_eq!(c.probe_target(standby), "198.18.2.3:7000".parse().unwrap());
    }

    #[test]
    fn journals_of_peerings_gone_while_the_gateway_was_down_are_found_with_their_teardown() {
        let dir = std::env::temp_dir().join(format!("ferry-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = |peer: &str| {
            let c: GatewayConfig = serde_json::from_value(serde_json::json!({
                "peer": peer, "localCidrs": ["10.244.0.0/16"], "remoteCidrs": ["10.244.0.0/16"],
                "privateKeyFile": "/k", "listenPort": 51820, "peerPublicKey": "K",
                "localTunnelAddr": "169.254.64.1/30", "remoteTunnelAddr": "169.254.64.2",
                "stateDir": dir.to_string_lossy(),
            }))
            .unwrap();
            c
        };
        let (kept, gone) = (cfg("provider-c2"), cfg("provider-c3"));
        for c in [&kept, &gone] {
            let p = c.prepare(1500).unwrap();
            c.write_journal(&p.spec.plan().unwrap().teardown).unwrap();
        }
        std::fs::write(dir.join("broken.teardown.json"), "{").unwrap();
        std::fs::write(dir.join("provider-c3.remaps.json"), "{}").unwrap();
        let live = ["provider-c2".to_string()].into();
        let found = orphaned_journals(&dir, &live);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].0.as_str(), found[0].2.is_none()), ("broken", true));
        let (peer, path, ops) = &found[1];
        assert_eq!((peer.as_str(), path), ("provider-c3", &gone.journal_file()));
        let want = gone.prepare(1500).unwrap().spec.teardown();
        assert_eq!(ops.as_ref(), Some(&want));
        assert!(want.contains(&crate::plan::Op::DeleteLink {
            dev: "fyprovider-c3".into()
        }));
        // nothing is orphaned while every peering is live
        let all = [
            "provider-c2".to_string(),
            "provider-c3".to_string(),
            "broken".to_string(),
        ]
        .into();
        assert!(orphaned_journals(&dir, &all).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_peer_announcing_another_peers_cidr_is_remapped_not_routed_over_it() {
        let dir = std::env::temp_dir().join(format!("ferry-routed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let n = |s: &str| -> IpNet { s.parse().unwrap() };
        // peer a routes 10.50.0.0/16 as itself, and c1's 10.244.0.0/16 as 10.0.0.0/16
        let a: BTreeMap<IpNet, IpNet> = [
            (n("10.50.0.0/16"), n("10.50.0.0/16")),
            (n("10.244.0.0/16"), n("10.0.0.0/16")),
        ]
        .into();
        std::fs::write(dir.join("a.remaps.json"), serde_json::to_string(&a).unwrap()).unwrap();
        std::fs::write(dir.join("b.remaps.json"), "{\"10.60.0.0/16\":\"10.60.0.0/16\"}").unwrap();
        std::fs::write(dir.join("junk.remaps.json"), "not json").unwrap();
        let others = routed_by_other_peers(&dir, "b");
        assert_eq!(others.len(), 2, "{others:?}");
        assert!(
            !others.contains(&n("10.60.0.0/16")),
            "its own ranges are not another peer's"
        );
        // peer b now announces a's 10.50.0.0/16: it gets a remap that overlaps nothing a routes
        let mut reserved = vec![n("10.244.0.0/16")];
        reserved.extend(others);
        let m = ipam::plan_remaps(
            &[n("10.50.0.0/16")],
            &reserved,
            &BTreeMap::new(),
            &ipam::default_pool_v4(),
        )
        .unwrap();
        let got = m[&n("10.50.0.0/16")];
        assert_ne!(got, n("10.50.0.0/16"));
        assert!(
            !reserved
                .iter()
                .any(|r| r.contains(&got.network()) || got.contains(&r.network()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
