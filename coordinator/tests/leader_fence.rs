//! A leader deposed between deciding and proposing: its decision is refused
//! whichever way it reaches the log (forwarded to the next leader, or
//! proposed by the same member after it was elected again in a later term).
//!
//! Three real members on loopback, each on an in-memory store.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_api::node::{NodeInfo, NodeStatus};
use herd_api::resources::Resources;
use herd_consensus::network::DialMap;
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::storage::MemoryStore;
use herd_coordinator::config::StartMode;
use herd_coordinator::coordinator::ReadConsistency;
use herd_coordinator::error::CoordinatorError;
use herd_coordinator::machine::command::{Command, Rejection};
use herd_coordinator::start::{start_with, RunningCoordinator};
use herd_coordinator::{Coordinator, CoordinatorConfig};
use tokio_stream::wrappers::TcpListenerStream;

async fn start_three() -> Vec<RunningCoordinator> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let peers: BTreeMap<u64, String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, a.to_string()))
        .collect();
    let mut members = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = CoordinatorConfig {
            id,
            listen: addrs[i],
            advertise: addrs[i].to_string(),
            data_dir: PathBuf::from(format!("/in-memory/{id}")),
            mode: StartMode::Bootstrap(peers.clone()),
            raft: RaftTuning::default(),
            // No agent heartbeats here: the leader's own liveness loop must
            // not mark the test's node down.
            node_ttl: Duration::from_secs(600),
            dial: DialMap::default(),
            http_listen: None,
            metrics_listen: None,
            join_token: None,
            limits: Default::default(),
            reschedule: herd_coordinator::reschedule::config::Rescheduling::default(),
        };
        members.push(
            start_with(
                config,
                Arc::new(MemoryStore::new()),
                TcpListenerStream::new(listener),
                addrs[i],
            )
            .await
            .expect("start member"),
        );
    }
    members
}

/// The leader and its term, once every member agrees on one.
async fn agreed_leader(members: &[RunningCoordinator], above_term: u64) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<(Option<u64>, u64)> = members
            .iter()
            .map(|m| {
                let metrics = m.coordinator.raft().metrics();
                let m = metrics.borrow();
                (m.current_leader, m.current_term)
            })
            .collect();
        if let (Some(leader), term) = seen[0] {
            if term > above_term && seen.iter().all(|s| *s == (Some(leader), term)) {
                return (leader, term);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed leader above term {above_term}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn member(members: &[RunningCoordinator], id: u64) -> &Arc<Coordinator> {
    &members[id as usize - 1].coordinator
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        addr: "127.0.0.1:1".into(),
        capacity: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: 0,
            gpu_model: None,
        },
        labels: Default::default(),
        status: NodeStatus::Ready,
        eligible: true,
        registered_at_ms: 0,
    }
}

fn mark_down(name: &str) -> Command {
    Command::MarkNodeDown {
        node: name.into(),
        now_ms: 0,
    }
}

async fn status_everywhere(members: &[RunningCoordinator], name: &str) -> Vec<NodeStatus> {
    let mut statuses = Vec::new();
    for m in members {
        m.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await
            .expect("read barrier");
        statuses.push(m.coordinator.read_state(|s| s.nodes[name].status));
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_verdict_is_refused_forwarded_or_proposed_again() {
    let members = start_three().await;
    let (old_leader, old_term) = agreed_leader(&members, 0).await;
    let old = member(&members, old_leader).clone();
    old.write(Command::RegisterNode {
        node: node("n1"),
        now_ms: 0,
    })
    .await
    .expect("register n1");

    // The leader of `old_term` decides n1 is down... and is deposed before
    // proposing: another member calls an election.
    let challenger = (1..=3).find(|id| *id != old_leader).expect("a follower");
    member(&members, challenger)
        .raft()
        .trigger()
        .elect()
        .await
        .expect("trigger an election");
    let (new_leader, new_term) = agreed_leader(&members, old_term).await;
    assert!(new_term > old_term);

    // The old path: `write` forwards the decision to whoever leads now,
    // which appends it in its own term. Refused.
    match old.write(Command::fenced(old_term, mark_down("n1"))).await {
        Err(CoordinatorError::Rejected(Rejection::StaleLeader {
            decided_in,
            appended_in,
        })) => {
            assert_eq!(decided_in, old_term);
            assert!(appended_in > old_term, "appended in {appended_in}");
        }
        other => panic!("a forwarded stale verdict was not refused: {other:?}"),
    }
    // The leader loops' path: proposed here only. Refused whether this
    // member no longer leads or leads again in a later term.
    match old.decide_as_leader(old_term, mark_down("n1")).await {
        Err(CoordinatorError::Unavailable(_)) => assert_ne!(new_leader, old_leader),
        Err(CoordinatorError::Rejected(Rejection::StaleLeader { decided_in, .. })) => {
            assert_eq!(new_leader, old_leader);
            assert_eq!(decided_in, old_term);
        }
        other => panic!("a stale verdict proposed locally was not refused: {other:?}"),
    }
    assert_eq!(
        status_everywhere(&members, "n1").await,
        vec![NodeStatus::Ready; 3],
        "the deposed leader's verdict reached the state"
    );

    // The current leader's own decision in its own term applies.
    member(&members, new_leader)
        .decide_as_leader(new_term, mark_down("n1"))
        .await
        .expect("the current leader's decision");
    assert_eq!(
        status_everywhere(&members, "n1").await,
        vec![NodeStatus::Down; 3]
    );

    for m in members {
        m.shutdown().await;
    }
}
