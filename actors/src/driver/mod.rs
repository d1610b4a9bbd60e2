//! The `Driver` trait: how the agent starts, watches, re-adopts and stops a
//! workload, whatever its kind.
//!
//! Shapes chosen for what comes next:
//! - A workload is identified by its allocation id **and generation**; the
//!   handle carries both, so an agent can refuse to act for an older
//!   generation once ownership moved (live migration hands an allocation to
//!   another node by bumping its generation in one Raft command).
//! - Handles are plain serialisable data persisted by the agent, so a
//!   restarted agent re-adopts running workloads through [`Driver::state`] and [`Driver::wait`] on the saved handle
//!   instead of starting duplicates.
//! - [`DriverCapabilities`] says which moves a workload allows
//!   (checkpoint/restart for training, pre-copy for VMs, KV-cache transfer
//!   for inference requests). Nothing reads it yet: it is not reported to
//!   the coordinators; the migration work will, before attempting a move.
//!
//! `exec` runs a process under a detached `herd executor`; the other drivers
//! (`dljob`, `simvm`, `inference`, `vm`) run theirs as the exec driver's
//! task through one adaptor, [`exec_backed::ExecBacked`], each supplying
//! only what differs ([`exec_backed::ExecKind`]). Every driver's settings
//! are parsed by its function in `herd_api::driver_settings`, which submit
//! validation calls too. Output goes where [`logs`] says, for every driver.

pub mod dljob;
mod error;
pub mod exec;
pub mod exec_backed;
pub mod inference;
pub mod logs;
pub mod simvm;
mod types;
pub mod vm;

pub use error::DriverError;
pub use types::{
    DriverCapabilities, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec, WorkloadState,
};

use std::time::Duration;

/// A kind of workload the agent can run.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The name job specs use (`driver = "exec"`).
    fn name(&self) -> &'static str;

    /// What the workloads of this driver allow beyond start and stop.
    fn capabilities(&self) -> DriverCapabilities;

    /// Checks on this host, before anything runs, that the workload can start
    /// here (binary present, directory usable...). Errors say what and where.
    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError>;

    /// Starts the workload and returns its handle once it is running.
    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError>;

    /// The handle of a workload that already runs for `spec` though none
    /// was persisted: the agent died between starting it and persisting its
    /// handle. The supervisor asks at start-up, so that such a workload is
    /// adopted (and stopped if no longer wanted) instead of running on
    /// unseen beside its replacement. None when nothing runs; drivers whose
    /// workloads die with the agent keep this default.
    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        let _ = spec;
        Ok(None)
    }

    /// The workload's state now, from its handle (works across agent restarts).
    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError>;

    /// Waits until the workload is no longer running and reports how it ended.
    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError>;

    /// Asks the workload to stop, forcing it after `grace`, and reports how it ended.
    async fn stop(&self, handle: &WorkloadHandle, grace: Duration)
        -> Result<ExitInfo, DriverError>;

    /// Freezes the running workload in place, keeping its state (a live
    /// migration's last stop-and-copy). Drivers whose capabilities say
    /// `pause: false` keep this default, which refuses.
    async fn pause(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        Err(DriverError::cannot(handle, self.name(), "pause"))
    }

    /// Lets a paused workload run again (an aborted migration's source).
    async fn resume(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        Err(DriverError::cannot(handle, self.name(), "resume"))
    }

    /// Has the running workload write a checkpoint it can resume from,
    /// waiting up to `timeout`, and returns the step it checkpointed at (a
    /// training job's move: checkpoint, copy, resume elsewhere). Drivers
    /// whose migration mode is not `checkpoint` keep this default, which
    /// refuses.
    async fn checkpoint(
        &self,
        handle: &WorkloadHandle,
        timeout: Duration,
    ) -> Result<u64, DriverError> {
        let _ = timeout;
        Err(DriverError::cannot(handle, self.name(), "checkpoint"))
    }
}
