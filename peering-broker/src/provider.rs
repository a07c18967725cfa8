//! The provider's side of a peering: admits a consumer (checks, then tenant namespace, RBAC confined to
//! it, `Tenant`, granted `ResourceSlice`, a client certificate through the Kubernetes CSR API) and tears a
//! tenant down. Anything it creates for a request that then fails is removed again.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use ferry_crds::common::ResourceAmounts;
use ferry_crds::kinds::{ResourceSlice, ResourceSliceSpec, Tenant, TenantSpec};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use x509_parser::prelude::FromDer;

use crate::error::BrokerError;
use crate::key::ClusterKey;
use crate::wire::{
    OffloadRequest, OffloadResponse, PeeringRequest, PeeringResponse, RenewRequest, RenewResponse, Resources,
    consumer_of, consumer_user, remote_namespace,
};

/// ferry's namespace on every cluster.
pub use ferry_crds::identity::SYSTEM_NAMESPACE;
/// ConfigMap recording used token IDs (jti → consumer key fingerprint), so a restart cannot replay them.
pub const USED_TOKENS: &str = "ferry-used-tokens";
pub use ferry_virtual_kubelet::TENANT_LABEL;
/// How long a consumer identity's certificate is valid (where the cluster lets the CSR ask for it).
pub const IDENTITY_SECONDS: u32 = 24 * 3600;
/// Label on an offload namespace: the consumer namespace it mirrors.
pub const ORIGIN_NAMESPACE_LABEL: &str = "ferry.dev/origin-namespace";

/// What the broker needs to admit consumers.
#[derive(Clone)]
pub struct Provider {
    /// Admin client of this cluster.
    pub client: Client,
    /// This cluster's ID.
    pub cluster_id: String,
    /// This cluster's key.
    pub key: ClusterKey,
    /// The apiserver URL consumers reach.
    pub api_server: String,
    /// The apiserver's CA (PEM).
    pub ca_pem: String,
    /// The most one tenant may be granted.
    pub quota: Resources,
    /// This cluster's pod CIDRs (told to consumers).
    pub pod_cidrs: Vec<String>,
    /// This cluster's network as told to consumers (CIDRs, WireGuard key, gateway endpoint).
    pub network: crate::wire::LocalNetwork,
    /// Multi-cluster services: what this cluster and its peers export.
    pub mcs: std::sync::Arc<ferry_mcs::Exchange>,
    /// The kubelets' figures of the tenants' pods.
    pub stats: std::sync::Arc<crate::stats::StatsCache>,
}

fn internal(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Internal(e.to_string())
}

/// The tenant namespace of a consumer.
pub fn tenant_namespace(consumer: &str) -> String {
    format!("ferry-tenant-{consumer}")
}

/// The CN (and nothing else) of a CSR's subject; refuses CSRs asking for groups (O) or anything else.
pub fn csr_subject(csr_pem: &str) -> Result<String, BrokerError> {
    let der = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|_| BrokerError::invalid("csr", "is not PEM; fix: send a PKCS#10 CSR in PEM"))?
        .1;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der.contents)
        .map_err(|_| BrokerError::invalid("csr", "does not parse as PKCS#10"))?;
    csr.verify_signature()
        .map_err(|_| BrokerError::invalid("csr", "signature does not verify"))?;
    let subject = &csr.certification_request_info.subject;
    let mut cn = None;
    for rdn in subject.iter() {
        for attr in rdn.iter() {
            if attr.attr_type() == &x509_parser::oid_registry::OID_X509_COMMON_NAME && cn.is_none() {
                cn = attr.as_str().ok().map(str::to_string);
            } else {
                return Err(BrokerError::CsrSubject {
                    got: subject.to_string(),
                    want: "CN only".into(),
                });
            }
        }
    }
    cn.ok_or_else(|| BrokerError::invalid("csr", "has no CN"))
}

/// The lesser of what was asked and the quota (the quota when nothing was asked). Both have been checked
/// by [`crate::wire::check_resources`] / the agent's flags; one that does not parse yields the quota.
fn min_quantity(asked: Option<&String>, quota: Option<&String>) -> Option<String> {
    use ferry_virtual_kubelet::quantity::parse_bounded;
    match (asked, quota) {
        (Some(a), Some(q)) => match (parse_bounded(a), parse_bounded(q)) {
            (Ok(av), Ok(qv)) if av <= qv => Some(a.clone()),
            _ => Some(q.clone()),
        },
        (Some(a), None) => parse_bounded(a).ok().map(|_| a.clone()),
        (None, q) => q.cloned(),
    }
}

