//! The per-call index: node names to positions and what each node has in use.
//!
//! Built once per call in O(nodes + allocations), so that the per-instance
//! work never walks the allocation list or hashes a name again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use herd_api::resources::Resources;

use super::power::{extra_watts, PowerIndex, PowerLimit};
use super::{AllocView, NodeView, PlacementRequest};

/// Position of the GPU count in [`Amounts`].
pub(crate) const GPUS: usize = 0;
/// Position of memory (bytes) in [`Amounts`].
pub(crate) const MEMORY: usize = 1;
/// Position of CPU (millicores) in [`Amounts`].
pub(crate) const CPU: usize = 2;
/// The dimensions in the order reasons mention them and preemption weighs
/// them: GPUs are the scarcest, then memory, then CPU.
pub(crate) const DIMS: [usize; 3] = [GPUS, MEMORY, CPU];

/// Countable resources as one array: `[gpus, memory bytes, cpu millis]`.
pub(crate) type Amounts = [u64; 3];

/// The countable part of `resources` (the GPU model is matched separately).
pub(crate) fn amounts(resources: &Resources) -> Amounts {
    [
        u64::from(resources.gpus),
        resources.memory_bytes,
        resources.cpu_millis,
    ]
}

/// Whether `have` covers `need` in every dimension.
pub(crate) fn covers(have: &Amounts, need: &Amounts) -> bool {
    have.iter().zip(need).all(|(h, n)| h >= n)
}

/// Node names mapped to positions, and each node's capacity and use.
pub(crate) struct ClusterIndex<'a> {
    /// The nodes, in the caller's order; a node's id is its position here.
    pub(crate) nodes: &'a [NodeView],
    /// The allocations, in the caller's order; an alloc's id is its position.
    pub(crate) allocs: &'a [AllocView],
    capacity: Vec<Amounts>,
    used: Vec<Amounts>,
    /// Per node, the GPU indices held and by how many allocations (more
    /// than one only in a state that is already wrong).
    gpus_held: Vec<BTreeMap<u32, u32>>,
    alloc_node: Vec<Option<usize>>,
    by_name: HashMap<&'a str, usize, BuildHasherDefault<NameHasher>>,
    /// Committed power per power group (empty without budgets).
    power: PowerIndex<'a>,
}

impl<'a> ClusterIndex<'a> {
    /// Indexes `nodes` and adds up what `allocs` use on each of them.
    /// Allocations on unknown nodes use nothing; with duplicate node names,
    /// the first node of a name takes the allocations.
    #[cfg(test)]
    pub(crate) fn new(nodes: &'a [NodeView], allocs: &'a [AllocView]) -> Self {
        Self::with_power(nodes, allocs, &[])
    }

    /// [`ClusterIndex::new`] that also counts each power group's committed
    /// power (see [`PowerLimit`]).
    pub(crate) fn with_power(
        nodes: &'a [NodeView],
        allocs: &'a [AllocView],
        limits: &'a [PowerLimit],
    ) -> Self {
        let mut by_name = HashMap::with_capacity_and_hasher(nodes.len(), Default::default());
        for (id, node) in nodes.iter().enumerate() {
            by_name.entry(node.name.as_str()).or_insert(id);
        }
        let capacity = nodes.iter().map(|n| amounts(&n.capacity)).collect();
        let mut index = Self {
            nodes,
            allocs,
            capacity,
            used: vec![[0; 3]; nodes.len()],
            gpus_held: vec![BTreeMap::new(); nodes.len()],
            alloc_node: Vec::with_capacity(allocs.len()),
            by_name,
            power: PowerIndex::new(nodes, limits),
        };
        for (a, alloc) in allocs.iter().enumerate() {
            let node = index.node_id(&alloc.node);
            index.alloc_node.push(node);
            if let Some(node) = node {
                index.take(node, &amounts(&alloc.resources));
                index.hold_gpus(node, &alloc.gpu_indices);
                index.power.take(node, index.alloc_watts(a));
            }
        }
        index
    }

    /// What allocation `alloc`'s GPUs are expected to draw above idle on
    /// its node (0 on an unknown node).
    pub(crate) fn alloc_watts(&self, alloc: usize) -> u64 {
        match self.alloc_node(alloc) {
            Some(n) => {
                let a = &self.allocs[alloc];
                extra_watts(&self.nodes[n], a.power_class, u64::from(a.resources.gpus))
            }
            None => 0,
        }
    }

    /// What one instance of `request` is expected to draw above idle on
    /// node `node`.
    pub(crate) fn request_watts(&self, node: usize, request: &PlacementRequest) -> u64 {
        extra_watts(
            &self.nodes[node],
            request.power_class,
            u64::from(request.resources.gpus),
        )
    }

