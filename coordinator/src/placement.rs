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
    state
        .nodes
        .values()
        .map(|n| NodeView {
            name: n.name.clone(),
            capacity: n.capacity.clone(),
            labels: n.labels.clone(),
            schedulable: n.status == NodeStatus::Ready && n.eligible,
        })
        .collect()
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
        .map(|a| AllocView {
            id: a.id.clone(),
            job: a.job.clone(),
            node: a.node.clone(),
            resources: a.resources.clone(),
            priority: a.priority,
            gang: a.gang.clone(),
        })
        .collect()
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
        .allocations
        .values()
        .filter(|a| a.job == job.spec.name && a.job_version == job.version && is_live(a))
        .map(|a| a.instance)
        .collect();
    (0..job.spec.count).filter(|i| !live.contains(i)).collect()
}

/// The plan the leader should propose for `job`, or None when nothing would change.
pub fn plan_job(state: &ClusterState, job: &Job) -> Option<PlanCommand> {
    if job.status == JobStatus::Stopped || job.status == JobStatus::Complete {
        return None;
    }
    let missing = missing_instances(state, job);
    if missing.is_empty() {
        return job.blocked.is_some().then(|| PlanCommand {
            job: job.spec.name.clone(),
            job_version: job.version,
            placements: Vec::new(),
            evictions: Vec::new(),
            blocked: None,
        });
    }
    let plan = scheduler::place(
        &node_views(state),
        &alloc_views(state),
        &request_for(job, missing),
    );
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
