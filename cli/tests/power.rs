//! GPU power budgets end to end on real processes (issue 20): `herd power
//! budget set|list|remove` and `herd power status` against a real
//! coordinator, bad input refused with exit 2 and nothing changed, the
//! share a node gets in its heartbeat reply, and a real agent with
//! SIMULATED GPUs capping them under its share.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::agents::{cluster_with_agents, must_have_ready_nodes};
use common::*;
use herd_api::proto::agent::agent_client::AgentClient;
use herd_api::proto::agent::{HeartbeatReply, HeartbeatRequest, RegisterNodeRequest};
use herd_api::proto::v1::{GpuPower, NodeUsage, PowerEvent, Resources};
use herd_chaos::process_cluster::ProcessCluster;
use serde_json::Value;

/// Registers node `name` with `gpus` H100s and label `rack=RACK`, with no
/// agent behind it.
async fn register(cluster: &ProcessCluster, name: &str, rack: &str, gpus: u32) {
    let request = RegisterNodeRequest {
        name: name.to_string(),
        addr: "127.0.0.1:1".to_string(),
        capacity: Some(Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus,
            gpu_model: if gpus > 0 { "h100" } else { "" }.to_string(),
        }),
        labels: [("rack".to_string(), rack.to_string())].into(),
        drivers: vec![],
        http: String::new(),
    };
    cluster
        .client()
        .expect("client")
        .call(|ch| {
            let request = request.clone();
            async move { AgentClient::new(ch).register(request).await }
        })
        .await
        .expect("register");
}

