//! The placement loop: one instance at a time through the stages, with
//! preemption when nothing fits and all-or-nothing for gangs.

use super::candidates::{Candidates, Strategy};
use super::feasibility::Feasibility;
use super::index::{amounts, Amounts, ClusterIndex, GPUS};
use super::preempt::Victims;
use super::reason::blocked_reason;
use super::{AllocView, Blocked, Eviction, NodeView, Placement, PlacementPlan, PlacementRequest};

/// Places the request's instances on `nodes`, given what `allocs` already use.
///
/// Deterministic: the same inputs give the same plan, whatever the order of
/// `nodes`. Each instance goes to the best node with room (see
/// [`Spread`](super::Spread)); when none has room, the least set of
/// strictly-lower-priority allocations (whole gangs only) is evicted on the
/// node where that set is cheapest, and the instance goes there (the spread
/// preference yields to the cost of preemption). Instances that still do not
/// fit are blocked with a reason counted over all nodes; for a gang request,
/// one blocked instance blocks them all and the plan places and evicts
/// nothing.
///
/// Cost: O(nodes + allocations) once per call (index, filters, scores), then
/// per instance a scan of the fitting nodes' scores for small requests or
/// O(log nodes) for large ones; preemption, when needed, walks the
/// allocations again.
pub fn place(
    nodes: &[NodeView],
    allocs: &[AllocView],
    request: &PlacementRequest,
) -> PlacementPlan {
    place_with(
        nodes,
        allocs,
        request,
        Strategy::for_instances(request.instances.len()),
    )
}

/// [`place`] with the strategy chosen by the caller (tests compare both).
pub(crate) fn place_with(
    nodes: &[NodeView],
    allocs: &[AllocView],
    request: &PlacementRequest,
    strategy: Strategy,
) -> PlacementPlan {
    if request.instances.is_empty() {
        return PlacementPlan::default();
    }
    place_in(
        &mut ClusterIndex::with_power(nodes, allocs, &[]),
        &mut None,
        request,
        strategy,
    )
}

/// Places `request` against `index`, leaving what the plan uses (and frees
/// by evicting) recorded in `index` and `victims`, so that a caller planning
/// several requests in turn (a [`Pass`](super::Pass)) sees each plan's
/// effect on the next. A gang that does not fit leaves both as they were.
pub(crate) fn place_in<'a>(
    index: &mut ClusterIndex<'a>,
    victims: &mut Option<Victims<'a>>,
    request: &PlacementRequest,
    strategy: Strategy,
) -> PlacementPlan {
    if request.instances.is_empty() {
        return PlacementPlan::default();
    }
    let nodes = index.nodes;
    let need = amounts(&request.resources);
    let feas = Feasibility::new(nodes, request, &need);
    let mut candidates = Candidates::new(index, &feas, request, need, strategy);
    let mut plan = PlacementPlan::default();
    let mut taken = Vec::new();
    let mut evicted = Vec::new();
    for (pos, &instance) in request.instances.iter().enumerate() {
        let room = best_with_power(index, &mut candidates, request).or_else(|| {
            let mut ctx = Ctx {
                index: &mut *index,
                feas: &feas,
                candidates: &mut candidates,
                request,
                need: &need,
            };
            ctx.make_room(victims, instance, &mut plan.evictions, &mut evicted)
        });
        let Some(node) = room else {
            let (reason, could_help) = blocked_reason(index, &feas, request, &need);
            if request.gang {
                undo(index, victims, request, &taken, &evicted);
                return gang_blocked(request, pos, &reason, could_help);
            }
            // Nothing changed since this instance failed, and the rest are
            // identical: they fail the same way.
            plan.blocked = request.instances[pos..]
                .iter()
                .map(|&instance| Blocked {
                    instance,
                    reason: reason.clone(),
                    preemption_could_help: could_help,
                })
                .collect();
            break;
        };
        index.take(node, &need);
        index.take_power(node, index.request_watts(node, request));
        let gpus = index.pick_gpus(node, need[GPUS]);
        index.hold_gpus(node, &gpus);
        candidates.placed(index, node);
        plan.placements.push(Placement {
            instance,
            node: nodes[node].name.clone(),
            gpu_indices: gpus.clone(),
        });
        taken.push((node, gpus));
    }
    plan
}

