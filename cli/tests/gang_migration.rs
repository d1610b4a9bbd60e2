//! A training gang (two `herd toy-train` learners, `gang = true`) moved
//! live between node agents: real processes on loopback, a coordinator and
//! agents m1, m2, m3, the two members on two of them.
//!
//! - `herd alloc migrate` on one member is refused (exit 2), pointing at
//!   `herd job migrate`;
//! - `herd job migrate train --to A,B` stops both learners at one common
//!   step, moves both, and switches both over in one entry: each member's
//!   final weights equal an uninterrupted run's bit for bit, each step ran
//!   once, never two copies of a member at once (through /proc);
//! - a member's target agent killed mid-move aborts the whole group: both
//!   learners resume at home from the same step;
//! - draining the node of one member moves the whole gang.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::training::{reference_weights, steps_in};
use common::*;
use herd_actors::toy_train::checkpoint::{self, WeightsRecord};
use herd_node::migrate::source::FAULT_HOLD_ENV;
use serde_json::Value;

const STEPS: u64 = 900;
const ARGS: [&str; 8] = [
    "--steps",
    "900",
    "--seed",
    "23",
    "--step-ms",
    "20",
    "--checkpoint-every",
    "50",
];
const NODES: [&str; 3] = ["m1", "m2", "m3"];

/// One member of the gang, as placed.
#[derive(Debug, Clone)]
struct Member {
    alloc: String,
    node: String,
}

/// Three agents and the gang running on two of them, both learners past
/// their first checkpoint.
struct Gang {
    _cluster: herd_chaos::process_cluster::ProcessCluster,
    addr: String,
    agents: herd_chaos::agents::AgentSet,
    /// By rank.
    members: Vec<Member>,
    /// The node neither member runs on.
    free: String,
    _dir: tempfile::TempDir,
}

impl Gang {
    fn data_dir(&self, node: &str) -> PathBuf {
        self.agents.agent(node).expect("agent").data_dir.clone()
    }

    /// Member `rank`'s allocation directory on `node`.
    fn alloc_dir(&self, rank: usize, node: &str) -> PathBuf {
        self.data_dir(node)
            .join("allocs")
            .join(&self.members[rank].alloc)
    }

    /// Member 0 to the free node, member 1 to member 0's node: every
    /// member leaves its node, and only member 0's target takes no part
    /// as a source.
    fn targets(&self) -> [String; 2] {
        [self.free.clone(), self.members[0].node.clone()]
    }
}

async fn gang() -> Gang {
    let (cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    for name in NODES {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &NODES).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ARGS.iter().map(|a| format!("{a:?}")).collect();
    let spec = write_spec(
        dir.path(),
        "train",
        &format!(
            "name = \"train\"\ntype = \"batch\"\ncount = 2\ngang = true\nspread = \"node\"\n[task]\ndriver = \"dljob\"\nargs = [{}]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
            args.join(", ")
        ),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let members = until("both learners running", Duration::from_secs(30), || {
        let allocs = running_allocs(&addr, "train");
        if allocs.len() != 2 {
            return None;
        }
        let mut by_rank: Vec<(u64, Member)> = allocs
            .iter()
            .map(|a| {
                Some((
                    a["instance"].as_u64()?,
                    Member {
                        alloc: a["id"].as_str()?.to_string(),
                        node: a["node"].as_str()?.to_string(),
                    },
                ))
            })
            .collect::<Option<_>>()?;
        by_rank.sort_by_key(|(rank, _)| *rank);
        Some(by_rank.into_iter().map(|(_, m)| m).collect::<Vec<_>>())
    })
    .await;
    assert_ne!(members[0].node, members[1].node, "spread over nodes");
    let free = NODES
        .iter()
        .find(|n| members.iter().all(|m| m.node != **n))
        .expect("a free node")
        .to_string();
    let g = Gang {
        _cluster: cluster,
        addr,
        agents,
        members,
        free,
        _dir: dir,
    };
    for rank in 0..2 {
        let log = g.alloc_dir(rank, &g.members[rank].node).join("stdout.log");
        until(
            "steps past the first checkpoint",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).ok()?;
                (steps_in(&text).last().copied()? > 60).then_some(())
            },
        )
        .await;
    }
    g
}

