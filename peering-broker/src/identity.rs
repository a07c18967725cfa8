//! A cluster's identity and the broker's TLS material, kept in `ferry-system`: created on first start,
//! read afterwards (so a restart keeps the ID, the key and the pinned certificate).

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::key::ClusterKey;
use ferry_crds::identity::SYSTEM_NAMESPACE;

/// Secret with the cluster ID and key.
pub const IDENTITY_SECRET: &str = "ferry-cluster-identity";
/// Secret with the broker's certificate and key.
pub const BROKER_TLS_SECRET: &str = "ferry-broker-tls";
/// ConfigMap with the broker URL and TLS pin (what `ferryctl token create` puts in tokens).
pub const BROKER_CONFIGMAP: &str = "ferry-broker";

/// This cluster's identity.
#[derive(Clone, Debug)]
pub struct ClusterIdentity {
    /// Cluster ID.
    pub cluster_id: String,
    /// Cluster key.
    pub key: ClusterKey,
}

pub use ferry_crds::identity::text;

/// Ensures `ferry-system` exists.
pub async fn ensure_namespace(client: &Client) -> crate::Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(SYSTEM_NAMESPACE).await?.is_none() {
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": SYSTEM_NAMESPACE } }))?;
        match nss.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the identity, creating it (with `wanted_id`, or one derived from kube-system's UID) if missing.
pub async fn ensure_identity(client: &Client, wanted_id: Option<&str>) -> crate::Result<ClusterIdentity> {
    ensure_namespace(client).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    if let Some(s) = secrets.get_opt(IDENTITY_SECRET).await? {
        let id = text(&s, "clusterID").ok_or_else(|| invalid!("{IDENTITY_SECRET} has no clusterID"))?;
        if let Some(w) = wanted_id
            && w != id
        {
            bail!(
                "this cluster's ID is {id:?} (Secret {SYSTEM_NAMESPACE}/{IDENTITY_SECRET}), not {w:?}; fix: drop --cluster-id or delete that Secret to start over"
            );
        }
        let key =
            ClusterKey::from_pem(&text(&s, "key.pem").unwrap_or_default()).map_err(|e| invalid!("{e}"))?;
        return Ok(ClusterIdentity { cluster_id: id, key });
    }
    let id = match wanted_id {
        Some(w) => w.to_string(),
        None => {
            let ks = Api::<Namespace>::all(client.clone()).get("kube-system").await?;
            format!(
                "c-{}",
                ks.metadata
                    .uid
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| c.is_ascii_hexdigit())
                    .take(10)
                    .collect::<String>()
            )
        }
    };
    id.parse::<crate::ClusterId>()
        .map_err(|e| invalid!("--cluster-id: {e}"))?;
    let key = ClusterKey::generate();
    let mut s = Secret::default();
    s.metadata.name = Some(IDENTITY_SECRET.into());
    s.data = Some(
        [
            ("clusterID".to_string(), ByteString(id.clone().into_bytes())),
            ("key.pem".to_string(), ByteString(key.to_pem().into_bytes())),
        ]
        .into(),
    );
    match secrets.create(&PostParams::default(), &s).await {
        Ok(_) => Ok(ClusterIdentity { cluster_id: id, key }),
        // someone else created it first: use theirs
        Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(ensure_identity(client, wanted_id)).await,
        Err(e) => Err(e.into()),
    }
}

/// The broker's certificate and key (PEM), created once; also publishes URL and pin in a ConfigMap.
pub async fn ensure_broker_tls(
    client: &Client,
    url: &str,
    hosts: &[String],
) -> crate::Result<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let (cert, key) = match secrets.get_opt(BROKER_TLS_SECRET).await? {
        Some(s) => (
            text(&s, "tls.crt").unwrap_or_default(),
            text(&s, "tls.key").unwrap_or_default(),
        ),
        None => {
            let (cert, key) = crate::tls::self_signed(hosts)?;
            let mut s = Secret::default();
            s.metadata.name = Some(BROKER_TLS_SECRET.into());
            s.type_ = Some("kubernetes.io/tls".into());
            s.data = Some(
                [
                    ("tls.crt".to_string(), ByteString(cert.clone().into_bytes())),
                    ("tls.key".to_string(), ByteString(key.clone().into_bytes())),
                ]
                .into(),
            );
            secrets.create(&PostParams::default(), &s).await?;
            (cert, key)
        }
    };
    let pin = crate::tls::pin_of_pem(&cert)?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let cm: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": BROKER_CONFIGMAP }, "data": { "url": url, "tlsPin": pin } }),
    )?;
    match cms.create(&PostParams::default(), &cm).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            cms.replace(BROKER_CONFIGMAP, &PostParams::default(), &{
                let mut c = cm.clone();
                c.metadata.resource_version = cms.get(BROKER_CONFIGMAP).await?.metadata.resource_version;
                c
            })
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok((cert, key))
}

/// Installs ferry's CRDs, or updates them to this version's schema (the chart ships the same YAML; an
/// agent that starts against an older schema would otherwise see new fields pruned).
pub async fn ensure_crds(client: &Client) -> crate::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::ResourceExt;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in ferry_crds::all_crds() {
        let name = crd.name_any();
        match crds.get_opt(&name).await? {
            None => {
                crds.create(&PostParams::default(), &crd).await?;
            }
            Some(existing) if existing.spec != crd.spec => {
                crd.metadata.resource_version = existing.metadata.resource_version;
                crds.replace(&name, &PostParams::default(), &crd).await?;
            }
            Some(_) => {}
        }
    }
    // wait until every one is served (by watch, 20 s at most)
    for crd in ferry_crds::all_crds() {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(std::time::Duration::from_secs(20), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("waiting for CRD {name}: {e}"),
            Err(_) => bail!("CRD {name} is not Established after 20s"),
        }
    }
    Ok(())
}
