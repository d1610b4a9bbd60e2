//! `herd reschedule apply`: runs a defragmenting plan through live
//! migrations, a few at a time, in the plan's order.
//!
//! The engine is the coordinator's (`herd_coordinator::reschedule::apply`,
//! which the leader's rescheduling loop runs too); this file gives it the
//! cluster over gRPC and prints its progress. Nothing is trusted from
//! planning time: each move is started with `Migrations.Start`, which
//! re-checks room, constraints and movability against the state at that
//! moment, and a move whose allocation no longer runs where the plan found
//! it is not started. A refused move is skipped and said so with the
//! reason; the others go on.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use herd_api::client::{ClientError, HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_coordinator::reschedule::apply::{
    self as engine, ApplyError, ApplyOptions, Cluster, Event, Outcome, Phase, Poll, Started,
};
use herd_coordinator::reschedule::LiveMove;
use serde_json::{json, Value};

use super::live::{fetch_plan, plan_json, print_plan, read_plan_file, target_text, PlanOptions};
use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Most migrations at once.
const MAX_CONCURRENCY: usize = 64;

/// `herd reschedule apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// What to plan for (ignored with --plan).
    #[command(flatten)]
    pub options: PlanOptions,
    /// Apply this plan (`herd reschedule plan -o json` wrote it) instead of
    /// computing one now.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// At most this many migrations at once (1 to 64).
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Wait for the last migrations to end and print the fragment rate the
    /// moves left; without it, apply returns once every move is started
    /// or skipped.
    #[arg(long)]
    pub wait: bool,
    /// The longest pause of each workload (e.g. 300ms) [default: the
    /// coordinator's].
    #[arg(long, value_parser = herd_api::duration::parse_duration)]
    pub downtime_limit: Option<Duration>,
}

fn line(i: usize, total: usize, m: &pb::RescheduleMove, outcome: &Outcome) -> String {
    let head = format!(
        "move {}/{}: {} ({}) {} -> {}:",
        i + 1,
        total,
        m.alloc_id,
        if m.job.is_empty() { "?" } else { &m.job },
        m.source,
        m.target
    );
    match outcome {
        Outcome::Completed { id, downtime_ms } => {
            format!("{head} completed ({id}, downtime {downtime_ms} ms)")
        }
        Outcome::Aborted { id, why } => {
            format!("{head} aborted ({id}): {why}; it stays on {}", m.source)
        }
        Outcome::Skipped(why) => format!("{head} skipped: {why}"),
        Outcome::Running { id } => format!("{head} started ({id}), still running"),
    }
}

/// A CLI error as the engine carries it (it only needs to print it).
#[derive(Debug)]
struct GrpcError(CliError);

impl std::fmt::Display for GrpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

/// The cluster over gRPC, moves asked with `downtime_limit_ms` (0: the
/// coordinator's default).
struct GrpcCluster<'c> {
    client: &'c HerdClient,
    downtime_limit_ms: u64,
}

