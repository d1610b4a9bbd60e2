//! herd's own storage seam: an ordered key/value store with a few named
//! spaces, atomic batches within a space, and an explicit durability point.
//!
//! The Raft log and state machine are written against [`KvStore`] only, so
//! sled (unmaintained upstream) can be replaced without touching them, and
//! an in-memory store serves deterministic tests.

mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

use thiserror::Error;

/// The separate keyspaces herd keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Raft log entries, keyed by big-endian index.
    Log,
    /// Raft metadata: vote, committed and purged ids, the current snapshot.
    Meta,
    /// The applied state machine: application keys and the applied position.
    State,
}

impl Space {
    /// Stable name, used as the tree name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Log => "log",
            Space::Meta => "meta",
            Space::State => "state",
        }
    }
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One change in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (absent keys are fine).
    Delete(Vec<u8>),
}

/// A failure of the storage engine.
#[derive(Debug, Error)]
#[error("{engine} store at {location}: {message}")]
pub struct StoreError {
    /// Which engine failed ("sled", "memory").
    pub engine: &'static str,
    /// Where its data lives.
    pub location: String,
    /// What it reported.
    pub message: String,
}

/// An ordered key/value store with atomic batches and explicit durability.
///
/// Writes become visible to reads at once; they are durable only after
/// [`KvStore::sync`] returns. Implementations must make `sync` mean "on
/// stable storage" (fsync), not "handed to the kernel". After a crash, the
/// unsynced writes that survive must be a prefix, in the order they were
/// made, of those made (a [`KvStore::write`] counting as one): the Raft log
/// appends entries one write at a time and relies on never recovering a
/// later entry without the earlier ones.
pub trait KvStore: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies all ops or none of them.
    fn write(&self, space: Space, ops: Vec<WriteOp>) -> Result<(), StoreError>;
    /// Key/value pairs with `start <= key < end` (no upper bound when `end` is None), in key order.
    fn range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<Pair>, StoreError>;
    /// The pair with the greatest key.
    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError>;
    /// Makes every write that returned before this call durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Removes every key in `start <= key < end` in one batch.
    fn delete_range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let keys = self.range(space, start, end)?;
        if keys.is_empty() {
            return Ok(());
        }
        let ops = keys.into_iter().map(|(k, _)| WriteOp::Delete(k)).collect();
        self.write(space, ops)
    }

    /// Removes every key in `start <= key < end`, in key order and not
    /// atomically: a crash may leave any of them behind.
    ///
    /// For discarding what nobody reads again (the Raft log behind a
    /// snapshot), where one atomic batch of thousands of deletions would
    /// hold the writer up for as long as it takes.
    fn discard_range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        for chunk in self.range(space, start, end)?.chunks(DISCARD_CHUNK) {
            let ops = chunk
                .iter()
                .map(|(k, _)| WriteOp::Delete(k.clone()))
                .collect();
            self.write(space, ops)?;
        }
        Ok(())
    }
}

/// Keys removed per write by the default [`KvStore::discard_range`].
const DISCARD_CHUNK: usize = 256;

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every [`KvStore`] must show; run against each engine.
    use super::*;

    pub fn check_all(store: &dyn KvStore) {
        store
            .write(
                Space::Log,
                vec![
                    WriteOp::Put(vec![2], b"two".to_vec()),
                    WriteOp::Put(vec![1], b"one".to_vec()),
                    WriteOp::Put(vec![3], b"three".to_vec()),
                ],
            )
            .expect("write");
        assert_eq!(
            store.get(Space::Log, &[2]).expect("get"),
            Some(b"two".to_vec())
        );
        assert_eq!(
            store.get(Space::Meta, &[2]).expect("get"),
            None,
            "spaces are separate"
        );
        let all = store.range(Space::Log, &[0], None).expect("range");
        assert_eq!(
            all.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let mid = store.range(Space::Log, &[2], Some(&[3])).expect("range");
        assert_eq!(mid, vec![(vec![2], b"two".to_vec())]);
        assert_eq!(
            store.last(Space::Log).expect("last").map(|(k, _)| k),
            Some(vec![3])
        );
        store.delete_range(Space::Log, &[2], None).expect("delete");
        assert_eq!(store.range(Space::Log, &[0], None).expect("range").len(), 1);
        let many: Vec<WriteOp> = (10u8..=200)
            .map(|k| WriteOp::Put(vec![k], vec![k; 100]))
            .collect();
        store.write(Space::Log, many).expect("write");
        store
            .discard_range(Space::Log, &[0], Some(&[150]))
            .expect("discard");
        let left: Vec<u8> = store
            .range(Space::Log, &[0], None)
            .expect("range")
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(
            left,
            (150u8..=200).collect::<Vec<_>>(),
            "discarded exactly the range"
        );
        store
            .discard_range(Space::Log, &[0], None)
            .expect("discard");
        assert_eq!(store.last(Space::Log).expect("last"), None);
        store
            .write(
                Space::Meta,
                vec![
                    WriteOp::Put(b"a".to_vec(), vec![1]),
                    WriteOp::Delete(b"a".to_vec()),
                ],
            )
            .expect("write");
        assert_eq!(
            store.get(Space::Meta, b"a").expect("get"),
            None,
            "ops apply in order"
        );
        store.sync().expect("sync");
        assert_eq!(store.last(Space::State).expect("last"), None);
    }
}
