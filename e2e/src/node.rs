//! Real nodes: kubelet 1.20.2 with Debian's containerd 1.6, runc and CNI plugins, and kube-proxy in
//! iptables mode, several on this one machine.
//!
//! Each real node is a network namespace (`<lab>-<cluster>-n<k>`) on its cluster's node network
//! ([`crate::net::add_real_node`]) and one process, `ferry-lab node`, started as
//! `unshare --mount --propagation slave nsenter --net=<netns> ferry-lab node …`: a mount namespace of its own
//! (so the kubelet's volume mounts are seen by its containerd and runc, its `/var/log/pods` is its own, and
//! every mount goes away with the node's last process), in the node's network namespace. It starts
//! containerd (private root, state and socket), imports the lab's images, then the kubelet and kube-proxy,
//! and stops them on SIGTERM. What differs per node is written by [`prepare`]; the command lines and
//! configuration texts are pure functions below.
//!
//! Where the kubelets share the machine, each has its own `--root-dir`, `--cgroup-root`
//! (`/ferry-lab-<lab>/<cluster>-<node>`), containerd and CNI state; ports do not collide because each node
//! has its own network namespace. [`sweep`] removes what a node leaves when killed without a chance to
//! stop: containers (found by cgroup), shims (by their socket under the lab directory), cgroups, mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::image;
use crate::layout::ClusterLayout;
use crate::pki::{self, ClusterPki};
use crate::state::{Lab, LabPaths};

/// Label every real node carries (value of [`crate::kubelet::POOL_LABEL`]).
pub const REAL_POOL: &str = "real";
/// Taint of every real node: only pods that tolerate it land there, so the lab pods of the earlier tests
/// (fake images, built-in echo server) keep going to lab nodes.
pub const REAL_NODE_TAINT: &str = "lab.ferry.dev/real-node";
/// The cgroup hierarchies (cgroup v1) a node's `--cgroup-root` is made in.
pub const CGROUP_HIERARCHIES: &[&str] = &[
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd",
];

/// Where one real node keeps its state.
#[derive(Clone, Debug)]
pub struct NodeDir {
    /// The node's directory (`<lab>/<cluster>/nodes/<node>`).
    pub dir: PathBuf,
}

impl NodeDir {
    /// The directory of real node `k` of cluster `c`.
    pub fn new(paths: &LabPaths, c: &ClusterLayout, k: u32) -> Self {
        Self {
            dir: paths.cluster_dir(c).join("nodes").join(c.real_node_name(k)),
        }
    }
    /// A path inside the node's directory.
    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
    /// containerd's socket.
    pub fn containerd_sock(&self) -> PathBuf {
        self.join("containerd/containerd.sock")
    }
}

/// Host directories each real node has its own copy of (node directory name, mount point), as separate
/// machines would: `/var/log` and the gateway chart's `hostPath` state directory.
pub const NODE_PRIVATE_DIRS: &[(&str, &str)] =
    &[("log", "/var/log"), ("ferry-gateway", "/var/lib/ferry-gateway")];

/// The cgroup (relative to each hierarchy's root) that holds every real node of lab `lab`.
pub fn lab_cgroup(lab: &str) -> String {
    format!("ferry-lab-{lab}")
}

/// Real node `k`'s `--cgroup-root`.
pub fn cgroup_root(lab: &str, c: &ClusterLayout, k: u32) -> String {
    format!("/{}/{}-{}", lab_cgroup(lab), c.id, c.real_node_name(k))
}

/// containerd's configuration: CRI on, private root/state (given on the command line), the lab's pause
/// image, cgroupfs, OOM scores no lower than containerd's own (root here lacks `CAP_SYS_RESOURCE`), CNI from Debian's plugins with this node's configuration directory, pod network
/// namespaces under the state directory (not in `/run/netns`, where they would outlive the node's mount
/// namespace as empty files).
pub fn containerd_config(node: &NodeDir) -> String {
    let d = |p: &str| node.join(p).display().to_string();
    format!(
        r#"version = 2
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # this machine grants root no CAP_SYS_RESOURCE: no container may ask for a lower OOM score than containerd
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        sock = node.containerd_sock().display(),
        pause = image::PAUSE_IMAGE,
        cni = d("cni/net.d"),
    )
}

