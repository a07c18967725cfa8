//! `ferry-agent`: ferry's per-cluster agent. It only composes the modules, each owned by its crate (as
//! Liqo's controller-manager composes its modules): the peering broker and the ForeignCluster,
//! NamespaceOffloading and identity-renewal controllers (`ferry-peering-broker`), the virtual kubelets'
//! supervisor and the ShadowPod controller (`ferry-virtual-kubelet`), the MCS sync (`ferry-mcs`), and the
//! pod webhooks ([`webhook`]); it serves `/metrics`, `/healthz` and `/readyz` on `--admin-listen`.

mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_peering_broker::{identity, provider, server, wire::Resources};
use ferry_plumbing::{admin, flags};
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

#[derive(Debug, Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "ferry's agent: peering broker, virtual kubelets, ShadowPod controller, pod webhook"
)]
struct Args {
    /// Kubeconfig of this cluster (none: in a Pod, its ServiceAccount).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The URL peers reach this cluster's apiserver at (handed to tenants with the CA). Default: the
    /// kubeconfig's server, or in a Pod the in-cluster address (reachable only inside this cluster).
    #[arg(long, env = "FERRY_API_SERVER_URL", value_parser = https_url)]
    api_server_url: Option<String>,
    /// This cluster's ID (default: from the identity Secret, or derived on first start).
    #[arg(long, env = "FERRY_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Where the broker listens.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8443", value_parser = flags::host_port)]
    listen: String,
    /// The broker URL consumers dial (default: https://<listen>).
    #[arg(long, env = "FERRY_BROKER_URL", value_parser = https_url)]
    broker_url: Option<String>,
    /// This cluster's pod CIDRs (told to consumers).
    #[arg(long = "pod-cidr", env = "FERRY_POD_CIDRS", value_delimiter = ',', value_parser = flags::cidr)]
    pod_cidrs: Vec<IpNet>,
    /// This cluster's service CIDRs (told to peers).
    #[arg(long = "service-cidr", env = "FERRY_SERVICE_CIDRS", value_delimiter = ',', value_parser = flags::cidr)]
    service_cidrs: Vec<IpNet>,
    /// Where this cluster's gateway can be reached (`host:port`; peering link n uses port + 2n). A provider
    /// tells consumers, which dial it; a consumer tells providers, which then dial it too (a provider
    /// behind NAT announces none, and only the consumer is dialled).
    #[arg(long, env = "FERRY_GATEWAY_ENDPOINT", value_parser = flags::host_port)]
    gateway_endpoint: Option<String>,
    /// Where the other gateway replicas can be reached (`host:port`, each gateway node's own address;
    /// repeatable or comma-separated, at most 4): a provider tells consumers, whose gateways try them
    /// while the active one does not answer (the provider's gateway failed over).
    #[arg(long = "standby-gateway-endpoint", env = "FERRY_STANDBY_GATEWAY_ENDPOINTS", value_delimiter = ',', value_parser = flags::host_port, num_args = 0..)]
    standby_gateway_endpoints: Vec<String>,
    /// Most CPU one tenant is granted.
    #[arg(long, env = "FERRY_QUOTA_CPU", default_value = "8", value_parser = quantity)]
    quota_cpu: String,
    /// Most memory one tenant is granted.
    #[arg(long, env = "FERRY_QUOTA_MEMORY", default_value = "16Gi", value_parser = quantity)]
    quota_memory: String,
    /// Where the pod admission webhook listens (consumer role); empty: no webhook.
    #[arg(long, env = "FERRY_WEBHOOK_LISTEN", default_value = "", value_parser = empty_or_host_port)]
    webhook_listen: String,
    /// The URL the apiserver calls the webhook at (default: https://<webhook-listen>).
    #[arg(long, env = "FERRY_WEBHOOK_URL", value_parser = https_url)]
    webhook_url: Option<String>,
    /// Most pods one tenant is granted.
    #[arg(long, env = "FERRY_QUOTA_PODS", default_value = "110", value_parser = quantity)]
    quota_pods: String,
    /// Connections the broker and the webhook each hold at once; more are closed at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections held at once from one source address.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = server::DEFAULT_MAX_PER_SOURCE)]
    max_connections_per_source: usize,
    /// Connections the pod webhook serves at once; more wait in the accept queue until one ends (a burst
    /// of pod creations opens one per review in flight, each holding its TLS and HTTP buffers).
    #[arg(long, env = "FERRY_WEBHOOK_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    webhook_connections: u16,
    /// Seconds a connection may sit idle (or take to send a request's headers or body) before it is closed.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_SECONDS", default_value_t = server::DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout_seconds: u64,
    /// Renew an identity once its certificate is this old, even before two thirds of its life (tests).
    #[arg(long, env = "FERRY_RENEW_AFTER_SECONDS")]
    renew_after_seconds: Option<i64>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP; never the broker's port).
    #[arg(long, env = "FERRY_ADMIN_LISTEN", value_parser = flags::host_port)]
    admin_listen: Option<String>,
    /// Run as one of several replicas: only the holder of the Lease `ferry-agent` in this namespace
    /// works (and is Ready); the others stand by. Empty: no election (a single replica).
    #[arg(long, env = "FERRY_LEADER_ELECT_NAMESPACE", default_value = "")]
    leader_elect_namespace: String,
    /// This replica's identity in the election (the chart passes the pod name).
    #[arg(long, env = "FERRY_LEADER_ID")]
    leader_id: Option<String>,
    /// Port of the kubelet API of this cluster's virtual nodes (`kubectl logs` on offloaded pods), on
    /// `--node-ip`; 0: off. Not 10250: under hostNetwork that is the node's own kubelet.
    #[arg(long, env = "FERRY_KUBELET_PORT", default_value_t = 10260)]
    kubelet_port: u16,
    /// The address the apiserver reaches this agent at (the node's, under hostNetwork; the chart passes
    /// status.hostIP): the virtual nodes' InternalIP. Unset: no kubelet API.
    #[arg(long, env = "FERRY_NODE_IP")]
    node_ip: Option<std::net::IpAddr>,
    /// Milliseconds the offloaded pods' status patches gather before they go out together (a pod's first
    /// after a quiet spell goes at once); 0: each at once, from its reconcile. Fewer, larger bursts of pod
    /// updates let the controllers of this cluster merge their syncs (less of their CPU), at up to a tick
    /// of latency on each status under a stream (README: 26 % faster at 10,000 pods, 8–12 % slower at 1,000).
    #[arg(long, env = "FERRY_STATUS_TICK_MS", default_value_t = ferry_virtual_kubelet::status_writer::TICK.as_millis() as u64)]
    status_tick_ms: u64,
    /// Offloaded pods reconciled at once by each virtual kubelet; each holds a connection and its buffers
    /// to both clusters.
    #[arg(long, env = "FERRY_POD_RECONCILES", default_value_t = ferry_virtual_kubelet::consumer::RECONCILES, value_parser = clap::value_parser!(u16).range(1..=256))]
    pod_reconciles: u16,
}

