//! A store seeded from a snapshot starts a real one-member Raft cluster that
//! holds the snapshot's pairs at its position and continues the log after it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use herd_consensus::health::PeerHealth;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::log_store::LogStore;
use herd_consensus::network::{DialMap, NetworkFactory};
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::seed::{holds_state, seed, Seed};
use herd_consensus::state_machine::{EntryPosition, StateMachineStore};
use herd_consensus::storage::{KvStore, MemoryStore, WriteOp};
use herd_consensus::types::Proposal;
use herd_consensus::{Application, Raft};

/// Keeps every pair it is given and records each command under its index.
#[derive(Default)]
struct Pairs {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    applied_to: u64,
}

impl Application for Pairs {
    fn apply(&mut self, at: EntryPosition, command: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8> {
        let key = format!("cmd/{}", at.index).into_bytes();
        self.pairs.push((key.clone(), command.to_vec()));
        changes.push(WriteOp::Put(key, command.to_vec()));
        Vec::new()
    }

    fn restore(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        self.pairs = pairs;
        Ok(())
    }

    fn applied_to(&mut self, index: u64) {
        self.applied_to = index;
    }
}

#[tokio::test]
async fn a_seeded_store_starts_a_one_member_cluster_after_the_snapshot() {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let snapshot_pairs = vec![
        (b"job/web".to_vec(), b"spec".to_vec()),
        (b"var/k".to_vec(), b"v".to_vec()),
    ];
    let at = openraft::LogId::new(openraft::CommittedLeaderId::new(7, 3), 500);
    seed(
        store.as_ref(),
        Seed {
            last_log_id: at,
            member: 1,
            addr: "127.0.0.1:1".into(),
            pairs: snapshot_pairs.clone(),
        },
    )
    .expect("seed");
    assert!(holds_state(store.as_ref()).expect("check"));

    let app = Arc::new(RwLock::new(Pairs::default()));
    let sm = StateMachineStore::open(store.clone(), app.clone()).expect("open state machine");
    assert_eq!(app.read().expect("lock").pairs, snapshot_pairs);
    assert_eq!(app.read().expect("lock").applied_to, 500);
    let identity = Arc::new(ClusterIdentity::new(1, None));
    let network = NetworkFactory::new(
        identity,
        Arc::new(PeerHealth::default()),
        DialMap::default(),
    );
    let config = RaftTuning::default().to_openraft().expect("config");
    let log = LogStore::new(store.clone());
    log.forget_leadership().expect("forget");
    let raft = Raft::new(1, config, network, log, sm).await.expect("raft");

    // It elects itself, in a term after the snapshot's.
    let metrics = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader == Some(1), "member 1 leads")
        .await
        .expect("leader");
    assert!(metrics.current_term > 7, "term {}", metrics.current_term);
    assert_eq!(
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(metrics.snapshot, Some(at));

    // New entries follow the snapshot's index; the seeded pairs stay.
    let written = raft
        .client_write(Proposal(b"hello".to_vec()))
        .await
        .expect("write");
    assert!(written.log_id.index > 500, "{:?}", written.log_id);
    let pairs = app.read().expect("lock").pairs.clone();
    assert!(pairs.starts_with(&snapshot_pairs));
    assert_eq!(
        pairs.last(),
        Some(&(
            format!("cmd/{}", written.log_id.index).into_bytes(),
            b"hello".to_vec()
        ))
    );
    raft.shutdown().await.expect("shutdown");
}
