//! `herd chaos`: run fault-injection scenarios against real clusters and
//! check what clients observed. Exit 0: every checker passed; 1: a checker
//! found a violation; 2: the run could not be carried out or a checker could
//! not decide (undecided: a third outcome, never a pass; the closing tally
//! counts the two apart).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use herd_chaos::check::{check_all, CheckConfig, Verdict};
use herd_chaos::docker::DockerEnv;
use herd_chaos::report::Report;
use herd_chaos::runner::{self, RunConfig};
use herd_chaos::scenario::{self, Scenario, SCENARIOS};
use herd_chaos::summary::Summary;
use herd_chaos::tls::ClusterTls;

use crate::exit::CliError;

/// Subcommands of `herd chaos`.
#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Name the scenarios.
    List,
    /// Run a scenario (or `all`) and check its history.
    Run(RunArgs),
    /// Run coordinators and node agents under a simulated network and
    /// clock, many seeds a minute (a simulation: workloads are simulated,
    /// storage is in memory, no process is started).
    Sim(super::chaos_sim::SimArgs),
}

/// Flags of `herd chaos run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Scenario name, or `all`.
    #[arg(long)]
    scenario: String,
    /// How long to inject faults (e.g. 30s, 2m, 1500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Directory for the history and timeline (default: ./chaos-out).
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// How long after the last heal the cluster must be whole again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    converge_bound: Duration,
    /// Search steps the linearizability checker may take per key.
    #[arg(long, default_value_t = 5_000_000)]
    step_budget: u64,
    /// Register clients.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Runs per scenario, with seeds SEED, SEED+1, ... (one round of every
    /// scenario per seed); more than one prints a table of figures over
    /// all of them after each round.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// The fault shim for slow-fsync and clock-skew (default:
    /// libherd_chaos_shim.so beside the herd binary, where cargo builds it).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Run the coordinators as containers on a private Docker network, from
    /// an image built here out of this herd binary (scenarios without node
    /// agents).
    #[arg(long)]
    docker: bool,
    /// Also run a training job on the agents and keep migrating its
    /// allocations between them during the faults, checked by the
    /// migration checker (scenarios with agents; `migrate` always does).
    #[arg(long)]
    migrations: bool,
    /// Run every coordinator and agent under mutual TLS, with a CA made
    /// for the runs (under --out) and a certificate for each process; the
    /// harness's own clients dial with a client certificate of it. Not
    /// with --docker, nor with the power scenario (its harness reads the
    /// agents' metrics over plain HTTP).
    #[arg(long)]
    pub tls: bool,
}

/// Parses `30s`, `2m`, `1500ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 2m or 1500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// Runs a `herd chaos` subcommand.
pub async fn run(command: ChaosCommand) -> Result<(), CliError> {
    match command {
        ChaosCommand::List => {
            let width = SCENARIOS.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in SCENARIOS {
                println!("{:<width$}  {}", s.name, s.about);
            }
            Ok(())
        }
        ChaosCommand::Run(args) => run_scenarios(args).await,
        ChaosCommand::Sim(args) => super::chaos_sim::run(args).await,
    }
}

/// How one scenario's run ended. Undecided is a third outcome, never a
/// pass: a checker could not decide, so the run shows nothing either way.
enum Ending {
    Passed,
    Violated,
    Undecided,
    NotCarriedOut,
}

