//! The `simvm` driver: SIMULATED VMs, for scale tests and the rescheduler.
//!
//! Each one is a `herd sim-vm` process (under the exec driver's executor,
//! through [`ExecBacked`], so it is re-adopted and supervised like any
//! workload; its settings parsed by `herd_api::driver_settings::simvm`, as
//! at submit) holding its memory
//! as a real buffer that it writes at the configured dirty rate
//! ([`memory::SimulatedMemory`]). Nothing is emulated: it costs a process
//! and its memory, not a QEMU, so thousands fit where real VMs would not.
//! It is named simulated wherever it appears.
//!
//! Live migration (mode `live`): the simulated VM models QEMU, so it moves
//! its memory the way QEMU does, over its own migration stream
//! ([`stream`]) from the source's `herd sim-vm` to an incoming one started
//! on the target, pre-copy rounds then stop-and-copy, with auto-converge
//! throttling a guest that dirties faster than the link ([`machine`]). The
//! agents orchestrate it through the driver's live-move methods
//! ([`migrate`]), which steer each process over its control socket in the
//! allocation directory ([`control`], what QMP is to QEMU); the target's
//! endpoint is the incoming process's listening address. The agents'
//! `AgentPeer` service carries files (checkpoints), not this memory.

pub mod control;
pub mod machine;
pub mod memory;
pub mod migrate;
pub mod stream;

use std::path::Path;

use herd_api::driver_settings;
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;
use herd_api::vm::SimVmSettings;

use super::exec_backed::{ExecBacked, ExecCommand, ExecKind, Run};
use super::live::{IncomingEndpoints, MigrationHost, MoveLimits, MoveStats, ProgressSink};
use super::{
    DriverCapabilities, DriverError, MigrationMode, WorkloadHandle, WorkloadSpec, WorkloadState,
};

/// The `simvm` kind of exec-backed workload: `herd sim-vm` sized by the
/// task's memory, with its control socket in the allocation directory;
/// holds the host its incoming migrations listen on ([`migrate`]).
#[derive(Debug, Clone, Default)]
pub struct SimVm {
    migration_host: MigrationHost,
}

/// The `simvm` driver.
pub type SimVmDriver = ExecBacked<SimVm>;

impl ExecBacked<SimVm> {
    /// Makes incoming migrations listen on `host` and name it in their
    /// endpoints: the node's `migration_host`, which other agents reach.
    /// Default: loopback.
    pub fn with_migration_host(mut self, host: MigrationHost) -> Self {
        self.kind_mut().migration_host = host;
        self
    }

    /// Where this driver's incoming migrations listen.
    pub fn migration_host(&self) -> &MigrationHost {
        &self.kind().migration_host
    }
}

#[async_trait::async_trait]
impl ExecKind for SimVm {
    const NAME: &'static str = driver_settings::SIMVM;
    type Settings = SimVmSettings;

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: false,
            power_cap: false,
        }
    }

    /// Starts `herd sim-vm --incoming`, paused and listening; see [`migrate`].
    async fn prepare_incoming(
        driver: &SimVmDriver,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        migrate::prepare_incoming(driver, spec).await
    }

    /// Pre-copy, then stop-and-copy, over the processes' own stream; see
    /// [`migrate`].
    async fn migrate_out(
        _driver: &SimVmDriver,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        migrate::migrate_out(handle, to, limits, progress).await
    }

    /// `cancel`: the guest runs on here, unthrottled.
    async fn cancel_out(_driver: &SimVmDriver, handle: &WorkloadHandle) -> Result<(), DriverError> {
        migrate::cancel_out(handle).await
    }

    /// `resume` once the memory has arrived.
    async fn finish_incoming(
        _driver: &SimVmDriver,
        handle: &WorkloadHandle,
    ) -> Result<(), DriverError> {
        migrate::finish_incoming(handle).await
    }

    fn settings(&self, task: &TaskSpec) -> Result<SimVmSettings, FieldError> {
        driver_settings::simvm(task)
    }

    /// The control socket must fit a unix socket's path.
    fn check_host(
        &self,
        spec: &WorkloadSpec,
        _settings: &SimVmSettings,
    ) -> Result<(), DriverError> {
        let socket = spec.alloc_dir.join(control::CONTROL_SOCKET);
        if socket.as_os_str().len() > control::MAX_SOCKET_PATH {
            return Err(DriverError::Unsupported {
                alloc: spec.alloc_id.clone(),
                message: format!(
                    "the simulated VM's control socket {} is longer than the {} bytes a unix socket allows; use a shorter data directory",
                    socket.display(),
                    control::MAX_SOCKET_PATH
                ),
            });
        }
        Ok(())
    }

    fn command(
        &self,
        herd: &Path,
        spec: &WorkloadSpec,
        settings: &SimVmSettings,
    ) -> Result<ExecCommand, DriverError> {
        Ok(ExecCommand {
            program: herd.display().to_string(),
            args: vec![
                "sim-vm".into(),
                "--memory-mib".into(),
                settings.memory_mib.to_string(),
                "--dirty-bytes-per-sec".into(),
                settings.dirty_bytes_per_sec.to_string(),
                "--seed".into(),
                settings.seed.to_string(),
                "--control".into(),
                spec.alloc_dir
                    .join(control::CONTROL_SOCKET)
                    .display()
                    .to_string(),
            ],
            env: Default::default(),
        })
    }

    /// Paused while a migration holds it (see [`migrate`]).
    async fn running_state(&self, run: &Run<'_>) -> WorkloadState {
        migrate::running_state(run.handle).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_api::resources::{Resources, MIB};

    use super::*;
    use crate::driver::Driver;

    fn spec(config: &[(&str, &str)]) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 1,
            job: "vms".into(),
            task: TaskSpec {
                driver: "simvm".into(),
                command: None,
                args: Vec::new(),
                env: BTreeMap::new(),
                workdir: None,
                resources: Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 * MIB,
                    gpus: 0,
                    gpu_model: None,
                },
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            alloc_dir: "/tmp/herd-simvm-test/a1".into(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn the_simulator_runs_as_the_herd_binary_sized_by_the_task() {
        let driver = SimVmDriver::new("/usr/bin/herd");
        let (_, exec) = driver
            .checked_launch(&spec(&[("dirty_rate", "1MiB"), ("seed", "7")]))
            .expect("valid");
        assert_eq!(exec.task.command.as_deref(), Some("/usr/bin/herd"));
        assert_eq!(
            exec.task.args.join(" "),
            "sim-vm --memory-mib 64 --dirty-bytes-per-sec 1048576 --seed 7 --control /tmp/herd-simvm-test/a1/simvm.sock"
        );
        assert_eq!(
            driver.capabilities().migration,
            MigrationMode::LivePreCopy,
            "moves live"
        );
        assert!(exec.task.config.is_empty(), "settings consumed");
        let err = driver
            .check(&spec(&[("dirty_rate", "fast")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("task.config.dirty_rate"), "{err}");
        let mut long = spec(&[]);
        long.alloc_dir = std::path::PathBuf::from("/").join("d".repeat(120));
        let err = driver.check(&long).expect_err("socket path too long");
        assert!(err.to_string().contains("simvm.sock"), "{err}");
    }
}
