//! The thin apply layer: carries out a [`GatewayPlan`](crate::plan::GatewayPlan) with `ip`, `nft` and `wg`
//! in the current network namespace, and undoes it. It decides nothing.
//!
//! WireGuard: kernel WireGuard when `ip link add … type wireguard` works, else Debian's userspace
//! `wireguard-go` (this machine's kernel has no module). Both are configured with `wg set`.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

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

/// Which WireGuard implementation runs the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module.
    Kernel,
    /// `wireguard-go`, in userspace.
    Userspace,
}

/// Creates the WireGuard interface.
pub fn create_interface(dev: &str) -> Result<Backend> {
    if run("ip", &["link", "add", dev, "type", "wireguard"]).is_ok() {
        return Ok(Backend::Kernel);
    }
    // wireguard-go daemonises itself; its UAPI socket is /var/run/wireguard/<dev>.sock. A socket left by a
    // killed device would make it refuse to start: no live device of that name exists here, so it is stale.
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
    let out = Command::new("wireguard-go")
        .arg(dev)
        .stdin(Stdio::null())
        .output()
        .context("running wireguard-go; fix: apt-get install wireguard-go (make deps)")?;
    if !out.status.success() || !link_exists(dev) {
        let log = String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .filter(|l| l.contains("ERROR") || l.contains("rror"))
            .collect::<Vec<_>>()
            .join("; ");
        bail!("wireguard-go could not create {dev}: {log}");
    }
    // wireguard-go forks into the background: its UAPI answers a moment after the link exists
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while run("wg", &["show", dev]).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("wireguard-go created {dev} but its UAPI socket never answered");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(Backend::Userspace)
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

/// Configures the interface's key, port and single peer.
pub fn configure_wireguard(dev: &str, s: &WgSettings) -> Result<()> {
    let port = s.listen_port.to_string();
    let allowed = s.allowed_ips.join(",");
    let mut args = vec![
        "set",
        dev,
        "private-key",
        &s.private_key_file,
        "listen-port",
        &port,
        "peer",
        &s.peer_public_key,
    ];
    let endpoint = s.peer_endpoint.map(|e| e.to_string());
    if let Some(e) = &endpoint {
        args.extend(["endpoint", e]);
    }
    args.extend(["allowed-ips", &allowed, "persistent-keepalive", "1"]);
    // create_interface returned only once the device answers `wg show`: one call is enough
    run("wg", &args)?;
    Ok(())
}

/// Applies the plan's ops in order. On error nothing stays behind: the caller calls [`undo`].
pub fn apply(plan: &GatewayPlan) -> Result<()> {
    for op in &plan.apply {
        apply_op(op).with_context(|| format!("applying {op:?}"))?;
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
        Op::AddRoute { dst, dev, table } => {
            let fam = if dst.addr().is_ipv4() { "-4" } else { "-6" };
            let dst = dst.to_string();
            let mut args = vec![fam, "route", "replace", &dst, "dev", dev];
            let t = table.map(|t| t.to_string());
            if let Some(t) = &t {
                args.extend(["table", t]);
            }
            run("ip", &args).map(drop)
        }
        Op::AddRule { mark, table, v6 } => {
            let fam = if *v6 { "-6" } else { "-4" };
            let (m, t) = (format!("{mark:#x}"), table.to_string());
            if !rule_exists(*mark, *v6) {
                run(
                    "ip",
                    &[fam, "rule", "add", "fwmark", &m, "table", &t, "priority", "100"],
                )?;
            }
            Ok(())
        }
        Op::LoadNft { ruleset, .. } => load_nft(ruleset),
    }
}

fn rule_exists(mark: u32, v6: bool) -> bool {
    let fam = if v6 { "-6" } else { "-4" };
    run("ip", &[fam, "rule", "show", "fwmark", &format!("{mark:#x}")])
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
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
    child.stdin.take().expect("piped").write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the peering's nftables table and policy rules are still in place (someone may delete them).
pub fn intact(spec: &GatewaySpec) -> bool {
    let v4 = spec.remaps.keys().any(|n| n.addr().is_ipv4());
    let v6 = spec.remaps.keys().any(|n| n.addr().is_ipv6());
    run("nft", &["list", "table", "inet", &spec.nft_table()]).is_ok()
        && (!v4 || rule_exists(spec.mark, false))
        && (!v6 || rule_exists(spec.mark, true))
}

/// Removes everything the plan may have made: nft table, policy rules, the routing table, the interface.
/// Idempotent; errors are ignored (it is also the cleanup after a failed apply).
pub fn undo(spec: &GatewaySpec) {
    let _ = run("nft", &["delete", "table", "inet", &spec.nft_table()]);
    for fam in ["-4", "-6"] {
        while run(
            "ip",
            &[
                fam,
                "rule",
                "del",
                "fwmark",
                &format!("{:#x}", spec.mark),
                "table",
                &spec.mark.to_string(),
            ],
        )
        .is_ok()
        {}
        let _ = run("ip", &[fam, "route", "flush", "table", &spec.mark.to_string()]);
    }
    let _ = run("ip", &["link", "del", "dev", &spec.interface]);
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", spec.interface));
}

/// Transfer counters and handshake age of the interface's peer (`wg show DEV dump`).
pub fn wg_counters(dev: &str) -> Option<(u64, u64, u64)> {
    let dump = run("wg", &["show", dev, "dump"]).ok()?;
    let peer = dump.lines().nth(1)?;
    let f: Vec<&str> = peer.split('\t').collect();
    // public-key preshared endpoint allowed-ips latest-handshake rx tx keepalive
    Some((
        f.get(4)?.parse().ok()?,
        f.get(5)?.parse().ok()?,
        f.get(6)?.parse().ok()?,
    ))
}
