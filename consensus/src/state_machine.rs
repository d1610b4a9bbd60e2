//! The replicated state machine over a [`KvStore`], driving an [`Application`].
//!
//! Applied changes are written in batches across entries, as etcd's backend
//! does: each write is atomic and holds the changes and the applied position
//! they lead to, so a crash leaves the persisted state at an entry boundary
//! and Raft re-applies the rest from its durable log.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::storage::{KvStore, Pair, Space, WriteOp};
use crate::types::{
    Entry, LogId, Outcome, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What a coordinator replicates: a deterministic function from commands to state.
///
/// `apply` must be deterministic and total (no clock, no randomness, no I/O):
/// every member applies the same commands and must reach the same state. The
/// application persists itself as key/value pairs through `changes`.
pub trait Application: Send + Sync + 'static {
    /// Applies one committed command at `at`, recording the keys it changed,
    /// and returns the encoded answer for the proposer.
    fn apply(&mut self, at: EntryPosition, command: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8>;
    /// Replaces the whole state with persisted pairs (at start-up, or from a snapshot).
    fn restore(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String>;
    /// The log index the state now reflects, told under the same lock as
    /// the change: after every batch of entries (blank and membership
    /// entries included) and after every restore. Raft's metrics publish
    /// the applied index later than the state changes, so an application
    /// that labels what it reads with an index (the agents' assignment
    /// fence) must take it from here. Ignored by default.
    fn applied_to(&mut self, _index: u64) {}
}

/// Where a committed entry sits in the log: its index, and the term of the
/// leader that appended it.
///
/// The term lets the application refuse a decision a leader made in one
/// term when it reaches the log in another (a leader deposed between
/// deciding and proposing, whose proposal a newer leader appended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPosition {
    /// The entry's log index (increases with every entry).
    pub index: u64,
    /// The term of the leader that appended the entry.
    pub term: u64,
}

const APP_PREFIX: &[u8] = b"a/";
const APP_END: &[u8] = b"a0"; // '0' follows '/' in ASCII: every key under "a/" sorts before it
pub(crate) const KEY_APPLIED: &[u8] = b"m/applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"m/membership";
pub(crate) const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
pub(crate) const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";
const KEY_SNAPSHOT_SEQ: &[u8] = b"snapshot_seq";
const SNAPSHOT_FORMAT: u32 = 1;

/// The body of a snapshot: every application pair at one log position.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Encodes application pairs as a snapshot body, as Raft snapshots carry
/// them: what a backup file holds and what [`crate::seed`] installs, so a
/// backup is read by the same code as a snapshot sent between members.
pub fn encode_snapshot_body(pairs: Vec<Pair>) -> Result<Vec<u8>, crate::ConsensusError> {
    codec::encode(&SnapshotBody {
        format: SNAPSHOT_FORMAT,
        pairs,
    })
}

/// Decodes a snapshot body into its application pairs, refusing a body
/// format this release does not know; `what` names the source in errors.
pub fn decode_snapshot_body(data: &[u8], what: &str) -> Result<Vec<Pair>, crate::ConsensusError> {
    let body: SnapshotBody = codec::decode(data, what)?;
    if body.format != SNAPSHOT_FORMAT {
        return Err(crate::ConsensusError::Decode {
            what: what.to_string(),
            message: format!(
                "snapshot format {} is not supported (expected {SNAPSHOT_FORMAT})",
                body.format
            ),
        });
    }
    Ok(body.pairs)
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// The store key of application key `key` in the state space.
pub(crate) fn app_key(key: &[u8]) -> Vec<u8> {
    let mut full = APP_PREFIX.to_vec();
    full.extend_from_slice(key);
    full
}

/// Counters a member reports about its state machine.
#[derive(Debug, Default)]
pub struct StateMachineStats {
    /// Snapshots received from a leader and installed since start.
    pub snapshots_installed: AtomicU64,
}

/// openraft's state machine: persisted in the store, mirrored in the application.
pub struct StateMachineStore<A: Application> {
    store: Arc<dyn KvStore>,
    app: Arc<RwLock<A>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    stats: Arc<StateMachineStats>,
    /// Applied changes not yet written to the store, last write per key.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// When the oldest pending change was applied (the runtime's clock, so
    /// the deterministic simulation controls it too).
    pending_since: Option<tokio::time::Instant>,
}

/// Applied changes are written to the store at most this late (checked when
/// the next entries are applied)...
const PERSIST_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// ...or once this many keys are pending, whichever comes first.
const PERSIST_KEYS: usize = 8192;

impl<A: Application> StateMachineStore<A> {
    /// Loads the persisted state into `app` and wraps both.
    pub fn open(store: Arc<dyn KvStore>, app: Arc<RwLock<A>>) -> Result<Self, StorageError> {
        let applied = match store.get(Space::State, KEY_APPLIED).map_err(sm_read_err)? {
            Some(bytes) => codec::decode(&bytes, "applied log id").map_err(sm_read_err)?,
            None => None,
        };
        let membership = match store
            .get(Space::State, KEY_MEMBERSHIP)
            .map_err(sm_read_err)?
        {
            Some(bytes) => codec::decode(&bytes, "applied membership").map_err(sm_read_err)?,
            None => StoredMembership::default(),
        };
        let pairs = store
            .range(Space::State, APP_PREFIX, Some(APP_END))
            .map_err(sm_read_err)?;
        let stripped = pairs
            .into_iter()
            .map(|(k, v)| (k[APP_PREFIX.len()..].to_vec(), v))
            .collect();
        {
            let mut app = write_app(&app);
            app.restore(stripped).map_err(|e| {
                StorageError::from(StorageIOError::read_state_machine(AnyError::error(e)))
            })?;
            app.applied_to(applied.map_or(0, |id: LogId| id.index));
        }
        Ok(Self {
            store,
            app,
            applied,
            membership,
            stats: Arc::new(StateMachineStats::default()),
            pending: BTreeMap::new(),
            pending_since: None,
        })
    }

    /// Writes every pending change and the applied position in one atomic batch.
    fn persist_pending(&mut self) -> Result<(), StorageError> {
        let mut ops: Vec<WriteOp> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => WriteOp::Put(key, value),
                None => WriteOp::Delete(key),
            })
            .collect();
        self.pending_since = None;
        ops.extend(self.position_ops()?);
        self.store.write(Space::State, ops).map_err(sm_err)
    }

    /// Counters for status reports.
    pub fn stats(&self) -> Arc<StateMachineStats> {
        self.stats.clone()
    }

    fn position_ops(&self) -> Result<Vec<WriteOp>, StorageError> {
        Ok(vec![
            WriteOp::Put(
                KEY_APPLIED.to_vec(),
                codec::encode(&self.applied).map_err(sm_err)?,
            ),
            WriteOp::Put(
                KEY_MEMBERSHIP.to_vec(),
                codec::encode(&self.membership).map_err(sm_err)?,
            ),
        ])
    }
}

