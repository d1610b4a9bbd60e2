//! Two duties of the agents' request rescheduler, end to end on real
//! processes (a coordinator, `herd node` agents, SIMULATED engine
//! processes):
//!
//! - **Room for a high-priority request.** An instance is filled with long
//!   normal-priority requests; a high-priority request pinned to it does
//!   not fit. Its engine runs with `priority_preemption = false` (it does
//!   not preempt for priority, as FCFS engines do), so the request waits
//!   for room: with rescheduling off until a long request finishes, with
//!   it on only until the agent moved a normal request to the other
//!   instance. Same workload in both arms; its time to first token is far
//!   lower with rescheduling on; every stream complete, each position
//!   once, in order.
//! - **A drain loses no queued request.** A drained instance's requests
//!   still waiting for their prefill move (with no KV to copy) to the other
//!   instances, as its running ones do, instead of being lost when the
//!   engine's 4 s drain limit passes.

// Test code: an unwrap/expect failing here fails the test at its line. The
// workspace denies both lints outside tests (issue 24), and clippy's
// `allow-*-in-tests` only covers `#[test]` functions, not these helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::serve::{
    agent, engine_stats, instances_by_node, must_know_instance, serving, ServiceSpec, Serving,
};
use common::*;
use futures::StreamExt;
use herd_api::proto::agent::InferRequest;

/// A request's stream as its client saw it.
struct Streamed {
    /// Wall-clock time to its first token.
    ttft: Duration,
    /// The positions, in arrival order.
    indexes: Vec<u32>,
}

