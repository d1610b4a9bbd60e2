//! Draining a node: no new work goes there, and what runs is moved away,
//! at once ([`drain_now`]) or, for batch work, by a deadline
//! ([`drain_within`]) so that jobs close to finishing are not thrown away.
//!
//! [`drain_live`] (`herd node drain`) moves live what can move live: each
//! running allocation whose driver can move on its node and on a target the
//! scheduler picks (`planning::move_targets`) gets a migration, decided here
//! in `apply` from the state of this entry, so every member records the
//! same migrations and the reply names them; the rest is stopped and
//! placed again elsewhere as before. A move that is aborted later falls
//! back to the same restart ([`fall_back_to_restart`]), so a drain always
//! finishes, and a drain deadline still stops whatever is left.

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::{AllocDesired, AllocStatus};
use herd_api::job::JobType;
use herd_api::migration::MigrationPhase;
use herd_api::node::NodeStatus;
use serde::{Deserialize, Serialize};

use crate::machine::apply::gang_migration;
use crate::machine::apply::migration::{
    abort_migration, active_migration_of, moves_whole, start_migration, MoveRequest,
};
use crate::machine::apply::plan::stop_matching;
use crate::machine::command::{CommandResult, Rejection};
use crate::planning::move_targets;
use crate::state::{ChangeLog, ClusterState, Record};

/// The downtime limit of the migrations a drain starts, ms: the default of
/// `herd alloc migrate`.
pub const DRAIN_DOWNTIME_LIMIT_MS: u64 = 300;

/// What a drain did with each allocation of its node, for the reply of
/// `herd node drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    /// Allocations moving live (same id), each with its migration.
    pub moving: Vec<DrainMove>,
    /// Allocations stopped, to be placed again elsewhere (new ids).
    pub restarting: Vec<Unmoved>,
    /// Batch allocations that cannot move and may finish until the drain's
    /// deadline, when they are stopped.
    pub until_deadline: Vec<Unmoved>,
}

/// One allocation a drain moves live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMove {
    /// The allocation (its id stays).
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// The node it moves to.
    pub target: String,
    /// The migration moving it.
    pub migration: String,
}

/// One allocation a drain does not move live, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmoved {
    /// The allocation.
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// Why it is not moved live.
    pub why: String,
}

/// Longest grace a drain accepts (a week): a longer one is a typo.
pub const MAX_DRAIN_GRACE_MS: u64 = 7 * 24 * 3600 * 1000;

fn start_draining(
    state: &mut ClusterState,
    node: &str,
    changes: &mut ChangeLog<'_>,
) -> Result<(), CommandResult> {
    let Some(info) = state.nodes.get_mut(node) else {
        return Err(CommandResult::Rejected(Rejection::NodeNotFound(
            node.to_string(),
        )));
    };
    if info.status != NodeStatus::Down {
        info.status = NodeStatus::Draining;
    }
    info.eligible = false;
    changes.put(Record::Node(node), state);
    Ok(())
}

/// Ends a drain's deadline, if it had one.
pub fn clear_deadline(state: &mut ClusterState, node: &str, changes: &mut ChangeLog<'_>) {
    if state.drain_deadlines.remove(node).is_some() {
        changes.put(Record::DrainDeadline(node), state);
    }
}

/// Drains `node` now: everything running there is stopped and placed
/// again elsewhere by the scheduler.
pub fn drain_now(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if let Err(rejected) = start_draining(state, node, changes) {
        return rejected;
    }
    clear_deadline(state, node, changes);
    stop_matching(
        state,
        index,
        now_ms,
        changes,
        &format!("node {node} drained"),
        |a| a.node == node,
    );
    CommandResult::NodeUpdated
}

