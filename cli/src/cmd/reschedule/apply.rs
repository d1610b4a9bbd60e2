//! `herd reschedule apply`: runs a defragmenting plan through live
//! migrations, a few at a time, in the plan's order.
//!
//! Nothing is trusted from planning time: each move is started with
//! `Migrations.Start`, which re-checks room, constraints and movability
//! against the state at that moment, and a move whose allocation no longer
//! runs where the plan found it is not started. A refused move is skipped
//! and said so with the reason; the others go on. A move waits while an
//! earlier move of the plan that leaves its target (the room it may count
//! on) or moves the same allocation is still in flight.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use herd_api::client::{ClientError, HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_client::AllocsClient;
use serde_json::{json, Value};

use super::live::{fetch_plan, plan_json, print_plan, read_plan_file, target_text, PlanOptions};
use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// How often in-flight migrations are asked where they stand.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long coordinators that cannot answer (an election) are ridden out
/// before apply gives up following.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);
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

/// How one move of the plan ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Migration `id` completed.
    Completed { id: String, downtime_ms: u64 },
    /// Migration `id` was aborted (the allocation stays at its source).
    Aborted { id: String, why: String },
    /// Not started: the reason.
    Skipped(String),
    /// Started and still under way when apply returned (no --wait).
    Running { id: String },
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::Aborted { .. } => "aborted",
            Outcome::Skipped(_) => "skipped",
            Outcome::Running { .. } => "running",
        }
    }
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

/// Why the move may not start: the allocation no longer runs where the
/// plan found it (moved since, or gone), checked just before starting.
async fn stale_source(
    client: &HerdClient,
    m: &pb::RescheduleMove,
) -> Result<Option<String>, CliError> {
    let request = pb::GetAllocRequest {
        id: m.alloc_id.clone(),
        stale: false,
    };
    let answer = client
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
        Ok(alloc) if alloc.node != m.source => Ok(Some(format!(
            "allocation {} now runs on {}, not {} as planned",
            m.alloc_id, alloc.node, m.source
        ))),
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            Ok(Some(format!("allocation {} is gone", m.alloc_id)))
        }
        Err(e) => Err(CliError::from(e)),
    }
}

/// Starts move `m`: the migration record, or why it is skipped (a refusal
/// of the request; an unreachable cluster is an error).
async fn start(
    client: &HerdClient,
    m: &pb::RescheduleMove,
    downtime_limit_ms: u64,
) -> Result<Result<pb::MigrationInfo, String>, CliError> {
    if let Some(why) = stale_source(client, m).await? {
        return Ok(Err(why));
    }
    let request = pb::StartMigrationRequest {
        alloc_id: m.alloc_id.clone(),
        target: m.target.clone(),
        downtime_limit_ms,
        bandwidth_bytes_per_sec: 0,
    };
    let answer = crate::cmd::migration::start(client, &request).await;
    match answer {
        Ok(started) => Ok(Ok(started)),
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
        Err(e) => Err(CliError::from(e)),
    }
}

/// A started move of the plan, followed until it ends.
struct InFlight {
    index: usize,
    id: String,
    unreachable_since: Option<Instant>,
}

/// Whether move `i` must wait for the moves in flight: one of them moves
/// the same allocation, or leaves the node move `i` goes to.
fn must_wait(moves: &[pb::RescheduleMove], i: usize, in_flight: &[InFlight]) -> bool {
    let m = &moves[i];
    in_flight.iter().any(|f| {
        let earlier = &moves[f.index];
        earlier.alloc_id == m.alloc_id || earlier.source == m.target
    })
}

