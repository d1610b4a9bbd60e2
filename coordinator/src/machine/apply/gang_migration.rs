//! Moving a gang: its learners stop at one common step and all move, or
//! none does.
//!
//! A gang's move is one migration record per member (its own allocation,
//! source, target and reservation, each checked as a lone move is), all
//! marked with the same group (`herd_api::migration::GangPart`). Three
//! rules make the group one move:
//! - **Start** ([`start_gang_migration`]): every live member of the gang is
//!   named once, and every member's move must pass; a dry run on a copy of
//!   the state finds a refusal before anything is recorded, so a gang is
//!   never half-started.
//! - **The common step** ([`gang_step`]): each member's source probes its
//!   learner (steps done, pace) and reports it while preparing; the entry
//!   that takes the last report chooses the step every learner stops at,
//!   far enough ahead of all of them that each can still reach it (see
//!   [`stop_step_of`]), and writes it on every member. No member may start
//!   transferring before (`advance_migration` refuses it).
//! - **One switch-over** ([`switch_member`]): a member's switch request only
//!   marks it ready; the entry that finds every member ready switches them
//!   all (each allocation to its target, generation + 1). An abort of any
//!   member aborts every other (`abort_migration`), so the sources resume
//!   from the same step.
//!
//! Gangs move through checkpoints only (their driver's migration mode is
//! `checkpoint` on every source and target): the common step is a
//! checkpoint's step. Every member moves to another node; a member cannot
//! stay behind while the others move.

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::capabilities::MigrationMode;
use herd_api::migration::{GangPart, GangProbe, MigrationPhase};

use crate::machine::apply::drain::{DrainMove, DRAIN_DOWNTIME_LIMIT_MS};
use crate::machine::apply::migration::{
    complete_switch, phase_timeout_ms, start_member, switchable, MoveRequest,
};
use crate::machine::command::{CommandResult, Rejection};
use crate::planning::gang_targets;
use crate::state::{ChangeLog, ClusterState, Record};

/// The most members a gang move takes (a bound on untrusted requests).
pub const MAX_GANG_MEMBERS: usize = 64;
/// How far ahead of the last probe the common step lies, in time at each
/// learner's pace, ms: room for the entry to reach every source and each
/// source to ask its learner, so that none has passed the step by then.
pub const STEP_LEAD_MS: u64 = 3_000;

/// A gang move's limits, as for a lone move.
#[derive(Debug, Clone, Copy)]
pub struct GangLimits {
    /// The longest pause allowed, ms.
    pub downtime_limit_ms: u64,
    /// A bandwidth cap per member, bytes per second.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

fn refuse(why: String) -> CommandResult {
    CommandResult::Rejected(Rejection::Migration(why))
}

/// The live members of `job`'s gang `gang` (wanted, not ended), by rank.
pub fn gang_members<'a>(state: &'a ClusterState, job: &str, gang: &str) -> Vec<&'a Allocation> {
    let mut members: Vec<&Allocation> = state
        .allocs_of_job(job)
        .filter(|a| a.gang.as_deref() == Some(gang))
        .filter(|a| a.desired == AllocDesired::Run && !a.status.is_terminal())
        .collect();
    members.sort_by(|a, b| (a.instance, &a.id).cmp(&(b.instance, &b.id)));
    members
}

/// The ids of the migrations of `group` still in flight.
pub fn active_members(state: &ClusterState, group: &str) -> Vec<String> {
    state
        .migrations
        .values()
        .filter(|m| m.is_active() && m.gang.as_ref().is_some_and(|g| g.group == group))
        .map(|m| m.id.clone())
        .collect()
}

/// Whether `node`'s agent moves `kind` through checkpoints, the only way a
/// gang moves.
pub fn moves_by_checkpoint(state: &ClusterState, node: &str, kind: &str) -> bool {
    state
        .driver_capabilities(node, kind)
        .is_some_and(|c| c.migration == MigrationMode::CheckpointRestart)
}

