//! `Agent.ReportMigration`: what an agent taking part in a migration says
//! of it (progress, the switch-over, an abort), checked and turned into a
//! command.
//!
//! Kept apart from the agent service because the rules are a pure function
//! of the request and the state, tested without a server: the request is
//! untrusted (names bounded, actions and phases known), advance and switch
//! come from the migration's source only (it is the side that pauses and
//! knows when the target holds everything), abort from either side. A
//! report already satisfied (a retried advance, a switch of a completed
//! migration, an abort of an aborted one) is answered from the state
//! without a new entry, so an agent may repeat any report after a lost
//! reply.

use herd_api::migration::{Migration, MigrationPhase};
use herd_api::proto::agent::{MigrationReportReply, MigrationReportRequest};
use herd_api::retry::Reason;
use tonic::{Code, Status};

use super::migrations::{check_name, refused};
use crate::error;
use crate::machine::apply::migration::MAX_REASON_BYTES;
use crate::machine::command::Command;
use crate::state::ClusterState;

/// What an agent asked, read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The migration reached `phase`, with progress figures so far.
    Advance {
        /// The phase reached.
        phase: MigrationPhase,
        /// State moved so far.
        bytes: u64,
        /// Rounds so far.
        rounds: u32,
    },
    /// The target holds the whole state: hand the allocation over.
    Switch {
        /// How long the workload was paused, ms.
        downtime_ms: u64,
    },
    /// Give the migration up.
    Abort {
        /// Why, as the agent said it (bounded).
        reason: String,
    },
    /// A gang member's learner stands at `step`, going at `pace_milli`
    /// thousandths of a step per second; repeated, it asks for the common
    /// stop step.
    GangStep {
        /// Steps done.
        step: u64,
        /// Pace, thousandths of a step per second.
        pace_milli: u64,
    },
}

/// A checked report: who sent it, about which migration, asking what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reporting node.
    pub node: String,
    /// The migration.
    pub id: String,
    /// What it asks.
    pub action: Action,
}

/// The phases an agent may report reaching.
const REPORTABLE: [MigrationPhase; 3] = [
    MigrationPhase::Preparing,
    MigrationPhase::Transferring,
    MigrationPhase::Switching,
];

