//! Dialing a peer under mutual TLS, with the server's certificate checked
//! against the cluster's revocations as well as its CA and name.
//!
//! Why herd dials through its own connector rather than tonic's TLS
//! settings: tonic's `ClientTlsConfig` accepts roots and a name, not a
//! certificate check of our own, and a revoked certificate must be refused
//! on the dialing side too: a revoked node whose key leaked still serves
//! the agent-to-agent service, and an agent that dials it (to gossip, to
//! move work to it while the coordinators are away) would otherwise trust
//! it. So a dial under TLS is a plain TCP connection, a rustls handshake
//! with this process's certificate and a verifier that refuses a revoked
//! server certificate ([`NotRevoked`]), and a stream that fails its next
//! read or write once the certificate it saw is revoked later
//! ([`Checked`]): channels are long-lived, and a revocation must not wait
//! for them to reconnect. The handshake is otherwise the one tonic would
//! make: the cluster's CA as the only root, the name checked, ALPN `h2`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use tower_service::Service;

use super::current::CurrentKey;
use super::revocation;

/// The rustls settings of every dial of a process: the certificate `key`
/// holds at each handshake as the client's (renewed on reload), the
/// cluster's CA as the only root, revoked servers refused.
pub(crate) fn client_config(
    ca_pem: &[u8],
    key: Arc<CurrentKey>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(super::provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(super::serve::roots(ca_pem)?, provider.clone())
            .build()
            .map_err(|e| format!("--tls-ca: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NotRevoked(webpki)))
        .with_client_cert_resolver(key);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session skips the server's certificate check, revocations
    // included: every connection makes a full handshake (channels are
    // long-lived, so this costs little).
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The CA's and the name's check (webpki's), then the revocations'.
#[derive(Debug)]
struct NotRevoked(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for NotRevoked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if revocation::is_revoked(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// How to reach one peer: a tonic endpoint, and under TLS the handshake
/// herd makes itself. Built by [`super::endpoint`] and
/// [`super::node_endpoint`]; set like an [`Endpoint`], then connected.
#[derive(Clone, Debug)]
pub struct Dial {
    endpoint: Endpoint,
    tls: Option<TlsDial>,
}

impl Dial {
    /// A plaintext dial of `endpoint`.
    pub(super) fn plain(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            tls: None,
        }
    }

    /// A dial of `addr` (`HOST:PORT`) under TLS with `material`'s
    /// settings and certificate, the server checked for `server_name`.
    pub(super) fn tls(
        addr: &str,
        material: &super::TlsMaterial,
        server_name: String,
    ) -> Result<Self, String> {
        // The scheme is tonic's business only (its own TLS is not used):
        // the connector below makes the TLS connection.
        let endpoint =
            Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(server_name)
            .map_err(|e| format!("{addr}: cannot check the peer's name: {e}"))?;
        Ok(Self {
            endpoint,
            tls: Some(TlsDial {
                config: material.dialer(),
                own: material.current_key(),
                server_name,
                // tonic's default, which `tcp_nodelay` changes.
                nodelay: true,
            }),
        })
    }

    /// [`Endpoint::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.connect_timeout(timeout);
        self
    }

    /// [`Endpoint::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// [`Endpoint::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.endpoint = self.endpoint.tcp_nodelay(enabled);
        if let Some(tls) = &mut self.tls {
            tls.nodelay = enabled;
        }
        self
    }

    /// [`Endpoint::http2_keep_alive_interval`].
    pub fn http2_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.endpoint = self.endpoint.http2_keep_alive_interval(interval);
        self
    }

    /// [`Endpoint::keep_alive_timeout`].
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.keep_alive_timeout(timeout);
        self
    }

    /// [`Endpoint::keep_alive_while_idle`].
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.endpoint = self.endpoint.keep_alive_while_idle(enabled);
        self
    }

    /// A channel that connects on its first call (and again after a
    /// broken connection).
    pub fn connect_lazy(self) -> Channel {
        match self.tls {
            None => self.endpoint.connect_lazy(),
            Some(tls) => self.endpoint.connect_with_connector_lazy(tls),
        }
    }

    /// A channel connected now.
    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.tls {
            None => self.endpoint.connect().await,
            Some(tls) => self.endpoint.connect_with_connector(tls).await,
        }
    }
}

/// The connector of a TLS dial: TCP, then the handshake.
#[derive(Clone)]
struct TlsDial {
    config: Arc<ClientConfig>,
    /// What the handshake presents as this process's certificate.
    own: Arc<CurrentKey>,
    server_name: ServerName<'static>,
    nodelay: bool,
}

impl std::fmt::Debug for TlsDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDial")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Service<Uri> for TlsDial {
    type Response = TokioIo<Checked>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no address in {uri}"))
            })?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            // Read before the check below: a change after it is seen at
            // the first read or write.
            let checked_at = revocation::generation();
            // Read before the handshake asks for the certificate: a reload
            // in between retires a connection made with the new one
            // needlessly, never keeps one made with the old.
            let own_generation = dial.own.generation();
            tcp.set_nodelay(dial.nodelay)?;
            let tls = TlsConnector::from(dial.config)
                .connect(dial.server_name, tcp)
                .await?;
            let server_certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.as_ref().to_vec())
                .unwrap_or_default();
            if revocation::is_revoked(&server_certificate) {
                return Err(revoked());
            }
            Ok(TokioIo::new(Checked {
                inner: tls,
                server_certificate,
                own: dial.own.clone(),
                own_generation,
                checked_at,
                revoked: false,
            }))
        })
    }
}

/// A dialed TLS stream that fails once the server's certificate is
/// revoked, at its next read or write: the check costs an atomic load
/// until the revoked set changes. Likewise once this process has renewed
/// its own certificate (SIGHUP): the channel dials again and presents the
/// renewed one, so that revoking the old certificate afterwards (a stolen
/// key) cuts off no connection of the process itself. Waiting for the
/// revocation to reach the process instead would leave its connections
/// refused by the servers, which learn of it first, for as long as it
/// takes (an agent reads the revocations every few seconds). The cost is
/// one failed read or write per connection per renewal.
struct Checked {
    inner: TlsStream<TcpStream>,
    /// The server's certificate (DER).
    server_certificate: Vec<u8>,
    /// What this process presents, and how many renewals it had seen when
    /// it made this connection.
    own: Arc<CurrentKey>,
    own_generation: u64,
    /// The revoked set's generation last checked against.
    checked_at: u64,
    /// The certificate was found revoked: every read and write fails.
    revoked: bool,
}

impl Checked {
    fn still_trusted(&mut self) -> io::Result<()> {
        let now = revocation::generation();
        if now != self.checked_at {
            self.checked_at = now;
            self.revoked = self.revoked || revocation::is_revoked(&self.server_certificate);
        }
        if self.revoked {
            return Err(revoked());
        }
        if self.own.generation() != self.own_generation {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "this process renewed its certificate: dialing again with the new one",
            ));
        }
        Ok(())
    }
}

/// The error of a connection to a server whose certificate is revoked.
fn revoked() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the server's certificate was revoked (`herd tls cert revoke`)",
    )
}

impl AsyncRead for Checked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.still_trusted()?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Checked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.still_trusted()?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.still_trusted()?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
