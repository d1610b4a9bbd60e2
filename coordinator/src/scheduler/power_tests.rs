//! Placement by power headroom: plans and the apply-time check keep every
//! power group's committed GPU power at or under its hard budget.
//!
//! Figures: an H100 node idles at 8 × 80 = 640 W; one H100 at its TDP
//! (class `max`, the default) commits 620 W above idle, at `low` 270 W.

use herd_api::power::PowerGroup;
use herd_api::power_class::PowerClass;

use super::testkit::{gpu_alloc, gpu_node, gpu_request, must_not_overcommit, placed_on};
use super::{verify_plan_with_power, NodeView, Pass, PlacementPlan, PowerLimit};

fn limit(group: &str, watts: u64) -> PowerLimit {
    PowerLimit {
        group: PowerGroup::parse(group).expect("group"),
        budget_watts: watts,
        hard_permille: 970,
        unseen_watts: 0,
    }
}

fn h100(name: &str, rack: &str) -> NodeView {
    gpu_node(name, 16, 64, 8, "h100").with_label("rack", rack)
}

fn plan(
    nodes: &[NodeView],
    allocs: &[super::AllocView],
    limits: &[PowerLimit],
    req: &super::PlacementRequest,
) -> PlacementPlan {
    let plan = Pass::with_power(nodes, allocs, limits).place(req);
    must_not_overcommit(nodes, allocs, req, &plan);
    plan
}

#[test]
fn a_group_near_its_budget_refuses_the_next_gpu_job_and_another_takes_it() {
    let nodes = [h100("a", "r1"), h100("b", "r2")];
    // a holds 2 GPUs at TDP: r1 commits 640 + 1240 = 1880 W of its 2425 W.
    let allocs = [gpu_alloc("x", "other", "a", 2, 50).on_gpus(&[0, 1])];
    let limits = [limit("rack=r1", 2500), limit("rack=r2", 3000)];
    let req = gpu_request("train", 50, 1, 1, None);
    // Without budgets, bin-packing prefers the fuller node a.
    assert_eq!(placed_on(&Pass::new(&nodes, &allocs).place(&req)), ["a"]);
    assert_eq!(placed_on(&plan(&nodes, &allocs, &limits, &req)), ["b"]);
    // A low-power job still fits on a: 1880 + 270 <= 2425.
    let mut low = req.clone();
    low.power_class = PowerClass::Low;
    assert_eq!(placed_on(&plan(&nodes, &allocs, &limits, &low)), ["a"]);
    // r2 takes three at TDP (640 + 1860 <= 2910), not a fourth; a none.
    let three = gpu_request("train", 50, 4, 1, None);
    let p = plan(&nodes, &allocs, &limits, &three);
    assert_eq!(placed_on(&p), ["b", "b", "b"]);
    assert_eq!(p.blocked.len(), 1);
    let reason = &p.blocked[0].reason;
    assert!(
        reason.contains(
            "1 node is held back by power: group rack=r1 would commit 2500 W of GPU power, \
             over its hard budget of 2425 W (97 % of 2500 W)"
        ) && reason.contains("group rack=r2 would commit 3120 W"),
        "{reason}"
    );
    assert!(p.blocked[0].preemption_could_help);
}

#[test]
fn a_node_must_fit_every_group_it_belongs_to() {
    let nodes = [
        h100("a", "r1").with_label("zone", "z1"),
        h100("b", "r2").with_label("zone", "z1"),
    ];
    // r1 has room for several GPUs; zone z1 (both nodes: 1280 W idle) has
    // room for one GPU at TDP only, and the cluster for none once 300 W of
    // unseen nodes count.
    let mut limits = vec![limit("rack=r1", 5000), limit("zone=z1", 2000)];
    let req = gpu_request("train", 50, 2, 1, None);
    let p = plan(&nodes, &[], &limits, &req);
    assert_eq!(placed_on(&p), ["a"]);
    assert!(
        p.blocked[0]
            .reason
            .contains("2 nodes are held back by power: group zone=z1 would commit 2520 W"),
        "{}",
        p.blocked[0].reason
    );
    let mut cluster = limit("cluster", 2000);
    cluster.unseen_watts = 300;
    limits.push(cluster);
    let p = plan(&nodes, &[], &limits, &gpu_request("train", 50, 1, 1, None));
    assert!(p.placements.is_empty());
    assert!(
        p.blocked[0]
            .reason
            .contains("group cluster would commit 2200 W"),
        "{}",
        p.blocked[0].reason
    );
    // Work without GPUs adds no power: placed even in a group over budget.
    let mut cpu = gpu_request("web", 50, 1, 0, None);
    cpu.resources.gpus = 0;
    assert_eq!(placed_on(&plan(&nodes, &[], &limits, &cpu)), ["a"]);
}

