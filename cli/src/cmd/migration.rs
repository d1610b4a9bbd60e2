//! `herd alloc migrate` and `herd migration list|status`: start a live
//! migration, follow it, and inspect migrations past and present.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use herd_api::client::{ClientError, HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::migrations_client::MigrationsClient;
use herd_api::resources::{display_memory, parse_memory};
use herd_api::retry::{ErrorMarks, Reason};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// How often `--wait` asks where the migration stands.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long `--wait` rides out coordinators that cannot answer (an
/// election) before it gives up following.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// `herd alloc migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Allocation id.
    pub alloc: String,
    /// The node it moves to.
    #[arg(long)]
    pub to: String,
    /// Follow it with a progress bar until it completes (exit 0) or is
    /// aborted (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// The longest pause of the workload allowed (e.g. 300ms, 2s).
    #[arg(long, value_parser = herd_api::duration::parse_duration)]
    pub downtime_limit: Option<Duration>,
    /// A cap on the transfer rate (e.g. 1GiB/s, 500MB/s); none by default.
    #[arg(long, value_parser = parse_bandwidth)]
    pub bandwidth: Option<u64>,
}

/// Subcommands of `herd migration`.
#[derive(Subcommand, Debug)]
pub enum MigrationCommand {
    /// Migrations, running and ended, optionally of one allocation.
    List {
        /// Only this allocation's migrations.
        #[arg(long)]
        alloc: Option<String>,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// One migration with its figures.
    Status {
        /// Migration id (`herd alloc migrate` prints it).
        id: String,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
}

/// Parses a rate as `SIZE/s` or `SIZE` (bytes per second), sizes as
/// memory sizes are written (`1GiB/s`, `500MB/s`, `1048576`).
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let size = text.trim();
    let size = size
        .strip_suffix("/s")
        .or_else(|| size.strip_suffix("/S"))
        .unwrap_or(size);
    let bytes = parse_memory(size).map_err(|e| format!("invalid bandwidth {text:?}: {e}"))?;
    if bytes == 0 {
        return Err(format!(
            "invalid bandwidth {text:?}: a cap of 0 would never finish"
        ));
    }
    Ok(bytes)
}

/// The stable JSON of `-o json`.
pub fn migration_json(m: &pb::MigrationInfo) -> Value {
    json!({
        "id": m.id, "alloc": m.alloc_id, "kind": m.kind, "source": m.source, "target": m.target,
        "phase": m.phase, "bytes": m.bytes, "rounds": m.rounds, "downtime_ms": m.downtime_ms,
        "total_ms": m.total_ms, "error": (!m.error.is_empty()).then_some(&m.error),
        "group": (!m.group.is_empty()).then_some(&m.group), "stop_step": m.stop_step,
    })
}

/// A refused request is bad input (exit 2) when the coordinator says the
/// request itself cannot be served: wrong, naming what does not exist, or
/// refused by the state machine. Anything else is a failure (exit 1).
pub(crate) fn refusal(e: ClientError) -> CliError {
    let refused = match &e {
        ClientError::Status { status, .. } => {
            let reason = ErrorMarks::read(status).and_then(|m| m.reason);
            matches!(
                reason,
                Some(Reason::Rejected | Reason::NotFound | Reason::Invalid)
            ) || status.code() == tonic::Code::InvalidArgument
        }
        _ => false,
    };
    if refused {
        CliError::input(e)
    } else {
        CliError::from(e)
    }
}

/// Starts a migration (`Migrations.Start`); the one place the CLI does,
/// for `herd alloc migrate` and `herd reschedule apply`.
pub(crate) async fn start(
    client: &HerdClient,
    request: &pb::StartMigrationRequest,
) -> Result<pb::MigrationInfo, ClientError> {
    client
        .call(|ch| {
            let request = request.clone();
            async move {
                MigrationsClient::new(ch)
                    .start(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
}

/// One migration's record (`Migrations.Get`), as every follower of a move
/// reads it.
pub(crate) async fn get(
    client: &HerdClient,
    id: &str,
    stale: bool,
) -> Result<pb::MigrationInfo, ClientError> {
    client
        .call_as(Repeat::Safe, |ch| {
            let request = pb::GetMigrationRequest {
                id: id.to_string(),
                stale,
            };
            async move {
                MigrationsClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
}

/// `herd alloc migrate`.
pub async fn migrate(
    ctx: &Context,
    client: &HerdClient,
    args: MigrateArgs,
) -> Result<(), CliError> {
    let downtime_limit_ms = match args.downtime_limit {
        Some(d) if d.as_millis() == 0 => {
            return Err(CliError::input(
                "--downtime-limit: at least 1ms (a workload cannot move without pausing)",
            ))
        }
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None => 0,
    };
    let request = pb::StartMigrationRequest {
        alloc_id: args.alloc.clone(),
        target: args.to.clone(),
        downtime_limit_ms,
        bandwidth_bytes_per_sec: args.bandwidth.unwrap_or(0),
    };
    let started = start(client, &request).await.map_err(refusal)?;
    if !args.wait {
        if ctx.json() {
            print_json(&migration_json(&started));
        } else {
            println!(
                "migration {} started: allocation {} ({}) from {} to {}, downtime limit {} ms",
                started.id,
                started.alloc_id,
                started.kind,
                started.source,
                started.target,
                started.downtime_limit_ms
            );
            println!("follow it with `herd migration status {}`", started.id);
        }
        return Ok(());
    }
    let ended = follow(ctx, client, started).await?;
    if ctx.json() {
        print_json(&migration_json(&ended));
    } else if ended.phase == "completed" {
        println!(
            "migration {} completed: allocation {} now runs on {}",
            ended.id, ended.alloc_id, ended.target
        );
        println!(
            "  downtime {} ms (limit {} ms), total {}, {} moved in {} round{}",
            ended.downtime_ms.unwrap_or(0),
            ended.downtime_limit_ms,
            seconds(ended.total_ms),
            HumanBytes(ended.bytes),
            ended.rounds,
            if ended.rounds == 1 { "" } else { "s" }
        );
    }
    if ended.phase == "aborted" {
        return Err(CliError::runtime(format!(
            "migration {} aborted: {}; allocation {} stays on {}",
            ended.id,
            if ended.error.is_empty() {
                "no reason given"
            } else {
                &ended.error
            },
            ended.alloc_id,
            ended.source
        )));
    }
    Ok(())
}

pub(crate) fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// One line of progress: phase, bytes, rounds, average rate, time.
pub(crate) fn progress_line(m: &pb::MigrationInfo) -> String {
    let rate = m
        .bytes
        .saturating_mul(1000)
        .checked_div(m.total_ms)
        .unwrap_or(0);
    format!(
        "{} {:<12} {:>11}  round {:<3} {:>11}/s  {}",
        m.id,
        m.phase,
        HumanBytes(m.bytes).to_string(),
        m.rounds,
        HumanBytes(rate).to_string(),
        seconds(m.total_ms)
    )
}

/// Polls migration `m` until it ends, showing its progress: a live bar on
/// a terminal, a line per change of phase or round otherwise, nothing with
/// `-o json`.
async fn follow(
    ctx: &Context,
    client: &HerdClient,
    mut m: pb::MigrationInfo,
) -> Result<pb::MigrationInfo, CliError> {
    let plain = !ctx.json() && !std::io::stdout().is_terminal();
    let bar = (!ctx.json() && !plain).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let mut shown: Option<(String, u32)> = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if let Some(bar) = &bar {
            bar.set_message(progress_line(&m));
        } else if plain && shown != Some((m.phase.clone(), m.rounds)) {
            println!("{}", progress_line(&m));
            shown = Some((m.phase.clone(), m.rounds));
        }
        if m.phase == "completed" || m.phase == "aborted" {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(m);
        }
        tokio::time::sleep(POLL_EVERY).await;
        match get(client, &m.id, false).await {
            Ok(now) => {
                m = now;
                unreachable_since = None;
            }
            // Gone: ended long enough ago to be forgotten, or a rebuilt cluster.
            Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(CliError::runtime(format!(
                    "lost sight of migration {}: {e}",
                    m.id
                )));
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    return Err(CliError::runtime(format!(
                        "cannot follow migration {} (it goes on; see `herd migration status {}`): {e}",
                        m.id, m.id
                    )));
                }
            }
        }
    }
}

/// Runs a `herd migration` subcommand.
pub async fn run(ctx: &Context, command: MigrationCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        MigrationCommand::List { alloc, stale } => {
            let request = pb::ListMigrationsRequest {
                alloc_id: alloc.unwrap_or_default(),
                stale,
            };
            let migrations = client
                .call_as(Repeat::Safe, |ch| {
                    let request = request.clone();
                    async move {
                        MigrationsClient::new(ch)
                            .list(request)
                            .await
                            .map(|r| r.into_inner().migrations)
                    }
                })
                .await?;
            if ctx.json() {
                print_json(&json!(migrations
                    .iter()
                    .map(migration_json)
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = migrations
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.clone(),
                            m.alloc_id.clone(),
                            m.kind.clone(),
                            m.source.clone(),
                            m.target.clone(),
                            m.phase.clone(),
                            display_memory(m.bytes),
                            m.rounds.to_string(),
                            m.downtime_ms.map_or("-".to_string(), |d| format!("{d}ms")),
                            seconds(m.total_ms),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID", "ALLOC", "KIND", "SOURCE", "TARGET", "PHASE", "BYTES", "ROUNDS",
                        "DOWNTIME", "TOTAL",
                    ],
                    &rows,
                );
            }
        }
        MigrationCommand::Status { id, stale } => {
            let m = get(&client, &id, stale).await?;
            if ctx.json() {
                print_json(&migration_json(&m));
            } else {
                println!("id          {}", m.id);
                println!(
                    "allocation  {} (job {}, kind {})",
                    m.alloc_id, m.job, m.kind
                );
                println!(
                    "from        {} (generation {})",
                    m.source, m.from_generation
                );
                println!("to          {}", m.target);
                if !m.group.is_empty() {
                    println!(
                        "gang        moves with group {}{}",
                        m.group,
                        m.stop_step
                            .map_or(String::new(), |s| format!(", learners stop at step {s}"))
                    );
                }
                println!("phase       {}", m.phase);
                if !m.error.is_empty() {
                    println!("error       {}", m.error);
                }
                println!(
                    "moved       {} in {} round{}",
                    HumanBytes(m.bytes),
                    m.rounds,
                    if m.rounds == 1 { "" } else { "s" }
                );
                println!(
                    "downtime    {} (limit {} ms)",
                    m.downtime_ms.map_or("-".to_string(), |d| format!("{d} ms")),
                    m.downtime_limit_ms
                );
                if m.bandwidth_bytes_per_sec > 0 {
                    println!(
                        "bandwidth   {}/s at most",
                        HumanBytes(m.bandwidth_bytes_per_sec)
                    );
                }
                println!("started     {} UTC", format_time(m.started_at_ms));
                match m.ended_at_ms {
                    Some(end) => println!("ended       {} UTC", format_time(end)),
                    None => println!(
                        "deadline    {} UTC (of phase {})",
                        format_time(m.phase_deadline_ms),
                        m.phase
                    ),
                }
                println!("total       {}", seconds(m.total_ms));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_read_as_rates_or_sizes_and_zero_is_refused() {
        assert_eq!(parse_bandwidth("1GiB/s"), Ok(1 << 30));
        assert_eq!(parse_bandwidth("500MB/s"), Ok(500_000_000));
        assert_eq!(parse_bandwidth("1048576"), Ok(1 << 20));
        let zero = parse_bandwidth("0/s").expect_err("zero");
        assert!(zero.contains("never finish"), "{zero}");
        let bad = parse_bandwidth("fast").expect_err("bad");
        assert!(bad.contains("\"fast\""), "{bad}");
    }

    #[test]
    fn json_has_the_documented_fields_only() {
        let m = pb::MigrationInfo {
            id: "mig-4".into(),
            alloc_id: "a1".into(),
            phase: "completed".into(),
            bytes: 10,
            downtime_ms: Some(7),
            ..Default::default()
        };
        let value = migration_json(&m);
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "alloc",
                "bytes",
                "downtime_ms",
                "error",
                "group",
                "id",
                "kind",
                "phase",
                "rounds",
                "source",
                "stop_step",
                "target",
                "total_ms"
            ]
        );
        assert_eq!(
            (value["downtime_ms"].clone(), value["error"].clone()),
            (json!(7), Value::Null)
        );
        assert_eq!(
            (value["group"].clone(), value["stop_step"].clone()),
            (Value::Null, Value::Null),
            "a lone move has no gang"
        );
    }
}
