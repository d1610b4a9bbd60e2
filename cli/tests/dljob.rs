//! The `dljob` driver and `herd toy-train` on real processes:
//! - toy-train stopped (SIGUSR1, control file, then SIGTERM) and resumed ends
//!   with the same weights, bit for bit, and the same loss lines as an
//!   uninterrupted run; a corrupt newest checkpoint is skipped;
//! - a dljob job end to end through the CLI on 1 coordinator and 2 agents:
//!   start, status, logs, an agent killed and restarted re-adopts the running
//!   trainer (same pid), stop checkpoints it;
//! - `DljobDriver::checkpoint` against a running `herd toy-train`.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_actors::driver::dljob::{DljobDriver, CHECKPOINT_SUBDIR};
use herd_actors::driver::{Driver, WorkloadSpec, WorkloadState};
use herd_actors::toy_train::checkpoint::{self, DoneRecord, WeightsRecord};
use herd_api::job::TaskSpec;

const STEPS: &str = "60";
const SEED: &str = "9";

fn toy_train(dir: &Path, extra: &[&str]) -> Command {
    let mut command = common::herd_command();
    command
        .args([
            "toy-train",
            "--steps",
            STEPS,
            "--seed",
            SEED,
            "--checkpoint-dir",
        ])
        .arg(dir)
        .args(extra)
        .env_remove("HERD_CHECKPOINT_DIR");
    command
}