/// Polls every in-flight migration once; returns the moves that ended.
async fn poll(
    client: &HerdClient,
    in_flight: &mut Vec<InFlight>,
) -> Result<Vec<(usize, Outcome)>, CliError> {
    let mut ended = Vec::new();
    let mut still = Vec::new();
    for mut f in in_flight.drain(..) {
        match crate::cmd::migration::get(client, &f.id, false).await {
            Ok(m) if m.phase == "completed" => ended.push((
                f.index,
                Outcome::Completed {
                    id: m.id,
                    downtime_ms: m.downtime_ms.unwrap_or(0),
                },
            )),
            Ok(m) if m.phase == "aborted" => ended.push((
                f.index,
                Outcome::Aborted {
                    id: m.id,
                    why: if m.error.is_empty() {
                        "no reason given".into()
                    } else {
                        m.error
                    },
                },
            )),
            Ok(_) => {
                f.unreachable_since = None;
                still.push(f);
            }
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                return Err(CliError::runtime(format!(
                    "lost sight of migration {}: {e}",
                    f.id
                )))
            }
            Err(e) => {
                let since = *f.unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    return Err(CliError::runtime(format!(
                        "cannot follow migration {} (it goes on; see `herd migration status {}`): {e}",
                        f.id, f.id
                    )));
                }
                still.push(f);
            }
        }
    }
    *in_flight = still;
    Ok(ended)
}

/// Runs `plan`'s moves: at most `concurrency` at a time, in order, each
/// line printed (text output) as its move ends or is skipped.
async fn execute(
    ctx: &Context,
    client: &HerdClient,
    plan: &pb::ReschedulePlanReply,
    args: &ApplyArgs,
    downtime_limit_ms: u64,
) -> Result<Vec<Outcome>, CliError> {
    let moves = &plan.moves;
    let total = moves.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; total];
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut next = 0usize;
    let report = |i: usize, outcome: &Outcome| {
        if !ctx.json() {
            println!("{}", line(i, total, &moves[i], outcome));
        }
    };
    loop {
        while next < total
            && in_flight.len() < args.concurrency
            && !must_wait(moves, next, &in_flight)
        {
            match start(client, &moves[next], downtime_limit_ms).await? {
                Ok(started) => {
                    if !ctx.json() {
                        println!(
                            "move {}/{}: {} {} -> {}: started ({})",
                            next + 1,
                            total,
                            moves[next].alloc_id,
                            started.source,
                            started.target,
                            started.id
                        );
                    }
                    in_flight.push(InFlight {
                        index: next,
                        id: started.id,
                        unreachable_since: None,
                    });
                }
                Err(why) => {
                    let outcome = Outcome::Skipped(why);
                    report(next, &outcome);
                    outcomes[next] = Some(outcome);
                }
            }
            next += 1;
        }
        if in_flight.is_empty() && next >= total {
            break;
        }
        if next >= total && !args.wait {
            for f in &in_flight {
                let outcome = Outcome::Running { id: f.id.clone() };
                report(f.index, &outcome);
                outcomes[f.index] = Some(outcome);
            }
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
        for (i, outcome) in poll(client, &mut in_flight).await? {
            report(i, &outcome);
            outcomes[i] = Some(outcome);
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Skipped("never started".into())))
        .collect())
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
    let count = |name: &str| outcomes.iter().filter(|o| o.name() == name).count();
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
    fn a_move_waits_for_earlier_ones_leaving_its_target_or_moving_its_allocation() {
        let moves = vec![
            mv("a", "n1", "n3"),
            mv("b", "n2", "n1"),
            mv("c", "n2", "n3"),
            mv("a", "n3", "n2"),
        ];
        let flying = |index: usize| InFlight {
            index,
            id: format!("mig-{index}"),
            unreachable_since: None,
        };
        // b goes into n1, which a is leaving: it waits.
        assert!(must_wait(&moves, 1, &[flying(0)]));
        // c goes into n3 like a: both fit per the plan, no wait.
        assert!(!must_wait(&moves, 2, &[flying(0)]));
        // a's second move waits for its first.
        assert!(must_wait(&moves, 3, &[flying(0)]));
        // ... and for c, which leaves n2, where it goes.
        assert!(must_wait(&moves, 3, &[flying(2)]));
        assert!(!must_wait(&moves, 1, &[]));
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