/// The Lease the agent's replicas elect their leader with, and how long it lasts unrenewed (the
/// longest a failover waits).
const LEADER_LEASE: &str = "ferry-agent";
const LEADER_LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(15);

/// A resource quantity within ferry's bounds (`8`, `500m`, `16Gi`).
fn quantity(s: &str) -> std::result::Result<String, String> {
    ferry_virtual_kubelet::quantity::parse_bounded(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e}; fix: a Kubernetes quantity such as 8, 500m or 16Gi"))
}

/// An `https://` URL (what the apiserver and consumers dial).
fn https_url(s: &str) -> std::result::Result<String, String> {
    match s.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() => Ok(s.to_string()),
        _ => Err(format!(
            "{s:?} is not an https:// URL; fix: e.g. https://broker.example:8443"
        )),
    }
}

/// Empty (off) or `host:port`.
fn empty_or_host_port(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() {
        Ok(String::new())
    } else {
        flags::host_port(s)
    }
}

fn strings(cidrs: &[IpNet]) -> Vec<String> {
    cidrs.iter().map(ToString::to_string).collect()
}

impl Args {
    fn pace(&self) -> ferry_virtual_kubelet::peer::Pace {
        ferry_virtual_kubelet::peer::Pace {
            status_tick: std::time::Duration::from_millis(self.status_tick_ms),
            reconciles: self.pod_reconciles,
        }
    }

    fn limits(&self) -> server::Limits {
        server::Limits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds.max(1)),
            handshake_timeout: std::time::Duration::from_secs(self.idle_timeout_seconds.clamp(1, 10)),
            ..Default::default()
        }
    }
}

