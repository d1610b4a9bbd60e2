//! A training job moved live between two node agents (real processes on
//! loopback, three coordinators): `herd alloc migrate` checkpoints the
//! trainer on its node, the source agent streams the checkpoint directory
//! to the target agent over the agent-to-agent service, the switch-over
//! hands the allocation (same id, generation + 1) to the target, which
//! resumes the trainer from the step it stopped at. The moved run's final
//! weights equal an uninterrupted run's bit for bit, no step runs twice or
//! is skipped, and two copies of the trainer never run at once.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::training::{reference_weights, steps_in};
use common::*;
use herd_actors::toy_train::checkpoint::{self, WeightsRecord};
use herd_node::migrate::source::FAULT_HOLD_ENV;

const STEPS: u64 = 400;
const ARGS: [&str; 8] = [
    "--steps",
    "400",
    "--seed",
    "11",
    "--step-ms",
    "15",
    "--checkpoint-every",
    "50",
];

/// What every test here starts from: three coordinators, agents m1 and m2,
/// the training job running past its first checkpoint.
struct Training {
    cluster: herd_chaos::process_cluster::ProcessCluster,
    addr: String,
    agents: herd_chaos::agents::AgentSet,
    alloc: String,
    source: String,
    target: &'static str,
    source_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn training() -> Training {
    training_with(1).await
}

async fn training_with(members: u64) -> Training {
    let (cluster, addr, mut agents) = cluster_with_agents(members, "3000").await;
    for name in ["m1", "m2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ARGS.iter().map(|a| format!("{a:?}")).collect();
    let spec = write_spec(
        dir.path(),
        "train",
        &format!(
            "name = \"train\"\ntype = \"batch\"\n[task]\ndriver = \"dljob\"\nargs = [{}]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
            args.join(", ")
        ),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = until("the trainer running", Duration::from_secs(20), || {
        let allocs = running_allocs(&addr, "train");
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await;
    let target = if source == "m1" { "m2" } else { "m1" };
    let source_dir = agents.agent(&source).expect("source").data_dir.clone();
    let source_log = source_dir.join("allocs").join(&alloc).join("stdout.log");
    until(
        "steps past the first checkpoint",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&source_log).ok()?;
            (steps_in(&text).last().copied()? > 60).then_some(())
        },
    )
    .await;
    Training {
        cluster,
        addr,
        agents,
        alloc,
        source,
        target,
        source_log,
        _dir: dir,
    }
}

/// How many trainer processes of the job run now (through /proc).
fn copies(agents: &herd_chaos::agents::AgentSet) -> usize {
    agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == "train")
        .count()
}

/// Waits for the job to complete, counting trainer copies meanwhile;
/// returns the most seen at once.
async fn until_complete(t: &Training, mut most: usize) -> usize {
    let started = std::time::Instant::now();
    loop {
        most = most.max(copies(&t.agents));
        if json(&t.addr, &["job", "status", "train"])["status"] == "complete" {
            return most;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the job never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's migration record.
fn the_migration(t: &Training) -> Option<serde_json::Value> {
    json(&t.addr, &["migration", "list", "--alloc", &t.alloc])
        .as_array()?
        .first()
        .cloned()
}

/// Waits until the migration is in `phase`, counting copies meanwhile.
async fn until_phase(
    t: &Training,
    phase: &str,
    most: &mut usize,
    limit: Duration,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        *most = (*most).max(copies(&t.agents));
        if let Some(m) = the_migration(t).filter(|m| m["phase"] == phase) {
            return m;
        }
        assert!(
            started.elapsed() < limit,
            "the migration never reached {phase}: {:?}",
            the_migration(t)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every step ran once and the weights are those of a run never moved.
fn ends_as_if_never_moved(logs: &[&Path], weights: &Path) {
    let mut all = Vec::new();
    for log in logs {
        all.extend(steps_in(&std::fs::read_to_string(log).expect("log")));
    }
    let expected: Vec<u64> = (1..=STEPS).collect();
    assert_eq!(all, expected, "steps of {logs:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_job_moves_to_another_node_and_ends_as_if_never_moved() {
    let t = training().await;
    let (addr, alloc, source, target) =
        (t.addr.clone(), t.alloc.clone(), t.source.clone(), t.target);
    let target_dir = t.agents.agent(target).expect("target").data_dir.clone();
    // The move runs in a thread while the trainer processes are watched
    // through /proc for the whole of it.
    let migrate = {
        let args: Vec<String> = [
            "--addr", &addr, "alloc", "migrate", &alloc, "--to", target, "--wait",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            must_run_cli(&args)
        })
    };
    let mut most = 0;
    while !migrate.is_finished() {
        most = most.max(copies(&t.agents));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moved = migrate.join().expect("migrate thread");
    assert!(
        moved.status.success(),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    let record = the_migration(&t).expect("a migration");
    assert_eq!(record["phase"], "completed", "{record:#}");
    assert_eq!(record["source"], source.as_str());
    assert_eq!(record["target"], target);
    assert!(record["bytes"].as_u64().unwrap_or(0) > 0, "{record:#}");

    let status = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(status["node"], target, "{status:#}");
    assert_eq!(status["generation"], 2, "{status:#}");

    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    // Every step ran exactly once, split between the two nodes, and the
    // weights are bit for bit those of a run never moved.
    let target_alloc = target_dir.join("allocs").join(&alloc);
    let before = steps_in(&std::fs::read_to_string(&t.source_log).expect("source log"));
    assert!(
        !before.is_empty() && (before.len() as u64) < STEPS,
        "{before:?}"
    );
    ends_as_if_never_moved(
        &[&t.source_log, &target_alloc.join("stdout.log")],
        &target_alloc.join("checkpoints").join(checkpoint::WEIGHTS),
    );
    // The target's staging directory was handed over, none is left.
    let staging = target_dir.join("migrations");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staging left in {}", staging.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_transfer_aborts_the_move_and_the_trainer_resumes_at_home() {
    // The source holds 5 s once its trainer stopped at a checkpoint.
    std::env::set_var(FAULT_HOLD_ENV, "transferring:5000");
    let mut t = training().await;
    let source_dir = t.agents.agent(&t.source).expect("source").data_dir.clone();
    let target_dir = t.agents.agent(t.target).expect("target").data_dir.clone();
    must_cli_ok(&[
        "--addr", &t.addr, "alloc", "migrate", &t.alloc, "--to", t.target,
    ]);
    let mut most = 0;
    until_phase(&t, "transferring", &mut most, Duration::from_secs(20)).await;
    // The trainer stops at its checkpoint; then the target dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.agents.kill_agent(t.target).expect("kill target");
    let record = until_phase(&t, "aborted", &mut most, Duration::from_secs(30)).await;
    assert!(
        record["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{record:#}"
    );
    let status = json(&t.addr, &["alloc", "status", &t.alloc]);
    assert_eq!(status["node"], t.source.as_str(), "{status:#}");
    assert_eq!(status["generation"], 1, "{status:#}");

    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    let events = json(&t.addr, &["alloc", "status", &t.alloc])["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"move_aborted"), "{events:#}");
    let alloc_dir = source_dir.join("allocs").join(&t.alloc);
    ends_as_if_never_moved(
        &[&t.source_log],
        &alloc_dir.join("checkpoints").join(checkpoint::WEIGHTS),
    );

    // The target comes back and drops what it had received.
    t.agents.restart(t.target).expect("restart target");
    until(
        "the target's staging removed",
        Duration::from_secs(20),
        || {
            let left = std::fs::read_dir(target_dir.join("migrations"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_agent_killed_before_the_switch_over_keeps_the_trainer_and_the_target_drops_its_copy(
) {
    // Everything is copied, then the source holds 6 s before the switch.
    std::env::set_var(FAULT_HOLD_ENV, "switching:6000");
    let mut t = training().await;
    let source_dir = t.agents.agent(&t.source).expect("source").data_dir.clone();
    let target_dir = t.agents.agent(t.target).expect("target").data_dir.clone();
    must_cli_ok(&[
        "--addr", &t.addr, "alloc", "migrate", &t.alloc, "--to", t.target,
    ]);
    let mut most = 0;
    until_phase(&t, "switching", &mut most, Duration::from_secs(20)).await;
    // The source agent dies (its trainer is stopped at a checkpoint) and
    // comes back: it gives the migration up and runs the trainer again.
    let source = t.source.clone();
    t.agents.kill_agent(&source).expect("kill source");
    t.agents.restart(&source).expect("restart source");
    let record = until_phase(&t, "aborted", &mut most, Duration::from_secs(30)).await;
    assert!(
        record["error"]
            .as_str()
            .is_some_and(|e| e.contains("restarted")),
        "{record:#}"
    );
    let status = json(&t.addr, &["alloc", "status", &t.alloc]);
    assert_eq!(status["node"], source.as_str(), "{status:#}");
    assert_eq!(status["generation"], 1, "{status:#}");

    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    let alloc_dir = source_dir.join("allocs").join(&t.alloc);
    ends_as_if_never_moved(
        &[&t.source_log],
        &alloc_dir.join("checkpoints").join(checkpoint::WEIGHTS),
    );
    until(
        "the target's staging removed",
        Duration::from_secs(20),
        || {
            let left = std::fs::read_dir(target_dir.join("migrations"))
                .map(|d| d.count())
                .unwrap_or(0);
            (left == 0).then_some(())
        },
    )
    .await;
    assert!(
        !target_dir
            .join("allocs")
            .join(&t.alloc)
            .join("checkpoints")
            .exists(),
        "the target installed a checkpoint of a migration that was aborted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_goes_on_through_the_leader_s_death() {
    // The source holds 4 s with its trainer stopped; the leader dies then.
    std::env::set_var(FAULT_HOLD_ENV, "transferring:4000");
    let mut t = training_with(3).await;
    let target_dir = t.agents.agent(t.target).expect("target").data_dir.clone();
    must_cli_ok(&[
        "--addr", &t.addr, "alloc", "migrate", &t.alloc, "--to", t.target,
    ]);
    let mut most = 0;
    until_phase(&t, "transferring", &mut most, Duration::from_secs(20)).await;
    let leader = t
        .cluster
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    t.cluster.kill(leader).expect("kill leader");
    let record = until_phase(&t, "completed", &mut most, Duration::from_secs(40)).await;
    assert_eq!(record["target"], t.target, "{record:#}");
    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    let target_alloc = target_dir.join("allocs").join(&t.alloc);
    ends_as_if_never_moved(
        &[&t.source_log, &target_alloc.join("stdout.log")],
        &target_alloc.join("checkpoints").join(checkpoint::WEIGHTS),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_agent_down_at_the_switch_over_resumes_from_the_staged_checkpoint() {
    // Everything is copied, then the source holds 1.5 s before the switch
    // (less than the node TTL, 3 s: past it the leader would mark the
    // target down and abort the move); the target's agent dies meanwhile
    // and comes back only after the switch-over.
    std::env::set_var(FAULT_HOLD_ENV, "switching:1500");
    let mut t = training().await;
    let target_dir = t.agents.agent(t.target).expect("target").data_dir.clone();
    must_cli_ok(&[
        "--addr", &t.addr, "alloc", "migrate", &t.alloc, "--to", t.target,
    ]);
    let mut most = 0;
    until_phase(&t, "switching", &mut most, Duration::from_secs(20)).await;
    t.agents.kill_agent(t.target).expect("kill target");
    until_phase(&t, "completed", &mut most, Duration::from_secs(30)).await;
    // The allocation is the target's now, and its agent is away: the new
    // agent must take the staged checkpoint up, not start from step 0.
    t.agents.restart(t.target).expect("restart target");
    let most = until_complete(&t, most).await;
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");
    let target_alloc = target_dir.join("allocs").join(&t.alloc);
    ends_as_if_never_moved(
        &[&t.source_log, &target_alloc.join("stdout.log")],
        &target_alloc.join("checkpoints").join(checkpoint::WEIGHTS),
    );
    assert!(
        !target_alloc.join("incoming.json").exists(),
        "the arrival's mark is cleared once installed"
    );
}
