//! An in-memory [`KvStore`]: for deterministic tests and simulations, where
//! sled's own threads would break determinism. Nothing survives the process.
//!
//! It can also play a power loss ([`MemoryStore::lose_unsynced`]): a
//! simulated crash that kept every write would hide every bug that needs a
//! lost unsynced write, such as a commit index persisted without a sync.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use super::{KvStore, Pair, Space, StoreError, WriteOp};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// What one key held before an unsynced write changed it (None: absent).
type Undo = (Space, Vec<u8>, Option<Vec<u8>>);

/// The live keyspaces and how to take them back to the last sync.
#[derive(Default)]
struct Inner {
    spaces: HashMap<Space, Tree>,
    /// Previous values of every key written since the last `sync`, oldest
    /// first; undone newest first by a power loss.
    undo: Vec<Undo>,
}

/// A volatile store (simulation and tests only). `sync` makes nothing more
/// durable than memory, but marks what a simulated power loss keeps.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plays a power loss: drops every write made since the last
    /// [`KvStore::sync`], as a disk forgets what was never flushed.
    ///
    /// The simulation calls it when a crashed coordinator restarts, so that
    /// what herd wrote without a sync is lost as it would be after a real
    /// crash. Dropping all unsynced writes keeps the [`KvStore`] contract:
    /// what survives (the synced writes) is a prefix of the writes made.
    /// Returns how many key changes were undone.
    pub fn lose_unsynced(&self) -> usize {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let undone = inner.undo.len();
        while let Some((space, key, previous)) = inner.undo.pop() {
            let tree = inner.spaces.entry(space).or_default();
            match previous {
                Some(value) => {
                    tree.insert(key, value);
                }
                None => {
                    tree.remove(&key);
                }
            }
        }
        undone
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with<R>(&self, space: Space, f: impl FnOnce(&mut Tree) -> R) -> R {
        f(self.lock().spaces.entry(space).or_default())
    }
}

impl KvStore for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(space, |t| t.get(key).cloned()))
    }

    fn write(&self, space: Space, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let tree = inner.spaces.entry(space).or_default();
        for op in ops {
            let (key, previous) = match op {
                WriteOp::Put(k, v) => {
                    let previous = tree.insert(k.clone(), v);
                    (k, previous)
                }
                WriteOp::Delete(k) => {
                    let previous = tree.remove(&k);
                    (k, previous)
                }
            };
            inner.undo.push((space, key, previous));
        }
        Ok(())
    }

    fn range(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<Pair>, StoreError> {
        let upper = end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec()));
        Ok(self.with(space, |t| {
            t.range((Bound::Included(start.to_vec()), upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        Ok(self.with(space, |t| {
            t.iter().next_back().map(|(k, v)| (k.clone(), v.clone()))
        }))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.lock().undo.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_conformance() {
        super::super::conformance::check_all(&MemoryStore::new());
    }

    fn put(store: &MemoryStore, space: Space, key: &[u8], value: &[u8]) {
        store
            .write(space, vec![WriteOp::Put(key.to_vec(), value.to_vec())])
            .expect("write");
    }

    #[test]
    fn a_power_loss_keeps_exactly_what_was_synced() {
        let store = MemoryStore::new();
        put(&store, Space::Log, b"1", b"one");
        put(&store, Space::Meta, b"committed", b"1");
        store.sync().expect("sync");
        // Unsynced: a new key, an overwrite, a deletion, in two spaces, and
        // one key changed twice.
        put(&store, Space::Log, b"2", b"two");
        put(&store, Space::Meta, b"committed", b"2");
        put(&store, Space::Meta, b"committed", b"3");
        store
            .write(Space::Log, vec![WriteOp::Delete(b"1".to_vec())])
            .expect("delete");
        assert_eq!(
            store.get(Space::Log, b"2").expect("get"),
            Some(b"two".to_vec())
        );

        assert_eq!(store.lose_unsynced(), 4);
        assert_eq!(
            store.range(Space::Log, b"", None).expect("range"),
            vec![(b"1".to_vec(), b"one".to_vec())]
        );
        assert_eq!(
            store.get(Space::Meta, b"committed").expect("get"),
            Some(b"1".to_vec())
        );
        // Nothing left to lose, and the store works on as before.
        assert_eq!(store.lose_unsynced(), 0);
        put(&store, Space::Log, b"2", b"again");
        store.sync().expect("sync");
        assert_eq!(store.lose_unsynced(), 0);
        assert_eq!(
            store.get(Space::Log, b"2").expect("get"),
            Some(b"again".to_vec())
        );
    }

    #[test]
    fn a_power_loss_on_a_fresh_store_changes_nothing() {
        let store = MemoryStore::new();
        assert_eq!(store.lose_unsynced(), 0);
        assert_eq!(store.last(Space::Log).expect("last"), None);
    }
}
