//! `Agent.ReportOfflineMove`: an agent reports a balancing move it made
//! agent to agent while every coordinator was away; the leader accepts it
//! as a switch-over or refuses it (`machine::apply::offline_move`).
//!
//! The request is untrusted: names are bounded, and the reporting node must
//! be the move's source or target. A refusal is a verdict, not an error:
//! the agent journals it and the target gives way.

use herd_api::proto::agent::{OfflineMoveReport, OfflineMoveVerdict};
use tonic::Status;

use super::migrations::{applied, check_name};
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error::{self, CoordinatorError};
use crate::machine::apply::offline_move::{
    judge, settle, OfflineMove, Settlement, TargetWord, Verdict,
};
use crate::machine::command::{Command, Rejection};

/// Checks `report`'s fields, naming the one at fault.
pub fn read(report: &OfflineMoveReport) -> Result<(), Status> {
    check_name("node", &report.node)?;
    check_name("move_id", &report.move_id)?;
    check_name("alloc_id", &report.alloc_id)?;
    check_name("source", &report.source)?;
    check_name("target", &report.target)?;
    if report.node != report.source && report.node != report.target {
        return Err(error::invalid_argument(format!(
            "field `node`: {} is neither the move's source ({}) nor its target ({})",
            report.node, report.source, report.target
        )));
    }
    if report.unsettled && report.node != report.source {
        return Err(error::invalid_argument(format!(
            "field `unsettled`: only the move's source ({}) reports it unsettled, not {}",
            report.source, report.node
        )));
    }
    if report.source == report.target {
        return Err(error::invalid_argument(
            "fields `source` and `target` name the same node",
        ));
    }
    Ok(())
}

fn the_move(report: &OfflineMoveReport) -> OfflineMove<'_> {
    OfflineMove {
        move_id: &report.move_id,
        alloc_id: &report.alloc_id,
        source: &report.source,
        target: &report.target,
        from_generation: report.from_generation,
    }
}

fn answer(verdict: Verdict) -> Option<OfflineMoveVerdict> {
    match verdict {
        Verdict::Accepted { generation } => Some(OfflineMoveVerdict {
            accepted: true,
            generation,
            reason: String::new(),
            decision: TARGET.into(),
        }),
        Verdict::Refuse(reason) => Some(OfflineMoveVerdict {
            accepted: false,
            generation: 0,
            reason,
            decision: REFUSED.into(),
        }),
        Verdict::Accept => None,
    }
}

/// `OfflineMoveVerdict.decision`: the allocation is the target's.
pub const TARGET: &str = "target";
/// `OfflineMoveVerdict.decision`: refused; the coordinators' set decides.
pub const REFUSED: &str = "refused";
/// `OfflineMoveVerdict.decision`: kept on the source, which resumes it.
pub const SOURCE: &str = "source";
/// `OfflineMoveVerdict.decision`: ask again later.
pub const WAIT: &str = "wait";

fn settled(settlement: Settlement) -> Option<OfflineMoveVerdict> {
    let (decision, generation, reason) = match settlement {
        Settlement::Target { generation } => {
            return answer(Verdict::Accepted { generation });
        }
        Settlement::Refuse(reason) => return answer(Verdict::Refuse(reason)),
        Settlement::Source {
            recorded: false, ..
        } => return None,
        Settlement::Source { reason, .. } => (SOURCE, 0, reason),
        Settlement::Wait(reason) => (WAIT, 0, reason),
    };
    Some(OfflineMoveVerdict {
        accepted: false,
        generation,
        reason,
        decision: decision.into(),
    })
}

/// Whether the leader `coordinator` has not heard `node` for its TTL in
/// the term it leads now (never heard in this term: not silent, as the
/// liveness loop grants every node a fresh TTL after an election).
fn silent(coordinator: &Coordinator, node: &str) -> bool {
    let liveness = coordinator.liveness();
    liveness
        .last_heard()
        .into_iter()
        .find(|(n, _)| n == node)
        .is_some_and(|(_, at)| at.elapsed() > liveness.ttl())
}

