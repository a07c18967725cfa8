//! ferry-agents on lab clusters, for tests and benchmarks: cluster `c1` is the consumer (`consumer-c1`,
//! with the pod webhook), `c2` the provider (`provider-c2`). Each agent listens at its apiserver port + 6
//! (broker) and + 7 (webhooks). [`Agent`] stops its process when dropped; [`peer`] runs the real `ferryctl`
//! commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::Lab;

/// A running ferry-agent, killed when dropped.
pub struct Agent {
    child: Child,
    /// Its cluster ID.
    pub id: String,
}

impl Agent {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it as Kubernetes would: SIGTERM, then SIGKILL after `grace` (a heap profile, when the agent
    /// was built with `dhat-heap`, is written on the graceful way out).
    pub fn stop(&mut self, grace: Duration) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// Kills it now (SIGKILL: no graceful shutdown, as a crash or OOM kill would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary built beside the test binaries (`ferry-agent`, `ferryctl`, …).
pub fn bin(name: &str) -> PathBuf {
    crate::tunnel::gateway_bin().with_file_name(name)
}

/// The cluster ID the agents of this module give cluster `idx`.
pub fn cluster_id(idx: usize) -> String {
    if idx == 0 {
        "consumer-c1".into()
    } else {
        format!("provider-c{}", idx + 1)
    }
}

/// The ferry-agent command line for cluster `idx` of `lab` (`exe`: the binary): its kubeconfig, cluster
/// ID, broker at the apiserver port + 6, CIDRs, and the webhooks at + 7.
pub fn command(lab: &Lab, idx: usize, exe: &Path) -> Command {
    command_with(lab, idx, exe, default_endpoint(lab, idx).as_deref())
}

/// The gateway endpoint the agents of this module announce: providers at their WAN address, port 51820;
/// the consumer none (it dials).
pub fn default_endpoint(lab: &Lab, idx: usize) -> Option<String> {
    (idx > 0).then(|| format!("{}:51820", lab.layout.clusters[idx].wan_ip))
}

/// [`command`] announcing `endpoint` as the cluster's gateway endpoint (`None`: none).
pub fn command_with(lab: &Lab, idx: usize, exe: &Path, endpoint: Option<&str>) -> Command {
    let c = &lab.layout.clusters[idx];
    let mut cmd = Command::new(exe);
    cmd.arg("--kubeconfig").arg(lab.paths.kubeconfig(c)).args([
        "--cluster-id",
        &cluster_id(idx),
        "--listen",
        &format!("127.0.0.1:{}", c.ports.apiserver + 6),
        "--pod-cidr",
        &c.pod_cidr.to_string(),
        "--service-cidr",
        &c.service_cidr.to_string(),
    ]);
    if let Some(e) = endpoint {
        // link n: port + 2n
        cmd.args(["--gateway-endpoint", e]);
    }
    // every agent serves the webhooks: the consumer's pod offloading, the provider's tenant pod policy
    cmd.args([
        "--webhook-listen",
        &format!("127.0.0.1:{}", c.ports.apiserver + 7),
        "--admin-listen",
        &admin_addr(lab, idx),
    ]);
    cmd
}

/// Where the agent of cluster `idx` serves `/metrics`, `/healthz` and `/readyz` (the apiserver port + 3).
pub fn admin_addr(lab: &Lab, idx: usize) -> String {
    format!("127.0.0.1:{}", lab.layout.clusters[idx].ports.apiserver + 3)
}

/// The gateway's admin port (`/metrics` of every tunnel, health) in the cluster's host namespace.
pub const GATEWAY_ADMIN: &str = "127.0.0.1:9469";
/// ferry-dns's admin port in the cluster's host namespace.
pub const DNS_ADMIN: &str = "127.0.0.1:9472";

/// `GET path` at `addr` (plain HTTP), from the host namespace of cluster `idx` when `netns` (the gateway's
/// and ferry-dns's), else from here: (status line, body).
pub fn http_get(lab: &Lab, idx: Option<usize>, addr: &str, path: &str) -> (String, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script =
        format!("exec 3<>/dev/tcp/{host}/{port}; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3");
    let mut cmd = match idx {
        Some(i) => {
            let mut c = Command::new("ip");
            c.args([
                "netns",
                "exec",
                &lab.layout.host_netns(&lab.layout.clusters[i]),
                "bash",
                "-c",
            ]);
            c
        }
        None => {
            let mut c = Command::new("bash");
            c.arg("-c");
            c
        }
    };
    let out = cmd
        .arg(script)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let out = out.unwrap_or_default();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// Starts the agent of cluster `idx` (log `agent-<cluster>.log` in the lab directory, appended) and waits
/// until it listens. `extra`: more flags (e.g. quotas).
pub fn start(lab: &Lab, idx: usize, extra: &[&str]) -> Result<Agent> {
    start_with(lab, idx, extra, default_endpoint(lab, idx).as_deref())
}

/// [`start`] announcing `endpoint` as the cluster's gateway endpoint (`None`: none).
pub fn start_with(lab: &Lab, idx: usize, extra: &[&str], endpoint: Option<&str>) -> Result<Agent> {
    let c = &lab.layout.clusters[idx];
    let id = cluster_id(idx);
    let listen = format!("127.0.0.1:{}", c.ports.apiserver + 6);
    if std::net::TcpStream::connect(&listen).is_ok() {
        bail!(
            "{listen} is taken (another ferry-agent of this lab, e.g. the demo's?); fix: ferry-lab down, then up"
        );
    }
    let log_path = lab.paths.dir.join(format!("agent-{}.log", c.id));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = command_with(lab, idx, &bin("ferry-agent"), endpoint);
    let child = cmd
        .args(extra)
        .env("RUST_LOG", "info,kube_client=off,kube_runtime=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ferry-agent")?;
    let mut agent = Agent { child, id };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!(
                "ferry-agent did not listen on {listen} (log: {})",
                log_path.display()
            );
        }
        if let Some(st) = agent.child.try_wait()? {
            bail!(
                "ferry-agent exited ({st}); is {listen} taken? (log: {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(agent)
}

/// Runs `ferryctl --kubeconfig K args…`: (success, stdout, stderr).
pub fn ferryctl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    match Command::new(bin("ferryctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ),
        Err(e) => (false, String::new(), format!("running ferryctl: {e}")),
    }
}

/// `ferryctl token create` on the provider (c2) then `ferryctl peer` on the consumer (c1), with `extra`
/// peer flags (e.g. `--pods 500`). Returns the provider's cluster ID.
pub fn peer(lab: &Lab, extra: &[&str]) -> Result<String> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (ok, token, err) = ferryctl(&lab.paths.kubeconfig(c2), &["token", "create", "--ttl", "10m"]);
    anyhow::ensure!(ok, "ferryctl token create: {err}");
    let mut args = vec!["peer", "--token", token.trim()];
    args.extend_from_slice(extra);
    let (ok, out, err) = ferryctl(&lab.paths.kubeconfig(c1), &args);
    anyhow::ensure!(ok, "ferryctl peer: {err}{out}");
    Ok(cluster_id(1))
}

/// The `ferry-gateway serve` command line for cluster `idx`: run in the cluster's host namespace (the
/// gateway's hostNetwork) through `ip netns exec`, with the cluster's kubeconfig (the lab kubelet relays
/// the host namespace's 127.0.0.1:<apiserver port> to the apiserver), the WAN subnet as underlay, state in
/// the lab directory and `/metrics` on the namespace's 127.0.0.1:9470 + link.
pub fn gateway_command(lab: &Lab, idx: usize, exe: &Path) -> Command {
    let c = &lab.layout.clusters[idx];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.layout.host_netns(c)])
        .arg(exe)
        .arg("serve")
        .arg("--kubeconfig")
        .arg(lab.paths.kubeconfig(c))
        .arg("--state-dir")
        .arg(lab.paths.dir.join(format!("gateway-{}", c.id)))
        .args([
            "--underlay-cidr",
            &format!("198.18.{}.0/24", c.index),
            "--underlay-cidr",
            &format!("fd00:198:18:{:x}::/64", c.index),
            "--metrics-addr",
            "127.0.0.1:9470",
            "--admin-listen",
            GATEWAY_ADMIN,
        ]);
    cmd
}

/// A process in a cluster's host namespace (`ferry-gateway serve`, `ferry-dns`), stopped with SIGTERM (so
/// the gateway removes its tunnels) when dropped.
pub struct HostProcess {
    child: Child,
}

impl HostProcess {
    /// SIGTERM, then wait up to 15 s for it to remove its tunnels.
    pub fn stop(&mut self) {
        // `ip netns exec` execs the gateway, so the child's PID is the gateway's
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostProcess {
    /// SIGKILL: the process gets no chance to clean up (a crash, an OOM kill, a node lost).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `ferry-gateway serve` for cluster `idx` (log `gateway-<cluster>.log` in the lab directory).
pub fn start_gateway(lab: &Lab, idx: usize) -> Result<HostProcess> {
    let cmd = gateway_command(lab, idx, &bin("ferry-gateway"));
    spawn_logged(lab, idx, "gateway", cmd)
}

/// The `ferry-dns` command line for cluster `idx`: in the cluster's host namespace (where CoreDNS would
/// forward `clusterset.local` to it), answering on port 53 of every address there, so each pod reaches it
/// at its default gateway.
pub fn dns_command(lab: &Lab, idx: usize, exe: &Path) -> Command {
    let c = &lab.layout.clusters[idx];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.layout.host_netns(c)])
        .arg(exe)
        .arg("--kubeconfig")
        .arg(lab.paths.kubeconfig(c))
        .args(["--listen", "0.0.0.0:53", "--admin-listen", DNS_ADMIN]);
    cmd
}

/// Starts `ferry-dns` for cluster `idx` (log `dns-<cluster>.log`) and waits until it answers.
pub fn start_dns(lab: &Lab, idx: usize) -> Result<HostProcess> {
    let cmd = dns_command(lab, idx, &bin("ferry-dns"));
    let p = spawn_logged(lab, idx, "dns", cmd)?;
    let ns = lab.layout.host_netns(&lab.layout.clusters[idx]);
    crate::procs::wait_until("ferry-dns", Duration::from_secs(10), || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "dig",
                "+time=1",
                "+tries=1",
                "@127.0.0.1",
                "clusterset.local.",
                "SOA",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("status: NOERROR"))
    })?;
    Ok(p)
}

fn spawn_logged(lab: &Lab, idx: usize, what: &str, mut cmd: Command) -> Result<HostProcess> {
    let c = &lab.layout.clusters[idx];
    let log_path = lab.paths.dir.join(format!("{what}-{}.log", c.id));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let child = cmd
        .env("RUST_LOG", "info,kube_client=off,kube_runtime=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(HostProcess { child })
}
