//! The agent-to-agent state transfer over a real tonic `AgentPeer` server on
//! 127.0.0.1: a directory arrives identical, a cut transfer resumes with
//! only the missing bytes (also across a restarted target), and every bad
//! chunk or request is refused with the right code, writing nothing.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{PrepareIncomingRequest, TransferChunk, TransferReply};
use herd_node::migrate::transfer::{self, chunk, SendOptions};
use herd_node::migrate::{
    connect, send_dir, send_with_resume, AgentPeerService, IncomingError, IncomingMigration,
    IncomingRegistry, TransferError, CHUNK_BYTES,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Status};

const ID: &str = "m-1";

struct Target {
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(registry: &IncomingRegistry) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = AgentPeerService::new(
        registry.clone(),
        herd_node::balance::BalanceHandle::new("target"),
    )
    .into_server();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Target { addr, server }
}

fn migration(id: &str, staging: &Path) -> IncomingMigration {
    IncomingMigration {
        migration_id: id.into(),
        alloc_id: "alloc-1".into(),
        source_node: "node-a".into(),
        kind: "dljob".into(),
        staging_dir: staging.to_path_buf(),
        endpoints: None,
        confirmation: None,
    }
}

fn prepare_request(id: &str) -> PrepareIncomingRequest {
    PrepareIncomingRequest {
        migration_id: id.into(),
        alloc_id: "alloc-1".into(),
        source_node: "node-a".into(),
        kind: "dljob".into(),
    }
}

fn client(target: &Target) -> AgentPeerClient<Channel> {
    connect(&target.addr.to_string()).expect("client")
}

/// Deterministic bytes (xorshift), so that a misplaced chunk shows.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const BIG: &str = "nested/deep/big.bin";
const BIG_LEN: usize = 3 * 1024 * 1024 + 123;

/// A tree with empty files, a file of several chunks, nested directories and
/// various modes; returns its total size.
fn make_tree(dir: &Path) -> u64 {
    let files: [(&str, Vec<u8>, u32); 5] = [
        ("empty", Vec::new(), 0o644),
        ("small.txt", pattern(100, 1), 0o640),
        (BIG, pattern(BIG_LEN, 2), 0o600),
        ("nested/run.sh", pattern(5000, 3), 0o755),
        ("nested/empty2", Vec::new(), 0o400),
    ];
    let mut total = 0;
    for (path, data, mode) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(&full, &data).expect("write");
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).expect("chmod");
        total += data.len() as u64;
    }
    total
}

