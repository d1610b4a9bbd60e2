//! Prometheus metrics end to end on real processes: three coordinators and
//! a node agent, each with `--metrics-listen`, run a job; `/metrics` of the
//! leader, a follower and the agent is scraped over HTTP and its values
//! checked against the API (nodes, jobs, allocations running, Raft
//! indexes, leadership, gRPC calls counted), and every scrape passes
//! `promtool check metrics` (Debian's `prometheus` package; skipped with a
//! message where it is missing, failed under CI=true).

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agents::{must_have_ready_nodes, running_allocs};
use common::*;
use herd_chaos::agents::AgentSet;
use herd_chaos::ports::free_loopback_port;
use herd_chaos::process_cluster::{ClusterSetup, ProcessCluster};

const JOB: &str = "metered";
const INSTANCES: usize = 2;

fn spec() -> String {
    format!(
        "name = \"{JOB}\"\ntype = \"service\"\ncount = {INSTANCES}\n[task]\ndriver = \"exec\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"echo metered $HERD_ALLOC_ID; exec sleep 600\"]\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n"
    )
}

/// `GET /metrics` on `addr`: the status line must be 200; returns the body.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{addr}: {head}"
    );
    body.to_string()
}

/// The value of the sample `series` (its name and labels exactly as
/// exposed, `name` or `name{a="b"}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
}