/// What the provider grants for a request.
pub fn grant(asked: &Resources, quota: &Resources) -> Resources {
    Resources {
        cpu: min_quantity(asked.cpu.as_ref(), quota.cpu.as_ref()),
        memory: min_quantity(asked.memory.as_ref(), quota.memory.as_ref()),
        pods: min_quantity(asked.pods.as_ref(), quota.pods.as_ref()),
    }
}

/// What a tenant's identity may do in each of its namespaces on the provider: exactly what reflection and
/// the kubelet API need, nothing that runs code or reads credentials. Pods are read (and deleted, as the
/// consumer's deletes pass on), never created or changed: they come only from `ShadowPod`s, which the
/// provider's controller builds under the tenant's policy; `shadowpods/status` is the provider's to write.
/// Secrets are written (reflection) but never read, so token Secrets stay unreadable; no service accounts,
/// no impersonation, no `*`.
pub fn tenant_rules() -> serde_json::Value {
    const RW: [&str; 7] = ["get", "list", "watch", "create", "update", "patch", "delete"];
    json!([
        { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"] },
        { "apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"] },
        { "apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward"], "verbs": ["get", "create"] },
        { "apiGroups": [""], "resources": ["services", "endpoints", "configmaps"], "verbs": RW },
        { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "patch", "delete"] },
        { "apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"] },
        { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": RW },
        { "apiGroups": ["ferry.dev"], "resources": ["shadowpods"], "verbs": RW },
        { "apiGroups": ["ferry.dev"], "resources": ["resourceslices", "resourceslices/status"], "verbs": ["get", "list", "watch"] },
    ])
}

async fn create_or_keep<K>(api: &Api<K>, obj: &K) -> Result<bool, BrokerError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(internal(e)),
    }
}

/// Whether `name` is a namespace no tenant may ever be given: the cluster's own and ferry's.
pub fn reserved_namespace(name: &str) -> bool {
    name.starts_with("kube-")
        || name.starts_with("ferry-")
        || matches!(
            name,
            "default" | "kube-system" | "kube-public" | "kube-node-lease"
        )
}