    /// Why `watts` more on node `node` would push one of its power groups
    /// past its hard budget, or None.
    pub(crate) fn power_clash(&self, node: usize, watts: u64) -> Option<String> {
        self.power
            .clash(node, watts)
            .map(|clash| self.power.describe(&clash))
    }

    /// What must be freed, per power group of node `node`, before `watts`
    /// more fit there: `(group, watts)` (see [`PowerIndex::shortfall`]).
    pub(crate) fn power_shortfall(&self, node: usize, watts: u64) -> Vec<(usize, u64)> {
        self.power.shortfall(node, watts)
    }

    /// Whether node `node` is in power group `group`.
    pub(crate) fn in_power_group(&self, node: usize, group: usize) -> bool {
        self.power.in_group(node, group)
    }

    /// Watts left under the hard budget of node `node`'s tightest group
    /// (`u64::MAX` when no budget covers it): a tiebreak between equally
    /// good nodes.
    pub(crate) fn power_headroom(&self, node: usize) -> u64 {
        self.power.headroom(node)
    }

    /// Counts `watts` more committed power on node `node`'s groups.
    pub(crate) fn take_power(&mut self, node: usize, watts: u64) {
        self.power.take(node, watts);
    }

    /// Counts `watts` less committed power on node `node`'s groups.
    pub(crate) fn release_power(&mut self, node: usize, watts: u64) {
        self.power.release(node, watts);
    }

    /// Releases what allocation `alloc` uses on its node (resources, GPU
    /// indices and committed power), as an eviction does.
    pub(crate) fn release_alloc(&mut self, alloc: usize) {
        if let Some(n) = self.alloc_node(alloc) {
            let allocs = self.allocs;
            let a = &allocs[alloc];
            self.release(n, &amounts(&a.resources));
            self.free_gpus(n, &a.gpu_indices);
            let watts = self.alloc_watts(alloc);
            self.power.release(n, watts);
        }
    }

    /// Takes back what [`ClusterIndex::release_alloc`] released.
    pub(crate) fn retake_alloc(&mut self, alloc: usize) {
        if let Some(n) = self.alloc_node(alloc) {
            let allocs = self.allocs;
            let a = &allocs[alloc];
            self.take(n, &amounts(&a.resources));
            self.hold_gpus(n, &a.gpu_indices);
            let watts = self.alloc_watts(alloc);
            self.power.take(n, watts);
        }
    }

    /// The id of the node called `name`.
    pub(crate) fn node_id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The node allocation `alloc` uses, if it is a known node.
    pub(crate) fn alloc_node(&self, alloc: usize) -> Option<usize> {
        self.alloc_node.get(alloc).copied().flatten()
    }

    /// What node `node` offers in all.
    pub(crate) fn capacity(&self, node: usize) -> &Amounts {
        &self.capacity[node]
    }

    /// What is free on node `node` (nothing below zero, even if over-committed).
    pub(crate) fn free(&self, node: usize) -> Amounts {
        let (cap, used) = (&self.capacity[node], &self.used[node]);
        DIMS.map(|d| cap[d].saturating_sub(used[d]))
    }

    /// Whether `need` fits in what is free on node `node`.
    pub(crate) fn fits(&self, node: usize, need: &Amounts) -> bool {
        covers(&self.free(node), need)
    }

    /// Marks `amounts` as used on node `node`.
    pub(crate) fn take(&mut self, node: usize, amounts: &Amounts) {
        let used = &mut self.used[node];
        for d in DIMS {
            used[d] = used[d].saturating_add(amounts[d]);
        }
    }

    /// Marks `amounts` as free again on node `node`.
    pub(crate) fn release(&mut self, node: usize, amounts: &Amounts) {
        let used = &mut self.used[node];
        for d in DIMS {
            used[d] = used[d].saturating_sub(amounts[d]);
        }
    }

    /// Marks GPU `indices` of node `node` as held.
    pub(crate) fn hold_gpus(&mut self, node: usize, indices: &[u32]) {
        let held = &mut self.gpus_held[node];
        for &i in indices {
            *held.entry(i).or_default() += 1;
        }
    }

    /// Gives GPU `indices` of node `node` back.
    pub(crate) fn free_gpus(&mut self, node: usize, indices: &[u32]) {
        let held = &mut self.gpus_held[node];
        for i in indices {
            if let Some(count) = held.get_mut(i) {
                *count -= 1;
                if *count == 0 {
                    held.remove(i);
                }
            }
        }
    }

    /// The `count` lowest GPU indices of node `node` that nothing holds
    /// (fewer when there are not that many: the check at apply refuses
    /// such a placement). Room counted in GPUs always leaves enough free
    /// indices, since each holder holds as many indices as GPUs at most.
    pub(crate) fn pick_gpus(&self, node: usize, count: u64) -> Vec<u32> {
        let capacity = u32::try_from(self.capacity[node][GPUS]).unwrap_or(u32::MAX);
        let held = &self.gpus_held[node];
        (0..capacity)
            .filter(|i| !held.contains_key(i))
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .collect()
    }

