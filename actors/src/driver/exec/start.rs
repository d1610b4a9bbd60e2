//! `check` and `start` of the exec driver: launching the executor and waiting
//! for its word that the task runs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{self, Launch, StartFailure, Started};
use super::standby::Standby;
use super::{procfs, Detail};
use crate::driver::confine::{self, Confinement, PathPolicy};
use crate::driver::patience::Patience;
use crate::driver::{DriverError, WorkloadHandle, WorkloadSpec};

/// How often `start` looks for the executor's report: every millisecond,
/// then every 2. The executor reports within 3–10 ms, and a VM move's
/// target waits for it on the move's critical path: doubling up to 10 ms
/// saw a report made at 8 ms only at 15, and one at 16 at 25. A look is
/// two failed opens and a `waitpid`, a few µs.
const START_POLL_FIRST: Duration = Duration::from_millis(1);
const START_POLL_MOST: Duration = Duration::from_millis(2);

/// How long a failed executor gets to exit after reporting the failure.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// The checks of [`crate::driver::Driver::check`] for the exec driver.
///
/// Under a confining `policy` the working directory and a relative command
/// must resolve inside the allocation directory or an allowed directory
/// (see [`crate::driver::confine`]); an absolute command or one looked up
/// in `PATH` names a program of the node, which runs with the task's
/// rights, and is not a file of the job's.
pub fn check(spec: &WorkloadSpec, policy: &Confinement) -> Result<(), DriverError> {
    let unsupported = |message: String| DriverError::Unsupported {
        alloc: spec.alloc_id.clone(),
        message,
    };
    // The same parser as submit's; the exec-backed drivers hand over a spec
    // whose command line is theirs and whose settings they consumed.
    let settings =
        herd_api::driver_settings::exec(&spec.task).map_err(|e| unsupported(e.to_string()))?;
    let command = settings.command.as_str();
    let dir = &spec.alloc_dir;
    fs::create_dir_all(dir).map_err(|e| {
        unsupported(format!(
            "cannot create the allocation directory {}: {e}",
            dir.display()
        ))
    })?;
    if !accessible(dir, libc::W_OK | libc::X_OK) {
        return Err(unsupported(format!(
            "the allocation directory {} is not writable: {}",
            dir.display(),
            io::Error::last_os_error()
        )));
    }
    let workdir = match &spec.task.workdir {
        Some(w) => {
            if !Path::new(w).is_absolute() || !Path::new(w).is_dir() {
                return Err(unsupported(format!(
                    "the working directory {w} is not an existing absolute directory"
                )));
            }
            policy
                .resolve("task.workdir", w, dir, dir)
                .map_err(unsupported)?
        }
        None => dir.clone(),
    };
    // A name without a slash is looked up in PATH at spawn time; a path must
    // exist and be executable (relative ones are taken from the workdir, and
    // must stay inside what the policy allows).
    if command.contains('/') {
        let path = if Path::new(command).is_absolute() {
            PathBuf::from(command)
        } else {
            policy
                .resolve("task.command", command, &workdir, dir)
                .map_err(unsupported)?
        };
        let meta = fs::metadata(&path)
            .map_err(|e| unsupported(format!("command {}: {e}", path.display())))?;
        if !meta.is_file()
            || meta.permissions().mode() & 0o111 == 0
            || !accessible(&path, libc::X_OK)
        {
            return Err(unsupported(format!(
                "command {} is not an executable file",
                path.display()
            )));
        }
    }
    Ok(())
}

fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(path.as_ptr(), mode) == 0 }
}

