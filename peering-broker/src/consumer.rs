//! The consumer's side of a peering: the handshake with the provider's broker (TLS pinned by the token),
//! the identity it gets (kept as a kubeconfig Secret), the `ForeignCluster` and its `Authenticated`
//! condition, which on failure names the endpoint and the reason. And unpeering.

use std::collections::BTreeMap;

use ferry_plumbing::context::Context;

use crate::Result;
use ferry_crds::{ForeignCluster, ForeignClusterSpec, PeeringRole};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::ErrorBody;
use crate::identity::ensure_identity;
use crate::wire::{PeeringRequest, PeeringResponse, Resources, consumer_user, sign_proof};
use ferry_crds::identity::SYSTEM_NAMESPACE;

pub use ferry_crds::identity::{check_kubeconfig, identity_secret};

/// What `peer` reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Peered {
    /// Provider cluster ID.
    pub provider: String,
    /// This cluster's ID.
    pub consumer: String,
    /// Tenant namespace on the provider.
    pub tenant_namespace: String,
    /// What was granted.
    pub granted: Resources,
}

async fn set_authenticated(
    fcs: &Api<ForeignCluster>,
    name: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Result<()> {
    use ferry_plumbing::conditions;
    // the transition time is kept while the status stays what it was
    let old = fcs
        .get_opt(name)
        .await?
        .and_then(|fc| fc.status)
        .map(|s| conditions::values(&s.conditions))
        .unwrap_or_default();
    let now = conditions::condition("Authenticated", ok, reason, message, &conditions::now());
    let status = json!({ "status": {
        "conditions": conditions::merge(&old, vec![now]),
        "lastError": if ok { None } else { Some(message) },
    }});
    fcs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The broker (or the pin) refused this request: retrying the same token cannot help.
    #[error("{0}")]
    Refused(String),
    /// Network or provider trouble: worth retrying.
    #[error("{0}")]
    Transient(String),
}

/// Name of the Secret that carries a peering token to the agent.
pub fn token_secret(provider: &str) -> String {
    format!("ferry-token-{provider}")
}

/// `ferryctl peer`: records the token and the `ForeignCluster`; the agent's reconciler does the rest.
/// Returns the provider's cluster ID.
pub async fn request_peering(
    client: &Client,
    token: &str,
    wanted_id: Option<&str>,
    resources: Resources,
) -> Result<String> {
    let claims = crate::token::peek(token).map_err(|e| invalid!("--token: {e}"))?;
    ensure_identity(client, wanted_id).await?;
    let provider = claims.iss.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let mut s = Secret::default();
    s.metadata.name = Some(token_secret(&provider));
    s.data = Some([("token".to_string(), ByteString(token.trim().as_bytes().to_vec()))].into());
    let _ = secrets
        .delete(&token_secret(&provider), &DeleteParams::default())
        .await;
    secrets.create(&PostParams::default(), &s).await?;
    let q = |v: &Option<String>| {
        v.clone()
            .map(k8s_openapi::apimachinery::pkg::api::resource::Quantity)
    };
    let spec = ForeignClusterSpec {
        cluster_id: provider.clone(),
        role: PeeringRole::Provider,
        broker_url: Some(claims.broker_url.clone()),
        token_secret: Some(token_secret(&provider)),
        resources: Some(ferry_crds::common::ResourceAmounts {
            cpu: q(&resources.cpu),
            memory: q(&resources.memory),
            pods: q(&resources.pods),
            ..Default::default()
        }),
    };
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    match fcs.get_opt(&provider).await? {
        Some(mut existing) => {
            existing.spec = spec;
            fcs.replace(&provider, &PostParams::default(), &existing).await?;
            // a new token: start over from a clean condition
            set_authenticated(
                &fcs,
                &provider,
                false,
                "Pending",
                &format!("waiting for the agent to dial {}", claims.broker_url),
            )
            .await?;
        }
        None => {
            fcs.create(&PostParams::default(), &ForeignCluster::new(&provider, spec))
                .await?;
        }
    }
    Ok(provider)
}

/// Waits until the provider's `ForeignCluster` is Authenticated, printing each new error; fails at once on
/// a refusal, or after `timeout` with the last error.
pub async fn wait_authenticated(
    client: &Client,
    provider: &str,
    timeout: std::time::Duration,
) -> Result<Peered> {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let mut last = String::new();
    // every change of the ForeignCluster, by watch
    let watch = async {
        let changes = watcher(
            fcs,
            watcher::Config::default().fields(&format!("metadata.name={provider}")),
        )
        .applied_objects();
        futures::pin_mut!(changes);
        while let Some(fc) = changes.try_next().await? {
            let st = fc.status.clone().unwrap_or_default();
            let Some(c) = st.conditions.iter().find(|c| c.type_ == "Authenticated") else {
                continue;
            };
            if c.status == "True" {
                return Ok(());
            }
            if c.reason == "Refused" {
                bail!("{}", st.last_error.unwrap_or(c.message.clone()));
            }
            if let Some(e) = &st.last_error
                && *e != last
            {
                eprintln!("  {e} (retrying)");
                last = e.clone();
            }
        }
        bail!("the ForeignCluster watch ended")
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "not Authenticated after {}s; fix: is ferry-agent running on this cluster? (kubectl get foreignclusters {provider} -o yaml shows the last error)",
            timeout.as_secs()
        ),
    }
    let s = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get(&identity_secret(provider))
        .await?;
    let get = |k: &str| crate::identity::text(&s, k).unwrap_or_default();
    let granted: Resources = serde_json::from_str(&get("granted")).unwrap_or_default();
    let me = ensure_identity(client, None).await?;
    Ok(Peered {
        provider: provider.into(),
        consumer: me.cluster_id,
        tenant_namespace: get("tenantNamespace"),
        granted,
    })
}