/// Drains `node` with a deadline `grace_ms` from now: service allocations
/// are stopped (and placed elsewhere) now, batch allocations may run to
/// completion until the deadline, when the leader drains the node at once.
pub fn drain_within(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    grace_ms: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if grace_ms > MAX_DRAIN_GRACE_MS {
        return CommandResult::Rejected(Rejection::Invalid(format!(
            "drain deadline of {grace_ms} ms is over a week"
        )));
    }
    if let Err(rejected) = start_draining(state, node, changes) {
        return rejected;
    }
    state
        .drain_deadlines
        .insert(node.to_string(), now_ms.saturating_add(grace_ms));
    changes.put(Record::DrainDeadline(node), state);
    let services: Vec<String> = state
        .jobs
        .values()
        .filter(|j| j.spec.job_type == JobType::Service)
        .map(|j| j.spec.name.clone())
        .collect();
    stop_matching(
        state,
        index,
        now_ms,
        changes,
        &format!("node {node} draining"),
        |a| a.node == node && services.contains(&a.job),
    );
    CommandResult::NodeUpdated
}

/// How `herd node drain` asked to drain a node (`Command::DrainNodeLive`).
#[derive(Debug, Clone, Copy)]
pub struct DrainRequest<'a> {
    /// The node.
    pub node: &'a str,
    /// How long batch work that does not move may keep running, ms (0:
    /// everything that does not move is stopped now).
    pub grace_ms: u64,
    /// Whether allocations that can move live do (false: stop and replace
    /// everything, as [`drain_now`] and [`drain_within`] do).
    pub migrate: bool,
}

/// Drains a node, moving live what can: see the module's documentation.
/// Migrations into the node are aborted (it takes no work); an allocation
/// already moving off it keeps moving (when `migrate`). What does not move
/// is stopped now, except batch work under a deadline, which may finish
/// until then.
pub fn drain_live(
    state: &mut ClusterState,
    index: u64,
    request: DrainRequest<'_>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let DrainRequest {
        node,
        grace_ms,
        migrate,
    } = request;
    if grace_ms > MAX_DRAIN_GRACE_MS {
        return CommandResult::Rejected(Rejection::Invalid(format!(
            "drain deadline of {grace_ms} ms is over a week"
        )));
    }
    if let Err(rejected) = start_draining(state, node, changes) {
        return rejected;
    }
    if grace_ms == 0 {
        clear_deadline(state, node, changes);
    } else {
        state
            .drain_deadlines
            .insert(node.to_string(), now_ms.saturating_add(grace_ms));
        changes.put(Record::DrainDeadline(node), state);
    }
    let incoming: Vec<String> = state
        .migrations
        .values()
        .filter(|m| m.is_active() && m.target == node)
        .map(|m| m.id.clone())
        .collect();
    for id in incoming {
        let reason = format!("target node {node} is being drained");
        abort_migration(state, index, &id, &reason, now_ms, changes);
    }

    let mut outcome = DrainOutcome::default();
    // Why each allocation that does not move stays unmoved.
    let mut unmoved: Vec<(String, String)> = Vec::new();
    let mut candidates: Vec<String> = Vec::new();
    // Gangs with members here, by (job, gang): each moves whole.
    let mut gangs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let ids: Vec<String> = state
        .allocs_on_node(node)
        .filter(|a| a.desired == AllocDesired::Run && !a.status.is_terminal())
        .map(|a| a.id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for id in ids {
        let Some(alloc) = state.allocations.get(&id) else {
            continue;
        };
        let kind = state
            .jobs
            .get(&alloc.job)
            .map(|j| j.spec.task.driver.clone());
        if !migrate {
            unmoved.push((id, "live moves not asked (--no-migrate)".into()));
        } else if let Some(m) = active_migration_of(state, &id) {
            outcome.moving.push(DrainMove {
                alloc_id: id.clone(),
                job: alloc.job.clone(),
                target: m.target.clone(),
                migration: m.id.clone(),
            });
        } else if let Some(gang) = alloc.gang.clone() {
            // Moved whole below, with the gang's other members.
            gangs.entry((alloc.job.clone(), gang)).or_default().push(id);
        } else if alloc.status != AllocStatus::Running {
            unmoved.push((id, format!("not running yet ({})", alloc.status.as_str())));
        } else if let Some(kind) = kind {
            match moves_whole(state, node, &kind) {
                Ok(()) => candidates.push(id),
                Err(why) => unmoved.push((id, why)),
            }
        } else {
            unmoved.push((id, format!("its job {} is gone", alloc.job)));
        }
    }

    let targets = {
        let state_now: &ClusterState = state;
        move_targets(state_now, &candidates, |n, k| {
            moves_whole(state_now, n, k).is_ok()
        })
    };
    for planned in targets {
        let target = match planned.target {
            Ok(target) => target,
            Err(why) => {
                unmoved.push((planned.alloc_id, why));
                continue;
            }
        };
        let move_request = MoveRequest {
            alloc_id: &planned.alloc_id,
            target: &target,
            downtime_limit_ms: DRAIN_DOWNTIME_LIMIT_MS,
            bandwidth_bytes_per_sec: None,
        };
        match start_migration(state, index, move_request, now_ms, changes) {
            CommandResult::MigrationUpdated {
                id,
                phase: MigrationPhase::Planned,
            } => outcome.moving.push(DrainMove {
                job: state
                    .allocations
                    .get(&planned.alloc_id)
                    .map(|a| a.job.clone())
                    .unwrap_or_default(),
                alloc_id: planned.alloc_id,
                target,
                migration: id,
            }),
            CommandResult::Rejected(why) => unmoved.push((planned.alloc_id, why.to_string())),
            other => unmoved.push((planned.alloc_id, format!("{other:?}"))),
        }
    }

    for ((job, gang), here) in gangs {
        match gang_migration::move_gang_off(state, index, &job, &gang, now_ms, changes) {
            Ok(moves) => outcome.moving.extend(moves),
            Err(why) => unmoved.extend(here.into_iter().map(|id| (id, why.clone()))),
        }
    }

    // What does not move: stopped now (placed again elsewhere), or, batch
    // work under a deadline, left to finish until then.
    let mut stop: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, why) in unmoved {
        let Some(alloc) = state.allocations.get(&id) else {
            continue;
        };
        let batch = state
            .jobs
            .get(&alloc.job)
            .is_some_and(|j| j.spec.job_type == JobType::Batch);
        let entry = Unmoved {
            alloc_id: id.clone(),
            job: alloc.job.clone(),
            why: why.clone(),
        };
        if grace_ms > 0 && batch {
            outcome.until_deadline.push(entry);
        } else {
            outcome.restarting.push(entry);
            stop.entry(why).or_default().insert(id);
        }
    }
    let verb = if grace_ms == 0 { "drained" } else { "draining" };
    for (why, ids) in stop {
        let reason = format!("node {node} {verb}; restarted elsewhere ({why})");
        stop_matching(state, index, now_ms, changes, &reason, |a| {
            ids.contains(&a.id)
        });
    }
    CommandResult::NodeDrained(outcome)
}

