//! Peering e2e on two lab clusters: c2 is the provider (its ferry-agent serves the broker), c1 the
//! consumer (ferryctl). Bad requests are crafted with the library and sent over real TLS to the real
//! broker; every check goes through the real apiservers. One test at a time (one broker port).

use std::time::{Duration, Instant};

use ferry_crds::{ForeignCluster, Tenant};
use ferry_e2e::lab::{Lab, client_from};
use ferry_peering_broker::error::ErrorBody;
use ferry_peering_broker::key::ClusterKey;
use ferry_peering_broker::token::{self, PeeringClaims};
use ferry_peering_broker::wire::{PeeringRequest, Resources, consumer_user, sign_proof};
use ferry_peering_broker::{identity, tls};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lab() -> Lab {
    Lab::from_env()
}
use ferry_e2e::agents::{self, Agent, ferryctl};

/// ferry-agents on both clusters: c1 as consumer (`consumer-c1`, whose ForeignCluster reconciler performs
/// the handshake) and c2 as provider (`provider-c2`). Returns them (stopped when dropped) and the
/// provider's broker URL.
fn start_agent(lab: &Lab) -> (Vec<Agent>, String) {
    let consumer = agents::start(lab, 0, &[]).unwrap();
    let (provider, url) = start_one(lab, 1, "provider-c2");
    (vec![consumer, provider], url)
}

/// One ferry-agent (`id` must be the one [`agents::cluster_id`] gives) and its broker URL.
fn start_one(lab: &Lab, idx: usize, id: &str) -> (Agent, String) {
    assert_eq!(agents::cluster_id(idx), id);
    let agent = agents::start(lab, idx, &[]).unwrap();
    let c = &lab.layout.clusters[idx];
    (agent, format!("https://127.0.0.1:{}", c.ports.apiserver + 6))
}

fn token_create(lab: &Lab, ttl: &str) -> String {
    let (ok, out, err) = ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[1]),
        &["token", "create", "--ttl", ttl],
    );
    assert!(ok, "{err}");
    out.trim().to_string()
}

async fn provider_identity(lab: &Lab) -> identity::ClusterIdentity {
    identity::ensure_identity(&lab.client(&lab.layout.clusters[1]).await.unwrap(), None)
        .await
        .unwrap()
}

fn csr_for(cn: &str, org: Option<&str>) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(rcgen::DnType::OrganizationName, o);
    }
    p.serialize_request(&key).unwrap().pem().unwrap()
}

/// A well-formed request from a fresh consumer `id` for `token`.
fn request(id: &str, token: &str, key: &ClusterKey) -> PeeringRequest {
    let claims = token::peek(token).unwrap();
    PeeringRequest {
        token: token.into(),
        cluster_id: id.into(),
        public_key: key.public_b64(),
        csr: csr_for(&consumer_user(id, &claims.jti), None),
        proof: sign_proof(key, &claims.jti, &claims.iss, id),
        wireguard_public_key: String::new(),
        pod_cidrs: vec!["10.244.0.0/16".into()],
        service_cidrs: vec![],
        resources: Resources::default(),
        gateway_endpoint: None,
        tunnel_addresses_in_use: vec![],
    }
}

async fn post(token: &str, body: &[u8]) -> (u16, Option<ErrorBody>) {
    let c = token::peek(token).unwrap();
    let (status, resp) = tls::request(
        &c.broker_url,
        &c.tls_pin,
        "POST",
        "/v1/peerings",
        Some(body),
        None,
    )
    .await
    .unwrap();
    (status, serde_json::from_slice(&resp).ok())
}

async fn nothing_created_for(lab: &Lab, id: &str) {
    let client = lab.client(&lab.layout.clusters[1]).await.unwrap();
    assert!(
        Api::<Tenant>::all(client.clone())
            .get_opt(id)
            .await
            .unwrap()
            .is_none(),
        "Tenant {id} was created"
    );
    let ns = Api::<Namespace>::all(client)
        .get_opt(&format!("ferry-tenant-{id}"))
        .await
        .unwrap();
    assert!(
        ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace of {id} was created"
    );
}