    /// Why GPU `indices` cannot go to a placement needing `count` GPUs on
    /// node `node`: not as many as it needs, an index past the node's GPU
    /// count, one named twice, or one something already holds.
    pub(crate) fn gpu_clash(&self, node: usize, indices: &[u32], count: u64) -> Option<String> {
        let name = &self.nodes[node].name;
        if indices.len() as u64 != count {
            return Some(format!(
                "gives {} GPU indices for {count} GPUs",
                indices.len()
            ));
        }
        let capacity = self.capacity[node][GPUS];
        let mut seen = std::collections::BTreeSet::new();
        for &i in indices {
            if u64::from(i) >= capacity {
                return Some(format!(
                    "GPU index {i} is past node {name}'s {capacity} GPUs"
                ));
            }
            if !seen.insert(i) {
                return Some(format!("GPU index {i} is given twice"));
            }
            if self.gpus_held[node].contains_key(&i) {
                return Some(format!("GPU {i} of node {name} is already held"));
            }
        }
        None
    }

    /// How full node `node` would be with `need` added: the mean over the
    /// dimensions it has of used/capacity, in parts per million. Integer
    /// arithmetic, so that scores are the same on every machine.
    pub(crate) fn fill_after(&self, node: usize, need: &Amounts) -> u64 {
        let (cap, used) = (&self.capacity[node], &self.used[node]);
        let mut sum = 0;
        let mut dims = 0;
        for d in DIMS {
            if cap[d] > 0 {
                sum += parts_per_million(used[d].saturating_add(need[d]), cap[d]);
                dims += 1;
            }
        }
        sum.checked_div(dims).unwrap_or(0)
    }
}

/// `part / whole` in parts per million, capped at a million; u64 arithmetic
/// unless it would overflow (capacities beyond 16 TiB of memory).
fn parts_per_million(part: u64, whole: u64) -> u64 {
    let part = part.min(whole);
    match part.checked_mul(1_000_000) {
        Some(scaled) => scaled / whole,
        None => u64::try_from(u128::from(part) * 1_000_000 / u128::from(whole)).unwrap_or(0),
    }
}

/// A fast hasher for node names (FxHash's word mixing, then a finaliser).
/// Names are set by
/// operators, not by untrusted clients, so hash flooding is not a concern,
/// and the map is only looked up, never iterated, so output order cannot
/// depend on it.
#[derive(Default)]
struct NameHasher {
    hash: u64,
}

impl NameHasher {
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's finaliser: the word mixing alone leaves names that
        // differ in their last digits in the same buckets.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testkit::{alloc, gpu_node, node, GIB};

    #[test]
    fn adds_up_use_per_node_and_ignores_unknown_nodes() {
        let nodes = [node("a", 4, 8), node("b", 4, 8)];
        let allocs = [
            alloc("x", "j", "a", 1, 2, 10),
            alloc("y", "j", "a", 2, 1, 10),
            alloc("z", "j", "gone", 3, 3, 10),
        ];
        let index = ClusterIndex::new(&nodes, &allocs);
        assert_eq!(index.free(0), [0, 5 * GIB, 1000]);
        assert_eq!(index.free(1), [0, 8 * GIB, 4000]);
        assert_eq!(index.alloc_node(2), None);
        assert_eq!(index.node_id("b"), Some(1));
        assert_eq!(index.node_id("gone"), None);
    }

    #[test]
    fn free_never_goes_below_zero_and_fill_is_a_mean_in_ppm() {
        let nodes = [node("a", 4, 8), gpu_node("g", 4, 8, 4, "h100")];
        let allocs = [alloc("x", "j", "a", 8, 16, 10)];
        let index = ClusterIndex::new(&nodes, &allocs);
        assert_eq!(index.free(0), [0, 0, 0]);
        assert!(!index.fits(0, &[0, 1, 1]));
        // Half the CPU and a quarter of the memory and GPUs: (50+25+25)/3 %.
        assert_eq!(index.fill_after(1, &[1, 2 * GIB, 2000]), 333_333);
        assert_eq!(parts_per_million(u64::MAX, u64::MAX), 1_000_000);
        assert_eq!(parts_per_million(u64::MAX / 2, u64::MAX), 499_999);
    }

    #[test]
    fn names_hash_apart() {
        let hash = |s: &str| {
            let mut h = NameHasher::default();
            std::hash::Hash::hash(s, &mut h);
            h.finish()
        };
        assert_ne!(hash("node-00001"), hash("node-00002"));
        assert_ne!(hash("a"), hash("a\0"));
    }
}
