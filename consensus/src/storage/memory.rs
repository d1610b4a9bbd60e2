//! An in-memory [`KvStore`]: for deterministic tests and simulations, where
//! sled's own threads would break determinism. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use super::{KvStore, Pair, Space, StoreError, WriteOp};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// A volatile store (simulation and tests only): `sync` is a no-op by design.
#[derive(Default)]
pub struct MemoryStore {
    spaces: Mutex<HashMap<Space, Tree>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, space: Space, f: impl FnOnce(&mut Tree) -> R) -> R {
        let mut guard = self
            .spaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(guard.entry(space).or_default())
    }
}

impl KvStore for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(space, |t| t.get(key).cloned()))
    }

    fn write(&self, space: Space, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.with(space, |t| {
            for op in ops {
                match op {
                    WriteOp::Put(k, v) => {
                        t.insert(k, v);
                    }
                    WriteOp::Delete(k) => {
                        t.remove(&k);
                    }
                }
            }
        });
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_conformance() {
        super::super::conformance::check_all(&super::MemoryStore::new());
    }
}
