//! Rescheduling running requests, end to end on real processes: 1
//! coordinator and 4 `herd node` agents, each running one instance (one
//! SIMULATED engine process) of an LLM service of 64 KV blocks. A skewed
//! stream (a seeded pseudo-random stream: the same in both arms) enters at
//! h1's agent: four requests in five are pinned to h1's instance (as a
//! client with affinity to one instance would send them), the rest are
//! dispatched by service. h1's instance runs out of KV blocks; with
//! rescheduling on (the default), h1's agent moves running requests off it
//! to the other instances (request migrations), so its queue is admitted
//! sooner. The test runs the stream twice on fresh clusters, once with
//! `herd node --no-reschedule` (both arms with `--no-balance`: the agents'
//! balancing moves requests too), and checks that every request streams
//! every position once, in order, in both arms; that the other instances
//! finished requests sent to h1 only when rescheduling was on; and that
//! the p99 time to first token (wall clock, at the client) is lower with
//! it on.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::agents::running_allocs;
use common::serve::{agent, serving, ServiceSpec, Serving};
use common::*;
use futures::StreamExt;
use herd_api::proto::agent::{EngineStatsRequest, InferRequest};

/// Four instances, one per node, of 64 blocks of 16 tokens, decoding at
/// the modelled speed (about 20 ms a step).
fn spec() -> ServiceSpec {
    ServiceSpec::llm(4).bytes_per_token(16)
}

const NODES: [&str; 4] = ["h1", "h2", "h3", "h4"];
/// Requests in the stream.
const REQUESTS: usize = 24;
/// The stream's seed.
const SEED: u64 = 0x5eed_2026;

/// One request of the stream.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// Sent this long after the stream starts.
    at: Duration,
    prompt_tokens: u32,
    max_tokens: u32,
    /// Pinned to h1's instance (else dispatched by service).
    pinned: bool,
}

/// SplitMix64: a seeded stream of numbers, so both arms send the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The skewed stream: Poisson-like arrivals (mean 120 ms apart), prompts of
/// 64 to 160 tokens, outputs of 80 to 200, four in five pinned to h1.
fn stream(seed: u64) -> Vec<Arrival> {
    let mut rng = Rng(seed);
    let mut at = Duration::ZERO;
    (0..REQUESTS)
        .map(|_| {
            // Exponential gap: -ln(u) × mean.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            at += Duration::from_secs_f64(-(1.0 - u).ln() * 0.120);
            Arrival {
                at,
                prompt_tokens: rng.range(64, 160) as u32,
                max_tokens: rng.range(80, 200) as u32,
                pinned: rng.range(1, 5) <= 4,
            }
        })
        .collect()
}

/// What one arm measured.
struct ArmResult {
    /// Wall-clock time to first token of each request, at the client.
    ttft: Vec<Duration>,
    /// Requests the instances other than h1's completed.
    completed_elsewhere: u64,
    /// Requests of the stream not pinned to h1.
    dispatched: u64,
}