fn sign_claims(key: &ClusterKey, claims: &PeeringClaims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&key.to_der()),
    )
    .unwrap()
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{name} still there after 60s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_gives_a_least_privilege_identity_and_unpeer_removes_everything_and_repeering_works() {
    let _g = SERIAL.lock().await;
    let lab = lab();
    let (c1, c2) = (&lab.layout.clusters[0], &lab.layout.clusters[1]);
    let (_agent, _url) = start_agent(&lab);
    for round in 0..2 {
        let t = token_create(&lab, "10m");
        let start = Instant::now();
        let (ok, out, err) = ferryctl(
            &lab.paths.kubeconfig(c1),
            &["peer", "--token", &t, "--cluster-id", "consumer-c1", "-o", "json"],
        );
        assert!(ok, "round {round}: {err}");
        eprintln!("round {round}: peer took {:?}", start.elapsed());
        let peered: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(peered["tenant_namespace"], "ferry-tenant-consumer-c1");
        // consumer: ForeignCluster Authenticated
        let consumer = lab.client(c1).await.unwrap();
        let fc = Api::<ForeignCluster>::all(consumer.clone())
            .get("provider-c2")
            .await
            .unwrap();
        let cond = fc
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Authenticated")
            .unwrap();
        assert_eq!(cond.status, "True");
        // provider: Tenant
        let provider = lab.client(c2).await.unwrap();
        let tenant = Api::<Tenant>::all(provider.clone())
            .get("consumer-c1")
            .await
            .unwrap();
        assert_eq!(tenant.spec.tenant_namespace, "ferry-tenant-consumer-c1");
        // the identity works against the provider, in its namespace only
        let secret = Api::<Secret>::namespaced(consumer.clone(), "ferry-system")
            .get("ferry-identity-provider-c2")
            .await
            .unwrap();
        let kc = secret.data.unwrap()["kubeconfig"].0.clone();
        let path = std::env::temp_dir().join("ferry-peering-identity.kubeconfig");
        std::fs::write(&path, kc).unwrap();
        let id = client_from(&path).await.unwrap();
        Api::<Pod>::namespaced(id.clone(), "ferry-tenant-consumer-c1")
            .list(&ListParams::default())
            .await
            .unwrap();
        let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{what}: {e:?}"),
            other => panic!("{what}: expected 403, got {other:?}"),
        };
        for ns in ["default", "kube-system", "ferry-system"] {
            forbidden(
                Api::<Pod>::namespaced(id.clone(), ns)
                    .list(&ListParams::default())
                    .await
                    .map(drop),
                &format!("pods in {ns}"),
            );
            forbidden(
                Api::<Secret>::namespaced(id.clone(), ns)
                    .list(&ListParams::default())
                    .await
                    .map(drop),
                &format!("secrets in {ns}"),
            );
        }
        let ns_obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": "evil" } })).unwrap();
        forbidden(
            Api::<Namespace>::all(id.clone())
                .create(&PostParams::default(), &ns_obj)
                .await
                .map(drop),
            "create namespace",
        );
        forbidden(
            Api::<k8s_openapi::api::core::v1::Node>::all(id.clone())
                .list(&ListParams::default())
                .await
                .map(drop),
            "list nodes",
        );
        let crb: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": { "name": "evil" }, "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ferry:consumer:consumer-c1" }] })).unwrap();
        forbidden(
            Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(id.clone())
                .create(&PostParams::default(), &crb)
                .await
                .map(drop),
            "escalate",
        );
        // the tunnel's halves: each side has a PeerNetwork with the other's WireGuard key and CIDRs
        let wg_public = |c: kube::Client| async move {
            let s = Api::<Secret>::namespaced(c, "ferry-system")
                .get("ferry-wireguard")
                .await
                .unwrap();
            identity::text(&s, "publicKey").unwrap()
        };
        let (k1, k2) = (
            wg_public(consumer.clone()).await,
            wg_public(provider.clone()).await,
        );
        assert_ne!(k1, k2);
        let pn1 = Api::<ferry_crds::PeerNetwork>::all(consumer.clone())
            .get("provider-c2")
            .await
            .unwrap();
        let pn2 = Api::<ferry_crds::PeerNetwork>::all(provider.clone())
            .get("consumer-c1")
            .await
            .unwrap();
        assert_eq!(
            pn1.spec.peer_public_key, k2,
            "the consumer's PeerNetwork has the provider's key"
        );
        assert_eq!(
            pn2.spec.peer_public_key, k1,
            "the provider's PeerNetwork has the consumer's key"
        );
        assert!(
            pn1.spec.remote_cidrs.contains(&c2.pod_cidr.to_string()),
            "{:?}",
            pn1.spec
        );
        assert!(
            pn2.spec.remote_cidrs.contains(&c1.pod_cidr.to_string()),
            "{:?}",
            pn2.spec
        );
        assert!(
            pn2.spec.remote_cidrs.contains(&c1.service_cidr.to_string()),
            "{:?}",
            pn2.spec
        );
        assert!(
            pn2.spec.peer_endpoint.is_none(),
            "the provider waits for the consumer to dial"
        );

        // status lists the peer
        let (ok, out, _) = ferryctl(&lab.paths.kubeconfig(c1), &["status"]);
        assert!(
            ok && out.contains("provider-c2") && out.contains("Authenticated=True"),
            "{out}"
        );

        // unpeer: gone on both sides; the provider answers once the tenant namespace is gone (the
        // namespace controller starts on it 5 s after its deletion), so peering again has nothing to wait for
        let t0 = Instant::now();
        let (ok, out, err) = ferryctl(&lab.paths.kubeconfig(c1), &["unpeer", "provider-c2"]);
        assert!(ok, "{err}");
        assert!(out.contains("it has released the tenant"), "{out}");
        assert!(
            Api::<Namespace>::all(provider.clone())
                .get_opt("ferry-tenant-consumer-c1")
                .await
                .unwrap()
                .is_none(),
            "the tenant namespace still there when unpeer returned"
        );
        eprintln!("unpeer took {:?}", t0.elapsed());
        wait_gone(&Api::<Tenant>::all(provider.clone()), "consumer-c1").await;
        assert!(
            Api::<Secret>::namespaced(consumer.clone(), "ferry-system")
                .get_opt("ferry-identity-provider-c2")
                .await
                .unwrap()
                .is_none()
        );
        wait_gone(&Api::<ForeignCluster>::all(consumer.clone()), "provider-c2").await;
        wait_gone(
            &Api::<ferry_crds::PeerNetwork>::all(consumer.clone()),
            "provider-c2",
        )
        .await;
        wait_gone(
            &Api::<ferry_crds::PeerNetwork>::all(provider.clone()),
            "consumer-c1",
        )
        .await;
        // the old identity no longer works anywhere that matters: its namespace and RBAC are gone
        let r = Api::<Pod>::namespaced(id, "ferry-tenant-consumer-c1")
            .list(&ListParams::default())
            .await;
        assert!(
            matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_is_refused_with_a_json_reason_and_creates_nothing() {
    let _g = SERIAL.lock().await;
    let lab = lab();
    let (mut agent, url) = start_agent(&lab);
    let prov = provider_identity(&lab).await;
    let key = ClusterKey::generate();

    // expired
    let t = token::issue(
        &prov.key,
        &prov.cluster_id,
        &url,
        &token::peek(&token_create(&lab, "10m")).unwrap().tls_pin,
        1,
        1_000,
    );
    let (s, e) = post(
        &t,
        &serde_json::to_vec(&request("bad-expired", &t, &key)).unwrap(),
    )
    .await;
    assert_eq!((s, e.unwrap().reason.as_str()), (401, "TokenExpired"));
    nothing_created_for(&lab, "bad-expired").await;

    // wrong audience, properly signed by the provider
    let good = token_create(&lab, "10m");
    let mut claims = token::peek(&good).unwrap();
    claims.aud = "kubernetes".into();
    let t = sign_claims(&prov.key, &claims);
    let (s, e) = post(&t, &serde_json::to_vec(&request("bad-aud", &t, &key)).unwrap()).await;
    assert_eq!((s, e.unwrap().reason.as_str()), (401, "TokenAudience"));
    nothing_created_for(&lab, "bad-aud").await;

    // signed by another key
    let t = sign_claims(&ClusterKey::generate(), &token::peek(&good).unwrap());
    let (s, e) = post(&t, &serde_json::to_vec(&request("bad-key", &t, &key)).unwrap()).await;
    assert_eq!((s, e.unwrap().reason.as_str()), (401, "TokenSignature"));
    nothing_created_for(&lab, "bad-key").await;

    // forged proof (signed for another token)
    let mut r = request("bad-proof", &good, &key);
    r.proof = sign_proof(&key, "another-jti", &prov.cluster_id, "bad-proof");
    let (s, e) = post(&good, &serde_json::to_vec(&r).unwrap()).await;
    assert_eq!((s, e.unwrap().reason.as_str()), (403, "ProofInvalid"));
    nothing_created_for(&lab, "bad-proof").await;

    // a CSR for another user name, and one asking for system:masters
    for (csr, what) in [
        (csr_for("ferry:consumer:someone-else", None), "other user"),
        (
            csr_for(
                &consumer_user("bad-csr", &token::peek(&good).unwrap().jti),
                Some("system:masters"),
            ),
            "group",
        ),
    ] {
        let mut r = request("bad-csr", &good, &key);
        r.csr = csr;
        let (s, e) = post(&good, &serde_json::to_vec(&r).unwrap()).await;
        let e = e.unwrap();
        assert_eq!(
            (s, e.reason.as_str()),
            (403, "CsrSubject"),
            "{what}: {}",
            e.message
        );
    }
    nothing_created_for(&lab, "bad-csr").await;

    // malformed JSON and an oversize body
    let (s, e) = post(&good, b"{\"token\": ").await;
    assert_eq!((s, e.unwrap().reason.as_str()), (422, "Malformed"));
    let (s, e) = post(&good, &vec![b'x'; 200 * 1024]).await;
    assert_eq!((s, e.unwrap().reason.as_str()), (413, "TooLarge"));

    // TLS fingerprint mismatch: the consumer refuses the broker, says so, and names the endpoint
    let mut claims = token::peek(&good).unwrap();
    claims.tls_pin = "00".repeat(32);
    let t = sign_claims(&prov.key, &claims);
    let (ok, _, err) = ferryctl(
        &lab.paths.kubeconfig(&lab.layout.clusters[0]),
        &["peer", "--token", &t],
    );
    assert!(!ok);
    assert!(
        err.contains("TLS fingerprint mismatch") && err.contains(&url),
        "{err}"
    );
    let fc = Api::<ForeignCluster>::all(lab.client(&lab.layout.clusters[0]).await.unwrap())
        .get("provider-c2")
        .await
        .unwrap();
    let st = fc.status.unwrap();
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains(&format!("POST {url}/v1/peerings")),
        "{:?}",
        st.last_error
    );
    assert_eq!(
        st.conditions
            .iter()
            .find(|c| c.type_ == "Authenticated")
            .unwrap()
            .status,
        "False"
    );
    let _ = Api::<ForeignCluster>::all(lab.client(&lab.layout.clusters[0]).await.unwrap())
        .delete("provider-c2", &Default::default())
        .await;

    // reuse: the token works once; another consumer with it gets 409, also after a broker restart
    let r = request("reuse-a", &good, &key);
    let (s, _) = post(&good, &serde_json::to_vec(&r).unwrap()).await;
    assert_eq!(s, 200);
    // the same consumer retrying with the same key is idempotent
    let (s, _) = post(&good, &serde_json::to_vec(&r).unwrap()).await;
    assert_eq!(s, 200, "retry by the same key");
    let other = ClusterKey::generate();
    let (s, e) = post(
        &good,
        &serde_json::to_vec(&request("reuse-b", &good, &other)).unwrap(),
    )
    .await;
    assert_eq!((s, e.unwrap().reason.as_str()), (409, "TokenReused"));
    agent.pop(); // the provider's broker goes down...
    agent.push(start_one(&lab, 1, "provider-c2").0); // ...and comes back
    let (s, e) = post(
        &good,
        &serde_json::to_vec(&request("reuse-c", &good, &other)).unwrap(),
    )
    .await;
    assert_eq!(
        (s, e.unwrap().reason.as_str()),
        (409, "TokenReused"),
        "after a broker restart"
    );
    nothing_created_for(&lab, "reuse-b").await;
    nothing_created_for(&lab, "reuse-c").await;
    // clean up reuse-a
    let provider = lab.client(&lab.layout.clusters[1]).await.unwrap();
    let _ = Api::<Tenant>::all(provider.clone())
        .delete("reuse-a", &Default::default())
        .await;
    let _ = Api::<Namespace>::all(provider)
        .delete("ferry-tenant-reuse-a", &Default::default())
        .await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_peer_prints_seconds_to_authenticated_and_to_a_ready_virtual_node() {
    let _g = SERIAL.lock().await;
    let lab = lab();
    let (_agent, _) = start_agent(&lab);
    let t = token_create(&lab, "10m");
    let c1 = lab.paths.kubeconfig(&lab.layout.clusters[0]);
    let (ok, out, err) = ferryctl(&c1, &["bench", "peer", "--token", &t]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let secs = v["seconds_to_authenticated"].as_f64().unwrap();
    let ready = v["ready_seconds"].as_f64().unwrap();
    assert!(secs > 0.0 && ready >= secs, "{v}");
    eprintln!("bench peer: {v}");
    let (ok, out, err) = ferryctl(&c1, &["unpeer", "provider-c2"]);
    assert!(ok && out.contains("it has released the tenant"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_broker_is_retried_with_backoff_reported_by_endpoint_and_peering_completes_when_it_returns() {
    let _g = SERIAL.lock().await;
    let lab = lab();
    let (mut agents, url) = start_agent(&lab);
    let t = token_create(&lab, "10m");
    agents.pop(); // the provider's broker is down
    let consumer = lab.client(&lab.layout.clusters[0]).await.unwrap();
    let log = lab.paths.dir.join("agent-c1.log");
    let before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("handshake failed")
        .count();
    let provider = ferry_peering_broker::consumer::request_peering(&consumer, &t, None, Resources::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let attempts = std::fs::read_to_string(&log)
        .unwrap()
        .matches("handshake failed")
        .count()
        - before;
    // backoff 2 s, 4 s, 8 s after the first failures: a handful of attempts in 7 s, not hundreds
    assert!((2..=5).contains(&attempts), "{attempts} attempts in 7s");
    let fc = Api::<ForeignCluster>::all(consumer.clone())
        .get(&provider)
        .await
        .unwrap();
    let st = fc.status.unwrap();
    let cond = st.conditions.iter().find(|c| c.type_ == "Authenticated").unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "BrokerUnreachable")
    );
    assert!(
        st.last_error
            .unwrap()
            .contains(&format!("POST {url}/v1/peerings"))
    );
    // the broker comes back: the next retry (at most 8 s away) authenticates, nothing to do by hand
    agents.push(start_one(&lab, 1, "provider-c2").0);
    let p = ferry_peering_broker::consumer::wait_authenticated(&consumer, &provider, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(p.tenant_namespace, "ferry-tenant-consumer-c1");
    ferry_peering_broker::consumer::unpeer(&consumer, &provider)
        .await
        .unwrap();
}

/// `plumbing::events::Recorder` on a real apiserver (1.20, events.k8s.io/v1): a repeat becomes the first
/// event's series (count 2, then 3), another reason is another Event, and a series whose Event was deleted
/// starts anew.
#[tokio::test]
async fn the_event_recorder_joins_repeats_into_a_series_on_a_real_apiserver() {
    use ferry_plumbing::events::{Event, EventType, Recorder, Reporter};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::Resource;
    let _g = SERIAL.lock().await;
    let lab = lab();
    let client = lab.client(&lab.layout.clusters[0]).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let name = format!("recorder-{}", std::process::id());
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ferry-e2e".into(),
            instance: None,
        },
    );
    let ev = |reason: &str| Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some("n".into()),
        action: "Test".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let mine = || async {
        let mut l: Vec<K8sEvent> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
            .collect();
        l.sort_by_key(|e| e.reason.clone());
        l
    };
    for _ in 0..3 {
        recorder.publish(&ev("Repeated"), &reference).await.unwrap();
    }
    recorder.publish(&ev("Other"), &reference).await.unwrap();
    let l = mine().await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[1].reason.as_deref(), Some("Repeated"));
    assert_eq!(l[1].series.as_ref().map(|s| s.count), Some(3), "{:?}", l[1]);
    assert!(l[0].series.is_none());
    // the series' Event deleted: the next repeat creates a new one
    events
        .delete(l[1].metadata.name.as_deref().unwrap(), &Default::default())
        .await
        .unwrap();
    recorder.publish(&ev("Repeated"), &reference).await.unwrap();
    let l = mine().await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l[1].series.is_none(), "a new Event, not a series: {:?}", l[1]);
    cms.delete(&name, &Default::default()).await.unwrap();
}