/// Starts `spec` through a new executor, or returns the handle of the run of
/// the same generation that already runs in its directory: a new agent that
/// was killed before it could persist a handle must not start it twice.
pub async fn start(
    executor: &Path,
    standby: Option<&Arc<Standby>>,
    timeout: Duration,
    spec: &WorkloadSpec,
    policy: &Confinement,
) -> Result<WorkloadHandle, DriverError> {
    check(spec, policy)?;
    let alloc = spec.alloc_id.as_str();
    let fail = |message: String| DriverError::Start {
        alloc: alloc.to_string(),
        message,
    };
    let dir = fs::canonicalize(&spec.alloc_dir)
        .map_err(|e| fail(format!("{}: {e}", spec.alloc_dir.display())))?;
    if let Some(handle) = running(alloc, &dir, spec.generation)? {
        tracing::info!(
            alloc,
            "already running, adopting it instead of starting it again"
        );
        return Ok(handle);
    }
    for stale in [files::STARTED, files::START_ERROR, files::EXIT] {
        files::remove(&dir, stale).map_err(|e| fail(format!("cannot remove {stale}: {e}")))?;
    }
    let mut resolved = spec.clone();
    resolved.alloc_dir = dir.clone();
    // Under a confining policy the task starts in the directory that was
    // checked (symlinks resolved), not in whatever the name leads to later.
    if let (Some(w), PathPolicy::Within(_)) = (&spec.task.workdir, &policy.paths) {
        let checked = policy
            .resolve("task.workdir", w, &dir, &dir)
            .map_err(fail)?;
        resolved.task.workdir = Some(checked.display().to_string());
    }
    let path = std::env::var("PATH").ok();
    let mut launch = Launch::from_spec(&resolved, path.as_deref())
        .ok_or_else(|| fail("the exec driver needs a command".to_string()))?;
    if let Some(user) = &policy.exec_user {
        confine::share_alloc_dir(&dir, user).map_err(|e| {
            fail(format!(
                "cannot make {} usable by exec user {}: {e}",
                dir.display(),
                user.user
            ))
        })?;
        launch.run_as = Some(user.clone());
    }
    files::write_atomic(&dir, files::LAUNCH, &launch)
        .map_err(|e| fail(format!("cannot write {}: {e}", files::LAUNCH)))?;

    let launch_path = dir.join(files::LAUNCH);
    let handed = match standby {
        Some(standby) => standby.hand_over(&launch_path).await,
        None => None,
    };
    let mut child = match handed {
        Some(child) => child,
        None => spawn_executor(executor, &dir, &launch_path).map_err(fail)?,
    };
    if let Some(standby) = standby {
        standby.replenish_later();
    }

    let deadline = Instant::now() + timeout;
    let mut patience = Patience::new(START_POLL_FIRST, START_POLL_MOST);
    let outcome = loop {
        if let Some(started) = read::<Started>(alloc, &dir, files::STARTED)? {
            break Ok(started);
        }
        if let Some(failure) = read::<StartFailure>(alloc, &dir, files::START_ERROR)? {
            break Err(failure.message);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // It may have written its report just before exiting.
            if let Some(started) = read::<Started>(alloc, &dir, files::STARTED)? {
                break Ok(started);
            }
            if let Some(failure) = read::<StartFailure>(alloc, &dir, files::START_ERROR)? {
                break Err(failure.message);
            }
            break Err(executor_died(&dir, status));
        }
        if Instant::now() >= deadline {
            let _ = child.start_kill();
            break Err(format!(
                "the executor did not report the task started within {timeout:?}"
            ));
        }
        patience.pause().await;
    };
    match outcome {
        Ok(started) => {
            // The executor is our child until it ends; reap it then, so that
            // it leaves no zombie. After an agent restart init reaps it.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            if let Some(reason) = &started.limits.reason {
                tracing::warn!(alloc, reason, "resource limits not enforced");
            }
            Detail {
                alloc_dir: dir,
                started,
            }
            .into_handle(alloc)
        }
        Err(message) => {
            // Nothing may be left running: the executor exits after reporting;
            // make sure, and reap it before answering.
            if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
                if let Some(pid) = child.id() {
                    let _ = procfs::signal_group(pid, libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
            // A task it spawned before going silent dies with it.
            if let Ok(Some(started)) = files::read_json::<Started>(&dir, files::STARTED) {
                let _ = procfs::signal_group(started.task_pid, libc::SIGKILL);
            }
            Err(fail(message))
        }
    }
}

/// Starts an executor for `launch_path` the usual way, its output in the
/// allocation's `executor.log`.
fn spawn_executor(
    executor: &Path,
    dir: &Path,
    launch_path: &Path,
) -> Result<tokio::process::Child, String> {
    let log = files::open_append(dir, files::EXECUTOR_LOG)
        .map_err(|e| format!("cannot open {}: {e}", files::EXECUTOR_LOG))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", files::EXECUTOR_LOG))?;
    let mut command = tokio::process::Command::new(executor);
    command
        .arg("executor")
        .arg("--launch")
        .arg(launch_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    detach(&mut command);
    command
        .spawn()
        .map_err(|e| format!("cannot run the executor {}: {e}", executor.display()))
}

/// Makes the executor `command` starts lead a session of its own from its
/// first instruction: no signal aimed at the agent's group or session
/// reaches it.
pub(super) fn detach(command: &mut tokio::process::Command) {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The handle of a run of `generation` still running in `dir`, if any; an
/// error if a run of another generation still runs there.
/// The handle of the executor that runs `spec` in its directory, from the
/// executor's own report (`started.json`): see [`crate::driver::Driver::recover`].
pub fn recover(spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
    let Ok(dir) = fs::canonicalize(&spec.alloc_dir) else {
        // No directory, nothing was ever started there.
        return Ok(None);
    };
    running(&spec.alloc_id, &dir, spec.generation)
}

fn running(
    alloc: &str,
    dir: &Path,
    generation: u64,
) -> Result<Option<WorkloadHandle>, DriverError> {
    let Some(started) = read::<Started>(alloc, dir, files::STARTED)? else {
        return Ok(None);
    };
    let detail = Detail {
        alloc_dir: dir.to_path_buf(),
        started,
    };
    if !detail.executor_running(alloc)? {
        return Ok(None);
    }
    if detail.started.generation != generation {
        return Err(DriverError::Start {
            alloc: alloc.to_string(),
            message: format!(
                "generation {} still runs in {} (executor pid {})",
                detail.started.generation,
                dir.display(),
                detail.started.executor_pid
            ),
        });
    }
    detail.into_handle(alloc).map(Some)
}

fn read<T: serde::de::DeserializeOwned>(
    alloc: &str,
    dir: &Path,
    name: &str,
) -> Result<Option<T>, DriverError> {
    files::read_json(dir, name).map_err(|e| DriverError::Io {
        alloc: alloc.to_string(),
        message: format!("cannot read {}: {e}", dir.join(name).display()),
    })
}

/// What to say when the executor exited without a report: its status and the
/// end of its log.
fn executor_died(dir: &Path, status: ExitStatus) -> String {
    let log = fs::read_to_string(dir.join(files::EXECUTOR_LOG)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "the executor exited ({status}) before starting the task: {}",
        tail.join(" | ")
    )
}
