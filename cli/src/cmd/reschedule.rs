//! `herd reschedule eval FILE` runs the defragmenting planners on an
//! instance file and compares them; `herd reschedule generate` writes a
//! seeded synthetic instance, so every benchmark figure can be reproduced.
//! `herd reschedule plan` plans for the live cluster ([`live`]) and
//! `herd reschedule apply` runs such a plan through live migrations
//! ([`apply`]).

mod apply;
mod flags;
mod live;
pub mod status;

pub use flags::RescheduleFlags;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use herd_api::duration::parse_duration;
use herd_reschedule::generate::{generate, GenParams};
use herd_reschedule::objective::initial_fragment_rate;
use herd_reschedule::solver::Solver;
use herd_reschedule::{by_name, validate_plan, vmr2l, Instance, Limits, Shape, SOLVER_NAMES};
use serde_json::{json, Value};

use super::Context;
use crate::exit::CliError;
use crate::output::{print_json, print_table};

/// Subcommands of `herd reschedule`.
#[derive(Subcommand, Debug)]
pub enum RescheduleCommand {
    /// Run the planners on an instance file (VMR2L format) and compare the
    /// fragment rate each reaches, its moves and its time.
    Eval(EvalArgs),
    /// Write a seeded synthetic instance (VMR2L format) to stdout.
    Generate(GenerateArgs),
    /// Plan defragmenting live migrations for the cluster: the fragment
    /// rate before and after, and the moves in order (nothing moves).
    Plan(live::PlanArgs),
    /// Plan (or read a plan with --plan) and run it through live
    /// migrations, a few at a time; a move that no longer fits is skipped
    /// and said so.
    Apply(apply::ApplyArgs),
    /// What the leader's defragmenting loop did last: when, the fragment
    /// rate before and after, the moves started and skipped.
    Status(status::StatusArgs),
}

/// Arguments of `herd reschedule eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The instance file (VMR2L JSON).
    pub file: PathBuf,
    /// At most this many migrations per plan (MNL).
    #[arg(long, default_value_t = 50)]
    pub max_migrations: usize,
    /// Time for each planner (the exact one uses --exact-deadline).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Time limit of the exact (MIP) planner.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub exact_deadline: Duration,
    /// The exact planner refuses instances needing more placement variables
    /// than this (raise it to get a bound on large instances, given time
    /// and memory).
    #[arg(long, default_value_t = herd_reschedule::solver::exact::Exact::default().max_columns)]
    pub exact_max_columns: usize,
    /// Planners to run, in order (repeatable): greedy, herd, herd-restart,
    /// exact [default: greedy, herd, exact].
    #[arg(long = "solver")]
    pub solvers: Vec<String>,
    /// Cores of the VM shape whose fragments count [default: the file's
    /// weight-1 flavour, else 16].
    #[arg(long)]
    pub target_cpu: Option<u32>,
    /// MiB of that shape (0: memory not counted) [default: the file's].
    #[arg(long)]
    pub target_mem_mb: Option<u64>,
    /// Seed of the randomised planners.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `herd reschedule generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Number of PMs (two 44-core NUMA nodes each).
    #[arg(long, default_value_t = 279)]
    pub pms: usize,
    /// Share of all cores the VMs take.
    #[arg(long, default_value_t = 0.9)]
    pub load: f64,
    /// Fragment rate to start from (16-core slots).
    #[arg(long, default_value_t = 0.55)]
    pub fr: f64,
    /// Seed: the same flags give the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of VMs that may not move.
    #[arg(long, default_value_t = 0.0)]
    pub immovable: f64,
    /// Number of anti-affinity groups (deployment sets).
    #[arg(long, default_value_t = 0)]
    pub groups: usize,
    /// VMs per anti-affinity group.
    #[arg(long, default_value_t = 3)]
    pub group_size: usize,
}

/// Runs a `herd reschedule` subcommand.
pub async fn run(ctx: &Context, command: RescheduleCommand) -> Result<(), CliError> {
    match command {
        RescheduleCommand::Plan(args) => live::plan(ctx, args).await,
        RescheduleCommand::Apply(args) => apply::apply(ctx, args).await,
        RescheduleCommand::Status(args) => status::status(ctx, args).await,
        RescheduleCommand::Eval(args) => eval(ctx, args),
        RescheduleCommand::Generate(args) => {
            let params = GenParams {
                pms: args.pms,
                load: args.load,
                fr: args.fr,
                seed: args.seed,
                immovable: args.immovable,
                groups: args.groups,
                group_size: args.group_size,
                ..GenParams::default()
            };
            let inst = generate(&params).map_err(CliError::input)?;
            let text = serde_json::to_string(&vmr2l::export(&inst))
                .map_err(|e| CliError::runtime(format!("cannot render the instance: {e}")))?;
            println!("{text}");
            Ok(())
        }
    }
}

