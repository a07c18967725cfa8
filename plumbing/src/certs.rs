//! Reading X.509 certificates: who a client certificate names, and how long a certificate is valid. The
//! broker (tenant identities), the identity renewal and the virtual nodes' kubelet API share it.

use x509_parser::prelude::FromDer;

/// A certificate's subject as Kubernetes reads it: the CN is the user, each O a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The common name.
    pub cn: String,
    /// The organizations.
    pub organizations: Vec<String>,
}

/// The subject of a DER certificate (`None`: not a certificate, or no CN).
pub fn subject(der: &[u8]) -> Option<Subject> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    subject_of(&cert)
}

fn subject_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Subject> {
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let organizations = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Subject { cn, organizations })
}

/// Validity (not before, not after; unix seconds) and subject CN of the first certificate of a PEM.
pub fn pem_validity(pem: &str) -> Option<(i64, i64, String)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&pem.contents).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        subject_of(&cert)?.cn,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_validity_are_read_and_garbage_is_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(
            subject(cert.der()),
            Some(Subject {
                cn: "kube-apiserver-kubelet-client".into(),
                organizations: vec!["system:masters".into()]
            })
        );
        let (nb, na, cn) = pem_validity(&cert.pem()).unwrap();
        assert!(nb < na && cn == "kube-apiserver-kubelet-client");
        assert_eq!(subject(b"not a certificate"), None);
        assert_eq!(pem_validity("not a certificate"), None);
    }
}
