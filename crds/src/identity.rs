//! The identity Secret: the contract between the peering layer, which writes one per provider
//! (`ferry-system/ferry-identity-<provider>`), and its readers (the virtual kubelet's supervisor, the
//! MCS sync). Its keys, how to read them, and the check every reader runs on its kubeconfig (pure).

use k8s_openapi::api::core::v1::Secret;

/// The namespace of ferry's own objects.
pub const SYSTEM_NAMESPACE: &str = "ferry-system";

/// Key: the kubeconfig of the identity (client certificate, tenant namespace as default).
pub const KUBECONFIG: &str = "kubeconfig";
/// Key: the client certificate (PEM); it changes when the identity is renewed.
pub const TLS_CRT: &str = "tls.crt";
/// Key: the provider's pod CIDRs, comma-separated, as the broker answered them.
pub const POD_CIDRS: &str = "podCIDRs";
/// Key: the tenant namespace on the provider.
pub const TENANT_NAMESPACE: &str = "tenantNamespace";

/// Name of the Secret holding the identity on provider `provider`.
pub fn identity_secret(provider: &str) -> String {
    format!("ferry-identity-{provider}")
}

/// The provider an identity Secret's name is for, if it is one.
pub fn provider_of(secret_name: &str) -> Option<&str> {
    secret_name
        .strip_prefix("ferry-identity-")
        .filter(|p| !p.is_empty())
}

/// A Secret's value as text.
pub fn text(s: &Secret, k: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(k)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Checks a stored identity kubeconfig before it is used: exactly one cluster (https, with a CA), one user
/// with a client certificate and key given inline, one context; no exec or auth plugins, tokens, files,
/// proxies or impersonation.
pub fn check_kubeconfig(kc: &kube::config::Kubeconfig) -> Result<(), String> {
    if kc.clusters.len() != 1 || kc.auth_infos.len() != 1 || kc.contexts.len() != 1 {
        return Err("the identity kubeconfig must have exactly one cluster, user and context".into());
    }
    let c = kc.clusters[0]
        .cluster
        .as_ref()
        .ok_or("the identity kubeconfig has no cluster")?;
    if !c.server.as_deref().is_some_and(|s| s.starts_with("https://"))
        || c.certificate_authority_data.is_none()
        || c.insecure_skip_tls_verify == Some(true)
        || c.proxy_url.is_some()
        || c.certificate_authority.is_some()
    {
        return Err(
            "the identity kubeconfig's cluster must be https with an inline CA, no proxy, no skip-verify"
                .into(),
        );
    }
    let u = kc.auth_infos[0]
        .auth_info
        .as_ref()
        .ok_or("the identity kubeconfig has no user")?;
    if u.client_certificate_data.is_none()
        || u.client_key_data.is_none()
        || u.exec.is_some()
        || u.auth_provider.is_some()
        || u.token.is_some()
        || u.token_file.is_some()
        || u.username.is_some()
        || u.client_certificate.is_some()
        || u.client_key.is_some()
        || u.impersonate.is_some()
        || u.impersonate_groups.is_some()
    {
        return Err(
            "the identity kubeconfig's user must be an inline client certificate and key only".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_round_trip() {
        assert_eq!(provider_of(&identity_secret("c2")), Some("c2"));
        assert_eq!(provider_of("ferry-identity-"), None);
        assert_eq!(provider_of("other"), None);
    }
}
