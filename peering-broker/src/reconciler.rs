//! The consumer's `ForeignCluster` reconciler (run by `ferry-agent`): a `ForeignCluster` with a
//! `tokenSecret` and no identity yet gets the handshake ([`crate::consumer::handshake`]). Failures are
//! reported on the object (`Authenticated=False`, `lastError` naming the endpoint) and retried with
//! per-object exponential backoff (1 s, 2 s, 4 s … 5 min); a refusal the broker gives for the request
//! itself (4xx: expired, reused, forged…) is not retried until the object changes. Never spins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_crds::ForeignCluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::consumer::{HandshakeError, handshake, identity_secret};
use ferry_crds::identity::SYSTEM_NAMESPACE;

/// Shared state of the reconciler.
pub struct Context {
    /// This cluster's client.
    pub client: Client,
    /// Failures in a row per ForeignCluster (for backoff).
    pub failures: Mutex<HashMap<String, u32>>,
    /// This cluster's network, told to providers in the handshake.
    pub network: crate::wire::LocalNetwork,
}

/// Reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Transient: retried with backoff.
    #[error("{0}")]
    Transient(String),
}

/// Backoff after `n` failures in a row.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(9)).min(Duration::from_secs(300))
}

/// One reconcile.
#[tracing::instrument(skip_all, fields(fc = fc.name_any()))]
pub async fn reconcile(fc: Arc<ForeignCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = fc.name_any();
    let Some(token_secret) = fc.spec.token_secret.clone() else {
        return Ok(Action::await_change());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), SYSTEM_NAMESPACE);
    let authenticated = fc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Authenticated" && c.status == "True")
    });
    let have_identity = secrets
        .get_opt(&identity_secret(&name))
        .await
        .map_err(|e| Error::Transient(e.to_string()))?
        .is_some();
    if authenticated && have_identity {
        ctx.failures.lock().expect("failures").remove(&name);
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let token = secrets
        .get_opt(&token_secret)
        .await
        .map_err(|e| Error::Transient(e.to_string()))?
        .and_then(|s| s.data)
        .and_then(|d| d.get("token").map(|b| String::from_utf8_lossy(&b.0).to_string()));
    let Some(token) = token else {
        warn!(secret = token_secret, "token Secret missing");
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    match handshake(&ctx.client, &fc, &token, &ctx.network).await {
        Ok(p) => {
            info!(
                provider = p.provider,
                tenant = p.tenant_namespace,
                "authenticated"
            );
            ctx.failures.lock().expect("failures").remove(&name);
            // the token has done its job
            let _ = secrets.delete(&token_secret, &Default::default()).await;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        Err(HandshakeError::Refused(msg)) => {
            warn!("refused, not retrying until the ForeignCluster changes: {msg}");
            Ok(Action::await_change())
        }
        Err(HandshakeError::Transient(msg)) => Err(Error::Transient(msg)),
    }
}

/// Backoff per object on transient errors.
pub fn error_policy(fc: Arc<ForeignCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let mut f = ctx.failures.lock().expect("failures");
    let n = f.entry(fc.name_any()).or_insert(0);
    *n += 1;
    let wait = backoff(*n);
    warn!(fc = fc.name_any(), attempt = *n, ?wait, "handshake failed: {err}");
    Action::requeue(wait)
}

/// Runs the reconciler until the stream ends.
pub async fn run(client: Client, network: crate::wire::LocalNetwork) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        failures: Mutex::new(HashMap::new()),
        network,
    });
    Controller::new(Api::<ForeignCluster>::all(client), watcher::Config::default())
        .run(
            |fc, ctx| ferry_plumbing::metrics::reconciled("foreign-cluster", reconcile(fc, ctx)),
            error_policy,
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_at_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(40), Duration::from_secs(300));
    }

    /// Controller tests: the reconciler against a mocked apiserver.
    mod controller {
        use super::*;
        use ferry_plumbing::fixtures::{Expect, MockApi, object};
        use serde_json::json;

        const SECRETS: &str = "/api/v1/namespaces/ferry-system/secrets";

        fn context(client: Client) -> Arc<Context> {
            Arc::new(Context {
                client,
                failures: Mutex::new(HashMap::new()),
                network: crate::wire::LocalNetwork {
                    standby_gateway_endpoints: vec![],
                    pod_cidrs: vec!["10.244.0.0/16".into()],
                    service_cidrs: vec![],
                    wireguard_public_key: String::new(),
                    gateway_endpoint: None,
                },
            })
        }

        fn fc(token: Option<&str>, authenticated: bool) -> Arc<ForeignCluster> {
            let mut v = json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "ForeignCluster",
                "metadata": {"name": "p1"},
                "spec": {"clusterID": "p1", "role": "Provider", "brokerURL": "https://127.0.0.1:1"},
            });
            if let Some(t) = token {
                v["spec"]["tokenSecret"] = json!(t);
            }
            if authenticated {
                v["status"] = json!({"conditions": [{"type": "Authenticated", "status": "True",
                    "reason": "Peered", "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]});
            }
            Arc::new(object(v))
        }

        fn secret(name: &str) -> serde_json::Value {
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ferry-system"}})
        }

        #[tokio::test]
        async fn a_foreigncluster_without_a_token_is_left_alone() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![]);
            let action = reconcile(fc(None, false), context(client)).await.unwrap();
            assert_eq!(action, Action::await_change());
            assert!(sent.await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn a_peered_foreigncluster_is_not_handshaken_again() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![Expect::ok(
                "GET",
                format!("{SECRETS}/ferry-identity-p1"),
                secret("ferry-identity-p1"),
            )]);
            let action = reconcile(fc(Some("tok"), true), context(client)).await.unwrap();
            assert_eq!(action, Action::requeue(Duration::from_secs(300)));
            assert_eq!(sent.await.unwrap().len(), 1, "the token is not even read");
        }

        #[tokio::test]
        async fn a_missing_token_secret_waits_without_calling_the_broker() {
            let (client, mock) = MockApi::new();
            let sent = mock.run(vec![
                Expect::status("GET", format!("{SECRETS}/ferry-identity-p1"), 404, "NotFound"),
                Expect::status("GET", format!("{SECRETS}/tok"), 404, "NotFound"),
            ]);
            let action = reconcile(fc(Some("tok"), false), context(client)).await.unwrap();
            assert_eq!(action, Action::requeue(Duration::from_secs(30)));
            assert_eq!(sent.await.unwrap().len(), 2);
        }

        #[tokio::test]
        async fn an_apiserver_error_is_transient_and_backs_off_per_object() {
            let (client, mock) = MockApi::new();
            let _sent = mock.run(vec![Expect::status(
                "GET",
                format!("{SECRETS}/ferry-identity-p1"),
                500,
                "InternalError",
            )]);
            let ctx = context(client);
            let obj = fc(Some("tok"), false);
            let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
            assert_eq!(
                error_policy(obj.clone(), &err, ctx.clone()),
                Action::requeue(backoff(1))
            );
            assert_eq!(error_policy(obj, &err, ctx), Action::requeue(backoff(2)));
            assert!(backoff(2) > backoff(1) && backoff(30) == Duration::from_secs(300));
        }
    }
}
