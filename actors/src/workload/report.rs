//! What the supervisor is told to run and what it tells back: the two data
//! types that cross the seam between the node agent and the workload actors.

use std::collections::BTreeMap;

use herd_api::alloc::AllocStatus;
use herd_api::job::{JobType, TaskSpec};
use serde::{Deserialize, Serialize};

use crate::driver::{ExitInfo, WorkloadSpec};

/// One allocation the coordinators want on this node. It is persisted next to
/// the workload's handle so that a restarted agent knows how to treat the
/// exit of a workload it re-adopts before the coordinators answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredAlloc {
    /// The allocation's id (also its directory name under `allocs/`).
    pub alloc_id: String,
    /// Its generation: bumped on every change of owner; older ones are refused.
    pub generation: u64,
    /// The job it belongs to.
    pub job: String,
    /// Batch work completes on exit 0; services are restarted whatever the code.
    pub job_type: JobType,
    /// What to run.
    pub task: TaskSpec,
    /// Extra environment set by the agent (ranks, peers, ports).
    pub env: BTreeMap<String, String>,
    /// Stop the workload once the coordinators have been silent this long
    /// (the job's `stop_after_disconnect`); `None`: run on regardless.
    #[serde(default)]
    pub stop_after_disconnect: Option<std::time::Duration>,
    /// The migration moving this allocation out of this node, while one
    /// runs (the assignment's `migration` with role source). Once a set
    /// lists the allocation without it at the same generation, the
    /// migration was aborted and a workload stopped or paused for it runs
    /// again here.
    #[serde(default)]
    pub moving_out: Option<String>,
}

impl DesiredAlloc {
    /// What its driver is given to run it in `alloc_dir`.
    pub fn spec(&self, alloc_dir: std::path::PathBuf) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: self.alloc_id.clone(),
            generation: self.generation,
            job: self.job.clone(),
            task: self.task.clone(),
            alloc_dir,
            env: self.env.clone(),
        }
    }
}

/// The stable event names of [`AllocReport::event`], so that the agent and
/// the coordinators match on constants rather than on spelled-out strings.
pub mod event {
    /// The workload was started for the first time by this actor.
    pub const STARTED: &str = "started";
    /// The workload exited and was started again under the restart policy.
    pub const RESTARTED: &str = "restarted";
    /// The workload ended in failure and is not restarted (attempts exhausted,
    /// unknown driver, a workload actor that crashed, a wait that failed).
    pub const FAILED: &str = "failed";
    /// A batch workload exited with code 0.
    pub const COMPLETED: &str = "completed";
    /// The workload was stopped because it is no longer desired here.
    pub const STOPPED: &str = "stopped";
    /// The workload vanished without a recorded exit and is not restarted.
    pub const LOST: &str = "lost";
    /// A workload started by an earlier agent process was found running.
    pub const ADOPTED: &str = "adopted";
    /// The driver refused or failed to start the workload.
    pub const START_FAILED: &str = "start_failed";
    /// A workload found exited after an agent restart waits for the
    /// coordinators to confirm it is still desired before it is restarted.
    pub const EXITED: &str = "exited";
    /// The driver could not stop the workload; its handle is kept.
    pub const STOP_FAILED: &str = "stop_failed";
    /// No coordinator heard from this node for the job's
    /// `stop_after_disconnect`, so the workload was stopped before a
    /// replacement could start elsewhere.
    pub const STOPPED_AFTER_DISCONNECT: &str = "stopped_after_disconnect";
    /// The workload was stopped or paused here to move to another node (a
    /// migration's last copy).
    pub const MOVING_OUT: &str = "moving_out";
    /// A migration out of this node was aborted: the workload stopped or
    /// paused for it runs here again.
    pub const MOVE_ABORTED: &str = "move_aborted";
    /// The workload arrived by a live migration and runs here now.
    pub const MIGRATED_IN: &str = "migrated_in";
}

/// Something that happened to an allocation on this node, as the supervisor
/// reports it to the agent (which forwards it to the coordinators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocReport {
    /// The allocation.
    pub alloc_id: String,
    /// The generation the report is about (coordinators drop older ones).
    pub generation: u64,
    /// Where the allocation stands now.
    pub status: AllocStatus,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What happened: one of the names in [`event`].
    pub event: String,
    /// Human-readable detail (exit code, error text).
    pub detail: String,
    /// How the workload ended, when the report is about an exit.
    pub exit: Option<ExitInfo>,
}

impl AllocReport {
    /// A report stamped now.
    pub fn new(
        alloc_id: &str,
        generation: u64,
        status: AllocStatus,
        event: &str,
        detail: impl Into<String>,
        exit: Option<ExitInfo>,
    ) -> Self {
        Self {
            alloc_id: alloc_id.to_string(),
            generation,
            status,
            at_ms: crate::driver::exec::files::now_ms(),
            event: event.to_string(),
            detail: detail.into(),
            exit,
        }
    }
}

/// Says how a workload ended, in the words reports use ("exit code 3",
/// "killed by signal 9", "lost: ...").
pub fn describe_exit(exit: &ExitInfo) -> String {
    let mut text = match (exit.code, exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without an exit code".to_string(),
    };
    if let Some(message) = &exit.message {
        text.push_str(": ");
        text.push_str(message);
    }
    text
}

/// Whether an exit is a lost workload rather than one that exited (drivers
/// mark those with neither code nor signal and a message starting `lost:`).
pub fn is_lost(exit: &ExitInfo) -> bool {
    exit.code.is_none()
        && exit.signal.is_none()
        && exit
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("lost:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, message: Option<&str>) -> ExitInfo {
        ExitInfo {
            code,
            signal,
            finished_at_ms: 0,
            message: message.map(str::to_string),
        }
    }

    #[test]
    fn exits_are_described_by_code_signal_and_message() {
        assert_eq!(describe_exit(&exit(Some(3), None, None)), "exit code 3");
        assert_eq!(
            describe_exit(&exit(None, Some(9), Some("killed after grace period"))),
            "killed by signal 9: killed after grace period"
        );
        let lost = exit(None, None, Some("lost: executor vanished"));
        assert_eq!(
            describe_exit(&lost),
            "ended without an exit code: lost: executor vanished"
        );
        assert!(is_lost(&lost));
        assert!(!is_lost(&exit(Some(1), None, Some("lost: no"))));
    }
}
