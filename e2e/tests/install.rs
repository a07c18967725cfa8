//! `ferryctl install` / `uninstall` on fresh lab clusters with a real node each (issue 15, first part): the
//! chart's components run as real pods from ferry's image under their own ServiceAccounts; bad values are
//! refused before anything is applied; the installed agents peer across the WAN (broker and apiserver
//! forwarded by each cluster's edge); uninstall leaves nothing of ferry behind. This test brings up its own
//! two-cluster lab (`tinst`), so the shared lab's agents and CRDs are never touched.
//! Compiled only with `--features lab`.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

#[path = "install/stats.rs"]
mod stats;
#[path = "install/streams.rs"]
mod streams;

const LAB: &str = "tinst";

fn ferry_lab(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-lab"))
        .env("FERRY_LAB_ROOT", ferry_e2e::lab::env_root())
        .args(["--name", LAB])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ferryctl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    ferry_e2e::agents::ferryctl(kubeconfig, args)
}

/// Tears the lab down at the end, unless `FERRY_E2E_KEEP_FAILED=1` and the test failed (to look inside
/// it: `ferry-lab --name tinst down` afterwards).
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("FERRY_E2E_KEEP_FAILED").is_some_and(|v| v == "1") {
            eprintln!("FERRY_E2E_KEEP_FAILED=1: the lab {LAB} is left up");
            return;
        }
        let _ = ferry_lab(&["down"]);
    }
}

