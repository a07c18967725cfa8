//! Lab glue for ferry's tunnel: runs a `ferry-gateway` in each of two lab clusters' host namespaces (the
//! gateway's hostNetwork), with keys from `wg genkey` and configs derived from the lab layout. Used by the
//! tunnel e2e tests and `ferry-lab bench tunnel`. (Once peering exists, it hands the gateways these
//! configs; the lab only stands in for it.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::lab::Lab;
use crate::layout::ClusterLayout;
use crate::procs::run;

/// How to run a pair of gateways.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// Peer over the WAN's IPv6 addresses.
    pub underlay_v6: bool,
    /// Clamp MSS.
    pub mss_clamp: bool,
    /// Force the tunnel MTU (to reproduce a blackhole).
    pub tunnel_mtu_override: Option<u32>,
    /// Interface name prefix (unique per machine: the userspace device's UAPI socket path is global).
    pub if_prefix: String,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            underlay_v6: false,
            mss_clamp: true,
            tunnel_mtu_override: None,
            if_prefix: "fy".into(),
        }
    }
}

/// Two running gateways: `a` in the first cluster (the consumer, which dials), `b` in the second (the
/// provider, which waits).
pub struct GatewayPair {
    children: Vec<Child>,
    /// State directories (status, remaps) of a and b.
    pub state: [PathBuf; 2],
    /// Peer IDs as each side names the other.
    pub peers: [String; 2],
    /// Interfaces of a and b.
    pub interfaces: [String; 2],
    /// Host namespaces of a and b.
    pub netns: [String; 2],
    /// Config files of a and b.
    pub configs: [PathBuf; 2],
}

/// The ferry-gateway binary next to the running executable (cargo puts all workspace binaries together).
pub fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("ferry-gateway")
}

fn cidrs(c: &ClusterLayout) -> Vec<String> {
    vec![c.pod_cidr.to_string(), c.service_cidr.to_string()]
}

/// A gateway config for `me` peering with `peer` (JSON), as ferry-gateway reads it.
#[allow(clippy::too_many_arguments)]
pub fn config(
    me: &ClusterLayout,
    peer: &ClusterLayout,
    dir: &Path,
    key: &Path,
    peer_pub: &str,
    dial: bool,
    opts: &PairOptions,
    tunnel: (&str, &str),
) -> serde_json::Value {
    let (peer_ip, my_net): (IpAddr, String) = if opts.underlay_v6 {
        (peer.wan_ip6, format!("fd00:198:18:{:x}::/64", me.index))
    } else {
        (peer.wan_ip, format!("198.18.{}.0/24", me.index))
    };
    let mut v = json!({
        "peer": peer.id, "interface": format!("{}{}", opts.if_prefix, peer.id),
        "localCidrs": cidrs(me), "underlayCidrs": [my_net], "remoteCidrs": cidrs(peer),
        "privateKeyFile": key, "listenPort": 51820, "peerPublicKey": peer_pub,
        "peerUnderlay": peer_ip.to_string(),
        "localTunnelAddr": tunnel.0, "remoteTunnelAddr": tunnel.1,
        "mssClamp": opts.mss_clamp, "stateDir": dir,
        // inside the cluster's host namespace: each gateway has its own loopback
        "metricsAddr": "127.0.0.1:9470",
    });
    if dial {
        v["peerEndpoint"] = json!(std::net::SocketAddr::new(peer_ip, 51820).to_string());
    }
    if let Some(m) = opts.tunnel_mtu_override {
        v["tunnelMtuOverride"] = json!(m);
    }
    v
}

