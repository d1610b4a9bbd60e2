//! `herd chaos sim`: the coordinators and node agents under a simulated
//! network and clock (crate `herd-sim`), many seeds a minute, judged by the
//! chaos checkers. Exit 0: every seed passed; 1: a seed violated a checked
//! property; 2: a simulation could not be carried out or a checker could
//! not decide.

use std::time::{Duration, Instant};

use clap::Args;
use herd_chaos::check::Verdict;
use herd_chaos::report::quantile;
use herd_sim::{SimConfig, SimFault};

use crate::exit::CliError;

/// Flags of `herd chaos sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Seeds to run: SEED, SEED+1, ...
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// The first seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated time clients run and faults are injected (e.g. 20s).
    #[arg(long, default_value = "20s", value_parser = super::chaos::parse_duration)]
    duration: Duration,
    /// Coordinators.
    #[arg(long, default_value_t = 3)]
    members: u64,
    /// Node agents (0: coordinators and register clients only).
    #[arg(long, default_value_t = 3)]
    agents: u64,
    /// Draw only this kind of fault (repeatable): isolate-leader, halves,
    /// crash, crash-all, agent-crash, node-loss, agent-partition. Default: all.
    #[arg(long = "fault", value_name = "KIND")]
    faults: Vec<String>,
    /// Live migrations during the faults: SIMULATED VMs (`simvm`) moved
    /// between the agents by a migration client, judged by the migration
    /// checker (needs agents).
    #[arg(long)]
    migrations: bool,
}

/// The kinds `--fault` names, or every kind.
fn fault_kinds(names: &[String]) -> Result<Vec<SimFault>, CliError> {
    if names.is_empty() {
        return Ok(herd_sim::faults::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            SimFault::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = herd_sim::faults::ALL.iter().map(|k| k.name()).collect();
                CliError::input(format!(
                    "--fault {name:?}: unknown; known kinds: {}",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

/// Runs the seeds one after the other and prints a line per seed.
pub async fn run(args: SimArgs) -> Result<(), CliError> {
    if args.seeds == 0 {
        return Err(CliError::input("--seeds must be at least 1"));
    }
    if !(1..=7).contains(&args.members) {
        return Err(CliError::input("--members must be 1 to 7"));
    }
    if args.agents > 16 {
        return Err(CliError::input("--agents must be 0 to 16"));
    }
    if args.migrations && args.agents < 2 {
        return Err(CliError::input(
            "--migrations moves VMs between node agents: --agents must be at least 2",
        ));
    }
    let kinds = fault_kinds(&args.faults)?;
    if args.agents == 0 && !kinds.is_empty() && kinds.iter().all(|k| k.needs_agents()) {
        return Err(CliError::input(
            "the --fault kinds given all need node agents; --agents is 0",
        ));
    }
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let started = Instant::now();
    let (mut passed, mut violated, mut undecided) = (0u64, 0u64, 0u64);
    let mut failovers_ms = Vec::new();
    let mut rescheduled_ms = Vec::new();
    let mut new_leader_ms = Vec::new();
    for seed in first..first.saturating_add(args.seeds) {
        let config = SimConfig {
            seed,
            duration: args.duration,
            members: args.members,
            agents: args.agents,
            faults: kinds.clone(),
            migrations: args.migrations,
            ..SimConfig::default()
        };
        let replay = format!(
            "herd chaos sim --seeds 1 --seed {seed} --duration {}ms --members {} --agents {}{}{}",
            args.duration.as_millis(),
            args.members,
            args.agents,
            args.faults
                .iter()
                .map(|f| format!(" --fault {f}"))
                .collect::<String>(),
            if args.migrations { " --migrations" } else { "" }
        );
        // turmoil runs runtimes of its own: outside this one's threads.
        let outcome = tokio::task::spawn_blocking(move || herd_sim::run(&config))
            .await
            .map_err(|e| CliError::runtime(format!("simulation of seed {seed} panicked: {e}")))?;
        match outcome {
            Ok(outcome) => {
                failovers_ms.extend(outcome.failovers_ms.iter().copied());
                rescheduled_ms.extend(outcome.rescheduled_ms.iter().copied());
                new_leader_ms.extend(outcome.new_leader_ms.iter().copied());
                let ops = outcome.history.ops().count();
                let faults = outcome
                    .faults
                    .iter()
                    .filter(|f| !f.ends_with("heal"))
                    .count();
                let verdict = match &outcome.verdict {
                    Verdict::Pass => {
                        passed += 1;
                        "pass".to_string()
                    }
                    Verdict::Fail(why) => {
                        violated += 1;
                        format!("VIOLATION: {why}\n  replay: {replay}")
                    }
                    Verdict::Unknown(why) => {
                        undecided += 1;
                        format!("undecided: {why}\n  replay: {replay}")
                    }
                };
                println!(
                    "seed {seed}: {ops} ops, {faults} faults, {:.1} s simulated: {verdict}",
                    outcome.simulated.as_secs_f64()
                );
            }
            Err(e) => {
                undecided += 1;
                println!("seed {seed}: could not run: {e}\n  replay: {replay}");
            }
        }
    }
    print_spread(
        &failovers_ms,
        "leader lost",
        "writes acknowledged again after",
    );
    print_spread(
        &new_leader_ms,
        "leader changed",
        "a majority named the new one after",
    );
    print_spread(
        &rescheduled_ms,
        "busy node lost",
        "its service instances ran elsewhere after",
    );
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "{} seeds: {passed} passed, {violated} violated, {undecided} undecided; {:.1} seeds per minute",
        args.seeds,
        args.seeds as f64 / minutes.max(1e-9)
    );
    if violated > 0 {
        return Err(CliError::runtime("a seed violated a checked property"));
    }
    if undecided > 0 {
        return Err(CliError::input(
            "a simulation could not be carried out or a checker could not decide",
        ));
    }
    Ok(())
}

/// Prints `SUBJECT N times: WHAT p50 .. ms, p99 .. ms, max .. ms`, when
/// there are values.
fn print_spread(values: &[u64], subject: &str, what: &str) {
    if let (Some(p50), Some(p99), Some(max)) = (
        quantile(values, 0.5),
        quantile(values, 0.99),
        quantile(values, 1.0),
    ) {
        println!(
            "{subject} {} times: {what} p50 {p50} ms, p99 {p99} ms, max {max} ms (simulated time)",
            values.len()
        );
    }
}
