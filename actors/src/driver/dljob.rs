//! The `dljob` driver: deep-learning training jobs that checkpoint on request
//! and resume from their latest checkpoint, so that they can be stopped and
//! restarted (and later migrated) without losing more than a step.
//!
//! A dljob runs exactly like an exec task (same executor, same re-adoption by
//! handle, same logs): it is [`ExecBacked`] by the kind [`Dljob`], which adds:
//! - `HERD_CHECKPOINT_DIR=<alloc_dir>/checkpoints`, created before start, in
//!   the task's environment (set by the driver: the task cannot shadow it);
//! - a default trainer: without `command`, the task runs `herd toy-train`
//!   with the task's `args`;
//! - [`DljobDriver::checkpoint`]: asks the trainer for a checkpoint through
//!   the control file and waits for its answer.
//!
//! The gang variables the scheduler sets (`HERD_GANG_RANK`, `HERD_GANG_SIZE`,
//! `HERD_GANG_PEERS`) arrive in the spec's `env` and are passed through. The
//! protocol a trainer follows is in `docs/dljob.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_api::driver_settings::{self, DljobSettings};
use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;

use super::exec::Detail;
use super::exec_backed::{ExecBacked, ExecCommand, ExecKind};
use super::{
    Driver, DriverCapabilities, DriverError, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};
use crate::toy_train::checkpoint::{self, DoneRecord};

/// The driver's name in job specs.
pub const NAME: &str = driver_settings::DLJOB;
/// The checkpoint directory, under the allocation directory.
pub const CHECKPOINT_SUBDIR: &str = "checkpoints";
/// The variable naming the checkpoint directory.
pub const CHECKPOINT_ENV: &str = "HERD_CHECKPOINT_DIR";

/// How often [`DljobDriver::checkpoint`] looks for the trainer's answer.
const POLL: Duration = Duration::from_millis(20);

/// The `dljob` kind of exec-backed workload: a trainer with a checkpoint
/// directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dljob;

/// The `dljob` driver.
pub type DljobDriver = ExecBacked<Dljob>;

#[async_trait::async_trait]
impl ExecKind for Dljob {
    const NAME: &'static str = NAME;
    type Settings = DljobSettings;

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::CheckpointRestart,
            pause: false,
            power_cap: false,
        }
    }

    fn settings(&self, task: &TaskSpec) -> Result<DljobSettings, FieldError> {
        driver_settings::dljob(task)
    }

    async fn checkpoint(
        driver: &DljobDriver,
        handle: &WorkloadHandle,
        timeout: Duration,
    ) -> Result<u64, DriverError> {
        driver.checkpoint_trainer(handle, timeout).await
    }

    /// The user's trainer, or `herd toy-train` with the task's args; the
    /// checkpoint directory created and named in the environment.
    fn command(
        &self,
        herd: &Path,
        spec: &WorkloadSpec,
        settings: &DljobSettings,
    ) -> Result<ExecCommand, DriverError> {
        let dir =
            checkpoint_dir_of(&spec.alloc_dir).map_err(|message| DriverError::Unsupported {
                alloc: spec.alloc_id.clone(),
                message,
            })?;
        let (program, args) = match &settings.command {
            Some(command) => (command.clone(), spec.task.args.clone()),
            None => (
                herd.display().to_string(),
                std::iter::once("toy-train".to_string())
                    .chain(spec.task.args.iter().cloned())
                    .collect(),
            ),
        };
        Ok(ExecCommand {
            program,
            args,
            env: BTreeMap::from([(CHECKPOINT_ENV.to_string(), dir.display().to_string())]),
        })
    }
}

impl ExecBacked<Dljob> {
    /// The checkpoint directory of the workload of `handle`.
    pub fn checkpoint_dir(handle: &WorkloadHandle) -> Result<PathBuf, DriverError> {
        let detail = Detail::of(&Self::exec_handle(handle)?)?;
        Ok(detail.alloc_dir.join(CHECKPOINT_SUBDIR))
    }

