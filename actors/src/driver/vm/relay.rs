//! The target's early listener for an incoming VM migration: the source's
//! QEMU may start sending before the target's QEMU is up.
//!
//! Why: a target QEMU takes tens of milliseconds to start and answer on
//! QMP (about 50 ms under TCG here, plus the agent's executor), and QEMU
//! alone listens only once it runs; a source that waits for it adds that
//! start to every move (docs/benchmarks.md, `herd bench migrate`). So for
//! a VM whose state is memory and devices only (no local disk to mirror
//! first), the target's agent listens at once on the migration host,
//! hands that address to the source, and **holds** what the source sends
//! (up to [`HOLD_LIMIT`]: past it TCP's flow control slows the source)
//! while its QEMU starts; once QEMU listens on a unix socket in the
//! allocation directory ([`SOCKET`]), the relay writes what it holds and
//! then passes the stream through, both ways, until both ends close. The
//! source's pre-copy thus runs while the target starts.
//!
//! The relay carries bytes only and decides nothing: under TLS the stream
//! is QEMU's TLS from end to end (the target's QEMU checks the source's
//! certificate as before), and whether the stream arrived whole is the
//! target QEMU's to say (`ConfirmIncoming` asks it before the switch-over).
//! On any failure (QEMU did not come up, the unix socket broke) the relay
//! drops the source's connection, so the source's migration fails and the
//! move is aborted with the VM running on at its source.
//!
//! Hand-written rather than a proxy crate: it is one accept, one buffer
//! and tokio's `copy_bidirectional_with_sizes`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::driver::live::MigrationHost;
use crate::driver::move_timing;

/// The unix socket, in the allocation directory, that the target's QEMU
/// listens on for the relayed stream (no longer than `qmp.sock`, so the
/// path fits wherever the QMP socket's does).
pub(super) const SOCKET: &str = "mig.sock";
/// The most the relay holds while the target's QEMU starts; at ~50 ms of
/// start and a source sending a few GiB/s, a move fills less than this.
pub const HOLD_LIMIT: usize = 64 << 20;
/// How long the relay waits for the source to connect.
const ACCEPT_WAIT: Duration = Duration::from_secs(300);
/// Bytes per read and write on the stream's way in.
const CHUNK: usize = 1 << 20;
/// Bytes per read and write on the way back (QEMU's return path, if any).
const BACK_CHUNK: usize = 64 << 10;

/// Listens on `host` at a free port; returns the listener and the address
/// the source connects to (`HOST:PORT`).
pub(super) async fn bind(host: &MigrationHost) -> std::io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind((host.host(), 0)).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, host.with_port(port)))
}

/// What a relay passed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes held while the target's QEMU started.
    pub held: u64,
    /// Bytes from the source to QEMU in all.
    pub to_target: u64,
    /// Bytes from QEMU back to the source.
    pub to_source: u64,
}

/// Relays one migration stream for allocation `alloc`: accepts the source's
/// connection on `listener`, holds what it sends until `target` (the target
/// QEMU readying itself) yields the unix socket QEMU listens on, then
/// passes everything through until both ends close. Errors say why; the
/// source's connection is dropped on any.
pub async fn relay<F>(listener: TcpListener, target: F, alloc: &str) -> Result<Relayed, String>
where
    F: Future<Output = Result<PathBuf, String>>,
{
    let mut target = std::pin::pin!(target);
    // The source connects, or the target is ready first.
    let (mut source, socket) = tokio::select! {
        accepted = tokio::time::timeout(ACCEPT_WAIT, listener.accept()) => {
            (accepted_source(accepted, alloc)?, None)
        }
        ready = &mut target => {
            let socket = ready?;
            let accepted = tokio::time::timeout(ACCEPT_WAIT, listener.accept()).await;
            (accepted_source(accepted, alloc)?, Some(socket))
        }
    };
    drop(listener);
    let mut held = Vec::new();
    let mut source_ended = false;
    let socket = match socket {
        Some(socket) => socket,
        None => {
            let mut chunk = vec![0; CHUNK];
            loop {
                let room = if source_ended {
                    0
                } else {
                    CHUNK.min(HOLD_LIMIT - held.len())
                };
                tokio::select! {
                    biased;
                    ready = &mut target => break ready?,
                    read = source.read(&mut chunk[..room]), if room > 0 => match read {
                        Ok(0) => source_ended = true,
                        Ok(n) => held.extend_from_slice(&chunk[..n]),
                        Err(e) => return Err(format!("reading the source's stream: {e}")),
                    },
                }
            }
        }
    };
    let held_bytes = held.len() as u64;
    move_timing::mark(alloc, "vm.in.relay_through", &format!("held={held_bytes}"));
    let mut qemu = UnixStream::connect(&socket)
        .await
        .map_err(|e| format!("connecting to QEMU at {}: {e}", socket.display()))?;
    qemu.write_all(&held)
        .await
        .map_err(|e| format!("writing the held stream to QEMU: {e}"))?;
    drop(held);
    if source_ended {
        // Everything is in: QEMU reads to the end, then closes.
        qemu.shutdown()
            .await
            .map_err(|e| format!("ending the stream to QEMU: {e}"))?;
        let mut back = Vec::new();
        qemu.read_to_end(&mut back)
            .await
            .map_err(|e| format!("reading QEMU's end of the stream: {e}"))?;
        let _ = source.write_all(&back).await;
        return Ok(Relayed {
            held: held_bytes,
            to_target: held_bytes,
            to_source: back.len() as u64,
        });
    }
    let (to_target, to_source) =
        tokio::io::copy_bidirectional_with_sizes(&mut source, &mut qemu, CHUNK, BACK_CHUNK)
            .await
            .map_err(|e| format!("relaying the stream: {e}"))?;
    Ok(Relayed {
        held: held_bytes,
        to_target: held_bytes + to_target,
        to_source,
    })
}

