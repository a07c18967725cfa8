//! Trust boundaries on the two lab clusters: c1 (consumer `consumer-c1`) peers with c2 (provider
//! `provider-c2`) through real ferry-agents and the real `ferryctl`; a second, hostile tenant
//! (`mallory`) peers with crafted requests over real TLS. Every attack goes through the real broker and the
//! real apiservers, and every refusal is checked to have created nothing. Lab nodes stand in for kubelets
//! (pods get a network namespace and an IP, no containers). One test at a time.

use std::time::{Duration, Instant};

use ferry_crds::ShadowPod;
use ferry_e2e::agents::{self, Agent, ferryctl};
use ferry_e2e::lab::{Lab, client_from, eventually, fresh_namespace};
use ferry_peering_broker::key::ClusterKey;
use ferry_peering_broker::tls::{self, ClientCert};
use ferry_peering_broker::token;
use ferry_peering_broker::wire::{PeeringRequest, PeeringResponse, Resources, consumer_user, sign_proof};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TENANT_NS: &str = "ferry-tenant-consumer-c1";
const VNODE: &str = "ferry-provider-c2";

/// Both agents, c1 peered with c2, and the tenant identity c1 received.
struct Peered {
    lab: Lab,
    c1: Client,
    c2: Client,
    /// The consumer's identity on the provider, exactly as the peering issued it.
    id: Client,
    _agents: Vec<Agent>,
}

impl Peered {
    async fn new(provider_flags: &[&str], peer_flags: &[&str]) -> Self {
        Self::with(&[], provider_flags, peer_flags).await
    }

    async fn with(consumer_flags: &[&str], provider_flags: &[&str], peer_flags: &[&str]) -> Self {
        let lab = Lab::from_env();
        let c1 = lab.client(&lab.layout.clusters[0]).await.unwrap();
        let c2 = lab.client(&lab.layout.clusters[1]).await.unwrap();
        let ags = vec![
            agents::start(&lab, 0, consumer_flags).unwrap(),
            agents::start(&lab, 1, provider_flags).unwrap(),
        ];
        let _ = ferryctl(
            &lab.paths.kubeconfig(&lab.layout.clusters[0]),
            &["unpeer", "provider-c2"],
        );
        eventually("the old tenant namespace gone", 90, || async {
            Ok(Api::<Namespace>::all(c2.clone())
                .get_opt(TENANT_NS)
                .await?
                .is_none())
        })
        .await;
        agents::peer(&lab, peer_flags).unwrap();
        let id = identity_client(&c1, "current").await.0;
        Self {
            lab,
            c1,
            c2,
            id,
            _agents: ags,
        }
    }
}

impl Drop for Peered {
    fn drop(&mut self) {
        let _ = ferryctl(
            &self.lab.paths.kubeconfig(&self.lab.layout.clusters[0]),
            &["unpeer", "provider-c2"],
        );
    }
}

