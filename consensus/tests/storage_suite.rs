//! openraft's own storage conformance suite, run against herd's log and
//! state machine on both storage engines.

use std::sync::{Arc, RwLock};

use herd_consensus::log_store::LogStore;
use herd_consensus::state_machine::StateMachineStore;
use herd_consensus::storage::{KvStore, MemoryStore, SledStore, WriteOp};
use herd_consensus::types::{StorageError, TypeConfig};
use herd_consensus::Application;
use openraft::testing::{StoreBuilder, Suite};

/// Counts commands and remembers the last one: enough to check persistence.
#[derive(Default)]
struct Counter {
    applied: u64,
}

impl Application for Counter {
    fn apply(&mut self, index: u64, command: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8> {
        self.applied += 1;
        changes.push(WriteOp::Put(
            b"count".to_vec(),
            self.applied.to_be_bytes().to_vec(),
        ));
        changes.push(WriteOp::Put(
            format!("cmd/{index}").into_bytes(),
            command.to_vec(),
        ));
        self.applied.to_be_bytes().to_vec()
    }

    fn restore(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        self.applied = 0;
        for (k, v) in pairs {
            if k == b"count" {
                let bytes: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| "bad count".to_string())?;
                self.applied = u64::from_be_bytes(bytes);
            }
        }
        Ok(())
    }
}

struct Builder<F: Fn() -> (Option<tempfile::TempDir>, Arc<dyn KvStore>) + Send + Sync>(F);

impl<F> StoreBuilder<TypeConfig, LogStore, StateMachineStore<Counter>, Option<tempfile::TempDir>>
    for Builder<F>
where
    F: Fn() -> (Option<tempfile::TempDir>, Arc<dyn KvStore>) + Send + Sync,
{
    async fn build(
        &self,
    ) -> Result<
        (
            Option<tempfile::TempDir>,
            LogStore,
            StateMachineStore<Counter>,
        ),
        StorageError,
    > {
        let (guard, store) = (self.0)();
        let log = LogStore::new(store.clone());
        let sm = StateMachineStore::open(store, Arc::new(RwLock::new(Counter::default())))?;
        Ok((guard, log, sm))
    }
}

#[test]
fn memory_store_passes_openraft_suite() {
    Suite::test_all(Builder(|| {
        (None, Arc::new(MemoryStore::new()) as Arc<dyn KvStore>)
    }))
    .expect("suite");
}

#[test]
fn sled_store_passes_openraft_suite() {
    Suite::test_all(Builder(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open sled");
        (Some(dir), Arc::new(store) as Arc<dyn KvStore>)
    }))
    .expect("suite");
}

fn normal_entry(index: u64) -> herd_consensus::types::Entry {
    openraft::Entry {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: openraft::EntryPayload::Normal(herd_consensus::types::Proposal(vec![])),
    }
}

#[tokio::test]
async fn applied_state_is_persisted_in_batches_and_before_every_snapshot() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn KvStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let reopen = || {
        StateMachineStore::open(store.clone(), Arc::new(RwLock::new(Counter::default())))
            .expect("reopen")
    };
    let mut sm = reopen();
    sm.apply((1..=3).map(normal_entry)).await.expect("apply");
    assert_eq!(
        sm.applied_state().await.expect("state").0.map(|l| l.index),
        Some(3)
    );

    // Not written yet: a member restarting now resumes from an earlier
    // position, and Raft re-applies the rest from its durable log.
    let mut restarted = reopen();
    assert_eq!(restarted.applied_state().await.expect("state").0, None);

    // A snapshot is built only from persisted state, so it persists first.
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
    let mut restarted = reopen();
    assert_eq!(
        restarted
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index),
        Some(3)
    );

    // Changes wait at most about 100 ms: the first apply after that writes
    // them with their position.
    sm.apply([normal_entry(4)]).await.expect("apply");
    assert_eq!(
        reopen()
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index),
        Some(3)
    );
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    sm.apply([normal_entry(5)]).await.expect("apply");
    assert_eq!(
        reopen()
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index),
        Some(5)
    );
}
