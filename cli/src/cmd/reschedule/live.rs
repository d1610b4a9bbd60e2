//! `herd reschedule plan`: a defragmenting plan for the live cluster,
//! computed by the coordinators (`Reschedule.Plan`), printed or saved as
//! JSON for `herd reschedule apply --plan FILE`.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::reschedule_client::RescheduleClient;
use herd_api::resources::{display_memory, parse_memory};
use serde_json::{json, Value};

use crate::cmd::Context;
use crate::exit::CliError;
use crate::output::{print_json, print_table};

/// Most moves a plan may have (the coordinator's limit too).
pub const MAX_MIGRATIONS: u32 = 1000;
/// Largest plan file `apply --plan` reads.
const MAX_PLAN_FILE: u64 = 4 * 1024 * 1024;
/// Longest allocation id, job or node name accepted from a plan file.
const MAX_NAME: usize = 128;

/// What a plan is computed for: shared by `plan` and `apply`.
#[derive(Args, Debug, Clone)]
pub struct PlanOptions {
    /// At most this many migrations (0 to 1000).
    #[arg(long, default_value_t = 50)]
    pub max_migrations: u32,
    /// Planning time (at most 60s).
    #[arg(long, default_value = "1s", value_parser = herd_api::duration::parse_duration)]
    pub deadline: Duration,
    /// CPU of the shape to make room for: cores (`16`, `0.5`) or
    /// millicores (`500m`) [default: 16].
    #[arg(long, value_parser = parse_cpu)]
    pub target_cpu: Option<u64>,
    /// Memory of that shape (e.g. `4GiB`); not counted when not given.
    #[arg(long, value_parser = parse_memory)]
    pub target_memory: Option<u64>,
    /// The planner: herd (herd's anytime method) or greedy.
    #[arg(long, default_value = "herd")]
    pub solver: String,
    /// Seed of the randomised planner.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `herd reschedule plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// What to plan for.
    #[command(flatten)]
    pub options: PlanOptions,
    /// Answer from the first coordinator's own state (no read barrier).
    #[arg(long)]
    pub stale: bool,
}

/// Parses a CPU amount as cores (`2`, `0.5`) or millicores (`500m`): the
/// coordinator's `[reschedule] target_cpu` reads the same way.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    herd_coordinator::reschedule::config::parse_cpu(text)
}

impl PlanOptions {
    /// The request these options ask for, checked here so bad input exits 2
    /// before any network call.
    pub fn request(&self, stale: bool) -> Result<pb::ReschedulePlanRequest, CliError> {
        if self.max_migrations > MAX_MIGRATIONS {
            return Err(CliError::input(format!(
                "--max-migrations: at most {MAX_MIGRATIONS}, got {}",
                self.max_migrations
            )));
        }
        let deadline_ms = u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX);
        if deadline_ms == 0 || deadline_ms > 60_000 {
            return Err(CliError::input(format!(
                "--deadline: 1ms to 60s, got {deadline_ms} ms"
            )));
        }
        if !matches!(self.solver.as_str(), "herd" | "greedy") {
            return Err(CliError::input(format!(
                "--solver: {:?} does not run on the live cluster (known: herd, greedy; `herd reschedule eval` runs the exact one on files)",
                self.solver
            )));
        }
        Ok(pb::ReschedulePlanRequest {
            max_migrations: self.max_migrations,
            deadline_ms,
            target_cpu_millis: self.target_cpu.unwrap_or(0),
            target_memory_bytes: self.target_memory.unwrap_or(0),
            solver: self.solver.clone(),
            seed: self.seed,
            stale,
        })
    }
}

