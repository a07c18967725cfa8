//! The lab's certificates: one CA per cluster (it also signs CSRs through kube-controller-manager, so a
//! `kubernetes.io/kube-apiserver-client` certificate authenticates), the apiserver's serving certificate,
//! an admin client certificate and the service-account signing key. Written as PEM files.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM text of a certificate and its private key.
#[derive(Clone, Debug)]
pub struct CertPem {
    /// Certificate, PEM.
    pub cert: String,
    /// PKCS#8 private key, PEM.
    pub key: String,
}

/// A cluster's PKI, as written by [`ClusterPki::generate`].
#[derive(Clone, Debug)]
pub struct ClusterPki {
    /// The cluster CA (also the CSR signer).
    pub ca: CertPem,
    /// kube-apiserver's serving certificate.
    pub apiserver: CertPem,
    /// Admin client certificate (`system:masters`).
    pub admin: CertPem,
    /// kube-apiserver's client certificate towards kubelets (logs, exec, port-forward).
    pub kubelet_client: CertPem,
    /// Each real node's certificates.
    pub nodes: Vec<NodePki>,
    /// Service-account token signing key (PKCS#8 PEM).
    pub service_account_key: String,
    /// Its public key (SPKI PEM), which kube-apiserver verifies tokens with.
    pub service_account_pub: String,
}

/// A real node's certificates, both signed by the cluster CA.
#[derive(Clone, Debug)]
pub struct NodePki {
    /// Node name.
    pub name: String,
    /// The kubelet's client certificate: `system:node:<name>` in `system:nodes`, which the apiserver's Node
    /// authorizer confines to the node's own objects.
    pub client: CertPem,
    /// The kubelet's serving certificate for its node address (the apiserver verifies it for logs and
    /// exec) .
    pub serving: CertPem,
    /// kube-proxy's client certificate (`system:kube-proxy`, bound to `system:node-proxier`).
    pub proxy: CertPem,
}

fn ca(cluster: &str) -> Result<(CertPem, CertificateParams, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("ferry-lab {cluster} CA"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((
        CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        params,
        key,
    ))
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    cn: &str,
    orgs: &[&str],
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertPem> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl ClusterPki {
    /// Generates a fresh PKI for one cluster whose in-cluster API address is `service_ip`, whose apiserver
    /// is also reached at `extra_ips`, with certificates for the real `nodes` (name, node address).
    pub fn generate(
        cluster: &str,
        service_ip: IpAddr,
        extra_ips: &[IpAddr],
        nodes: &[(String, IpAddr)],
    ) -> Result<Self> {
        let (ca, ca_params, ca_key) = ca(cluster)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let sans: Vec<String> = [
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([service_ip.to_string()])
        .chain(extra_ips.iter().map(IpAddr::to_string))
        .collect();
        let apiserver = leaf(
            &issuer,
            "kube-apiserver",
            &[],
            &sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let admin = leaf(
            &issuer,
            "ferry-lab-admin",
            &["system:masters"],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let kubelet_client = leaf(
            &issuer,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let nodes = nodes
            .iter()
            .map(|(name, ip)| -> Result<NodePki> {
                Ok(NodePki {
                    name: name.clone(),
                    client: leaf(
                        &issuer,
                        &format!("system:node:{name}"),
                        &["system:nodes"],
                        &[],
                        ExtendedKeyUsagePurpose::ClientAuth,
                    )?,
                    serving: leaf(
                        &issuer,
                        name,
                        &[],
                        &[name.clone(), ip.to_string()],
                        ExtendedKeyUsagePurpose::ServerAuth,
                    )?,
                    proxy: leaf(
                        &issuer,
                        "system:kube-proxy",
                        &[],
                        &[],
                        ExtendedKeyUsagePurpose::ClientAuth,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sa = KeyPair::generate()?;
        Ok(Self {
            ca,
            apiserver,
            admin,
            kubelet_client,
            nodes,
            service_account_key: sa.serialize_pem(),
            service_account_pub: sa.public_key_pem(),
        })
    }

    /// Writes `ca.crt`, `ca.key`, `apiserver.*`, `admin.*`, `kubelet-client.*`, `sa.key`, `sa.pub` (node
    /// certificates go to each node's directory, see [`crate::node`]).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in [
            ("ca.crt", &self.ca.cert),
            ("ca.key", &self.ca.key),
            ("apiserver.crt", &self.apiserver.cert),
            ("apiserver.key", &self.apiserver.key),
            ("admin.crt", &self.admin.cert),
            ("admin.key", &self.admin.key),
            ("kubelet-client.crt", &self.kubelet_client.cert),
            ("kubelet-client.key", &self.kubelet_client.key),
            ("sa.key", &self.service_account_key),
            ("sa.pub", &self.service_account_pub),
        ] {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        Ok(())
    }
}

/// A kubeconfig with one cluster, one user (client certificate) and one context, all named `context`.
pub fn kubeconfig(context: &str, server: &str, ca_pem: &str, client: &CertPem) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {context}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {context}\ncurrent-context: {context}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert),
        key = b64(&client.key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_and_leaves_and_a_kubeconfig_that_kube_parses() {
        let pki = ClusterPki::generate(
            "c1",
            "10.96.0.1".parse().unwrap(),
            &["198.19.1.254".parse().unwrap()],
            &[("real-node-1".into(), "198.19.1.10".parse().unwrap())],
        )
        .unwrap();
        assert_eq!(pki.nodes.len(), 1);
        assert_ne!(pki.nodes[0].client.cert, pki.nodes[0].serving.cert);
        assert!(pki.ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.admin.key.contains("PRIVATE KEY"));
        assert_ne!(pki.apiserver.cert, pki.admin.cert);
        let text = kubeconfig("ferrylab-c1", "https://127.0.0.1:20012", &pki.ca.cert, &pki.admin);
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("ferrylab-c1"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:20012")
        );
    }
}
