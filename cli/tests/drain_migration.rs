//! `herd node drain` moves live what can move live and restarts the rest
//! (real processes on loopback: a coordinator, agents m1 and m2). A
//! training job (`dljob`, moves through a checkpoint) and an exec job (no
//! move) run on m1; draining m1 moves the trainer to m2 as the same
//! allocation, one generation higher, with a `migrated` event giving the
//! figures, and it completes there having run every step once; the exec
//! job is stopped and replaced by a new allocation on m2.

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::training::{reference_weights, steps_in};
use common::*;
use herd_actors::toy_train::checkpoint::{self, WeightsRecord};
use serde_json::Value;

const STEPS: u64 = 300;
const ARGS: [&str; 8] = [
    "--steps",
    "300",
    "--seed",
    "5",
    "--step-ms",
    "15",
    "--checkpoint-every",
    "50",
];

/// The only live allocation of `job`, once it runs: (id, node).
async fn the_running(addr: &str, job: &str) -> (String, String) {
    until(&format!("{job} running"), Duration::from_secs(30), || {
        let allocs = running_allocs(addr, job);
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await
}

/// The `alloc` fields of a drain reply's list.
fn allocs_of(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|a| a["alloc"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_training_job_live_and_restarts_an_exec_job_elsewhere() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("m1", &[]).expect("start m1");
    must_have_ready_nodes(&addr, &["m1"]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = ARGS.iter().map(|a| format!("{a:?}")).collect();
    let train = write_spec(
        dir.path(),
        "train",
        &format!(
            "name = \"train\"\ntype = \"batch\"\n[task]\ndriver = \"dljob\"\nargs = [{}]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
            args.join(", ")
        ),
    );
    let tool = write_spec(
        dir.path(),
        "tool",
        "name = \"tool\"\ntype = \"service\"\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    for spec in [&train, &tool] {
        must_cli_ok(&["--addr", &addr, "job", "run", "--detach", spec]);
    }
    let (train_alloc, train_node) = the_running(&addr, "train").await;
    let (tool_alloc, tool_node) = the_running(&addr, "tool").await;
    assert_eq!((train_node.as_str(), tool_node.as_str()), ("m1", "m1"));
    let m1_dir = agents.agent("m1").expect("m1").data_dir.clone();
    let source_log = m1_dir.join("allocs").join(&train_alloc).join("stdout.log");
    until(
        "steps past the first checkpoint",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&source_log).ok()?;
            (steps_in(&text).last().copied()? > 60).then_some(())
        },
    )
    .await;

    agents.start("m2", &[]).expect("start m2");
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;
    let m2_dir = agents.agent("m2").expect("m2").data_dir.clone();

    // The reply says which allocation moves live and which restarts.
    let reply = json(&addr, &["node", "drain", "m1"]);
    assert_eq!(
        allocs_of(&reply["moving"]),
        std::slice::from_ref(&train_alloc),
        "{reply:#}"
    );
    assert_eq!(reply["moving"][0]["target"], "m2", "{reply:#}");
    let migration = reply["moving"][0]["migration"]
        .as_str()
        .expect("a migration id")
        .to_string();
    assert_eq!(
        allocs_of(&reply["restarting"]),
        std::slice::from_ref(&tool_alloc),
        "{reply:#}"
    );
    assert!(
        reply["restarting"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exec")),
        "{reply:#}"
    );

    // The exec job is replaced by a new allocation on m2.
    let (new_tool, new_node) = the_running_other_than(&addr, "tool", &tool_alloc).await;
    assert_eq!(new_node, "m2");
    assert_ne!(new_tool, tool_alloc);

    // The trainer moves: same allocation, on m2, generation 2, a
    // `migrated` event with the figures; it completes there.
    let status = until("the trainer moved", Duration::from_secs(40), || {
        let m = json(&addr, &["migration", "status", &migration]);
        match m["phase"].as_str()? {
            "completed" => Some(json(&addr, &["alloc", "status", &train_alloc])),
            "aborted" => panic!("the drain's move was aborted: {m:#}"),
            _ => None,
        }
    })
    .await;
    assert_eq!(status["node"], "m2", "{status:#}");
    assert_eq!(status["generation"], 2, "{status:#}");
    let migrated = status["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "migrated"))
        .cloned()
        .unwrap_or_else(|| panic!("no migrated event: {status:#}"));
    let detail = migrated["detail"].as_str().unwrap_or("");
    for needle in [
        migration.as_str(),
        "m1 \u{2192} m2",
        "bytes",
        "round",
        "downtime",
        "total",
    ] {
        assert!(
            detail.contains(needle),
            "{needle:?} missing from {detail:?}"
        );
    }
    let text = must_cli_ok(&["--addr", &addr, "alloc", "status", &train_alloc]);
    assert!(text.contains("migrated"), "{text}");

    until("the training job complete", Duration::from_secs(60), || {
        (json(&addr, &["job", "status", "train"])["status"] == "complete").then_some(())
    })
    .await;
    // Every step ran once, split between the nodes, and the weights are
    // those of a run never moved.
    let target_alloc = m2_dir.join("allocs").join(&train_alloc);
    let mut steps = steps_in(&std::fs::read_to_string(&source_log).expect("m1 log"));
    steps.extend(steps_in(
        &std::fs::read_to_string(target_alloc.join("stdout.log")).expect("m2 log"),
    ));
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>());
    let reference_dir = tempfile::tempdir().expect("tempdir");
    let reference = reference_weights(reference_dir.path(), &ARGS);
    let weights = target_alloc.join("checkpoints").join(checkpoint::WEIGHTS);
    let moved: WeightsRecord =
        serde_json::from_str(&std::fs::read_to_string(weights).expect("weights")).expect("json");
    assert_eq!(moved.step, STEPS);
    assert_eq!(moved.weight_bits, reference.weight_bits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_migrate_restarts_even_what_could_move() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    agents.start("m1", &[]).expect("start m1");
    must_have_ready_nodes(&addr, &["m1"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let train = write_spec(
        dir.path(),
        "train",
        "name = \"train\"\ntype = \"batch\"\n[task]\ndriver = \"dljob\"\nargs = [\"--steps\", \"100000\", \"--step-ms\", \"20\"]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &train]);
    let (alloc, _) = the_running(&addr, "train").await;
    agents.start("m2", &[]).expect("start m2");
    must_have_ready_nodes(&addr, &["m1", "m2"]).await;

    let text = must_cli_ok(&["--addr", &addr, "node", "drain", "m1", "--no-migrate"]);
    assert!(
        text.contains("restarting") && text.contains(&alloc),
        "{text}"
    );
    assert!(text.contains("--no-migrate"), "{text}");
    assert!(!text.contains("moving live"), "{text}");
    let (new_alloc, node) = the_running_other_than(&addr, "train", &alloc).await;
    assert_eq!(node, "m2");
    assert_ne!(new_alloc, alloc);
    let migrations = json(&addr, &["migration", "list"]);
    assert_eq!(
        migrations.as_array().map(Vec::len),
        Some(0),
        "{migrations:#}"
    );
}

/// The live allocation of `job` other than `old`, once it runs: (id, node).
async fn the_running_other_than(addr: &str, job: &str, old: &str) -> (String, String) {
    until(&format!("{job} replaced"), Duration::from_secs(30), || {
        let allocs = running_allocs(addr, job);
        let [a] = allocs.as_slice() else { return None };
        let id = a["id"].as_str()?.to_string();
        (id != old).then(|| (id, a["node"].as_str().unwrap_or("").to_string()))
    })
    .await
}
