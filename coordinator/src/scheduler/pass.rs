//! Planning many requests against one snapshot: the index is built once and
//! each plan's placements and evictions are counted before the next request
//! is placed.

use super::candidates::Strategy;
use super::index::ClusterIndex;
use super::place::place_in;
use super::preempt::Victims;
use super::{AllocView, NodeView, PlacementPlan, PlacementRequest, PowerLimit};

/// One scheduling pass over a snapshot of the cluster, so that a leader with
/// many pending jobs pays O(nodes + allocations) once per pass instead of
/// once per job, and later jobs of the pass see the room earlier ones took.
///
/// Plans stay deterministic: the same snapshot and the same requests in the
/// same order give the same plans. `apply` still re-checks each plan.
pub struct Pass<'a> {
    index: ClusterIndex<'a>,
    victims: Option<Victims<'a>>,
}

impl<'a> Pass<'a> {
    /// Indexes `nodes` and what `allocs` use on them.
    pub fn new(nodes: &'a [NodeView], allocs: &'a [AllocView]) -> Self {
        Self::with_power(nodes, allocs, &[])
    }

    /// [`Pass::new`] that also keeps every power group of `limits` at or
    /// under its hard budget: a GPU instance goes only where it fits the
    /// committed power of every group its node belongs to.
    pub fn with_power(
        nodes: &'a [NodeView],
        allocs: &'a [AllocView],
        limits: &'a [PowerLimit],
    ) -> Self {
        Self {
            index: ClusterIndex::with_power(nodes, allocs, limits),
            victims: None,
        }
    }

    /// Places `request` as [`place`](super::place) would on the snapshot
    /// with every earlier plan of this pass applied, and records this plan
    /// for the next requests.
    pub fn place(&mut self, request: &PlacementRequest) -> PlacementPlan {
        let strategy = Strategy::for_instances(request.instances.len());
        place_in(&mut self.index, &mut self.victims, request, strategy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::place;
    use crate::scheduler::testkit::{
        gpu_alloc, gpu_node, gpu_request, must_not_overcommit, node, placed_on, request, synthetic,
    };

    #[test]
    fn later_requests_see_earlier_plans() {
        let nodes = [node("a", 4, 8), node("b", 4, 8)];
        let mut pass = Pass::new(&nodes, &[]);
        let first = pass.place(&request("x", 50, 3, 1, 1));
        assert_eq!(placed_on(&first), ["a", "a", "a"]);
        // Only one core is left on a: the second job fills it, then b.
        let second = pass.place(&request("y", 50, 2, 1, 1));
        assert_eq!(placed_on(&second), ["a", "b"]);
        let third = pass.place(&request("z", 50, 4, 1, 1));
        assert_eq!(placed_on(&third), ["b", "b", "b"]);
        assert_eq!(third.blocked.len(), 1);
    }

    #[test]
    fn the_first_plan_of_a_pass_is_the_plan_of_place() {
        let (nodes, allocs) = synthetic(300, 5);
        let req = request("big", 50, 500, 2, 4);
        let mut pass = Pass::new(&nodes, &allocs);
        let plan = pass.place(&req);
        assert_eq!(plan, place(&nodes, &allocs, &req));
        must_not_overcommit(&nodes, &allocs, &req, &plan);
    }

    #[test]
    fn a_gang_that_does_not_fit_leaves_the_pass_as_it_was() {
        let nodes = [
            gpu_node("g1", 16, 64, 2, "h100"),
            gpu_node("g2", 16, 64, 2, "h100"),
        ];
        let allocs = [gpu_alloc("low", "batch", "g1", 2, 10)];
        let mut gang = gpu_request("train", 90, 3, 2, None);
        gang.gang = true;
        let mut pass = Pass::new(&nodes, &allocs);
        let plan = pass.place(&gang);
        assert!(plan.placements.is_empty() && plan.evictions.is_empty());
        // Both nodes' GPUs are still there for the next job, and the
        // low-priority allocation can still be evicted (once).
        let two = gpu_request("serve", 90, 2, 2, None);
        let plan = pass.place(&two);
        assert_eq!(placed_on(&plan), ["g2", "g1"], "g1 after evicting");
        assert_eq!(plan.evictions.len(), 1);
        let more = pass.place(&gpu_request("more", 90, 1, 2, None));
        assert!(more.placements.is_empty() && more.evictions.is_empty());
    }
}