impl Cluster for GrpcCluster<'_> {
    type Error = GrpcError;

    async fn node_of(&self, alloc_id: &str) -> Result<Option<String>, GrpcError> {
        let request = pb::GetAllocRequest {
            id: alloc_id.to_string(),
            stale: false,
        };
        let answer = self
            .client
            .call_as(Repeat::Safe, |ch| {
                let request = request.clone();
                async move {
                    AllocsClient::new(ch)
                        .get(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await;
        match answer {
            Ok(alloc) => Ok(Some(alloc.node)),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(None),
            Err(e) => Err(GrpcError(CliError::from(e))),
        }
    }

    async fn start(&self, m: &LiveMove) -> Result<Result<Started, String>, GrpcError> {
        let request = pb::StartMigrationRequest {
            alloc_id: m.alloc_id.clone(),
            target: m.target.clone(),
            downtime_limit_ms: self.downtime_limit_ms,
            bandwidth_bytes_per_sec: 0,
        };
        match crate::cmd::migration::start(self.client, &request).await {
            Ok(started) => Ok(Ok(Started {
                id: started.id,
                source: started.source,
                target: started.target,
            })),
            Err(ClientError::Status { status, .. })
                if matches!(
                    status.code(),
                    tonic::Code::FailedPrecondition
                        | tonic::Code::NotFound
                        | tonic::Code::InvalidArgument
                        | tonic::Code::ResourceExhausted
                ) =>
            {
                Ok(Err(status.message().to_string()))
            }
            Err(e) => Err(GrpcError(CliError::from(e))),
        }
    }

    async fn poll(&self, id: &str) -> Result<Poll, GrpcError> {
        match crate::cmd::migration::get(self.client, id, false).await {
            Ok(m) if m.phase == "completed" => Ok(Poll::Phase(Phase::Completed {
                downtime_ms: m.downtime_ms.unwrap_or(0),
            })),
            Ok(m) if m.phase == "aborted" => Ok(Poll::Phase(Phase::Aborted {
                why: if m.error.is_empty() {
                    "no reason given".into()
                } else {
                    m.error
                },
            })),
            Ok(_) => Ok(Poll::Phase(Phase::Running)),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Err(GrpcError(CliError::runtime(
                format!("lost sight of migration {id}: {e}"),
            ))),
            Err(e) => Ok(Poll::Unreachable(e.to_string())),
        }
    }
}

/// The plan's moves as the engine takes them.
fn live_moves(plan: &pb::ReschedulePlanReply) -> Vec<LiveMove> {
    plan.moves
        .iter()
        .map(|m| LiveMove {
            alloc_id: m.alloc_id.clone(),
            job: m.job.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            cpu_millis: m.cpu_millis,
            memory_bytes: m.memory_bytes,
        })
        .collect()
}

/// Runs `plan`'s moves: at most `concurrency` at a time, in order, each
/// line printed (text output) as its move starts, ends or is skipped.
async fn execute(
    ctx: &Context,
    client: &HerdClient,
    plan: &pb::ReschedulePlanReply,
    args: &ApplyArgs,
    downtime_limit_ms: u64,
) -> Result<Vec<Outcome>, CliError> {
    let cluster = GrpcCluster {
        client,
        downtime_limit_ms,
    };
    let options = ApplyOptions {
        concurrency: args.concurrency,
        wait: args.wait,
        ..ApplyOptions::default()
    };
    let moves = &plan.moves;
    let total = moves.len();
    let text = !ctx.json();
    let run = engine::execute(&cluster, &live_moves(plan), &options, |event| {
        if !text {
            return;
        }
        match event {
            Event::Started { index, started } => println!(
                "move {}/{}: {} {} -> {}: started ({})",
                index + 1,
                total,
                moves[index].alloc_id,
                started.source,
                started.target,
                started.id
            ),
            Event::Ended { index, outcome } => {
                println!("{}", line(index, total, &moves[index], outcome))
            }
        }
    })
    .await;
    run.map_err(|e| match e {
        ApplyError::Cluster(GrpcError(e)) => e,
        lost @ ApplyError::LostSight { .. } => CliError::runtime(lost),
    })
}

/// `herd reschedule apply`.
pub async fn apply(ctx: &Context, args: ApplyArgs) -> Result<(), CliError> {
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(CliError::input(format!(
            "--concurrency: 1 to {MAX_CONCURRENCY}, got {}",
            args.concurrency
        )));
    }
    let downtime_limit_ms = match args.downtime_limit {
        Some(d) if d.as_millis() == 0 => {
            return Err(CliError::input("--downtime-limit: at least 1ms"))
        }
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None => 0,
    };
    let mut request = args.options.request(false)?;
    let plan = match &args.plan {
        Some(path) => read_plan_file(path)?,
        None => {
            let client = ctx.client()?;
            fetch_plan(&client, request.clone()).await?
        }
    };
    if args.plan.is_some() && plan.target_cpu_millis > 0 {
        // The FR after is measured for the shape the plan was made for.
        request.target_cpu_millis = plan.target_cpu_millis;
        request.target_memory_bytes = plan.target_memory_bytes;
    }
    let client = ctx.client()?;
    if !ctx.json() {
        if args.plan.is_some() {
            println!(
                "plan from {}: {} move{}, fragment rate {:.4} -> {:.4} when planned (target {})",
                args.plan
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                plan.moves.len(),
                if plan.moves.len() == 1 { "" } else { "s" },
                plan.fr_before,
                plan.fr_after,
                target_text(&plan)
            );
        } else {
            print_plan(&plan);
        }
    }
    let outcomes = execute(ctx, &client, &plan, &args, downtime_limit_ms).await?;
    let count = |name: &str| engine::count(&outcomes, name);
    let fr_now = if args.wait {
        let measure = pb::ReschedulePlanRequest {
            max_migrations: 0,
            deadline_ms: 10,
            ..request
        };
        Some(fetch_plan(&client, measure).await?.fr_before)
    } else {
        None
    };
    if ctx.json() {
        let moves: Vec<Value> = plan
            .moves
            .iter()
            .zip(&outcomes)
            .map(|(m, o)| {
                let (migration, reason) = match o {
                    Outcome::Completed { id, .. } | Outcome::Running { id } => {
                        (Some(id.clone()), None)
                    }
                    Outcome::Aborted { id, why } => (Some(id.clone()), Some(why.clone())),
                    Outcome::Skipped(why) => (None, Some(why.clone())),
                };
                json!({
                    "alloc": m.alloc_id, "job": m.job, "source": m.source, "target": m.target,
                    "outcome": o.name(), "migration": migration, "reason": reason,
                })
            })
            .collect();
        print_json(&json!({
            "plan": plan_json(&plan),
            "moves": moves,
            "completed": count("completed"),
            "aborted": count("aborted"),
            "skipped": count("skipped"),
            "running": count("running"),
            "fr_after": fr_now,
        }));
    } else {
        println!(
            "{} completed, {} aborted, {} skipped{}",
            count("completed"),
            count("aborted"),
            count("skipped"),
            match count("running") {
                0 => String::new(),
                n => format!(", {n} still running (follow with `herd migration list`)"),
            }
        );
        if let Some(fr) = fr_now {
            println!(
                "fragment rate now {fr:.4} (planned {:.4}, was {:.4})",
                plan.fr_after, plan.fr_before
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(alloc: &str, source: &str, target: &str) -> pb::RescheduleMove {
        pb::RescheduleMove {
            alloc_id: alloc.into(),
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn lines_say_how_each_move_ended() {
        let m = mv("a-1", "n1", "n3");
        let skipped = line(
            0,
            2,
            &m,
            &Outcome::Skipped("cannot migrate: no room".into()),
        );
        assert_eq!(
            skipped,
            "move 1/2: a-1 (?) n1 -> n3: skipped: cannot migrate: no room"
        );
        let done = line(
            1,
            2,
            &m,
            &Outcome::Completed {
                id: "mig-9".into(),
                downtime_ms: 12,
            },
        );
        assert!(
            done.ends_with("completed (mig-9, downtime 12 ms)"),
            "{done}"
        );
    }
}
