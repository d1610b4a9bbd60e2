//! What a chaos run observed, as JSON lines: every client operation with its
//! invocation and completion, every fault window, periodic samples of the
//! workload processes, and the final state read once faults healed.
//!
//! The checkers in [`crate::check`] read only this record, so a history file
//! can be checked again (or by another tool) long after the run.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::power::record::{BudgetSet, GpuSample, NodePower, PowerTick, SpikeWindow};

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it took effect (or, for a read, it returned this).
    Ok,
    /// Definitely did not take effect (a refused CAS, a read that failed).
    Fail,
    /// May or may not have taken effect (timeout, connection lost).
    Unknown,
}

/// What an operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Unconditional register write of `value`.
    Write,
    /// Compare-and-set of `value` if the version is `expected`.
    Cas,
    /// Linearizable register read.
    Read,
    /// Job submit (the key is the job name).
    Submit,
    /// Job stop.
    Stop,
    /// Job query: the version and marker it saw (checked as a read of the
    /// job's versioned state).
    Query,
    /// Job update: a resubmission with a changed spec (a new version).
    Update,
    /// Node drain (the key is the node name; the version the log index).
    Drain,
    /// Node made eligible again, ending its drain (the version the log index).
    Undrain,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history.
    pub id: u64,
    /// The client that ran it (operations of one client never overlap).
    pub process: u64,
    /// What it did.
    pub kind: OpKind,
    /// Register key or job name.
    pub key: String,
    /// Written value (write, CAS) or the value a read returned (None: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The version a CAS expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// Version returned: after a write, read (0: absent), or the actual
    /// version that made a CAS fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// When the client sent it, ns since the run started.
    pub invoke_ns: u64,
    /// When the answer (or the error) came back.
    pub complete_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member id of the coordinator the client sent it to (its place,
    /// from 1, in the clients' address list, which the harness orders by
    /// member id), so that a stale answer can be traced to the member that
    /// gave it. A request a member forwarded to the leader is still
    /// recorded against the member it was sent to. None in histories
    /// recorded before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<u64>,
}

impl Op {
    /// Where it was sent, for reports: ` via member N`, or nothing when
    /// not recorded.
    pub fn via(&self) -> String {
        self.member
            .map(|m| format!(" via member {m}"))
            .unwrap_or_default()
    }
}

/// A fault the nemesis injected, from start to heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// What was done, e.g. `kill member 2 (leader)`.
    pub what: String,
    /// When it started, ns since the run started.
    pub start_ns: u64,
    /// When it was healed (None: never, e.g. the run was cut short).
    pub end_ns: Option<u64>,
    /// How long after the heal the cluster was whole again (leader elected,
    /// services at count), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_after_ns: Option<u64>,
    /// The node agent the fault took down with its workloads, if it did:
    /// rescheduling off it is measured from the workload samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_node: Option<String>,
    /// The node whose agent the fault killed or paused while its workloads
    /// ran on: until the agent is back nothing stops them, so their overlap
    /// with replacements is no broken promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupervised_node: Option<String>,
    /// How long after injection a majority of the members named a leader
    /// other than the one before the fault (None: the leader did not
    /// change while the fault was in force, or was not known before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_leader_after_ns: Option<u64>,
}

/// One running workload process seen in a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenProcess {
    /// Its pid.
    pub pid: u32,
    /// The node that started it.
    pub node: String,
    /// Its allocation.
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// Its instance number, when the driver set one.
    pub instance: Option<u32>,
    /// The marker of the job version it runs (job-client jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
    /// For a simulated VM's copy (`herd sim-vm`), what its control socket
    /// said of its guest; None for any other process. A moving VM has
    /// two copies, only one of which may run its guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestSeen>,
}

/// What a simulated VM's copy said of its guest, asked twice in a row
/// through its control socket within one sample.
///
/// Why twice: the copies of one VM are asked one after the other, and a
/// move's switch-over can fall between two questions (the source seen
/// running, then the target resumed and seen running) without two guests
/// ever running at once. The source pauses before the target may resume
/// and never runs again once it has, so a copy said to run at both its
/// questions, one before and one after the other copy's, overlapped that
/// copy: only then is it [`GuestSeen::Running`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestSeen {
    /// Running at both questions.
    Running,
    /// Paused at either (a move's source or a target not yet resumed).
    Paused,
    /// Neither answer said paused, and not both said running (a copy
    /// starting or exiting, a socket out of reach): not judged.
    Unknown,
}

impl GuestSeen {
    /// The verdict of two answers in a row (`Some(true)`: running,
    /// `Some(false)`: paused, None: no answer).
    pub fn of(first: Option<bool>, second: Option<bool>) -> Self {
        match (first, second) {
            (Some(true), Some(true)) => GuestSeen::Running,
            (Some(false), _) | (_, Some(false)) => GuestSeen::Paused,
            _ => GuestSeen::Unknown,
        }
    }

