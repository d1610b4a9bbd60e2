//! Fuzzing the node agent's gRPC services (issue 24; docs/fuzzing.md):
//! `NodeAgent` (what clients and coordinators ask of it) and `AgentPeer`
//! (agent-to-agent: migration transfers, request KV payloads, balance
//! gossip, offline moves), served by a real agent on 127.0.0.1 whose
//! coordinators are unreachable. Every method gets arbitrary and
//! protobuf-shaped bodies; the migration transfer also gets well-formed
//! chunk streams with valid checksums and hostile paths, offsets and sizes.
//! No handler may panic, and no transfer may write outside its migration's
//! staging directory.
//!
//! Balancing is off on this agent: with it on, the agent would dial the
//! peers that fuzzed gossip names. The balance protocol itself is fuzzed
//! without a network in balance/tests/fuzz.rs.
//!
//! Cases per method: `HERD_FUZZ_CASES` (short by default, for CI).

// Test harness code: a panic here is a test failure with its location
// (clippy.toml allows unwrap/expect in tests; helpers outside #[test] need this).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../api/tests/fuzz_support/grpc.rs"]
mod fuzz_grpc;
#[path = "../../api/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{
    MigrateRequestRequest, OfflineMoveRequest, PrepareIncomingRequest, TransferChunk,
};
use herd_node::migrate::{checksum, IncomingMigration};
use herd_node::{NodeConfig, RunningNode};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost::Message;
use tonic::transport::Channel;

const TARGET: &str = "node/tests/fuzz_peer.rs";
/// The migration the agent is told to expect, so chunks reach the receiver.
const MIGRATION: &str = "m-1";

fn config(data_dir: &Path) -> NodeConfig {
    NodeConfig {
        name: "fuzz-node".into(),
        // Nothing listens there: the agent keeps trying, on loopback.
        coordinators: vec!["127.0.0.1:1".into()],
        listen: "127.0.0.1:0".parse().expect("an address"),
        advertise: "127.0.0.1:0".into(),
        migration_host: Default::default(),
        data_dir: data_dir.to_path_buf(),
        labels: BTreeMap::new(),
        sim_gpus: None,
        gpu_lock_clocks: None,
        reserved_cpu_millis: 0,
        reserved_memory_bytes: 0,
        heartbeat: Duration::from_secs(1),
        stop_grace: Duration::from_secs(1),
        http: None,
        metrics_listen: None,
        token: None,
        limits: Default::default(),
        confinement: Default::default(),
        balance_enabled: false,
        balance: Default::default(),
        reschedule_requests: false,
        reschedule_policy: Default::default(),
    }
}