/// How many learner processes of each member run now (through /proc).
fn copies(g: &Gang) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for w in g.agents.workloads() {
        if w.job == "train" {
            *count.entry(w.alloc_id).or_insert(0) += 1;
        }
    }
    count
}

/// Notes the most copies of any one member seen so far.
fn watch(g: &Gang, most: &mut usize) {
    *most = (*most).max(copies(g).values().copied().max().unwrap_or(0));
}

/// Waits for the job to complete, watching copies meanwhile.
async fn until_complete(g: &Gang, most: &mut usize) {
    let started = std::time::Instant::now();
    loop {
        watch(g, most);
        if json(&g.addr, &["job", "status", "train"])["status"] == "complete" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every member's migration record, by rank.
fn records(g: &Gang) -> Vec<Value> {
    g.members
        .iter()
        .map(|m| {
            json(&g.addr, &["migration", "list", "--alloc", &m.alloc])
                .as_array()
                .and_then(|l| l.last().cloned())
                .unwrap_or(Value::Null)
        })
        .collect()
}

/// Waits until every member's migration is in `phase`, watching copies.
async fn until_all(g: &Gang, phase: &str, most: &mut usize, limit: Duration) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        watch(g, most);
        let now = records(g);
        if now.iter().all(|m| m["phase"] == phase) {
            return now;
        }
        assert!(
            started.elapsed() < limit,
            "the gang's migrations never all reached {phase}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The step at which a learner stopped for a move, from its log.
fn stopped_at(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("stopped at step ")?.trim().parse().ok())
        .collect()
}

/// Every step ran once over `logs` and the weights are those of a run
/// never moved.
fn ends_as_if_never_moved(logs: &[PathBuf], weights: &Path) {
    let mut all = Vec::new();
    for log in logs {
        all.extend(steps_in(&std::fs::read_to_string(log).expect("log")));
    }
    assert_eq!(all, (1..=STEPS).collect::<Vec<_>>(), "steps of {logs:?}");
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = reference_weights(reference_dir.path(), &ARGS);
    let text = std::fs::read_to_string(weights).expect("weights");
    let moved: WeightsRecord = serde_json::from_str(&text).expect("weights json");
    assert_eq!(moved.step, STEPS);
    assert_eq!(
        moved.weight_bits, reference.weight_bits,
        "{moved:?} vs {reference:?}"
    );
}

/// Runs the CLI in a thread while the learners are watched through /proc.
async fn run_watched(g: &Gang, args: Vec<String>, most: &mut usize) -> std::process::Output {
    let cli = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must_run_cli(&args)
    });
    while !cli.is_finished() {
        watch(g, most);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cli.join().expect("cli thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_moves_together_from_one_step_and_ends_as_if_never_moved() {
    let g = gang().await;
    let [to0, to1] = g.targets();

    // A member alone cannot move.
    let alone = must_run_cli(&[
        "--addr",
        &g.addr,
        "alloc",
        "migrate",
        &g.members[0].alloc,
        "--to",
        &to0,
    ]);
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("herd job migrate train"), "{stderr}");
    assert!(
        json(&g.addr, &["migration", "list"])
            .as_array()
            .is_some_and(Vec::is_empty),
        "a refused move left a record"
    );

    let mut most = 0;
    let to = format!("{to0},{to1}");
    let moved = run_watched(
        &g,
        [
            "--addr", &g.addr, "job", "migrate", "train", "--to", &to, "--wait",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
        &mut most,
    )
    .await;
    let out = String::from_utf8_lossy(&moved.stdout);
    assert!(
        moved.status.success(),
        "job migrate: {out}\n{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(out.contains("completed"), "{out}");

    let done = records(&g);
    let group = done[0]["group"].as_str().expect("a group").to_string();
    let step = done[0]["stop_step"].as_u64().expect("a common step");
    for (rank, (m, target)) in done.iter().zip([&to0, &to1]).enumerate() {
        assert_eq!(m["phase"], "completed", "{m:#}");
        assert_eq!(m["group"], group.as_str(), "{m:#}");
        assert_eq!(m["stop_step"], step, "{m:#}");
        assert_eq!(m["source"], g.members[rank].node.as_str(), "{m:#}");
        assert_eq!(m["target"], target.as_str(), "{m:#}");
        let status = json(&g.addr, &["alloc", "status", &g.members[rank].alloc]);
        assert_eq!(status["node"], target.as_str(), "{status:#}");
        assert_eq!(status["generation"], 2, "{status:#}");
    }
    // Both learners stopped at the same step, the one agreed.
    for rank in 0..2 {
        let log = g.alloc_dir(rank, &g.members[rank].node).join("stdout.log");
        assert_eq!(stopped_at(&log), vec![step], "{}", log.display());
    }

    until_complete(&g, &mut most).await;
    assert_eq!(
        most, 1,
        "two copies of a member ran at once (or none was seen)"
    );
    for (rank, target) in [to0, to1].iter().enumerate() {
        let source = g.alloc_dir(rank, &g.members[rank].node);
        let arrived = g.alloc_dir(rank, target);
        ends_as_if_never_moved(
            &[source.join("stdout.log"), arrived.join("stdout.log")],
            &arrived.join("checkpoints").join(checkpoint::WEIGHTS),
        );
        assert!(
            !arrived.join("checkpoints").join(checkpoint::HOLD).exists(),
            "the hold travelled with the checkpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_s_target_killed_mid_move_aborts_the_whole_gang_and_both_resume_at_home() {
    // Each source holds 5 s once its learner stopped at the common step.
    std::env::set_var(FAULT_HOLD_ENV, "transferring:5000");
    let mut g = gang().await;
    let [to0, to1] = g.targets();
    must_cli_ok(&[
        "--addr",
        &g.addr,
        "job",
        "migrate",
        "train",
        "--to",
        &format!("{to0},{to1}"),
    ]);
    let mut most = 0;
    let moving = until_all(&g, "transferring", &mut most, Duration::from_secs(40)).await;
    let step = moving[0]["stop_step"].as_u64().expect("a common step");
    // Both learners are stopped at the step; then member 0's target dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    g.agents.kill_agent(&to0).expect("kill the target");
    let ended = until_all(&g, "aborted", &mut most, Duration::from_secs(40)).await;
    assert!(
        ended.iter().any(|m| m["error"]
            .as_str()
            .is_some_and(|e| e.contains("gang member"))),
        "the other member was not aborted with its gang: {ended:#?}"
    );
    for (rank, member) in g.members.iter().enumerate() {
        let status = json(&g.addr, &["alloc", "status", &member.alloc]);
        assert_eq!(status["node"], member.node.as_str(), "{status:#}");
        assert_eq!(status["generation"], 1, "{status:#}");
        let log = g.alloc_dir(rank, &member.node).join("stdout.log");
        assert_eq!(stopped_at(&log), vec![step], "{}", log.display());
    }

    until_complete(&g, &mut most).await;
    assert_eq!(
        most, 1,
        "two copies of a member ran at once (or none was seen)"
    );
    // Each learner resumed at home from the common step: every step once.
    for (rank, member) in g.members.iter().enumerate() {
        let home = g.alloc_dir(rank, &member.node);
        ends_as_if_never_moved(
            &[home.join("stdout.log")],
            &home.join("checkpoints").join(checkpoint::WEIGHTS),
        );
    }
    // Member 1's target (member 0's node) dropped what it had received;
    // the killed target does once it is back.
    g.agents.restart(&to0).expect("restart the target");
    for node in [&to0, &to1] {
        let staging = g.data_dir(node).join("migrations");
        until(
            "the targets' staging removed",
            Duration::from_secs(20),
            || {
                let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
                (left == 0).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_member_s_node_moves_the_whole_gang() {
    let g = gang().await;
    let drained = g.members[0].node.clone();
    let reply = json(&g.addr, &["node", "drain", &drained]);
    let moving: Vec<(String, String)> = reply["moving"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|m| Some((m["alloc"].as_str()?.into(), m["target"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(moving.len(), 2, "{reply:#}");
    assert!(
        reply["restarting"].as_array().is_some_and(Vec::is_empty),
        "{reply:#}"
    );
    let mut most = 0;
    let done = until_all(&g, "completed", &mut most, Duration::from_secs(60)).await;
    assert_eq!(done[0]["group"], done[1]["group"], "{done:#?}");
    let targets: Vec<String> = g
        .members
        .iter()
        .map(|m| {
            moving
                .iter()
                .find(|(a, _)| *a == m.alloc)
                .map(|(_, t)| t.clone())
                .expect("each member moves")
        })
        .collect();
    for (member, target) in g.members.iter().zip(&targets) {
        assert_ne!(target, &member.node);
        assert_ne!(target, &drained);
    }
    until_complete(&g, &mut most).await;
    assert_eq!(
        most, 1,
        "two copies of a member ran at once (or none was seen)"
    );
    for (rank, target) in targets.iter().enumerate() {
        let source = g.alloc_dir(rank, &g.members[rank].node);
        let arrived = g.alloc_dir(rank, target);
        ends_as_if_never_moved(
            &[source.join("stdout.log"), arrived.join("stdout.log")],
            &arrived.join("checkpoints").join(checkpoint::WEIGHTS),
        );
    }
}

/// What a gang move asks of each learner, on `herd toy-train` alone: a
/// checkpoint at step 40 with `checkpoint.hold` present; it trains to 40,
/// answers, takes no further step while held, and on SIGTERM checkpoints
/// step 40 and exits 0. Released instead, it trains on.
#[test]
fn toy_train_stops_at_the_asked_step_and_holds_there() {
    for release in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = checkpoint::Request {
            id: "gang-test".into(),
            at_step: Some(40),
        };
        checkpoint::write_atomic(dir.path(), checkpoint::HOLD, b"test").expect("hold");
        checkpoint::write_atomic(dir.path(), checkpoint::REQUEST, request.encode().as_bytes())
            .expect("request");
        let out_path = dir.path().join("stdout");
        let mut child = common::herd_command()
            .args([
                "toy-train",
                "--steps",
                "200",
                "--seed",
                "3",
                "--step-ms",
                "10",
            ])
            .arg("--checkpoint-dir")
            .arg(dir.path())
            .env_remove("HERD_CHECKPOINT_DIR")
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .spawn()
            .expect("spawn toy-train");
        let started = std::time::Instant::now();
        let done = loop {
            let answer = std::fs::read(dir.path().join(checkpoint::DONE))
                .ok()
                .and_then(|b| serde_json::from_slice::<checkpoint::DoneRecord>(&b).ok());
            if let Some(done) = answer {
                break done;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no answer");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!((done.request.as_str(), done.step), ("gang-test", 40));
        // Held: no step past 40 however long we wait.
        std::thread::sleep(Duration::from_millis(400));
        let text = std::fs::read_to_string(&out_path).expect("stdout");
        assert_eq!(steps_in(&text).last(), Some(&40), "{text}");
        if release {
            std::fs::remove_file(dir.path().join(checkpoint::HOLD)).expect("release");
            let status = child.wait().expect("wait");
            assert!(status.success());
            let text = std::fs::read_to_string(&out_path).expect("stdout");
            assert_eq!(steps_in(&text), (1..=200).collect::<Vec<_>>());
        } else {
            // SAFETY: signalling our own child by its pid.
            let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(rc, 0);
            let status = child.wait().expect("wait");
            assert!(status.success());
            let text = std::fs::read_to_string(&out_path).expect("stdout");
            assert!(text.contains("stopped at step 40"), "{text}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join(checkpoint::LATEST))
                    .expect("latest")
                    .trim(),
                checkpoint::file_name(40)
            );
        }
    }
}
