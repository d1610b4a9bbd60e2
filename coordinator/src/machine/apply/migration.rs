//! Applying migration commands: start, progress, the switch-over, abort.
//!
//! The rules that keep one running copy: a migration starts only for a
//! running allocation with none in flight, on a target that is ready,
//! eligible, not its own node, and has room (the allocation's resources are
//! reserved there until the migration ends, see `planning::views`). Phases
//! only move forward. The switch-over is one command: the allocation's node
//! becomes the target and its generation rises, so from that entry on the
//! source's reports are refused and the target's copy is the one; before
//! it, an abort leaves the source's copy running.

use herd_api::alloc::{AllocDesired, AllocStatus};
use herd_api::capabilities::MigrationMode;
use herd_api::migration::{Migration, MigrationPhase};
use herd_api::node::NodeStatus;

use crate::machine::apply::{drain, gang_migration};
use crate::machine::command::{CommandResult, Rejection};
use crate::planning::{
    alloc_views, node_views, request_for, to_scheduler_plan, PlanCommand, PlannedPlacement,
};
use crate::power::placement::power_limits;
use crate::scheduler::verify_plan_with_power;
use crate::state::{ChangeLog, ClusterState, Record};

/// How long each phase may take before the leader aborts the migration, ms.
/// Generous: a VM's pre-copy of gigabytes takes minutes; the operator's
/// downtime limit bounds the pause, not these.
pub fn phase_timeout_ms(phase: MigrationPhase) -> u64 {
    match phase {
        MigrationPhase::Planned => 30_000,
        MigrationPhase::Preparing => 60_000,
        MigrationPhase::Transferring => 600_000,
        MigrationPhase::Switching => 30_000,
        MigrationPhase::Completed | MigrationPhase::Aborted => 0,
    }
}

/// Ended migrations kept per allocation (the newest), so that the state
/// does not grow with every move an allocation ever made.
pub const ENDED_KEPT_PER_ALLOC: usize = 4;

/// Deletes the ended migrations of `alloc_id` beyond the newest
/// [`ENDED_KEPT_PER_ALLOC`]; called whenever one ends.
fn forget_old_migrations(state: &mut ClusterState, alloc_id: &str, changes: &mut ChangeLog<'_>) {
    let mut ended: Vec<(u64, String)> = state
        .migrations
        .values()
        .filter(|m| m.alloc_id == alloc_id && m.phase.is_final())
        .map(|m| (m.create_index, m.id.clone()))
        .collect();
    if ended.len() <= ENDED_KEPT_PER_ALLOC {
        return;
    }
    ended.sort_unstable();
    let excess = ended.len() - ENDED_KEPT_PER_ALLOC;
    for (_, id) in ended.into_iter().take(excess) {
        if let Some(removed) = state.migrations.remove(&id) {
            changes.removed_migration(&removed);
        }
    }
}

/// Longest downtime limit an operator may ask for, ms.
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 60_000;
/// Longest reason kept with an aborted migration.
pub const MAX_REASON_BYTES: usize = 512;

fn refuse(why: String) -> CommandResult {
    CommandResult::Rejected(Rejection::Migration(why))
}

/// The migration in flight for `alloc_id`, if any.
pub fn active_migration_of<'a>(state: &'a ClusterState, alloc_id: &str) -> Option<&'a Migration> {
    state
        .migrations
        .values()
        .find(|m| m.alloc_id == alloc_id && m.is_active())
}

/// What an operator asked to move, and how (`Command::StartMigration`).
#[derive(Debug, Clone, Copy)]
pub struct MoveRequest<'a> {
    /// The allocation.
    pub alloc_id: &'a str,
    /// The node it goes to.
    pub target: &'a str,
    /// The longest pause allowed, ms.
    pub downtime_limit_ms: u64,
    /// A bandwidth cap, bytes per second.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// What an agent reports of a running migration (`Command::AdvanceMigration`).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase it is in now.
    pub phase: MigrationPhase,
    /// State moved so far.
    pub bytes: u64,
    /// Transfer rounds so far.
    pub rounds: u32,
}

