//! The `inference` driver: runs herd's SIMULATED LLM engine
//! (`herd inference-engine`, see [`crate::inference`]) as the workload.
//!
//! It is the exec driver with the command chosen for the user
//! ([`ExecBacked`] by the kind [`Inference`]): the task's `[task.config]` is
//! parsed by `herd_api::driver_settings::inference`, the function submit
//! validation calls (errors name `task.config.<key>`), then handed to the
//! engine process as `--set KEY=VALUE` arguments, so supervision,
//! re-adoption after an agent restart, limits and logs are the exec
//! driver's. Handles carry the exec driver's detail under this driver's name.

use std::path::Path;

use herd_api::driver_settings::{self, InferenceSettings};
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;

use super::exec_backed::{ExecBacked, ExecCommand, ExecKind};
use super::{DriverCapabilities, DriverError, MigrationMode, WorkloadSpec};

/// The name job specs use.
pub const NAME: &str = driver_settings::INFERENCE;

/// The hidden subcommand of the herd binary that runs the engine.
pub const SUBCOMMAND: &str = "inference-engine";

/// The `inference` kind of exec-backed workload: herd's simulated engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inference;

/// The `inference` driver; see the module documentation.
pub type InferenceDriver = ExecBacked<Inference>;

impl ExecKind for Inference {
    const NAME: &'static str = NAME;
    type Settings = InferenceSettings;

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::RequestKvCache,
            pause: false,
            power_cap: false,
        }
    }

    fn settings(&self, task: &TaskSpec) -> Result<InferenceSettings, FieldError> {
        driver_settings::inference(task)
    }

    /// The engine, handed the (valid) settings as `--set KEY=VALUE`; it
    /// parses them again with the same function.
    fn command(
        &self,
        herd: &Path,
        spec: &WorkloadSpec,
        _settings: &InferenceSettings,
    ) -> Result<ExecCommand, DriverError> {
        let mut args = vec![
            SUBCOMMAND.to_string(),
            "--alloc-dir".to_string(),
            spec.alloc_dir.display().to_string(),
        ];
        for (key, value) in &spec.task.config {
            args.push("--set".to_string());
            args.push(format!("{key}={value}"));
        }
        Ok(ExecCommand {
            program: herd.display().to_string(),
            args,
            env: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Driver;

    fn spec(config: &[(&str, &str)]) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 1,
            job: "llm".into(),
            task: TaskSpec {
                driver: NAME.into(),
                command: None,
                args: Vec::new(),
                env: Default::default(),
                workdir: None,
                resources: Default::default(),
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            alloc_dir: "/tmp/herd-inference-test/a1".into(),
            env: Default::default(),
        }
    }

    #[test]
    fn the_engine_runs_as_the_herd_binary_with_the_config_as_arguments() {
        let driver = InferenceDriver::new("/usr/bin/herd");
        let (_, engine) = driver
            .checked_launch(&spec(&[("kv_blocks", "8")]))
            .expect("valid");
        assert_eq!(engine.task.command.as_deref(), Some("/usr/bin/herd"));
        assert_eq!(
            engine.task.args,
            vec![
                "inference-engine",
                "--alloc-dir",
                "/tmp/herd-inference-test/a1",
                "--set",
                "kv_blocks=8"
            ]
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_key_as_submit_does() {
        let driver = InferenceDriver::new("/usr/bin/herd");
        let bad = spec(&[("max_batch", "0")]);
        let err = driver.check(&bad).expect_err("invalid");
        assert!(err.to_string().contains("task.config.max_batch"), "{err}");
        let submit = driver_settings::inference(&bad.task).expect_err("refused at submit");
        assert!(err.to_string().ends_with(&submit.to_string()), "{err}");
        let mut with_command = spec(&[]);
        with_command.task.command = Some("/bin/engine".into());
        let err = driver.check(&with_command).expect_err("invalid");
        assert!(err.to_string().contains("task.command"), "{err}");
    }
}