/// The node's CNI configuration: a bridge with the node's pod subnet (host-local IPAM with its own data
/// directory), the node as the pods' gateway, no masquerading (ferry's gateway does the NAT towards
/// peers), hairpin for a Service that sends a pod to itself, and portmap for hostPorts.
pub fn cni_config(subnet: IpNet, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "ferry-lab",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir.display().to_string()
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
    .to_string()
}

/// What the kubelet of one real node is told.
#[derive(Clone, Debug)]
pub struct KubeletArgs<'a> {
    /// Lab name.
    pub lab: &'a str,
    /// The node's cluster.
    pub cluster: &'a ClusterLayout,
    /// Node index (0-based).
    pub k: u32,
    /// The node's directory.
    pub node: &'a NodeDir,
    /// The cluster CA file.
    pub ca: &'a Path,
}

/// The kubelet's command line (flags, as kubelet 1.20 takes them).
pub fn kubelet_args(a: &KubeletArgs<'_>) -> Vec<String> {
    let d = |p: &str| a.node.join(p).display().to_string();
    let c = a.cluster;
    vec![
        format!("--kubeconfig={}", d("kubelet.kubeconfig")),
        format!("--hostname-override={}", c.real_node_name(a.k)),
        format!("--node-ip={}", c.real_node_ip(a.k)),
        format!("--root-dir={}", d("kubelet")),
        format!("--tls-cert-file={}", d("pki/kubelet.crt")),
        format!("--tls-private-key-file={}", d("pki/kubelet.key")),
        format!("--client-ca-file={}", a.ca.display()),
        "--anonymous-auth=false".into(),
        "--authentication-token-webhook=true".into(),
        "--authorization-mode=Webhook".into(),
        "--container-runtime=remote".into(),
        format!(
            "--container-runtime-endpoint=unix://{}",
            a.node.containerd_sock().display()
        ),
        "--runtime-request-timeout=2m".into(),
        "--cgroup-driver=cgroupfs".into(),
        format!("--cgroup-root={}", cgroup_root(a.lab, c, a.k)),
        "--fail-swap-on=false".into(),
        format!("--pod-infra-container-image={}", image::PAUSE_IMAGE),
        format!("--cluster-dns={}", c.dns_service_ip()),
        "--cluster-domain=cluster.local".into(),
        format!("--resolv-conf={}", d("resolv.conf")),
        // the machine is shared: evict on real shortage only, never collect the lab's own images
        "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%".into(),
        "--image-gc-high-threshold=100".into(),
        "--image-gc-low-threshold=99".into(),
        format!("--node-labels={}={REAL_POOL}", crate::kubelet::POOL_LABEL),
        format!("--register-with-taints={REAL_NODE_TAINT}=true:NoSchedule"),
        "--read-only-port=0".into(),
        "--healthz-bind-address=127.0.0.1".into(),
        format!("--volume-plugin-dir={}", d("volume-plugins")),
        "--v=1".into(),
    ]
}

/// kube-proxy's command line: iptables mode in the node's namespace; conntrack limits left as they are
/// (they are not the namespace's to change).
pub fn kube_proxy_args(c: &ClusterLayout, k: u32, node: &NodeDir) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", node.join("kube-proxy.kubeconfig").display()),
        format!("--hostname-override={}", c.real_node_name(k)),
        format!("--bind-address={}", c.real_node_ip(k)),
        format!("--cluster-cidr={}", c.pod_cidr),
        "--proxy-mode=iptables".into(),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
        "--v=1".into(),
    ]
}

