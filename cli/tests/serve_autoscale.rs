//! Autoscaling of an inference service and `herd service status|scale`,
//! end to end on real processes (coordinators, `herd node` agents,
//! SIMULATED engine processes).
//!
//! - `load_scales_out_then_scale_in_drains_with_its_request_finishing`:
//!   a burst of long requests raises the KV load of a one-instance service
//!   past its target; the leader's autoscaler scales it out (to its max of
//!   3). Once the burst is over, one long request is pinned to the
//!   highest instance, the one a scale-in stops; the load being low, the
//!   autoscaler scales in, that instance's engine drains and its agent
//!   moves the request, which streams every position once, in order. The
//!   status JSON is checked against what runs.
//! - `herd_service_scale_and_its_errors_and_events_survive_a_leader_change`:
//!   manual scaling within the autoscale range, the errors (exit 2), and
//!   the scaling events still listed after the leader is killed.
//! - `an_slo_miss_at_low_load_scales_out_and_resubmitting_keeps_the_count`:
//!   a stream of short requests keeps a one-instance service far under its
//!   load target while every TTFT misses the objective (a slow modelled
//!   prefill); the autoscaler scales out on the SLO alone, the event saying
//!   so. Then `herd job run` of the same file is a no-op and a changed file
//!   a new version, both keeping the autoscaler's count.

// Test code: an unwrap/expect failing here fails the test at its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes, running_allocs};
use common::serve::{agent, run_job};
use common::*;
use futures::StreamExt;
use herd_api::proto::agent::InferRequest;
use serde_json::Value;

/// One instance to start with, up to 3, one per node; 64 blocks of 16
/// tokens at the modelled speed; short cooldowns so that the test runs in
/// well under a minute.
const SPEC: &str = r#"
name = "llm"
type = "service"
count = 1
spread = "node"

[task]
driver = "inference"

[task.resources]
cpu = 100
memory = "64MiB"

[task.config]
kv_blocks = "64"
bytes_per_token = "16"
time_scale = "1"

[autoscale]
min = 1
max = 3
target_load = 0.5
ttft_p99_ms = 60000
tbt_p99_ms = 5000
scale_out_cooldown = "2s"
scale_in_cooldown = "4s"
"#;

/// `herd service status llm -o json`.
fn status(addr: &str) -> Value {
    json(addr, &["service", "status", "llm"])
}