/// Every regular file under `dir`: relative path -> (bytes, mode).
fn read_tree(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("prefix");
                let data = std::fs::read(&path).expect("read");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    (data, meta.permissions().mode() & 0o777),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_same_tree(source: &Path, target: &Path) {
    let a = read_tree(source);
    let b = read_tree(target);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (path, (data, mode)) in &a {
        let (got, got_mode) = &b[path];
        assert!(data == got, "{path}: contents differ");
        assert_eq!(mode, got_mode, "{path}: mode differs");
    }
}

async fn raw_transfer(
    peer: &mut AgentPeerClient<Channel>,
    chunks: Vec<TransferChunk>,
) -> Result<TransferReply, Status> {
    peer.transfer(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

fn no_progress(_: u64) {}

/// What most tests start from: the staging directory `tmp/staging`, a
/// registry that authorized migration [`ID`] into it, a target serving that
/// registry (the test holds it: dropping it stops the server) and a client
/// of that target.
async fn authorized(tmp: &Path) -> (PathBuf, IncomingRegistry, Target, AgentPeerClient<Channel>) {
    let staging = tmp.join("staging");
    let registry = IncomingRegistry::new();
    registry.authorize(migration(ID, &staging));
    let target = serve(&registry).await;
    let peer = client(&target);
    (staging, registry, target, peer)
}

/// [`authorized`], then prepared (`PrepareIncoming` must succeed): ready
/// for chunks.
async fn prepared(tmp: &Path) -> (PathBuf, IncomingRegistry, Target, AgentPeerClient<Channel>) {
    let (staging, registry, target, mut peer) = authorized(tmp).await;
    transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare");
    (staging, registry, target, peer)
}

#[tokio::test]
async fn a_tree_arrives_identical_with_its_modes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    let total = make_tree(&source);
    let (staging, registry, _target, mut peer) = authorized(tmp.path()).await;

    let reply = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare");
    assert!(reply.received.is_empty(), "{:?}", reply.received);
    assert!(staging.is_dir());
    let seen = AtomicU64::new(0);
    let progress = |n: u64| seen.store(n, Ordering::SeqCst);
    let stats = send_dir(&mut peer, ID, &source, &reply.received, None, &progress)
        .await
        .expect("send");
    assert_eq!(stats.bytes_sent, total);
    assert_eq!(seen.load(Ordering::SeqCst), total);
    assert_eq!(stats.files_sent, 5);
    assert_eq!((stats.target_bytes, stats.target_files), (total, 5));
    let status = registry.wait_complete(ID).await.expect("complete");
    assert_eq!(status.progress.bytes, total);
    assert!(
        status.files.iter().all(|f| f.complete),
        "{:?}",
        status.files
    );
    assert_same_tree(&source, &staging);

    // Sent again: everything is whole, only the confirmation goes out.
    let reply = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare again");
    assert_eq!(reply.received.len(), 5);
    let again = send_dir(&mut peer, ID, &source, &reply.received, None, &no_progress)
        .await
        .expect("send again");
    assert_eq!(
        (again.bytes_sent, again.files_skipped, again.chunks),
        (0, 5, 1)
    );
    assert!(registry.wait_complete(ID).await.is_ok());
    assert_same_tree(&source, &staging);
}

/// Sends the first `n` chunks of BIG on a stream, waits until the target
/// holds them, then resets the stream (a cut, not a clean end).
async fn send_then_cut(
    peer: &mut AgentPeerClient<Channel>,
    registry: &IncomingRegistry,
    source: &Path,
    n: usize,
) -> u64 {
    let data = std::fs::read(source.join(BIG)).expect("read");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let cancel = request.cancellation_handle();
    let mut peer = peer.clone();
    let call = tokio::spawn(async move { peer.transfer(request).await });
    for i in 0..n {
        let part = data[i * CHUNK_BYTES..(i + 1) * CHUNK_BYTES].to_vec();
        tx.send(chunk(ID, BIG, (i * CHUNK_BYTES) as u64, part, None))
            .await
            .expect("queue");
    }
    let sent = (n * CHUNK_BYTES) as u64;
    for _ in 0..500 {
        let status = registry.status(ID).await.expect("status").expect("known");
        if status
            .files
            .iter()
            .any(|f| f.path == BIG && f.bytes == sent)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let result = call.await.expect("join");
    assert!(result.is_err(), "a cut stream must not succeed");
    drop(tx);
    sent
}

#[tokio::test]
async fn a_cut_transfer_resumes_with_only_the_missing_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    let total = make_tree(&source);
    let (staging, registry, _target, mut peer) = prepared(tmp.path()).await;

    let held_bytes = send_then_cut(&mut peer, &registry, &source, 3).await;
    let status = registry.status(ID).await.expect("status").expect("known");
    assert!(!status.progress.complete, "a cut stream is not complete");

    let reply = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare after the cut");
    assert_eq!(reply.received.len(), 1, "{:?}", reply.received);
    assert_eq!(reply.received[0].path, BIG);
    assert_eq!(reply.received[0].bytes, held_bytes);
    assert!(!reply.received[0].complete);

    let stats = send_dir(&mut peer, ID, &source, &reply.received, None, &no_progress)
        .await
        .expect("resume");
    assert_eq!(stats.bytes_sent, total - held_bytes);
    assert_eq!(stats.bytes_skipped, held_bytes);
    assert_eq!(stats.target_bytes, total);
    registry.wait_complete(ID).await.expect("complete");
    assert_same_tree(&source, &staging);
}

#[tokio::test]
async fn a_restarted_target_reports_what_it_holds_and_the_transfer_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    let staging = tmp.path().join("staging");
    let total = make_tree(&source);
    let small = std::fs::read(source.join("small.txt")).expect("read");
    let held_bytes = {
        let (_, registry, _target, mut peer) = prepared(tmp.path()).await;
        let whole = chunk(ID, "small.txt", 0, small.clone(), Some((100, 0o640)));
        raw_transfer(&mut peer, vec![whole])
            .await
            .expect("small file");
        send_then_cut(&mut peer, &registry, &source, 2).await + 100
    };

    // A new process: a new registry over the same staging directory.
    let registry = IncomingRegistry::new();
    registry.authorize(migration(ID, &staging));
    let status = registry.status(ID).await.expect("status").expect("known");
    assert_eq!(status.progress.bytes, held_bytes);
    assert_eq!(status.progress.files, 1);
    let held: Vec<_> = status
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.bytes, f.complete))
        .collect();
    assert_eq!(
        held,
        vec![(BIG, held_bytes - 100, false), ("small.txt", 100, true)]
    );

    let target = serve(&registry).await;
    let mut peer = client(&target);
    let stats = send_with_resume(
        &mut peer,
        &prepare_request(ID),
        &source,
        &SendOptions::default(),
        3,
        &no_progress,
    )
    .await
    .expect("resume");
    assert_eq!(stats.bytes_sent, total - held_bytes);
    assert_eq!(stats.files_skipped, 1);
    registry.wait_complete(ID).await.expect("complete");
    assert_same_tree(&source, &staging);
}

