//! What the placement fallback decided for a job, kept where `herd job
//! status` shows it: the variable `herd/placement/<job>` (JSON,
//! [`FallbackRecord`]), written by the leader as a decision of its term.

use serde::{Deserialize, Serialize};

/// Prefix of the variables the fallback writes; keys under `herd/` are
/// herd's own records.
pub const KEY_PREFIX: &str = "herd/placement/";

/// The variable holding `job`'s record.
pub fn key(job: &str) -> String {
    format!("{KEY_PREFIX}{job}")
}

/// How a fallback run ended, as a stable name scripts read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Instances were placed (after moving and/or evicting what `moved`
    /// and `evicted` list).
    Placed,
    /// Moves to make room are under way; the instances are placed once
    /// they complete.
    MakingRoom,
    /// Proved: no placement exists even moving or evicting what the rules
    /// allow.
    Impossible,
    /// Nothing found among what the model held (it was trimmed to stay
    /// small, so this is no proof).
    NotFound,
    /// The window ended with nothing found and nothing proved.
    TimedOut,
    /// A placement was found but the cluster refused it when it was made
    /// (the state changed, a move was refused or aborted); tried again
    /// later.
    Refused,
    /// The solver failed.
    Error,
}

impl Outcome {
    /// The stable name (`placed`, `making-room`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Placed => "placed",
            Outcome::MakingRoom => "making-room",
            Outcome::Impossible => "impossible",
            Outcome::NotFound => "not-found",
            Outcome::TimedOut => "timed-out",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }

    /// Whether it says something only while the job stays pending (a
    /// failure); a placement stays worth showing afterwards.
    pub fn while_pending(self) -> bool {
        !matches!(self, Outcome::Placed | Outcome::MakingRoom)
    }
}

/// One fallback run's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackRecord {
    /// The job.
    pub job: String,
    /// The job version it was for.
    pub version: u64,
    /// When it was decided, ms since the epoch.
    pub at_ms: u64,
    /// The solver's window, ms.
    pub window_ms: u64,
    /// How long the solver ran, ms.
    pub solver_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Instances wanted.
    pub wanted: u32,
    /// Instances placed (or to be placed once the moves complete).
    pub placed: u32,
    /// Moves made: `ALLOC (JOB) SOURCE -> TARGET`.
    pub moved: Vec<String>,
    /// Evictions made: `ALLOC (JOB, priority P)`.
    pub evicted: Vec<String>,
    /// The sentence `herd job status` prints.
    pub text: String,
}
