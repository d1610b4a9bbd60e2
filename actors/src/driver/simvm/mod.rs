//! The `simvm` driver: SIMULATED VMs, for scale tests and the rescheduler.
//!
//! Each one is a `herd sim-vm` process (under the exec driver's executor,
//! so it is re-adopted and supervised like any workload) holding its memory
//! as a real buffer that it writes at the configured dirty rate
//! ([`memory::SimulatedMemory`]). Nothing is emulated: it costs a process
//! and its memory, not a QEMU, so thousands fit where real VMs would not.
//! It is named simulated wherever it appears.

pub mod memory;

use std::path::PathBuf;
use std::time::Duration;

use herd_api::vm::SimVmSettings;

use super::exec::ExecDriver;
use super::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};

/// The `simvm` driver.
#[derive(Debug, Clone)]
pub struct SimVmDriver {
    exec: ExecDriver,
    herd: PathBuf,
}

impl SimVmDriver {
    /// A driver whose simulated VMs run `herd sim-vm`, supervised by the same binary.
    pub fn new(herd: impl Into<PathBuf>) -> Self {
        let herd = herd.into();
        Self {
            exec: ExecDriver::new(&herd),
            herd,
        }
    }

    fn exec_spec(&self, spec: &WorkloadSpec) -> Result<WorkloadSpec, DriverError> {
        let settings =
            SimVmSettings::parse(&spec.task.config, &spec.task.resources).map_err(|e| {
                DriverError::Unsupported {
                    alloc: spec.alloc_id.clone(),
                    message: e.to_string(),
                }
            })?;
        let mut exec = spec.clone();
        exec.task.command = Some(self.herd.display().to_string());
        exec.task.args = vec![
            "sim-vm".into(),
            "--memory-mib".into(),
            settings.memory_mib.to_string(),
            "--dirty-bytes-per-sec".into(),
            settings.dirty_bytes_per_sec.to_string(),
            "--seed".into(),
            settings.seed.to_string(),
        ];
        exec.task.config.clear();
        Ok(exec)
    }

    fn exec_handle(handle: &WorkloadHandle) -> WorkloadHandle {
        WorkloadHandle {
            driver: "exec".into(),
            ..handle.clone()
        }
    }
}

#[async_trait::async_trait]
impl Driver for SimVmDriver {
    fn name(&self) -> &'static str {
        "simvm"
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: false,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        self.exec.check(&self.exec_spec(spec)?)
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        let handle = self.exec.start(&self.exec_spec(spec)?).await?;
        Ok(WorkloadHandle {
            driver: "simvm".into(),
            ..handle
        })
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        let handle = self.exec.recover(&self.exec_spec(spec)?).await?;
        Ok(handle.map(|handle| WorkloadHandle {
            driver: "simvm".into(),
            ..handle
        }))
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        self.exec.state(&Self::exec_handle(handle)).await
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        self.exec.wait(&Self::exec_handle(handle)).await
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        self.exec.stop(&Self::exec_handle(handle), grace).await
    }
}
