//! `herd infer SERVICE --prompt-tokens N --max-tokens M [--priority high]`:
//! one request to a SIMULATED LLM inference service. Enters at a node
//! agent (`--via NODE`, else the node of a running instance) and lets it
//! dispatch the request over the fleet (`NodeAgent.Infer` by service: the
//! instance with the lowest virtual usage, on any node; `--alloc` pins
//! one), prints the tokens as they stream, checking their positions, then
//! where the request ran, the time to first token and the time between
//! tokens, on the engine's modelled clock.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use herd_actors::inference::MAX_REQUEST_TOKENS;
use herd_api::client::HerdClient;
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::InferRequest;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_client::NodesClient;
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::print_json;

/// Scheduling class of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PriorityArg {
    /// Served in arrival order.
    Normal,
    /// Admitted first; may preempt normal requests.
    High,
}

/// Arguments of `herd infer`.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// The inference job (driver = "inference").
    pub service: String,
    /// Tokens in the prompt.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_REQUEST_TOKENS as i64))]
    pub prompt_tokens: u32,
    /// Tokens to generate.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_REQUEST_TOKENS as i64))]
    pub max_tokens: u32,
    /// Scheduling class.
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityArg,
    /// A specific allocation of the service instead of the fleet's choice.
    #[arg(long)]
    pub alloc: Option<String>,
    /// The node whose agent the request enters at (default: the node of a
    /// running instance); ignored with --alloc.
    #[arg(long)]
    pub via: Option<String>,
}

/// The allocation to ask (or whose node to enter at) and the address of
/// the agent to enter at.
pub(super) async fn target(
    client: &HerdClient,
    service: &str,
    pinned: Option<&str>,
    via: Option<&str>,
) -> Result<(pb::Alloc, String), CliError> {
    let job = service.to_string();
    let allocs = super::alloc::list_allocs(client, &job, false).await?;
    let alloc = allocs
        .into_iter()
        .filter(|a| a.status == "running" && a.desired == "run")
        .find(|a| pinned.is_none_or(|id| a.id == id))
        .ok_or_else(|| match pinned {
            Some(id) => CliError::input(format!("allocation {id} of {service} is not running")),
            None => CliError::input(format!(
                "service {service} has no running allocation (see herd job status {service})"
            )),
        })?;
    let nodes = client
        .call(|ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: false })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await?;
    // A pinned allocation is asked for at its own node.
    let entry = match (pinned, via) {
        (None, Some(node)) => node,
        _ => alloc.node.as_str(),
    };
    let addr = nodes
        .into_iter()
        .find(|n| n.name == entry)
        .map(|n| n.addr)
        .ok_or_else(|| match via {
            Some(node) if node == entry => {
                CliError::input(format!("node {node} (--via) is not registered"))
            }
            _ => CliError::runtime(format!(
                "node {} of allocation {} is not registered",
                alloc.node, alloc.id
            )),
        })?;
    Ok((alloc, addr))
}

/// The p-th percentile (0..=100) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `herd infer`.
pub async fn run(ctx: &Context, args: InferArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let (alloc, addr) = target(
        &client,
        &args.service,
        args.alloc.as_deref(),
        args.via.as_deref(),
    )
    .await?;
    let channel = herd_api::tls::endpoint(&addr, herd_api::tls::PeerRole::Node)
        .map_err(|e| {
            CliError::runtime(format!(
                "node {} has a bad address {addr:?}: {e}",
                alloc.node
            ))
        })?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| {
            CliError::runtime(format!(
                "cannot reach the agent of node {} at {addr}: {e}",
                alloc.node
            ))
        })?;
    let node_error = |s: tonic::Status| {
        let message = format!("node {}: {}", alloc.node, s.message());
        if s.code() == tonic::Code::InvalidArgument {
            CliError::input(message)
        } else {
            CliError::runtime(message)
        }
    };
    let started = Instant::now();
    let mut stream = NodeAgentClient::with_interceptor(channel, ctx.agent_token()?)
        .infer(InferRequest {
            // Empty: the agent dispatches over the fleet.
            alloc_id: args.alloc.clone().unwrap_or_default(),
            job: args.service.clone(),
            prompt_tokens: args.prompt_tokens,
            max_tokens: args.max_tokens,
            priority: match args.priority {
                PriorityArg::Normal => "normal",
                PriorityArg::High => "high",
            }
            .to_string(),
            ..Default::default()
        })
        .await
        .map_err(node_error)?
        .into_inner();
    let mut ttft_us = None;
    let mut times: Vec<u64> = Vec::new();
    let mut wall_ttft = None;
    let (mut served_alloc, mut served_node) = (alloc.id.clone(), alloc.node.clone());
    while let Some(token) = stream.message().await.map_err(node_error)? {
        if token.index as usize != times.len() {
            return Err(CliError::runtime(format!(
                "token {} arrived where token {} was due",
                token.index,
                times.len()
            )));
        }
        if !token.alloc_id.is_empty() {
            served_alloc = token.alloc_id.clone();
            served_node = token.node.clone();
        }
        if token.ttft_us.is_some() {
            ttft_us = token.ttft_us;
            wall_ttft = Some(started.elapsed());
        }
        if !ctx.json() {
            let since = times.last().map(|t| token.at_us.saturating_sub(*t));
            let mut out = std::io::stdout();
            let line = match (token.ttft_us, since) {
                (Some(ttft), _) => format!(
                    "token {:>5}  first, TTFT {:.1} ms (request {} of {})",
                    token.index,
                    ttft as f64 / 1e3,
                    token.request_id,
                    token.alloc_id
                ),
                (None, Some(gap)) => {
                    format!("token {:>5}  +{:.1} ms", token.index, gap as f64 / 1e3)
                }
                (None, None) => format!("token {:>5}", token.index),
            };
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| CliError::runtime(format!("cannot write: {e}")))?;
        }
        times.push(token.at_us);
    }
    let wall = started.elapsed();
    if times.len() != args.max_tokens as usize {
        return Err(CliError::runtime(format!(
            "the stream ended after {} of {} tokens",
            times.len(),
            args.max_tokens
        )));
    }
    let mut gaps: Vec<f64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64 / 1e3)
        .collect();
    gaps.sort_by(f64::total_cmp);
    let mean = if gaps.is_empty() {
        0.0
    } else {
        gaps.iter().sum::<f64>() / gaps.len() as f64
    };
    let p99 = percentile(&gaps, 99.0);
    let ttft_ms = ttft_us.unwrap_or(0) as f64 / 1e3;
    if ctx.json() {
        print_json(&json!({
            "service": args.service, "alloc_id": served_alloc, "node": served_node,
            "prompt_tokens": args.prompt_tokens, "tokens": times.len(),
            "simulated": true,
            "ttft_ms": ttft_ms, "tbt_mean_ms": mean, "tbt_p99_ms": p99,
            "wall_ttft_ms": wall_ttft.map(|d| d.as_secs_f64() * 1e3),
            "wall_ms": wall.as_secs_f64() * 1e3,
        }));
    } else {
        println!(
            "{} tokens from {} on {} (SIMULATED engine, modelled times): TTFT {ttft_ms:.1} ms, time between tokens mean {mean:.1} ms, p99 {p99:.1} ms; wall clock {:.0} ms",
            times.len(),
            served_alloc,
            served_node,
            wall.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_pick_the_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
