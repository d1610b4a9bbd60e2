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
//! request finishing on the source. Inside the freeze-to-commit window
//! (held there by the FAULT-INJECTION hook `HERD_FAULT_REQUEST_MIGRATION_HOLD`):
//! the target agent killed, the source engine's watchdog thaws the request
//! and it finishes on the source; the source agent killed (client at a
//! third agent) before the target resumed it, the client's stream fails
//! and both engines' watchdogs free what they held; killed after, the
//! client's agent finds the request resumed on the target and it finishes
//! there; the target agent killed after it resumed the request, with the
//! source committing to it, the client's agent takes it back from the
//! source's copy and it finishes on the source; so it does when the target
//! agent dies after the commit, having streamed positions to the client
//! (the source recomputes them, a prefill, and decodes on from the
//! client's position); and again after a second loss, once the request
//! taken back moved on. An ignored test measures the downtime against the
//! sequence length.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::serve::{agent, serving, ServiceSpec, Serving};
use common::*;
use futures::StreamExt;
use herd_api::proto::agent::InferToken;
use herd_api::proto::agent::{
    AllocEngineStats, EngineStatsRequest, InferRequest, MigrateRequestRequest,
};
use herd_node::serve::request_migration::FAULT_HOLD_ENV;

/// Two instances (one per node) of 64 KV blocks of 16 tokens × 64 bytes,
/// decoding at the modelled speed (about 20 ms a token), so that a request
/// of 400 tokens decodes for about 8 s.
fn spec() -> ServiceSpec {
    ServiceSpec::llm(2).bytes_per_token(64)
}

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

