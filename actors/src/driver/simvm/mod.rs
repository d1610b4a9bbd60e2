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

pub mod memory;

use std::path::Path;

use herd_api::driver_settings;
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;
use herd_api::vm::SimVmSettings;

use super::exec_backed::{ExecBacked, ExecCommand, ExecKind};
use super::{DriverCapabilities, DriverError, MigrationMode, WorkloadSpec};

/// The `simvm` kind of exec-backed workload: `herd sim-vm` sized by the
/// task's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimVm;

/// The `simvm` driver.
pub type SimVmDriver = ExecBacked<SimVm>;

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

    fn settings(&self, task: &TaskSpec) -> Result<SimVmSettings, FieldError> {
        driver_settings::simvm(task)
    }

    fn command(
        &self,
        herd: &Path,
        _spec: &WorkloadSpec,
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
            ],
            env: Default::default(),
        })
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
            "sim-vm --memory-mib 64 --dirty-bytes-per-sec 1048576 --seed 7"
        );
        assert!(exec.task.config.is_empty(), "settings consumed");
        let err = driver
            .check(&spec(&[("dirty_rate", "fast")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("task.config.dirty_rate"), "{err}");
    }
}