/// A client of the identity c1 holds on c2 now (saved as `tag`), its certificate and its key.
async fn identity_client(c1: &Client, tag: &str) -> (Client, String, String) {
    let s = Api::<Secret>::namespaced(c1.clone(), "ferry-system")
        .get("ferry-identity-provider-c2")
        .await
        .unwrap();
    let data = s.data.unwrap();
    let path = std::env::temp_dir().join(format!("ferry-trust-identity-{tag}.kubeconfig"));
    std::fs::write(&path, &data["kubeconfig"].0).unwrap();
    (
        client_from(&path).await.unwrap(),
        String::from_utf8(data["tls.crt"].0.clone()).unwrap(),
        String::from_utf8(data["tls.key"].0.clone()).unwrap(),
    )
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

fn pod_json(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut base = json!({
        "metadata": {"name": name, "labels": {"app": "trust"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        base["spec"][k] = v.clone();
    }
    base
}

fn shadow(name: &str, template: serde_json::Value) -> ShadowPod {
    serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ShadowPod",
        "metadata": {"name": name, "labels": {"ferry.dev/origin-pod-uid": format!("uid-{name}")}},
        "spec": {"consumerClusterID": "consumer-c1", "consumerPodUID": format!("uid-{name}"), "template": template},
    }))
    .unwrap()
}

/// The `Admitted` condition of a ShadowPod: (status, reason, message).
async fn admitted(api: &Api<ShadowPod>, name: &str) -> Option<(String, String, String)> {
    let sp = api.get_opt(name).await.ok()??;
    let c = sp
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Admitted")?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tenant_identity_cannot_create_or_change_pods_impersonate_or_read_token_secrets() {
    let _g = SERIAL.lock().await;
    let p = Peered::new(&[], &[]).await;
    let pods: Api<Pod> = Api::namespaced(p.id.clone(), TENANT_NS);
    // what reflection needs still works
    pods.list(&ListParams::default()).await.unwrap();
    Api::<ShadowPod>::namespaced(p.id.clone(), TENANT_NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let evil: Pod = serde_json::from_value(pod_json(
        "evil",
        json!({"hostNetwork": true, "hostPID": true, "containers": [{"name": "c", "image": "busybox",
            "securityContext": {"privileged": true}}], "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
    ))
    .unwrap();
    forbidden(pods.create(&PostParams::default(), &evil).await, "create pod");
    let plain: Pod = serde_json::from_value(pod_json("plain", json!({}))).unwrap();
    forbidden(
        pods.create(&PostParams::default(), &plain).await,
        "create a plain pod",
    );
    forbidden(
        pods.patch(
            "anything",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await,
        "patch pod",
    );
    forbidden(
        pods.patch_status(
            "anything",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await,
        "patch pod status",
    );
    // token Secrets cannot be read (Secrets are written by reflection, never read)
    let secrets: Api<Secret> = Api::namespaced(p.id.clone(), TENANT_NS);
    forbidden(secrets.list(&ListParams::default()).await, "list secrets");
    let admin_secrets: Api<Secret> = Api::namespaced(p.c2.clone(), TENANT_NS);
    let tokens: Vec<String> = admin_secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .map(|s| s.name_any())
        .collect();
    assert!(
        !tokens.is_empty(),
        "the 1.20 token controller made a token Secret to try"
    );
    for t in &tokens {
        forbidden(secrets.get(t).await, &format!("get token secret {t}"));
    }
    // no impersonation of the namespace's service accounts
    let s = Api::<Secret>::namespaced(p.c1.clone(), "ferry-system")
        .get("ferry-identity-provider-c2")
        .await
        .unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(
        &String::from_utf8(s.data.unwrap()["kubeconfig"].0.clone()).unwrap(),
    )
    .unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{TENANT_NS}:default"));
    let as_sa = Client::try_from(cfg).unwrap();
    forbidden(
        Api::<Pod>::namespaced(as_sa, TENANT_NS)
            .list(&ListParams::default())
            .await,
        "impersonate the default service account",
    );
    // no service-account tokens either
    let tr =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": []}});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{TENANT_NS}/serviceaccounts/default/token"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&tr).unwrap())
    .unwrap();
    forbidden(p.id.request::<serde_json::Value>(req).await, "TokenRequest");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadowpods_that_break_the_policy_are_refused_naming_the_field_and_nothing_runs() {
    let _g = SERIAL.lock().await;
    let p = Peered::new(&[], &[]).await;
    let shadows: Api<ShadowPod> = Api::namespaced(p.id.clone(), TENANT_NS);
    let admin_pods: Api<Pod> = Api::namespaced(p.c2.clone(), TENANT_NS);
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("host-network", json!({"hostNetwork": true}), "spec.hostNetwork"),
        ("host-pid", json!({"hostPID": true}), "spec.hostPID"),
        ("host-ipc", json!({"hostIPC": true}), "spec.hostIPC"),
        (
            "host-path",
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
            "spec.volumes[0].hostPath",
        ),
        (
            "nfs",
            json!({"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}]}),
            "spec.volumes[0].nfs",
        ),
        (
            "privileged",
            json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            "net-admin",
            json!({"containers": [{"name": "c", "image": "x", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
            "spec.containers[0].securityContext.capabilities.add",
        ),
        (
            "host-port",
            json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            "unconfined",
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            "spec.securityContext.seccompProfile.type",
        ),
        ("node-name", json!({"nodeName": "lab-c2-node-1"}), "spec.nodeName"),
        (
            "tolerations",
            json!({"tolerations": [{"operator": "Exists"}]}),
            "spec.tolerations",
        ),
        (
            "priority",
            json!({"priorityClassName": "system-node-critical"}),
            "spec.priorityClassName",
        ),
        (
            "runtime",
            json!({"runtimeClassName": "privileged"}),
            "spec.runtimeClassName",
        ),
        (
            "provider-sa",
            json!({"serviceAccountName": "ferry-agent"}),
            "spec.serviceAccountName",
        ),
    ];
    for (name, spec, _) in &cases {
        let _ = shadows.delete(name, &DeleteParams::default()).await;
        shadows
            .create(
                &PostParams::default(),
                &shadow(name, pod_json(name, spec.clone())),
            )
            .await
            .unwrap();
    }
    // one within the policy, with a forged origin label: it runs, labelled by the provider
    let mut ok_template = pod_json("fine", json!({}));
    ok_template["metadata"]["labels"]["ferry.dev/origin-cluster"] = json!("someone-else");
    let _ = shadows.delete("fine", &DeleteParams::default()).await;
    shadows
        .create(&PostParams::default(), &shadow("fine", ok_template))
        .await
        .unwrap();
    let start = Instant::now();
    for (name, _, field) in &cases {
        eventually(&format!("{name} refused"), 30, || async {
            Ok(admitted(&shadows, name)
                .await
                .is_some_and(|(s, _, _)| s == "False"))
        })
        .await;
        let (_, reason, message) = admitted(&shadows, name).await.unwrap();
        assert_eq!(reason, "PolicyViolation", "{name}");
        assert!(
            message.contains(field) && message.contains("fix:"),
            "{name}: {message}"
        );
        let sp = shadows.get(name).await.unwrap();
        assert!(sp.annotations()["ferry.dev/refusal"].contains(field), "{name}");
        assert!(
            admin_pods.get_opt(name).await.unwrap().is_none(),
            "{name}: a provider pod exists"
        );
    }
    eprintln!("{} refusals recorded in {:?}", cases.len(), start.elapsed());
    eventually("the pod within the policy runs", 30, || async {
        Ok(admin_pods.get_opt("fine").await?.is_some())
    })
    .await;
    let fine = admin_pods.get("fine").await.unwrap();
    assert_eq!(
        fine.labels()["ferry.dev/origin-cluster"],
        "consumer-c1",
        "the provider sets whose pod it is"
    );
    assert_eq!(
        fine.spec.unwrap().service_account_name.as_deref(),
        Some("default")
    );
    // an Event names the field on the refused ShadowPod
    let events: Api<Event> = Api::namespaced(p.c2.clone(), TENANT_NS);
    eventually("an Event on a refused ShadowPod", 15, || async {
        Ok(events.list(&ListParams::default()).await?.items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some("privileged")
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("securityContext.privileged")
        }))
    })
    .await;

    // the second wall: even the provider's admin cannot create a forbidden pod in a tenant namespace
    let evil: Pod = serde_json::from_value(pod_json("admin-evil", json!({"hostNetwork": true}))).unwrap();
    match admin_pods.create(&PostParams::default(), &evil).await {
        Err(kube::Error::Api(e)) => {
            assert!(
                e.message.contains("spec.hostNetwork") && e.message.contains("policy"),
                "{}",
                e.message
            )
        }
        other => panic!("the webhook let a hostNetwork pod into a tenant namespace: {other:?}"),
    }
    assert!(admin_pods.get_opt("admin-evil").await.unwrap().is_none());

    // the consumer shows the provider's reason on its pod, which stays Pending
    let ns = "trust-refused";
    let nss: Api<Namespace> = Api::all(p.c1.clone());
    fresh_namespace(&p.c1, ns).await;
    let (ok, _, err) = ferryctl(
        &p.lab.paths.kubeconfig(&p.lab.layout.clusters[0]),
        &["offload", "namespace", ns, "--strategy", "Remote"],
    );
    assert!(ok, "{err}");
    eventually("virtual node Ready", 30, || async {
        Ok(Api::<Node>::all(p.c1.clone())
            .get_opt(VNODE)
            .await?
            .is_some_and(|n| ferry_virtual_kubelet::node::is_ready(&n)))
    })
    .await;
    let local: Api<Pod> = Api::namespaced(p.c1.clone(), ns);
    let pod: Pod = serde_json::from_value(pod_json(
        "wants-net-admin",
        json!({"containers": [{"name": "c", "image": "x", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
    ))
    .unwrap();
    local.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the consumer pod shows the provider's refusal", 45, || async {
        let p = local.get("wants-net-admin").await?;
        let st = p.status.unwrap_or_default();
        Ok(st.reason.as_deref() == Some("ProviderRefused")
            && st.message.unwrap_or_default().contains("capabilities.add")
            && st.phase.as_deref() == Some("Pending"))
    })
    .await;
    let events: Api<Event> = Api::namespaced(p.c1.clone(), ns);
    eventually("an Event on the consumer pod", 15, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ProviderRefused")))
    })
    .await;
    nss.delete(ns, &DeleteParams::default()).await.unwrap();
    eventually("the namespace gone (while the agents run)", 90, || async {
        Ok(nss.get_opt(ns).await?.is_none())
    })
    .await;
    for (name, _, _) in &cases {
        let _ = shadows.delete(name, &DeleteParams::default()).await;
    }
    let _ = shadows.delete("fine", &DeleteParams::default()).await;
}

/// A second tenant, `id`, peered with crafted requests (no agent of its own): its identity, its client
/// certificate and key for the broker, and the broker's URL and pin.
struct Raw {
    id: Client,
    cert: String,
    key: String,
    url: String,
    pin: String,
}

impl Raw {
    async fn call(&self, method: &str, path: &str, body: serde_json::Value) -> (u16, String) {
        let body = serde_json::to_vec(&body).unwrap();
        let (status, resp) = tls::request(
            &self.url,
            &self.pin,
            method,
            path,
            Some(&body),
            Some(ClientCert {
                cert: &self.cert,
                key: &self.key,
            }),
        )
        .await
        .unwrap();
        (status, String::from_utf8_lossy(&resp).into_owned())
    }
}

fn token_create(lab: &Lab) -> String {
    let (ok, out, err) = ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[1]),
        &["token", "create", "--ttl", "10m"],
    );
    assert!(ok, "{err}");
    out.trim().to_string()
}

/// A peering request of consumer `id` (announcing `pod_cidrs`, asking for `resources`).
fn crafted(
    lab: &Lab,
    id: &str,
    pod_cidrs: &[&str],
    resources: Resources,
) -> (PeeringRequest, rcgen::KeyPair) {
    let t = token_create(lab);
    let claims = token::peek(&t).unwrap();
    let key = ClusterKey::generate();
    let csr_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, consumer_user(id, &claims.jti));
    let req = PeeringRequest {
        token: t,
        cluster_id: id.into(),
        public_key: key.public_b64(),
        csr: params.serialize_request(&csr_key).unwrap().pem().unwrap(),
        proof: sign_proof(&key, &claims.jti, &claims.iss, id),
        wireguard_public_key: String::new(),
        pod_cidrs: pod_cidrs.iter().map(|s| s.to_string()).collect(),
        service_cidrs: vec![],
        resources,
        gateway_endpoint: None,
        tunnel_addresses_in_use: vec![],
    };
    (req, csr_key)
}

async fn post_peering(req: &PeeringRequest) -> (u16, Vec<u8>) {
    let c = token::peek(&req.token).unwrap();
    tls::request(
        &c.broker_url,
        &c.tls_pin,
        "POST",
        "/v1/peerings",
        Some(&serde_json::to_vec(req).unwrap()),
        None,
    )
    .await
    .unwrap()
}

async fn raw_tenant(lab: &Lab, id: &str, resources: Resources) -> Raw {
    let (req, csr_key) = crafted(lab, id, &["10.50.0.0/16"], resources);
    let (status, body) = post_peering(&req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let ok: PeeringResponse = serde_json::from_slice(&body).unwrap();
    let key = csr_key.serialize_pem();
    let kc = ferry_peering_broker::consumer::kubeconfig(
        id,
        &ok.api_server,
        &ok.ca,
        &ok.certificate,
        &key,
        &ok.tenant_namespace,
    );
    let path = std::env::temp_dir().join(format!("ferry-trust-{id}.kubeconfig"));
    std::fs::write(&path, kc).unwrap();
    let c = token::peek(&req.token).unwrap();
    Raw {
        id: client_from(&path).await.unwrap(),
        cert: ok.certificate,
        key,
        url: c.broker_url,
        pin: c.tls_pin,
    }
}

async fn forget_tenant(c2: &Client, id: &str) {
    let _ = Api::<ferry_crds::Tenant>::all(c2.clone())
        .delete(id, &DeleteParams::default())
        .await;
    let nss: Api<Namespace> = Api::all(c2.clone());
    for n in nss
        .list_metadata(&ListParams::default().labels(&format!("ferry.dev/tenant={id}")))
        .await
        .unwrap()
    {
        let _ = nss.delete(&n.name_any(), &DeleteParams::default()).await;
    }
    eventually(&format!("{id}'s namespaces gone"), 90, || async {
        Ok(nss
            .list_metadata(&ListParams::default().labels(&format!("ferry.dev/tenant={id}")))
            .await?
            .items
            .is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grant_is_a_hard_limit_and_another_tenant_keeps_its_own() {
    let _g = SERIAL.lock().await;
    let p = Peered::new(&[], &["--pods", "3"]).await;
    forget_tenant(&p.c2, "mallory").await;
    let mallory = raw_tenant(
        &p.lab,
        "mallory",
        Resources {
            pods: Some("2".into()),
            ..Default::default()
        },
    )
    .await;
    let shadows: Api<ShadowPod> = Api::namespaced(p.id.clone(), TENANT_NS);
    let admin_pods: Api<Pod> = Api::namespaced(p.c2.clone(), TENANT_NS);
    let names: Vec<String> = (0..5).map(|i| format!("grant-{i}")).collect();
    for n in &names {
        let _ = shadows.delete(n, &DeleteParams::default()).await;
        shadows
            .create(&PostParams::default(), &shadow(n, pod_json(n, json!({}))))
            .await
            .unwrap();
    }
    // mallory's own two pods, in its own namespace, at the same time
    let m_shadows: Api<ShadowPod> = Api::namespaced(mallory.id.clone(), "ferry-tenant-mallory");
    for n in ["m-0", "m-1"] {
        let mut sp = shadow(n, pod_json(n, json!({})));
        sp.spec.consumer_cluster_id = "mallory".into();
        m_shadows.create(&PostParams::default(), &sp).await.unwrap();
    }
    let running = || async {
        let mut n = 0;
        for name in &names {
            if admin_pods.get_opt(name).await?.is_some() {
                n += 1;
            }
        }
        anyhow::Ok(n)
    };
    eventually("3 of 5 pods created, 2 refused over the grant", 30, || async {
        let mut over = 0;
        for name in &names {
            if admitted(&shadows, name)
                .await
                .is_some_and(|(s, r, _)| s == "False" && r == "OverGrant")
            {
                over += 1;
            }
        }
        Ok(running().await? == 3 && over == 2)
    })
    .await;
    // it stays so: nothing more is created while the grant is full
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(running().await.unwrap(), 3, "the grant was exceeded");
    let refused = {
        let mut v = Vec::new();
        for name in &names {
            if let Some((s, _, m)) = admitted(&shadows, name).await
                && s == "False"
            {
                assert!(m.contains("pods 4 of 3 granted") && m.contains("fix:"), "{m}");
                v.push(name.clone());
            }
        }
        v
    };
    assert_eq!(refused.len(), 2);
    // the other tenant was not affected
    let m_pods: Api<Pod> = Api::namespaced(p.c2.clone(), "ferry-tenant-mallory");
    eventually("mallory's 2 pods run beside", 30, || async {
        Ok(m_pods.get_opt("m-0").await?.is_some() && m_pods.get_opt("m-1").await?.is_some())
    })
    .await;
    // a pod that ends frees its place: a refused one gets it
    let running_one = names.iter().find(|n| !refused.contains(n)).unwrap().clone();
    shadows
        .delete(&running_one, &DeleteParams::default())
        .await
        .unwrap();
    eventually("a refused ShadowPod gets the freed place", 60, || async {
        let mut got = 0;
        for r in &refused {
            if admin_pods.get_opt(r).await?.is_some() {
                got += 1;
            }
        }
        Ok(got == 1)
    })
    .await;
    for n in &names {
        let _ = shadows.delete(n, &DeleteParams::default()).await;
    }
    forget_tenant(&p.c2, "mallory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_squatting_export_hijacks_and_hostile_cidrs_are_refused_and_the_victim_keeps_working() {
    let _g = SERIAL.lock().await;
    let p = Peered::new(&[], &[]).await;
    forget_tenant(&p.c2, "mallory").await;
    let nss: Api<Namespace> = Api::all(p.c2.clone());
    // the victim's tunnel, to show it keeps working through every attack
    let _gateways = [
        agents::start_gateway(&p.lab, 0).unwrap(),
        agents::start_gateway(&p.lab, 1).unwrap(),
    ];
    let connected = || async {
        let pn = Api::<ferry_crds::PeerNetwork>::all(p.c1.clone())
            .get("provider-c2")
            .await?;
        anyhow::Ok(pn.status.and_then(|s| s.phase).as_deref() == Some("Connected"))
    };
    eventually("the victim's tunnel Connected", 60, connected).await;
    // the victim offloads a namespace
    let victim_ns = "shop";
    let c1ns: Api<Namespace> = Api::all(p.c1.clone());
    if c1ns.get_opt(victim_ns).await.unwrap().is_none() {
        c1ns.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": victim_ns}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let (ok, _, err) = ferryctl(
        &p.lab.paths.kubeconfig(&p.lab.layout.clusters[0]),
        &["offload", "namespace", victim_ns, "--strategy", "Local"],
    );
    assert!(ok, "{err}");
    let victim_remote = "shop-consumer-c1";
    eventually("the victim's offload namespace", 30, || async {
        Ok(nss.get_opt(victim_remote).await?.is_some())
    })
    .await;

    // a hostile CIDR is refused at peering, naming the field, and creates nothing
    for bad in ["0.0.0.0/0", "127.0.0.0/8", "169.254.64.0/18", "10.244.0.1/16"] {
        let (req, _) = crafted(&p.lab, "mallory", &[bad], Resources::default());
        let (status, body) = post_peering(&req).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body.contains("podCIDRs") && body.contains(bad), "{bad}: {body}");
        assert!(
            Api::<ferry_crds::Tenant>::all(p.c2.clone())
                .get_opt("mallory")
                .await
                .unwrap()
                .is_none()
        );
        assert!(nss.get_opt("ferry-tenant-mallory").await.unwrap().is_none());
    }
    // a consumer claiming the provider's own ID is refused too
    let (req, _) = crafted(&p.lab, "provider-c2", &["10.50.0.0/16"], Resources::default());
    let (status, body) = post_peering(&req).await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));

    let mallory = raw_tenant(&p.lab, "mallory", Resources::default()).await;
    // namespace squatting: the provider's own namespaces, the victim's, the victim's tenant namespace
    for (ns, mapping) in [
        ("kube-system", "EnforceSameName"),
        ("default", "EnforceSameName"),
        ("ferry-system", "EnforceSameName"),
        (victim_remote, "EnforceSameName"),
        (TENANT_NS, "EnforceSameName"),
    ] {
        let (status, body) = mallory
            .call(
                "POST",
                "/v1/namespaces",
                json!({"namespace": ns, "mapping": mapping}),
            )
            .await;
        assert_eq!(status, 422, "{ns}: {body}");
        assert!(body.contains("namespace"), "{ns}: {body}");
    }
    for ns in [victim_remote, TENANT_NS, "kube-system"] {
        let (status, body) = mallory
            .call("DELETE", &format!("/v1/namespaces/{ns}"), json!({}))
            .await;
        assert_eq!(status, 403, "{ns}: {body}");
    }
    // the victim's namespace is untouched and still the victim's
    let v = nss.get(victim_remote).await.unwrap();
    assert!(v.metadata.deletion_timestamp.is_none());
    assert_eq!(v.labels()["ferry.dev/tenant"], "consumer-c1");
    // mallory's identity reaches nothing of the victim's
    forbidden(
        Api::<ShadowPod>::namespaced(mallory.id.clone(), victim_remote)
            .list(&ListParams::default())
            .await,
        "mallory lists the victim's ShadowPods",
    );
    forbidden(
        Api::<ShadowPod>::namespaced(mallory.id.clone(), TENANT_NS)
            .create(&PostParams::default(), &shadow("x", pod_json("x", json!({}))))
            .await,
        "mallory creates a ShadowPod in the victim's tenant namespace",
    );

    // export hijacks: only services of namespaces mallory offloaded, with addresses inside its ranges
    let (status, body) = mallory
        .call("POST", "/v1/namespaces", json!({"namespace": "shop2"}))
        .await;
    assert_eq!(status, 200, "{body}");
    for ns in ["shop2", "other"] {
        if nss.get_opt(ns).await.unwrap().is_none() {
            nss.create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
        }
    }
    let export = |ns: &str, name: &str, addrs: &[&str]| {
        json!({"cluster": "mallory", "namespace": ns, "name": name, "created": "1999-01-01T00:00:00Z",
            "type": "Headless", "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>()})
    };
    let list = json!({"exports": [
        export("shop2", "web", &[]),                    // fine: its own offloaded namespace
        export("kube-system", "kube-dns", &[]),         // the provider's own
        export("other", "web", &[]),                    // not offloaded by mallory
        export("shop2", "evil", &["10.244.0.10"]),      // an address outside mallory's ranges
        export("shop", "web", &[]),                     // the victim's namespace
    ]});
    let imports = |ns: &str| Api::<ferry_crds::mcs::ServiceImport>::namespaced(p.c2.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = mallory.call("POST", "/v1/exports", list.clone()).await;
        assert_eq!(status, 200, "{body}");
        if imports("shop2").get_opt("web").await.unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mallory's valid export never became an import"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // a few more rounds, then none of the hijacks exists
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (ns, name) in [
        ("kube-system", "kube-dns"),
        ("other", "web"),
        ("shop2", "evil"),
        ("shop", "web"),
    ] {
        assert!(
            imports(ns).get_opt(name).await.unwrap().is_none(),
            "hijack {ns}/{name} imported"
        );
    }
    forget_tenant(&p.c2, "mallory").await;
    // the victim's peering still works: its tunnel, its offload namespace and its identity
    assert!(
        connected().await.unwrap(),
        "the victim's tunnel is down after the attacks"
    );
    assert!(
        nss.get_opt(victim_remote)
            .await
            .unwrap()
            .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
    );
    Api::<ShadowPod>::namespaced(p.id.clone(), victim_remote)
        .list(&ListParams::default())
        .await
        .unwrap();
    for ns in ["shop2", "other"] {
        let _ = nss.delete(ns, &DeleteParams::default()).await;
    }
    c1ns.delete(victim_ns, &DeleteParams::default()).await.unwrap();
    eventually(
        "the victim's namespace gone (while the agents run)",
        90,
        || async { Ok(c1ns.get_opt(victim_ns).await?.is_none()) },
    )
    .await;
}

/// Floods `to` with `n` idle connections from three `ferry-lab flood` processes (one process may hold only
/// its open-file limit, 20,000 here) for `hold` seconds, while `during` runs; returns the reports.
async fn flood(
    to: std::net::SocketAddr,
    n: usize,
    hold: u64,
    during: impl std::future::Future<Output = ()>,
) -> Vec<ferry_e2e::flood::FloodReport> {
    let procs: Vec<_> = (0..3)
        .map(|_| {
            tokio::process::Command::new(agents::bin("ferry-lab"))
                .args(["flood", "--to", &to.to_string(), "--count", &(n / 3).to_string()])
                .args(["--sources", "8", "--settle", "2", "--hold", &hold.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // the connections are open after a few seconds; `during` runs beside them
    tokio::time::sleep(Duration::from_secs(3)).await;
    during.await;
    let mut out = Vec::new();
    for p in procs {
        let o = p.wait_with_output().await.unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        out.push(
            serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {text}")),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_thousand_idle_connections_leave_the_broker_and_ferry_dns_answering() {
    let _g = SERIAL.lock().await;
    const N: usize = 30_000;
    let lab = Lab::from_env();
    let limits = [
        "--idle-timeout-seconds",
        "8",
        "--max-connections-per-source",
        "256",
    ];
    let provider = agents::start(&lab, 1, &limits).unwrap();
    let c2 = &lab.layout.clusters[1];
    let broker: std::net::SocketAddr = format!("127.0.0.1:{}", c2.ports.apiserver + 6).parse().unwrap();
    let t = token_create(&lab);
    let claims = token::peek(&t).unwrap();
    let pid = provider.pid();
    let livez = || async {
        let (status, body) = tls::request(&claims.broker_url, &claims.tls_pin, "GET", "/livez", None, None)
            .await
            .unwrap();
        assert_eq!((status, String::from_utf8_lossy(&body).as_ref()), (200, "ok"));
    };
    let reports = flood(broker, N, 30, async {
        // a real request from another source is answered beside the flood
        let t0 = Instant::now();
        livez().await;
        eprintln!("broker: /livez answered in {:?} beside the flood", t0.elapsed());
    })
    .await;
    eprintln!("broker: {reports:?}");
    let opened: usize = reports.iter().map(|r| r.opened).sum();
    assert_eq!(opened, N, "the kernel completed every connection");
    // the broker holds at most 256 per source (8 sources shared by the floods) and closes the rest at once
    let at_once: usize = reports.iter().map(|r| r.closed_at_once).sum();
    assert!(at_once >= N - 8 * 256, "closed at once: {at_once}");
    assert!(
        at_once < N,
        "the broker held none: the per-source limit is not what closed them"
    );
    // and closes the ones it held after the idle timeout
    let after: usize = reports.iter().map(|r| r.closed_after_hold).sum();
    assert_eq!(after, N, "idle connections still open after the timeout");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent died"
    );
    livez().await;

    // ferry-dns over TCP, the same way
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dns_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut dns = std::process::Command::new(agents::bin("ferry-dns"))
        .arg("--kubeconfig")
        .arg(lab.paths.kubeconfig(&lab.layout.clusters[0]))
        .args(["--listen", &dns_addr.to_string()])
        .args([
            "--idle-timeout-seconds",
            "8",
            "--max-connections-per-source",
            "256",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dig = move || {
        std::process::Command::new("dig")
            .args([
                "+tcp",
                "+time=2",
                "+tries=1",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
                "clusterset.local.",
                "SOA",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("status: NOERROR"))
    };
    let ready = Instant::now() + Duration::from_secs(10);
    while !dig() {
        assert!(Instant::now() < ready, "ferry-dns did not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reports = flood(dns_addr, N, 30, async {
        let t0 = Instant::now();
        assert!(dig(), "ferry-dns stopped answering over TCP beside the flood");
        eprintln!(
            "ferry-dns: a TCP query answered in {:?} beside the flood",
            t0.elapsed()
        );
    })
    .await;
    eprintln!("ferry-dns: {reports:?}");
    assert_eq!(reports.iter().map(|r| r.opened).sum::<usize>(), N);
    let at_once: usize = reports.iter().map(|r| r.closed_at_once).sum();
    assert!(
        (N - 8 * 256..N).contains(&at_once),
        "DNS connections closed at once: {at_once}"
    );
    assert_eq!(
        reports.iter().map(|r| r.closed_after_hold).sum::<usize>(),
        N,
        "idle DNS connections left open"
    );
    assert!(dns.try_wait().unwrap().is_none(), "ferry-dns died");
    let _ = dns.kill();
    let _ = dns.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn identities_are_renewed_in_place_and_a_certificate_of_an_unpeered_peering_stays_useless() {
    let _g = SERIAL.lock().await;
    // renew any certificate 5 s after it was stored (the lab's signer issues them for a year)
    let p = Peered::with(&["--renew-after-seconds", "5"], &[], &[]).await;
    let (first, first_cert, _) = identity_client(&p.c1, "first").await;
    let (nb0, _, cn0) = ferry_peering_broker::consumer::cert_validity(&first_cert).unwrap();
    let start = Instant::now();
    eventually("the identity renewed", 60, || async {
        Ok(identity_client(&p.c1, "probe").await.1 != first_cert)
    })
    .await;
    eprintln!("renewed after {:?}", start.elapsed());
    let (renewed, renewed_cert, old_key) = identity_client(&p.c1, "renewed").await;
    let (nb1, _, cn1) = ferry_peering_broker::consumer::cert_validity(&renewed_cert).unwrap();
    assert_eq!(cn1, cn0, "the same identity");
    assert!(nb1 >= nb0);
    Api::<Pod>::namespaced(renewed.clone(), TENANT_NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    // the virtual node keeps going on the renewed identity
    tokio::time::sleep(Duration::from_secs(4)).await;
    eventually("virtual node Ready after the renewal", 30, || async {
        Ok(Api::<Node>::all(p.c1.clone())
            .get_opt(VNODE)
            .await?
            .is_some_and(|n| ferry_virtual_kubelet::node::is_ready(&n)))
    })
    .await;

    // unpeer, then peer again under the same ID: every certificate of the first peering is useless
    let kc1 = p.lab.paths.kubeconfig(&p.lab.layout.clusters[0]);
    let (ok, _, err) = ferryctl(&kc1, &["unpeer", "provider-c2"]);
    assert!(ok, "{err}");
    for (c, what) in [(&first, "first"), (&renewed, "renewed")] {
        forbidden(
            Api::<Pod>::namespaced(c.clone(), TENANT_NS)
                .list(&ListParams::default())
                .await,
            &format!("the {what} certificate after unpeer"),
        );
    }
    eventually("the old tenant namespace gone", 90, || async {
        Ok(Api::<Namespace>::all(p.c2.clone())
            .get_opt(TENANT_NS)
            .await?
            .is_none())
    })
    .await;
    agents::peer(&p.lab, &[]).unwrap();
    let (again, _, _) = identity_client(&p.c1, "again").await;
    eventually("the new identity works", 30, || async {
        Ok(Api::<Pod>::namespaced(again.clone(), TENANT_NS)
            .list(&ListParams::default())
            .await
            .is_ok())
    })
    .await;
    for (c, what) in [(&first, "first"), (&renewed, "renewed")] {
        forbidden(
            Api::<Pod>::namespaced(c.clone(), TENANT_NS)
                .list(&ListParams::default())
                .await,
            &format!("the {what} certificate after peering again"),
        );
    }
    // nor does the broker take it
    let s = Api::<Secret>::namespaced(p.c1.clone(), "ferry-system")
        .get("ferry-identity-provider-c2")
        .await
        .unwrap();
    let url = ferry_peering_broker::identity::text(&s, "brokerURL").unwrap();
    let pin = ferry_peering_broker::identity::text(&s, "tlsPin").unwrap();
    let (status, body) = tls::request(
        &url,
        &pin,
        "POST",
        "/v1/namespaces",
        Some(br#"{"namespace":"sneaky"}"#),
        Some(ClientCert {
            cert: &renewed_cert,
            key: &old_key,
        }),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
}