/// Sends a request pinned to `alloc` at the agent `entry` (that
/// allocation's own agent) and reads it to its end, counting tokens into
/// `progress`; panics on a refused request or a broken stream.
async fn pinned(
    entry: String,
    alloc: String,
    prompt_tokens: u32,
    max_tokens: u32,
    priority: &'static str,
    progress: Arc<AtomicU32>,
) -> Streamed {
    let sent = Instant::now();
    let mut tokens = agent(&entry)
        .await
        .infer(InferRequest {
            alloc_id: alloc,
            job: "llm".into(),
            prompt_tokens,
            max_tokens,
            priority: priority.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{priority} request refused: {e}"))
        .into_inner();
    let mut ttft = None;
    let mut indexes = Vec::new();
    while let Some(t) = tokens.next().await {
        let t = t.unwrap_or_else(|e| panic!("{priority} request, at {}: {e}", indexes.len()));
        assert!(t.moved.is_none(), "a moved message reached the client");
        ttft.get_or_insert_with(|| sent.elapsed());
        indexes.push(t.index);
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Streamed {
        ttft: ttft.unwrap_or_else(|| panic!("{priority} request: no token")),
        indexes,
    }
}

/// Waits until every counter of `progress` reached `at_least` (`limit` at
/// most).
async fn until_progress(progress: &[Arc<AtomicU32>], at_least: u32, limit: Duration) {
    let started = Instant::now();
    while progress
        .iter()
        .any(|p| p.load(Ordering::Relaxed) < at_least)
    {
        assert!(
            started.elapsed() < limit,
            "requests did not reach {at_least} tokens in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances, one per node, of 96 blocks of 16 tokens at the
/// modelled speed (about 20 ms a step), not preempting for priority.
fn room_spec() -> ServiceSpec {
    ServiceSpec::llm(2)
        .kv_blocks(96)
        .bytes_per_token(16)
        .priority_preemption(false)
}

/// The long normal requests: 240 prompt tokens (15 blocks) and 400 out,
/// 40 blocks each at their end (80 of the 96, under the reserve).
const LONG: (u32, u32) = (240, 400);
/// The high-priority request: 880 prompt tokens (55 blocks), 20 out.
const HIGH: (u32, u32) = (880, 20);
/// Tokens the long requests have produced when the high one is sent
/// (then they hold 22 blocks each: 52 free, fewer than the 57 it needs).
const HIGH_AFTER: u32 = 100;

/// What one arm of the room test saw.
struct RoomArm {
    /// The high-priority request's time to first token.
    high_ttft: Duration,
    /// Requests the other instance completed.
    completed_elsewhere: u64,
    /// h1's agent's log.
    log: String,
}

/// Fills h1's instance with two long requests, then sends the high one;
/// agents get `agent_args`.
async fn room_arm(agent_args: &[&str]) -> RoomArm {
    let Serving {
        cluster: _cluster,
        agents,
        instance,
        ..
    } = serving(&["h1", "h2"], agent_args, &[], &room_spec()).await;
    let (full, other) = (instance["h1"].clone(), instance["h2"].clone());
    let entry = agents.agent("h1").expect("agent").addr.clone();
    let other_agent = agents.agent("h2").expect("agent").addr.clone();
    must_know_instance(&entry, &full, &other).await;

    let progress: Vec<Arc<AtomicU32>> = (0..2).map(|_| Arc::new(AtomicU32::new(0))).collect();
    let longs: Vec<_> = progress
        .iter()
        .map(|p| {
            tokio::spawn(pinned(
                entry.clone(),
                full.clone(),
                LONG.0,
                LONG.1,
                "normal",
                p.clone(),
            ))
        })
        .collect();
    until_progress(&progress, HIGH_AFTER, Duration::from_secs(20)).await;
    let stats = engine_stats(&entry, &full)
        .await
        .expect("stats of h1's instance");
    assert!(
        (stats.free_blocks as u64) < (HIGH.0 as u64).div_ceil(16) + 2,
        "the high-priority request must not fit: {stats:?}"
    );
    let high = tokio::spawn(pinned(
        entry.clone(),
        full.clone(),
        HIGH.0,
        HIGH.1,
        "high",
        Arc::new(AtomicU32::new(0)),
    ));
    let high = tokio::time::timeout(Duration::from_secs(40), high)
        .await
        .expect("the high-priority request finished")
        .expect("its task");
    assert_eq!(high.indexes, (0..HIGH.1).collect::<Vec<_>>());
    for long in longs {
        let long = tokio::time::timeout(Duration::from_secs(40), long)
            .await
            .expect("a long request finished")
            .expect("its task");
        assert_eq!(
            long.indexes,
            (0..LONG.1).collect::<Vec<_>>(),
            "every position once, in order"
        );
    }
    // Completions are counted by the agent's next poll of its engine.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let completed_elsewhere = engine_stats(&other_agent, &other)
        .await
        .map_or(0, |s| s.completed_total);
    let log_path = agents.agent("h1").expect("agent").log_path.clone();
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    RoomArm {
        high_ttft: high.ttft,
        completed_elsewhere,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_high_priority_request_gets_room_by_moving_a_normal_one() {
    // The agents' balancing also moves requests: off in both arms.
    let off = room_arm(&["--no-balance", "--no-reschedule"]).await;
    let on = room_arm(&["--no-balance"]).await;
    println!(
        "high-priority TTFT: {:?} with rescheduling off, {:?} on; the other instance completed {} off, {} on",
        off.high_ttft, on.high_ttft, off.completed_elsewhere, on.completed_elsewhere
    );
    assert_eq!(off.completed_elsewhere, 0, "nothing moves when off");
    assert!(!off.log.contains("request rescheduled"));
    // Moved by the high-priority rule, which runs before the low-on-blocks
    // one (that would also move a long request here, chosen differently).
    let moves: Vec<&str> = on
        .log
        .lines()
        .filter(|l| l.contains("request rescheduled"))
        .collect();
    assert!(
        moves
            .first()
            .is_some_and(|l| l.contains("room for a high-priority request")),
        "the first move makes room for the high-priority request: {moves:?}"
    );
    assert!(
        on.completed_elsewhere >= 1,
        "a long request moved to the other instance and finished there"
    );
    // Off: it waits for a long request to finish (about 300 decode steps,
    // 6 s); on: for a poll, a tick and one migration.
    assert!(
        on.high_ttft * 3 < off.high_ttft,
        "TTFT on {:?} vs off {:?}",
        on.high_ttft,
        off.high_ttft
    );
}

/// Three instances, one per node, of 64 blocks, batches of 2.
fn drain_spec() -> ServiceSpec {
    ServiceSpec::llm(3).bytes_per_token(16).max_batch(2)
}

/// Three agents, three instances (so the drained one's replacement has no
/// node: only the two others serve). Each of the two not drained (their
/// agents with `--no-reschedule`, so they keep their own requests) runs
/// three requests of its own (400 tokens, about 8 s): two in its batch (of
/// 2), one queued, so it has no room for a running request until well
/// after the drain limit. The drained instance runs two short
/// requests (120 tokens, about 2.5 s: unmovable, as no instance has room,
/// they finish within the engine's 4 s drain limit) and has two long ones
/// (400 tokens, about 8 s) queued. Before this change those two waited
/// there, were admitted when the short ones ended, and were cut off at the
/// drain limit (checked by hand: this test then fails); now they move, as
/// waiting requests, to the others' queues.
/// Every request finishes, every position once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_its_queued_requests_too_and_loses_none() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let names = ["h1", "h2", "h3"];
    // h1's instance is drained; the others' agents keep their own requests
    // where they are (no rescheduling there), so they stay full.
    agents.start("h1", &["--no-balance"]).expect("start agent");
    for name in &names[1..] {
        agents
            .start(name, &["--no-balance", "--no-reschedule"])
            .expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let dir = tempfile::tempdir().expect("tempdir");
    drain_spec().run(&addr, dir.path());
    let instance = instances_by_node(&addr, "llm", 3).await;
    let source_node = "h1".to_string();
    let others: Vec<String> = names[1..].iter().map(|n| n.to_string()).collect();
    let source = instance[&source_node].clone();
    let source_agent = agents.agent(&source_node).expect("agent").addr.clone();
    for node in &others {
        must_know_instance(&source_agent, &source, &instance[node]).await;
    }
    let addr_of = |node: &str| agents.agent(node).expect("agent").addr.clone();
    // The others' own requests: 32 prompt tokens, 400 out (about 8 s),
    // three each.
    const OWN: u32 = 400;
    let mut own = Vec::new();
    for node in &others {
        for _ in 0..3 {
            own.push(tokio::spawn(pinned(
                addr_of(node),
                instance[node].clone(),
                32,
                OWN,
                "normal",
                Arc::new(AtomicU32::new(0)),
            )));
        }
    }
    for node in &others {
        let (agent_addr, alloc) = (addr_of(node), instance[node].clone());
        until_some(
            "two running and one queued on each other instance",
            async || {
                let stats = engine_stats(&agent_addr, &alloc).await?;
                (stats.batch_size == 2 && stats.queue_len == 1).then_some(())
            },
        )
        .await;
    }
    // On the source: two short ones run, then two long ones queue.
    const SHORT: u32 = 120;
    const LONG: u32 = 400;
    let progress: Vec<Arc<AtomicU32>> = (0..4).map(|_| Arc::new(AtomicU32::new(0))).collect();
    let mut mine = Vec::new();
    for (i, p) in progress.iter().enumerate() {
        mine.push(tokio::spawn(pinned(
            source_agent.clone(),
            source.clone(),
            32,
            if i < 2 { SHORT } else { LONG },
            "normal",
            p.clone(),
        )));
        if i == 1 {
            until_progress(&progress[..2], 1, Duration::from_secs(20)).await;
        }
    }
    let stats = until_some("two requests queued on the source", async || {
        let stats = engine_stats(&source_agent, &source).await?;
        (stats.queue_len == 2 && stats.batch_size == 2).then_some(stats)
    })
    .await;
    println!("before the drain: {stats:?}");
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
    for (i, task) in mine.into_iter().enumerate() {
        let streamed = tokio::time::timeout(Duration::from_secs(40), task)
            .await
            .expect("a request finished")
            .expect("its task");
        let max = if i < 2 { SHORT } else { LONG };
        assert_eq!(
            streamed.indexes,
            (0..max).collect::<Vec<_>>(),
            "request {i}: every position once, in order, across the drain"
        );
    }
    println!(
        "all four finished {:?} after the drain",
        drained_at.elapsed()
    );
    for task in own {
        let streamed = tokio::time::timeout(Duration::from_secs(40), task)
            .await
            .expect("an own request finished")
            .expect("its task");
        assert_eq!(streamed.indexes, (0..OWN).collect::<Vec<_>>());
    }
    // The two others completed their own six and the two long ones.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut completed = 0;
    for node in &others {
        completed += engine_stats(&addr_of(node), &instance[node])
            .await
            .map_or(0, |s| s.completed_total);
    }
    assert_eq!(completed, 8, "their own six and the two that were queued");
    assert!(
        running_allocs(&addr, "llm")
            .iter()
            .all(|a| a["id"].as_str() != Some(source.as_str())),
        "{source} still runs"
    );
}

/// Polls `probe` every 50 ms until it gives a value (20 s at most).
async fn until_some<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