/// Whether `node`'s agent says its `kind` driver can move a whole running
/// workload (live, or through a checkpoint), as it declared at registration.
/// Unknown (an agent too old to say) counts as no.
pub fn moves_whole(state: &ClusterState, node: &str, kind: &str) -> Result<(), String> {
    match state.driver_capabilities(node, kind) {
        Some(caps)
            if matches!(
                caps.migration,
                MigrationMode::LivePreCopy | MigrationMode::CheckpointRestart
            ) =>
        {
            Ok(())
        }
        Some(caps) => Err(format!(
            "{node}: its {kind} driver moves {} only",
            caps.migration.as_str()
        )),
        None => Err(format!(
            "{node}: its agent did not say that its {kind} driver can move"
        )),
    }
}

/// A fresh id for a migration created at log `index`: `mig-INDEX`, or
/// `mig-INDEX-N` (N from 2) when one entry starts several (a drain, or a
/// batch of commands sharing the entry's index), so none overwrites another.
fn migration_id(state: &ClusterState, index: u64) -> String {
    let first = format!("mig-{index}");
    if !state.migrations.contains_key(&first) {
        return first;
    }
    (2u64..)
        .map(|n| format!("mig-{index}-{n}"))
        .find(|id| !state.migrations.contains_key(id))
        .unwrap_or(first)
}

/// Records the migration `request` asks for, or says why not. A member of
/// a gang is refused: its gang moves whole (`gang_migration`).
pub fn start_migration(
    state: &mut ClusterState,
    index: u64,
    request: MoveRequest<'_>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    start_member(state, index, request, now_ms, changes, false)
}

/// [`start_migration`], for a gang member too when `as_gang_member` (a
/// gang's move records its members' migrations through this, with the same
/// checks, then marks them as one group).
pub(crate) fn start_member(
    state: &mut ClusterState,
    index: u64,
    request: MoveRequest<'_>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
    as_gang_member: bool,
) -> CommandResult {
    let MoveRequest {
        alloc_id,
        target,
        downtime_limit_ms,
        bandwidth_bytes_per_sec,
    } = request;
    let Some(alloc) = state.allocations.get(alloc_id) else {
        return refuse(format!("allocation {alloc_id:?} not found"));
    };
    if alloc.desired != AllocDesired::Run || alloc.status != AllocStatus::Running {
        return refuse(format!(
            "allocation {alloc_id} is {}{}: only a running allocation can move",
            alloc.status.as_str(),
            if alloc.desired == AllocDesired::Run {
                ""
            } else {
                " and being stopped"
            }
        ));
    }
    if let Some(m) = active_migration_of(state, alloc_id) {
        return refuse(format!(
            "allocation {alloc_id} is already moving ({} to {}, {})",
            m.id,
            m.target,
            m.phase.as_str()
        ));
    }
    if alloc.node == target {
        return refuse(format!("allocation {alloc_id} already runs on {target}"));
    }
    if alloc.gang.is_some() && !as_gang_member {
        return refuse(format!(
            "allocation {alloc_id} belongs to the gang of job {job}, whose members move together: \
             move the whole gang with `herd job migrate {job} --to NODE,...` (one node per member, in rank order)",
            job = alloc.job
        ));
    }
    if downtime_limit_ms == 0 || downtime_limit_ms > MAX_DOWNTIME_LIMIT_MS {
        return refuse(format!(
            "downtime limit must be 1 to {MAX_DOWNTIME_LIMIT_MS} ms, got {downtime_limit_ms}"
        ));
    }
    if bandwidth_bytes_per_sec == Some(0) {
        return refuse("a bandwidth cap of 0 would never finish".into());
    }
    let Some(node) = state.nodes.get(target) else {
        return refuse(format!("target node {target:?} not found"));
    };
    if node.status != NodeStatus::Ready || !node.eligible {
        return refuse(format!(
            "target node {target} takes no new work ({}{})",
            node.status.as_str(),
            if node.eligible { "" } else { ", not eligible" }
        ));
    }
    let Some(job) = state.jobs.get(&alloc.job) else {
        return refuse(format!("allocation {alloc_id}'s job {} is gone", alloc.job));
    };
    let kind = job.spec.task.driver.clone();
    for (role, node) in [("source", alloc.node.as_str()), ("target", target)] {
        if let Err(why) = moves_whole(state, node, &kind) {
            return refuse(format!(
                "allocation {alloc_id} cannot move live ({role} {why}); a drain restarts it elsewhere instead"
            ));
        }
    }
    // Room on the target, as the scheduler counts it (reservations of
    // other migrations included), and the job's constraints there.
    let mut request = request_for(job, vec![alloc.instance]);
    request.resources = alloc.resources.clone();
    let nodes: Vec<_> = node_views(state)
        .into_iter()
        .filter(|n| n.name == target)
        .collect();
    let allocs: Vec<_> = alloc_views(state)
        .into_iter()
        .filter(|a| a.node == target)
        .collect();
    let plan = PlanCommand {
        job: alloc.job.clone(),
        job_version: alloc.job_version,
        placements: vec![PlannedPlacement::new(alloc.instance, target)],
        evictions: Vec::new(),
        blocked: None,
    };
    // The target's power groups count the move's reservation too.
    let limits = power_limits(state, |name| name == target);
    let verdict = verify_plan_with_power(
        &nodes,
        &allocs,
        &limits,
        &request,
        &to_scheduler_plan(&plan),
    );
    if let Some(rejected) = verdict.rejected.first() {
        return refuse(format!(
            "target node {target} cannot take allocation {alloc_id}: {}",
            rejected.reason
        ));
    }
    let id = migration_id(state, index);
    let migration = Migration {
        id: id.clone(),
        alloc_id: alloc_id.to_string(),
        job: alloc.job.clone(),
        kind,
        source: alloc.node.clone(),
        target: target.to_string(),
        phase: MigrationPhase::Planned,
        phase_deadline_ms: now_ms.saturating_add(phase_timeout_ms(MigrationPhase::Planned)),
        started_at_ms: now_ms,
        ended_at_ms: None,
        bytes: 0,
        rounds: 0,
        downtime_ms: None,
        downtime_limit_ms,
        bandwidth_bytes_per_sec,
        error: None,
        from_generation: alloc.generation,
        create_index: index,
        modify_index: index,
        // The lowest GPUs free on the target, reserved there until it ends.
        target_gpu_indices: verdict
            .accepted
            .first()
            .map(|p| p.gpu_indices.clone())
            .unwrap_or_default(),
        gang: None,
    };
    if let Some(alloc) = state.allocations.get_mut(alloc_id) {
        alloc.record(
            now_ms,
            "migrating",
            format!("{id}: to {target}, downtime limit {downtime_limit_ms} ms"),
        );
        alloc.modify_index = index;
    }
    state.migrations.insert(id.clone(), migration);
    changes.put(Record::Migration(&id), state);
    changes.put(Record::Alloc(alloc_id), state);
    CommandResult::MigrationUpdated {
        id,
        phase: MigrationPhase::Planned,
    }
}