impl Provider {
    /// Creates namespace `name` for tenant `consumer` (with `labels`), or keeps it if it is already that
    /// tenant's. A namespace that exists and is not this tenant's, or one still terminating, is refused:
    /// a 409 never means "mine". Returns whether it was created now.
    async fn create_owned_namespace(
        &self,
        name: &str,
        consumer: &str,
        labels: serde_json::Value,
        field: &str,
    ) -> Result<bool, BrokerError> {
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } }))
            .map_err(internal)?;
        match nss.create(&PostParams::default(), &ns).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(internal(e)),
        }
        let existing = nss.get_opt(name).await.map_err(internal)?;
        match existing {
            Some(n) if n.labels().get(TENANT_LABEL).map(String::as_str) == Some(consumer) => {
                if n.metadata.deletion_timestamp.is_some() {
                    return Err(BrokerError::Internal(format!(
                        "namespace {name} is still terminating; retry in a few seconds"
                    )));
                }
                Ok(false)
            }
            _ => Err(BrokerError::invalid(
                field,
                &format!(
                    "maps to namespace {name:?}, which exists on the provider and is not this tenant's; fix: use namespaceMappingStrategy DefaultName, or another namespace"
                ),
            )),
        }
    }

    /// Records `jti` as used by `fingerprint`; Ok(true) if new, Ok(false) if it is a retry by the same key.
    async fn claim_jti(&self, jti: &str, fingerprint: &str, consumer: &str) -> Result<bool, BrokerError> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let value = format!("{consumer}/{fingerprint}");
        for _ in 0..5 {
            let cm = match cms.get_opt(USED_TOKENS).await.map_err(internal)? {
                Some(cm) => cm,
                None => {
                    let cm: ConfigMap =
                        serde_json::from_value(json!({ "metadata": { "name": USED_TOKENS } }))
                            .map_err(internal)?;
                    create_or_keep(&cms, &cm).await?;
                    continue;
                }
            };
            let mut data = cm.data.clone().unwrap_or_default();
            match data.get(jti) {
                Some(v) if *v == value => return Ok(false),
                Some(_) => return Err(BrokerError::TokenReused(jti.to_string())),
                None => {}
            }
            data.insert(jti.to_string(), value.clone());
            let mut updated = cm.clone();
            updated.data = Some(data);
            // replace with the read resourceVersion: a concurrent claim of the same jti loses
            match cms.replace(USED_TOKENS, &PostParams::default(), &updated).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(internal(e)),
            }
        }
        Err(BrokerError::Internal(
            "could not record the token as used (conflicts)".into(),
        ))
    }

    /// `POST /v1/peerings`: every check first, then the effects; a failure removes what this call made.
    pub async fn admit(&self, body: &[u8], now: u64) -> Result<PeeringResponse, BrokerError> {
        let req = PeeringRequest::parse(body)?;
        let claims = crate::token::verify(&req.token, &self.key, &self.cluster_id, now)?;
        req.verify_proof(&claims.jti, &self.cluster_id)?;
        let want = consumer_user(&req.cluster_id, &claims.jti);
        let got = csr_subject(&req.csr)?;
        if got != want {
            return Err(BrokerError::CsrSubject { got, want });
        }
        if req.cluster_id == self.cluster_id {
            return Err(BrokerError::invalid(
                "clusterID",
                "is this provider's own cluster ID; fix: give the consumer its own ID (ferryctl peer --cluster-id)",
            ));
        }
        let fingerprint = req.key_fingerprint()?;
        // a tenant of that ID with another key is someone else
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        if let Some(t) = tenants.get_opt(&req.cluster_id).await.map_err(internal)?
            && t.spec.public_key_fingerprint != fingerprint
        {
            return Err(BrokerError::Forbidden(format!(
                "cluster ID {} is taken by another key",
                req.cluster_id
            )));
        }
        let first = self.claim_jti(&claims.jti, &fingerprint, &req.cluster_id).await?;
        let mut created = Created::default();
        match self.create_tenant(&req, &fingerprint, &want, &mut created).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                if first {
                    self.remove(&req.cluster_id, Some(&created)).await;
                }
                Err(e)
            }
        }
    }

    async fn create_tenant(
        &self,
        req: &PeeringRequest,
        fingerprint: &str,
        user: &str,
        created: &mut Created,
    ) -> Result<PeeringResponse, BrokerError> {
        let id = &req.cluster_id;
        let ns = tenant_namespace(id);
        let labels = json!({ TENANT_LABEL: id });
        let nss: Api<Namespace> = Api::all(self.client.clone());
        // re-peering right after an unpeer: the old tenant namespace may still be terminating (by watch,
        // 60 s at most; then creating it answers why)
        let settled = kube::runtime::wait::await_condition(nss.clone(), &ns, |n: Option<&Namespace>| {
            n.is_none_or(|n| n.metadata.deletion_timestamp.is_none())
        });
        let _ = tokio::time::timeout(Duration::from_secs(60), settled).await;
        created.namespace = self.create_owned_namespace(&ns, id, labels, "clusterID").await?;
        self.grant_namespace(&ns, id, user).await?;
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        let mut tenant = Tenant::new(
            id,
            TenantSpec {
                cluster_id: id.clone(),
                public_key_fingerprint: fingerprint.into(),
                tenant_namespace: ns.clone(),
                cordoned: false,
                policy: Default::default(),
                user: Some(user.to_string()),
            },
        );
        tenant.metadata.labels = Some(BTreeMap::from([(TENANT_LABEL.to_string(), id.clone())]));
        created.tenant = create_or_keep(&tenants, &tenant).await?;
        if !created.tenant {
            // peered again (a new token): the new identity replaces the old one everywhere, so the old
            // peering's certificate is bound to nothing any more
            tenants
                .patch(
                    id,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"user": user}})),
                )
                .await
                .map_err(internal)?;
            let lp = kube::api::ListParams::default().labels(&format!("{TENANT_LABEL}={id}"));
            for n in Api::<Namespace>::all(self.client.clone())
                .list_metadata(&lp)
                .await
                .map_err(internal)?
            {
                self.grant_namespace(&n.name_any(), id, user).await?;
            }
        }
        let granted = grant(&req.resources, &self.quota);
        let q = |s: &Option<String>| s.clone().map(Quantity);
        let slices: Api<ResourceSlice> = Api::namespaced(self.client.clone(), &ns);
        let slice = ResourceSlice::new(
            ferry_virtual_kubelet::GRANTED_SLICE,
            ResourceSliceSpec {
                provider_cluster_id: self.cluster_id.clone(),
                consumer_cluster_id: id.clone(),
                resources: ResourceAmounts {
                    cpu: q(&req.resources.cpu),
                    memory: q(&req.resources.memory),
                    pods: q(&req.resources.pods),
                    ..Default::default()
                },
            },
        );
        create_or_keep(&slices, &slice).await?;
        let partial = granted != req.resources;
        let status = json!({ "status": {
            "phase": if partial { "Partial" } else { "Accepted" },
            "granted": { "cpu": granted.cpu, "memory": granted.memory, "pods": granted.pods },
            "reason": if partial { Some("capped by the tenant quota") } else { None },
        }});
        slices
            .patch_status(
                ferry_virtual_kubelet::GRANTED_SLICE,
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .map_err(internal)?;
        // the tunnel's half on this side: the consumer's CIDRs and key; it dials us, so no endpoint
        let mut local = self.pod_cidrs.clone();
        local.extend(self.network.service_cidrs.iter().cloned());
        let remote: Vec<String> = req.pod_cidrs.iter().chain(&req.service_cidrs).cloned().collect();
        // (a consumer that sent no WireGuard key gets no tunnel)
        let mut slot = None;
        if !req.wireguard_public_key.is_empty() {
            let s = crate::wireguard::choose_slot(&self.client, id, &req.tunnel_addresses_in_use)
                .await
                .map_err(internal)?
                .ok_or_else(|| internal("all 4096 tunnel links of 169.254.64.0/18 are in use"))?;
            // a consumer that is reachable told us where: then this side dials too (and alone, when
            // this provider is behind NAT and announces no endpoint of its own)
            let consumer_endpoint = req
                .gateway_endpoint
                .as_deref()
                .and_then(|e| crate::wireguard::link_endpoint(e, s));
            let mut pn = crate::wireguard::peer_network(
                id,
                &local,
                &remote,
                &req.wireguard_public_key,
                consumer_endpoint.as_deref(),
            );
            let base = crate::wireguard::base_port(self.network.gateway_endpoint.as_deref());
            crate::wireguard::set_link(&mut pn, s, true, base);
            crate::wireguard::apply_peer_network(&self.client, &pn)
                .await
                .map_err(internal)?;
            slot = Some(s);
        }
        let certificate = self.sign_csr(id, &req.csr).await?;
        Ok(PeeringResponse {
            provider_cluster_id: self.cluster_id.clone(),
            tenant_namespace: ns,
            api_server: self.api_server.clone(),
            ca: self.ca_pem.clone(),
            certificate,
            granted,
            wireguard_public_key: self.network.wireguard_public_key.clone(),
            pod_cidrs: self.pod_cidrs.clone(),
            service_cidrs: self.network.service_cidrs.clone(),
            gateway_endpoint: match (&self.network.gateway_endpoint, slot) {
                (Some(e), Some(s)) => crate::wireguard::link_endpoint(e, s),
                (e, _) => e.clone(),
            },
            tunnel_slot: slot,
            standby_gateway_endpoints: self
                .network
                .standby_gateway_endpoints
                .iter()
                .filter_map(|e| match slot {
                    Some(s) => crate::wireguard::link_endpoint(e, s),
                    None => Some(e.clone()),
                })
                .collect(),
        })
    }

    /// Signs the consumer's CSR through the Kubernetes CSR API (`kubernetes.io/kube-apiserver-client`), for
    /// [`IDENTITY_SECONDS`] where the cluster honours `expirationSeconds` (1.22+; older clusters use their
    /// signer's `--cluster-signing-duration`). The CSR object is named after the request itself, so a retry
    /// with the same key gets the same certificate and a new key never gets a certificate for an old one.
    async fn sign_csr(&self, consumer: &str, csr_pem: &str) -> Result<String, BrokerError> {
        use sha2::Digest;
        let csrs: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let name = format!(
            "ferry-{consumer}-{}",
            hex::encode(&sha2::Sha256::digest(csr_pem.as_bytes())[..6])
        );
        let obj: CertificateSigningRequest = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { TENANT_LABEL: consumer } },
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
                "signerName": "kubernetes.io/kube-apiserver-client",
                "expirationSeconds": IDENTITY_SECONDS,
                "usages": ["client auth", "digital signature", "key encipherment"],
            },
        }))
        .map_err(internal)?;
        create_or_keep(&csrs, &obj).await?;
        let approval = json!({ "status": { "conditions": [{ "type": "Approved", "status": "True", "reason": "FerryPeering", "message": format!("identity of tenant {consumer}") }] } });
        let current = csrs.get(&name).await.map_err(internal)?;
        let approved = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Approved"));
        if !approved {
            csrs.patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
                .await
                .map_err(internal)?;
        }
        let issued = kube::runtime::wait::await_condition(
            csrs.clone(),
            &name,
            |c: Option<&CertificateSigningRequest>| {
                c.and_then(|c| c.status.as_ref())
                    .is_some_and(|s| s.certificate.is_some())
            },
        );
        if let Ok(Ok(Some(got))) = tokio::time::timeout(Duration::from_secs(10), issued).await
            && let Some(cert) = got.status.and_then(|s| s.certificate)
        {
            return String::from_utf8(cert.0).map_err(internal);
        }
        Err(BrokerError::Internal("the CSR signer did not issue a certificate within 10s (is kube-controller-manager running with csrsigning?)".into()))
    }

    /// The tenant's Role and RoleBinding (to `user`, its current identity) in `ns` (its tenant namespace
    /// or one it offloads to). Applied, so a new peering's identity replaces the old one.
    async fn grant_namespace(&self, ns: &str, consumer: &str, user: &str) -> Result<(), BrokerError> {
        let labels = json!({ TENANT_LABEL: consumer });
        let role: Role = serde_json::from_value(json!({
            "metadata": { "name": "ferry-consumer", "namespace": ns, "labels": labels },
            "rules": tenant_rules(),
        }))
        .map_err(internal)?;
        // applied, not only created: a provider upgraded from a wider role narrows it for old tenants too
        Api::<Role>::namespaced(self.client.clone(), ns)
            .patch(
                "ferry-consumer",
                &PatchParams::apply("ferry-broker").force(),
                &Patch::Apply(&role),
            )
            .await
            .map_err(internal)?;
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": "ferry-consumer", "namespace": ns, "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry-consumer" },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        }))
        .map_err(internal)?;
        Api::<RoleBinding>::namespaced(self.client.clone(), ns)
            .patch(
                "ferry-consumer",
                &PatchParams::apply("ferry-broker").force(),
                &Patch::Apply(&rb),
            )
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// The tenant a client certificate acts for: its CN must be the current identity of an admitted tenant
    /// (a certificate of an earlier peering of the same ID is refused).
    async fn tenant_of(&self, client_cn: Option<&str>) -> Result<Tenant, BrokerError> {
        let cn = client_cn.ok_or_else(|| BrokerError::Forbidden("no client certificate".into()))?;
        let id = consumer_of(cn).ok_or_else(|| BrokerError::Forbidden(cn.to_string()))?;
        let tenant = Api::<Tenant>::all(self.client.clone())
            .get_opt(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| BrokerError::NotFound(id.into()))?;
        if tenant.spec.user.as_deref() != Some(cn) {
            return Err(BrokerError::Forbidden(format!(
                "{cn} (a certificate of an earlier peering of {id})"
            )));
        }
        Ok(tenant)
    }

    /// `POST /v1/identity`: a certificate for a new key of the caller's current identity (renewal before
    /// expiry; the old certificate keeps working until it expires).
    pub async fn renew(&self, body: &[u8], client_cn: Option<&str>) -> Result<RenewResponse, BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        let req: RenewRequest =
            serde_json::from_slice(body).map_err(|e| BrokerError::Malformed(e.to_string()))?;
        let got = csr_subject(&req.csr)?;
        let want = tenant.spec.user.clone().unwrap_or_default();
        if got != want {
            return Err(BrokerError::CsrSubject { got, want });
        }
        let certificate = self.sign_csr(&tenant.spec.cluster_id, &req.csr).await?;
        Ok(RenewResponse { certificate })
    }

    /// `GET /v1/stats`: the usage of the tenant's pods here (kubelet figures at most
    /// [`crate::stats::STATS_TTL`] old).
    pub async fn stats(
        &self,
        client_cn: Option<&str>,
    ) -> Result<ferry_virtual_kubelet::kubelet_stats::TenantStats, BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        self.stats
            .tenant(&self.client, &tenant.spec.cluster_id)
            .await
            .map_err(BrokerError::Internal)
    }

    /// `POST /v1/exports`: a tenant's exports in, this cluster's out.
    pub async fn exports(
        &self,
        body: &[u8],
        client_cn: Option<&str>,
    ) -> Result<ferry_mcs::ExportList, BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        let list: ferry_mcs::ExportList =
            serde_json::from_slice(body).map_err(|e| BrokerError::Malformed(e.to_string()))?;
        let consumer = tenant.spec.cluster_id.clone();
        let remaps = ferry_tunnel::remaps::for_peer(&self.client, &consumer, (&[], &[])).await;
        // a tenant exports services of the namespaces it offloaded here, and of no other
        let offloaded: std::collections::HashSet<String> = Api::<Namespace>::all(self.client.clone())
            .list_metadata(&kube::api::ListParams::default().labels(&format!("{TENANT_LABEL}={consumer}")))
            .await
            .map_err(internal)?
            .items
            .iter()
            .filter_map(|n| n.labels().get(ORIGIN_NAMESPACE_LABEL).cloned())
            .collect();
        for why in self
            .mcs
            .receive(&consumer, list, &remaps, &|ns| offloaded.contains(ns))
        {
            tracing::warn!(consumer, "export refused: {why}");
        }
        Ok(self.mcs.local())
    }

    /// `POST /v1/namespaces`: the namespace a consumer namespace is offloaded to, created with the
    /// tenant's rights in it (idempotent). A namespace of that name that is not this tenant's is refused.
    pub async fn offload(
        &self,
        body: &[u8],
        client_cn: Option<&str>,
    ) -> Result<OffloadResponse, BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        let req: OffloadRequest =
            serde_json::from_slice(body).map_err(|e| BrokerError::Malformed(e.to_string()))?;
        let consumer = &tenant.spec.cluster_id;
        if tenant.spec.cordoned {
            return Err(BrokerError::Forbidden(format!(
                "tenant {consumer} is cordoned: no new offloading"
            )));
        }
        let valid = !req.namespace.is_empty()
            && req.namespace.len() <= 63
            && req
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !req.namespace.starts_with('-')
            && !req.namespace.ends_with('-');
        if !valid {
            return Err(BrokerError::invalid(
                "namespace",
                "is not a DNS-1123 label; fix: send the consumer namespace's name",
            ));
        }
        let name = remote_namespace(&req.namespace, consumer, req.mapping);
        if reserved_namespace(&name) {
            return Err(BrokerError::invalid(
                "namespace",
                &format!(
                    "maps to {name:?}, a namespace of the provider's own; fix: use namespaceMappingStrategy DefaultName, or another namespace"
                ),
            ));
        }
        let labels = json!({ TENANT_LABEL: consumer, ORIGIN_NAMESPACE_LABEL: req.namespace });
        self.create_owned_namespace(&name, consumer, labels, "namespace")
            .await?;
        self.grant_namespace(&name, consumer, tenant.spec.user.as_deref().unwrap_or_default())
            .await?;
        Ok(OffloadResponse { namespace: name })
    }

    /// `DELETE /v1/namespaces/{name}`: an offload namespace of this tenant (never its tenant namespace or
    /// anyone else's).
    pub async fn unoffload(&self, name: &str, client_cn: Option<&str>) -> Result<(), BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        let consumer = &tenant.spec.cluster_id;
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let Some(ns) = nss.get_opt(name).await.map_err(internal)? else {
            return Err(BrokerError::NotFound(format!("namespace {name}")));
        };
        if ns.labels().get(TENANT_LABEL) != Some(consumer) || name == tenant.spec.tenant_namespace {
            return Err(BrokerError::Forbidden(format!(
                "namespace {name} is not an offload namespace of {consumer}"
            )));
        }
        nss.delete(name, &DeleteParams::background())
            .await
            .map_err(internal)?;
        Ok(())
    }

    /// `DELETE /v1/peerings/{id}`: the client certificate must be that consumer's current identity. The
    /// answer waits, at most [`RELEASE_WAIT`], until the tenant's namespaces are gone, and names those
    /// still terminating: the namespace controller starts on a deleted namespace only 5 s after its
    /// deletion, and a new peering of the same consumer waits for them, so an unpeer that returns when
    /// they are gone leaves the next peering nothing to wait for.
    pub async fn release(&self, consumer: &str, client_cn: Option<&str>) -> Result<Vec<String>, BrokerError> {
        let tenant = self.tenant_of(client_cn).await?;
        if tenant.spec.cluster_id != consumer {
            return Err(BrokerError::Forbidden(client_cn.unwrap_or_default().to_string()));
        }
        self.remove(consumer, None).await;
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let selector = format!("{TENANT_LABEL}={consumer}");
        let lp = kube::api::ListParams::default().labels(&selector);
        let watch = kube::runtime::watcher(
            nss.clone(),
            kube::runtime::watcher::Config::default().labels(&selector),
        );
        let _ = tokio::time::timeout(RELEASE_WAIT, all_gone(watch)).await;
        let left = nss.list_metadata(&lp).await.map_err(internal)?;
        Ok(left.into_iter().map(|n| n.name_any()).collect())
    }

    /// Removes a tenant's objects (all of them, or only those in `only`). Its RoleBindings go first, so its
    /// identity loses every right at once, not only when the namespaces have finished terminating.
    async fn remove(&self, consumer: &str, only: Option<&Created>) {
        let dp = DeleteParams::background();
        if only.is_none() {
            let lp = kube::api::ListParams::default().labels(&format!("{TENANT_LABEL}={consumer}"));
            if let Ok(list) = Api::<Namespace>::all(self.client.clone())
                .list_metadata(&lp)
                .await
            {
                for n in list {
                    let _ = Api::<RoleBinding>::namespaced(self.client.clone(), &n.name_any())
                        .delete("ferry-consumer", &dp)
                        .await;
                }
            }
        }
        if only.is_none_or(|c| c.namespace) {
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&tenant_namespace(consumer), &dp)
                .await;
        }
        if only.is_none() {
            // the namespaces it offloaded to
            let nss = Api::<Namespace>::all(self.client.clone());
            let lp = kube::api::ListParams::default().labels(&format!("{TENANT_LABEL}={consumer}"));
            if let Ok(list) = nss.list_metadata(&lp).await {
                for n in list {
                    let _ = nss.delete(&n.name_any(), &dp).await;
                }
            }
        }
        if only.is_none() {
            let _ = Api::<ferry_crds::PeerNetwork>::all(self.client.clone())
                .delete(consumer, &dp)
                .await;
        }
        if only.is_none_or(|c| c.tenant) {
            let _ = Api::<Tenant>::all(self.client.clone())
                .delete(consumer, &dp)
                .await;
        }
        let csrs: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let lp = kube::api::ListParams::default().labels(&format!("{TENANT_LABEL}={consumer}"));
        // (used tokens stay recorded: a token is never good twice)
        let _ = csrs.delete_collection(&dp, &lp).await;
    }
}