fn must_sample(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

/// Runs `promtool check metrics` on `text` (what a scrape of `what`
/// returned); false when promtool is not installed.
fn promtool_accepts(what: &str, text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused the metrics of {what}:\n{}{}\n--- the metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinators_and_agents_serve_metrics_that_match_the_api_and_pass_promtool() {
    let addrs = ProcessCluster::pick_addrs(3).expect("addresses");
    let mut metrics: BTreeMap<u64, String> = BTreeMap::new();
    for id in addrs.keys() {
        let port = free_loopback_port().expect("port");
        metrics.insert(*id, format!("127.0.0.1:{port}"));
    }
    let setup = ClusterSetup {
        extra_args: vec!["--node-ttl-ms".into(), "3000".into()],
        own_args: metrics
            .iter()
            .map(|(id, at)| (*id, vec!["--metrics-listen".to_string(), at.clone()]))
            .collect(),
        ..ClusterSetup::default()
    };
    let cluster = ProcessCluster::start_at(herd_bin(), &addrs, setup).expect("start cluster");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    let agent_metrics = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    agents
        .start(
            "metered-1",
            &["--metrics-listen", &agent_metrics, "--sim-gpus", "2"],
        )
        .expect("start agent");
    must_have_ready_nodes(&addr, &["metered-1"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let spec = write_spec(dir.path(), JOB, &spec());
    must_cli_ok(&["--addr", &addr, "job", "run", &spec]);
    let running = until(
        "the job's instances running",
        Duration::from_secs(30),
        || {
            let running = running_allocs(&addr, JOB);
            (running.len() == INSTANCES).then_some(running)
        },
    )
    .await;

    // The leader: the cluster as the API shows it.
    let leader_metrics = &metrics[&leader];
    let report = cluster
        .member_report(leader)
        .await
        .expect("the leader's report");
    let text = until(
        "the leader's metrics to show the running allocations and the node's heartbeat",
        Duration::from_secs(20),
        || {
            let text = scrape(leader_metrics);
            let running = sample(&text, "herd_allocations{status=\"running\"}");
            let heard = sample(&text, "herd_node_heartbeat_age_seconds{node=\"metered-1\"}");
            (running == Some(INSTANCES as f64) && heard.is_some()).then_some(text)
        },
    )
    .await;
    let nodes = json(&addr, &["node", "list"]);
    let ready = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == "ready")
        .count();
    assert_eq!(
        must_sample(&text, "herd_nodes{status=\"ready\"}"),
        ready as f64
    );
    assert_eq!(must_sample(&text, "herd_nodes{status=\"down\"}"), 0.0);
    assert_eq!(must_sample(&text, "herd_jobs{status=\"running\"}"), 1.0);
    assert_eq!(must_sample(&text, "herd_raft_is_leader"), 1.0);
    assert_eq!(
        must_sample(&text, "herd_raft_term"),
        report.term as f64,
        "no election since the report"
    );
    let applied = must_sample(&text, "herd_raft_applied_index");
    assert!(
        applied >= report.last_applied.unwrap_or(0) as f64 && applied > 0.0,
        "applied {applied}, reported {:?}",
        report.last_applied
    );
    assert!(must_sample(&text, "herd_raft_commit_index") >= applied);
    assert!(must_sample(&text, "herd_raft_last_log_index") >= applied);
    assert_eq!(must_sample(&text, "herd_raft_voters"), 3.0);
    assert!(must_sample(&text, "herd_raft_leader_changes_total") >= 1.0);
    assert!(
        must_sample(&text, "herd_scheduler_placements_total") >= INSTANCES as f64,
        "the leader placed the instances"
    );
    assert!(must_sample(&text, "herd_scheduler_plans_total{outcome=\"applied\"}") >= 1.0);
    let age = must_sample(&text, "herd_node_heartbeat_age_seconds{node=\"metered-1\"}");
    assert!((0.0..10.0).contains(&age), "heartbeat age {age}");
    assert_eq!(
        must_sample(&text, "herd_build_info{version=\"0.1.0\"}"),
        1.0
    );

    // A follower: the same state, and not the leader.
    let follower = *addrs.keys().find(|id| **id != leader).expect("a follower");
    let follower_text = until(
        "the follower's metrics to show the running allocations",
        Duration::from_secs(20),
        || {
            let text = scrape(&metrics[&follower]);
            (sample(&text, "herd_allocations{status=\"running\"}") == Some(INSTANCES as f64))
                .then_some(text)
        },
    )
    .await;
    assert_eq!(must_sample(&follower_text, "herd_raft_is_leader"), 0.0);
    assert_eq!(
        must_sample(&follower_text, "herd_nodes{status=\"ready\"}"),
        ready as f64
    );
    assert!(
        sample(
            &follower_text,
            "herd_node_heartbeat_age_seconds{node=\"metered-1\"}"
        )
        .is_none(),
        "only the leader knows heartbeats"
    );

    // A gRPC call is counted by the member that served it.
    let jobs_list = "herd_grpc_server_handled_total{grpc_service=\"herd.v1.Jobs\",grpc_method=\"List\",grpc_code=\"OK\"}";
    let follower_addr = &addrs[&follower];
    let before = sample(&scrape(&metrics[&follower]), jobs_list).unwrap_or(0.0);
    must_cli_ok(&["--addr", follower_addr, "job", "list"]);
    let after = must_sample(&scrape(&metrics[&follower]), jobs_list);
    assert!(after >= before + 1.0, "Jobs/List {before} -> {after}");

    // The agent: its allocations, its link, its GPUs, its server's calls.
    let here = running.iter().filter(|a| a["node"] == "metered-1").count();
    let agent_text = until(
        "the agent's metrics to show its running allocations",
        Duration::from_secs(20),
        || {
            let text = scrape(&agent_metrics);
            (sample(&text, "herd_agent_allocations_running{driver=\"exec\"}") == Some(here as f64))
                .then_some(text)
        },
    )
    .await;
    assert_eq!(
        must_sample(&agent_text, "herd_agent_coordinator_connected"),
        1.0
    );
    let since = must_sample(&agent_text, "herd_agent_last_heartbeat_age_seconds");
    assert!((0.0..10.0).contains(&since), "last heartbeat {since} s ago");
    assert!(
        must_sample(
            &agent_text,
            "herd_agent_coordinator_calls_total{call=\"register\",outcome=\"ok\"}"
        ) >= 1.0
    );
    assert!(must_sample(&agent_text, "herd_agent_gpu_power_limit_watts{gpu=\"0\"}") > 0.0);
    assert!(must_sample(&agent_text, "herd_agent_gpu_power_draw_watts{gpu=\"1\"}") >= 0.0);
    let logs = "herd_grpc_server_handled_total{grpc_service=\"herd.agent.v1.NodeAgent\",grpc_method=\"AllocLogs\",grpc_code=\"OK\"}";
    let before = sample(&agent_text, logs).unwrap_or(0.0);
    let first = running
        .iter()
        .find(|a| a["node"] == "metered-1")
        .and_then(|a| a["id"].as_str())
        .expect("an allocation on the agent's node");
    must_cli_ok(&["--addr", &addr, "alloc", "logs", first]);
    let after = until(
        "the agent to count the AllocLogs call",
        Duration::from_secs(10),
        || sample(&scrape(&agent_metrics), logs).filter(|n| *n >= before + 1.0),
    )
    .await;
    assert!(after >= before + 1.0);

    let scrapes = [
        ("the leader", scrape(leader_metrics)),
        ("a follower", scrape(&metrics[&follower])),
        ("the agent", scrape(&agent_metrics)),
    ];
    // Every metric exposed is documented.
    let doc = include_str!("../../docs/metrics.md");
    for (what, text) in &scrapes {
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = name.split_whitespace().next().unwrap_or_default();
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "{what} exposes {name}, which docs/metrics.md does not list"
            );
        }
    }
    // Every scrape is valid exposition text, as promtool lints it.
    let checked = scrapes
        .iter()
        .all(|(what, text)| promtool_accepts(what, text));
    if !checked {
        skip_or_fail(
            "promtool is not installed (Debian's `prometheus` package): the metrics were not linted",
        );
    }
    must_cli_ok(&["--addr", &addr, "job", "stop", JOB]);
}

/// A live migration between two agents is counted as it ends: by the
/// coordinator (ended by kind and outcome, with its downtime) and by both
/// agents (as source and as target).
#[tokio::test(flavor = "multi_thread")]
async fn a_live_migration_is_counted_by_the_coordinator_and_both_agents() {
    let coordinator_metrics = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    let cluster = must_start_one_member(&[
        "--node-ttl-ms",
        "3000",
        "--metrics-listen",
        &coordinator_metrics,
    ])
    .await;
    let addr = cluster.addr_list();
    let mut agents = AgentSet::new(herd_bin(), &addr).expect("agents");
    let mut agent_metrics = BTreeMap::new();
    for name in ["mv-1", "mv-2"] {
        let at = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
        agents
            .start(name, &["--metrics-listen", &at])
            .expect("start agent");
        agent_metrics.insert(name, at);
    }
    must_have_ready_nodes(&addr, &["mv-1", "mv-2"]).await;
    let dir = tempfile::tempdir().expect("dir");
    let spec = write_spec(
        dir.path(),
        "vm",
        "name = \"vm\"\ntype = \"service\"\n[task]\ndriver = \"simvm\"\n[task.config]\ndirty_rate = \"1MiB\"\nseed = 5\n[task.resources]\ncpu = 100\nmemory = \"32MiB\"\n",
    );
    must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &spec]);
    let (alloc, source) = until("the simulated VM running", Duration::from_secs(20), || {
        let allocs = running_allocs(&addr, "vm");
        let [a] = allocs.as_slice() else { return None };
        Some((
            a["id"].as_str()?.to_string(),
            a["node"].as_str()?.to_string(),
        ))
    })
    .await;
    let target = if source == "mv-1" { "mv-2" } else { "mv-1" };
    must_cli_ok(&[
        "--addr", &addr, "alloc", "migrate", &alloc, "--to", target, "--wait",
    ]);
    let record = json(&addr, &["migration", "list", "--alloc", &alloc])
        .as_array()
        .and_then(|m| m.first().cloned())
        .expect("a migration");
    assert_eq!(record["phase"], "completed", "{record:#}");

    let text = until(
        "the coordinator to count the migration",
        Duration::from_secs(20),
        || {
            let text = scrape(&coordinator_metrics);
            sample(
                &text,
                "herd_migrations_ended_total{kind=\"simvm\",outcome=\"completed\"}",
            )
            .is_some()
            .then_some(text)
        },
    )
    .await;
    assert_eq!(
        must_sample(
            &text,
            "herd_migrations_ended_total{kind=\"simvm\",outcome=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(
        must_sample(
            &text,
            "herd_migration_downtime_seconds_count{kind=\"simvm\"}"
        ),
        1.0
    );
    let downtime = must_sample(&text, "herd_migration_downtime_seconds_sum{kind=\"simvm\"}");
    let reported = record["downtime_ms"].as_u64().expect("downtime") as f64 / 1000.0;
    assert!(
        (downtime - reported).abs() < 1e-6,
        "{downtime} vs {reported}"
    );
    assert!(
        sample(
            &text,
            "herd_migrations_active{kind=\"simvm\",phase=\"transferring\"}"
        )
        .is_none(),
        "nothing in flight"
    );
    for (node, role) in [(source.as_str(), "source"), (target, "target")] {
        let series = format!(
            "herd_agent_migrations_total{{role=\"{role}\",kind=\"simvm\",outcome=\"completed\"}}"
        );
        let at = &agent_metrics[node];
        until(
            &format!("{node} to count the migration as its {role}"),
            Duration::from_secs(20),
            || (sample(&scrape(at), &series) == Some(1.0)).then_some(()),
        )
        .await;
    }
    let target_text = scrape(&agent_metrics[target]);
    assert_eq!(
        must_sample(
            &target_text,
            "herd_agent_allocations_running{driver=\"simvm\"}"
        ),
        1.0
    );
    for (what, text) in [
        ("the coordinator", text.as_str()),
        ("the target", target_text.as_str()),
    ] {
        if !promtool_accepts(what, text) {
            skip_or_fail("promtool is not installed (Debian's `prometheus` package): the metrics were not linted");
            break;
        }
    }
    must_cli_ok(&["--addr", &addr, "job", "stop", "vm"]);
}