fn write_app<A>(app: &RwLock<A>) -> std::sync::RwLockWriteGuard<'_, A> {
    app.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds a snapshot from pairs captured while no entry was being applied.
pub struct SnapshotBuilder {
    store: Arc<dyn KvStore>,
    applied: Option<LogId>,
    membership: StoredMembership,
    pairs: Result<Vec<Pair>, String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let pairs = std::mem::replace(&mut self.pairs, Err("snapshot already built".into()))
            .map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(None, AnyError::error(e)))
            })?;
        let body = SnapshotBody {
            format: SNAPSHOT_FORMAT,
            pairs,
        };
        let data = codec::encode(&body).map_err(snap_err)?;
        let seq = match self
            .store
            .get(Space::Meta, KEY_SNAPSHOT_SEQ)
            .map_err(snap_err)?
        {
            Some(bytes) => codec::decode::<u64>(&bytes, "snapshot sequence").map_err(snap_err)? + 1,
            None => 1,
        };
        let snapshot_id = match &self.applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        save_snapshot(self.store.as_ref(), &meta, &data, Some(seq))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

fn save_snapshot(
    store: &dyn KvStore,
    meta: &SnapshotMeta,
    data: &[u8],
    seq: Option<u64>,
) -> Result<(), StorageError> {
    let mut ops = vec![
        WriteOp::Put(
            KEY_SNAPSHOT_META.to_vec(),
            codec::encode(meta).map_err(snap_err)?,
        ),
        WriteOp::Put(KEY_SNAPSHOT_DATA.to_vec(), data.to_vec()),
    ];
    if let Some(seq) = seq {
        ops.push(WriteOp::Put(
            KEY_SNAPSHOT_SEQ.to_vec(),
            codec::encode(&seq).map_err(snap_err)?,
        ));
    }
    store.write(Space::Meta, ops).map_err(snap_err)?;
    store.sync().map_err(snap_err)
}