/// A request of the service sent to the agent of the node that runs no
/// instance (so that it relays through another agent), retried until that
/// agent's fleet view knows the service and its instances (it lists them
/// every 2 s); its token stream.
async fn infer_at_the_agent_without_an_instance(
    names: &[&'static str],
    instance: &std::collections::BTreeMap<String, String>,
    agent_addr: &std::collections::BTreeMap<&'static str, String>,
) -> tonic::Streaming<InferToken> {
    infer_of_length_at_the_agent_without_an_instance(names, instance, agent_addr, MAX_TOKENS).await
}

/// [`infer_at_the_agent_without_an_instance`] for `max_tokens` tokens.
async fn infer_of_length_at_the_agent_without_an_instance(
    names: &[&'static str],
    instance: &std::collections::BTreeMap<String, String>,
    agent_addr: &std::collections::BTreeMap<&'static str, String>,
    max_tokens: u32,
) -> tonic::Streaming<InferToken> {
    let entry = *names
        .iter()
        .find(|n| !instance.contains_key(**n))
        .expect("a node without an instance");
    let started = Instant::now();
    loop {
        let answer = agent(&agent_addr[entry])
            .await
            .infer(InferRequest {
                job: "llm".into(),
                prompt_tokens: PROMPT,
                max_tokens,
                ..Default::default()
            })
            .await;
        match answer {
            Ok(stream) => return stream.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::NotFound) => {
                assert!(started.elapsed() < Duration::from_secs(20), "{s}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("refused: {s}"),
        }
    }
}

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
    let Serving {
        cluster: _cluster,
        addr,
        agents: _agents,
        agent_addr,
        instance,
        ..
    } = serving(&["h1", "h2"], &[], &[], &spec()).await;
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
    let names = ["h1", "h2", "h3"];
    let Serving {
        cluster: _cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(&names, &[], &[], &spec()).await;
    // The client enters at the node without an instance.
    let mut tokens = infer_at_the_agent_without_an_instance(&names, &instance, &agent_addr).await;
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
    let Serving {
        cluster: _cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(&["h1", "h2"], &[], &[], &spec()).await;
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
    let long = ServiceSpec::llm(2)
        .kv_blocks(1100)
        .bytes_per_token(64)
        .time_scale("0.2");
    let Serving {
        cluster: _cluster,
        agents: _agents,
        agent_addr,
        instance,
        ..
    } = serving(&["h1", "h2"], &[], &[], &long).await;
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
    let big = ServiceSpec::llm(2)
        .resources(100, "128MiB")
        .kv_blocks(1100)
        .bytes_per_token(1024)
        .time_scale("0.2");
    let Serving {
        cluster: _cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(&["h1", "h2"], &[], &[], &big).await;
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

/// How long the source holds inside the freeze-to-commit window
/// (FAULT-INJECTION hook): longer than an engine's 10 s bound on a freeze
/// (`herd_actors::inference::watchdog::Bounds`), so that the source engine
/// thaws the request on its own before the agent goes on.
const WINDOW_HOLD_MS: u64 = 14_000;

/// A client of the engine of `alloc_id` on `node`, dialled directly (its
/// `engine.json`): it answers after its agent is killed.
async fn direct_engine(
    agents: &herd_chaos::agents::AgentSet,
    node: &str,
    alloc_id: &str,
) -> herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
    tonic::transport::Channel,
> {
    let dir = agents
        .agent(node)
        .expect("agent")
        .data_dir
        .join("allocs")
        .join(alloc_id);
    let started = Instant::now();
    let endpoint = loop {
        if let Some(e) = herd_actors::inference::endpoint::EngineEndpoint::read(&dir)
            .ok()
            .flatten()
        {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "engine of {alloc_id} not up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    herd_api::proto::inference::inference_engine_client::InferenceEngineClient::connect(format!(
        "http://{}",
        endpoint.addr
    ))
    .await
    .expect("connect to the engine")
}

/// The stats of an engine dialled directly.
async fn direct_stats(
    engine: &mut herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
) -> herd_api::proto::inference::EngineStats {
    engine
        .stats(herd_api::proto::inference::StatsRequest {})
        .await
        .expect("engine stats")
        .into_inner()
}

/// Waits (`within` at most) until `engine` holds no request and every KV
/// block is free again; its stats then.
async fn must_hold_nothing(
    what: &str,
    engine: &mut herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
    within: Duration,
) -> herd_api::proto::inference::EngineStats {
    let started = Instant::now();
    loop {
        let stats = direct_stats(engine).await;
        if stats.requests.is_empty() && stats.free_blocks == stats.total_blocks {
            return stats;
        }
        assert!(
            started.elapsed() < within,
            "{what} still holds something: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `engine` (the target's) decodes the resumed request: its
/// stats follow the resume within a step.
async fn must_be_resumed(
    engine: &mut herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
) {
    let started = Instant::now();
    loop {
        let stats = direct_stats(engine).await;
        if stats.requests.len() == 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not resumed on the target: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the log at `path` says the source holds its migration at
/// the hook.
async fn must_hold_in_window(path: &std::path::Path) {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains("holding the request migration") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the migration never reached the hook ({})",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The freeze-to-commit window with the TARGET agent killed (`kill -9`,
/// its engine left running): the source holds there after the target
/// resumed the request, longer than the source engine's bound on a
/// freeze. The source engine thaws the request on its own (the client's
/// tokens flow again while the agent still holds), the late commit is
/// refused, and the request finishes on the source, every position once;
/// the target engine, whose relay died with its agent, holds nothing and
/// finished nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_target_agent_between_freeze_and_commit_finishes_the_request_on_the_source() {
    let hold = format!("resumed:{WINDOW_HOLD_MS}");
    let Serving {
        cluster: _cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(
        &["h1", "h2"],
        &["--no-reschedule"],
        &[(FAULT_HOLD_ENV, &hold)],
        &spec(),
    )
    .await;
    let (source, target) = (instance["h1"].clone(), instance["h2"].clone());
    let mut target_engine = direct_engine(&agents, "h2", &target).await;
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
    // Each later token with the time it arrived, after the time reading
    // began.
    let reader = tokio::spawn(async move {
        let mut rest = vec![(u32::MAX, Instant::now())];
        while let Some(t) = tokens.next().await {
            let t = t.expect("every token, on the source");
            assert!(t.moved.is_none(), "{t:?}");
            rest.push((t.index, Instant::now()));
        }
        rest
    });
    let (h1, from, to, to_agent) = (
        agent_addr["h1"].clone(),
        source.clone(),
        target.clone(),
        agent_addr["h2"].clone(),
    );
    let migration = tokio::spawn(async move {
        let answer = agent(&h1)
            .await
            .migrate_request(MigrateRequestRequest {
                alloc_id: from,
                request_id: first.request_id,
                to_alloc: to,
                to_agent,
            })
            .await;
        (answer, Instant::now())
    });
    must_hold_in_window(&agents.agent("h1").expect("agent").log_path).await;
    // The target resumed it (its engine decodes it; its stats follow
    // within a step), the source has not committed: kill the target's
    // agent.
    must_be_resumed(&mut target_engine).await;
    agents.kill_agent("h2").expect("kill the target agent");
    let (answer, gave_up_at) = migration.await.expect("migration task");
    let err = answer.expect_err("the late commit is refused");
    assert!(err.message().contains("release"), "{err}");
    let rest = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    // The longest pause is the freeze; the engine's watchdog ended it
    // before the agent's hold did.
    let (after_freeze, resumed_at) = rest
        .windows(2)
        .max_by_key(|w| w[1].1 - w[0].1)
        .map(|w| (w[1].0, w[1].1))
        .expect("tokens after the migration started");
    assert!(
        resumed_at < gave_up_at,
        "token {after_freeze} came only after the migration gave up"
    );
    indexes.extend(rest.iter().skip(1).map(|(i, _)| *i));
    assert_eq!(
        indexes,
        (0..MAX_TOKENS).collect::<Vec<_>>(),
        "every position once, in order"
    );
    // Finished on the source; the target holds and finished nothing.
    let started = Instant::now();
    loop {
        let stats = engine_stats(&agent_addr["h1"], &source)
            .await
            .and_then(|s| s.stats)
            .expect("source stats");
        if stats.completed_total == 1
            && stats.requests.is_empty()
            && stats.free_blocks == stats.total_blocks
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = must_hold_nothing(
        "the target engine",
        &mut target_engine,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(stats.completed_total, 0, "{stats:?}");
}

/// Which agent is killed in the freeze-to-commit window, and where.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KilledAt {
    /// The source's, with the request frozen on the source and its last
    /// blocks staged on the target; nothing resumed.
    SourceFrozen,
    /// The source's, after the target resumed the request and holds its
    /// stream; the source has not committed.
    SourceResumed,
    /// The target's, after it resumed the request; the source holds less
    /// than its engine's bound on a freeze, so it then commits to the dead
    /// target.
    TargetResumed,
    /// The target's, after the commit, once the client has read a
    /// position the target decoded.
    TargetStreaming,
}

/// What an agent's kill leaves: the positions the client read (before
/// and after the kill), how its stream ended, both engines dialled
/// directly, and when the agent was killed.
struct Killed {
    _cluster: herd_chaos::process_cluster::ProcessCluster,
    _agents: herd_chaos::agents::AgentSet,
    indexes: Vec<u32>,
    error: Option<tonic::Status>,
    source_engine: herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
    target_engine: herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
    killed_at: Instant,
}

impl Killed {
    /// Taken back by the source: the client read every position once, in
    /// order; the source engine finished the request and holds nothing;
    /// the target engine holds nothing and finished nothing.
    async fn must_have_finished_on_the_source_only(&mut self) {
        self.must_have_streamed_every_position("the source takes the request back");
        let within = Duration::from_secs(5);
        let stats = must_hold_nothing("the source engine", &mut self.source_engine, within).await;
        assert_eq!(
            stats.completed_total, 1,
            "finished on the source: {stats:?}"
        );
        let stats = must_hold_nothing("the target engine", &mut self.target_engine, within).await;
        assert_eq!(stats.completed_total, 0, "{stats:?}");
    }

    /// The client's stream ended without an error (`why` it should have
    /// gone on) after every position once, in order.
    fn must_have_streamed_every_position(&self, why: &str) {
        assert!(self.error.is_none(), "{why}: {:?}", self.error);
        assert_eq!(
            self.indexes,
            (0..MAX_TOKENS).collect::<Vec<_>>(),
            "every position once, in order"
        );
    }
}

/// The freeze-to-commit window with an agent killed (`kill -9`, its engine
/// left running): 3 agents, 2 instances; the client enters at the agent
/// without one, which relays through the source's agent; the source agent
/// holds the migration at the step `at` names, and the agent it names is
/// killed there (or, for [`KilledAt::TargetStreaming`], after the commit
/// once the client read from the target).
async fn kill_an_agent_in_the_window(at: KilledAt) -> Killed {
    let hold = match at {
        KilledAt::SourceFrozen => "frozen:120000",
        KilledAt::SourceResumed => "resumed:120000",
        KilledAt::TargetResumed => "resumed:3000",
        KilledAt::TargetStreaming => "resumed:200",
    };
    let names = ["h1", "h2", "h3"];
    let Serving {
        cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(
        &names,
        &["--no-reschedule"],
        &[(FAULT_HOLD_ENV, hold)],
        &spec(),
    )
    .await;
    let mut tokens = infer_at_the_agent_without_an_instance(&names, &instance, &agent_addr).await;
    let first: InferToken = tokens.next().await.expect("a token").expect("token");
    let (source_node, source) = (first.node.clone(), first.alloc_id.clone());
    let (target_node, target) = instance
        .iter()
        .find(|(_, a)| **a != source)
        .map(|(n, a)| (n.clone(), a.clone()))
        .expect("the other instance");
    let source_node: &'static str = names
        .into_iter()
        .find(|n| *n == source_node)
        .expect("the source is one of the agents");
    let source_engine = direct_engine(&agents, source_node, &source).await;
    let mut target_engine = direct_engine(&agents, &target_node, &target).await;
    let mut indexes = vec![first.index];
    while indexes.len() < 40 {
        indexes.push(tokens.next().await.expect("a token").expect("token").index);
    }
    // The highest position the client has read.
    let (read_tx, mut read) = tokio::sync::watch::channel(first.index);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(t) = tokens.next().await {
            match t {
                Ok(t) => {
                    assert!(t.moved.is_none(), "{t:?}");
                    got.push(t.index);
                    read_tx.send_replace(t.index);
                }
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    });
    let (from_agent, to_agent) = (
        agent_addr[source_node].clone(),
        agent_addr[target_node.as_str()].clone(),
    );
    let (from, to) = (source.clone(), target.clone());
    let migration = tokio::spawn(async move {
        agent(&from_agent)
            .await
            .migrate_request(MigrateRequestRequest {
                alloc_id: from,
                request_id: first.request_id,
                to_alloc: to,
                to_agent,
            })
            .await
    });
    must_hold_in_window(&agents.agent(source_node).expect("agent").log_path).await;
    match at {
        KilledAt::SourceFrozen => {
            let stats = direct_stats(&mut target_engine).await;
            assert!(
                stats.requests.is_empty() && stats.free_blocks < stats.total_blocks,
                "staged only: {stats:?}"
            );
        }
        KilledAt::SourceResumed | KilledAt::TargetResumed | KilledAt::TargetStreaming => {
            must_be_resumed(&mut target_engine).await
        }
    }
    let victim = match at {
        KilledAt::TargetResumed | KilledAt::TargetStreaming => target_node.as_str(),
        KilledAt::SourceFrozen | KilledAt::SourceResumed => source_node,
    };
    let mut migration = Some(migration);
    if at == KilledAt::TargetStreaming {
        migration
            .take()
            .expect("the migration")
            .await
            .expect("migration task")
            .expect("committed: the target resumed it");
        must_read_what_it_decodes(&mut target_engine, &mut read).await;
    }
    agents.kill_agent(victim).expect("kill the agent");
    let killed_at = Instant::now();
    match at {
        KilledAt::TargetStreaming => {}
        KilledAt::TargetResumed => {
            let answer = migration.take().expect("the migration").await;
            answer
                .expect("migration task")
                .expect("committed after the hold: the target resumed it");
        }
        KilledAt::SourceFrozen | KilledAt::SourceResumed => {
            let answer = migration.take().expect("the migration").await;
            answer.expect("migration task").expect_err("its agent died");
        }
    }
    let (rest, error) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    indexes.extend(rest);
    Killed {
        _cluster: cluster,
        _agents: agents,
        indexes,
        error,
        source_engine,
        target_engine,
        killed_at,
    }
}

/// The window with the source agent killed where the target has only
/// staged blocks: the request is lost with its relay (nothing resumed it
/// anywhere), and the client's stream ends with an error after positions
/// in order, none twice; nothing goes on decoding unseen. Both engines
/// free everything on their own: the source's thaws the frozen request
/// after its 10 s bound and, its stream gone, cancels it; the target's
/// frees the staged blocks after 10 s without progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_source_agent_between_freeze_and_commit_frees_both_engines() {
    let mut killed = kill_an_agent_in_the_window(KilledAt::SourceFrozen).await;
    let error = killed
        .error
        .expect("the stream ends with an error, not as if complete");
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
    let n = killed.indexes.len() as u32;
    assert!(n < MAX_TOKENS, "{n} tokens");
    assert_eq!(
        killed.indexes,
        (0..n).collect::<Vec<_>>(),
        "in order, none twice"
    );
    // Both watchdogs act 10 s after the freeze or the last staged block.
    let within = Duration::from_secs(25);
    let stats = must_hold_nothing("the source engine", &mut killed.source_engine, within).await;
    assert_eq!(stats.completed_total, 0, "{stats:?}");
    let stats = must_hold_nothing("the target engine", &mut killed.target_engine, within).await;
    assert_eq!(stats.completed_total, 0, "{stats:?}");
    assert!(
        killed.killed_at.elapsed() > Duration::from_secs(5),
        "freed before the watchdogs' bound: by whom?"
    );
}

/// The window with the source agent killed after the target resumed the
/// request: the `moved` message died with the source's agent, so the
/// client's agent looks for the request on the fleet's agents, finds it
/// resumed on the target and relays from there: every position once, in
/// order, the target finishing it. The source engine thaws its frozen copy
/// after its bound and, its stream gone, cancels it: it finishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_source_agent_after_the_target_resumed_finishes_the_request_on_the_target() {
    let mut killed = kill_an_agent_in_the_window(KilledAt::SourceResumed).await;
    killed.must_have_streamed_every_position("the request goes on where it was resumed");
    let stats = direct_stats(&mut killed.target_engine).await;
    assert_eq!(
        stats.completed_total, 1,
        "finished on the target: {stats:?}"
    );
    let stats = must_hold_nothing(
        "the source engine",
        &mut killed.source_engine,
        Duration::from_secs(25),
    )
    .await;
    assert_eq!(stats.completed_total, 0, "{stats:?}");
}

/// The window with the TARGET agent killed after it resumed the request,
/// the source holding less than its engine's bound on a freeze: the
/// source commits to the dead target, and the client's agent, following
/// the `moved` message, cannot claim the request there. The source kept a
/// copy of what it sent: asked by the client's agent, it resumes that copy
/// on its own engine, from the position it was frozen at. Every position
/// once, in order, the source finishing it; the target engine, whose
/// stream died with its agent, holds nothing and finished nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_target_agent_after_it_resumed_finishes_the_request_on_the_source() {
    let mut killed = kill_an_agent_in_the_window(KilledAt::TargetResumed).await;
    killed.must_have_finished_on_the_source_only().await;
}

/// The TARGET agent killed after the commit, once the client has read
/// positions the target decoded (within the source's 10 s keep): the
/// client's agent loses its relay there, and the source's copy, frozen
/// before those positions, takes the request back: queued on the source
/// for a prefill of what the client has, it decodes on from the client's
/// position (a stream that started anywhere else would fail the relay's
/// position check). Every position once, in order, the source finishing
/// it; the target engine, whose stream died with its agent, finished
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_target_agent_after_it_streamed_finishes_the_request_on_the_source() {
    let mut killed = kill_an_agent_in_the_window(KilledAt::TargetStreaming).await;
    killed.must_have_finished_on_the_source_only().await;
}

/// Moves request `request_id` of allocation `from` (on the agent at
/// `from_agent`) to allocation `to` (agent `to_agent`); the migration must
/// commit.
async fn migrate_committed(
    from_agent: &str,
    from: &str,
    request_id: u64,
    to: &str,
    to_agent: &str,
) {
    agent(from_agent)
        .await
        .migrate_request(MigrateRequestRequest {
            alloc_id: from.into(),
            request_id,
            to_alloc: to.into(),
            to_agent: to_agent.into(),
        })
        .await
        .expect("the migration commits");
}

/// Waits until the client (its highest position read in `read`) has read
/// a position `engine` decoded: every position from where the engine's
/// one request is now was decoded there.
async fn must_read_what_it_decodes(
    engine: &mut herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
    read: &mut tokio::sync::watch::Receiver<u32>,
) {
    let (_, decoded_there) = the_request_on(engine).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        read.wait_for(|at| *at >= decoded_there),
    )
    .await
    .expect("the client reads what the engine decodes")
    .expect("reader");
}

/// The id and progress of the one request `engine` runs (within 10 s).
async fn the_request_on(
    engine: &mut herd_api::proto::inference::inference_engine_client::InferenceEngineClient<
        tonic::transport::Channel,
    >,
) -> (u64, u32) {
    let started = Instant::now();
    loop {
        let stats = direct_stats(engine).await;
        if let [request] = stats.requests.as_slice() {
            return (request.id, request.generated);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no one request there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request taken back twice: 4 agents, 3 instances (one a node); the
/// client enters at the agent without one. The request is moved from A to
/// B, B's agent is killed once the client has read from B, and A takes it
/// back (a recompute); then A moves it on to C, C's agent is killed once
/// the client has read from C, and A takes it back again, because the
/// client's agent learned where the request ran after the first take-back
/// (the recovered stream names its allocation). Every position once, in
/// order; A finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_taken_back_by_its_source_is_taken_back_again_after_a_second_loss() {
    const LONG: u32 = 900;
    let names = ["h1", "h2", "h3", "h4"];
    let Serving {
        cluster: _cluster,
        mut agents,
        agent_addr,
        instance,
        ..
    } = serving(
        &names,
        &["--no-reschedule"],
        &[],
        &ServiceSpec::llm(3)
            .bytes_per_token(64)
            .resources(1200, "64MiB"),
    )
    .await;
    let mut tokens =
        infer_of_length_at_the_agent_without_an_instance(&names, &instance, &agent_addr, LONG)
            .await;
    let first: InferToken = tokens.next().await.expect("a token").expect("token");
    let a_node = names
        .into_iter()
        .find(|n| *n == first.node)
        .expect("the source is one of the agents");
    let a = first.alloc_id.clone();
    let others: Vec<(&'static str, String)> = instance
        .iter()
        .filter(|(_, alloc)| **alloc != a)
        .map(|(node, alloc)| {
            let node = names.into_iter().find(|n| n == node).expect("an agent");
            (node, alloc.clone())
        })
        .collect();
    let [(b_node, b), (c_node, c)] = others.as_slice() else {
        panic!("two other instances: {others:?}");
    };
    let mut a_engine = direct_engine(&agents, a_node, &a).await;
    let (read_tx, mut read) = tokio::sync::watch::channel(first.index);
    let reader = tokio::spawn(async move {
        let mut got = vec![first.index];
        while let Some(t) = tokens.next().await {
            match t {
                Ok(t) => {
                    got.push(t.index);
                    read_tx.send_replace(t.index);
                }
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    });
    let mut request_on_a = first.request_id;
    for (node, alloc) in [(*b_node, b), (*c_node, c)] {
        read.wait_for(|at| *at >= 40).await.expect("reading");
        migrate_committed(
            &agent_addr[a_node],
            &a,
            request_on_a,
            alloc,
            &agent_addr[node],
        )
        .await;
        let mut engine = direct_engine(&agents, node, alloc).await;
        must_read_what_it_decodes(&mut engine, &mut read).await;
        agents.kill_agent(node).expect("kill the target's agent");
        // Taken back by A, under a new engine id there.
        (request_on_a, _) = the_request_on(&mut a_engine).await;
        let back_at = *read.borrow();
        tokio::time::timeout(
            Duration::from_secs(10),
            read.wait_for(|at| *at > back_at + 5),
        )
        .await
        .expect("the client reads from A again")
        .expect("reader");
    }
    let (indexes, error) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream ends")
        .expect("reader");
    assert!(error.is_none(), "taken back twice: {error:?}");
    assert_eq!(
        indexes,
        (0..LONG).collect::<Vec<_>>(),
        "every position once, in order"
    );
    let stats = must_hold_nothing("A's engine", &mut a_engine, Duration::from_secs(5)).await;
    assert_eq!(stats.completed_total, 1, "finished on A: {stats:?}");
}