async fn run_scenarios(args: RunArgs) -> Result<(), CliError> {
    let scenarios: Vec<&Scenario> = if args.scenario == "all" {
        // The power scenario's SIMULATED GPUs read a file of the harness's
        // host: it runs locally only (asked for by name in Docker mode, it
        // is refused, not carried out).
        SCENARIOS
            .iter()
            .filter(|s| {
                let why = if !s.power {
                    None
                } else if args.docker {
                    Some("in Docker mode (runs on this host only)")
                } else if args.tls {
                    Some("with --tls (its harness reads the agents' metrics over plain HTTP)")
                } else {
                    None
                };
                if let Some(why) = why {
                    println!("{}: skipped {why}", s.name);
                }
                why.is_none()
            })
            .collect()
    } else {
        vec![scenario::find(&args.scenario).ok_or_else(|| {
            CliError::input(format!(
                "no scenario {:?}; `herd chaos list` names them",
                args.scenario
            ))
        })?]
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let binary = std::env::current_exe()
        .map_err(|e| CliError::runtime(format!("cannot find the herd binary: {e}")))?;
    if args.runs == 0 {
        return Err(CliError::input("--runs must be at least 1"));
    }
    if let Some(shim) = args.shim.as_ref().filter(|s| !s.is_file()) {
        return Err(CliError::input(format!(
            "--shim {}: no such file (build it with `cargo build -p herd-chaos-shim`)",
            shim.display()
        )));
    }
    let shim = args
        .shim
        .clone()
        .or_else(|| herd_chaos::shim::beside(&binary));
    // Before Docker's image is built: `--tls --docker` is refused at once.
    let tls = if args.tls {
        Some(install_tls(&args, &binary, &scenarios)?)
    } else {
        None
    };
    let docker = if args.docker {
        let env = DockerEnv::create(&binary, shim.as_deref(), seed).map_err(|e| {
            CliError::input(format!(
                "Docker mode needs a reachable Docker daemon and an image built from this binary: {e}"
            ))
        })?;
        Some(Arc::new(env))
    } else {
        None
    };
    let mut endings = Vec::new();
    let mut summaries: Vec<Summary> = scenarios.iter().map(|s| Summary::new(s.name)).collect();
    // Round by round, every scenario once per seed: a soak cut short still
    // covers every scenario, and the table so far is printed after each round.
    for run in 0..args.runs {
        let run_seed = seed.wrapping_add(u64::from(run));
        for (scenario, summary) in scenarios.iter().zip(summaries.iter_mut()) {
            let setup = RunSetup {
                binary: &binary,
                shim: shim.as_deref(),
                docker: docker.as_ref(),
                tls: tls.as_ref(),
            };
            let ending = run_one(&args, &setup, scenario, run_seed, summary).await?;
            endings.push(ending);
        }
        if args.runs > 1 {
            println!("figures after {} of {} rounds:", run + 1, args.runs);
            println!("{}", Summary::header());
            for summary in &summaries {
                println!("{}", summary.row());
            }
        }
    }
    let count = |wanted: fn(&Ending) -> bool| endings.iter().filter(|e| wanted(e)).count();
    let (passed, violated, undecided, not_run) = (
        count(|e| matches!(e, Ending::Passed)),
        count(|e| matches!(e, Ending::Violated)),
        count(|e| matches!(e, Ending::Undecided)),
        count(|e| matches!(e, Ending::NotCarriedOut)),
    );
    let tally = format!(
        "{} runs: {passed} passed, {violated} violated, {undecided} undecided (a checker could not decide: not a pass), {not_run} not carried out",
        endings.len()
    );
    println!("{tally}");
    if violated > 0 {
        return Err(CliError::runtime(format!(
            "a checker found a violation ({tally})"
        )));
    }
    if undecided > 0 || not_run > 0 {
        return Err(CliError::input(format!("not every run passed ({tally})")));
    }
    Ok(())
}

/// What every run of one `herd chaos run` shares.
struct RunSetup<'a> {
    binary: &'a Path,
    shim: Option<&'a Path>,
    docker: Option<&'a Arc<DockerEnv>>,
    tls: Option<&'a ClusterTls>,
}

