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
use crate::machine::apply::offline_move::{judge, OfflineMove, Verdict};
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
        }),
        Verdict::Refuse(reason) => Some(OfflineMoveVerdict {
            accepted: false,
            generation: 0,
            reason,
        }),
        Verdict::Accept => None,
    }
}

/// Serves one report on `coordinator` (the leader: writes are proposed).
pub async fn serve(
    coordinator: &Coordinator,
    report: OfflineMoveReport,
) -> Result<OfflineMoveVerdict, Status> {
    read(&report)?;
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
    }
}