/// Writes everything real node `k` of cluster `c` needs before it starts: certificates, kubeconfigs
/// (the apiserver at the control plane's node-network address), containerd and CNI configuration, the
/// images, a resolv.conf and its cgroups.
pub fn prepare(lab: &Lab, c: &ClusterLayout, k: u32, pki: &ClusterPki) -> Result<NodeDir> {
    let node = NodeDir::new(&lab.paths, c, k);
    let name = c.real_node_name(k);
    let certs = pki
        .nodes
        .iter()
        .find(|n| n.name == name)
        .with_context(|| format!("no certificates for {name}"))?;
    for d in [
        "pki",
        "containerd",
        "cni/net.d",
        "cni/ipam",
        "kubelet",
        "log",
        "volume-plugins",
        "images",
    ] {
        std::fs::create_dir_all(node.join(d))?;
    }
    let server = format!(
        "https://{}:{}",
        c.control_plane_ip(),
        crate::layout::APISERVER_FRONT_PORT
    );
    let files = [
        ("pki/kubelet.crt", certs.serving.cert.clone()),
        ("pki/kubelet.key", certs.serving.key.clone()),
        (
            "kubelet.kubeconfig",
            pki::kubeconfig(&name, &server, &pki.ca.cert, &certs.client),
        ),
        (
            "kube-proxy.kubeconfig",
            pki::kubeconfig(&name, &server, &pki.ca.cert, &certs.proxy),
        ),
        ("containerd/config.toml", containerd_config(&node)),
        (
            "cni/net.d/10-ferry-lab.conflist",
            cni_config(c.real_node_subnet(k)?, &node.join("cni/ipam")),
        ),
        // pods with dnsPolicy Default get this; ClusterFirst pods get the cluster DNS
        ("resolv.conf", format!("nameserver {}\n", c.control_plane_ip())),
    ];
    for (f, text) in files {
        std::fs::write(node.join(f), text).with_context(|| format!("writing {}", node.join(f).display()))?;
    }
    let cg = cgroup_root(&lab.layout.name, c, k);
    for h in CGROUP_HIERARCHIES {
        let p = PathBuf::from(format!("/sys/fs/cgroup/{h}{cg}"));
        std::fs::create_dir_all(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
    }
    Ok(node)
}

/// Writes the lab's image archives once per lab (`<lab>/images`): pause, the busybox workload, and ferry's
/// own image from the binaries in `bin_dir` (beside ferry-lab).
pub fn write_images(lab: &Lab, bin_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = lab.paths.dir.join("images");
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for (name, archive) in [
        (
            image::PAUSE_IMAGE,
            image::pause(&lab.paths.k8s_bin.join("pause"))?,
        ),
        (image::WORKLOAD_IMAGE, image::workload(Path::new("/bin/busybox"))?),
        (image::FERRY_IMAGE, image::ferry(bin_dir, &dir.join("scratch"))?),
    ] {
        let file = dir.join(format!("{}.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&file, archive)?;
        out.push(file);
    }
    let _ = std::fs::remove_dir_all(dir.join("scratch"));
    Ok(out)
}

/// The command that starts real node `k`: a private mount namespace whose mounts follow the machine's
/// (slave), entered into the node's network namespace, running `ferry-lab node`.
pub fn command(lab: &Lab, c: &ClusterLayout, k: u32, exe: &Path, root: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "slave", "nsenter"])
        .arg(format!(
            "--net=/run/netns/{}",
            crate::layout::real_node_netns(&lab.layout.name, &c.id, k)
        ))
        .arg(exe)
        .args(["--name", &lab.layout.name])
        .arg("--root")
        .arg(root)
        .args(["node", "--cluster", &c.id, "--node", &(k + 1).to_string()]);
    cmd
}

fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Child> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {what}"))
}

