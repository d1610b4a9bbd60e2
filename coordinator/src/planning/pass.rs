//! One scheduling pass: which jobs need a plan, and their plans, computed
//! from a copy of the state so that planning holds no lock.

use super::plan::{PlanCommand, PlannedEviction, PlannedPlacement};
use super::retry::missing_instances;
use super::views::{alloc_views, node_views, request_for};
use crate::power::placement::power_limits_all_seen;
use crate::scheduler::{self, AllocView, NodeView, PlacementPlan, PowerLimit};
use crate::state::{ClusterState, Job, JobStatus};

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
    let limits = power_limits_all_seen(state);
    let mut pass = scheduler::Pass::with_power(&nodes, &allocs, &limits);
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
    /// The power budgets, which placement keeps every group under.
    pub power: Vec<PowerLimit>,
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
        power: if needs_views {
            power_limits_all_seen(state)
        } else {
            Vec::new()
        },
        jobs,
    }
}

/// Plans every job of `input` in one [`scheduler::Pass`], in job-name order,
/// each seeing the room the earlier ones took.
pub fn plan_pass(input: &PassInput) -> Vec<PlanCommand> {
    let mut pass = scheduler::Pass::with_power(&input.nodes, &input.allocs, &input.power);
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
            .map(|p| PlannedPlacement {
                gpu_indices: p.gpu_indices.clone(),
                ..PlannedPlacement::new(p.instance, p.node.clone())
            })
            .collect(),
        evictions: plan
            .evictions
            .iter()
            .map(|e| PlannedEviction {
                alloc_id: e.alloc_id.clone(),
                node: e.node.clone(),
                for_instance: e.for_instance,
            })
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
