//! `herd job run|list|status|stop`.

use std::io::Read;

use clap::Subcommand;
use herd_api::duration::{format_duration, from_wire_ms};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::resources::format_memory;
use herd_api::spec_file::parse_job_spec;
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd job`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job spec (TOML); resubmitting a name makes a new version.
    Run {
        /// Spec file, or `-` for standard input.
        file: String,
    },
    /// All jobs.
    List {
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// One job in detail.
    Status {
        /// Job name.
        name: String,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// Stop a job.
    Stop {
        /// Job name.
        name: String,
    },
}

fn read_spec(file: &str) -> Result<(String, String), CliError> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::input(format!("<stdin>: cannot read: {e}")))?;
        Ok((text, "<stdin>".to_string()))
    } else {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::input(format!("{file}: cannot read: {e}")))?;
        Ok((text, file.to_string()))
    }
}

fn job_json(job: &pb::Job) -> serde_json::Value {
    let spec = job.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let res = task.resources.clone().unwrap_or_default();
    json!({
        "name": spec.name, "status": job.status, "version": job.version, "type": spec.r#type,
        "count": spec.count, "placed": job.placed, "priority": spec.priority, "submitted_at_ms": job.submitted_at_ms,
        "updated_at_ms": job.updated_at_ms, "modify_index": job.modify_index,
        "blocked": if job.blocked.is_empty() { serde_json::Value::Null } else { json!(job.blocked) },
        "task": {"driver": task.driver, "command": task.command, "args": task.args, "env": task.env,
                 "workdir": task.workdir,
                 "resources": {"cpu_millis": res.cpu_millis, "memory_bytes": res.memory_bytes,
                               "gpus": res.gpus, "gpu_model": res.gpu_model}},
        "placement": {
            "constraints": spec.constraints.iter()
                .map(|c| json!({"label": c.label, "op": c.op, "value": c.value}))
                .collect::<Vec<_>>(),
            "affinities": spec.affinities.iter()
                .map(|a| json!({"label": a.label, "value": a.value, "weight": a.weight}))
                .collect::<Vec<_>>(),
            "spread": if spec.spread.is_empty() { "bin-pack" } else { spec.spread.as_str() },
            "gang": spec.gang,
        },
        // 0 on the wire means not set: null for scripts.
        "stop_after_disconnect_ms": (spec.stop_after_disconnect_ms > 0)
            .then_some(spec.stop_after_disconnect_ms),
    })
}

/// The placement lines of `herd job status`: spread and gang always (so a
/// reader knows the policy), constraints and affinities when there are any.
fn placement_lines(spec: &pb::JobSpec) -> Vec<String> {
    let spread = match spec.spread.as_str() {
        "" => "bin-pack".to_string(),
        "node" => "spread over nodes".to_string(),
        label => format!("spread over label {label}"),
    };
    let gang = if spec.gang {
        ", gang (all or nothing)"
    } else {
        ""
    };
    let mut lines = vec![format!("placement  {spread}{gang}")];
    if !spec.constraints.is_empty() {
        let all: Vec<String> = spec
            .constraints
            .iter()
            .map(|c| match (c.op.as_str(), &c.value) {
                ("exists", _) => format!("{} exists", c.label),
                (op, value) => format!("{}{op}{}", c.label, value.as_deref().unwrap_or("")),
            })
            .collect();
        lines.push(format!("constraint {}", all.join(", ")));
    }
    if !spec.affinities.is_empty() {
        let all: Vec<String> = spec
            .affinities
            .iter()
            .map(|a| format!("{}={} (weight {})", a.label, a.value, a.weight))
            .collect();
        lines.push(format!("affinity   {}", all.join(", ")));
    }
    lines
}

/// Runs a `herd job` subcommand.
pub async fn run(ctx: &Context, command: JobCommand) -> Result<(), CliError> {
    match command {
        JobCommand::Run { file } => {
            let (text, name) = read_spec(&file)?;
            let spec = parse_job_spec(&text, &name).map_err(CliError::input)?;
            let client = ctx.client()?;
            let request = pb::SubmitJobRequest {
                spec: Some(pb::JobSpec::from(&spec)),
            };
            let reply = client
                .call(|ch| {
                    let request = request.clone();
                    async move {
                        JobsClient::new(ch)
                            .submit(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"name": spec.name, "version": reply.version, "changed": reply.changed,
                                   "log_index": reply.log_index}),
                );
            } else if reply.changed {
                println!(
                    "job {} submitted: version {} (log index {})",
                    spec.name, reply.version, reply.log_index
                );
            } else {
                println!(
                    "job {} unchanged: version {} is identical",
                    spec.name, reply.version
                );
            }
        }
        JobCommand::List { stale } => {
            let jobs = ctx
                .client()?
                .call(|ch| async move {
                    JobsClient::new(ch)
                        .list(pb::ListJobsRequest { stale })
                        .await
                        .map(|r| r.into_inner().jobs)
                })
                .await?;
            if ctx.json() {
                print_json(&json!(jobs.iter().map(job_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|job| {
                        let spec = job.spec.clone().unwrap_or_default();
                        vec![
                            spec.name,
                            spec.r#type,
                            spec.priority.to_string(),
                            job.status.clone(),
                            job.version.to_string(),
                            format_time(job.updated_at_ms),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAME",
                        "TYPE",
                        "PRIORITY",
                        "STATUS",
                        "VERSION",
                        "UPDATED (UTC)",
                    ],
                    &rows,
                );
            }
        }
        JobCommand::Status { name, stale } => {
            let job = ctx
                .client()?
                .call(|ch| {
                    let name = name.clone();
                    async move {
                        JobsClient::new(ch)
                            .get(pb::GetJobRequest { name, stale })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(&job_json(&job));
            } else {
                let spec = job.spec.clone().unwrap_or_default();
                let task = spec.task.clone().unwrap_or_default();
                let res = task.resources.clone().unwrap_or_default();
                println!("name       {}", spec.name);
                println!("status     {}", job.status);
                println!(
                    "version    {} (log index {})",
                    job.version, job.modify_index
                );
                println!(
                    "type       {} x{} ({} placed), priority {}",
                    spec.r#type, spec.count, job.placed, spec.priority
                );
                println!(
                    "driver     {} {} {}",
                    task.driver,
                    task.command,
                    task.args.join(" ")
                );
                println!(
                    "resources  cpu {}m, memory {}, gpus {}",
                    res.cpu_millis,
                    format_memory(res.memory_bytes),
                    res.gpus
                );
                for line in placement_lines(&spec) {
                    println!("{line}");
                }
                if let Some(after) = from_wire_ms(spec.stop_after_disconnect_ms) {
                    println!(
                        "on cut-off nodes  stopped after {} without a coordinator",
                        format_duration(after)
                    );
                }
                println!("submitted  {} UTC", format_time(job.submitted_at_ms));
                println!("updated    {} UTC", format_time(job.updated_at_ms));
                if !job.blocked.is_empty() {
                    println!("blocked    {}", job.blocked);
                }
            }
        }
        JobCommand::Stop { name } => {
            let reply = ctx
                .client()?
                .call(|ch| {
                    let name = name.clone();
                    async move {
                        JobsClient::new(ch)
                            .stop(pb::StopJobRequest { name })
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"name": name, "version": reply.version, "log_index": reply.log_index}),
                );
            } else {
                println!("job {name} stopped (version {})", reply.version);
            }
        }
    }
    Ok(())
}
