//! `herd alloc list|status|logs|migrate`.

use clap::Subcommand;
use herd_api::client::{ClientError, HerdClient};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_client::AllocsClient;
use herd_api::resources::format_memory;
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd alloc`.
#[derive(Subcommand, Debug)]
pub enum AllocCommand {
    /// Allocations, optionally of one job.
    List {
        /// Only this job's allocations.
        #[arg(long)]
        job: Option<String>,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// One allocation with its events.
    Status {
        /// Allocation id.
        id: String,
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// An allocation's output, fetched from the agent of its node.
    Logs {
        /// Allocation id.
        id: String,
        /// Keep printing what is appended, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
        /// Only the last N bytes.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Move a running allocation, keeping its id, to another node while it
    /// runs (VMs, simulated VMs, DL jobs; exec work cannot move live).
    Migrate(super::migration::MigrateArgs),
}

fn alloc_json(a: &pb::Alloc) -> serde_json::Value {
    let res = a.resources.clone().unwrap_or_default();
    json!({
        "id": a.id, "job": a.job, "job_version": a.job_version, "instance": a.instance, "node": a.node,
        "status": a.status, "desired": a.desired, "generation": a.generation, "priority": a.priority,
        "resources": {"cpu_millis": res.cpu_millis, "memory_bytes": res.memory_bytes, "gpus": res.gpus,
                      "gpu_model": res.gpu_model},
        "events": a.events.iter().map(|e| json!({"at_ms": e.at_ms, "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>(),
        "create_index": a.create_index, "modify_index": a.modify_index,
        "gpu_indices": a.gpu_indices,
    })
}

/// The GPUs an allocation holds, as `herd alloc status` shows them: `0,2`,
/// or why there are none to show.
fn gpu_line(a: &pb::Alloc, gpus: u32) -> String {
    match (a.gpu_indices.as_slice(), gpus) {
        (_, 0) => "none".to_string(),
        ([], _) => "not bound (placed before GPU indices)".to_string(),
        (indices, _) => indices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Runs a `herd alloc` subcommand.
pub async fn run(ctx: &Context, command: AllocCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        AllocCommand::List { job, stale } => {
            let job = job.unwrap_or_default();
            let allocs = list_allocs(&client, &job, stale).await?;
            if ctx.json() {
                print_json(&json!(allocs.iter().map(alloc_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = allocs
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.job.clone(),
                            a.instance.to_string(),
                            a.node.clone(),
                            a.status.clone(),
                            a.desired.clone(),
                            a.generation.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "JOB",
                        "INSTANCE",
                        "NODE",
                        "STATUS",
                        "DESIRED",
                        "GENERATION",
                    ],
                    &rows,
                );
            }
        }
        AllocCommand::Logs {
            id,
            follow,
            stderr,
            tail,
        } => logs(&client, ctx.agent_token()?, id, follow, stderr, tail).await?,
        AllocCommand::Migrate(args) => super::migration::migrate(ctx, &client, args).await?,
        AllocCommand::Status { id, stale } => {
            let alloc = client
                .call(|ch| {
                    let request = pb::GetAllocRequest {
                        id: id.clone(),
                        stale,
                    };
                    async move {
                        AllocsClient::new(ch)
                            .get(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(&alloc_json(&alloc));
            } else {
                let res = alloc.resources.clone().unwrap_or_default();
                println!("id          {}", alloc.id);
                println!(
                    "job         {} (version {}, instance {})",
                    alloc.job, alloc.job_version, alloc.instance
                );
                println!("node        {}", alloc.node);
                println!("status      {} (desired: {})", alloc.status, alloc.desired);
                println!("generation  {}", alloc.generation);
                println!(
                    "resources   cpu {}m, memory {}, gpus {}",
                    res.cpu_millis,
                    format_memory(res.memory_bytes),
                    res.gpus
                );
                println!("gpu indices {}", gpu_line(&alloc, res.gpus));
                println!("events:");
                for event in &alloc.events {
                    println!(
                        "  {} UTC  {:<10} {}",
                        format_time(event.at_ms),
                        event.kind,
                        event.detail
                    );
                }
            }
        }
    }
    Ok(())
}

/// Finds the allocation's node, then streams the log from that node's agent.
async fn logs(
    client: &herd_api::client::HerdClient,
    token: herd_api::client::BearerToken,
    id: String,
    follow: bool,
    stderr: bool,
    tail: Option<u64>,
) -> Result<(), CliError> {
    use herd_api::proto::agent::node_agent_client::NodeAgentClient;
    use herd_api::proto::agent::AllocLogsRequest;
    use herd_api::proto::v1::nodes_client::NodesClient;
    use std::io::Write;

    let alloc = client
        .call(|ch| {
            let request = pb::GetAllocRequest {
                id: id.clone(),
                stale: false,
            };
            async move {
                AllocsClient::new(ch)
                    .get(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
    let nodes = client
        .call(|ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: false })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await?;
    let node = nodes
        .into_iter()
        .find(|n| n.name == alloc.node)
        .ok_or_else(|| {
            CliError::runtime(format!(
                "node {} of allocation {id} is not registered",
                alloc.node
            ))
        })?;
    let channel = herd_api::tls::node_endpoint(&node.addr, &node.name)
        .map_err(|e| {
            CliError::runtime(format!(
                "node {} has a bad address {:?}: {e}",
                node.name, node.addr
            ))
        })?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| {
            CliError::runtime(format!(
                "cannot reach the agent of node {} at {}: {e}",
                node.name, node.addr
            ))
        })?;
    let mut stream = NodeAgentClient::with_interceptor(channel, token)
        .alloc_logs(AllocLogsRequest {
            alloc_id: id.clone(),
            stream: if stderr { "stderr" } else { "stdout" }.to_string(),
            follow,
            tail_bytes: tail.unwrap_or(0),
        })
        .await
        .map_err(|s| CliError::runtime(format!("node {}: {}", node.name, s.message())))?
        .into_inner();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| CliError::runtime(format!("node {}: {}", node.name, s.message())))?
    {
        let mut out = std::io::stdout();
        out.write_all(&chunk.data)
            .and_then(|()| out.flush())
            .map_err(|e| CliError::runtime(format!("cannot write the log: {e}")))?;
    }
    Ok(())
}

/// The allocations of `job` (every job's when empty), linearizable unless
/// `stale`: what `alloc list`, `job run`'s follow and `infer` all ask.
pub(crate) async fn list_allocs(
    client: &HerdClient,
    job: &str,
    stale: bool,
) -> Result<Vec<pb::Alloc>, ClientError> {
    client
        .call(|ch| {
            let request = pb::ListAllocsRequest {
                job: job.to_string(),
                stale,
            };
            async move {
                AllocsClient::new(ch)
                    .list(request)
                    .await
                    .map(|r| r.into_inner().allocs)
            }
        })
        .await
}
