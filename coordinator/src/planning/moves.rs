//! Where a drained node's allocations go when they move live: the same
//! placement policy as a scheduling pass (feasibility, constraints, room,
//! bin-pack or spread, affinities), restricted to nodes whose agent can
//! receive the allocation's kind, and never evicting anything.
//!
//! A pure function of the state, so that `apply` of a drain computes the
//! same targets on every member (see `machine::apply::drain`).

use std::collections::BTreeMap;

use herd_api::alloc::Allocation;

use super::views::{alloc_views, node_views, power_class_of, request_for, RESERVATION_PRIORITY};
use crate::power::placement::power_limits_all_seen;
use crate::scheduler::{AllocView, Pass};
use crate::state::ClusterState;

/// Where one allocation moves, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTarget {
    /// The allocation.
    pub alloc_id: String,
    /// The node chosen for it, or why none was.
    pub target: Result<String, String>,
}

/// A target for each of `alloc_ids` (allocations that run and may move),
/// in their order: each placed as one instance of its job with its own
/// resources, on a schedulable node other than its own for which
/// `receives(node, kind)` holds, counting the room of every migration in
/// flight and of the moves chosen before it.
///
/// The request's priority is 0, so that nothing is evicted for a move:
/// a move that does not fit is restarted elsewhere by the caller, through
/// the ordinary scheduler, which may preempt by the job's own priority.
pub fn move_targets(
    state: &ClusterState,
    alloc_ids: &[String],
    receives: impl Fn(&str, &str) -> bool,
) -> Vec<MoveTarget> {
    // One pass per driver kind (which nodes receive depends on it), each
    // seeing the reservations of the kinds planned before.
    let mut by_kind: BTreeMap<String, Vec<&Allocation>> = BTreeMap::new();
    let mut results: BTreeMap<&str, Result<String, String>> = BTreeMap::new();
    for id in alloc_ids {
        let Some(alloc) = state.allocations.get(id) else {
            results.insert(id, Err(format!("allocation {id} not found")));
            continue;
        };
        let Some(job) = state.jobs.get(&alloc.job) else {
            results.insert(id, Err(format!("its job {} is gone", alloc.job)));
            continue;
        };
        by_kind
            .entry(job.spec.task.driver.clone())
            .or_default()
            .push(alloc);
    }
    let base_nodes = node_views(state);
    let base_allocs = alloc_views(state);
    let limits = power_limits_all_seen(state);
    let mut planned: Vec<AllocView> = Vec::new();
    for (kind, allocs) in by_kind {
        let nodes: Vec<_> = base_nodes
            .iter()
            .cloned()
            .map(|mut n| {
                n.schedulable &= receives(&n.name, &kind);
                n
            })
            .collect();
        let views: Vec<AllocView> = base_allocs.iter().chain(&planned).cloned().collect();
        let mut pass = Pass::with_power(&nodes, &views, &limits);
        let mut chosen = Vec::new();
        for alloc in allocs {
            let target = target_in(&mut pass, state, alloc, &kind).map(|(node, gpus)| {
                chosen.push(reservation(state, alloc, &node, gpus));
                node
            });
            results.insert(&alloc.id, target);
        }
        planned.extend(chosen);
    }
    alloc_ids
        .iter()
        .map(|id| MoveTarget {
            alloc_id: id.clone(),
            target: results
                .remove(id.as_str())
                .unwrap_or_else(|| Err("not planned".into())),
        })
        .collect()
}

/// A target for each member of a gang (`member_ids`, all of one job), in
/// their order, for a gang move: like [`move_targets`], except that every
/// member must leave its own node (a gang moves whole), so each is placed
/// in a pass of its own where its node takes nothing, counting the room of
/// the members placed before it.
pub fn gang_targets(
    state: &ClusterState,
    member_ids: &[String],
    receives: impl Fn(&str, &str) -> bool,
) -> Vec<MoveTarget> {
    let base_nodes = node_views(state);
    let mut views: Vec<AllocView> = alloc_views(state);
    let limits = power_limits_all_seen(state);
    member_ids
        .iter()
        .map(|id| {
            let target = match state.allocations.get(id) {
                None => Err(format!("allocation {id} not found")),
                Some(alloc) => match state.jobs.get(&alloc.job) {
                    None => Err(format!("its job {} is gone", alloc.job)),
                    Some(job) => {
                        let kind = job.spec.task.driver.clone();
                        let nodes: Vec<_> = base_nodes
                            .iter()
                            .cloned()
                            .map(|mut n| {
                                n.schedulable &= n.name != alloc.node && receives(&n.name, &kind);
                                n
                            })
                            .collect();
                        let mut pass = Pass::with_power(&nodes, &views, &limits);
                        let placed = target_in(&mut pass, state, alloc, &kind);
                        placed.map(|(node, gpus)| {
                            views.push(reservation(state, alloc, &node, gpus));
                            node
                        })
                    }
                },
            };
            MoveTarget {
                alloc_id: id.clone(),
                target,
            }
        })
        .collect()
}

