//! The Raft log over a [`KvStore`], with group commit.
//!
//! Appends become readable at once and durable in batches: a flusher thread
//! takes every append callback waiting, makes the store durable once, and
//! only then acknowledges them all. Under load many client writes share one
//! fsync, which is where herd's commit throughput comes from.
//!
//! Purging the log behind a snapshot only records how far it was purged;
//! a purger thread then discards the entries. openraft awaits `purge` in its
//! core loop, and discarding ten thousand entries there stalled heartbeats
//! for most of a second on every member at once, long enough for leaders to
//! doubt their quorum.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, StorageIOError};

use crate::codec;
use crate::storage::{KvStore, Space, WriteOp};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

pub(crate) const KEY_VOTE: &[u8] = b"vote";
pub(crate) const KEY_COMMITTED: &[u8] = b"committed";
pub(crate) const KEY_LAST_PURGED: &[u8] = b"last_purged";

pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

/// Raft log storage; cheap to clone (clones share the store and the
/// flusher and purger threads).
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn KvStore>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Receives "discard every entry below this index".
    purger: mpsc::Sender<u64>,
    /// The last index known committed (the metrics' commit index).
    committed: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    /// Wraps `store`, starting the group-commit flusher thread and the
    /// purger thread; the purger first discards what a crash left behind
    /// the last purge.
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        let flusher = spawn_worker("herd-log-flush", store.clone(), run_flusher);
        let purger = spawn_worker("herd-log-purge", store.clone(), run_purger);
        let log = Self {
            store,
            flusher,
            purger,
            committed: Arc::default(),
        };
        match log.read_meta::<LogId>(KEY_LAST_PURGED) {
            Ok(Some(purged)) => log.discard_below(purged.index.saturating_add(1)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read how far the log was purged"),
        }
        log
    }

    /// The last log index known committed, as openraft saves it before
    /// applying (0 before the first), shared for the metrics to read.
    pub fn committed_index(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.committed.clone()
    }

    fn note_committed(&self, committed: Option<&LogId>) {
        if let Some(id) = committed {
            self.committed
                .fetch_max(id.index, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Has every entry below `end` discarded, on the purger thread (here
    /// when that thread is gone).
    fn discard_below(&self, end: u64) {
        if let Err(mpsc::SendError(end)) = self.purger.send(end) {
            discard(self.store.as_ref(), end);
        }
    }

    /// Makes a member that led before it stopped stand for election again
    /// instead of resuming as leader of its old term; call before `Raft::new`.
    ///
    /// openraft restores a member whose persisted vote is committed for
    /// itself as leader at once, and a restored leader's read index is the
    /// larger of the first entry of its term and the commit point it last
    /// persisted. That commit point is written without a sync, so after a
    /// crash it can sit behind writes already acknowledged to clients, and a
    /// linearizable read served before the leader commits again misses them
    /// (a stale read, seen after every coordinator was killed at once). Worse,
    /// the restored leader may have lost unsynced entries that followers
    /// hold, and would reuse their indexes in the same term. An uncommitted
    /// vote keeps what Raft needs (this member voted in that term, so it
    /// cannot vote twice) but not leadership: leading again takes an
    /// election, whose new term appends a fresh entry that every read must
    /// wait for, as after any other leader change.
    pub fn forget_leadership(&self) -> Result<(), StorageError> {
        let Some(vote) = self.read_meta::<Vote>(KEY_VOTE)? else {
            return Ok(());
        };
        if !vote.committed {
            return Ok(());
        }
        let demoted = Vote {
            committed: false,
            ..vote
        };
        self.write_meta(KEY_VOTE, &demoted)?;
        self.store.sync().map_err(io_err)?;
        tracing::info!(vote = %vote, "leadership from before this start forgotten");
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.store.get(Space::Meta, key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes, &String::from_utf8_lossy(key))
                .map(Some)
                .map_err(read_err),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(io_err)?;
        self.store
            .write(Space::Meta, vec![WriteOp::Put(key.to_vec(), bytes)])
            .map_err(io_err)
    }
}

/// Starts a thread running `work` on what is sent to the returned sender;
/// it ends when every sender is dropped. When the thread cannot start, sends
/// fail and callers do the work themselves.
fn spawn_worker<T: Send + 'static>(
    name: &str,
    store: Arc<dyn KvStore>,
    work: fn(Arc<dyn KvStore>, mpsc::Receiver<T>),
) -> mpsc::Sender<T> {
    let (tx, rx) = mpsc::channel::<T>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(store, rx))
        .map(|_| ())
        .unwrap_or_else(
            |e| tracing::error!(error = %e, thread = name, "cannot start a log thread"),
        );
    tx
}

/// Acknowledges appends in batches, one durable sync per batch, in order.
fn run_flusher(store: Arc<dyn KvStore>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = store.sync();
        if let Err(e) = &result {
            tracing::error!(error = %e, "log sync failed; appends are not acknowledged");
        }
        for callback in batch {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

/// Discards log entries as purges ask, the furthest asked for at a time.
fn run_purger(store: Arc<dyn KvStore>, rx: mpsc::Receiver<u64>) {
    while let Ok(mut end) = rx.recv() {
        while let Ok(further) = rx.try_recv() {
            end = end.max(further);
        }
        discard(store.as_ref(), end);
    }
}

/// Discards every log entry below index `end`. A failure leaves entries
/// behind, which nothing reads and the next purge discards.
fn discard(store: &dyn KvStore, end: u64) {
    if let Err(e) = store.discard_range(Space::Log, &index_key(0), Some(&index_key(end))) {
        tracing::warn!(error = %e, "cannot discard purged log entries; the next purge retries");
    }
}

fn bounds_to_range(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds_to_range(&range);
        let end_key = end.map(index_key);
        let pairs = self
            .store
            .range(
                Space::Log,
                &index_key(start),
                end_key.as_ref().map(|k| k.as_slice()),
            )
            .map_err(read_err)?;
        pairs
            .into_iter()
            .map(|(key, value)| {
                codec::decode::<Entry>(&value, &format!("log entry {key:?}")).map_err(read_err)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let last_entry = match self.store.last(Space::Log).map_err(read_err)? {
            Some((_, value)) => Some(
                codec::decode::<Entry>(&value, "last log entry")
                    .map_err(read_err)?
                    .log_id,
            ),
            None => None,
        };
        // Entries at or below the purge point may still be on disk, not yet
        // discarded; they never count.
        let last = match (last_entry, last_purged) {
            (Some(entry), Some(purged)) if entry.index > purged.index => Some(entry),
            (Some(entry), None) => Some(entry),
            (_, purged) => purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)?;
        // A vote must be on disk before it is sent: a member that forgets
        // its vote could vote twice in one term.
        self.store
            .sync()
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.note_committed(committed.as_ref());
        self.write_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten();
        self.note_committed(committed.as_ref());
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // One write per entry, not one batch: nothing here is acknowledged
        // before the flush below, and a crash before it keeps a prefix of
        // the entries (the `KvStore` contract), which Raft sees as a log
        // that is merely behind. Single writes are markedly cheaper in sled.
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(io_err)?;
            let key = index_key(entry.log_id.index).to_vec();
            self.store
                .write(Space::Log, vec![WriteOp::Put(key, bytes)])
                .map_err(io_err)?;
        }
        if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            // The flusher thread is gone: sync here rather than never acknowledge.
            let result = self
                .store
                .sync()
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(result);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.store
            .delete_range(Space::Log, &index_key(log_id.index), None)
            .map_err(io_err)?;
        // Truncated entries must not come back after a crash.
        self.store.sync().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write_meta(KEY_LAST_PURGED, &log_id)?;
        // Syncing first also makes the applied state machine durable up to the
        // snapshot that allowed this purge, so no entry still needed is lost.
        self.store.sync().map_err(io_err)?;
        // From here on the entries are gone as far as Raft is concerned
        // (get_log_state reads the purge point); discarding them can wait.
        self.discard_below(log_id.index.saturating_add(1));
        Ok(())
    }
}
