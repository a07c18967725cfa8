//! The kubelet API of this cluster's virtual nodes, served (the pure decisions are
//! [`crate::kubelet_api`]): one HTTPS listener for every virtual node, at the address their
//! `status.addresses` (`InternalIP`) and `status.daemonEndpoints` name.
//!
//! - **Serving certificate**: from a `kubernetes.io/kubelet-serving` CSR (CN `system:node:<node>`,
//!   O `system:nodes`, the address as IP SAN), which this agent approves itself (it made it, and it is
//!   the only one it approves), signed by the cluster's signer; renewed at 80 % of its life. The
//!   apiserver verifies it with its `--kubelet-certificate-authority`: no insecure flag anywhere.
//! - **Authentication** like a kubelet: a client certificate chaining to the apiserver's client CA (the
//!   `extension-apiserver-authentication` ConfigMap; the apiserver's kubelet client is one), or a bearer
//!   token checked with a `TokenReview`; anything else is 401.
//! - **Authorization** like a kubelet: a `SubjectAccessReview` for the node and the subresource the path
//!   maps to (`nodes/proxy` for logs, exec, …); denied is 403.
//! - **`containerLogs`** are the provider's `pods/log` of the pod's remote twin, streamed as they come
//!   (`follow` has no timeout: the connection has no lifetime cap here).
//!
//! - **`exec`, `attach`, `portForward`** are the provider's `pods/exec|attach|portforward` of the twin,
//!   asked with the same protocol switch (SPDY/3.1 or WebSocket; [`crate::kubelet_stream`] checks both
//!   ways), then the two connections are joined byte for byte.
//!
//! - **`/stats/summary`, `/metrics/resource`**: the virtual nodes' pods with their twins' CPU and memory,
//!   which the provider's broker serves the tenant (`GET /v1/stats`), cached for [`STATS_TTL`];
//!   [`crate::kubelet_stats`] matches them to this cluster's pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper::{Request as HttpRequest, Response, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tracing::{debug, info, warn};

use crate::kubelet_api::{self, LogQuery, Request};
use crate::kubelet_stats::{self, Offloaded, PodRef, Summary, TenantStats};
use crate::kubelet_stream::{self, StreamOptions, StreamTarget};
use crate::peer::Peer;
use ferry_crds::NamespaceOffloading;
use ferry_plumbing::listen::ConnSlot;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;

/// Fetches a provider's figures of this tenant's pods (its broker's `GET /v1/stats`, as the tenant whose
/// identity the Secret holds).
pub type StatsFetch =
    Arc<dyn Fn(Secret) -> futures::future::BoxFuture<'static, Result<TenantStats, String>> + Send + Sync>;

/// How long a provider's figures are served before they are fetched again.
pub const STATS_TTL: Duration = Duration::from_secs(10);

/// One virtual node served: its peering, and the identity its provider's broker knows the tenant by.
struct Served {
    peer: Arc<Peer>,
    identity: Secret,
}

/// The kubelet API's shared state: where it is reached, and the peerings whose virtual nodes it serves.
pub struct KubeletApi {
    /// The address and port the virtual nodes report (the apiserver dials them).
    pub endpoint: SocketAddr,
    peers: RwLock<BTreeMap<String, Served>>,
    stats: Option<StatsFetch>,
    /// Each provider's last figures and when they came.
    fetched: tokio::sync::Mutex<BTreeMap<String, (std::time::Instant, Arc<TenantStats>)>>,
}

/// A virtual node served while this lives.
pub struct Registered {
    api: Arc<KubeletApi>,
    node: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut p) = self.api.peers.write() {
            p.remove(&self.node);
        }
    }
}

