//! A training job moved live between two node agents (real processes on
//! loopback, three coordinators): `herd alloc migrate` checkpoints the
//! trainer on its node, the source agent streams the checkpoint directory
//! to the target agent over the agent-to-agent service, the switch-over
//! hands the allocation (same id, generation + 1) to the target, which
//! resumes the trainer from the step it stopped at. The moved run's final
//! weights equal an uninterrupted run's bit for bit, no step runs twice or
//! is skipped, and two copies of the trainer never run at once.

mod common;

use std::path::Path;
use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use herd_actors::toy_train::checkpoint::{self, WeightsRecord};

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

/// Step numbers of the `step=N ...` lines of a trainer's stdout.
fn steps_in(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("step=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// The same training run, uninterrupted, in `dir`: its final weights.
fn reference_weights(dir: &Path) -> WeightsRecord {
    let out = std::process::Command::new(herd_bin())
        .arg("toy-train")
        .args(ARGS)
        .arg("--checkpoint-dir")
        .arg(dir)
        .env_remove("HERD_CHECKPOINT_DIR")
        .output()
        .expect("run toy-train");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.join(checkpoint::WEIGHTS)).expect("weights");
    serde_json::from_str(&text).expect("weights json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_job_moves_to_another_node_and_ends_as_if_never_moved() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
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
    let target_dir = agents.agent(target).expect("target").data_dir.clone();
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

    // The move runs in a thread while the trainer processes are watched
    // through /proc for the whole of it.
    let copies = |agents: &herd_chaos::agents::AgentSet| {
        agents
            .workloads()
            .into_iter()
            .filter(|w| w.job == "train")
            .count()
    };
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
        most = most.max(copies(&agents));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let moved = migrate.join().expect("migrate thread");
    assert!(
        moved.status.success(),
        "migrate: {}\n{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    let migrations = json(&addr, &["migration", "list", "--alloc", &alloc]);
    let record = &migrations.as_array().expect("list")[0];
    assert_eq!(record["phase"], "completed", "{migrations:#}");
    assert_eq!(record["source"], source.as_str());
    assert_eq!(record["target"], target);
    assert!(record["bytes"].as_u64().unwrap_or(0) > 0, "{record:#}");

    let status = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(status["node"], target, "{status:#}");
    assert_eq!(status["generation"], 2, "{status:#}");

    // The job completes on the target.
    let started = std::time::Instant::now();
    loop {
        most = most.max(copies(&agents));
        if json(&addr, &["job", "status", "train"])["status"] == "complete" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 1, "two trainers ran at once (or none was seen)");

    // Every step ran exactly once, split between the two nodes.
    let before = steps_in(&std::fs::read_to_string(&source_log).expect("source log"));
    let target_alloc = target_dir.join("allocs").join(&alloc);
    let after =
        steps_in(&std::fs::read_to_string(target_alloc.join("stdout.log")).expect("target log"));
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{before:?} {after:?}"
    );
    let all: Vec<u64> = before.iter().chain(after.iter()).copied().collect();
    let expected: Vec<u64> = (1..=STEPS).collect();
    assert_eq!(all, expected, "steps on {source} then {target}");

    // Bit for bit the weights of a run never moved.
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = reference_weights(reference_dir.path());
    let text = std::fs::read_to_string(target_alloc.join("checkpoints").join(checkpoint::WEIGHTS))
        .expect("moved weights");
    let moved: WeightsRecord = serde_json::from_str(&text).expect("weights json");
    assert_eq!(moved.step, STEPS);
    assert_eq!(
        moved.weight_bits, reference.weight_bits,
        "moved {moved:?} vs {reference:?}"
    );
}
