//! `herd infer-migrate SERVICE --alloc SRC --request ID --to DST`: moves a
//! running request of a SIMULATED LLM service from the engine of
//! allocation SRC to that of DST while it decodes (request live migration,
//! docs/inference.md), through SRC's node agent (`NodeAgent.MigrateRequest`).
//! The request id is on the request's first token (`herd infer -o json`
//! prints it) and in the engine stats. Prints the copy stages, blocks and
//! bytes copied, and the downtime; `-o json` too.

use std::time::Duration;

use clap::Args;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::MigrateRequestRequest;
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Arguments of `herd infer-migrate`.
#[derive(Args, Debug)]
pub struct InferMigrateArgs {
    /// The inference job (driver = "inference").
    pub service: String,
    /// The allocation whose engine runs the request now.
    #[arg(long)]
    pub alloc: String,
    /// The request's id in that engine.
    #[arg(long)]
    pub request: u64,
    /// The allocation (of the same service) to move it to.
    #[arg(long)]
    pub to: String,
}

/// Runs `herd infer-migrate`.
pub async fn run(ctx: &Context, args: InferMigrateArgs) -> Result<(), CliError> {
    if args.alloc == args.to {
        return Err(CliError::input(format!(
            "--to {}: the request already runs on that allocation",
            args.to
        )));
    }
    let client = ctx.client()?;
    let (source, source_addr) =
        super::infer::target(&client, &args.service, Some(&args.alloc), None).await?;
    let (_, target_addr) =
        super::infer::target(&client, &args.service, Some(&args.to), None).await?;
    let channel = herd_api::tls::node_endpoint(&source_addr, &source.node)
        .map_err(|e| CliError::runtime(format!("node {} has a bad address: {e}", source.node)))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| {
            CliError::runtime(format!(
                "cannot reach the agent of node {} at {source_addr}: {e}",
                source.node
            ))
        })?;
    let reply = NodeAgentClient::with_interceptor(channel, ctx.agent_token()?)
        .migrate_request(MigrateRequestRequest {
            alloc_id: args.alloc.clone(),
            request_id: args.request,
            to_alloc: args.to.clone(),
            to_agent: target_addr,
        })
        .await
        .map_err(|s| {
            let message = format!("migrating request {}: {}", args.request, s.message());
            match s.code() {
                tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::FailedPrecondition => CliError::input(message),
                _ => CliError::runtime(message),
            }
        })?
        .into_inner();
    if ctx.json() {
        print_json(&json!({
            "request": args.request,
            "from": args.alloc,
            "to": args.to,
            "stages": reply.stages,
            "blocks": reply.blocks,
            "bytes": reply.bytes,
            "downtime_us": reply.downtime_us,
            "total_us": reply.total_us,
            "verified": reply.verified,
            "switched_at": reply.switched_at,
        }));
    } else {
        println!(
            "request {} moved {} → {} at token {}: {} stages, {} blocks ({} bytes), downtime {:.1} ms, total {:.1} ms, KV verified on the target",
            args.request,
            args.alloc,
            args.to,
            reply.switched_at,
            reply.stages,
            reply.blocks,
            reply.bytes,
            reply.downtime_us as f64 / 1000.0,
            reply.total_us as f64 / 1000.0
        );
    }
    Ok(())
}
