//! The exec driver with its real executor (this package's `herd` binary):
//! exit codes, logs, signals and grace periods, environment, start failures,
//! and re-adoption of a workload by a driver that did not start it.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_actors::driver::exec::standby::Standby;
use herd_actors::driver::exec::{procfs, ExecDriver, KILLED, LOST};
use herd_actors::driver::{
    Driver, DriverError, ExitInfo, WorkloadHandle, WorkloadSpec, WorkloadState,
};
use herd_api::job::TaskSpec;
use herd_api::resources::Resources;

use common::until;

/// Bound on anything that should take a moment, so a regression fails
/// instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

fn driver() -> ExecDriver {
    ExecDriver::new(env!("CARGO_BIN_EXE_herd"))
}

fn spec(dir: &Path, command: &str, args: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        alloc_id: format!(
            "test-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ),
        generation: 1,
        job: "exec-test".to_string(),
        task: TaskSpec {
            driver: "exec".to_string(),
            command: Some(command.to_string()),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            workdir: None,
            resources: Resources {
                cpu_millis: 500,
                memory_bytes: 64 << 20,
                gpus: 0,
                gpu_model: None,
            },
            config: Default::default(),
        },
        alloc_dir: dir.join("alloc"),
        env: BTreeMap::new(),
    }
}

fn sh(dir: &Path, script: &str) -> WorkloadSpec {
    spec(dir, "/bin/sh", &["-c", script])
}

fn detail_u64(handle: &WorkloadHandle, field: &str) -> u64 {
    handle.detail[field]
        .as_u64()
        .unwrap_or_else(|| panic!("detail.{field} in {:?}", handle.detail))
}

fn executor_pid(handle: &WorkloadHandle) -> u32 {
    detail_u64(handle, "executor_pid") as u32
}

fn task_pid(handle: &WorkloadHandle) -> u32 {
    handle.pid.expect("the handle names the task's pid")
}

/// Live processes (zombies excluded) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    scan_proc(|pid, _| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

/// Live processes (zombies excluded) in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    scan_proc(|_, stat| stat.pgrp == pgid as i32)
}

fn scan_proc(mut keep: impl FnMut(u32, &procfs::Stat) -> bool) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("list /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(Some(stat)) = procfs::stat(pid) {
            if stat.running() && keep(pid, &stat) {
                found.push(pid);
            }
        }
    }
    found
}

async fn wait(driver: &ExecDriver, handle: &WorkloadHandle) -> ExitInfo {
    tokio::time::timeout(PATIENCE, driver.wait(handle))
        .await
        .expect("the workload ends in time")
        .expect("wait")
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[tokio::test]
async fn exit_code_stdout_and_stderr_are_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let handle = driver
        .start(&sh(tmp.path(), "echo out; echo err >&2; exit 3"))
        .await
        .expect("start");
    assert_eq!(handle.driver, "exec");
    let exit = wait(&driver, &handle).await;
    assert_eq!((exit.code, exit.signal), (Some(3), None), "{exit:?}");
    assert!(exit.finished_at_ms >= handle.started_at_ms, "{exit:?}");
    let (stdout, stderr) = ExecDriver::log_paths(&handle).expect("log paths");
    assert_eq!(read(stdout), "out\n");
    assert_eq!(read(stderr), "err\n");
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Exited(exit.clone())
    );
    // Stopping what already ended just reports how it ended.
    let stopped = driver
        .stop(&handle, Duration::from_secs(1))
        .await
        .expect("stop");
    assert_eq!(stopped, exit);
}

/// The pid of `standby`'s idle executor, once it has one.
async fn idle_executor(standby: &Standby) -> u32 {
    until("an idle executor", PATIENCE, || standby.idle_pid()).await
}

/// Whether `pid` is gone or a zombie.
fn ended(pid: u32) -> bool {
    !procfs::stat(pid)
        .ok()
        .flatten()
        .is_some_and(|s| s.running())
}

