//! `herd bench serve`: dispatch policies for LLM serving side by side, on a
//! SIMULATED fleet (`herd_node::serve::sim`).
//!
//! Every instance is the real engine core (`herd_actors::inference::Engine`:
//! batching, paged KV cache, preemption, the migration calls) on one
//! modelled clock; the dispatcher is herd's real `dispatch::pick`; no
//! process, GPU or network is involved, and every time printed is modelled
//! time. One trace (Poisson or Gamma-bursty arrivals, power-law lengths;
//! `herd_node::serve::sim_trace`) is served by round-robin, least-loaded,
//! herd's dispatcher (Llumnix's freeness over virtual usage) and herd's
//! dispatcher plus request migration (herd's rescheduling policy), and the
//! bench reports TTFT, time between tokens, preemptions and migrations of
//! each.
//!
//! Without `--rate`, it first finds the load where round-robin starts to
//! queue: the lowest Poisson rate at which round-robin's mean TTFT is twice
//! its mean TTFT at a light load (bracketed by doubling, then bisected),
//! and compares the policies there and at 0.75×, 1.25× and 1.5× that rate.

use std::time::Instant;

use clap::Args;
use herd_actors::inference::cost::CostModel;
use herd_actors::inference::{EngineConfig, PreemptionMode};
use herd_node::serve::sim::{simulate_with, Arrival, SimPolicy, SimReport, SimSettings};
use herd_node::serve::sim_migrate::MigrationModel;
use herd_node::serve::sim_trace::{generate, ArrivalProcess, LengthDist, TraceSpec};
use serde_json::{json, Value};

use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Llumnix's reported gap over round-robin (mean, p99 TTFT): the goal.
const GOAL_MEAN: f64 = 6.4;
const GOAL_P99: f64 = 12.1;

/// Flags of `herd bench serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeBenchArgs {
    /// Seed of the traces and of dispatch tie-breaking.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instances in the simulated fleet.
    #[arg(long, default_value_t = 16)]
    instances: usize,
    /// Requests per trace.
    #[arg(long, default_value_t = 8000)]
    requests: usize,
    /// Mean arrival rate (requests/s); skips the search for round-robin's
    /// queueing point.
    #[arg(long, conflicts_with = "load")]
    rate: Option<f64>,
    /// Load as a multiple of the rate where round-robin starts to queue
    /// (found first); default: 0.75, 1, 1.25 and 1.5.
    #[arg(long)]
    load: Option<f64>,
    /// Coefficient of variation of the bursty (Gamma) arrivals.
    #[arg(long, default_value_t = 3.0)]
    cv: f64,
    /// Share of high-priority requests.
    #[arg(long, default_value_t = 0.1)]
    high_share: f64,
    /// Mean prompt length (tokens; power law on [8, --max-prompt]).
    #[arg(long, default_value_t = 256.0)]
    prompt_mean: f64,
    /// Longest prompt (tokens).
    #[arg(long, default_value_t = 4096)]
    max_prompt: u32,
    /// Mean output length (tokens; power law on [8, --max-output]).
    #[arg(long, default_value_t = 256.0)]
    output_mean: f64,
    /// Longest output (tokens).
    #[arg(long, default_value_t = 2048)]
    max_output: u32,
    /// KV blocks (16 tokens each) per instance.
    #[arg(long, default_value_t = 1024)]
    kv_blocks: u32,
    /// Most requests in one instance's batch.
    #[arg(long, default_value_t = 128)]
    max_batch: usize,
    /// Modelled downtime of one request migration (ms).
    #[arg(long, default_value_t = 85)]
    migration_downtime_ms: u64,
}