/// The handshake for one `ForeignCluster` (the reconciler's work): POST to the broker pinned by the
/// token, store the identity, set `Authenticated`.
pub async fn handshake(
    client: &Client,
    fc: &ForeignCluster,
    token: &str,
    net: &crate::wire::LocalNetwork,
) -> Result<Peered, HandshakeError> {
    let transient = |e: crate::Error| HandshakeError::Transient(format!("{e:#}"));
    let claims = crate::token::peek(token).map_err(|e| HandshakeError::Refused(format!("token: {e}")))?;
    let me = ensure_identity(client, None).await.map_err(transient)?;
    let provider = fc.spec.cluster_id.clone();
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let csr_key = rcgen::KeyPair::generate().map_err(|e| transient(e.into()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| transient(e.into()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        consumer_user(&me.cluster_id, &claims.jti),
    );
    let csr = params
        .serialize_request(&csr_key)
        .and_then(|c| c.pem())
        .map_err(|e| transient(e.into()))?;
    let res = fc.spec.resources.clone().unwrap_or_default();
    let req = PeeringRequest {
        token: token.trim().to_string(),
        cluster_id: me.cluster_id.clone(),
        public_key: me.key.public_b64(),
        csr,
        proof: sign_proof(&me.key, &claims.jti, &provider, &me.cluster_id),
        wireguard_public_key: net.wireguard_public_key.clone(),
        pod_cidrs: net.pod_cidrs.clone(),
        service_cidrs: net.service_cidrs.clone(),
        resources: Resources {
            cpu: res.cpu.map(|q| q.0),
            memory: res.memory.map(|q| q.0),
            pods: res.pods.map(|q| q.0),
        },
        gateway_endpoint: net.gateway_endpoint.clone(),
        tunnel_addresses_in_use: crate::wireguard::tunnel_addresses_in_use(client, &provider)
            .await
            .map_err(|e| transient(e.into()))?,
    };
    let body = serde_json::to_vec(&req).map_err(|e| transient(e.into()))?;
    let endpoint = format!("POST {}/v1/peerings", claims.broker_url);
    let fail = |refused: bool, msg: String| {
        let (fcs, provider) = (fcs.clone(), provider.clone());
        async move {
            let reason = if refused { "Refused" } else { "BrokerUnreachable" };
            let _ = set_authenticated(&fcs, &provider, false, reason, &msg).await;
            if refused {
                HandshakeError::Refused(msg)
            } else {
                HandshakeError::Transient(msg)
            }
        }
    };
    let (status, resp) = match crate::tls::request(
        &claims.broker_url,
        &claims.tls_pin,
        "POST",
        "/v1/peerings",
        Some(&body),
        None,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{endpoint}: {e:#}");
            // a certificate that is not the pinned one will not become it by retrying
            return Err(fail(msg.contains("fingerprint mismatch"), msg).await);
        }
    };
    if status != 200 {
        let err: Option<ErrorBody> = serde_json::from_slice(&resp).ok();
        let msg = match err {
            Some(e) => format!("{endpoint} refused ({} {}): {}", e.status, e.reason, e.message),
            None => format!("{endpoint} answered {status}: {}", String::from_utf8_lossy(&resp)),
        };
        return Err(fail((400..500).contains(&status), msg).await);
    }
    let ok: PeeringResponse = match serde_json::from_slice(&resp) {
        Ok(ok) => ok,
        Err(e) => {
            return Err(fail(
                true,
                format!("{endpoint}: the broker's answer does not parse: {e}"),
            )
            .await);
        }
    };
    // the provider is a peer, not an authority: its answer is checked before anything is built from it
    if let Err(e) = check_response(
        &ok,
        &claims.iss,
        &consumer_user(&me.cluster_id, &claims.jti),
        csr_key.public_key_raw(),
        chrono::Utc::now().timestamp(),
    ) {
        return Err(fail(true, format!("{endpoint}: the broker's answer is refused: {e}")).await);
    }
    let kubeconfig = kubeconfig(
        &provider,
        &ok.api_server,
        &ok.ca,
        &ok.certificate,
        &csr_key.serialize_pem(),
        &ok.tenant_namespace,
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let data: BTreeMap<String, ByteString> = [
        ("kubeconfig", kubeconfig),
        ("tls.crt", ok.certificate.clone()),
        ("tls.key", csr_key.serialize_pem()),
        ("brokerURL", claims.broker_url.clone()),
        ("tlsPin", claims.tls_pin.clone()),
        ("tenantNamespace", ok.tenant_namespace.clone()),
        ("granted", serde_json::to_string(&ok.granted).unwrap_or_default()),
        ("podCIDRs", ok.pod_cidrs.join(",")),
        (STORED_AT, chrono::Utc::now().timestamp().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let mut s = Secret::default();
    s.metadata.name = Some(identity_secret(&provider));
    s.data = Some(data);
    let _ = secrets
        .delete(&identity_secret(&provider), &DeleteParams::default())
        .await;
    secrets
        .create(&PostParams::default(), &s)
        .await
        .map_err(|e| transient(e.into()))?;
    // the tunnel's half on this side: the provider's CIDRs, key and endpoint
    let remote: Vec<String> = ok.pod_cidrs.iter().chain(&ok.service_cidrs).cloned().collect();
    let mut pn = crate::wireguard::peer_network(
        &provider,
        &net.cidrs(),
        &remote,
        &ok.wireguard_public_key,
        ok.gateway_endpoint.as_deref(),
    );
    if let Some(slot) = ok.tunnel_slot {
        let base = crate::wireguard::base_port(net.gateway_endpoint.as_deref());
        crate::wireguard::set_link(&mut pn, slot, false, base);
    }
    pn.spec.peer_standby_endpoints = ok.standby_gateway_endpoints.clone();
    if !ok.wireguard_public_key.is_empty() {
        crate::wireguard::apply_peer_network(client, &pn)
            .await
            .map_err(|e| transient(e.into()))?;
    }
    set_authenticated(
        &fcs,
        &provider,
        true,
        "Authenticated",
        &format!(
            "identity {} in {}",
            consumer_user(&me.cluster_id, &claims.jti),
            ok.tenant_namespace
        ),
    )
    .await
    .map_err(transient)?;
    Ok(Peered {
        provider,
        consumer: me.cluster_id,
        tenant_namespace: ok.tenant_namespace,
        granted: ok.granted,
    })
}

/// A kubeconfig for the identity, its default namespace the tenant namespace: built as typed data and
/// serialized, so nothing a broker answers can add structure (users, contexts, exec plugins).
pub fn kubeconfig(provider: &str, server: &str, ca: &str, cert: &str, key: &str, ns: &str) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kc: Result<kube::config::Kubeconfig, _> = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": provider, "cluster": { "server": server, "certificate-authority-data": b(ca) } }],
        "users": [{ "name": provider, "user": { "client-certificate-data": b(cert), "client-key-data": b(key) } }],
        "contexts": [{ "name": provider, "context": { "cluster": provider, "user": provider, "namespace": ns } }],
        "current-context": provider,
    }));
    kc.ok()
        .and_then(|kc| serde_yaml::to_string(&kc).ok())
        .unwrap_or_default()
}

/// Checks the broker's answer to a peering before anything is built from it (pure). `provider`: the
/// token's issuer; `user`: the identity this side asked for; `key_raw`: the raw public key of the CSR this
/// side sent. The message names the field and why.
pub fn check_response(
    ok: &PeeringResponse,
    provider: &str,
    user: &str,
    key_raw: &[u8],
    now: i64,
) -> Result<(), String> {
    use x509_parser::prelude::FromDer;
    if ok.provider_cluster_id != provider {
        return Err(format!(
            "providerClusterID {:?} is not the token's issuer {provider:?}",
            ok.provider_cluster_id
        ));
    }
    if !is_dns_label(&ok.tenant_namespace) {
        return Err(format!(
            "tenantNamespace {:?} is not a DNS label",
            ok.tenant_namespace
        ));
    }
    let uri: axum::http::Uri = ok
        .api_server
        .parse()
        .map_err(|e| format!("apiServer {:?} is not a URL: {e}", ok.api_server))?;
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if uri.scheme_str() != Some("https")
        || authority.is_empty()
        || authority.contains('@')
        || uri.query().is_some()
        || !matches!(uri.path(), "" | "/")
        || ok.api_server.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "apiServer {:?} must be https://host[:port] and nothing more",
            ok.api_server
        ));
    }
    let mut cas = 0;
    for pem in x509_parser::pem::Pem::iter_from_buffer(ok.ca.as_bytes()) {
        let pem = pem.map_err(|e| format!("ca is not PEM: {e}"))?;
        x509_parser::certificate::X509Certificate::from_der(&pem.contents)
            .map_err(|e| format!("ca holds something that is not a certificate: {e}"))?;
        cas += 1;
    }
    if cas == 0 || cas > 16 {
        return Err("ca must hold 1 to 16 PEM certificates".into());
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(ok.certificate.as_bytes())
        .map_err(|e| format!("certificate is not PEM: {e}"))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    if cn != user || cert.subject().iter().flat_map(|r| r.iter()).count() != 1 {
        return Err(format!(
            "certificate is for {:?}, not only CN={user}",
            cert.subject().to_string()
        ));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key_raw {
        return Err("certificate is not for the key this cluster sent in its CSR".into());
    }
    if cert.validity().not_after.timestamp() <= now {
        return Err("certificate has already expired".into());
    }
    crate::wire::check_resources(&ok.granted).map_err(|e| format!("granted: {e}"))?;
    crate::wire::check_cidrs("podCIDRs", &ok.pod_cidrs).map_err(|e| e.to_string())?;
    crate::wire::check_cidrs("serviceCIDRs", &ok.service_cidrs).map_err(|e| e.to_string())?;
    if let Some(e) = &ok.gateway_endpoint {
        crate::wire::check_endpoint("gatewayEndpoint", e).map_err(|e| e.to_string())?;
    }
    if ok.standby_gateway_endpoints.len() > crate::wire::MAX_STANDBY_ENDPOINTS {
        return Err(format!(
            "standbyGatewayEndpoints has more than {} entries",
            crate::wire::MAX_STANDBY_ENDPOINTS
        ));
    }
    for e in &ok.standby_gateway_endpoints {
        crate::wire::check_endpoint("standbyGatewayEndpoints", e).map_err(|e| e.to_string())?;
    }
    if !ok.wireguard_public_key.is_empty()
        && crate::wireguard::parse_public(&ok.wireguard_public_key).is_none()
    {
        return Err("wireguardPublicKey is not a WireGuard public key".into());
    }
    if ok.tunnel_slot.is_some_and(|s| s >= 4096) {
        return Err("tunnelSlot is outside 169.254.64.0/18".into());
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validity (not before, not after; unix seconds) and subject CN of a PEM certificate.
pub fn cert_validity(pem: &str) -> Option<(i64, i64, String)> {
    ferry_plumbing::certs::pem_validity(pem)
}

/// When a certificate valid from `not_before` to `not_after`, stored here at `stored_at`, is due for
/// renewal (pure, unix seconds): at two thirds of its life, or `renew_after` seconds after it was stored
/// when that is set, whichever comes first. (Signers backdate `not_before`, by 5 minutes in Kubernetes, so
/// the age counts from when the certificate was stored.)
pub fn renewal_due_at(not_before: i64, not_after: i64, stored_at: i64, renew_after: Option<i64>) -> i64 {
    let life = (not_after - not_before).max(0);
    let by_life = not_before + life * 2 / 3;
    renew_after.map_or(by_life, |a| by_life.min(stored_at.max(not_before) + a))
}

/// Whether that certificate is due at `now`.
pub fn renewal_due(
    not_before: i64,
    not_after: i64,
    stored_at: i64,
    now: i64,
    renew_after: Option<i64>,
) -> bool {
    now >= renewal_due_at(not_before, not_after, stored_at, renew_after)
}

/// Key of the identity Secret that says when its certificate was stored (unix seconds).
pub const STORED_AT: &str = "storedAt";

/// Renews the identity on `provider` if it is due: a new key, a CSR for the same user name, `POST
/// /v1/identity` with the current certificate, the answer checked like a peering's, then certificate, key
/// and kubeconfig replaced together in the identity Secret (so the stored key always matches the stored
/// certificate). Returns whether it renewed.
pub async fn renew_identity(client: &Client, provider: &str, renew_after: Option<i64>) -> Result<bool> {
    use x509_parser::prelude::FromDer;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let Some(s) = secrets.get_opt(&identity_secret(provider)).await? else {
        return Ok(false);
    };
    let get = |k: &str| crate::identity::text(&s, k).unwrap_or_default();
    let (not_before, not_after, user) =
        cert_validity(&get("tls.crt")).context("the identity's certificate does not parse")?;
    let stored_at = get(STORED_AT).parse().unwrap_or(not_before);
    if !renewal_due(
        not_before,
        not_after,
        stored_at,
        chrono::Utc::now().timestamp(),
        renew_after,
    ) {
        return Ok(false);
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user.clone());
    let csr = params.serialize_request(&key)?.pem()?;
    let body = serde_json::to_vec(&crate::wire::RenewRequest { csr })?;
    let (status, resp) = call_broker(&s, "POST", "/v1/identity", Some(&body)).await?;
    if status != 200 {
        bail!(
            "POST {}/v1/identity answered {status}: {}",
            get("brokerURL"),
            String::from_utf8_lossy(&resp)
        );
    }
    let renewed: crate::wire::RenewResponse = serde_json::from_slice(&resp)?;
    // the answer is checked as strictly as a peering's: same user, this new key, a later certificate
    let (_, pem) = x509_parser::pem::parse_x509_pem(renewed.certificate.as_bytes())
        .map_err(|e| invalid!("renewed certificate is not PEM: {e}"))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents)
        .map_err(|e| invalid!("renewed certificate does not parse: {e}"))?;
    let (nb, na, cn) = cert_validity(&renewed.certificate).context("renewed certificate")?;
    if cn != user
        || cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw()
        || na <= not_after.min(nb)
    {
        bail!("the renewed certificate is not for {user} and the new key, or not newer");
    }
    let kc = kube::config::Kubeconfig::from_yaml(&get("kubeconfig"))?;
    check_kubeconfig(&kc).map_err(|e| invalid!("{e}"))?;
    let cluster = kc.clusters[0].cluster.clone().unwrap_or_default();
    let ca = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        cluster.certificate_authority_data.unwrap_or_default(),
    )?;
    let kubeconfig = kubeconfig(
        provider,
        &cluster.server.unwrap_or_default(),
        &String::from_utf8(ca)?,
        &renewed.certificate,
        &key.serialize_pem(),
        &get("tenantNamespace"),
    );
    let mut updated = s.clone();
    let data = updated.data.get_or_insert_with(Default::default);
    data.insert("tls.crt".into(), ByteString(renewed.certificate.into_bytes()));
    data.insert("tls.key".into(), ByteString(key.serialize_pem().into_bytes()));
    data.insert("kubeconfig".into(), ByteString(kubeconfig.into_bytes()));
    data.insert(
        STORED_AT.into(),
        ByteString(chrono::Utc::now().timestamp().to_string().into_bytes()),
    );
    // replace with the read resourceVersion: one write, key and certificate together
    secrets
        .replace(&identity_secret(provider), &PostParams::default(), &updated)
        .await?;
    Ok(true)
}

/// Keeps every identity renewed: a kube-runtime `Controller` over the Secrets of `ferry-system` that
/// requeues each identity Secret for the moment its certificate is due ([`renewal_due_at`]); a renewal
/// writes the Secret, whose change brings the next due time.
pub async fn run_renewals(client: Client, renew_after: Option<i64>) {
    use futures::StreamExt;
    use kube::runtime::controller::{Action, Controller};
    let api: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    Controller::new(api, kube::runtime::watcher::Config::default())
        .run(
            |s, ctx| ferry_plumbing::metrics::reconciled("identity-renewal", reconcile_renewal(s, ctx)),
            |_, e, _| {
                tracing::warn!("renewing an identity: {e}");
                Action::requeue(std::time::Duration::from_secs(30))
            },
            std::sync::Arc::new((client, renew_after)),
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile_renewal(
    s: std::sync::Arc<Secret>,
    ctx: std::sync::Arc<(Client, Option<i64>)>,
) -> Result<kube::runtime::controller::Action, HandshakeError> {
    use kube::runtime::controller::Action;
    let name = s.metadata.name.clone().unwrap_or_default();
    let Some(provider) = name.strip_prefix(&identity_secret("")) else {
        return Ok(Action::await_change());
    };
    let (client, renew_after) = (&ctx.0, ctx.1);
    let get = |k: &str| crate::identity::text(&s, k).unwrap_or_default();
    let Some((nb, na, _)) = cert_validity(&get("tls.crt")) else {
        return Err(HandshakeError::Transient(format!(
            "{name}: the certificate does not parse"
        )));
    };
    let due = renewal_due_at(nb, na, get(STORED_AT).parse().unwrap_or(nb), renew_after);
    let wait = due - chrono::Utc::now().timestamp();
    if wait > 0 {
        return Ok(Action::requeue(std::time::Duration::from_secs(wait as u64)));
    }
    match renew_identity(client, provider, renew_after).await {
        Ok(true) => tracing::info!(provider, "identity renewed"),
        Ok(false) => {}
        Err(e) => return Err(HandshakeError::Transient(format!("{provider}: {e:#}"))),
    }
    Ok(Action::await_change())
}

/// A call to the provider's broker as the tenant: TLS pinned to the broker's certificate, client
/// certificate from the identity Secret `identity`. Returns the status and the body.
pub async fn call_broker(
    identity: &Secret,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>)> {
    call_broker_limited(identity, method, path, body, crate::tls::MAX_RESPONSE).await
}

/// [`call_broker`] reading at most `limit` bytes of the answer.
pub async fn call_broker_limited(
    identity: &Secret,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    limit: u64,
) -> Result<(u16, Vec<u8>)> {
    let get = |k: &str| crate::identity::text(identity, k).unwrap_or_default();
    let (url, pin, cert, key) = (get("brokerURL"), get("tlsPin"), get("tls.crt"), get("tls.key"));
    crate::tls::request_limited(
        &url,
        &pin,
        method,
        path,
        body,
        Some(crate::tls::ClientCert {
            cert: &cert,
            key: &key,
        }),
        limit,
    )
    .await
}

/// Unpeers from `provider`: the broker removes the tenant (mTLS with the identity), then the local
/// Secret and `ForeignCluster` go. Returns the tenant's namespaces the provider still had terminating
/// when it answered (it waits up to 20 s for them; a new peering waits for them too).
pub async fn unpeer(client: &Client, provider: &str) -> Result<Vec<String>> {
    let me = ensure_identity(client, None).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let s = secrets
        .get_opt(&identity_secret(provider))
        .await?
        .with_context(|| {
            format!(
                "not peered with {provider} (no Secret {SYSTEM_NAMESPACE}/{})",
                identity_secret(provider)
            )
        })?;
    let url = crate::identity::text(&s, "brokerURL").unwrap_or_default();
    let path = format!("/v1/peerings/{}", me.cluster_id);
    let (status, body) = call_broker(&s, "DELETE", &path, None)
        .await
        .with_context(|| format!("DELETE {url}{path}"))?;
    if status != 200 && status != 404 {
        bail!(
            "DELETE {url}{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // the names are the provider's word: shown, never acted on
    let terminating: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let names = v.get("terminating")?.as_array()?.iter();
            Some(
                names
                    .filter_map(|n| n.as_str())
                    .take(16)
                    .map(|n| n.chars().take(63).collect())
                    .collect(),
            )
        })
        .unwrap_or_default();
    secrets
        .delete(&identity_secret(provider), &DeleteParams::default())
        .await?;
    let _ = Api::<ferry_crds::PeerNetwork>::all(client.clone())
        .delete(provider, &DeleteParams::default())
        .await;
    let _ = Api::<ForeignCluster>::all(client.clone())
        .delete(provider, &DeleteParams::default())
        .await;
    Ok(terminating)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a client certificate for `cn` on a fresh key, that key's SPKI, and the CA's PEM.
    fn issued(cn: &str) -> (String, Vec<u8>, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.public_key_raw().to_vec(), ca.pem())
    }

    fn answer() -> (PeeringResponse, Vec<u8>) {
        let (cert, spki, ca) = issued("ferry:consumer:c1");
        (
            PeeringResponse {
                provider_cluster_id: "p2".into(),
                tenant_namespace: "ferry-tenant-c1".into(),
                api_server: "https://198.18.2.2:6443".into(),
                ca,
                certificate: cert,
                granted: Resources {
                    cpu: Some("4".into()),
                    ..Default::default()
                },
                wireguard_public_key: String::new(),
                pod_cidrs: vec!["10.244.0.0/16".into()],
                service_cidrs: vec!["10.97.0.0/16".into()],
                gateway_endpoint: Some("198.18.2.2:51820".into()),
                tunnel_slot: Some(0),
                standby_gateway_endpoints: vec!["198.18.2.3:51820".into()],
            },
            spki,
        )
    }

    fn check(ok: &PeeringResponse, spki: &[u8]) -> Result<(), String> {
        check_response(
            ok,
            "p2",
            "ferry:consumer:c1",
            spki,
            chrono::Utc::now().timestamp(),
        )
    }

    #[test]
    fn a_good_answer_passes_and_builds_a_kubeconfig_with_one_user_and_no_plugins() {
        let (ok, spki) = answer();
        check(&ok, &spki).unwrap();
        let text = kubeconfig(
            "p2",
            &ok.api_server,
            &ok.ca,
            &ok.certificate,
            "KEY",
            &ok.tenant_namespace,
        );
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        check_kubeconfig(&kc).unwrap();
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://198.18.2.2:6443")
        );
    }

    #[test]
    fn a_hostile_answer_cannot_inject_structure_into_the_kubeconfig() {
        // what a text template would have turned into a second user with an exec plugin
        let evil = "https://x:1\nusers:\n- name: p2\n  user:\n    exec:\n      command: /bin/sh";
        let text = kubeconfig("p2", evil, "CA", "CERT", "KEY", "ns\ncurrent-context: evil");
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.auth_infos.len(), 1);
        assert!(kc.auth_infos[0].auth_info.as_ref().unwrap().exec.is_none());
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some(evil)
        );
        assert_eq!(kc.current_context.as_deref(), Some("p2"));
        // and such a server is refused before a kubeconfig is ever built
        let (mut ok, spki) = answer();
        ok.api_server = evil.into();
        assert!(check(&ok, &spki).unwrap_err().starts_with("apiServer"));
    }

    #[test]
    fn every_field_of_a_bad_answer_is_refused_by_name() {
        type Spoil = Box<dyn Fn(&mut PeeringResponse)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "providerClusterID",
                Box::new(|o| o.provider_cluster_id = "p3".into()),
            ),
            (
                "tenantNamespace",
                Box::new(|o| o.tenant_namespace = "Ferry Tenant".into()),
            ),
            (
                "apiServer",
                Box::new(|o| o.api_server = "http://198.18.2.2:6443".into()),
            ),
            (
                "apiServer",
                Box::new(|o| o.api_server = "https://user@198.18.2.2:6443".into()),
            ),
            (
                "apiServer",
                Box::new(|o| o.api_server = "https://h:1/path?x=1".into()),
            ),
            ("ca", Box::new(|o| o.ca = "not a certificate".into())),
            (
                "certificate",
                Box::new(|o| o.certificate = issued("ferry:consumer:c1").0),
            ),
            (
                "certificate",
                Box::new(|o| o.certificate = issued("system:admin").0),
            ),
            ("granted", Box::new(|o| o.granted.memory = Some("-5Gi".into()))),
            ("podCIDRs", Box::new(|o| o.pod_cidrs = vec!["0.0.0.0/0".into()])),
            (
                "serviceCIDRs",
                Box::new(|o| o.service_cidrs = vec!["127.0.0.0/8".into()]),
            ),
            (
                "gatewayEndpoint",
                Box::new(|o| o.gateway_endpoint = Some("127.0.0.1:22".into())),
            ),
            (
                "wireguardPublicKey",
                Box::new(|o| o.wireguard_public_key = "eA==".into()),
            ),
            ("tunnelSlot", Box::new(|o| o.tunnel_slot = Some(5000))),
            (
                "standbyGatewayEndpoints",
                Box::new(|o| o.standby_gateway_endpoints = vec!["0.0.0.0:51820".into()]),
            ),
            (
                "standbyGatewayEndpoints",
                Box::new(|o| o.standby_gateway_endpoints = vec!["198.18.2.3:51820".into(); 5]),
            ),
        ];
        for (field, spoil) in cases {
            let (mut ok, spki) = answer();
            spoil(&mut ok);
            let e = check(&ok, &spki).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_life_or_the_configured_age() {
        assert!(!renewal_due(0, 3000, 0, 1999, None));
        assert!(renewal_due(0, 3000, 0, 2000, None));
        assert!(renewal_due(0, 3000, 0, 10, Some(10)));
        assert!(!renewal_due(0, 3000, 0, 9, Some(10)));
        // a backdated not_before does not make a fresh certificate old: the age counts from storing it
        assert!(!renewal_due(0, 3000, 300, 305, Some(10)));
        assert!(renewal_due(0, 3000, 300, 310, Some(10)));
        // an expired one is due at once
        assert!(renewal_due(0, 100, 0, 150, None));
    }

    #[test]
    fn a_kubeconfig_with_plugins_or_extra_users_is_not_used() {
        let with_exec: kube::config::Kubeconfig = serde_json::from_value(json!({
            "clusters": [{"name": "p", "cluster": {"server": "https://h:1", "certificate-authority-data": "eA=="}}],
            "users": [{"name": "p", "user": {"client-certificate-data": "eA==", "client-key-data": "eA==",
                "exec": {"command": "/bin/sh", "apiVersion": "client.authentication.k8s.io/v1"}}}],
            "contexts": [{"name": "p", "context": {"cluster": "p", "user": "p"}}],
        }))
        .unwrap();
        assert!(check_kubeconfig(&with_exec).is_err());
        let mut two = with_exec.clone();
        two.auth_infos[0].auth_info.as_mut().unwrap().exec = None;
        check_kubeconfig(&two).unwrap();
        two.auth_infos.push(two.auth_infos[0].clone());
        assert!(check_kubeconfig(&two).is_err());
    }
}
