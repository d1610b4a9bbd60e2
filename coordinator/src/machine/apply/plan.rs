//! Applying a placement plan: the second half of plan-then-apply.
//!
//! The leader builds a plan from a snapshot; by the time it commits, other
//! plans may have taken the room it counted on. So `apply` re-checks every
//! placement against the state as it is now (`scheduler::verify_plan`) and
//! commits only what still fits — two plans can never over-commit a node.

use std::collections::BTreeSet;

use herd_api::alloc::{AllocDesired, AllocStatus, Allocation};

use crate::machine::apply::alloc::refresh_job_status;
use crate::machine::command::{CommandResult, Rejection};
use crate::planning::{
    gang_of, missing_instances, request_for, to_scheduler_plan, touched_views, PlanCommand,
};
use crate::power::placement::power_limits;
use crate::scheduler::verify_plan_with_power;
use crate::state::{ChangeLog, ClusterState, JobStatus, Record};

/// Applies `plan`, committed at log `index`.
pub fn apply_plan(
    state: &mut ClusterState,
    index: u64,
    mut plan: PlanCommand,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(job) = state.jobs.get(&plan.job) else {
        return CommandResult::Rejected(Rejection::JobNotFound(plan.job));
    };
    if job.version != plan.job_version || job.status == JobStatus::Stopped {
        return CommandResult::Rejected(Rejection::StalePlan(format!(
            "plan for {} version {} but the job is at version {} ({})",
            plan.job,
            plan.job_version,
            job.version,
            job.status.as_str()
        )));
    }
    let (priority, version, gang) = (job.spec.priority, job.version, gang_of(job));
    // An instance placed by an earlier plan must not be placed twice.
    let missing: BTreeSet<u32> = missing_instances(state, job, now_ms).into_iter().collect();
    let mut rejected: Vec<String> = Vec::new();
    plan.placements.retain(|p| {
        let keep = missing.contains(&p.instance);
        if !keep {
            rejected.push(format!("instance {} is already placed", p.instance));
        }
        keep
    });
    let request = request_for(job, plan.placements.iter().map(|p| p.instance).collect());
    // Only the nodes (and gangs) the plan touches: the same verdict as over
    // the whole cluster, without indexing all of it for every plan.
    let (nodes, allocs) = touched_views(state, &plan);
    // Power groups reach past the touched nodes: what their other nodes
    // commit comes with the limits.
    let limits = power_limits(state, |name| nodes.iter().any(|n| n.name == name));
    let verdict = verify_plan_with_power(
        &nodes,
        &allocs,
        &limits,
        &request,
        &to_scheduler_plan(&plan),
    );
    rejected.extend(
        verdict
            .rejected
            .iter()
            .map(|r| format!("instance {} on {}: {}", r.instance, r.node, r.reason)),
    );

    let mut evicted = Vec::new();
    let mut requeued = BTreeSet::new();
    for eviction in &verdict.evictions {
        let Some(alloc) = state.allocations.get_mut(&eviction.alloc_id) else {
            continue;
        };
        alloc.desired = AllocDesired::Stop;
        alloc.status = AllocStatus::Preempted;
        alloc.modify_index = index;
        alloc.record(
            now_ms,
            "preempted",
            format!(
                "evicted for job {} (priority {priority} > {})",
                plan.job, alloc.priority
            ),
        );
        requeued.insert(alloc.job.clone());
        evicted.push(eviction.alloc_id.clone());
        changes.put(Record::Alloc(&eviction.alloc_id), state);
    }
    for job_name in &requeued {
        if let Some(job) = state.jobs.get_mut(job_name) {
            if job.status != JobStatus::Stopped {
                job.blocked = Some("requeued: evicted for higher-priority work".to_string());
                changes.put(Record::Job(job_name), state);
            }
        }
        // Pending again only if nothing of it still runs.
        refresh_job_status(state, job_name, index, changes);
    }

    let mut placed = Vec::new();
    for placement in &verdict.accepted {
        let id = format!("{}-{}-{index}", plan.job, placement.instance);
        let mut alloc = Allocation {
            id: id.clone(),
            job: plan.job.clone(),
            job_version: version,
            instance: placement.instance,
            node: placement.node.clone(),
            resources: request.resources.clone(),
            priority,
            gang: gang.clone(),
            generation: 1,
            desired: AllocDesired::Run,
            status: AllocStatus::Pending,
            events: Vec::new(),
            create_index: index,
            modify_index: index,
            gpu_indices: placement.gpu_indices.clone(),
        };
        let gpus = match placement.gpu_indices.as_slice() {
            [] => String::new(),
            indices => format!(", GPUs {}", gpu_list(indices)),
        };
        alloc.record(
            now_ms,
            "placed",
            format!("on node {}{gpus}", placement.node),
        );
        state.insert_alloc(alloc);
        changes.put(Record::Alloc(&id), state);
        collect_ended(state, &plan.job, placement.instance, changes);
        placed.push(id);
    }

    if let Some(job) = state.jobs.get_mut(&plan.job) {
        let blocked = match rejected.first() {
            Some(reason) => Some(format!("placement refused at apply: {reason}")),
            None => plan.blocked.clone(),
        };
        if job.blocked != blocked {
            job.blocked = blocked;
            changes.put(Record::Job(&plan.job), state);
        }
    }
    CommandResult::PlanApplied {
        placed,
        evicted,
        rejected,
    }
}

