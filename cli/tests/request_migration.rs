//! Request live migration, end to end on real processes: 1 coordinator and
//! 2 `herd node` agents, each running one instance (one SIMULATED engine
//! process) of an LLM service. A request enters at h1's agent, pinned to
//! h1's instance; mid-decode, `NodeAgent.MigrateRequest` moves it to h2's
//! instance in stages (KV blocks over `AgentPeer.RequestKv`). The client's
//! stream carries every position once, in order, through the switch; the
//! target verified the KV bytes before resuming, decodes the request
//! afterwards, and the source engine freed its blocks. Then a fault: the
//! client entered at a third agent, and the source node is killed after
//! the switch-over; the request finishes on the target. And a migration
//! to a target node that is gone, before or during the copy, fails, the
//! request finishing on the source. An ignored test measures the downtime
//! against the sequence length.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::serve::agent;
use common::serve::run_job;
use common::*;
use futures::StreamExt;
use herd_api::proto::agent::InferToken;
use herd_api::proto::agent::{
    AllocEngineStats, EngineStatsRequest, InferRequest, MigrateRequestRequest,
};

/// Two instances (one per node) of 64 KV blocks of 16 tokens × 64 bytes,
/// decoding at the modelled speed (about 20 ms a token), so that a request
/// of 400 tokens decodes for about 8 s.
const SPEC: &str = r#"
name = "llm"
type = "service"
count = 2
spread = "node"

[task]
driver = "inference"

[task.resources]
cpu = 100
memory = "64MiB"

[task.config]
kv_blocks = "64"
bytes_per_token = "64"
time_scale = "1"
"#;

const PROMPT: u32 = 100;

/// The figures `herd infer-migrate -o json` prints.
#[derive(Debug)]
struct Outcome {
    stages: u64,
    blocks: u64,
    bytes: u64,
    downtime_us: u64,
    total_us: u64,
    verified: bool,
    switched_at: u32,
}

impl From<&serde_json::Value> for Outcome {
    fn from(v: &serde_json::Value) -> Self {
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        Self {
            stages: n("stages"),
            blocks: n("blocks"),
            bytes: n("bytes"),
            downtime_us: n("downtime_us"),
            total_us: n("total_us"),
            verified: v["verified"] == true,
            switched_at: n("switched_at") as u32,
        }
    }
}
const MAX_TOKENS: u32 = 400;

