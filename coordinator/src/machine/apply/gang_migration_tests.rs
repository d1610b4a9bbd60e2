//! Tests of gang moves at the state level: started whole or refused whole,
//! the common step, one switch-over for the group, one abort for it, the
//! leader's deadlines, drains, and old log entries still decoding.

use herd_api::alloc::{AllocStatus, Allocation};
use herd_api::capabilities::{DriverCaps, MigrationMode};
use herd_api::job::JobType;
use herd_api::migration::{GangProbe, MigrationPhase};
use herd_api::placement::SpreadPolicy;
use herd_consensus::storage::WriteOp;

use super::*;
use crate::machine::apply::migration::migrations_to_abort;
use crate::machine::command::Command;
use crate::planning::alloc_views;
use crate::testkit::{alloc_update, place, report, run, spec};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// A 2-member dljob gang (`train`) running on two of n1..n3, one member
/// per node, every node moving dljobs through checkpoints; its members by
/// rank, and the next free index.
fn gang() -> (ClusterState, Vec<Allocation>, u64) {
    let mut state = ClusterState::default();
    let mut train = spec("train", JobType::Batch, 2);
    train.task.driver = "dljob".into();
    train.placement.gang = true;
    train.placement.spread = SpreadPolicy::Nodes;
    let mut index = place(&mut state, &NODES, vec![train], 1_000);
    for node in NODES {
        let caps = DriverCaps {
            migration: MigrationMode::CheckpointRestart,
            pause: false,
            power_cap: false,
        };
        run(
            &mut state,
            index,
            Command::SetNodeDrivers {
                node: node.into(),
                drivers: Some([("dljob".to_string(), caps)].into()),
            },
        );
        index += 1;
    }
    let mut members: Vec<Allocation> = state.allocations.values().cloned().collect();
    members.sort_by_key(|a| a.instance);
    assert_eq!(members.len(), 2);
    assert_ne!(members[0].node, members[1].node, "spread over nodes");
    for m in &members {
        let (accepted, refused) = report(
            &mut state,
            index,
            &m.node,
            vec![alloc_update(m, AllocStatus::Running)],
            1_500,
        );
        assert_eq!(accepted, 1, "{refused:?}");
        index += 1;
    }
    let members = members
        .iter()
        .map(|m| state.allocations[&m.id].clone())
        .collect();
    (state, members, index)
}

/// The node neither member runs on.
fn free_node(members: &[Allocation]) -> &'static str {
    NODES
        .into_iter()
        .find(|n| members.iter().all(|m| m.node != *n))
        .expect("a free node")
}

/// Member 0 to the free node, member 1 to member 0's node.
fn moves(members: &[Allocation]) -> Vec<(String, String)> {
    vec![
        (members[0].id.clone(), free_node(members).to_string()),
        (members[1].id.clone(), members[0].node.clone()),
    ]
}

fn start_gang(state: &mut ClusterState, index: u64, moves: Vec<(String, String)>) -> CommandResult {
    run(
        state,
        index,
        Command::StartGangMigration {
            moves,
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            now_ms: 2_000,
        },
    )
    .0
}

fn refused(result: &CommandResult, needle: &str) -> bool {
    matches!(result, CommandResult::Rejected(Rejection::Migration(why)) if why.contains(needle))
}