impl<A: Application> RaftStateMachine<TypeConfig> for StateMachineStore<A> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        {
            let mut app = write_app(&self.app);
            for entry in entries {
                self.applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(Outcome::default()),
                    EntryPayload::Normal(proposal) => {
                        let at = EntryPosition {
                            index: entry.log_id.index,
                            term: entry.log_id.leader_id.term,
                        };
                        let answer = app.apply(at, &proposal.0, &mut changes);
                        outcomes.push(Outcome(answer));
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        outcomes.push(Outcome::default());
                    }
                }
            }
            if let Some(applied) = self.applied {
                app.applied_to(applied.index);
            }
        }
        // Persisted in batches across entries: the durable log keeps every
        // applied entry until a snapshot, and a snapshot is built only from
        // persisted state (see get_snapshot_builder), so a crash loses
        // nothing Raft cannot re-apply. Each sled batch costs two buffer
        // writes of its own; one per 100 ms instead of one per entry was
        // worth about a tenth of the throughput (docs/benchmarks.md).
        // Start-up checks that need applied state newer than this read the
        // log (the cluster id: coordinator/src/start.rs).
        for op in changes {
            match op {
                WriteOp::Put(k, v) => self.pending.insert(app_key(&k), Some(v)),
                WriteOp::Delete(k) => self.pending.insert(app_key(&k), None),
            };
        }
        let since = *self
            .pending_since
            .get_or_insert_with(tokio::time::Instant::now);
        if self.pending.len() >= PERSIST_KEYS || since.elapsed() >= PERSIST_AFTER {
            self.persist_pending()?;
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Captured here, where no apply runs concurrently, after persisting
        // what is pending, so the pairs and the position match exactly (and
        // a later purge of the log behind the snapshot keeps nothing needed).
        // A failure makes the build fail: never an empty or partial snapshot.
        let pairs = match self.persist_pending() {
            Err(e) => Err(format!(
                "cannot persist applied state before a snapshot: {e}"
            )),
            Ok(()) => self
                .store
                .range(Space::State, APP_PREFIX, Some(APP_END))
                .map(|pairs| {
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k[APP_PREFIX.len()..].to_vec(), v))
                        .collect()
                })
                .map_err(|e| format!("cannot read state for a snapshot: {e}")),
        };
        SnapshotBuilder {
            store: self.store.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            pairs,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = codec::decode(&data, &format!("snapshot {}", meta.snapshot_id))
            .map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)))
            })?;
        if body.format != SNAPSHOT_FORMAT {
            return Err(StorageIOError::read_snapshot(
                None,
                AnyError::error(format!(
                    "snapshot format {} is not supported (expected {SNAPSHOT_FORMAT})",
                    body.format
                )),
            )
            .into());
        }
        // The snapshot replaces everything, including what was pending.
        self.pending.clear();
        self.pending_since = None;
        let mut ops: Vec<WriteOp> = self
            .store
            .range(Space::State, APP_PREFIX, Some(APP_END))
            .map_err(sm_err)?
            .into_iter()
            .map(|(k, _)| WriteOp::Delete(k))
            .collect();
        ops.extend(
            body.pairs
                .iter()
                .map(|(k, v)| WriteOp::Put(app_key(k), v.clone())),
        );
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        ops.extend(self.position_ops()?);
        self.store.write(Space::State, ops).map_err(sm_err)?;
        {
            let mut app = write_app(&self.app);
            app.restore(body.pairs).map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::error(e)))
            })?;
            app.applied_to(meta.last_log_id.map_or(0, |id| id.index));
        }
        save_snapshot(self.store.as_ref(), meta, &data, None)?;
        self.stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(meta_bytes) = self
            .store
            .get(Space::Meta, KEY_SNAPSHOT_META)
            .map_err(sm_read_err)?
        else {
            return Ok(None);
        };
        let meta: SnapshotMeta =
            codec::decode(&meta_bytes, "snapshot meta").map_err(sm_read_err)?;
        let data = self
            .store
            .get(Space::Meta, KEY_SNAPSHOT_DATA)
            .map_err(sm_read_err)?
            .unwrap_or_default();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
