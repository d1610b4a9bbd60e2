//! The leader's defragmenting loop on a live cluster: three node agents run
//! seven SIMULATED VMs (`simvm`, real `herd sim-vm` processes that move
//! live) placed so that free CPU is fragmented. With the loop off (the
//! default) nothing moves and no run is recorded; with a short period and a
//! low threshold in the coordinator's config file (the member restarted to
//! read it), the leader moves VMs by itself through live migrations, the
//! fragment rate falls, and `herd reschedule status` shows the run.

mod common;

use std::time::Duration;

use common::vms::{fragmented_for_the_loop, live_fr, migrations, restart_with_config, Fragmented};
use common::*;
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
    // The default: no [reschedule] section, the loop off.
    let Fragmented {
        mut cluster,
        addr,
        agents,
        config,
        target,
        fr: before,
        ..
    } = fragmented_for_the_loop(dir.path(), 1, "5000", Duration::from_secs(10), &NODES).await;

    // Off: two periods' worth of waiting, and nothing moves or is recorded.
    tokio::time::sleep(Duration::from_secs(2 * EVERY_S)).await;
    assert!(migrations(&addr).is_empty(), "{:#?}", migrations(&addr));
    assert_eq!(last_run(&addr), Value::Null);
    let shown = must_cli_ok(&["--addr", &addr, "reschedule", "status"]);
    assert!(shown.contains("no defragmenting run recorded"), "{shown}");
    assert!((live_fr(&addr, &target) - before).abs() < 1e-9);

    // On: a short period and a low threshold, read at the member's restart.
    restart_with_config(
        &mut cluster,
        &config,
        &format!(
            "[reschedule]\nevery = \"{EVERY_S}s\"\nfr_threshold = 0.1\nmax_migrations = 5\ndeadline = \"300ms\"\nconcurrency = 2\ntarget_cpu = \"{target}\"\n"
        ),
        Duration::from_secs(20),
    )
    .await;

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