impl KubeletApi {
    /// Serves no node yet; `stats` fetches a provider's figures (without it, `/stats/summary` has no pods).
    pub fn new(endpoint: SocketAddr, stats: Option<StatsFetch>) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            peers: RwLock::new(BTreeMap::new()),
            stats,
            fetched: Default::default(),
        })
    }

    /// Serves `peer`'s virtual node until the guard is dropped; `identity` is the tenant's identity
    /// Secret for its provider.
    pub fn register(self: &Arc<Self>, peer: Arc<Peer>, identity: Secret) -> Registered {
        let node = peer.node_name();
        if let Ok(mut p) = self.peers.write() {
            p.insert(node.clone(), Served { peer, identity });
        }
        Registered {
            api: self.clone(),
            node,
        }
    }

    fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        Some(self.peers.read().ok()?.get(node)?.peer.clone())
    }

    /// `provider`'s figures, fetched at most once per [`STATS_TTL`] (scrapes in between cost no call).
    async fn provider_stats(&self, provider: &str, identity: &Secret) -> Result<Arc<TenantStats>, String> {
        let Some(fetch) = &self.stats else {
            return Err("no broker client: figures are not fetched".into());
        };
        let mut fetched = self.fetched.lock().await;
        if let Some((at, s)) = fetched.get(provider)
            && at.elapsed() < STATS_TTL
        {
            return Ok(s.clone());
        }
        let s = Arc::new(fetch(identity.clone()).await?);
        fetched.insert(provider.to_string(), (std::time::Instant::now(), s.clone()));
        Ok(s)
    }

    /// The summary of the virtual nodes served here: their pods (one list of the pods on each node, one
    /// of the `NamespaceOffloading`s) with their providers' figures. The listener is shared by every
    /// virtual node and a request does not say which node it is for: with several, the summary has all
    /// their pods under the first node's name. `true` with it when a provider's figures were missing.
    async fn summary(&self, client: &Client) -> (Summary, bool) {
        let served: Vec<(String, Arc<Peer>, Secret)> = match self.peers.read() {
            Ok(p) => p
                .iter()
                .map(|(n, s)| (n.clone(), s.peer.clone(), s.identity.clone()))
                .collect(),
            Err(_) => Vec::new(),
        };
        let offloadings = Api::<NamespaceOffloading>::all(client.clone())
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let (mut pods, mut failed) = (Vec::new(), false);
        for (node, peer, identity) in &served {
            let remote_ns = |ns: &str| {
                offloadings
                    .iter()
                    .filter(|o| o.namespace().as_deref() == Some(ns))
                    .find_map(|o| o.status.as_ref()?.remote_namespaces.get(&peer.provider).cloned())
            };
            let here = match Api::<Pod>::all(client.clone())
                .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
                .await
            {
                Ok(l) => l.items,
                Err(e) => {
                    warn!(node, "kubelet API stats: listing the node's pods: {e}");
                    failed = true;
                    continue;
                }
            };
            let offloaded: Vec<Offloaded> = here
                .iter()
                .filter_map(|p| {
                    let ns = p.namespace()?;
                    Some(Offloaded {
                        pod: PodRef {
                            name: p.name_any(),
                            namespace: ns.clone(),
                            uid: p.metadata.uid.clone()?,
                        },
                        containers: p
                            .spec
                            .as_ref()?
                            .containers
                            .iter()
                            .map(|c| c.name.clone())
                            .collect(),
                        remote_namespace: remote_ns(&ns)?,
                    })
                })
                .collect();
            match self.provider_stats(&peer.provider, identity).await {
                Ok(s) => pods.extend(kubelet_stats::pods_of(&offloaded, &s)),
                Err(e) => {
                    warn!(provider = %peer.provider, "kubelet API stats: {e}");
                    failed = true;
                }
            }
        }
        let node = served.first().map(|s| s.0.as_str()).unwrap_or_default();
        (kubelet_stats::summary(node, pods), failed)
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A whole answer: `status`, its content type, `body`.
fn whole(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).map_err(|e| match e {}).boxed_unsync())
        .expect("static response")
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    whole(status, "text/plain; charset=utf-8", msg)
}

/// Who is asking (a verified client certificate or a reviewed token).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Caller {
    user: String,
    groups: Vec<String>,
}

