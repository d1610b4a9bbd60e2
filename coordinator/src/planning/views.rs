//! The state as the placement policy sees it: nodes, allocations holding
//! resources, and a job's placement request.
//!
//! Pure functions of the state, so the leader (building a plan) and `apply`
//! (re-checking it) see the same inputs.

use std::collections::BTreeSet;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::node::NodeStatus;
use herd_api::placement::{ConstraintOp as SpecOp, SpreadPolicy};
use herd_api::power_class::PowerClass;

use super::plan::PlanCommand;
use crate::scheduler::{
    Affinity, AllocView, Constraint, ConstraintOp, NodeView, PlacementRequest, Spread,
};
use crate::state::{ClusterState, Job};

/// Nodes as the placement policy sees them.
pub fn node_views(state: &ClusterState) -> Vec<NodeView> {
    state.nodes.values().map(node_view).collect()
}

/// Whether an allocation holds resources and counts as a live instance.
pub fn is_live(alloc: &Allocation) -> bool {
    alloc.desired == AllocDesired::Run && alloc.status.holds_resources()
}

/// Allocations holding resources, as the placement policy sees them: a
/// stopping allocation holds its node's resources until it has stopped,
/// and a moving one holds them on its migration's target too
/// ([`reservations`]).
pub fn alloc_views(state: &ClusterState) -> Vec<AllocView> {
    state
        .allocations
        .values()
        .filter(|a| a.status.holds_resources())
        .map(|a| alloc_view(state, a))
        .chain(reservations(state, |_| true))
        .collect()
}

/// The power class of job `job`'s GPUs, which its allocations commit
/// against power budgets: its current spec's, or the default (TDP, which
/// never under-counts) for a job that is gone.
pub fn power_class_of(state: &ClusterState, job: &str) -> PowerClass {
    state
        .jobs
        .get(job)
        .map(|j| j.spec.placement.power_class)
        .unwrap_or_default()
}

/// The priority of a migration's reservation: above every job's (0..=100),
/// so that preemption, which evicts strictly lower priorities only, never
/// takes the room a migration is moving into.
pub const RESERVATION_PRIORITY: u32 = u32::MAX;

/// What each migration in flight holds on its target (on the nodes `on`
/// accepts): the allocation's resources, under an id of its own
/// (`ALLOC@TARGET`), so the scheduler and `verify_plan` count the
/// allocation on both nodes until the migration ends, and nothing is
/// placed in the room it moves into.
pub fn reservations<'a>(
    state: &'a ClusterState,
    on: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = AllocView> + 'a {
    state
        .migrations
        .values()
        .filter(move |m| m.is_active() && on(&m.target))
        .filter_map(|m| {
            let alloc = state.allocations.get(&m.alloc_id)?;
            Some(AllocView {
                id: format!("{}@{}", alloc.id, m.target),
                job: alloc.job.clone(),
                node: m.target.clone(),
                resources: alloc.resources.clone(),
                priority: RESERVATION_PRIORITY,
                gang: None,
                gpu_indices: m.target_gpu_indices.clone(),
                power_class: power_class_of(state, &alloc.job),
            })
        })
}

fn alloc_view(state: &ClusterState, a: &Allocation) -> AllocView {
    AllocView {
        power_class: power_class_of(state, &a.job),
        id: a.id.clone(),
        job: a.job.clone(),
        node: a.node.clone(),
        resources: a.resources.clone(),
        priority: a.priority,
        gang: a.gang.clone(),
        gpu_indices: a.gpu_indices.clone(),
    }
}

fn node_view(n: &herd_api::node::NodeInfo) -> NodeView {
    NodeView {
        name: n.name.clone(),
        capacity: n.capacity.clone(),
        labels: n.labels.clone(),
        schedulable: n.status == NodeStatus::Ready && n.eligible,
    }
}

/// The part of the state a plan touches, as views for `verify_plan`: the
/// nodes it places on or evicts from (those that exist), every allocation
/// holding resources there, and every member of the gangs it evicts from
/// (wherever they run), so that the check sees exactly what it would see in
/// the whole cluster, at the cost of the plan's nodes only.
pub fn touched_views(state: &ClusterState, plan: &PlanCommand) -> (Vec<NodeView>, Vec<AllocView>) {
    let names: BTreeSet<&str> = plan
        .placements
        .iter()
        .map(|p| p.node.as_str())
        .chain(plan.evictions.iter().map(|e| e.node.as_str()))
        .collect();
    let nodes: Vec<NodeView> = names
        .iter()
        .filter_map(|name| state.nodes.get(*name))
        .map(node_view)
        .collect();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let mut allocs = Vec::new();
    let mut take = |a: &Allocation, allocs: &mut Vec<AllocView>| {
        if a.status.holds_resources() && ids.insert(a.id.clone()) {
            allocs.push(alloc_view(state, a));
        }
    };
    for node in &nodes {
        for a in state.allocs_on_node(&node.name) {
            take(a, &mut allocs);
        }
    }
    let gangs: BTreeSet<&str> = plan
        .evictions
        .iter()
        .filter_map(|e| state.allocations.get(&e.alloc_id))
        .filter_map(|a| a.gang.as_deref())
        .collect();
    for gang in gangs {
        // A gang is one job's allocations (see `gang_of`).
        for a in state.allocs_of_job(gang) {
            if a.gang.as_deref() == Some(gang) {
                take(a, &mut allocs);
            }
        }
    }
    allocs.extend(reservations(state, |node| names.contains(node)));
    (nodes, allocs)
}

/// The placement request for `instances` of `job`, with the spec's
/// constraints, affinities, spread policy and gang flag.
pub fn request_for(job: &Job, instances: Vec<u32>) -> PlacementRequest {
    let placement = &job.spec.placement;
    PlacementRequest {
        job: job.spec.name.clone(),
        priority: job.spec.priority,
        instances,
        resources: job.spec.task.resources.clone(),
        constraints: placement
            .constraints
            .iter()
            .map(|c| Constraint {
                label: c.label.clone(),
                op: match c.op {
                    SpecOp::Equals => ConstraintOp::Equals,
                    SpecOp::NotEquals => ConstraintOp::NotEquals,
                    SpecOp::Exists => ConstraintOp::Exists,
                },
                value: c.value.clone(),
            })
            .collect(),
        affinities: placement
            .affinities
            .iter()
            .map(|a| Affinity {
                label: a.label.clone(),
                value: a.value.clone(),
                weight: a.weight,
            })
            .collect(),
        spread: match &placement.spread {
            SpreadPolicy::BinPack => Spread::BinPack,
            SpreadPolicy::Nodes => Spread::SpreadNodes,
            SpreadPolicy::Label(label) => Spread::SpreadLabel(label.clone()),
        },
        gang: placement.gang,
        power_class: placement.power_class,
    }
}

/// The gang id a gang job's allocations carry, so that preemption evicts
/// them all together or not at all: the job's name.
pub fn gang_of(job: &Job) -> Option<String> {
    job.spec.placement.gang.then(|| job.spec.name.clone())
}
