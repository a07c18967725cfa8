//! `/stats/summary` and `/metrics/resource` of the virtual node (issue 16), read as metrics-server would,
//! through c1's apiserver (the lab has no metrics-server, so `kubectl top` is not run: the endpoints are
//! checked directly), against c2's own kubelet figures for the twin.

use std::path::Path;

use serde_json::Value;

use super::{curl, kubectl};

/// The pod `web/talker` (offloaded, logging 10 lines a second) is Running when this is called.
pub async fn summary_and_resource_metrics(kc1: &Path, kc2: &Path, token: &str, base: &str) {
    let raw = |kc: &Path, path: &str| {
        let (ok, out, err) = kubectl(kc, &["get", "--raw", path]);
        assert!(ok, "kubectl get --raw {path}: {err}");
        out
    };
    let node = "ferry-provider-c2";
    // the provider's figures come within the first scrapes (the broker reads its kubelets on demand)
    let mut summary = Value::Null;
    ferry_e2e::lab::eventually(
        "the offloaded pod in the virtual node's /stats/summary",
        60,
        || {
            let s: Value =
                serde_json::from_str(&raw(kc1, &format!("/api/v1/nodes/{node}/proxy/stats/summary")))
                    .unwrap_or_default();
            // a kubelet measures a new pod within its housekeeping period (10-15 s): until then no figures
            let found = pod(&s, "web", "talker").is_some_and(|p| {
                p["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
                    && p["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 0
            });
            summary = s;
            async move { Ok(found) }
        },
    )
    .await;
    assert_eq!(summary["node"]["nodeName"], node);
    let talker = pod(&summary, "web", "talker").unwrap();
    // the pod under its own name and UID here, its containers, non-zero figures
    let (ok, uid, _) = kubectl(
        kc1,
        &[
            "get",
            "pod",
            "-n",
            "web",
            "talker",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    assert!(ok);
    assert_eq!(
        talker["podRef"]["uid"],
        uid.as_str(),
        "the pod's UID here, not the twin's"
    );
    let containers: Vec<&str> = talker["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        containers.contains(&"a") && containers.contains(&"b"),
        "{containers:?}"
    );
    let cpu = talker["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0);
    let ws = talker["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    assert!(cpu > 0 && ws > 0, "talker: cpu {cpu} ns, working set {ws} B");
    // only this cluster's pods: every pod in the summary is one of c1's on the virtual node
    let (_, here, _) = kubectl(
        kc1,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
        ],
    );
    for p in summary["pods"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            p["podRef"]["namespace"].as_str().unwrap(),
            p["podRef"]["name"].as_str().unwrap()
        );
        assert!(
            here.split_whitespace().any(|h| h == name),
            "{name} is not a pod of c1 on {node}: {here}"
        );
    }
    // the same figures as c2's own kubelet has for the twin (within the 10 s the figures are kept)
    let twin_node = {
        let (_, n, _) = kubectl(
            kc2,
            &[
                "get",
                "pod",
                "-n",
                "web-consumer-c1",
                "talker",
                "-o",
                "jsonpath={.spec.nodeName}",
            ],
        );
        n
    };
    let theirs: Value = serde_json::from_str(&raw(
        kc2,
        &format!("/api/v1/nodes/{twin_node}/proxy/stats/summary"),
    ))
    .unwrap();
    let twin = pod(&theirs, "web-consumer-c1", "talker").expect("the twin in c2's kubelet summary");
    let twin_ws = twin["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    assert!(
        ws * 2 > twin_ws && twin_ws * 2 > ws,
        "working set through the virtual node {ws} B vs c2's kubelet {twin_ws} B"
    );
    // scrapes in a row are served from the figures kept for 10 s: of three within a second, two
    // consecutive ones carry the same measurement time (one kubelet round served both)
    let times: Vec<Value> = (0..3)
        .map(|_| {
            let s: Value =
                serde_json::from_str(&raw(kc1, &format!("/api/v1/nodes/{node}/proxy/stats/summary")))
                    .unwrap();
            pod(&s, "web", "talker")
                .map(|p| p["cpu"]["time"].clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        times.windows(2).any(|w| w[0] == w[1] && !w[0].is_null()),
        "three scrapes in a row, each measured anew: {times:?}"
    );
    eprintln!(
        "stats: talker cpu {cpu} ns, working set {ws} B (c2's kubelet: {twin_ws} B); three scrapes measured at {times:?}"
    );
    // /metrics/resource: Prometheus text with the pod's containers under their names here
    let metrics = raw(kc1, &format!("/api/v1/nodes/{node}/proxy/metrics/resource"));
    for prefix in [
        "container_cpu_usage_seconds_total{container=\"a\",namespace=\"web\",pod=\"talker\"} ",
        "container_memory_working_set_bytes{container=\"a\",namespace=\"web\",pod=\"talker\"} ",
        "pod_memory_working_set_bytes{namespace=\"web\",pod=\"talker\"} ",
        "node_cpu_usage_seconds_total ",
        "scrape_error 0",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(prefix)),
            "{prefix} not in /metrics/resource:\n{metrics}"
        );
    }
    // a caller without nodes/stats is refused
    let (code, body) = curl(&format!("{base}/stats/summary"), None, Some(token));
    assert!(code == 403 && body.contains("subresource=stats"), "{code} {body}");
    let (code, _) = curl(&format!("{base}/metrics/resource"), None, None);
    assert_eq!(code, 401);
}

/// The pod `namespace/name` in a summary.
fn pod<'a>(summary: &'a Value, namespace: &str, name: &str) -> Option<&'a Value> {
    summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["namespace"] == namespace && p["podRef"]["name"] == name)
}
