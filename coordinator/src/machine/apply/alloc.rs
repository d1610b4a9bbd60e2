//! Applying what agents observe and what the leader decides about liveness:
//! allocation reports ([`apply_updates`]), lost nodes ([`mark_node_down`]),
//! and the job status both imply ([`refresh_job_status`]).

use std::collections::BTreeSet;

use herd_api::alloc::{AllocDesired, AllocStatus, AllocUpdate};
use herd_api::job::JobType;
use herd_api::node::NodeStatus;

use crate::machine::command::{CommandResult, Rejection};
use crate::planning::{exhausted, instance_histories};
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
        .allocs_on_node(node)
        .filter(|a| !a.status.is_terminal())
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
    let running = state.allocs_of_job(&job.spec.name).any(|a| {
        a.job_version == job.version
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

#[cfg(test)]
mod tests {
    use herd_api::alloc::{AllocStatus, AllocUpdate};
    use herd_api::job::JobType;
    use herd_api::node::NodeStatus;

    use crate::machine::command::Command;
    use crate::planning::{missing_instances, retry_delay_ms, BATCH_ATTEMPTS};
    use crate::state::{ClusterState, JobStatus};
    use crate::testkit::{alloc_update, place, report, run, spec};

    fn update(state: &ClusterState, job: &str, instance: u32, status: AllocStatus) -> AllocUpdate {
        let alloc = state
            .allocations
            .values()
            .find(|a| a.job == job && a.instance == instance && !a.status.is_terminal())
            .expect("a live allocation");
        alloc_update(alloc, status)
    }

    #[test]
    fn reports_are_fenced_by_node_generation_and_finality() {
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1"],
            vec![spec("web", JobType::Service, 1)],
            1_000,
        );
        let running = update(&state, "web", 0, AllocStatus::Running);

        let mut stale = running.clone();
        stale.generation += 1;
        let mut foreign = running.clone();
        foreign.id = "nope".into();
        let (accepted, refused) = report(&mut state, index, "n2", vec![running.clone()], 1_001);
        assert_eq!(accepted, 0);
        assert!(refused[0].contains("owned by node n1"), "{refused:?}");
        let (accepted, refused) = report(&mut state, index + 1, "n1", vec![stale, foreign], 1_002);
        assert_eq!(accepted, 0);
        assert!(refused[0].contains("generation"), "{refused:?}");
        assert!(refused[1].contains("unknown allocation"), "{refused:?}");

        let (accepted, _) = report(&mut state, index + 2, "n1", vec![running.clone()], 1_003);
        assert_eq!(accepted, 1);
        assert_eq!(state.jobs["web"].status, JobStatus::Running);
        let alloc = &state.allocations[&running.id];
        assert_eq!(alloc.status, AllocStatus::Running);
        assert_eq!(alloc.events.last().map(|e| e.kind.as_str()), Some("test"));

        // Once ended, a late report cannot revive it.
        let mut stopped = running.clone();
        stopped.status = AllocStatus::Stopped;
        report(&mut state, index + 3, "n1", vec![stopped], 1_004);
        let (accepted, refused) = report(&mut state, index + 4, "n1", vec![running.clone()], 1_005);
        assert_eq!(accepted, 0);
        assert!(refused[0].contains("already stopped"), "{refused:?}");
        assert_eq!(state.allocations[&running.id].status, AllocStatus::Stopped);

        // An agent may not claim statuses only the cluster decides.
        let mut pending = running;
        pending.status = AllocStatus::Preempted;
        let (accepted, _) = report(&mut state, index + 5, "n1", vec![pending], 1_006);
        assert_eq!(accepted, 0);
    }

    #[test]
    fn a_node_marked_down_loses_its_work_which_is_placed_again() {
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1", "n2"],
            vec![spec("web", JobType::Service, 2)],
            1_000,
        );
        let on_n1: Vec<String> = state
            .allocations
            .values()
            .filter(|a| a.node == "n1")
            .map(|a| a.id.clone())
            .collect();
        assert!(!on_n1.is_empty(), "bin-packing put work on n1");
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: "n1".into(),
                now_ms: 2_000,
            },
        );
        assert_eq!(state.nodes["n1"].status, NodeStatus::Down);
        for id in &on_n1 {
            assert_eq!(state.allocations[id].status, AllocStatus::Lost);
        }
        // Losing a node is not the job's failure: replaced at once.
        assert_eq!(
            missing_instances(&state, &state.jobs["web"], 2_000).len(),
            on_n1.len()
        );
        let plan = crate::planning::plan_job(&state, &state.jobs["web"], 2_000).expect("plan");
        assert!(plan.placements.iter().all(|p| p.node == "n2"), "{plan:?}");
        // Registering again makes it ready.
        run(
            &mut state,
            index + 1,
            Command::RegisterNode {
                node: crate::testkit::node("n1"),
                now_ms: 3_000,
            },
        );
        assert_eq!(state.nodes["n1"].status, NodeStatus::Ready);
    }

    #[test]
    fn batch_instances_complete_or_fail_after_their_attempts_with_backoff() {
        let mut state = ClusterState::default();
        let mut index = place(
            &mut state,
            &["n1"],
            vec![spec("b", JobType::Batch, 2)],
            1_000,
        );
        // Instance 0 completes: never placed again.
        let done = update(&state, "b", 0, AllocStatus::Complete);
        report(&mut state, index, "n1", vec![done], 1_100);
        index += 1;
        let mut now = 1_100;
        for attempt in 1..=BATCH_ATTEMPTS {
            let failed = update(&state, "b", 1, AllocStatus::Failed);
            report(&mut state, index, "n1", vec![failed], now);
            index += 1;
            let job = &state.jobs["b"];
            if attempt < BATCH_ATTEMPTS {
                // Not before the delay, then again.
                assert!(
                    missing_instances(&state, job, now + retry_delay_ms(attempt) - 1).is_empty()
                );
                now += retry_delay_ms(attempt);
                assert_eq!(missing_instances(&state, job, now), vec![1]);
                let plan = crate::planning::plan_job(&state, job, now).expect("plan");
                run(&mut state, index, Command::ApplyPlan { plan, now_ms: now });
                index += 1;
            }
        }
        assert_eq!(state.jobs["b"].status, JobStatus::Failed);
        assert!(missing_instances(&state, &state.jobs["b"], u64::MAX / 2).is_empty());
        assert!(crate::planning::plan_job(&state, &state.jobs["b"], u64::MAX / 2).is_none());
        let failed = state
            .allocations
            .values()
            .filter(|a| a.job == "b" && a.status == AllocStatus::Failed)
            .count();
        assert_eq!(failed, BATCH_ATTEMPTS);

        // A batch job whose instances all complete is complete.
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1"],
            vec![spec("c", JobType::Batch, 2)],
            1_000,
        );
        let updates = vec![
            update(&state, "c", 0, AllocStatus::Complete),
            update(&state, "c", 1, AllocStatus::Complete),
        ];
        report(&mut state, index, "n1", updates, 1_100);
        assert_eq!(state.jobs["c"].status, JobStatus::Complete);
    }

    #[test]
    fn a_crash_looping_service_keeps_a_bounded_history() {
        let mut state = ClusterState::default();
        let mut index = place(
            &mut state,
            &["n1"],
            vec![spec("web", JobType::Service, 1)],
            0,
        );
        let mut now = 0;
        let mut deleted = 0;
        for _ in 0..20 {
            let failed = update(&state, "web", 0, AllocStatus::Failed);
            report(&mut state, index, "n1", vec![failed], now);
            now += crate::planning::RETRY_MAX_MS;
            let plan = crate::planning::plan_job(&state, &state.jobs["web"], now).expect("plan");
            let (_, ops) = run(
                &mut state,
                index + 1,
                Command::ApplyPlan { plan, now_ms: now },
            );
            deleted += ops
                .iter()
                .filter(|op| matches!(op, herd_consensus::storage::WriteOp::Delete(_)))
                .count();
            index += 2;
        }
        // 21 allocations were created; all but the newest 5 were deleted, in the log's writes.
        assert_eq!(
            deleted,
            21 - (crate::machine::apply::plan::ENDED_KEPT_PER_INSTANCE + 1)
        );
        let kept: Vec<AllocStatus> = state.allocs_of_job("web").map(|a| a.status).collect();
        assert_eq!(
            kept.len(),
            crate::machine::apply::plan::ENDED_KEPT_PER_INSTANCE + 1,
            "{kept:?}"
        );
        assert_eq!(kept.iter().filter(|s| !s.is_terminal()).count(), 1);
        assert!(state.alloc_index_is_current());
    }

    #[test]
    fn retry_delays_double_and_are_capped() {
        assert_eq!(retry_delay_ms(0), 0);
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(3), 4_000);
        assert_eq!(retry_delay_ms(100), crate::planning::RETRY_MAX_MS);
    }
}
