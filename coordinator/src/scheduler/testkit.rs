//! Builders for tests: small nodes, allocations and requests in whole cores
//! and GiB, and a check that a plan over-commits nothing.

use std::collections::{BTreeMap, BTreeSet};

use herd_api::resources::Resources;

use super::{AllocView, NodeView, PlacementPlan, PlacementRequest, Spread};

pub(crate) use herd_api::resources::GIB;

fn resources(cpu_cores: u64, mem_gib: u64, gpus: u32, model: Option<&str>) -> Resources {
    Resources {
        cpu_millis: cpu_cores * 1000,
        memory_bytes: mem_gib * GIB,
        gpus,
        gpu_model: model.map(str::to_string),
    }
}

/// A schedulable node without labels or GPUs.
pub(crate) fn node(name: &str, cpu_cores: u64, mem_gib: u64) -> NodeView {
    NodeView {
        name: name.to_string(),
        capacity: resources(cpu_cores, mem_gib, 0, None),
        labels: BTreeMap::new(),
        schedulable: true,
    }
}

/// A schedulable node with `gpus` GPUs of `model`.
pub(crate) fn gpu_node(name: &str, cpu: u64, mem_gib: u64, gpus: u32, model: &str) -> NodeView {
    NodeView {
        capacity: resources(cpu, mem_gib, gpus, Some(model)),
        ..node(name, cpu, mem_gib)
    }
}

impl NodeView {
    /// The same node with one more label.
    pub(crate) fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// An allocation of whole cores and GiB, in no gang.
pub(crate) fn alloc(
    id: &str,
    job: &str,
    node: &str,
    cpu: u64,
    mem_gib: u64,
    prio: u32,
) -> AllocView {
    AllocView {
        id: id.to_string(),
        job: job.to_string(),
        node: node.to_string(),
        resources: resources(cpu, mem_gib, 0, None),
        priority: prio,
        gang: None,
        gpu_indices: Vec::new(),
        power_class: Default::default(),
    }
}

/// An allocation of `gpus` GPUs (one core and one GiB besides).
pub(crate) fn gpu_alloc(id: &str, job: &str, node: &str, gpus: u32, prio: u32) -> AllocView {
    AllocView {
        resources: resources(1, 1, gpus, None),
        ..alloc(id, job, node, 1, 1, prio)
    }
}

impl AllocView {
    /// The same allocation holding GPU `indices`.
    pub(crate) fn on_gpus(mut self, indices: &[u32]) -> Self {
        self.gpu_indices = indices.to_vec();
        self
    }

