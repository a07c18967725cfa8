//! The thin apply layer: carries out a [`GatewayPlan`](crate::plan::GatewayPlan) with `ip` and `nft` in the
//! current network namespace, and undoes it. It decides nothing.
//!
//! WireGuard: kernel WireGuard when `ip link add … type wireguard` works, else a userspace device
//! embedded in this process (boringtun; this machine's kernel has no module). Both are configured through
//! wireguard-control (netlink for the kernel, the UAPI socket `/var/run/wireguard/<dev>.sock` for
//! boringtun). The embedded device lives as long as this process: a crashed gateway leaves no tunnel
//! device behind.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use crate::{Context, Result};

use crate::plan::{GatewayPlan, GatewaySpec, Op};

/// Runs a command to completion; the error names the command line and quotes its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}; fix: install it (make deps)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This host's addresses with their prefixes (`ip -o addr show`).
pub fn local_addrs() -> Result<Vec<ipnet::IpNet>> {
    Ok(crate::routes::parse_addrs(&run("ip", &["-o", "addr", "show"])?))
}

/// ferry's node routes now in the main table ([`crate::routes::ROUTE_PROTO`]), both families.
pub fn node_routes() -> Result<Vec<(crate::routes::NodeRoute, u32)>> {
    let proto = crate::routes::ROUTE_PROTO.to_string();
    let mut all = Vec::new();
    for fam in ["-4", "-6"] {
        all.extend(crate::routes::parse_routes(&run(
            "ip",
            &[fam, "route", "show", "proto", &proto],
        )?));
    }
    Ok(all)
}

/// Makes ferry's node routes exactly `want` (adds, moves and removes, nothing else touched); returns how
/// many routes changed. Each change is tried; the first error is returned after the others ran.
pub fn sync_node_routes(want: &[crate::routes::NodeRoute]) -> Result<usize> {
    let (set, del) = crate::routes::diff(want, &node_routes()?);
    let proto = crate::routes::ROUTE_PROTO.to_string();
    let metric = crate::routes::ROUTE_METRIC.to_string();
    let mut first_err = None;
    for r in &set {
        let (dst, via) = (r.dst.to_string(), r.via.to_string());
        let mut args = vec![
            "route", "replace", &dst, "via", &via, "proto", &proto, "metric", &metric,
        ];
        if r.overlay {
            // the gateway node is no neighbour on the overlay's L2 but its derived MAC is (see sync_overlay)
            args.extend(["dev", crate::routes::OVERLAY_DEV, "onlink"]);
        }
        if let Err(e) = run("ip", &args) {
            first_err.get_or_insert(e);
        }
    }
    for (dst, m) in &del {
        let (dst, m) = (dst.to_string(), m.to_string());
        if let Err(e) = run("ip", &["route", "del", &dst, "proto", &proto, "metric", &m]) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(set.len() + del.len()),
    }
}

