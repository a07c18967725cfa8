//! The virtual kubelet on two lab clusters: c1 (consumer) borrows from c2 (provider) through real
//! ferry-agents, the real `ferryctl` and the real schedulers and controllers of both clusters. Lab nodes
//! stand in for kubelets (pods get a network namespace and an IP, no containers). One test at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_crds::ShadowPod;
use ferry_e2e::agents::{self, Agent, ferryctl};
use ferry_e2e::lab::{Lab, eventually as wait, fresh_namespace};
use ferry_virtual_kubelet::quantity::Amounts;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const VNODE: &str = "ferry-provider-c2";
/// Every namespace these tests make on the consumer.
const TEST_NAMESPACES: [&str; 7] = [
    "burst",
    "plain",
    "remote-only",
    "restart",
    "outage",
    "pruned",
    "drain",
];

struct Setup {
    lab: Lab,
    c1: Client,
    c2: Client,
    agents: Vec<Agent>,
}

impl Setup {
    /// Agents on both clusters (the provider with `provider_flags`), peered with `peer_flags`.
    async fn new(provider_flags: &[&str], peer_flags: &[&str]) -> Self {
        let lab = Lab::from_env();
        let c1 = lab.client(&lab.layout.clusters[0]).await.unwrap();
        let c2 = lab.client(&lab.layout.clusters[1]).await.unwrap();
        let consumer = agents::start(&lab, 0, &[]).unwrap();
        let provider = agents::start(&lab, 1, provider_flags).unwrap();
        // a peering left by an earlier, failed test would make `peer` fail on the used identity
        let _ = ferryctl(
            &lab.paths.kubeconfig(&lab.layout.clusters[0]),
            &["unpeer", "provider-c2"],
        );
        // ...and its namespaces would come back onto the new virtual node and take the provider's room
        let nss: Api<Namespace> = Api::all(c1.clone());
        for ns in TEST_NAMESPACES {
            let _ = nss.delete(ns, &DeleteParams::default()).await;
        }
        wait("namespaces of earlier tests gone", 120, || async {
            for ns in TEST_NAMESPACES {
                if nss.get_opt(ns).await?.is_some() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await;
        agents::peer(&lab, peer_flags).unwrap();
        wait("virtual node Ready", 30, || async {
            Ok(Api::<Node>::all(c1.clone())
                .get_opt(VNODE)
                .await?
                .is_some_and(|n| ferry_virtual_kubelet::node::is_ready(&n)))
        })
        .await;
        Self {
            lab,
            c1,
            c2,
            agents: vec![consumer, provider],
        }
    }

    fn kubeconfig(&self, idx: usize) -> std::path::PathBuf {
        self.lab.paths.kubeconfig(&self.lab.layout.clusters[idx])
    }

    /// A fresh namespace on c1, offloaded with `flags`; returns its provider namespace.
    async fn offloaded(&self, ns: &str, flags: &[&str]) -> String {
        fresh_namespace(&self.c1, ns).await;
        let mut args = vec!["offload", "namespace", ns];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["-o", "json"]);
        let (ok, out, err) = ferryctl(&self.kubeconfig(0), &args);
        assert!(ok, "ferryctl offload namespace: {err}");
        let m: BTreeMap<String, String> = serde_json::from_str(&out).unwrap();
        m["provider-c2"].clone()
    }

    async fn teardown(self) {
        let (ok, _, err) = ferryctl(&self.kubeconfig(0), &["unpeer", "provider-c2"]);
        assert!(ok, "unpeer: {err}");
        wait("virtual node removed", 20, || async {
            Ok(Api::<Node>::all(self.c1.clone()).get_opt(VNODE).await?.is_none())
        })
        .await;
        drop(self.agents);
    }
}

fn deployment(name: &str, replicas: u32, cpu: Option<&str>, hollow: bool) -> Deployment {
    let mut annotations = json!({"lab.ferry.dev/echo-port": "8080"});
    if hollow {
        annotations = json!({"lab.ferry.dev/hollow": "true"});
    }
    let resources = cpu.map_or(json!({}), |c| json!({"requests": {"cpu": c}}));
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "echo", "resources": resources}]}}}
    }))
    .unwrap()
}

async fn pods(c: &Client, ns: &str, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}
fn node_of(p: &Pod) -> &str {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("")
}
fn ip_of(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).unwrap_or("")
}

async fn all_running(c: &Client, ns: &str, app: &str, n: usize) -> Result<bool> {
    let ps = pods(c, ns, app).await;
    Ok(ps.len() == n && ps.iter().all(|p| phase(p) == "Running"))
}

/// Whole pods of `cpu_request` millicores that still fit on c1's local (non-virtual) nodes.
async fn local_room(c: &Client, cpu_request: i128) -> usize {
    let nodes = Api::<Node>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let all = Api::<Pod>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    nodes
        .items
        .iter()
        .filter(|n| !n.labels().contains_key("ferry.dev/remote-cluster-id"))
        // nodes these pods do not tolerate (the lab's real nodes) take none of them
        .filter(|n| {
            !n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            })
        })
        .map(|n| {
            let used = all
                .items
                .iter()
                .filter(|p| node_of(p) == n.name_any() && !matches!(phase(p), "Succeeded" | "Failed"))
                .fold(Amounts::default(), |a, p| a.plus(Amounts::of_pod(p)));
            ((Amounts::of_node(n).cpu - used.cpu) / cpu_request).max(0) as usize
        })
        .sum()
}

