//! The MCS exchange's transport as the peering layer provides it: the providers are the peerings with an
//! identity, and a call is `POST /v1/exports` to the provider's broker over mTLS as the tenant.

use std::collections::BTreeSet;

use ferry_crds::identity::{SYSTEM_NAMESPACE, identity_secret};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// [`ferry_mcs::sync::Peers`] over this cluster's identities.
pub struct BrokerPeers {
    /// This cluster.
    pub client: Client,
}

impl ferry_mcs::sync::Peers for BrokerPeers {
    async fn providers(&self) -> BTreeSet<String> {
        crate::offloading::identities(&self.client)
            .await
            .map(|ids| ids.into_keys().collect())
            .unwrap_or_default()
    }

    async fn exchange(&self, provider: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let s = secrets
            .get_opt(&identity_secret(provider))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no identity for {provider}"))?;
        crate::consumer::call_broker(&s, "POST", "/v1/exports", Some(body))
            .await
            .map_err(|e| format!("{e:#}"))
    }
}
