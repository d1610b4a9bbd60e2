//! A cap on the connections one IP address may hold open to a server at
//! once (Nomad's `limits.http_max_conns_per_client` / `rpc_max_conns_per_client`):
//! a server's incoming connection stream, wrapped by [`cap_connections`],
//! closes each connection over the cap as soon as it is accepted, so one
//! host opening connections in a loop cannot use up the server's sockets
//! and memory while other hosts keep theirs.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// How many connections each IP address holds, and the most it may.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    max_per_ip: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl ConnectionCap {
    /// At most `max_per_ip` connections per address (at least 1).
    pub fn new(max_per_ip: usize) -> Self {
        Self {
            max_per_ip: max_per_ip.max(1),
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or None when it holds the
    /// most it may.
    pub fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(Slot {
            ip,
            open: self.open.clone(),
        })
    }

    /// How many connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// A connection counted under a [`ConnectionCap`]; reads and writes go
/// straight to the connection, and tonic sees its connect info unchanged.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _slot: Option<Slot>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// `incoming`, with each connection from an address that already holds
/// `cap`'s most closed at once (and logged); `peer` reads a connection's
/// address (None: not counted, as in the deterministic simulation).
/// `cap` None: every connection passes, still wrapped, so the server's
/// type is the same either way.
pub fn cap_connections<S, IO, E, P>(
    incoming: S,
    cap: Option<ConnectionCap>,
    peer: P,
) -> impl Stream<Item = Result<Counted<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send + 'static,
    E: Send + 'static,
    P: Fn(&IO) -> Option<IpAddr> + Send + 'static,
{
    incoming.filter_map(move |accepted| {
        let io = match accepted {
            Ok(io) => io,
            Err(e) => return Some(Err(e)),
        };
        let (Some(cap), Some(ip)) = (&cap, peer(&io)) else {
            return Some(Ok(Counted { io, _slot: None }));
        };
        match cap.admit(ip) {
            Some(slot) => Some(Ok(Counted {
                io,
                _slot: Some(slot),
            })),
            None => {
                tracing::warn!(
                    client = %ip,
                    max = cap.max_per_ip,
                    "connection refused: the address holds the most connections allowed \
                     ([limits] max_connections_per_ip)"
                );
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tonic::codegen::tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back_on_drop() {
        let cap = ConnectionCap::new(2);
        let a = IpAddr::from(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::from(Ipv4Addr::new(10, 0, 0, 2));
        let first = cap.admit(a).expect("first");
        let second = cap.admit(a).expect("second");
        assert!(cap.admit(a).is_none(), "a third from the same address");
        assert!(cap.admit(b).is_some(), "another address");
        drop(first);
        assert_eq!(cap.open(a), 1);
        let third = cap.admit(a).expect("a slot was given back");
        drop((second, third));
        assert_eq!(cap.open(a), 0);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_the_others_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cap = ConnectionCap::new(2);
        let incoming = cap_connections(
            TcpListenerStream::new(listener),
            Some(cap.clone()),
            |s: &tokio::net::TcpStream| s.peer_addr().ok().map(|a| a.ip()),
        );
        // An echo server of one byte per connection.
        tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            while let Some(Ok(mut conn)) = incoming.next().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while conn.read_exact(&mut byte).await.is_ok() {
                        if conn.write_all(&byte).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        async fn echo(conn: &mut TcpStream) -> bool {
            let mut byte = [7u8; 1];
            if conn.write_all(&byte).await.is_err() {
                return false;
            }
            conn.read_exact(&mut byte).await.is_ok() && byte[0] == 7
        }
        let mut one = TcpStream::connect(addr).await.expect("one");
        let mut two = TcpStream::connect(addr).await.expect("two");
        assert!(echo(&mut one).await && echo(&mut two).await);
        let mut three = TcpStream::connect(addr).await.expect("tcp accepts");
        assert!(!echo(&mut three).await, "the third is closed unserved");
        assert!(echo(&mut one).await, "the first still served");
        drop(one);
        // Its slot comes back once the server sees the close.
        let mut served = false;
        for _ in 0..100 {
            let mut again = TcpStream::connect(addr).await.expect("connect");
            if echo(&mut again).await {
                served = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(served, "a new connection is served once one closed");
    }
}
