//! The MCS exchange's transport as the peering layer provides it: the providers are the peerings with an
//! identity (kept by watch: `ForeignCluster`s and the identity Secrets), and a call is `POST /v1/exports`
//! to the provider's broker over mTLS as the tenant.

use std::collections::BTreeSet;

use ferry_crds::ForeignCluster;
use ferry_crds::identity::{SYSTEM_NAMESPACE, identity_secret};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

/// [`ferry_mcs::sync::Peers`] over this cluster's identities.
pub struct BrokerPeers {
    fcs: Store<ForeignCluster>,
    secrets: Store<Secret>,
}

impl BrokerPeers {
    /// The peers of `client`'s cluster, and the future that keeps their caches (poll it alongside).
    pub fn new(client: &Client) -> (Self, impl Future<Output = ()> + Send) {
        use ferry_plumbing::triggers::store;
        let (fcs, fc_watch) = store(
            Api::<ForeignCluster>::all(client.clone()),
            watcher::Config::default(),
        );
        let (secrets, secret_watch) = store(
            Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE),
            watcher::Config::default(),
        );
        let run = async move {
            tokio::join!(fc_watch, secret_watch);
        };
        (Self { fcs, secrets }, run)
    }

    fn identity(&self, provider: &str) -> Option<std::sync::Arc<Secret>> {
        self.secrets
            .get(&ObjectRef::new(&identity_secret(provider)).within(SYSTEM_NAMESPACE))
    }
}

impl ferry_mcs::sync::Peers for BrokerPeers {
    async fn providers(&self) -> BTreeSet<String> {
        self.fcs
            .state()
            .iter()
            .map(|fc| fc.name_any())
            .filter(|p| self.identity(p).is_some())
            .collect()
    }

    async fn exchange(&self, provider: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let s = self
            .identity(provider)
            .ok_or_else(|| format!("no identity for {provider}"))?;
        crate::consumer::call_broker(&s, "POST", "/v1/exports", Some(body))
            .await
            .map_err(|e| format!("{e:#}"))
    }
}
