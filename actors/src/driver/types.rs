//! The data that crosses the `Driver` seam.

use std::collections::BTreeMap;
use std::path::PathBuf;

use herd_api::job::TaskSpec;
use serde::{Deserialize, Serialize};

/// How a running workload of a driver can move, and what a driver's
/// workloads allow beyond start and stop: the very types the agent sends at
/// registration and the coordinators store per node (`herd_api::capabilities`),
/// re-exported under the names drivers have always used, so that what a
/// driver declares and what the cluster believes cannot drift apart.
pub use herd_api::capabilities::{DriverCaps as DriverCapabilities, MigrationMode};

/// Everything a driver needs to start one allocation's workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// The allocation this workload belongs to.
    pub alloc_id: String,
    /// The allocation's generation when it was started here.
    pub generation: u64,
    /// The job it belongs to.
    pub job: String,
    /// What to run.
    pub task: TaskSpec,
    /// A directory owned by this allocation (logs, checkpoints, state files).
    pub alloc_dir: PathBuf,
    /// Extra environment set by the agent (ranks and peers of a gang, ports).
    pub env: BTreeMap<String, String>,
}

/// A running (or finished) workload, as the agent persists it to re-adopt it
/// after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadHandle {
    /// Driver that started it.
    pub driver: String,
    /// Its allocation.
    pub alloc_id: String,
    /// The allocation's generation it runs for.
    pub generation: u64,
    /// Main process id, where there is one.
    pub pid: Option<u32>,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// Driver-specific data (paths, sockets), opaque to the agent.
    pub detail: serde_json::Value,
}

/// How a workload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// When it ended, ms since the epoch (0 when unknown).
    pub finished_at_ms: u64,
    /// Anything the driver knows beyond code and signal.
    pub message: Option<String>,
}

impl ExitInfo {
    /// Whether this counts as success (exit code 0).
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Where a workload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadState {
    /// Running.
    Running,
    /// Paused in place (VMs).
    Paused,
    /// Ended; how is in the info.
    Exited(ExitInfo),
    /// Gone without a trace of how it ended (the host rebooted, files were lost).
    Lost(String),
}