/// The node `pass` places `alloc` on (and the GPUs it would get there),
/// with its job's placement rules and the allocation's own resources, or
/// why none fits.
fn target_in(
    pass: &mut Pass<'_>,
    state: &ClusterState,
    alloc: &Allocation,
    kind: &str,
) -> Result<(String, Vec<u32>), String> {
    let Some(job) = state.jobs.get(&alloc.job) else {
        return Err(format!("its job {} is gone", alloc.job));
    };
    let mut request = request_for(job, vec![alloc.instance]);
    request.resources = alloc.resources.clone();
    request.priority = 0;
    request.gang = false;
    let plan = pass.place(&request);
    match plan.placements.first() {
        Some(p) if plan.evictions.is_empty() && p.node != alloc.node => {
            Ok((p.node.clone(), p.gpu_indices.clone()))
        }
        _ => Err(match plan.blocked.first() {
            Some(b) => format!("no node can receive it live: {}", b.reason),
            None => format!("no other node can receive a {kind} allocation live"),
        }),
    }
}

/// What a chosen move holds on its target until its migration ends, as
/// `planning::reservations` will count it once the migration is recorded.
fn reservation(
    state: &ClusterState,
    alloc: &Allocation,
    target: &str,
    gpu_indices: Vec<u32>,
) -> AllocView {
    AllocView {
        id: format!("{}@{}", alloc.id, target),
        job: alloc.job.clone(),
        node: target.to_string(),
        resources: alloc.resources.clone(),
        priority: RESERVATION_PRIORITY,
        gang: None,
        gpu_indices,
        power_class: power_class_of(state, &alloc.job),
    }
}

#[cfg(test)]
mod tests {
    use herd_api::job::JobType;
    use herd_api::placement::{ConstraintOp, LabelConstraint};

    use super::*;
    use crate::machine::command::Command;
    use crate::testkit::{node, place, run, spec};

    /// `web` (1 CPU, a vm, with `zone != VALUE` when `constraint` names a
    /// value) on n1; n2 full of low-priority work; n3 labelled `zone=b`.
    /// Returns the state and web's allocation id.
    fn cluster(constraint: Option<&str>) -> (ClusterState, String) {
        let mut state = ClusterState::default();
        let mut web = spec("web", JobType::Service, 1);
        web.task.driver = "vm".into();
        web.task.resources.cpu_millis = 1000;
        if let Some(zone) = constraint {
            web.placement.constraints.push(LabelConstraint {
                label: "zone".into(),
                op: ConstraintOp::NotEquals,
                value: Some(zone.into()),
            });
        }
        let mut index = place(&mut state, &["n1"], vec![web], 1_000);
        let id = state.allocations.keys().next().cloned().expect("placed");
        let mut filler = spec("filler", JobType::Service, 1);
        filler.priority = 1;
        filler.task.resources.cpu_millis = 4000;
        run(
            &mut state,
            index,
            Command::RegisterNode {
                node: node("n2"),
                now_ms: 1_000,
            },
        );
        index += 1;
        run(
            &mut state,
            index,
            Command::SubmitJob {
                spec: filler,
                now_ms: 1_000,
            },
        );
        index += 1;
        let plan = crate::planning::plan_job(&state, &state.jobs["filler"], 1_000).expect("plan");
        run(
            &mut state,
            index,
            Command::ApplyPlan {
                plan,
                now_ms: 1_000,
            },
        );
        index += 1;
        let mut n3 = node("n3");
        n3.labels.insert("zone".into(), "b".into());
        run(
            &mut state,
            index,
            Command::RegisterNode {
                node: n3,
                now_ms: 1_000,
            },
        );
        (state, id)
    }

    #[test]
    fn a_move_goes_only_where_its_kind_is_received_its_rules_hold_and_nothing_is_evicted() {
        let (state, id) = cluster(None);
        let ids = [id.clone()];
        // n2 is full of lower-priority work: a move never evicts it.
        let only_n2 = move_targets(&state, &ids, |n, _| n == "n2");
        assert_eq!(only_n2.len(), 1);
        let why = only_n2[0].target.clone().expect_err("no room on n2");
        assert!(why.contains("no node can receive it live"), "{why}");
        // n3 receives it.
        let any = move_targets(&state, &ids, |n, kind| kind == "vm" && n != "n1");
        assert_eq!(any[0].target, Ok("n3".to_string()));
        // A constraint n3 does not meet (zone != b) leaves nowhere to go.
        let (state, id) = cluster(Some("b"));
        let constrained = move_targets(&state, &[id], |_, _| true);
        assert!(constrained[0].target.is_err(), "{constrained:?}");
        // An unknown allocation is named, not skipped.
        let unknown = move_targets(&state, &["nope".to_string()], |_, _| true);
        assert_eq!(
            unknown[0].target,
            Err("allocation nope not found".to_string())
        );
    }
}