#[tokio::test]
async fn ferryctl_install_runs_every_component_as_a_pod_refuses_bad_values_and_uninstall_leaves_nothing() {
    let _ = ferry_lab(&["down"]);
    let (ok, out) = ferry_lab(&[
        "up",
        "--clusters",
        "2",
        "--nodes",
        "2",
        "--real-nodes",
        "2",
        // real-node-2 on a second node network: its routes to the gateway's node go through the overlay
        "--second-subnet",
        "--base-port",
        "25500",
    ]);
    assert!(ok, "{out}");
    let _down = Down;
    let lab = ferry_e2e::lab::Lab::load(&ferry_e2e::lab::env_root(), LAB).unwrap();
    let c = lab.layout.clusters[0].clone();
    let kc = lab.paths.kubeconfig(&c);
    let client = lab.client(&c).await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let nss: Api<Namespace> = Api::all(client.clone());
    let ferry_crds = || async {
        crds.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|c| c.spec.group == "ferry.dev" || c.spec.group == "multicluster.x-k8s.io")
            .count()
    };

    // bad values: one line naming the key and the fix, nothing applied
    for (set, key) in [
        ("podCIDRs=10.244.0.0/33", "podCIDRs"),
        ("agent.replicaz=2", "agent.replicaz"),
    ] {
        let (ok, _, err) = ferryctl(&kc, &["install", "--set", set]);
        assert!(!ok);
        assert!(err.contains(key) && err.contains("fix:"), "{set}: {err}");
    }
    assert!(
        nss.get_opt("ferry-system").await.unwrap().is_none(),
        "a refused install created the namespace"
    );
    assert_eq!(ferry_crds().await, 0, "a refused install applied CRDs");

    // the gateway endpoint, when not given, is a gateway node's ExternalIP (never an InternalIP): a dry run
    // with a lab node given one and labelled as the gateway node (the real nodes' kubelets keep their own
    // addresses, and a real install places the gateway on a real node)
    let (ok, _, err) = ferryctl(&kc, &["install", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("agent.gatewayEndpoint not set (no node is labelled to run the gateway)")
            && err.contains("fix"),
        "{err}"
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let lab_node = c.node_name(0);
    let n = nodes.get(&lab_node).await.unwrap();
    let mut addresses = n.status.unwrap().addresses.unwrap();
    addresses.push(k8s_openapi::api::core::v1::NodeAddress {
        type_: "ExternalIP".into(),
        address: "203.0.113.10".into(),
    });
    nodes
        .patch_status(
            &lab_node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"addresses": addresses}})),
        )
        .await
        .unwrap();
    let gateway_label = |v: serde_json::Value| {
        let nodes = nodes.clone();
        let lab_node = lab_node.clone();
        async move {
            nodes
                .patch(
                    &lab_node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {ferry_e2e::install::GATEWAY_LABEL: v}}})),
                )
                .await
                .unwrap();
        }
    };
    gateway_label(json!("true")).await;
    let (ok, rendered, err) = ferryctl(&kc, &["install", "--dry-run"]);
    gateway_label(serde_json::Value::Null).await;
    assert!(ok, "{err}");
    let want = format!(
        "agent.gatewayEndpoint=203.0.113.10:51820 (discovered: the ExternalIP of gateway node {lab_node})"
    );
    assert!(err.contains(&want), "{want}: {err}");
    assert!(
        rendered.contains("FERRY_GATEWAY_ENDPOINT") && rendered.contains("203.0.113.10:51820"),
        "the agent is told the discovered endpoint: {rendered}"
    );

    // both clusters: the gateway runs on the node labelled for it; peers reach the broker and the
    // apiserver at the cluster's WAN address; c1's CIDRs are discovered (its nodes' spec.podCIDRs, its
    // apiserver's service range), c2's given
    for c in &lab.layout.clusters {
        let done = ferry_e2e::install::install(&lab, c, c.index == 1, &[])
            .await
            .unwrap();
        let err = done.progress;
        eprintln!(
            "{}: ferryctl install: every component Ready in {:.1}s\n{err}",
            c.id, done.seconds
        );
        assert!(err.contains("every component Ready"), "{err}");
        if c.index == 1 {
            for want in [
                format!("podCIDRs={} (discovered", c.pod_cidr),
                format!("serviceCIDRs={} (discovered", c.service_cidr),
            ] {
                assert!(err.contains(&want), "{want}: {err}");
            }
        }
    }

    // the installed agents peer: c2 issues a token, c1's agent (a pod) dials c2's broker (a pod behind a
    // NodePort, through c2's edge) and authenticates
    let kc2 = lab.paths.kubeconfig(&lab.layout.clusters[1]);
    let (ok, token, err) = ferryctl(&kc2, &["token", "create", "--ttl", "10m"]);
    assert!(ok, "token create: {err}");
    let t0 = Instant::now();
    let (ok, out, err) = ferryctl(&kc, &["peer", "--token", token.trim(), "--pods", "300"]);
    assert!(ok, "ferryctl peer through the installed agents: {out}{err}");
    eprintln!(
        "peered through the installed agents in {:.1}s: {out}",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.contains("peered with provider-c2"), "{out}");

    // offloading through the installed pods: c1's agent runs the virtual node (talking to c2's apiserver
    // through c2's edge), its webhook (called by c1's apiserver at the agent's node address) admits the
    // pod, c2's agent turns the ShadowPod into a pod, and its status comes back
    let c1 = lab.client(&c).await.unwrap();
    ferry_e2e::lab::fresh_namespace(&c1, "burst").await;
    let (ok, out, err) = ferryctl(&kc, &["offload", "namespace", "burst"]);
    assert!(ok, "ferryctl offload namespace: {out}{err}");
    let pods1: Api<Pod> = Api::namespaced(c1.clone(), "burst");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "remote"},
        "spec": {
            "nodeName": "ferry-provider-c2",
            "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}],
            "containers": [{"name": "c", "image": "ferry-lab/echo"}]
        }
    }))
    .unwrap();
    let t0 = Instant::now();
    ferry_e2e::lab::eventually("the virtual node ferry-provider-c2 Ready in c1", 60, || async {
        Ok(Api::<Node>::all(c1.clone())
            .get_opt("ferry-provider-c2")
            .await?
            .is_some_and(|n| ferry_e2e::lab::node_ready(&n)))
    })
    .await;
    pods1.create(&Default::default(), &pod).await.unwrap();
    ferry_e2e::lab::eventually(
        "the offloaded pod Running in c1 with a remapped IP",
        60,
        || async {
            let p = pods1.get("remote").await?;
            let st = p.status.unwrap_or_default();
            Ok(st.phase.as_deref() == Some("Running") && st.pod_ip.is_some())
        },
    )
    .await;
    eprintln!(
        "offloaded pod Running through the installed agents in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // the agent pod killed mid-burst of 200 pods: its Deployment replaces it, and every pod runs on the
    // provider exactly once
    ferry_e2e::lab::fresh_namespace(&c1, "many").await;
    let (ok, out, err) = ferryctl(&kc, &["offload", "namespace", "many", "--strategy", "Remote"]);
    assert!(ok, "ferryctl offload namespace many: {out}{err}");
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "many"},
        "spec": {"replicas": 200, "selector": {"matchLabels": {"app": "many"}},
            "template": {"metadata": {"labels": {"app": "many"}, "annotations": {"lab.ferry.dev/hollow": "true"}},
                // no tunnel between the installed gateways yet (nodes do not route to the gateway node:
                // issue 18), so the virtual node is tainted network-unavailable; these hollow pods need no
                // network
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "echo"}],
                    "tolerations": [{"key": "node.kubernetes.io/network-unavailable", "operator": "Exists"}]}}}
    }))
    .unwrap();
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c1.clone(), "many")
        .create(&Default::default(), &deployment)
        .await
        .unwrap();
    let k2 = lab.client(&lab.layout.clusters[1]).await.unwrap();
    let shadows: Api<ferry_crds::ShadowPod> = Api::all(k2.clone());
    let count_shadows = || async {
        shadows
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|s| {
                s.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with("many-"))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_shadows().await < 10 {
        assert!(Instant::now() < deadline, "no ShadowPods after 60s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agent_pods: Api<Pod> = Api::namespaced(c1.clone(), "ferry-system");
    let agent_pod_names = || async {
        agent_pods
            .list(&ListParams::default().labels("app=ferry-agent"))
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<String>>()
    };
    let old = agent_pod_names().await;
    assert_eq!(old.len(), 2, "two agent replicas: {old:?}");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c1.clone(), "ferry-system");
    let holder = || async {
        leases
            .get_opt("ferry-agent")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default()
    };
    let active = holder().await;
    assert!(
        old.contains(&active),
        "the Lease holder {active:?} is one of {old:?}"
    );
    agent_pods
        .delete(
            &active,
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let killed_at = Instant::now();
    let at_kill = count_shadows().await;
    assert!(
        at_kill < 200,
        "the kill came too late to prove anything ({at_kill} ShadowPods)"
    );
    let mut failover = 0.0;
    ferry_e2e::lab::eventually("another agent replica holds the Lease", 60, || {
        let h = holder();
        let active = active.clone();
        failover = killed_at.elapsed().as_secs_f64();
        async move { Ok(h.await != active) }
    })
    .await;
    let local: Api<Pod> = Api::namespaced(c1.clone(), "many");
    ferry_e2e::lab::eventually(
        "200 consumer pods Running after the agent pod was replaced",
        240,
        || async {
            let l = local.list(&ListParams::default()).await?;
            Ok(l.items.len() == 200
                && l.items
                    .iter()
                    .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        },
    )
    .await;
    // another replica (the standby, or the killed one's replacement: whichever asks first once the Lease
    // expires) holds the Lease now
    let now_active = holder().await;
    assert!(
        now_active != active && agent_pod_names().await.contains(&now_active),
        "the Lease passed from {active} to a running replica, not {now_active:?}"
    );
    eprintln!(
        "the active agent {active} killed; {now_active} active (Lease taken over in {failover:.1}s; all 200 Running {:.1}s after the kill)",
        killed_at.elapsed().as_secs_f64()
    );
    let new = agent_pod_names().await;
    assert!(
        !new.contains(&active) && new.len() == 2,
        "the killed agent pod was not replaced: {old:?} -> {new:?}"
    );
    let local_uids: std::collections::BTreeSet<String> = local
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let remote: Vec<String> = Api::<Pod>::all(k2.clone())
        .list(&ListParams::default().labels("ferry.dev/origin-pod-uid"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|n| n.starts_with("many-"))
        })
        .filter_map(|p| {
            p.metadata
                .labels
                .as_ref()?
                .get("ferry.dev/origin-pod-uid")
                .cloned()
        })
        .collect();
    let remote_set: std::collections::BTreeSet<String> = remote.iter().cloned().collect();
    assert_eq!(
        remote.len(),
        remote_set.len(),
        "a consumer pod runs twice on the provider"
    );
    assert_eq!(remote_set, local_uids, "every consumer pod, exactly once");
    eprintln!("active agent pod killed at {at_kill}/200 ShadowPods; 200/200 Running, no duplicates");
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c1.clone(), "many")
        .delete("many", &Default::default())
        .await
        .unwrap();
    ferry_e2e::lab::eventually("the consumer pods of many deleted", 120, || async {
        Ok(local
            .list_metadata(&ListParams::default())
            .await?
            .items
            .is_empty())
    })
    .await;

    // the tunnel between the installed gateways (each on its cluster's real node, behind its edge's NAT),
    // with both pod CIDRs 10.244.0.0/16: a pod on c1's real node reaches an offloaded pod on c2's real
    // node at its remapped address, a c2 Service at its ClusterIP, and an exported one by its
    // clusterset.local name (the installed ferry-dns answers). Both pods run on the gateway nodes: routing
    // from the other nodes to the gateway node is the route agent's (issue 19).
    tunnel_through_the_installed_gateways(&lab, &kc).await;

    // the virtual node's kubelet API (issue 16): kubectl logs through c1's apiserver on a pod that runs in
    // a container on c2's real node; the API's certificate from the cluster's signer; 401/403
    kubelet_api_of_the_virtual_node(&lab, &kc).await;

    // HA gateway (issue 19): both real nodes of each cluster labelled, two replicas, one active by Lease;
    // the active lost under a 10 ms UDP probe and a TCP stream between a c1 pod and a c2 pod (off the lost
    // node), by SIGKILL of its process and by cutting its node's network, on the consumer's side (the
    // provider learns the new address by roaming) and on the provider's (the consumer dials its standby
    // endpoint); each time the old one comes back as a standby and a new flow works
    gateway_failover(&lab).await;

    // every ferry pod is a real container from ferry's image, Ready, on the real node
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), "ferry-system")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let apps: std::collections::BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get("app").cloned())
        .collect();
    assert_eq!(
        apps.into_iter().collect::<Vec<_>>(),
        ["ferry-agent", "ferry-dns", "ferry-gateway", "ferry-route-agent"],
        "one kind of pod per component"
    );
    let active = holder().await;
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let name = p.metadata.name.clone().unwrap_or_default();
        assert!(
            spec.node_name
                .as_deref()
                .is_some_and(|n| n.starts_with("real-node-")),
            "{name} not on a real node"
        );
        let ctr = &spec.containers[0];
        assert_eq!(ctr.image.as_deref(), Some(ferry_e2e::image::FERRY_IMAGE));
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().all(|c| c.ready));
        // every pod Ready but the standby agent, which is live and not Ready (no Service sends it work)
        let standby = name.starts_with("ferry-agent-") && name != active;
        assert_eq!(ready, !standby, "{name}: ready {ready}, standby {standby}");
        let sc = ctr.security_context.clone().unwrap_or_default();
        assert_ne!(
            sc.privileged,
            Some(true),
            "{} is privileged",
            p.metadata.name.as_deref().unwrap_or("?")
        );
        assert_ne!(spec.service_account_name.as_deref(), Some("default"));
    }
    // the agent in its pod registered its webhook at its node's address
    let hook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("ferry-pod-offloading")
        .await
        .unwrap();
    let url = hook.webhooks.unwrap()[0]
        .client_config
        .url
        .clone()
        .unwrap_or_default();
    let active_node_ip = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(active.as_str()))
        .and_then(|p| p.status.as_ref()?.host_ip.clone())
        .unwrap();
    assert!(
        url.starts_with(&format!("https://{active_node_ip}:9443/")),
        "{url}: not the active agent's node {active_node_ip}"
    );

    // no wildcard in what ferry's ServiceAccounts may do
    for sa in ["ferry-agent", "ferry-gateway", "ferry-dns", "ferry-route-agent"] {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &kc)
            .args([
                "auth",
                "can-i",
                "--list",
                "--as",
                &format!("system:serviceaccount:ferry-system:{sa}"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("Resources"), "{sa}: {text}");
        let wild: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some("*.*") || l.contains("[*]"))
            .collect();
        assert!(wild.is_empty(), "{sa} has wildcard rules: {wild:?}");
    }

    // uninstall refuses while a pod runs on the provider, then with --force removes everything (c1 first:
    // its peering goes with it)
    let (ok, _, err) = ferryctl(&kc, &["uninstall"]);
    assert!(
        !ok && err.contains("burst/remote") && err.contains("--force"),
        "{err}"
    );
    assert!(
        nss.get_opt("ferry-system").await.unwrap().is_some(),
        "a refused uninstall removed something"
    );
    let (ok, out, err) = ferryctl(&kc, &["uninstall", "--force"]);
    assert!(ok, "ferryctl uninstall --force: {out}{err}");
    let (ok, out, err) = ferryctl(&kc2, &["uninstall"]);
    assert!(ok, "ferryctl uninstall on c2: {out}{err}");
    assert!(nss.get_opt("ferry-system").await.unwrap().is_none());
    assert_eq!(ferry_crds().await, 0, "CRDs left");
    assert!(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get_opt("ferry-pod-offloading")
            .await
            .unwrap()
            .is_none(),
        "the agent's webhook is left"
    );
    for kind in ["clusterroles", "clusterrolebindings"] {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &kc)
            .args(["get", kind, "-o", "name"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // the lab's own binding for kube-proxy is `ferry-lab:kube-proxy`: not ferry's
        let left: Vec<&str> = text
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter(|n| n.starts_with("ferry") && !n.starts_with("ferry-lab:"))
            .collect();
        assert!(left.is_empty(), "{kind} left: {left:?}");
    }
    for c in &lab.layout.clusters {
        let nss: Vec<String> = (0..c.real_nodes)
            .map(|k| ferry_e2e::layout::real_node_netns(LAB, &c.id, k))
            .collect();
        ferry_e2e::lab::eventually(
            "the gateway nodes without ferry's interface and nft table, no node with its routes",
            30,
            || {
                let nss = nss.clone();
                async move {
                    let links: String = nss
                        .iter()
                        .map(|ns| sh("ip", &["-n", ns, "-br", "link"]))
                        .collect();
                    let tables: String = nss
                        .iter()
                        .map(|ns| sh("ip", &["netns", "exec", ns, "nft", "list", "tables"]))
                        .collect();
                    // and no route agent's route on any real node
                    let routes: String = (0..c.real_nodes)
                        .map(|k| {
                            let ns = ferry_e2e::layout::real_node_netns(LAB, &c.id, k);
                            sh("ip", &["-n", &ns, "route", "show", "proto", "102"])
                        })
                        .collect();
                    Ok(!links
                        .lines()
                        .any(|l| l.starts_with("fy") || l.starts_with(ferry_tunnel::routes::OVERLAY_DEV))
                        && !tables.contains("ferry_")
                        && routes.trim().is_empty())
                }
            },
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = Api::<Pod>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some("ferry-system"))
            .count();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} ferry pods left");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn gateway_failover(lab: &ferry_e2e::lab::Lab) {
    use ferry_e2e::failover::{self, Loss, Side};
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ferry-lab"));
    for c in &lab.layout.clusters[..2] {
        failover::two_gateways(lab, c).await.unwrap();
    }
    let servers = failover::workload(lab, exe).await.unwrap();
    for (side, loss) in [
        (Side::Consumer, Loss::Kill),
        (Side::Consumer, Loss::Cut),
        (Side::Provider, Loss::Kill),
        (Side::Provider, Loss::Cut),
    ] {
        let r = failover::once(lab, exe, &servers, side, loss).await.unwrap();
        eprintln!("gateway failover: {}", serde_json::to_string(&r).unwrap());
        let what = format!("{side:?} {loss:?}");
        assert_ne!(
            r.from_node, r.to_node,
            "{what}: the standby on the other node took over"
        );
        assert!(
            r.takeover_seconds <= 3.0,
            "{what}: takeover {}s",
            r.takeover_seconds
        );
        // the UDP probe's longest gap (the path, not TCP's retransmission timer: the TCP stream's stall
        // follows its exponential backoff, 2.05 s or 3.7 s for the same path, and is only reported)
        let budget = 3.0;
        assert!(
            r.gap_seconds <= budget,
            "{what}: probe gap {}s > {budget}s",
            r.gap_seconds
        );
        assert!(
            r.tcp_survived,
            "{what}: the TCP stream died: {:?}",
            r.during.tcp_error
        );
        // no flapping: the old active came back as a standby and nothing moved again
        assert_eq!(
            r.active_changes.len(),
            2,
            "{what}: active replicas {:?}",
            r.active_changes
        );
        assert!(
            r.after_return.tcp_survived && r.after_return.gap_seconds < 1.0,
            "{what}: a new flow after the return: {:?}",
            r.after_return
        );
    }
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `wget -q -O- url` in a pod, given up after 10 s. Each try must be bounded: a connection to a Service
/// that kube-proxy has not programmed yet is tracked without its DNAT, and busybox wget's retransmitted SYNs
/// (same ports) stay on that entry for the 2 minutes TCP tries, so only a new connection gets the DNAT.
fn bounded_wget(url: &str) -> String {
    format!("timeout 10 wget -q -O- {url}")
}

/// `kubectl exec` in pod `ns/pod` of the cluster of `kubeconfig`: (success, stdout + stderr).
fn exec(kubeconfig: &std::path::Path, ns: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(["exec", "-n", ns, pod, "--"])
        .args(cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A busybox pod serving `body` over HTTP on 8080 (logging each request), on the virtual node (`on:
/// None`) or on the real node `on`.
fn web_pod(name: &str, body: &str, on: Option<&str>) -> Pod {
    let placement = match on {
        None => json!({"nodeName": "ferry-provider-c2",
               "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}]}),
        Some(node) => json!({"nodeSelector": {"kubernetes.io/hostname": node},
               "tolerations": [{"key": "lab.ferry.dev/real-node", "operator": "Exists"}]}),
    };
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "httpd", "image": ferry_e2e::image::WORKLOAD_IMAGE,
            "command": ["sh", "-c", format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -vv -p 8080 -h /www")],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]
    });
    for (k, v) in placement.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": spec}))
        .unwrap()
}

async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    ferry_e2e::lab::eventually(&format!("pod {name} Running with an IP"), 90, || async {
        let p = pods.get(name).await?;
        Ok(p.status
            .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some()))
    })
    .await;
    pods.get(name).await.unwrap()
}

async fn tunnel_through_the_installed_gateways(lab: &ferry_e2e::lab::Lab, kc1: &std::path::Path) {
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (k1, k2) = (lab.client(c1).await.unwrap(), lab.client(c2).await.unwrap());
    for k in [&k1, &k2] {
        let pns: Api<ferry_crds::PeerNetwork> = Api::all(k.clone());
        ferry_e2e::lab::eventually("the PeerNetwork Connected (installed gateways)", 60, || async {
            Ok(pns
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Connected")))
        })
        .await;
    }
    // the provider confines this tenant to its gateway's real node, which it dedicates to tenants with a
    // taint
    Api::<ferry_crds::Tenant>::all(k2.clone())
        .patch(
            "consumer-c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": {
                "nodeSelector": {"kubernetes.io/hostname": "real-node-1"},
                "tolerations": [{"key": "lab.ferry.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]}}})),
        )
        .await
        .unwrap();
    ferry_e2e::lab::fresh_namespace(&k1, "web").await;
    let (ok, out, err) = ferryctl(kc1, &["offload", "namespace", "web"]);
    assert!(ok, "ferryctl offload namespace web: {out}{err}");
    let web: Api<Pod> = Api::namespaced(k1.clone(), "web");
    web.create(&Default::default(), &web_pod("server", "served-from-c2", None))
        .await
        .unwrap();
    web.create(
        &Default::default(),
        &web_pod("client", "client", Some("real-node-1")),
    )
    .await
    .unwrap();
    let server = running(&web, "server").await;
    running(&web, "client").await;
    let server_ip: std::net::IpAddr = server.status.unwrap().pod_ip.unwrap().parse().unwrap();
    let pod_cidr: ipnet::IpNet = c1.pod_cidr;
    assert!(
        !pod_cidr.contains(&server_ip),
        "the provider pod's IP {server_ip} is not remapped out of the shared {pod_cidr}"
    );
    let t0 = Instant::now();
    let url = format!("http://{server_ip}:8080/");
    let (ok, body) = exec(kc1, "web", "client", &["sh", "-c", &bounded_wget(&url)]);
    assert!(
        ok && body.contains("served-from-c2"),
        "c1 pod -> remote pod {url}: {body}"
    );
    eprintln!(
        "c1 pod -> c2 pod at its remapped {server_ip} through the installed gateways in {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    // a c2 Service (port 80 -> 8080) at its ClusterIP, and exported: by its clusterset.local name
    ferry_e2e::lab::fresh_namespace(&k1, "shop").await;
    ferry_e2e::lab::fresh_namespace(&k2, "shop").await;
    let shop: Api<Pod> = Api::namespaced(k2.clone(), "shop");
    shop.create(
        &Default::default(),
        &web_pod("web", "shop-in-c2", Some("real-node-1")),
    )
    .await
    .unwrap();
    running(&shop, "web").await;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .unwrap();
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(k2.clone(), "shop")
        .create(&Default::default(), &svc)
        .await
        .unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    Api::<ferry_crds::mcs::ServiceExport>::namespaced(k2.clone(), "shop")
        .create(
            &Default::default(),
            &ferry_crds::mcs::ServiceExport::new("shop", "web"),
        )
        .await
        .unwrap();
    let fetch = |url: String| {
        let (ok, body) = exec(kc1, "web", "client", &["sh", "-c", &bounded_wget(&url)]);
        async move {
            anyhow::ensure!(ok && body.contains("shop-in-c2"), "{url}: {body}");
            Ok(true)
        }
    };
    let t0 = Instant::now();
    let c2_node = ferry_e2e::layout::real_node_netns(LAB, &c2.id, 0);
    ferry_e2e::lab::eventually("c1 pod -> the c2 Service's ClusterIP", 90, || {
        let f = fetch(format!("http://{cluster_ip}/"));
        let (c2_node, cluster_ip) = (c2_node.clone(), cluster_ip.clone());
        async move {
            f.await.map_err(|e| {
                // what c2's gateway node holds for this Service: kube-proxy's rules and last sync, the
                // connections tracked to it and to its pods
                let seen = sh(
                    "ip",
                    &["netns", "exec", &c2_node, "sh", "-c", &format!(
                        "echo nat rules: $(iptables-save -t nat 2>&1 | grep -c {cluster_ip}); \
                         curl -s 127.0.0.1:10249/metrics | grep -E '^kubeproxy_sync_proxy_rules_(duration_seconds_count|last_timestamp_seconds)'; \
                         echo now $(date +%s); conntrack -L 2>/dev/null | grep -E '{cluster_ip}|port=8080' | head -n 20"
                    )],
                );
                anyhow::anyhow!("{e:#}\n(c2's gateway node:\n{seen})")
            })
        }
    })
    .await;
    eprintln!(
        "c1 pod -> the c2 Service's ClusterIP {cluster_ip} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let name = "web.shop.svc.clusterset.local";
    let t0 = Instant::now();
    ferry_e2e::lab::eventually("c1 pod -> web.shop.svc.clusterset.local", 60, || {
        fetch(format!("http://{name}/"))
    })
    .await;
    eprintln!(
        "c1 pod -> {name} (installed ferry-dns, through the tunnel) in {:.1}s after the export",
        t0.elapsed().as_secs_f64()
    );
    // from a node that is not the gateway's: the route agents route the peer's CIDRs to each cluster's
    // gateway node, both ways (c1's real-node-2 -> c1's gateway; c2's gateway -> a c2 pod on real-node-2,
    // whose replies go back to c2's gateway by c2's route agent)
    let routes = |c: &ferry_e2e::layout::ClusterLayout, k: u32| {
        sh(
            "ip",
            &[
                "-n",
                &ferry_e2e::layout::real_node_netns(LAB, &c.id, k),
                "route",
                "show",
                "proto",
                "102",
            ],
        )
    };
    for c in [c1, c2] {
        let gw_ip = c.node_network().hosts().nth(9).unwrap(); // real-node-1 (.10)
        // real-node-2 sits on another subnet (--second-subnet): through the VXLAN overlay to real-node-1
        assert!(c.on_second_network(1) && !c.node_network().contains(&c.real_node_ip(1)));
        let want = format!("via {gw_ip} dev ferry-vx");
        ferry_e2e::lab::eventually(
            &format!(
                "{}: real-node-2 routes the peer via {gw_ip} through the overlay",
                c.id
            ),
            30,
            || {
                let r = routes(c, 1);
                let ok = r.lines().count() >= 2 && r.lines().all(|l| l.contains(&want));
                async move {
                    anyhow::ensure!(ok, "ip route show proto 102: {r:?}");
                    Ok(true)
                }
            },
        )
        .await;
        assert!(
            routes(c, 0).trim().is_empty(),
            "{}: the gateway's node routes into its tunnel itself",
            c.id
        );
    }
    // ferryctl status: the tunnel with its active gateway node, and per node its routes (the route
    // agents' reports)
    let gw1 = c1.node_network().hosts().nth(9).unwrap();
    ferry_e2e::lab::eventually("ferryctl status: tunnel and node routes", 30, || {
        let (ok, out, err) = ferryctl(kc1, &["status", "-o", "json"]);
        async move {
            anyhow::ensure!(ok, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let peer = v["peers"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["peer"] == "provider-c2"))
                .cloned()
                .unwrap_or_default();
            let t = &peer["tunnel"];
            anyhow::ensure!(
                t["phase"] == "Connected"
                    && t["gatewayNode"] == "real-node-1"
                    && t["tunnelMTU"].as_u64().is_some(),
                "tunnel: {peer}"
            );
            let node = |n: &str| {
                v["nodes"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["node"] == n))
                    .cloned()
                    .unwrap_or_default()
            };
            anyhow::ensure!(node("real-node-1")["routes"] == "Gateway", "{}", v["nodes"]);
            let n2 = node("real-node-2");
            anyhow::ensure!(
                n2["routes"] == "Routed"
                    && n2["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains(&format!("via {gw1} (overlay)")),
                "{}",
                v["nodes"]
            );
            Ok(true)
        }
    })
    .await;
    let (_, table, _) = ferryctl(kc1, &["status"]);
    eprintln!("ferryctl status on c1:\n{table}");
    // ferryctl doctor on the installed chart, both sides: no check fails (the CIDRs remapped with their
    // rules in place, the DF probes answered, the tunnel's keys and endpoints matching across the edges'
    // NAT, the virtual node Ready); ferry-dns is the installed one, found by its Service, with a ready pod
    let kc2 = lab.paths.kubeconfig(&lab.layout.clusters[1]);
    let kc2s = kc2.to_string_lossy().to_string();
    let mut last = String::new();
    let mut report = serde_json::Value::Null;
    for _ in 0..30 {
        let (ok, out, err) = ferryctl(kc1, &["doctor", "-o", "json", "--peer-kubeconfig", &kc2s]);
        report =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {out}{err}"));
        let failed: Vec<&serde_json::Value> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["level"] == "fail")
            .collect();
        last = format!("{failed:#?}");
        if ok && failed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks.iter().all(|c| c["level"] != "fail"),
        "doctor fails on the installed chart: {last}"
    );
    for name in ["clock", "dns", "cidr", "mtu", "tunnel", "capacity", "peering"] {
        assert!(
            checks.iter().any(|c| c["check"] == name),
            "no {name} check: {report}"
        );
    }
    // the live query went to the installed ferry-dns's Service address: not routable from the lab
    // machine's root namespace, where doctor runs, and this sandbox's resolver answers every port-53
    // packet there; doctor sees the answer is not authoritative and says the query was not made
    let dns = checks
        .iter()
        .find(|c| c["check"] == "dns" && c["subject"] == "consumer-c1")
        .unwrap();
    let e = dns["evidence"].as_str().unwrap();
    assert!(
        e.contains("web.shop.svc.clusterset.local.") && e.contains("live"),
        "{dns}"
    );
    let (_, table, _) = ferryctl(kc1, &["doctor", "--peer-kubeconfig", &kc2s]);
    eprintln!("ferryctl doctor on the installed chart:\n{table}");
    shop.create(
        &Default::default(),
        &web_pod("far", "far-in-c2", Some("real-node-2")),
    )
    .await
    .unwrap();
    let far = running(&shop, "far").await;
    let far_real: std::net::IpAddr = far.status.unwrap().pod_ip.unwrap().parse().unwrap();
    let remaps = ferry_tunnel::remaps::reported(
        &Api::<ferry_crds::PeerNetwork>::all(k1.clone())
            .get("provider-c2")
            .await
            .unwrap(),
    )
    .expect("remaps reported by the gateway");
    let far_seen = ferry_tunnel::ipam::translate(far_real, &remaps).unwrap();
    web.create(
        &Default::default(),
        &web_pod("client2", "client2", Some("real-node-2")),
    )
    .await
    .unwrap();
    let client2 = running(&web, "client2").await;
    let client2_ip = client2.status.unwrap().pod_ip.unwrap();
    let t0 = Instant::now();
    for (url, want) in [
        (format!("http://{server_ip}:8080/"), "served-from-c2"),
        (format!("http://{far_seen}:8080/"), "far-in-c2"),
        (format!("http://{cluster_ip}/"), "shop-in-c2"),
        (format!("http://{name}/"), "shop-in-c2"),
    ] {
        ferry_e2e::lab::eventually(&format!("c1 real-node-2 -> {url}"), 30, || {
            let (ok, body) = exec(kc1, "web", "client2", &["sh", "-c", &bounded_wget(&url)]);
            let url = url.clone();
            async move {
                anyhow::ensure!(ok && body.contains(want), "{url}: {body}");
                Ok(true)
            }
        })
        .await;
    }
    eprintln!(
        "c1 pod on real-node-2 -> the offloaded pod, a c2 pod on c2's real-node-2 ({far_seen}), the ClusterIP and {name}: all through the route agents in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // the far pod saw c1's client at its remapped address (c1's pod CIDR as c2 sees it)
    let logs = Command::new("kubectl")
        .env("KUBECONFIG", lab.paths.kubeconfig(c2))
        .args(["-n", "shop", "logs", "far"])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    let back = ferry_tunnel::remaps::reported(
        &Api::<ferry_crds::PeerNetwork>::all(k2.clone())
            .get("consumer-c1")
            .await
            .unwrap(),
    )
    .expect("remaps reported by the gateway");
    let client2_seen = ferry_tunnel::ipam::translate(client2_ip.parse().unwrap(), &back).unwrap();
    assert!(
        logs.contains(&format!("{client2_seen}]")) || logs.contains(&format!("{client2_seen}:")),
        "the far pod saw c1's client2 ({client2_ip}) at its remapped {client2_seen}: {logs}"
    );
    for (k, ns) in [(&k1, "shop"), (&k2, "shop")] {
        let _ = Api::<Namespace>::all((*k).clone())
            .delete(ns, &Default::default())
            .await;
    }
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `curl` of the kubelet API at `url`: (HTTP status, body). `ca`: verify the server with it (else
/// `-k`); `token`: a bearer token.
fn curl(url: &str, ca: Option<&std::path::Path>, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    match ca {
        Some(ca) => c.arg("--cacert").arg(ca),
        None => c.arg("-k"),
    };
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let (body, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
    (code.trim().parse().unwrap_or(0), body.trim().to_string())
}

async fn kubelet_api_of_the_virtual_node(lab: &ferry_e2e::lab::Lab, kc1: &std::path::Path) {
    let c1 = &lab.layout.clusters[0];
    let k1 = lab.client(c1).await.unwrap();
    // the node says where its kubelet API is: the active agent's node address, the chart's port
    let node = Api::<Node>::all(k1.clone())
        .get("ferry-provider-c2")
        .await
        .unwrap();
    let st = node.status.unwrap();
    let ip = st
        .addresses
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .expect("the virtual node has an InternalIP")
        .address;
    let port = st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port;
    assert_eq!(port, 10260, "the chart's agent.kubeletPort");
    assert!(
        (0..c1.real_nodes).any(|k| c1.real_node_ip(k).to_string() == ip),
        "the InternalIP {ip} is one of c1's real nodes (the agent runs on the node's network)"
    );
    // a pod with two containers, one logging 10 lines a second, offloaded to c2's real node
    let web: Api<Pod> = Api::namespaced(k1.clone(), "web");
    let talker: Pod = serde_json::from_value(json!({
        "metadata": {"name": "talker"},
        "spec": {"nodeName": "ferry-provider-c2", "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}],
            "containers": [
                {"name": "a", "image": ferry_e2e::image::WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "i=0; while true; do echo \"a line $i\"; i=$((i+1)); sleep 0.1; done"]},
                {"name": "b", "image": ferry_e2e::image::WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "echo b-says-hello; exec sleep 100000"]},
                // exits after a second: its previous run's log is `--previous`
                {"name": "r", "image": ferry_e2e::image::WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", "echo run-at-$(cut -d' ' -f1 /proc/uptime); sleep 1; exit 3"]}]}
    }))
    .unwrap();
    web.create(&Default::default(), &talker).await.unwrap();
    running(&web, "talker").await;
    // `logs -f` for 60 s, read as the lines come, while the rest is checked
    let mut follow = Command::new("kubectl")
        .env("KUBECONFIG", kc1)
        .args(["logs", "-f", "-n", "web", "talker", "-c", "a", "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (started.elapsed(), l))
            .collect::<Vec<_>>()
    });
    // plain, a second container, --tail, --since, --timestamps
    let t0 = Instant::now();
    let (ok, out, err) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "a"]);
    let first = t0.elapsed();
    assert!(ok && out.starts_with("a line 0\n"), "kubectl logs: {out}{err}");
    let (ok, out, err) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "b"]);
    assert!(ok && out == "b-says-hello\n", "kubectl logs -c b: {out}{err}");
    let (ok, out, err) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "a", "--tail=3"]);
    assert!(
        ok && out.lines().count() == 3 && out.lines().all(|l| l.starts_with("a line ")),
        "--tail=3: {out}{err}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, all, _) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "a"]);
    let (ok, out, err) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "a", "--since=1s"]);
    let n = out.lines().count();
    assert!(
        ok && n >= 3 && n * 2 < all.lines().count(),
        "--since=1s: {n} of {} lines; {err}",
        all.lines().count()
    );
    let (ok, out, err) = kubectl(
        kc1,
        &[
            "logs",
            "-n",
            "web",
            "talker",
            "-c",
            "a",
            "--tail=1",
            "--timestamps",
        ],
    );
    let stamp = out.split_whitespace().next().unwrap_or_default();
    assert!(
        ok && chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "--timestamps: {out}{err}"
    );
    let (ok, out, err) = kubectl(
        kc1,
        &["logs", "-n", "web", "talker", "-c", "a", "--limit-bytes=5"],
    );
    assert!(ok && out == "a lin", "--limit-bytes=5: {out:?}{err}");
    // the previous run of a container that restarted
    ferry_e2e::lab::eventually(
        "kubectl logs --previous of the restarted container",
        60,
        || async {
            let (ok, out, _) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "r", "--previous"]);
            Ok(ok && out.starts_with("run-at-") && out.lines().count() == 1)
        },
    )
    .await;
    // a container that is not there: the provider's error comes back as kubectl prints it
    let (ok, _, err) = kubectl(kc1, &["logs", "-n", "web", "talker", "-c", "nope"]);
    assert!(!ok && err.contains("nope"), "kubectl logs -c nope: {err}");
    // straight to the kubelet API: its certificate chains to c1's CA with the node address as its SAN
    // (no -k), an anonymous caller is 401, a ServiceAccount without nodes/proxy 403
    let ca = kc1.parent().unwrap().join("pki/ca.crt");
    let base = format!("https://{ip}:{port}");
    assert_eq!(
        curl(&format!("{base}/healthz"), Some(&ca), None),
        (200, "ok".to_string())
    );
    let logs_url = format!("{base}/containerLogs/web/talker/a?tailLines=1");
    let (code, body) = curl(&logs_url, Some(&ca), None);
    assert_eq!(code, 401, "anonymous: {body}");
    let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(k1.clone(), "web")
        .get("default")
        .await
        .unwrap();
    let secret = sa.secrets.unwrap()[0].name.clone().unwrap();
    let token = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(k1.clone(), "web")
        .get(&secret)
        .await
        .unwrap()
        .data
        .unwrap()["token"]
        .0
        .clone();
    let token = String::from_utf8(token).unwrap();
    let (code, body) = curl(&logs_url, Some(&ca), Some(&token));
    assert!(
        code == 403
            && body.contains("system:serviceaccount:web:default")
            && body.contains("subresource=proxy"),
        "a ServiceAccount without nodes/proxy: {code} {body}"
    );
    // log throughput: 5 MB of log fetched through c1's apiserver and the virtual node's kubelet API, and
    // from c2's own apiserver and kubelet, side by side
    let big: Pod = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"nodeName": "ferry-provider-c2", "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}],
            "containers": [{"name": "c", "image": ferry_e2e::image::WORKLOAD_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "l=0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789; i=0; while [ $i -lt 50000 ]; do echo $l; i=$((i+1)); done; echo done; exec sleep 100000"]}]}
    }))
    .unwrap();
    web.create(&Default::default(), &big).await.unwrap();
    running(&web, "big").await;
    ferry_e2e::lab::eventually("the 5 MB log written", 60, || async {
        let (_, out, _) = kubectl(kc1, &["logs", "-n", "web", "big", "--tail=1"]);
        Ok(out.trim() == "done")
    })
    .await;
    let kc2 = kc1
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("c2/admin.kubeconfig");
    let remote_ns = "web-consumer-c1";
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let (ok, out, err) = kubectl(kc1, &["logs", "-n", "web", "big"]);
        assert!(ok && out.len() > 5_000_000, "{} bytes; {err}", out.len());
        via.push(out.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        let t = Instant::now();
        let (ok, out, err) = kubectl(&kc2, &["logs", "-n", remote_ns, "big"]);
        assert!(
            ok && out.len() > 5_000_000,
            "c2 {remote_ns}/big: {} bytes; {err}",
            out.len()
        );
        direct.push(out.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (v, d) = (median(&mut via), median(&mut direct));
    eprintln!(
        "kubelet API: first kubectl logs in {:.2}s; logs throughput {v:.1} MB/s through the virtual node vs {d:.1} MB/s from c2 directly (ratio {:.2})",
        first.as_secs_f64(),
        v / d
    );
    // exec, cp, attach, port-forward (while the follow goes on)
    streams::exec_attach_cp_port_forward(&k1, kc1, &kc2).await;
    stats::summary_and_resource_metrics(kc1, &kc2, &token, &base).await;
    // the follow went on for 60 s, lines arriving all along
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(started.elapsed())).await;
    let _ = follow.kill();
    let _ = follow.wait();
    let lines = reader.join().unwrap();
    let arrivals: Vec<f64> = lines.iter().map(|(t, _)| t.as_secs_f64()).collect();
    let gap = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(arrivals.first().copied().unwrap_or(60.0), f64::max);
    assert!(
        lines.len() > 300 && arrivals.last().is_some_and(|t| *t > 55.0) && gap < 5.0,
        "kubectl logs -f: {} lines, the last at {:?}s, longest gap {gap:.1}s",
        lines.len(),
        arrivals.last()
    );
    eprintln!(
        "kubectl logs -f on the offloaded pod: {} lines over 60s, longest gap {gap:.2}s",
        lines.len()
    );
    for name in ["talker", "big"] {
        let _ = web.delete(name, &Default::default()).await;
    }
}
