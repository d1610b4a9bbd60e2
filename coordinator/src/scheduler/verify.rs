//! The apply-time check: which parts of a plan still hold on newer state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::feasibility::check_node;
use super::index::{amounts, Amounts, ClusterIndex, GPUS};
use super::reason::node_reason;
use super::{
    AllocView, Eviction, NodeView, Placement, PlacementPlan, PlacementRequest, PlanVerdict,
    PowerLimit, Rejection,
};

/// Re-checks `plan` (built by [`place`](super::place) from an older snapshot)
/// against the current `nodes` and `allocs`, as Raft's `apply` must before it
/// commits anything.
///
/// Placements are checked in plan order. For each, its evictions are applied
/// first, and must still be allowed: only allocations of strictly lower
/// priority than the request, and whole gangs (allocations that are already
/// gone are skipped). Then the node must still exist, be schedulable, meet the
/// constraints and GPU model, and have room for the instance besides the
/// plan's earlier accepted placements. A placement that fails is rejected with
/// a reason and its evictions are undone; evictions made for no placement are
/// dropped. For a gang request, one rejection (or a plan that places only
/// some instances) rejects every placement. So two plans built on the same
/// stale snapshot can never over-commit a node.
pub fn verify_plan(
    nodes: &[NodeView],
    allocs: &[AllocView],
    request: &PlacementRequest,
    plan: &PlacementPlan,
) -> PlanVerdict {
    verify_plan_with_power(nodes, allocs, &[], request, plan)
}

/// [`verify_plan`] that also keeps every power group of `limits` at or
/// under its hard budget: each accepted GPU placement (after its
/// evictions) must fit the committed power of every group its node belongs
/// to, counting the plan's earlier accepted placements, so two plans built
/// on the same snapshot cannot together overshoot a budget. `nodes` may be
/// a part of the cluster when `limits` carry what the rest commits
/// ([`PowerLimit::unseen_watts`]).
pub fn verify_plan_with_power(
    nodes: &[NodeView],
    allocs: &[AllocView],
    limits: &[PowerLimit],
    request: &PlacementRequest,
    plan: &PlacementPlan,
) -> PlanVerdict {
    let need = amounts(&request.resources);
    let mut check = Check {
        index: ClusterIndex::with_power(nodes, allocs, limits),
        request,
        need,
        evicted: vec![false; allocs.len()],
        alloc_ids: HashMap::new(),
        gangs: BTreeMap::new(),
    };
    if !plan.evictions.is_empty() {
        for (a, alloc) in allocs.iter().enumerate() {
            check.alloc_ids.entry(alloc.id.as_str()).or_insert(a);
            if let Some(gang) = &alloc.gang {
                check.gangs.entry(gang.as_str()).or_default().push(a);
            }
        }
    }
    let mut evictions_for: BTreeMap<u32, Vec<&Eviction>> = BTreeMap::new();
    for eviction in &plan.evictions {
        evictions_for
            .entry(eviction.for_instance)
            .or_default()
            .push(eviction);
    }

    let wanted: BTreeSet<u32> = request.instances.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let mut verdict = PlanVerdict::default();
    for placement in &plan.placements {
        let instance = placement.instance;
        let result = if !wanted.contains(&instance) {
            Err(format!(
                "instance {instance} is not among the request's instances"
            ))
        } else if !seen.insert(instance) {
            Err(format!("instance {instance} is placed twice in the plan"))
        } else {
            let evictions = evictions_for.get(&instance).map_or(&[][..], Vec::as_slice);
            check.placement(&placement.node, &placement.gpu_indices, evictions)
        };
        match result {
            Ok((applied, gpu_indices)) => {
                verdict.accepted.push(Placement {
                    gpu_indices,
                    ..placement.clone()
                });
                verdict.evictions.extend(applied.into_iter().cloned());
            }
            Err(reason) => verdict.rejected.push(Rejection {
                instance,
                node: placement.node.clone(),
                reason,
            }),
        }
    }

    if request.gang && !plan.placements.is_empty() {
        let partial = seen.len() < wanted.len();
        let first = verdict
            .rejected
            .first()
            .map(|r| (r.instance, r.reason.clone()));
        if partial || first.is_some() {
            let cause = match first {
                Some((instance, reason)) => format!("instance {instance} was rejected: {reason}"),
                None => format!(
                    "the plan places {} of {} instances",
                    seen.len(),
                    wanted.len()
                ),
            };
            return reject_gang(plan, verdict, &cause);
        }
    }
    verdict
}

