//! openraft's own storage conformance suite, run against herd's log and
//! state machine on both storage engines.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, RwLock};

use herd_consensus::log_store::LogStore;
use herd_consensus::state_machine::{EntryPosition, StateMachineStore};
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
    fn apply(&mut self, at: EntryPosition, command: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8> {
        let index = at.index;
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
    // The applied index a member restarting now would resume from.
    let persisted = || async {
        reopen()
            .applied_state()
            .await
            .expect("state")
            .0
            .map(|l| l.index)
    };
    let mut sm = reopen();
    sm.apply((1..=3).map(normal_entry)).await.expect("apply");
    assert_eq!(
        sm.applied_state().await.expect("state").0.map(|l| l.index),
        Some(3)
    );

    // Not written yet: a member restarting now resumes from an earlier
    // position, and Raft re-applies the rest from its durable log.
    assert_eq!(persisted().await, None);

    // A snapshot is built only from persisted state, so it persists first.
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
    assert_eq!(persisted().await, Some(3));

    // Changes wait at most about 100 ms: the first apply after that writes
    // them with their position.
    sm.apply([normal_entry(4)]).await.expect("apply");
    assert_eq!(persisted().await, Some(3));
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    sm.apply([normal_entry(5)]).await.expect("apply");
    assert_eq!(persisted().await, Some(5));
}

/// Appends `entries` and waits until the flusher acknowledges them.
async fn append_durably(log: &mut LogStore, entries: Vec<herd_consensus::types::Entry>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn purged_entries_are_discarded_behind_raft_and_never_count() {
    use openraft::storage::{RaftLogReader, RaftLogStorage};

    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn KvStore> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let mut log = LogStore::new(store.clone());
    append_durably(&mut log, (1..=2000).map(normal_entry).collect()).await;

    // Purging the whole log: Raft sees it gone at once, whether or not the
    // purger thread has discarded the entries yet.
    let purge_point = normal_entry(2000).log_id;
    log.purge(purge_point).await.expect("purge");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(purge_point));
    assert_eq!(
        state.last_log_id,
        Some(purge_point),
        "leftovers never count"
    );

    // The purger discards them soon after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store
        .last(herd_consensus::storage::Space::Log)
        .expect("last")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "purged entries stay on disk"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Entries a crash left behind the purge point never count...
    let leftovers: Vec<WriteOp> = (1990..2000u64)
        .map(|i| {
            let bytes = herd_consensus::codec::encode(&normal_entry(i)).expect("encode");
            WriteOp::Put(i.to_be_bytes().to_vec(), bytes)
        })
        .collect();
    store
        .write(herd_consensus::storage::Space::Log, leftovers)
        .expect("plant leftovers");
    assert_eq!(
        log.get_log_state().await.expect("state").last_log_id,
        Some(purge_point),
        "an entry behind the purge point was taken for the last one"
    );
    // ...and are discarded on reopening, while the entries after it stay.
    append_durably(&mut log, (2001..=2010).map(normal_entry).collect()).await;
    let mut reopened = LogStore::new(store.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let first = store
            .range(herd_consensus::storage::Space::Log, &[0; 8], None)
            .expect("range")
            .first()
            .map(|(k, _)| k.clone());
        if first == Some(2001u64.to_be_bytes().to_vec()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leftovers stay: {first:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let entries = reopened.try_get_log_entries(2001..).await.expect("read");
    assert_eq!(entries.len(), 10);
    assert_eq!(
        reopened.get_log_state().await.expect("state").last_log_id,
        Some(normal_entry(2010).log_id)
    );
}

#[tokio::test]
async fn a_restarted_member_forgets_that_it_led_but_not_its_vote() {
    use openraft::storage::RaftLogStorage;
    use openraft::Vote;

    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let mut log = LogStore::new(store);
    // Nothing stored yet: nothing to forget.
    log.forget_leadership().expect("forget with no vote");
    assert_eq!(log.read_vote().await.expect("read"), None);

    // Member 2 led term 5 when it stopped.
    log.save_vote(&Vote::new_committed(5, 2))
        .await
        .expect("save");
    log.forget_leadership().expect("forget");
    let vote = log.read_vote().await.expect("read").expect("a vote");
    assert!(!vote.is_committed(), "a restart resumed leadership: {vote}");
    assert_eq!(
        vote,
        Vote::new(5, 2),
        "the vote itself (term, candidate) was lost"
    );

    // An uncommitted vote stays as it is.
    log.forget_leadership().expect("forget again");
    assert_eq!(log.read_vote().await.expect("read"), Some(Vote::new(5, 2)));
}
