//! A driver for tests: runs real short processes in their own process group
//! and records their exits in files, like the exec driver's executor, so a
//! second supervisor in the same test process can re-adopt them from the
//! persisted handle. It counts starts and stops.

use std::fs::{self, File};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::driver::exec::files;
use crate::driver::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};

/// The name desired allocations use for it.
pub const NAME: &str = "test";

/// An argument that makes `start` panic.
pub const PANIC: &str = "panic-in-start";

const POLL: Duration = Duration::from_millis(10);

/// The record `start` leaves in the allocation directory for `recover`.
const STARTED: &str = "test-started.json";

/// Counts what it was asked to do.
#[derive(Debug, Default)]
pub struct TestDriver {
    pub starts: AtomicUsize,
    pub stops: AtomicUsize,
}

impl TestDriver {
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }
}

fn exit_file(handle: &WorkloadHandle) -> Result<PathBuf, DriverError> {
    handle
        .detail
        .get("exit_file")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| DriverError::BadHandle {
            alloc: handle.alloc_id.clone(),
            message: "no exit_file".into(),
        })
}

fn read_exit(path: &Path) -> Option<ExitInfo> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Pid must be there: the tests' handles always carry one.
fn pid(handle: &WorkloadHandle) -> u32 {
    handle.pid.expect("test handles carry a pid")
}

fn observe(handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
    let path = exit_file(handle)?;
    if let Some(exit) = read_exit(&path) {
        return Ok(WorkloadState::Exited(exit));
    }
    if alive(pid(handle)) {
        return Ok(WorkloadState::Running);
    }
    // Reaped by the waiter thread, which writes the exit right after.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if let Some(exit) = read_exit(&path) {
            return Ok(WorkloadState::Exited(exit));
        }
        std::thread::sleep(POLL);
    }
    Ok(WorkloadState::Lost(
        "process gone without an exit file".into(),
    ))
}

async fn settle(
    handle: &WorkloadHandle,
    timeout: Duration,
) -> Result<Option<ExitInfo>, DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        match observe(handle)? {
            WorkloadState::Running | WorkloadState::Paused => {}
            WorkloadState::Exited(exit) => return Ok(Some(exit)),
            WorkloadState::Lost(m) => {
                return Ok(Some(ExitInfo {
                    code: None,
                    signal: None,
                    finished_at_ms: 0,
                    message: Some(format!("lost: {m}")),
                }))
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[async_trait::async_trait]
impl Driver for TestDriver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::None,
            pause: false,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        match spec.task.command {
            Some(_) => Ok(()),
            None => Err(DriverError::Unsupported {
                alloc: spec.alloc_id.clone(),
                message: "no command".into(),
            }),
        }
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        assert!(
            !spec.task.args.iter().any(|a| a == PANIC),
            "the test driver panics as asked"
        );
        let err = |e: std::io::Error| DriverError::Start {
            alloc: spec.alloc_id.clone(),
            message: e.to_string(),
        };
        let command = spec.task.command.clone().unwrap_or_default();
        let out = File::options()
            .create(true)
            .append(true)
            .open(spec.alloc_dir.join(files::STDOUT))
            .map_err(err)?;
        let mut child = Command::new(command)
            .args(&spec.task.args)
            .envs(&spec.env)
            .current_dir(&spec.alloc_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .process_group(0)
            .spawn()
            .map_err(err)?;
        let pid = child.id();
        let exit_path = spec.alloc_dir.join(format!("test-exit-{pid}.json"));
        let writer = exit_path.clone();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let exit = ExitInfo {
                    code: status.code(),
                    signal: status.signal(),
                    finished_at_ms: files::now_ms(),
                    message: None,
                };
                let name = writer.file_name().and_then(|n| n.to_str()).unwrap_or("x");
                let dir = writer.parent().unwrap_or(Path::new("."));
                let _ = files::write_atomic(dir, name, &exit);
            }
        });
        let handle = WorkloadHandle {
            driver: NAME.into(),
            alloc_id: spec.alloc_id.clone(),
            generation: spec.generation,
            pid: Some(pid),
            started_at_ms: files::now_ms(),
            detail: serde_json::json!({ "exit_file": exit_path }),
        };
        // Its own record, as the exec driver's executor writes started.json.
        files::write_atomic(&spec.alloc_dir, STARTED, &handle).map_err(err)?;
        Ok(handle)
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        let record: Option<WorkloadHandle> =
            files::read_json(&spec.alloc_dir, STARTED).map_err(|e| DriverError::Io {
                alloc: spec.alloc_id.clone(),
                message: e.to_string(),
            })?;
        Ok(record.filter(|handle| {
            handle.generation == spec.generation
                && matches!(observe(handle), Ok(WorkloadState::Running))
        }))
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        observe(handle)
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        loop {
            if let Some(exit) = settle(handle, Duration::from_secs(3600)).await? {
                return Ok(exit);
            }
        }
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        if let Some(exit) = settle(handle, Duration::ZERO).await? {
            return Ok(exit);
        }
        let group = -(pid(handle) as i32);
        // SAFETY: signals the test's own process group.
        unsafe { libc::kill(group, libc::SIGTERM) };
        if let Some(exit) = settle(handle, grace).await? {
            return Ok(exit);
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        loop {
            if let Some(exit) = settle(handle, Duration::from_secs(3600)).await? {
                return Ok(exit);
            }
        }
    }
}