impl GatewayPair {
    /// Starts gateways between the lab's first two clusters and waits until both report Connected.
    pub fn start(lab: &Lab, opts: &PairOptions, timeout: Duration) -> Result<Self> {
        let (a, b) = match lab.layout.clusters.as_slice() {
            [a, b, ..] => (a, b),
            _ => bail!("the tunnel needs a lab with two clusters"),
        };
        // a peering's tunnel (ferry-gateway serve, e.g. left by `make demo`) routes the same remote CIDRs
        // between the same hosts: two tunnels would steal each other's routes
        for c in [a, b] {
            let ns = lab.layout.host_netns(c);
            let links = run("ip", &["-n", &ns, "-o", "link", "show"]).unwrap_or_default();
            let taken: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n))
                .filter(|n| n.starts_with("fy"))
                .collect();
            if !taken.is_empty() {
                bail!(
                    "{ns} already has ferry tunnel(s) {taken:?} (a peering's ferry-gateway, e.g. from `make demo`); fix: `ferryctl unpeer` first, or `ferry-lab down` and `up` again"
                );
            }
        }
        let root = lab.paths.dir.join(format!("tunnel-{}", opts.if_prefix));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let mut keys = Vec::new();
        for c in [a, b] {
            let key = root.join(format!("{}.key", c.id));
            let private = run("wg", &["genkey"])?;
            std::fs::write(&key, private.trim())?;
            let public = Command::new("wg")
                .arg("pubkey")
                .stdin(std::fs::File::open(&key)?)
                .output()
                .context("wg pubkey; fix: apt-get install wireguard-tools")?;
            keys.push((key, String::from_utf8_lossy(&public.stdout).trim().to_string()));
        }
        let sides = [
            (
                a,
                b,
                &keys[0].0,
                &keys[1].1,
                true,
                ("169.254.77.1/30", "169.254.77.2"),
            ),
            (
                b,
                a,
                &keys[1].0,
                &keys[0].1,
                false,
                ("169.254.77.2/30", "169.254.77.1"),
            ),
        ];
        let mut pair = GatewayPair {
            children: Vec::new(),
            state: [root.join(&a.id), root.join(&b.id)],
            peers: [b.id.clone(), a.id.clone()],
            interfaces: [
                format!("{}{}", opts.if_prefix, b.id),
                format!("{}{}", opts.if_prefix, a.id),
            ],
            netns: [lab.layout.host_netns(a), lab.layout.host_netns(b)],
            configs: [
                root.join(format!("{}.json", a.id)),
                root.join(format!("{}.json", b.id)),
            ],
        };
        for (i, (me, peer, key, peer_pub, dial, tun)) in sides.into_iter().enumerate() {
            let cfg = config(me, peer, &pair.state[i], key, peer_pub, dial, opts, tun);
            std::fs::write(&pair.configs[i], serde_json::to_string_pretty(&cfg)?)?;
            let log = std::fs::File::create(root.join(format!("{}.log", me.id)))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &pair.netns[i]])
                .arg(gateway_bin())
                .arg("up")
                .arg("--config")
                .arg(&pair.configs[i])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting ferry-gateway (build it: cargo build --workspace --bins)")?;
            pair.children.push(child);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let up = (0..2).all(|i| pair.status(i).is_some_and(|s| s["connected"] == json!(true)));
            if up {
                return Ok(pair);
            }
            for (i, c) in pair.children.iter_mut().enumerate() {
                if let Some(st) = c.try_wait()? {
                    let log = std::fs::read_to_string(root.join(format!("{}.log", [a, b][i].id)))
                        .unwrap_or_default();
                    bail!("ferry-gateway of {} exited ({st}): {}", [a, b][i].id, log.trim());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "tunnel not Connected after {}s; logs in {}",
                    timeout.as_secs(),
                    root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Side `i`'s status JSON, if written.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.state[i].join(format!("{}.status.json", self.peers[i]))).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// How side `i` sees a remote address (through its remaps).
    pub fn translate(&self, i: usize, addr: IpAddr) -> Option<IpAddr> {
        let st = self.status(i)?;
        let remaps: std::collections::BTreeMap<ipnet::IpNet, ipnet::IpNet> = st["remaps"]
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.parse().ok()?)))
            .collect();
        ferry_tunnel::ipam::translate(addr, &remaps)
    }

    /// Stops both gateways (SIGTERM: each removes its interface, rules and table) and waits.
    pub fn stop(mut self) {
        self.stop_children();
    }

    fn stop_children(&mut self) {
        for c in &mut self.children {
            // `ip netns exec` execs the gateway, so the child's PID is the gateway's
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for GatewayPair {
    fn drop(&mut self) {
        self.stop_children();
    }
}

/// Whether anything of a gateway is left in namespace `ns`: interface, nft table.
pub fn leftovers(ns: &str, interface: &str) -> Vec<String> {
    let mut out = Vec::new();
    if run("ip", &["-n", ns, "link", "show", "dev", interface]).is_ok() {
        out.push(format!("interface {interface}"));
    }
    let tables = run("ip", &["netns", "exec", ns, "nft", "list", "tables"]).unwrap_or_default();
    if tables.contains(&format!("ferry_{}", interface.replace('-', "_"))) {
        out.push(format!("nft table ferry_{interface}"));
    }
    out
}
