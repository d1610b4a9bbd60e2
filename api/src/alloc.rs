//! Allocations: one instance of a job placed on one node.
//!
//! Ownership lives in the replicated state and carries a generation: every
//! change of owner (a reschedule, a live migration's switch-over) bumps it
//! in one Raft command, and an agent refuses instructions for an older
//! generation, so no workload ever runs for two owners at once.

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// What the cluster wants of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocDesired {
    /// Keep it running.
    Run,
    /// Stop it (job stopped, evicted, or its node drained).
    Stop,
}

/// Where an allocation stands, as agents report it (or the leader decides, for lost nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllocStatus {
    /// Placed; its node has not reported it running yet.
    Pending,
    /// Running on its node.
    Running,
    /// Finished successfully (batch work).
    Complete,
    /// Ended with an error.
    Failed,
    /// Its node was lost; a replacement is placed elsewhere.
    Lost,
    /// Evicted to make room for higher-priority work; requeued.
    Preempted,
    /// Stopped as desired.
    Stopped,
}

impl AllocStatus {
    /// The stable name scripts read in `--output json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllocStatus::Pending => "pending",
            AllocStatus::Running => "running",
            AllocStatus::Complete => "complete",
            AllocStatus::Failed => "failed",
            AllocStatus::Lost => "lost",
            AllocStatus::Preempted => "preempted",
            AllocStatus::Stopped => "stopped",
        }
    }

    /// Every status this release knows, so that parsing and the errors that
    /// list what is accepted cannot drift apart.
    pub const ALL: [AllocStatus; 7] = [
        AllocStatus::Pending,
        AllocStatus::Running,
        AllocStatus::Complete,
        AllocStatus::Failed,
        AllocStatus::Lost,
        AllocStatus::Preempted,
        AllocStatus::Stopped,
    ];

    /// Reads a name written by [`AllocStatus::as_str`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the allocation has ended for good: no report can revive it.
    pub fn is_terminal(self) -> bool {
        !matches!(self, AllocStatus::Pending | AllocStatus::Running)
    }

    /// Whether the allocation still holds its node's resources.
    pub fn holds_resources(self) -> bool {
        matches!(self, AllocStatus::Pending | AllocStatus::Running)
    }
}

/// Something that happened to an allocation, for `herd alloc status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocEvent {
    /// When, ms since the epoch (leader's clock or the agent's report).
    pub at_ms: u64,
    /// Short stable kind: "placed", "started", "failed", "restarted", "migrated", "preempted", "stopped", "lost".
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
}

/// What a node agent observed of one of its allocations, as it reports it.
///
/// Reports are fenced: `apply` accepts one only from the allocation's node
/// and for its current generation, so an agent that was partitioned away
/// while its work moved elsewhere cannot rewrite the new owner's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocUpdate {
    /// The allocation.
    pub id: String,
    /// The generation the agent runs it for.
    pub generation: u64,
    /// What the agent saw: running, complete, failed, stopped or lost.
    pub status: AllocStatus,
    /// Short stable kind of the event ("started", "restarted", "failed"...).
    pub event: String,
    /// Human-readable detail (exit code, signal, error text).
    pub detail: String,
}

/// One instance of a job on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Unique id, derived deterministically from the log index that created it.
    pub id: String,
    /// Its job.
    pub job: String,
    /// The job version it runs.
    pub job_version: u64,
    /// Which instance of the job (0..count).
    pub instance: u32,
    /// The node that owns it.
    pub node: String,
    /// What it holds on that node.
    pub resources: Resources,
    /// Its job's priority when placed (preemption compares these).
    pub priority: u32,
    /// Set for members of a gang: evicted and moved all together.
    pub gang: Option<String>,
    /// Bumped on every change of owner; agents refuse older generations.
    pub generation: u64,
    /// What the cluster wants.
    pub desired: AllocDesired,
    /// What was last observed.
    pub status: AllocStatus,
    /// History, oldest first (bounded).
    pub events: Vec<AllocEvent>,
    /// Raft index that created it.
    pub create_index: u64,
    /// Raft index that last changed it.
    pub modify_index: u64,
    /// The GPUs it holds on its node, by index (0..the node's GPU count),
    /// chosen at placement (and, for a move, on the target when the
    /// migration starts); each index is held by at most one live
    /// allocation of the node. Its workload sees them as
    /// `CUDA_VISIBLE_DEVICES`. Empty when it asks for no GPU, and in
    /// records written before GPUs were bound (those hold a count only).
    #[serde(default)]
    pub gpu_indices: Vec<u32>,
}

/// Most events kept per allocation; older ones are dropped first.
pub const MAX_ALLOC_EVENTS: usize = 32;

impl Allocation {
    /// Records an event, keeping at most [`MAX_ALLOC_EVENTS`].
    pub fn record(&mut self, at_ms: u64, kind: &str, detail: impl Into<String>) {
        if self.events.len() >= MAX_ALLOC_EVENTS {
            self.events.remove(0);
        }
        self.events.push(AllocEvent {
            at_ms,
            kind: kind.to_string(),
            detail: detail.into(),
        });
    }
}