#[tokio::test]
async fn a_standby_executor_runs_the_next_start_and_another_is_made_for_the_one_after() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let standby = Standby::new(env!("CARGO_BIN_EXE_herd"), tmp.path());
    standby.replenish();
    let waiting = idle_executor(&standby).await;
    let driver = driver().with_standby(Some(standby.clone()));

    // The waiting executor takes the first start: it is the handle's executor,
    // leads its own session, and logs to the allocation's executor.log.
    let first = sh(&tmp.path().join("one"), "echo first; sleep 30");
    let handle = driver.start(&first).await.expect("start");
    assert_eq!(executor_pid(&handle), waiting, "the standby ran it");
    let executor = procfs::stat(waiting).expect("stat").expect("it runs");
    assert_eq!(executor.session, waiting as i32);
    // It logs the start just after reporting it.
    until("the executor's log line", PATIENCE, || {
        fs::read_to_string(first.alloc_dir.join("executor.log"))
            .is_ok_and(|log| log.contains("task started"))
            .then_some(())
    })
    .await;
    let (stdout, _) = ExecDriver::log_paths(&handle).expect("log paths");
    until("the task's output", PATIENCE, || {
        (fs::read_to_string(&stdout).is_ok_and(|s| s == "first\n")).then_some(())
    })
    .await;

    // Another waits for the next start, made after the first was handed.
    let next = until("a new idle executor", PATIENCE, || {
        standby.idle_pid().filter(|pid| *pid != waiting)
    })
    .await;
    let second = sh(&tmp.path().join("two"), "exit 7");
    let ended_handle = driver.start(&second).await.expect("start");
    assert_eq!(executor_pid(&ended_handle), next);
    let exit = wait(&driver, &ended_handle).await;
    assert_eq!(exit.code, Some(7), "{exit:?}");

    // One killed while it waits is not handed anything: the start spawns
    // an executor of its own and runs all the same.
    let doomed = idle_executor(&standby).await;
    // SAFETY: a pid this test's pool made and still holds.
    unsafe {
        libc::kill(doomed as i32, libc::SIGKILL);
    }
    until("the killed executor to end", PATIENCE, || {
        ended(doomed).then_some(())
    })
    .await;
    let third = sh(&tmp.path().join("three"), "exit 0");
    let third_handle = driver.start(&third).await.expect("start");
    assert_ne!(executor_pid(&third_handle), doomed);
    assert_eq!(wait(&driver, &third_handle).await.code, Some(0));

    // A launch outside the pool's root is not handed to the idle one.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let idle = idle_executor(&standby).await;
    let outside = sh(elsewhere.path(), "exit 0");
    let outside_handle = driver.start(&outside).await.expect("start");
    assert_ne!(executor_pid(&outside_handle), idle);
    assert_eq!(standby.idle_pid(), Some(idle), "still waiting");
    assert_eq!(wait(&driver, &outside_handle).await.code, Some(0));

    driver
        .stop(&handle, Duration::from_secs(2))
        .await
        .expect("stop");
    // Dropping the pool closes the idle executor's stdin: it exits having
    // run nothing.
    let last = idle_executor(&standby).await;
    drop(driver);
    drop(standby);
    until("the idle executor to exit", PATIENCE, || {
        ended(last).then_some(())
    })
    .await;
}

/// `herd executor --standby --allocs ROOT` handed `input` on its stdin.
fn standby_handed(root: &Path, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("executor")
        .arg("--standby")
        .arg("--allocs")
        .arg(root)
        .current_dir(root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run herd executor --standby");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("hand it over");
    drop(stdin);
    child.wait_with_output().expect("its end")
}

#[test]
fn a_standby_executor_runs_nothing_unless_handed_a_launch_under_its_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Its agent gone before handing anything over: it exits, quietly.
    let output = standby_handed(tmp.path(), b"");
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stdout.is_empty() && output.stderr.is_empty(),
        "{output:?}"
    );
    assert_eq!(fs::read_dir(tmp.path()).expect("list").count(), 0);

    // A launch outside its root is refused, and nothing is written there.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let launch = elsewhere.path().join("launch.json");
    fs::write(&launch, b"{}").expect("write");
    let output = standby_handed(tmp.path(), launch.as_os_str().as_encoded_bytes());
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("runs nothing outside"), "{stderr}");
    assert_eq!(fs::read_dir(elsewhere.path()).expect("list").count(), 1);
}

