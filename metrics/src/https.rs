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
//! Handshakes run off the accept loop ([`crate::accept::handshaken`]), and
//! the certificate is asked of the process's resolver at each one, so a
//! certificate renewed in place (SIGHUP, new files) reaches HTTPS too.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// The pause after a failed `accept` (out of file descriptors...), so that
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

static HTTPS: OnceLock<Arc<ServerConfig>> = OnceLock::new();

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// rustls refused the settings.
    #[error("HTTPS settings refused: {0}")]
    Config(String),
    /// Installed twice in one process.
    #[error("HTTPS settings were installed already in this process")]
    AlreadyInstalled,
}

/// The settings of an HTTPS server presenting what `certificate` holds at
/// each handshake (the process's `--tls-cert`, renewed in place):
/// HTTP/1.1 (what the servers speak), no client certificate.
pub fn server_config(certificate: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, HttpsError> {
    // ring, as every other connection of herd uses.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
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
    ready: Pin<Box<dyn Stream<Item = io::Result<TlsStream<TcpStream>>> + Send>>,
    local: SocketAddr,
}

/// Accepts on `listener` and handshakes each connection with `config`.
pub fn listener(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
    let local = listener.local_addr()?;
    let ready = crate::accept::handshaken(TcpListenerStream::new(listener), config);
    Ok(TlsListener {
        ready: Box::pin(ready),
        local,
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
        loop {
            match self.ready.next().await {
                Some(Ok(tls)) => match tls.get_ref().0.peer_addr() {
                    Ok(peer) => return (tls, peer),
                    // Closed by the client already: nothing to serve.
                    Err(e) => tracing::debug!(error = %e, "HTTPS client gone"),
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // The accepting task is gone (it only ends when this is
                // dropped): nothing more will come.
                None => std::future::pending().await,
            }
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
    fn settings_speak_http1_and_ask_no_client_certificate() {
        #[derive(Debug)]
        struct NoCertificate;
        impl ResolvesServerCert for NoCertificate {
            fn resolve(
                &self,
                _: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                None
            }
        }
        let config = server_config(Arc::new(NoCertificate)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