    /// Whether the copy counts as a running copy of its allocation: any
    /// process that is not a simulated VM does, and a simulated VM's copy
    /// when its guest ran.
    pub fn counts(guest: Option<GuestSeen>) -> bool {
        matches!(guest, None | Some(GuestSeen::Running))
    }
}

/// The workload processes running at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When, ns since the run started.
    pub at_ns: u64,
    /// Whether every fault had healed and the cluster had converged: from
    /// then on even one *job instance* must never run twice (while an agent
    /// is dead its orphaned copy may legitimately overlap its replacement).
    pub settled: bool,
    /// What ran.
    pub processes: Vec<SeenProcess>,
}

/// A job as listed at the end of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalJob {
    /// Name.
    pub name: String,
    /// Status (`running`, `stopped`, ...).
    pub status: String,
}

/// One line of a history file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A client operation.
    Op(Op),
    /// A fault window.
    Fault(FaultWindow),
    /// A process sample.
    Sample(Sample),
    /// The jobs listed once faults healed (None: the list could not be read).
    FinalJobs {
        /// The jobs.
        jobs: Option<Vec<FinalJob>>,
    },
    /// Processes of the run still alive after teardown.
    Leftovers {
        /// Their pids and command lines.
        processes: Vec<String>,
    },
    /// Allocations listed once faults healed (None: could not be read).
    FinalAllocs {
        /// The allocations.
        allocs: Option<Vec<FinalAlloc>>,
    },
    /// One migration the migration client asked for, from its start to
    /// the end it saw ([`crate::migrate`]).
    Migration(Box<MigrationAttempt>),
    /// Migrations, allocations and node capacities read once faults healed
    /// and the migration clients stopped (runs that migrate only).
    FinalMigrations(FinalMigrationState),
    /// When the cluster converged after the last heal (None: not within the bound).
    Converged {
        /// When the last fault healed.
        healed_ns: u64,
        /// When it converged.
        at_ns: Option<u64>,
        /// The bound it had.
        bound_ns: u64,
    },
    /// The power budget a power run set (power runs only; watts are
    /// floating point, so records compare with `PartialEq` only).
    PowerBudget(BudgetSet),
    /// Every agent's GPU power figures at one moment (power runs only).
    Power(PowerTick),
    /// A load spike forced on every simulated GPU (power runs only).
    Spike(SpikeWindow),
    /// Every agent's balancing journal and the movable trainers as listed,
    /// once the cluster converged (the `balance-away` scenario only).
    Offline(crate::away::OfflineState),
}

/// An allocation as listed at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalAlloc {
    /// Allocation id.
    pub id: String,
    /// Its job.
    pub job: String,
    /// The node it was placed on.
    pub node: String,
    /// Raft index of the plan that placed it.
    pub create_index: u64,
    /// Its generation: above 1 once a migration's switch-over moved it, so
    /// `node` may not be where it was placed (None in histories recorded
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// A migration as the Migrations API showed it at one moment: the
/// checkers judge phases, deadlines and the switch-over from these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenMigration {
    /// Its id (`mig-INDEX`).
    pub id: String,
    /// The allocation it moves.
    pub alloc_id: String,
    /// The driver that moves it (`dljob`, `vm`, `simvm`).
    pub kind: String,
    /// The node it leaves.
    pub source: String,
    /// The node it goes to.
    pub target: String,
    /// `planned`, `preparing`, `transferring`, `switching`, `completed` or `aborted`.
    pub phase: String,
    /// When the current phase must end, ms since the epoch (leader's clock).
    pub phase_deadline_ms: u64,
    /// When it was recorded, ms since the epoch.
    pub started_at_ms: u64,
    /// When it completed or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    /// The allocation's generation when it began.
    pub from_generation: u64,
    /// Raft index that created it (orders an allocation's migrations).
    pub create_index: u64,
    /// State moved, bytes.
    pub bytes: u64,
    /// How long the workload was paused, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Why it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SeenMigration {
    /// Whether it is over (completed or aborted).
    pub fn is_final(&self) -> bool {
        self.phase == "completed" || self.phase == "aborted"
    }
}

/// A phase of a migration as the migration client first saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSeen {
    /// When, ns since the run started.
    pub at_ns: u64,
    /// When, ms since the epoch on this machine's clock (the clock the
    /// leader stamps deadlines with: the harness runs on the same host).
    pub wall_ms: u64,
    /// The phase.
    pub phase: String,
    /// Its deadline, ms since the epoch.
    pub deadline_ms: u64,
}

/// One `Migrations.Start` of the migration client and what followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationAttempt {
    /// Unique among the run's operations.
    pub id: u64,
    /// The client that made it.
    pub process: u64,
    /// The allocation it asked to move.
    pub alloc_id: String,
    /// The node the allocation was listed on when it was picked.
    pub source: String,
    /// The node asked for.
    pub target: String,
    /// When the start was sent, ns since the run started.
    pub invoke_ns: u64,
    /// When its answer (or error) came back.
    pub complete_ns: u64,
    /// Ok: started; Fail: refused (nothing changed); Unknown: may have started.
    pub outcome: Outcome,
    /// The member the start was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<u64>,
    /// The error of a start that did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Each phase as first seen, in order (starting with the start's answer).
    #[serde(default)]
    pub phases: Vec<PhaseSeen>,
    /// The record as last seen (None: never seen, e.g. refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<SeenMigration>,
    /// When its end (completed or aborted) was first seen, ns since the
    /// run started; None when the client never saw it end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ns: Option<u64>,
}