async fn events_of(c: &Client, ns: &str, pod: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn shadow_exists(c2: &Client, name: &str) -> bool {
    Api::<ShadowPod>::all(c2.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|s| s.name_any() == name)
}

fn forced_pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    spec["nodeName"] = json!(VNODE);
    spec["tolerations"] = json!([{"key": "virtual-node.ferry.dev/not-allowed", "operator": "Exists"}]);
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "x"}]);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_fill_local_nodes_then_run_on_the_provider_with_status_ips_and_deletes_both_ways() {
    let _g = SERIAL.lock().await;
    let s = Setup::new(&[], &["--cpu", "8", "--pods", "110"]).await;
    let (c1, c2) = (&s.c1, &s.c2);
    let ns = "burst";
    let rns = s.offloaded(ns, &[]).await;
    assert_eq!(rns, "burst-consumer-c1");

    // 10 replicas of 1 CPU: local nodes first, the rest on the provider
    let room = local_room(c1, 1000).await;
    assert!(
        room < 10,
        "the lab's local nodes must be too small for 10 CPUs (room for {room})"
    );
    let deploys: Api<Deployment> = Api::namespaced(c1.clone(), ns);
    deploys
        .create(&PostParams::default(), &deployment("web", 10, Some("1"), false))
        .await
        .unwrap();
    wait("10 pods Running", 90, || all_running(c1, ns, "web", 10)).await;
    let local_pods = pods(c1, ns, "web").await;
    let on_virtual: Vec<&Pod> = local_pods.iter().filter(|p| node_of(p) == VNODE).collect();
    assert_eq!(
        on_virtual.len(),
        10 - room,
        "local nodes had room for {room}; placement: {:?}",
        local_pods.iter().map(node_of).collect::<Vec<_>>()
    );

    // ferryctl status shows the virtual node Ready with the pods on it
    let (ok, out, err) = ferryctl(&s.kubeconfig(0), &["status", "-o", "json"]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["peer"] == "provider-c2")
        .unwrap();
    assert_eq!(row["node"]["ready"], true, "{row}");
    assert_eq!(
        row["node"]["pods"].as_u64(),
        Some(on_virtual.len() as u64),
        "{row}"
    );

    // status and IPs on the consumer match the provider's pods (IPs in the consumer's view: c2's
    // 10.244.0.0/16 overlaps c1's, so it is seen remapped)
    let remaps = ferry_tunnel::remaps::remaps_for(
        &[s.lab.layout.clusters[1].pod_cidr],
        &[s.lab.layout.clusters[0].pod_cidr],
    );
    let remote_pods: BTreeMap<String, Pod> = pods(c2, &rns, "web")
        .await
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    assert_eq!(remote_pods.len(), on_virtual.len());
    for p in &on_virtual {
        let r = &remote_pods[&p.name_any()];
        assert_eq!(phase(r), "Running");
        assert!(
            node_of(r).starts_with("lab-node"),
            "provider pod on {}",
            node_of(r)
        );
        let want = ferry_tunnel::ipam::translate(ip_of(r).parse().unwrap(), &remaps).unwrap();
        assert_eq!(ip_of(p), want.to_string(), "consumer IP of {}", p.name_any());
        assert_ne!(ip_of(p), ip_of(r), "overlapping CIDRs must be remapped");
        assert_eq!(r.labels()["ferry.dev/origin-pod-uid"], p.uid().unwrap());
    }

    // ConfigMaps follow the namespace
    let cms: Api<ConfigMap> = Api::namespaced(c1.clone(), ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"greeting": "hi"}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let rcms: Api<ConfigMap> = Api::namespaced(c2.clone(), &rns);
    wait("ConfigMap on the provider", 10, || async {
        Ok(rcms
            .get_opt("settings")
            .await?
            .and_then(|c| c.data)
            .is_some_and(|d| d.get("greeting").map(String::as_str) == Some("hi")))
    })
    .await;

    // Services follow the namespace; their EndpointSlices carry the pods that run here, in the provider's
    // view of this cluster's (overlapping) pod CIDR
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c1.clone(), ns);
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let rsvcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c2.clone(), &rns);
    wait("Service on the provider", 15, || async {
        Ok(rsvcs.get_opt("web").await?.is_some_and(|s| {
            s.spec
                .and_then(|s| s.selector)
                .and_then(|m| m.get("app").cloned())
                .as_deref()
                == Some("web")
        }))
    })
    .await;
    let provider_view = ferry_tunnel::remaps::remaps_for(
        &[s.lab.layout.clusters[0].pod_cidr],
        &[s.lab.layout.clusters[1].pod_cidr],
    );
    let want: BTreeSet<String> = local_pods
        .iter()
        .filter(|p| node_of(p) != VNODE)
        .map(|p| {
            ferry_tunnel::ipam::translate(ip_of(p).parse().unwrap(), &provider_view)
                .unwrap()
                .to_string()
        })
        .collect();
    let slices_api = kube::discovery::group(c2, "discovery.k8s.io")
        .await
        .unwrap()
        .recommended_kind("EndpointSlice")
        .unwrap()
        .0;
    let rslices: Api<kube::core::DynamicObject> = Api::namespaced_with(c2.clone(), &rns, &slices_api);
    let addresses = |selector: &'static str| {
        let rslices = rslices.clone();
        async move {
            let list = rslices.list(&ListParams::default().labels(selector)).await?;
            Ok::<BTreeSet<String>, anyhow::Error>(
                list.items
                    .iter()
                    .flat_map(|o| o.data["endpoints"].as_array().cloned().unwrap_or_default())
                    .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
            )
        }
    };
    wait(
        "EndpointSlice on the provider with the consumer's pods, translated",
        30,
        || async {
            Ok(
                addresses("kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=ferry.dev")
                    .await?
                    == want,
            )
        },
    )
    .await;
    // ...and the provider's own slice for the copied Service: the offloaded pods, as the provider sees them
    let offloaded_ips: BTreeSet<String> = remote_pods.values().map(|p| ip_of(p).to_string()).collect();
    wait("the provider's Service selects the offloaded pods", 30, || async {
        let theirs = "kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io";
        Ok(addresses(theirs).await? == offloaded_ips)
    })
    .await;

    // deleting on the consumer deletes on the provider
    let victim = on_virtual[0].name_any();
    Api::<Pod>::namespaced(c1.clone(), ns)
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let rpods: Api<Pod> = Api::namespaced(c2.clone(), &rns);
    wait("provider pod and ShadowPod deleted", 30, || async {
        Ok(rpods.get_opt(&victim).await?.is_none() && !shadow_exists(c2, &victim).await)
    })
    .await;
    wait("consumer pod gone", 30, || async {
        Ok(Api::<Pod>::namespaced(c1.clone(), ns)
            .get_opt(&victim)
            .await?
            .is_none())
    })
    .await;
    wait("replacement Running", 60, || all_running(c1, ns, "web", 10)).await;

    // a forced deletion (grace 0) deletes on the provider too. The pod leaves the consumer's apiserver at
    // once: its watch shows it terminating for an instant, then deleted. At this size its reconcile usually
    // runs in between; in a burst of deletions the reconciles come after the pods left the store, and the
    // delete event does it (`remote::deleted_locally`; the bench's offloaded teardown shows that)
    let forced = pods(c1, ns, "web")
        .await
        .into_iter()
        .find(|p| node_of(p) == VNODE)
        .unwrap()
        .name_any();
    let t = Instant::now();
    Api::<Pod>::namespaced(c1.clone(), ns)
        .delete(
            &forced,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait(
        "provider pod and ShadowPod of a force-deleted pod deleted",
        30,
        || async { Ok(rpods.get_opt(&forced).await?.is_none() && !shadow_exists(c2, &forced).await) },
    )
    .await;
    eprintln!(
        "force-deleted consumer pod: its provider pod and ShadowPod gone in {:?}",
        t.elapsed()
    );
    wait("replacement Running", 60, || all_running(c1, ns, "web", 10)).await;

    // deleting on the provider is healed by the provider's ShadowPod controller
    let survivor = pods(c1, ns, "web")
        .await
        .into_iter()
        .find(|p| node_of(p) == VNODE)
        .unwrap();
    let name = survivor.name_any();
    let old_uid = rpods.get(&name).await.unwrap().uid();
    rpods.delete(&name, &DeleteParams::default()).await.unwrap();
    wait("provider pod recreated and Running", 30, || async {
        Ok(rpods
            .get_opt(&name)
            .await?
            .is_some_and(|p| p.uid() != old_uid && phase(&p) == "Running"))
    })
    .await;
    let after = Api::<Pod>::namespaced(c1.clone(), ns).get(&name).await.unwrap();
    assert_eq!(after.uid(), survivor.uid(), "the consumer pod is the same pod");
    wait("consumer status follows the new provider pod", 20, || async {
        let p = Api::<Pod>::namespaced(c1.clone(), ns).get(&name).await?;
        let r = rpods.get(&name).await?;
        let want = ferry_tunnel::ipam::translate(ip_of(&r).parse()?, &remaps).unwrap();
        Ok(phase(&p) == "Running" && ip_of(&p) == want.to_string())
    })
    .await;

    // a DaemonSet never lands on the virtual node, even in an offloaded namespace
    let dss: Api<DaemonSet> = Api::namespaced(c1.clone(), ns);
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}, "annotations": {"lab.ferry.dev/hollow": "true"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
    .unwrap();
    dss.create(&PostParams::default(), &ds).await.unwrap();
    let local_nodes = s.lab.layout.clusters[0].nodes as usize;
    wait("DaemonSet pods on every local node", 30, || {
        all_running(c1, ns, "agent", local_nodes)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ds_pods = pods(c1, ns, "agent").await;
    assert_eq!(ds_pods.len(), local_nodes);
    assert!(
        ds_pods.iter().all(|p| node_of(p) != VNODE),
        "a DaemonSet pod landed on the virtual node"
    );

    // a namespace that is not offloaded: its pods stay local, and one forced onto the node is not sent
    fresh_namespace(c1, "plain").await;
    let plain: Api<Deployment> = Api::namespaced(c1.clone(), "plain");
    plain
        .create(&PostParams::default(), &deployment("plain", 3, None, true))
        .await
        .unwrap();
    wait("plain pods Running", 60, || all_running(c1, "plain", "plain", 3)).await;
    assert!(
        pods(c1, "plain", "plain")
            .await
            .iter()
            .all(|p| node_of(p) != VNODE)
    );
    let plain_pods: Api<Pod> = Api::namespaced(c1.clone(), "plain");
    plain_pods
        .create(&PostParams::default(), &forced_pod("forced", json!({})))
        .await
        .unwrap();
    wait("NamespaceNotOffloaded event", 15, || async {
        Ok(events_of(c1, "plain", "forced")
            .await
            .iter()
            .any(|(r, m)| r == "NamespaceNotOffloaded" && m.contains("ferryctl offload namespace plain")))
    })
    .await;
    assert!(
        !shadow_exists(c2, "forced").await,
        "a pod of a namespace not offloaded was sent"
    );

    // bad input: host access is refused with the reason, nothing is sent
    let local: Api<Pod> = Api::namespaced(c1.clone(), ns);
    for (name, spec, field) in [
        ("hostnet", json!({"hostNetwork": true}), "hostNetwork"),
        (
            "hostpath",
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
            "hostPath",
        ),
        (
            "privileged",
            json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}),
            "privileged",
        ),
    ] {
        local
            .create(&PostParams::default(), &forced_pod(name, spec))
            .await
            .unwrap();
        wait(
            &format!("{name}: OffloadingRefused naming {field}"),
            15,
            || async {
                Ok(events_of(c1, ns, name)
                    .await
                    .iter()
                    .any(|(r, m)| r == "OffloadingRefused" && m.contains(field) && m.contains("fix:")))
            },
        )
        .await;
        let p = local.get(name).await.unwrap();
        assert_eq!(phase(&p), "Pending");
        assert!(!shadow_exists(c2, name).await, "{name} was half-reflected");
        assert!(rpods.get_opt(name).await.unwrap().is_none());
    }

    // under podOffloadingStrategy Remote the webhook refuses such a pod outright
    // (also the same-name mapping, and a cluster selector that matches this provider's virtual node)
    let same = s
        .offloaded(
            "remote-only",
            &[
                "--strategy",
                "Remote",
                "--mapping",
                "EnforceSameName",
                "--selector",
                "ferry.dev/remote-cluster-id=provider-c2",
            ],
        )
        .await;
    assert_eq!(
        same, "remote-only",
        "EnforceSameName keeps the name on the provider"
    );
    let err = Api::<Pod>::namespaced(c1.clone(), "remote-only")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true,
                "containers": [{"name": "c", "image": "x"}]}}))
            .unwrap(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("hostNetwork") && msg.contains("Remote"), "{msg}");

    // the virtual node's NetworkUnavailable follows the PeerNetwork the peering made (its phase is set by
    // hand here: the gateway does not write PeerNetwork status yet)
    let pns: Api<ferry_crds::PeerNetwork> = Api::all(c1.clone());
    for (phase, unavailable) in [("NotConnected", "True"), ("Connected", "False")] {
        pns.patch_status(
            "provider-c2",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
        wait(
            &format!("NetworkUnavailable={unavailable} after {phase}"),
            15,
            || async {
                let n = Api::<Node>::all(c1.clone()).get(VNODE).await?;
                Ok(n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "NetworkUnavailable" && c.status == unavailable))
            },
        )
        .await;
    }

    // unoffload: a pod on the virtual node that no controller recreates makes ferryctl refuse, changing
    // nothing; with --force the namespace comes home: the pods on the virtual node are deleted (a
    // Deployment's are recreated here, Pending: they may only run on type=virtual-node, which no longer
    // tolerates them), the NamespaceOffloading and the provider namespace go
    let mut away = deployment("away", 2, None, true);
    away.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector = Some([("type".to_string(), "virtual-node".to_string())].into());
    deploys.create(&PostParams::default(), &away).await.unwrap();
    wait("2 away pods Running on the virtual node", 60, || async {
        let p = pods(c1, ns, "away").await;
        Ok(p.len() == 2 && p.iter().all(|p| phase(p) == "Running" && node_of(p) == VNODE))
    })
    .await;
    let before: Vec<String> = pods(c1, ns, "away").await.iter().map(|p| p.name_any()).collect();
    let pods1: Api<Pod> = Api::namespaced(c1.clone(), ns);
    pods1
        .create(&PostParams::default(), &forced_pod("lonely", json!({})))
        .await
        .unwrap();
    let offloadings: Api<ferry_crds::NamespaceOffloading> = Api::namespaced(c1.clone(), ns);
    let (ok, out, err) = ferryctl(&s.kubeconfig(0), &["unoffload", "namespace", ns]);
    assert!(
        !ok && err.contains("burst/lonely") && err.contains("--force") && err.contains("nothing was changed"),
        "{out}{err}"
    );
    assert!(offloadings.get_opt("offloading").await.unwrap().is_some());
    let (ok, out, err) = ferryctl(&s.kubeconfig(0), &["unoffload", "namespace", ns, "--force"]);
    assert!(
        ok && out.contains("provider namespaces deleted: burst-consumer-c1 on provider-c2"),
        "{out}{err}"
    );
    assert!(offloadings.get_opt("offloading").await.unwrap().is_none());
    let labels = Api::<Namespace>::all(c1.clone())
        .get(ns)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert!(!labels.contains_key("ferry.dev/offloaded"), "{labels:?}");
    wait("the provider namespace burst-consumer-c1 gone", 60, || async {
        Ok(Api::<Namespace>::all(c2.clone())
            .get_opt("burst-consumer-c1")
            .await?
            .is_none())
    })
    .await;
    wait(
        "the away pods recreated here, off the virtual node",
        30,
        || async {
            let p = pods(c1, ns, "away").await;
            Ok(p.len() == 2
                && p.iter()
                    .all(|p| node_of(p) != VNODE && !before.contains(&p.name_any())))
        },
    )
    .await;
    assert!(pods1.get_opt("lonely").await.unwrap().is_none());

    for n in [ns, "plain", "remote-only"] {
        let _ = Api::<Namespace>::all(c1.clone())
            .delete(n, &DeleteParams::default())
            .await;
    }
    s.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_kubelet_killed_while_creating_200_pods_leaves_every_pod_running_exactly_once() {
    let _g = SERIAL.lock().await;
    let mut s = Setup::new(&["--quota-pods", "500"], &["--pods", "300"]).await;
    let (c1, c2) = (s.c1.clone(), s.c2.clone());
    let ns = "restart";
    let rns = s.offloaded(ns, &["--strategy", "Remote"]).await;
    Api::<Deployment>::namespaced(c1.clone(), ns)
        .create(&PostParams::default(), &deployment("many", 200, None, true))
        .await
        .unwrap();
    let shadows: Api<ShadowPod> = Api::namespaced(c2.clone(), &rns);
    // kill as soon as the first ShadowPods exist (polled every 10 ms: the ReplicaSet's slow start spreads
    // the 200 creations over a second or more)
    let deadline = Instant::now() + Duration::from_secs(60);
    while shadows
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
        < 10
    {
        assert!(Instant::now() < deadline, "no ShadowPods after 60s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.agents[0].kill();
    let at_kill = shadows
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert!(
        at_kill < 200,
        "the kill came too late to prove anything ({at_kill} ShadowPods)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // restarted with status ticks off: each reconcile patches its pod's status itself (the path a small
    // cluster may choose, `--status-tick-ms 0`), and no patch goes through the writer's ticks
    s.agents[0] = agents::start(&s.lab, 0, &["--status-tick-ms", "0"]).unwrap();
    wait("200 consumer pods Running", 180, || {
        all_running(&c1, ns, "many", 200)
    })
    .await;
    let (status, m) = agents::http_get(&s.lab, None, &agents::admin_addr(&s.lab, 0), "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let peer = [("peer", "provider-c2")];
    let lags = ferry_plumbing::metrics::sample(&m, "ferry_reflection_lag_seconds_count", &peer);
    let ticks = ferry_plumbing::metrics::sample(&m, "ferry_status_patch_batch_size_count", &peer);
    // the pods created after the kill turned Ready through the restarted agent's patches
    assert!(
        lags.is_some_and(|n| n >= 1.0) && ticks.unwrap_or(0.0) == 0.0,
        "ticks off: Ready patches {lags:?}, ticks {ticks:?}\n{m}"
    );

    let local = pods(&c1, ns, "many").await;
    assert!(
        local.iter().all(|p| node_of(p) == VNODE),
        "a pod of a Remote namespace ran locally (created while the webhook was down?)"
    );
    let remote = pods(&c2, &rns, "many").await;
    assert_eq!(remote.len(), 200, "provider pods");
    assert!(remote.iter().all(|p| phase(p) == "Running"));
    let local_uids: BTreeSet<String> = local.iter().filter_map(|p| p.uid()).collect();
    let origin: Vec<String> = remote
        .iter()
        .map(|p| p.labels()["ferry.dev/origin-pod-uid"].clone())
        .collect();
    let origin_set: BTreeSet<String> = origin.iter().cloned().collect();
    assert_eq!(
        origin.len(),
        origin_set.len(),
        "a consumer pod runs twice on the provider"
    );
    assert_eq!(origin_set, local_uids, "every consumer pod, exactly once");
    assert_eq!(
        shadows
            .list_metadata(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        200
    );
    eprintln!("killed at {at_kill}/200 ShadowPods; after restart 200/200 Running, no duplicates");

    Api::<Deployment>::namespaced(c1.clone(), ns)
        .delete("many", &DeleteParams::default())
        .await
        .unwrap();
    let rp: Api<Pod> = Api::namespaced(c2.clone(), &rns);
    wait("provider pods deleted with the Deployment", 120, || async {
        Ok(rp.list_metadata(&ListParams::default()).await?.items.is_empty())
    })
    .await;
    let _ = Api::<Namespace>::all(c1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    s.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_goes_not_ready_while_the_provider_apiserver_is_stopped_and_everything_converges_after() {
    let _g = SERIAL.lock().await;
    let s = Setup::new(&[], &[]).await;
    let (c1, c2) = (s.c1.clone(), s.c2.clone());
    let ns = "outage";
    let rns = s.offloaded(ns, &["--strategy", "Remote"]).await;
    let deploys: Api<Deployment> = Api::namespaced(c1.clone(), ns);
    deploys
        .create(&PostParams::default(), &deployment("svc", 3, None, false))
        .await
        .unwrap();
    wait("3 pods Running", 60, || all_running(&c1, ns, "svc", 3)).await;
    let before = pods(&c2, &rns, "svc").await;
    let netns: Vec<String> = before
        .iter()
        .map(|p| ferry_e2e::layout::pod_netns(&s.lab.layout.name, "c2", &p.uid().unwrap()))
        .collect();

    // stop (SIGSTOP) the provider's apiserver for 60 s
    let table = ferry_e2e::procs::ProcessTable::new(s.lab.paths.pids()).unwrap();
    let apiserver = table
        .list()
        .into_iter()
        .find(|t| t.name == "c2-apiserver")
        .expect("c2-apiserver");
    let pid = nix::unistd::Pid::from_raw(apiserver.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let nodes: Api<Node> = Api::all(c1.clone());
    let resumed = std::panic::AssertUnwindSafe(async {
        wait("virtual node NotReady", 15, || async {
            Ok(!ferry_virtual_kubelet::node::is_ready(&nodes.get(VNODE).await?))
        })
        .await;
        let not_ready_after = stopped.elapsed();
        // meanwhile: one pod deleted and two more asked for on the consumer
        let victim = pods(&c1, ns, "svc").await[0].name_any();
        Api::<Pod>::namespaced(c1.clone(), ns)
            .delete(&victim, &DeleteParams::default())
            .await
            .unwrap();
        deploys
            .patch(
                "svc",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 5}})),
            )
            .await
            .unwrap();
        while stopped.elapsed() < Duration::from_secs(60) {
            let listed = String::from_utf8(
                std::process::Command::new("ip")
                    .args(["netns", "list"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            for n in &netns {
                assert!(
                    listed.contains(n.as_str()),
                    "provider pod netns {n} vanished during the outage"
                );
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        (not_ready_after, victim)
    });
    let (not_ready_after, victim) = futures::FutureExt::catch_unwind(resumed)
        .await
        .unwrap_or_else(|e| {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            std::panic::resume_unwind(e)
        });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let resumed_at = Instant::now();
    wait("virtual node Ready again", 30, || async {
        Ok(ferry_virtual_kubelet::node::is_ready(&nodes.get(VNODE).await?))
    })
    .await;
    let ready_after = resumed_at.elapsed();
    let remaps = ferry_tunnel::remaps::remaps_for(
        &[s.lab.layout.clusters[1].pod_cidr],
        &[s.lab.layout.clusters[0].pod_cidr],
    );
    wait(
        "5 pods Running on both sides with matching IPs, the deleted one gone",
        90,
        || async {
            let local = pods(&c1, ns, "svc").await;
            let remote: BTreeMap<String, Pod> = pods(&c2, &rns, "svc")
                .await
                .into_iter()
                .map(|p| (p.name_any(), p))
                .collect();
            if local.len() != 5 || remote.len() != 5 || remote.contains_key(&victim) {
                return Ok(false);
            }
            Ok(local.iter().all(|p| {
                remote.get(&p.name_any()).is_some_and(|r| {
                    phase(p) == "Running"
                        && phase(r) == "Running"
                        && ferry_tunnel::ipam::translate(ip_of(r).parse().unwrap(), &remaps)
                            .map(|a| a.to_string())
                            == Some(ip_of(p).to_string())
                })
            }))
        },
    )
    .await;
    let survivors = pods(&c2, &rns, "svc").await;
    for p in &before {
        if p.name_any() != victim {
            assert!(
                survivors.iter().any(|q| q.uid() == p.uid()),
                "provider pod {} was replaced; it should have kept running",
                p.name_any()
            );
        }
    }
    eprintln!(
        "NotReady {:.1}s after the stop; Ready {:.1}s after the restart",
        not_ready_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    let _ = Api::<Namespace>::all(c1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    s.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_offload_prints_both_times_the_ratio_and_the_rss_as_its_last_line() {
    let _g = SERIAL.lock().await;
    let lab = Lab::from_env();
    let pods = std::env::var("FERRY_BENCH_OFFLOAD_PODS").unwrap_or_else(|_| "200".into());
    // through ferryctl, as an operator runs it (it hands over to ferry-lab; the lab name comes from the env)
    let out = std::process::Command::new(agents::bin("ferryctl"))
        .args(["bench", "offload", "--pods", &pods, "--runs", "2"])
        .env("FERRY_LAB_NAME", &lab.layout.name)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}"));
    assert_eq!(v["pods"].to_string(), pods);
    let (direct, offloaded) = (
        v["direct_seconds"].as_f64().unwrap(),
        v["offloaded_seconds"].as_f64().unwrap(),
    );
    assert!(direct > 0.0 && offloaded > 0.0, "{last}");
    // two pairs, alternating; the ratio is the median of theirs, with each cluster on its own CPUs
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{last}");
    // each run's pods were gone from the provider within the run's timeout, after both kinds of burst
    for r in runs {
        for k in ["direct_teardown_seconds", "offloaded_teardown_seconds"] {
            assert!(r[k].as_f64().is_some_and(|t| t > 0.0), "{k}: {last}");
        }
    }
    let ratios: Vec<f64> = runs.iter().map(|r| r["ratio"].as_f64().unwrap()).collect();
    assert!(
        (v["ratio"].as_f64().unwrap() - (ratios[0] + ratios[1]) / 2.0).abs() < 1e-9,
        "{last}"
    );
    assert_eq!(v["pinned"], true, "{last}");
    assert!(v["work_amplification"].as_f64().unwrap() > 0.0, "{last}");
    assert!(
        v["provider_agent"]["peak_rss_mib"].as_f64().unwrap() > 1.0,
        "{last}"
    );
    // the apiservers counted the pods' writes on each side
    for side in ["direct c2", "offloaded c1", "offloaded c2"] {
        let pods_writes = v["writes_per_pod"][side]["pods"].as_f64().unwrap_or(0.0);
        assert!(
            pods_writes >= 1.0,
            "{side}: {pods_writes} pod writes per pod: {last}"
        );
    }
    assert!(
        v["virtual_kubelet_peak_rss_mib"].as_f64().unwrap() > 1.0,
        "{last}"
    );
    eprintln!("bench offload: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_a_secret_and_a_service_deleted_while_the_agent_was_down_leave_the_provider_on_start() {
    let _g = SERIAL.lock().await;
    let mut s = Setup::new(&[], &[]).await;
    let (c1, c2) = (s.c1.clone(), s.c2.clone());
    let ns = "pruned";
    let rns = s.offloaded(ns, &[]).await;
    let (cms1, svcs1) = (
        Api::<ConfigMap>::namespaced(c1.clone(), ns),
        Api::<Service>::namespaced(c1.clone(), ns),
    );
    let (cms2, svcs2) = (
        Api::<ConfigMap>::namespaced(c2.clone(), &rns),
        Api::<Service>::namespaced(c2.clone(), &rns),
    );
    // the tenant cannot list Secrets at the provider: their copies are found in the consumer's ledger
    let (secrets1, secrets2) = (
        Api::<Secret>::namespaced(c1.clone(), ns),
        Api::<Secret>::namespaced(c2.clone(), &rns),
    );
    for name in ["keep", "gone"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap();
        cms1.create(&PostParams::default(), &cm).await.unwrap();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{name}")},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .unwrap();
        svcs1.create(&PostParams::default(), &svc).await.unwrap();
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": format!("s-{name}")}, "stringData": {"k": name}}),
        )
        .unwrap();
        secrets1.create(&PostParams::default(), &secret).await.unwrap();
    }
    wait(
        "ConfigMaps, Secrets and Services copied to the provider",
        30,
        || async {
            Ok(cms2.get_opt("keep").await?.is_some()
                && cms2.get_opt("gone").await?.is_some()
                && secrets2.get_opt("s-keep").await?.is_some()
                && secrets2.get_opt("s-gone").await?.is_some()
                && svcs2.get_opt("web-keep").await?.is_some()
                && svcs2.get_opt("web-gone").await?.is_some())
        },
    )
    .await;

    s.agents[0].kill();
    cms1.delete("gone", &DeleteParams::default()).await.unwrap();
    svcs1.delete("web-gone", &DeleteParams::default()).await.unwrap();
    secrets1.delete("s-gone", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cms2.get_opt("gone").await.unwrap().is_some()
            && svcs2.get_opt("web-gone").await.unwrap().is_some()
            && secrets2.get_opt("s-gone").await.unwrap().is_some(),
        "with the consumer's agent down nothing should have removed the copies"
    );
    let restarted = Instant::now();
    s.agents[0] = agents::start(&s.lab, 0, &[]).unwrap();
    wait(
        "the copies of what was deleted are gone from the provider",
        60,
        || async { Ok(cms2.get_opt("gone").await?.is_none() && svcs2.get_opt("web-gone").await?.is_none()) },
    )
    .await;
    assert!(
        cms2.get_opt("keep").await.unwrap().is_some(),
        "a live original's copy was pruned"
    );
    assert!(
        svcs2.get_opt("web-keep").await.unwrap().is_some(),
        "a live Service's copy was pruned"
    );
    eprintln!(
        "copies of a ConfigMap, a Secret and a Service deleted while the agent was down: gone {:.1}s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    let _ = Api::<Namespace>::all(c1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    s.teardown().await;
}

/// A Deployment of `replicas` hollow pods of 1 CPU (`on_virtual`: only on the virtual node).
fn hollow_cpu(name: &str, replicas: u32, on_virtual: bool) -> Deployment {
    let mut d = deployment(name, replicas, Some("1"), true);
    if on_virtual {
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = Some([("type".to_string(), "virtual-node".to_string())].into());
    }
    d
}

/// The pod's status reason and message, and its PodScheduled condition's message.
fn why(p: &Pod) -> String {
    let st = p.status.clone().unwrap_or_default();
    let sched = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message)
        .unwrap_or_default();
    format!(
        "{}: {} / {sched}",
        st.reason.unwrap_or_default(),
        st.message.unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cordon_refuses_new_pods_drain_moves_them_off_with_none_lost_and_uncordon_lets_them_back() {
    let _g = SERIAL.lock().await;
    let s = Setup::new(&[], &["--cpu", "8", "--pods", "110"]).await;
    let (c1, c2) = (&s.c1, &s.c2);
    let ns = "drain";
    let rns = s.offloaded(ns, &[]).await;
    let deploys: Api<Deployment> = Api::namespaced(c1.clone(), ns);
    let pods1: Api<Pod> = Api::namespaced(c1.clone(), ns);
    // the local nodes full, so that "home" (free to run anywhere) lands on the virtual node; "away" may run
    // only there; "lonely" is a bare pod bound to it
    let room = local_room(c1, 1000).await;
    for d in [
        hollow_cpu("filler", room as u32, false),
        hollow_cpu("home", 2, false),
        hollow_cpu("away", 2, true),
    ] {
        deploys.create(&PostParams::default(), &d).await.unwrap();
        let name = d.metadata.name.clone().unwrap();
        let n = d.spec.unwrap().replicas.unwrap() as usize;
        wait(&format!("{name}: {n} pods Running"), 60, || {
            all_running(c1, ns, &name, n)
        })
        .await;
    }
    pods1
        .create(&PostParams::default(), &forced_pod("lonely", json!({})))
        .await
        .unwrap();
    wait(
        "home, away and lonely Running on the virtual node",
        60,
        || async {
            let on: Vec<Pod> = pods1.list(&ListParams::default()).await?.items;
            let on: Vec<&Pod> = on.iter().filter(|p| node_of(p) == VNODE).collect();
            Ok(on.len() == 5 && on.iter().all(|p| phase(p) == "Running"))
        },
    )
    .await;
    let remote_pods = |c2: Client, rns: String| async move {
        Api::<Pod>::namespaced(c2, &rns)
            .list(&ListParams::default().labels("ferry.dev/origin-cluster=consumer-c1"))
            .await
            .unwrap()
            .items
    };
    assert_eq!(remote_pods(c2.clone(), rns.clone()).await.len(), 5);

    // cordon: the virtual node is tainted, a new pod bound to it stays Pending with the provider's
    // reason, and the pods already running keep running
    let (ok, out, err) = ferryctl(&s.kubeconfig(1), &["cordon", "tenant", "consumer-c1"]);
    assert!(ok && out.contains("tenant consumer-c1 cordoned"), "{out}{err}");
    let nodes: Api<Node> = Api::all(c1.clone());
    wait("the virtual node tainted", 20, || async {
        let n = nodes.get(VNODE).await?;
        Ok(n.spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == ferry_virtual_kubelet::node::CORDON_TAINT && t.effect == "NoSchedule"))
    })
    .await;
    pods1
        .create(&PostParams::default(), &forced_pod("late", json!({})))
        .await
        .unwrap();
    wait("late Pending with the provider's cordon", 30, || async {
        let p = pods1.get("late").await?;
        Ok(phase(&p) == "Pending" && why(&p).contains("ProviderRefused") && why(&p).contains("cordoned"))
    })
    .await;
    assert_eq!(
        remote_pods(c2.clone(), rns.clone()).await.len(),
        5,
        "running pods stay"
    );
    // (doctor fails the tunnel checks here: this test runs no gateways)
    let (_, out, _) = ferryctl(&s.kubeconfig(1), &["doctor", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let peering = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "peering")
        .unwrap()
        .clone();
    assert_eq!(peering["level"], "warn", "{peering}");
    assert!(
        peering["fix"]
            .as_str()
            .unwrap()
            .contains("ferryctl uncordon tenant consumer-c1"),
        "{peering}"
    );

    // drain, with room made at home first: every pod leaves the provider; "home" comes back to local
    // nodes, "away" (virtual node only) waits Pending, the bare pods wait Pending with the reason
    deploys
        .patch(
            "filler",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    wait("filler gone", 60, || async {
        Ok(pods(c1, ns, "filler").await.is_empty())
    })
    .await;
    let home_before: BTreeSet<String> = pods(c1, ns, "home").await.iter().map(|p| p.name_any()).collect();
    let t0 = Instant::now();
    let (ok, out, err) = ferryctl(
        &s.kubeconfig(1),
        &["drain", "tenant", "consumer-c1", "--timeout", "90"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("tenant consumer-c1 drained (6 ShadowPods deleted)"),
        "{out}{err}"
    );
    // without a terminal: one progress line per change, naming what is awaited, and the end
    assert!(err.contains("drain tenant consumer-c1: waiting for"), "{err}");
    assert!(
        err.contains("drain tenant consumer-c1: no pod of it runs here"),
        "{err}"
    );
    eprintln!("drain took {:?}:\n{err}", t0.elapsed());
    assert!(remote_pods(c2.clone(), rns.clone()).await.is_empty());
    wait("home: 2 new pods Running on local nodes", 60, || async {
        let p = pods(c1, ns, "home").await;
        Ok(p.len() == 2
            && p.iter().all(|p| {
                phase(p) == "Running" && node_of(p) != VNODE && !home_before.contains(&p.name_any())
            }))
    })
    .await;
    wait(
        "away: 2 pods Pending, kept off the cordoned virtual node",
        60,
        || async {
            let p = pods(c1, ns, "away").await;
            Ok(p.len() == 2
                && p.iter().all(|p| {
                    phase(p) == "Pending" && node_of(p).is_empty() && why(p).contains("provider-cordoned")
                }))
        },
    )
    .await;
    for bare in ["lonely", "late"] {
        // its status comes back through the reflection (a tick later, under load later still)
        wait(
            &format!("{bare} is kept, Pending with the reason"),
            30,
            || async {
                let p = pods1.get(bare).await?;
                Ok(phase(&p) == "Pending" && why(&p).contains("cordoned"))
            },
        )
        .await;
    }
    // the four pods a controller owned were evicted, each with an Event saying why
    let evicted: Vec<String> = Api::<Event>::namespaced(c1.clone(), ns)
        .list(&ListParams::default().fields("reason=Evicted"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(
        evicted.len() >= 4
            && evicted
                .iter()
                .all(|m| m.contains("provider provider-c2 cordoned")),
        "{evicted:#?}"
    );

    // uncordon: the taint goes, "away" runs on the provider again, the bare pods too
    let (ok, out, err) = ferryctl(&s.kubeconfig(1), &["uncordon", "tenant", "consumer-c1"]);
    assert!(ok, "{out}{err}");
    wait(
        "away, lonely and late Running on the provider again",
        60,
        || async {
            let away = pods(c1, ns, "away").await;
            let bare: Vec<Pod> = vec![pods1.get("lonely").await?, pods1.get("late").await?];
            Ok(away.len() == 2
                && away
                    .iter()
                    .chain(bare.iter())
                    .all(|p| phase(p) == "Running" && node_of(p) == VNODE))
        },
    )
    .await;
    assert_eq!(remote_pods(c2.clone(), rns.clone()).await.len(), 4);

    // unpeer waits, saying what it waits for, until the ForeignCluster, PeerNetwork and node are gone
    let _ = Api::<Namespace>::all(c1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    let (ok, out, err) = ferryctl(&s.kubeconfig(0), &["unpeer", "provider-c2"]);
    assert!(ok && out.contains("unpeered from provider-c2"), "{out}{err}");
    assert!(
        err.contains("unpeer provider-c2: ForeignCluster, PeerNetwork and virtual node gone"),
        "{err}"
    );
    assert!(nodes.get_opt(VNODE).await.unwrap().is_none());
    drop(s.agents);
}