/// The ids of group `group`'s migrations, by rank of their allocation.
fn members_of(state: &ClusterState, group: &str) -> Vec<String> {
    let mut ids: Vec<(u32, String)> = state
        .migrations
        .values()
        .filter(|m| m.gang.as_ref().is_some_and(|g| g.group == group))
        .map(|m| (state.allocations[&m.alloc_id].instance, m.id.clone()))
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

fn advance(state: &mut ClusterState, index: u64, id: &str, phase: MigrationPhase) -> CommandResult {
    run(
        state,
        index,
        Command::AdvanceMigration {
            id: id.into(),
            phase,
            bytes: 10,
            rounds: 1,
            now_ms: 2_100,
        },
    )
    .0
}

fn step(state: &mut ClusterState, index: u64, id: &str, step: u64, pace: u64, now: u64) {
    let result = run(
        state,
        index,
        Command::GangMigrationStep {
            id: id.into(),
            step,
            pace_milli: pace,
            now_ms: now,
        },
    )
    .0;
    assert!(
        matches!(result, CommandResult::MigrationUpdated { .. }),
        "{result:?}"
    );
}

fn stop_step(state: &ClusterState, id: &str) -> Option<u64> {
    state.migrations[id].gang.as_ref().and_then(|g| g.stop_step)
}

/// A started gang move, both members agreed on a step and switching;
/// returns its members' migration ids and the next index.
fn switching(
    state: &mut ClusterState,
    members: &[Allocation],
    mut index: u64,
) -> (Vec<String>, u64) {
    let CommandResult::MigrationUpdated { id: group, .. } =
        start_gang(state, index, moves(members))
    else {
        panic!("not started");
    };
    index += 1;
    let ids = members_of(state, &group);
    for id in &ids {
        advance(state, index, id, MigrationPhase::Preparing);
        index += 1;
    }
    for id in &ids {
        step(state, index, id, 50, 0, 2_200);
        index += 1;
    }
    for id in &ids {
        for phase in [MigrationPhase::Transferring, MigrationPhase::Switching] {
            let result = advance(state, index, id, phase);
            assert!(
                matches!(result, CommandResult::MigrationUpdated { .. }),
                "{result:?}"
            );
            index += 1;
        }
    }
    (ids, index)
}

#[test]
fn a_gang_member_alone_is_refused_and_pointed_at_the_gang_move() {
    let (mut state, members, index) = gang();
    let before = state.clone();
    let result = run(
        &mut state,
        index,
        Command::StartMigration {
            alloc_id: members[0].id.clone(),
            target: free_node(&members).into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            now_ms: 2_000,
        },
    )
    .0;
    assert!(
        refused(&result, "herd job migrate train --to"),
        "{result:?}"
    );
    assert_eq!(state, before);
}

#[test]
fn a_gang_moves_whole_or_is_refused_whole() {
    let (mut state, members, index) = gang();
    let before = state.clone();
    // One member only: the other has no target.
    let one = start_gang(&mut state, index, moves(&members)[..1].to_vec());
    assert!(refused(&one, "moves whole (2 members)"), "{one:?}");
    assert!(refused(&one, &members[1].id), "{one:?}");
    // The second member "moving" to its own node: the first must not be
    // recorded either.
    let mut own = moves(&members);
    own[1].1 = members[1].node.clone();
    let result = start_gang(&mut state, index, own);
    assert!(refused(&result, "already runs on"), "{result:?}");
    assert!(refused(&result, "rank 1"), "{result:?}");
    // Named twice.
    let twice = vec![
        (members[0].id.clone(), free_node(&members).to_string()),
        (members[0].id.clone(), free_node(&members).to_string()),
    ];
    assert!(refused(
        &start_gang(&mut state, index, twice),
        "named twice"
    ));
    assert_eq!(state, before, "a refused gang move changed the state");

    let result = start_gang(&mut state, index, moves(&members));
    let CommandResult::MigrationUpdated { id: group, phase } = result else {
        panic!("{result:?}");
    };
    assert_eq!(phase, MigrationPhase::Planned);
    let ids = members_of(&state, &group);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], group, "the group is named after its first member");
    // Each member's room is held on its target.
    for (m, (alloc, target)) in ids.iter().zip(moves(&members)) {
        assert_eq!(state.migrations[m].alloc_id, alloc);
        assert!(alloc_views(&state)
            .iter()
            .any(|v| v.id == format!("{alloc}@{target}")));
    }
}

#[test]
fn only_kinds_that_checkpoint_move_as_a_gang() {
    let (mut state, members, index) = gang();
    let target = free_node(&members);
    run(
        &mut state,
        index,
        Command::SetNodeDrivers {
            node: target.into(),
            drivers: Some(
                [(
                    "dljob".to_string(),
                    DriverCaps {
                        migration: MigrationMode::LivePreCopy,
                        pause: true,
                        power_cap: false,
                    },
                )]
                .into(),
            ),
        },
    );
    let result = start_gang(&mut state, index + 1, moves(&members));
    assert!(refused(&result, "through checkpoints only"), "{result:?}");
    assert!(state.migrations.is_empty());
}

