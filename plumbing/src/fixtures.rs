//! Test fixtures shared by every crate's controller tests: object builders, and a mocked apiserver
//! ([`MockApi`]) that answers a scripted sequence of requests and records what the controller sent, so
//! a reconcile bug shows up without root or a lab (the tier between unit tests and the lab's e2e).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};

/// A request the mocked apiserver is told to expect, and its answer.
pub struct Expect {
    /// HTTP method, e.g. `GET`.
    pub method: &'static str,
    /// The request's path must start with this (the query is matched by `query`).
    pub path: String,
    /// Text the query must contain (empty: any).
    pub query: String,
    /// The answer's status.
    pub status: u16,
    /// The answer's body (`Null`: the request's own body, as a create answers).
    pub body: Value,
}

impl Expect {
    /// Expects `method path` and answers 200 with `body`.
    pub fn ok(method: &'static str, path: impl Into<String>, body: Value) -> Self {
        Self {
            method,
            path: path.into(),
            query: String::new(),
            status: 200,
            body,
        }
    }

    /// Expects `method path` and answers `status` with a Kubernetes `Status` body of `reason`.
    pub fn status(method: &'static str, path: impl Into<String>, status: u16, reason: &str) -> Self {
        Self {
            method,
            path: path.into(),
            query: String::new(),
            status,
            body: json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": reason, "reason": reason, "code": status}),
        }
    }

    /// Expects `method path` and answers 200 with the request's own body (a create or an event).
    pub fn echo(method: &'static str, path: impl Into<String>) -> Self {
        Self::ok(method, path, Value::Null)
    }

    /// Also requires the query to contain `q` (e.g. `fieldManager=`).
    pub fn with_query(mut self, q: &str) -> Self {
        self.query = q.to_string();
        self
    }
}

/// A request the controller sent: method, path with query, and body (JSON, `Null` when empty).
#[derive(Debug, Clone)]
pub struct Sent {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The body as JSON.
    pub body: Value,
}

/// A mocked apiserver: a [`Client`] whose requests are answered from a script, in order.
pub struct MockApi {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

impl MockApi {
    /// A client talking to the mock, and the mock.
    pub fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self { handle })
    }

    /// Answers `script` in order and returns what was sent. Panics (failing the test) on a request that
    /// is not the next one expected, or when the next one does not come within 5 s.
    pub fn run(self, script: Vec<Expect>) -> tokio::task::JoinHandle<Vec<Sent>> {
        self.serve(script, false)
    }

    /// [`MockApi::run`], and then no other request: once the script is answered it waits for every
    /// client to be dropped, and panics on a request that comes first.
    pub fn run_exactly(self, script: Vec<Expect>) -> tokio::task::JoinHandle<Vec<Sent>> {
        self.serve(script, true)
    }

    fn serve(self, script: Vec<Expect>, exactly: bool) -> tokio::task::JoinHandle<Vec<Sent>> {
        let mut handle = self.handle;
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for (i, e) in script.into_iter().enumerate() {
                let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
                let Ok(Some((req, reply))) = next else {
                    panic!(
                        "request {i} never came: expected {} {}; sent so far: {sent:#?}",
                        e.method, e.path
                    );
                };
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                let bytes = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                assert!(
                    method == e.method && path.starts_with(&e.path) && query.contains(&e.query),
                    "request {i}: expected {} {}?{}, got {method} {uri} with {body}",
                    e.method,
                    e.path,
                    e.query
                );
                let answer = if e.body.is_null() { body.clone() } else { e.body };
                sent.push(Sent { method, uri, body });
                let resp = Response::builder()
                    .status(e.status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response");
                reply.send_response(resp);
            }
            if exactly && let Some((req, _)) = handle.next_request().await {
                panic!(
                    "a request after the script: {} {}; sent: {sent:#?}",
                    req.method(),
                    req.uri()
                );
            }
            sent
        })
    }
}

/// Sets the fields every stored object has (uid, resourceVersion, creationTimestamp).
pub fn stored<K: Resource>(mut o: K) -> K {
    let m = o.meta_mut();
    let name = m.name.clone().unwrap_or_default();
    m.uid.get_or_insert_with(|| format!("uid-{name}"));
    m.resource_version.get_or_insert_with(|| "1".into());
    m.creation_timestamp.get_or_insert_with(|| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-12-04T00:00:00Z".parse().expect("time"))
    });
    o
}

/// A namespace with labels.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    stored(
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": to_map(labels)},
        }))
        .expect("namespace"),
    )
}

/// A pod with one container asking for `cpu` and `memory`.
pub fn pod(ns: &str, name: &str, cpu: &str, memory: &str) -> Pod {
    stored(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                                     "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        }))
        .expect("pod"),
    )
}

/// Builds any object from JSON, stamped as stored ([`stored`]).
pub fn object<K: Resource + serde::de::DeserializeOwned>(v: Value) -> K {
    stored(serde_json::from_value(v).expect("object"))
}

/// A one-page list of `items` (what a LIST answers).
pub fn list<K: serde::Serialize>(api_version: &str, kind: &str, items: &[K]) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "1"}, "items": items})
}

fn to_map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