fn accepted_source(
    accepted: Result<
        std::io::Result<(TcpStream, std::net::SocketAddr)>,
        tokio::time::error::Elapsed,
    >,
    alloc: &str,
) -> Result<TcpStream, String> {
    let (stream, peer) = accepted
        .map_err(|_| format!("no source connected within {ACCEPT_WAIT:?}"))?
        .map_err(|e| format!("accepting the source's connection: {e}"))?;
    // Small writes back (a return path) go out at once.
    let _ = stream.set_nodelay(true);
    move_timing::mark(alloc, "vm.in.relay_accepted", &format!("peer={peer}"));
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// A stand-in for the target's QEMU: listens on a unix socket after
    /// `delay`, reads the whole stream, answers `reply`.
    async fn late_target(
        dir: &std::path::Path,
        delay: Duration,
        reply: &'static [u8],
    ) -> (
        impl Future<Output = Result<PathBuf, String>>,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        let path = dir.join(SOCKET);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let listening = path.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let listener = UnixListener::bind(&listening).expect("bind");
            let _ = tx.send(());
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.expect("read");
            stream.write_all(reply).await.expect("reply");
            got
        });
        let ready = async move {
            rx.await
                .map_err(|_| "the target never listened".to_string())?;
            Ok(path)
        };
        (ready, reader)
    }

    #[tokio::test]
    async fn what_the_source_sends_before_the_target_listens_is_held_and_arrives_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let (listener, addr) = bind(&MigrationHost::loopback()).await.expect("bind");
        let (ready, target) = late_target(dir.path(), Duration::from_millis(300), b"ok").await;
        let relay = tokio::spawn(async move { relay(listener, ready, "a1").await });
        let sent = pattern(3 * CHUNK + 12_345);
        let mut source = TcpStream::connect(&addr).await.expect("connect");
        // Half before the target listens (held), half after.
        source.write_all(&sent[..sent.len() / 2]).await.expect("w1");
        tokio::time::sleep(Duration::from_millis(500)).await;
        source.write_all(&sent[sent.len() / 2..]).await.expect("w2");
        source.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        source.read_to_end(&mut back).await.expect("back");
        let relayed = relay.await.expect("join").expect("relayed");
        let got = target.await.expect("target");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the stream arrived changed");
        assert_eq!(back, b"ok");
        assert_eq!(relayed.to_target, sent.len() as u64);
        assert!(
            relayed.held >= (sent.len() / 2) as u64 && relayed.held < sent.len() as u64,
            "{relayed:?}"
        );
        assert_eq!(relayed.to_source, 2);
    }

    #[tokio::test]
    async fn a_source_done_before_the_target_listens_is_delivered_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let (listener, addr) = bind(&MigrationHost::loopback()).await.expect("bind");
        let (ready, target) = late_target(dir.path(), Duration::from_millis(300), b"").await;
        let relay = tokio::spawn(async move { relay(listener, ready, "a2").await });
        let sent = pattern(CHUNK + 7);
        let mut source = TcpStream::connect(&addr).await.expect("connect");
        source.write_all(&sent).await.expect("write");
        source.shutdown().await.expect("shutdown");
        let relayed = relay.await.expect("join").expect("relayed");
        assert!(target.await.expect("target") == sent);
        assert_eq!(relayed.held, sent.len() as u64);
    }

    #[tokio::test]
    async fn a_target_that_fails_to_come_up_cuts_the_source_off() {
        let (listener, addr) = bind(&MigrationHost::loopback()).await.expect("bind");
        let failing = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Err::<PathBuf, _>("QEMU exited before it answered on QMP".to_string())
        };
        let relay = tokio::spawn(async move { relay(listener, failing, "a3").await });
        let mut source = TcpStream::connect(&addr).await.expect("connect");
        source.write_all(&pattern(4096)).await.expect("write");
        let error = relay.await.expect("join").expect_err("failed");
        assert!(error.contains("QEMU exited"), "{error}");
        // The source sees its connection end, as its QEMU's migration would.
        let mut rest = Vec::new();
        // Ends (closed or reset) rather than hanging.
        let _ = tokio::time::timeout(Duration::from_secs(5), source.read_to_end(&mut rest))
            .await
            .expect("the connection ends");
        assert!(rest.is_empty(), "nothing came back");
    }

    #[tokio::test]
    async fn a_source_past_the_hold_limit_waits_for_the_target() {
        let dir = tempfile::tempdir().expect("tmp");
        let (listener, addr) = bind(&MigrationHost::loopback()).await.expect("bind");
        let (ready, target) = late_target(dir.path(), Duration::from_millis(1500), b"").await;
        let relay = tokio::spawn(async move { relay(listener, ready, "a4").await });
        let sent = pattern(HOLD_LIMIT + 8 * CHUNK);
        let writer = tokio::spawn(async move {
            let mut source = TcpStream::connect(&addr).await.expect("connect");
            source.write_all(&sent).await.expect("write");
            source.shutdown().await.expect("shutdown");
            sent
        });
        let relayed = relay.await.expect("join").expect("relayed");
        let sent = writer.await.expect("writer");
        assert!(relayed.held <= HOLD_LIMIT as u64, "{relayed:?}");
        assert_eq!(relayed.to_target, sent.len() as u64);
        assert!(target.await.expect("target") == sent);
    }
}
