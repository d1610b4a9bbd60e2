//! The leader's defragmenting loop on a live cluster: three node agents run
//! seven SIMULATED VMs (`simvm`, real `herd sim-vm` processes that move
//! live) placed so that free CPU is fragmented. With the loop off (the
//! default) nothing moves and no run is recorded; with a short period and a
//! low threshold in the coordinator's config file (the member restarted to
//! read it), the leader moves VMs by itself through live migrations, the
//! fragment rate falls, and `herd reschedule status` shows the run.

mod common;

use std::time::Duration;

use common::agents::must_have_ready_nodes;
use common::vms::{live_fr, migrations, min_cpu_capacity, place_vms};
use common::*;
use herd_chaos::agents::AgentSet;
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

const NODES: [&str; 3] = ["r1", "r2", "r3"];
/// The loop's period once on: long enough that an applied run's record is
/// still the last one when the test reads it.
const EVERY_S: u64 = 3;

fn last_run(addr: &str) -> Value {
    json(addr, &["reschedule", "status"])["last_run"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_loop_defragments_by_itself_only_when_turned_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("coordinator.toml");
    // The default: no [reschedule] section, the loop off.
    std::fs::write(&config, "").expect("write config");
    let config_arg = config.to_str().expect("utf-8 path").to_string();
    let mut cluster = ProcessCluster::start(
        herd_bin(),
        1,
        &["--node-ttl-ms", "5000", "--config", &config_arg],
    )
    .expect("start cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    for name in NODES {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &NODES).await;
    let capacity = min_cpu_capacity(&addr);
    let q = capacity / 4;
    assert!(q >= 100, "nodes of {capacity} millicores are too small");
    let target = format!("{}m", 2 * q);
    place_vms(
        &addr,
        dir.path(),
        &NODES,
        &[("r1", 3), ("r2", 3), ("r3", 1)],
        q,
        50,
    )
    .await;
    let before = live_fr(&addr, &target);
    assert!(before > 0.5, "the layout is fragmented: FR {before}");

    // Off: two periods' worth of waiting, and nothing moves or is recorded.
    tokio::time::sleep(Duration::from_secs(2 * EVERY_S)).await;
    assert!(migrations(&addr).is_empty(), "{:#?}", migrations(&addr));
    assert_eq!(last_run(&addr), Value::Null);
    let shown = must_cli_ok(&["--addr", &addr, "reschedule", "status"]);
    assert!(shown.contains("no defragmenting run recorded"), "{shown}");
    assert!((live_fr(&addr, &target) - before).abs() < 1e-9);

    // On: a short period and a low threshold, read at the member's restart.
    std::fs::write(
        &config,
        format!(
            "[reschedule]\nevery = \"{EVERY_S}s\"\nfr_threshold = 0.1\nmax_migrations = 5\ndeadline = \"300ms\"\nconcurrency = 2\ntarget_cpu = \"{target}\"\n"
        ),
    )
    .expect("write config");
    cluster.kill(1).expect("kill");
    cluster.restart(1).expect("restart");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader after restart");

    // The loop moves VMs by itself; its run is recorded.
    let run = until(
        "a defragmenting run that applied moves",
        Duration::from_secs(90),
        || {
            let run = last_run(&addr);
            (run["outcome"] == "applied").then_some(run)
        },
    )
    .await;
    let planned = run["fr_planned"].as_f64().expect("fr_planned");
    let fr_before = run["fr_before"].as_f64().expect("fr_before");
    let fr_after = run["fr_after"].as_f64().expect("fr_after measured");
    assert!((fr_before - before).abs() < 1e-9, "{run:#}");
    assert!(planned < fr_before, "{run:#}");
    assert!(fr_after < fr_before, "{run:#}");
    let completed = run["completed"].as_u64().expect("completed");
    assert!(completed >= 1, "{run:#}");
    assert_eq!(run["skipped"], 0, "{run:#}");
    assert_eq!(run["fr_threshold"], 0.1, "{run:#}");
    for m in run["moves"].as_array().expect("moves") {
        assert_eq!(m["outcome"], "completed", "{m:#}");
    }
    // The migrations are the loop's own, completed; the FR fell.
    let done: Vec<Value> = migrations(&addr)
        .into_iter()
        .filter(|m| m["phase"] == "completed")
        .collect();
    assert_eq!(done.len() as u64, completed, "{done:#?}");
    assert!(done.iter().all(|m| m["kind"] == "simvm"), "{done:#?}");
    let now = live_fr(&addr, &target);
    assert!(now < before, "FR {before} -> {now}");
    assert!((now - fr_after).abs() < 1e-9, "{run:#}");
    // The text form says what happened.
    let shown = must_cli_ok(&["--addr", &addr, "reschedule", "status"]);
    assert!(
        shown.contains("last run") && shown.contains("fragment rate"),
        "{shown}"
    );
    drop(agents);
}
