//! `herd bench balance`: the decentralised balancing SIMULATION at fleet
//! scale, beside the central yardstick.
//!
//! This runs `herd_balance::sim`: every agent is the real protocol code
//! (membership, load exchange, negotiation), but the agents live in this
//! one process on a virtual clock and a simulated network (latency, loss);
//! no node, gRPC or workload is involved. Times are virtual seconds of
//! that clock; only "wall s" is real time. For each fleet size it runs
//! with coordinators present (agents re-seeded with the full node list
//! every 10 s) and absent (each agent starts from 3 remembered peers),
//! from the same skewed start, and reports:
//! - time until the coefficient of variation of load falls under 0.1;
//! - moves made, against the central yardstick: the leader's greedy
//!   heaviest→lightest rebalancing of the same start from a global view
//!   (`herd_balance::central`), the "minimum needed";
//! - weight moved against the total excess over the mean (what a move to
//!   perfect balance would shift; runs stop at CV < 0.1, so below 1 is
//!   possible);
//! - membership + load-exchange bytes sent per agent per second.

use std::time::Instant;

use clap::Args;
use herd_balance::central;
use herd_balance::sim::{skewed_start, Sim, SimConfig, SimReport};
use serde_json::json;

use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Flags of `herd bench balance`.
#[derive(Args, Debug)]
pub struct BalanceBenchArgs {
    /// Fleet sizes to simulate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    /// Seed of the start, the network and the agents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up waiting for the CV target after this many virtual seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Virtual seconds to keep running after the target, to see that the
    /// fleet stays put (moves after the target) and to measure gossip.
    #[arg(long, default_value_t = 20)]
    settle_seconds: u64,
    /// Probability that a packet is lost.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// How long one approved move takes, virtual ms.
    #[arg(long, default_value_t = 200)]
    move_ms: u64,
}

/// One simulated run and its yardstick.
struct Row {
    report: SimReport,
    central: central::CentralReport,
    wall_s: f64,
}

fn simulate(args: &BalanceBenchArgs, agents: usize, coordinators: bool) -> Result<Row, CliError> {
    let mut cfg = SimConfig::new(agents, coordinators, args.seed);
    cfg.loss = args.loss;
    cfg.move_ms = args.move_ms;
    let start = skewed_start(agents, cfg.start, cfg.seed);
    let yardstick = central::rebalance(&start, cfg.cv_target);
    let t = Instant::now();
    let mut sim = Sim::new(cfg).map_err(|e| CliError::input(format!("simulation config: {e}")))?;
    sim.run_until_cv(args.max_seconds * 1000);
    let settle_until = sim.now_ms() + args.settle_seconds * 1000;
    sim.run_until(settle_until);
    Ok(Row {
        report: sim.report(),
        central: yardstick,
        wall_s: t.elapsed().as_secs_f64(),
    })
}

/// Runs the benchmark and prints a Markdown table (or JSON rows).
pub async fn run(ctx: &Context, args: BalanceBenchArgs) -> Result<(), CliError> {
    if args.agents.iter().any(|&n| n < 2) {
        return Err(CliError::input(
            "--agents: every fleet needs at least 2 agents",
        ));
    }
    if !(0.0..1.0).contains(&args.loss) {
        return Err(CliError::input(format!(
            "--loss {} must be in [0, 1)",
            args.loss
        )));
    }
    let json = ctx.json();
    let (loss, move_ms) = (args.loss, args.move_ms);
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Row>, CliError> {
        let mut rows = Vec::new();
        for &n in &args.agents {
            for coordinators in [true, false] {
                eprintln!(
                    "SIMULATION: {n} agents, coordinators {}",
                    if coordinators { "present" } else { "absent" }
                );
                rows.push(simulate(&args, n, coordinators)?);
            }
        }
        Ok(rows)
    })
    .await
    .map_err(|e| CliError::runtime(format!("simulation task failed: {e}")))??;

    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "simulation": true,
                    "agents": r.report.agents,
                    "coordinators": r.report.coordinators,
                    "time_to_cv_s": r.report.time_to_cv_ms.map(|ms| ms as f64 / 1000.0),
                    "cv_target": r.report.cv_target,
                    "initial_cv": r.report.initial_cv,
                    "final_cv": r.report.final_cv,
                    "final_max_over_mean": r.report.final_max_over_mean,
                    "moves": r.report.moves,
                    "moves_after_target": r.report.moves_after_target,
                    "central_moves": r.central.moves,
                    "moved_weight": r.report.moved_weight,
                    "min_weight": r.central.min_weight,
                    "max_moves_per_item": r.report.max_moves_per_item,
                    "gossip_bytes_per_agent_per_s": r.report.gossip_bytes_per_agent_per_s,
                    "negotiation_bytes_per_agent_per_s": r.report.negotiation_bytes_per_agent_per_s,
                    "simulated_s": r.report.simulated_ms as f64 / 1000.0,
                    "wall_s": r.wall_s,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(out));
        return Ok(());
    }
    println!(
        "SIMULATION (herd_balance::sim): real protocol code, virtual clock, simulated network (1-5 ms latency, {:.1} % loss); skewed start: 20 % of nodes at score 90, the rest at 20, items of weight 0.5-3; a move takes {move_ms} ms; times are virtual seconds; central = the leader's greedy heaviest-to-lightest rebalancing of the same start (the minimum-ish)\n",
        loss * 100.0
    );
    println!("| agents | coordinators | time to CV < 0.1 (s) | moves | central moves | moves / central | weight moved / excess over mean | moves after target | max moves per item | gossip B/agent/s | final CV | wall s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let rep = &r.report;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".to_string()
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.1} |",
            rep.agents,
            if rep.coordinators {
                "present"
            } else {
                "absent"
            },
            rep.time_to_cv_ms
                .map_or("not reached".to_string(), |ms| format!(
                    "{:.2}",
                    ms as f64 / 1000.0
                )),
            rep.moves,
            r.central.moves,
            ratio(rep.moves as f64, r.central.moves as f64),
            ratio(rep.moved_weight, r.central.min_weight),
            rep.moves_after_target,
            rep.max_moves_per_item,
            rep.gossip_bytes_per_agent_per_s,
            rep.final_cv,
            r.wall_s,
        );
    }
    Ok(())
}