#[tokio::test]
async fn stop_ends_a_running_task_by_sigterm_within_the_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let spec = spec(tmp.path(), "sleep", &["30"]);
    let handle = driver.start(&spec).await.expect("start");
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Running
    );
    // The executor leads its own session, away from ours; the task leads its group.
    let executor = procfs::stat(executor_pid(&handle))
        .expect("stat")
        .expect("executor runs");
    let ours = procfs::stat(std::process::id())
        .expect("stat")
        .expect("we run");
    assert_eq!(executor.session, executor_pid(&handle) as i32);
    assert_ne!(executor.session, ours.session);
    let task = procfs::stat(task_pid(&handle))
        .expect("stat")
        .expect("task runs");
    assert_eq!(task.pgrp, task_pid(&handle) as i32);

    // Limits: enforced through cgroup v2 where the host allows, else said so.
    let limits = &handle.detail["limits"];
    let cgroups = read(format!("/proc/{}/cgroup", task_pid(&handle)));
    if limits["enforced"] == true {
        assert!(
            cgroups.contains(&format!("/herd/{}", spec.alloc_id)),
            "{cgroups}"
        );
    } else {
        let reason = limits["reason"].as_str().expect("a reason");
        assert!(reason.contains("not enforced"), "{reason}");
        let log = read(spec.alloc_dir.join("executor.log"));
        assert!(log.contains(reason), "the executor logs it: {log}");
    }

    let grace = Duration::from_secs(2);
    let begun = Instant::now();
    let exit = driver.stop(&handle, grace).await.expect("stop");
    assert!(begun.elapsed() < grace, "took {:?}", begun.elapsed());
    assert_eq!((exit.code, exit.signal), (None, Some(15)), "{exit:?}");
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Exited(exit)
    );
    assert!(group_members(task_pid(&handle)).is_empty());
    let dir = tmp.path().display().to_string();
    until("the executor to exit", PATIENCE, || {
        (processes_mentioning(&dir).is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_task_ignoring_sigterm_is_killed_after_the_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let handle = driver
        .start(&sh(tmp.path(), "trap '' TERM; echo ready; sleep 30"))
        .await
        .expect("start");
    let (stdout, _) = ExecDriver::log_paths(&handle).expect("log paths");
    until("the trap to be set", PATIENCE, || {
        (fs::read_to_string(&stdout).is_ok_and(|s| s.contains("ready"))).then_some(())
    })
    .await;
    let grace = Duration::from_secs(1);
    let begun = Instant::now();
    let exit = driver.stop(&handle, grace).await.expect("stop");
    let took = begun.elapsed();
    assert!(
        took >= grace && took < grace + Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!((exit.code, exit.signal), (None, Some(9)), "{exit:?}");
    assert_eq!(exit.message.as_deref(), Some(KILLED));
    // The shell's `sleep` child, in the same group, went too.
    assert!(group_members(task_pid(&handle)).is_empty());
}

#[tokio::test]
async fn an_executor_unable_to_record_the_kill_is_killed_and_the_exit_written_for_it() {
    const SIGSTOP: i32 = 19; // Linux
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver().with_kill_wait(Duration::from_millis(300));
    let handle = driver
        .start(&spec(tmp.path(), "sleep", &["30"]))
        .await
        .expect("start");
    let executor = executor_pid(&handle);
    procfs::signal_process(executor, SIGSTOP).expect("stop the executor");
    until("the executor to be stopped", PATIENCE, || {
        (procfs::stat(executor).is_ok_and(|s| s.is_some_and(|s| s.state == 'T'))).then_some(())
    })
    .await;
    let exit = driver
        .stop(&handle, Duration::from_millis(200))
        .await
        .expect("stop");
    assert_eq!((exit.code, exit.signal), (None, Some(9)), "{exit:?}");
    assert_eq!(exit.message.as_deref(), Some(KILLED));
    // Written down for it: a later look agrees.
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Exited(exit)
    );
    assert!(group_members(task_pid(&handle)).is_empty());
    assert!(procfs::stat(executor).is_ok_and(|s| s.is_none_or(|s| !s.running())));
}

#[tokio::test]
async fn a_missing_command_fails_start_with_the_os_error_and_leaves_nothing_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = spec(tmp.path(), "herd-test-no-such-command", &[]);
    let err = driver().start(&spec).await.expect_err("cannot start");
    match &err {
        DriverError::Start { alloc, message } => {
            assert_eq!(alloc, &spec.alloc_id);
            assert!(message.contains("No such file or directory"), "{message}");
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    assert!(processes_mentioning(&tmp.path().display().to_string()).is_empty());
    assert!(!spec.alloc_dir.join("started.json").exists());
}

#[tokio::test]
async fn env_is_rebuilt_from_scratch_and_workdir_defaults_to_the_alloc_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let mut env_spec = spec(tmp.path(), "env", &[]);
    env_spec.task.env = [("FOO", "task"), ("SHARED", "task")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env_spec.env = [("BAR", "agent"), ("SHARED", "agent")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handle = driver.start(&env_spec).await.expect("start");
    assert_eq!(wait(&driver, &handle).await.code, Some(0));
    let alloc_dir = fs::canonicalize(&env_spec.alloc_dir).expect("alloc dir");
    let printed: BTreeMap<String, String> = read(alloc_dir.join("stdout.log"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let keys: BTreeSet<&str> = printed.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "BAR",
        "FOO",
        "HERD_ALLOC_DIR",
        "HERD_ALLOC_ID",
        "HERD_JOB",
        "PATH",
        "SHARED",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected, "only PATH comes from the agent");
    assert_eq!(
        printed["SHARED"], "agent",
        "the agent's env wins over the task's"
    );
    assert_eq!(printed["FOO"], "task");
    assert_eq!(printed["HERD_ALLOC_ID"], env_spec.alloc_id);
    assert_eq!(PathBuf::from(&printed["HERD_ALLOC_DIR"]), alloc_dir);

    // Working directory: the alloc dir by default, else the task's.
    let default_dir = tmp.path().join("default");
    fs::create_dir(&default_dir).expect("mkdir");
    let handle = driver
        .start(&sh(&default_dir, "pwd -P"))
        .await
        .expect("start");
    wait(&driver, &handle).await;
    let alloc_dir = fs::canonicalize(default_dir.join("alloc")).expect("alloc dir");
    assert_eq!(
        read(alloc_dir.join("stdout.log")).trim(),
        alloc_dir.display().to_string()
    );

    let work = tempfile::tempdir().expect("tempdir");
    let work_path = fs::canonicalize(work.path()).expect("canonical");
    let other = tmp.path().join("other");
    fs::create_dir(&other).expect("mkdir");
    let mut in_work = sh(&other, "pwd -P");
    in_work.task.workdir = Some(work_path.display().to_string());
    let handle = driver.start(&in_work).await.expect("start");
    wait(&driver, &handle).await;
    let (stdout, _) = ExecDriver::log_paths(&handle).expect("log paths");
    assert_eq!(read(stdout).trim(), work_path.display().to_string());
}

#[tokio::test]
async fn a_new_driver_adopts_a_workload_from_its_serialised_handle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = driver();
    let handle = first
        .start(&sh(tmp.path(), "sleep 1; exit 7"))
        .await
        .expect("start");
    let json = serde_json::to_string(&handle).expect("serialise");
    drop(first);
    drop(handle);

    // As a restarted agent would: a fresh driver and the persisted handle only.
    let handle: WorkloadHandle = serde_json::from_str(&json).expect("deserialise");
    let second = driver();
    let exit = wait(&second, &handle).await;
    assert_eq!((exit.code, exit.signal), (Some(7), None), "{exit:?}");
}

#[tokio::test]
async fn starting_the_same_generation_again_adopts_it_instead_of_starting_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let spec = spec(tmp.path(), "sleep", &["30"]);
    let handle = driver.start(&spec).await.expect("start");
    let again = driver.start(&spec).await.expect("second start");
    assert_eq!(again, handle, "the running workload's own handle");
    let dir = tmp.path().display().to_string();
    assert_eq!(
        processes_mentioning(&dir),
        vec![executor_pid(&handle)],
        "one executor"
    );

    let mut next = spec.clone();
    next.generation = 2;
    let err = driver
        .start(&next)
        .await
        .expect_err("generation 1 still runs");
    assert!(err.to_string().contains("generation 1 still runs"), "{err}");

    let exit = driver
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(exit.signal, Some(15));
}

#[tokio::test]
async fn a_running_workload_is_recovered_from_its_directory_without_a_handle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let spec = spec(tmp.path(), "sleep", &["30"]);
    assert_eq!(
        driver.recover(&spec).await.expect("recover"),
        None,
        "nothing ran yet"
    );
    let handle = driver.start(&spec).await.expect("start");
    // An agent that died before persisting `handle` finds it again from the
    // executor's own report, without starting anything.
    let recovered = driver.recover(&spec).await.expect("recover");
    assert_eq!(recovered.as_ref(), Some(&handle));
    let dir = tmp.path().display().to_string();
    assert_eq!(processes_mentioning(&dir), vec![executor_pid(&handle)]);
    driver
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
    assert_eq!(
        driver.recover(&spec).await.expect("recover"),
        None,
        "an ended workload is not recovered"
    );
}

#[tokio::test]
async fn a_recycled_pid_is_reported_lost_not_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let handle = driver
        .start(&spec(tmp.path(), "sleep", &["30"]))
        .await
        .expect("start");

    // Same pid, another start time: what a recycled pid looks like.
    let mut recycled = handle.clone();
    recycled.detail["executor_start_ticks"] =
        (detail_u64(&handle, "executor_start_ticks") + 1).into();
    assert_eq!(
        driver.state(&recycled).await.expect("state"),
        WorkloadState::Lost(LOST.to_string())
    );
    // A live unrelated process under the recorded pid: init, which started
    // long before (this test's own pid could share the executor's start tick).
    let mut unrelated = handle.clone();
    unrelated.detail["executor_pid"] = 1.into();
    let exit = wait(&driver, &unrelated).await;
    assert_eq!(
        (exit.code, exit.signal, exit.finished_at_ms),
        (None, None, 0)
    );
    assert_eq!(exit.message, Some(format!("lost: {LOST}")));

    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Running
    );
    driver
        .stop(&handle, Duration::from_secs(5))
        .await
        .expect("stop");
}

