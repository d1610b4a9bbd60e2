//! The bridge between `ClusterState` and the placement policy: views of the
//! state for [`crate::scheduler`], and the plans the leader proposes.
//!
//! Everything here is a pure function of the state, so the leader (building
//! a plan) and `apply` (re-checking it) see the same inputs.

use std::collections::BTreeMap;

use herd_api::alloc::{AllocDesired, AllocStatus, Allocation};
use herd_api::job::JobType;
use herd_api::node::NodeStatus;
use serde::{Deserialize, Serialize};

use crate::scheduler::{
    self, AllocView, NodeView, Placement, PlacementPlan, PlacementRequest, Spread,
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

/// The placement request for `instances` of `job`.
pub fn request_for(job: &Job, instances: Vec<u32>) -> PlacementRequest {
    PlacementRequest {
        job: job.spec.name.clone(),
        priority: job.spec.priority,
        instances,
        resources: job.spec.task.resources.clone(),
        constraints: Vec::new(),
        spread: Spread::BinPack,
        gang: false,
    }
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
        .allocations
        .values()
        .filter(|a| a.job == job.spec.name && a.job_version == job.version)
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

/// The plan the leader should propose for `job` at `now_ms`, or None when
/// nothing would change.
pub fn plan_job(state: &ClusterState, job: &Job, now_ms: u64) -> Option<PlanCommand> {
    if matches!(
        job.status,
        JobStatus::Stopped | JobStatus::Complete | JobStatus::Failed
    ) {
        return None;
    }
    let missing = missing_instances(state, job, now_ms);
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