#[test]
fn verify_refuses_plans_that_together_overshoot_a_budget() {
    let nodes = [h100("a", "r1"), h100("b", "r1")];
    // r1: 1280 W idle, 2425 W hard: room for one GPU at TDP (620 W) only.
    let limits = [limit("rack=r1", 2500)];
    let first = gpu_request("one", 50, 1, 1, None);
    let second = gpu_request("two", 50, 1, 1, None);
    // Two plans built on the same empty snapshot: each fits alone.
    let p1 = plan(&nodes, &[], &limits, &first);
    let p2 = plan(&nodes, &[], &limits, &second);
    assert_eq!((placed_on(&p1), placed_on(&p2)), (vec!["a"], vec!["a"]));
    let v1 = verify_plan_with_power(&nodes, &[], &limits, &first, &p1);
    assert!(v1.is_fully_accepted(), "{v1:?}");
    // Meanwhile another plan put a GPU on b: the second no longer fits
    // r1's budget on a, though a has the GPUs.
    let applied = [gpu_alloc("one-0", "one", "b", 1, 50).on_gpus(&[0])];
    let v2 = verify_plan_with_power(&nodes, &applied, &limits, &second, &p2);
    assert!(v2.accepted.is_empty());
    assert_eq!(
        v2.rejected[0].reason,
        "node a: power: group rack=r1 would commit 2520 W of GPU power, over its hard \
         budget of 2425 W (97 % of 2500 W)"
    );
    // Within one plan too: two placements that fit apart but not together.
    let mut two = p2.clone();
    two.placements.push(super::Placement {
        instance: 1,
        node: "b".to_string(),
        gpu_indices: vec![0],
    });
    let mut both = gpu_request("two", 50, 2, 1, None);
    both.instances = vec![0, 1];
    let v = verify_plan_with_power(&nodes, &[], &limits, &both, &two);
    assert_eq!(v.accepted.len(), 1);
    assert!(v.rejected[0].reason.contains("rack=r1 would commit 2520 W"));
    // What nodes the check is not given commit counts through unseen_watts.
    let only_a = &nodes[..1];
    let mut partial = limits.clone();
    partial[0].unseen_watts = 640 + 620;
    let v = verify_plan_with_power(only_a, &[], &partial, &second, &p2);
    assert!(v.accepted.is_empty(), "b's GPU is committed: {v:?}");
}

#[test]
fn evicting_lower_priority_gpu_work_frees_its_power() {
    // Two H100s, both held by low-priority work at TDP: r1 commits
    // 160 + 1240 = 1400 W of its 1406 W hard budget.
    let nodes = [gpu_node("a", 16, 64, 2, "h100").with_label("rack", "r1")];
    let allocs = [
        gpu_alloc("low1", "batch", "a", 1, 10).on_gpus(&[0]),
        gpu_alloc("low2", "batch", "a", 1, 10).on_gpus(&[1]),
    ];
    let limits = [limit("rack=r1", 1450)];
    let req = gpu_request("serve", 90, 1, 1, None);
    let p = plan(&nodes, &allocs, &limits, &req);
    assert_eq!(placed_on(&p), ["a"]);
    assert_eq!(p.evictions.len(), 1, "{p:?}");
    let v = verify_plan_with_power(&nodes, &allocs, &limits, &req, &p);
    assert!(v.is_fully_accepted(), "{v:?}");
    // A GPU free but no power (780 W of 873 W committed, +620 W): the
    // search frees power too, evicting low1 for it.
    let tight = [limit("rack=r1", 900)];
    let p = plan(&nodes, &allocs[..1], &tight, &req);
    assert_eq!(placed_on(&p), ["a"], "{p:?}");
    assert_eq!(p.evictions.len(), 1, "{p:?}");
    assert_eq!(p.evictions[0].alloc_id, "low1");
    let v = verify_plan_with_power(&nodes, &allocs[..1], &tight, &req, &p);
    assert!(v.is_fully_accepted(), "{v:?}");
    // Where even evicting everything evictable leaves too little power
    // (780 W committed, 776 W allowed), nothing is evicted and the job waits.
    let p = plan(&nodes, &allocs[..1], &[limit("rack=r1", 800)], &req);
    assert!(p.placements.is_empty() && p.evictions.is_empty(), "{p:?}");
    assert!(p.blocked[0].reason.contains("held back by power"));
    assert!(p.blocked[0].preemption_could_help);
}