/// Asks the coordinators for a plan.
pub async fn fetch_plan(
    client: &HerdClient,
    request: pb::ReschedulePlanRequest,
) -> Result<pb::ReschedulePlanReply, CliError> {
    client
        .call_as(Repeat::Safe, |ch| {
            let request = request.clone();
            async move {
                RescheduleClient::new(ch)
                    .plan(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map_err(|e| {
            if e.code() == Some(tonic::Code::InvalidArgument) {
                CliError::input(e)
            } else if e.code() == Some(tonic::Code::Unimplemented) {
                CliError::runtime(format!(
                    "the coordinators do not plan reschedules (an older release?): {e}"
                ))
            } else {
                CliError::from(e)
            }
        })
}

/// The stable JSON of a plan (`plan -o json`, read back by `apply --plan`).
pub fn plan_json(plan: &pb::ReschedulePlanReply) -> Value {
    let immovable: serde_json::Map<String, Value> = plan
        .immovable
        .iter()
        .map(|c| (c.reason.clone(), json!(c.count)))
        .collect();
    json!({
        "fr_before": plan.fr_before,
        "fr_after": plan.fr_after,
        "solver": plan.solver,
        "planning_ms": plan.planning_ms,
        "target": {"cpu_millis": plan.target_cpu_millis, "memory_bytes": plan.target_memory_bytes},
        "nodes": plan.nodes,
        "active_nodes": plan.active_nodes,
        "allocations": plan.allocations,
        "movable": plan.movable,
        "immovable": immovable,
        "note": (!plan.note.is_empty()).then_some(&plan.note),
        "moves": plan.moves.iter().map(|m| json!({
            "alloc": m.alloc_id, "job": m.job, "source": m.source, "target": m.target,
            "cpu_millis": m.cpu_millis, "memory_bytes": m.memory_bytes,
        })).collect::<Vec<_>>(),
    })
}

fn cpu_text(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{}m", millis)
    }
}

/// The target shape in words.
pub fn target_text(plan: &pb::ReschedulePlanReply) -> String {
    let cpu = format!("{} CPU", cpu_text(plan.target_cpu_millis));
    if plan.target_memory_bytes == 0 {
        cpu
    } else {
        format!("{cpu}, {}", display_memory(plan.target_memory_bytes))
    }
}

/// Prints a plan as text: the fragment rates, the model's size, the moves.
pub fn print_plan(plan: &pb::ReschedulePlanReply) {
    println!(
        "fragment rate {:.4} -> {:.4} with {} move{} (target {}; {} {} ms)",
        plan.fr_before,
        plan.fr_after,
        plan.moves.len(),
        if plan.moves.len() == 1 { "" } else { "s" },
        target_text(plan),
        plan.solver,
        plan.planning_ms
    );
    println!(
        "{} of {} nodes counted; {} of {} allocations movable{}",
        plan.active_nodes,
        plan.nodes,
        plan.movable,
        plan.allocations,
        if plan.immovable.is_empty() {
            String::new()
        } else {
            format!(
                " (not: {})",
                plan.immovable
                    .iter()
                    .map(|c| format!("{} {}", c.count, c.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if !plan.note.is_empty() {
        println!("note: {}", plan.note);
    }
    if plan.moves.is_empty() {
        println!("no migration lowers the fragment rate");
        return;
    }
    let rows: Vec<Vec<String>> = plan
        .moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            vec![
                (i + 1).to_string(),
                m.alloc_id.clone(),
                m.job.clone(),
                m.source.clone(),
                m.target.clone(),
                cpu_text(m.cpu_millis),
                display_memory(m.memory_bytes),
            ]
        })
        .collect();
    print_table(&["#", "ALLOC", "JOB", "FROM", "TO", "CPU", "MEMORY"], &rows);
}

/// `herd reschedule plan`.
pub async fn plan(ctx: &Context, args: PlanArgs) -> Result<(), CliError> {
    let request = args.options.request(args.stale)?;
    let client = ctx.client()?;
    let plan = fetch_plan(&client, request).await?;
    if ctx.json() {
        print_json(&plan_json(&plan));
    } else {
        print_plan(&plan);
    }
    Ok(())
}

/// Reads a plan `herd reschedule plan -o json` wrote, naming the file and
/// the field at fault when it is not one.
pub fn read_plan_file(path: &Path) -> Result<pb::ReschedulePlanReply, CliError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| CliError::input(format!("{shown}: {e}")))?;
    if meta.len() > MAX_PLAN_FILE {
        return Err(CliError::input(format!(
            "{shown}: {} bytes, a plan file is at most {MAX_PLAN_FILE}",
            meta.len()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::input(format!("{shown}: {e}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        CliError::input(format!(
            "{shown}:{}:{}: not JSON: {e}",
            e.line(),
            e.column()
        ))
    })?;
    plan_from_json(&value).map_err(|m| CliError::input(format!("{shown}: {m}")))
}

/// A plan from its JSON (`plan_json`'s shape; only the fields apply needs
/// are required: `moves[].alloc`, `.source`, `.target`).
pub fn plan_from_json(value: &Value) -> Result<pb::ReschedulePlanReply, String> {
    let number = |key: &str| value.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    let moves = value
        .get("moves")
        .and_then(Value::as_array)
        .ok_or("field `moves`: missing or not a list")?;
    if moves.len() > MAX_MIGRATIONS as usize {
        return Err(format!(
            "field `moves`: at most {MAX_MIGRATIONS} moves, got {}",
            moves.len()
        ));
    }
    let mut out = Vec::with_capacity(moves.len());
    for (i, m) in moves.iter().enumerate() {
        let text = |key: &str, required: bool| -> Result<String, String> {
            match m.get(key).and_then(Value::as_str) {
                Some(s) if s.is_empty() && required => {
                    Err(format!("field `moves[{i}].{key}`: empty"))
                }
                Some(s) if s.len() > MAX_NAME => Err(format!(
                    "field `moves[{i}].{key}`: at most {MAX_NAME} bytes, got {}",
                    s.len()
                )),
                Some(s) => Ok(s.to_string()),
                None if required => Err(format!("field `moves[{i}].{key}`: missing or not text")),
                None => Ok(String::new()),
            }
        };
        out.push(pb::RescheduleMove {
            alloc_id: text("alloc", true)?,
            job: text("job", false)?,
            source: text("source", true)?,
            target: text("target", true)?,
            cpu_millis: m.get("cpu_millis").and_then(Value::as_u64).unwrap_or(0),
            memory_bytes: m.get("memory_bytes").and_then(Value::as_u64).unwrap_or(0),
        });
    }
    let target = value.get("target");
    let field = |key: &str| {
        target
            .and_then(|t| t.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(pb::ReschedulePlanReply {
        fr_before: number("fr_before"),
        fr_after: number("fr_after"),
        moves: out,
        solver: value
            .get("solver")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .take(MAX_NAME)
            .collect(),
        target_cpu_millis: field("cpu_millis"),
        target_memory_bytes: field("memory_bytes"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts_read_as_cores_or_millicores() {
        assert_eq!(parse_cpu("16"), Ok(16_000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("250m"), Ok(250));
        for bad in ["", "0", "0m", "x", "-1", "1e9", "NaN"] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_plan_round_trips_through_its_json_and_bad_files_name_the_field() {
        let plan = pb::ReschedulePlanReply {
            fr_before: 0.6,
            fr_after: 0.2,
            moves: vec![pb::RescheduleMove {
                alloc_id: "a-1".into(),
                job: "j".into(),
                source: "n1".into(),
                target: "n3".into(),
                cpu_millis: 500,
                memory_bytes: 1 << 25,
            }],
            solver: "herd".into(),
            target_cpu_millis: 1000,
            ..Default::default()
        };
        let back = plan_from_json(&plan_json(&plan)).expect("reads back");
        assert_eq!(back.moves, plan.moves);
        assert_eq!((back.fr_before, back.fr_after), (0.6, 0.2));
        assert_eq!(back.target_cpu_millis, 1000);
        let err = plan_from_json(&json!({"moves": [{"alloc": "a", "source": "n1"}]}))
            .expect_err("no target");
        assert!(err.contains("moves[0].target"), "{err}");
        let err = plan_from_json(&json!({"fr_before": 1})).expect_err("no moves");
        assert!(err.contains("`moves`"), "{err}");
    }
}