/// Runs toy-train to its end: its stdout lines, stderr, and final weights.
fn run_to_end(dir: &Path) -> (Vec<String>, String, WeightsRecord) {
    let out = toy_train(dir, &[]).output().expect("run toy-train");
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let weights = read_json(&dir.join(checkpoint::WEIGHTS)).expect("weights.json");
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        weights,
    )
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A running toy-train whose stdout lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(dir: &Path) -> Self {
        let mut child = toy_train(dir, &["--step-ms", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn toy-train");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// The number of the last step printed.
    fn step(&self) -> u64 {
        self.lines()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("step=")?.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    async fn past(&self, step: u64) {
        until(&format!("step {step}"), Duration::from_secs(10), || {
            (self.step() > step).then_some(())
        })
        .await;
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ckpt-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toy_train_stopped_and_resumed_matches_an_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (full_lines, _, full) = run_to_end(&tmp.path().join("full"));
    assert_eq!(full.step, 60);
    assert_eq!(full_lines.len(), 61, "60 steps and the final line");
    assert!(full_lines[60].starts_with("done step=60 weights="));

    let dir = tmp.path().join("interrupted");
    let run = Running::start(&dir);
    run.past(3).await;

    // SIGUSR1: a checkpoint at the next step boundary.
    run.signal(libc::SIGUSR1);
    let first = until(
        "a checkpoint after SIGUSR1",
        Duration::from_secs(10),
        || checkpoints(&dir).pop(),
    )
    .await;
    let first_step: u64 = first[5..17].parse().expect("step in the name");
    run.past(first_step).await;

    // The control file: a checkpoint, answered with its step.
    std::fs::write(dir.join(checkpoint::REQUEST), "test-1").expect("request");
    let done: DoneRecord = until("checkpoint.done", Duration::from_secs(10), || {
        read_json::<DoneRecord>(&dir.join(checkpoint::DONE)).filter(|d| d.request == "test-1")
    })
    .await;
    assert!(done.step > first_step, "{done:?}");
    assert_eq!(done.checkpoint, checkpoint::file_name(done.step));
    run.past(done.step).await;

    // SIGTERM: a checkpoint, then exit 0.
    run.signal(libc::SIGTERM);
    let mut run = run;
    let status = run.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The reader thread may not have seen the last line yet.
    let interrupted = until("the last line", Duration::from_secs(10), || {
        let lines = run.lines();
        lines
            .last()
            .filter(|l| l.starts_with("stopped at step"))
            .map(|_| lines.clone())
    })
    .await;
    let stopped_at = run.step();
    assert!(stopped_at > done.step && stopped_at < 60, "{stopped_at}");
    assert_eq!(
        checkpoints(&dir).last(),
        Some(&checkpoint::file_name(stopped_at))
    );

    // The newest checkpoint is torn: the run resumes from the control file's.
    let newest = dir.join(checkpoint::file_name(stopped_at));
    let bytes = std::fs::read(&newest).expect("read");
    std::fs::write(&newest, &bytes[..bytes.len() / 3]).expect("tear");
    let (resumed_lines, stderr, resumed) = run_to_end(&dir);
    assert!(stderr.contains("warning: skipping"), "{stderr}");
    assert!(
        stderr.contains(&format!("resuming from {}", done.checkpoint)),
        "{stderr}"
    );
    assert_eq!(resumed.weight_bits, full.weight_bits, "bit for bit");
    assert_eq!(resumed.step, full.step);
    assert_eq!(resumed_lines, full_lines[done.step as usize..].to_vec());
    let before: Vec<String> = interrupted
        .into_iter()
        .filter(|l| l.starts_with("step="))
        .collect();
    assert_eq!(before, full_lines[..stopped_at as usize].to_vec());
}

fn checkpoint_dir_of(pid: u32) -> PathBuf {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"HERD_CHECKPOINT_DIR="))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .expect("HERD_CHECKPOINT_DIR in the trainer's environment")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dljob_runs_and_is_readopted_after_an_agent_restart_and_stops_with_a_checkpoint() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["t1", "t2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["t1", "t2"]).await;

    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train.toml");
    must_cli_ok(&["--addr", &addr, "job", "run", &spec.display().to_string()]);
    let (alloc, node, pid) = until("the trainer running", Duration::from_secs(20), || {
        let allocs = running_allocs(&addr, "train");
        let procs: Vec<_> = agents
            .workloads()
            .into_iter()
            .filter(|w| w.job == "train")
            .collect();
        match (allocs.as_slice(), procs.as_slice()) {
            ([a], [p]) if a["id"] == p.alloc_id.as_str() => {
                Some((p.alloc_id.clone(), p.node.clone(), p.pid))
            }
            _ => None,
        }
    })
    .await;
    let status = json(&addr, &["job", "status", "train"]);
    assert_eq!(status["status"], "running", "{status:#}");
    let ckpt_dir = checkpoint_dir_of(pid);
    assert!(ckpt_dir.starts_with(&agents.agent(&node).expect("agent").data_dir));

    let logs = |min: u64| {
        let out = must_run_cli(&["--addr", &addr, "alloc", "logs", &alloc]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = text.lines().rev().find_map(|l| {
            l.strip_prefix("step=")?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })?;
        (out.status.success() && last > min).then_some(last)
    };
    let seen = until("step lines in the logs", Duration::from_secs(10), || {
        logs(0)
    })
    .await;

    // The agent dies (SIGKILL) and comes back: the same trainer runs on.
    agents.kill_agent(&node).expect("kill agent");
    assert!(alive(pid), "the trainer survives its agent");
    agents.restart(&node).expect("restart agent");
    must_have_ready_nodes(&addr, &["t1", "t2"]).await;
    until(
        "the new agent's adoption reported",
        Duration::from_secs(15),
        || {
            let status = json(&addr, &["alloc", "status", &alloc]);
            let events = status["events"].as_array()?.clone();
            events.iter().any(|e| e["kind"] == "adopted").then_some(())
        },
    )
    .await;
    let later = until("steps after the restart", Duration::from_secs(10), || {
        logs(seen)
    })
    .await;
    assert!(later > seen);
    // Give the new agent time to act on anything else it found, then look again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let procs: Vec<u32> = agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == "train")
        .map(|w| w.pid)
        .collect();
    assert_eq!(procs, [pid], "re-adopted, not restarted or duplicated");
    let allocs = running_allocs(&addr, "train");
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0]["id"], alloc.as_str());
    let stderr = std::fs::read_to_string(ckpt_dir.with_file_name("stderr.log")).expect("stderr");
    assert!(!stderr.contains("resuming"), "never restarted: {stderr}");

    // Stop: SIGTERM through the executor; the trainer checkpoints and exits.
    must_cli_ok(&["--addr", &addr, "job", "stop", "train"]);
    until("the trainer gone", Duration::from_secs(15), || {
        (!alive(pid)).then_some(())
    })
    .await;
    let found = checkpoint::latest(&ckpt_dir).expect("look");
    let resumed = found.resumed.expect("a checkpoint written at stop");
    assert!(resumed.state.step >= later, "{}", resumed.state.step);
    let stdout = std::fs::read_to_string(ckpt_dir.with_file_name("stdout.log")).expect("stdout");
    assert!(
        stdout.contains(&format!("stopped at step {}", resumed.state.step)),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_asks_a_running_trainer_for_checkpoints_and_stops_it_with_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // As the agent holds it: the checkpoint is reached through the trait.
    let driver: std::sync::Arc<dyn Driver> = std::sync::Arc::new(DljobDriver::new(herd_bin()));
    let spec = WorkloadSpec {
        alloc_id: "dl-1".into(),
        generation: 1,
        job: "train".into(),
        task: TaskSpec {
            driver: "dljob".into(),
            command: None,
            args: ["--steps", "100000", "--step-ms", "10"]
                .map(String::from)
                .to_vec(),
            env: Default::default(),
            workdir: None,
            resources: Default::default(),
            config: Default::default(),
        },
        alloc_dir: tmp.path().join("alloc"),
        env: [("HERD_GANG_RANK".to_string(), "0".to_string())].into(),
    };
    driver.check(&spec).expect("check");
    let handle = driver.start(&spec).await.expect("start");
    assert_eq!(handle.driver, "dljob");
    let dir = DljobDriver::checkpoint_dir(&handle).expect("dir");
    assert!(dir.ends_with(CHECKPOINT_SUBDIR) && dir.is_dir());
    let pid = handle.pid.expect("pid");
    assert_eq!(checkpoint_dir_of(pid), dir);

    let first = driver
        .checkpoint(&handle, Duration::from_secs(10))
        .await
        .expect("first checkpoint");
    let second = driver
        .checkpoint(&handle, Duration::from_secs(10))
        .await
        .expect("second checkpoint");
    assert!(second >= first);
    let found = checkpoint::latest(&dir).expect("look");
    assert!(found.resumed.expect("one").state.step >= second);
    assert_eq!(
        driver.state(&handle).await.expect("state"),
        WorkloadState::Running
    );

    let exit = driver
        .stop(&handle, Duration::from_secs(10))
        .await
        .expect("stop");
    assert_eq!(
        exit.code,
        Some(0),
        "SIGTERM: checkpoint, then exit 0: {exit:?}"
    );
    let last = checkpoint::latest(&dir)
        .expect("look")
        .resumed
        .expect("one");
    assert!(last.state.step >= second);
    let err = driver
        .checkpoint(&handle, Duration::from_secs(1))
        .await
        .expect_err("not running");
    assert!(err.to_string().contains("not running"), "{err}");
}
