//! Allocation ids by job and by node: derived from `ClusterState::allocations`,
//! so that the scheduler and `apply` look at one job's or one node's
//! allocations without walking all of them.
//!
//! An allocation's job and node never change after it is created, so the
//! index changes only when allocations are added (`ClusterState::insert_alloc`)
//! and is rebuilt whole when the state is restored.

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::Allocation;

/// Allocation ids grouped by job name and by node name. Sets, so that the
/// index compares equal however it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocIndex {
    by_job: BTreeMap<String, BTreeSet<String>>,
    by_node: BTreeMap<String, BTreeSet<String>>,
}

impl AllocIndex {
    /// Indexes every allocation of `allocations`.
    pub fn build(allocations: &BTreeMap<String, Allocation>) -> Self {
        let mut index = Self::default();
        for alloc in allocations.values() {
            index.add(alloc);
        }
        index
    }

    /// Adds one allocation.
    pub fn add(&mut self, alloc: &Allocation) {
        self.by_job
            .entry(alloc.job.clone())
            .or_default()
            .insert(alloc.id.clone());
        self.by_node
            .entry(alloc.node.clone())
            .or_default()
            .insert(alloc.id.clone());
    }

    /// Removes one allocation.
    pub fn remove(&mut self, alloc: &Allocation) {
        for (map, key) in [
            (&mut self.by_job, &alloc.job),
            (&mut self.by_node, &alloc.node),
        ] {
            if let Some(ids) = map.get_mut(key) {
                ids.remove(&alloc.id);
                if ids.is_empty() {
                    map.remove(key);
                }
            }
        }
    }

    /// Ids of the allocations of `job`, in id order.
    pub fn of_job(&self, job: &str) -> impl Iterator<Item = &str> {
        self.by_job
            .get(job)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Ids of the allocations on `node`, in id order.
    pub fn on_node(&self, node: &str) -> impl Iterator<Item = &str> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}