/// Sends node `name`'s heartbeat (to the leader) with `usage`.
async fn heartbeat(cluster: &ProcessCluster, name: &str, usage: NodeUsage) -> HeartbeatReply {
    let request = HeartbeatRequest {
        name: name.to_string(),
        usage: Some(usage),
    };
    cluster
        .client()
        .expect("client")
        .call(|ch| {
            let request = request.clone();
            async move {
                AgentClient::new(ch)
                    .heartbeat(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .expect("heartbeat")
}

fn budgets(addr: &str) -> Value {
    json(addr, &["power", "budget", "list"])
}

/// `herd --addr ADDR ARGS` must fail with exit 2 naming `needle`.
fn must_refuse(addr: &str, args: &[&str], needle: &str) {
    let mut full = vec!["--addr", addr];
    full.extend_from_slice(args);
    let out = must_run_cli(&full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "herd {args:?}: {stderr}");
    assert!(stderr.contains(needle), "herd {args:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_set_listed_and_removed_and_bad_input_changes_nothing() {
    let cluster = must_start_one_member(&[]).await;
    let addr = cluster.addr_list();
    register(&cluster, "a", "r1", 8).await;
    register(&cluster, "b", "r1", 8).await;
    register(&cluster, "c", "r2", 0).await;

    must_cli_ok(&[
        "--addr", &addr, "power", "budget", "set", "rack=r1", "--watts", "8000",
    ]);
    let listed = budgets(&addr);
    let list = listed.as_array().expect("list");
    assert_eq!(list.len(), 1, "{listed:#}");
    assert_eq!(list[0]["group"], "rack=r1");
    assert_eq!(list[0]["budget_watts"], 8000);
    assert_eq!(list[0]["nodes"], 2);
    assert_eq!(list[0]["cap_fraction"], 0.9);
    // Idle: 16 H100s at about 80 W.
    assert_eq!(list[0]["idle_watts"], 1280.0);

    // Bad input: exit 2, a clear error, and the budget as it was.
    for (args, needle) in [
        (
            vec!["power", "budget", "set", "rack=r1", "--watts", "0"],
            "more than 0",
        ),
        (
            vec!["power", "budget", "set", "rack=r1", "--watts", "-5"],
            "--watts",
        ),
        (
            vec!["power", "budget", "set", "rack=r1", "--watts", "200000000"],
            "100 MW",
        ),
        (
            vec!["power", "budget", "set", "rack", "--watts", "5000"],
            "key=value",
        ),
        (
            vec!["power", "budget", "set", "rack=r9", "--watts", "5000"],
            "no node has rack=r9",
        ),
        (
            vec!["power", "budget", "set", "zone=z1", "--watts", "5000"],
            "no node has the label",
        ),
        (
            vec!["power", "budget", "set", "rack=r2", "--watts", "5000"],
            "no GPU",
        ),
        (
            vec!["power", "budget", "set", "rack=r1", "--watts", "1000"],
            "idle GPU power of 1280 W",
        ),
        (
            vec![
                "power", "budget", "set", "rack=r1", "--watts", "5000", "--cap-at", "1.5",
            ],
            "--cap-at",
        ),
        (
            vec![
                "power",
                "budget",
                "set",
                "rack=r1",
                "--watts",
                "5000",
                "--hard-at",
                "0.8",
            ],
            "second threshold",
        ),
        (
            vec!["power", "budget", "remove", "cluster"],
            "no power budget",
        ),
    ] {
        must_refuse(&addr, &args, needle);
        assert_eq!(budgets(&addr), listed, "after {args:?}");
    }

    // The status before any heartbeat: nothing drawn, nothing capped.
    let status = json(&addr, &["power", "status"]);
    let group = &status.as_array().expect("groups")[0];
    assert_eq!(group["group"], "rack=r1");
    assert_eq!(group["draw_watts"], 0.0);
    assert_eq!(group["headroom_watts"], 8000.0);
    assert_eq!(group["capped_gpus"], 0);
    assert_eq!(group["events"], Value::Array(vec![]));

    // A node's heartbeat reply carries its share (half: equal nameplates),
    // and what it reports is summed into the group's status.
    let usage = NodeUsage {
        gpu_power_watts: 3500.0,
        gpus: (0..8)
            .map(|i| GpuPower {
                index: i,
                capped: i >= 6,
                ..GpuPower::default()
            })
            .collect(),
        power_events: vec![PowerEvent {
            at_ms: 1,
            kind: "cap".into(),
            detail: "2 GPU(s) lowered".into(),
        }],
        ..NodeUsage::default()
    };
    let reply = heartbeat(&cluster, "a", usage).await;
    let share = reply.power.expect("a share");
    assert_eq!((share.watts, share.group.as_str()), (4000.0, "rack=r1"));
    assert_eq!((share.cap_fraction, share.hard_fraction), (0.9, 0.97));
    assert!(heartbeat(&cluster, "c", NodeUsage::default())
        .await
        .power
        .is_none());
    let status = json(&addr, &["power", "status"]);
    let group = &status.as_array().expect("groups")[0];
    assert_eq!(group["draw_watts"], 3500.0);
    assert_eq!(group["headroom_watts"], 4500.0);
    assert_eq!(group["capped_gpus"], 2);
    assert_eq!(group["events"][0]["detail"], "a: 2 GPU(s) lowered");

    // Replaced, then removed: the share follows.
    must_cli_ok(&[
        "--addr",
        &addr,
        "power",
        "budget",
        "set",
        "rack=r1",
        "--watts",
        "6000",
        "--cap-at",
        "0.8",
        "--hard-at",
        "0.95",
    ]);
    let share = heartbeat(&cluster, "a", NodeUsage::default())
        .await
        .power
        .expect("share");
    assert_eq!(
        (share.watts, share.cap_fraction, share.hard_fraction),
        (3000.0, 0.8, 0.95)
    );
    must_cli_ok(&["--addr", &addr, "power", "budget", "remove", "rack=r1"]);
    assert_eq!(budgets(&addr), Value::Array(vec![]));
    assert!(heartbeat(&cluster, "a", NodeUsage::default())
        .await
        .power
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_caps_its_simulated_gpus_under_its_share_and_releases_them() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "3000").await;
    // 8 SIMULATED H100s drawing about 4360 W (activities pinned at 60 to
    // 90 %: no work runs on them).
    agents
        .start(
            "p1",
            &[
                "--sim-gpus",
                "8",
                "--sim-gpu-model",
                "h100",
                "--sim-gpu-activity",
                "0.6,0.7,0.8,0.9",
                "--labels",
                "rack=r1",
            ],
        )
        .expect("start agent");
    must_have_ready_nodes(&addr, &["p1"]).await;
    must_cli_ok(&[
        "--addr", &addr, "power", "budget", "set", "rack=r1", "--watts", "4000",
    ]);

    let capped = until(
        "the agent to cap its GPUs under 4000 W",
        Duration::from_secs(30),
        || {
            let status = json(&addr, &["power", "status"]);
            let group = status.as_array()?.first()?.clone();
            let draw = group["draw_watts"].as_f64()?;
            (group["capped_gpus"].as_u64()? > 0 && draw > 0.0 && draw <= 4000.0).then_some(group)
        },
    )
    .await;
    let events = capped["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["kind"] == "share")
            && events
                .iter()
                .any(|e| e["kind"] == "cap" || e["kind"] == "cap_all"),
        "{capped:#}"
    );
    assert!(capped["headroom_watts"].as_f64().expect("headroom") >= 0.0);

    // The budget removed: the agent puts its limits back.
    must_cli_ok(&["--addr", &addr, "power", "budget", "remove", "rack=r1"]);
    must_cli_ok(&[
        "--addr", &addr, "power", "budget", "set", "cluster", "--watts", "100000",
    ]);
    until("the caps released", Duration::from_secs(30), || {
        let status = json(&addr, &["power", "status"]);
        let group = status.as_array()?.first()?.clone();
        (group["capped_gpus"].as_u64()? == 0 && group["draw_watts"].as_f64()? > 4000.0)
            .then_some(())
    })
    .await;
}
