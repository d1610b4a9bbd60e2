//! An executor started ahead of need, so that starting a workload does not
//! wait for the herd binary to start.
//!
//! Why: the executor is the herd binary, and a process that size takes
//! 5–20 ms from `exec` to its first line of `main` (the dynamic loader's
//! relocations, the argument parser), on every start of every workload. A
//! live VM move's target pays it on the move's critical path, before its
//! QEMU can start. An agent that runs with a [`Standby`] keeps one
//! executor waiting (`herd executor --standby`): a start hands it the path
//! of its `launch.json` on its stdin and it carries on as an executor
//! started with `--launch` would; the next one is made in the background.
//!
//! Each standby names its agent's allocation root on its command line
//! (`--allocs DIR`), so that `ps`, and the chaos harness's look for a
//! node's processes, tell which agent's it is, and it runs only a launch
//! under that root (the agent hands it nothing else).
//!
//! Safety of the hand-over: the waiting executor reads its stdin to the
//! end. The agent writes the path (shorter than `PIPE_BUF`, so in one
//! piece) and closes the pipe; an agent that dies first closes it with
//! nothing written, and the executor exits without doing anything. So a
//! standby never outlives its agent and never runs a half-written path.
//! One that died while waiting is noticed before the hand-over and the
//! start spawns a fresh executor instead, as without a standby.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

/// The argument that makes `herd executor` wait for its launch on stdin.
pub const STANDBY_ARG: &str = "--standby";
/// The argument naming the allocation root a standby serves.
pub const ALLOCS_ARG: &str = "--allocs";

/// How long after a hand-over the next idle executor is made. Not at once:
/// its own start would compete for the CPU with the workload starting (a
/// move's target QEMU), which is what the standby is there to hurry.
const REPLENISH_AFTER: Duration = Duration::from_millis(500);

/// At most one idle executor of one agent, shared by all its drivers.
#[derive(Debug)]
pub struct Standby {
    executor: PathBuf,
    /// The directory the agent's allocation directories are in.
    allocs: PathBuf,
    idle: Mutex<Option<Child>>,
}

impl Standby {
    /// A pool of `executor` (the herd binary) for the allocations under
    /// `allocs`, empty until [`Standby::replenish`] is first called.
    /// Dropping it closes its idle executor's stdin, which then exits.
    pub fn new(executor: impl Into<PathBuf>, allocs: impl Into<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            executor: executor.into(),
            allocs: allocs.into(),
            idle: Mutex::new(None),
        })
    }

    /// Makes an idle executor if there is none, unless called outside a
    /// Tokio runtime (whose reactor a child process needs): then the next
    /// start makes one. A failure to spawn only costs the next start its
    /// head start, so it is logged, not returned.
    pub fn replenish(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.as_mut().is_some_and(alive) {
            return;
        }
        match self.spawn() {
            Ok(child) => *idle = Some(child),
            Err(e) => {
                *idle = None;
                tracing::warn!(
                    executor = %self.executor.display(),
                    error = %e,
                    "cannot start a standby executor; workloads start without one"
                );
            }
        }
    }

    /// The pid of the idle executor, if there is one and it runs: for tests
    /// and diagnostics.
    pub fn idle_pid(&self) -> Option<u32> {
        let mut idle = self.idle.lock().ok()?;
        let child = idle.as_mut()?;
        if alive(child) {
            child.id()
        } else {
            None
        }
    }

    /// Hands `launch` to the idle executor and returns it as the workload's
    /// executor; `None` when none is idle and alive, `launch` is not under
    /// the pool's allocation root, or the hand-over failed: the caller then
    /// spawns one as usual.
    pub(super) async fn hand_over(&self, launch: &Path) -> Option<Child> {
        if !under(launch, &self.allocs) {
            return None;
        }
        let mut child = {
            let mut idle = self.idle.lock().ok()?;
            let mut child = idle.take()?;
            if !alive(&mut child) {
                return None;
            }
            child
        };
        let mut stdin = child.stdin.take()?;
        let handed = async {
            stdin
                .write_all(launch.as_os_str().as_encoded_bytes())
                .await?;
            stdin.shutdown().await
        }
        .await;
        drop(stdin);
        match handed {
            Ok(()) => Some(child),
            Err(e) => {
                tracing::debug!(error = %e, "the standby executor did not take its launch");
                let _ = child.start_kill();
                None
            }
        }
    }

    /// [`Standby::replenish`] once [`REPLENISH_AFTER`] has passed, away from
    /// the start that just took the idle one.
    pub(super) fn replenish_later(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(REPLENISH_AFTER).await;
            pool.replenish();
        });
    }

    fn spawn(&self) -> io::Result<Child> {
        let mut command = Command::new(&self.executor);
        command
            .arg("executor")
            .arg(STANDBY_ARG)
            .arg(ALLOCS_ARG)
            .arg(&self.allocs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::start::detach(&mut command);
        command.spawn()
    }
}

/// Whether `path` lies under `root`, both with symlinks resolved as far
/// as they exist (an allocation directory is canonical; the agent's data
/// directory may be named through a symlink).
pub fn under(path: &Path, root: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolve(path).starts_with(resolve(root))
}

/// Whether `child` has not exited (an error asking counts as exited).
fn alive(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}