/// Makes this node's overlay device ([`crate::routes::OVERLAY_DEV`]) `want` (created, recreated when its
/// remote changes, removed when `None`), given that it is `now`; returns what works against it (a strict
/// reverse-path filter that would drop what the overlay delivers), each with its fix.
pub fn sync_overlay(
    want: Option<&crate::routes::Overlay>,
    now: &mut Option<crate::routes::Overlay>,
) -> Result<Vec<String>> {
    use crate::routes::{OVERLAY_DEV, OVERLAY_PORT, OVERLAY_VNI, overlay_mac};
    if want == now.as_ref() {
        return Ok(Vec::new());
    }
    remove_overlay();
    *now = None;
    let Some(o) = want else {
        return Ok(Vec::new());
    };
    let local = o.local.to_string();
    let link = run("ip", &["-o", "addr", "show", "to", &local])?;
    let link_mtu = link
        .split_whitespace()
        .nth(1)
        .and_then(|d| std::fs::read_to_string(format!("/sys/class/net/{d}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500);
    let mtu = crate::mtu::MtuPlan::compute(link_mtu, &[crate::mtu::Encap::Vxlan], o.local.is_ipv6(), false)
        .map_err(|e| invalid!("the overlay over a link of MTU {link_mtu}: {e}"))?
        .mtu
        .to_string();
    let (vni, port) = (OVERLAY_VNI.to_string(), OVERLAY_PORT.to_string());
    let remote = o.remote.map(|r| r.to_string());
    let mut add = vec![
        "link",
        "add",
        OVERLAY_DEV,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "dstport",
        &port,
        "nolearning",
    ];
    if let Some(r) = &remote {
        add.extend(["remote", r.as_str()]);
    }
    run("ip", &add)?;
    let mac = overlay_mac(o.local);
    let set = run(
        "ip",
        &["link", "set", OVERLAY_DEV, "address", &mac, "mtu", &mtu, "up"],
    );
    let neigh = match (&remote, o.remote) {
        (Some(r), Some(ip)) => run(
            "ip",
            &[
                "neigh",
                "replace",
                r,
                "lladdr",
                &overlay_mac(ip),
                "dev",
                OVERLAY_DEV,
                "nud",
                "permanent",
            ],
        )
        .map(drop),
        _ => Ok(()),
    };
    if let Err(e) = set.and(neigh) {
        remove_overlay();
        return Err(e);
    }
    *now = Some(o.clone());
    // what the overlay delivers comes from pods whose route back is not the overlay: strict reverse-path
    // filtering (1) drops it, loose (2) does not; the effective value is the larger of `all` and the device's
    let mut problems = Vec::new();
    if o.local.is_ipv4() {
        let dev = format!("/proc/sys/net/ipv4/conf/{OVERLAY_DEV}/rp_filter");
        let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
        let loosened = std::fs::write(&dev, "2").is_ok();
        if all.trim() == "1" && !loosened {
            problems.push(format!(
                "net.ipv4.conf.all.rp_filter=1 (strict) drops what the overlay delivers and {dev} is read-only here; fix: sysctl -w net.ipv4.conf.all.rp_filter=2 on the nodes"
            ));
        }
    }
    Ok(problems)
}

/// Removes the overlay device (and with it every route and neighbour through it); absent is fine.
pub fn remove_overlay() {
    let _ = run("ip", &["link", "del", "dev", crate::routes::OVERLAY_DEV]);
}

/// Which WireGuard implementation runs the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module.
    Kernel,
    /// boringtun, embedded in this process (userspace).
    Userspace,
}

/// An embedded userspace device and the thread that serves its UAPI socket.
struct Embedded {
    _handle: boringtun::device::DeviceHandle,
    socket: std::path::PathBuf,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // wake the UAPI thread so it sees `closed` and ends (dropping its end of the pair stops the device)
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The embedded userspace devices of this process, by interface name.
fn devices() -> &'static Mutex<HashMap<String, Embedded>> {
    static DEVICES: OnceLock<Mutex<HashMap<String, Embedded>>> = OnceLock::new();
    DEVICES.get_or_init(Default::default)
}

fn backend_of(dev: &str) -> wireguard_control::Backend {
    if devices().lock().expect("lock").contains_key(dev) {
        wireguard_control::Backend::Userspace
    } else {
        wireguard_control::Backend::Kernel
    }
}

/// Creates the WireGuard interface: kernel WireGuard if the kernel has it, else an embedded boringtun
/// device.
pub fn create_interface(dev: &str) -> Result<Backend> {
    create_interface_with(dev, 2)
}

/// One UAPI exchange (a `get=1` or `set=1` request, ended by an empty line) relayed to the device over
/// `device`, its answer (ended by `errno=N` and an empty line) relayed back.
fn relay_uapi(
    client: std::os::unix::net::UnixStream,
    device: &Mutex<std::io::BufReader<std::os::unix::net::UnixStream>>,
) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut req = String::new();
    let mut r = std::io::BufReader::new(client.try_clone()?);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\n" {
            break;
        }
        req.push_str(&line);
    }
    if req.is_empty() {
        return Ok(());
    }
    req.push('\n');
    let mut dev = device.lock().expect("lock");
    dev.get_mut().write_all(req.as_bytes())?;
    let mut out = String::new();
    loop {
        let mut line = String::new();
        if dev.read_line(&mut line)? == 0 {
            break;
        }
        let end = line.starts_with("errno=");
        // boringtun's own extension, outside the cross-platform UAPI: readers (wireguard-control prints
        // every key it does not know, on each read of the counters) are not given it
        if line.starts_with("own_public_key=") {
            continue;
        }
        out.push_str(&line);
        if end {
            let mut blank = String::new();
            dev.read_line(&mut blank)?;
            out.push('\n');
            break;
        }
    }
    drop(dev);
    let mut client = client;
    client.write_all(out.as_bytes())
}