/// The name of the CSR this agent makes for its serving certificate (one at a time per node address).
fn csr_name(node_ip: IpAddr) -> String {
    let ip = node_ip.to_string().replace([':', '.'], "-");
    format!("ferry-kubelet-serving-{ip}-{}", chrono::Utc::now().timestamp())
}

/// A serving certificate (PEM chain, PEM key) for `ip`, from a `kubernetes.io/kubelet-serving` CSR that
/// this agent creates and approves, and its validity (not after).
pub async fn serving_certificate(
    client: &Client,
    node: &str,
    ip: IpAddr,
) -> Result<(String, String, chrono::DateTime<chrono::Utc>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("the CSR: {e}"))?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let name = csr_name(ip);
    let csr = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "ferry".to_string())].into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.into_bytes()),
            signer_name: "kubernetes.io/kubelet-serving".into(),
            usages: Some(vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
            ]),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|e| format!("creating CSR {name}: {e}"))?;
    let signed = approve_and_wait(&api, created).await;
    // signed or not, the request is done with (a failure is retried with a new one)
    let _ = api.delete(&name, &Default::default()).await;
    let chain = signed?;
    let not_after = not_after(&chain)?;
    Ok((chain, key.serialize_pem(), not_after))
}

/// Approves `created` (exactly the CSR made here, by its resourceVersion) and waits for its certificate.
async fn approve_and_wait(
    api: &Api<CertificateSigningRequest>,
    created: CertificateSigningRequest,
) -> Result<String, String> {
    let name = created.name_any();
    let mut approved = created;
    approved.status.get_or_insert_with(Default::default).conditions =
        Some(vec![CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("FerryVirtualKubelet".into()),
            message: Some("the virtual kubelet's own serving certificate for its node address".into()),
            ..Default::default()
        }]);
    api.replace_subresource("approval", &name, &PostParams::default(), &approved)
        .await
        .map_err(|e| {
            format!("approving CSR {name}: {e} (fix: the agent's ClusterRole needs certificatesigningrequests/approval and signers approve on kubernetes.io/kubelet-serving)")
        })?;
    let signed = tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(api.clone(), &name, |c: Option<&CertificateSigningRequest>| {
            c.and_then(|c| c.status.as_ref()?.certificate.as_ref())
                .is_some_and(|b| !b.0.is_empty())
        }),
    )
    .await
    .map_err(|_| format!("CSR {name}: not signed within 60s (is the controller-manager's kubelet-serving signer configured?)"))?
    .map_err(|e| format!("CSR {name}: {e}"))?;
    signed
        .and_then(|c| c.status?.certificate)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .ok_or_else(|| format!("CSR {name}: no certificate"))
}

/// The first certificate's `notAfter`.
fn not_after(chain_pem: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    ferry_plumbing::certs::pem_validity(chain_pem)
        .and_then(|(_, na, _)| chrono::DateTime::from_timestamp(na, 0))
        .ok_or_else(|| "the signed certificate does not parse".into())
}

/// The certificate the listener presents, swapped on renewal.
#[derive(Debug)]
struct Swappable(RwLock<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for Swappable {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the serving certificate: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("the serving key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the serving key: {e}"))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

/// The apiserver's client CA (the `client-ca-file` of `kube-system/extension-apiserver-authentication`).
async fn client_ca(client: &Client) -> Result<String, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("extension-apiserver-authentication")
        .await
        .map_err(|e| format!("reading kube-system/extension-apiserver-authentication (the apiserver's client CA): {e} (fix: bind the agent to the Role extension-apiserver-authentication-reader)"))?;
    cm.data
        .and_then(|d| d.get("client-ca-file").cloned())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| "kube-system/extension-apiserver-authentication has no client-ca-file".into())
}

