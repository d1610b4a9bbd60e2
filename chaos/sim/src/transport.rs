//! gRPC over turmoil's simulated network: the server side's accepted
//! connections and the client side's connector, so that herd's unchanged
//! tonic services and clients run inside the simulation.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use herd_consensus::network::Connector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};
use turmoil::net::{TcpListener, TcpStream};

/// A connection a simulated host accepted.
pub struct SimConn(TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Every connection `listener` accepts, as tonic's server takes them.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<SimConn>> + Send {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| SimConn(stream));
        Some((accepted, listener))
    })
}

/// Dials `HOST:PORT` on the simulated network for tonic.
#[derive(Clone, Copy)]
struct SimDialer;

impl tower_service::Service<Uri> for SimDialer {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| io::Error::other(format!("{uri} names no host")))?;
            Ok(TokioIo::new(TcpStream::connect(authority).await?))
        })
    }
}

/// A lazily connected channel to `addr` over the simulated network.
pub fn channel(addr: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?;
    Ok(endpoint.connect_with_connector_lazy(SimDialer))
}

/// The connector coordinators dial each other with in the simulation.
pub fn connector() -> Connector {
    Arc::new(channel)
}