    /// The same allocation as a member of gang `gang`.
    pub(crate) fn in_gang(mut self, gang: &str) -> Self {
        self.gang = Some(gang.to_string());
        self
    }
}

/// A bin-packing request for `count` instances (0..count) of cores and GiB.
pub(crate) fn request(
    job: &str,
    prio: u32,
    count: u32,
    cpu: u64,
    mem_gib: u64,
) -> PlacementRequest {
    PlacementRequest {
        job: job.to_string(),
        priority: prio,
        instances: (0..count).collect(),
        resources: resources(cpu, mem_gib, 0, None),
        constraints: Vec::new(),
        affinities: Vec::new(),
        spread: Spread::BinPack,
        gang: false,
        power_class: Default::default(),
    }
}

/// A request for `count` instances of `gpus` GPUs (one core and one GiB each).
pub(crate) fn gpu_request(
    job: &str,
    prio: u32,
    count: u32,
    gpus: u32,
    model: Option<&str>,
) -> PlacementRequest {
    PlacementRequest {
        resources: resources(1, 1, gpus, model),
        ..request(job, prio, count, 1, 1)
    }
}

/// The node of each placement, in order.
pub(crate) fn placed_on(plan: &PlacementPlan) -> Vec<&str> {
    plan.placements.iter().map(|p| p.node.as_str()).collect()
}

/// Panics if, after the plan's evictions and placements, any node uses more
/// than it has, or an instance is placed twice or both placed and blocked.
pub(crate) fn must_not_overcommit(
    nodes: &[NodeView],
    allocs: &[AllocView],
    request: &PlacementRequest,
    plan: &PlacementPlan,
) {
    let evicted: BTreeSet<&str> = plan.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
    let mut used: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut add = |node: &str, r: &Resources| {
        let u = used.entry(node.to_string()).or_default();
        u[0] += u64::from(r.gpus);
        u[1] += r.memory_bytes;
        u[2] += r.cpu_millis;
    };
    for a in allocs.iter().filter(|a| !evicted.contains(a.id.as_str())) {
        add(&a.node, &a.resources);
    }
    for p in &plan.placements {
        let target = nodes.iter().find(|n| n.name == p.node);
        assert!(
            target.is_some_and(|n| n.schedulable),
            "instance {} placed on {}, which is unknown or not schedulable",
            p.instance,
            p.node
        );
        add(&p.node, &request.resources);
    }
    for n in nodes {
        let u = used.get(n.name.as_str()).copied().unwrap_or_default();
        let c = &n.capacity;
        assert!(
            u[0] <= u64::from(c.gpus) && u[1] <= c.memory_bytes && u[2] <= c.cpu_millis,
            "node {} over-committed: {u:?} of {c:?}",
            n.name
        );
    }
    // GPU indices: each placement gets as many as it asks for, within its
    // node's count, and no index is held twice on a node.
    let mut held: BTreeSet<(&str, u32)> = BTreeSet::new();
    for a in allocs.iter().filter(|a| !evicted.contains(a.id.as_str())) {
        for &i in &a.gpu_indices {
            assert!(
                held.insert((&a.node, i)),
                "GPU {i} of {} held twice",
                a.node
            );
        }
    }
    for p in &plan.placements {
        assert_eq!(
            p.gpu_indices.len(),
            request.resources.gpus as usize,
            "instance {} GPU indices {:?}",
            p.instance,
            p.gpu_indices
        );
        let count = nodes
            .iter()
            .find(|n| n.name == p.node)
            .map_or(0, |n| n.capacity.gpus);
        for &i in &p.gpu_indices {
            assert!(i < count, "GPU {i} past {}'s {count}", p.node);
            assert!(
                held.insert((&p.node, i)),
                "GPU {i} of {} given to instance {} while held",
                p.node,
                p.instance
            );
        }
    }
    let mut seen = BTreeSet::new();
    for i in plan.placements.iter().map(|p| p.instance) {
        assert!(seen.insert(i), "instance {i} placed twice");
    }
    for b in &plan.blocked {
        assert!(
            seen.insert(b.instance),
            "instance {} placed and blocked",
            b.instance
        );
    }
}

/// A small deterministic generator, so synthetic clusters need no crate.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A pseudo-random cluster of `count` nodes (8 to 64 cores, some with GPUs,
/// over 20 racks, one in 50 not schedulable) with up to three allocations of
/// 30 jobs on each, using at most a quarter of the node each.
pub(crate) fn synthetic(count: usize, seed: u64) -> (Vec<NodeView>, Vec<AllocView>) {
    let mut rng = Lcg(seed);
    let mut nodes = Vec::with_capacity(count);
    let mut allocs = Vec::new();
    for i in 0..count {
        let name = format!("node-{i:05}");
        let cpu = [8, 16, 32, 64][rng.below(4) as usize];
        let mem = cpu * [2, 4, 8][rng.below(3) as usize];
        let mut n = if rng.below(5) == 0 {
            let gpus = [2, 4, 8][rng.below(3) as usize];
            gpu_node(
                &name,
                cpu,
                mem,
                gpus,
                ["h100", "a100"][rng.below(2) as usize],
            )
        } else {
            node(&name, cpu, mem)
        };
        n = n.with_label("rack", &format!("r{}", rng.below(20)));
        n.schedulable = rng.below(50) != 0;
        for k in 0..rng.below(4) {
            let job = format!("job-{}", rng.below(30));
            let (c, m) = (1 + rng.below(cpu / 4), 1 + rng.below(mem / 4));
            let mut a = alloc(
                &format!("a-{i}-{k}"),
                &job,
                &name,
                c,
                m,
                rng.below(101) as u32,
            );
            if rng.below(10) == 0 {
                a = a.in_gang(&format!("g{}", rng.below(40)));
            }
            allocs.push(a);
        }
        nodes.push(n);
    }
    (nodes, allocs)
}
