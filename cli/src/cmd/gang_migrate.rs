//! `herd job migrate JOB --to NODE,...`: moves a gang job live, every
//! member to its own node, as one group (`Migrations.StartGang`): the
//! learners stop at one common step, then all move or none does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use herd_api::client::HerdClient;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::migrations_client::MigrationsClient;
use indicatif::HumanBytes;
use serde_json::json;

use super::migration::{get, migration_json, parse_bandwidth, progress_line, refusal, seconds};
use super::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// How often `--wait` looks at the members.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How long `--wait` rides out coordinators that cannot answer.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// `herd job migrate`.
#[derive(Args, Debug)]
pub struct JobMigrateArgs {
    /// The gang job.
    pub job: String,
    /// One node per member, in rank order (instance 0 first), comma-separated;
    /// every member moves to another node than its own.
    #[arg(long, value_delimiter = ',', required = true)]
    pub to: Vec<String>,
    /// Follow the members until all completed (exit 0) or the group was
    /// aborted (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// The longest pause of the workload allowed (e.g. 300ms, 2s).
    #[arg(long, value_parser = herd_api::duration::parse_duration)]
    pub downtime_limit: Option<Duration>,
    /// A cap on each member's transfer rate (e.g. 1GiB/s); none by default.
    #[arg(long, value_parser = parse_bandwidth)]
    pub bandwidth: Option<u64>,
}

/// Runs `herd job migrate`.
pub async fn run(ctx: &Context, args: JobMigrateArgs) -> Result<(), CliError> {
    if let Some(empty) = args.to.iter().position(|t| t.trim().is_empty()) {
        return Err(CliError::input(format!(
            "--to: node {} of the list is empty",
            empty + 1
        )));
    }
    let downtime_limit_ms = match args.downtime_limit {
        Some(d) if d.as_millis() == 0 => {
            return Err(CliError::input(
                "--downtime-limit: at least 1ms (a workload cannot move without pausing)",
            ))
        }
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        None => 0,
    };
    let client = ctx.client()?;
    let request = pb::StartGangMigrationRequest {
        job: args.job.clone(),
        targets: args.to.iter().map(|t| t.trim().to_string()).collect(),
        downtime_limit_ms,
        bandwidth_bytes_per_sec: args.bandwidth.unwrap_or(0),
    };
    let started = client
        .call(|ch| {
            let request = request.clone();
            async move {
                MigrationsClient::new(ch)
                    .start_gang(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map_err(refusal)?;
    if !args.wait {
        if ctx.json() {
            print_json(&group_json(&started.group, &started.migrations));
        } else {
            println!(
                "gang move {} started: job {}, {} members (their learners stop at one common step, then all move or none)",
                started.group,
                args.job,
                started.migrations.len()
            );
            for m in &started.migrations {
                println!(
                    "  {}  allocation {}  {} \u{2192} {}",
                    m.id, m.alloc_id, m.source, m.target
                );
            }
            println!(
                "follow it with `herd migration list` or `herd migration status {}`",
                started.group
            );
        }
        return Ok(());
    }
    let ended = follow(ctx, &client, started.migrations).await?;
    if ctx.json() {
        print_json(&group_json(&started.group, &ended));
    }
    if let Some(aborted) = ended.iter().find(|m| m.phase == "aborted") {
        return Err(CliError::runtime(format!(
            "gang move {} aborted: {}; every member stays where it was",
            started.group,
            if aborted.error.is_empty() {
                "no reason given"
            } else {
                &aborted.error
            }
        )));
    }
    if !ctx.json() {
        let step = ended.iter().find_map(|m| m.stop_step);
        println!(
            "gang move {} completed: job {}'s {} members moved{}",
            started.group,
            args.job,
            ended.len(),
            step.map_or(String::new(), |s| format!(", every learner from step {s}"))
        );
        for m in &ended {
            println!(
                "  {}  allocation {} now on {}: {} moved, downtime {} ms, total {}",
                m.id,
                m.alloc_id,
                m.target,
                HumanBytes(m.bytes),
                m.downtime_ms.unwrap_or(0),
                seconds(m.total_ms)
            );
        }
    }
    Ok(())
}

/// The `-o json` of a gang move: its group and every member's record.
fn group_json(group: &str, members: &[pb::MigrationInfo]) -> serde_json::Value {
    json!({
        "group": group,
        "migrations": members.iter().map(migration_json).collect::<Vec<_>>(),
    })
}

/// Polls every member until all ended, printing a line per change of a
/// member's phase (nothing with `-o json`).
async fn follow(
    ctx: &Context,
    client: &HerdClient,
    mut members: Vec<pb::MigrationInfo>,
) -> Result<Vec<pb::MigrationInfo>, CliError> {
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        for m in &members {
            if !ctx.json() && shown.get(&m.id) != Some(&m.phase) {
                println!("{}", progress_line(m));
                shown.insert(m.id.clone(), m.phase.clone());
            }
        }
        if members
            .iter()
            .all(|m| m.phase == "completed" || m.phase == "aborted")
        {
            return Ok(members);
        }
        tokio::time::sleep(POLL_EVERY).await;
        let mut now = Vec::with_capacity(members.len());
        for m in &members {
            match get(client, &m.id, false).await {
                Ok(fresh) => now.push(fresh),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                    return Err(CliError::runtime(format!(
                        "lost sight of migration {}: {e}",
                        m.id
                    )))
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > UNREACHABLE_FOR {
                        return Err(CliError::runtime(format!(
                            "cannot follow the gang move (it goes on; see `herd migration list`): {e}"
                        )));
                    }
                    break;
                }
            }
        }
        if now.len() == members.len() {
            members = now;
            unreachable_since = None;
        }
    }
}
