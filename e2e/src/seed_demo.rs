//! The seed's own lab, reproduced on real nodes (part of `ferry-lab demo`): both clusters on the identical
//! kubeadm default pod CIDR; in c2 a Deployment of busybox httpd behind a Service, exported with a
//! `ServiceExport`; in c1 a client pod that fetches it by its `clusterset.local` name, through the cluster
//! DNS (the lab's resolver, forwarding `clusterset.local` to ferry-dns as CoreDNS would) and the tunnel;
//! `kubectl logs` of the server shows the request. Every step is the `kubectl` an operator would type.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::lab::Lab;
use crate::workload::{WEB_PORT, busybox_web, kubectl, wait_ready};

/// Namespace of this part, on both clusters.
pub const NS: &str = "seed";

fn show(lab: &Lab, c: &crate::layout::ClusterLayout, args: &[&str]) -> Result<String> {
    println!("   $ kubectl --context {} {}", c.id, args.join(" "));
    let (ok, out, err) = kubectl(lab, c, args);
    if !ok {
        bail!("kubectl {} on {}: {}", args.join(" "), c.id, err.trim());
    }
    Ok(out)
}

/// Runs the part; returns its summary line. Needs a lab peered through ferry installed in both clusters
/// (the lab's resolver forwards `clusterset.local` to the installed ferry-dns) and real nodes in both.
pub async fn run(lab: &Lab) -> Result<String> {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    if c1.real_nodes == 0 || c2.real_nodes == 0 {
        return Ok("seed lab on real nodes: skipped (ferry-lab up --real-nodes 2 runs it)".into());
    }
    println!(
        "== the seed's lab on real nodes: both clusters on {} (kubeadm default); busybox httpd in {} exported, fetched from {} by its clusterset.local name",
        c1.pod_cidr, c2.id, c1.id
    );
    let (k1, k2) = (lab.client(c1).await?, lab.client(c2).await?);
    for k in [&k1, &k2] {
        crate::lab::fresh_namespace(k, NS).await;
    }
    // c2: the server, a headless Service (clients reach the pods themselves, at their remapped
    // addresses) and its export
    // both on each cluster's gateway node: reaching the gateway from every node is the route agent's
    // (issue 19)
    let (mut dep, _) = busybox_web("web", 2);
    let on_gateway = |c: &crate::layout::ClusterLayout| {
        std::collections::BTreeMap::from([("kubernetes.io/hostname".to_string(), c.real_node_name(0))])
    };
    if let Some(spec) = dep.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_selector = Some(on_gateway(c2));
        spec.topology_spread_constraints = None;
    }
    let pp = PatchParams::apply("ferry-demo").force();
    let deps: Api<Deployment> = Api::namespaced(k2.clone(), NS);
    deps.patch("web", &pp, &Patch::Apply(&dep)).await?;
    Api::<Service>::namespaced(k2.clone(), NS)
        .patch(
            "web",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "web", "namespace": NS },
                "spec": { "clusterIP": "None", "selector": { "app": "web" },
                          "ports": [{ "name": "http", "protocol": "TCP", "port": WEB_PORT, "targetPort": WEB_PORT }] },
            })),
        )
        .await?;
    Api::<ferry_crds::mcs::ServiceExport>::namespaced(k2.clone(), NS)
        .patch(
            "web",
            &pp,
            &Patch::Apply(ferry_crds::mcs::ServiceExport::new(NS, "web")),
        )
        .await?;
    println!(
        "   $ kubectl --context {} -n {NS} apply -f web.yaml   (Deployment web: busybox httpd on real nodes, headless Service web, ServiceExport web)",
        c2.id
    );
    let secs = wait_ready(&deps, "web", 2, Duration::from_secs(90)).await?;
    print!("{}", show(lab, c2, &["-n", NS, "get", "pods", "-o", "wide"])?);
    // c1: a client pod on a real node
    let client: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "client", "namespace": NS },
        "spec": {
            "nodeSelector": on_gateway(c1),
            "tolerations": [{ "key": crate::node::REAL_NODE_TAINT, "operator": "Exists" }],
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "client", "image": crate::image::WORKLOAD_IMAGE,
                             "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"] }],
        },
    }))?;
    let pods1: Api<Pod> = Api::namespaced(k1.clone(), NS);
    pods1.patch("client", &pp, &Patch::Apply(&client)).await?;
    println!(
        "   $ kubectl --context {} -n {NS} run client --image {} -- sleep 3600",
        c1.id,
        crate::image::WORKLOAD_IMAGE
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods1.get("client").await?.status.and_then(|s| s.phase).as_deref() != Some("Running") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the client pod in {} is not Running after 60s",
            c1.id
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let name = format!("web.{NS}.svc.clusterset.local");
    let url = format!("http://{name}:{WEB_PORT}/");
    // the import reaches c1 within the exports' sync; ask until the name resolves and answers
    let deadline = Instant::now() + Duration::from_secs(60);
    let server = loop {
        // each try bounded: a connection begun before the Service's rules exist keeps its SYNs on a
        // conntrack entry without them
        let fetch = format!("timeout 10 wget -qO- {url}");
        let (ok, out, err) = kubectl(lab, c1, &["-n", NS, "exec", "client", "--", "sh", "-c", &fetch]);
        if ok && !out.trim().is_empty() {
            break out.trim().to_string();
        }
        if Instant::now() > deadline {
            bail!(
                "{url} gave no answer from {} after 60s: {}{} (logs: {}; kubectl -n ferry-system logs -l app=ferry-dns)",
                c1.id,
                out.trim(),
                err.trim(),
                lab.paths.log(c1, "services").display(),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    print!(
        "{}",
        show(lab, c1, &["-n", NS, "exec", "client", "--", "nslookup", &name])?
    );
    println!(
        "   $ kubectl --context {} -n {NS} exec client -- wget -qO- {url}",
        c1.id
    );
    println!("   {server}");
    let logs = show(lab, c2, &["-n", NS, "logs", &server])?;
    let seen = logs
        .lines()
        .rfind(|l| l.contains("url:/"))
        .context("the server logged no request")?
        .to_string();
    println!("   {seen}");
    println!(
        "   (the server sees the client at c1's remapped pod CIDR: the clusters' pod CIDRs are identical)"
    );
    Ok(format!(
        "seed lab on real nodes: {} busybox httpd Ready in {secs:.1}s; {} client pod fetched {url} -> {server}; kubectl logs {server}: {}",
        c2.id,
        c1.id,
        seen.trim()
    ))
}
