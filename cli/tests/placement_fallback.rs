//! The placement fallback on a live cluster: three node agents run seven
//! SIMULATED VMs (`simvm`, real `herd sim-vm` processes that move live), so
//! that no node has room for a job of three VMs' size. The fast heuristic
//! leaves it pending (nothing of lower priority to evict); the exact
//! solver, allowed to move work of any priority (`--placement-fallback-
//! move-any-priority`), moves one VM live and the job is placed where it
//! left, as `herd job status` says. A job larger than all the free room
//! together is proved impossible, and `herd job status` says that too.

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents_args, must_have_ready_nodes, running_allocs};
use common::vms::{min_cpu_capacity, place_vms};
use common::*;
use serde_json::Value;

const NODES: [&str; 3] = ["r1", "r2", "r3"];

fn submit(addr: &str, dir: &std::path::Path, name: &str, millis: u64) {
    let spec = write_spec(
        dir,
        name,
        &format!(
            "name = \"{name}\"\ntype = \"service\"\npriority = 50\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\n[task.resources]\ncpu = {millis}\nmemory = \"32MiB\"\n"
        ),
    );
    must_cli_ok(&["--addr", addr, "job", "run", "--detach", &spec]);
}

/// The fallback's record in `herd job status NAME -o json`, once it has
/// outcome `outcome`.
async fn fallback_outcome(addr: &str, job: &str, outcome: &str) -> Value {
    until(
        &format!("job {job}'s fallback outcome {outcome}"),
        Duration::from_secs(60),
        || {
            let status = json(addr, &["job", "status", job]);
            (status["placement_fallback"]["outcome"] == outcome).then_some(status)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_job_is_placed_after_a_live_move_or_proved_impossible() {
    let (_cluster, addr, mut agents) = cluster_with_agents_args(
        1,
        &[
            "--node-ttl-ms",
            "5000",
            "--placement-fallback-window",
            "2s",
            "--placement-fallback-move-any-priority",
        ],
    )
    .await;
    for name in NODES {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &NODES).await;
    let capacity = min_cpu_capacity(&addr);
    let q = capacity / 4;
    assert!(q >= 100, "nodes of {capacity} millicores are too small");
    let dir = tempfile::tempdir().expect("tempdir");
    // r1 and r2 have two quarters free, r3 one: no node has three.
    place_vms(
        &addr,
        dir.path(),
        &NODES,
        &[("r1", 2), ("r2", 2), ("r3", 3)],
        q,
        50,
    )
    .await;

    // Three quarters: pending for the heuristic, placed after one move.
    submit(&addr, dir.path(), "big", 3 * q);
    let status = fallback_outcome(&addr, "big", "placed").await;
    let record = &status["placement_fallback"];
    let text = record["text"].as_str().expect("text");
    assert!(text.starts_with("placed after moving v"), "{record:#}");
    let moved = record["moved"].as_array().expect("moved");
    assert_eq!(moved.len(), 1, "{record:#}");
    assert!(record["evicted"].as_array().is_some_and(Vec::is_empty));
    let big = until("big running", Duration::from_secs(30), || {
        running_allocs(&addr, "big").first().cloned()
    })
    .await;
    // It runs where the moved VM left: "vN (vN) SOURCE -> TARGET".
    let source = moved[0]
        .as_str()
        .and_then(|m| m.split(' ').nth(2))
        .expect("source in the move");
    assert_eq!(big["node"], source, "{record:#}");
    let migrations = json(&addr, &["migration", "list"]);
    let done: Vec<&Value> = migrations
        .as_array()
        .expect("migrations")
        .iter()
        .filter(|m| m["phase"] == "completed")
        .collect();
    assert_eq!(done.len(), 1, "{migrations:#}");
    let shown = must_cli_ok(&["--addr", &addr, "job", "status", "big"]);
    assert!(shown.contains("fallback   placed after moving"), "{shown}");

    // A whole node's worth while less than that is free in all: proved.
    submit(&addr, dir.path(), "whole", capacity);
    let status = fallback_outcome(&addr, "whole", "impossible").await;
    let text = status["placement_fallback"]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(
        text.starts_with("no placement exists even moving movable work")
            && text.contains("(proved"),
        "{text}"
    );
    assert_eq!(status["status"], "pending", "{status:#}");
    assert!(status["blocked"].is_string(), "{status:#}");
    let shown = must_cli_ok(&["--addr", &addr, "job", "status", "whole"]);
    assert!(
        shown.contains("blocked") && shown.contains("(proved"),
        "{shown}"
    );
    // Nothing more moved for it.
    let migrations = json(&addr, &["migration", "list"]);
    assert_eq!(
        migrations.as_array().map(Vec::len),
        Some(1),
        "{migrations:#}"
    );
}
