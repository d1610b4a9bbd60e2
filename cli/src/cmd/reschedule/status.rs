//! `herd reschedule status`: what the leader's defragmenting loop did last
//! (when, the fragment rate before, planned and measured after, the moves
//! started and skipped), read from the record the loop keeps in the
//! variable `herd/reschedule/last-run`; and the placement fallback's
//! record of a job, which `herd job status` shows.

use clap::Args;
use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::variables_client::VariablesClient;
use herd_api::resources::format_memory;
use herd_coordinator::reschedule::auto::{LastRun, LAST_RUN_KEY};
use herd_coordinator::reschedule::fallback::record::{key as fallback_key, FallbackRecord};
use serde_json::json;

use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json};

/// `herd reschedule status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Answer from the first coordinator's own state (no read barrier).
    #[arg(long)]
    pub stale: bool,
}

/// The record herd keeps in variable `key` (JSON), if there is one.
pub async fn read_record(
    client: &HerdClient,
    key: &str,
    stale: bool,
) -> Result<Option<serde_json::Value>, CliError> {
    let request = pb::GetVariableRequest {
        key: key.to_string(),
        stale,
    };
    let reply = client
        .call_as(Repeat::Safe, |ch| {
            let request = request.clone();
            async move {
                VariablesClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
    if !reply.found {
        return Ok(None);
    }
    serde_json::from_slice(&reply.value)
        .map(Some)
        .map_err(|e| CliError::runtime(format!("variable {key} is not a record herd wrote: {e}")))
}

/// The text form of `run`.
pub fn run_lines(run: &LastRun) -> Vec<String> {
    let mut lines = vec![format!(
        "last run   {} UTC, {:.1} s (member {}, term {}; runs every {})",
        format_time(run.at_ms),
        run.ended_at_ms.saturating_sub(run.at_ms) as f64 / 1000.0,
        run.member,
        run.term,
        herd_api::duration::format_duration(std::time::Duration::from_millis(run.every_ms)),
    )];
    let target = if run.target_memory_bytes > 0 {
        format!(
            "{}m cpu, {}",
            run.target_cpu_millis,
            format_memory(run.target_memory_bytes)
        )
    } else {
        format!("{}m cpu", run.target_cpu_millis)
    };
    let fr = match run.outcome.as_str() {
        "below-threshold" => format!(
            "fragment rate {:.4} below the threshold {:.4}: nothing moved",
            run.fr_before, run.fr_threshold
        ),
        "nothing-to-gain" => format!(
            "fragment rate {:.4} (threshold {:.4}): no move lowers it",
            run.fr_before, run.fr_threshold
        ),
        _ => format!(
            "fragment rate {:.4} -> {:.4} planned{} (threshold {:.4})",
            run.fr_before,
            run.fr_planned,
            run.fr_after
                .map(|f| format!(", {f:.4} measured after"))
                .unwrap_or_default(),
            run.fr_threshold
        ),
    };
    lines.push(format!("outcome    {}: {fr}, target {target}", run.outcome));
    if run.planned > 0 {
        lines.push(format!(
            "moves      {} planned: {} started ({} completed, {} aborted), {} skipped",
            run.planned, run.started, run.completed, run.aborted, run.skipped
        ));
    }
    for m in &run.moves {
        let detail = match (&m.migration, &m.reason) {
            (Some(id), Some(why)) => format!(" ({id}): {why}"),
            (Some(id), None) => format!(" ({id})"),
            (None, Some(why)) => format!(": {why}"),
            (None, None) => String::new(),
        };
        lines.push(format!(
            "  {} ({}) {} -> {}: {}{detail}",
            m.alloc, m.job, m.source, m.target, m.outcome
        ));
    }
    if let Some(note) = &run.note {
        lines.push(format!("note       {note}"));
    }
    lines
}

/// `herd reschedule status`.
pub async fn status(ctx: &Context, args: StatusArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let run: Option<LastRun> = match read_record(&client, LAST_RUN_KEY, args.stale).await? {
        None => None,
        Some(value) => Some(serde_json::from_value(value).map_err(|e| {
            CliError::runtime(format!("variable {LAST_RUN_KEY} is not a run record: {e}"))
        })?),
    };
    if ctx.json() {
        print_json(&json!({ "last_run": run }));
        return Ok(());
    }
    match run {
        None => println!(
            "no defragmenting run recorded: the loop is off unless the coordinators run with \
             [reschedule] every = \"10m\" (or --reschedule-every), and it first runs one period \
             after a leader is elected"
        ),
        Some(run) => {
            for line in run_lines(&run) {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// The placement fallback's record for job `name` at `version`, when there
/// is one worth showing: a placement it made, or (while the job is still
/// `blocked`) why it found none. A coordinator that cannot be asked about
/// it (an older release, a token without access to variables) shows none:
/// `herd job status` must not fail over an extra.
pub async fn fallback_record(
    client: &HerdClient,
    name: &str,
    version: u64,
    blocked: bool,
    stale: bool,
) -> Option<FallbackRecord> {
    let value = read_record(client, &fallback_key(name), stale)
        .await
        .ok()??;
    let record: FallbackRecord = serde_json::from_value(value).ok()?;
    (record.version == version && (blocked || !record.outcome.while_pending())).then_some(record)
}

/// `herd job status`'s line for `record`.
pub fn fallback_line(record: &FallbackRecord) -> String {
    format!(
        "fallback   {} ({} UTC)",
        record.text,
        format_time(record.at_ms)
    )
}