#[test]
fn preemption_frees_just_enough_power_from_the_lowest_priority_work() {
    // Four H100s, three held by low-priority work at TDP: r1 commits
    // 320 + 3 × 620 = 2180 W of 2425 W; one more at TDP needs 375 W freed.
    let nodes = [gpu_node("a", 16, 64, 4, "h100").with_label("rack", "r1")];
    let allocs = [
        gpu_alloc("l1", "batch1", "a", 1, 30).on_gpus(&[0]),
        gpu_alloc("l2", "batch2", "a", 1, 10).on_gpus(&[1]),
        gpu_alloc("l3", "batch3", "a", 1, 20).on_gpus(&[2]),
    ];
    let limits = [limit("rack=r1", 2500)];
    let req = gpu_request("serve", 90, 1, 1, None);
    let p = plan(&nodes, &allocs, &limits, &req);
    assert_eq!(placed_on(&p), ["a"], "{p:?}");
    let evicted: Vec<&str> = p.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
    assert_eq!(evicted, ["l2"], "one eviction, the lowest priority: {p:?}");
    // apply's check agrees, and refuses the same placement without its
    // eviction (the power would not be there).
    let v = verify_plan_with_power(&nodes, &allocs, &limits, &req, &p);
    assert!(v.is_fully_accepted(), "{v:?}");
    let mut bare = p.clone();
    bare.evictions.clear();
    let v = verify_plan_with_power(&nodes, &allocs, &limits, &req, &bare);
    assert!(v.accepted.is_empty(), "{v:?}");
    // Two instances need 995 W freed: two evictions, lowest priorities.
    let two = gpu_request("serve", 90, 2, 1, None);
    let p = plan(&nodes, &allocs, &limits, &two);
    assert_eq!(placed_on(&p), ["a", "a"], "{p:?}");
    let mut evicted: Vec<&str> = p.evictions.iter().map(|e| e.alloc_id.as_str()).collect();
    evicted.sort_unstable();
    assert_eq!(evicted, ["l2", "l3"], "{p:?}");
    let v = verify_plan_with_power(&nodes, &allocs, &limits, &two, &p);
    assert!(v.is_fully_accepted(), "{v:?}");
    // Work of the same priority or higher is never evicted for power.
    let peer = gpu_request("peer", 10, 1, 1, None);
    let p = plan(&nodes, &allocs, &limits, &peer);
    assert!(p.placements.is_empty() && p.evictions.is_empty(), "{p:?}");
    assert!(p.blocked[0].reason.contains("power"), "{p:?}");
}

#[test]
fn equally_good_nodes_are_taken_by_power_headroom_then_name() {
    let nodes = [h100("a", "r1"), h100("b", "r2"), h100("c", "r3")];
    // Headroom: r1 2425 − 640 = 1785 W, r2 4850 − 640 = 4210 W, c none.
    let limits = [limit("rack=r1", 2500), limit("rack=r2", 5000)];
    let req = gpu_request("train", 50, 1, 1, None);
    assert_eq!(placed_on(&plan(&nodes, &[], &limits, &req)), ["c"]);
    let limits = [
        limit("rack=r1", 2500),
        limit("rack=r2", 5000),
        limit("rack=r3", 700),
    ];
    assert_eq!(placed_on(&plan(&nodes, &[], &limits, &req)), ["b"]);
    // Only a tiebreak: bin-packing still prefers the fuller node.
    let allocs = [gpu_alloc("x", "other", "a", 1, 50).on_gpus(&[0])];
    assert_eq!(placed_on(&plan(&nodes, &allocs, &limits, &req)), ["a"]);
}
