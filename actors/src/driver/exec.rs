//! The `exec` driver: runs a task as a plain process on the node.
//!
//! Every workload gets its own supervisor, the executor ([`executor::run`],
//! `herd executor --launch <alloc_dir>/launch.json`), detached in its own
//! session. The task is the executor's child, so the executor (not the agent)
//! collects its exit status and writes it to `exit.json`. Hence:
//! - the workload keeps running when the agent dies, even by SIGKILL;
//! - its exit code is not lost while no agent runs;
//! - a new agent needs only the handle, whose detail names the allocation
//!   directory and identifies the executor and the task by pid *and* start
//!   time, so a recycled pid is never taken for the workload.
//!
//! What a state means:
//! - `exit.json` of this run present: `Exited`.
//! - else the executor is running (pid, start time and boot match): `Running`.
//! - else: `Lost` — the executor died without writing `exit.json` (killed by
//!   SIGKILL or the OOM killer, the host rebooted). [`Driver::wait`] and
//!   [`Driver::stop`] report a lost workload as an `ExitInfo` with neither code
//!   nor signal, `finished_at_ms` 0 (unknown) and a message starting with
//!   `lost:`; it is a fact about the workload (it failed), not an error of the
//!   driver, which is reserved for not being able to look.
//!
//! Environment: the task's environment is built from scratch (see
//! [`files::resolve_env`]): only `PATH` comes from the agent, plus
//! `HERD_ALLOC_ID`, `HERD_ALLOC_DIR`, `HERD_JOB`, then the task's `env`, then
//! the agent's extra `env`. The working directory defaults to the allocation
//! directory. Limits: see [`cgroup`]; where they cannot be enforced,
//! `limits.enforced` is false in the handle's detail with the reason.
//!
//! Confinement ([`ExecDriver::with_confinement`], the node's `exec_user`
//! and `allow_paths`): the task runs as the exec user with no
//! supplementary groups and `no_new_privs`, in an allocation directory
//! made writable for it (sticky, so the driver's own files stay out of its
//! reach), and the paths its spec names stay where the policy allows.

pub mod cgroup;
pub mod executor;
pub mod files;
pub mod procfs;
pub mod standby;
mod start;
mod stop;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::files::Started;
use self::standby::Standby;
use super::confine::Confinement;
use super::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};

/// What `state` says when the executor is gone and left no `exit.json`.
pub const LOST: &str = "executor vanished without recording an exit";

/// The message of an exit forced by `stop` once the grace period ran out.
pub const KILLED: &str = "killed after grace period";

/// How often `wait` and `stop` look at a workload.
const POLL: Duration = Duration::from_millis(50);

/// The `exec` driver. Holds no per-workload state: everything is in the
/// handles and allocation directories, so any instance (in any agent process)
/// can watch and stop any workload.
#[derive(Debug, Clone)]
pub struct ExecDriver {
    /// The herd binary, run as `<executor> executor --launch PATH`.
    executor: PathBuf,
    /// How long `start` waits for the executor to report the task started.
    start_timeout: Duration,
    /// How long `stop` waits for the executor to record a SIGKILLed task.
    kill_wait: Duration,
    /// The node's confinement: the user tasks run as, where spec paths may
    /// lead (unconfined unless [`ExecDriver::with_confinement`] says).
    confinement: Confinement,
    /// The agent's executor started ahead of need, if it keeps one.
    standby: Option<Arc<Standby>>,
}

impl ExecDriver {
    /// A driver whose executors are `executor` (the herd binary; the agent
    /// passes `std::env::current_exe()`).
    pub fn new(executor: impl Into<PathBuf>) -> Self {
        Self {
            executor: executor.into(),
            start_timeout: Duration::from_secs(30),
            kill_wait: Duration::from_secs(5),
            confinement: Confinement::default(),
            standby: None,
        }
    }

    /// Starts workloads through `standby`'s idle executor when it has one
    /// (see [`standby`]): an agent shares one among all its drivers. `None`
    /// keeps spawning an executor per start.
    pub fn with_standby(mut self, standby: Option<Arc<Standby>>) -> Self {
        self.standby = standby;
        self
    }