/// After migration `id` was aborted: if it was moving an allocation off a
/// node being drained, the allocation is stopped and placed again
/// elsewhere, as a drain does with what cannot move, so that a drain always
/// finishes. Batch work under a drain deadline keeps running until then
/// (the deadline stops it), as it would had it never tried to move.
pub fn fall_back_to_restart(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) {
    let Some(m) = state.migrations.get(id) else {
        return;
    };
    let (alloc_id, source) = (m.alloc_id.clone(), m.source.clone());
    let error = m.error.clone().unwrap_or_default();
    if !state
        .nodes
        .get(&source)
        .is_some_and(|n| n.status == NodeStatus::Draining)
    {
        return;
    }
    let Some(alloc) = state.allocations.get(&alloc_id) else {
        return;
    };
    let batch = state
        .jobs
        .get(&alloc.job)
        .is_some_and(|j| j.spec.job_type == JobType::Batch);
    if batch && state.drain_deadlines.contains_key(&source) {
        return;
    }
    let reason = format!(
        "node {source} drained; its live move {id} was aborted ({error}): restarted elsewhere"
    );
    stop_matching(state, index, now_ms, changes, &reason, |a| {
        a.id == alloc_id && a.node == source && !a.status.is_terminal()
    });
}

/// Nodes whose drain deadline has passed at `now_ms`.
pub fn lapsed_drains(state: &ClusterState, now_ms: u64) -> Vec<String> {
    state
        .drain_deadlines
        .iter()
        .filter(|(_, deadline)| **deadline <= now_ms)
        .map(|(node, _)| node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::{AllocDesired, AllocStatus};
    use herd_api::job::JobType;
    use herd_api::node::NodeStatus;

    use super::*;
    use crate::machine::command::Command;
    use crate::testkit::{place, run, spec};

    fn desired_on(state: &ClusterState, job: &str, node: &str) -> Vec<AllocDesired> {
        state
            .allocations
            .values()
            .filter(|a| a.job == job && a.node == node)
            .map(|a| a.desired)
            .collect()
    }

    #[test]
    fn a_drain_with_a_deadline_moves_services_now_and_batch_work_at_the_deadline() {
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1"],
            vec![
                spec("web", JobType::Service, 1),
                spec("train", JobType::Batch, 1),
            ],
            1_000,
        );
        let (result, _) = run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: 60_000,
                now_ms: 2_000,
            },
        );
        assert_eq!(result, CommandResult::NodeUpdated);
        assert_eq!(state.nodes["n1"].status, NodeStatus::Draining);
        assert!(!state.nodes["n1"].eligible);
        assert_eq!(desired_on(&state, "web", "n1"), vec![AllocDesired::Stop]);
        assert_eq!(desired_on(&state, "train", "n1"), vec![AllocDesired::Run]);
        assert!(lapsed_drains(&state, 61_999).is_empty());
        assert_eq!(lapsed_drains(&state, 62_000), vec!["n1".to_string()]);

        // The deadline survives a restart (it is persisted)...
        let restored = ClusterState::from_pairs(state.to_pairs()).expect("restore");
        assert_eq!(restored.drain_deadlines.get("n1"), Some(&62_000));
        // ...and the leader's drain at the deadline stops the rest and ends it.
        run(
            &mut state,
            index + 1,
            Command::DrainNode {
                node: "n1".into(),
                now_ms: 62_000,
            },
        );
        assert_eq!(desired_on(&state, "train", "n1"), vec![AllocDesired::Stop]);
        assert!(state.drain_deadlines.is_empty());
        let pending_stopped = state
            .allocations
            .values()
            .all(|a| a.status != AllocStatus::Pending);
        assert!(pending_stopped, "never-started work stops at once");
    }

    #[test]
    fn eligibility_on_ends_a_drain_and_its_deadline() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1"], vec![], 1_000);
        run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: 1_000,
                now_ms: 2_000,
            },
        );
        run(
            &mut state,
            index + 1,
            Command::SetNodeEligibility {
                node: "n1".into(),
                eligible: true,
            },
        );
        assert_eq!(state.nodes["n1"].status, NodeStatus::Ready);
        assert!(lapsed_drains(&state, u64::MAX).is_empty());
    }

    #[test]
    fn absurd_or_unknown_drains_are_refused() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1"], vec![], 1_000);
        let (result, ops) = run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: MAX_DRAIN_GRACE_MS + 1,
                now_ms: 2_000,
            },
        );
        assert!(matches!(
            result,
            CommandResult::Rejected(Rejection::Invalid(_))
        ));
        assert!(ops.is_empty(), "nothing written");
        let (result, _) = run(
            &mut state,
            index + 1,
            Command::DrainNodeWithin {
                node: "ghost".into(),
                grace_ms: 1_000,
                now_ms: 2_000,
            },
        );
        assert!(matches!(
            result,
            CommandResult::Rejected(Rejection::NodeNotFound(_))
        ));
    }
}

