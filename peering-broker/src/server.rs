//! The broker's HTTPS server: axum routes over a tokio-rustls accept loop, so each request knows the
//! client certificate its connection presented (mTLS for `DELETE`).

use std::sync::Arc;

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
    p.release(&id, cn.0.as_deref()).await?;
    info!(consumer = id, "tenant removed");
    Ok(Json(serde_json::json!({ "removed": id })).into_response())
}

async fn offload(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
    body: axum::body::Body,
) -> Result<Response, BrokerError> {
    let bytes = read_body(body).await?;
    let resp = p
        .offload(&bytes, cn.0.as_deref())
        .await
        .inspect_err(|e| warn!(reason = e.reason(), "offloading refused: {e}"))?;
    info!(namespace = resp.namespace, "namespace offloaded");
    Ok(Json(resp).into_response())
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

async fn exports(
    State(p): State<Arc<Provider>>,
    Extension(cn): Extension<ClientCn>,
    body: axum::body::Body,
) -> Result<Response, BrokerError> {
    let bytes = read_body(body).await?;
    let resp = p
        .exports(&bytes, cn.0.as_deref())
        .await
        .inspect_err(|e| warn!(reason = e.reason(), "exports refused: {e}"))?;
    Ok(Json(resp).into_response())
}

/// The routes.
pub fn router(p: Arc<Provider>) -> Router {
    Router::new()
        .route("/v1/peerings", post(create))
        .route("/v1/peerings/{id}", delete(remove))
        .route("/v1/namespaces", post(offload))
        .route("/v1/namespaces/{name}", delete(unoffload))
        .route("/v1/exports", post(exports))
        .route(
            "/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/livez", get(|| async { "ok" }))
        .with_state(p)
}

fn cn_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()
        .map(str::to_string)
}

/// Serves until the listener fails.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    p: Arc<Provider>,
) -> std::io::Result<()> {
    serve_router(listener, tls, router(p)).await
}

/// Serves `app` over TLS until the listener fails; each request knows the client certificate's CN.
pub async fn serve_router(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    app: Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => return warn!(%peer, "TLS handshake: {e}"),
            };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cn_of(c.as_ref()));
            let svc = hyper_util::service::TowerToHyperService::new(app.layer(Extension(ClientCn(cn))));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                warn!(%peer, "connection: {e}");
            }
        });
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
        let off: Vec<String> =
            serde_json::from_value(v["components"]["schemas"]["OffloadRequest"]["required"].clone()).unwrap();
        assert_eq!(off, ["namespace"]);
        // the wire type's required fields are the document's
        let req: Vec<String> =
            serde_json::from_value(v["components"]["schemas"]["PeeringRequest"]["required"].clone()).unwrap();
        assert_eq!(req, ["token", "clusterID", "publicKey", "csr", "proof"]);
    }
}