/// [`create_interface`] with a given number of boringtun worker threads.
///
/// The device gets its UAPI over a socket pair, and ferry serves `/var/run/wireguard/<dev>.sock` itself,
/// relaying to it: that is where wireguard-control (and `wg`) look for a userspace device. (boringtun's own
/// socket listener would also take SIGTERM/SIGINT from a signalfd and exit on them, racing the gateway,
/// which must remove its rules first.)
pub fn create_interface_with(dev: &str, threads: usize) -> Result<Backend> {
    use std::os::fd::IntoRawFd;
    if run("ip", &["link", "add", dev, "type", "wireguard"]).is_ok() {
        return Ok(Backend::Kernel);
    }
    let socket = std::path::PathBuf::from(format!("/var/run/wireguard/{dev}.sock"));
    // a socket left by a killed process: no live device of that name exists here (the link add above
    // would have said so), so it is stale
    let _ = std::fs::remove_file(&socket);
    std::fs::create_dir_all("/var/run/wireguard").context("creating /var/run/wireguard")?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("a socket pair for the UAPI")?;
    let cfg = boringtun::device::DeviceConfig {
        n_threads: threads.max(1),
        uapi_fd: theirs.into_raw_fd(),
        ..Default::default()
    };
    let handle = boringtun::device::DeviceHandle::new(dev, cfg).map_err(|e| {
        invalid!("boringtun could not create {dev}: {e:?}; fix: run as root with /dev/net/tun available")
    })?;
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("serving the UAPI socket {}", socket.display()))?;
    let device = Mutex::new(std::io::BufReader::new(ours));
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = closed.clone();
    std::thread::Builder::new()
        .name(format!("uapi-{dev}"))
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = relay_uapi(c, &device);
                }
            }
        })
        .context("starting the UAPI thread")?;
    devices().lock().expect("lock").insert(
        dev.to_string(),
        Embedded {
            _handle: handle,
            socket,
            closed,
        },
    );
    Ok(Backend::Userspace)
}

/// Stops the embedded device `dev` if this process runs one (its TUN interface goes with it).
pub fn remove_device(dev: &str) {
    let handle = devices().lock().expect("lock").remove(dev);
    drop(handle);
}

/// Whether a link exists in this namespace.
pub fn link_exists(dev: &str) -> bool {
    run("ip", &["link", "show", "dev", dev]).is_ok()
}

/// WireGuard peer settings.
#[derive(Clone, Debug)]
pub struct WgSettings {
    /// Path of the private key file (base64, as `wg genkey` writes it).
    pub private_key_file: String,
    /// UDP port.
    pub listen_port: u16,
    /// Peer's public key (base64).
    pub peer_public_key: String,
    /// Peer's endpoint (`None`: the peer connects to us).
    pub peer_endpoint: Option<std::net::SocketAddr>,
    /// Allowed IPs of the peer.
    pub allowed_ips: Vec<String>,
}