/// How long `DELETE /v1/peerings/{id}` waits for the tenant's namespaces to be gone (below the
/// consumer's request timeout, [`crate::tls::REQUEST_TIMEOUT`]).
pub const RELEASE_WAIT: Duration = Duration::from_secs(20);

/// Ends when the objects `events` (one watch) shows are all gone, or when the watch ends or fails (the
/// caller then lists).
async fn all_gone<K: kube::Resource + ResourceExt>(
    events: impl futures::Stream<Item = kube::runtime::watcher::Result<kube::runtime::watcher::Event<K>>>,
) {
    use futures::StreamExt;
    // the names the watch shows, as the consumer's lite stores keep them (ready once listed)
    let seen = ferry_virtual_kubelet::lite::Lite::<()>::default();
    futures::pin_mut!(events);
    while let Some(Ok(e)) = events.next().await {
        seen.apply(&e, |_| ());
        if seen.ready() && seen.is_empty() {
            return;
        }
    }
}

/// What one admission created (and so may remove on failure).
#[derive(Debug, Default, Clone, Copy)]
pub struct Created {
    /// The tenant namespace (with its Role, RoleBinding, ResourceSlice).
    pub namespace: bool,
    /// The `Tenant`.
    pub tenant: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    type E = kube::runtime::watcher::Event<Namespace>;

