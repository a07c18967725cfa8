//! `ferryctl`, ferry's command line (also usable as the kubectl plugin `kubectl ferry`).
//!
//! `install`, `uninstall`, `token create`, `peer`, `unpeer`, `status`, `mtu`, `bench`.

mod chart;
mod discover;
mod doctor;
mod install;
mod progress;
mod status;
mod tenant;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_peering_broker::{consumer, identity, token, wire::Resources};
use ferry_tunnel::mtu::MtuPlan;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

#[derive(Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "ferry: borrow compute from another Kubernetes cluster"
)]
struct Cli {
    /// Kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (or upgrade) ferry into this cluster from its chart, rendered here, with server-side apply;
    /// waits until every component is Ready.
    Install(InstallArgs),
    /// Remove everything ferry created in this cluster: peerings first, then its objects, namespace and CRDs.
    Uninstall {
        /// Namespace ferry was installed into.
        #[arg(long, default_value = "ferry-system")]
        namespace: String,
        /// Uninstall even though pods run on a provider's virtual node (they are lost).
        #[arg(long)]
        force: bool,
        /// Values the install was given (only what decides which objects exist matters here).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Peering tokens (run against the provider).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Peer this cluster (the consumer) with the provider that issued the token.
    Peer(PeerArgs),
    /// Remove a peering: the provider's tenant, this cluster's identity and ForeignCluster; waits until the
    /// ForeignCluster, the PeerNetwork and the virtual node are gone.
    Unpeer {
        /// Seconds to wait for them.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Provider cluster ID.
        provider: String,
    },
    /// Every peer (role, conditions, virtual node, tunnel: active gateway node, MTU) and every node (are
    /// the peers routed from it: the route agents' reports).
    Status {
        /// Namespace ferry was installed into (where the route agents report).
        #[arg(long, default_value = "ferry-system")]
        namespace: String,
    },
    /// Check the known cross-cluster failures and the peering, one line per check (ok / WARN / FAIL) with
    /// the evidence and the fix: CIDRs and their NAT, MTU (DF probes through the tunnel), DNS forwarding,
    /// the tunnel, the gateway's conntrack and ports, certificates, clocks, the virtual node. Exit code 1
    /// when a check fails.
    Doctor {
        /// Namespace ferry was installed into.
        #[arg(long, default_value = "ferry-system")]
        namespace: String,
        /// Only this peer (its cluster ID).
        #[arg(long)]
        peer: Option<String>,
        /// The peer cluster's kubeconfig: both sides are read, and the checks that need both ends (keys,
        /// endpoints, the peer's CIDRs, a DNS loop, clock skew between the clusters) are made.
        #[arg(long)]
        peer_kubeconfig: Option<PathBuf>,
        /// Context in the peer's kubeconfig.
        #[arg(long)]
        peer_context: Option<String>,
        /// Where to ask ferry-dns a live question of an imported name (`IP` or `IP:PORT`); by default its
        /// Service address, routable from a node but seldom from a laptop.
        #[arg(long, value_parser = parse_dns_server)]
        dns_server: Option<std::net::SocketAddr>,
    },
    /// On a provider: refuse a consumer's new pods (its running pods stay); its virtual node takes no more.
    Cordon {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// On a provider: accept a cordoned consumer's new pods again.
    Uncordon {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// On a provider: cordon a consumer and move its pods off this cluster (the consumer's controllers
    /// recreate them elsewhere; a pod none recreates stays Pending there, with the reason). Waits until
    /// none is left.
    Drain {
        #[command(subcommand)]
        cmd: DrainCmd,
    },
    /// Offload resources to providers.
    Offload {
        #[command(subcommand)]
        cmd: OffloadCmd,
    },
    /// Stop offloading resources to providers.
    Unoffload {
        #[command(subcommand)]
        cmd: UnoffloadCmd,
    },
    /// Tunnel MTU and TCP MSS for an encapsulation stack, each term explained.
    Mtu {
        /// Underlay MTU.
        #[arg(long, default_value_t = 1500)]
        underlay: u32,
        /// Layers, comma-separated: vxlan, geneve, wireguard, ipsec-gcm, ipsec-chacha, ipsec-cbc-sha1 (-natt), ipip.
        #[arg(long, default_value = "wireguard")]
        stack: String,
        /// The underlay is IPv6 (every outer header is IPv6).
        #[arg(long)]
        ipv6: bool,
        /// Pods carry IPv6: the result must be at least 1280.
        #[arg(long)]
        inner_ipv6: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: `peer` (seconds from peer to Authenticated and to the virtual node Ready); `tunnel`, `route`, `failover`, `pods`, `offload`, `dns` run `ferry-lab bench` on the lab.
    Bench {
        /// What to measure.
        what: String,
        /// Further arguments (for `peer`: --token T; for the lab benches: passed to ferry-lab).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a signed, single-use peering token.
    Create {
        /// How long the token is valid, e.g. 30m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// A consumer's tenancy here.
    Tenant {
        /// The consumer's cluster ID (the Tenant's name: kubectl get tenants).
        id: String,
    },
}

#[derive(Subcommand)]
enum DrainCmd {
    /// A consumer's tenancy here.
    Tenant {
        /// The consumer's cluster ID (the Tenant's name: kubectl get tenants).
        id: String,
        /// Seconds to wait for its pods to be gone.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum OffloadCmd {
    /// Let a namespace's pods run on providers (creates its NamespaceOffloading and waits for the provider
    /// namespaces).
    Namespace {
        /// The namespace (it must exist).
        namespace: String,
        /// Where pods may run.
        #[arg(long, value_enum, default_value_t = Strategy::LocalAndRemote)]
        strategy: Strategy,
        /// How the namespace is named on providers.
        #[arg(long, value_enum, default_value_t = Mapping::DefaultName)]
        mapping: Mapping,
        /// Only providers whose virtual node has this label (`key=value`, repeatable).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// How long to wait for every provider to answer.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
}

#[derive(Subcommand)]
enum UnoffloadCmd {
    /// Bring a namespace home: its pods on virtual nodes are deleted so their controllers recreate them
    /// on local nodes, its NamespaceOffloading goes, and with it the provider namespaces.
    Namespace {
        /// The namespace.
        namespace: String,
        /// Also delete pods on virtual nodes that no controller recreates (they are lost).
        #[arg(long)]
        force: bool,
        /// How long to wait for the provider namespaces to go.
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "verbatim")]
enum Strategy {
    LocalAndRemote,
    Local,
    Remote,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "verbatim")]
enum Mapping {
    DefaultName,
    EnforceSameName,
}

#[derive(clap::Args)]
struct PeerArgs {
    /// The token from `ferryctl token create` on the provider.
    #[arg(long)]
    token: String,
    /// This cluster's ID (default: kept in ferry-system, derived on first use).
    #[arg(long)]
    cluster_id: Option<String>,
    /// CPU to ask for.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory to ask for.
    #[arg(long)]
    memory: Option<String>,
    /// Pods to ask for.
    #[arg(long)]
    pods: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("ferryctl: {}", ferry_plumbing::context::report(e.as_ref()));
        std::process::exit(1);
    }
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Namespace to install into.
    #[arg(long, default_value = "ferry-system")]
    namespace: String,
    /// A chart value, `key.path=value` (repeatable); keys are those of charts/ferry/values.yaml.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Print the objects instead of applying them (`-o yaml`: as YAML, `-o json`: as a JSON list).
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for every component to be Ready.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

async fn client(cli: &Cli) -> Result<kube::Client> {
    client_for(cli.kubeconfig.as_ref(), cli.context.clone()).await
}

async fn client_for(kubeconfig: Option<&PathBuf>, context: Option<String>) -> Result<kube::Client> {
    let opts = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(p)?, &opts).await?
        }
        None => kube::Config::from_kubeconfig(&opts).await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// After unpeer: waits (with progress) until the ForeignCluster, the PeerNetwork and the virtual node of
/// `provider` are gone, naming the one still there and its state.
async fn unpeer_wait(c: &kube::Client, provider: &str, limit: std::time::Duration) -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let node = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(provider).node_name;
    let deleting = |m: &kube::api::ObjectMeta| match (&m.deletion_timestamp, &m.finalizers) {
        (Some(_), Some(f)) if !f.is_empty() => format!("being deleted, finalizers: {}", f.join(", ")),
        (Some(_), _) => "being deleted".to_string(),
        (None, _) => "still there".to_string(),
    };
    let wake = futures::stream::select_all([
        progress::changes_of(Api::<ferry_crds::ForeignCluster>::all(c.clone()), provider).boxed(),
        progress::changes_of(Api::<ferry_crds::PeerNetwork>::all(c.clone()), provider).boxed(),
        progress::changes_of(Api::<Node>::all(c.clone()), &node).boxed(),
        // the state names how many pods are still bound to the node
        progress::changes(
            Api::<k8s_openapi::api::core::v1::Pod>::all(c.clone()),
            kube::runtime::watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        )
        .boxed(),
    ]);
    progress::wait(
        &format!("unpeer {provider}"),
        limit,
        "ForeignCluster, PeerNetwork and virtual node gone",
        wake,
        || {
            let (c, node) = (c.clone(), node.clone());
            async move {
                if let Some(fc) = Api::<ferry_crds::ForeignCluster>::all(c.clone())
                    .get_opt(provider)
                    .await?
                {
                    return Ok(Some(progress::Waiting::new(
                        format!("ForeignCluster {provider}"),
                        deleting(&fc.metadata),
                    )));
                }
                if let Some(pn) = Api::<ferry_crds::PeerNetwork>::all(c.clone())
                    .get_opt(provider)
                    .await?
                {
                    return Ok(Some(progress::Waiting::new(
                        format!("PeerNetwork {provider}"),
                        deleting(&pn.metadata),
                    )));
                }
                if let Some(n) = Api::<Node>::all(c.clone()).get_opt(&node).await? {
                    let pods = ferry_virtual_kubelet::consumer::pods_on_node(&c, provider)
                        .await
                        .unwrap_or(0);
                    let state = format!(
                        "{}, {pods} pod(s) bound to it; the agent removes it",
                        deleting(&n.metadata)
                    );
                    return Ok(Some(progress::Waiting::new(format!("Node {node}"), state)));
                }
                Ok(None)
            }
        },
    )
    .await
}

/// `30m`, `1h`, `2d`, `90s` or plain seconds.
fn parse_ttl(s: &str) -> Result<u64> {
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--ttl {s:?} is not a duration; fix: e.g. 30m, 1h, 2d"))?;
    Ok(n * mult)
}

fn print<T: serde::Serialize>(out: Output, v: &T, table: impl FnOnce() -> String) -> Result<()> {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(v)?),
        Output::Table => print!("{}", table()),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Token {
            cmd: TokenCmd::Create { ttl },
        } => {
            let ttl = parse_ttl(ttl)?;
            let c = client(&cli).await?;
            let id = identity::ensure_identity(&c, None).await?;
            let cm = Api::<ConfigMap>::namespaced(c, ferry_peering_broker::provider::SYSTEM_NAMESPACE)
                .get_opt(identity::BROKER_CONFIGMAP)
                .await?
                .context("no peering broker runs on this cluster (ConfigMap ferry-system/ferry-broker missing); fix: start ferry-agent")?;
            let data = cm.data.unwrap_or_default();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let t = token::issue(&id.key, &id.cluster_id, &data["url"], &data["tlsPin"], ttl, now);
            println!("{t}");
        }
        Cmd::Peer(a) => {
            let c = client(&cli).await?;
            eprintln!("peering with the provider of this token...");
            let start = Instant::now();
            let res = Resources {
                cpu: a.cpu.clone(),
                memory: a.memory.clone(),
                pods: a.pods.clone(),
            };
            let provider = consumer::request_peering(&c, &a.token, a.cluster_id.as_deref(), res).await?;
            let limit = std::time::Duration::from_secs(60);
            let wake = progress::changes_of(Api::<ferry_crds::ForeignCluster>::all(c.clone()), &provider);
            progress::wait(&format!("peer {provider}"), limit, "Authenticated", wake, || {
                let (c, provider) = (c.clone(), provider.clone());
                async move {
                    let fc = Api::<ferry_crds::ForeignCluster>::all(c)
                        .get_opt(&provider)
                        .await?;
                    let st = fc.and_then(|f| f.status).unwrap_or_default();
                    let what = format!("ForeignCluster {provider}");
                    Ok(match st.conditions.iter().find(|c| c.type_ == "Authenticated") {
                        Some(c) if c.status == "True" => None,
                        Some(c) if c.reason == "Refused" => {
                            anyhow::bail!("{}", st.last_error.clone().unwrap_or(c.message.clone()))
                        }
                        Some(c) => Some(progress::Waiting::new(
                            what,
                            format!(
                                "Authenticated={} ({}: {})",
                                c.status,
                                c.reason,
                                st.last_error.as_deref().unwrap_or(&c.message)
                            ),
                        )),
                        None => Some(progress::Waiting::new(
                            what,
                            "no Authenticated condition yet: is ferry-agent running on this cluster?",
                        )),
                    })
                }
            })
            .await?;
            let p = consumer::wait_authenticated(&c, &provider, limit).await?;
            let secs = start.elapsed().as_secs_f64();
            print(cli.output, &p, || {
                format!(
                    "peered with {} as {} in {secs:.2}s: tenant namespace {}, granted cpu={} memory={} pods={}\n",
                    p.provider,
                    p.consumer,
                    p.tenant_namespace,
                    p.granted.cpu.as_deref().unwrap_or("-"),
                    p.granted.memory.as_deref().unwrap_or("-"),
                    p.granted.pods.as_deref().unwrap_or("-")
                )
            })?;
        }
        Cmd::Install(a) => {
            let release = chart::Release::ferry(&a.namespace);
            let mut sets = a.set.clone();
            let given = |sets: &[String], key: &str| {
                sets.iter()
                    .any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key))
            };
            // what the values do not give is read from the cluster (and said, so it can be checked)
            if (!given(&sets, "podCIDRs")
                || !given(&sets, "serviceCIDRs")
                || !given(&sets, "agent.gatewayEndpoint"))
                && let Ok(c) = client(&cli).await
            {
                if !given(&sets, "agent.gatewayEndpoint") {
                    let label = install::gateway_node_label(&sets);
                    match discover::gateway_endpoint(
                        &c,
                        &label,
                        ferry_peering_broker::wireguard::WIREGUARD_BASE_PORT,
                    )
                    .await
                    {
                        Ok((endpoint, source)) => {
                            eprintln!(
                                "ferryctl install: agent.gatewayEndpoint={endpoint} (discovered: {source})"
                            );
                            sets.push(format!("agent.gatewayEndpoint={endpoint}"));
                        }
                        Err(why) => eprintln!(
                            "ferryctl install: agent.gatewayEndpoint not set ({why}): this cluster dials its peers' gateways and is not dialled; fix, if its gateway is reachable from peers (a provider whose consumers cannot be dialled needs it): --set agent.gatewayEndpoint=host:port"
                        ),
                    }
                }
                let pods = if given(&sets, "podCIDRs") {
                    None
                } else {
                    discover::pod_cidrs(&c).await
                };
                let services = if given(&sets, "serviceCIDRs") {
                    None
                } else {
                    discover::service_cidrs(&c).await
                };
                if let Some(f) = &services
                    && !given(&sets, "dns.serviceIP")
                    && let Some(ip) = f.cidrs[0].hosts().nth(52)
                {
                    sets.push(format!("dns.serviceIP={ip}"));
                }
                for (key, found) in [("podCIDRs", pods), ("serviceCIDRs", services)] {
                    if let Some(f) = found {
                        let list: Vec<String> = f.cidrs.iter().map(ToString::to_string).collect();
                        eprintln!(
                            "ferryctl install: {key}={} (discovered: {})",
                            list.join(","),
                            f.source
                        );
                        sets.push(format!("{key}={}", list.join(",")));
                    }
                }
            }
            // values and templates are checked before anything is applied
            let objs = install::render(&install::values(&sets)?, &release)?;
            if a.dry_run {
                match cli.output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&objs)?),
                    _ => print!("{}", install::to_yaml(&objs)),
                }
                return Ok(());
            }
            let c = client(&cli).await?;
            install::install(&c, &objs, &a.namespace, std::time::Duration::from_secs(a.timeout)).await?;
        }
        Cmd::Uninstall {
            namespace,
            force,
            set,
        } => {
            let release = chart::Release::ferry(namespace);
            // the CIDRs change no object's name: placeholders let the chart render what to remove
            let mut sets = vec![
                "podCIDRs=0.0.0.0/0".to_string(),
                "serviceCIDRs=10.96.0.0/12".to_string(),
            ];
            sets.extend(set.iter().cloned());
            let objs = install::render(&install::values(&sets)?, &release)?;
            let c = client(&cli).await?;
            install::uninstall(&c, &objs, namespace, *force).await?;
            println!("ferry uninstalled: peerings, objects, namespace {namespace} and CRDs removed");
        }
        Cmd::Unpeer { provider, timeout } => {
            let c = client(&cli).await?;
            let terminating = consumer::unpeer(&c, provider).await?;
            unpeer_wait(&c, provider, std::time::Duration::from_secs(*timeout)).await?;
            if terminating.is_empty() {
                println!("unpeered from {provider}: it has released the tenant");
            } else {
                println!(
                    "unpeered from {provider}; it is still removing the namespaces {} (peering with it again waits for them)",
                    terminating.join(", ")
                );
            }
        }
        Cmd::Cordon {
            cmd: TenantCmd::Tenant { id },
        } => {
            let c = client(&cli).await?;
            tenant::set_cordoned(&c, id, true).await?;
            println!("tenant {id} cordoned: its new pods are refused, its running pods stay");
        }
        Cmd::Uncordon {
            cmd: TenantCmd::Tenant { id },
        } => {
            let c = client(&cli).await?;
            tenant::set_cordoned(&c, id, false).await?;
            println!("tenant {id} uncordoned");
        }
        Cmd::Drain {
            cmd: DrainCmd::Tenant { id, timeout },
        } => {
            let c = client(&cli).await?;
            let n = tenant::drain(&c, id, std::time::Duration::from_secs(*timeout)).await?;
            println!(
                "tenant {id} drained ({n} ShadowPods deleted) and cordoned; ferryctl uncordon tenant {id} lets it back"
            );
        }
        Cmd::Doctor {
            namespace,
            peer,
            peer_kubeconfig,
            peer_context,
            dns_server,
        } => {
            let c = client(&cli).await?;
            let name = |kc: Option<&PathBuf>, ctx: Option<&String>| {
                ctx.cloned()
                    .or_else(|| kc.and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_string)))
                    .unwrap_or_else(|| "this cluster".into())
            };
            let mut side = doctor::gather::side(&c, "", namespace, *dns_server).await?;
            side.name = side
                .cluster_id
                .clone()
                .unwrap_or_else(|| name(cli.kubeconfig.as_ref(), cli.context.as_ref()));
            let theirs = match peer_kubeconfig {
                Some(p) => {
                    let pc = client_for(Some(p), peer_context.clone()).await?;
                    let mut t = doctor::gather::side(&pc, "", namespace, None).await?;
                    t.name = t
                        .cluster_id
                        .clone()
                        .unwrap_or_else(|| name(Some(p), peer_context.as_ref()));
                    Some(t)
                }
                None => None,
            };
            let mut checks = doctor::run(&side, theirs.as_ref(), peer.as_deref());
            if let Some(t) = &theirs {
                checks.extend(
                    doctor::run(t, Some(&side), None)
                        .into_iter()
                        .filter(|c| c.check != "clock")
                        .filter(|c| {
                            peer.is_none() || c.subject.ends_with(side.name.as_str()) || c.check == "dns"
                        }),
                );
            }
            let failed = doctor::failed(&checks);
            print(
                cli.output,
                &serde_json::json!({ "checks": checks, "failed": failed }),
                || doctor::table(&checks),
            )?;
            if failed {
                std::process::exit(1);
            }
        }
        Cmd::Status { namespace } => {
            let c = client(&cli).await?;
            let v = status::gather(&c, namespace).await?;
            print(cli.output, &v, || status::table(&v))?;
        }
        Cmd::Unoffload {
            cmd:
                UnoffloadCmd::Namespace {
                    namespace,
                    force,
                    timeout,
                },
        } => {
            let c = client(&cli).await?;
            let timeout = std::time::Duration::from_secs(parse_ttl(timeout)?);
            let (moved, remote) = unoffload_namespace(&c, namespace, *force, timeout).await?;
            println!(
                "namespace {namespace} is local again: {} pods moved off virtual nodes (their controllers recreate them here){}",
                moved.len(),
                if remote.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; provider namespaces deleted: {}",
                        remote
                            .iter()
                            .map(|(p, n)| format!("{n} on {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
        }
        Cmd::Offload {
            cmd:
                OffloadCmd::Namespace {
                    namespace,
                    strategy,
                    mapping,
                    selectors,
                    timeout,
                },
        } => {
            let c = client(&cli).await?;
            let mut selector = std::collections::BTreeMap::new();
            for kv in selectors {
                let (k, v) = kv.split_once('=').with_context(|| {
                    format!("--selector {kv:?} is not key=value; fix: e.g. --selector region=eu")
                })?;
                selector.insert(k.to_string(), v.to_string());
            }
            let spec = ferry_crds::NamespaceOffloadingSpec {
                pod_offloading_strategy: match strategy {
                    Strategy::LocalAndRemote => ferry_crds::kinds::PodOffloadingStrategy::LocalAndRemote,
                    Strategy::Local => ferry_crds::kinds::PodOffloadingStrategy::Local,
                    Strategy::Remote => ferry_crds::kinds::PodOffloadingStrategy::Remote,
                },
                cluster_selector: selector,
                namespace_mapping_strategy: match mapping {
                    Mapping::DefaultName => ferry_crds::kinds::NamespaceMappingStrategy::DefaultName,
                    Mapping::EnforceSameName => ferry_crds::kinds::NamespaceMappingStrategy::EnforceSameName,
                },
            };
            let timeout = std::time::Duration::from_secs(parse_ttl(timeout)?);
            let remote = offload_namespace(&c, namespace, spec, timeout).await?;
            print(cli.output, &remote, || {
                let mut s = format!("{:<20} {}\n", "PROVIDER", "NAMESPACE");
                for (p, n) in &remote {
                    s.push_str(&format!("{p:<20} {n}\n"));
                }
                s
            })?;
        }
        Cmd::Mtu {
            underlay,
            stack,
            ipv6,
            inner_ipv6,
            json,
        } => {
            let plan = MtuPlan::compute(*underlay, &MtuPlan::parse_stack(stack)?, *ipv6, *inner_ipv6)?;
            if *json {
                let terms: Vec<_> = plan
                    .terms
                    .iter()
                    .map(|t| serde_json::json!({ "layer": t.encap.to_string(), "bytes": t.bytes, "why": t.why }))
                    .collect();
                let out = serde_json::json!({ "underlay": plan.underlay, "terms": terms, "mtu": plan.mtu,
                    "mss_ipv4": plan.mss_v4, "mss_ipv6": plan.mss_v6 });
                println!("{out}");
            } else {
                println!("{}", plan.mtu);
                print!("{}", plan.explain());
            }
        }
        Cmd::Bench { what, args } if what == "peer" => {
            let token = args
                .iter()
                .skip_while(|a| *a != "--token")
                .nth(1)
                .context("bench peer needs --token T")?;
            let c = client(&cli).await?;
            let start = Instant::now();
            let provider = consumer::request_peering(&c, token, None, Resources::default()).await?;
            let p = consumer::wait_authenticated(&c, &provider, std::time::Duration::from_secs(60)).await?;
            let authenticated = start.elapsed().as_secs_f64();
            // usable: the virtual node Ready (the scheduler places pods on it from then on)
            let node = ferry_virtual_kubelet::VirtualNodeIdentity::for_provider(&p.provider).node_name;
            let ready = kube::runtime::wait::await_condition(
                kube::Api::<k8s_openapi::api::core::v1::Node>::all(c.clone()),
                &node,
                |n: Option<&k8s_openapi::api::core::v1::Node>| {
                    n.and_then(|n| n.status.as_ref()?.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                },
            );
            tokio::time::timeout(std::time::Duration::from_secs(60), ready)
                .await
                .with_context(|| format!("the virtual node {node} not Ready 60s after peering"))??;
            println!(
                "{}",
                serde_json::json!({ "bench": "peer", "provider": p.provider, "seconds_to_authenticated": authenticated, "ready_seconds": start.elapsed().as_secs_f64() })
            );
        }
        Cmd::Bench { what, args } => {
            let exe = std::env::current_exe()?;
            let lab = exe.with_file_name("ferry-lab");
            anyhow::ensure!(
                lab.exists(),
                "ferry-lab not found next to ferryctl ({}); fix: cargo build --workspace --bins",
                lab.display()
            );
            let status = std::process::Command::new(lab)
                .arg("bench")
                .arg(what)
                .args(args)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}

/// kubectl-style age of a unix timestamp: 42s, 7m, 3h, 5d.
/// Creates (or updates) the namespace's `NamespaceOffloading` and waits until every peered provider has
/// a namespace for it; fails with the provider's refusal, or after `timeout`.
/// Waits until the pod webhook no longer sends new pods of `ns` to virtual nodes: a server-side dry run
/// of a pod (it goes through the admission webhooks, creates nothing) comes back without the virtual node
/// toleration. The webhook follows the NamespaceOffloading by watch, so this takes milliseconds; it is
/// asked every 100 ms for at most 10 s, as that propagation has nothing to watch.
async fn steering_stopped(pods: &Api<k8s_openapi::api::core::v1::Pod>, ns: &str) -> Result<()> {
    let probe: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ferryctl-unoffload-probe"},
        "spec": {"containers": [{"name": "c", "image": "ferryctl-unoffload-probe"}]}
    }))?;
    let dry = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let steered = pods
            .create(&dry, &probe)
            .await
            .with_context(|| format!("a dry-run pod in {ns}"))?;
        let tolerated = steered
            .spec
            .and_then(|s| s.tolerations)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key.as_deref() == Some(ferry_virtual_kubelet::VIRTUAL_NODE_TAINT));
        if !tolerated {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the pod webhook still sends new pods of {ns} to virtual nodes 10 s after its NamespaceOffloading was deleted; fix: is ferry-agent running?"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `ferryctl unoffload namespace`: refuses first (nothing changed) when a pod on a virtual node has no
/// controller to recreate it and `force` is not given; then deletes the NamespaceOffloading (the webhook
/// stops sending new pods to virtual nodes, the agent's finalizer deletes the provider namespaces and the
/// label), deletes the pods on virtual nodes (their controllers recreate them locally), and waits, by
/// watch, until they and the NamespaceOffloading are gone. Returns the pods moved and the provider namespaces (provider → name).
async fn unoffload_namespace(
    c: &kube::Client,
    ns: &str,
    force: bool,
    timeout: std::time::Duration,
) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>)> {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::ResourceExt;
    let api: Api<ferry_crds::NamespaceOffloading> = Api::namespaced(c.clone(), ns);
    let Some(no) = api.get_opt("offloading").await? else {
        anyhow::bail!(
            "namespace {ns:?} is not offloaded (no NamespaceOffloading {ns}/offloading); fix: ferryctl offload namespace {ns} first, or nothing to do"
        );
    };
    let remote = no
        .status
        .as_ref()
        .map(|s| s.remote_namespaces.clone())
        .unwrap_or_default();
    let virtual_nodes: std::collections::BTreeSet<String> = Api::<Node>::all(c.clone())
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}={}",
            ferry_virtual_kubelet::VIRTUAL_NODE_LABEL.0,
            ferry_virtual_kubelet::VIRTUAL_NODE_LABEL.1
        )))
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let pods = Api::<Pod>::namespaced(c.clone(), ns);
    let away: Vec<Pod> = pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| virtual_nodes.contains(n))
        })
        .collect();
    let bare: Vec<String> = away
        .iter()
        .filter(|p| p.owner_references().is_empty())
        .map(|p| format!("{ns}/{}", p.name_any()))
        .collect();
    anyhow::ensure!(
        force || bare.is_empty(),
        "{} pods on virtual nodes have no controller and would be lost ({}); nothing was changed; fix: delete or move them, or ferryctl unoffload namespace {ns} --force",
        bare.len(),
        bare.join(", ")
    );
    // first the NamespaceOffloading goes (its finalizer holds it while the agent deletes the provider
    // namespaces): from then on the pod webhook sends no new pod to a virtual node
    api.delete("offloading", &Default::default())
        .await
        .with_context(|| format!("deleting NamespaceOffloading {ns}/offloading"))?;
    steering_stopped(&pods, ns).await?;
    // then the pods on virtual nodes: their controllers recreate them here
    let mut moved = Vec::new();
    for p in &away {
        match pods.delete(&p.name_any(), &Default::default()).await {
            Ok(_) => moved.push(p.name_any()),
            Err(kube::Error::Api(e)) if e.code == 404 => moved.push(p.name_any()),
            Err(e) => return Err(e).with_context(|| format!("deleting pod {ns}/{}", p.name_any())),
        }
    }
    for p in &away {
        let (name, uid) = (p.name_any(), p.uid().unwrap_or_default());
        tokio::time::timeout(
            timeout,
            kube::runtime::wait::await_condition(pods.clone(), &name, kube::runtime::conditions::is_deleted(&uid)),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "pod {ns}/{name} still terminating after {timeout:?}: the virtual kubelet confirms deletions on its node; fix: is ferry-agent running? (kubectl -n ferry-system logs -l app=ferry-agent)"
            )
        })??;
    }
    eprintln!(
        "ferryctl unoffload: waiting for the agent to delete the provider namespaces ({})",
        remote.values().cloned().collect::<Vec<_>>().join(", ")
    );
    let uid = no.uid().unwrap_or_default();
    tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), "offloading", kube::runtime::conditions::is_deleted(&uid)),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "NamespaceOffloading {ns}/offloading still there after {timeout:?}: its finalizer is the agent's, which deletes the provider namespaces first; fix: is ferry-agent running? (kubectl -n ferry-system logs -l app=ferry-agent)"
        )
    })??;
    Ok((moved, remote))
}