    /// Confines the tasks of this driver: run as the policy's exec user
    /// (if any), with the paths their specs name checked against it. The
    /// node agent sets the node's policy; without it nothing is confined.
    pub fn with_confinement(mut self, confinement: Confinement) -> Self {
        self.confinement = confinement;
        self
    }

    /// The confinement this driver applies.
    pub fn confinement(&self) -> &Confinement {
        &self.confinement
    }

    /// Changes how long `start` waits for the task to be running (default 30 s;
    /// a loaded node can be slow to exec).
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Changes how long `stop` waits, after SIGKILLing the task, for the
    /// executor to record it before killing the executor too and recording
    /// the exit itself (default 5 s).
    pub fn with_kill_wait(mut self, wait: Duration) -> Self {
        self.kill_wait = wait;
        self
    }

    /// The task's stdout and stderr files, for `herd alloc logs`. They are
    /// appended to across restarts of the allocation.
    pub fn log_paths(handle: &WorkloadHandle) -> Result<(PathBuf, PathBuf), DriverError> {
        Ok(super::logs::paths(&Detail::of(handle)?.alloc_dir))
    }
}

/// The handle's driver-specific part: where the run lives and who runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    /// The allocation directory (absolute).
    pub alloc_dir: PathBuf,
    /// The run's identity and limits, as in `started.json`.
    #[serde(flatten)]
    pub started: Started,
}

impl Detail {
    /// Decodes a handle of this driver.
    pub fn of(handle: &WorkloadHandle) -> Result<Self, DriverError> {
        let bad = |message: String| DriverError::BadHandle {
            alloc: handle.alloc_id.clone(),
            message,
        };
        if handle.driver != "exec" {
            return Err(bad(format!(
                "it belongs to driver {:?}, not \"exec\"",
                handle.driver
            )));
        }
        serde_json::from_value(handle.detail.clone()).map_err(|e| bad(e.to_string()))
    }

    /// The handle of the run in `alloc_dir` described by `started`.
    pub fn into_handle(self, alloc_id: &str) -> Result<WorkloadHandle, DriverError> {
        let detail = serde_json::to_value(&self).map_err(|e| DriverError::Io {
            alloc: alloc_id.to_string(),
            message: format!("cannot encode the handle: {e}"),
        })?;
        Ok(WorkloadHandle {
            driver: "exec".to_string(),
            alloc_id: alloc_id.to_string(),
            generation: self.started.generation,
            pid: Some(self.started.task_pid),
            started_at_ms: self.started.started_at_ms,
            detail,
        })
    }

    fn executor_running(&self, alloc: &str) -> Result<bool, DriverError> {
        let s = &self.started;
        procfs::is_running(s.executor_pid, s.executor_start_ticks, &s.boot_id)
            .map_err(|e| io_error(alloc, "cannot look at the executor", e))
    }

    /// The exit recorded for this run, if any.
    fn exit(&self, alloc: &str) -> Result<Option<ExitInfo>, DriverError> {
        let record: Option<files::ExitRecord> = files::read_json(&self.alloc_dir, files::EXIT)
            .map_err(|e| io_error(alloc, &format!("cannot read {}", files::EXIT), e))?;
        // A record of another run (a later one in the same directory) is not ours.
        Ok(record
            .filter(|r| {
                r.executor_pid == self.started.executor_pid
                    && r.executor_start_ticks == self.started.executor_start_ticks
            })
            .map(|r| r.exit))
    }

    /// The workload's state now.
    fn observe(&self, alloc: &str) -> Result<WorkloadState, DriverError> {
        if let Some(exit) = self.exit(alloc)? {
            return Ok(WorkloadState::Exited(exit));
        }
        if self.executor_running(alloc)? {
            return Ok(WorkloadState::Running);
        }
        // It may have written exit.json and exited since we looked.
        if let Some(exit) = self.exit(alloc)? {
            return Ok(WorkloadState::Exited(exit));
        }
        Ok(WorkloadState::Lost(LOST.to_string()))
    }