    fn ns(name: &str) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n
    }

    #[test]
    fn a_watch_is_empty_only_once_listed_and_when_every_listed_or_added_name_is_deleted() {
        let w = ferry_virtual_kubelet::lite::Lite::<()>::default();
        let empty = |w: &ferry_virtual_kubelet::lite::Lite<()>| w.ready() && w.is_empty();
        assert!(!empty(&w), "nothing listed yet: unknown, not empty");
        w.apply(&E::Init, |_| ());
        w.apply(&E::InitApply(ns("a")), |_| ());
        assert!(!empty(&w), "listing not complete");
        w.apply(&E::InitApply(ns("b")), |_| ());
        w.apply(&E::InitDone, |_| ());
        assert!(!empty(&w));
        w.apply(&E::Delete(ns("a")), |_| ());
        w.apply(&E::Apply(ns("c")), |_| ());
        w.apply(&E::Delete(ns("b")), |_| ());
        assert!(!empty(&w), "c was added");
        w.apply(&E::Delete(ns("c")), |_| ());
        assert!(empty(&w));
        // a relist that finds one again
        w.apply(&E::Init, |_| ());
        w.apply(&E::InitApply(ns("a")), |_| ());
        assert!(
            empty(&w),
            "the last complete listing stands until the new one is done"
        );
        w.apply(&E::InitDone, |_| ());
        assert!(!empty(&w));
        let none = ferry_virtual_kubelet::lite::Lite::<()>::default();
        none.apply(&E::Init, |_| ());
        none.apply(&E::InitDone, |_| ());
        assert!(empty(&none), "a listing of nothing");
    }

    #[tokio::test]
    async fn all_gone_ends_on_the_last_delete_or_when_the_watch_ends() {
        let events = |es: Vec<E>| futures::stream::iter(es.into_iter().map(Ok));
        let listed = vec![E::Init, E::InitApply(ns("t")), E::InitDone];
        // never gone: all_gone waits for more (here: pending after the events)
        let pending = futures::StreamExt::chain(events(listed.clone()), futures::stream::pending());
        let waited = tokio::time::timeout(Duration::from_millis(50), all_gone(pending)).await;
        assert!(waited.is_err(), "ended with a namespace still there");
        let mut gone = listed;
        gone.push(E::Delete(ns("t")));
        let then = futures::StreamExt::chain(events(gone), futures::stream::pending());
        tokio::time::timeout(Duration::from_millis(50), all_gone(then))
            .await
            .expect("ends on the delete");
        // a watch that ends: all_gone ends (the caller lists what is left)
        all_gone(events(vec![E::Init])).await;
    }

    fn csr(cn: &str, org: Option<&str>) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn csr_subject_is_the_cn_and_groups_are_refused() {
        assert_eq!(
            csr_subject(&csr("ferry:consumer:c1", None)).unwrap(),
            "ferry:consumer:c1"
        );
        let e = csr_subject(&csr("ferry:consumer:c1", Some("system:masters"))).unwrap_err();
        assert!(matches!(e, BrokerError::CsrSubject { .. }), "{e}");
        assert!(matches!(csr_subject("not pem"), Err(BrokerError::Invalid { .. })));
    }

    #[test]
    fn the_tenant_role_grants_no_wildcard_no_pod_writes_no_secret_reads_no_impersonation() {
        let rules = tenant_rules();
        let verbs = |res: &str| -> Vec<String> {
            rules
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["resources"].as_array().unwrap().iter().any(|x| x == res))
                .flat_map(|r| {
                    r["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                })
                .collect()
        };
        assert!(!rules.to_string().contains('*'), "{rules}");
        for w in ["create", "update", "patch"] {
            assert!(!verbs("pods").contains(&w.to_string()), "pods: {w}");
        }
        assert!(verbs("pods/status").is_empty() && verbs("shadowpods/status").is_empty());
        for r in ["get", "list", "watch"] {
            assert!(!verbs("secrets").contains(&r.to_string()), "secrets: {r}");
        }
        assert!(verbs("serviceaccounts").is_empty() && verbs("serviceaccounts/token").is_empty());
        assert!(!rules.to_string().contains("impersonate"));
        assert!(verbs("pods/exec").contains(&"create".to_string()));
        assert!(verbs("shadowpods").contains(&"create".to_string()));
    }

    #[test]
    fn grants_are_capped_by_the_quota() {
        let quota = Resources {
            cpu: Some("8".into()),
            memory: Some("16Gi".into()),
            pods: Some("110".into()),
        };
        let asked = Resources {
            cpu: Some("4".into()),
            memory: Some("32Gi".into()),
            pods: None,
        };
        let g = grant(&asked, &quota);
        assert_eq!(
            g,
            Resources {
                cpu: Some("4".into()),
                memory: Some("16Gi".into()),
                pods: Some("110".into())
            }
        );
        assert_eq!(
            grant(
                &Resources {
                    cpu: Some("500m".into()),
                    ..Default::default()
                },
                &quota
            )
            .cpu
            .as_deref(),
            Some("500m")
        );
    }
}
