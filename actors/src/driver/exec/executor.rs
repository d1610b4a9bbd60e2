//! The executor: one small supervisor process per workload (`herd executor
//! --launch <alloc_dir>/launch.json`), like Nomad's. It outlives the agent, so
//! a workload keeps running when the agent dies and its exit status is written
//! down even when no agent is there to see it.
//!
//! It leads its own session (the agent's death or a terminal's hangup does not
//! reach it), starts the task as the leader of a process group of its own,
//! forwards SIGTERM and SIGINT to that group, and when the task ends, kills
//! whatever the task left behind in its group, writes `exit.json` atomically
//! and exits.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

use super::cgroup::{self, Cgroup};
use super::files::{self, ExitRecord, Launch, StartFailure, Started};
use super::procfs;
use crate::driver::ExitInfo;

/// Why the executor failed; the task's own failures are in `exit.json`.
#[derive(Debug, Error)]
#[error("executor for {context}: {message}")]
pub struct ExecutorError {
    /// The allocation, or the launch file when it could not be read.
    pub context: String,
    /// What failed.
    pub message: String,
}

/// Signals forwarded to the task's process group.
const FORWARDED: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Runs the workload described by `launch_path` to its end and returns the
/// executor's exit code: the task's exit code, or 128 + the signal that ended it.
///
/// Must be called from a single-threaded process (the CLI calls it before any
/// runtime starts): it waits with blocked signals, which another thread could
/// otherwise receive and die of.
pub fn run(launch_path: &Path) -> Result<i32, ExecutorError> {
    let launch: Launch = read_launch(launch_path).map_err(|message| ExecutorError {
        context: launch_path.display().to_string(),
        message,
    })?;
    let fail = |message: String| ExecutorError {
        context: format!("allocation {}", launch.alloc_id),
        message,
    };
    single_threaded().map_err(fail)?;
    new_session(&launch.alloc_id);
    let signals = block_signals().map_err(|e| fail(format!("cannot block signals: {e}")))?;

    let (cgroup, limits) = cgroup::setup(&launch.alloc_id, launch.cpu_millis, launch.memory_bytes);
    if let Some(reason) = &limits.reason {
        log(&launch.alloc_id, &format!("warning: {reason}"));
    }
    let task_pid = match spawn(&launch, cgroup.as_ref()) {
        Ok(pid) => pid,
        Err(message) => {
            let failure = StartFailure {
                message: message.clone(),
            };
            if let Err(e) = files::write_atomic(&launch.alloc_dir, files::START_ERROR, &failure) {
                log(&launch.alloc_id, &format!("cannot write start error: {e}"));
            }
            remove_cgroup(&launch.alloc_id, cgroup.as_ref());
            return Err(fail(message));
        }
    };

    let started = record_start(&launch, task_pid, limits);
    let (executor_pid, executor_start_ticks) = match started {
        Ok(started) => (started.executor_pid, started.executor_start_ticks),
        Err(message) => {
            // Nobody would know about this task: do not leave it running.
            let _ = procfs::signal_group(task_pid, libc::SIGKILL);
            let _ = supervise(task_pid, &signals);
            remove_cgroup(&launch.alloc_id, cgroup.as_ref());
            let _ = files::write_atomic(
                &launch.alloc_dir,
                files::START_ERROR,
                &StartFailure {
                    message: message.clone(),
                },
            );
            return Err(fail(message));
        }
    };
    log(&launch.alloc_id, &format!("task started, pid {task_pid}"));

    let status = supervise(task_pid, &signals).map_err(fail)?;
    let exit = exit_info(status, files::now_ms());
    remove_cgroup(&launch.alloc_id, cgroup.as_ref());
    let record = ExitRecord {
        executor_pid,
        executor_start_ticks,
        exit: exit.clone(),
    };
    files::write_atomic(&launch.alloc_dir, files::EXIT, &record)
        .map_err(|e| fail(format!("cannot write {}: {e}", files::EXIT)))?;
    log(
        &launch.alloc_id,
        &format!("task ended: code {:?}, signal {:?}", exit.code, exit.signal),
    );
    Ok(exit_code(&exit))
}

