//! The defragmenting rescheduler on a live cluster: three node agents run
//! seven SIMULATED VMs (`simvm`, real `herd sim-vm` processes that move
//! live) placed so that free CPU is fragmented; `herd reschedule plan`
//! finds moves lowering the fragment rate, a plan made stale on purpose
//! (its allocation stopped between plan and apply) is skipped and said so,
//! and `herd reschedule apply --wait` runs a fresh plan through live
//! migrations that complete, leaving each allocation on its planned node
//! and the fragment rate the plan promised.

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::vms::{alloc_node, min_cpu_capacity, place_vms};
use common::*;
use serde_json::Value;

const NODES: [&str; 3] = ["r1", "r2", "r3"];

fn fr(plan: &Value, key: &str) -> f64 {
    plan[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {plan:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_cluster_is_planned_and_defragmented_by_live_migrations() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    for name in NODES {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &NODES).await;
    // Every agent of this host offers the same CPU; a quarter of it per VM
    // and half of it as the target shape.
    let capacity = min_cpu_capacity(&addr);
    let q = capacity / 4;
    assert!(q >= 100, "nodes of {capacity} millicores are too small");
    let target = format!("{}m", 2 * q);
    let dir = tempfile::tempdir().expect("tempdir");

    // r1 and r2 get three VMs each (a quarter-node fragment left), r3 one.
    place_vms(
        &addr,
        dir.path(),
        &NODES,
        &[("r1", 3), ("r2", 3), ("r3", 1)],
        q,
        50,
    )
    .await;

    // The plan: the FR the layout has, one move lowering it.
    let r = capacity - 4 * q;
    let free = 2 * (q + r) + (3 * q + r);
    let expected_before = (3 * (q + r)) as f64 / free as f64;
    let text = must_cli_ok(&[
        "--addr",
        &addr,
        "reschedule",
        "plan",
        "--max-migrations",
        "1",
        "--deadline",
        "300ms",
        "--target-cpu",
        &target,
        "-o",
        "json",
    ]);
    let stale_plan: Value = serde_json::from_str(&text).expect("plan json");
    assert!(
        (fr(&stale_plan, "fr_before") - expected_before).abs() < 1e-9,
        "{stale_plan:#}"
    );
    assert!(
        fr(&stale_plan, "fr_after") < fr(&stale_plan, "fr_before"),
        "{stale_plan:#}"
    );
    assert_eq!(stale_plan["movable"], 7, "{stale_plan:#}");
    let moves = stale_plan["moves"].as_array().expect("moves");
    assert_eq!(moves.len(), 1, "{stale_plan:#}");
    let doomed = moves[0]["alloc"].as_str().expect("alloc").to_string();
    let doomed_job = moves[0]["job"].as_str().expect("job").to_string();
    assert_eq!(
        alloc_node(&addr, &doomed),
        moves[0]["source"].as_str().unwrap_or("")
    );
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, &text).expect("write plan");
    // The text form says the same.
    let shown = must_cli_ok(&[
        "--addr",
        &addr,
        "reschedule",
        "plan",
        "--max-migrations",
        "1",
        "--deadline",
        "300ms",
        "--target-cpu",
        &target,
    ]);
    assert!(
        shown.contains("fragment rate") && shown.contains("ALLOC"),
        "{shown}"
    );

    // Made stale: its allocation is stopped before the plan is applied.
    must_cli_ok(&["--addr", &addr, "job", "stop", &doomed_job]);
    until(
        "the planned allocation stopping",
        Duration::from_secs(20),
        || running_allocs(&addr, &doomed_job).is_empty().then_some(()),
    )
    .await;
    let out = must_run_cli(&[
        "--addr",
        &addr,
        "reschedule",
        "apply",
        "--plan",
        plan_file.to_str().expect("utf-8 path"),
        "--wait",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "apply of a stale plan: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{doomed} ({doomed_job})"))
            && stdout.contains("skipped: ")
            && (stdout.contains("only a running allocation can move")
                || stdout.contains("is gone")),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 completed, 0 aborted, 1 skipped"),
        "{stdout}"
    );
    let migrations = json(&addr, &["migration", "list"]);
    assert_eq!(
        migrations.as_array().map(Vec::len),
        Some(0),
        "{migrations:#}"
    );
    // The stopped allocation holds its room until its agent reports it
    // stopped: the fresh plan below must see the room it leaves, or the
    // live FR after the moves differs from the plan's.
    until(
        "the stopped allocation gone",
        Duration::from_secs(20),
        || {
            let status = json(&addr, &["alloc", "status", &doomed]);
            (status["status"] != "running").then_some(())
        },
    )
    .await;

    // A fresh plan, applied: every move completes and lands where planned.
    let applied = json(
        &addr,
        &[
            "reschedule",
            "apply",
            "--max-migrations",
            "5",
            "--deadline",
            "300ms",
            "--target-cpu",
            &target,
            "--concurrency",
            "2",
            "--wait",
        ],
    );
    let plan = &applied["plan"];
    assert!(fr(plan, "fr_after") < fr(plan, "fr_before"), "{applied:#}");
    let moves = applied["moves"].as_array().expect("moves");
    assert!(!moves.is_empty(), "{applied:#}");
    assert_eq!(applied["completed"], moves.len(), "{applied:#}");
    assert_eq!(applied["skipped"], 0, "{applied:#}");
    for m in moves {
        assert_eq!(m["outcome"], "completed", "{m:#}");
        let id = m["alloc"].as_str().expect("alloc");
        assert_eq!(
            alloc_node(&addr, id),
            m["target"].as_str().unwrap_or(""),
            "{m:#}"
        );
        let record = json(&addr, &["migration", "list", "--alloc", id])
            .as_array()
            .and_then(|l| l.last().cloned())
            .expect("a migration");
        assert_eq!(record["phase"], "completed", "{record:#}");
        assert_eq!(record["kind"], "simvm", "{record:#}");
    }
    // The live FR afterwards is the one planned (nothing else changed).
    let after = applied["fr_after"].as_f64().expect("fr_after measured");
    assert!((after - fr(plan, "fr_after")).abs() < 1e-9, "{applied:#}");
    // Nothing left to gain: a new plan has no move.
    let again = json(
        &addr,
        &[
            "reschedule",
            "plan",
            "--max-migrations",
            "5",
            "--deadline",
            "300ms",
            "--target-cpu",
            &target,
        ],
    );
    assert!((fr(&again, "fr_before") - after).abs() < 1e-9, "{again:#}");
    assert!(fr(&again, "fr_after") >= after - 1e-9, "{again:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reschedule_input_exits_2_naming_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\"moves\": [{\"alloc\": \"a\", \"source\": \"n1\"}]}",
    )
    .expect("write");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["plan".into(), "--max-migrations".into(), "5000".into()],
            "--max-migrations",
        ),
        (
            vec!["plan".into(), "--solver".into(), "exact".into()],
            "--solver",
        ),
        (
            vec!["plan".into(), "--target-cpu".into(), "0".into()],
            "CPU",
        ),
        (
            vec!["apply".into(), "--concurrency".into(), "0".into()],
            "--concurrency",
        ),
        (
            vec!["apply".into(), "--plan".into(), bad.display().to_string()],
            "moves[0].target",
        ),
    ];
    for (args, says) in cases {
        let mut full = vec![
            "--addr".to_string(),
            "127.0.0.1:1".into(),
            "reschedule".into(),
        ];
        full.extend(args.iter().cloned());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = must_run_cli(&refs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