/// Rejects every placement of a gang plan; those that were fine on their own
/// get `cause` as their reason.
fn reject_gang(plan: &PlacementPlan, verdict: PlanVerdict, cause: &str) -> PlanVerdict {
    let own: BTreeMap<(u32, &str), &str> = verdict
        .rejected
        .iter()
        .map(|r| ((r.instance, r.node.as_str()), r.reason.as_str()))
        .collect();
    let rejected = plan
        .placements
        .iter()
        .map(|p: &Placement| Rejection {
            instance: p.instance,
            node: p.node.clone(),
            reason: match own.get(&(p.instance, p.node.as_str())) {
                Some(reason) => reason.to_string(),
                None => format!("gang: {cause}"),
            },
        })
        .collect();
    PlanVerdict {
        accepted: Vec::new(),
        evictions: Vec::new(),
        rejected,
    }
}

/// Evictions that still apply, and the allocations (positions) they evict.
type Allowed<'e> = (Vec<&'e Eviction>, Vec<usize>);

/// An accepted placement's evictions that still applied, and its GPU indices.
type Placed<'e> = (Vec<&'e Eviction>, Vec<u32>);

/// The state of the check as it walks the plan.
struct Check<'a> {
    index: ClusterIndex<'a>,
    request: &'a PlacementRequest,
    need: Amounts,
    evicted: Vec<bool>,
    alloc_ids: HashMap<&'a str, usize>,
    gangs: BTreeMap<&'a str, Vec<usize>>,
}