/// The latest stats of `alloc_id`'s engine, as its agent polled them.
async fn engine_stats(addr: &str, alloc_id: &str) -> Option<AllocEngineStats> {
    agent(addr)
        .await
        .engine_stats(EngineStatsRequest {})
        .await
        .expect("engine stats")
        .into_inner()
        .engines
        .into_iter()
        .find(|e| e.alloc_id == alloc_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_migrated_mid_decode_streams_every_token_once_in_order() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["h1", "h2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["h1", "h2"]).await;
    let agent_addr: BTreeMap<&str, String> = ["h1", "h2"]
        .into_iter()
        .map(|n| (n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", SPEC);
    // node → its instance
    let instance: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["node"].as_str().unwrap_or_default().to_string(),
                            a["id"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    let (source, target) = (instance["h1"].clone(), instance["h2"].clone());
    // Both engines run (their agents poll them) before the request.
    for (node, alloc) in [("h1", &source), ("h2", &target)] {
        let started = Instant::now();
        while engine_stats(&agent_addr[node], alloc).await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "engine of {alloc} not polled"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let mut tokens = agent(&agent_addr["h1"])
        .await
        .infer(InferRequest {
            alloc_id: source.clone(),
            job: "llm".into(),
            prompt_tokens: PROMPT,
            max_tokens: MAX_TOKENS,
            priority: "normal".into(),
            ..Default::default()
        })
        .await
        .expect("request accepted")
        .into_inner();
    let mut indexes = Vec::new();
    let first = tokens
        .next()
        .await
        .expect("a first token")
        .expect("first token");
    assert_eq!(first.alloc_id, source, "{first:?}");
    assert!(first.moved.is_none(), "{first:?}");
    let request_id = first.request_id;
    indexes.push(first.index);
    // Decode a while on the source (a few blocks written), then migrate.
    while indexes.len() < 60 {
        let t = tokens.next().await.expect("a token").expect("token");
        indexes.push(t.index);
    }
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(t) = tokens.next().await {
            let t = t.expect("every token after the switch-over");
            assert!(
                t.moved.is_none(),
                "a moved message reached the client: {t:?}"
            );
            rest.push(t.index);
        }
        rest
    });
    // Through the CLI: `herd infer-migrate` asks the source's agent.
    let (cli_addr, from, to) = (addr.clone(), source.clone(), target.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        json(
            &cli_addr,
            &[
                "infer-migrate",
                "llm",
                "--alloc",
                &from,
                "--request",
                &request_id.to_string(),
                "--to",
                &to,
            ],
        )
    })
    .await
    .expect("herd infer-migrate");
    let outcome = Outcome::from(&outcome);
    println!("migration: {outcome:?}");
    assert!(outcome.verified, "{outcome:?}");
    assert!(
        outcome.stages >= 2,
        "a copy stage then the frozen one: {outcome:?}"
    );
    // The prompt alone fills 6 full blocks of 16 (+ a partial one).
    assert!(outcome.blocks >= 7, "{outcome:?}");
    assert_eq!(
        outcome.bytes,
        outcome.blocks as u64 * 16 * 64,
        "{outcome:?}"
    );
    assert!(
        outcome.switched_at >= 60 && outcome.switched_at < MAX_TOKENS,
        "{outcome:?}"
    );
    assert!(outcome.downtime_us <= outcome.total_us, "{outcome:?}");

    // The target decodes it now; the source holds nothing of it.
    let started = Instant::now();
    loop {
        let on_target = engine_stats(&agent_addr["h2"], &target)
            .await
            .and_then(|s| s.stats)
            .is_some_and(|s| s.requests.iter().any(|r| r.generated > outcome.switched_at));
        let source_stats = engine_stats(&agent_addr["h1"], &source)
            .await
            .and_then(|s| s.stats)
            .expect("source stats");
        let source_free = source_stats.requests.is_empty()
            && source_stats.free_blocks == source_stats.total_blocks;
        if on_target && source_free {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "on target: {on_target}, source: {source_stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let rest = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    indexes.extend(rest);
    assert_eq!(
        indexes,
        (0..MAX_TOKENS).collect::<Vec<_>>(),
        "every position once, in order"
    );
    // Bad input exits 2: a request the engine does not hold (this one
    // left), the same allocation as the target.
    for (request, to) in [(request_id, &target), (request_id, &source)] {
        let out = must_run_cli(&[
            "--addr",
            &addr,
            "infer-migrate",
            "llm",
            "--alloc",
            &source,
            "--request",
            &request.to_string(),
            "--to",
            to,
        ]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Finished on the target: its blocks are free again too.
    let started = Instant::now();
    loop {
        let stats = engine_stats(&agent_addr["h2"], &target)
            .await
            .and_then(|s| s.stats)
            .expect("target stats");
        if stats.requests.is_empty() && stats.free_blocks == stats.total_blocks {
            assert!(stats.completed_total >= 1, "{stats:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_migrated_away_finishes_after_its_source_node_is_killed() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let names = ["h1", "h2", "h3"];
    for name in names {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let agent_addr: BTreeMap<&str, String> = names
        .into_iter()
        .map(|n| (n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", SPEC);
    let instance: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["node"].as_str().unwrap_or_default().to_string(),
                            a["id"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    // The client enters at the node without an instance.
    let entry = *names
        .iter()
        .find(|n| !instance.contains_key(**n))
        .expect("a node without an instance");
    let started = Instant::now();
    let mut tokens = loop {
        let answer = agent(&agent_addr[entry])
            .await
            .infer(InferRequest {
                job: "llm".into(),
                prompt_tokens: PROMPT,
                max_tokens: MAX_TOKENS,
                ..Default::default()
            })
            .await;
        match answer {
            Ok(stream) => break stream.into_inner(),
            // The entry's fleet view does not know the service or its
            // instances yet (it lists them every 2 s).
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::NotFound) => {
                assert!(started.elapsed() < Duration::from_secs(20), "{s}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("refused: {s}"),
        }
    };
    let first: InferToken = tokens.next().await.expect("a token").expect("token");
    let (source_node, source) = (first.node.clone(), first.alloc_id.clone());
    let (target_node, target) = instance
        .iter()
        .find(|(_, a)| **a != source)
        .map(|(n, a)| (n.clone(), a.clone()))
        .expect("the other instance");
    let mut indexes = vec![first.index];
    while indexes.len() < 40 {
        indexes.push(tokens.next().await.expect("a token").expect("token").index);
    }
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(t) = tokens.next().await {
            rest.push(t.expect("every token").index);
        }
        rest
    });
    let outcome = agent(&agent_addr[source_node.as_str()])
        .await
        .migrate_request(MigrateRequestRequest {
            alloc_id: source.clone(),
            request_id: first.request_id,
            to_alloc: target.clone(),
            // Found in the source agent's fleet view.
            to_agent: String::new(),
        })
        .await
        .expect("migrated")
        .into_inner();
    assert!(outcome.verified, "{outcome:?}");
    // Give the entry agent a moment to switch over, then the source goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    agents
        .kill_node(&source_node)
        .expect("kill the source node");
    let rest = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    indexes.extend(rest);
    assert_eq!(
        indexes,
        (0..MAX_TOKENS).collect::<Vec<_>>(),
        "every position once, in order, finished on {target_node}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_to_a_dead_target_fails_and_the_request_finishes_on_the_source() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["h1", "h2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["h1", "h2"]).await;
    let agent_addr: BTreeMap<&str, String> = ["h1", "h2"]
        .into_iter()
        .map(|n| (n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", SPEC);
    let instance: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["node"].as_str().unwrap_or_default().to_string(),
                            a["id"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    let (source, target) = (instance["h1"].clone(), instance["h2"].clone());
    let started = Instant::now();
    while engine_stats(&agent_addr["h1"], &source).await.is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "not polled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut tokens = agent(&agent_addr["h1"])
        .await
        .infer(InferRequest {
            alloc_id: source.clone(),
            job: "llm".into(),
            prompt_tokens: PROMPT,
            max_tokens: MAX_TOKENS,
            ..Default::default()
        })
        .await
        .expect("request accepted")
        .into_inner();
    let first = tokens.next().await.expect("a token").expect("token");
    let mut indexes = vec![first.index];
    while indexes.len() < 40 {
        indexes.push(tokens.next().await.expect("a token").expect("token").index);
    }
    agents.kill_node("h2").expect("kill the target node");
    let err = agent(&agent_addr["h1"])
        .await
        .migrate_request(MigrateRequestRequest {
            alloc_id: source.clone(),
            request_id: first.request_id,
            to_alloc: target,
            to_agent: agent_addr["h2"].clone(),
        })
        .await
        .expect_err("the target is gone");
    assert!(err.message().contains("target"), "{err}");
    while let Some(t) = tokens.next().await {
        let t = t.expect("every token, on the source");
        assert!(t.moved.is_none(), "{t:?}");
        indexes.push(t.index);
    }
    assert_eq!(indexes, (0..MAX_TOKENS).collect::<Vec<_>>());
    // Nothing was left frozen or held on the source.
    let started = Instant::now();
    loop {
        let stats = engine_stats(&agent_addr["h1"], &source)
            .await
            .and_then(|s| s.stats)
            .expect("source stats");
        if stats.requests.is_empty() && stats.free_blocks == stats.total_blocks {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A measurement, not a check (run with `--ignored --no-capture`): the
/// downtime of a migration as the sequence grows from 256 to 16 384
/// tokens, beside the modelled cost of recomputing the prefill on the
/// target instead. Figures in docs/inference.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints figures"]
async fn measure_downtime_by_sequence_length() {
    const LONG: &str = r#"
name = "llm"
type = "service"
count = 2
spread = "node"

[task]
driver = "inference"

[task.resources]
cpu = 100
memory = "64MiB"

[task.config]
kv_blocks = "1100"
bytes_per_token = "64"
time_scale = "0.2"
"#;
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["h1", "h2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["h1", "h2"]).await;
    let agent_addr: BTreeMap<&str, String> = ["h1", "h2"]
        .into_iter()
        .map(|n| (n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", LONG);
    let instance: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["node"].as_str().unwrap_or_default().to_string(),
                            a["id"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    let (source, target) = (instance["h1"].clone(), instance["h2"].clone());
    let started = Instant::now();
    while engine_stats(&agent_addr["h1"], &source).await.is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "not polled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cost = herd_actors::inference::cost::CostModel::default();
    println!(
        "prompt_tokens stages blocks bytes downtime_ms total_ms recompute_prefill_ms(modelled)"
    );
    for prompt in [256u32, 1024, 4096, 16384] {
        let mut tokens = agent(&agent_addr["h1"])
            .await
            .infer(InferRequest {
                alloc_id: source.clone(),
                job: "llm".into(),
                prompt_tokens: prompt,
                max_tokens: 1000,
                ..Default::default()
            })
            .await
            .expect("request accepted")
            .into_inner();
        let first = tokens.next().await.expect("a token").expect("token");
        for _ in 0..20 {
            tokens.next().await.expect("a token").expect("token");
        }
        let reader = tokio::spawn(async move {
            let mut n = 21;
            while let Some(t) = tokens.next().await {
                t.expect("token");
                n += 1;
            }
            n
        });
        let outcome = agent(&agent_addr["h1"])
            .await
            .migrate_request(MigrateRequestRequest {
                alloc_id: source.clone(),
                request_id: first.request_id,
                to_alloc: target.clone(),
                to_agent: agent_addr["h2"].clone(),
            })
            .await
            .expect("migrated")
            .into_inner();
        assert_eq!(reader.await.expect("reader"), 1000);
        let context = prompt as u64 + outcome.switched_at as u64;
        println!(
            "{prompt} {} {} {} {:.1} {:.1} {:.1}",
            outcome.stages,
            outcome.blocks,
            outcome.bytes,
            outcome.downtime_us as f64 / 1e3,
            outcome.total_us as f64 / 1e3,
            cost.prefill_us(context) as f64 / 1e3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_target_during_the_copy_leaves_the_request_decoding_on_the_source() {
    // Long enough a copy (16 MiB of KV) to kill the target in the middle.
    const BIG: &str = r#"
name = "llm"
type = "service"
count = 2
spread = "node"

[task]
driver = "inference"

[task.resources]
cpu = 100
memory = "128MiB"

[task.config]
kv_blocks = "1100"
bytes_per_token = "1024"
time_scale = "0.2"
"#;
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    for name in ["h1", "h2"] {
        agents.start(name, &[]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &["h1", "h2"]).await;
    let agent_addr: BTreeMap<&str, String> = ["h1", "h2"]
        .into_iter()
        .map(|n| (n, agents.agent(n).expect("agent").addr.clone()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", BIG);
    let instance: BTreeMap<String, String> =
        until("two running instances", Duration::from_secs(20), || {
            let allocs = running_allocs(&addr, "llm");
            (allocs.len() == 2).then(|| {
                allocs
                    .iter()
                    .map(|a| {
                        (
                            a["node"].as_str().unwrap_or_default().to_string(),
                            a["id"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
        })
        .await;
    let (source, target) = (instance["h1"].clone(), instance["h2"].clone());
    let started = Instant::now();
    // The target engine, asked directly (its engine.json) so that the
    // staging is seen as it happens.
    let target_dir = agents
        .agent("h2")
        .expect("agent")
        .data_dir
        .join("allocs")
        .join(&target);
    let target_engine = loop {
        let found = herd_actors::inference::endpoint::EngineEndpoint::read(&target_dir)
            .ok()
            .flatten();
        let polled = engine_stats(&agent_addr["h1"], &source).await.is_some();
        if let (Some(e), true) = (found, polled) {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "engines not up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut engine =
        herd_api::proto::inference::inference_engine_client::InferenceEngineClient::connect(
            format!("http://{}", target_engine.addr),
        )
        .await
        .expect("connect to the target engine");
    let mut tokens = agent(&agent_addr["h1"])
        .await
        .infer(InferRequest {
            alloc_id: source.clone(),
            job: "llm".into(),
            prompt_tokens: 16_000,
            max_tokens: 1000,
            ..Default::default()
        })
        .await
        .expect("request accepted")
        .into_inner();
    let first = tokens.next().await.expect("a token").expect("token");
    let mut indexes = vec![first.index];
    let reader = tokio::spawn(async move {
        while let Some(t) = tokens.next().await {
            let t = t.expect("every token, on the source");
            assert!(t.moved.is_none(), "{t:?}");
            indexes.push(t.index);
        }
        indexes
    });
    let h1 = agent_addr["h1"].clone();
    let (from, to, to_agent) = (source.clone(), target.clone(), agent_addr["h2"].clone());
    let migration = tokio::spawn(async move {
        agent(&h1)
            .await
            .migrate_request(MigrateRequestRequest {
                alloc_id: from,
                request_id: first.request_id,
                to_alloc: to,
                to_agent,
            })
            .await
    });
    // Blocks staged on the target, no request resumed there yet: kill it.
    loop {
        let stats = engine
            .stats(herd_api::proto::inference::StatsRequest {})
            .await
            .expect("target engine stats")
            .into_inner();
        assert!(
            stats.requests.is_empty(),
            "the copy ended before the target could be killed: {stats:?}"
        );
        if stats.free_blocks < stats.total_blocks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    agents.kill_node("h2").expect("kill the target node");
    let err = migration
        .await
        .expect("migration task")
        .expect_err("the target died");
    assert!(err.message().contains("target"), "{err}");
    let indexes = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>());
}
