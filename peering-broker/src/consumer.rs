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
#[derive(Debug, Clone, serde::Serialize)]
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
                         "message": message, "lastTransitionTime": rfc3339_now(), "observedGeneration": 1 }],
        "lastError": if ok { None } else { Some(message) },
    }});
    fcs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Peers this cluster (as consumer) with the provider that issued `token`.
pub async fn peer(
    client: &Client,
    token: &str,
    wanted_id: Option<&str>,
    pod_cidrs: Vec<String>,
    resources: Resources,
) -> Result<Peered> {
    let claims = crate::token::peek(token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let me = ensure_identity(client, wanted_id).await?;
    let provider = claims.iss.clone();
    let fcs: Api<ForeignCluster> = Api::all(client.clone());
    let fc = ForeignCluster::new(
        &provider,
        ForeignClusterSpec {
            cluster_id: provider.clone(),
            role: PeeringRole::Provider,
            broker_url: Some(claims.broker_url.clone()),
        },
    );
    match fcs.create(&PostParams::default(), &fc).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    set_authenticated(
        &fcs,
        &provider,
        false,
        "Peering",
        &format!("handshake with {}", claims.broker_url),
    )
    .await?;
    let csr_key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, consumer_user(&me.cluster_id));
    let csr = params.serialize_request(&csr_key)?.pem()?;
    let req = PeeringRequest {
        token: token.trim().to_string(),
        cluster_id: me.cluster_id.clone(),
        public_key: me.key.public_b64(),
        csr,
        proof: sign_proof(&me.key, &claims.jti, &provider, &me.cluster_id),
        wireguard_public_key: String::new(),
        pod_cidrs,
        service_cidrs: vec![],
        resources,
    };
    let body = serde_json::to_vec(&req)?;
    let endpoint = format!("POST {}/v1/peerings", claims.broker_url);
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
            set_authenticated(&fcs, &provider, false, "BrokerUnreachable", &msg).await?;
            bail!("{msg}");
        }
    };
    if status != 200 {
        let err: Option<ErrorBody> = serde_json::from_slice(&resp).ok();
        let msg = match err {
            Some(e) => format!("{endpoint} refused ({} {}): {}", e.status, e.reason, e.message),
            None => format!("{endpoint} answered {status}: {}", String::from_utf8_lossy(&resp)),
        };
        set_authenticated(&fcs, &provider, false, "Refused", &msg).await?;
        bail!("{msg}");
    }
    let ok: PeeringResponse = serde_json::from_slice(&resp).context("broker answer")?;
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
    secrets.create(&PostParams::default(), &s).await?;
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
    .await?;
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
    let get = |k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .unwrap_or_default()
    };
    let (url, pin, cert, key) = (get("brokerURL"), get("tlsPin"), get("tls.crt"), get("tls.key"));
    let path = format!("/v1/peerings/{}", me.cluster_id);
    let (status, body) = crate::tls::request(
        &url,
        &pin,
        "DELETE",
        &path,
        None,
        Some(crate::tls::ClientCert {
            cert: &cert,
            key: &key,
        }),
    )
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
    let _ = Api::<ForeignCluster>::all(client.clone())
        .delete(provider, &DeleteParams::default())
        .await;
    Ok(())
}
