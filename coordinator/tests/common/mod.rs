//! What the coordinator's integration tests share: one real member on
//! loopback over an in-memory store.

// Test code: an unwrap/expect failing here fails the test at its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_consensus::network::DialMap;
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::storage::MemoryStore;
use herd_coordinator::config::StartMode;
use herd_coordinator::start::{start_with, RunningCoordinator};
use herd_coordinator::CoordinatorConfig;
use tokio_stream::wrappers::TcpListenerStream;

/// A one-member cluster bootstrapped on 127.0.0.1 (a free port), its state
/// in memory, nodes kept for ten minutes without heartbeats.
pub async fn start_one() -> RunningCoordinator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = CoordinatorConfig {
        id: 1,
        listen: addr,
        advertise: addr.to_string(),
        data_dir: PathBuf::from("/in-memory/1"),
        mode: StartMode::Bootstrap(BTreeMap::from([(1, addr.to_string())])),
        raft: RaftTuning::default(),
        node_ttl: Duration::from_secs(600),
        dial: DialMap::default(),
        http_listen: None,
        metrics_listen: None,
        join_token: None,
        limits: Default::default(),
        reschedule: herd_coordinator::reschedule::config::Rescheduling::default(),
    };
    start_with(
        config,
        Arc::new(MemoryStore::new()),
        TcpListenerStream::new(listener),
        addr,
    )
    .await
    .expect("start member")
}