/// Drains that move live ([`drain_live`]) and their fall-back.
#[cfg(test)]
mod live_tests {
    use herd_api::alloc::Allocation;
    use herd_api::capabilities::{DriverCaps, MigrationMode};
    use herd_api::job::JobSpec;

    use super::*;
    use crate::machine::apply::migration::migrations_to_abort;
    use crate::machine::command::Command;
    use crate::planning::plan_job;
    use crate::testkit::{alloc_update, node, place, report, run, spec};

    /// A 1-CPU service of `driver`, `count` instances.
    fn job(name: &str, driver: &str, job_type: JobType, count: u32) -> JobSpec {
        let mut s = spec(name, job_type, count);
        s.task.driver = driver.into();
        s.task.resources.cpu_millis = 1000;
        s
    }

    /// Everything of `jobs` placed on n1 and running, then `others` joined;
    /// every node's agent says `vm` and `dljob` move (live and through a
    /// checkpoint) and `exec` does not. Returns the state and the next index.
    fn running_on_n1(jobs: Vec<JobSpec>, others: &[&str]) -> (ClusterState, u64) {
        let mut state = ClusterState::default();
        let mut index = place(&mut state, &["n1"], jobs, 1_000);
        for name in others {
            run(
                &mut state,
                index,
                Command::RegisterNode {
                    node: node(name),
                    now_ms: 1_000,
                },
            );
            index += 1;
        }
        for name in std::iter::once(&"n1").chain(others) {
            declare(&mut state, index, name, MigrationMode::LivePreCopy);
            index += 1;
        }
        let updates: Vec<_> = state
            .allocations
            .values()
            .map(|a| alloc_update(a, AllocStatus::Running))
            .collect();
        let (accepted, refused) = report(&mut state, index, "n1", updates, 1_500);
        assert!(refused.is_empty(), "{refused:?}");
        assert!(accepted > 0);
        (state, index + 1)
    }