/// GPU indices as the environment and events write them: `0,2,3`.
pub fn gpu_list(indices: &[u32]) -> String {
    indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Ended allocations kept per job instance; older ones are deleted when a
/// new one is placed, so a crash-looping service cannot grow the state
/// without bound. It is at least [`crate::planning::BATCH_ATTEMPTS`], so a
/// batch instance's failed attempts are all still counted.
pub const ENDED_KEPT_PER_INSTANCE: usize = 4;

const _: () = assert!(ENDED_KEPT_PER_INSTANCE >= crate::planning::BATCH_ATTEMPTS);

/// Deletes the ended allocations of `job`'s `instance` beyond the newest
/// [`ENDED_KEPT_PER_INSTANCE`].
fn collect_ended(state: &mut ClusterState, job: &str, instance: u32, changes: &mut ChangeLog<'_>) {
    let mut ended: Vec<(u64, String)> = state
        .allocs_of_job(job)
        .filter(|a| a.instance == instance && a.status.is_terminal())
        .map(|a| (a.create_index, a.id.clone()))
        .collect();
    if ended.len() <= ENDED_KEPT_PER_INSTANCE {
        return;
    }
    ended.sort_unstable();
    let excess = ended.len() - ENDED_KEPT_PER_INSTANCE;
    for (_, id) in ended.into_iter().take(excess) {
        if let Some(removed) = state.remove_alloc(&id) {
            changes.removed_alloc(&removed);
        }
    }
}

/// Stops every allocation of `job` not of `keep_version` (all of them when None).
pub fn stop_allocations(
    state: &mut ClusterState,
    job: &str,
    keep_version: Option<u64>,
    index: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) {
    stop_matching(
        state,
        index,
        now_ms,
        changes,
        "job stopped or replaced by a new version",
        |a| a.job == job && Some(a.job_version) != keep_version,
    );
}

/// Stops every running-or-pending allocation `matches` selects: never-started
/// ones stop at once, started ones when their node confirms.
pub fn stop_matching(
    state: &mut ClusterState,
    index: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
    reason: &str,
    matches: impl Fn(&Allocation) -> bool,
) {
    let ids: Vec<String> = state
        .allocations
        .values()
        .filter(|a| a.desired == AllocDesired::Run && matches(a))
        .map(|a| a.id.clone())
        .collect();
    for id in ids {
        if let Some(alloc) = state.allocations.get_mut(&id) {
            alloc.desired = AllocDesired::Stop;
            if alloc.status == AllocStatus::Pending {
                alloc.status = AllocStatus::Stopped;
            }
            alloc.modify_index = index;
            alloc.record(now_ms, "stopped", reason);
            changes.put(Record::Alloc(&id), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_api::job::{JobSpec, JobType, TaskSpec};
    use herd_api::node::{NodeInfo, NodeStatus};
    use herd_api::resources::Resources;

    use crate::machine::command::{Command, CommandResult};
    use crate::planning::plan_job;
    use crate::state::ClusterState;

    fn run(state: &mut ClusterState, index: u64, command: Command) -> CommandResult {
        crate::testkit::run(state, index, command).0
    }

    fn job(name: &str, cpu: u64) -> JobSpec {
        JobSpec {
            name: name.into(),
            job_type: JobType::Service,
            count: 1,
            priority: 50,
            task: TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/true".into()),
                args: vec![],
                env: Default::default(),
                workdir: None,
                resources: Resources {
                    cpu_millis: cpu,
                    memory_bytes: 64 << 20,
                    gpus: 0,
                    gpu_model: None,
                },
                config: Default::default(),
            },
            placement: Default::default(),
            stop_after_disconnect: None,
            balance: Default::default(),
            autoscale: None,
        }
    }

    #[test]
    fn a_plan_built_on_a_stale_snapshot_cannot_over_commit_a_node() {
        let mut state = ClusterState::default();
        let node = NodeInfo {
            name: "n1".into(),
            addr: "127.0.0.1:1".into(),
            capacity: Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: 0,
                gpu_model: None,
            },
            labels: Default::default(),
            status: NodeStatus::Ready,
            eligible: true,
            registered_at_ms: 0,
        };
        run(&mut state, 1, Command::RegisterNode { node, now_ms: 1 });
        run(
            &mut state,
            2,
            Command::SubmitJob {
                spec: job("a", 3000),
                now_ms: 2,
            },
        );
        run(
            &mut state,
            3,
            Command::SubmitJob {
                spec: job("b", 3000),
                now_ms: 3,
            },
        );
        // Both plans come from the same snapshot, and both pick n1.
        let plan_a = plan_job(&state, &state.jobs["a"], 10).expect("plan a");
        let plan_b = plan_job(&state, &state.jobs["b"], 10).expect("plan b");
        assert_eq!(
            plan_a.placements,
            vec![crate::planning::PlannedPlacement::new(0, "n1")]
        );
        assert_eq!(
            plan_b.placements,
            vec![crate::planning::PlannedPlacement::new(0, "n1")]
        );

        let applied_a = run(
            &mut state,
            4,
            Command::ApplyPlan {
                plan: plan_a,
                now_ms: 4,
            },
        );
        assert!(
            matches!(applied_a, CommandResult::PlanApplied { ref placed, .. } if placed.len() == 1),
            "{applied_a:?}"
        );
        let applied_b = run(
            &mut state,
            5,
            Command::ApplyPlan {
                plan: plan_b.clone(),
                now_ms: 5,
            },
        );
        match applied_b {
            CommandResult::PlanApplied {
                placed, rejected, ..
            } => {
                assert!(placed.is_empty());
                assert_eq!(rejected.len(), 1);
                assert!(rejected[0].contains("cpu"), "{rejected:?}");
            }
            other => panic!("expected a refused placement, got {other:?}"),
        }
        let used: u64 = state
            .allocations
            .values()
            .filter(|a| a.node == "n1" && a.status.holds_resources())
            .map(|a| a.resources.cpu_millis)
            .sum();
        assert_eq!(used, 3000, "n1 is not over-committed");
        assert!(state.jobs["b"]
            .blocked
            .as_deref()
            .is_some_and(|r| r.contains("refused at apply")));

        // Re-applying the same plan for an already placed instance is refused too.
        let duplicate = crate::planning::PlanCommand {
            placements: vec![crate::planning::PlannedPlacement::new(0, "n1")],
            ..plan_b
        };
        let duplicate = crate::planning::PlanCommand {
            job: "a".into(),
            ..duplicate
        };
        match run(
            &mut state,
            6,
            Command::ApplyPlan {
                plan: duplicate,
                now_ms: 6,
            },
        ) {
            CommandResult::PlanApplied {
                placed, rejected, ..
            } => {
                assert!(placed.is_empty());
                assert!(rejected[0].contains("already placed"), "{rejected:?}");
            }
            other => panic!("expected a refused duplicate, got {other:?}"),
        }
    }

    #[test]
    fn plans_of_one_pass_batched_in_one_entry_cannot_over_commit_a_node() {
        use std::sync::Arc;

        use herd_consensus::identity::ClusterIdentity;
        use herd_consensus::Application;

        use crate::machine::app::StateApp;
        use crate::planning::{pass_input, plan_pass, PlanCommand};

        let mut state = ClusterState::default();
        for (i, name) in ["n1", "n2"].iter().enumerate() {
            let node = NodeInfo {
                name: (*name).into(),
                addr: format!("127.0.0.1:{}", i + 1),
                capacity: Resources {
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                    gpus: 0,
                    gpu_model: None,
                },
                labels: Default::default(),
                status: NodeStatus::Ready,
                eligible: true,
                registered_at_ms: 0,
            };
            run(&mut state, 1, Command::RegisterNode { node, now_ms: 1 });
        }
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let mut spec = job(name, 1000);
            spec.count = 3;
            run(
                &mut state,
                2 + i as u64,
                Command::SubmitJob { spec, now_ms: 2 },
            );
        }
        // One pass plans all three against one snapshot: 9 cores on 8.
        let plans = plan_pass(&pass_input(&state, 10));
        assert_eq!(plans.len(), 3);
        let placed: usize = plans.iter().map(|p| p.placements.len()).sum();
        assert_eq!(placed, 8, "the pass counts what earlier jobs took");
        // A stale plan from an earlier pass for job c, claiming n1 again,
        // rides in the same entry after the pass's plans.
        let stale = PlanCommand {
            placements: vec![crate::planning::PlannedPlacement::new(2, "n1")],
            blocked: None,
            ..plans[2].clone()
        };
        let mut batch: Vec<Vec<u8>> = plans
            .into_iter()
            .chain([stale])
            .map(|plan| {
                herd_consensus::codec::encode(&Command::ApplyPlan { plan, now_ms: 9 })
                    .expect("encode")
            })
            .collect();
        batch.push(vec![0xff]); // one malformed command rejects only itself
        let mut app = StateApp::new(Arc::new(ClusterIdentity::new(1, None)));
        app.restore(state.to_pairs()).expect("restore");
        let bytes = herd_consensus::codec::encode(&batch).expect("encode");
        let mut ops = Vec::new();
        let at = herd_consensus::state_machine::EntryPosition { index: 9, term: 1 };
        let results: Vec<CommandResult> =
            herd_consensus::codec::decode(&app.apply(at, &bytes, &mut ops), "results")
                .expect("decode");
        assert_eq!(results.len(), 5);
        match &results[3] {
            CommandResult::PlanApplied {
                placed, rejected, ..
            } => {
                assert!(placed.is_empty(), "{placed:?}");
                assert!(rejected[0].contains("cpu"), "{rejected:?}");
            }
            other => panic!("expected a refused stale plan, got {other:?}"),
        }
        let state = app.state();
        for node in ["n1", "n2"] {
            let used: u64 = state
                .allocs_on_node(node)
                .filter(|a| a.status.holds_resources())
                .map(|a| a.resources.cpu_millis)
                .sum();
            assert_eq!(used, 4000, "{node} is full, not over-committed");
        }
        assert!(state.alloc_index_is_current());
        let restored = ClusterState::from_pairs(state.to_pairs()).expect("restore");
        assert_eq!(&restored, state);
    }

    #[test]
    fn a_plan_for_an_old_job_version_is_stale() {
        let mut state = ClusterState::default();
        run(
            &mut state,
            1,
            Command::SubmitJob {
                spec: job("a", 100),
                now_ms: 1,
            },
        );
        let plan = crate::planning::PlanCommand {
            job: "a".into(),
            job_version: 1,
            placements: vec![],
            evictions: vec![],
            blocked: Some("no nodes".into()),
        };
        run(
            &mut state,
            2,
            Command::SubmitJob {
                spec: job("a", 200),
                now_ms: 2,
            },
        );
        assert!(matches!(
            run(&mut state, 3, Command::ApplyPlan { plan, now_ms: 3 }),
            CommandResult::Rejected(crate::machine::command::Rejection::StalePlan(_))
        ));
    }
}
