//! Power budgets under faults, on real processes (issue 20):
//!
//! * `herd chaos run --scenario power`: three agents with SIMULATED H100s
//!   under a cluster budget of nameplate / 1.3, load spikes on every GPU
//!   while a node is cut off, a node is killed and restarted, and
//!   coordinators are killed (seed 4005; before agents kept their share on
//!   disk, a node restarted during a spike ran uncapped for about 2 s and
//!   this seed failed); every checker passes,
//!   the power checker (no group above its hard budget for over 1 s, no
//!   limit outside a device's range) included.
//! * A coordinator outage during a spike: an agent holding a share loses
//!   every coordinator (killed), a spike comes, and it still caps its GPUs
//!   under its last share within 1 s, and keeps them there.

mod common;

use std::time::{Duration, Instant};

use common::agents::{cluster_with_agents, must_have_ready_nodes};
use common::*;
use herd_chaos::history::{History, Record};
use herd_chaos::ports::free_loopback_port;
use herd_chaos::power::{self, scrape};

#[test]
fn the_power_scenario_spikes_under_faults_and_passes_every_checker() {
    let (_out_dir, stdout, path) =
        must_pass_scenario("power", "4005", "20s", "power under hard budget");
    assert!(stdout.contains("power (SIMULATED GPUs)"), "{stdout}");

    let history = History::read_jsonl(&path).expect("history");
    let budget = history.power_budget().expect("a budget was recorded");
    assert_eq!(budget.nodes.len(), 3);
    assert_eq!(budget.watts, power::budget_watts(3) as f64);
    assert!(history.faults().count() >= 1, "no fault was injected");
    assert!(
        history.faults().any(|f| f.what.contains("kill -9 node")),
        "the seed's schedule kills a node (agent and workloads)"
    );
    let spikes: Vec<_> = history.spikes().cloned().collect();
    assert!(!spikes.is_empty(), "no spike was forced");
    // Spikes met faults (the seed's schedule makes them overlap).
    let overlapping = history.faults().any(|f| {
        let end = f.end_ns.unwrap_or(u64::MAX);
        spikes
            .iter()
            .any(|s| s.start_ns < end && f.start_ns < s.end_ns.unwrap_or(u64::MAX))
    });
    assert!(overlapping, "no spike came during a fault:\n{stdout}");
    let ticks: Vec<_> = history.power_ticks().cloned().collect();
    let span_s = ticks
        .last()
        .zip(ticks.first())
        .map(|(l, f)| (l.at_ns - f.at_ns) as f64 / 1e9)
        .unwrap_or(0.0);
    // 5 Hz aimed at; a loaded machine may lag, so ask for 3.
    assert!(
        ticks.len() as f64 >= 3.0 * span_s && span_s > 10.0,
        "{} samples over {span_s:.1} s",
        ticks.len()
    );
    // The spikes reached the GPUs and the governors answered them: some
    // sample inside a spike shows a GPU held at a lowered limit it draws.
    let in_spike = |at: u64| {
        spikes
            .iter()
            .any(|s| at >= s.start_ns && s.end_ns.is_none_or(|e| at <= e))
    };
    let capped_at_limit = ticks.iter().filter(|t| in_spike(t.at_ns)).any(|t| {
        t.nodes
            .iter()
            .flat_map(|n| &n.gpus)
            .any(|g| g.capped && g.limit_watts < g.max_watts && g.draw_watts >= g.limit_watts - 1.0)
    });
    assert!(capped_at_limit, "no GPU was seen capped during a spike");
    // Every sample carries each GPU's range, as the checker needs.
    assert!(history.records.iter().any(|r| matches!(r,
        Record::Power(t) if t.nodes.iter().flat_map(|n| &n.gpus).all(|g| g.min_watts == 200.0 && g.max_watts == 700.0) && !t.nodes.is_empty())));
}

/// The node's figures now: (draw, summed limits, every GPU at its limit,
/// share), from its metrics endpoint.
async fn node_power(metrics: &str) -> Option<(f64, f64, bool, Option<f64>)> {
    let s = scrape::scrape(metrics, Duration::from_secs(2)).await.ok()?;
    if s.gpus.is_empty() {
        return None;
    }
    let draw = s.gpus.iter().map(|g| g.draw_watts).sum();
    let limits = s.gpus.iter().map(|g| g.limit_watts).sum();
    let at_limit = s.gpus.iter().all(|g| g.draw_watts >= g.limit_watts - 1.0);
    Some((draw, limits, at_limit, s.share_watts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_every_coordinator_caps_a_spike_to_its_last_share() {
    let (mut cluster, addr, agents) = cluster_with_agents(1, "3000").await;
    let spike = tempfile::tempdir().expect("temp dir");
    let spike_file = spike.path().join("spike");
    power::set_spike(&spike_file, 0.0).expect("spike file");
    let mut agents = agents.with_env(power::SPIKE_FILE_ENV, &spike_file.display().to_string());
    let metrics = format!("127.0.0.1:{}", free_loopback_port().expect("port"));
    let args = power::agent_args(&metrics);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agents.start("p1", &args).expect("start agent");
    must_have_ready_nodes(&addr, &["p1"]).await;
    let budget = power::budget_watts(1);
    must_cli_ok(&[
        "--addr",
        &addr,
        "power",
        "budget",
        "set",
        "cluster",
        "--watts",
        &budget.to_string(),
    ]);
    let share = budget as f64;

    // The agent holds its share and its draw is under it.
    let started = Instant::now();
    loop {
        if let Some((draw, _, _, Some(s))) = node_power(&metrics).await {
            if (s - share).abs() < 1.0 && draw <= share {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never held its share of {share} W under it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every coordinator gone; the agent sees it lose them.
    for id in cluster.ids() {
        cluster.kill(id).expect("kill coordinator");
    }
    let started = Instant::now();
    loop {
        let page = scrape::page(&metrics, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        if scrape::value_of(&page, "herd_agent_coordinator_connected") == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent never noticed the coordinators were gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, limits_before, _, kept) = node_power(&metrics).await.expect("figures");
    assert_eq!(
        kept,
        Some(share),
        "the share was dropped with the coordinators"
    );

    // The spike: every GPU fully busy (4 × 700 W uncapped, over the share).
    power::set_spike(&spike_file, 1.0).expect("spike");
    let spiked = Instant::now();
    let capped_after = loop {
        if let Some((draw, _, at_limit, _)) = node_power(&metrics).await {
            // The spike seen (every GPU drawing its limit) and capped.
            if at_limit && draw <= share {
                break spiked.elapsed();
            }
        }
        assert!(
            spiked.elapsed() < Duration::from_secs(10),
            "the spike was not capped under the last share of {share} W"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("spike capped under the last share {capped_after:?} after it began");
    assert!(
        capped_after <= Duration::from_secs(1),
        "capped only {capped_after:?} after the spike"
    );
    // And held there, still with no coordinator, for two more seconds.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        let (draw, limits, _, s) = node_power(&metrics).await.expect("figures");
        assert!(draw <= share, "{draw} W over the share {share} W");
        assert!(
            limits <= limits_before.max(share) + 1.0,
            "limits raised: {limits} W"
        );
        assert_eq!(s, Some(share));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    power::set_spike(&spike_file, 0.0).expect("end the spike");
}