struct Node {
    running: Option<RunningNode>,
    channel: Channel,
    staging: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the agent on `rt` (the channel's worker is spawned there too).
fn start(rt: &tokio::runtime::Runtime) -> Node {
    let _inside = rt.enter();
    rt.block_on(start_agent())
}

async fn start_agent() -> Node {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data = dir.path().join("data");
    // The staging directory alone in its parent, so escapes show.
    let staging = dir.path().join("incoming").join(MIGRATION);
    std::fs::create_dir_all(&staging).expect("staging dir");
    // No workload is started, so the executor is never run.
    let running = herd_node::start(config(&data), PathBuf::from("/bin/false"))
        .await
        .expect("the agent starts");
    running.incoming.authorize(IncomingMigration {
        migration_id: MIGRATION.into(),
        alloc_id: "alloc-1".into(),
        source_node: "node-a".into(),
        kind: "dljob".into(),
        staging_dir: staging.clone(),
        endpoints: None,
        confirmation: None,
    });
    let channel = Channel::from_shared(format!("http://{}", running.local_addr))
        .expect("a valid uri")
        .connect_lazy();
    Node {
        running: Some(running),
        channel,
        staging,
        _dir: dir,
    }
}

impl Node {
    fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(running) = self.running.take() {
            rt.block_on(running.shutdown());
        }
    }

    /// Whatever exists beside the staging directory (nothing may).
    fn escaped(&self) -> Vec<PathBuf> {
        let parent = self.staging.parent().expect("staging has a parent");
        let mut out: Vec<PathBuf> = std::fs::read_dir(parent)
            .expect("read the incoming dir")
            .map(|e| e.expect("an entry").path())
            .filter(|p| *p != self.staging)
            .collect();
        let root = parent.parent().expect("a root");
        out.extend(
            std::fs::read_dir(root)
                .expect("read the root")
                .map(|e| e.expect("an entry").path())
                .filter(|p| p != parent && !p.ends_with("data")),
        );
        out
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Keeps every address the agent could dial on loopback: a fuzzed server
/// must dial nothing but this machine. Undecodable bodies go as they are
/// (refused before any dial).
fn loopback_only(rpc: &fuzz_support::Rpc, bytes: Vec<u8>) -> Vec<u8> {
    const CLOSED: &str = "127.0.0.1:1";
    match rpc.path().as_str() {
        "/herd.agent.v1.NodeAgent/MigrateRequest" => {
            match MigrateRequestRequest::decode(bytes.as_slice()) {
                Ok(mut m) => {
                    if !m.to_agent.is_empty() {
                        m.to_agent = CLOSED.into();
                    }
                    m.encode_to_vec()
                }
                Err(_) => bytes,
            }
        }
        "/herd.agent.v1.AgentPeer/OfflineMove" => {
            match OfflineMoveRequest::decode(bytes.as_slice()) {
                Ok(mut m) => {
                    if !m.source_addr.is_empty() {
                        m.source_addr = CLOSED.into();
                    }
                    m.encode_to_vec()
                }
                Err(_) => bytes,
            }
        }
        _ => bytes,
    }
}

/// Every method of `NodeAgent` and `AgentPeer`, from the `.proto` files.
#[test]
fn every_agent_method_survives_hostile_bodies() {
    fuzz_support::record_panics();
    let rt = runtime();
    let mut node = start(&rt);
    let rpcs = fuzz_grpc::rpcs_of(TARGET);
    assert!(rpcs.len() >= 10, "too few methods: {rpcs:?}");
    let report = fuzz_grpc::fuzz_methods(
        &rt,
        &node.channel,
        &rpcs,
        fuzz_support::cases(64),
        Duration::from_millis(300),
        loopback_only,
    );
    for (path, t) in &report {
        eprintln!(
            "{path}: {} answered, {} refused, {} timed out",
            t.answered, t.refused, t.timed_out
        );
    }
    let escaped = node.escaped();
    node.stop(&rt);
    assert!(escaped.is_empty(), "written outside staging: {escaped:?}");
    assert!(
        fuzz_support::take_panics().is_empty(),
        "a panic outside any call"
    );
}

/// Paths a hostile source might send.
fn chunk_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "a", "a/b", "ckpt/x.bin", "../x", "a/../../x", "/etc/x", "a//b", "./a", "a\0b",
            "x.herd-partial", "", ".", "a/", "data",
        ]).prop_map(str::to_string),
        2 => "[a-z./]{1,12}",
        1 => (1usize..40).prop_map(|n| vec!["d"; n].join("/")),
        1 => (200usize..300).prop_map(|n| "y".repeat(n)),
        1 => any::<String>(),
    ]
}

fn chunk() -> impl Strategy<Value = TransferChunk> {
    (
        prop_oneof![6 => Just(MIGRATION.to_string()), 1 => fuzz_support::text()],
        chunk_path(),
        fuzz_support::interesting_u64(),
        proptest::collection::vec(any::<u8>(), 0..64),
        prop_oneof![6 => Just(None), 1 => any::<u32>().prop_map(Some)],
        any::<bool>(),
        fuzz_support::interesting_u64(),
        prop_oneof![Just(0o644u32), Just(0o4755), Just(0), any::<u32>()],
    )
        .prop_map(
            |(migration_id, path, offset, data, crc, last, size, mode)| TransferChunk {
                migration_id,
                path,
                offset,
                crc32c: crc.unwrap_or_else(|| checksum(&data)),
                data,
                last,
                size,
                mode,
            },
        )
}

/// Streams of well-formed chunks with valid checksums into the expected
/// migration: the receiver's path, offset, size and mode rules.
#[test]
fn transfer_streams_are_checked_and_stay_in_staging() {
    fuzz_support::record_panics();
    let rt = runtime();
    let mut node = start(&rt);
    let client = AgentPeerClient::new(node.channel.clone());
    let mut runner = TestRunner::new(fuzz_support::config(100));
    let result = runner.run(&proptest::collection::vec(chunk(), 1..6), |chunks| {
        let mut client = client.clone();
        rt.block_on(async {
            let _ = client
                .prepare_incoming(PrepareIncomingRequest {
                    migration_id: MIGRATION.into(),
                    alloc_id: "alloc-1".into(),
                    source_node: "node-a".into(),
                    kind: "dljob".into(),
                })
                .await;
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                client.transfer(tokio_stream::iter(chunks)),
            )
            .await;
        });
        let panics = fuzz_support::take_panics();
        if !panics.is_empty() {
            return Err(TestCaseError::fail(panics.join("\n")));
        }
        let escaped = node.escaped();
        if !escaped.is_empty() {
            return Err(TestCaseError::fail(format!(
                "written outside staging: {escaped:?}"
            )));
        }
        Ok(())
    });
    node.stop(&rt);
    if let Err(e) = result {
        panic!("{e}");
    }
}
