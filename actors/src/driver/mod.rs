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
//!   for inference requests). Agents declare it at registration, and the
//!   coordinators refuse a migration neither side's driver can make.
//! - Moves are methods: `pause`, `resume`, `checkpoint`, and for live
//!   moves `prepare_incoming`, `migrate_out`, `cancel_out` and
//!   `finish_incoming` ([`live`]); each refuses by default, so a driver
//!   implements only the moves it declares.
//!
//! `exec` runs a process under a detached `herd executor`; the other drivers
//! (`dljob`, `simvm`, `inference`, `vm`) run theirs as the exec driver's
//! task through one adaptor, [`exec_backed::ExecBacked`], each supplying
//! only what differs ([`exec_backed::ExecKind`]). Every driver's settings
//! are parsed by its function in `herd_api::driver_settings`, which submit
//! validation calls too. Output goes where [`logs`] says, for every driver.

pub mod confine;
pub mod dljob;
mod error;
pub mod exec;
pub mod exec_backed;
pub mod inference;
pub mod live;
pub mod logs;
pub mod move_timing;
pub mod patience;
pub mod simvm;
mod types;
pub mod vm;

pub use confine::Confinement;
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

    /// On a live migration's target: starts the workload of `spec` waiting
    /// for its state (not running: QEMU with `-incoming`, paused) and says
    /// where the source's program connects. The handle is persisted like a
    /// started workload's, so an agent restart finds it; an abort stops it.
    /// Drivers whose migration mode is not `live` keep this default.
    async fn prepare_incoming(
        &self,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, live::IncomingEndpoints), DriverError> {
        Err(DriverError::Unsupported {
            alloc: spec.alloc_id.clone(),
            message: format!("the {} driver cannot receive a live migration", self.name()),
        })
    }

    /// On the source: moves the running workload's state to the target's
    /// `to` while it keeps running (pre-copy), then pauses it and sends the
    /// rest. Returns once the whole state is sent (where a program moves
    /// the bytes, once it says so: the target confirms it took everything
    /// in, [`Driver::confirm_incoming`], before the switch-over), the
    /// source's copy left paused: the agent resumes it if the migration is aborted,
    /// and stops it after the switch-over. Gives up (workload running) past
    /// `limits.deadline`.
    async fn migrate_out(
        &self,
        handle: &WorkloadHandle,
        to: &live::IncomingEndpoints,
        limits: &live::MoveLimits,
        progress: live::ProgressSink<'_>,
    ) -> Result<live::MoveStats, DriverError> {
        let _ = (to, limits, progress);
        Err(DriverError::cannot(handle, self.name(), "live-migrate"))
    }

    /// On the source: cancels a [`Driver::migrate_out`] in flight or done,
    /// leaving the workload running here (an aborted migration).
    async fn cancel_out(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        Err(DriverError::cannot(
            handle,
            self.name(),
            "cancel a live migration of",
        ))
    }

    /// On the target, before the switch-over is asked for: waits up to
    /// `wait` until the whole state of the move has arrived and been taken
    /// in, or says why it has not. Where a program moves the bytes itself
    /// (QEMU), the source's program is done when it has sent the last byte,
    /// not when the target's has loaded it; a switch-over before that could
    /// stop the only good copy. Drivers whose `migrate_out` returns only
    /// once the target acknowledged the whole state keep this default.
    async fn confirm_incoming(
        &self,
        handle: &WorkloadHandle,
        wait: Duration,
    ) -> Result<(), DriverError> {
        let _ = (handle, wait);
        Ok(())
    }

    /// On the target, after the switch-over committed: lets the workload
    /// that arrived run (releases what only the move needed, then resumes).
    async fn finish_incoming(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        Err(DriverError::cannot(
            handle,
            self.name(),
            "finish a live migration of",
        ))
    }
}
