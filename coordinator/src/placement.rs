//! The bridge between `ClusterState` and the placement policy: views of the
//! state for [`crate::scheduler`], and the plans the leader proposes.
//!
//! Everything here is a pure function of the state, so the leader (building
//! a plan) and `apply` (re-checking it) see the same inputs.

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::{AllocDesired, AllocStatus, Allocation};
use herd_api::job::JobType;
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

/// Attempts a batch instance gets before its job is failed.
pub const BATCH_ATTEMPTS: usize = 3;
/// Delay before an instance that failed once is placed again; it doubles
/// with every further failure, up to [`RETRY_MAX_MS`], so a crash-looping
/// service does not flood the log with allocations.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest delay between attempts of a failing instance.
pub const RETRY_MAX_MS: u64 = 60_000;

/// The wait before the next attempt of an instance that failed `failures` times.
pub fn retry_delay_ms(failures: usize) -> u64 {
    match failures {
        0 => 0,
        n => RETRY_BASE_MS
            .saturating_mul(1 << (n - 1).min(16))
            .min(RETRY_MAX_MS),
    }
}

/// What the allocations of one instance of a job's current version say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InstanceHistory {
    /// An allocation runs or is about to.
    pub live: bool,
    /// An allocation ran to completion.
    pub complete: bool,
    /// Allocations that failed (lost nodes and evictions do not count).
    pub failures: usize,
    /// When the last failure was recorded, ms since the epoch.
    pub last_failure_ms: u64,
}

/// The history of every instance of the job's current version that has allocations.
pub fn instance_histories(state: &ClusterState, job: &Job) -> BTreeMap<u32, InstanceHistory> {
    let mut histories: BTreeMap<u32, InstanceHistory> = BTreeMap::new();
    for alloc in state
        .allocs_of_job(&job.spec.name)
        .filter(|a| a.job_version == job.version)
    {
        let history = histories.entry(alloc.instance).or_default();
        history.live |= is_live(alloc);
        match alloc.status {
            AllocStatus::Complete => history.complete = true,
            AllocStatus::Failed => {
                history.failures += 1;
                let at = alloc.events.last().map_or(0, |e| e.at_ms);
                history.last_failure_ms = history.last_failure_ms.max(at);
            }
            _ => {}
        }
    }
    histories
}

/// Whether an instance with this history has used up its attempts (batch only).
pub fn exhausted(job: &Job, history: &InstanceHistory) -> bool {
    job.spec.job_type == JobType::Batch && history.failures >= BATCH_ATTEMPTS && !history.complete
}

/// Instances of the job's current version that need a new allocation at
/// `now_ms`: no live allocation, not completed (batch), attempts left
/// (batch), and past the retry delay of their last failure.
pub fn missing_instances(state: &ClusterState, job: &Job, now_ms: u64) -> Vec<u32> {
    let histories = instance_histories(state, job);
    let batch = job.spec.job_type == JobType::Batch;
    (0..job.spec.count)
        .filter(|i| {
            let history = histories.get(i).copied().unwrap_or_default();
            if history.live || (batch && history.complete) || exhausted(job, &history) {
                return false;
            }
            now_ms >= history.last_failure_ms + retry_delay_ms(history.failures)
        })
        .collect()
}

/// Whether the scheduler has nothing more to do for a job in this status.
fn finished(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Stopped | JobStatus::Complete | JobStatus::Failed
    )
}

/// The plan the leader should propose for `job` at `now_ms`, or None when
/// nothing would change.
pub fn plan_job(state: &ClusterState, job: &Job, now_ms: u64) -> Option<PlanCommand> {
    let (nodes, allocs) = (node_views(state), alloc_views(state));
    let mut pass = scheduler::Pass::new(&nodes, &allocs);
    plan_in_pass(&mut pass, job, missing_instances(state, job, now_ms))
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

/// The jobs that may need a plan at `now_ms`: not finished, and either with
/// missing instances or with a blocked reason to clear. A fully placed job
/// costs O(its allocations); the views are built only when some job has work.
pub fn pass_input(state: &ClusterState, now_ms: u64) -> PassInput {
    let jobs: Vec<(Job, Vec<u32>)> = state
        .jobs
        .values()
        .filter(|job| !finished(job.status))
        .filter_map(|job| {
            let missing = missing_instances(state, job, now_ms);
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
    if finished(job.status) {
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