#[tokio::test]
async fn send_with_resume_recovers_from_repeated_cuts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    let total = make_tree(&source);
    let (staging, registry, _target, mut peer) = authorized(tmp.path()).await;
    let options = SendOptions {
        cut_after_bytes: Some(1024 * 1024),
        ..SendOptions::default()
    };
    // Each stream is cut after 1 MiB: one stream alone cannot finish.
    let first = transfer::send_dir_with(&mut peer, ID, &source, &[], &options, &no_progress).await;
    assert!(
        matches!(first, Err(TransferError::OutOfStep(_))),
        "no prepare yet: {first:?}"
    );
    let stats = send_with_resume(
        &mut peer,
        &prepare_request(ID),
        &source,
        &options,
        10,
        &no_progress,
    )
    .await
    .expect("resumed to the end");
    assert!(stats.attempts >= 4, "{stats:?}");
    assert!(stats.bytes_sent >= total, "{stats:?}");
    assert_eq!(stats.target_bytes, total);
    registry.wait_complete(ID).await.expect("complete");
    assert_same_tree(&source, &staging);
}

#[tokio::test]
async fn a_corrupt_chunk_is_refused_with_data_loss_and_not_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (staging, registry, _target, mut peer) = prepared(tmp.path()).await;

    let good = chunk(ID, "f.bin", 0, pattern(1000, 7), None);
    let mut bad = chunk(ID, "f.bin", 1000, pattern(1000, 8), None);
    bad.crc32c ^= 1;
    let status = raw_transfer(&mut peer, vec![good, bad])
        .await
        .expect_err("corrupt chunk");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("f.bin"), "{}", status.message());
    assert!(
        status.message().contains("offset 1000"),
        "{}",
        status.message()
    );
    let held = registry.status(ID).await.expect("status").expect("known");
    assert_eq!(held.progress.bytes, 1000, "only the good chunk is held");
    let partial = staging.join("f.bin.herd-partial");
    assert_eq!(std::fs::read(&partial).expect("partial"), pattern(1000, 7));

    // A corrupt first chunk of a new file creates nothing at all.
    let mut bad = chunk(ID, "g.bin", 0, pattern(10, 9), None);
    bad.crc32c = bad.crc32c.wrapping_add(1);
    let status = raw_transfer(&mut peer, vec![bad])
        .await
        .expect_err("corrupt");
    assert_eq!(status.code(), Code::DataLoss);
    assert!(!staging.join("g.bin.herd-partial").exists());
    assert!(!staging.join("g.bin").exists());
}