/// `herd executor --standby --allocs DIR`: waits for the agent to hand over
/// a launch (see [`super::standby`]), then runs it as [`run`] does, its own
/// output going to that allocation's `executor.log`. Exits with 0, having
/// done nothing, when the agent closes its stdin without handing anything
/// over (it stopped, or died); refuses a launch outside `allocs`.
///
/// Must be called from a single-threaded process, as [`run`].
pub fn run_standby(allocs: &Path) -> Result<i32, ExecutorError> {
    let mut handed = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut handed)
        .map_err(|e| ExecutorError {
            context: "a standby executor".to_string(),
            message: format!("cannot read the launch from stdin: {e}"),
        })?;
    if handed.is_empty() {
        return Ok(0);
    }
    let launch_path = PathBuf::from(OsString::from_vec(handed));
    if !super::standby::under(&launch_path, allocs) {
        return Err(ExecutorError {
            context: launch_path.display().to_string(),
            message: format!(
                "a standby executor for {} runs nothing outside it",
                allocs.display()
            ),
        });
    }
    if let Some(dir) = launch_path.parent() {
        // Until now stdout and stderr led nowhere (the agent did not know
        // the allocation); a log that cannot be opened leaves them there.
        if let Ok(log) = files::open_append(dir, files::EXECUTOR_LOG) {
            // SAFETY: dup2 on a descriptor this process owns; nothing has
            // been written to stdout or stderr yet.
            unsafe {
                libc::dup2(log.as_raw_fd(), libc::STDOUT_FILENO);
                libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO);
            }
        }
    }
    run(&launch_path)
}

/// How a `waitpid` status ended the task.
pub fn exit_info(status: libc::c_int, finished_at_ms: u64) -> ExitInfo {
    let mut info = ExitInfo {
        code: None,
        signal: None,
        finished_at_ms,
        message: None,
    };
    if libc::WIFEXITED(status) {
        info.code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        info.signal = Some(libc::WTERMSIG(status));
        if libc::WCOREDUMP(status) {
            info.message = Some("core dumped".to_string());
        }
    }
    info
}

/// The shell convention: the code, or 128 + the signal.
fn exit_code(exit: &ExitInfo) -> i32 {
    exit.code.or(exit.signal.map(|s| 128 + s)).unwrap_or(255)
}

fn read_launch(path: &Path) -> Result<Launch, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("cannot parse it: {e}"))
}

fn log(alloc: &str, message: &str) {
    // stderr is the allocation's executor.log.
    eprintln!("{} herd executor [{alloc}]: {message}", files::now_ms());
}

fn single_threaded() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    match threads {
        Some("1") => Ok(()),
        other => Err(format!(
            "must run in a single-threaded process, found {other:?} threads"
        )),
    }
}

/// Leads a new session, unless the driver already made it one (then setsid
/// fails with EPERM and there is nothing to do).
fn new_session(alloc: &str) {
    // SAFETY: setsid, getsid and getpid have no memory-safety preconditions.
    unsafe {
        if libc::setsid() < 0 && libc::getsid(0) != libc::getpid() {
            let e = io::Error::last_os_error();
            log(
                alloc,
                &format!("warning: cannot lead a new session ({e}); the caller's session can signal this workload"),
            );
        }
    }
}

/// Blocks the signals the executor waits for, after restoring default
/// dispositions: ignored ones (`nohup`, an agent ignoring SIGCHLD) would be
/// inherited by the task, or make the task's exit status vanish.
fn block_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: SIG_DFL is a valid disposition; the set is initialised by
    // sigemptyset before use.
    unsafe {
        for signal in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut set, signal);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Spawns the task; its pid, or the error to report. The task starts with no
/// signal blocked, default dispositions for the signals the executor handles,
/// and (where limits apply) inside its cgroup from before its first instruction.
fn spawn(launch: &Launch, cgroup: Option<&Cgroup>) -> Result<u32, String> {
    let open = |name: &str| -> Result<File, String> {
        files::open_append(&launch.alloc_dir, name)
            .map_err(|e| format!("cannot open {}: {e}", launch.alloc_dir.join(name).display()))
    };
    let mut command = Command::new(&launch.command);
    command
        .args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .current_dir(&launch.workdir)
        .stdin(Stdio::null())
        .stdout(open(files::STDOUT)?)
        .stderr(open(files::STDERR)?)
        .process_group(0);
    let cgroup = cgroup.cloned();
    let run_as = launch.run_as.clone();
    // SAFETY: the set is initialised by sigemptyset before use.
    let empty = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    // SAFETY: between fork and exec only async-signal-safe calls: sigprocmask,
    // open/write/close in join_self, and setgroups/setgid/setuid/prctl in
    // drop_privileges.
    unsafe {
        command.pre_exec(move || {
            // std passes the parent's mask on; ours blocks what we wait for,
            // and a task that cannot receive SIGTERM could not be stopped.
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The cgroup is joined while still privileged; only then the
            // task becomes the exec user, for good.
            if let Some(cgroup) = &cgroup {
                cgroup.join_self()?;
            }
            match &run_as {
                Some(user) => user.drop_privileges(),
                None => Ok(()),
            }
        });
    }
    let user = match &launch.run_as {
        Some(user) => format!(" as user {} (uid {})", user.user, user.uid),
        None => String::new(),
    };
    command.spawn().map(|child| child.id()).map_err(|e| {
        format!(
            "cannot spawn {:?} in {}{user}: {e}",
            launch.command,
            launch.workdir.display()
        )
    })
}