/// Runs the kubelet API on `listener` until it fails: obtains the serving certificate for `node` (the
/// name its CN carries), renews it, serves every registered virtual node.
pub async fn serve(
    client: Client,
    api: Arc<KubeletApi>,
    node: String,
    listener: &tokio::net::TcpListener,
    limits: ferry_plumbing::listen::Limits,
) -> Result<(), String> {
    let ip = api.endpoint.ip();
    let (chain, key, mut expires) = serving_certificate(&client, &node, ip).await?;
    info!(%ip, %expires, "kubelet API: serving certificate signed by the cluster");
    let current = Arc::new(Swappable(RwLock::new(certified_key(&chain, &key)?)));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca(&client).await?.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("the client CA: {e}"))?)
            .map_err(|e| format!("the client CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("the client verifier: {e}"))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(current.clone());
    let renew = {
        let (client, current, node) = (client.clone(), current.clone(), node.clone());
        async move {
            loop {
                let left = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
                // at 80 % of what was left at issue: long before it expires, never in a tight loop
                tokio::time::sleep((left.mul_f64(0.8)).max(Duration::from_secs(60))).await;
                match serving_certificate(&client, &node, ip)
                    .await
                    .and_then(|(c, k, e)| Ok((certified_key(&c, &k)?, e)))
                {
                    Ok((k, e)) => {
                        if let Ok(mut w) = current.0.write() {
                            *w = k;
                        }
                        expires = e;
                        info!(%expires, "kubelet API: serving certificate renewed");
                    }
                    Err(e) => warn!("kubelet API: renewing the serving certificate: {e}"),
                }
            }
        }
    };
    tokio::select! {
        r = accept_loop(client, api, listener, tls, limits) => r,
        _ = renew => Ok(()),
    }
}

async fn accept_loop(
    client: Client,
    api: Arc<KubeletApi>,
    listener: &tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    limits: ferry_plumbing::listen::Limits,
) -> Result<(), String> {
    use ferry_plumbing::listen::{ConnTracker, accept_admitted};
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let tracker = Arc::new(ConnTracker::default());
    loop {
        let (tcp, peer, slot) = accept_admitted(listener, &tracker, &limits).await;
        let (acceptor, client, api, limits) = (acceptor.clone(), client.clone(), api.clone(), limits.clone());
        tokio::spawn(async move {
            let slot = Arc::new(slot);
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return debug!(%peer, "kubelet API TLS handshake: {e}"),
                Err(_) => return debug!(%peer, "kubelet API TLS handshake timed out"),
            };
            let cert_caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| caller_of_cert(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                let (client, api, cert_caller, hold) =
                    (client.clone(), api.clone(), cert_caller.clone(), slot.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(handle(&client, &api, cert_caller, hold, req).await)
                }
            });
            // no lifetime cap: `logs -f` streams as long as the client wants it
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%peer, "kubelet API connection: {e}");
            }
        });
    }
}

/// The caller a verified client certificate names: CN the user, each O a group.
fn caller_of_cert(der: &[u8]) -> Option<Caller> {
    ferry_plumbing::certs::subject(der).map(|s| Caller {
        user: s.cn,
        groups: s.organizations,
    })
}

async fn authenticate(
    client: &Client,
    cert: Option<Caller>,
    req: &HttpRequest<hyper::body::Incoming>,
) -> Option<Caller> {
    if cert.is_some() {
        return cert;
    }
    let token = req
        .headers()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim()
        .to_string();
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| warn!("kubelet API: TokenReview: {e}"))
        .ok()?;
    let s = r.status?;
    if s.authenticated != Some(true) {
        return None;
    }
    let u = s.user?;
    Some(Caller {
        user: u.username?,
        groups: u.groups.unwrap_or_default(),
    })
}

async fn authorized(
    client: &Client,
    who: &Caller,
    verb: &str,
    subresource: &str,
    node: &str,
) -> Result<bool, String> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(who.user.clone()),
            groups: Some(who.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some("nodes".into()),
                subresource: Some(subresource.into()),
                name: Some(node.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|e| format!("SubjectAccessReview: {e}"))?;
    Ok(r.status.is_some_and(|s| s.allowed))
}