/// With `--features dhat-heap`: every allocation is recorded (see `main`).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::main]
async fn main() {
    // the heap profile is written when this is dropped: on a clean return (SIGTERM), not on exit(1)
    let args = Args::parse();
    // `{cluster}` in the file name: each agent of a lab writes its own
    #[cfg(feature = "dhat-heap")]
    let _profile = dhat::Profiler::builder()
        .file_name(
            std::env::var("FERRY_DHAT_FILE")
                .unwrap_or_else(|_| "dhat-heap.json".into())
                .replace("{cluster}", args.cluster_id.as_deref().unwrap_or("unnamed")),
        )
        .build();
    ferry_plumbing::telemetry::init();
    if let Err(e) = run(args).await {
        eprintln!("ferry-agent: {}", ferry_plumbing::context::report(e.as_ref()));
        std::process::exit(1);
    }
}

/// The host of a `host:port` listen address (brackets of an IPv6 address removed).
fn host_of(listen: &str) -> String {
    listen
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_default()
}

async fn run(a: Args) -> Result<()> {
    server::raise_fd_limit();
    let limits = a.limits();
    let pace = a.pace();
    let (server, ca_pem) = match &a.kubeconfig {
        Some(k) => {
            ferry_plumbing::client::server_and_ca(k).map_err(|e| anyhow::anyhow!("--kubeconfig: {e}"))?
        }
        None => ferry_plumbing::client::in_cluster_server_and_ca()
            .map_err(|e| anyhow::anyhow!("no --kubeconfig and not in a Pod: {e}"))?,
    };
    let api_server = a.api_server_url.clone().unwrap_or(server);
    let client = ferry_plumbing::client::connect(a.kubeconfig.as_deref()).await?;
    let health = Arc::new(admin::Health::default());
    health.register("broker", "not listening yet");
    // /metrics, /healthz and /readyz from the start: a standby replica is live, and not Ready
    let provider_cell: Arc<std::sync::OnceLock<Arc<provider::Provider>>> = Default::default();
    let admin = match &a.admin_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin-listen {addr}"))?;
            let (health, cell) = (health.clone(), provider_cell.clone());
            Some(tokio::spawn(async move {
                admin::serve(l, health, metrics(cell)).await
            }))
        }
        None => None,
    };
    let leader = if a.leader_elect_namespace.is_empty() {
        None
    } else {
        let me = a
            .leader_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .context(
                "--leader-id: this replica needs an identity; fix: set FERRY_LEADER_ID (the pod name)",
            )?;
        health.register("leader", "standing by: another replica holds the Lease");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &a.leader_elect_namespace);
        tokio::select! {
            _ = ferry_plumbing::leader::acquire(&leases, LEADER_LEASE, &me, LEADER_LEASE_DURATION) => {}
            _ = ferry_plumbing::telemetry::shutdown_signal() => return Ok(()),
        }
        health.set("leader", Ok(()));
        // renewed from now on, while the rest starts (setup may take longer than the Lease lasts)
        Some(tokio::spawn(async move {
            ferry_plumbing::leader::hold(&leases, LEADER_LEASE, &me, LEADER_LEASE_DURATION).await
        }))
    };
    identity::ensure_crds(&client)
        .await
        .context("installing ferry's CRDs")?;
    let id = identity::ensure_identity(&client, a.cluster_id.as_deref()).await?;
    let url = a
        .broker_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", a.listen));
    let host = host_of(&a.listen);
    let (cert, key) = identity::ensure_broker_tls(&client, &url, &[host, "localhost".into()]).await?;
    let tls = ferry_peering_broker::tls::server_config(&cert, &key, &ca_pem)?;
    let wg = ferry_peering_broker::wireguard::ensure_key(&client)
        .await
        .context("the WireGuard key")?;
    let network = ferry_peering_broker::wire::LocalNetwork {
        pod_cidrs: strings(&a.pod_cidrs),
        service_cidrs: strings(&a.service_cidrs),
        wireguard_public_key: wg.public_b64(),
        gateway_endpoint: a.gateway_endpoint.clone(),
        standby_gateway_endpoints: a.standby_gateway_endpoints.clone(),
    };
    let p = Arc::new(provider::Provider {
        client,
        cluster_id: id.cluster_id.clone(),
        key: id.key,
        api_server,
        ca_pem,
        quota: Resources {
            cpu: Some(a.quota_cpu),
            memory: Some(a.quota_memory),
            pods: Some(a.quota_pods),
        },
        pod_cidrs: strings(&a.pod_cidrs),
        network: network.clone(),
        mcs: Default::default(),
        stats: Default::default(),
    });
    let listener = server::listen(&a.listen)
        .await
        .with_context(|| format!("--listen {}", a.listen))?;
    let local_cidrs = a.pod_cidrs.clone();
    let client = p.client.clone();
    // the kubelet API of the virtual nodes: where the apiserver dials for `kubectl logs` on their pods
    let kubelet = match (a.node_ip, a.kubelet_port) {
        (Some(ip), port) if port != 0 => {
            let at = std::net::SocketAddr::new(ip, port);
            let l = server::listen(&at.to_string())
                .await
                .with_context(|| format!("--kubelet-port {port} on --node-ip {ip}"))?;
            // the offloaded pods' figures: each provider's broker, asked as the tenant
            let stats: ferry_virtual_kubelet::kubelet_server::StatsFetch = std::sync::Arc::new(|identity| {
                Box::pin(async move {
                    let (status, body) = ferry_peering_broker::consumer::call_broker_limited(
                        &identity,
                        "GET",
                        "/v1/stats",
                        None,
                        ferry_peering_broker::tls::MAX_STATS_RESPONSE,
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                    if status != 200 {
                        return Err(format!(
                            "the broker answered GET /v1/stats with {status}: {}",
                            String::from_utf8_lossy(&body)
                                .chars()
                                .take(300)
                                .collect::<String>()
                        ));
                    }
                    serde_json::from_slice(&body).map_err(|e| format!("the broker's figures: {e}"))
                })
            });
            Some((
                ferry_virtual_kubelet::kubelet_server::KubeletApi::new(at, Some(stats)),
                l,
            ))
        }
        _ => {
            tracing::warn!(
                "no --node-ip (FERRY_NODE_IP): the virtual nodes serve no kubelet API, so kubectl logs on offloaded pods fails"
            );
            None
        }
    };
    let kubelet_api = kubelet.as_ref().map(|(k, _)| k.clone());
    let kubelet_server = async {
        match kubelet {
            Some((k, l)) => loop {
                // the rest of the agent does not depend on it: a failure is reported and retried
                if let Err(e) = ferry_virtual_kubelet::kubelet_server::serve(
                    client.clone(),
                    k.clone(),
                    format!("ferry-{}", id.cluster_id),
                    &l,
                    limits.clone(),
                )
                .await
                {
                    tracing::error!(
                        "the kubelet API of the virtual nodes (kubectl logs on offloaded pods): {e}; retrying in 30s"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            },
            None => std::future::pending::<Result<()>>().await,
        }
    };
    let webhook = async {
        if a.webhook_listen.is_empty() {
            return std::future::pending::<Result<()>>().await;
        }
        let wl = server::listen(&a.webhook_listen)
            .await
            .with_context(|| format!("--webhook-listen {}", a.webhook_listen))?;
        let url = a
            .webhook_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", a.webhook_listen));
        // the certificate names the host the apiserver dials (the URL's) as well as the listen address
        let authority = url
            .strip_prefix("https://")
            .unwrap_or(&url)
            .split('/')
            .next()
            .unwrap_or("");
        let url_host = if authority.ends_with(']') || !authority.contains(':') {
            authority.trim_matches(['[', ']']).to_string()
        } else {
            host_of(authority)
        };
        let (cert, key) = ferry_peering_broker::tls::self_signed(&[
            host_of(&a.webhook_listen),
            url_host,
            "localhost".into(),
        ])?;
        let tls = ferry_peering_broker::tls::server_config(&cert, &key, &p.ca_pem)?;
        let (app, cache) = webhook::router(client.clone());
        webhook::register(&client, &url, &cert)
            .await
            .context("registering the pod webhook")?;
        tracing::info!(%url, "pod admission webhook registered");
        // the webhook's callers are this cluster's apiservers, a few addresses that open hundreds of
        // connections in a burst of pod creations (a ReplicaSet's slow start): the per-source cap that
        // protects the peer-facing broker would make them fail pod creations, so only the total is capped,
        // and a connection past it waits for one to end instead of being closed
        let webhook_limits = server::Limits {
            max_connections: usize::from(a.webhook_connections),
            max_per_source: usize::from(a.webhook_connections),
            when_full: server::WhenFull::Wait,
            ..limits.clone()
        };
        tokio::select! {
            r = server::serve_router(wl, tls, app, webhook_limits) => r?,
            _ = cache => {},
        }
        Ok(())
    };
    let _ = provider_cell.set(p.clone());
    let admin = async {
        match admin {
            Some(task) => task
                .await
                .context("the admin server")?
                .map_err(anyhow::Error::from),
            None => std::future::pending::<Result<()>>().await,
        }
    };
    let lost = async {
        match leader {
            Some(renewing) => renewing
                .await
                .unwrap_or_else(|e| format!("the Lease renewal task failed: {e}")),
            None => std::future::pending::<String>().await,
        }
    };
    let (mcs_peers, mcs_peers_cache) = ferry_peering_broker::exchange::BrokerPeers::new(&client);
    health.set("broker", Ok(()));
    tracing::info!(cluster = id.cluster_id, %url, "peering broker listening; controllers running");
    tokio::select! {
        r = server::serve_router(listener, tls, server::router(p.clone()), limits.clone()) => r?,
        r = webhook => r?,
        r = admin => r?,
        why = lost => anyhow::bail!("no longer the active replica ({why}); exiting so nothing is written twice"),
        _ = ferry_plumbing::telemetry::shutdown_signal() => return Ok(()),
        _ = ferry_peering_broker::reconciler::run(client.clone(), network.clone()) => anyhow::bail!("the ForeignCluster reconciler stopped"),
        _ = ferry_peering_broker::offloading::run(client.clone()) => anyhow::bail!("the NamespaceOffloading reconciler stopped"),
        r = kubelet_server => r?,
        _ = ferry_virtual_kubelet::supervisor::run(client.clone(), id.cluster_id.clone(), local_cidrs, kubelet_api, pace) => anyhow::bail!("the virtual kubelet supervisor stopped"),
        _ = ferry_virtual_kubelet::provider::run(client.clone()) => anyhow::bail!("the ShadowPod controller stopped"),
        _ = ferry_peering_broker::consumer::run_renewals(client.clone(), a.renew_after_seconds) => anyhow::bail!("the identity renewal loop stopped"),
        _ = mcs_peers_cache => anyhow::bail!("the peerings cache stopped"),
        _ = ferry_mcs::sync::run(client.clone(), id.cluster_id.clone(), p.mcs.clone(), mcs_peers) => anyhow::bail!("the multi-cluster services loop stopped"),
    }
    Ok(())
}

/// `/metrics`: the process's registry (controllers, pod reflection, broker requests; on a standby replica
/// only what has run) and `ferry_agent_mcs_peers`, read at each scrape.
fn metrics(cell: Arc<std::sync::OnceLock<Arc<provider::Provider>>>) -> admin::Render {
    let peers = ferry_plumbing::metrics::prometheus_client::metrics::gauge::Gauge::<i64>::default();
    ferry_plumbing::metrics::register(
        "agent_mcs_peers",
        "peers whose exports this agent holds",
        peers.clone(),
    );
    Arc::new(move || {
        let tenants = cell
            .get()
            .map(|p| p.mcs.remote.lock().map(|r| r.len()).unwrap_or(0))
            .unwrap_or(0);
        peers.set(tenants as i64);
        ferry_plumbing::metrics::render()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> std::result::Result<Args, String> {
        let mut argv = vec!["ferry-agent", "--kubeconfig", "/k"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_flags_are_refused_before_anything_is_written_naming_the_flag_and_the_fix() {
        let a = parse(&[
            "--pod-cidr",
            "10.244.0.0/16,fd00:10:244::/48",
            "--quota-cpu",
            "500m",
        ])
        .unwrap();
        assert_eq!(strings(&a.pod_cidrs), ["10.244.0.0/16", "fd00:10:244::/48"]);
        for (flags, want) in [
            (&["--pod-cidr", "10.244.0.0/33"][..], "--pod-cidr"),
            (&["--service-cidr", "10.96.1.0/12"][..], "host bits"),
            (&["--quota-memory", "lots"][..], "--quota-memory"),
            (&["--quota-pods=-3"][..], "--quota-pods"),
            (&["--listen", "8443"][..], "--listen"),
            (&["--gateway-endpoint", "198.18.2.2"][..], "--gateway-endpoint"),
            (&["--broker-url", "http://x:1"][..], "https://"),
        ] {
            let e = parse(flags).unwrap_err();
            assert!(e.contains(want) && e.contains("fix:"), "{flags:?}: {e}");
        }
    }
}