/// Serves a report of a move its source left `switching`: settled by
/// `machine::apply::offline_move::settle`, written only when the
/// allocation stays the source's (fenced by the leader's term, since the
/// target's silence is this leader's observation).
async fn serve_unsettled(
    coordinator: &Coordinator,
    report: OfflineMoveReport,
) -> Result<OfflineMoveVerdict, Status> {
    coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await?;
    let term = coordinator.leading_term();
    let word = TargetWord {
        silent: term.is_some() && silent(coordinator, &report.target),
        disowned: report.target_disowned,
    };
    let decide = |s: &crate::state::ClusterState| settle(s, &the_move(&report), word);
    if let Some(reply) = settled(coordinator.read_state(decide)) {
        return Ok(reply);
    }
    let command = Command::SettleOfflineMove {
        move_id: report.move_id.clone(),
        alloc_id: report.alloc_id.clone(),
        source: report.source.clone(),
        target: report.target.clone(),
        from_generation: report.from_generation,
        target_silent: word.silent,
        target_disowned: word.disowned,
        now_ms: 0,
    };
    let written = match term {
        Some(term) => coordinator.decide_as_leader(term, command).await,
        None => coordinator.write(command).await,
    };
    match written {
        Ok(written) => applied(coordinator, written.log_index).await?,
        // The state moved between the decision and apply: settled again below.
        Err(CoordinatorError::Rejected(Rejection::Migration(_))) => {}
        Err(e) => return Err(e.into()),
    }
    coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await?;
    let settlement = coordinator.read_state(decide);
    tracing::info!(move_id = %report.move_id, alloc = %report.alloc_id, node = %report.node, ?settlement, "unsettled offline balancing move reported");
    settled(settlement).ok_or_else(|| {
        error::internal(format!(
            "offline move {} was settled for the source but no record of it was written",
            report.move_id
        ))
    })
}

/// Serves one report on `coordinator` (the leader: writes are proposed).
pub async fn serve(
    coordinator: &Coordinator,
    report: OfflineMoveReport,
) -> Result<OfflineMoveVerdict, Status> {
    read(&report)?;
    if report.unsettled {
        return serve_unsettled(coordinator, report).await;
    }
    coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await?;
    if let Some(reply) = answer(coordinator.read_state(|s| judge(s, &the_move(&report)))) {
        return Ok(reply);
    }
    let command = Command::AcceptOfflineMove {
        move_id: report.move_id.clone(),
        alloc_id: report.alloc_id.clone(),
        source: report.source.clone(),
        target: report.target.clone(),
        from_generation: report.from_generation,
        now_ms: 0,
    };
    match coordinator.write(command).await {
        Ok(written) => applied(coordinator, written.log_index).await?,
        // The state moved between the decision and apply: judged again below.
        Err(CoordinatorError::Rejected(Rejection::Migration(_))) => {}
        Err(e) => return Err(e.into()),
    }
    coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await?;
    let verdict = coordinator.read_state(|s| judge(s, &the_move(&report)));
    tracing::info!(move_id = %report.move_id, alloc = %report.alloc_id, node = %report.node, ?verdict, "offline balancing move reported");
    answer(verdict).ok_or_else(|| {
        error::internal(format!(
            "offline move {} was written but the allocation is not the target's",
            report.move_id
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str) -> OfflineMoveReport {
        OfflineMoveReport {
            node: node.into(),
            move_id: "off-1".into(),
            alloc_id: "a1".into(),
            from_generation: 1,
            source: "n1".into(),
            target: "n2".into(),
            unsettled: false,
            target_disowned: false,
        }
    }

    #[test]
    fn only_the_moves_own_nodes_report_it_and_names_are_bounded() {
        assert!(read(&report("n1")).is_ok());
        assert!(read(&report("n2")).is_ok());
        let err = read(&report("n3")).expect_err("a stranger");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("field `node`"), "{}", err.message());
        let mut long = report("n1");
        long.alloc_id = "x".repeat(10_000);
        assert!(read(&long).is_err());
        let mut same = report("n1");
        same.target = "n1".into();
        assert!(read(&same).is_err());
        // Only the source knows a move it could not finish.
        let mut unsettled = report("n1");
        unsettled.unsettled = true;
        assert!(read(&unsettled).is_ok());
        unsettled.node = "n2".into();
        let err = read(&unsettled).expect_err("the target reports unsettled");
        assert!(
            err.message().contains("field `unsettled`"),
            "{}",
            err.message()
        );
    }
}