/// Records one migration per member of a gang, as one group: see the
/// module's documentation. Refused whole, with the member and the reason
/// named, when any member cannot move.
pub fn start_gang_migration(
    state: &mut ClusterState,
    index: u64,
    moves: &[(String, String)],
    limits: GangLimits,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if let Err(why) = check_gang_moves(state, moves) {
        return refuse(why);
    }
    // A dry run first, on a copy: a refusal of the third member must not
    // leave the first two recorded.
    let mut scratch = state.clone();
    let mut ops = Vec::new();
    let mut scratch_changes = ChangeLog::new(&mut ops);
    if let Err(why) = start_all(
        &mut scratch,
        index,
        moves,
        limits,
        now_ms,
        &mut scratch_changes,
    ) {
        return refuse(why);
    }
    match start_all(state, index, moves, limits, now_ms, changes) {
        Ok(ids) => {
            let group = ids.first().cloned().unwrap_or_default();
            for id in &ids {
                if let Some(m) = state.migrations.get_mut(id) {
                    m.gang = Some(GangPart {
                        group: group.clone(),
                        ..GangPart::default()
                    });
                }
                changes.put(Record::Migration(id), state);
            }
            CommandResult::MigrationUpdated {
                id: group,
                phase: MigrationPhase::Planned,
            }
        }
        // Not reached: the dry run on the same state passed.
        Err(why) => refuse(why),
    }
}

/// Checks that `moves` name every live member of one gang exactly once,
/// and that the gang's driver moves through checkpoints on every node
/// involved.
fn check_gang_moves(state: &ClusterState, moves: &[(String, String)]) -> Result<(), String> {
    let Some((first, _)) = moves.first() else {
        return Err("a gang move names no member".into());
    };
    if moves.len() > MAX_GANG_MEMBERS {
        return Err(format!(
            "a gang move takes at most {MAX_GANG_MEMBERS} members, got {}",
            moves.len()
        ));
    }
    let Some(alloc) = state.allocations.get(first) else {
        return Err(format!("allocation {first:?} not found"));
    };
    let Some(gang) = alloc.gang.clone() else {
        return Err(format!(
            "allocation {first} is not in a gang: move it alone with `herd alloc migrate`"
        ));
    };
    let job = alloc.job.clone();
    let Some(spec) = state.jobs.get(&job).map(|j| &j.spec) else {
        return Err(format!("allocation {first}'s job {job} is gone"));
    };
    let kind = spec.task.driver.clone();
    let mut named = BTreeSet::new();
    for (alloc_id, target) in moves {
        let Some(alloc) = state.allocations.get(alloc_id) else {
            return Err(format!("allocation {alloc_id:?} not found"));
        };
        if alloc.job != job || alloc.gang.as_deref() != Some(gang.as_str()) {
            return Err(format!(
                "allocation {alloc_id} is not a member of job {job}'s gang"
            ));
        }
        if !named.insert(alloc_id.as_str()) {
            return Err(format!("allocation {alloc_id} is named twice"));
        }
        for (role, node) in [("source", alloc.node.as_str()), ("target", target.as_str())] {
            if state.nodes.contains_key(node) && !moves_by_checkpoint(state, node, &kind) {
                return Err(format!(
                    "a gang moves through checkpoints only (its learners stop at one common step), \
                     and the {kind} driver of {role} {node} does not checkpoint its workloads to move them"
                ));
            }
        }
    }
    let members = gang_members(state, &job, &gang);
    if let Some(left) = members.iter().find(|m| !named.contains(m.id.as_str())) {
        return Err(format!(
            "the gang of job {job} moves whole ({} members): member {} (rank {}, on {}) has no target",
            members.len(),
            left.id,
            left.instance,
            left.node
        ));
    }
    Ok(())
}

