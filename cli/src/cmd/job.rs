//! `herd job run|list|status|stop|migrate`.

use std::io::Read;
use std::time::Duration;

use clap::Subcommand;
use herd_api::client::{HerdClient, Repeat};
use herd_api::duration::{format_duration, from_wire_ms, parse_duration};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::jobs_client::JobsClient;
use herd_api::resources::format_memory;
use herd_api::spec_file::parse_job_spec;
use serde_json::json;

use super::{Context, RIDE_OUT_ELECTIONS};
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd job`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job spec (TOML); resubmitting a name makes a new version.
    /// Then follow it until every instance is placed (exit 0) or report why
    /// it is blocked once `--timeout` has passed (exit 1), so that a script
    /// or a person knows the work has a home before moving on.
    Run {
        /// Spec file, or `-` for standard input.
        file: String,
        /// Return as soon as the job is accepted, without waiting for its
        /// placement (the job is still scheduled).
        #[arg(long)]
        detach: bool,
        /// How long to wait for every instance to be placed before exiting
        /// non-zero with the scheduler's reason (e.g. 30s, 2m). The job stays
        /// submitted either way.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
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
    /// Move a gang job live: every member to its own node, its learners
    /// stopped at one common step, all moved or none (docs/dljob.md).
    Migrate(super::gang_migrate::JobMigrateArgs),
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
        "request_id": if job.request_id.is_empty() { serde_json::Value::Null } else { json!(job.request_id) },
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
            "power_class": if spec.power_class.is_empty() { "max" } else { spec.power_class.as_str() },
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
    if !spec.power_class.is_empty() {
        lines.push(format!("power      class {}", spec.power_class));
    }
    lines
}

/// Runs a `herd job` subcommand.
pub async fn run(ctx: &Context, command: JobCommand) -> Result<(), CliError> {
    match command {
        JobCommand::Run {
            file,
            detach,
            timeout,
        } => {
            let (text, name) = read_spec(&file)?;
            let spec = parse_job_spec(&text, &name).map_err(CliError::input)?;
            let client = ctx.client()?;
            let request = pb::SubmitJobRequest {
                spec: Some(pb::JobSpec::from(&spec)),
            };
            // Safe to send again: a spec identical to the job's current one
            // is applied once ("unchanged"), so an election under way while
            // it was in flight costs a retry, not a failed command.
            let tries = std::sync::atomic::AtomicUsize::new(0);
            let reply = client
                .call_patiently(Repeat::Safe, RIDE_OUT_ELECTIONS, |ch| {
                    let request = request.clone();
                    tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        JobsClient::new(ch)
                            .submit(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            let submitted = json!({"name": spec.name, "version": reply.version,
                                   "changed": reply.changed, "log_index": reply.log_index,
                                   "request_id": reply.request_id});
            if !ctx.json() {
                if reply.changed {
                    println!(
                        "job {} submitted: version {} (log index {}, request {})",
                        spec.name, reply.version, reply.log_index, reply.request_id
                    );
                } else if tries.load(std::sync::atomic::Ordering::Relaxed) > 1 {
                    // The first try's answer was lost to an election: it
                    // may be the one that made this version.
                    println!(
                        "job {} at version {}: submitted, or identical already (an election \
                         interrupted the first try and its answer was lost; request {})",
                        spec.name, reply.version, reply.request_id
                    );
                } else {
                    println!(
                        "job {} unchanged: version {} is identical (request {})",
                        spec.name, reply.version, reply.request_id
                    );
                }
            }
            if detach {
                if ctx.json() {
                    print_json(&submitted);
                }
                return Ok(());
            }
            let outcome = follow(&client, &spec.name, reply.version, timeout, !ctx.json()).await?;
            if ctx.json() {
                let mut doc = submitted;
                if let Some(fields) = doc.as_object_mut() {
                    fields.insert("outcome".into(), json!(outcome.state.name()));
                    fields.insert("placed".into(), json!(outcome.placed));
                    fields.insert("count".into(), json!(outcome.count));
                    fields.insert("status".into(), json!(outcome.status));
                    fields.insert(
                        "blocked".into(),
                        if outcome.blocked.is_empty() {
                            serde_json::Value::Null
                        } else {
                            json!(outcome.blocked)
                        },
                    );
                }
                print_json(&doc);
            }
            outcome.verdict(&spec.name, reply.version, timeout, !ctx.json())?;
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
            let client = ctx.client()?;
            let job = get_job(&client, &name, stale).await?;
            let fallback = super::reschedule::status::fallback_record(
                &client,
                &name,
                job.version,
                !job.blocked.is_empty(),
                stale,
            )
            .await;
            if ctx.json() {
                let mut value = job_json(&job);
                value["placement_fallback"] = json!(fallback);
                print_json(&value);
            } else {
                let spec = job.spec.clone().unwrap_or_default();
                let task = spec.task.clone().unwrap_or_default();
                let res = task.resources.clone().unwrap_or_default();
                println!("name       {}", spec.name);
                println!("status     {}", job.status);
                if job.request_id.is_empty() {
                    println!(
                        "version    {} (log index {})",
                        job.version, job.modify_index
                    );
                } else {
                    println!(
                        "version    {} (log index {}, request {})",
                        job.version, job.modify_index, job.request_id
                    );
                }
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
                if let Some(record) = &fallback {
                    println!("{}", super::reschedule::status::fallback_line(record));
                }
            }
        }
        JobCommand::Stop { name } => {
            // Safe to send again: stopping a stopped job changes nothing.
            let reply = ctx
                .client()?
                .call_patiently(Repeat::Safe, RIDE_OUT_ELECTIONS, |ch| {
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
                    &json!({"name": name, "version": reply.version, "log_index": reply.log_index,
                            "request_id": reply.request_id}),
                );
            } else {
                println!(
                    "job {name} stopped (version {}, request {})",
                    reply.version, reply.request_id
                );
            }
        }
        JobCommand::Migrate(args) => super::gang_migrate::run(ctx, args).await?,
    }
    Ok(())
}

/// How often `herd job run` looks at its job while following it: often
/// enough that it returns soon after placement, rare enough to cost the
/// coordinators nothing.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Where a followed job stands, as `herd job run` judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowState {
    /// Some instances have no allocation yet.
    Waiting,
    /// Every instance has a live (pending or running) or completed allocation.
    Placed,
    /// A batch job that ran to completion (perhaps before we looked).
    Complete,
    /// A batch job with an instance that used up its attempts.
    Failed,
    /// Stopped by someone while we followed it.
    Stopped,
    /// A newer version was submitted meanwhile: that one is followed by its
    /// own submitter.
    Superseded,
}

impl FollowState {
    /// The stable name in `--output json` (`outcome`).
    fn name(self) -> &'static str {
        match self {
            FollowState::Waiting => "blocked",
            FollowState::Placed => "placed",
            FollowState::Complete => "complete",
            FollowState::Failed => "failed",
            FollowState::Stopped => "stopped",
            FollowState::Superseded => "superseded",
        }
    }
}

/// One look at a followed job: its state and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FollowOutcome {
    state: FollowState,
    /// Instances of the followed version placed (or complete).
    placed: u32,
    /// Instances the followed version asks for.
    count: u32,
    /// The job's status as the coordinators report it.
    status: String,
    /// The scheduler's reason why instances are unplaced, when it gave one.
    blocked: String,
    /// The job's current version (differs from ours when superseded).
    version: u64,
}

impl FollowOutcome {
    /// The progress line printed when it changes.
    fn progress_line(&self, name: &str) -> String {
        let mut line = format!(
            "job {name}: {}/{} instances placed ({})",
            self.placed, self.count, self.status
        );
        if !self.blocked.is_empty() {
            line.push_str(&format!("; blocked: {}", self.blocked));
        }
        line
    }

    /// Ok when the followed submission reached a good end; otherwise the
    /// error `herd job run` exits with, saying why and what to do next.
    fn verdict(
        &self,
        name: &str,
        version: u64,
        timeout: Duration,
        announce: bool,
    ) -> Result<(), CliError> {
        let say = |line: String| {
            if announce {
                println!("{line}");
            }
        };
        match self.state {
            FollowState::Placed => {
                say(format!(
                    "job {name}: all {} instances placed (`herd alloc list --job {name}`)",
                    self.count
                ));
                Ok(())
            }
            FollowState::Complete => {
                say(format!("job {name}: complete"));
                Ok(())
            }
            FollowState::Superseded => {
                say(format!(
                    "job {name}: version {version} was superseded by version {} while waiting",
                    self.version
                ));
                Ok(())
            }
            FollowState::Stopped => Err(CliError::runtime(format!(
                "job {name} was stopped before all its instances were placed ({}/{})",
                self.placed, self.count
            ))),
            FollowState::Failed => Err(CliError::runtime(format!(
                "job {name} failed: an instance used up its attempts (`herd alloc list --job {name}` shows them)"
            ))),
            FollowState::Waiting => {
                let why = if self.blocked.is_empty() {
                    "the scheduler has not placed them yet and gave no reason".to_string()
                } else {
                    format!("blocked: {}", self.blocked)
                };
                Err(CliError::runtime(format!(
                    "job {name}: {}/{} instances placed after {}; {why}. The job stays submitted: \
                     `herd job status {name}` follows it, `herd job stop {name}` withdraws it",
                    self.placed,
                    self.count,
                    format_duration(timeout)
                )))
            }
        }
    }
}

/// Judges `job` (followed at `version`) from its allocations: an instance
/// counts as placed when an allocation of that version is meant to run and
/// holds its place (pending or running), or has completed.
fn judge(version: u64, job: &pb::Job, allocs: &[pb::Alloc]) -> FollowOutcome {
    let count = job.spec.as_ref().map_or(0, |s| s.count);
    let mut instances = std::collections::BTreeSet::new();
    for alloc in allocs.iter().filter(|a| a.job_version == version) {
        let live = alloc.desired == "run" && matches!(alloc.status.as_str(), "pending" | "running");
        if live || alloc.status == "complete" {
            instances.insert(alloc.instance);
        }
    }
    let placed = u32::try_from(instances.len()).unwrap_or(u32::MAX);
    let state = if job.version != version {
        FollowState::Superseded
    } else {
        match job.status.as_str() {
            "complete" => FollowState::Complete,
            "failed" => FollowState::Failed,
            "stopped" => FollowState::Stopped,
            _ if placed >= count => FollowState::Placed,
            _ => FollowState::Waiting,
        }
    };
    FollowOutcome {
        state,
        placed,
        count,
        status: job.status.clone(),
        blocked: job.blocked.clone(),
        version: job.version,
    }
}

/// Whether a failed read while following is worth another try: the
/// coordinators being briefly unreachable or electing must not end the wait.
fn transient(e: &herd_api::client::ClientError) -> bool {
    matches!(
        e.code(),
        None | Some(
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
        )
    )
}

/// Job `name`, linearizable unless `stale`.
async fn get_job(
    client: &HerdClient,
    name: &str,
    stale: bool,
) -> Result<pb::Job, herd_api::client::ClientError> {
    client
        .call(|ch| {
            let name = name.to_string();
            async move {
                JobsClient::new(ch)
                    .get(pb::GetJobRequest { name, stale })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
}

/// One linearizable look at `name` and its allocations.
async fn look(
    client: &HerdClient,
    name: &str,
    version: u64,
) -> Result<FollowOutcome, herd_api::client::ClientError> {
    let job = get_job(client, name, false).await?;
    let allocs = super::alloc::list_allocs(client, name, false).await?;
    Ok(judge(version, &job, &allocs))
}

/// Follows job `name` at `version` until it is placed or ends, or `timeout`
/// passes; prints a line whenever its progress changes (when `announce`).
/// Returns the last look, which says whether the wait succeeded.
async fn follow(
    client: &HerdClient,
    name: &str,
    version: u64,
    timeout: Duration,
    announce: bool,
) -> Result<FollowOutcome, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_line = String::new();
    let mut last: Option<FollowOutcome> = None;
    let mut last_error: Option<String> = None;
    loop {
        match look(client, name, version).await {
            Ok(outcome) => {
                let line = outcome.progress_line(name);
                if announce && outcome.state == FollowState::Waiting && line != last_line {
                    println!("{line}");
                    last_line = line;
                }
                if outcome.state != FollowState::Waiting {
                    return Ok(outcome);
                }
                last = Some(outcome);
            }
            // Kept for the final report if no later look succeeds.
            Err(e) if transient(&e) => last_error = Some(e.to_string()),
            Err(e) => return Err(e.into()),
        }
        if tokio::time::Instant::now() >= deadline {
            return last.ok_or_else(|| {
                CliError::runtime(format!(
                    "job {name}: no answer from the coordinators within {}: {}",
                    format_duration(timeout),
                    last_error.as_deref().unwrap_or("no reply")
                ))
            });
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{judge, FollowState};
    use herd_api::proto::v1 as pb;

    fn job(version: u64, status: &str, count: u32, blocked: &str) -> pb::Job {
        pb::Job {
            spec: Some(pb::JobSpec {
                name: "web".into(),
                count,
                ..Default::default()
            }),
            version,
            status: status.into(),
            blocked: blocked.into(),
            ..Default::default()
        }
    }

    fn alloc(version: u64, instance: u32, status: &str, desired: &str) -> pb::Alloc {
        pb::Alloc {
            job: "web".into(),
            job_version: version,
            instance,
            status: status.into(),
            desired: desired.into(),
            ..Default::default()
        }
    }

    #[test]
    fn placed_only_when_every_instance_of_the_followed_version_holds_a_place() {
        let allocs = [
            alloc(2, 0, "running", "run"),
            alloc(2, 1, "pending", "run"),
            // Older versions, stopping copies and failures do not count.
            alloc(1, 2, "running", "run"),
            alloc(2, 2, "running", "stop"),
            alloc(2, 2, "failed", "run"),
        ];
        let waiting = judge(
            2,
            &job(2, "running", 3, "instance 2: no node fits"),
            &allocs,
        );
        assert_eq!(waiting.state, FollowState::Waiting);
        assert_eq!((waiting.placed, waiting.count), (2, 3));
        assert!(waiting
            .progress_line("web")
            .contains("2/3 instances placed (running); blocked: instance 2: no node fits"));

        let mut all = allocs.to_vec();
        all.push(alloc(2, 2, "complete", "run"));
        let placed = judge(2, &job(2, "running", 3, ""), &all);
        assert_eq!(placed.state, FollowState::Placed);
        assert_eq!(placed.placed, 3);
    }

    #[test]
    fn ends_of_the_job_end_the_wait() {
        assert_eq!(
            judge(2, &job(2, "complete", 2, ""), &[]).state,
            FollowState::Complete
        );
        assert_eq!(
            judge(2, &job(2, "failed", 2, ""), &[]).state,
            FollowState::Failed
        );
        assert_eq!(
            judge(2, &job(2, "stopped", 2, ""), &[]).state,
            FollowState::Stopped
        );
        assert_eq!(
            judge(2, &job(3, "pending", 2, ""), &[]).state,
            FollowState::Superseded
        );
    }

    #[test]
    fn a_blocked_job_fails_naming_the_reason_and_the_way_out() {
        let outcome = judge(
            1,
            &job(1, "pending", 1, "instance 0: no node fits memory 1TiB"),
            &[],
        );
        let err = outcome
            .verdict("web", 1, std::time::Duration::from_secs(3), false)
            .expect_err("blocked is a failure");
        assert_eq!(err.code, 1);
        assert!(
            err.message.contains("0/1 instances placed after 3s"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("blocked: instance 0: no node fits memory 1TiB"),
            "{}",
            err.message
        );
        assert!(err.message.contains("herd job stop web"), "{}", err.message);
        let quiet = judge(1, &job(1, "pending", 1, ""), &[])
            .verdict("web", 1, std::time::Duration::from_secs(3), false)
            .expect_err("unplaced is a failure");
        assert!(
            quiet.message.contains("gave no reason"),
            "{}",
            quiet.message
        );
    }
}