/// The best node with room whose power groups can also take one more
/// instance: nodes that fit but would push a group past its hard budget
/// are dropped for the rest of the request (placements only add power, so
/// they stay refused).
fn best_with_power<'a>(
    index: &ClusterIndex<'a>,
    candidates: &mut Candidates<'a>,
    request: &PlacementRequest,
) -> Option<usize> {
    loop {
        let node = candidates.best()?;
        if index
            .power_clash(node, index.request_watts(node, request))
            .is_none()
        {
            return Some(node);
        }
        candidates.exclude(index, node);
    }
}

/// Gives back what a failed gang took: its placements' room, and the
/// allocations it evicted.
fn undo<'a>(
    index: &mut ClusterIndex<'a>,
    victims: &mut Option<Victims<'a>>,
    request: &PlacementRequest,
    taken: &[(usize, Vec<u32>)],
    evicted: &[usize],
) {
    let need = amounts(&request.resources);
    for (node, gpus) in taken {
        index.release(*node, &need);
        index.free_gpus(*node, gpus);
        index.release_power(*node, index.request_watts(*node, request));
    }
    for &a in evicted {
        index.retake_alloc(a);
    }
    if let Some(victims) = victims {
        victims.restore(evicted);
    }
}

/// The state one call mutates while making room.
struct Ctx<'c, 'a> {
    index: &'c mut ClusterIndex<'a>,
    feas: &'c Feasibility,
    candidates: &'c mut Candidates<'a>,
    request: &'c PlacementRequest,
    need: &'c Amounts,
}

impl<'a> Ctx<'_, 'a> {
    /// Evicts the least set of lower-priority work that lets `instance` fit,
    /// records the evictions (and their positions in `evicted`), and returns
    /// the node that now has room.
    fn make_room(
        &mut self,
        victims: &mut Option<Victims<'a>>,
        instance: u32,
        evictions: &mut Vec<Eviction>,
        evicted: &mut Vec<usize>,
    ) -> Option<usize> {
        if self.request.priority == 0 || self.feas.feasible.is_empty() {
            return None;
        }
        let victims = victims.get_or_insert_with(|| Victims::new(self.index));
        let index: &ClusterIndex<'a> = self.index;
        let request = self.request;
        let watts_on = |n: usize| index.request_watts(n, request);
        let choice = victims.choose(index, self.feas, self.need, request.priority, &watts_on)?;
        // The search frees power as well as resources (preempt.rs); the
        // check below only guards against a disagreement between the two.
        for &a in &choice.allocs {
            self.index.release_alloc(a);
        }
        let watts = self.index.request_watts(choice.node, self.request);
        if self.index.power_clash(choice.node, watts).is_some() {
            for &a in &choice.allocs {
                self.index.retake_alloc(a);
            }
            return None;
        }
        victims.evict(&choice);
        let allocs = self.index.allocs;
        for &a in &choice.allocs {
            evicted.push(a);
            let alloc = &allocs[a];
            if let Some(n) = self.index.alloc_node(a) {
                let same_job = u32::from(alloc.job == self.request.job);
                self.candidates.freed(self.index, n, same_job);
            }
            evictions.push(Eviction {
                alloc_id: alloc.id.clone(),
                node: alloc.node.clone(),
                for_instance: instance,
            });
        }
        Some(choice.node)
    }
}