/// Runs the stream on a fresh cluster whose agents get `agent_args`.
async fn arm(agent_args: &[&str]) -> ArmResult {
    let Serving {
        cluster: _cluster,
        agents: _agents,
        agent_addr,
        // node → its instance
        instance,
        ..
    } = serving(&NODES, agent_args, &[], &spec()).await;
    // h1's agent sees every instance's load before the stream starts.
    let entry = agent_addr["h1"].clone();
    let started = Instant::now();
    loop {
        let mut client = agent(&entry).await;
        let probe = client
            .infer(InferRequest {
                job: "llm".into(),
                prompt_tokens: 1,
                max_tokens: 1,
                priority: "normal".into(),
                ..Default::default()
            })
            .await;
        let mut seen = 0;
        for node in NODES {
            let stats = agent(&agent_addr[node])
                .await
                .engine_stats(EngineStatsRequest {})
                .await
                .expect("engine stats")
                .into_inner();
            seen += stats
                .engines
                .iter()
                .filter(|e| e.alloc_id == instance[node])
                .count();
        }
        if let Ok(reply) = probe {
            let mut tokens = reply.into_inner();
            while tokens.next().await.is_some() {}
        }
        if seen == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "instances not polled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The fleet view lists remote instances every 2 s, and polls them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let completed_before = completed_elsewhere(&agent_addr, &instance).await;

    let arrivals = stream(SEED);
    let dispatched = arrivals.iter().filter(|a| !a.pinned).count() as u64;
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for (i, a) in arrivals.into_iter().enumerate() {
        let entry = entry.clone();
        let pinned_to = instance["h1"].clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until((begin + a.at).into()).await;
            let sent = Instant::now();
            let mut tokens = agent(&entry)
                .await
                .infer(InferRequest {
                    alloc_id: if a.pinned { pinned_to } else { String::new() },
                    job: "llm".into(),
                    prompt_tokens: a.prompt_tokens,
                    max_tokens: a.max_tokens,
                    priority: "normal".into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("request {i} refused: {e}"))
                .into_inner();
            let mut ttft = None;
            let mut indexes = Vec::new();
            while let Some(t) = tokens.next().await {
                let t = t.unwrap_or_else(|e| panic!("request {i}: {e}"));
                assert!(t.moved.is_none(), "a moved message reached the client");
                ttft.get_or_insert_with(|| sent.elapsed());
                indexes.push(t.index);
            }
            assert_eq!(
                indexes,
                (0..a.max_tokens).collect::<Vec<_>>(),
                "request {i} ({a:?}): every position once, in order"
            );
            ttft.unwrap_or_else(|| panic!("request {i}: no token"))
        }));
    }
    let mut ttft = Vec::new();
    for task in tasks {
        let t = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a request finished in time")
            .expect("request task");
        ttft.push(t);
    }
    println!("stream ran in {:?}", begin.elapsed());
    // Completions are counted by each agent's next poll of its engine.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let completed = completed_elsewhere(&agent_addr, &instance).await - completed_before;
    ArmResult {
        ttft,
        completed_elsewhere: completed,
        dispatched,
    }
}