#[test]
fn the_common_step_is_chosen_once_every_member_reported_and_lies_ahead_of_all() {
    let (mut state, members, mut index) = gang();
    let CommandResult::MigrationUpdated { id: group, .. } =
        start_gang(&mut state, index, moves(&members))
    else {
        panic!("not started");
    };
    index += 1;
    let ids = members_of(&state, &group);
    // Reported before preparing: refused.
    let early = run(
        &mut state,
        index,
        Command::GangMigrationStep {
            id: ids[0].clone(),
            step: 1,
            pace_milli: 1,
            now_ms: 2_000,
        },
    )
    .0;
    assert!(refused(&early, "while preparing"), "{early:?}");
    for id in &ids {
        advance(&mut state, index, id, MigrationPhase::Preparing);
        index += 1;
    }
    // 10 steps/s at step 100, reported 500 ms before the other.
    step(&mut state, index, &ids[0], 100, 10_000, 2_000);
    index += 1;
    assert_eq!(stop_step(&state, &ids[0]), None);
    // No member transfers before the step is agreed.
    let result = advance(&mut state, index, &ids[0], MigrationPhase::Transferring);
    assert!(refused(&result, "not agreed"), "{result:?}");
    step(&mut state, index, &ids[1], 120, 0, 2_500);
    index += 1;
    // 100 + 10/s * (0.5 s + the lead) beats 120 and 121.
    let expected = 100 + (10 * (500 + STEP_LEAD_MS)).div_ceil(1000);
    assert_eq!(stop_step(&state, &ids[0]), Some(expected));
    assert_eq!(stop_step(&state, &ids[1]), Some(expected));
    // A repeated report changes nothing.
    step(&mut state, index, &ids[1], 500, 99_000, 2_600);
    assert_eq!(stop_step(&state, &ids[1]), Some(expected));
    let result = advance(&mut state, index + 1, &ids[0], MigrationPhase::Transferring);
    assert!(
        matches!(result, CommandResult::MigrationUpdated { .. }),
        "{result:?}"
    );
}

#[test]
fn the_stop_step_is_past_every_probe() {
    let at = |step, pace_milli, at_ms| GangProbe {
        step,
        pace_milli,
        at_ms,
    };
    // Idle learners: one step past the furthest.
    assert_eq!(stop_step_of(&[at(7, 0, 0), at(9, 0, 10)]), 10);
    // A fast learner probed early is extrapolated to the last probe, plus the lead.
    let fast = stop_step_of(&[at(10, 100_000, 0), at(50, 0, 2_000)]);
    assert_eq!(fast, 10 + 100 * (2_000 + STEP_LEAD_MS) / 1_000);
    // Huge figures saturate rather than wrap.
    assert_eq!(stop_step_of(&[at(u64::MAX - 1, u64::MAX, 0)]), u64::MAX);
}

#[test]
fn the_whole_group_switches_over_in_one_entry() {
    let (mut state, members, index) = gang();
    let (ids, index) = switching(&mut state, &members, index);
    let targets: Vec<String> = ids
        .iter()
        .map(|id| state.migrations[id].target.clone())
        .collect();
    let first = run(
        &mut state,
        index,
        Command::SwitchMigration {
            id: ids[0].clone(),
            downtime_ms: 40,
            now_ms: 3_000,
        },
    )
    .0;
    assert_eq!(
        first,
        CommandResult::MigrationUpdated {
            id: ids[0].clone(),
            phase: MigrationPhase::Switching
        },
        "the first member waits for the other"
    );
    for m in &members {
        assert_eq!(state.allocations[&m.id].node, m.node, "moved alone");
        assert_eq!(state.allocations[&m.id].generation, m.generation);
    }
    // Waiting for the other, the first member outlives its deadline: the
    // leader leaves it to the other's.
    let doomed = migrations_to_abort(&state, state.migrations[&ids[0]].phase_deadline_ms + 1);
    assert!(!doomed.iter().any(|(id, _)| *id == ids[0]), "{doomed:?}");
    let (last, ops) = run(
        &mut state,
        index + 1,
        Command::SwitchMigration {
            id: ids[1].clone(),
            downtime_ms: 60,
            now_ms: 3_100,
        },
    );
    assert_eq!(
        last,
        CommandResult::MigrationUpdated {
            id: ids[1].clone(),
            phase: MigrationPhase::Completed
        }
    );
    for ((m, id), target) in members.iter().zip(&ids).zip(&targets) {
        let now = &state.allocations[&m.id];
        assert_eq!(&now.node, target);
        assert_eq!(now.generation, m.generation + 1);
        assert_eq!(state.migrations[id].phase, MigrationPhase::Completed);
        let key = format!("alloc/{}", m.id);
        assert!(
            ops.iter()
                .any(|op| matches!(op, WriteOp::Put(k, _) if k == key.as_bytes())),
            "{key} not written by the last switch's entry"
        );
    }
    assert_eq!(state.migrations[&ids[0]].downtime_ms, Some(40));
    assert!(state.alloc_index_is_current());
}

