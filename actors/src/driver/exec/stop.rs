//! `stop` of the exec driver: SIGTERM through the executor, SIGKILL to the
//! task's process group after the grace period, and the executor itself
//! killed when it cannot record the end.

use std::time::{Duration, Instant};

use super::{files, io_error, lost_exit, procfs, Detail, KILLED, LOST, POLL};
use crate::driver::{DriverError, ExitInfo, WorkloadState};

/// Stops the run of `detail` and reports how it ended.
pub async fn stop(
    detail: &Detail,
    alloc: &str,
    grace: Duration,
    kill_wait: Duration,
) -> Result<ExitInfo, DriverError> {
    match detail.observe(alloc)? {
        WorkloadState::Exited(exit) => return Ok(exit),
        WorkloadState::Lost(message) => {
            // Its task may still run, unsupervised: stop that too.
            let killed = detail.kill_task_group(alloc)?;
            let suffix = if killed {
                "; its orphaned task was killed"
            } else {
                ""
            };
            return Ok(lost_exit(&format!("{message}{suffix}")));
        }
        WorkloadState::Running | WorkloadState::Paused => {}
    }
    // The executor forwards SIGTERM to the task's process group.
    procfs::signal_process(detail.started.executor_pid, libc::SIGTERM)
        .map_err(|e| io_error(alloc, "cannot signal the executor", e))?;
    let ended = match detail.settle(alloc, grace).await? {
        Some(ended) => ended,
        None => {
            tracing::info!(alloc, ?grace, "grace period over, killing the task");
            // The executor still runs, so the task's pid (and group id) is
            // held, at worst as an unreaped zombie: the group is the task's.
            procfs::signal_group(detail.started.task_pid, libc::SIGKILL)
                .map_err(|e| io_error(alloc, "cannot kill the task's process group", e))?;
            match detail.settle(alloc, kill_wait).await? {
                Some(ended) => ended,
                None => return force(detail, alloc).await,
            }
        }
    };
    Ok(match ended {
        WorkloadState::Exited(mut exit) => {
            if exit.signal == Some(libc::SIGKILL) && exit.message.is_none() {
                exit.message = Some(KILLED.to_string());
            }
            exit
        }
        WorkloadState::Lost(message) => lost_exit(&message),
        WorkloadState::Running | WorkloadState::Paused => lost_exit(LOST),
    })
}

/// The executor did not record the SIGKILLed task in time (stopped, stuck):
/// kill it too and write the exit on its behalf, so that later `state` and
/// `wait` agree with what `stop` answered.
async fn force(detail: &Detail, alloc: &str) -> Result<ExitInfo, DriverError> {
    tracing::warn!(alloc, "executor did not record the killed task, killing it");
    procfs::signal_group(detail.started.executor_pid, libc::SIGKILL)
        .map_err(|e| io_error(alloc, "cannot kill the executor", e))?;
    detail.kill_task_group(alloc)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while detail.executor_running(alloc)? && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    if let Some(exit) = detail.exit(alloc)? {
        return Ok(exit);
    }
    let exit = ExitInfo {
        code: None,
        signal: Some(libc::SIGKILL),
        finished_at_ms: files::now_ms(),
        message: Some(KILLED.to_string()),
    };
    let record = files::ExitRecord {
        executor_pid: detail.started.executor_pid,
        executor_start_ticks: detail.started.executor_start_ticks,
        exit: exit.clone(),
    };
    files::write_atomic(&detail.alloc_dir, files::EXIT, &record)
        .map_err(|e| io_error(alloc, &format!("cannot write {}", files::EXIT), e))?;
    Ok(exit)
}