#[tokio::test]
async fn an_executor_killed_by_sigkill_is_lost_and_stop_kills_its_orphan() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    let handle = driver
        .start(&spec(tmp.path(), "sleep", &["30"]))
        .await
        .expect("start");
    procfs::signal_process(executor_pid(&handle), 9).expect("kill the executor");
    until("the executor to die", PATIENCE, || {
        (procfs::stat(executor_pid(&handle)).is_ok_and(|s| s.is_none_or(|s| !s.running())))
            .then_some(())
    })
    .await;
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Lost(LOST.to_string())
    );
    assert_eq!(
        group_members(task_pid(&handle)),
        vec![task_pid(&handle)],
        "the task runs on"
    );
    let exit = driver
        .stop(&handle, Duration::from_secs(1))
        .await
        .expect("stop");
    assert_eq!((exit.code, exit.signal), (None, None));
    let message = exit.message.unwrap_or_default();
    assert!(
        message.starts_with("lost:") && message.contains("orphaned task was killed"),
        "{message}"
    );
    until("the orphan to die", PATIENCE, || {
        (group_members(task_pid(&handle)).is_empty()).then_some(())
    })
    .await;
}

#[test]
fn check_refuses_what_cannot_run_here() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let driver = driver();
    driver
        .check(&spec(tmp.path(), "sleep", &["1"]))
        .expect("a command in PATH");
    assert!(
        tmp.path().join("alloc").is_dir(),
        "check creates the allocation directory"
    );

    let unsupported = |spec: WorkloadSpec, needle: &str| match driver.check(&spec) {
        Err(DriverError::Unsupported { alloc, message }) => {
            assert_eq!(alloc, spec.alloc_id);
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        other => panic!("expected Unsupported({needle}), got {other:?}"),
    };
    let mut no_command = spec(tmp.path(), "x", &[]);
    no_command.task.command = None;
    unsupported(no_command, "needs a command");
    unsupported(
        spec(tmp.path(), "/nonexistent/bin/tool", &[]),
        "No such file or directory",
    );
    let plain = tmp.path().join("not-executable");
    fs::write(&plain, "#!/bin/sh\n").expect("write");
    unsupported(
        spec(tmp.path(), &plain.display().to_string(), &[]),
        "not an executable file",
    );
    let mut relative = spec(tmp.path(), "sleep", &[]);
    relative.task.workdir = Some("relative/dir".to_string());
    unsupported(relative, "working directory");
    let file_as_dir = spec(&plain, "sleep", &[]);
    unsupported(file_as_dir, "cannot create the allocation directory");
}
