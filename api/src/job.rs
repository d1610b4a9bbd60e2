//! Job specifications: what a user asks the cluster to run.
//!
//! These are the plain domain types every crate shares. They are built from a
//! TOML spec file ([`crate::spec_file`]) or from the wire ([`crate::convert`]),
//! and checked by [`JobSpec::validate`] (in [`crate::validate`]) before anything
//! stores or schedules them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::placement::PlacementSpec;
use crate::resources::Resources;

/// Task drivers this version of herd can run.
///
/// Validation rejects any other driver, so a job never reaches a node that
/// cannot run it. `inference` runs herd's SIMULATED LLM engine.
pub const KNOWN_DRIVERS: &[&str] = &["exec", "vm", "simvm", "dljob", "inference"];

/// Priority a spec gets when its file leaves `priority` out, so that most jobs
/// sit in the middle of the 0..=100 range and can be ranked either way.
pub const DEFAULT_PRIORITY: u32 = 50;

/// Instance count a spec gets when its file leaves `count` out: one instance.
pub const DEFAULT_COUNT: u32 = 1;

/// A job as submitted: a named, prioritised group of identical task instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Cluster-unique name; submitting the same name again updates the job.
    pub name: String,
    /// Whether instances run to completion or are kept running.
    pub job_type: JobType,
    /// How many instances of [`JobSpec::task`] to run.
    pub count: u32,
    /// Scheduling priority, 0 (lowest) to 100 (highest).
    pub priority: u32,
    /// What each instance runs.
    pub task: TaskSpec,
    /// Where instances may and should run (constraints, affinities, spread,
    /// gang); the default places anywhere that fits, bin-packing. Last, so
    /// that the persisted form of older specs is a prefix of the new one.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// Stop instances on a node that no coordinator has heard from for this
    /// long, so that they do not overlap the replacements placed elsewhere
    /// once the node is declared lost (Nomad's
    /// `stop_after_client_disconnect`). `None`: they keep running, which
    /// suits work that may run twice but should not pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_disconnect: Option<std::time::Duration>,
    /// Whether the node agents may move this job's instances among
    /// themselves to even out load (decentralised balancing, see
    /// docs/balancing.md). Off by default: a move costs a live migration.
    #[serde(default, skip_serializing_if = "BalanceSpec::is_default")]
    pub balance: BalanceSpec,
    /// An inference service's `[autoscale]` table: the coordinators' leader
    /// changes `count` within `min..=max` on load and latency objectives
    /// (docs/inference.md). `None`: `count` changes only when asked. Boxed:
    /// most jobs have none, and every log command holding a spec would
    /// grow by its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Box<crate::autoscale::AutoscaleSpec>>,
}

/// A job's `[balance]` table: what decentralised balancing may do with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceSpec {
    /// The agents may move running instances live to a lighter node
    /// (only where the driver can move live: `vm`, `simvm`, `dljob`).
    #[serde(default)]
    pub movable: bool,
}

impl BalanceSpec {
    /// Whether nothing is asked for (kept out of the stored spec then).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How the cluster treats a job's instances once they exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Runs to completion; a job whose instances all succeeded is complete.
    Batch,
    /// Runs indefinitely; instances that exit are restarted.
    Service,
}

impl JobType {
    /// Every job type, in the order error messages list them.
    pub const ALL: [JobType; 2] = [JobType::Batch, JobType::Service];

    /// The stable lower-case name used in spec files, on the wire and in
    /// `--output json`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Batch => "batch",
            JobType::Service => "service",
        }
    }

    /// Reads a name written by [`JobType::as_str`]; `None` for anything else
    /// (matching is exact, so `"Batch"` is rejected rather than guessed at).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message for a job type that [`JobType::parse`] does not know, shared by
/// the spec-file parser and the proto conversion so both say the same thing.
pub(crate) fn unknown_job_type_message(got: &str) -> String {
    format!("must be \"batch\" or \"service\", got {got:?}")
}

/// What one instance of a job runs, and what it needs from a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Which driver runs the task; one of [`KNOWN_DRIVERS`].
    pub driver: String,
    /// Program to run (required by the `exec` driver; `dljob` defaults to
    /// `herd toy-train`).
    pub command: Option<String>,
    /// Arguments passed to `command`.
    pub args: Vec<String>,
    /// Extra environment variables for the task.
    pub env: BTreeMap<String, String>,
    /// Absolute working directory; the driver's default when `None`.
    pub workdir: Option<String>,
    /// Resources reserved on the node for each instance.
    pub resources: Resources,
    /// Settings of the driver (`[task.config]`), as text: each driver's
    /// keys (an inference engine's KV cache size, a VM's disk image...) are
    /// read by its function in [`crate::driver_settings`], at submit and on
    /// the node alike, so that a new driver needs no new spec fields.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_type_names_round_trip() {
        for t in JobType::ALL {
            assert_eq!(JobType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(JobType::Batch.as_str(), "batch");
        assert_eq!(JobType::Service.as_str(), "service");
        assert_eq!(JobType::parse("Batch"), None);
        assert_eq!(JobType::parse(""), None);
        assert_eq!(JobType::parse("system"), None);
    }

    #[test]
    fn job_types_serialize_by_their_stable_names() {
        let json = serde_json::to_string(&JobType::ALL).expect("serializes");
        assert_eq!(json, r#"["batch","service"]"#);
        let back: Vec<JobType> = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, JobType::ALL);
    }

    #[test]
    fn unknown_job_type_message_names_the_choices() {
        assert_eq!(
            unknown_job_type_message("cron"),
            "must be \"batch\" or \"service\", got \"cron\""
        );
    }
}
