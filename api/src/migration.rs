//! Live migrations as the replicated state records them.
//!
//! A migration moves one allocation, keeping its id, from its node (the
//! source) to another (the target). It is a record that advances through
//! phases, each with a deadline the leader enforces; the switch-over is one
//! Raft command that changes the allocation's owner and raises its
//! generation, so every failure ends with exactly one running copy: before
//! the switch the source's copy is the one, after it the target's.

use serde::{Deserialize, Serialize};

/// Where a migration stands. Phases only move forward; `Completed` and
/// `Aborted` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MigrationPhase {
    /// Recorded; the agents have not started.
    Planned,
    /// The target readies a place for the workload (a QEMU waiting for an
    /// incoming stream, a directory for a checkpoint).
    Preparing,
    /// State moves from the source to the target while the source runs.
    Transferring,
    /// The source has paused; the last state moves and the switch-over
    /// command is due.
    Switching,
    /// The allocation belongs to the target now.
    Completed,
    /// Given up: the source keeps the allocation, the target cleans up.
    Aborted,
}

impl MigrationPhase {
    /// Every phase, in order.
    pub const ALL: [MigrationPhase; 6] = [
        MigrationPhase::Planned,
        MigrationPhase::Preparing,
        MigrationPhase::Transferring,
        MigrationPhase::Switching,
        MigrationPhase::Completed,
        MigrationPhase::Aborted,
    ];

    /// The stable lower-case name scripts read in `--output json`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Planned => "planned",
            MigrationPhase::Preparing => "preparing",
            MigrationPhase::Transferring => "transferring",
            MigrationPhase::Switching => "switching",
            MigrationPhase::Completed => "completed",
            MigrationPhase::Aborted => "aborted",
        }
    }

    /// The phase named `name` (as [`MigrationPhase::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the migration is over.
    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Completed | MigrationPhase::Aborted)
    }

    /// The phase an agent may report next: each running phase leads to the
    /// following one, up to `Switching`; the switch-over and an abort have
    /// commands of their own.
    pub fn next(self) -> Option<Self> {
        match self {
            MigrationPhase::Planned => Some(MigrationPhase::Preparing),
            MigrationPhase::Preparing => Some(MigrationPhase::Transferring),
            MigrationPhase::Transferring => Some(MigrationPhase::Switching),
            MigrationPhase::Switching | MigrationPhase::Completed | MigrationPhase::Aborted => None,
        }
    }
}

/// One migration, as recorded in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Unique id, derived from the log index that created it (`mig-INDEX`,
    /// or `mig-INDEX-N` when one entry starts several, as a drain does).
    pub id: String,
    /// The allocation moved (its id does not change).
    pub alloc_id: String,
    /// The allocation's job.
    pub job: String,
    /// The driver that moves it (`vm`, `simvm`, `dljob`...).
    pub kind: String,
    /// The node it leaves.
    pub source: String,
    /// The node it goes to.
    pub target: String,
    /// Where it stands.
    pub phase: MigrationPhase,
    /// When the current phase must have ended, ms since the epoch (leader's
    /// clock); the leader aborts a migration whose phase outlives it.
    pub phase_deadline_ms: u64,
    /// When it was recorded, ms since the epoch.
    pub started_at_ms: u64,
    /// When it completed or was aborted.
    pub ended_at_ms: Option<u64>,
    /// State moved so far, as the agents report it.
    pub bytes: u64,
    /// Transfer rounds so far (pre-copy passes).
    pub rounds: u32,
    /// How long the workload was paused, once known.
    pub downtime_ms: Option<u64>,
    /// The longest pause the operator allows (`--downtime-limit`).
    pub downtime_limit_ms: u64,
    /// The bandwidth cap the operator set, bytes per second.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Why it was aborted.
    pub error: Option<String>,
    /// The allocation's generation when the migration began; the
    /// switch-over raises it by one.
    pub from_generation: u64,
    /// Raft index that created the record.
    pub create_index: u64,
    /// Raft index that last changed it.
    pub modify_index: u64,
    /// The GPU indices the allocation holds on the target, chosen when the
    /// migration starts (reserved there until it ends; the allocation's
    /// own once it switches over). Empty for work without GPUs, and in
    /// records written before GPUs were bound.
    #[serde(default)]
    pub target_gpu_indices: Vec<u32>,
    /// Set when this migration moves one member of a gang: the members
    /// move as one group (see [`GangPart`]). None for a lone allocation
    /// and in records written before gangs moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangPart>,
}

/// What one member's migration of a gang move shares with the others.
///
/// A gang's learners must stop at one common step and move together: every
/// member has its own record (its own allocation, source, target and
/// reservation), all with the same `group`; the step is agreed through the
/// members' probes, and the switch-over of the whole group is one Raft
/// entry, taken once every member asked for it. An abort of one member
/// aborts them all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangPart {
    /// The group's id: the first member's migration id.
    pub group: String,
    /// The learner's step and pace as its source probed them, once it did.
    #[serde(default)]
    pub probe: Option<GangProbe>,
    /// The step every member's learner stops at, set on every member in one
    /// entry once all of them were probed.
    #[serde(default)]
    pub stop_step: Option<u64>,
    /// Whether this member's source asked for the switch-over (stopped at
    /// the step, everything sent); the group switches when all did.
    #[serde(default)]
    pub switch_asked: bool,
}

/// One learner's progress as its source measured it, to choose the
/// group's step from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GangProbe {
    /// Steps done at the probe.
    pub step: u64,
    /// Its pace, thousandths of a step per second.
    pub pace_milli: u64,
    /// When the leader took the report, ms since the epoch (leader's clock).
    pub at_ms: u64,
}

impl Migration {
    /// Whether it still holds resources on the target and keeps its
    /// allocation from moving again.
    pub fn is_active(&self) -> bool {
        !self.phase.is_final()
    }

    /// Time from start to end, once ended.
    pub fn total_ms(&self) -> Option<u64> {
        self.ended_at_ms
            .map(|end| end.saturating_sub(self.started_at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_forward_only_and_name_themselves_stably() {
        let mut phase = MigrationPhase::Planned;
        let mut seen = vec![phase];
        while let Some(next) = phase.next() {
            assert!(next > phase, "{next:?} after {phase:?}");
            phase = next;
            seen.push(phase);
        }
        assert_eq!(phase, MigrationPhase::Switching);
        assert_eq!(seen.len(), 4);
        for p in MigrationPhase::ALL {
            assert_eq!(MigrationPhase::parse(p.as_str()), Some(p));
        }
        assert!(MigrationPhase::Completed.is_final() && MigrationPhase::Aborted.is_final());
        assert!(!MigrationPhase::Switching.is_final());
        assert_eq!(MigrationPhase::parse("done"), None);
    }
}
