//! `herd bench power`: what power oversubscription buys, as a SIMULATION.
//!
//! Replays the synthetic inference + training + batch power trace
//! (`herd_actors::power::trace`, shape after POLCA, arXiv 2308.12908) over
//! simulated 8-GPU servers behind one feed (`herd_actors::power::replay`),
//! with herd's real POLCA policy deciding every node's limits each 50 ms of
//! simulated time. No node, process or GPU is involved: times are simulated
//! hours, only "wall s" is real. In one run, from the same trace:
//! - the nameplate fleet (as many servers as the feed covers at TDP);
//! - for each oversubscription (default +20, +30, +40 % servers): left
//!   uncapped (the risk), under a uniform static cap of feed / GPUs (the
//!   naive yardstick), and under herd's policy.
//!
//! For each: servers per MW, time above the feed and the longest
//! excursion, governor cap events, throughput lost per priority class,
//! and the work done against the nameplate fleet's.

use std::time::Instant;

use clap::Args;
use herd_actors::power::replay::{replay, Provisioning, ReplayConfig, ReplayReport};
use herd_actors::power::PriorityClass;
use serde_json::json;

use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Flags of `herd bench power`.
#[derive(Args, Debug)]
pub struct PowerBenchArgs {
    /// Seed of the trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated hours to replay.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Hour of the day the replay starts at (0 = midnight).
    #[arg(long, default_value_t = 0.0)]
    start_hour: f64,
    /// The feed, kW of GPU power (the hard budget).
    #[arg(long, default_value_t = 1000.0)]
    feed_kw: f64,
    /// Oversubscriptions to compare, percent more servers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20,30,40")]
    oversub: Vec<f64>,
}

struct Row {
    report: ReplayReport,
    wall_s: f64,
}

fn check(args: &PowerBenchArgs) -> Result<(), CliError> {
    if !(args.feed_kw.is_finite() && args.feed_kw > 0.0) {
        return Err(CliError::input(format!(
            "--feed-kw {} must be a positive number",
            args.feed_kw
        )));
    }
    if args.oversub.is_empty() {
        return Err(CliError::input("--oversub: give at least one percentage"));
    }
    if let Some(bad) = args
        .oversub
        .iter()
        .find(|p| !(p.is_finite() && (0.0..=300.0).contains(*p)))
    {
        return Err(CliError::input(format!(
            "--oversub {bad} must be 0 to 300 (percent more servers)"
        )));
    }
    Ok(())
}

fn configs(args: &PowerBenchArgs) -> Vec<ReplayConfig> {
    let make = |extra: f64, provisioning| {
        let mut config = ReplayConfig::new(
            args.seed,
            args.hours,
            args.feed_kw * 1000.0,
            extra,
            provisioning,
        );
        config.start_hour = args.start_hour;
        config
    };
    let mut out = vec![make(0.0, Provisioning::Uncapped)];
    for pct in &args.oversub {
        for provisioning in [
            Provisioning::Uncapped,
            Provisioning::StaticCap,
            Provisioning::Policy,
            Provisioning::DemandShares,
        ] {
            out.push(make(pct / 100.0, provisioning));
        }
    }
    out
}

