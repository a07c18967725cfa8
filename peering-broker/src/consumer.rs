//! The consumer's side of a peering: the handshake with the provider's broker (TLS pinned by the token),
//! the identity it gets (kept as a kubeconfig Secret), the `ForeignCluster` and its `Authenticated`
//! condition, which on failure names the endpoint and the reason. And unpeering.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use ferry_crds::{ForeignCluster, ForeignClusterSpec, PeeringRole};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::error::ErrorBody;
use crate::identity::ensure_identity;
use crate::provider::SYSTEM_NAMESPACE;
use crate::wire::{PeeringRequest, PeeringResponse, Resources, consumer_user, sign_proof};

/// Name of the Secret holding the identity on provider `provider`.
pub fn identity_secret(provider: &str) -> String {
    format!("ferry-identity-{provider}")
}

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

fn rfc3339_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn set_authenticated(
    fcs: &Api<ForeignCluster>,
    name: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Result<()> {
    let status = json!({ "status": {
        "conditions": [{ "type": "Authenticated", "status": if ok { "True" } else { "False" }, "reason": reason,
                         "message": message, "lastTransitionTime": rfc3339_now() }],
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
    let claims = crate::token::peek(token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
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
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let fc = fcs.get(provider).await?;
        let st = fc.status.clone().unwrap_or_default();
        if let Some(c) = st.conditions.iter().find(|c| c.type_ == "Authenticated") {
            if c.status == "True" {
                let s = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
                    .get(&identity_secret(provider))
                    .await?;
                let get = |k: &str| crate::identity::text(&s, k).unwrap_or_default();
                let granted: Resources = serde_json::from_str(&get("granted")).unwrap_or_default();
                let me = ensure_identity(client, None).await?;
                return Ok(Peered {
                    provider: provider.into(),
                    consumer: me.cluster_id,
                    tenant_namespace: get("tenantNamespace"),
                    granted,
                });
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
        if std::time::Instant::now() > deadline {
            bail!(
                "not Authenticated after {}s{}; fix: is ferry-agent running on this cluster?",
                timeout.as_secs(),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last})")
                }
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The handshake for one `ForeignCluster` (the reconciler's work): POST to the broker pinned by the
/// token, store the identity, set `Authenticated`.
pub async fn handshake(
    client: &Client,
    fc: &ForeignCluster,
    token: &str,
    net: &crate::wire::LocalNetwork,
) -> Result<Peered, HandshakeError> {
    let transient = |e: anyhow::Error| HandshakeError::Transient(format!("{e:#}"));
    let claims = crate::token::peek(token).map_err(|e| HandshakeError::Refused(format!("token: {e}")))?;
    let me = ensure_identity(client, None).await.map_err(transient)?;
    let provider = fc.spec.cluster_id.clone();
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let csr_key = rcgen::KeyPair::generate().map_err(|e| transient(e.into()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| transient(e.into()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, consumer_user(&me.cluster_id));
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
    let ok: PeeringResponse = serde_json::from_slice(&resp).map_err(|e| transient(e.into()))?;
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
            consumer_user(&me.cluster_id),
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

/// A kubeconfig for the identity, its default namespace the tenant namespace.
pub fn kubeconfig(provider: &str, server: &str, ca: &str, cert: &str, key: &str, ns: &str) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {provider}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {provider}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {provider}\n  context:\n    cluster: {provider}\n    user: {provider}\n    namespace: {ns}\ncurrent-context: {provider}\n",
        b(ca),
        b(cert),
        b(key)
    )
}

/// A call to the provider's broker as the tenant: TLS pinned to the broker's certificate, client
/// certificate from the identity Secret `identity`. Returns the status and the body.
pub async fn call_broker(
    identity: &Secret,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>)> {
    let get = |k: &str| crate::identity::text(identity, k).unwrap_or_default();
    let (url, pin, cert, key) = (get("brokerURL"), get("tlsPin"), get("tls.crt"), get("tls.key"));
    crate::tls::request(
        &url,
        &pin,
        method,
        path,
        body,
        Some(crate::tls::ClientCert {
            cert: &cert,
            key: &key,
        }),
    )
    .await
}

/// Unpeers from `provider`: the broker removes the tenant (mTLS with the identity), then the local
/// Secret and `ForeignCluster` go.
pub async fn unpeer(client: &Client, provider: &str) -> Result<()> {
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
    secrets
        .delete(&identity_secret(provider), &DeleteParams::default())
        .await?;
    let _ = Api::<ferry_crds::PeerNetwork>::all(client.clone())
        .delete(provider, &DeleteParams::default())
        .await;
    let _ = Api::<ForeignCluster>::all(client.clone())
        .delete(provider, &DeleteParams::default())
        .await;
    Ok(())
}
