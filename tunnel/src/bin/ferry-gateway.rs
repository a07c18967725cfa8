//! `ferry-gateway`: the tunnel end of one peering (run it in the host network namespace, as root).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferry_tunnel::gateway;

#[derive(Parser)]
#[command(
    name = "ferry-gateway",
    version,
    about = "WireGuard tunnel, NAT for overlapping CIDRs, MTU/MSS clamp, health"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the peering's tunnel up and keep it healthy until SIGTERM, then remove it.
    Up {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the plan (ops and nftables ruleset) for a given path MTU, changing nothing.
    Plan {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
        /// Path MTU to plan for.
        #[arg(long, default_value_t = 1500)]
        path_mtu: u32,
    },
    /// The in-cluster mode: one tunnel per `PeerNetwork` (the peering writes them), the WireGuard key
    /// from the Secret `ferry-system/ferry-wireguard`, health into each `PeerNetwork`'s status; a deleted
    /// `PeerNetwork` (unpeer) removes its tunnel. Run it with the host's network (hostNetwork), as root.
    Serve {
        /// Kubeconfig (default: in-cluster or $KUBECONFIG).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Directory for the key file, remaps (kept across restarts) and status files.
        #[arg(long, env = "FERRY_STATE_DIR", default_value = "/var/lib/ferry-gateway")]
        state_dir: PathBuf,
        /// Underlay network(s) of this host, never used as remaps (repeatable, or comma-separated).
        #[arg(long = "underlay-cidr", env = "FERRY_UNDERLAY_CIDRS", value_delimiter = ',', value_parser = ferry_plumbing::flags::cidr)]
        underlay_cidrs: Vec<ipnet::IpNet>,
        /// Where remaps come from (repeatable, or comma-separated; default RFC 1918 and ferry's ULA /48).
        #[arg(long = "remap-pool", env = "FERRY_REMAP_POOL", value_delimiter = ',', value_parser = ferry_plumbing::flags::cidr)]
        remap_pool: Vec<ipnet::IpNet>,
        /// `/metrics` of the tunnel on link n at this address, port + n.
        #[arg(long, env = "FERRY_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// `/healthz`, `/readyz` (ready once the WireGuard key is read and PeerNetworks are listed) and
        /// `/metrics` of the controller at this address.
        #[arg(long, env = "FERRY_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
        /// The node this runs on (the chart passes `spec.nodeName`), told in the PeerNetworks' status with
        /// --node-ip for the route agents.
        #[arg(long, env = "FERRY_NODE_NAME", requires = "node_ip")]
        node_name: Option<String>,
        /// That node's address (the chart passes `status.hostIP`).
        #[arg(long, env = "FERRY_NODE_IP", requires = "node_name")]
        node_ip: Option<std::net::IpAddr>,
        /// Run as one of several replicas, tunnels only on the one holding the Lease `ferry-gateway` in
        /// --namespace (the others stand by, ready to take over); needs --node-name.
        #[arg(long, env = "FERRY_LEADER_ELECT", requires = "node_name")]
        leader_elect: bool,
        /// ferry's namespace (the chart passes the pod's): where the gateway Lease lives.
        #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
        namespace: String,
        /// How long the active's Lease lasts unrenewed: the longest a failover waits to start.
        #[arg(long, env = "FERRY_LEASE_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
        lease_seconds: u64,
    },
    /// On every node (a DaemonSet, hostNetwork, as root): routes the peers' CIDRs as this cluster sees
    /// them via the active gateway's node (each PeerNetwork's status.gatewayNodeIP), so pods on any node
    /// reach the peers; its routes carry `proto 102` and are removed on SIGTERM.
    RouteAgent {
        /// Kubeconfig (default: in-cluster or $KUBECONFIG).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// `/healthz`, `/readyz` (ready once the routes are in place) and `/metrics` at this address.
        #[arg(long, env = "FERRY_ADMIN_LISTEN")]
        admin_listen: Option<std::net::SocketAddr>,
        /// This node's name (the chart passes `spec.nodeName`): its route report, a Lease
        /// `ferry-routes-<node>` in --namespace, is what `ferryctl status` shows; absent: no report.
        #[arg(long, env = "FERRY_NODE_NAME")]
        node_name: Option<String>,
        /// ferry's namespace (the chart passes the pod's).
        #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
        namespace: String,
        /// This node's address (the chart passes `status.hostIP`): the source of the VXLAN overlay to a
        /// gateway node on another subnet, and its derived MAC; absent: such gateways are reported only.
        #[arg(long, env = "FERRY_NODE_IP")]
        node_ip: Option<std::net::IpAddr>,
    },
    /// A bare userspace WireGuard device (embedded boringtun, as `up` uses) and nothing else: no NAT, no
    /// routes, no clamp, configured from outside with `wg`. Runs until SIGTERM. `bench tunnel` uses it as
    /// the plain-WireGuard ceiling.
    Device {
        /// Interface name.
        name: String,
        /// boringtun worker threads (as `up` uses).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Remove what a crashed `up` may have left.
    Down {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(Cli::parse())) {
        eprintln!("ferry-gateway: {}", ferry_plumbing::context::report(e.as_ref()));
        std::process::exit(1);
    }
}

/// Health, and `/metrics` with `ferry_<up>` = 1 and whatever else the process registered, served at
/// `listen`, when given.
async fn admin(
    listen: Option<std::net::SocketAddr>,
    up: &'static str,
) -> Result<std::sync::Arc<ferry_plumbing::admin::Health>> {
    let g = ferry_plumbing::metrics::prometheus_client::metrics::gauge::Gauge::<i64>::default();
    g.set(1);
    ferry_plumbing::metrics::register(up, "1 while the process runs", g);
    admin_with(listen, std::sync::Arc::new(ferry_plumbing::metrics::render)).await
}

/// Health and `/metrics` as `render` writes them, served at `listen`, when given.
async fn admin_with(
    listen: Option<std::net::SocketAddr>,
    render: ferry_plumbing::admin::Render,
) -> Result<std::sync::Arc<ferry_plumbing::admin::Health>> {
    let health = std::sync::Arc::new(ferry_plumbing::admin::Health::default());
    if let Some(addr) = listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--admin-listen {addr}"))?;
        let h = health.clone();
        tokio::spawn(async move {
            let _ = ferry_plumbing::admin::serve(l, h, render).await;
        });
    }
    Ok(health)
}