#[test]
fn an_abort_of_one_member_aborts_the_whole_group_and_nobody_moves() {
    let (mut state, members, index) = gang();
    let (ids, index) = switching(&mut state, &members, index);
    run(
        &mut state,
        index,
        Command::SwitchMigration {
            id: ids[0].clone(),
            downtime_ms: 40,
            now_ms: 3_000,
        },
    );
    let result = run(
        &mut state,
        index + 1,
        Command::AbortMigration {
            id: ids[1].clone(),
            reason: "target agent lost".into(),
            now_ms: 3_100,
        },
    )
    .0;
    assert_eq!(
        result,
        CommandResult::MigrationUpdated {
            id: ids[1].clone(),
            phase: MigrationPhase::Aborted
        }
    );
    let first = &state.migrations[&ids[0]];
    assert_eq!(first.phase, MigrationPhase::Aborted);
    assert!(
        first
            .error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("gang member {} aborted", ids[1]))),
        "{first:?}"
    );
    for m in &members {
        assert_eq!(state.allocations[&m.id].node, m.node);
        assert_eq!(state.allocations[&m.id].generation, m.generation);
    }
    // Every reservation is released.
    assert!(!alloc_views(&state).iter().any(|v| v.id.contains('@')));
    // A late switch of the other member is refused.
    let late = run(
        &mut state,
        index + 2,
        Command::SwitchMigration {
            id: ids[0].clone(),
            downtime_ms: 40,
            now_ms: 3_200,
        },
    )
    .0;
    assert!(refused(&late, "aborted"), "{late:?}");
}

#[test]
fn a_drain_moves_a_gang_member_by_moving_the_whole_gang() {
    let (mut state, members, index) = gang();
    let drained = members[0].node.clone();
    let result = run(
        &mut state,
        index,
        Command::DrainNodeLive {
            node: drained.clone(),
            grace_ms: 0,
            migrate: true,
            now_ms: 2_000,
        },
    )
    .0;
    let CommandResult::NodeDrained(outcome) = result else {
        panic!("{result:?}");
    };
    assert!(outcome.restarting.is_empty(), "{outcome:?}");
    assert_eq!(outcome.moving.len(), 2, "{outcome:?}");
    let groups: Vec<Option<String>> = outcome
        .moving
        .iter()
        .map(|mv| {
            let m = &state.migrations[&mv.migration];
            assert_ne!(m.target, m.source, "{m:?}");
            assert_ne!(m.target, drained, "{m:?}");
            m.gang.as_ref().map(|g| g.group.clone())
        })
        .collect();
    assert!(groups[0].is_some() && groups[0] == groups[1], "{groups:?}");
}

#[test]
fn a_drain_restarts_a_gang_that_cannot_move_whole() {
    let (mut state, members, index) = gang();
    // Only the drained member's node can move dljobs: nowhere to go.
    let drained = members[0].node.clone();
    let mut index = index;
    for node in NODES.iter().filter(|n| **n != drained) {
        run(
            &mut state,
            index,
            Command::SetNodeDrivers {
                node: (*node).into(),
                drivers: None,
            },
        );
        index += 1;
    }
    let result = run(
        &mut state,
        index,
        Command::DrainNodeLive {
            node: drained.clone(),
            grace_ms: 0,
            migrate: true,
            now_ms: 2_000,
        },
    )
    .0;
    let CommandResult::NodeDrained(outcome) = result else {
        panic!("{result:?}");
    };
    assert!(outcome.moving.is_empty(), "{outcome:?}");
    assert_eq!(outcome.restarting.len(), 1, "{outcome:?}");
    assert_eq!(outcome.restarting[0].alloc_id, members[0].id);
    assert!(outcome.restarting[0].why.contains("gang"), "{outcome:?}");
    assert!(state.migrations.is_empty());
}

#[test]
fn entries_logged_before_gang_moves_still_decode_and_the_new_ones_round_trip() {
    /// The command enum as the release before gang moves wrote it, up to
    /// `AbortMigration` (the 16th variant).
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum Before {
        V0,
        V1,
        V2,
        V3,
        V4,
        V5,
        V6,
        V7,
        V8,
        V9,
        V10,
        V11,
        V12,
        V13,
        V14,
        AbortMigration {
            id: String,
            reason: String,
            now_ms: u64,
        },
    }
    let old = herd_consensus::codec::encode(&Before::AbortMigration {
        id: "mig-3".into(),
        reason: "r".into(),
        now_ms: 9,
    })
    .expect("encode");
    let decoded = crate::machine::legacy::decode_command(&old).expect("decode");
    assert_eq!(
        decoded,
        Command::AbortMigration {
            id: "mig-3".into(),
            reason: "r".into(),
            now_ms: 9
        }
    );
    for command in [
        Command::StartGangMigration {
            moves: vec![("a".into(), "n2".into()), ("b".into(), "n1".into())],
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: Some(7),
            now_ms: 1,
        },
        Command::GangMigrationStep {
            id: "mig-4".into(),
            step: 12,
            pace_milli: 3,
            now_ms: 2,
        },
    ] {
        let bytes = herd_consensus::codec::encode(&command).expect("encode");
        assert_eq!(
            crate::machine::legacy::decode_command(&bytes).expect("decode"),
            command
        );
    }
}
