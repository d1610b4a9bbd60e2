//! The source's side of a migration's state transfer: [`send_dir`] sends a
//! directory's regular files to the target agent's `AgentPeer` service in
//! CRC-32C-checked chunks, through a bounded in-flight window (gRPC/HTTP2
//! flow control behind a bounded queue), optionally paced to a bandwidth
//! cap. It skips what the target already holds whole and resumes partial
//! files from their offset, so [`send_with_resume`] can prepare again after
//! a cut and send only the missing bytes. Every finished transfer ends with
//! an end-of-transfer chunk (the end of its last file again, see
//! [`super::receiver`]), which tells the target it holds everything.
//!
//! Symlinks are refused (the migration fails with the path named): their
//! target would not move with them, and following them could send files
//! from outside the directory. Sockets, FIFOs and devices are skipped with a
//! warning (there is nothing in them to move). Empty directories are not
//! recreated on the target.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{
    AbortIncomingRequest, ConfirmIncomingRequest, PrepareIncomingReply, PrepareIncomingRequest,
    ReceivedFile, TransferChunk, TransferReply,
};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::{check_relative_path, checksum, CHUNK_BYTES, MAX_MESSAGE_BYTES, MAX_PATH_DEPTH};

/// Chunks queued ahead of the network by default (2 MiB at 256 KiB each):
/// the sender reads no further ahead than this.
pub const WINDOW_CHUNKS: usize = 8;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long PrepareIncoming may take (the target waits up to 5 s for its
/// authorization, then readies its endpoints).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long AbortIncoming may take.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings that notice a peer gone silent mid-transfer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a transfer failed. [`TransferError::is_retryable`] tells a cut (prepare
/// again and resume) from a refusal (give the migration up).
#[derive(Debug, Error)]
pub enum TransferError {
    /// The target's address is not usable.
    #[error("target address {addr:?}: {message}")]
    BadAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        message: String,
    },
    /// The stream or connection broke (network, target restart, the fault
    /// hook): what arrived is kept; prepare again and resume.
    #[error("the transfer was cut: {0}")]
    Cut(String),
    /// The target holds something else than the sender assumed (an offset
    /// that does not follow, a restarted target not yet prepared): prepare
    /// again and resume from what it reports.
    #[error("the target is out of step: {0}")]
    OutOfStep(String),
    /// The target found a chunk whose data did not match its CRC-32C and
    /// wrote nothing of it: prepare again and resend.
    #[error("the target received a corrupt chunk: {0}")]
    Corrupted(String),
    /// The target refused the migration or a chunk for good (not its
    /// target, aborted, a path it cannot take, its disk failed...).
    #[error("the target refused ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The target's message.
        message: String,
    },
    /// A local file could not be read or cannot be sent.
    #[error("{path}: {message}")]
    Source {
        /// The local file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The target holds more of a file than the source has (or a whole file
    /// of another size): the state changed since it was sent.
    #[error(
        "file {path:?}: the target holds {held} bytes ({state}) but the source file has {size}"
    )]
    Diverged {
        /// The relative path.
        path: String,
        /// Bytes the target holds.
        held: u64,
        /// "whole" or "partial".
        state: &'static str,
        /// The source file's size.
        size: u64,
    },
}

impl TransferError {
    /// Whether preparing again and resuming can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Cut(_) | Self::OutOfStep(_) | Self::Corrupted(_))
    }

    /// Classifies a status from Transfer.
    fn from_transfer(status: Status) -> Self {
        match status.code() {
            Code::FailedPrecondition => Self::OutOfStep(status.message().to_string()),
            Code::DataLoss => Self::Corrupted(status.message().to_string()),
            _ => Self::from_call(status),
        }
    }

    /// Classifies a status from any call: the codes a broken connection or
    /// stream produces are cuts, the rest refusals.
    fn from_call(status: Status) -> Self {
        match status.code() {
            Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted => Self::Cut(format!("{:?}: {}", status.code(), status.message())),
            code => Self::Refused {
                code,
                message: status.message().to_string(),
            },
        }
    }
}