/// Configures the interface's key, port and single peer (wireguard-control: netlink or UAPI).
pub fn configure_wireguard(dev: &str, s: &WgSettings) -> Result<()> {
    use wireguard_control::{DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};
    let name: InterfaceName = dev.parse().map_err(|e| invalid!("interface name {dev:?}: {e}"))?;
    let text = std::fs::read_to_string(&s.private_key_file)
        .with_context(|| format!("reading the private key {}", s.private_key_file))?;
    let key = Key::from_base64(text.trim()).map_err(|_| {
        invalid!(
            "{}: not a WireGuard private key (base64 of 32 bytes); fix: write one with `wg genkey`",
            s.private_key_file
        )
    })?;
    let peer_key = Key::from_base64(s.peer_public_key.trim()).map_err(|_| {
        invalid!(
            "peerPublicKey {:?} is not a WireGuard key (base64 of 32 bytes)",
            s.peer_public_key
        )
    })?;
    let mut peer = PeerConfigBuilder::new(&peer_key)
        .replace_allowed_ips()
        .set_persistent_keepalive_interval(1);
    for a in &s.allowed_ips {
        let n: ipnet::IpNet = a
            .parse()
            .map_err(|e| invalid!("allowed IP {a:?} is not a CIDR: {e}"))?;
        peer = peer.add_allowed_ip(n.addr(), n.prefix_len());
    }
    if let Some(e) = s.peer_endpoint {
        peer = peer.set_endpoint(e);
    }
    DeviceUpdate::new()
        .set_private_key(key)
        .set_listen_port(s.listen_port)
        .replace_peers()
        .add_peer(peer)
        .apply(&name, backend_of(dev))
        .with_context(|| format!("configuring WireGuard on {dev}"))?;
    Ok(())
}

/// Applies the plan's ops in order. On error nothing stays behind: the caller calls [`undo`].
pub fn apply(plan: &GatewayPlan) -> Result<()> {
    for op in &plan.apply {
        apply_op(op).map_err(|e| invalid!("applying {op:?}: {e}"))?;
    }
    Ok(())
}

fn apply_op(op: &Op) -> Result<()> {
    match op {
        Op::SetMtu { dev, mtu } => run("ip", &["link", "set", "dev", dev, "mtu", &mtu.to_string()]).map(drop),
        Op::AddAddress { dev, addr } => {
            run("ip", &["addr", "replace", &addr.to_string(), "dev", dev]).map(drop)
        }
        Op::LinkUp { dev } => run("ip", &["link", "set", "dev", dev, "up"]).map(drop),
        Op::AddRoute { dst, dev } => {
            let fam = if dst.addr().is_ipv4() { "-4" } else { "-6" };
            run("ip", &[fam, "route", "replace", &dst.to_string(), "dev", dev]).map(drop)
        }
        Op::LoadNft { ruleset, .. } => load_nft(ruleset),
        Op::DeleteNft { table } => {
            if run("nft", &["list", "table", "inet", table]).is_ok() {
                run("nft", &["delete", "table", "inet", table])?;
            }
            Ok(())
        }
        Op::DeleteLink { dev } => {
            remove_device(dev);
            if run("ip", &["link", "show", "dev", dev]).is_ok() {
                run("ip", &["link", "del", "dev", dev])?;
            }
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
            Ok(())
        }
    }
}

