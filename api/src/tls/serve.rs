//! The rustls settings of herd's gRPC servers under mutual TLS.
//!
//! Why not tonic's `ServerTlsConfig`: it takes a certificate once, at
//! start, and builds rustls settings of its own that nothing can change
//! afterwards, so a certificate renewed on disk would need a restart of
//! every coordinator and agent. These settings are the ones tonic would
//! make (the cluster's CA required of every client, ALPN `h2`) with the
//! certificate asked of a [`CurrentKey`] at each handshake, so that a
//! reload reaches every new connection. The servers accept with them
//! through `herd_metrics::accept::handshaken`, whose TLS streams are
//! tokio-rustls's, which tonic knows: a request's peer certificates and
//! address reach the role guards and the limits as they did.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::current::CurrentKey;

/// The cluster's CA (`ca_pem`, PEM) as rustls's roots.
pub(crate) fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| format!("--tls-ca: not PEM certificates: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("--tls-ca: not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// The settings of a gRPC server: the certificate `key` holds at each
/// handshake, a client certificate of the CA in `ca_pem` required.
pub(crate) fn server_config(
    ca_pem: &[u8],
    key: Arc<CurrentKey>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(super::provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| format!("--tls-ca: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(key);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
