//! `ferry-lab`: real local Kubernetes clusters for ferry (see `ferry-lab --help`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_e2e::layout::{LabLayout, LabRequest, NodeCapacity};
use ferry_e2e::{bench, demo, echo, kubelet, lab, net};

#[derive(Parser)]
#[command(
    name = "ferry-lab",
    version,
    about = "Real local Kubernetes clusters (1.20.2 control planes + lab nodes with real pod networking)"
)]
struct Cli {
    /// Lab name: prefix of its network namespaces and directory.
    #[arg(long, global = true, env = "FERRY_LAB_NAME", default_value = "ferry")]
    name: String,
    /// Where labs keep their state (kubeconfigs in <root>/<name>/<cluster>/admin.kubeconfig).
    #[arg(long, global = true, env = "FERRY_LAB_ROOT", default_value_os_t = lab::default_root())]
    root: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the clusters, lab nodes and network.
    Up(UpArgs),
    /// Stop every process and remove every namespace the lab started.
    Down,
    /// Show what runs.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print a cluster's admin kubeconfig path.
    Kubeconfig {
        /// Cluster (c1, c2, ...).
        #[arg(long, default_value = "c1")]
        cluster: String,
    },
    /// The two-cluster demo on a running lab.
    Demo,
    /// Writes the lab's OCI image archives (pause, busybox workload, ferry's own image from the binaries
    /// beside ferry-lab) into a directory, for `ctr images import`: nothing is pulled from a registry.
    Images {
        /// Directory to write `pause.tar`, `busybox.tar` and `ferry.tar` into.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Summarize a dhat heap profile (ferry-agent built with --features dhat-heap): the heap at its peak
    /// and end, and the allocation sites that held the most at the peak; JSON.
    Heap {
        /// The profile (the agent's FERRY_DHAT_FILE).
        file: std::path::PathBuf,
        /// How many sites to list.
        #[arg(long, default_value_t = 15)]
        top: usize,
    },
    /// Run a command inside a pod's network namespace: ferry-lab exec --cluster c1 NS/POD -- CMD...
    Exec {
        /// Cluster.
        #[arg(long, default_value = "c1")]
        cluster: String,
        /// NAMESPACE/POD.
        pod: String,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Change the WAN between clusters: MTU, a hidden bottleneck, ICMP filtering, outages.
    Wan(WanArgs),
    /// (internal) One real node (containerd, kubelet 1.20.2, kube-proxy) in its own mount and network
    /// namespace; `up --real-nodes N` starts it.
    Node {
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Node number, from 1.
        #[arg(long)]
        node: u32,
    },
    /// (internal) A cluster's apiserver front and cluster DNS on its node network; `up --real-nodes N`
    /// starts it.
    Services {
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
    /// (internal) The lab kubelet of one cluster; `up` starts it.
    Kubelet {
        /// Cluster.
        #[arg(long)]
        cluster: String,
    },
    /// The built-in echo server lab pods run (TCP echo + HTTP JSON on one port).
    EchoServer {
        /// Port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Pod name it reports.
        #[arg(long, default_value = "")]
        pod: String,
    },
    /// Send N bytes to an echo server and check they come back intact; prints JSON.
    EchoClient {
        /// Address, e.g. 10.244.0.3:8080.
        #[arg(long)]
        to: SocketAddr,
        /// Bytes to send.
        #[arg(long, default_value_t = 1 << 20)]
        bytes: u64,
        /// Seconds before the transfer counts as stalled.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// UDP + TCP echo ([`serve`]) and a failover probe against it ([`run`]: UDP every 10 ms and a
    /// continuous TCP stream; JSON with the longest gap and whether TCP survived). `bench failover` runs
    /// them inside pods' network namespaces.
    FlowProbe {
        #[command(subcommand)]
        what: FlowProbeCmd,
    },
    /// Hold many idle TCP connections to a server (loopback only) and report, as JSON, how many it closed
    /// at once and after the hold.
    Flood {
        /// The server, e.g. 127.0.0.1:24028.
        #[arg(long)]
        to: SocketAddr,
        /// Connections (at most this process's open-file limit).
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Source addresses 127.0.1.1 … 127.0.1.N.
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Seconds to wait for the server to close what is over its limits.
        #[arg(long, default_value_t = 3)]
        settle: u64,
        /// Seconds to hold the connections before counting again.
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum FlowProbeCmd {
    /// Echo UDP datagrams and TCP streams on a port until killed.
    Serve {
        /// Port (UDP and TCP).
        #[arg(long, default_value_t = 7100)]
        port: u16,
    },
    /// Probe an echo server for a while; prints JSON.
    Run {
        /// The server.
        #[arg(long)]
        to: SocketAddr,
        /// Seconds to probe.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Milliseconds between UDP probes (and TCP writes).
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Seconds from creating an N-replica Deployment to all N Running; last line JSON.
    Pods {
        /// Replicas.
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// Cluster.
        #[arg(long, default_value = "c1")]
        cluster: String,
    },
    /// The same N-replica Deployment directly on the provider vs offloaded from the consumer, alternating,
    /// each cluster on its own CPU set; last line JSON with the pairs, ratio = median offloaded/direct, the
    /// work amplification, both agents' CPU and peak RSS, API writes and watch events per pod.
    Offload {
        /// Replicas.
        #[arg(long, default_value_t = 1000)]
        pods: u32,
        /// Pairs of runs (direct, then offloaded).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Let both clusters share every CPU (by default each has its own half, as two machines would).
        #[arg(long)]
        unpinned: bool,
        /// Also draw pods Ready over time (direct vs offloaded, the median pair) into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
    },
    /// ferry-dns queries per second and latency on loopback, answered and refused; last line JSON.
    Dns {
        /// Measure this server instead of starting ferry-dns against c1.
        #[arg(long)]
        server: Option<SocketAddr>,
        /// Queries per measurement.
        #[arg(long, default_value_t = 20000)]
        queries: u32,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
        /// With --server: ask for other zones (example.com., cluster.local.), which must be refused.
        #[arg(long)]
        refused: bool,
        /// With --server: the name to ask for.
        #[arg(long, default_value = "clusterset.local.")]
        name: String,
    },
    /// Throughput through the installed tunnel from a pod on the gateway's node vs a pod on another node
    /// (through the route agent's route), side by side; installs and peers ferry first if it is not;
    /// needs `up --real-nodes 2`; last line JSON with both medians and ratio = other / gateway node.
    Route {
        /// Megabytes per fetch.
        #[arg(long, default_value_t = 50)]
        mb: u32,
        /// Fetches per node.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// The active gateway lost under traffic (its process SIGKILLed, or its node cut from the network),
    /// with two gateway replicas on one side; installs and peers ferry first if it is not; needs `up
    /// --real-nodes 2`; one JSON line per run with gap_seconds (longest gap of a 10 ms UDP probe),
    /// tcp_survived, the takeover time and the active replicas in order.
    Failover {
        /// Whose gateway: c1's (the consumer) or c2's (the provider).
        #[arg(long, value_enum, default_value_t = ferry_e2e::failover::Side::Consumer)]
        side: ferry_e2e::failover::Side,
        /// How the active is lost.
        #[arg(long, value_enum, default_value_t = ferry_e2e::failover::Loss::Kill)]
        loss: ferry_e2e::failover::Loss,
        /// Losses, one after another (the active alternates between the two nodes).
        #[arg(long, default_value_t = 1)]
        runs: u32,
    },
    /// iperf3 pod -> pod through ferry's tunnel + NAT vs plain userspace WireGuard vs the bare WAN; last line JSON.
    Tunnel {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Runs per path (each figure is the median).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Also draw throughput per second (ferry vs plain WireGuard, the median run) into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Number of clusters.
    #[arg(long, default_value_t = 2)]
    clusters: u32,
    /// Pod CIDR: one for every cluster (default: 10.244.0.0/16 in all, overlapping on purpose) or one per cluster, repeated.
    #[arg(long = "pod-cidr")]
    pod_cidr: Vec<String>,
    /// Service CIDR per cluster, repeated (default 10.96.0.0/16, 10.97.0.0/16, ...).
    #[arg(long = "service-cidr")]
    service_cidr: Vec<String>,
    /// Prefix length of each node's pod subnet (IPv4 pod CIDRs).
    #[arg(long, default_value_t = 24)]
    node_cidr_mask: u8,
    /// Prefix length of each node's pod subnet (IPv6 pod CIDRs).
    #[arg(long, default_value_t = 64)]
    node_cidr_mask_v6: u8,
    /// Lab nodes per cluster.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Real nodes per cluster: kubelet 1.20.2, containerd, runc, CNI bridge and kube-proxy, each in its
    /// own network namespace (the demo and `make test` use 2). They carry the taint
    /// `lab.ferry.dev/real-node=true:NoSchedule`.
    #[arg(long, default_value_t = 0)]
    real_nodes: u32,
    /// Every second real node (real-node-2, -4, …) on a second node network behind the cluster's
    /// router: routes to the gateway's node cross subnets (the route agent's overlay).
    #[arg(long)]
    second_subnet: bool,
    /// CPU of each lab node.
    #[arg(long, default_value = "4")]
    node_cpu: String,
    /// Memory of each lab node.
    #[arg(long, default_value = "8Gi")]
    node_memory: String,
    /// Pods per lab node.
    #[arg(long, default_value_t = 110)]
    node_pods: u32,
    /// First port; cluster N uses base+10N (etcd), +1 (etcd peer), +2 (kube-apiserver).
    #[arg(long, default_value_t = 20000)]
    base_port: u16,
    /// MTU of the WAN links.
    #[arg(long, default_value_t = 1500)]
    wan_mtu: u32,
    /// Directory of kube-apiserver, kube-controller-manager, kube-scheduler.
    #[arg(long, env = "FERRY_K8S_BIN", default_value_os_t = lab::default_k8s_bin())]
    k8s_bin: PathBuf,
}

#[derive(clap::Args)]
struct WanArgs {
    /// MTU of every WAN link, both ends.
    #[arg(long)]
    mtu: Option<u32>,
    /// MTU of the last cluster's WAN link: a bottleneck the other clusters' hosts cannot see.
    #[arg(long)]
    bottleneck_mtu: Option<u32>,
    /// Drop ICMP "fragmentation needed" and ICMPv6 "packet too big" in the WAN (on|off).
    #[arg(long)]
    drop_frag_needed: Option<OnOff>,
    /// Cut every WAN link.
    #[arg(long, conflicts_with = "restore")]
    cut: bool,
    /// Restore the WAN links.
    #[arg(long)]
    restore: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,kube_client=off,ferry_e2e=info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("ferry-lab: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let exe = std::env::current_exe().context("locating the ferry-lab binary")?;
    match cli.cmd {
        Cmd::Up(a) => {
            lab::require_root("ferry-lab up")?;
            let req = LabRequest {
                name: cli.name.clone(),
                clusters: a.clusters,
                pod_cidrs: a.pod_cidr,
                service_cidrs: a.service_cidr,
                node_cidr_mask: a.node_cidr_mask,
                node_cidr_mask_v6: a.node_cidr_mask_v6,
                nodes: a.nodes,
                real_nodes: a.real_nodes,
                second_subnet: a.second_subnet,
                base_port: a.base_port,
                node_capacity: NodeCapacity {
                    cpu: a.node_cpu,
                    memory: a.node_memory,
                    pods: a.node_pods,
                },
                wan_mtu: a.wan_mtu,
            };
            if !(1..=250).contains(&req.node_capacity.pods) {
                bail!(
                    "--node-pods {} is out of range; fix: pass a value from 1 to 250",
                    req.node_capacity.pods
                );
            }
            let layout = LabLayout::plan(&req)?;
            let opts = lab::UpOptions {
                root: cli.root.clone(),
                k8s_bin: a.k8s_bin,
                exe,
            };
            let lab = lab::up(layout, opts).await?;
            for c in &lab.layout.clusters {
                println!(
                    "{}  {}  pods {}  services {}  kubeconfig {}",
                    c.id,
                    c.apiserver_url(),
                    c.pod_cidr,
                    c.service_cidr,
                    lab.paths.kubeconfig(c).display()
                );
            }
        }
        Cmd::Down => println!("{}", lab::down(&cli.root, &cli.name)?),
        Cmd::Status { output } => {
            let rows = lab::status(&cli.root, &cli.name).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Table => {
                    println!(
                        "{:<8} {:<26} {:<15} {:<14} {:<7} {:<6} PROCESSES",
                        "CLUSTER", "APISERVER", "POD CIDR", "SERVICE CIDR", "NODES", "PODS"
                    );
                    for r in rows {
                        let procs: Vec<String> = r
                            .processes
                            .iter()
                            .map(|(n, up)| {
                                format!(
                                    "{}{}",
                                    n.split_once('-').map(|x| x.1).unwrap_or(n),
                                    if *up { "" } else { "(DEAD)" }
                                )
                            })
                            .collect();
                        println!(
                            "{:<8} {:<26} {:<15} {:<14} {:<7} {:<6} {}",
                            r.cluster,
                            r.apiserver,
                            r.pod_cidr,
                            r.service_cidr,
                            r.nodes,
                            r.running_pods,
                            procs.join(",")
                        );
                    }
                }
            }
        }
        Cmd::Kubeconfig { cluster } => {
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            println!("{}", lab.paths.kubeconfig(lab.cluster(&cluster)?).display());
        }
        Cmd::Images { out } => {
            use ferry_e2e::image;
            std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
            let k8s = lab::default_k8s_bin();
            for (file, name, archive) in [
                ("pause.tar", image::PAUSE_IMAGE, image::pause(&k8s.join("pause"))?),
                (
                    "busybox.tar",
                    image::WORKLOAD_IMAGE,
                    image::workload(std::path::Path::new("/bin/busybox"))?,
                ),
                (
                    "ferry.tar",
                    image::FERRY_IMAGE,
                    image::ferry(
                        exe.parent().context("ferry-lab's directory")?,
                        &out.join(".scratch"),
                    )?,
                ),
            ] {
                let path = out.join(file);
                std::fs::write(&path, &archive).with_context(|| format!("writing {}", path.display()))?;
                println!("{name}\t{}\t{} bytes", path.display(), archive.len());
            }
            let _ = std::fs::remove_dir_all(out.join(".scratch"));
        }
        Cmd::Demo => {
            lab::require_root("ferry-lab demo")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            demo::run(&lab, &exe).await?;
        }
        Cmd::Bench {
            what: BenchCmd::Pods { count, cluster },
        } => {
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let r = bench::pods(&lab, &cluster, count, &exe).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Bench {
            what:
                BenchCmd::Offload {
                    pods,
                    runs,
                    unpinned,
                    plot,
                },
        } => {
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let o = ferry_e2e::offload_bench::Options {
                pods,
                runs: runs.max(1),
                pinned: !unpinned,
            };
            let r = ferry_e2e::offload_bench::run(&lab, o, &exe).await?;
            if let Some(path) = plot {
                ferry_e2e::plot::write(&path, &ferry_e2e::offload_bench::chart(&r))?;
                eprintln!("[bench] plot: {}", path.display());
            }
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Bench {
            what:
                BenchCmd::Dns {
                    server,
                    queries,
                    concurrency,
                    refused,
                    name,
                },
        } => match server {
            Some(server) => {
                let names: Vec<&str> = if refused {
                    ferry_e2e::dns_bench::OTHER_ZONES.to_vec()
                } else {
                    vec![name.as_str()]
                };
                let r = ferry_e2e::dns_bench::measure(server, &names, queries, concurrency).await?;
                println!("{}", serde_json::to_string(&r)?);
            }
            None => {
                let lab = lab::Lab::load(&cli.root, &cli.name)?;
                let r = ferry_e2e::dns_bench::run_on_lab(&lab, &exe, queries, concurrency).await?;
                println!("{}", serde_json::to_string(&r)?);
            }
        },
        Cmd::Bench {
            what: BenchCmd::Route { mb, runs },
        } => {
            lab::require_root("ferry-lab bench route")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let r = ferry_e2e::route_bench::run(&lab, &exe, mb, runs).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Bench {
            what: BenchCmd::Failover { side, loss, runs },
        } => {
            lab::require_root("ferry-lab bench failover")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            for r in ferry_e2e::failover::bench(&lab, &exe, side, loss, runs).await? {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Cmd::FlowProbe {
            what: FlowProbeCmd::Serve { port },
        } => ferry_e2e::flowprobe::serve(port).await?,
        Cmd::FlowProbe {
            what:
                FlowProbeCmd::Run {
                    to,
                    seconds,
                    interval_ms,
                },
        } => {
            let f =
                ferry_e2e::flowprobe::run(to, seconds, std::time::Duration::from_millis(interval_ms.max(1)))
                    .await?;
            println!("{}", serde_json::to_string(&f)?);
        }
        Cmd::Bench {
            what: BenchCmd::Tunnel { seconds, runs, plot },
        } => {
            lab::require_root("ferry-lab bench tunnel")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let r = bench::tunnel(&lab, seconds, runs).await?;
            if let Some(path) = plot {
                ferry_e2e::plot::write(&path, &bench::tunnel_chart(&r))?;
                eprintln!("[bench] plot: {}", path.display());
            }
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Heap { file, top } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
            let s = ferry_e2e::heap::summarize(&v, top)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
        }
        Cmd::Exec {
            cluster,
            pod,
            command,
        } => {
            lab::require_root("ferry-lab exec")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let (ns, name) = pod.split_once('/').context("pod must be NAMESPACE/NAME")?;
            let c = lab.cluster(&cluster)?;
            let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(lab.client(c).await?, ns);
            let p = api
                .get(name)
                .await
                .with_context(|| format!("pod {pod} in cluster {cluster}"))?;
            let netns = ferry_e2e::layout::pod_netns(
                &lab.layout.name,
                &c.id,
                &kube::ResourceExt::uid(&p).unwrap_or_default(),
            );
            if !net::netns_exists(&netns) {
                bail!("pod {pod} has no network namespace here (hollow, or not running yet)");
            }
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(&command)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Wan(a) => {
            lab::require_root("ferry-lab wan")?;
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let s = net::WanSettings {
                link_mtu: a.mtu,
                bottleneck_mtu: a.bottleneck_mtu,
                drop_frag_needed: a.drop_frag_needed.map(|x| matches!(x, OnOff::On)),
                down: if a.cut {
                    Some(true)
                } else if a.restore {
                    Some(false)
                } else {
                    None
                },
            };
            net::set_wan(&lab.layout, &s)?;
        }
        Cmd::Node { cluster, node } => {
            anyhow::ensure!(
                node >= 1,
                "--node {node}: nodes count from 1; fix: pass --node 1 or more"
            );
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            ferry_e2e::node::run(&lab, &cluster, node - 1).await?;
        }
        Cmd::Services { cluster } => {
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            ferry_e2e::services::run(&lab, &cluster).await?;
        }
        Cmd::Kubelet { cluster } => {
            let lab = lab::Lab::load(&cli.root, &cli.name)?;
            let c = lab.cluster(&cluster)?.clone();
            let nodes = (0..c.nodes)
                .map(|k| {
                    Ok(kubelet::LabNode {
                        name: c.node_name(k),
                        subnet: c.node_subnet(k)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let cfg = kubelet::KubeletConfig {
                lab: lab.layout.name.clone(),
                cluster_id: c.id.clone(),
                host_netns: lab.layout.host_netns(&c),
                nodes,
                capacity: lab.layout.node_capacity.clone(),
                pool: "default".into(),
                hollow: false,
                exe,
            };
            // the node's path to its apiserver (see `relay`): the gateway in the host namespace uses it
            let api = std::net::SocketAddr::from(([127, 0, 0, 1], c.ports.apiserver));
            let l = ferry_e2e::relay::listen_in_netns(&lab.layout.host_netns(&c), api)?;
            tokio::spawn(async move {
                if let Err(e) = ferry_e2e::relay::relay(l, api).await {
                    tracing::warn!("apiserver relay: {e:#}");
                }
            });
            let k = kubelet::LabKubelet::new(lab.client(&c).await?, cfg);
            k.run().await?;
        }
        Cmd::EchoServer { port, pod } => echo::serve(port, pod).await?,
        Cmd::Flood {
            to,
            count,
            sources,
            settle,
            hold,
        } => {
            anyhow::ensure!(
                to.ip().is_loopback(),
                "--to {to}: floods go to loopback servers only; fix: give a 127.0.0.x address"
            );
            let r = ferry_e2e::flood::flood(
                to,
                count,
                sources,
                Duration::from_secs(settle),
                Duration::from_secs(hold),
            )
            .await;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::EchoClient { to, bytes, timeout } => {
            let r = echo::round_trip(to, bytes, Duration::from_secs(timeout)).await?;
            println!("{}", serde_json::to_string(&r)?);
            if !r.ok {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
