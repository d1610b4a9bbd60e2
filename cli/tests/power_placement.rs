//! Placement by power headroom end to end on real processes (issue 20): a
//! real coordinator and two real agents with SIMULATED H100s in two racks
//! with power budgets. A GPU job goes to the rack with headroom; with no
//! headroom anywhere it stays pending and `herd job status` says which
//! group's hard budget it would overshoot; raising that budget places it.
//!
//! Figures: 4 H100s idle at 4 × 80 = 320 W; one H100 at TDP (the default
//! power class) commits 620 W above idle. A 900 W budget (hard 97 %:
//! 873 W) has no room for it (940 W), a 2000 W budget (1940 W) has.

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::*;
use serde_json::Value;

/// A service of one instance on one GPU, with `extra` at the top level.
fn gpu_job(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\npriority = 50\n{extra}[task]\ndriver = \"exec\"\n\
         command = \"/bin/sh\"\nargs = [\"-c\", \"exec sleep 600\"]\n\
         [task.resources]\ncpu = 100\nmemory = \"32MiB\"\ngpus = 1\n"
    )
}

/// The node `job`'s one running allocation is on.
fn node_of(addr: &str, job: &str) -> Option<String> {
    match running_allocs(addr, job).as_slice() {
        [one] => one["node"].as_str().map(str::to_string),
        _ => None,
    }
}

fn budget(addr: &str, group: &str, watts: &str) {
    must_cli_ok(&[
        "--addr", addr, "power", "budget", "set", group, "--watts", watts,
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_work_goes_where_power_allows_and_waits_with_the_reason_elsewhere() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    for (name, rack) in [("n1", "rack=r1"), ("n2", "rack=r2")] {
        let args = [
            "--sim-gpus",
            "4",
            "--sim-gpu-model",
            "h100",
            "--labels",
            rack,
        ];
        agents.start(name, &args).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["n1", "n2"]).await;
    budget(&addr, "rack=r1", "900");
    budget(&addr, "rack=r2", "2000");
    let dir = tempfile::tempdir().expect("tempdir");

    // A bad class is refused at submit, located, exit 2.
    let bad = write_spec(
        dir.path(),
        "bad",
        &gpu_job("bad", "power_class = \"huge\"\n"),
    );
    let out = must_run_cli(&["--addr", &addr, "job", "run", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.toml:4") && stderr.contains("power_class"),
        "{stderr}"
    );

    // Bin-packing alone would take n1 (equal nodes go by name); r1 has no
    // headroom for a GPU at TDP, so the job goes to n2 in r2.
    let first = write_spec(dir.path(), "first", &gpu_job("first", ""));
    must_cli_ok(&["--addr", &addr, "job", "run", &first]);
    let on = until("first running", Duration::from_secs(20), || {
        node_of(&addr, "first")
    })
    .await;
    assert_eq!(on, "n2");

    // r2 lowered below what it now commits (940 W): no headroom anywhere.
    budget(&addr, "rack=r2", "900");
    let second = write_spec(dir.path(), "second", &gpu_job("second", ""));
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &second]);
    // The scheduler's reason names both racks. (The placement fallback
    // counts power too, and finds nothing here: nothing lower to evict.)
    let r1 = "1 node is held back by power: group rack=r1 would commit 940 W of GPU power, \
              over its hard budget of 873 W (97 % of 900 W)";
    let r2 = "1 node is held back by power: group rack=r2 would commit 1560 W";
    until("second blocked by power", Duration::from_secs(20), || {
        let status = json(&addr, &["job", "status", "second"]);
        let blocked = status["blocked"].as_str()?.to_string();
        (status["status"] == "pending" && blocked.contains(r1) && blocked.contains(r2))
            .then_some(())
    })
    .await;
    let text = must_cli_ok(&["--addr", &addr, "job", "status", "second"]);
    assert!(text.contains("power: group rack=r1"), "{text}");
    assert!(running_allocs(&addr, "second").is_empty());

    // A job of a lower class still fits r1: 320 + 270 W <= 873 W.
    let low = write_spec(
        dir.path(),
        "low",
        &gpu_job("low", "power_class = \"low\"\n"),
    );
    must_cli_ok(&["--addr", &addr, "job", "run", &low]);
    let on = until("low running", Duration::from_secs(20), || {
        node_of(&addr, "low")
    })
    .await;
    assert_eq!(on, "n1");
    let status: Value = json(&addr, &["job", "status", "low"]);
    assert_eq!(status["placement"]["power_class"], "low", "{status:#}");

    // Raising r1's budget gives the waiting job a home there:
    // 320 + 270 + 620 = 1210 W <= 1940 W.
    budget(&addr, "rack=r1", "2000");
    let on = until("second running", Duration::from_secs(20), || {
        node_of(&addr, "second")
    })
    .await;
    assert_eq!(on, "n1");
    let status = json(&addr, &["job", "status", "second"]);
    assert!(status["blocked"].is_null(), "{status:#}");
}
