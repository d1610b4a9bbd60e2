//! Placement through the real Raft path: jobs become allocations on
//! registered nodes, work that cannot fit says why, higher priority preempts
//! lower, and stopping a job stops its allocations. (Node agents that run the
//! allocations come next; here nodes are registered through the agent API.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

fn spec(name: &str, priority: u32, count: u32, cpu: u32) -> String {
    format!(
        "name = \"{name}\"\ntype = \"service\"\ncount = {count}\npriority = {priority}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[task.resources]\ncpu = {cpu}\nmemory = \"256MiB\"\n"
    )
}

/// Waits until `condition` holds for `herd alloc list -o json`.
async fn must_see_allocs(
    addr: &str,
    what: &str,
    condition: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut last = Vec::new();
    let found = until_or_none(Duration::from_secs(20), || {
        let allocs = json(addr, &["alloc", "list"]);
        last = allocs.as_array().cloned().unwrap_or_default();
        condition(&last).then(|| last.clone())
    })
    .await;
    found.unwrap_or_else(|| panic!("never saw {what}: {last:#?}"))
}

fn live<'a>(allocs: &'a [Value], job: &str) -> Vec<&'a Value> {
    allocs
        .iter()
        .filter(|a| a["job"] == job && a["desired"] == "run" && a["status"] == "pending")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_placed_blocked_preempted_and_stopped() {
    // These nodes are registrations without agents: no heartbeats, so a TTL
    // long enough that none is marked down during the test.
    let cluster =
        ProcessCluster::start(herd_bin(), 3, &["--node-ttl-ms", "3600000"]).expect("start");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    for node in ["n1", "n2", "n3"] {
        must_register_node(&cluster, node, 4000).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write spec");
        path.display().to_string()
    };

    // Larger than any node: refused at submit time, nothing stored.
    let huge = write("huge.toml", spec("huge", 50, 1, 5000));
    let out = must_run_cli(&["--addr", &addr, "job", "run", &huge]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node could ever hold"));

    // Low-priority work fills every node: 6 instances x 2000m on 3 x 4000m.
    must_cli_ok(&[
        "--addr",
        &addr,
        "job",
        "run",
        &write("filler.toml", spec("filler", 10, 6, 2000)),
    ]);
    let allocs = must_see_allocs(&addr, "6 filler allocations", |a| {
        live(a, "filler").len() == 6
    })
    .await;
    let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
    for a in live(&allocs, "filler") {
        *per_node
            .entry(a["node"].as_str().unwrap_or("").to_string())
            .or_default() += 2000;
        assert_eq!(a["generation"], 1);
    }
    assert!(
        per_node.values().all(|cpu| *cpu <= 4000),
        "over-committed: {per_node:?}"
    );

    // A seventh filler instance has no room: pending with a reason, never
    // over-committed. `herd job run` waits for it, then gives up naming why.
    let filler7 = write("filler7.toml", spec("filler", 10, 7, 2000));
    let out = must_run_cli(&["--addr", &addr, "job", "run", "--timeout", "5s", &filler7]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("6/7 instances placed after 5s") && stderr.contains("free cpu"),
        "{stderr}"
    );
    let status = until("the blocked reason", Duration::from_secs(20), || {
        let status = json(&addr, &["job", "status", "filler"]);
        (status["version"] == 2 && status["blocked"].is_string()).then_some(status)
    })
    .await;
    let reason = status["blocked"].as_str().unwrap_or("");
    assert!(
        reason.contains("lack free cpu") || reason.contains("free cpu"),
        "{reason}"
    );
    let allocs = must_see_allocs(&addr, "6 filler v2 allocations", |a| {
        live(a, "filler").len() == 6
    })
    .await;

    // A priority-80 job evicts exactly one priority-10 instance and runs.
    must_cli_ok(&[
        "--addr",
        &addr,
        "job",
        "run",
        &write("urgent.toml", spec("urgent", 80, 1, 2000)),
    ]);
    let after = must_see_allocs(&addr, "the urgent allocation", |a| {
        live(a, "urgent").len() == 1
    })
    .await;
    let preempted: Vec<&Value> = after
        .iter()
        .filter(|a| a["status"] == "preempted")
        .collect();
    assert_eq!(preempted.len(), 1, "{after:#?}");
    assert_eq!(preempted[0]["job"], "filler");
    assert_eq!(live(&after, "filler").len(), 5, "nothing else touched");
    for before in live(&allocs, "filler") {
        if before["id"] != preempted[0]["id"] {
            assert!(after
                .iter()
                .any(|a| a["id"] == before["id"] && a["status"] == "pending"));
        }
    }
    let filler = json(&addr, &["job", "status", "filler"]);
    assert!(
        filler["blocked"].is_string(),
        "the evicted work is requeued and waits: {filler}"
    );

    // Stopping a job stops its allocations.
    must_cli_ok(&["--addr", &addr, "job", "stop", "urgent"]);
    must_see_allocs(&addr, "urgent stopped", |a| {
        a.iter()
            .filter(|x| x["job"] == "urgent")
            .all(|x| x["status"] == "stopped" && x["desired"] == "stop")
    })
    .await;
    // ... which frees room: the requeued filler instance is placed again.
    must_see_allocs(&addr, "filler back to 6", |a| live(a, "filler").len() == 6).await;
    let one = &live(&after, "urgent")[0];
    let id = one["id"].as_str().unwrap_or("");
    let detail = json(&addr, &["alloc", "status", id]);
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, vec!["placed", "stopped"], "{detail}");

    // Drain n1 with n3 ineligible: n1's instances stop and wait, since n2 is
    // full and n3 takes nothing new; a fresh node n4 then takes them.
    must_cli_ok(&["--addr", &addr, "node", "eligibility", "n3", "off"]);
    must_cli_ok(&["--addr", &addr, "node", "drain", "n1"]);
    let drained = must_see_allocs(&addr, "n1 emptied", |a| {
        live(a, "filler").len() == 4
            && !a.iter().any(|x| x["node"] == "n1" && x["desired"] == "run")
    })
    .await;
    assert!(drained
        .iter()
        .filter(|a| a["node"] == "n1" && a["job"] == "filler" && a["status"] == "stopped")
        .any(|a| a["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("node n1 drained; restarted elsewhere"))))));
    let nodes = json(&addr, &["node", "list"]);
    let n = |name: &str| {
        nodes
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(
        (n("n1")["status"].clone(), n("n1")["eligible"].clone()),
        (Value::from("draining"), Value::from(false))
    );
    assert_eq!(
        (n("n3")["status"].clone(), n("n3")["eligible"].clone()),
        (Value::from("ready"), Value::from(false))
    );
    must_register_node(&cluster, "n4", 4000).await;
    let replaced = must_see_allocs(&addr, "filler re-placed on n4", |a| {
        live(a, "filler").len() == 6
    })
    .await;
    let on_n4 = live(&replaced, "filler")
        .iter()
        .filter(|a| a["node"] == "n4")
        .count();
    assert_eq!(on_n4, 2, "{replaced:#?}");
    // Eligible again, the drained node is ready for new work.
    must_cli_ok(&["--addr", &addr, "node", "eligibility", "n1", "on"]);
    let nodes = json(&addr, &["node", "list"]);
    let n1 = nodes
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == "n1").cloned())
        .unwrap_or_default();
    assert_eq!(
        (n1["status"].clone(), n1["eligible"].clone()),
        (Value::from("ready"), Value::from(true))
    );
    let unknown = must_run_cli(&["--addr", &addr, "node", "drain", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
}