/// What one transfer (or all the attempts of [`send_with_resume`]) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// File bytes sent (queued onto the stream).
    pub bytes_sent: u64,
    /// Chunks sent, the end-of-transfer chunk included.
    pub chunks: u64,
    /// Files whose last chunk was sent.
    pub files_sent: u32,
    /// Files the target already held whole.
    pub files_skipped: u32,
    /// Bytes the target already held (whole files and partial ones' starts).
    pub bytes_skipped: u64,
    /// Bytes the target reported holding at the end.
    pub target_bytes: u64,
    /// Whole files the target reported holding at the end.
    pub target_files: u32,
    /// Transfer streams opened.
    pub attempts: u32,
}

/// How [`send_dir_with`] sends.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Bytes per second at most; None: as fast as the link and the target go.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Chunks queued ahead of the network (at least 1).
    pub window_chunks: usize,
    /// FAULT-INJECTION HOOK for tests: cut the stream (HTTP/2 reset) once
    /// this many bytes were sent, returning [`TransferError::Cut`].
    pub cut_after_bytes: Option<u64>,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            bandwidth_bytes_per_sec: None,
            window_chunks: WINDOW_CHUNKS,
            cut_after_bytes: None,
        }
    }
}

/// A client for a target agent's `AgentPeer` service at `addr` ("HOST:PORT"),
/// connecting on first use, its message size bounded like the server's.
/// Under TLS any node's certificate passes: use [`connect_to`] when the
/// node is known.
pub fn connect(addr: &str) -> Result<AgentPeerClient<Channel>, TransferError> {
    let endpoint = herd_api::tls::endpoint(addr, herd_api::tls::PeerRole::Node);
    peer_client(addr, endpoint)
}

/// [`connect`] to the agent of node `node` and no other: under TLS its
/// certificate must name that node (`<node>.node.herd`), so an address
/// that now leads to another agent (a stale assignment, a reused port, a
/// redirected route) fails the handshake instead of receiving the move.
pub fn connect_to(addr: &str, node: &str) -> Result<AgentPeerClient<Channel>, TransferError> {
    peer_client(addr, herd_api::tls::node_endpoint(addr, node))
}