/// Runs the replays, in parallel, in `configs`' order.
fn run_all(configs: Vec<ReplayConfig>) -> Result<Vec<Row>, CliError> {
    let results: Vec<Result<Row, CliError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .map(|config| {
                scope.spawn(move || {
                    let t = Instant::now();
                    let report = replay(config).map_err(CliError::input)?;
                    Ok(Row {
                        report,
                        wall_s: t.elapsed().as_secs_f64(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError::runtime("a replay thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn label(r: &ReplayReport) -> String {
    if r.servers == r.nameplate_servers && r.oversubscription == 0.0 {
        "nameplate".to_string()
    } else {
        format!(
            "{} +{:.0} %",
            r.provisioning.as_str(),
            r.oversubscription * 100.0
        )
    }
}

fn more_servers(r: &ReplayReport) -> f64 {
    if r.nameplate_servers == 0 {
        return 0.0;
    }
    r.servers as f64 / r.nameplate_servers as f64 - 1.0
}

/// Runs the benchmark and prints a Markdown table (or JSON rows).
pub async fn run(ctx: &Context, args: PowerBenchArgs) -> Result<(), CliError> {
    check(&args)?;
    let configs = configs(&args);
    // Bad hours, feeds and the like are refused before anything runs.
    for config in &configs {
        config.validate().map_err(CliError::input)?;
    }
    let rows = tokio::task::spawn_blocking(move || run_all(configs))
        .await
        .map_err(|e| CliError::runtime(format!("simulation task failed: {e}")))??;
    let nameplate_work = rows
        .first()
        .map(|r| r.report.done_gpu_hours())
        .unwrap_or(0.0);
    let per_mw = |r: &ReplayReport| r.servers as f64 / (r.budget_watts / 1e6);
    let work_ratio = |r: &ReplayReport| {
        if nameplate_work > 0.0 {
            r.done_gpu_hours() / nameplate_work
        } else {
            0.0
        }
    };
    let loss = |r: &ReplayReport, c| r.class(c).loss() * 100.0;

    if ctx.json() {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                let r = &row.report;
                json!({
                    "simulation": true,
                    "row": label(r),
                    "provisioning": r.provisioning.as_str(),
                    "oversubscription": r.oversubscription,
                    "servers": r.servers,
                    "nameplate_servers": r.nameplate_servers,
                    "servers_per_mw": per_mw(r),
                    "more_servers": more_servers(r),
                    "budget_watts": r.budget_watts,
                    "nameplate_watts": r.nameplate_watts,
                    "over_budget_s": r.over_budget_ms as f64 / 1000.0,
                    "longest_excursion_s": r.longest_excursion_ms as f64 / 1000.0,
                    "excursions": r.excursions,
                    "peak_watts": r.peak_watts,
                    "mean_watts": r.mean_watts,
                    "cap_events": r.cap_events,
                    "cap_all_events": r.cap_all_events,
                    "loss_inference": r.class(PriorityClass::Inference).loss(),
                    "loss_training": r.class(PriorityClass::Training).loss(),
                    "loss_batch": r.class(PriorityClass::Batch).loss(),
                    "work_vs_nameplate": work_ratio(r),
                    "simulated_hours": r.simulated_ms as f64 / 3_600_000.0,
                    "policy_calls": r.policy_calls,
                    "wall_s": row.wall_s,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(out));
        return Ok(());
    }
    println!(
        "SIMULATION (herd_actors::power::replay): {:.0} kW feed of GPU power, 8×H100 servers (4 inference, 2 training, 2 batch GPUs), synthetic POLCA-shaped trace, seed {}, {} simulated hours from {:02}:00; herd policy = the real POLCA policy per node share every 50 ms (reaction 10-50 ms), shares static (equal); herd demand shares = the same, shares re-split from reported demand every 1 s (herd_api::power_demand); static cap = every GPU at feed / GPUs; loss = throughput lost to caps along the H100 curve; work = GPU-hours done / the nameplate fleet's\n",
        args.feed_kw, args.seed, args.hours, args.start_hour as u32
    );
    println!("| fleet | servers | servers/MW | more servers | s over budget | longest excursion (s) | peak / budget | cap events (inference) | loss inference | loss training | loss batch | work vs nameplate | wall s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let r = &row.report;
        println!(
            "| {} | {} | {:.1} | {:+.1} % | {:.2} | {:.2} | {:.1} % | {} ({}) | {:.2} % | {:.2} % | {:.2} % | {:.3} | {:.1} |",
            label(r),
            r.servers,
            per_mw(r),
            more_servers(r) * 100.0,
            r.over_budget_ms as f64 / 1000.0,
            r.longest_excursion_ms as f64 / 1000.0,
            r.peak_watts / r.budget_watts * 100.0,
            r.cap_events,
            r.cap_all_events,
            loss(r, PriorityClass::Inference),
            loss(r, PriorityClass::Training),
            loss(r, PriorityClass::Batch),
            work_ratio(r),
            row.wall_s,
        );
    }
    Ok(())
}
