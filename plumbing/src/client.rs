//! One way to build a client: from a kubeconfig file when one is given, else the way `kubectl` and
//! in-cluster Pods find theirs (`KUBECONFIG`, `~/.kube/config`, the ServiceAccount).

use std::path::Path;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// The client of the cluster the binary runs against: `kubeconfig` if given, else inferred (in a Pod: its
/// ServiceAccount).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// A client for a peer's cluster from the kubeconfig text of an identity, failing fast (2 s to connect)
/// so that an unreachable peer is noticed at once.
pub async fn from_kubeconfig_text(text: &str) -> Result<Client, Error> {
    let bad = |source| Error::Kubeconfig {
        path: "(identity)".into(),
        source,
    };
    let kc = Kubeconfig::from_yaml(text).map_err(bad)?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(bad)?;
    cfg.connect_timeout = Some(Duration::from_secs(2));
    Client::try_from(cfg).map_err(Error::Client)
}

/// The apiserver URL and CA bundle (PEM) of a kubeconfig's first cluster (what a broker hands to tenants).
pub fn server_and_ca(path: &Path) -> Result<(String, String), String> {
    let kc = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            format!(
                "{}: no cluster; fix: a kubeconfig with one cluster",
                path.display()
            )
        })?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| format!("{}: the cluster has no server", path.display()))?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(b64), _) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("{}: certificate-authority-data is not base64 PEM", path.display()))?
        }
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?,
        (None, None) => return Err(format!("{}: the cluster has no CA", path.display())),
    };
    Ok((server, ca))
}

/// The in-cluster equivalent of [`server_and_ca`]: the ServiceAccount's CA and the apiserver's
/// address from the environment.
pub fn in_cluster_server_and_ca() -> Result<(String, String), String> {
    const CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
    let host =
        std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| "KUBERNETES_SERVICE_HOST unset".to_string())?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let ca = std::fs::read_to_string(CA).map_err(|e| format!("{CA}: {e}"))?;
    Ok((format!("https://{host}:{port}"), ca))
}
