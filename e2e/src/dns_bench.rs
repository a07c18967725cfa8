//! `ferry-lab bench dns`: queries per second and latency of ferry-dns on loopback. Without `--server` it
//! starts `ferry-dns` (the real binary) on 127.0.0.1 against cluster c1, with a headless import of 3
//! endpoints, and measures answered queries for its name and refused ones for `example.com.` /
//! `cluster.local.`, side by side; with `--server` it measures that server. Last line JSON.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;

/// One measured run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DnsRun {
    /// What was asked.
    pub name: String,
    /// Queries sent.
    pub queries: u32,
    /// Concurrent clients.
    pub concurrency: u32,
    /// Answers with records.
    pub answered: u32,
    /// `REFUSED` answers.
    pub refused: u32,
    /// Other answers (NXDOMAIN, errors).
    pub other: u32,
    /// No answer within 1 s.
    pub timeouts: u32,
    /// Queries per second (answers / wall time).
    pub qps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest answer.
    pub max_ms: f64,
}

/// Sends `queries` A queries for `names` (round robin) to `server` from `concurrency` clients.
pub async fn measure(server: SocketAddr, names: &[&str], queries: u32, concurrency: u32) -> Result<DnsRun> {
    let concurrency = concurrency.clamp(1, queries.max(1));
    let names: Vec<Name> = names
        .iter()
        .map(|n| Name::from_str(n).with_context(|| format!("{n} is not a DNS name")))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let names = names.clone();
        let n = queries / concurrency + u32::from(c < queries % concurrency);
        tasks.push(tokio::spawn(async move {
            let bind: SocketAddr = if server.is_ipv6() {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            }
            .parse()?;
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(server).await?;
            let mut out = Vec::new();
            let mut buf = vec![0u8; 4096];
            for i in 0..n {
                let id = (c * 7919 + i) as u16;
                let mut m = Message::new();
                m.set_id(id).set_recursion_desired(true);
                m.add_query(Query::query(
                    names[(i as usize) % names.len()].clone(),
                    RecordType::A,
                ));
                let sent = Instant::now();
                sock.send(&m.to_vec()?).await?;
                let got = loop {
                    match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                        Ok(Ok(len)) => match Message::from_vec(&buf[..len]) {
                            Ok(r) if r.id() == id => break Some(r),
                            _ => continue,
                        },
                        _ => break None,
                    }
                };
                out.push((
                    sent.elapsed(),
                    got.map(|r| (r.response_code(), r.answers().len())),
                ));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut r = DnsRun {
        name: names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        queries,
        concurrency,
        ..Default::default()
    };
    let mut lat: Vec<f64> = Vec::new();
    for (d, got) in &all {
        match got {
            None => r.timeouts += 1,
            Some((code, n)) => {
                lat.push(d.as_secs_f64() * 1000.0);
                match (code, n) {
                    (ResponseCode::NoError, n) if *n > 0 => r.answered += 1,
                    (ResponseCode::Refused, _) => r.refused += 1,
                    _ => r.other += 1,
                }
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    r.qps = (r.answered + r.refused + r.other) as f64 / wall;
    r.p50_ms = pct(0.50);
    r.p99_ms = pct(0.99);
    r.max_ms = lat.last().copied().unwrap_or(0.0);
    Ok(r)
}

/// The refused names the loop test and the benchmark use.
pub const OTHER_ZONES: [&str; 2] = ["example.com.", "cluster.local."];

/// Starts ferry-dns on a free loopback port against `lab`'s c1 with a 3-endpoint headless import, measures
/// answered and refused queries, and stops it.
pub async fn run_on_lab(
    lab: &crate::lab::Lab,
    exe: &std::path::Path,
    queries: u32,
    concurrency: u32,
) -> Result<serde_json::Value> {
    use kube::api::{Api, Patch, PatchParams};
    let c = &lab.layout.clusters[0];
    let client = lab.client(c).await?;
    let ns = "bench-dns";
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let pp = PatchParams::apply("ferry-bench").force();
    nss.patch(
        ns,
        &pp,
        &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
    )
    .await?;
    let imports: Api<ferry_crds::mcs::ServiceImport> = Api::namespaced(client.clone(), ns);
    imports
        .patch("echo", &pp, &Patch::Apply(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": { "name": "echo", "namespace": ns },
            "spec": { "type": "Headless", "ports": [{ "name": "http", "protocol": "TCP", "port": 8080 }] },
        })))
        .await?;
    let ar = ferry_plumbing::discovery::endpoint_slice_resource(&client)
        .await
        .context("EndpointSlices not served")?;
    let slices: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    slices
        .patch("echo-bench", &pp, &Patch::Apply(serde_json::json!({
            "apiVersion": ar.api_version, "kind": "EndpointSlice",
            "metadata": { "name": "echo-bench", "namespace": ns, "labels": {
                ferry_crds::mcs::LABEL_SERVICE_NAME: "echo", ferry_crds::mcs::LABEL_SOURCE_CLUSTER: "bench" } },
            "addressType": "IPv4",
            "endpoints": [ { "addresses": ["10.0.0.1"] }, { "addresses": ["10.0.0.2"] }, { "addresses": ["10.0.0.3"] } ],
            "ports": [{ "name": "http", "protocol": "TCP", "port": 8080 }],
        })))
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = std::process::Command::new(exe.with_file_name("ferry-dns"))
        .arg("--kubeconfig")
        .arg(lab.paths.kubeconfig(c))
        .args(["--listen", &server.to_string()])
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting ferry-dns (cargo build --workspace --bins)")?;
    let name = format!("echo.{ns}.svc.clusterset.local.");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = measure(server, &[&name], 1, 1).await;
        if probe.as_ref().is_ok_and(|r| r.answered == 1) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("ferry-dns did not answer {name} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answered = measure(server, &[&name], queries, concurrency).await;
    let refused = measure(server, &OTHER_ZONES, queries, concurrency).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = nss.delete(ns, &Default::default()).await;
    let (answered, refused) = (answered?, refused?);
    Ok(serde_json::json!({
        "bench": "dns", "server": server.to_string(), "queries": queries, "concurrency": concurrency,
        "answered_qps": answered.qps, "answered_p50_ms": answered.p50_ms, "answered_p99_ms": answered.p99_ms,
        "answered": answered.answered, "answered_timeouts": answered.timeouts,
        "refused_qps": refused.qps, "refused_p99_ms": refused.p99_ms, "refused": refused.refused,
        "refused_timeouts": refused.timeouts,
    }))
}