/// Reads `request`, refusing what this coordinator cannot read with the
/// field named.
pub fn read_report(request: MigrationReportRequest) -> Result<Report, Status> {
    check_name("node", &request.node)?;
    check_name("id", &request.id)?;
    let action = match request.action.as_str() {
        "advance" => {
            let phase = MigrationPhase::parse(&request.phase)
                .filter(|p| REPORTABLE.contains(p))
                .ok_or_else(|| {
                    error::invalid_argument(format!(
                        "field `phase`: {:?} is not a phase an agent reports; one of preparing, transferring, switching",
                        request.phase.chars().take(32).collect::<String>()
                    ))
                })?;
            Action::Advance {
                phase,
                bytes: request.bytes,
                rounds: request.rounds,
            }
        }
        "switch" => Action::Switch {
            downtime_ms: request.downtime_ms,
        },
        "abort" => Action::Abort {
            reason: request.reason.chars().take(MAX_REASON_BYTES).collect(),
        },
        "gang_step" => Action::GangStep {
            step: request.step,
            pace_milli: request.pace_milli,
        },
        other => {
            return Err(error::invalid_argument(format!(
                "field `action`: {:?} is not one of advance, switch, abort, gang_step",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    Ok(Report {
        node: request.node,
        id: request.id,
        action,
    })
}

/// What to do with a report, decided on the state.
#[derive(Debug)]
pub enum Decision {
    /// Already so: answer without writing.
    Answer(MigrationReportReply),
    /// Propose this command, then answer from the state (boxed: a
    /// command is large beside the other answers).
    Propose(Box<Command>),
    /// Refused: nothing changes.
    Refuse(Status),
}

/// The reply for migration `m` as `state` holds it: its phase and its
/// allocation's generation (the one the switch-over gave it, once
/// completed, even if the allocation is gone since).
pub fn reply_for(state: &ClusterState, m: &Migration) -> MigrationReportReply {
    let generation = state
        .allocations
        .get(&m.alloc_id)
        .map(|a| a.generation)
        .unwrap_or(m.from_generation + u64::from(m.phase == MigrationPhase::Completed));
    MigrationReportReply {
        phase: m.phase.as_str().to_string(),
        generation,
        stop_step: m.gang.as_ref().and_then(|g| g.stop_step),
    }
}

fn precondition(message: String) -> Status {
    refused(Code::FailedPrecondition, Reason::Rejected, message)
}

/// Decides what `report` does to the state `state` holds.
pub fn decide(state: &ClusterState, report: &Report) -> Decision {
    let Some(m) = state.migrations.get(&report.id) else {
        return Decision::Refuse(error::not_found(format!(
            "migration {:?} not found",
            report.id
        )));
    };
    let id = &m.id;
    let from_source = report.node == m.source;
    if !from_source && report.node != m.target {
        return Decision::Refuse(precondition(format!(
            "node {} takes no part in migration {id} (from {} to {})",
            report.node, m.source, m.target
        )));
    }
    let answer = || Decision::Answer(reply_for(state, m));
    match &report.action {
        Action::Advance { .. } | Action::Switch { .. } | Action::GangStep { .. }
            if !from_source =>
        {
            Decision::Refuse(precondition(format!(
                "migration {id}: only its source ({}) reports progress and the switch-over; the target {} may abort",
                m.source, report.node
            )))
        }
        Action::Advance {
            phase,
            bytes,
            rounds,
        } => {
            if m.phase.is_final() {
                Decision::Refuse(precondition(ended(m)))
            } else if *phase < m.phase {
                // A late retry of an older report: the record is ahead.
                answer()
            } else {
                Decision::Propose(Box::new(Command::AdvanceMigration {
                    id: id.clone(),
                    phase: *phase,
                    bytes: *bytes,
                    rounds: *rounds,
                    now_ms: 0,
                }))
            }
        }
        Action::GangStep { step, pace_milli } => match &m.gang {
            _ if m.phase.is_final() => Decision::Refuse(precondition(ended(m))),
            None => Decision::Refuse(precondition(format!(
                "migration {id} does not move a gang member"
            ))),
            // Taken already: the answer carries the step once agreed.
            Some(part) if part.probe.is_some() || part.stop_step.is_some() => answer(),
            Some(_) => Decision::Propose(Box::new(Command::GangMigrationStep {
                id: id.clone(),
                step: *step,
                pace_milli: *pace_milli,
                now_ms: 0,
            })),
        },
        Action::Switch { downtime_ms } => match m.phase {
            MigrationPhase::Completed => answer(),
            // A gang member ready, waiting for the others.
            MigrationPhase::Switching if m.gang.as_ref().is_some_and(|g| g.switch_asked) => {
                answer()
            }
            MigrationPhase::Aborted => Decision::Refuse(precondition(ended(m))),
            _ => Decision::Propose(Box::new(Command::SwitchMigration {
                id: id.clone(),
                downtime_ms: *downtime_ms,
                now_ms: 0,
            })),
        },
        Action::Abort { reason } => match m.phase {
            MigrationPhase::Aborted => answer(),
            MigrationPhase::Completed => Decision::Refuse(precondition(format!(
                "migration {id} already completed: the switch-over committed and {} owns the allocation",
                m.target
            ))),
            _ => {
                let role = if from_source { "source" } else { "target" };
                let reason = if reason.trim().is_empty() {
                    "no reason given"
                } else {
                    reason.as_str()
                };
                Decision::Propose(Box::new(Command::AbortMigration {
                    id: id.clone(),
                    reason: format!("{role} {}: {reason}", report.node),
                    now_ms: 0,
                }))
            }
        },
    }
}

/// Why an ended migration takes no more reports.
fn ended(m: &Migration) -> String {
    match &m.error {
        Some(why) => format!("migration {} already {}: {why}", m.id, m.phase.as_str()),
        None => format!("migration {} already {}", m.id, m.phase.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::AllocStatus;
    use herd_api::capabilities::{DriverCaps, MigrationMode};
    use herd_api::job::JobType;

    use super::*;
    use crate::machine::command::CommandResult;
    use crate::testkit::{alloc_update, place, report, run, spec};

    fn request(node: &str, action: &str, phase: &str) -> MigrationReportRequest {
        MigrationReportRequest {
            node: node.into(),
            id: "mig-9".into(),
            action: action.into(),
            phase: phase.into(),
            bytes: 10,
            rounds: 1,
            downtime_ms: 5,
            reason: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn untrusted_reports_are_read_with_the_field_named() {
        for (req, field) in [
            (request("", "advance", "preparing"), "`node`"),
            (request("n1", "advance", "done"), "`phase`"),
            (request("n1", "advance", "completed"), "`phase`"),
            (request("n1", "advance", "planned"), "`phase`"),
            (request("n1", "resume", ""), "`action`"),
            (request(&"n".repeat(1_000), "abort", ""), "`node`"),
        ] {
            let status = read_report(req.clone()).expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{req:?}");
            assert!(status.message().contains(field), "{}", status.message());
        }
        let mut long = request("n1", "abort", "");
        long.reason = "x".repeat(100_000);
        let Ok(Report {
            action: Action::Abort { reason },
            ..
        }) = read_report(long)
        else {
            panic!("a long reason is cut, not refused");
        };
        assert_eq!(reason.len(), MAX_REASON_BYTES);
    }

    /// A running simvm allocation on one of n1, n2 (both able to move it)
    /// with a migration to the other, and n3 beside; returns the state, the
    /// migration id, source and target, and the next index.
    fn moving() -> (ClusterState, String, String, String, u64) {
        let mut state = ClusterState::default();
        let mut job = spec("vm", JobType::Service, 1);
        job.task.driver = "simvm".into();
        let mut index = place(&mut state, &["n1", "n2", "n3"], vec![job], 1_000);
        for node in ["n1", "n2", "n3"] {
            let caps = DriverCaps {
                migration: MigrationMode::LivePreCopy,
                pause: true,
                power_cap: false,
            };
            run(
                &mut state,
                index,
                Command::SetNodeDrivers {
                    node: node.into(),
                    drivers: Some([("simvm".to_string(), caps)].into()),
                },
            );
            index += 1;
        }
        let alloc = state.allocations.values().next().cloned().expect("placed");
        let (accepted, _) = report(
            &mut state,
            index,
            &alloc.node,
            vec![alloc_update(&alloc, AllocStatus::Running)],
            1_500,
        );
        assert_eq!(accepted, 1);
        index += 1;
        let target = if alloc.node == "n1" { "n2" } else { "n1" };
        let (result, _) = run(
            &mut state,
            index,
            Command::StartMigration {
                alloc_id: alloc.id.clone(),
                target: target.into(),
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
                now_ms: 2_000,
            },
        );
        let CommandResult::MigrationUpdated { id, .. } = result else {
            panic!("not started: {result:?}");
        };
        (state, id, alloc.node, target.to_string(), index + 1)
    }

    fn checked(node: &str, id: &str, action: &str, phase: &str) -> Report {
        let mut req = request(node, action, phase);
        req.id = id.into();
        read_report(req).expect("a readable report")
    }

    /// Decides `report` and applies what it proposes; the reply or the refusal.
    fn drive(
        state: &mut ClusterState,
        index: &mut u64,
        report: &Report,
    ) -> Result<MigrationReportReply, Status> {
        match decide(state, report) {
            Decision::Answer(reply) => Ok(reply),
            Decision::Refuse(status) => Err(status),
            Decision::Propose(command) => {
                let (result, _) = run(state, *index, *command);
                *index += 1;
                assert!(
                    matches!(result, CommandResult::MigrationUpdated { .. }),
                    "{result:?}"
                );
                Ok(reply_for(state, &state.migrations[&report.id]))
            }
        }
    }

    #[test]
    fn the_source_drives_a_migration_to_completion_and_retries_are_answered() {
        let (mut state, id, source, target, mut index) = moving();
        let third = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != source && *n != target)
            .expect("a node outside the migration");
        for phase in ["preparing", "transferring", "transferring", "switching"] {
            let reply = drive(
                &mut state,
                &mut index,
                &checked(&source, &id, "advance", phase),
            )
            .expect("advanced");
            assert_eq!((reply.phase.as_str(), reply.generation), (phase, 1));
        }
        // A late retry of an older phase is answered, not refused.
        let late = drive(
            &mut state,
            &mut index,
            &checked(&source, &id, "advance", "preparing"),
        )
        .expect("answered");
        assert_eq!(late.phase, "switching");
        // Neither the target nor a stranger may advance or switch.
        for (node, action, phase) in [
            (target.as_str(), "switch", ""),
            (target.as_str(), "advance", "switching"),
            (third, "switch", ""),
            (third, "abort", ""),
        ] {
            let status = drive(&mut state, &mut index, &checked(node, &id, action, phase))
                .expect_err("refused");
            assert_eq!(status.code(), Code::FailedPrecondition, "{node} {action}");
        }
        let switched =
            drive(&mut state, &mut index, &checked(&source, &id, "switch", "")).expect("switched");
        assert_eq!(
            (switched.phase.as_str(), switched.generation),
            ("completed", 2)
        );
        // Repeated after a lost reply: the same answer, no new entry.
        let again = checked(&source, &id, "switch", "");
        assert!(matches!(decide(&state, &again), Decision::Answer(r) if r == switched));
        // Too late to abort now.
        let status = drive(&mut state, &mut index, &checked(&target, &id, "abort", ""))
            .expect_err("refused");
        assert!(
            status.message().contains("already completed"),
            "{}",
            status.message()
        );
        let alloc = &state.allocations[&state.migrations[&id].alloc_id];
        assert_eq!(
            (alloc.node.as_str(), alloc.generation),
            (target.as_str(), 2)
        );
    }

    #[test]
    fn either_side_aborts_and_the_source_keeps_the_allocation() {
        let (mut state, id, source, target, mut index) = moving();
        drive(
            &mut state,
            &mut index,
            &checked(&source, &id, "advance", "preparing"),
        )
        .expect("advanced");
        let mut abort = checked(&target, &id, "abort", "");
        abort.action = Action::Abort {
            reason: "disk full".into(),
        };
        let reply = drive(&mut state, &mut index, &abort).expect("aborted");
        assert_eq!((reply.phase.as_str(), reply.generation), ("aborted", 1));
        let m = &state.migrations[&id];
        assert_eq!(
            m.error.as_deref(),
            Some(format!("target {target}: disk full").as_str())
        );
        assert_eq!(state.allocations[&m.alloc_id].node, source);
        // Repeated: answered; advancing or switching an aborted one is refused.
        assert!(matches!(decide(&state, &abort), Decision::Answer(_)));
        for action in ["switch", "advance"] {
            let status = drive(
                &mut state,
                &mut index,
                &checked(&source, &id, action, "transferring"),
            )
            .expect_err("refused");
            assert!(
                status.message().contains("already aborted: target"),
                "{}",
                status.message()
            );
        }
        let unknown = drive(
            &mut state,
            &mut index,
            &checked(&source, "mig-0", "abort", ""),
        )
        .expect_err("refused");
        assert_eq!(unknown.code(), Code::NotFound);
    }
}