    /// Polls until the workload is not running or `timeout` passed (`None`).
    async fn settle(
        &self,
        alloc: &str,
        timeout: Duration,
    ) -> Result<Option<WorkloadState>, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.observe(alloc)? {
                WorkloadState::Running | WorkloadState::Paused => {}
                ended => return Ok(Some(ended)),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// SIGKILLs the task's process group if the task itself still runs
    /// (checked by start time, so the group id is still its own).
    fn kill_task_group(&self, alloc: &str) -> Result<bool, DriverError> {
        let s = &self.started;
        let running = procfs::is_running(s.task_pid, s.task_start_ticks, &s.boot_id)
            .map_err(|e| io_error(alloc, "cannot look at the task", e))?;
        if running {
            procfs::signal_group(s.task_pid, libc::SIGKILL)
                .map_err(|e| io_error(alloc, "cannot kill the task's process group", e))?;
        }
        Ok(running)
    }
}

fn io_error(alloc: &str, what: &str, e: std::io::Error) -> DriverError {
    DriverError::Io {
        alloc: alloc.to_string(),
        message: format!("{what}: {e}"),
    }
}

/// The `ExitInfo` of a lost workload: nothing known but that it is gone.
fn lost_exit(message: &str) -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        finished_at_ms: 0,
        message: Some(format!("lost: {message}")),
    }
}

#[async_trait::async_trait]
impl Driver for ExecDriver {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::None,
            pause: false,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        start::check(spec, &self.confinement)
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        start::start(
            &self.executor,
            self.standby.as_ref(),
            self.start_timeout,
            spec,
            &self.confinement,
        )
        .await
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        start::recover(spec)
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        Detail::of(handle)?.observe(&handle.alloc_id)
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        let detail = Detail::of(handle)?;
        loop {
            match detail.observe(&handle.alloc_id)? {
                WorkloadState::Running | WorkloadState::Paused => tokio::time::sleep(POLL).await,
                WorkloadState::Exited(exit) => return Ok(exit),
                WorkloadState::Lost(message) => return Ok(lost_exit(&message)),
            }
        }
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        let detail = Detail::of(handle)?;
        stop::stop(&detail, &handle.alloc_id, grace, self.kill_wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail() -> Detail {
        Detail {
            alloc_dir: "/var/herd/a1".into(),
            started: Started {
                generation: 2,
                executor_pid: 100,
                executor_start_ticks: 5000,
                task_pid: 101,
                task_start_ticks: 5001,
                boot_id: "boot".into(),
                started_at_ms: 1_700_000_000_000,
                limits: files::Limits {
                    enforced: false,
                    cgroup: None,
                    reason: Some("cgroup v1".into()),
                },
            },
        }
    }

    #[test]
    fn handles_round_trip_through_json_and_name_the_task_pid() {
        let handle = detail().into_handle("a1").expect("encodes");
        assert_eq!((handle.pid, handle.generation), (Some(101), 2));
        assert_eq!(handle.detail["executor_pid"], 100);
        assert_eq!(handle.detail["limits"]["enforced"], false);
        let json = serde_json::to_string(&handle).expect("serializes");
        let back: WorkloadHandle = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(Detail::of(&back).expect("decodes"), detail());
        let (out, err) = ExecDriver::log_paths(&back).expect("paths");
        assert_eq!(out, PathBuf::from("/var/herd/a1/stdout.log"));
        assert_eq!(err, PathBuf::from("/var/herd/a1/stderr.log"));
    }

    #[test]
    fn handles_of_other_drivers_or_without_detail_are_refused() {
        let mut handle = detail().into_handle("a1").expect("encodes");
        handle.driver = "vm".into();
        assert!(matches!(
            Detail::of(&handle),
            Err(DriverError::BadHandle { .. })
        ));
        handle.driver = "exec".into();
        handle.detail = serde_json::json!({"alloc_dir": "/x"});
        let err = Detail::of(&handle).expect_err("incomplete");
        assert!(err.to_string().contains("allocation a1"), "{err}");
    }
}
