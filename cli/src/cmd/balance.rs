//! `herd balance status`: how evenly the node agents see the load spread,
//! as one agent learned it by gossip (docs/balancing.md).
//!
//! The answer comes from an agent, not from the coordinators: balancing
//! runs among the agents and keeps running while the coordinators are
//! away, so `--agent HOST:PORT` asks one directly. Without it the
//! coordinators' node list names the agents, tried in turn.

use std::time::Duration;

use clap::{Args, Subcommand};
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::{BalanceStatusReply, BalanceStatusRequest};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_client::NodesClient;
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::print_table;

/// Longest one agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// `herd balance ...`.
#[derive(Subcommand)]
pub enum BalanceCommand {
    /// One agent's view of the fleet's load: every node it knows, how old
    /// its news of each is, the spread (max/mean, coefficient of
    /// variation) and the moves per minute.
    Status(StatusArgs),
}

/// `herd balance status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Ask this agent (`HOST:PORT` of its gRPC address) directly; works
    /// with every coordinator down.
    #[arg(long)]
    agent: Option<String>,
    /// Ask the agent of this node (its address from the coordinators).
    #[arg(long, conflicts_with = "agent")]
    node: Option<String>,
}

/// Runs a `herd balance` command.
pub async fn run(ctx: &Context, command: BalanceCommand) -> Result<(), CliError> {
    match command {
        BalanceCommand::Status(args) => status(ctx, args).await,
    }
}

async fn status(ctx: &Context, args: StatusArgs) -> Result<(), CliError> {
    let agents: Vec<(String, String)> = match args.agent {
        Some(addr) => {
            herd_api::config_file::check_host_port(&addr)
                .map_err(|e| CliError::input(format!("--agent: {e}")))?;
            vec![(addr.clone(), addr)]
        }
        None => ready_agents(ctx, args.node.as_deref()).await?,
    };
    let mut errors = Vec::new();
    for (name, addr) in &agents {
        match ask(addr, ctx.agent_token()?).await {
            Ok(reply) => {
                print(ctx, &reply);
                return Ok(());
            }
            Err(e) => errors.push(format!("{name} ({addr}): {e}")),
        }
    }
    Err(CliError::runtime(format!(
        "no agent answered: {}",
        errors.join("; ")
    )))
}

/// The agents the coordinators list as ready (`only` of them, if given).
async fn ready_agents(
    ctx: &Context,
    only: Option<&str>,
) -> Result<Vec<(String, String)>, CliError> {
    let client = ctx.client()?;
    let nodes = client
        .call(|ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: true })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await?;
    let agents: Vec<(String, String)> = nodes
        .into_iter()
        .filter(|n| only.is_none_or(|name| n.name == name))
        .filter(|n| only.is_some() || n.status == "ready")
        .map(|n| (n.name, n.addr))
        .collect();
    match (agents.is_empty(), only) {
        (true, Some(name)) => Err(CliError::input(format!("no node named {name:?}"))),
        (true, None) => Err(CliError::runtime(
            "no ready node to ask; name an agent with --agent HOST:PORT",
        )),
        (false, _) => Ok(agents),
    }
}

async fn ask(
    addr: &str,
    token: herd_api::client::BearerToken,
) -> Result<BalanceStatusReply, String> {
    let channel = herd_api::tls::endpoint(addr, herd_api::tls::PeerRole::Node)
        .map_err(|e| format!("bad address: {e}"))?
        .connect_timeout(AGENT_TIMEOUT)
        .timeout(AGENT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    NodeAgentClient::with_interceptor(channel, token)
        .balance_status(BalanceStatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

fn print(ctx: &Context, reply: &BalanceStatusReply) {
    if ctx.json() {
        let nodes: Vec<_> = reply
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "name": n.name,
                    "load": n.load,
                    "view_age_ms": n.view_age_ms,
                    "state": n.state,
                    "addr": n.addr,
                })
            })
            .collect();
        crate::output::print_json(&json!({
            "agent": reply.node,
            "enabled": reply.enabled,
            "nodes": nodes,
            "max_over_mean": reply.max_over_mean,
            "cv": reply.cv,
            "moves_per_minute": reply.moves_per_minute,
        }));
        return;
    }
    if !reply.enabled {
        println!("balancing is off on the agent of {}", reply.node);
        return;
    }
    let rows: Vec<Vec<String>> = reply
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:.1}", n.load),
                n.view_age_ms.to_string(),
                n.state.clone(),
                n.addr.clone(),
            ]
        })
        .collect();
    print_table(&["NODE", "LOAD", "VIEW AGE MS", "STATE", "ADDR"], &rows);
    println!(
        "\nas seen by {}: max/mean {:.2}, cv {:.3}, {:.0} moves/min",
        reply.node, reply.max_over_mean, reply.cv, reply.moves_per_minute
    );
}
