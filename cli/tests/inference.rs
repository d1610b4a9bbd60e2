//! The `inference` driver end to end on real processes: 1 coordinator and 2
//! `herd node` agents run a SIMULATED LLM engine as a service job; `herd
//! infer` streams exactly the tokens asked for with a TTFT; a request longer
//! than the instance's KV cache fails with a clear error and exit code 2,
//! leaving the engine serving; the agent reports the engine's stats; an
//! agent restart re-adopts the engine without restarting it; `herd job
//! stop` leaves no engine process.

mod common;

use std::time::{Duration, Instant};

use common::agents::cluster_with_agents;
use common::*;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::EngineStatsRequest;
use serde_json::Value;

/// The example spec, made small through its `[task.config]`: 32 KV
/// blocks (512 tokens), 10× faster than modelled.
fn spec() -> String {
    let mut text = String::new();
    for line in include_str!("../../examples/llm.toml").lines() {
        let line = match line.split_once('=').map(|(k, _)| k.trim()) {
            Some("kv_blocks") => "kv_blocks = \"32\"",
            Some("time_scale") => "time_scale = \"0.1\"",
            _ => line,
        };
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_infer_streams_tokens_refuses_over_capacity_and_stop_leaves_nothing() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["i1", "i2"] {
        agents.start(name, &[]).expect("start agent");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("llm.toml");
    std::fs::write(&path, spec()).expect("write spec");
    let path = path.display().to_string();
    until("both nodes ready", Duration::from_secs(20), || {
        let nodes = json(&addr, &["node", "list"]);
        (nodes.as_array()?.len() == 2).then_some(())
    })
    .await;
    must_cli_ok(&["--addr", &addr, "job", "run", &path]);

    // Served once the engine is up (the allocation runs before it listens).
    let summary = until(
        "a first answer from herd infer",
        Duration::from_secs(30),
        || {
            let out = must_run_cli(&[
                "--addr",
                &addr,
                "infer",
                "llm",
                "--prompt-tokens",
                "100",
                "--max-tokens",
                "40",
                "-o",
                "json",
            ]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json summary"))
        },
    )
    .await;
    assert_eq!(summary["tokens"], 40, "{summary}");
    assert_eq!(summary["simulated"], true);
    let ttft = summary["ttft_ms"].as_f64().expect("ttft");
    assert!(ttft > 0.0, "{summary}");
    assert!(
        summary["tbt_p99_ms"].as_f64().expect("p99")
            >= summary["tbt_mean_ms"].as_f64().expect("mean")
    );

    // Text output streams one line per token, then the summary.
    let text = must_cli_ok(&[
        "--addr",
        &addr,
        "infer",
        "llm",
        "--prompt-tokens",
        "20",
        "--max-tokens",
        "5",
        "--priority",
        "high",
    ]);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("token")).count(),
        5,
        "{text}"
    );
    assert!(text.contains("TTFT"), "{text}");

    // Longer than the 512-token cache: refused, clearly, as bad input.
    let out = must_run_cli(&[
        "--addr",
        &addr,
        "infer",
        "llm",
        "--prompt-tokens",
        "500",
        "--max-tokens",
        "100",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("KV cache") && stderr.contains("512 tokens"),
        "{stderr}"
    );
    // Out of bounds before any engine: refused by the CLI.
    let out = must_run_cli(&[
        "--addr",
        &addr,
        "infer",
        "llm",
        "--prompt-tokens",
        "0",
        "--max-tokens",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));

    // The agent polls its engine's stats; nothing is left in it.
    let allocs = json(&addr, &["alloc", "list", "--job", "llm"]);
    let alloc = allocs
        .as_array()
        .and_then(|a| a.iter().find(|a| a["status"] == "running"))
        .cloned()
        .expect("a running allocation");
    let node = alloc["node"].as_str().expect("node").to_string();
    let nodes = json(&addr, &["node", "list"]);
    let node_addr = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == node.as_str()))
        .and_then(|n| n["addr"].as_str())
        .expect("node address")
        .to_string();
    // The engine's output is the allocation's log.
    let id = alloc["id"].as_str().expect("id").to_string();
    let logs = must_cli_ok(&["--addr", &addr, "alloc", "logs", &id]);
    assert!(logs.contains("SIMULATED"), "{logs}");
    let mut agent = NodeAgentClient::connect(format!("http://{node_addr}"))
        .await
        .expect("agent");
    let started = Instant::now();
    let stats = loop {
        let reply = agent
            .engine_stats(EngineStatsRequest {})
            .await
            .expect("engine stats")
            .into_inner();
        // Polled a few times a second: wait for a poll after the last request.
        let stats = reply
            .engines
            .into_iter()
            .find(|e| e.alloc_id == alloc["id"])
            .and_then(|e| e.stats);
        if let Some(stats) = stats.filter(|s| s.completed_total >= 2 && s.batch_size == 0) {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no idle stats polled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats.total_blocks, 32);
    assert_eq!((stats.free_blocks, stats.queue_len), (32, 0));

    let engines: Vec<u32> = agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == "llm")
        .map(|w| w.pid)
        .collect();
    assert_eq!(engines.len(), 1, "one engine process");

    // The agent dies and comes back: the same engine serves on, re-adopted.
    agents.kill_agent(&node).expect("kill agent");
    agents.restart(&node).expect("restart agent");
    let answer = until(
        "herd infer after the agent restart",
        Duration::from_secs(20),
        || {
            let out = must_run_cli(&[
                "--addr",
                &addr,
                "infer",
                "llm",
                "--prompt-tokens",
                "10",
                "--max-tokens",
                "3",
                "-o",
                "json",
            ]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json summary"))
        },
    )
    .await;
    assert_eq!(answer["tokens"], 3, "{answer}");
    let after: Vec<u32> = agents
        .workloads()
        .into_iter()
        .filter(|w| w.job == "llm")
        .map(|w| w.pid)
        .collect();
    assert_eq!(after, engines, "the engine was re-adopted, not restarted");
    must_cli_ok(&["--addr", &addr, "job", "stop", "llm"]);
    until("no engine process left", Duration::from_secs(15), || {
        agents
            .workloads()
            .iter()
            .all(|w| w.job != "llm")
            .then_some(())
    })
    .await;
}