/// Takes an agent's report of migration `id`: the same phase (progress) or
/// the next one.
pub fn advance_migration(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    progress: Progress,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Progress {
        phase,
        bytes,
        rounds,
    } = progress;
    let Some(m) = state.migrations.get_mut(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    if m.phase.is_final() {
        return refuse(format!("migration {id} already {}", m.phase.as_str()));
    }
    if phase != m.phase && Some(phase) != m.phase.next() {
        return refuse(format!(
            "migration {id} cannot go from {} to {}",
            m.phase.as_str(),
            phase.as_str()
        ));
    }
    if phase == MigrationPhase::Transferring
        && m.gang.as_ref().is_some_and(|g| g.stop_step.is_none())
    {
        return refuse(format!(
            "migration {id}: its gang has not agreed on the step to stop at yet"
        ));
    }
    if phase != m.phase {
        m.phase = phase;
        m.phase_deadline_ms = now_ms.saturating_add(phase_timeout_ms(phase));
    }
    // Progress only grows (a retried report may repeat an older figure).
    m.bytes = m.bytes.max(bytes);
    m.rounds = m.rounds.max(rounds);
    m.modify_index = index;
    changes.put(Record::Migration(id), state);
    CommandResult::MigrationUpdated {
        id: id.to_string(),
        phase,
    }
}

/// The switch-over of migration `id`: the allocation now belongs to the
/// target, one generation higher.
pub fn switch_migration(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    downtime_ms: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if let Err(why) = switchable(state, id) {
        return refuse(why);
    }
    if state.migrations.get(id).is_some_and(|m| m.gang.is_some()) {
        return gang_migration::switch_member(state, index, id, downtime_ms, now_ms, changes);
    }
    complete_switch(state, index, id, downtime_ms, now_ms, changes)
}

/// Whether migration `id` may switch over now: it is in `switching` and its
/// allocation is still the one it began with (same node and generation,
/// still wanted). Says why not.
pub(crate) fn switchable(state: &ClusterState, id: &str) -> Result<(), String> {
    let Some(m) = state.migrations.get(id) else {
        return Err(format!("migration {id:?} not found"));
    };
    if m.phase != MigrationPhase::Switching {
        return Err(format!(
            "migration {id} is {}, not switching: the source has not paused",
            m.phase.as_str()
        ));
    }
    let alloc_id = &m.alloc_id;
    let Some(alloc) = state.allocations.get(alloc_id) else {
        return Err(format!("migration {id}: allocation {alloc_id} is gone"));
    };
    if alloc.node != m.source
        || alloc.generation != m.from_generation
        || alloc.desired != AllocDesired::Run
        || alloc.status.is_terminal()
    {
        return Err(format!(
            "migration {id}: allocation {alloc_id} changed since the migration began ({} on {}, generation {})",
            alloc.status.as_str(),
            alloc.node,
            alloc.generation
        ));
    }
    Ok(())
}

/// Switches migration `id` over, [`switchable`] checked by the caller: its
/// allocation now belongs to the target, one generation higher.
pub(crate) fn complete_switch(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    downtime_ms: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(m) = state.migrations.get(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    let (alloc_id, source, target) = (m.alloc_id.clone(), m.source.clone(), m.target.clone());
    let (bytes, rounds, started_at_ms) = (m.bytes, m.rounds, m.started_at_ms);
    let gpu_indices = m.target_gpu_indices.clone();
    state.move_alloc(&alloc_id, &target);
    if let Some(alloc) = state.allocations.get_mut(&alloc_id) {
        alloc.generation += 1;
        // Its GPUs on the target, reserved since the migration started
        // (none recorded by a release before GPU indices: a count only).
        alloc.gpu_indices = gpu_indices;
        alloc.modify_index = index;
        alloc.record(
            now_ms,
            "migrated",
            migrated_detail(
                id,
                (&source, &target),
                bytes,
                rounds,
                downtime_ms,
                now_ms.saturating_sub(started_at_ms),
            ),
        );
    }
    if let Some(m) = state.migrations.get_mut(id) {
        m.phase = MigrationPhase::Completed;
        m.downtime_ms = Some(downtime_ms);
        m.ended_at_ms = Some(now_ms);
        m.modify_index = index;
    }
    changes.put(Record::Migration(id), state);
    changes.put(Record::Alloc(&alloc_id), state);
    forget_old_migrations(state, &alloc_id, changes);
    CommandResult::MigrationUpdated {
        id: id.to_string(),
        phase: MigrationPhase::Completed,
    }
}

/// The detail of an allocation's `migrated` event: the figures of the move,
/// so that `herd alloc status` says what it cost without a second lookup.
fn migrated_detail(
    id: &str,
    (source, target): (&str, &str),
    bytes: u64,
    rounds: u32,
    downtime_ms: u64,
    total_ms: u64,
) -> String {
    format!(
        "{id}: {source} \u{2192} {target}, {bytes} bytes in {rounds} round{}, downtime {downtime_ms} ms, total {total_ms} ms",
        if rounds == 1 { "" } else { "s" }
    )
}

/// Gives migration `id` up; the source keeps the allocation (unless its
/// node is being drained, see [`drain::fall_back_to_restart`]).
pub fn abort_migration(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    reason: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(m) = state.migrations.get(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    if m.phase.is_final() {
        return refuse(format!("migration {id} already {}", m.phase.as_str()));
    }
    let group = m.gang.as_ref().map(|g| g.group.clone());
    let result = abort_one(state, index, id, reason, now_ms, changes);
    // A gang moves whole or not at all: the other members give up too.
    if let Some(group) = group {
        let reason: String = format!("gang member {id} aborted: {reason}")
            .chars()
            .take(MAX_REASON_BYTES)
            .collect();
        for other in gang_migration::active_members(state, &group) {
            abort_one(state, index, &other, &reason, now_ms, changes);
        }
    }
    result
}

/// Aborts migration `id` alone (see [`abort_migration`]).
fn abort_one(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    reason: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(m) = state.migrations.get_mut(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    if m.phase.is_final() {
        return refuse(format!("migration {id} already {}", m.phase.as_str()));
    }
    let reason: String = reason.chars().take(MAX_REASON_BYTES).collect();
    m.phase = MigrationPhase::Aborted;
    m.error = Some(reason.clone());
    m.ended_at_ms = Some(now_ms);
    m.modify_index = index;
    let alloc_id = m.alloc_id.clone();
    if let Some(alloc) = state.allocations.get_mut(&alloc_id) {
        alloc.record(now_ms, "migration_aborted", format!("{id}: {reason}"));
        alloc.modify_index = index;
        changes.put(Record::Alloc(&alloc_id), state);
    }
    changes.put(Record::Migration(id), state);
    drain::fall_back_to_restart(state, index, id, now_ms, changes);
    forget_old_migrations(state, &alloc_id, changes);
    CommandResult::MigrationUpdated {
        id: id.to_string(),
        phase: MigrationPhase::Aborted,
    }
}

/// Why each migration in flight at `now_ms` must be given up: its phase
/// outlived its deadline, its allocation stopped running, or one of its
/// nodes is down. The leader proposes an abort for each (see
/// `leader::migrations`).
pub fn migrations_to_abort(state: &ClusterState, now_ms: u64) -> Vec<(String, String)> {
    state
        .migrations
        .values()
        .filter(|m| m.is_active())
        .filter_map(|m| {
            // A gang member that asked for the switch-over waits for the
            // others, whose own deadlines bound the wait.
            let waits_for_gang = m.gang.as_ref().is_some_and(|g| g.switch_asked);
            let why = if now_ms > m.phase_deadline_ms && !waits_for_gang {
                format!(
                    "phase {} outlived its deadline ({} ms)",
                    m.phase.as_str(),
                    phase_timeout_ms(m.phase)
                )
            } else if !state
                .allocations
                .get(&m.alloc_id)
                .is_some_and(|a| a.desired == AllocDesired::Run && !a.status.is_terminal())
            {
                format!("allocation {} no longer runs", m.alloc_id)
            } else if let Some(down) = [&m.source, &m.target].into_iter().find(|n| {
                state
                    .nodes
                    .get(*n)
                    .is_none_or(|n| n.status == NodeStatus::Down)
            }) {
                format!("node {down} is down")
            } else {
                return None;
            };
            Some((m.id.clone(), why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::Allocation;
    use herd_api::job::{JobSpec, JobType};

    use super::*;
    use crate::machine::command::Command;
    use crate::planning::{alloc_views, plan_job};
    use crate::testkit::{alloc_update, place, report, run, spec};
    use herd_consensus::storage::WriteOp;

    /// One running instance of a 3-CPU `web` (nodes have 4), placed on one
    /// of `nodes`; returns the state, the allocation and the next index.
    fn running(nodes: &[&str]) -> (ClusterState, Allocation, u64) {
        let mut state = ClusterState::default();
        let mut web = spec("web", JobType::Service, 1);
        web.task.driver = "vm".into();
        web.task.resources.cpu_millis = 3000;
        let mut index = place(&mut state, nodes, vec![web], 1_000);
        for node in nodes {
            declare(&mut state, index, node, MigrationMode::LivePreCopy);
            index += 1;
        }
        let alloc = state.allocations.values().next().cloned().expect("placed");
        let update = alloc_update(&alloc, AllocStatus::Running);
        let (accepted, refused) = report(&mut state, index, &alloc.node, vec![update], 1_500);
        assert_eq!(accepted, 1, "{refused:?}");
        let alloc = state.allocations[&alloc.id].clone();
        (state, alloc, index + 1)
    }

    /// `node`'s agent says its vm driver moves as `mode`.
    fn declare(state: &mut ClusterState, index: u64, node: &str, mode: MigrationMode) {
        let caps = herd_api::capabilities::DriverCaps {
            migration: mode,
            pause: true,
            power_cap: false,
        };
        let (result, _) = run(
            state,
            index,
            Command::SetNodeDrivers {
                node: node.into(),
                drivers: Some([("vm".to_string(), caps)].into()),
            },
        );
        assert!(!matches!(result, CommandResult::Rejected(_)), "{result:?}");
    }

    fn elsewhere(alloc: &Allocation, nodes: &[&'static str]) -> &'static str {
        nodes
            .iter()
            .find(|n| **n != alloc.node)
            .copied()
            .expect("another node")
    }

    fn start(state: &mut ClusterState, index: u64, alloc: &str, target: &str) -> CommandResult {
        run(
            state,
            index,
            Command::StartMigration {
                alloc_id: alloc.into(),
                target: target.into(),
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
                now_ms: 2_000,
            },
        )
        .0
    }

    fn advance(
        state: &mut ClusterState,
        index: u64,
        id: &str,
        phase: MigrationPhase,
    ) -> CommandResult {
        run(
            state,
            index,
            Command::AdvanceMigration {
                id: id.into(),
                phase,
                bytes: index * 10,
                rounds: 1,
                now_ms: 2_500,
            },
        )
        .0
    }

    fn refused(result: &CommandResult, needle: &str) -> bool {
        matches!(result, CommandResult::Rejected(Rejection::Migration(why)) if why.contains(needle))
    }

    #[test]
    fn a_migration_switches_owner_and_generation_in_one_command() {
        let nodes = ["n1", "n2"];
        let (mut state, alloc, mut index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        let id = format!("mig-{index}");
        assert_eq!(
            start(&mut state, index, &alloc.id, target),
            CommandResult::MigrationUpdated {
                id: id.clone(),
                phase: MigrationPhase::Planned
            }
        );
        index += 1;
        // Switching before the source paused is refused.
        let early = run(
            &mut state,
            index,
            Command::SwitchMigration {
                id: id.clone(),
                downtime_ms: 5,
                now_ms: 2_600,
            },
        )
        .0;
        assert!(refused(&early, "not switching"), "{early:?}");
        // Phases move forward one at a time; skipping one is refused.
        let skip = advance(&mut state, index, &id, MigrationPhase::Switching);
        assert!(refused(&skip, "cannot go from planned"), "{skip:?}");
        for phase in [
            MigrationPhase::Preparing,
            MigrationPhase::Transferring,
            MigrationPhase::Transferring,
            MigrationPhase::Switching,
        ] {
            index += 1;
            let result = advance(&mut state, index, &id, phase);
            assert_eq!(
                result,
                CommandResult::MigrationUpdated {
                    id: id.clone(),
                    phase
                }
            );
        }
        index += 1;
        let switched = run(
            &mut state,
            index,
            Command::SwitchMigration {
                id: id.clone(),
                downtime_ms: 42,
                now_ms: 3_000,
            },
        )
        .0;
        assert_eq!(
            switched,
            CommandResult::MigrationUpdated {
                id: id.clone(),
                phase: MigrationPhase::Completed
            }
        );
        let moved = &state.allocations[&alloc.id];
        assert_eq!(moved.node, target, "same id, new owner");
        assert_eq!(moved.generation, alloc.generation + 1);
        assert!(state.alloc_index_is_current());
        let m = &state.migrations[&id];
        assert_eq!(m.downtime_ms, Some(42));
        assert_eq!(m.total_ms(), Some(1_000));
        assert_eq!(
            m.bytes,
            (index - 1) * 10,
            "progress kept the highest figure"
        );
        // The source's copy is fenced off: its reports are refused now.
        let (accepted, refused_reports) = report(
            &mut state,
            index + 1,
            &alloc.node,
            vec![alloc_update(&alloc, AllocStatus::Failed)],
            3_100,
        );
        assert_eq!(accepted, 0, "the old owner rewrote the allocation");
        assert_eq!(refused_reports.len(), 1);
        // Nothing is reserved any more: one copy's worth of CPU on each side.
        assert_eq!(
            alloc_views(&state)
                .iter()
                .filter(|a| a.job == "web")
                .count(),
            1
        );
    }

    #[test]
    fn a_target_holds_the_room_while_the_migration_runs_and_not_after_an_abort() {
        let nodes = ["n1", "n2"];
        let (mut state, alloc, index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        start(&mut state, index, &alloc.id, target);
        let reserved: Vec<_> = alloc_views(&state)
            .into_iter()
            .filter(|a| a.node == target)
            .collect();
        assert_eq!(reserved.len(), 1, "{reserved:?}");
        assert_eq!(reserved[0].resources.cpu_millis, 3000);

        // Another 3-CPU job finds no room on either node meanwhile...
        let mut other: JobSpec = spec("other", JobType::Service, 1);
        other.task.resources.cpu_millis = 3000;
        run(
            &mut state,
            index + 1,
            Command::SubmitJob {
                spec: other,
                now_ms: 2_100,
            },
        );
        let plan = plan_job(&state, &state.jobs["other"], 2_100).expect("a plan");
        assert!(plan.placements.is_empty(), "{plan:?}");
        assert!(plan.blocked.is_some());
        // ...nor may a second migration use the same room.
        let second = start(&mut state, index + 2, &alloc.id, target);
        assert!(refused(&second, "already moving"), "{second:?}");

        let id = format!("mig-{index}");
        let aborted = run(
            &mut state,
            index + 3,
            Command::AbortMigration {
                id: id.clone(),
                reason: "target agent lost".into(),
                now_ms: 2_200,
            },
        )
        .0;
        assert_eq!(
            aborted,
            CommandResult::MigrationUpdated {
                id: id.clone(),
                phase: MigrationPhase::Aborted
            }
        );
        assert_eq!(
            state.allocations[&alloc.id].node, alloc.node,
            "the source keeps it"
        );
        assert_eq!(state.allocations[&alloc.id].generation, alloc.generation);
        assert_eq!(
            state.migrations[&id].error.as_deref(),
            Some("target agent lost")
        );
        let plan = plan_job(&state, &state.jobs["other"], 2_300).expect("a plan");
        assert_eq!(plan.placements.len(), 1, "the room was released: {plan:?}");
        // An ended migration moves no more.
        let late = advance(&mut state, index + 4, &id, MigrationPhase::Preparing);
        assert!(refused(&late, "already aborted"), "{late:?}");
    }

    #[test]
    fn bad_requests_are_refused_with_what_and_where_and_change_nothing() {
        let nodes = ["n1", "n2", "n3"];
        let (mut state, alloc, index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        let down = nodes
            .into_iter()
            .find(|n| *n != alloc.node && *n != target)
            .expect("a third node");
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: down.into(),
                now_ms: 1_900,
            },
        );
        let index = index + 1;
        let before = state.clone();
        for (alloc_id, to, needle) in [
            (alloc.id.as_str(), alloc.node.as_str(), "already runs on"),
            ("nope", target, "allocation \"nope\" not found"),
            (alloc.id.as_str(), "n9", "target node \"n9\" not found"),
            (alloc.id.as_str(), down, "takes no new work (down"),
        ] {
            let result = start(&mut state, index, alloc_id, to);
            assert!(refused(&result, needle), "{alloc_id} to {to}: {result:?}");
        }
        let limits = run(
            &mut state,
            index,
            Command::StartMigration {
                alloc_id: alloc.id.clone(),
                target: target.into(),
                downtime_limit_ms: 0,
                bandwidth_bytes_per_sec: None,
                now_ms: 2_000,
            },
        )
        .0;
        assert!(refused(&limits, "downtime limit"), "{limits:?}");
        assert_eq!(state, before, "a refused migration changed the state");

        // No room: fill the target with a 2-CPU job first.
        let mut filler = spec("filler", JobType::Service, 1);
        filler.task.resources.cpu_millis = 2000;
        let (mut full, alloc, index) = running(&["n1", "n2"]);
        let target = elsewhere(&alloc, &["n1", "n2"]);
        run(
            &mut full,
            index,
            Command::SubmitJob {
                spec: filler,
                now_ms: 1_800,
            },
        );
        let plan = plan_job(&full, &full.jobs["filler"], 1_800).expect("a plan");
        run(
            &mut full,
            index + 1,
            Command::ApplyPlan {
                plan,
                now_ms: 1_800,
            },
        );
        let no_room = start(&mut full, index + 2, &alloc.id, target);
        assert!(refused(&no_room, "cannot take allocation"), "{no_room:?}");

        // Only a running allocation moves.
        let (mut stopped, alloc, index) = running(&["n1", "n2"]);
        run(
            &mut stopped,
            index,
            Command::StopJob {
                name: "web".into(),
                now_ms: 1_900,
            },
        );
        let target = elsewhere(&alloc, &["n1", "n2"]);
        let result = start(&mut stopped, index + 1, &alloc.id, target);
        assert!(refused(&result, "being stopped"), "{result:?}");
    }

    #[test]
    fn the_leader_gives_up_late_orphaned_and_cut_off_migrations() {
        let nodes = ["n1", "n2"];
        let (mut state, alloc, index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        start(&mut state, index, &alloc.id, target);
        let id = format!("mig-{index}");
        assert!(migrations_to_abort(&state, 2_000).is_empty());
        let late = migrations_to_abort(
            &state,
            2_000 + phase_timeout_ms(MigrationPhase::Planned) + 1,
        );
        assert_eq!(late.len(), 1);
        assert!(
            late[0].1.contains("planned outlived its deadline"),
            "{late:?}"
        );

        let mut down = state.clone();
        run(
            &mut down,
            index + 1,
            Command::MarkNodeDown {
                node: target.into(),
                now_ms: 2_100,
            },
        );
        let why = migrations_to_abort(&down, 2_100);
        assert_eq!(why, vec![(id.clone(), format!("node {target} is down"))]);

        let mut stopped = state.clone();
        run(
            &mut stopped,
            index + 1,
            Command::StopJob {
                name: "web".into(),
                now_ms: 2_100,
            },
        );
        let why = migrations_to_abort(&stopped, 2_100);
        assert_eq!(
            why,
            vec![(id, format!("allocation {} no longer runs", alloc.id))]
        );
    }

    #[test]
    fn migrations_persist_and_reload_with_the_state() {
        let nodes = ["n1", "n2"];
        let (mut state, alloc, index) = running(&nodes);
        start(&mut state, index, &alloc.id, elsewhere(&alloc, &nodes));
        let rebuilt = ClusterState::from_pairs(state.to_pairs()).expect("rebuild");
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.migrations.len(), 1);
    }
    #[test]
    fn only_kinds_both_agents_can_move_are_moved() {
        let nodes = ["n1", "n2"];
        let (state, alloc, index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        for (node, mode, needle) in [
            (target, MigrationMode::None, "moves none only"),
            (
                alloc.node.as_str(),
                MigrationMode::RequestKvCache,
                "moves kv_cache only",
            ),
        ] {
            let mut state = state.clone();
            declare(&mut state, index, node, mode);
            let result = start(&mut state, index + 1, &alloc.id, target);
            assert!(refused(&result, needle), "{node} {mode:?}: {result:?}");
            assert!(
                refused(&result, "a drain restarts it elsewhere"),
                "{result:?}"
            );
        }
        // An agent too old to say: not moved.
        let mut unknown = state.clone();
        run(
            &mut unknown,
            index,
            Command::SetNodeDrivers {
                node: target.into(),
                drivers: None,
            },
        );
        let result = start(&mut unknown, index + 1, &alloc.id, target);
        assert!(refused(&result, "did not say"), "{result:?}");
        // Through a checkpoint is a way to move too (DL jobs).
        let mut checkpoint = state.clone();
        declare(
            &mut checkpoint,
            index,
            target,
            MigrationMode::CheckpointRestart,
        );
        let result = start(&mut checkpoint, index + 1, &alloc.id, target);
        assert!(
            matches!(result, CommandResult::MigrationUpdated { .. }),
            "{result:?}"
        );
    }
    #[test]
    fn only_the_newest_ended_migrations_of_an_allocation_are_kept() {
        let nodes = ["n1", "n2"];
        let (mut state, alloc, mut index) = running(&nodes);
        let target = elsewhere(&alloc, &nodes);
        let mut ids = Vec::new();
        for _ in 0..ENDED_KEPT_PER_ALLOC + 2 {
            let id = format!("mig-{index}");
            start(&mut state, index, &alloc.id, target);
            let (result, ops) = run(
                &mut state,
                index + 1,
                Command::AbortMigration {
                    id: id.clone(),
                    reason: "test".into(),
                    now_ms: 2_100,
                },
            );
            assert!(
                matches!(result, CommandResult::MigrationUpdated { .. }),
                "{result:?}"
            );
            if ids.len() >= ENDED_KEPT_PER_ALLOC {
                let forgotten = format!("migration/{}", ids[ids.len() - ENDED_KEPT_PER_ALLOC]);
                assert!(
                    ops.iter()
                        .any(|op| matches!(op, WriteOp::Delete(k) if k == forgotten.as_bytes())),
                    "{forgotten} was not deleted from the store"
                );
            }
            ids.push(id);
            index += 2;
        }
        let kept: Vec<&String> = state.migrations.keys().collect();
        assert_eq!(kept.len(), ENDED_KEPT_PER_ALLOC);
        for old in &ids[..2] {
            assert!(!state.migrations.contains_key(old), "{old} kept");
        }
        assert_eq!(
            ClusterState::from_pairs(state.to_pairs()).expect("rebuild"),
            state
        );
    }
}
