//! `ferry-dns`: authoritative DNS for `clusterset.local` (MCS), from the cluster's `ServiceImport`s and
//! EndpointSlices. Refuses every other zone; never forwards. Point CoreDNS's `clusterset.local` stub
//! domain at it (README: "Cross-cluster service discovery").

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_peering_broker::dns;

#[derive(Parser)]
#[command(
    name = "ferry-dns",
    version,
    about = "Authoritative DNS for clusterset.local (MCS)"
)]
struct Args {
    /// Kubeconfig (default: in-cluster or $KUBECONFIG).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: std::net::SocketAddr,
    /// TTL of every answer, seconds (also the negative TTL: removed endpoints vanish within it).
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// TCP connections held at once; more are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = ferry_peering_broker::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// TCP connections held at once from one source address.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ferry_peering_broker::server::DEFAULT_MAX_PER_SOURCE)]
    max_connections_per_source: usize,
    /// Seconds a TCP connection may sit idle (or take to send a query) before it is closed.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_SECONDS", default_value_t = 10)]
    idle_timeout_seconds: u64,
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
    if let Err(e) = rt.block_on(run(Args::parse())) {
        eprintln!("ferry-dns: {e:#}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<()> {
    ferry_peering_broker::server::raise_fd_limit();
    let limits = ferry_peering_broker::server::Limits {
        max_connections: a.max_connections,
        max_per_source: a.max_connections_per_source,
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout_seconds.max(1)),
        ..Default::default()
    };
    let config = match &a.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("--kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let udp = tokio::net::UdpSocket::bind(a.listen)
        .await
        .with_context(|| format!("--listen {} (udp)", a.listen))?;
    let tcp = ferry_peering_broker::server::listen(&a.listen.to_string())
        .await
        .with_context(|| format!("--listen {} (tcp)", a.listen))?;
    let zone: dns::SharedZone = Default::default();
    tracing::info!(listen = %a.listen, "answering for clusterset.local; refusing every other zone");
    tokio::select! {
        r = dns::serve_udp(udp, zone.clone()) => r?,
        r = dns::serve_tcp(tcp, zone.clone(), limits) => r?,
        r = dns::watch(client, zone.clone(), a.ttl) => r?,
    }
    Ok(())
}
