//! `ferry-dns`: authoritative DNS for `clusterset.local` (MCS), from the cluster's `ServiceImport`s and
//! EndpointSlices. Refuses every other zone; never forwards. Point CoreDNS's `clusterset.local` stub
//! domain at it (README: "Cross-cluster service discovery").

use std::path::PathBuf;

use std::sync::Arc;

use clap::Parser;
use ferry_mcs::dns;

#[derive(Parser)]
#[command(
    name = "ferry-dns",
    version,
    about = "Authoritative DNS for clusterset.local (MCS)"
)]
struct Args {
    /// Kubeconfig (default: in-cluster or $KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// UDP and TCP address to answer on.
    #[arg(long, env = "FERRY_DNS_LISTEN", default_value = "0.0.0.0:53")]
    listen: std::net::SocketAddr,
    /// TTL of every answer, seconds (also the negative TTL: removed endpoints vanish within it).
    #[arg(long, env = "FERRY_DNS_TTL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    ttl: u32,
    /// TCP connections held at once; more are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = ferry_plumbing::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// TCP connections held at once from one source address.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ferry_plumbing::listen::DEFAULT_MAX_PER_SOURCE)]
    max_connections_per_source: usize,
    /// Seconds a TCP connection may sit idle (or take to send a query) before it is closed.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_SECONDS", default_value_t = 10)]
    idle_timeout_seconds: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP; default: nowhere).
    #[arg(long, env = "FERRY_ADMIN_LISTEN", value_parser = ferry_plumbing::flags::host_port)]
    admin_listen: Option<String>,
}

fn main() {
    ferry_plumbing::telemetry::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(Args::parse())) {
        eprintln!("ferry-dns: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<(), String> {
    use ferry_plumbing::{admin, listen};
    listen::raise_fd_limit();
    let limits = listen::Limits {
        max_connections: a.max_connections,
        max_per_source: a.max_connections_per_source,
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout_seconds.max(1)),
        ..Default::default()
    };
    let client = ferry_plumbing::client::connect(a.kubeconfig.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let udp = tokio::net::UdpSocket::bind(a.listen)
        .await
        .map_err(|e| format!("--listen {} (udp): {e}", a.listen))?;
    let tcp = listen::listen(&a.listen.to_string())
        .await
        .map_err(|e| format!("--listen {} (tcp): {e}", a.listen))?;
    let health = Arc::new(admin::Health::default());
    health.register("zone", "the ServiceImports are not loaded yet");
    let zone: dns::SharedZone = Default::default();
    let admin = async {
        match &a.admin_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("--admin-listen {addr}: {e}"))?;
                let z = zone.clone();
                let names =
                    ferry_plumbing::metrics::prometheus_client::metrics::gauge::Gauge::<i64>::default();
                ferry_plumbing::metrics::register(
                    "dns_names",
                    "names answered for in clusterset.local",
                    names.clone(),
                );
                let render: admin::Render = Arc::new(move || {
                    names.set(z.read().expect("lock").names.len() as i64);
                    ferry_plumbing::metrics::render()
                });
                admin::serve(l, health.clone(), render)
                    .await
                    .map_err(|e| e.to_string())
            }
            None => std::future::pending().await,
        }
    };
    tracing::info!(listen = %a.listen, "answering for clusterset.local; refusing every other zone");
    tokio::select! {
        r = dns::serve_udp(udp, zone.clone()) => r.map_err(|e| format!("udp: {e}"))?,
        r = dns::serve_tcp(tcp, zone.clone(), limits) => r.map_err(|e| format!("tcp: {e}"))?,
        r = dns::watch(client, zone.clone(), a.ttl, health.clone()) => r.map_err(|e| e.to_string())?,
        r = admin => r?,
        _ = ferry_plumbing::telemetry::shutdown_signal() => {},
    }
    Ok(())
}