fn eval(ctx: &Context, args: EvalArgs) -> Result<(), CliError> {
    let inst = vmr2l::import_file(&args.file).map_err(CliError::input)?;
    let shape = Shape {
        cpu: args.target_cpu.unwrap_or(inst.target.cpu),
        mem_mb: args.target_mem_mb.unwrap_or(inst.target.mem_mb),
    };
    if shape.cpu == 0 {
        return Err(CliError::input("--target-cpu must be at least 1"));
    }
    let names: Vec<String> = if args.solvers.is_empty() {
        SOLVER_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.solvers.clone()
    };
    for name in &names {
        if by_name(name).is_none() {
            return Err(CliError::input(format!(
                "unknown solver {name:?} (known: greedy, herd, herd-restart, exact)"
            )));
        }
    }
    let fr_before = initial_fragment_rate(&inst, shape);
    let mut results = Vec::new();
    for name in &names {
        results.push(run_one(&inst, name, shape, &args)?);
    }
    if ctx.json() {
        print_json(&json!({
            "file": args.file.display().to_string(),
            "pms": inst.pms.len(),
            "vms": inst.vms.len(),
            "target": {"cpu": shape.cpu, "mem_mb": shape.mem_mb},
            "max_migrations": args.max_migrations,
            "fr_before": fr_before,
            "solvers": results,
        }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let get = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
            let fr_after = get("fr_after")
                .as_f64()
                .map(|f| format!("{f:.4}"))
                .unwrap_or("-".into());
            vec![
                get("name").as_str().unwrap_or("").to_string(),
                format!("{fr_before:.4}"),
                fr_after,
                get("moves")
                    .as_u64()
                    .map(|m| m.to_string())
                    .unwrap_or("-".into()),
                get("ms")
                    .as_u64()
                    .map(|m| m.to_string())
                    .unwrap_or("-".into()),
                match (get("error").as_str(), get("fr_bound").as_f64()) {
                    (Some(error), _) => error.to_string(),
                    (None, Some(bound)) => format!(
                        "{}; FR bound {bound:.4}",
                        get("note").as_str().unwrap_or("")
                    ),
                    (None, None) => get("note").as_str().unwrap_or("").to_string(),
                },
            ]
        })
        .collect();
    print_table(
        &["SOLVER", "FR BEFORE", "FR AFTER", "MOVES", "MS", "NOTE"],
        &rows,
    );
    Ok(())
}

/// Runs one planner, checks its plan by replay, and renders the result.
fn run_one(inst: &Instance, name: &str, shape: Shape, args: &EvalArgs) -> Result<Value, CliError> {
    let solver: Box<dyn Solver> = match name {
        "exact" | "mip" => Box::new(herd_reschedule::solver::exact::Exact {
            max_columns: args.exact_max_columns,
        }),
        _ => by_name(name).ok_or_else(|| CliError::input(format!("unknown solver {name:?}")))?,
    };
    let deadline = if solver.name() == "exact" {
        args.exact_deadline
    } else {
        args.deadline
    };
    let limits = Limits {
        max_moves: args.max_migrations,
        deadline,
        shape,
        seed: args.seed,
    };
    let start = Instant::now();
    let solution = match solver.solve(inst, &limits) {
        Ok(s) => s,
        Err(e) => return Ok(json!({"name": name, "error": e.to_string()})),
    };
    let ms = start.elapsed().as_millis() as u64;
    let replay = validate_plan(
        inst,
        shape,
        &solution.moves,
        args.max_migrations,
        Some(solution.fr_after),
    )
    .map_err(|e| CliError::runtime(format!("solver {name} produced an invalid plan: {e}")))?;
    let plan: Vec<Value> = solution
        .moves
        .iter()
        .map(|mv| {
            json!({
                "vm": inst.vms[mv.vm].id,
                "pm": inst.pms[mv.to.pm].id,
                "numa": mv.to.numa.to_vec(),
            })
        })
        .collect();
    Ok(json!({
        "name": name,
        "fr_after": replay.fr_after,
        "moves": replay.moves,
        "ms": ms,
        "optimal": solution.proved_optimal,
        "fr_bound": solution.fr_bound,
        "note": solution.note,
        "plan": plan,
    }))
}