/// An allocation as listed at the end of a run that migrates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocState {
    /// Allocation id.
    pub id: String,
    /// Its job.
    pub job: String,
    /// Its node.
    pub node: String,
    /// `pending`, `running`, ... (the API's words).
    pub status: String,
    /// Its generation (raised by each switch-over).
    pub generation: u64,
    /// The CPU it holds, millicores.
    pub cpu_millis: u64,
    /// The memory it holds, bytes.
    pub memory_bytes: u64,
    /// The GPUs it holds.
    pub gpus: u32,
}

/// A node's capacity as listed at the end of a run that migrates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRoom {
    /// Node name.
    pub name: String,
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// GPUs.
    pub gpus: u32,
}

/// What a run that migrates reads at its end (each None where it could
/// not be read; its checks are then undecided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalMigrationState {
    /// Every migration the cluster still records.
    pub migrations: Option<Vec<SeenMigration>>,
    /// Every allocation.
    pub allocs: Option<Vec<AllocState>>,
    /// Every node's capacity.
    pub nodes: Option<Vec<NodeRoom>>,
}

/// A whole run's record, in the order things were recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The records.
    pub records: Vec<Record>,
}

/// A history file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("{path} line {line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

impl History {
    /// Client operations, in recording order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.records.iter().filter_map(|r| match r {
            Record::Op(op) => Some(op),
            _ => None,
        })
    }

    /// Fault windows.
    pub fn faults(&self) -> impl Iterator<Item = &FaultWindow> {
        self.records.iter().filter_map(|r| match r {
            Record::Fault(f) => Some(f),
            _ => None,
        })
    }

    /// Process samples.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.records.iter().filter_map(|r| match r {
            Record::Sample(s) => Some(s),
            _ => None,
        })
    }

    /// The power budget a power run set, if it set one.
    pub fn power_budget(&self) -> Option<&BudgetSet> {
        self.records.iter().find_map(|r| match r {
            Record::PowerBudget(b) => Some(b),
            _ => None,
        })
    }

    /// Power samples, in recording order.
    pub fn power_ticks(&self) -> impl Iterator<Item = &PowerTick> {
        self.records.iter().filter_map(|r| match r {
            Record::Power(t) => Some(t),
            _ => None,
        })
    }

    /// Forced load spikes.
    pub fn spikes(&self) -> impl Iterator<Item = &SpikeWindow> {
        self.records.iter().filter_map(|r| match r {
            Record::Spike(s) => Some(s),
            _ => None,
        })
    }

    /// The migration client's attempts.
    pub fn migrations(&self) -> impl Iterator<Item = &MigrationAttempt> {
        self.records.iter().filter_map(|r| match r {
            Record::Migration(m) => Some(m.as_ref()),
            _ => None,
        })
    }

    /// Writes one JSON object per line.
    pub fn write_jsonl(&self, path: &Path) -> Result<(), HistoryError> {
        let err = |source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let mut out = std::io::BufWriter::new(file);
        for record in &self.records {
            let line = serde_json::to_string(record).map_err(|e| err(std::io::Error::other(e)))?;
            writeln!(out, "{line}").map_err(err)?;
        }
        out.flush().map_err(err)
    }

    /// Reads a file [`History::write_jsonl`] wrote.
    pub fn read_jsonl(path: &Path) -> Result<Self, HistoryError> {
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut records = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| HistoryError::Io {
                path: path.display().to_string(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                path: path.display().to_string(),
                line: n + 1,
                source,
            })?;
            records.push(record);
        }
        Ok(Self { records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_survives_a_round_trip_through_json_lines() {
        let history = History {
            records: vec![
                Record::Op(Op {
                    id: 1,
                    process: 0,
                    kind: OpKind::Cas,
                    key: "k".into(),
                    value: Some("v1".into()),
                    expected: Some(0),
                    version: Some(1),
                    invoke_ns: 10,
                    complete_ns: 20,
                    outcome: Outcome::Ok,
                    error: None,
                    member: Some(2),
                }),
                Record::Fault(FaultWindow {
                    what: "kill member 1".into(),
                    start_ns: 5,
                    end_ns: Some(50),
                    recovered_after_ns: None,
                    lost_node: Some("n1".into()),
                    unsupervised_node: None,
                    new_leader_after_ns: None,
                }),
                Record::FinalJobs { jobs: None },
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        history.write_jsonl(&path).unwrap();
        assert_eq!(History::read_jsonl(&path).unwrap(), history);
    }
}