/// `--tls`: a CA for the runs under `--out`, and this process's transport
/// a client certificate of it, so that every call the harness makes (its
/// clients, checkers and nemeses) dials as the processes it starts do.
/// main installed nothing for `herd chaos run --tls` (its transport use
/// says so), so this is the one install.
fn install_tls(
    args: &RunArgs,
    binary: &Path,
    scenarios: &[&Scenario],
) -> Result<ClusterTls, CliError> {
    if args.docker {
        return Err(CliError::input(
            "--tls runs the cluster on this host: give --tls or --docker, not both",
        ));
    }
    if let Some(power) = scenarios.iter().find(|s| s.power) {
        return Err(CliError::input(format!(
            "--tls: scenario {} reads its agents' metrics over plain HTTP; run it without --tls",
            power.name
        )));
    }
    let tls = ClusterTls::open_or_create(binary, &args.out.join("tls"))
        .map_err(|e| CliError::runtime(format!("--tls: make the CA: {e}")))?;
    let (cert, key) = tls
        .issue("client", "chaos")
        .map_err(|e| CliError::runtime(format!("--tls: the harness's certificate: {e}")))?;
    let files = herd_api::tls::TlsFiles {
        ca: tls.ca(),
        cert,
        key,
    };
    let material = herd_api::tls::TlsMaterial::load(&files, None).map_err(CliError::runtime)?;
    herd_api::tls::install(herd_api::tls::Transport::Tls(Arc::new(material)))
        .map_err(CliError::runtime)?;
    Ok(tls)
}

async fn run_one(
    args: &RunArgs,
    setup: &RunSetup<'_>,
    scenario: &Scenario,
    seed: u64,
    summary: &mut Summary,
) -> Result<Ending, CliError> {
    let mut scenario = scenario.clone();
    scenario.migrations |= args.migrations && scenario.agents > 0;
    let scenario = &scenario;
    let replay = format!(
        "herd chaos run --scenario {} --duration {}ms --seed {seed}{}{}{}",
        scenario.name,
        args.duration.as_millis(),
        if setup.docker.is_some() {
            " --docker"
        } else {
            ""
        },
        if args.migrations { " --migrations" } else { "" },
        if setup.tls.is_some() { " --tls" } else { "" }
    );
    println!("== {}: {} ==", scenario.name, scenario.about);
    let dir = args.out.join(format!("{}-{seed}", scenario.name));
    let config = RunConfig {
        binary: setup.binary.to_path_buf(),
        scenario: scenario.clone(),
        duration: args.duration,
        seed,
        converge_bound: args.converge_bound,
        register_clients: args.clients,
        keys: 3,
        shim: setup.shim.map(Path::to_path_buf),
        docker: setup.docker.cloned(),
        tls: setup.tls.cloned(),
        logs: Some(dir.join("logs")),
    };
    let history = match runner::run(&config).await {
        Ok(history) => history,
        Err(e) => {
            println!("could not carry out the run: {e}\nreplay: {replay}\n");
            summary.add_not_carried_out();
            return Ok(Ending::NotCarriedOut);
        }
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::runtime(format!("create {}: {e}", dir.display())))?;
    let history_path = dir.join("history.jsonl");
    history
        .write_jsonl(&history_path)
        .map_err(CliError::runtime)?;
    let verdicts = check_all(
        &history,
        &CheckConfig {
            linear_step_budget: args.step_budget,
            jobs: true,
            processes: true,
        },
    );
    let report = Report::new(scenario.name, seed, &history, verdicts);
    summary.add(&report);
    let svg_path = dir.join("timeline.svg");
    let title = format!("herd chaos {} seed {seed}", scenario.name);
    std::fs::write(&svg_path, herd_chaos::svg::timeline(&history, &title))
        .map_err(|e| CliError::runtime(format!("write {}: {e}", svg_path.display())))?;
    std::fs::write(dir.join("report.txt"), report.render())
        .map_err(|e| CliError::runtime(format!("write report: {e}")))?;
    print!("{}", report.render());
    println!(
        "history: {}\ntimeline: {}",
        history_path.display(),
        svg_path.display()
    );
    let ending = if report.violated() {
        println!("VIOLATION; replay with: {replay}");
        Ending::Violated
    } else if report.passed() {
        println!("all checkers passed");
        Ending::Passed
    } else {
        let why: Vec<String> = report
            .verdicts
            .iter()
            .filter_map(|(name, v)| match v {
                Verdict::Unknown(why) => Some(format!("{name}: {why}")),
                _ => None,
            })
            .collect();
        println!(
            "UNDECIDED, not a pass ({}); replay with: {replay}",
            why.join("; ")
        );
        Ending::Undecided
    };
    println!();
    Ok(ending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