impl<'a> Check<'a> {
    /// Checks one placement on `node` with GPU indices `gpus` after
    /// `evictions`; on success the placement and its evictions stay
    /// applied, and the evictions that still had something to evict are
    /// returned with the placement's GPU indices (the lowest free ones
    /// when `gpus` is empty and the request asks for GPUs).
    fn placement<'e>(
        &mut self,
        node: &str,
        gpus: &[u32],
        evictions: &[&'e Eviction],
    ) -> Result<Placed<'e>, String> {
        let n = self
            .index
            .node_id(node)
            .ok_or_else(|| format!("node {node} is not in the cluster"))?;
        let view = &self.index.nodes[n];
        if let Err(unfit) = check_node(view, self.request, &self.need) {
            let capacity = self.index.capacity(n);
            let free = self.index.free(n);
            return Err(node_reason(
                node,
                Some(unfit),
                self.request,
                &self.need,
                capacity,
                &free,
            ));
        }
        let (applied, victims) = self.allowed_evictions(evictions)?;
        for &a in &victims {
            self.evicted[a] = true;
            self.index.release_alloc(a);
        }
        let reason = if self.index.fits(n, &self.need) {
            let gpus = if gpus.is_empty() {
                self.index.pick_gpus(n, self.need[GPUS])
            } else {
                gpus.to_vec()
            };
            let watts = self.index.request_watts(n, self.request);
            match self.index.gpu_clash(n, &gpus, self.need[GPUS]) {
                None => match self.index.power_clash(n, watts) {
                    None => {
                        self.index.take(n, &self.need);
                        self.index.hold_gpus(n, &gpus);
                        self.index.take_power(n, watts);
                        return Ok((applied, gpus));
                    }
                    Some(why) => format!("node {node}: {why}"),
                },
                Some(why) => format!("node {node}: {why}"),
            }
        } else {
            let free = self.index.free(n);
            let capacity = self.index.capacity(n);
            node_reason(node, None, self.request, &self.need, capacity, &free)
        };
        for &a in &victims {
            self.evicted[a] = false;
            self.index.retake_alloc(a);
        }
        Err(reason)
    }

    /// The evictions that still have an allocation to evict, and those
    /// allocations; an error if any is no longer allowed.
    fn allowed_evictions<'e>(&self, evictions: &[&'e Eviction]) -> Result<Allowed<'e>, String> {
        let mut applied = Vec::new();
        let mut victims = Vec::new();
        for &eviction in evictions {
            let Some(&a) = self.alloc_ids.get(eviction.alloc_id.as_str()) else {
                continue;
            };
            if self.evicted[a] {
                continue;
            }
            let alloc = &self.index.allocs[a];
            if alloc.priority >= self.request.priority {
                return Err(format!(
                    "may not evict {}: its priority {} is not below {}",
                    alloc.id, alloc.priority, self.request.priority
                ));
            }
            if let Some(gang) = &alloc.gang {
                let members = self.gangs.get(gang.as_str()).map_or(&[][..], Vec::as_slice);
                let kept = members.iter().find(|&&m| {
                    !self.evicted[m]
                        && !evictions
                            .iter()
                            .any(|e| e.alloc_id == self.index.allocs[m].id)
                });
                if let Some(&kept) = kept {
                    return Err(format!(
                        "may not evict {}: it would split gang {gang}, whose {} stays",
                        alloc.id, self.index.allocs[kept].id
                    ));
                }
            }
            applied.push(eviction);
            victims.push(a);
        }
        Ok((applied, victims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::place;
    use crate::scheduler::testkit::{alloc, gpu_node, gpu_request, node, request};

    fn nodes_ab() -> Vec<NodeView> {
        vec![node("a", 8, 16), node("b", 8, 16)]
    }

    fn placement(instance: u32, node: &str) -> Placement {
        Placement {
            instance,
            node: node.to_string(),
            gpu_indices: Vec::new(),
        }
    }

    #[test]
    fn accepts_a_plan_that_still_fits() {
        let nodes = nodes_ab();
        let snapshot = [alloc("x", "db", "a", 4, 8, 50)];
        let req = request("web", 50, 3, 2, 4);
        let plan = place(&nodes, &snapshot, &req);
        // Newer state: something else started on b; a plan on a still fits.
        let newer = [snapshot[0].clone(), alloc("y", "db", "b", 2, 2, 50)];
        let verdict = verify_plan(&nodes, &newer, &req, &plan);
        assert!(verdict.is_fully_accepted(), "{verdict:?}");
        assert_eq!(verdict.accepted, plan.placements);
    }

    #[test]
    fn rejects_what_a_stale_snapshot_would_overcommit() {
        let nodes = nodes_ab();
        let req = request("web", 50, 2, 4, 8);
        let plan = place(&nodes, &[], &req);
        assert_eq!(plan.placements, [placement(0, "a"), placement(1, "a")]);
        // Meanwhile another plan, built on the same empty snapshot, put
        // 4 cores and 8GiB on a.
        let newer = [alloc("other", "api", "a", 4, 8, 50)];
        let verdict = verify_plan(&nodes, &newer, &req, &plan);
        assert_eq!(verdict.accepted, [placement(0, "a")]);
        let expected = Rejection {
            instance: 1,
            node: "a".to_string(),
            reason: "node a lacks free memory: needs 8GiB, 0B free".to_string(),
        };
        assert_eq!(verdict.rejected, [expected]);
    }

    #[test]
    fn rejects_nodes_that_left_or_no_longer_qualify() {
        let mut nodes = vec![
            node("a", 8, 16).with_label("rack", "r7"),
            node("b", 8, 16).with_label("rack", "r7"),
        ];
        let mut req = request("web", 50, 3, 1, 1);
        req.constraints = vec![crate::scheduler::Constraint::equals("rack", "r7")];
        req.spread = crate::scheduler::Spread::SpreadNodes;
        let mut plan = place(&nodes, &[], &req);
        plan.placements[2].node = "gone".to_string();
        nodes[0].schedulable = false;
        nodes[1].labels.clear();
        let verdict = verify_plan(&nodes, &[], &req, &plan);
        let reasons: Vec<&str> = verdict.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "node a is not schedulable",
                "node b fails constraint rack=r7",
                "node gone is not in the cluster"
            ]
        );
        assert!(verdict.accepted.is_empty());
    }

    #[test]
    fn keeps_evictions_only_with_their_placement() {
        let nodes = [node("a", 4, 8)];
        let snapshot = [alloc("low", "batch", "a", 4, 1, 10)];
        let req = request("web", 50, 1, 4, 1);
        let plan = place(&nodes, &snapshot, &req);
        assert_eq!(plan.evictions.len(), 1);
        let verdict = verify_plan(&nodes, &snapshot, &req, &plan);
        assert!(verdict.is_fully_accepted());
        assert_eq!(verdict.evictions, plan.evictions);

        // The node filled up with work the plan may not evict: the placement
        // is rejected and its eviction dropped.
        let newer = [snapshot[0].clone(), alloc("high", "db", "a", 1, 1, 90)];
        let verdict = verify_plan(&nodes, &newer, &req, &plan);
        assert!(verdict.accepted.is_empty() && verdict.evictions.is_empty());
        assert_eq!(
            verdict.rejected[0].reason,
            "node a lacks free cpu: needs 4 cpu, 3 cpu free"
        );
    }

    #[test]
    fn refuses_evictions_that_are_no_longer_allowed() {
        let nodes = [node("a", 4, 8), node("b", 4, 8)];
        let snapshot = [
            alloc("m1", "train", "a", 4, 1, 10).in_gang("g"),
            alloc("m2", "train", "b", 4, 1, 10).in_gang("g"),
        ];
        let req = request("web", 50, 1, 4, 1);
        let plan = place(&nodes, &snapshot, &req);
        assert_eq!(plan.evictions.len(), 2);

        // The gang grew a third member since: evicting two would split it.
        let mut grown = snapshot.to_vec();
        grown.push(alloc("m3", "train", "c", 1, 1, 10).in_gang("g"));
        let verdict = verify_plan(&nodes, &grown, &req, &plan);
        assert_eq!(
            verdict.rejected[0].reason,
            "may not evict m1: it would split gang g, whose m3 stays"
        );
        // Its priority was raised since.
        let mut raised = snapshot.to_vec();
        raised[0].priority = 50;
        let verdict = verify_plan(&nodes, &raised, &req, &plan);
        assert_eq!(
            verdict.rejected[0].reason,
            "may not evict m1: its priority 50 is not below 50"
        );
        assert!(verdict.evictions.is_empty());
    }

    #[test]
    fn one_rejection_rejects_a_whole_gang() {
        let nodes: Vec<NodeView> = (1..=4)
            .map(|i| gpu_node(&format!("g{i}"), 16, 64, 2, "h100"))
            .collect();
        let mut req = gpu_request("train", 50, 4, 2, None);
        req.gang = true;
        let plan = place(&nodes, &[], &req);
        assert_eq!(plan.placements.len(), 4);
        assert!(verify_plan(&nodes, &[], &req, &plan).is_fully_accepted());

        let newer = [crate::scheduler::testkit::gpu_alloc(
            "x", "other", "g3", 1, 50,
        )];
        let verdict = verify_plan(&nodes, &newer, &req, &plan);
        assert!(verdict.accepted.is_empty() && verdict.evictions.is_empty());
        let reasons: Vec<&str> = verdict.rejected.iter().map(|r| r.reason.as_str()).collect();
        let own = "node g3 lacks free GPUs: needs 2 GPUs, 1 GPU free";
        let cause = format!("gang: instance 2 was rejected: {own}");
        assert_eq!(reasons, [cause.as_str(), &cause, own, &cause]);

        let mut partial = plan.clone();
        partial.placements.pop();
        let verdict = verify_plan(&nodes, &[], &req, &partial);
        assert_eq!(verdict.rejected.len(), 3);
        assert_eq!(
            verdict.rejected[0].reason,
            "gang: the plan places 3 of 4 instances"
        );
    }

    #[test]
    fn rejects_unknown_and_repeated_instances() {
        let nodes = nodes_ab();
        let req = request("web", 50, 2, 1, 1);
        let plan = PlacementPlan {
            placements: vec![placement(0, "a"), placement(0, "b"), placement(7, "a")],
            ..Default::default()
        };
        let verdict = verify_plan(&nodes, &[], &req, &plan);
        assert_eq!(verdict.accepted, [placement(0, "a")]);
        let reasons: Vec<&str> = verdict.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "instance 0 is placed twice in the plan",
                "instance 7 is not among the request's instances"
            ]
        );
    }
}
