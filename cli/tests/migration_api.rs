//! Live migrations through the real API of a real coordinator process: the
//! CLI starts and follows them (`herd alloc migrate --wait`, `herd
//! migration list|status`), and a fake agent plays both nodes over gRPC,
//! watching its assignment sets and reporting through
//! `Agent.ReportMigration` as the node agents do. Nodes are registrations
//! that declare drivers able to move (no workload runs): the test judges
//! the coordinator's side of the protocol, not the agents'.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use herd_api::client::{ClientError, HerdClient};
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{
    AllocReport, AssignedAllocation, AssignedAllocations, MigrationReportReply,
    MigrationReportRequest, RegisterNodeRequest, ReportAllocationsRequest, WatchAllocationsRequest,
};
use herd_api::proto::v1::{DriverCapabilities, Resources};
use serde_json::Value;
use tonic::Code;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Registers `name` as an agent would, declaring that its simvm driver
/// moves live and its exec driver does not.
async fn register(client: &HerdClient, name: &str) {
    let request = RegisterNodeRequest {
        name: name.to_string(),
        addr: format!("127.0.0.1:{}", 7000 + name.len()),
        capacity: Some(Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: 0,
            gpu_model: String::new(),
        }),
        labels: Default::default(),
        drivers: vec![
            DriverCapabilities {
                driver: "simvm".into(),
                migration: "live".into(),
                pause: true,
                power_cap: false,
            },
            DriverCapabilities {
                driver: "exec".into(),
                migration: "none".into(),
                pause: false,
                power_cap: false,
            },
        ],
        http: String::new(),
    };
    client
        .call(|ch| {
            let request = request.clone();
            async move { AgentClient::new(ch).register(request).await }
        })
        .await
        .expect("register");
}