#[tokio::test]
async fn unsafe_paths_and_bad_chunks_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (staging, _registry, _target, mut peer) = prepared(tmp.path()).await;

    for path in ["../x", "/etc/x", "a//b", "a/../../x", "", "x.herd-partial"] {
        let c = chunk(ID, path, 0, b"evil".to_vec(), Some((4, 0o644)));
        let status = raw_transfer(&mut peer, vec![c]).await.expect_err(path);
        assert_eq!(status.code(), Code::InvalidArgument, "{path:?}: {status:?}");
    }
    assert!(!tmp.path().join("x").exists(), "nothing written outside");
    assert_eq!(std::fs::read_dir(&staging).expect("staging").count(), 0);

    // An offset that does not follow what is held names both.
    let c = chunk(ID, "f", 10, b"late".to_vec(), None);
    let status = raw_transfer(&mut peer, vec![c]).await.expect_err("offset");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("offset 10") && status.message().contains("holds 0"),
        "{}",
        status.message()
    );

    // A last chunk whose size does not add up.
    let c = chunk(ID, "f", 0, b"four".to_vec(), Some((5, 0o644)));
    let status = raw_transfer(&mut peer, vec![c]).await.expect_err("size");
    assert_eq!(status.code(), Code::InvalidArgument);

    // "a" whole, then "a/b": one cannot be both a file and a directory.
    let a = chunk(ID, "a", 0, b"file".to_vec(), Some((4, 0o644)));
    raw_transfer(&mut peer, vec![a]).await.expect("a");
    let ab = chunk(ID, "a/b", 0, b"file".to_vec(), Some((4, 0o644)));
    let status = raw_transfer(&mut peer, vec![ab]).await.expect_err("a/b");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A stream carries one migration.
    let one = chunk(ID, "c", 0, Vec::new(), Some((0, 0o644)));
    let other = chunk("m-2", "d", 0, Vec::new(), Some((0, 0o644)));
    let status = raw_transfer(&mut peer, vec![one, other])
        .await
        .expect_err("two ids");
    assert_eq!(status.code(), Code::InvalidArgument);

    // The sender refuses a symlink rather than follow it.
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::write(source.join("real"), b"x").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", source.join("link")).expect("symlink");
    let err = send_dir(&mut peer, ID, &source, &[], None, &no_progress)
        .await
        .expect_err("symlink");
    assert!(
        matches!(&err, TransferError::Source { message, .. } if message.contains("symlink")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unauthorized_migration_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let staging = tmp.path().join("staging");
    let registry = IncomingRegistry::with_authorization_wait(Duration::from_millis(200));
    let target = serve(&registry).await;
    let mut peer = client(&target);

    let err = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect_err("not authorized");
    assert!(
        matches!(&err, TransferError::Refused { code: Code::FailedPrecondition, message } if message.contains("not the target of migration m-1")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let c = chunk(ID, "f", 0, Vec::new(), Some((0, 0o644)));
    let status = raw_transfer(&mut peer, vec![c])
        .await
        .expect_err("transfer");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(!staging.exists());

    // Authorized, but from another source node.
    registry.authorize(migration(ID, &staging));
    let mut wrong = prepare_request(ID);
    wrong.source_node = "node-z".into();
    let err = transfer::prepare(&mut peer, &wrong)
        .await
        .expect_err("wrong source");
    assert!(err.to_string().contains("source_node"), "{err}");

    // Authorized but never prepared: Transfer asks for PrepareIncoming.
    let c = chunk(ID, "f", 0, Vec::new(), Some((0, 0o644)));
    let status = raw_transfer(&mut peer, vec![c])
        .await
        .expect_err("unprepared");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("PrepareIncoming"), "{status:?}");
}

#[tokio::test]
async fn prepare_waits_for_a_late_authorization_and_readies_endpoints_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let staging = tmp.path().join("staging");
    let registry = IncomingRegistry::new();
    let target = serve(&registry).await;
    let mut peer = client(&target);
    let calls = Arc::new(AtomicU64::new(0));
    let mut incoming = migration(ID, &staging);
    let counted = calls.clone();
    incoming.endpoints = Some(Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            let named = BTreeMap::from([("nbd".to_string(), "127.0.0.1:10809".to_string())]);
            Ok(("127.0.0.1:4444".to_string(), named))
        })
    }));
    let late = registry.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        late.authorize(incoming);
    });
    for _ in 0..2 {
        let reply = transfer::prepare(&mut peer, &prepare_request(ID))
            .await
            .expect("prepare");
        assert_eq!(reply.endpoint, "127.0.0.1:4444");
        assert_eq!(
            reply.endpoints.get("nbd").map(String::as_str),
            Some("127.0.0.1:10809")
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn revoke_deletes_the_staging_dir_unless_taken() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    make_tree(&source);
    let registry = IncomingRegistry::with_authorization_wait(Duration::from_millis(100));
    let target = serve(&registry).await;
    let mut peer = client(&target);

    let staging = tmp.path().join("revoked");
    registry.authorize(migration(ID, &staging));
    let reply = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare");
    send_dir(&mut peer, ID, &source, &reply.received, None, &no_progress)
        .await
        .expect("send");
    assert!(registry.revoke(ID).await.expect("revoke"));
    assert!(!staging.exists(), "revoke removes the staging dir");
    assert!(registry.status(ID).await.expect("status").is_none());
    assert!(transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .is_err());

    let staging = tmp.path().join("taken");
    registry.authorize(migration("m-2", &staging));
    let reply = transfer::prepare(&mut peer, &prepare_request("m-2"))
        .await
        .expect("prepare");
    send_dir(
        &mut peer,
        "m-2",
        &source,
        &reply.received,
        None,
        &no_progress,
    )
    .await
    .expect("send");
    assert_eq!(registry.take("m-2").await, Some(staging.clone()));
    assert!(!registry.revoke("m-2").await.expect("revoke"));
    assert_same_tree(&source, &staging);
}

#[tokio::test]
async fn abort_incoming_is_reported_and_drops_the_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    make_tree(&source);
    let (staging, registry, _target, mut peer) = prepared(tmp.path()).await;
    send_then_cut(&mut peer, &registry, &source, 1).await;
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.wait_complete(ID).await })
    };
    assert_eq!(registry.aborted(ID), None);

    transfer::abort_incoming(&mut peer, ID, "source drained")
        .await
        .expect("abort");
    assert_eq!(registry.aborted(ID).as_deref(), Some("source drained"));
    assert!(!staging.exists(), "the data is dropped");
    let waited = waiter.await.expect("join");
    assert!(
        matches!(&waited, Err(IncomingError::Aborted { reason, .. }) if reason == "source drained"),
        "{waited:?}"
    );
    let err = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect_err("aborted");
    assert!(err.to_string().contains("aborted"), "{err}");
    assert_eq!(registry.take(ID).await, None);
    // Aborting what this node does not know is harmless.
    transfer::abort_incoming(&mut peer, "m-unknown", "")
        .await
        .expect("abort unknown");
}

