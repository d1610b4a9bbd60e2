//! The `inference` driver: runs herd's SIMULATED LLM engine
//! (`herd inference-engine`, see [`crate::inference`]) as the workload.
//!
//! It is the exec driver with the command chosen for the user: the task's
//! `[task.config]` is validated here (errors name `task.config.<key>`), then
//! handed to the engine process as `--set KEY=VALUE` arguments and run by an
//! [`ExecDriver`], so supervision, re-adoption after an agent restart, limits
//! and logs are the exec driver's. Handles carry the exec driver's detail
//! under this driver's name.

use std::path::PathBuf;
use std::time::Duration;

use super::exec::ExecDriver;
use super::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};
use crate::inference::EngineSettings;

/// The name job specs use.
pub const NAME: &str = "inference";

/// The hidden subcommand of the herd binary that runs the engine.
pub const SUBCOMMAND: &str = "inference-engine";

/// The `inference` driver; see the module documentation.
#[derive(Debug, Clone)]
pub struct InferenceDriver {
    exec: ExecDriver,
    herd: PathBuf,
}

impl InferenceDriver {
    /// A driver whose engines (and their executors) are run by `herd`, the
    /// herd binary.
    pub fn new(herd: impl Into<PathBuf>) -> Self {
        let herd = herd.into();
        Self {
            exec: ExecDriver::new(&herd),
            herd,
        }
    }

    /// The exec spec that runs the engine for `spec`, once its settings are valid.
    fn engine_spec(&self, spec: &WorkloadSpec) -> Result<WorkloadSpec, DriverError> {
        let unsupported = |message: String| DriverError::Unsupported {
            alloc: spec.alloc_id.clone(),
            message,
        };
        if spec.task.command.is_some() || !spec.task.args.is_empty() {
            return Err(unsupported(
                "task.command and task.args: the inference driver runs the simulated engine \
                 itself; leave them out and set [task.config] instead"
                    .to_string(),
            ));
        }
        EngineSettings::from_config(&spec.task.config).map_err(|e| unsupported(e.to_string()))?;
        let mut args = vec![
            SUBCOMMAND.to_string(),
            "--alloc-dir".to_string(),
            spec.alloc_dir.display().to_string(),
        ];
        for (key, value) in &spec.task.config {
            args.push("--set".to_string());
            args.push(format!("{key}={value}"));
        }
        let mut engine = spec.clone();
        engine.task.command = Some(self.herd.display().to_string());
        engine.task.args = args;
        Ok(engine)
    }

    /// The exec driver's view of one of our handles.
    fn as_exec(handle: &WorkloadHandle) -> Result<WorkloadHandle, DriverError> {
        if handle.driver != NAME {
            return Err(DriverError::BadHandle {
                alloc: handle.alloc_id.clone(),
                message: format!("it belongs to driver {:?}, not {NAME:?}", handle.driver),
            });
        }
        let mut exec = handle.clone();
        exec.driver = "exec".to_string();
        Ok(exec)
    }
}

#[async_trait::async_trait]
impl Driver for InferenceDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::RequestKvCache,
            pause: false,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        self.exec.check(&self.engine_spec(spec)?)
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        let mut handle = self.exec.start(&self.engine_spec(spec)?).await?;
        handle.driver = NAME.to_string();
        Ok(handle)
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        let handle = self.exec.recover(&self.engine_spec(spec)?).await?;
        Ok(handle.map(|mut handle| {
            handle.driver = NAME.to_string();
            handle
        }))
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        self.exec.state(&Self::as_exec(handle)?).await
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        self.exec.wait(&Self::as_exec(handle)?).await
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        self.exec.stop(&Self::as_exec(handle)?, grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::job::TaskSpec;

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
        let engine = driver
            .engine_spec(&spec(&[("kv_blocks", "8")]))
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
    fn bad_settings_are_refused_naming_the_key() {
        let driver = InferenceDriver::new("/usr/bin/herd");
        let err = driver
            .check(&spec(&[("max_batch", "0")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("task.config.max_batch"), "{err}");
    }

    #[test]
    fn handles_are_converted_both_ways() {
        let mut handle = WorkloadHandle {
            driver: NAME.into(),
            alloc_id: "a1".into(),
            generation: 1,
            pid: None,
            started_at_ms: 0,
            detail: serde_json::json!({}),
        };
        assert_eq!(
            InferenceDriver::as_exec(&handle).expect("ours").driver,
            "exec"
        );
        handle.driver = "exec".into();
        assert!(InferenceDriver::as_exec(&handle).is_err());
    }
}