/// Loads an nftables ruleset atomically (`nft -f -`).
pub fn load_nft(ruleset: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft; fix: apt-get install nftables (make deps)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(ruleset.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the peering's nftables table and its routes into the tunnel are still in place (someone may
/// delete them, or replace a route with one via another node).
pub fn intact(spec: &GatewaySpec) -> bool {
    // the table, and in it the MSS clamp when the plan has one (a rule deleted alone is found too)
    let table = run("nft", &["list", "table", "inet", &spec.nft_table()])
        .is_ok_and(|listing| !spec.mss_clamp || listing.contains("maxseg size set"));
    table && {
        let dev = spec.interface.as_str();
        let mut listing = run("ip", &["-4", "route", "show", "dev", dev]).unwrap_or_default();
        if spec.remaps.values().any(|v| v.addr().is_ipv6()) {
            listing.push_str(&run("ip", &["-6", "route", "show", "dev", dev]).unwrap_or_default());
        }
        spec.routes_listed(&listing)
    }
}

/// Carries out the spec's teardown ([`GatewaySpec::teardown`]): nft table, then the interface with its
/// addresses and routes. Idempotent; each op is best-effort (it is also the cleanup after a failed apply).
pub fn undo(spec: &GatewaySpec) {
    teardown(&spec.teardown());
}

/// Carries out teardown ops, each best-effort (what is already gone is fine).
pub fn teardown(ops: &[Op]) {
    for op in ops {
        if let Err(e) = apply_op(op) {
            tracing::debug!("teardown {op:?}: {e}");
        }
    }
}

/// What WireGuard tells about the interface and its peer, through wireguard-control.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WgState {
    /// Seconds since the last completed handshake (`None`: never).
    pub handshake_age: Option<u64>,
    /// Bytes received from the peer.
    pub rx: u64,
    /// Bytes sent to it.
    pub tx: u64,
    /// The interface's own public key (base64).
    pub public_key: Option<String>,
}

/// Reads the interface's [`WgState`]; `None` when the device does not answer or has no peer.
pub fn wg_state(dev: &str) -> Option<WgState> {
    let name: wireguard_control::InterfaceName = dev.parse().ok()?;
    let d = wireguard_control::Device::get(&name, backend_of(dev)).ok()?;
    let p = d.peers.first()?;
    let handshake_age = match backend_of(dev) {
        // boringtun answers `last_handshake_time_sec` with the time *since* the handshake, not the time of
        // it as the UAPI says, and wireguard-control leaves out a 0 (a handshake within the last second):
        // read the value as an age, and a session that carried bytes with none as under a second old
        wireguard_control::Backend::Userspace => p
            .stats
            .last_handshake_time
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|a| a.as_secs())
            .or((p.stats.rx_bytes > 0).then_some(0)),
        _ => p
            .stats
            .last_handshake_time
            .and_then(|t| t.elapsed().ok())
            .map(|e| e.as_secs()),
    };
    Some(WgState {
        handshake_age,
        rx: p.stats.rx_bytes,
        tx: p.stats.tx_bytes,
        public_key: d.public_key.map(|k| k.to_base64()),
    })
}

/// `nf_conntrack_count` and `nf_conntrack_max` of this network namespace (`None`: conntrack not loaded).
pub fn conntrack() -> (Option<u64>, Option<u64>) {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{f}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    (read("nf_conntrack_count"), read("nf_conntrack_max"))
}

/// `net.ipv4.ip_local_port_range` as `low-high`.
pub fn ephemeral_ports() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace();
    Some(format!("{}-{}", it.next()?, it.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_uapi_exchange_is_relayed_whole_request_to_errno_line_without_boringtuns_extension() {
        // the device end answers one request the way boringtun does
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(theirs.try_clone().unwrap());
            let mut req = String::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l == "\n" {
                    break;
                }
                req.push_str(&l);
            }
            theirs
                .write_all(b"own_public_key=ab\nlisten_port=51820\nerrno=0\n\n")
                .unwrap();
            req
        });
        let device = Mutex::new(std::io::BufReader::new(ours));
        let (mut client, server_side) = UnixStream::pair().unwrap();
        client.write_all(b"get=1\n\n").unwrap();
        relay_uapi(server_side, &device).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        // boringtun's `own_public_key` extension is left out
        assert_eq!(answer, "listen_port=51820\nerrno=0\n\n");
        assert_eq!(fake.join().unwrap(), "get=1\n");
    }

    #[test]
    fn an_empty_connection_is_not_sent_to_the_device() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let device = Mutex::new(std::io::BufReader::new(ours));
        let (client, server_side) = UnixStream::pair().unwrap();
        drop(client);
        // returns at once instead of waiting for an answer the device was never asked for
        relay_uapi(server_side, &device).unwrap();
    }
}