#[tokio::test]
async fn the_bandwidth_cap_paces_the_transfer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::write(source.join("one"), pattern(512 * 1024, 5)).expect("write");
    let (staging, _registry, _target, mut peer) = prepared(tmp.path()).await;
    let started = std::time::Instant::now();
    // 512 KiB at 2 MiB/s cannot take less than 250 ms.
    send_dir(
        &mut peer,
        ID,
        &source,
        &[],
        Some(2 * 1024 * 1024),
        &no_progress,
    )
    .await
    .expect("send");
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
    assert_same_tree(&source, &staging);
}

#[test]
fn a_bad_address_is_an_error_not_a_panic() {
    let err = connect("not a host:port\n").expect_err("bad address");
    assert!(matches!(err, TransferError::BadAddress { .. }), "{err:?}");
}

#[tokio::test]
async fn a_cut_stream_is_never_taken_for_a_finished_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).expect("mkdir");
    std::fs::write(source.join("a"), pattern(1000, 11)).expect("write");
    std::fs::write(source.join("b"), pattern(1000, 12)).expect("write");
    let (_, registry, _target, mut peer) = prepared(tmp.path()).await;
    // Cut right after "a" is whole: the target then holds no partial file,
    // and only a clean end of the stream could make it complete.
    let options = SendOptions {
        cut_after_bytes: Some(1000),
        ..SendOptions::default()
    };
    let err = transfer::send_dir_with(&mut peer, ID, &source, &[], &options, &no_progress)
        .await
        .expect_err("cut");
    assert!(
        matches!(err, TransferError::Cut(_)) && err.is_retryable(),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = registry.status(ID).await.expect("status").expect("known");
    assert_eq!(status.files.len(), 1, "{:?}", status.files);
    assert!(status.files[0].complete);
    assert!(!status.progress.complete, "{:?}", status.progress);
}