    /// `node`'s agent: `vm` moves as `vm_mode`, `dljob` through a
    /// checkpoint, `exec` not at all.
    fn declare(state: &mut ClusterState, index: u64, node: &str, vm_mode: MigrationMode) {
        let caps = |migration| DriverCaps {
            migration,
            pause: false,
            power_cap: false,
        };
        let drivers = [
            ("vm".to_string(), caps(vm_mode)),
            ("dljob".to_string(), caps(MigrationMode::CheckpointRestart)),
            ("exec".to_string(), caps(MigrationMode::None)),
        ];
        let (result, _) = run(
            state,
            index,
            Command::SetNodeDrivers {
                node: node.into(),
                drivers: Some(drivers.into()),
            },
        );
        assert!(!matches!(result, CommandResult::Rejected(_)), "{result:?}");
    }

    fn drain(state: &mut ClusterState, index: u64, grace_ms: u64, migrate: bool) -> DrainOutcome {
        let (result, _) = run(
            state,
            index,
            Command::DrainNodeLive {
                node: "n1".into(),
                grace_ms,
                migrate,
                now_ms: 2_000,
            },
        );
        match result {
            CommandResult::NodeDrained(outcome) => outcome,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn the_alloc<'a>(state: &'a ClusterState, job: &str) -> &'a Allocation {
        state
            .allocations
            .values()
            .find(|a| a.job == job)
            .expect("an allocation")
    }

