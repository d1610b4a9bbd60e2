//! Placement throughput on a large synthetic cluster (std only, no harness).
//!
//! Run with `cargo bench -p herd-coordinator --bench placement`. Prints
//! placements per second for 10,000 instances on 5,000 nodes, placed in one
//! request and in many smaller ones (each seeing the earlier placements as
//! allocations, as the real scheduler would), and the cost of the apply-time
//! check.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use herd_api::resources::{Resources, GIB};
use herd_coordinator::scheduler::{
    place, verify_plan, AllocView, NodeView, PlacementPlan, PlacementRequest, Spread,
};

const NODES: usize = 5_000;
const INSTANCES: u32 = 10_000;

fn resources(cores: u64, gib: u64, gpus: u32) -> Resources {
    Resources {
        cpu_millis: cores * 1000,
        memory_bytes: gib * GIB,
        gpus,
        gpu_model: (gpus > 0).then(|| "h100".to_string()),
    }
}

/// 5,000 nodes of 16 to 64 cores over 40 racks, one in ten with GPUs, each
/// with two allocations already using about a quarter of it.
fn cluster() -> (Vec<NodeView>, Vec<AllocView>) {
    let mut seed: u64 = 42;
    let mut below = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut nodes = Vec::with_capacity(NODES);
    let mut allocs = Vec::with_capacity(2 * NODES);
    for i in 0..NODES {
        let name = format!("node-{i:05}");
        let cores = [16, 32, 64][below(3) as usize];
        let gpus = if i % 10 == 0 { 8 } else { 0 };
        let labels = BTreeMap::from([("rack".to_string(), format!("r{:02}", below(40)))]);
        for k in 0..2 {
            allocs.push(AllocView {
                id: format!("a-{i}-{k}"),
                job: format!("job-{}", below(100)),
                node: name.clone(),
                resources: resources(cores / 8, cores / 4, 0),
                priority: below(101) as u32,
                gang: None,
                gpu_indices: Vec::new(),
                power_class: Default::default(),
            });
        }
        nodes.push(NodeView {
            name,
            capacity: resources(cores, cores * 4, gpus),
            labels,
            schedulable: i % 100 != 99,
        });
    }
    (nodes, allocs)
}

fn request(job: &str, instances: std::ops::Range<u32>, spread: Spread) -> PlacementRequest {
    PlacementRequest {
        job: job.to_string(),
        priority: 50,
        instances: instances.collect(),
        resources: resources(2, 4, 0),
        constraints: Vec::new(),
        affinities: Vec::new(),
        spread,
        gang: false,
        power_class: Default::default(),
    }
}

fn report(what: &str, placed: usize, elapsed: Duration) {
    let per_second = placed as f64 / elapsed.as_secs_f64();
    let micros = elapsed.as_secs_f64() * 1e6 / placed.max(1) as f64;
    println!(
        "{what:<46} {placed:>6} placed in {elapsed:>9.2?}: {per_second:>9.0}/s \
         ({micros:.2} µs each)"
    );
}

/// One request of all instances.
fn one_request(
    nodes: &[NodeView],
    allocs: &[AllocView],
    spread: Spread,
    name: &str,
) -> PlacementPlan {
    let req = request("bench", 0..INSTANCES, spread);
    let start = Instant::now();
    let plan = black_box(place(black_box(nodes), black_box(allocs), &req));
    report(name, plan.placements.len(), start.elapsed());
    plan
}

/// The same instances in requests of `size`, each seeing the placements of
/// the earlier ones as allocations.
fn many_requests(nodes: &[NodeView], allocs: &[AllocView], size: u32, calls: u32) {
    let mut allocs = allocs.to_vec();
    let mut placed = 0;
    let mut spent = Duration::ZERO;
    for call in 0..calls {
        let job = format!("svc-{call}");
        let req = request(&job, 0..size, Spread::BinPack);
        let start = Instant::now();
        let plan = black_box(place(black_box(nodes), black_box(&allocs), &req));
        spent += start.elapsed();
        placed += plan.placements.len();
        for p in plan.placements {
            allocs.push(AllocView {
                id: format!("{job}-{}", p.instance),
                job: job.clone(),
                node: p.node,
                resources: req.resources.clone(),
                priority: req.priority,
                gang: None,
                gpu_indices: p.gpu_indices,
                power_class: Default::default(),
            });
        }
    }
    let what = format!("{calls} requests of {size} (allocations growing)");
    report(&what, placed, spent);
}

fn main() {
    let (nodes, allocs) = cluster();
    println!(
        "placement on {} nodes with {} allocations, {} instances of 2 cpu and 4GiB",
        nodes.len(),
        allocs.len(),
        INSTANCES
    );
    // Warm up caches and the allocator.
    black_box(place(
        &nodes,
        &allocs,
        &request("warm", 0..1000, Spread::BinPack),
    ));

    let plan = one_request(&nodes, &allocs, Spread::BinPack, "1 request, bin-pack");
    one_request(
        &nodes,
        &allocs,
        Spread::SpreadNodes,
        "1 request, spread over nodes",
    );
    let racks = Spread::SpreadLabel("rack".to_string());
    one_request(&nodes, &allocs, racks, "1 request, spread over racks");
    many_requests(&nodes, &allocs, 100, INSTANCES / 100);
    many_requests(&nodes, &allocs, 10, INSTANCES / 10);
    many_requests(&nodes, &allocs, 1, 1000);

    let req = request("bench", 0..INSTANCES, Spread::BinPack);
    let start = Instant::now();
    let verdict = black_box(verify_plan(&nodes, &allocs, &req, &plan));
    report(
        "verify_plan of the bin-pack plan",
        verdict.accepted.len(),
        start.elapsed(),
    );
}