fn peer_client(
    addr: &str,
    endpoint: Result<herd_api::tls::Dial, String>,
) -> Result<AgentPeerClient<Channel>, TransferError> {
    let endpoint = endpoint.map_err(|message| TransferError::BadAddress {
        addr: addr.to_string(),
        message,
    })?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false)
        .connect_lazy();
    Ok(AgentPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// [`connect_to`] node `node` at `addr`, or through `connector` when the
/// agent was given one for its peers (the deterministic simulation's
/// network, plaintext).
pub fn connect_via(
    addr: &str,
    node: &str,
    connector: Option<&herd_api::client::Connector>,
) -> Result<AgentPeerClient<Channel>, TransferError> {
    let Some(dial) = connector else {
        // Through a test's proxy when the FAULT-INJECTION dial map says so.
        return connect_to(&crate::balance::dial::resolve(addr), node);
    };
    let channel = dial(addr).map_err(|message| TransferError::BadAddress {
        addr: addr.to_string(),
        message,
    })?;
    Ok(AgentPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// One chunk of `path` at `offset`, its CRC-32C computed; `last`: the file's
/// (size, mode) on its last chunk. For senders of other shapes (a VM's
/// memory pages) that still go through the target's checks.
pub fn chunk(
    migration_id: &str,
    path: &str,
    offset: u64,
    data: Vec<u8>,
    last: Option<(u64, u32)>,
) -> TransferChunk {
    let (size, mode) = last.unwrap_or((0, 0));
    TransferChunk {
        migration_id: migration_id.to_string(),
        path: path.to_string(),
        offset,
        crc32c: checksum(&data),
        data,
        last: last.is_some(),
        size,
        mode,
    }
}

/// Asks the target to ready itself; returns what it holds and its endpoints.
pub async fn prepare(
    peer: &mut AgentPeerClient<Channel>,
    request: &PrepareIncomingRequest,
) -> Result<PrepareIncomingReply, TransferError> {
    let mut call = Request::new(request.clone());
    call.set_timeout(PREPARE_TIMEOUT);
    peer.prepare_incoming(call)
        .await
        .map(tonic::Response::into_inner)
        .map_err(TransferError::from_call)
}

/// Asks the target whether it holds the whole state of a live move
/// (`ConfirmIncoming`), letting it wait up to `wait` for the last of it;
/// the call itself is given a few seconds more. Ok once it does.
pub async fn confirm_incoming(
    peer: &mut AgentPeerClient<Channel>,
    migration_id: &str,
    source_node: &str,
    wait: Duration,
) -> Result<(), TransferError> {
    let mut call = Request::new(ConfirmIncomingRequest {
        migration_id: migration_id.to_string(),
        source_node: source_node.to_string(),
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    });
    call.set_timeout(wait + ABORT_TIMEOUT);
    peer.confirm_incoming(call)
        .await
        .map(|_| ())
        .map_err(TransferError::from_call)
}

/// Tells the target that the source gives the migration up.
pub async fn abort_incoming(
    peer: &mut AgentPeerClient<Channel>,
    migration_id: &str,
    reason: &str,
) -> Result<(), TransferError> {
    let mut call = Request::new(AbortIncomingRequest {
        migration_id: migration_id.to_string(),
        reason: reason.to_string(),
    });
    call.set_timeout(ABORT_TIMEOUT);
    peer.abort_incoming(call)
        .await
        .map(|_| ())
        .map_err(TransferError::from_call)
}

/// Sends `dir` to the target as migration `migration_id`, skipping what it
/// holds (`held`, from PrepareIncoming), paced to `bandwidth_bytes_per_sec`;
/// `progress` gets the bytes sent so far after each chunk.
pub async fn send_dir(
    peer: &mut AgentPeerClient<Channel>,
    migration_id: &str,
    dir: &Path,
    held: &[ReceivedFile],
    bandwidth_bytes_per_sec: Option<u64>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<TransferStats, TransferError> {
    let options = SendOptions {
        bandwidth_bytes_per_sec,
        ..SendOptions::default()
    };
    send_dir_with(peer, migration_id, dir, held, &options, progress).await
}

/// [`send_dir`] with every option.
pub async fn send_dir_with(
    peer: &mut AgentPeerClient<Channel>,
    migration_id: &str,
    dir: &Path,
    held: &[ReceivedFile],
    options: &SendOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<TransferStats, TransferError> {
    let root = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || list_files(&root))
        .await
        .map_err(|e| TransferError::Source {
            path: dir.to_path_buf(),
            message: format!("listing failed: {e}"),
        })??;
    let mut stats = TransferStats::default();
    let held: HashMap<&str, &ReceivedFile> = held.iter().map(|f| (f.path.as_str(), f)).collect();
    let plan = plan(&files, &held, &mut stats)?;
    if files.is_empty() {
        // Nothing to send, and an empty stream would not even name the
        // migration to the target.
        return Ok(stats);
    }

    let (tx, rx) = mpsc::channel(options.window_chunks.max(1));
    let mut request = Request::new(ReceiverStream::new(rx));
    let cancel = request.cancellation_handle();
    stats.attempts = 1;
    let outcome = {
        let call = peer.transfer(request);
        tokio::pin!(call);
        let producer = produce(
            tx.clone(),
            migration_id,
            &files,
            &plan,
            options,
            progress,
            &mut stats,
        );
        tokio::pin!(producer);
        let mut tx = Some(tx);
        let mut produced = false;
        loop {
            tokio::select! {
                reply = &mut call => break Outcome::Reply(reply),
                result = &mut producer, if !produced => {
                    produced = true;
                    match result {
                        // Ends the stream cleanly: the target learns that
                        // everything was sent.
                        Ok(()) => tx = None,
                        // The stream ended under the producer: the call's
                        // status says why.
                        Err(Produce::Closed) => {}
                        Err(Produce::Failed(e)) => break Outcome::Failed(e, tx.take()),
                    }
                }
            }
        }
    };
    match outcome {
        Outcome::Reply(reply) => {
            let TransferReply { bytes, files } =
                reply.map_err(TransferError::from_transfer)?.into_inner();
            stats.target_bytes = bytes;
            stats.target_files = files;
            Ok(stats)
        }
        Outcome::Failed(e, tx) => {
            // Reset the stream rather than end it, so that the target does
            // not take a failed transfer for a finished one.
            cancel.cancel();
            drop(tx);
            Err(e)
        }
    }
}

/// Prepares the target and sends `dir`; after a cut (or a target out of
/// step, or a corrupt chunk) prepares again and resumes from what the
/// target holds, up to `attempts` tries (prepare and transfer) in all,
/// waiting a little longer each time. `progress` gets the bytes sent over
/// all tries. In the stats, `bytes_sent` and `attempts` count every try,
/// `bytes_skipped`/`files_skipped` what the target held at the first
/// prepare, `chunks`/`files_sent` the last try.
pub async fn send_with_resume(
    peer: &mut AgentPeerClient<Channel>,
    request: &PrepareIncomingRequest,
    dir: &Path,
    options: &SendOptions,
    attempts: u32,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<TransferStats, TransferError> {
    let mut total = TransferStats::default();
    let mut first_prepare = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        total.attempts += 1;
        let sent_before = total.bytes_sent;
        // What this attempt sent, known even when it fails.
        let sent = std::sync::atomic::AtomicU64::new(0);
        let report = |n: u64| {
            sent.store(n, std::sync::atomic::Ordering::Relaxed);
            progress(sent_before + n);
        };
        let result = match prepare(peer, request).await {
            Ok(reply) => {
                if first_prepare {
                    first_prepare = false;
                    total.bytes_skipped = reply.received.iter().map(|f| f.bytes).sum();
                    total.files_skipped =
                        reply.received.iter().filter(|f| f.complete).count() as u32;
                }
                send_dir_with(
                    peer,
                    &request.migration_id,
                    dir,
                    &reply.received,
                    options,
                    &report,
                )
                .await
            }
            Err(e) => Err(e),
        };
        total.bytes_sent += sent.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(stats) => {
                total.chunks += stats.chunks;
                total.files_sent += stats.files_sent;
                total.target_bytes = stats.target_bytes;
                total.target_files = stats.target_files;
                return Ok(total);
            }
            Err(e) if e.is_retryable() && total.attempts < attempts => {
                tracing::warn!(migration = %request.migration_id, attempt = total.attempts, error = %e, "transfer cut; resuming");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
            Err(e) => return Err(e),
        }
    }
}

enum Outcome {
    Reply(Result<tonic::Response<TransferReply>, Status>),
    Failed(TransferError, Option<mpsc::Sender<TransferChunk>>),
}

enum Produce {
    /// The stream's receiving end is gone: the call ended.
    Closed,
    Failed(TransferError),
}

/// A regular file to send.
#[derive(Debug)]
struct LocalFile {
    rel: String,
    path: PathBuf,
    size: u64,
    mode: u32,
}

/// Where each file starts (None: already whole on the target).
fn plan(
    files: &[LocalFile],
    held: &HashMap<&str, &ReceivedFile>,
    stats: &mut TransferStats,
) -> Result<Vec<Option<u64>>, TransferError> {
    files
        .iter()
        .map(|file| {
            let Some(h) = held.get(file.rel.as_str()) else {
                return Ok(Some(0));
            };
            let diverged = |state| TransferError::Diverged {
                path: file.rel.clone(),
                held: h.bytes,
                state,
                size: file.size,
            };
            if h.complete {
                if h.bytes != file.size {
                    return Err(diverged("whole"));
                }
                stats.files_skipped += 1;
                stats.bytes_skipped += h.bytes;
                Ok(None)
            } else {
                if h.bytes > file.size {
                    return Err(diverged("partial"));
                }
                stats.bytes_skipped += h.bytes;
                Ok(Some(h.bytes))
            }
        })
        .collect()
}

/// Paces chunks to a rate: each waits until the bytes before it fit.
struct Pacer {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Pacer {
    async fn admit(&mut self, n: usize) {
        let Some(rate) = self.rate.filter(|r| *r > 0) else {
            return;
        };
        self.bytes += n as u64;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
}

async fn produce(
    tx: mpsc::Sender<TransferChunk>,
    migration_id: &str,
    files: &[LocalFile],
    plan: &[Option<u64>],
    options: &SendOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
    stats: &mut TransferStats,
) -> Result<(), Produce> {
    let mut pacer = Pacer {
        rate: options.bandwidth_bytes_per_sec,
        start: Instant::now(),
        bytes: 0,
    };
    let source = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| {
            Produce::Failed(TransferError::Source {
                path,
                message: e.to_string(),
            })
        }
    };
    let send = |chunk: TransferChunk, stats: &mut TransferStats| {
        stats.chunks += 1;
        stats.bytes_sent += chunk.data.len() as u64;
        let tx = tx.clone();
        async move { tx.send(chunk).await.map_err(|_| Produce::Closed) }
    };
    for (file, start) in files.iter().zip(plan) {
        let Some(start) = *start else { continue };
        let mut reader = tokio::fs::File::open(&file.path)
            .await
            .map_err(source(&file.path))?;
        reader
            .seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(source(&file.path))?;
        let mut offset = start;
        loop {
            let n = usize::try_from((file.size - offset).min(CHUNK_BYTES as u64))
                .unwrap_or(CHUNK_BYTES);
            let mut data = vec![0; n];
            reader.read_exact(&mut data).await.map_err(|e| {
                Produce::Failed(TransferError::Source {
                    path: file.path.clone(),
                    message: format!(
                        "reading {n} bytes at offset {offset}: {e} (did the file change?)"
                    ),
                })
            })?;
            let last = offset + n as u64 == file.size;
            pacer.admit(n).await;
            let c = chunk(
                migration_id,
                &file.rel,
                offset,
                data,
                last.then_some((file.size, file.mode)),
            );
            send(c, stats).await?;
            offset += n as u64;
            progress(stats.bytes_sent);
            if let Some(cut) = options.cut_after_bytes {
                if stats.bytes_sent >= cut {
                    // Let the queue drain so that the target gets what was
                    // counted as sent, then cut.
                    while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(Produce::Failed(TransferError::Cut(format!(
                        "cut by the fault-injection hook after {} bytes",
                        stats.bytes_sent
                    ))));
                }
            }
            if last {
                stats.files_sent += 1;
                break;
            }
        }
    }
    // The end-of-transfer mark: the end of the last file again, so that the
    // target knows everything was sent (the end of the stream cannot tell
    // it: a cancelled stream reads as ended).
    if let Some(file) = files.last() {
        let end = chunk(
            migration_id,
            &file.rel,
            file.size,
            Vec::new(),
            Some((file.size, file.mode)),
        );
        send(end, stats).await?;
    }
    Ok(())
}

/// The regular files under `dir`, sorted by relative path.
fn list_files(dir: &Path) -> Result<Vec<LocalFile>, TransferError> {
    let meta = std::fs::metadata(dir).map_err(|e| TransferError::Source {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(TransferError::Source {
            path: dir.to_path_buf(),
            message: "not a directory".into(),
        });
    }
    let mut files = Vec::new();
    walk(dir, "", 0, &mut files)?;
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

fn walk(
    dir: &Path,
    rel: &str,
    depth: usize,
    files: &mut Vec<LocalFile>,
) -> Result<(), TransferError> {
    let source = |path: &Path, message: String| TransferError::Source {
        path: path.to_path_buf(),
        message,
    };
    if depth >= MAX_PATH_DEPTH {
        return Err(source(
            dir,
            format!("deeper than {MAX_PATH_DEPTH} directories"),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| source(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| source(dir, e.to_string()))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(source(&path, "the name is not UTF-8".into()));
        };
        let rel_path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|e| source(&path, e.to_string()))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(source(
                &path,
                "is a symlink: migrations send regular files only".into(),
            ));
        }
        if kind.is_dir() {
            walk(&path, &rel_path, depth + 1, files)?;
        } else if kind.is_file() {
            check_relative_path(&rel_path).map_err(|m| source(&path, m))?;
            files.push(LocalFile {
                rel: rel_path,
                path,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o777,
            });
        } else {
            tracing::warn!(path = %path.display(), "not a regular file: not sent");
        }
    }
    Ok(())
}