/// `node`'s agent says allocation `id` runs.
async fn report_running(client: &HerdClient, node: &str, id: &str) {
    let request = ReportAllocationsRequest {
        node: node.to_string(),
        reports: vec![AllocReport {
            id: id.to_string(),
            generation: 1,
            status: "running".into(),
            at_ms: herd_api::clock::now_ms(),
            event: "started".into(),
            detail: String::new(),
            exit_code: None,
            signal: None,
        }],
    };
    let reply = client
        .call(|ch| {
            let request = request.clone();
            async move { AgentClient::new(ch).report_allocations(request).await }
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(reply.accepted, 1, "{:?}", reply.refused);
}

/// `node` reports `action` of migration `id`, as a node agent does.
async fn report(
    client: &HerdClient,
    node: &str,
    id: &str,
    action: &str,
    phase: &str,
    figures: (u64, u32, u64),
    reason: &str,
) -> Result<MigrationReportReply, ClientError> {
    let (bytes, rounds, downtime_ms) = figures;
    let request = MigrationReportRequest {
        node: node.into(),
        id: id.into(),
        action: action.into(),
        phase: phase.into(),
        bytes,
        rounds,
        downtime_ms,
        reason: reason.into(),
        ..Default::default()
    };
    client
        .call(|ch| {
            let request = request.clone();
            async move { AgentClient::new(ch).report_migration(request).await }
        })
        .await
        .map(|r| r.into_inner())
}

/// The assignment stream of `node`.
type Sets = tonic::Streaming<AssignedAllocations>;

async fn watch(addr: &str, node: &str) -> Sets {
    AgentClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .watch_allocations(WatchAllocationsRequest { node: node.into() })
        .await
        .expect("watch")
        .into_inner()
}

/// The next set of `sets` whose allocations satisfy `wanted`.
async fn set_where(
    sets: &mut Sets,
    what: &str,
    wanted: impl Fn(&[AssignedAllocation]) -> bool,
) -> Vec<AssignedAllocation> {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(set) = sets.next().await {
            let set = set.expect("a set");
            if wanted(&set.allocs) {
                return Some(set.allocs);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(allocs)) => allocs,
        _ => panic!("no assignment set with {what}"),
    }
}

/// `herd ... alloc migrate ARGS` run to completion: exit code, stdout, stderr.
fn migrate(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut full = vec!["--addr", addr, "alloc", "migrate"];
    full.extend_from_slice(args);
    let out = must_run_cli(&full);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `herd alloc migrate ARGS --wait` started in the background.
fn migrate_waiting(addr: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(herd_bin())
        .args(["--addr", addr, "alloc", "migrate", "--wait"])
        .args(args)
        .env("HERD_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start herd alloc migrate --wait")
}

async fn finished(child: tokio::process::Child) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("herd alloc migrate --wait ended")
        .expect("its output");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn migrations(addr: &str, alloc: &str) -> Vec<Value> {
    json(addr, &["migration", "list", "--alloc", alloc])
        .as_array()
        .cloned()
        .expect("a JSON array")
}

/// The one active migration of `alloc`, once it is recorded.
async fn active_migration(addr: &str, alloc: &str) -> Value {
    until("the migration recorded", Duration::from_secs(20), || {
        migrations(addr, alloc)
            .into_iter()
            .find(|m| m["phase"] != "completed" && m["phase"] != "aborted")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_start_move_over_and_abort_through_the_api_and_the_cli() {
    // Registrations send no heartbeats: a TTL that never marks them down.
    let cluster = must_start_one_member(&["--node-ttl-ms", "3600000"]).await;
    let addr = cluster.addr_list();
    let member = addr.split(',').next().expect("an address").to_string();
    let client = cluster.client().expect("client");
    for node in ["n1", "n2", "n3"] {
        register(&client, node).await;
    }
    // n3 takes nothing new: the job lands on n1 or n2, and n3 is a target
    // a migration must refuse.
    must_cli_ok(&["--addr", &addr, "node", "eligibility", "n3", "off"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = write_spec(
        dir.path(),
        "vm",
        "name = \"vm\"\ntype = \"service\"\ncount = 1\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 1\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
    );
    let sh = write_spec(
        dir.path(),
        "sh",
        "name = \"sh\"\ntype = \"service\"\ncount = 1\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sleep\"\nargs = [\"600\"]\n[task.resources]\ncpu = 100\nmemory = \"64MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", &vm]);
    must_cli_ok(&["--addr", &addr, "job", "run", &sh]);
    let mut placed = Vec::new();
    for job in ["vm", "sh"] {
        let alloc = json(&addr, &["alloc", "list", "--job", job])[0].clone();
        let (id, node) = (
            alloc["id"].as_str().expect("id").to_string(),
            alloc["node"].as_str().expect("node").to_string(),
        );
        report_running(&client, &node, &id).await;
        placed.push((id, node));
    }
    let [(alloc, source), (sh_alloc, sh_node)] = <[(String, String); 2]>::try_from(placed)
        .unwrap_or_else(|p| panic!("two allocations: {p:?}"));
    let target = if source == "n1" { "n2" } else { "n1" }.to_string();
    let sh_other = if sh_node == "n1" { "n2" } else { "n1" };

    // Bad input: exit 2, saying what is wrong, and nothing recorded.
    for (args, needle) in [
        (vec![alloc.as_str(), "--to", &source], "already runs on"),
        (
            vec![alloc.as_str(), "--to", "n9"],
            "target node \"n9\" not found",
        ),
        (
            vec!["nope", "--to", &target],
            "allocation \"nope\" not found",
        ),
        (vec![alloc.as_str(), "--to", "n3"], "takes no new work"),
        (
            vec![sh_alloc.as_str(), "--to", sh_other],
            "cannot move live",
        ),
        (
            vec![sh_alloc.as_str(), "--to", sh_other],
            "a drain restarts it elsewhere",
        ),
        (
            vec![alloc.as_str(), "--to", &target, "--bandwidth", "0/s"],
            "never finish",
        ),
        (
            vec![alloc.as_str(), "--to", &target, "--downtime-limit", "0ms"],
            "at least 1ms",
        ),
        (
            vec![alloc.as_str(), "--to", &target, "--downtime-limit", "5m"],
            "downtime limit must be",
        ),
    ] {
        let (code, _, stderr) = migrate(&addr, &args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let none = json(&addr, &["migration", "list"]);
    assert_eq!(
        none,
        Value::Array(vec![]),
        "a refused migration was recorded"
    );

    // Both sides watch their sets, as agents do.
    let mut on_source = watch(&member, &source).await;
    let mut on_target = watch(&member, &target).await;

    let waiting = migrate_waiting(
        &addr,
        &[
            &alloc,
            "--to",
            &target,
            "--downtime-limit",
            "200ms",
            "--bandwidth",
            "1GiB/s",
        ],
    );
    let started = active_migration(&addr, &alloc).await;
    let id = started["id"].as_str().expect("id").to_string();
    assert_eq!(
        (&started["source"], &started["target"], &started["kind"]),
        (
            &Value::from(source.as_str()),
            &Value::from(target.as_str()),
            &Value::from("simvm")
        ),
        "{started:#}"
    );
    let (code, _, stderr) = migrate(&addr, &[&alloc, "--to", &target]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("already moving"), "{stderr}");

    // The source runs it and is told it leaves; the target readies it one
    // generation up and is told it comes.
    let outgoing = set_where(&mut on_source, "the outgoing part", |set| {
        set.iter().any(|a| a.id == alloc && a.migration.is_some())
    })
    .await;
    let outgoing = outgoing.iter().find(|a| a.id == alloc).expect("listed");
    let part = outgoing.migration.clone().expect("a part");
    assert_eq!(outgoing.generation, 1);
    assert_eq!(
        (
            part.id.as_str(),
            part.role.as_str(),
            part.peer_node.as_str()
        ),
        (id.as_str(), "source", target.as_str())
    );
    assert_eq!(
        (part.downtime_limit_ms, part.bandwidth_bytes_per_sec),
        (200, 1 << 30)
    );
    let incoming = set_where(&mut on_target, "the incoming part", |set| {
        set.iter().any(|a| a.id == alloc)
    })
    .await;
    let incoming = incoming.iter().find(|a| a.id == alloc).expect("listed");
    let part = incoming.migration.clone().expect("a part");
    assert_eq!(incoming.generation, 2);
    assert_eq!(incoming.env.get("HERD_NODE"), Some(&target));
    assert_eq!(
        (
            part.role.as_str(),
            part.peer_node.as_str(),
            part.from_generation
        ),
        ("target", source.as_str(), 1)
    );

    // Only the source drives it; a node outside it is refused outright.
    let stranger = report(&client, "n3", &id, "abort", "", (0, 0, 0), "").await;
    let stranger = stranger.expect_err("a third node's report");
    assert_eq!(
        stranger.code(),
        Some(Code::FailedPrecondition),
        "{stranger}"
    );
    assert!(stranger.to_string().contains("takes no part"), "{stranger}");
    let early = report(&client, &target, &id, "switch", "", (0, 0, 5), "").await;
    assert!(
        early.is_err_and(|e| e.to_string().contains("only its source")),
        "the target switched it over"
    );
    let bad = report(&client, &source, &id, "advance", "done", (0, 0, 0), "").await;
    assert_eq!(
        bad.expect_err("unknown phase").code(),
        Some(Code::InvalidArgument)
    );

    for (phase, bytes, rounds) in [
        ("preparing", 0, 0),
        ("transferring", 1 << 20, 1),
        ("transferring", 3 << 20, 2),
        // A retry of an older report repeats older figures: kept highest.
        ("transferring", 1 << 20, 1),
        ("switching", 3 << 20, 2),
    ] {
        let reply = report(
            &client,
            &source,
            &id,
            "advance",
            phase,
            (bytes, rounds, 0),
            "",
        )
        .await
        .unwrap_or_else(|e| panic!("advance to {phase}: {e}"));
        assert_eq!((reply.phase.as_str(), reply.generation), (phase, 1));
    }
    let switched = report(&client, &source, &id, "switch", "", (3 << 20, 2, 42), "")
        .await
        .expect("switched");
    assert_eq!(
        (switched.phase.as_str(), switched.generation),
        ("completed", 2)
    );
    let again = report(&client, &source, &id, "switch", "", (3 << 20, 2, 42), "")
        .await
        .expect("a repeated switch is answered");
    assert_eq!(again, switched);

    let (code, stdout, stderr) = finished(waiting).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("migration {id} completed")),
        "{stdout}"
    );
    assert!(stdout.contains("downtime 42 ms (limit 200 ms)"), "{stdout}");
    assert!(stdout.contains("3.00 MiB moved in 2 rounds"), "{stdout}");

    let moved = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(
        (&moved["node"], &moved["generation"]),
        (&Value::from(target.as_str()), &Value::from(2)),
        "{moved:#}"
    );
    let done = json(&addr, &["migration", "status", &id]);
    assert_eq!(
        (
            &done["phase"],
            &done["bytes"],
            &done["rounds"],
            &done["downtime_ms"]
        ),
        (
            &Value::from("completed"),
            &Value::from(3 << 20),
            &Value::from(2),
            &Value::from(42)
        ),
        "{done:#}"
    );
    assert!(
        done["error"].is_null() && done["total_ms"].is_u64(),
        "{done:#}"
    );
    // The switch-over ended both parts: the target runs it as its own, the
    // source has nothing left of it.
    set_where(&mut on_target, "the target's own copy", |set| {
        set.iter()
            .any(|a| a.id == alloc && a.generation == 2 && a.migration.is_none())
    })
    .await;
    set_where(&mut on_source, "the source without it", |set| {
        !set.iter().any(|a| a.id == alloc)
    })
    .await;

    // Back again, and the target (the old source) gives up: aborted, the
    // allocation stays where it was, and --wait exits 1 saying why.
    let waiting = migrate_waiting(&addr, &[&alloc, "--to", &source]);
    let back = active_migration(&addr, &alloc).await;
    let back_id = back["id"].as_str().expect("id").to_string();
    report(
        &client,
        &target,
        &back_id,
        "advance",
        "preparing",
        (0, 0, 0),
        "",
    )
    .await
    .expect("advanced");
    let aborted = report(
        &client,
        &source,
        &back_id,
        "abort",
        "",
        (0, 0, 0),
        "disk full",
    )
    .await
    .expect("aborted by the target");
    assert_eq!((aborted.phase.as_str(), aborted.generation), ("aborted", 2));
    let (code, stdout, stderr) = finished(waiting).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "migration {back_id} aborted: target {source}: disk full"
        )),
        "{stderr}"
    );
    let stayed = json(&addr, &["alloc", "status", &alloc]);
    assert_eq!(
        (&stayed["node"], &stayed["generation"]),
        (&Value::from(target.as_str()), &Value::from(2)),
        "{stayed:#}"
    );
    let all = migrations(&addr, &alloc);
    let phases: Vec<&Value> = all.iter().map(|m| &m["phase"]).collect();
    assert_eq!(phases, [&Value::from("completed"), &Value::from("aborted")]);
    assert_eq!(all[1]["error"], format!("target {source}: disk full"));
    // The target's set never kept the aborted incoming copy.
    set_where(&mut on_source, "the aborted copy gone", |set| {
        !set.iter().any(|a| a.id == alloc)
    })
    .await;
}