    fn kinds(alloc: &Allocation) -> Vec<&str> {
        alloc.events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn a_drain_moves_what_can_move_live_and_restarts_the_rest() {
        let (mut state, index) = running_on_n1(
            vec![
                job("vm-web", "vm", JobType::Service, 1),
                job("train", "dljob", JobType::Batch, 1),
                job("tool", "exec", JobType::Service, 1),
            ],
            &["n2"],
        );
        let outcome = drain(&mut state, index, 0, true);
        assert_eq!(state.nodes["n1"].status, NodeStatus::Draining);
        let mut moving: Vec<(&str, &str)> = outcome
            .moving
            .iter()
            .map(|m| (m.job.as_str(), m.target.as_str()))
            .collect();
        moving.sort_unstable();
        assert_eq!(moving, [("train", "n2"), ("vm-web", "n2")], "{outcome:?}");
        let ids: BTreeSet<&str> = outcome
            .moving
            .iter()
            .map(|m| m.migration.as_str())
            .collect();
        assert_eq!(ids.len(), 2, "one entry, two distinct migrations: {ids:?}");
        for m in &outcome.moving {
            let record = &state.migrations[&m.migration];
            assert_eq!(
                (record.source.as_str(), record.target.as_str()),
                ("n1", "n2")
            );
            let alloc = &state.allocations[&m.alloc_id];
            assert_eq!(
                alloc.desired,
                AllocDesired::Run,
                "a moving allocation keeps running"
            );
            assert!(kinds(alloc).contains(&"migrating"), "{:?}", alloc.events);
        }
        let [restart] = outcome.restarting.as_slice() else {
            panic!("{outcome:?}");
        };
        assert_eq!(restart.job, "tool");
        assert!(
            restart.why.contains("exec driver moves none"),
            "{restart:?}"
        );
        let tool = &state.allocations[&restart.alloc_id];
        assert_eq!(tool.desired, AllocDesired::Stop);
        let last = tool.events.last().expect("an event");
        assert_eq!(last.kind, "stopped");
        assert!(last.detail.contains("restarted elsewhere"), "{last:?}");
        // The scheduler replaces the exec service on n2, beside the
        // reservations of the two moves.
        let plan = plan_job(&state, &state.jobs["tool"], 2_100).expect("a plan");
        assert_eq!(plan.placements.len(), 1, "{plan:?}");
        assert_eq!(plan.placements[0].node, "n2");
        assert!(outcome.until_deadline.is_empty());
    }

    #[test]
    fn a_drain_s_move_ends_with_a_migrated_event_that_gives_the_figures() {
        let (mut state, mut index) =
            running_on_n1(vec![job("vm-web", "vm", JobType::Service, 1)], &["n2"]);
        let outcome = drain(&mut state, index, 0, true);
        let [m] = outcome.moving.as_slice() else {
            panic!("{outcome:?}");
        };
        for (phase, bytes) in [
            (MigrationPhase::Preparing, 0),
            (MigrationPhase::Transferring, 4096),
            (MigrationPhase::Switching, 8192),
        ] {
            index += 1;
            run(
                &mut state,
                index,
                Command::AdvanceMigration {
                    id: m.migration.clone(),
                    phase,
                    bytes,
                    rounds: 3,
                    now_ms: 2_500,
                },
            );
        }
        let (result, _) = run(
            &mut state,
            index + 1,
            Command::SwitchMigration {
                id: m.migration.clone(),
                downtime_ms: 42,
                now_ms: 3_250,
            },
        );
        assert!(
            matches!(result, CommandResult::MigrationUpdated { .. }),
            "{result:?}"
        );
        let alloc = &state.allocations[&m.alloc_id];
        assert_eq!((alloc.node.as_str(), alloc.generation), ("n2", 2));
        let last = alloc.events.last().expect("an event");
        assert_eq!(last.kind, "migrated");
        assert_eq!(
            last.detail,
            format!(
                "{}: n1 \u{2192} n2, 8192 bytes in 3 rounds, downtime 42 ms, total 1250 ms",
                m.migration
            )
        );
        // Nothing is replaced: the same allocation runs on n2.
        assert!(plan_job(&state, &state.jobs["vm-web"], 3_300).is_none());
    }

    #[test]
    fn an_aborted_drain_move_falls_back_to_a_restart_elsewhere() {
        let (mut state, index) =
            running_on_n1(vec![job("vm-web", "vm", JobType::Service, 1)], &["n2"]);
        let outcome = drain(&mut state, index, 0, true);
        let [m] = outcome.moving.as_slice() else {
            panic!("{outcome:?}");
        };
        let (result, _) = run(
            &mut state,
            index + 1,
            Command::AbortMigration {
                id: m.migration.clone(),
                reason: "target agent lost".into(),
                now_ms: 2_200,
            },
        );
        assert!(
            matches!(result, CommandResult::MigrationUpdated { .. }),
            "{result:?}"
        );
        let alloc = &state.allocations[&m.alloc_id];
        assert_eq!(alloc.node, "n1");
        assert_eq!(alloc.desired, AllocDesired::Stop, "the drain must finish");
        let aborted = alloc
            .events
            .iter()
            .find(|e| e.kind == "migration_aborted")
            .expect("an abort event");
        assert!(aborted.detail.contains("target agent lost"), "{aborted:?}");
        let last = alloc.events.last().expect("an event");
        assert_eq!(last.kind, "stopped");
        assert!(last.detail.contains("live move"), "{last:?}");
        let plan = plan_job(&state, &state.jobs["vm-web"], 2_300).expect("a replacement");
        assert_eq!(plan.placements.len(), 1, "{plan:?}");
        assert_eq!(plan.placements[0].node, "n2");

        // A move off a node that is not draining keeps its allocation.
        let (mut calm, index) =
            running_on_n1(vec![job("vm-web", "vm", JobType::Service, 1)], &["n2"]);
        let id = the_alloc(&calm, "vm-web").id.clone();
        let (started, _) = run(
            &mut calm,
            index,
            Command::StartMigration {
                alloc_id: id.clone(),
                target: "n2".into(),
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
                now_ms: 2_000,
            },
        );
        let CommandResult::MigrationUpdated { id: mig, .. } = started else {
            panic!("{started:?}");
        };
        run(
            &mut calm,
            index + 1,
            Command::AbortMigration {
                id: mig,
                reason: "test".into(),
                now_ms: 2_100,
            },
        );
        assert_eq!(calm.allocations[&id].desired, AllocDesired::Run);
    }

    #[test]
    fn no_migrate_restarts_everything_as_before() {
        let (mut state, index) = running_on_n1(
            vec![
                job("vm-web", "vm", JobType::Service, 1),
                job("tool", "exec", JobType::Service, 1),
            ],
            &["n2"],
        );
        let outcome = drain(&mut state, index, 0, false);
        assert!(outcome.moving.is_empty(), "{outcome:?}");
        assert_eq!(outcome.restarting.len(), 2);
        assert!(outcome
            .restarting
            .iter()
            .all(|r| r.why.contains("--no-migrate")));
        assert!(state.migrations.is_empty());
        assert!(state
            .allocations
            .values()
            .all(|a| a.desired == AllocDesired::Stop));
    }

    #[test]
    fn what_no_node_can_receive_restarts_with_the_reason() {
        // Room for one 1-CPU move on n2 (3 CPUs taken by a filler), and a
        // node n3 whose vm driver cannot receive.
        let mut filler = job("filler", "exec", JobType::Service, 1);
        filler.task.resources.cpu_millis = 3000;
        let (mut state, mut index) = running_on_n1(
            vec![
                job("vm-a", "vm", JobType::Service, 1),
                job("vm-b", "vm", JobType::Service, 1),
            ],
            &["n2", "n3"],
        );
        declare(&mut state, index, "n3", MigrationMode::None);
        index += 1;
        run(
            &mut state,
            index,
            Command::SubmitJob {
                spec: filler,
                now_ms: 1_600,
            },
        );
        index += 1;
        // The filler goes to n2 (n1 is full enough, n3 is drained of it by
        // constraint-free bin-packing: check where it landed).
        let mut plan = plan_job(&state, &state.jobs["filler"], 1_600).expect("a plan");
        plan.placements[0].node = "n2".into();
        run(
            &mut state,
            index,
            Command::ApplyPlan {
                plan,
                now_ms: 1_600,
            },
        );
        index += 1;
        assert_eq!(the_alloc(&state, "filler").node, "n2");

        let outcome = drain(&mut state, index, 0, true);
        assert_eq!(outcome.moving.len(), 1, "{outcome:?}");
        let [restart] = outcome.restarting.as_slice() else {
            panic!("{outcome:?}");
        };
        assert!(
            restart.why.contains("no node can receive it live"),
            "{restart:?}"
        );
        assert_eq!(
            state.allocations[&restart.alloc_id].desired,
            AllocDesired::Stop
        );
        // The move went where the room was, not to n3.
        assert_eq!(outcome.moving[0].target, "n2");
    }

    #[test]
    fn a_deadline_lets_unmovable_batch_work_finish_and_then_forces_the_rest() {
        let (mut state, index) = running_on_n1(
            vec![
                job("train", "dljob", JobType::Batch, 1),
                job("script", "exec", JobType::Batch, 1),
                job("tool", "exec", JobType::Service, 1),
            ],
            &["n2"],
        );
        let outcome = drain(&mut state, index, 60_000, true);
        assert_eq!(state.drain_deadlines.get("n1"), Some(&62_000));
        let jobs = |items: &[Unmoved]| items.iter().map(|u| u.job.clone()).collect::<Vec<_>>();
        assert_eq!(outcome.moving.len(), 1);
        assert_eq!(outcome.moving[0].job, "train");
        assert_eq!(jobs(&outcome.restarting), ["tool"]);
        assert_eq!(jobs(&outcome.until_deadline), ["script"]);
        assert_eq!(the_alloc(&state, "script").desired, AllocDesired::Run);

        // An aborted move of batch work under a deadline keeps running too.
        let mut aborted = state.clone();
        run(
            &mut aborted,
            index + 1,
            Command::AbortMigration {
                id: outcome.moving[0].migration.clone(),
                reason: "test".into(),
                now_ms: 2_100,
            },
        );
        assert_eq!(the_alloc(&aborted, "train").desired, AllocDesired::Run);

        // At the deadline the leader's drain stops all that is left, the
        // move included, which the leader then aborts.
        run(
            &mut state,
            index + 1,
            Command::DrainNode {
                node: "n1".into(),
                now_ms: 62_000,
            },
        );
        assert!(state
            .allocations
            .values()
            .filter(|a| a.node == "n1")
            .all(|a| a.desired == AllocDesired::Stop));
        // (Looked at before the phase's own deadline, to see this reason.)
        let doomed = migrations_to_abort(&state, 2_100);
        assert_eq!(doomed.len(), 1, "{doomed:?}");
        assert!(doomed[0].1.contains("no longer runs"), "{doomed:?}");
    }

    #[test]
    fn gangs_move_whole_and_moves_into_the_node_are_aborted() {
        let mut gang = job("gang", "dljob", JobType::Batch, 2);
        gang.placement.gang = true;
        let (mut state, index) = running_on_n1(
            vec![gang, job("vm-web", "vm", JobType::Service, 1)],
            &["n2"],
        );
        // vm-web moves n1 -> n2 by hand, then n2 is drained... from n1's
        // side: drain n2 instead, whose incoming move is aborted.
        let web = the_alloc(&state, "vm-web").id.clone();
        let (started, _) = run(
            &mut state,
            index,
            Command::StartMigration {
                alloc_id: web.clone(),
                target: "n2".into(),
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
                now_ms: 2_000,
            },
        );
        let CommandResult::MigrationUpdated { id: mig, .. } = started else {
            panic!("{started:?}");
        };
        let mut into = state.clone();
        let (result, _) = run(
            &mut into,
            index + 1,
            Command::DrainNodeLive {
                node: "n2".into(),
                grace_ms: 0,
                migrate: true,
                now_ms: 2_100,
            },
        );
        assert_eq!(result, CommandResult::NodeDrained(DrainOutcome::default()));
        assert_eq!(into.migrations[&mig].phase, MigrationPhase::Aborted);
        assert_eq!(
            into.allocations[&web].desired,
            AllocDesired::Run,
            "n1 keeps it"
        );

        // Draining n1 instead: the move already under way goes on, the
        // gang moves whole (both members, one group).
        let outcome = drain(&mut state, index + 1, 0, true);
        assert_eq!(outcome.moving.len(), 3, "{outcome:?}");
        assert_eq!(outcome.moving[0].migration, mig);
        assert!(outcome.restarting.is_empty(), "{outcome:?}");
        let groups: Vec<_> = outcome.moving[1..]
            .iter()
            .map(|m| {
                assert_eq!((m.job.as_str(), m.target.as_str()), ("gang", "n2"));
                state.migrations[&m.migration]
                    .gang
                    .as_ref()
                    .map(|g| g.group.clone())
            })
            .collect();
        assert!(groups[0].is_some() && groups[0] == groups[1], "{groups:?}");
    }

    #[test]
    fn bad_live_drains_are_refused_and_change_nothing() {
        let (mut state, index) =
            running_on_n1(vec![job("vm-web", "vm", JobType::Service, 1)], &["n2"]);
        let before = state.clone();
        for (node, grace_ms) in [("ghost", 0), ("n1", MAX_DRAIN_GRACE_MS + 1)] {
            let (result, ops) = run(
                &mut state,
                index,
                Command::DrainNodeLive {
                    node: node.into(),
                    grace_ms,
                    migrate: true,
                    now_ms: 2_000,
                },
            );
            assert!(matches!(result, CommandResult::Rejected(_)), "{result:?}");
            assert!(ops.is_empty());
        }
        assert_eq!(state, before);
    }
}