impl ServeBenchArgs {
    fn check(&self) -> Result<(), CliError> {
        let bad = |flag: &str, why: String| Err(CliError::input(format!("--{flag}: {why}")));
        if !(1..=1024).contains(&self.instances) {
            return bad(
                "instances",
                format!("must be 1 to 1024, got {}", self.instances),
            );
        }
        if !(1..=1_000_000).contains(&self.requests) {
            return bad(
                "requests",
                format!("must be 1 to 1000000, got {}", self.requests),
            );
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) {
                return bad(
                    "rate",
                    format!("must be above 0 and at most 1e6 requests/s, got {rate}"),
                );
            }
        }
        if let Some(load) = self.load {
            if !(load.is_finite() && load > 0.0 && load <= 100.0) {
                return bad(
                    "load",
                    format!("must be above 0 and at most 100, got {load}"),
                );
            }
        }
        if !(1..=1_048_576).contains(&self.kv_blocks) {
            return bad(
                "kv-blocks",
                format!("must be 1 to 1048576, got {}", self.kv_blocks),
            );
        }
        if !(1..=4096).contains(&self.max_batch) {
            return bad(
                "max-batch",
                format!("must be 1 to 4096, got {}", self.max_batch),
            );
        }
        let need = u64::from(self.max_prompt) + u64::from(self.max_output);
        if need.div_ceil(16) > u64::from(self.kv_blocks) {
            return bad(
                "kv-blocks",
                format!(
                    "{} blocks of 16 tokens cannot hold the longest request (--max-prompt {} + --max-output {})",
                    self.kv_blocks, self.max_prompt, self.max_output
                ),
            );
        }
        if self.migration_downtime_ms > 60_000 {
            return bad(
                "migration-downtime-ms",
                format!("must be at most 60000, got {}", self.migration_downtime_ms),
            );
        }
        // The trace's own checks (means within bounds, CV, share).
        generate(
            &self.spec(ArrivalProcess::Gamma { cv: self.cv }, 1.0, 1),
            self.seed,
        )
        .map(|_| ())
        .map_err(|e| CliError::input(e.to_string()))
    }

    fn engine(&self) -> EngineConfig {
        EngineConfig {
            kv_blocks: self.kv_blocks,
            bytes_per_token: 1,
            max_batch: self.max_batch,
            preemption: PreemptionMode::Recompute,
            swap_blocks: 0,
            cost: CostModel::default(),
            priority_preemption: true,
        }
    }

    fn spec(&self, arrivals: ArrivalProcess, rate_per_s: f64, count: usize) -> TraceSpec {
        TraceSpec {
            count,
            rate_per_s,
            arrivals,
            prompt: LengthDist {
                min: 8,
                max: self.max_prompt,
                mean: self.prompt_mean,
            },
            output: LengthDist {
                min: 8,
                max: self.max_output,
                mean: self.output_mean,
            },
            high_share: self.high_share,
        }
    }

    fn trace(&self, arrivals: ArrivalProcess, rate_per_s: f64) -> Result<Vec<Arrival>, CliError> {
        generate(&self.spec(arrivals, rate_per_s, self.requests), self.seed)
            .map_err(|e| CliError::input(e.to_string()))
    }

    fn settings(&self) -> SimSettings {
        SimSettings {
            migration: MigrationModel {
                downtime_us: self.migration_downtime_ms * 1000,
                ..MigrationModel::default()
            },
        }
    }

    fn run(&self, policy: SimPolicy, trace: &[Arrival]) -> SimReport {
        simulate_with(
            self.instances,
            &self.engine(),
            trace,
            policy,
            self.seed,
            &self.settings(),
        )
    }
}

/// Where round-robin starts to queue.
struct Knee {
    light_rate: f64,
    light_mean_ms: f64,
    rate: f64,
    mean_ms: f64,
}

/// The lowest Poisson rate where round-robin's mean TTFT is twice its
/// light-load mean: doubling from a light load, then 6 bisections.
fn find_knee(args: &ServeBenchArgs) -> Result<Knee, CliError> {
    let rr_mean = |rate: f64| -> Result<f64, CliError> {
        let trace = args.trace(ArrivalProcess::Poisson, rate)?;
        Ok(args.run(SimPolicy::RoundRobin, &trace).ttft_mean_ms)
    };
    // One request per instance every 20 s: nobody queues.
    let light_rate = args.instances as f64 * 0.05;
    let light_mean_ms = rr_mean(light_rate)?;
    let queues = |mean: f64| mean >= 2.0 * light_mean_ms;
    let (mut low, mut high) = (light_rate, light_rate * 2.0);
    let mut high_mean = rr_mean(high)?;
    let mut doublings = 0;
    while !queues(high_mean) {
        doublings += 1;
        if doublings > 20 {
            return Err(CliError::runtime(
                "round-robin never queued up to 2^20 times the light load",
            ));
        }
        low = high;
        high *= 2.0;
        high_mean = rr_mean(high)?;
        eprintln!("SIMULATION: round-robin at {high:.2} req/s: mean TTFT {high_mean:.0} ms");
    }
    for _ in 0..6 {
        let mid = (low + high) / 2.0;
        let mean = rr_mean(mid)?;
        eprintln!("SIMULATION: round-robin at {mid:.2} req/s: mean TTFT {mean:.0} ms");
        if queues(mean) {
            (high, high_mean) = (mid, mean);
        } else {
            low = mid;
        }
    }
    Ok(Knee {
        light_rate,
        light_mean_ms,
        rate: high,
        mean_ms: high_mean,
    })
}

