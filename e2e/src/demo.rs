//! `ferry-lab demo`: what `make demo` shows on a running lab. In every cluster a 3-replica Deployment
//! reaches 3/3 Running through the real scheduler and controller-manager on lab nodes (pods run no
//! containers: each has a real network namespace and IP and ferry-lab's echo server); two pods of cluster 1
//! ping each other and exchange 1 MiB over TCP; then cluster 1 peers with cluster 2 (`ferryctl token
//! create` / `peer`) and, through ferry's tunnel, a pod of cluster 1 talks to a pod of cluster 2 although
//! both clusters use the same pod CIDR.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::lab::Lab;
use crate::workload::wait_ready;
pub use crate::workload::{PodView, ensure_echo_deployment, pods_of};

/// Runs `ferry-lab echo-client` inside pod `from`'s namespace against `to:port`; returns its JSON.
pub fn echo_from_pod(
    exe: &std::path::Path,
    from: &PodView,
    to: SocketAddr,
    bytes: u64,
) -> Result<serde_json::Value> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &from.netns])
        .arg(exe)
        .args([
            "echo-client",
            "--to",
            &to.to_string(),
            "--bytes",
            &bytes.to_string(),
            "--timeout",
            "20",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "echo from {} to {to} failed: {}",
            from.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Pings `to` from pod `from`'s namespace; returns the summary line.
pub fn ping_from_pod(from: &PodView, to: &str) -> Result<String> {
    let out = crate::procs::run(
        "ip",
        &[
            "netns",
            "exec",
            &from.netns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            to,
        ],
    )?;
    Ok(out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string())
}

/// `ferry-lab demo`.
pub async fn run(lab: &Lab, exe: &std::path::Path) -> Result<()> {
    let mut summary = Vec::new();
    for c in &lab.layout.clusters {
        let client = lab.client(c).await?;
        println!(
            "== cluster {} ({}; pod CIDR {}, service CIDR {})",
            c.id,
            c.apiserver_url(),
            c.pod_cidr,
            c.service_cidr
        );
        let secs = ensure_echo_deployment(&client, "demo", "echo", 3).await?;
        let pods = pods_of(lab, &c.id, "demo", "echo").await?;
        for p in &pods {
            println!("   {:<28} {:<12} {:<15} {}", p.name, p.node, p.ip, p.phase);
        }
        summary.push(format!(
            "{}: Deployment demo/echo 3/3 Running after {secs:.1}s",
            c.id
        ));
    }
    let c1 = &lab.layout.clusters[0];
    let pods = pods_of(lab, &c1.id, "demo", "echo").await?;
    let (a, b) = match (
        pods.first(),
        pods.iter().find(|p| p.node != pods[0].node).or(pods.get(1)),
    ) {
        (Some(a), Some(b)) => (a.clone(), b.clone()),
        _ => bail!("cluster {} has fewer than 2 demo pods", c1.id),
    };
    println!(
        "== pod to pod in {}: {} ({}, {}) -> {} ({}, {})",
        c1.id, a.name, a.node, a.ip, b.name, b.node, b.ip
    );
    let ping = ping_from_pod(&a, &b.ip)?;
    println!("   ping: {ping}");
    let to: SocketAddr = SocketAddr::new(b.ip.parse().context("pod IP")?, 8080);
    let echo = echo_from_pod(exe, &a, to, 1 << 20)?;
    println!(
        "   tcp echo: {} bytes, sha256 match: {}",
        echo["bytes"], echo["ok"]
    );
    summary.push(format!("{}: ping {} -> {}: {ping}", c1.id, a.ip, b.ip));
    summary.push(format!(
        "{}: 1 MiB TCP echo {} -> {}:8080 checksummed: {}",
        c1.id, a.ip, b.ip, echo["ok"]
    ));
    if lab.layout.clusters.len() >= 2 {
        summary.extend(peer_and_tunnel(lab, exe).await?);
    }
    println!("\n== summary");
    for s in &summary {
        println!("   {s}");
    }
    println!(
        "   both clusters use pod CIDR {} (overlapping on purpose, the kubeadm default)",
        c1.pod_cidr
    );
    println!(
        "   kubectl: kubectl --kubeconfig {} get pods -A -o wide",
        lab.paths.kubeconfig(c1).display()
    );
    println!("   tear down: ferry-lab down --name {}", lab.layout.name);
    if echo["ok"] != json!(true) {
        bail!("the TCP echo did not come back intact");
    }
    Ok(())
}

fn shell(cmd: &mut std::process::Command, shown: &str) -> Result<String> {
    println!("   $ {shown}");
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Peering (agents as lab processes, the real ferryctl commands) and pod-to-pod traffic through the tunnel.
async fn peer_and_tunnel(lab: &Lab, exe: &std::path::Path) -> Result<Vec<String>> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let table = crate::procs::ProcessTable::new(lab.paths.pids())?;
    let (agent, ferryctl) = (exe.with_file_name("ferry-agent"), exe.with_file_name("ferryctl"));
    println!(
        "== peering: {} (consumer) borrows from {} (provider)",
        c1.id, c2.id
    );
    for (idx, c) in [(0, c1), (1, c2)] {
        let name = format!("{}-agent", c.id);
        if table.list().iter().any(|t| t.name == name && t.alive()) {
            continue;
        }
        let cmd = crate::agents::command(lab, idx, &agent);
        table.spawn(&name, cmd, &lab.paths.log(c, "agent"))?;
        let port = c.ports.apiserver + 6;
        crate::procs::wait_until("ferry-agent", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        // the cluster's gateway (hostNetwork: the cluster's host namespace) builds a tunnel per PeerNetwork
        let name = format!("{}-gateway", c.id);
        if !table.list().iter().any(|t| t.name == name && t.alive()) {
            let cmd = crate::agents::gateway_command(lab, idx, &exe.with_file_name("ferry-gateway"));
            table.spawn(&name, cmd, &lab.paths.log(c, "gateway"))?;
        }
    }
    let (k1, k2) = (lab.paths.kubeconfig(c1), lab.paths.kubeconfig(c2));
    let token = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k2)
            .args(["token", "create", "--ttl", "1h"]),
        &format!("ferryctl --kubeconfig {} token create --ttl 1h", k2.display()),
    )?;
    let token = token.trim();
    println!("     {}…", &token[..token.len().min(60)]);
    let peered = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .args(["peer", "--token", token, "--cpu", "4", "--memory", "8Gi"]),
        &format!(
            "ferryctl --kubeconfig {} peer --token <token> --cpu 4 --memory 8Gi",
            k1.display()
        ),
    )?;
    print!("     {peered}");
    let status = shell(
        std::process::Command::new(&ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .arg("status"),
        "ferryctl status",
    )?;
    for l in status.lines() {
        println!("     {l}");
    }
    let burst = offload_and_burst(lab, &ferryctl).await?;
    println!(
        "== tunnel: the peering wrote a PeerNetwork on each side; ferry-gateway (userspace WireGuard, NAT for the overlapping CIDRs) built the tunnel from it"
    );
    let networks: Api<ferry_crds::PeerNetwork> = Api::all(lab.client(c1).await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pn = loop {
        let pn = networks.get_opt("provider-c2").await?;
        if let Some(pn) =
            pn.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Connected"))
        {
            break pn;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "PeerNetwork provider-c2 not Connected after 30s (logs: {})",
            lab.paths.log(c1, "gateway").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = pn.status.clone().unwrap_or_default();
    let remaps: std::collections::BTreeMap<ipnet::IpNet, ipnet::IpNet> = st
        .remaps
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
        .collect();
    println!(
        "   $ kubectl get peernetwork provider-c2: Connected, {} sees {}'s pods at {} (path MTU {}, tunnel MTU {}, TCP MSS clamped, link {})",
        c1.id,
        c2.id,
        st.remaps
            .get(&c2.pod_cidr.to_string())
            .map_or("?", String::as_str),
        st.path_mtu.unwrap_or(0),
        st.tunnel_mtu.unwrap_or(0),
        pn.spec.tunnel_address.as_deref().unwrap_or("?")
    );
    let a = pods_of(lab, &c1.id, "demo", "echo").await?.remove(0);
    let b = pods_of(lab, &c2.id, "demo", "echo").await?.remove(0);
    let b_seen = ferry_tunnel::ipam::translate(b.ip.parse()?, &remaps).context("remap")?;
    let echo = echo_from_pod(exe, &a, SocketAddr::new(b_seen, 8080), 10_000_000)?;
    let http = std::process::Command::new("ip")
        .args(["netns", "exec", &a.netns, "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/{b_seen}/8080; printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
        ))
        .output()?;
    let body = String::from_utf8_lossy(&http.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    println!(
        "   {} pod {} -> {} pod {} (real {}): 10 MB echo checksummed: {}",
        c1.id, a.ip, c2.id, b_seen, b.ip, echo["ok"]
    );
    println!("   HTTP answer from {}: {body}", c2.id);
    // an offloaded pod, addressed by the IP the consumer shows for it, answers through the same tunnel
    let offloaded = pods_of(lab, &c1.id, "burst", "web")
        .await?
        .into_iter()
        .find(|p| p.node == "ferry-provider-c2")
        .context("no offloaded pod")?;
    let to_offloaded = echo_from_pod(exe, &a, SocketAddr::new(offloaded.ip.parse()?, 8080), 1 << 20)?;
    println!(
        "   {} pod {} -> offloaded pod {} at the IP {} shows for it, {} (runs on {}): 1 MiB echo checksummed: {}",
        c1.id, a.ip, offloaded.name, c1.id, offloaded.ip, c2.id, to_offloaded["ok"]
    );
    if echo["ok"] != json!(true) || to_offloaded["ok"] != json!(true) {
        bail!("the cross-cluster echo did not come back intact");
    }
    let discovery = export_and_resolve(lab, exe, &a).await?;
    let seed = crate::seed_demo::run(lab).await?;
    println!("   (agents, gateways and ferry-dns keep running until ferry-lab down)");
    Ok(vec![
        format!(
            "peering: {} authenticated with {} (ferryctl status above)",
            c1.id, c2.id
        ),
        burst,
        format!(
            "tunnel: {} pod {} reached {} pod {} at {b_seen} across identical pod CIDRs, 10 MB checksummed",
            c1.id, a.ip, c2.id, b.ip
        ),
        discovery,
        seed,
    ])
}

/// Exports `demo/echo` from the provider (c2) and, from consumer pod `client`, resolves
/// `echo.demo.svc.clusterset.local` through ferry-dns and fetches it by that name over the tunnel.
async fn export_and_resolve(lab: &Lab, exe: &std::path::Path, client: &PodView) -> Result<String> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    println!(
        "== discovery: {} exports demo/echo (ServiceExport, MCS API); ferry-dns answers clusterset.local in each cluster",
        c2.id
    );
    let table = crate::procs::ProcessTable::new(lab.paths.pids())?;
    for (idx, c) in [(0, c1), (1, c2)] {
        let name = format!("{}-dns", c.id);
        if !table.list().iter().any(|t| t.name == name && t.alive()) {
            let cmd = crate::agents::dns_command(lab, idx, &exe.with_file_name("ferry-dns"));
            table.spawn(&name, cmd, &lab.paths.log(c, "dns"))?;
        }
    }
    let k2 = lab.client(c2).await?;
    let pp = PatchParams::apply("ferry-demo").force();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(k2.clone(), "demo")
        .patch(
            "echo",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "echo", "namespace": "demo" },
                "spec": { "clusterIP": "None", "selector": { "app": "echo" },
                          "ports": [{ "name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080 }] },
            })),
        )
        .await?;
    Api::<ferry_crds::mcs::ServiceExport>::namespaced(k2.clone(), "demo")
        .patch(
            "echo",
            &pp,
            &Patch::Apply(ferry_crds::mcs::ServiceExport::new("demo", "echo")),
        )
        .await?;
    println!(
        "   $ kubectl --context {} -n demo apply -f serviceexport-echo.yaml   (headless Service echo, port http/8080)",
        c2.id
    );
    let name = "echo.demo.svc.clusterset.local";
    let gw = crate::mcs::gateway_of(client).context("the pod's gateway")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ips = loop {
        let ips = tokio::task::block_in_place(|| crate::mcs::resolve(client, name));
        if !ips.is_empty() {
            break ips;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{name} does not resolve after 30s (logs: {}, {})",
            lab.paths.log(c1, "dns").display(),
            lab.paths.log(c1, "agent").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "   {} pod {}: dig @{gw} {name} -> {} (c2's pods at their remapped addresses)",
        c1.id,
        client.ip,
        ips.join(", ")
    );
    let url = format!("http://{name}:8080/");
    let body = tokio::task::block_in_place(|| crate::mcs::curl(client, &url))
        .context("no HTTP answer by the clusterset name")?;
    println!("   {} pod {}: curl {url} -> {body}", c1.id, client.ip);
    let refused = std::process::Command::new("ip")
        .args(["netns", "exec", &client.netns, "dig", "+time=1", "+tries=1"])
        .arg(format!("@{gw}"))
        .args(["example.com", "A"])
        .output()?;
    let status = String::from_utf8_lossy(&refused.stdout)
        .lines()
        .find_map(|l| {
            l.split("status: ")
                .nth(1)
                .map(|s| s.split(',').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    println!(
        "   dig @{gw} example.com -> {status} (ferry-dns answers clusterset.local only, never forwards)"
    );
    Ok(format!(
        "discovery: {} pod resolved {name} to {} and got an HTTP answer from {} pod {}",
        c1.id,
        ips.join(","),
        c2.id,
        body["pod"].as_str().unwrap_or("?")
    ))
}

/// Offloads namespace `burst` from c1 to c2 and scales a Deployment of 1-CPU pods past c1's local capacity:
/// local nodes fill first, the rest run on c2 through the virtual node. Prints where each pod runs.
async fn offload_and_burst(lab: &Lab, ferryctl: &std::path::Path) -> Result<String> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, client1) = (lab.paths.kubeconfig(c1), lab.client(c1).await?);
    println!(
        "== virtual node: {} appears in {} as node ferry-provider-c2",
        c2.id, c1.id
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client1.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !nodes
        .get_opt("ferry-provider-c2")
        .await?
        .is_some_and(|n| ferry_virtual_kubelet::node::is_ready(&n))
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the virtual node is not Ready after 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nss: Api<Namespace> = Api::all(client1.clone());
    if nss.get_opt("burst").await?.is_none() {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "burst"}}))?,
        )
        .await?;
    }
    let offloaded = shell(
        std::process::Command::new(ferryctl)
            .arg("--kubeconfig")
            .arg(&k1)
            .args(["offload", "namespace", "burst"]),
        "ferryctl offload namespace burst",
    )?;
    for l in offloaded.lines() {
        println!("     {l}");
    }
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {crate::kubelet::ECHO_ANNOTATION: "8080"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "web", "image": "echo (lab pods run no containers)",
                    "resources": {"requests": {"cpu": "1"}}}]}}}
    }))?;
    let deps: Api<Deployment> = Api::namespaced(client1.clone(), "burst");
    if deps.get_opt("web").await?.is_none() {
        deps.create(&PostParams::default(), &deploy).await?;
    }
    wait_ready(&deps, "web", 4, Duration::from_secs(60)).await?;
    println!(
        "   Deployment burst/web: 4 replicas of 1 CPU each; scaling to 12 (local nodes have 4 CPUs each)"
    );
    deps.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 12}})),
    )
    .await?;
    wait_ready(&deps, "web", 12, Duration::from_secs(90)).await?;
    let here = pods_of(lab, &c1.id, "burst", "web").await?;
    let there = pods_of(lab, &c2.id, "burst-consumer-c1", "web").await?;
    println!(
        "   {:<24} {:<18} {:<12} RUNS ON",
        "POD (c1)", "NODE (c1)", "IP (c1)"
    );
    let mut remote = 0;
    for p in &here {
        let on = match there.iter().find(|q| q.name == p.name) {
            Some(q) => {
                remote += 1;
                format!("{} {} as {} ({})", c2.id, q.node, q.ip, q.phase)
            }
            None => format!("{} {}", c1.id, p.node),
        };
        println!("   {:<24} {:<18} {:<12} {on}", p.name, p.node, p.ip);
    }
    Ok(format!(
        "offloading: burst/web scaled to 12 → {} on local nodes, {remote} on {} through the virtual node",
        here.len() - remote,
        c2.id
    ))
}