/// The plan of a gang that did not fit: nothing placed or evicted, every
/// instance blocked by the first failure (after `placed` instances fit).
fn gang_blocked(
    request: &PlacementRequest,
    placed: usize,
    reason: &str,
    could_help: bool,
) -> PlacementPlan {
    let size = request.instances.len();
    let reason = format!(
        "gang of {size} needs room for all {size} instances at once, found room for {placed}; \
         then {reason}"
    );
    PlacementPlan {
        placements: Vec::new(),
        evictions: Vec::new(),
        blocked: request
            .instances
            .iter()
            .map(|&instance| Blocked {
                instance,
                reason: reason.clone(),
                preemption_could_help: could_help,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::scheduler::testkit::{
        alloc, gpu_alloc, gpu_node, gpu_request, must_not_overcommit, node, placed_on, request,
        synthetic,
    };
    use crate::scheduler::{Constraint, Spread};

    fn filled() -> (Vec<NodeView>, Vec<AllocView>) {
        let nodes = vec![
            node("empty", 8, 16),
            node("half", 8, 16),
            node("nearly", 8, 16),
            node("full", 8, 16),
        ];
        let allocs = vec![
            alloc("h", "other", "half", 4, 8, 50),
            alloc("n", "other", "nearly", 6, 12, 50),
            alloc("f", "other", "full", 7, 15, 50),
        ];
        (nodes, allocs)
    }

    #[test]
    fn bin_pack_picks_the_fullest_node_that_fits() {
        let (nodes, allocs) = filled();
        let plan = place(&nodes, &allocs, &request("web", 50, 4, 2, 4));
        assert_eq!(placed_on(&plan), ["nearly", "half", "half", "empty"]);
        assert!(plan.evictions.is_empty() && plan.blocked.is_empty());
    }

    #[test]
    fn equally_full_nodes_are_taken_by_name() {
        let nodes = [node("b", 8, 16), node("c", 8, 16), node("a", 8, 16)];
        let plan = place(&nodes, &[], &request("web", 50, 1, 1, 1));
        assert_eq!(placed_on(&plan), ["a"]);
    }

    #[test]
    fn spread_picks_the_emptiest_and_one_instance_per_node() {
        let (nodes, allocs) = filled();
        let mut req = request("web", 50, 4, 1, 1);
        req.spread = Spread::SpreadNodes;
        let plan = place(&nodes, &allocs, &req);
        assert_eq!(placed_on(&plan), ["empty", "half", "nearly", "full"]);

        // An instance already on the emptiest node sends the first elsewhere.
        let mut allocs = allocs;
        allocs.push(alloc("w", "web", "empty", 1, 1, 50));
        req.instances = vec![1, 2];
        assert_eq!(placed_on(&place(&nodes, &allocs, &req)), ["half", "nearly"]);
    }

    #[test]
    fn spread_over_a_label_keeps_instances_on_distinct_racks_then_nodes() {
        let nodes = [
            node("a1", 8, 16).with_label("rack", "r1"),
            node("a2", 8, 16).with_label("rack", "r1"),
            node("b1", 8, 16).with_label("rack", "r2"),
            node("b2", 8, 16).with_label("rack", "r2"),
            node("c1", 8, 16).with_label("rack", "r3"),
        ];
        let allocs = [alloc("x", "other", "a2", 4, 4, 50)];
        let mut req = request("web", 50, 5, 1, 1);
        req.spread = Spread::SpreadLabel("rack".to_string());
        let plan = place(&nodes, &allocs, &req);
        let on = placed_on(&plan);
        // Within a rack, the fuller node first (bin-packing).
        assert_eq!(on, ["a2", "b1", "c1", "a1", "b2"]);
        let rack = |n: &str| n[..1].to_string();
        let first_three: BTreeSet<String> = on[..3].iter().map(|n| rack(n)).collect();
        assert_eq!(first_three.len(), 3);
        assert_eq!(on.iter().collect::<BTreeSet<_>>().len(), 5);
    }

    #[test]
    fn constraints_filter_nodes() {
        let nodes = [
            node("a", 8, 16).with_label("rack", "r7"),
            node("b", 8, 16).with_label("rack", "r8"),
            node("c", 8, 16),
        ];
        let mut req = request("web", 50, 2, 1, 1);
        req.constraints = vec![Constraint::equals("rack", "r7")];
        assert_eq!(placed_on(&place(&nodes, &[], &req)), ["a", "a"]);
        req.constraints = vec![Constraint::not_equals("rack", "r7")];
        assert_eq!(placed_on(&place(&nodes, &[], &req)), ["b", "b"]);
        req.constraints = vec![
            Constraint::exists("rack"),
            Constraint::not_equals("rack", "r7"),
        ];
        req.spread = Spread::SpreadNodes;
        assert_eq!(placed_on(&place(&nodes, &[], &req)), ["b", "b"]);
    }

    fn affinity(label: &str, value: &str, weight: i32) -> crate::scheduler::Affinity {
        crate::scheduler::Affinity {
            label: label.into(),
            value: value.into(),
            weight,
        }
    }

    #[test]
    fn affinity_scores_matching_nodes_up_and_anti_affinity_down() {
        let (nodes, allocs) = filled();
        let nodes: Vec<NodeView> = nodes
            .into_iter()
            .map(|n| {
                let gen = if n.name == "empty" {
                    "hopper"
                } else {
                    "ampere"
                };
                n.with_label("gpu_gen", gen)
            })
            .collect();
        // Bin-packing alone prefers "full" (full after); a weight of 100
        // outweighs any fill difference.
        let mut req = request("web", 50, 1, 1, 1);
        assert_eq!(placed_on(&place(&nodes, &allocs, &req)), ["full"]);
        req.affinities = vec![affinity("gpu_gen", "hopper", 100)];
        assert_eq!(placed_on(&place(&nodes, &allocs, &req)), ["empty"]);
        // A weak affinity only breaks near-ties: 1 point is 1% of fill.
        req.affinities = vec![affinity("gpu_gen", "hopper", 1)];
        assert_eq!(placed_on(&place(&nodes, &allocs, &req)), ["full"]);
        // Anti-affinity: avoid ampere nodes while the hopper node has room.
        req.affinities = vec![affinity("gpu_gen", "ampere", -100)];
        req.instances = (0..3).collect();
        assert_eq!(placed_on(&place(&nodes, &allocs, &req)), ["empty"; 3]);
        // It is never a filter: with no room on hopper, ampere is used.
        req.resources.cpu_millis = 8000;
        req.resources.memory_bytes = 1;
        req.instances = vec![0, 1];
        let plan = place(&nodes, &allocs, &req);
        assert_eq!(placed_on(&plan), ["empty"]);
        assert_eq!(plan.blocked.len(), 1, "the other nodes lack cpu");
    }

    #[test]
    fn spread_ranks_before_affinity() {
        let nodes = [
            node("a", 8, 16).with_label("zone", "z1"),
            node("b", 8, 16).with_label("zone", "z2"),
        ];
        let mut req = request("web", 50, 2, 1, 1);
        req.spread = Spread::SpreadNodes;
        req.affinities = vec![affinity("zone", "z2", 100)];
        // The affinity picks b first, the spread then sends the second to a.
        assert_eq!(placed_on(&place(&nodes, &[], &req)), ["b", "a"]);
        // Both strategies agree with affinities too.
        let (nodes, allocs) = synthetic(200, 3);
        let mut req = request("big", 50, 300, 2, 4);
        req.affinities = vec![affinity("rack", "r2", 60), affinity("rack", "r4", -30)];
        let scan = place_with(&nodes, &allocs, &req, Strategy::Scan);
        assert_eq!(scan, place_with(&nodes, &allocs, &req, Strategy::Ordered));
        must_not_overcommit(&nodes, &allocs, &req, &scan);
    }

    #[test]
    fn gpu_requests_go_to_nodes_of_the_model_with_free_gpus() {
        let nodes = [
            gpu_node("a100", 32, 256, 8, "a100"),
            gpu_node("h100-busy", 32, 256, 8, "H100"),
            gpu_node("h100-free", 32, 256, 8, "h100"),
            node("cpu", 64, 512),
        ];
        let allocs = [
            gpu_alloc("x", "other", "h100-busy", 7, 50),
            gpu_alloc("y", "other", "h100-free", 2, 50),
        ];
        let plan = place(
            &nodes,
            &allocs,
            &gpu_request("train", 50, 1, 2, Some("h100")),
        );
        assert_eq!(placed_on(&plan), ["h100-free"]);
        // Any model: the fullest node with two GPUs free.
        let plan = place(&nodes, &allocs, &gpu_request("train", 50, 1, 2, None));
        assert_eq!(placed_on(&plan), ["h100-free"]);
        let plan = place(
            &nodes,
            &allocs,
            &gpu_request("train", 50, 1, 2, Some("A100")),
        );
        assert_eq!(placed_on(&plan), ["a100"]);
    }

    #[test]
    fn a_gang_is_placed_whole_or_not_at_all() {
        let mut nodes: Vec<NodeView> = (1..=3)
            .map(|i| gpu_node(&format!("g{i}"), 16, 64, 2, "h100"))
            .collect();
        let mut learners = gpu_request("train", 50, 4, 2, None);
        learners.gang = true;
        let plan = place(&nodes, &[], &learners);
        assert!(plan.placements.is_empty() && plan.evictions.is_empty());
        assert_eq!(plan.blocked.len(), 4);
        let expected = "gang of 4 needs room for all 4 instances at once, found room for 3; \
             then no node with 2 free GPUs: 3 nodes have none; preemption at priority 50 \
             found no lower-priority work to evict that makes room";
        for (b, instance) in plan.blocked.iter().zip(0..) {
            assert_eq!((b.instance, b.reason.as_str()), (instance, expected));
            assert!(b.preemption_could_help);
        }

        nodes.push(gpu_node("g4", 16, 64, 2, "h100"));
        let plan = place(&nodes, &[], &learners);
        assert_eq!(placed_on(&plan), ["g1", "g2", "g3", "g4"]);
        assert!(plan.blocked.is_empty());
    }

    #[test]
    fn a_gang_that_fails_evicts_nothing_even_where_preemption_made_room() {
        let nodes = [
            gpu_node("g1", 16, 64, 2, "h100"),
            gpu_node("g2", 16, 64, 2, "h100"),
        ];
        let allocs = [
            gpu_alloc("low1", "batch", "g1", 2, 10),
            gpu_alloc("low2", "batch", "g2", 2, 10),
        ];
        let mut learners = gpu_request("train", 90, 3, 2, None);
        learners.gang = true;
        let plan = place(&nodes, &allocs, &learners);
        assert!(plan.placements.is_empty() && plan.evictions.is_empty());
        assert_eq!(plan.blocked.len(), 3);
        learners.instances = vec![0, 1];
        let plan = place(&nodes, &allocs, &learners);
        assert_eq!(placed_on(&plan), ["g1", "g2"]);
        assert_eq!(plan.evictions.len(), 2);
    }

    #[test]
    fn instances_that_do_not_fit_are_blocked_after_the_rest_are_placed() {
        let nodes = [node("a", 4, 8)];
        let plan = place(&nodes, &[], &request("web", 50, 3, 2, 2));
        assert_eq!(placed_on(&plan), ["a", "a"]);
        let blocked: Vec<u32> = plan.blocked.iter().map(|b| b.instance).collect();
        assert_eq!(blocked, [2]);
    }

    fn requests() -> Vec<PlacementRequest> {
        let mut packed = request("job-3", 60, 40, 2, 4);
        packed.constraints = vec![Constraint::not_equals("rack", "r3")];
        let mut spread = request("job-7", 70, 30, 1, 2);
        spread.spread = Spread::SpreadNodes;
        let mut racks = request("job-9", 80, 25, 4, 8);
        racks.spread = Spread::SpreadLabel("rack".to_string());
        let mut gpus = gpu_request("train", 95, 12, 2, Some("H100"));
        gpus.gang = true;
        let few = request("job-1", 40, 3, 8, 16);
        vec![packed, spread, racks, gpus, few]
    }

    #[test]
    fn plans_are_deterministic_and_independent_of_input_order() {
        let (nodes, allocs) = synthetic(300, 7);
        let mut reversed_nodes = nodes.clone();
        reversed_nodes.reverse();
        let mut reversed_allocs = allocs.clone();
        reversed_allocs.reverse();
        for req in requests() {
            let plan = place(&nodes, &allocs, &req);
            assert!(!plan.placements.is_empty(), "{req:?}");
            assert_eq!(plan, place(&nodes, &allocs, &req));
            assert_eq!(plan, place(&reversed_nodes, &allocs, &req), "{req:?}");
            assert_eq!(
                plan,
                place(&reversed_nodes, &reversed_allocs, &req),
                "{req:?}"
            );
            must_not_overcommit(&nodes, &allocs, &req, &plan);
        }
    }

    #[test]
    fn scanning_and_ordered_keys_give_the_same_plan() {
        let (nodes, allocs) = synthetic(200, 11);
        for mut req in requests() {
            // Enough to fill the nodes, preempt, and block the rest.
            req.instances = (0..400).collect();
            req.resources.cpu_millis *= 4;
            req.resources.memory_bytes *= 4;
            req.gang = false;
            let scan = place_with(&nodes, &allocs, &req, Strategy::Scan);
            let ordered = place_with(&nodes, &allocs, &req, Strategy::Ordered);
            assert_eq!(scan, ordered, "{req:?}");
            must_not_overcommit(&nodes, &allocs, &req, &scan);
        }
    }

    #[test]
    fn places_a_thousand_instances_on_five_thousand_nodes_without_overcommit() {
        let (nodes, allocs) = synthetic(5000, 42);
        let req = request("big", 50, 1000, 2, 4);
        let plan = place(&nodes, &allocs, &req);
        assert_eq!(plan.placements.len(), 1000);
        must_not_overcommit(&nodes, &allocs, &req, &plan);

        let mut spread = req.clone();
        spread.spread = Spread::SpreadNodes;
        let plan = place(&nodes, &allocs, &spread);
        let distinct: BTreeSet<&str> = placed_on(&plan).into_iter().collect();
        assert_eq!(
            distinct.len(),
            1000,
            "one instance per node while nodes remain"
        );
        must_not_overcommit(&nodes, &allocs, &spread, &plan);
    }
}