/// One comparison: a trace and every policy's report on it.
struct Comparison {
    arrivals: ArrivalProcess,
    rate: f64,
    load: Option<f64>,
    reports: Vec<(SimPolicy, SimReport)>,
}

fn compare(
    args: &ServeBenchArgs,
    arrivals: ArrivalProcess,
    rate: f64,
    load: Option<f64>,
) -> Result<Comparison, CliError> {
    let trace = args.trace(arrivals, rate)?;
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = SimPolicy::ALL
            .iter()
            .map(|&policy| {
                let trace = &trace;
                (policy, scope.spawn(move || args.run(policy, trace)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(policy, h)| {
                h.join().map(|r| (policy, r)).map_err(|_| {
                    CliError::runtime(format!("simulation of {} panicked", policy.name()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(Comparison {
        arrivals,
        rate,
        load,
        reports,
    })
}

fn arrivals_name(a: ArrivalProcess) -> String {
    match a {
        ArrivalProcess::Poisson => "Poisson".to_string(),
        ArrivalProcess::Gamma { cv } => format!("Gamma CV {cv}"),
    }
}

/// `base / x`, or `None` when x is 0.
fn gap(base: f64, x: f64) -> Option<f64> {
    (x > 0.0).then(|| base / x)
}

fn report_json(r: &SimReport) -> Value {
    json!({
        "requests": r.requests,
        "finished": r.finished,
        "refused": r.refused,
        "ttft_mean_ms": r.ttft_mean_ms,
        "ttft_p99_ms": r.ttft_p99_ms,
        "tbt_p99_ms": r.tbt_p99_ms,
        "preemptions": r.preemptions,
        "migrations": r.migrations,
        "migrations_aborted": r.migrations_aborted,
        "high_ttft_p99_ms": r.high_ttft_p99_ms,
        "normal_ttft_p99_ms": r.normal_ttft_p99_ms,
        "token_errors": r.token_errors,
        "makespan_s": r.makespan_s,
    })
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.0}"))
}

fn opt_x(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}×"))
}

/// Runs the benchmark and prints Markdown tables (or one JSON object).
pub async fn run(ctx: &Context, args: ServeBenchArgs) -> Result<(), CliError> {
    args.check()?;
    let json_out = ctx.json();
    let started = Instant::now();
    let job = args.clone();
    let (knee, comparisons) = tokio::task::spawn_blocking(move || {
        let args = job;
        let knee = match args.rate {
            Some(_) => None,
            None => Some(find_knee(&args)?),
        };
        let loads: Vec<(f64, Option<f64>)> = match (&knee, args.rate, args.load) {
            (_, Some(rate), _) => vec![(rate, None)],
            (Some(k), None, Some(load)) => vec![(k.rate * load, Some(load))],
            (Some(k), None, None) => [0.75, 1.0, 1.25, 1.5]
                .iter()
                .map(|l| (k.rate * l, Some(*l)))
                .collect(),
            (None, None, _) => Vec::new(),
        };
        let mut comparisons = Vec::new();
        for arrivals in [
            ArrivalProcess::Poisson,
            ArrivalProcess::Gamma { cv: args.cv },
        ] {
            for &(rate, load) in &loads {
                eprintln!(
                    "SIMULATION: {} arrivals at {rate:.2} req/s, {} instances, {} requests",
                    arrivals_name(arrivals),
                    args.instances,
                    args.requests
                );
                comparisons.push(compare(&args, arrivals, rate, load)?);
            }
        }
        Ok::<_, CliError>((knee, comparisons))
    })
    .await
    .map_err(|e| CliError::runtime(format!("simulation task failed: {e}")))??;
    let wall_s = started.elapsed().as_secs_f64();

    let rr_of = |c: &Comparison| {
        c.reports
            .iter()
            .find(|(p, _)| *p == SimPolicy::RoundRobin)
            .map(|(_, r)| r.clone())
    };
    if json_out {
        let runs: Vec<Value> = comparisons
            .iter()
            .flat_map(|c| {
                let rr = rr_of(c);
                c.reports.iter().map(move |(policy, r)| {
                    let mut v = report_json(r);
                    v["policy"] = json!(policy.name());
                    v["arrivals"] = json!(arrivals_name(c.arrivals));
                    v["rate_per_s"] = json!(c.rate);
                    v["load"] = json!(c.load);
                    v["gap_mean"] = json!(rr
                        .as_ref()
                        .and_then(|b| gap(b.ttft_mean_ms, r.ttft_mean_ms)));
                    v["gap_p99"] =
                        json!(rr.as_ref().and_then(|b| gap(b.ttft_p99_ms, r.ttft_p99_ms)));
                    v
                })
            })
            .collect();
        print_json(&json!({
            "simulation": true,
            "instances": args.instances,
            "requests": args.requests,
            "seed": args.seed,
            "knee": knee.as_ref().map(|k| json!({
                "rate_per_s": k.rate,
                "rr_ttft_mean_ms": k.mean_ms,
                "light_rate_per_s": k.light_rate,
                "light_rr_ttft_mean_ms": k.light_mean_ms,
            })),
            "goal": {"gap_mean": GOAL_MEAN, "gap_p99": GOAL_P99},
            "runs": runs,
            "wall_s": wall_s,
        }));
        return Ok(());
    }
    println!(
        "SIMULATION (herd_node::serve::sim): {} instances of the real engine core on a modelled clock ({} KV blocks of 16 tokens, batch ≤ {}, 7B-on-A100 cost model); {} requests per trace, prompts power-law mean {} in [8, {}], outputs mean {} in [8, {}], {:.0} % high priority; migration downtime {} ms; seed {}. Times are modelled ms.\n",
        args.instances,
        args.kv_blocks,
        args.max_batch,
        args.requests,
        args.prompt_mean,
        args.max_prompt,
        args.output_mean,
        args.max_output,
        args.high_share * 100.0,
        args.migration_downtime_ms,
        args.seed
    );
    if let Some(k) = &knee {
        println!(
            "Round-robin starts to queue at {:.2} req/s (Poisson): mean TTFT {:.0} ms, twice its {:.0} ms at {:.2} req/s.\n",
            k.rate, k.mean_ms, k.light_mean_ms, k.light_rate
        );
    }
    println!("| arrivals | req/s | load | policy | finished | TTFT mean ms | TTFT p99 ms | TBT p99 ms | preemptions | migrations (aborted) | high TTFT p99 | normal TTFT p99 | RR/policy mean | RR/policy p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &comparisons {
        let rr = rr_of(c);
        for (policy, r) in &c.reports {
            println!(
                "| {} | {:.1} | {} | {} | {}/{} | {:.0} | {:.0} | {:.0} | {} | {} ({}) | {} | {} | {} | {} |",
                arrivals_name(c.arrivals),
                c.rate,
                c.load.map_or("-".to_string(), |l| format!("{l}×")),
                policy.name(),
                r.finished,
                r.requests,
                r.ttft_mean_ms,
                r.ttft_p99_ms,
                r.tbt_p99_ms,
                r.preemptions,
                r.migrations,
                r.migrations_aborted,
                opt_ms(r.high_ttft_p99_ms),
                opt_ms(r.normal_ttft_p99_ms),
                opt_x(rr.as_ref().and_then(|b| gap(b.ttft_mean_ms, r.ttft_mean_ms))),
                opt_x(rr.as_ref().and_then(|b| gap(b.ttft_p99_ms, r.ttft_p99_ms))),
            );
            if r.token_errors > 0 {
                eprintln!(
                    "herd: {} under {}: {} token errors (lost, doubled or out of order)",
                    arrivals_name(c.arrivals),
                    policy.name(),
                    r.token_errors
                );
            }
        }
    }
    println!();
    println!("Goal (Llumnix: {GOAL_MEAN}× mean, {GOAL_P99}× p99 TTFT over round-robin):");
    for c in &comparisons {
        let Some(rr) = rr_of(c) else { continue };
        let gaps = |policy: SimPolicy| {
            c.reports.iter().find(|(p, _)| *p == policy).map(|(_, r)| {
                (
                    gap(rr.ttft_mean_ms, r.ttft_mean_ms).unwrap_or(f64::INFINITY),
                    gap(rr.ttft_p99_ms, r.ttft_p99_ms).unwrap_or(f64::INFINITY),
                )
            })
        };
        let verdict = |(m, p): (f64, f64)| {
            format!(
                "{m:.1}× mean, {p:.1}× p99: {}",
                if m >= GOAL_MEAN && p >= GOAL_P99 {
                    "met"
                } else {
                    "NOT met"
                }
            )
        };
        println!(
            "- {} at {:.1} req/s{}: herd {}; herd + migration {}.",
            arrivals_name(c.arrivals),
            c.rate,
            c.load
                .map_or(String::new(), |l| format!(" ({l}× the queueing point)")),
            gaps(SimPolicy::VirtualUsage).map_or("-".to_string(), verdict),
            gaps(SimPolicy::VirtualUsageMigration).map_or("-".to_string(), verdict),
        );
    }
    println!("\nwall {wall_s:.1} s");
    Ok(())
}
