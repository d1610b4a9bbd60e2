//! Applying what agents observe and what the leader decides about liveness:
//! allocation reports ([`apply_updates`]), lost nodes ([`mark_node_down`]),
//! and the job status both imply ([`refresh_job_status`]).

use std::collections::BTreeSet;

use herd_api::alloc::{AllocDesired, AllocStatus, AllocUpdate};
use herd_api::job::JobType;
use herd_api::node::NodeStatus;

use crate::command::{CommandResult, Rejection};
use crate::placement::{exhausted, instance_histories};
use crate::state::{ChangeLog, ClusterState, JobStatus, Record};

/// Most reports one command may carry (bounds the work of one apply).
pub const MAX_UPDATES: usize = 1024;
/// Longest event kind or detail kept from a report.
const MAX_TEXT: usize = 512;

/// Applies `updates` reported by `node`, committed at log `index`.
///
/// A report is refused when the allocation is unknown, owned by another
/// node, or of another generation (fencing), or when it would revive an
/// allocation that already ended (a late report after a stop, a node that
/// returns after its work was declared lost).
pub fn apply_updates(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    updates: Vec<AllocUpdate>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if updates.len() > MAX_UPDATES {
        return CommandResult::Rejected(Rejection::Invalid(format!(
            "{} allocation reports in one command; at most {MAX_UPDATES}",
            updates.len()
        )));
    }
    let mut accepted = 0u32;
    let mut refused = Vec::new();
    let mut jobs = BTreeSet::new();
    for update in updates {
        match apply_update(state, index, node, &update, now_ms) {
            Ok(job) => {
                accepted += 1;
                changes.put(Record::Alloc(&update.id), state);
                jobs.insert(job);
            }
            Err(reason) => refused.push(format!("{}: {reason}", update.id)),
        }
    }
    for job in &jobs {
        refresh_job_status(state, job, index, changes);
    }
    CommandResult::AllocsUpdated { accepted, refused }
}

/// Applies one report; returns the allocation's job.
fn apply_update(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    update: &AllocUpdate,
    now_ms: u64,
) -> Result<String, String> {
    let Some(alloc) = state.allocations.get_mut(&update.id) else {
        return Err("unknown allocation".to_string());
    };
    if alloc.node != node {
        return Err(format!("owned by node {}, not {node}", alloc.node));
    }
    if alloc.generation != update.generation {
        return Err(format!(
            "generation {} is not the current {}",
            update.generation, alloc.generation
        ));
    }
    if !matches!(
        update.status,
        AllocStatus::Running
            | AllocStatus::Complete
            | AllocStatus::Failed
            | AllocStatus::Stopped
            | AllocStatus::Lost
    ) {
        return Err(format!(
            "an agent cannot report status {}",
            update.status.as_str()
        ));
    }
    if alloc.status.is_terminal() {
        return Err(format!(
            "already {}; a {} report changes nothing",
            alloc.status.as_str(),
            update.status.as_str()
        ));
    }
    // A workload told to stop that ended on its own still counts as stopped
    // for what it holds, but keeps how it ended.
    alloc.status = update.status;
    alloc.modify_index = index;
    alloc.record(
        now_ms,
        &clip(&update.event),
        clip(&update.detail).into_owned(),
    );
    Ok(alloc.job.clone())
}

fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_TEXT {
        return text.into();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// Marks `node` down: its live allocations are lost (and placed elsewhere by
/// the scheduler). The node is ready again when its agent registers.
pub fn mark_node_down(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(info) = state.nodes.get_mut(node) else {
        return CommandResult::Rejected(Rejection::NodeNotFound(node.to_string()));
    };
    if info.status == NodeStatus::Down {
        return CommandResult::NodeUpdated;
    }
    info.status = NodeStatus::Down;
    changes.put(Record::Node(node), state);
    let lost: Vec<String> = state
        .allocations
        .values()
        .filter(|a| a.node == node && !a.status.is_terminal())
        .map(|a| a.id.clone())
        .collect();
    let mut jobs = BTreeSet::new();
    for id in &lost {
        if let Some(alloc) = state.allocations.get_mut(id) {
            alloc.status = AllocStatus::Lost;
            alloc.desired = AllocDesired::Stop;
            alloc.modify_index = index;
            alloc.record(now_ms, "lost", format!("node {node} missed its heartbeats"));
            jobs.insert(alloc.job.clone());
        }
        changes.put(Record::Alloc(id), state);
    }
    for job in &jobs {
        refresh_job_status(state, job, index, changes);
    }
    CommandResult::NodeUpdated
}

/// Derives `job`'s status from its current version's allocations: a batch
/// job is complete when every instance completed and failed when one used
/// up its attempts; any job is running while one of its allocations runs,
/// and pending otherwise. A stopped job stays stopped.
pub fn refresh_job_status(
    state: &mut ClusterState,
    job_name: &str,
    index: u64,
    changes: &mut ChangeLog<'_>,
) {
    let Some(job) = state.jobs.get(job_name) else {
        return;
    };
    if job.status == JobStatus::Stopped {
        return;
    }
    let histories = instance_histories(state, job);
    let running = state.allocations.values().any(|a| {
        a.job == job.spec.name
            && a.job_version == job.version
            && a.desired == AllocDesired::Run
            && a.status == AllocStatus::Running
    });
    let status = if job.spec.job_type == JobType::Batch
        && (0..job.spec.count).all(|i| histories.get(&i).is_some_and(|h| h.complete))
    {
        JobStatus::Complete
    } else if histories.values().any(|h| exhausted(job, h)) {
        JobStatus::Failed
    } else if running {
        JobStatus::Running
    } else {
        JobStatus::Pending
    };
    if status != job.status {
        if let Some(job) = state.jobs.get_mut(job_name) {
            job.status = status;
            job.modify_index = index;
            changes.put(Record::Job(job_name), state);
        }
    }
}