/// Starts every member's migration in order; the ids, or the first
/// refusal with its member named.
fn start_all(
    state: &mut ClusterState,
    index: u64,
    moves: &[(String, String)],
    limits: GangLimits,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> Result<Vec<String>, String> {
    let mut ids = Vec::with_capacity(moves.len());
    for (alloc_id, target) in moves {
        let rank = state
            .allocations
            .get(alloc_id)
            .map(|a| a.instance)
            .unwrap_or_default();
        let request = MoveRequest {
            alloc_id,
            target,
            downtime_limit_ms: limits.downtime_limit_ms,
            bandwidth_bytes_per_sec: limits.bandwidth_bytes_per_sec,
        };
        match start_member(state, index, request, now_ms, changes, true) {
            CommandResult::MigrationUpdated { id, .. } => ids.push(id),
            CommandResult::Rejected(Rejection::Migration(why)) => {
                return Err(format!("member {alloc_id} (rank {rank}): {why}"))
            }
            other => return Err(format!("member {alloc_id} (rank {rank}): {other:?}")),
        }
    }
    Ok(ids)
}

/// Takes a gang member's probe (its learner's step and pace); the entry
/// that completes the group's probes chooses the common stop step and
/// writes it on every member, with a fresh deadline to reach it. A report
/// once the member was probed changes nothing.
pub fn gang_step(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    step: u64,
    pace_milli: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(m) = state.migrations.get_mut(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    if m.phase.is_final() {
        return refuse(format!("migration {id} already {}", m.phase.as_str()));
    }
    let phase = m.phase;
    let Some(part) = m.gang.as_mut() else {
        return refuse(format!("migration {id} does not move a gang member"));
    };
    if part.probe.is_some() || part.stop_step.is_some() {
        return CommandResult::MigrationUpdated {
            id: id.to_string(),
            phase,
        };
    }
    if phase != MigrationPhase::Preparing {
        return refuse(format!(
            "migration {id} is {}: a gang member reports its learner's step while preparing",
            phase.as_str()
        ));
    }
    part.probe = Some(GangProbe {
        step,
        pace_milli,
        at_ms: now_ms,
    });
    let group = part.group.clone();
    m.modify_index = index;
    changes.put(Record::Migration(id), state);

    let members = active_members(state, &group);
    let probes: Vec<GangProbe> = members
        .iter()
        .filter_map(|mid| state.migrations.get(mid))
        .filter_map(|m| m.gang.as_ref().and_then(|g| g.probe))
        .collect();
    if probes.len() == members.len() {
        let stop = stop_step_of(&probes);
        for mid in &members {
            if let Some(m) = state.migrations.get_mut(mid) {
                if let Some(part) = m.gang.as_mut() {
                    part.stop_step = Some(stop);
                }
                m.phase_deadline_ms =
                    now_ms.saturating_add(phase_timeout_ms(MigrationPhase::Preparing));
                m.modify_index = index;
            }
            changes.put(Record::Migration(mid), state);
        }
    }
    CommandResult::MigrationUpdated {
        id: id.to_string(),
        phase,
    }
}

/// The step every learner stops at: for each member, where it will be
/// [`STEP_LEAD_MS`] after the last probe at its own pace (its probe's step
/// plus its pace times the time since its probe and the lead), rounded up;
/// the highest of these, and at least one step past every probe. A learner
/// that finds itself past it anyway says so, and the group aborts.
pub fn stop_step_of(probes: &[GangProbe]) -> u64 {
    let last = probes.iter().map(|p| p.at_ms).max().unwrap_or(0);
    let ahead = probes.iter().map(|p| {
        let ms = u128::from(last.saturating_sub(p.at_ms) + STEP_LEAD_MS);
        let steps = (u128::from(p.pace_milli) * ms).div_ceil(1_000_000);
        p.step
            .saturating_add(u64::try_from(steps).unwrap_or(u64::MAX))
    });
    let furthest = probes.iter().map(|p| p.step).max().unwrap_or(0);
    ahead.max().unwrap_or(0).max(furthest.saturating_add(1))
}

/// A gang member's switch request: marks it ready ([`switchable`] checked
/// by the caller); the request that finds every member ready switches the
/// whole group over in this one entry.
pub(crate) fn switch_member(
    state: &mut ClusterState,
    index: u64,
    id: &str,
    downtime_ms: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let Some(m) = state.migrations.get_mut(id) else {
        return refuse(format!("migration {id:?} not found"));
    };
    let Some(part) = m.gang.as_mut() else {
        return refuse(format!("migration {id} does not move a gang member"));
    };
    part.switch_asked = true;
    let group = part.group.clone();
    m.downtime_ms = Some(downtime_ms);
    m.modify_index = index;
    changes.put(Record::Migration(id), state);

    let members = active_members(state, &group);
    let ready = members.iter().all(|mid| {
        state
            .migrations
            .get(mid)
            .is_some_and(|m| m.gang.as_ref().is_some_and(|g| g.switch_asked))
            && switchable(state, mid).is_ok()
    });
    if !ready {
        return CommandResult::MigrationUpdated {
            id: id.to_string(),
            phase: MigrationPhase::Switching,
        };
    }
    let downtimes: BTreeMap<String, u64> = members
        .iter()
        .filter_map(|mid| {
            let m = state.migrations.get(mid)?;
            Some((mid.clone(), m.downtime_ms.unwrap_or(0)))
        })
        .collect();
    for (mid, downtime) in downtimes {
        complete_switch(state, index, &mid, downtime, now_ms, changes);
    }
    CommandResult::MigrationUpdated {
        id: id.to_string(),
        phase: MigrationPhase::Completed,
    }
}

/// A drain's move of the gang of job `job` (gang `gang`) with members on
/// `node`: every member to a node the placement policy picks (another than
/// its own, one whose agent moves the kind through checkpoints), as one
/// group. The moves made, or why the gang cannot move (its members on the
/// node are then restarted, as before gangs moved).
pub fn move_gang_off(
    state: &mut ClusterState,
    index: u64,
    job: &str,
    gang: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> Result<Vec<DrainMove>, String> {
    let members: Vec<String> = gang_members(state, job, gang)
        .iter()
        .map(|a| a.id.clone())
        .collect();
    let targets = {
        let state_now: &ClusterState = state;
        gang_targets(state_now, &members, |n, k| {
            moves_by_checkpoint(state_now, n, k)
        })
    };
    let mut moves = Vec::with_capacity(targets.len());
    for planned in targets {
        match planned.target {
            Ok(target) => moves.push((planned.alloc_id, target)),
            Err(why) => {
                return Err(format!(
                    "its gang moves whole, and member {} cannot move: {why}",
                    planned.alloc_id
                ))
            }
        }
    }
    let limits = GangLimits {
        downtime_limit_ms: DRAIN_DOWNTIME_LIMIT_MS,
        bandwidth_bytes_per_sec: None,
    };
    match start_gang_migration(state, index, &moves, limits, now_ms, changes) {
        CommandResult::MigrationUpdated { id: group, .. } => Ok(moves
            .into_iter()
            .map(|(alloc_id, target)| DrainMove {
                migration: state
                    .migrations
                    .values()
                    .find(|m| {
                        m.is_active()
                            && m.alloc_id == alloc_id
                            && m.gang.as_ref().is_some_and(|g| g.group == group)
                    })
                    .map(|m| m.id.clone())
                    .unwrap_or_else(|| group.clone()),
                job: job.to_string(),
                alloc_id,
                target,
            })
            .collect()),
        CommandResult::Rejected(Rejection::Migration(why)) => {
            Err(format!("its gang cannot move whole: {why}"))
        }
        CommandResult::Rejected(why) => Err(format!("its gang cannot move whole: {why}")),
        other => Err(format!("its gang cannot move whole: {other:?}")),
    }
}

#[cfg(test)]
#[path = "gang_migration_tests.rs"]
mod tests;
