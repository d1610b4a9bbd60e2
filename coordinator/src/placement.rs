//! The bridge between `ClusterState` and the placement policy: views of the
//! state for [`crate::scheduler`], and the plans the leader proposes.
//!
//! Everything here is a pure function of the state, so the leader (building
//! a plan) and `apply` (re-checking it) see the same inputs.

use std::collections::BTreeSet;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::node::NodeStatus;
use serde::{Deserialize, Serialize};

use herd_api::placement::{ConstraintOp as SpecOp, SpreadPolicy};

use crate::scheduler::{
    self, Affinity, AllocView, Constraint, ConstraintOp, NodeView, Placement, PlacementPlan,
    PlacementRequest, Spread,
};
use crate::state::{ClusterState, Job, JobStatus};

/// A placement plan for one job version, as proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCommand {
    /// The job.
    pub job: String,
    /// The version the plan was built for; a plan for an older version is stale.
    pub job_version: u64,
    /// (instance, node) pairs to create.
    pub placements: Vec<(u32, String)>,
    /// (allocation id, node, instance it makes room for) to evict.
    pub evictions: Vec<(String, String, u32)>,
    /// Why instances stay unplaced, when some do.
    pub blocked: Option<String>,
}

/// Nodes as the placement policy sees them.
pub fn node_views(state: &ClusterState) -> Vec<NodeView> {
    state.nodes.values().map(node_view).collect()
}

/// Whether an allocation holds resources and counts as a live instance.
pub fn is_live(alloc: &Allocation) -> bool {
    alloc.desired == AllocDesired::Run && alloc.status.holds_resources()
}

/// Allocations holding resources, as the placement policy sees them: a
/// stopping allocation holds its node's resources until it has stopped.
pub fn alloc_views(state: &ClusterState) -> Vec<AllocView> {
    state
        .allocations
        .values()
        .filter(|a| a.status.holds_resources())
        .map(alloc_view)
        .collect()
}

fn alloc_view(a: &Allocation) -> AllocView {
    AllocView {
        id: a.id.clone(),
        job: a.job.clone(),
        node: a.node.clone(),
        resources: a.resources.clone(),
        priority: a.priority,
        gang: a.gang.clone(),
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
        .map(|(_, node)| node.as_str())
        .chain(plan.evictions.iter().map(|(_, node, _)| node.as_str()))
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
            allocs.push(alloc_view(a));
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
        .filter_map(|(id, _, _)| state.allocations.get(id))
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
    }
}

/// The gang id a gang job's allocations carry, so that preemption evicts
/// them all together or not at all: the job's name.
pub fn gang_of(job: &Job) -> Option<String> {
    job.spec.placement.gang.then(|| job.spec.name.clone())
}

/// Instances of the job's current version that have no live allocation.
pub fn missing_instances(state: &ClusterState, job: &Job) -> Vec<u32> {
    let live: BTreeSet<u32> = state
        .allocs_of_job(&job.spec.name)
        .filter(|a| a.job_version == job.version && is_live(a))
        .map(|a| a.instance)
        .collect();
    (0..job.spec.count).filter(|i| !live.contains(i)).collect()
}

/// The plan the leader should propose for `job`, or None when nothing would change.
pub fn plan_job(state: &ClusterState, job: &Job) -> Option<PlanCommand> {
    let (nodes, allocs) = (node_views(state), alloc_views(state));
    let mut pass = scheduler::Pass::new(&nodes, &allocs);
    plan_in_pass(&mut pass, job, missing_instances(state, job))
}

/// Everything one scheduling pass needs, copied out of the state so that
/// planning runs without holding the state's lock.
pub struct PassInput {
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// Every allocation holding resources.
    pub allocs: Vec<AllocView>,
    /// Jobs that may need a plan, with their missing instances, by name.
    pub jobs: Vec<(Job, Vec<u32>)>,
}

/// The jobs that may need a plan: not stopped or complete, and either with
/// missing instances or with a blocked reason to clear. A fully placed job
/// costs O(its allocations); the views are built only when some job has work.
pub fn pass_input(state: &ClusterState) -> PassInput {
    let jobs: Vec<(Job, Vec<u32>)> = state
        .jobs
        .values()
        .filter(|job| job.status != JobStatus::Stopped && job.status != JobStatus::Complete)
        .filter_map(|job| {
            let missing = missing_instances(state, job);
            (!missing.is_empty() || job.blocked.is_some()).then(|| (job.clone(), missing))
        })
        .collect();
    let needs_views = jobs.iter().any(|(_, missing)| !missing.is_empty());
    PassInput {
        nodes: if needs_views {
            node_views(state)
        } else {
            Vec::new()
        },
        allocs: if needs_views {
            alloc_views(state)
        } else {
            Vec::new()
        },
        jobs,
    }
}

/// Plans every job of `input` in one [`scheduler::Pass`], in job-name order,
/// each seeing the room the earlier ones took.
pub fn plan_pass(input: &PassInput) -> Vec<PlanCommand> {
    let mut pass = scheduler::Pass::new(&input.nodes, &input.allocs);
    input
        .jobs
        .iter()
        .filter_map(|(job, missing)| plan_in_pass(&mut pass, job, missing.clone()))
        .collect()
}

/// The plan for `job`'s `missing` instances within `pass`, or None when
/// nothing would change.
fn plan_in_pass(
    pass: &mut scheduler::Pass<'_>,
    job: &Job,
    missing: Vec<u32>,
) -> Option<PlanCommand> {
    if job.status == JobStatus::Stopped || job.status == JobStatus::Complete {
        return None;
    }
    if missing.is_empty() {
        return job.blocked.is_some().then(|| PlanCommand {
            job: job.spec.name.clone(),
            job_version: job.version,
            placements: Vec::new(),
            evictions: Vec::new(),
            blocked: None,
        });
    }
    let plan = pass.place(&request_for(job, missing));
    let blocked = summarize_blocked(&plan);
    if plan.placements.is_empty() && plan.evictions.is_empty() && blocked == job.blocked {
        return None;
    }
    Some(PlanCommand {
        job: job.spec.name.clone(),
        job_version: job.version,
        placements: plan
            .placements
            .iter()
            .map(|p| (p.instance, p.node.clone()))
            .collect(),
        evictions: plan
            .evictions
            .iter()
            .map(|e| (e.alloc_id.clone(), e.node.clone(), e.for_instance))
            .collect(),
        blocked,
    })
}

/// One line for all blocked instances: how many, and the first reason.
fn summarize_blocked(plan: &PlacementPlan) -> Option<String> {
    let first = plan.blocked.first()?;
    Some(match plan.blocked.len() {
        1 => format!("instance {}: {}", first.instance, first.reason),
        n => format!("{n} instances unplaced: {}", first.reason),
    })
}

/// The scheduler's form of a proposed plan, for re-checking inside `apply`.
pub fn to_scheduler_plan(command: &PlanCommand) -> PlacementPlan {
    PlacementPlan {
        placements: command
            .placements
            .iter()
            .map(|(instance, node)| Placement {
                instance: *instance,
                node: node.clone(),
            })
            .collect(),
        evictions: command
            .evictions
            .iter()
            .map(|(alloc_id, node, for_instance)| scheduler::Eviction {
                alloc_id: alloc_id.clone(),
                node: node.clone(),
                for_instance: *for_instance,
            })
            .collect(),
        blocked: Vec::new(),
    }
}
