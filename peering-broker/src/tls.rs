//! TLS for the broker: its self-signed certificate (pinned by fingerprint in tokens), the server config
//! (client certificates optional, verified against the provider's apiserver CA when given), and a
//! minimal HTTPS/1.1 client that trusts exactly one pinned certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The crypto provider everything here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh self-signed broker certificate for `hosts` (PEM cert, PEM key).
pub fn self_signed(hosts: &[String]) -> crate::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry peering broker");
    Ok((params.self_signed(&key)?.pem(), key.serialize_pem()))
}

/// SHA-256 (hex) of the first certificate in a PEM.
pub fn pin_of_pem(cert_pem: &str) -> crate::Result<String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// The server config: our cert; client certificates optional, and when present they must chain to
/// `client_ca_pem` (the provider apiserver's CA, which signs the consumer identities).
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: &str,
) -> crate::Result<rustls::ServerConfig> {
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?)
}

#[derive(Debug)]
struct Pinned {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "TLS fingerprint mismatch: the broker presented {got}, the token pins {}",
                self.pin
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client identity for mTLS (PEM cert and key).
pub struct ClientCert<'a> {
    /// Certificate PEM.
    pub cert: &'a str,
    /// Key PEM.
    pub key: &'a str,
}

/// The largest answer read from a broker (anything longer is refused, not buffered).
pub const MAX_RESPONSE: u64 = 1024 * 1024;
/// The largest answer of `GET /v1/stats` (a tenant's figures: some 400 bytes a pod).
pub const MAX_STATS_RESPONSE: u64 = 16 * 1024 * 1024;
/// How long one call to a broker may take, connection and TLS included.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One HTTPS request to `url` (`https://host:port`) trusting only the certificate with `pin`. Returns the
/// status and body. Errors name the endpoint. The answer is untrusted: bounded to [`MAX_RESPONSE`] bytes and
/// [`REQUEST_TIMEOUT`].
pub async fn request(
    url: &str,
    pin: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    client: Option<ClientCert<'_>>,
) -> crate::Result<(u16, Vec<u8>)> {
    request_limited(url, pin, method, path, body, client, MAX_RESPONSE).await
}

/// [`request`] reading at most `limit` bytes of the answer.
pub async fn request_limited(
    url: &str,
    pin: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    client: Option<ClientCert<'_>>,
    limit: u64,
) -> crate::Result<(u16, Vec<u8>)> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_unbounded_in_time(url, pin, method, path, body, client, limit),
    )
    .await
    .map_err(|_| {
        invalid!(
            "{method} {url}{path}: no complete answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        )
    })?
}

async fn request_unbounded_in_time(
    url: &str,
    pin: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    client: Option<ClientCert<'_>>,
    limit: u64,
) -> crate::Result<(u16, Vec<u8>)> {
    use ferry_plumbing::context::Context;
    let hostport = url
        .strip_prefix("https://")
        .context("broker URL must start with https://")?
        .trim_end_matches('/');
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
        .trim_matches(['[', ']']);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin: pin.to_string(),
            provider: provider(),
        }));
    let config = match client {
        Some(c) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(c.cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(c.key.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(hostport)
        .await
        .with_context(|| format!("connecting to the broker at {hostport}"))?;
    let name = ServerName::try_from(host.to_string()).context("broker host name")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with the broker at {hostport}"))?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // a server may answer before it has read the whole body (413) and close: its answer wins over the
    // broken pipe, which is only the error when no answer came
    let sent = async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(body).await?;
        tls.flush().await
    }
    .await;
    let mut resp = Vec::new();
    // a server that closes without close_notify is fine once the body is in
    let _ = (&mut tls).take(limit + 1).read_to_end(&mut resp).await;
    if resp.len() as u64 > limit {
        bail!("the broker at {hostport} answered with more than {limit} bytes");
    }
    let Some(split) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        sent.with_context(|| format!("sending the request to {hostport}"))?;
        bail!("no HTTP response from {hostport}");
    };
    let status: u16 = String::from_utf8_lossy(&resp[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP status")?;
    Ok((status, resp[split + 4..].to_vec()))
}
