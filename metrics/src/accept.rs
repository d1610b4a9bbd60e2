//! TLS handshakes for herd's servers, off the accept loop.
//!
//! Every server of a process under TLS (gRPC and HTTPS alike) accepts
//! through [`handshaken`]: each connection's handshake runs in a task of
//! its own, [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a client that connects and says nothing holds
//! no one up (every network input is untrusted). A failed handshake is
//! logged at debug and dropped, as tonic's own acceptor does.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// How long a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the
/// kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// Connections handshaken and not yet taken by the server.
const READY_QUEUE: usize = 64;

/// `incoming`'s connections after their TLS handshake with `config`, in
/// the order they finish it; an error of `incoming` itself is passed on.
/// Dropping the stream stops accepting.
pub fn handshaken<S, IO, E>(
    incoming: S,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsStream<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: Send + 'static,
{
    let (ready_tx, ready) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = async {
                let permit = handshakes.clone().acquire_owned().await.ok()?;
                Some((permit, incoming.next().await?))
            };
            let (permit, accepted) = tokio::select! {
                // The server is gone: stop accepting.
                _ = ready_tx.closed() => return,
                next = next => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            let io = match accepted {
                Ok(io) => io,
                Err(e) => {
                    if ready_tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (acceptor, ready_tx) = (acceptor.clone(), ready_tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    // The server stopped taking connections: dropped.
                    Ok(Ok(tls)) => {
                        let _ = ready_tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(ready)
}