    /// Asks the running trainer of `handle` for a checkpoint (writes
    /// `checkpoint.request`) and waits up to `timeout` for its answer
    /// (`checkpoint.done` echoing the request). Returns the step it
    /// checkpointed at. For the migration of training jobs: checkpoint, copy
    /// the directory, start elsewhere. Reached through
    /// [`crate::driver::Driver::checkpoint`].
    async fn checkpoint_trainer(
        &self,
        handle: &WorkloadHandle,
        timeout: Duration,
    ) -> Result<u64, DriverError> {
        let exec = Self::exec_handle(handle)?;
        let alloc = handle.alloc_id.as_str();
        let dir = Self::checkpoint_dir(handle)?;
        let io = |what: String| DriverError::Io {
            alloc: alloc.to_string(),
            message: what,
        };
        if self.exec().state(&exec).await? != WorkloadState::Running {
            return Err(io("cannot checkpoint: the trainer is not running".into()));
        }
        let id = request_id();
        checkpoint::write_atomic(&dir, checkpoint::REQUEST, id.as_bytes())
            .map_err(|e| io(format!("cannot ask for a checkpoint: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = read_done(&dir) {
                if done.request == id {
                    return Ok(done.step);
                }
            }
            if self.exec().state(&exec).await? != WorkloadState::Running {
                // It may have answered just before ending.
                if let Some(done) = read_done(&dir).filter(|d| d.request == id) {
                    return Ok(done.step);
                }
                return Err(io(
                    "the trainer ended before answering the checkpoint request".into(),
                ));
            }
            if Instant::now() >= deadline {
                let _ = std::fs::remove_file(dir.join(checkpoint::REQUEST));
                return Err(io(format!(
                    "the trainer did not checkpoint within {timeout:?} (does it follow the \
                     protocol of docs/dljob.md?)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Creates `<alloc_dir>/checkpoints` and returns its absolute path.
fn checkpoint_dir_of(alloc_dir: &Path) -> Result<PathBuf, String> {
    let dir = alloc_dir.join(CHECKPOINT_SUBDIR);
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::canonicalize(&dir))
        .map_err(|e| {
            format!(
                "cannot create the checkpoint directory {}: {e}",
                dir.display()
            )
        })
}

fn read_done(dir: &Path) -> Option<DoneRecord> {
    let bytes = std::fs::read(dir.join(checkpoint::DONE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A request id unique enough to tell this request's answer from older ones.
fn request_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{now}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use herd_api::resources::Resources;

    use super::*;

    fn spec(dir: &Path, command: Option<&str>) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 1,
            job: "train".into(),
            task: TaskSpec {
                driver: NAME.into(),
                command: command.map(String::from),
                args: vec!["--steps".into(), "10".into()],
                env: BTreeMap::new(),
                workdir: None,
                resources: Resources::default(),
                config: BTreeMap::new(),
            },
            alloc_dir: dir.to_path_buf(),
            env: BTreeMap::from([("HERD_GANG_RANK".to_string(), "1".to_string())]),
        }
    }

    fn launch(driver: &DljobDriver, spec: &WorkloadSpec) -> Result<WorkloadSpec, DriverError> {
        driver.checked_launch(spec).map(|(_, launch)| launch)
    }

    #[test]
    fn without_a_command_it_runs_herd_toy_train_with_a_checkpoint_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = DljobDriver::new("/usr/bin/herd");
        let exec = launch(&driver, &spec(dir.path(), None)).expect("spec");
        assert_eq!(exec.task.command.as_deref(), Some("/usr/bin/herd"));
        assert_eq!(exec.task.args, ["toy-train", "--steps", "10"]);
        assert_eq!(exec.task.driver, "exec");
        let ckpt = PathBuf::from(&exec.env[CHECKPOINT_ENV]);
        assert!(ckpt.is_absolute() && ckpt.is_dir(), "{}", ckpt.display());
        assert!(ckpt.ends_with(CHECKPOINT_SUBDIR));
        assert_eq!(exec.env["HERD_GANG_RANK"], "1", "gang env passes through");
    }

    #[test]
    fn a_given_command_is_kept_and_settings_are_refused_by_the_submit_parser() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = DljobDriver::new("/usr/bin/herd");
        let exec = launch(&driver, &spec(dir.path(), Some("/opt/train.sh"))).expect("spec");
        assert_eq!(exec.task.command.as_deref(), Some("/opt/train.sh"));
        assert_eq!(exec.task.args, ["--steps", "10"]);
        let mut with_config = spec(dir.path(), None);
        with_config.task.config.insert("x".into(), "1".into());
        let submit = driver_settings::dljob(&with_config.task).expect_err("refused at submit");
        match driver.check(&with_config) {
            Err(DriverError::Unsupported { message, .. }) => {
                assert_eq!(message, submit.to_string())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            driver.capabilities().migration,
            MigrationMode::CheckpointRestart
        );
    }
}