/// Requests completed by the instances of h2, h3 and h4.
async fn completed_elsewhere(
    agent_addr: &BTreeMap<&str, String>,
    instance: &BTreeMap<String, String>,
) -> u64 {
    let mut total = 0;
    for node in &NODES[1..] {
        let stats = agent(&agent_addr[node])
            .await
            .engine_stats(EngineStatsRequest {})
            .await
            .expect("engine stats")
            .into_inner();
        total += stats
            .engines
            .iter()
            .filter(|e| e.alloc_id == instance[*node])
            .filter_map(|e| e.stats.as_ref())
            .map(|s| s.completed_total)
            .sum::<u64>();
    }
    total
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescheduling_lowers_the_p99_ttft_of_a_skewed_stream() {
    // The agents' decentralised balancing (docs/balancing.md) also moves
    // requests: off in both arms, so that only the rescheduler differs.
    let off = arm(&["--no-balance", "--no-reschedule"]).await;
    let on = arm(&["--no-balance"]).await;
    let (p99_off, p99_on) = (percentile(&off.ttft, 0.99), percentile(&on.ttft, 0.99));
    let (p50_off, p50_on) = (percentile(&off.ttft, 0.5), percentile(&on.ttft, 0.5));
    println!(
        "TTFT off: p50 {p50_off:?} p99 {p99_off:?}, {} done elsewhere; on: p50 {p50_on:?} p99 {p99_on:?}, {} done elsewhere; {} dispatched by service",
        off.completed_elsewhere, on.completed_elsewhere, on.dispatched
    );
    // Off: the others finish only what was dispatched to them (the probes
    // before the stream are not counted); on: also requests moved off h1.
    assert!(
        off.completed_elsewhere <= off.dispatched,
        "nothing moves with rescheduling off: {} > {}",
        off.completed_elsewhere,
        off.dispatched
    );
    assert!(
        on.completed_elsewhere > on.dispatched,
        "requests moved off h1: {} ≤ {}",
        on.completed_elsewhere,
        on.dispatched
    );
    assert!(
        p99_on < p99_off,
        "p99 TTFT with rescheduling {p99_on:?}, without {p99_off:?}"
    );
}

/// Two instances on three nodes (so that the drained one's replacement
/// has a node); a long request pinned to h1's instance; h1 is drained:
/// its engine drains (refuses new requests, says so in its stats) and h1's
/// agent moves the request to the other instance, where it finishes. The
/// request is far longer than the engine's 4 s drain limit, so it only
/// finishes by moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_running_request_moves_and_finishes_elsewhere() {
    let Serving {
        cluster: _cluster,
        addr,
        agents,
        instance,
        ..
    } = serving(
        &["h1", "h2", "h3"],
        &["--no-balance"],
        &[],
        &spec().count(2),
    )
    .await;
    let (source_node, source) = instance.iter().next().expect("an instance");
    let (source_node, source) = (source_node.clone(), source.clone());
    let other = instance
        .iter()
        .find(|(n, _)| **n != source_node)
        .map(|(_, a)| a.clone())
        .expect("another instance");
    let source_agent = agents.agent(&source_node).expect("agent").addr.clone();
    let other_node = instance
        .iter()
        .find(|(_, a)| **a == other)
        .map(|(n, _)| n.clone())
        .expect("its node");
    let other_agent = agents.agent(&other_node).expect("agent").addr.clone();
    // The source's agent knows the other instance's load before the drain.
    let started = Instant::now();
    loop {
        let mut client = agent(&source_agent).await;
        let probe = client
            .migrate_request(herd_api::proto::agent::MigrateRequestRequest {
                alloc_id: source.clone(),
                request_id: u64::MAX,
                to_alloc: other.clone(),
                to_agent: String::new(),
            })
            .await;
        // NOT_FOUND about `to_agent` until the fleet view lists it; then
        // the unknown request is what is refused.
        match probe {
            Err(s) if s.message().contains("to_agent") => {}
            _ => break,
        }
        assert!(started.elapsed() < Duration::from_secs(20), "fleet view");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    const MAX: u32 = 400;
    let mut tokens = agent(&source_agent)
        .await
        .infer(InferRequest {
            alloc_id: source.clone(),
            job: "llm".into(),
            prompt_tokens: 100,
            max_tokens: MAX,
            priority: "normal".into(),
            ..Default::default()
        })
        .await
        .expect("request accepted")
        .into_inner();
    let mut indexes = Vec::new();
    while indexes.len() < 20 {
        let t = tokens.next().await.expect("a token").expect("token");
        indexes.push(t.index);
    }
    let drained_at = Instant::now();
    let drained = must_run_cli(&[
        "--addr",
        &addr,
        "node",
        "drain",
        &source_node,
        "--no-migrate",
    ]);
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let rest = tokio::time::timeout(Duration::from_secs(40), async {
        let mut rest = Vec::new();
        while let Some(t) = tokens.next().await {
            let t = t.unwrap_or_else(|e| panic!("after the drain, at {}: {e}", rest.len()));
            rest.push(t.index);
        }
        rest
    })
    .await
    .expect("the stream ends");
    indexes.extend(rest);
    assert_eq!(
        indexes,
        (0..MAX).collect::<Vec<_>>(),
        "every position once, in order, across the drain"
    );
    println!("finished {:?} after the drain", drained_at.elapsed());
    // It finished on the other instance (nothing else was sent there).
    let started = Instant::now();
    loop {
        let done = agent(&other_agent)
            .await
            .engine_stats(EngineStatsRequest {})
            .await
            .expect("engine stats")
            .into_inner()
            .engines
            .iter()
            .filter(|e| e.alloc_id == other)
            .filter_map(|e| e.stats.as_ref())
            .map(|s| s.completed_total)
            .sum::<u64>();
        if done >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the request did not finish on {other}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The drained instance is stopped.
    assert!(
        running_allocs(&addr, "llm")
            .iter()
            .all(|a| a["id"].as_str() != Some(source.as_str())),
        "{source} still runs"
    );
}