async fn handle(
    client: &Client,
    api: &KubeletApi,
    cert: Option<Caller>,
    hold: Arc<ConnSlot>,
    req: HttpRequest<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parsed = match kubelet_api::parse(&path) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.0),
    };
    if parsed == Request::Healthz {
        return text(StatusCode::OK, "ok");
    }
    let Some(who) = authenticate(client, cert, &req).await else {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let (verb, subresource) = kubelet_api::authorization(req.method().as_str(), &path);
    // the node a request is about: the pod's (a pod on none of these virtual nodes is not found, but
    // only after the caller is authorized for some node here, so nothing leaks)
    let about = match &parsed {
        Request::ContainerLogs { namespace, pod, .. } => Some((namespace, pod)),
        Request::Stream(t) => Some((&t.namespace, &t.pod)),
        _ => None,
    };
    let (pod, node) = match about {
        Some((namespace, pod)) => {
            let p = match Api::<Pod>::namespaced(client.clone(), namespace)
                .get_opt(pod)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reading pod {namespace}/{pod}: {e}"),
                    );
                }
            };
            let node = p.as_ref().and_then(|p| p.spec.as_ref()?.node_name.clone());
            (p, node.filter(|n| api.peer(n).is_some()))
        }
        None => (None, None),
    };
    let node = node
        .or_else(|| api.peers.read().ok()?.keys().next().cloned())
        .unwrap_or_default();
    match authorized(client, &who, verb, subresource, &node).await {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={verb}, resource=nodes, subresource={subresource})",
                    who.user
                ),
            );
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
    let found = match (pod, api.peer(&node), about) {
        (Some(pod), Some(peer), _) => Some((pod, peer)),
        (_, _, Some((namespace, name))) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{name} is not on a ferry virtual node served here"),
            );
        }
        _ => None,
    };
    match (parsed, found) {
        (Request::ContainerLogs { container, .. }, Some((pod, peer))) => {
            match LogQuery::parse(req.uri().query().unwrap_or("")) {
                Ok(q) => logs(&peer, &pod, &container, &q).await,
                Err(e) => text(StatusCode::BAD_REQUEST, e.0),
            }
        }
        (Request::StatsSummary, _) => {
            let (summary, _) = api.summary(client).await;
            let body = serde_json::to_vec(&summary).unwrap_or_default();
            whole(StatusCode::OK, "application/json", body)
        }
        (Request::MetricsResource, _) => {
            let (summary, failed) = api.summary(client).await;
            let body = kubelet_stats::resource_metrics(&summary, failed);
            whole(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        (Request::Stream(target), Some((pod, peer))) => {
            if target
                .uid
                .as_ref()
                .is_some_and(|u| pod.metadata.uid.as_ref() != Some(u))
            {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("pod {}/{} has another UID now", target.namespace, target.pod),
                );
            }
            stream(&peer, &pod, target, hold, req).await
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("{path}: not served by a ferry virtual node"),
        ),
    }
}

/// The remote twin of `pod` (its namespace there), or the answer saying why there is none.
async fn twin(peer: &Peer, pod: &Pod) -> Result<Api<Pod>, Response<Body>> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let Some(remote_ns) = crate::pods::remote_namespace_of(peer, &ns).await else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("namespace {ns} is not offloaded to {}", peer.provider),
        ));
    };
    let remote: Api<Pod> = Api::namespaced(peer.remote.clone(), &remote_ns);
    // the twin must be this pod's (its origin UID), not a namesake
    match remote.get_opt(&name).await {
        Ok(Some(r)) if crate::translate::is_twin_of(&r, pod) => Ok(remote),
        Ok(_) => Err(text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{name} has no running twin on {} yet", peer.provider),
        )),
        Err(e) => Err(provider_error(&peer.provider, e)),
    }
}

/// The provider's log of `pod`'s remote twin, streamed.
async fn logs(peer: &Peer, pod: &Pod, container: &str, q: &LogQuery) -> Response<Body> {
    let remote = match twin(peer, pod).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let params = q.to_params(container, chrono::Utc::now());
    match remote.log_stream(&pod.name_any(), &params).await {
        Ok(reader) => {
            use futures::{AsyncReadExt, StreamExt};
            let stream = futures::stream::unfold(reader, |mut r| async move {
                let mut buf = vec![0u8; 16 * 1024];
                match r.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Frame::data(Bytes::from(buf))), r))
                    }
                    Err(e) => Some((Err(e), r)),
                }
            })
            .boxed();
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain")
                .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
                .expect("static response")
        }
        Err(e) => provider_error(&peer.provider, e),
    }
}

