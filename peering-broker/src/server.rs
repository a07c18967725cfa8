//! The broker's HTTPS server: axum routes over a tokio-rustls accept loop, so each request knows the
//! client certificate its connection presented (mTLS for `DELETE`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::error::BrokerError;
use crate::provider::Provider;
use crate::wire::MAX_BODY;

/// The OpenAPI document of this API (kept in the repo as `peering-broker/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The CN of the client certificate of the connection, if one was presented (and verified).
#[derive(Clone, Debug)]
pub struct ClientCn(pub Option<String>);

impl IntoResponse for BrokerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The request body, refused with 413 above `MAX_BODY`.
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, BrokerError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| BrokerError::TooLarge(MAX_BODY))
}

async fn create(State(p): State<Arc<Provider>>, body: axum::body::Body) -> Result<Response, BrokerError> {
    let bytes = read_body(body).await?;
    let resp = p
        .admit(&bytes, now())
        .await
        .inspect_err(|e| warn!(reason = e.reason(), "peering refused: {e}"))?;
    info!(tenant = resp.tenant_namespace, "consumer admitted");
    Ok(Json(resp).into_response())
}

async fn remove(
    State(p): State<Arc<Provider>>,
    Path(id): Path<String>,
    Extension(cn): Extension<ClientCn>,
) -> Result<Response, BrokerError> {
    let terminating = p.release(&id, cn.0.as_deref()).await?;
    info!(consumer = id, ?terminating, "tenant removed");
    Ok(Json(serde_json::json!({ "removed": id, "terminating": terminating })).into_response())
}

/// A tenant's call (mTLS): its body read within the limits, `op` run for the client certificate's CN, a
/// refusal logged with `what`, the answer as JSON.
async fn tenant_call<T, Fut>(
    body: axum::body::Body,
    what: &str,
    op: impl FnOnce(axum::body::Bytes) -> Fut,
) -> Result<Response, BrokerError>
where
    T: serde::Serialize,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let bytes = read_body(body).await?;
    let resp = op(bytes)
        .await
        .inspect_err(|e| warn!(reason = e.reason(), "{what} refused: {e}"))?;
    Ok(Json(resp).into_response())
}

async fn offload(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
    body: axum::body::Body,
) -> Result<Response, BrokerError> {
    tenant_call(body, "offloading", |b| async move {
        p.offload(&b, cn.0.as_deref()).await
    })
    .await
}

async fn unoffload(
    State(p): State<Arc<Provider>>,
    Path(name): Path<String>,
    Extension(cn): Extension<ClientCn>,
) -> Result<Response, BrokerError> {
    p.unoffload(&name, cn.0.as_deref()).await?;
    info!(namespace = name, "offload namespace removed");
    Ok(Json(serde_json::json!({ "removed": name })).into_response())
}

async fn renew(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
    body: axum::body::Body,
) -> Result<Response, BrokerError> {
    tenant_call(
        body,
        "renewal",
        |b| async move { p.renew(&b, cn.0.as_deref()).await },
    )
    .await
}

async fn exports(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
    body: axum::body::Body,
) -> Result<Response, BrokerError> {
    tenant_call(body, "exports", |b| async move {
        p.exports(&b, cn.0.as_deref()).await
    })
    .await
}

async fn stats(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
) -> Result<Response, BrokerError> {
    let s = p
        .stats(cn.0.as_deref())
        .await
        .inspect_err(|e| warn!(reason = e.reason(), "stats refused: {e}"))?;
    Ok(Json(s).into_response())
}

/// The routes.
pub fn router(p: Arc<Provider>) -> Router {
    Router::new()
        .route("/v1/peerings", post(create))
        .route("/v1/peerings/{id}", delete(remove))
        .route("/v1/namespaces", post(offload))
        .route("/v1/namespaces/{name}", delete(unoffload))
        .route("/v1/exports", post(exports))
        .route("/v1/identity", post(renew))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route_layer(axum::middleware::from_fn(count_request))
        .fallback(|| async {
            requests("unmatched", StatusCode::NOT_FOUND);
            (StatusCode::NOT_FOUND, "no such path; see GET /v1/openapi.json")
        })
        .with_state(p)
}

/// `ferry_broker_requests_total{route,code}`: every request the broker answered, by route template (so
/// that the label values stay bounded, whatever paths a peer sends) and status code.
fn requests(route: &str, code: StatusCode) {
    static FAMILY: ferry_plumbing::metrics::CounterCell = std::sync::OnceLock::new();
    ferry_plumbing::metrics::count(
        &FAMILY,
        "broker_requests",
        "requests the peering broker answered, by route and status code",
        &[("route", route), ("code", code.as_str())],
    );
}

async fn count_request(
    path: axum::extract::MatchedPath,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = format!("{} {}", req.method(), path.as_str());
    let resp = next.run(req).await;
    requests(&route, resp.status());
    resp
}

fn cn_of(der: &[u8]) -> Option<String> {
    ferry_plumbing::certs::subject(der).map(|s| s.cn)
}

pub use ferry_plumbing::listen::{
    ConnSlot, ConnTracker, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_LIFETIME, DEFAULT_MAX_PER_SOURCE, Limits, WhenFull, accept_admitted, listen, raise_fd_limit,
};

/// Serves until the listener fails.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    p: Arc<Provider>,
) -> std::io::Result<()> {
    serve_router(listener, tls, router(p), Limits::default()).await
}

/// Serves `app` over TLS within `limits`; each request knows the client certificate's CN. Never returns
/// on its own: a failing `accept` is retried.
pub async fn serve_router(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
    limits: Limits,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let tracker = Arc::new(ConnTracker::default());
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.idle_timeout,
        body_deadline,
    ));
    loop {
        let (tcp, peer, slot) = accept_admitted(&listener, &tracker, &limits).await;
        let (acceptor, app, limits) = (acceptor.clone(), app.clone(), limits.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake: {e}"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cn_of(c.as_ref()));
            let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(ClientCn(cn))));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .max_buf_size(MAX_BODY.max(16 * 1024) * 2)
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, "connection: {e}") },
                _ = tokio::time::sleep(limits.max_lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.idle_timeout, conn).await;
                }
            }
        });
    }
}

/// A request whose body does not arrive within the idle timeout is answered 408 (a slow client holds no
/// handler forever).
async fn body_deadline(
    State(deadline): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => {
            requests("any", StatusCode::PAYLOAD_TOO_LARGE);
            BrokerError::TooLarge(MAX_BODY).into_response()
        }
        Err(_) => {
            requests("any", StatusCode::REQUEST_TIMEOUT);
            (StatusCode::REQUEST_TIMEOUT, "request body not received in time").into_response()
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_served_openapi_document_is_valid_json_and_names_every_path() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert!(v["paths"]["/v1/peerings"]["post"].is_object());
        assert!(v["paths"]["/v1/peerings/{clusterID}"]["delete"].is_object());
        assert!(v["paths"]["/v1/namespaces"]["post"].is_object());
        assert!(v["paths"]["/v1/namespaces/{name}"]["delete"].is_object());
        assert!(v["paths"]["/v1/identity"]["post"].is_object());
        let off: Vec<String> =
            serde_json::from_value(v["components"]["schemas"]["OffloadRequest"]["required"].clone()).unwrap();
        assert_eq!(off, ["namespace"]);
        // the wire type's required fields are the document's
        let req: Vec<String> =
            serde_json::from_value(v["components"]["schemas"]["PeeringRequest"]["required"].clone()).unwrap();
        assert_eq!(req, ["token", "clusterID", "publicKey", "csr", "proof"]);
    }
}