fn record_start(launch: &Launch, task_pid: u32, limits: files::Limits) -> Result<Started, String> {
    let me = std::process::id();
    let ticks = |pid: u32| match procfs::stat(pid) {
        Ok(Some(stat)) => Ok(stat.start_ticks),
        Ok(None) => Err(format!("/proc/{pid}/stat is missing")),
        Err(e) => Err(format!("cannot read /proc/{pid}/stat: {e}")),
    };
    let started = Started {
        generation: launch.generation,
        executor_pid: me,
        executor_start_ticks: ticks(me)?,
        // Not reaped yet, so its /proc entry is there even if it already exited.
        task_pid,
        task_start_ticks: ticks(task_pid)?,
        boot_id: procfs::boot_id(),
        started_at_ms: files::now_ms(),
        limits,
    };
    files::write_atomic(&launch.alloc_dir, files::STARTED, &started)
        .map_err(|e| format!("cannot write {}: {e}", files::STARTED))?;
    Ok(started)
}

/// Waits for the task to end, forwarding signals meanwhile; then kills what
/// is left of its process group and reaps it. Returns the `waitpid` status.
fn supervise(task_pid: u32, signals: &libc::sigset_t) -> Result<libc::c_int, String> {
    let pid = task_pid as libc::pid_t;
    loop {
        // Has it ended? WNOWAIT leaves it unreaped: its pid, and with it the
        // process group id, cannot be reused until we reap it below.
        // SAFETY: `info` is a zeroed siginfo_t that waitid fills.
        let ended = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                task_pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("cannot wait for the task (pid {task_pid}): {e}"));
            }
            info.si_pid() != 0
        };
        if ended {
            break;
        }
        // SAFETY: `signals` was initialised by block_signals.
        let signal = unsafe { libc::sigwaitinfo(signals, std::ptr::null_mut()) };
        if FORWARDED.contains(&signal) {
            // The group, so that a shell's children hear it too.
            let _ = procfs::signal_group(task_pid, signal);
        }
        // SIGCHLD, or EINTR: look again.
    }
    let _ = procfs::signal_group(task_pid, libc::SIGKILL);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid c_int.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("cannot reap the task (pid {task_pid}): {e}"));
        }
    }
}

/// Kills what is left in the cgroup (processes that left the task's group)
/// and removes it, retrying while the killed processes go away.
fn remove_cgroup(alloc: &str, cgroup: Option<&Cgroup>) {
    let Some(cgroup) = cgroup else { return };
    let _ = std::fs::write(cgroup.dir.join("cgroup.kill"), "1");
    let mut last = None;
    for _ in 0..50 {
        match cgroup.remove() {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(e) = last {
        log(
            alloc,
            &format!("warning: cannot remove {}: {e}", cgroup.dir.display()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_become_codes_or_signals() {
        let exited = exit_info(3 << 8, 7);
        assert_eq!(
            (exited.code, exited.signal, exited.finished_at_ms),
            (Some(3), None, 7)
        );
        assert_eq!(exit_code(&exited), 3);
        let killed = exit_info(libc::SIGKILL, 0);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        assert_eq!(killed.message, None);
        assert_eq!(exit_code(&killed), 137);
        let dumped = exit_info(libc::SIGSEGV | 0x80, 0);
        assert_eq!(dumped.signal, Some(libc::SIGSEGV));
        assert_eq!(dumped.message.as_deref(), Some("core dumped"));
    }

    #[test]
    fn an_unreadable_launch_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("launch.json");
        let err = run(&path).expect_err("no file");
        assert!(err.to_string().contains("launch.json"), "{err}");
        std::fs::write(&path, "{").expect("write");
        let err = run(&path).expect_err("bad json");
        assert!(err.to_string().contains("cannot parse"), "{err}");
    }
}