fn stop(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `ferry-lab node`: runs real node `k` (1-based on the command line) of cluster `cluster` until SIGTERM.
/// Must run in the node's mount and network namespaces ([`command`]). Exits with an error when containerd,
/// the kubelet or kube-proxy exits, so `ferry-lab status` shows the node as down.
pub async fn run(lab: &Lab, cluster: &str, k: u32) -> Result<()> {
    let c = lab.cluster(cluster)?.clone();
    let node = NodeDir::new(&lab.paths, &c, k);
    let name = c.real_node_name(k);
    let logs = lab.paths.cluster_dir(&c).join("logs");
    let log = |what: &str| logs.join(format!("{name}-{what}.log"));
    // this node's own /var/log (pods' logs: kubelets on one machine would otherwise collect each other's)
    // and host directories pods keep node state in (the gateway's journals: gateways of two lab nodes
    // would otherwise tear down each other's tunnels)
    for (own, at) in NODE_PRIVATE_DIRS {
        std::fs::create_dir_all(node.join(own))?;
        std::fs::create_dir_all(at)?;
        nix::mount::mount(
            Some(&node.join(own)),
            *at,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| {
            format!("bind-mounting the node's {at} (is this the node's own mount namespace?)")
        })?;
    }
    let sock = node.containerd_sock();
    let _ = std::fs::remove_file(&sock);
    let mut containerd = Command::new("containerd");
    containerd
        .arg("--config")
        .arg(node.join("containerd/config.toml"))
        .arg("--root")
        .arg(node.join("containerd/root"))
        .arg("--state")
        .arg(node.join("containerd/state"));
    let mut children: Vec<(&str, Child)> =
        vec![("containerd", spawn("containerd", containerd, &log("containerd"))?)];
    let result = async {
        crate::procs::wait_until("containerd", Duration::from_secs(30), || sock.exists())?;
        let images: Vec<PathBuf> = std::fs::read_dir(lab.paths.dir.join("images"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        for archive in images {
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()?;
            if !out.status.success() {
                bail!(
                    "importing {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let ca = lab.paths.cluster_dir(&c).join("pki/ca.crt");
        let args = kubelet_args(&KubeletArgs {
            lab: &lab.layout.name,
            cluster: &c,
            k,
            node: &node,
            ca: &ca,
        });
        let mut kubelet = Command::new(lab.paths.k8s_bin.join("kubelet"));
        kubelet.args(&args);
        children.push(("kubelet", spawn("kubelet", kubelet, &log("kubelet"))?));
        let mut proxy = Command::new(lab.paths.k8s_bin.join("kube-proxy"));
        proxy.args(kube_proxy_args(&c, k, &node));
        children.push(("kube-proxy", spawn("kube-proxy", proxy, &log("kube-proxy"))?));
        info!(node = %name, "containerd, kubelet and kube-proxy started");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => {
                    for (what, child) in children.iter_mut() {
                        if let Some(status) = child.try_wait()? {
                            bail!("{what} of {name} exited ({status}); its log: {}", log(what).display());
                        }
                    }
                }
            }
        }
    }
    .await;
    // kubelet and kube-proxy first (nothing restarts the pods), then the pods' containers, then containerd
    for (what, child) in children.iter_mut().rev() {
        if *what == "containerd" {
            kill_cgroup_tree(&cgroup_root(&lab.layout.name, &c, k));
        }
        stop(child, Duration::from_secs(5));
    }
    if let Err(e) = &result {
        warn!("{e:#}");
    }
    result
}

/// Every process in cgroup `path` (and below) of the `pids` hierarchy.
fn cgroup_procs(path: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(format!("/sys/fs/cgroup/pids{path}"))];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out
}

/// SIGKILLs every process in cgroup `path` and below until none is left (at most 5 s).
pub fn kill_cgroup_tree(path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup_procs(path);
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line mentions `needle` (e.g. a shim started with a socket under the lab).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points at or below `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

/// Removes what real nodes of lab `lab` (directory `dir`) may leave when killed without stopping: every
/// process in their cgroups (containers), every process started with a path under `dir` (containerd,
/// shims, kubelets), their cgroups, and any mount under `dir`. Returns how many processes it killed.
pub fn sweep(lab: &str, dir: &Path) -> usize {
    let cg = format!("/{}", lab_cgroup(lab));
    let mut killed = cgroup_procs(&cg).len();
    kill_cgroup_tree(&cg);
    let needle = format!("{}/", dir.display());
    for _ in 0..50 {
        let pids = processes_mentioning(&needle);
        if pids.is_empty() {
            break;
        }
        killed += pids.len();
        for pid in pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in CGROUP_HIERARCHIES {
        remove_cgroup_dirs(&PathBuf::from(format!("/sys/fs/cgroup/{h}{cg}")));
    }
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    killed
}

fn remove_cgroup_dirs(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.path().is_dir() {
                remove_cgroup_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LabLayout, LabRequest, NodeCapacity};

    fn lab() -> LabLayout {
        LabLayout::plan(&LabRequest {
            name: "e2e".into(),
            clusters: 2,
            pod_cidrs: vec![],
            service_cidrs: vec![],
            node_cidr_mask: 24,
            node_cidr_mask_v6: 64,
            nodes: 2,
            real_nodes: 2,
            second_subnet: false,
            base_port: 24000,
            node_capacity: NodeCapacity {
                cpu: "4".into(),
                memory: "8Gi".into(),
                pods: 110,
            },
            wan_mtu: 1500,
        })
        .unwrap()
    }

    #[test]
    fn each_kubelet_has_its_own_root_cgroup_socket_address_and_taint() {
        let l = lab();
        let c = &l.clusters[1];
        let paths = LabPaths::new(Path::new("/run/ferry-lab"), "e2e", Path::new("/k8s"));
        let args: Vec<Vec<String>> = (0..2)
            .map(|k| {
                kubelet_args(&KubeletArgs {
                    lab: "e2e",
                    cluster: c,
                    k,
                    node: &NodeDir::new(&paths, c, k),
                    ca: Path::new("/ca.crt"),
                })
            })
            .collect();
        let flag = |a: &[String], f: &str| {
            a.iter()
                .find_map(|x| x.strip_prefix(&format!("--{f}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no --{f}"))
        };
        for f in [
            "root-dir",
            "cgroup-root",
            "container-runtime-endpoint",
            "node-ip",
            "hostname-override",
        ] {
            assert_ne!(flag(&args[0], f), flag(&args[1], f), "--{f} shared");
        }
        assert_eq!(flag(&args[1], "cgroup-root"), "/ferry-lab-e2e/c2-real-node-2");
        assert_eq!(flag(&args[1], "node-ip"), "198.19.98.11");
        assert_eq!(flag(&args[0], "cluster-dns"), "10.97.0.10");
        assert_eq!(
            flag(&args[0], "register-with-taints"),
            "lab.ferry.dev/real-node=true:NoSchedule"
        );
        assert_eq!(flag(&args[0], "cgroup-driver"), "cgroupfs");
        assert!(flag(&args[0], "root-dir").starts_with("/run/ferry-lab/e2e/c2/nodes/real-node-1/"));
        let proxy = kube_proxy_args(c, 1, &NodeDir::new(&paths, c, 1));
        assert_eq!(flag(&proxy, "proxy-mode"), "iptables");
        assert_eq!(flag(&proxy, "cluster-cidr"), "10.244.0.0/16");
        assert_eq!(crate::layout::real_node_netns("e2e", &c.id, 1), "e2e-c2-n2");
    }

    #[test]
    fn cni_and_containerd_configuration_name_the_nodes_own_subnet_and_state() {
        let l = lab();
        let c = &l.clusters[0];
        let paths = LabPaths::new(Path::new("/run/ferry-lab"), "e2e", Path::new("/k8s"));
        let node = NodeDir::new(&paths, c, 1);
        let cni: serde_json::Value = serde_json::from_str(&cni_config(
            c.real_node_subnet(1).unwrap(),
            &node.join("cni/ipam"),
        ))
        .unwrap();
        let bridge = &cni["plugins"][0];
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.201.0/24");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(
            bridge["ipam"]["dataDir"],
            "/run/ferry-lab/e2e/c1/nodes/real-node-2/cni/ipam"
        );
        let toml = containerd_config(&node);
        assert!(
            toml.contains("address = \"/run/ferry-lab/e2e/c1/nodes/real-node-2/containerd/containerd.sock\"")
        );
        assert!(toml.contains(&format!("sandbox_image = \"{}\"", image::PAUSE_IMAGE)));
        assert!(toml.contains("netns_mounts_under_state_dir = true"));
        assert!(toml.contains("conf_dir = \"/run/ferry-lab/e2e/c1/nodes/real-node-2/cni/net.d\""));
    }

    #[test]
    fn mounts_under_lists_deepest_first_and_only_below_the_directory() {
        // /proc is always a mount point; a mere name prefix ("/pro") is not "under" it
        let procs = mounts_under(Path::new("/proc"));
        assert!(procs.iter().any(|m| m == "/proc"), "{procs:?}");
        assert!(procs.iter().all(|m| m == "/proc" || m.starts_with("/proc/")));
        assert_eq!(procs.last().map(String::as_str), Some("/proc"), "deepest first");
        assert!(mounts_under(Path::new("/pro")).is_empty());
    }
}
