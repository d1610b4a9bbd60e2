//! HTTPS for herd's HTTP servers (the dashboard, `/metrics`, the agent's
//! OpenAI-compatible endpoint) when the process runs with TLS: the same
//! certificate and key as its gRPC servers, so an operator who set up
//! `--tls-*` has no second thing to set up, and the dashboard's login form
//! never sends a token in the clear.
//!
//! No client certificate is asked for (browsers, Prometheus and LLM
//! clients seldom hold one of the cluster's CA): who may read what is the
//! token's business (docs/security.md). Clients check the server's
//! certificate against the cluster's CA; its names are `<role>.herd`
//! (`<name>.node.herd` for an agent) and whatever `herd tls cert create
//! --dns/--ip` added for the address operators type.
//!
//! The process installs its settings once at start ([`install`], as
//! `herd_api::tls::install` installs the gRPC transport): every HTTP server
//! of the process then serves HTTPS only ([`crate::limits::http::serve`]).
//!
//! Handshakes run in their own tasks (a client that connects and says
//! nothing holds no one up), [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`]: every network input is untrusted.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the
/// kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections handshaken and not yet taken by the server.
const READY_QUEUE: usize = 64;
/// The pause after a failed `accept` (out of file descriptors...), so that
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

static HTTPS: OnceLock<Arc<ServerConfig>> = OnceLock::new();

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The certificate or key is not usable PEM.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the settings.
    #[error("HTTPS settings refused: {0}")]
    Config(String),
    /// Installed twice in one process.
    #[error("HTTPS settings were installed already in this process")]
    AlreadyInstalled,
}

/// The settings of an HTTPS server with certificate chain `cert_pem` and
/// key `key_pem` (PEM, as `--tls-cert` and `--tls-key` hold them): HTTP/1.1
/// (what the servers speak), no client certificate.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, HttpsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpsError::Pem(format!("--tls-cert: not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(HttpsError::Pem(
            "--tls-cert: no PEM CERTIFICATE block".into(),
        ));
    }
    // No detail from the parser: it might quote what it read.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| HttpsError::Pem("--tls-key: not a PEM private key".into()))?;
    // ring, as tonic's `tls-ring` uses for every other connection.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| HttpsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Makes every HTTP server of this process serve HTTPS with `config`.
pub fn install(config: ServerConfig) -> Result<(), HttpsError> {
    HTTPS
        .set(Arc::new(config))
        .map_err(|_| HttpsError::AlreadyInstalled)
}

/// The installed settings, if this process serves HTTPS.
pub fn installed() -> Option<Arc<ServerConfig>> {
    HTTPS.get().cloned()
}

/// `http` or `https`: how this process's HTTP servers are reached, for the
/// addresses it prints.
pub fn scheme() -> &'static str {
    if HTTPS.get().is_some() {
        "https"
    } else {
        "http"
    }
}

/// Connections of a TCP listener after their TLS handshake, for
/// `axum::serve`. Dropping it stops accepting.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Accepts on `listener` and handshakes each connection with `config`.
pub fn listener(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
    let local = listener.local_addr()?;
    let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let accepting = tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let (acceptor, ready_tx) = (acceptor.clone(), ready_tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        // The server stopped taking connections: dropped.
                        let _ = ready_tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener {
        ready,
        local,
        accepting,
    })
}

/// The client address of an HTTPS connection, as axum's connection info.
///
/// Why a type of its own: axum knows a client's `SocketAddr` on its own
/// TCP listener only; handlers and the rate limit read
/// `ConnectInfo<SocketAddr>`, which [`with_peer_addr`] provides from this.
#[derive(Debug, Clone, Copy)]
pub struct HttpsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for HttpsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        HttpsPeer(*stream.remote_addr())
    }
}

/// `router`, its requests carrying `ConnectInfo<SocketAddr>` from
/// [`HttpsPeer`], as they do on plain HTTP.
pub fn with_peer_addr(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_request(
        |mut request: axum::extract::Request| async move {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<HttpsPeer>>()
                .map(|info| info.0 .0);
            if let Some(addr) = peer {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
            }
            request
        },
    ))
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone (it only ends when this is
            // dropped): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_named_by_its_flag() {
        let error = server_config(b"not pem", b"not pem").unwrap_err();
        assert!(error.to_string().contains("--tls-cert"), "{error}");
    }
}