#[tokio::test]
async fn endpoints_readied_early_serve_the_prepare_and_a_revoke_waits_for_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = IncomingRegistry::new();
    let target = serve(&registry).await;
    let mut peer = client(&target);
    // Readying takes 300 ms and counts its calls and ends.
    let calls = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let with_endpoints = |id: &str| {
        let mut incoming = migration(id, &tmp.path().join(id));
        let (counted, finished) = (calls.clone(), done.clone());
        incoming.endpoints = Some(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let finished = finished.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(("127.0.0.1:4444".to_string(), BTreeMap::new()))
            })
        }));
        incoming
    };

    // Readied at authorization; the prepare that comes meanwhile waits for
    // that readiness instead of starting another.
    registry.authorize(with_endpoints(ID));
    registry.ready_early(ID);
    let reply = transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare");
    assert_eq!(reply.endpoint, "127.0.0.1:4444");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "readied once");

    // A revoke while the readiness runs returns only once it ended, so the
    // caller finds what it started and stops it.
    registry.authorize(with_endpoints("m-early"));
    registry.ready_early("m-early");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(done.load(Ordering::SeqCst), 1, "the second is in flight");
    assert!(registry.revoke("m-early").await.expect("revoke"));
    assert_eq!(done.load(Ordering::SeqCst), 2, "revoke waited for it");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without endpoints, nothing is readied.
    registry.authorize(migration("m-none", &tmp.path().join("none")));
    registry.ready_early("m-none");
    registry.ready_early("m-unknown");
    assert!(registry.revoke("m-none").await.expect("revoke"));
}

#[tokio::test]
async fn confirm_incoming_asks_the_kind_after_the_prepare_and_only_of_the_source() {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry = IncomingRegistry::with_authorization_wait(Duration::from_millis(100));
    let target = serve(&registry).await;
    let mut peer = client(&target);
    let wait = Duration::from_millis(300);

    // Unknown here: refused, nothing asked.
    let error = transfer::confirm_incoming(&mut peer, ID, "node-a", wait)
        .await
        .expect_err("not authorized");
    assert!(
        error.to_string().contains("no assignment names it"),
        "{error}"
    );

    // A kind whose own transport says whether everything arrived: the
    // answer is the kind's, given the wait the source asked for (capped).
    let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked_wait = Arc::new(AtomicU64::new(0));
    let mut incoming = migration(ID, &tmp.path().join("staging"));
    incoming.endpoints = Some(Arc::new(|| {
        Box::pin(async { Ok(("127.0.0.1:4444".to_string(), BTreeMap::new())) })
    }));
    let (seen, waited) = (loaded.clone(), asked_wait.clone());
    incoming.confirmation = Some(Arc::new(move |wait| {
        waited.store(wait.as_millis() as u64, Ordering::SeqCst);
        let seen = seen.load(Ordering::SeqCst);
        Box::pin(async move {
            if seen {
                Ok(())
            } else {
                Err("the incoming QEMU is still loading (active)".to_string())
            }
        })
    }));
    registry.authorize(incoming);

    // Before PrepareIncoming readied the endpoints: nothing can have arrived.
    let error = transfer::confirm_incoming(&mut peer, ID, "node-a", wait)
        .await
        .expect_err("not prepared");
    assert!(error.to_string().contains("PrepareIncoming"), "{error}");
    assert_eq!(
        asked_wait.load(Ordering::SeqCst),
        0,
        "the kind was not asked"
    );

    transfer::prepare(&mut peer, &prepare_request(ID))
        .await
        .expect("prepare");
    // Another node may not ask.
    let error = transfer::confirm_incoming(&mut peer, ID, "node-b", wait)
        .await
        .expect_err("not the source");
    assert!(error.to_string().contains("node-b"), "{error}");

    let error = transfer::confirm_incoming(&mut peer, ID, "node-a", wait)
        .await
        .expect_err("still loading");
    assert!(error.to_string().contains("still loading"), "{error}");
    assert!(
        error.to_string().contains("does not hold the whole state"),
        "{error}"
    );
    assert_eq!(asked_wait.load(Ordering::SeqCst), 300);

    loaded.store(true, Ordering::SeqCst);
    transfer::confirm_incoming(&mut peer, ID, "node-a", Duration::from_secs(3600))
        .await
        .expect("loaded: confirmed");
    assert_eq!(
        asked_wait.load(Ordering::SeqCst),
        herd_node::migrate::receiver::MAX_CONFIRM_WAIT.as_millis() as u64,
        "an absurd wait is capped"
    );

    // Aborted by its source: refused whatever the kind would say.
    transfer::abort_incoming(&mut peer, ID, "given up")
        .await
        .expect("abort");
    let error = transfer::confirm_incoming(&mut peer, ID, "node-a", wait)
        .await
        .expect_err("aborted");
    assert!(error.to_string().contains("given up"), "{error}");
}