/// `exec`, `attach`, `portForward`: the same request to the provider's `pods/…` of the twin, with the
/// protocol switch the apiserver asked for; when the provider switches, both connections are joined byte
/// for byte until either side ends (no time limit: a shell may sit idle). The join holds this connection's
/// place among the listener's connections.
async fn stream(
    peer: &Peer,
    pod: &Pod,
    target: StreamTarget,
    hold: Arc<ConnSlot>,
    mut req: HttpRequest<hyper::body::Incoming>,
) -> Response<Body> {
    let options = match StreamOptions::parse(target.kind, req.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.0),
    };
    let upgrade = match kubelet_stream::upgrade_request(req.headers()) {
        Ok(u) => u,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.0),
    };
    let remote = match twin(peer, pod).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let uri = target.provider_uri(remote.namespace().unwrap_or_default(), &options);
    // the method as asked: a WebSocket handshake is a GET, SPDY's usually a POST (the provider authorizes
    // `get` or `create` on the subresource, as the consumer's apiserver did)
    let method = req.method().clone();
    if method != http::Method::GET && method != http::Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{}: {method} is not a streaming request (GET or POST)",
                target.kind
            ),
        );
    }
    let mut ask = http::Request::builder().method(method).uri(&uri);
    for (k, v) in &upgrade.forward {
        ask = ask.header(k, v);
    }
    let ask = ask.body(kube::client::Body::empty()).expect("a valid request");
    let answer = match peer.remote.send(ask).await {
        Ok(a) => a,
        Err(e) => return provider_error(&peer.provider, e),
    };
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status().as_u16();
        let body = http_body_util::Limited::new(answer.into_body(), kubelet_stream::MAX_REFUSAL_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let (code, status) = kubelet_stream::provider_refusal(&peer.provider, status, &body);
        return whole(code, "application/json", status.to_string());
    }
    let headers = match kubelet_stream::upgrade_answer(&upgrade, answer.headers()) {
        Ok(h) => h,
        Err(e) => {
            warn!(provider = %peer.provider, "kubelet API {}: {e}", target.kind);
            return text(
                StatusCode::BAD_GATEWAY,
                format!("provider {}: {e}", peer.provider),
            );
        }
    };
    let theirs = hyper::upgrade::on(answer);
    let ours = hyper::upgrade::on(&mut req);
    let what = format!("{} {}/{}", target.kind, target.namespace, target.pod);
    tokio::spawn(async move {
        let _hold = hold;
        match tokio::join!(ours, theirs) {
            (Ok(ours), Ok(theirs)) => {
                let (mut a, mut b) = (TokioIo::new(ours), TokioIo::new(theirs));
                match tokio::io::copy_bidirectional(&mut a, &mut b).await {
                    Ok((up, down)) => debug!("kubelet API {what}: {up} bytes up, {down} down"),
                    Err(e) => debug!("kubelet API {what}: ended: {e}"),
                }
            }
            (Err(e), _) | (_, Err(e)) => debug!("kubelet API {what}: the upgrade failed: {e}"),
        }
    });
    let mut ok = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in headers {
        ok = ok.header(k, v);
    }
    ok.body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed_unsync())
        .expect("static response")
}

/// The provider's refusal, as the status and message kubectl then prints.
fn provider_error(provider: &str, e: kube::Error) -> Response<Body> {
    match e {
        kube::Error::Api(s) => text(
            StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("provider {provider}: {}", s.message),
        ),
        e => text(StatusCode::BAD_GATEWAY, format!("provider {provider}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_names_are_valid_object_names() {
        for ip in ["198.19.97.10", "fd00::1"] {
            let n = csr_name(ip.parse().unwrap());
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{n}"
            );
        }
    }
}