/// A client from `kubeconfig`, else in-cluster or $KUBECONFIG.
async fn client(kubeconfig: Option<PathBuf>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(&p)
                .with_context(|| format!("--kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up { config } => Ok(gateway::run(gateway::load(&config)?).await?),
        Cmd::Plan { config, path_mtu } => {
            let p = gateway::load(&config)?.prepare(path_mtu)?;
            let plan = p.spec.plan()?;
            for op in &plan.apply {
                if !matches!(op, ferry_tunnel::plan::Op::LoadNft { .. }) {
                    println!("{op:?}");
                }
            }
            print!("{}", plan.nft_ruleset);
            println!("# teardown");
            for op in &plan.teardown {
                println!("{op:?}");
            }
            Ok(())
        }
        Cmd::Serve {
            kubeconfig,
            state_dir,
            underlay_cidrs,
            remap_pool,
            metrics_addr,
            admin_listen,
            node_name,
            node_ip,
            leader_elect,
            namespace,
            lease_seconds,
        } => {
            use ferry_plumbing::metrics::prometheus_client::metrics::{counter::Counter, gauge::Gauge};
            let role = std::sync::Arc::new(ferry_tunnel::election::Role::default());
            let (active, changes) = (Gauge::<i64>::default(), Counter::<u64>::default());
            ferry_plumbing::metrics::register(
                "gateway_active",
                "1 on the replica that runs the tunnels, 0 on a standby",
                active.clone(),
            );
            ferry_plumbing::metrics::register(
                "gateway_role_changes",
                "times this replica became active or standby",
                changes.clone(),
            );
            let r = role.clone();
            let render: ferry_plumbing::admin::Render = std::sync::Arc::new(move || {
                active.set(i64::from(r.is_active()));
                changes.inc_by(r.transitions().saturating_sub(changes.get()));
                ferry_plumbing::metrics::render()
            });
            let health = admin_with(admin_listen, render).await?;
            let client = client(kubeconfig).await?;
            let election =
                node_name
                    .as_deref()
                    .filter(|_| leader_elect)
                    .map(|node| ferry_tunnel::election::Election {
                        namespace,
                        lease: ferry_tunnel::election::LEASE.to_string(),
                        me: ferry_tunnel::election::identity(node),
                        duration: std::time::Duration::from_secs(lease_seconds),
                    });
            let opts = ferry_tunnel::controller::ServeOptions {
                state_dir,
                underlay_cidrs: underlay_cidrs.iter().map(ToString::to_string).collect(),
                remap_pool: remap_pool.iter().map(ToString::to_string).collect(),
                metrics_addr,
                node: node_name.zip(node_ip),
                election,
            };
            Ok(ferry_tunnel::controller::serve(client, opts, health, role).await?)
        }
        Cmd::RouteAgent {
            kubeconfig,
            admin_listen,
            node_name,
            namespace,
            node_ip,
        } => {
            let health = admin(admin_listen, "route_agent_up").await?;
            let client = client(kubeconfig).await?;
            let report_to = node_name.map(|node| ferry_tunnel::route_agent::ReportTo { node, namespace });
            Ok(ferry_tunnel::route_agent::run(client, health, report_to, node_ip).await?)
        }
        Cmd::Device { name, threads } => {
            let backend = ferry_tunnel::apply::create_interface_with(&name, threads)?;
            tracing::info!(name, ?backend, "device up; configure it with `wg set`");
            ferry_tunnel::gateway::shutdown_signal().await;
            ferry_tunnel::apply::remove_device(&name);
            let _ = ferry_tunnel::apply::run("ip", &["link", "del", "dev", &name]);
            Ok(())
        }
        Cmd::Down { config } => {
            let cfg = gateway::load(&config)?;
            let p = cfg.prepare(1500)?;
            ferry_tunnel::apply::undo(&p.spec);
            Ok(())
        }
    }
}