async fn offload_namespace(
    c: &kube::Client,
    ns: &str,
    spec: ferry_crds::NamespaceOffloadingSpec,
    timeout: std::time::Duration,
) -> Result<std::collections::BTreeMap<String, String>> {
    use kube::api::{Patch, PatchParams};
    anyhow::ensure!(
        Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone())
            .get_opt(ns)
            .await?
            .is_some(),
        "namespace {ns:?} does not exist; fix: kubectl create namespace {ns}"
    );
    let peers = Api::<ferry_crds::ForeignCluster>::all(c.clone())
        .list(&Default::default())
        .await?
        .items
        .len();
    anyhow::ensure!(
        peers > 0,
        "this cluster has no peers; fix: ferryctl peer --token … first"
    );
    // the label first: from then on every pod created here goes through the webhook (which refuses,
    // rather than misses, pods while the agent is down), so none created after the offloading is missed
    ferry_peering_broker::offloading::label_namespace(c, ns, true).await?;
    let api: Api<ferry_crds::NamespaceOffloading> = Api::namespaced(c.clone(), ns);
    let no = ferry_crds::NamespaceOffloading::new("offloading", spec);
    api.patch(
        "offloading",
        &PatchParams::apply("ferryctl").force(),
        &Patch::Apply(&no),
    )
    .await
    .with_context(|| format!("creating NamespaceOffloading {ns}/offloading"))?;
    // by watch: the agent's NamespaceOffloading controller marks it Ready once every provider answered
    let offloaded = |no: Option<&ferry_crds::NamespaceOffloading>| {
        no.and_then(|n| n.status.as_ref()).is_some_and(|st| {
            !st.remote_namespaces.is_empty()
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    progress::wait(
        &format!("offload namespace {ns}"),
        timeout,
        "every provider answered",
        progress::changes_of(api.clone(), "offloading"),
        || {
            let api = api.clone();
            async move {
                let no = api.get_opt("offloading").await?;
                if offloaded(no.as_ref()) {
                    return Ok(None);
                }
                let st = no.and_then(|n| n.status).unwrap_or_default();
                let state = match st.conditions.iter().find(|c| c.type_ == "Ready") {
                    Some(r) => format!("Ready={} ({}: {})", r.status, r.reason, r.message),
                    None => "no Ready condition yet: is ferry-agent running on this cluster?".into(),
                };
                Ok(Some(progress::Waiting::new(
                    format!("NamespaceOffloading {ns}/offloading"),
                    state,
                )))
            }
        },
    )
    .await?;
    Ok(api
        .get("offloading")
        .await?
        .status
        .unwrap_or_default()
        .remote_namespaces)
}

fn age(created: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    age_between(created, now)
}

fn age_between(created: i64, now: i64) -> String {
    let s = (now - created).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `--dns-server`: `IP` (port 53) or `IP:PORT`, IPv6 as `[::1]:53`.
fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| {
            format!("{s:?} is not an address: give IP or IP:PORT, e.g. 10.96.0.53 or 127.0.0.1:5353")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age_between(100, 142), "42s");
        assert_eq!(age_between(0, 7 * 60), "7m");
        assert_eq!(age_between(0, 3 * 3600), "3h");
        assert_eq!(age_between(0, 5 * 86400), "5d");
        assert_eq!(age_between(10, 0), "0s");
    }

    #[test]
    fn ttl_parses_units_and_refuses_nonsense() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert_eq!(parse_ttl("45").unwrap(), 45);
        for bad in ["", "h", "0h", "-1h", "1w"] {
            assert!(parse_ttl(bad).unwrap_err().to_string().contains("fix:"), "{bad}");
        }
    }

    #[test]
    fn dns_server_takes_an_address_with_or_without_a_port_and_names_the_fix() {
        assert_eq!(
            parse_dns_server("10.96.0.53"),
            Ok("10.96.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_dns_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_dns_server("fd00::53"), Ok("[fd00::53]:53".parse().unwrap()));
        assert!(
            parse_dns_server("ferry-dns")
                .unwrap_err()
                .contains("give IP or IP:PORT")
        );
    }
}
