//! GPU indices: chosen at placement (the lowest free ones on the node),
//! never given to two allocations of a node, and checked again at apply.

use super::testkit::{gpu_alloc, gpu_node, gpu_request, must_not_overcommit, placed_on};
use super::{place, verify_plan, Eviction, Pass, Placement, PlacementPlan};

fn indices(plan: &PlacementPlan) -> Vec<Vec<u32>> {
    plan.placements
        .iter()
        .map(|p| p.gpu_indices.clone())
        .collect()
}

fn one(instance: u32, node: &str, gpus: &[u32]) -> Placement {
    Placement {
        instance,
        node: node.to_string(),
        gpu_indices: gpus.to_vec(),
    }
}

fn plan_of(placements: Vec<Placement>) -> PlacementPlan {
    PlacementPlan {
        placements,
        ..PlacementPlan::default()
    }
}

#[test]
fn placements_get_the_lowest_free_indices_and_never_share_one() {
    let nodes = [gpu_node("g", 16, 64, 4, "h100")];
    // Index 1 is held already; an old record holds a count only.
    let allocs = [
        gpu_alloc("x", "other", "g", 1, 50).on_gpus(&[1]),
        gpu_alloc("old", "other", "g", 1, 50),
    ];
    let req = gpu_request("train", 50, 1, 2, None);
    let plan = place(&nodes, &allocs, &req);
    assert_eq!(indices(&plan), [vec![0, 2]]);
    must_not_overcommit(&nodes, &allocs, &req, &plan);

    // Two jobs of one pass: the second sees the first's indices.
    let nodes = [gpu_node("g", 16, 64, 8, "h100")];
    let mut pass = Pass::new(&nodes, &[]);
    let first = pass.place(&gpu_request("a", 50, 2, 2, None));
    let second = pass.place(&gpu_request("b", 50, 2, 1, None));
    assert_eq!(indices(&first), [vec![0, 1], vec![2, 3]]);
    assert_eq!(indices(&second), [vec![4], vec![5]]);
    let third = pass.place(&gpu_request("c", 50, 1, 3, None));
    assert!(
        third.placements.is_empty(),
        "only 2 GPUs are left: {third:?}"
    );
}

#[test]
fn an_eviction_frees_the_indices_of_what_it_evicts() {
    let nodes = [gpu_node("g", 16, 64, 2, "h100")];
    let allocs = [
        gpu_alloc("low", "batch", "g", 1, 10).on_gpus(&[1]),
        gpu_alloc("high", "serve", "g", 1, 90).on_gpus(&[0]),
    ];
    let req = gpu_request("train", 50, 1, 1, None);
    let plan = place(&nodes, &allocs, &req);
    assert_eq!(plan.evictions.len(), 1, "{plan:?}");
    assert_eq!(indices(&plan), [vec![1]]);
    must_not_overcommit(&nodes, &allocs, &req, &plan);
    // And the check at apply accepts exactly that.
    let verdict = verify_plan(&nodes, &allocs, &req, &plan);
    assert!(verdict.is_fully_accepted(), "{verdict:?}");
    assert_eq!(verdict.accepted[0].gpu_indices, [1]);
}

#[test]
fn a_gang_that_does_not_fit_gives_its_indices_back() {
    let nodes = [
        gpu_node("g1", 16, 64, 2, "h100"),
        gpu_node("g2", 16, 64, 2, "h100"),
    ];
    let mut gang = gpu_request("train", 50, 3, 2, None);
    gang.gang = true;
    let mut pass = Pass::new(&nodes, &[]);
    assert!(pass.place(&gang).placements.is_empty());
    let plan = pass.place(&gpu_request("serve", 50, 2, 2, None));
    assert_eq!(placed_on(&plan), ["g1", "g2"]);
    assert_eq!(indices(&plan), [vec![0, 1], vec![0, 1]]);
}

#[test]
fn the_check_refuses_an_index_held_twice_past_the_count_or_miscounted() {
    let nodes = [gpu_node("g", 16, 64, 6, "h100")];
    let allocs = [gpu_alloc("x", "other", "g", 1, 50).on_gpus(&[2])];
    let req = gpu_request("train", 50, 2, 2, None);
    let refused = |plan: PlacementPlan| -> Vec<String> {
        let verdict = verify_plan(&nodes, &allocs, &req, &plan);
        verdict.rejected.into_iter().map(|r| r.reason).collect()
    };
    let held = refused(plan_of(vec![one(0, "g", &[0, 2])]));
    assert!(
        held[0].contains("GPU 2 of node g is already held"),
        "{held:?}"
    );
    let twice = refused(plan_of(vec![one(0, "g", &[0, 1]), one(1, "g", &[1, 3])]));
    assert_eq!(twice.len(), 1, "the first placement holds: {twice:?}");
    assert!(
        twice[0].contains("GPU 1 of node g is already held"),
        "{twice:?}"
    );
    let same = refused(plan_of(vec![one(0, "g", &[3, 3])]));
    assert!(same[0].contains("GPU index 3 is given twice"), "{same:?}");
    let past = refused(plan_of(vec![one(0, "g", &[0, 6])]));
    assert!(
        past[0].contains("GPU index 6 is past node g's 6 GPUs"),
        "{past:?}"
    );
    let short = refused(plan_of(vec![one(0, "g", &[0])]));
    assert!(
        short[0].contains("gives 1 GPU indices for 2 GPUs"),
        "{short:?}"
    );

    // A good plan is accepted as given; one without indices (logged before
    // GPUs were bound) gets the lowest free ones at the check.
    let good = verify_plan(
        &nodes,
        &allocs,
        &req,
        &plan_of(vec![one(0, "g", &[3, 1]), one(1, "g", &[])]),
    );
    assert!(good.is_fully_accepted(), "{good:?}");
    let got: Vec<&[u32]> = good
        .accepted
        .iter()
        .map(|p| p.gpu_indices.as_slice())
        .collect();
    assert_eq!(got, [&[3, 1][..], &[0, 4][..]]);
}

#[test]
fn an_eviction_the_check_undoes_gives_the_indices_back() {
    let nodes = [gpu_node("g", 16, 64, 1, "h100")];
    let allocs = [gpu_alloc("low", "batch", "g", 1, 10).on_gpus(&[0])];
    let req = gpu_request("train", 50, 2, 1, None);
    // The eviction frees GPU 0, but the plan names GPU 1, past the count:
    // refused, and GPU 0 is held again, so the next placement is refused.
    let plan = PlacementPlan {
        placements: vec![one(0, "g", &[1]), one(1, "g", &[0])],
        evictions: vec![Eviction {
            alloc_id: "low".into(),
            node: "g".into(),
            for_instance: 0,
        }],
        blocked: Vec::new(),
    };
    let verdict = verify_plan(&nodes, &allocs, &req, &plan);
    assert!(verdict.accepted.is_empty() && verdict.evictions.is_empty());
    assert!(verdict.rejected[0].reason.contains("past"), "{verdict:?}");
    assert_eq!(verdict.rejected.len(), 2, "{verdict:?}");
}