/// Streams one request entering at `entry`; checks every position arrives
/// once, in order; returns the wall-clock time to the first token.
async fn request(entry: String, alloc_id: String, prompt_tokens: u32, max_tokens: u32) -> Duration {
    let sent = Instant::now();
    let mut tokens = agent(&entry)
        .await
        .infer(InferRequest {
            alloc_id,
            job: "llm".into(),
            prompt_tokens,
            max_tokens,
            priority: "normal".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("request refused: {e}"))
        .into_inner();
    let mut ttft = None;
    let mut indexes = Vec::new();
    while let Some(t) = tokens.next().await {
        let t = t.unwrap_or_else(|e| panic!("stream broke after {} tokens: {e}", indexes.len()));
        ttft.get_or_insert_with(|| sent.elapsed());
        indexes.push(t.index);
    }
    assert_eq!(
        indexes,
        (0..max_tokens).collect::<Vec<_>>(),
        "every position once, in order"
    );
    ttft.expect("a token")
}

/// The running allocations of llm: (id, instance, node).
fn instances(addr: &str) -> Vec<(String, u64, String)> {
    let mut list: Vec<(String, u64, String)> = running_allocs(addr, "llm")
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_string(),
                a["instance"].as_u64().unwrap_or_default(),
                a["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    list.sort_by_key(|(_, instance, _)| *instance);
    list
}

/// Waits until llm's status says `count` instances wanted and every one
/// of them serving with stats; returns that status.
async fn until_serving(addr: &str, count: u64, limit: Duration) -> Value {
    until(&format!("{count} instances serving"), limit, || {
        let s = status(addr);
        let serving = s["instances"]
            .as_array()?
            .iter()
            .filter(|i| {
                i["has_stats"] == true && i["status"] == "running" && i["draining"] == false
            })
            .count() as u64;
        (s["count"] == count
            && serving == count
            && s["instances"].as_array()?.len() as u64 == count)
            .then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_out_then_scale_in_drains_with_its_request_finishing() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let names = ["h1", "h2", "h3"];
    // Balancing also moves requests: off, so that only scaling moves them.
    for name in names {
        agents.start(name, &["--no-balance"]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let entry = agents.agent("h1").expect("agent h1").addr.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", SPEC);
    let first = until_serving(&addr, 1, Duration::from_secs(30)).await;
    assert_eq!(first["autoscale"]["max"], 3, "{first}");
    // The entry agent lists the service every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Load rises: 6 requests of 200 + 300 tokens need 32 blocks each by
    // their end, three times the one instance's 64 blocks.
    let began = Instant::now();
    let burst: Vec<_> = (0..6)
        .map(|_| tokio::spawn(request(entry.clone(), String::new(), 200, 300)))
        .collect();
    let scaled_out = until_serving(&addr, 3, Duration::from_secs(30)).await;
    println!("scaled out to 3 in {:?}", began.elapsed());
    let events = scaled_out["events"].as_array().expect("events").clone();
    let out = events
        .iter()
        .find(|e| e["source"] == "autoscaler" && e["from"] == 1)
        .unwrap_or_else(|| panic!("no scale-out event: {scaled_out}"));
    assert!(out["to"].as_u64().unwrap_or(0) > 1, "{out}");
    assert!(
        out["reason"].as_str().unwrap_or("").contains("load"),
        "{out}"
    );
    // Every burst request has had its first token by now (the instances
    // queue no more), and the burst decodes for seconds yet: the engines'
    // 10 s window holds every TTFT of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mid = status(&addr);
    let mut ttfts = Vec::new();
    for task in burst {
        ttfts.push(
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("burst request finished in time")
                .expect("burst task"),
        );
    }
    // The status is consistent with what runs: the same allocations as
    // `herd alloc list`; the percentiles (of the burst, read while it ran)
    // present and ordered, the TTFT p99 (on the engines' modelled clock)
    // near the slowest the clients saw: no later (plus a margin for the
    // way there and back), and not far below; the time between tokens
    // about a modelled decode step.
    let running: BTreeSet<String> = instances(&addr).into_iter().map(|(id, _, _)| id).collect();
    let after = status(&addr);
    let listed: BTreeSet<String> = after["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["alloc_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, running, "{after}");
    let (p50, p99) = (
        mid["ttft_p50_ms"].as_f64().expect("ttft_p50_ms"),
        mid["ttft_p99_ms"].as_f64().expect("ttft_p99_ms"),
    );
    let tbt_p99 = mid["tbt_p99_ms"].as_f64().expect("tbt_p99_ms");
    let slowest = ttfts.iter().max().expect("ttfts").as_secs_f64() * 1000.0;
    println!("status during the burst: TTFT p50 {p50} p99 {p99} ms, TBT p99 {tbt_p99} ms; clients' slowest TTFT {slowest:.0} ms");
    assert!(p50 > 0.0 && p50 <= p99, "{scaled_out}");
    assert!(
        p99 <= slowest + 1000.0,
        "p99 {p99} ms vs the clients' {slowest} ms"
    );
    // A decode step is modelled at 20 ms and more.
    assert!((15.0..5000.0).contains(&tbt_p99), "{scaled_out}");

    // Load falls. One long request (about 10 s of decoding, far beyond the
    // engine's 4 s drain limit) pinned to the highest instance, which the
    // next scale-in stops: it finishes only by moving.
    let now = instances(&addr);
    let n = now.len() as u64;
    assert!(n >= 2, "still scaled out after the burst: {now:?}");
    let highest = now.last().cloned().expect("an instance");
    assert_eq!(highest.1, n - 1, "instances 0..{n} run: {now:?}");
    // Pinned to an allocation, a request enters at that allocation's agent.
    let pinned_entry = agents.agent(&highest.2).expect("its agent").addr.clone();
    let long = tokio::spawn(request(pinned_entry, highest.0.clone(), 64, 450));
    let scaled_in = until("a scale-in", Duration::from_secs(30), || {
        let s = status(&addr);
        (s["count"].as_u64()? < n).then_some(s)
    })
    .await;
    println!("scaled in: {}", scaled_in["events"]);
    let last = scaled_in["events"]
        .as_array()
        .and_then(|e| e.last().cloned())
        .expect("an event");
    assert_eq!(
        (last["from"].as_u64(), last["to"].as_u64()),
        (Some(n), Some(n - 1)),
        "{last}"
    );
    assert_eq!(last["source"], "autoscaler");
    tokio::time::timeout(Duration::from_secs(40), long)
        .await
        .expect("the long request finished in time")
        .expect("the long request streamed every position once, in order");
    assert!(
        !instances(&addr).iter().any(|(id, _, _)| *id == highest.0),
        "the scaled-in instance stopped"
    );
    // And on to min, one instance at a time.
    let settled = until_serving(&addr, 1, Duration::from_secs(30)).await;
    let changes: Vec<(u64, u64)> = settled["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["from"].as_u64().unwrap_or(0),
                e["to"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    println!("scaling events: {changes:?}");
    assert_eq!(changes.last(), Some(&(2, 1)), "{settled}");
    // No flapping: up during the burst, then only down.
    let first_down = changes
        .iter()
        .position(|(from, to)| to < from)
        .expect("a scale-in");
    assert!(
        changes[..first_down].iter().all(|(from, to)| to > from)
            && changes[first_down..].iter().all(|(from, to)| to < from),
        "{changes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_service_scale_and_its_errors_and_events_survive_a_leader_change() {
    let (mut cluster, addr, mut agents) = cluster_with_agents(3, "2000").await;
    let names = ["h1", "h2"];
    for name in names {
        agents.start(name, &["--no-balance"]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Autoscaled 1..=2, but cooldowns so long that only `herd service
    // scale` changes the count here.
    let spec = SPEC
        .replace("max = 3", "max = 2")
        .replace("scale_out_cooldown = \"2s\"", "scale_out_cooldown = \"1h\"")
        .replace("scale_in_cooldown = \"4s\"", "scale_in_cooldown = \"1h\"");
    run_job(&addr, dir.path(), "llm", &spec);
    until_serving(&addr, 1, Duration::from_secs(30)).await;
    let first = instances(&addr);

    let out = json(&addr, &["service", "scale", "llm", "2"]);
    assert_eq!(
        (out["from"].as_u64(), out["to"].as_u64()),
        (Some(1), Some(2)),
        "{out}"
    );
    let two = until_serving(&addr, 2, Duration::from_secs(30)).await;
    assert_eq!(two["instances"].as_array().map(Vec::len), Some(2));
    // The first instance was not replaced: no new job version.
    assert!(instances(&addr).iter().any(|i| i.0 == first[0].0));
    let job = json(&addr, &["job", "status", "llm"]);
    println!("job after scaling: version {}", job["version"]);
    assert_eq!(job["version"], 1, "{job}");

    // Errors: exit 2 and a message naming what is wrong.
    for (args, expect) in [
        (vec!["service", "scale", "llm", "3"], "1..=2"),
        (vec!["service", "scale", "llm", "0"], "at least 1"),
        (vec!["service", "scale", "nope", "1"], "not found"),
        (vec!["service", "status", "nope"], "not found"),
    ] {
        let mut full = vec!["--addr", addr.as_str()];
        full.extend_from_slice(&args);
        let out = must_run_cli(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "herd {args:?}: {stderr}");
        assert!(stderr.contains(expect), "herd {args:?}: {stderr}");
    }

    // Back to 1: the highest instance stops.
    let out = json(&addr, &["service", "scale", "llm", "1"]);
    assert_eq!(
        (out["from"].as_u64(), out["to"].as_u64()),
        (Some(2), Some(1)),
        "{out}"
    );
    until_serving(&addr, 1, Duration::from_secs(30)).await;
    assert_eq!(
        instances(&addr).first().map(|i| i.0.clone()),
        Some(first[0].0.clone())
    );

    // The events are replicated: still there under the next leader.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    cluster.kill(leader).expect("kill the leader");
    let next = until("a new leader", Duration::from_secs(20), || {
        let s = must_run_cli(&["--addr", &addr, "service", "status", "llm", "-o", "json"]);
        s.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&s.stdout).ok())
            .flatten()
    })
    .await;
    let changes: Vec<(u64, u64, String)> = next["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["from"].as_u64().unwrap_or(0),
                e["to"].as_u64().unwrap_or(0),
                e["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![(1, 2, "manual".to_string()), (2, 1, "manual".to_string())],
        "{next}"
    );
}

/// One to two instances; each prefill costs 400 ms on the modelled clock
/// (time scale 1), against a TTFT objective of 150 ms; a load target of
/// 0.9 that three short requests in flight stay under (14 blocks each of
/// 64). Long cooldowns: the one change is the SLO's scale-out.
const SLO_SPEC: &str = r#"
name = "llm"
type = "service"
count = 1
spread = "node"

[task]
driver = "inference"

[task.resources]
cpu = 100
memory = "64MiB"

[task.config]
kv_blocks = "64"
bytes_per_token = "16"
time_scale = "1"
prefill_base_us = "400000"

[autoscale]
min = 1
max = 2
target_load = 0.9
ttft_p99_ms = 150
scale_out_cooldown = "1h"
scale_in_cooldown = "1h"
"#;

/// The summed load an autoscaler's reason was decided on ("load 0.09 over
/// 1 instances ...").
fn load_in(reason: &str) -> f64 {
    reason
        .split("load ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no load in {reason:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_miss_at_low_load_scales_out_and_resubmitting_keeps_the_count() {
    let (_cluster, addr, mut agents) = cluster_with_agents(1, "2000").await;
    let names = ["h1", "h2"];
    for name in names {
        agents.start(name, &["--no-balance"]).expect("start agent");
    }
    must_have_ready_nodes(&addr, &names).await;
    let entry = agents.agent("h1").expect("agent h1").addr.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    run_job(&addr, dir.path(), "llm", SLO_SPEC);
    until_serving(&addr, 1, Duration::from_secs(30)).await;
    let first = instances(&addr);
    // The entry agent lists the service every 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A steady stream, three requests in flight, until the count moves:
    // each holds at most 14 blocks (160 + 50 tokens), so the load stays
    // at or under 3 × 14 / 64 = 0.66 of the one instance, below its 0.9
    // target: the load alone would not scale out. Every TTFT is a 400 ms
    // prefill or more, against 150. The autoscaler acts on a p99 of 8
    // samples and more (10 s of them).
    let began = Instant::now();
    let mut ttfts = Vec::new();
    let mut peak_load: f64 = 0.0;
    let mut in_flight: Vec<tokio::task::JoinHandle<Duration>> = Vec::new();
    loop {
        let (done, running): (Vec<_>, Vec<_>) =
            in_flight.into_iter().partition(|t| t.is_finished());
        in_flight = running;
        for task in done {
            ttfts.push(task.await.expect("request task"));
        }
        while in_flight.len() < 3 {
            in_flight.push(tokio::spawn(request(entry.clone(), String::new(), 160, 50)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = status(&addr);
        if s["count"] != 1 {
            break;
        }
        peak_load = peak_load.max(s["load"].as_f64().unwrap_or(0.0));
        assert!(
            began.elapsed() < Duration::from_secs(40),
            "no scale-out in 40 s (TTFTs {ttfts:?}): {s}"
        );
    }
    for task in in_flight {
        ttfts.push(task.await.expect("request task"));
    }
    println!(
        "scaled out after {:?}; peak load seen {peak_load:.2}; TTFTs {ttfts:?}",
        began.elapsed()
    );
    assert!(
        ttfts.iter().all(|t| *t >= Duration::from_millis(150)),
        "every TTFT misses the objective: {ttfts:?}"
    );
    let scaled = until_serving(&addr, 2, Duration::from_secs(30)).await;
    let events = scaled["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 1, "{scaled}");
    let event = &events[0];
    assert_eq!(
        (
            event["from"].as_u64(),
            event["to"].as_u64(),
            event["source"].as_str()
        ),
        (Some(1), Some(2), Some("autoscaler")),
        "{event}"
    );
    let reason = event["reason"].as_str().unwrap_or_default();
    println!("scaling event: {reason}");
    assert!(
        reason.starts_with("latency objective missed") && reason.contains("TTFT p99"),
        "{reason}"
    );
    // The load it was decided on would not have scaled on its own: one
    // instance under its 0.9 target.
    let load = load_in(reason);
    assert!(load < 0.9, "load {load} in {reason}");
    // The stream did load the instance, and never up to the target.
    assert!(
        (0.05..0.9).contains(&peak_load),
        "peak load seen {peak_load}"
    );

    // The same file again: no new version, the autoscaler's 2 instances
    // kept (the file says 1), none replaced.
    let path = write_spec(dir.path(), "llm", SLO_SPEC);
    let again = must_cli_ok(&["--addr", &addr, "job", "run", "--detach", &path]);
    assert!(again.contains("unchanged: version 1"), "{again}");
    let job = json(&addr, &["job", "status", "llm"]);
    assert_eq!(job["version"], 1, "{job}");
    let kept = status(&addr);
    assert_eq!(kept["count"], 2, "{kept}");
    let now = instances(&addr);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.iter().any(|i| i.0 == first[0].0),
        "{now:?} vs {first:?}"
    );

    // A changed file (max 3): a new version that keeps the count.
    let changed = SLO_SPEC.replace("max = 2", "max = 3");
    let path = write_spec(dir.path(), "llm", &changed);
    let out: Value = serde_json::from_str(&must_cli_ok(&[
        "--addr", &addr, "job", "run", "--detach", &path, "-o", "json",
    ]))
    .expect("json");
    assert_eq!(
        (out["changed"].as_bool(), out["version"].as_u64()),
        (Some(true), Some(2)),
        "{out}"
    );
    let next = status(&addr);
    assert_eq!(
        (next["count"].as_u64(), next["autoscale"]["max"].as_u64()),
        (Some(2), Some(3)),
        "{next}"
    );
}
