//! `herd node list|eligibility|drain`, and the flags of `herd node` that run
//! an agent.

use clap::{Args, Subcommand};
use herd_api::capabilities::MigrationMode;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::DriverCapabilities;
use herd_api::proto::v1::{DrainNodeRequest, ListNodesRequest, SetEligibilityRequest};
use herd_api::resources::display_memory;
use serde_json::{json, Value};

use super::Context;
use crate::exit::CliError;
use crate::output::{print_json, print_table};

/// `herd node`: with a subcommand, a client command; without, the agent.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// A client command about nodes.
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// Flags of the node agent.
    #[command(flatten)]
    pub agent: super::agent::AgentArgs,
}

/// Subcommands of `herd node`.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Registered node agents.
    List {
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// Stop placing new work on a node (`off`), or allow it again (`on`, which also ends a drain); what runs stays.
    Eligibility {
        /// Node name.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Empty a node: no new work, and its allocations are placed again elsewhere.
    Drain {
        /// Node name.
        name: String,
        /// Let batch work run to completion for up to this long (e.g. 30m);
        /// service work moves at once. Without it, everything moves at once.
        #[arg(long, value_parser = herd_api::duration::parse_duration)]
        deadline: Option<std::time::Duration>,
    },
}

/// A node's drivers for `-o json`: `{"vm": {"migration": "live", "pause":
/// true, "power_cap": false}, ...}`, or null when its agent did not say (an
/// agent older than driver capabilities): scripts can tell "cannot move"
/// from "unknown".
fn drivers_json(drivers: &[DriverCapabilities]) -> Value {
    if drivers.is_empty() {
        return Value::Null;
    }
    let map: serde_json::Map<String, Value> = drivers
        .iter()
        .map(|d| {
            let caps =
                json!({"migration": d.migration, "pause": d.pause, "power_cap": d.power_cap});
            (d.driver.clone(), caps)
        })
        .collect();
    Value::Object(map)
}

/// The table's short MOVES column: the drivers whose workloads can move
/// without a restart (`dljob,vm`), `-` when none can, `unknown` when the
/// node's agent did not say.
fn movable_drivers(drivers: &[DriverCapabilities]) -> String {
    if drivers.is_empty() {
        return "unknown".to_string();
    }
    let movable: Vec<&str> = drivers
        .iter()
        .filter(|d| d.migration != MigrationMode::None.as_str())
        .map(|d| d.driver.as_str())
        .collect();
    if movable.is_empty() {
        "-".to_string()
    } else {
        movable.join(",")
    }
}

/// Runs a `herd node` subcommand.
pub async fn run(ctx: &Context, command: NodeCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        NodeCommand::List { stale } => {
            // The leader answers when it can: only it knows heartbeat usage.
            let client = if stale {
                client
            } else {
                client.with_leader_routing()
            };
            let nodes = client
                .call_leader(|ch| async move {
                    NodesClient::new(ch)
                        .list(ListNodesRequest { stale })
                        .await
                        .map(|r| r.into_inner().nodes)
                })
                .await?;
            if ctx.json() {
                let list: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        let cap = n.capacity.clone().unwrap_or_default();
                        json!({"name": n.name, "addr": n.addr, "status": n.status, "eligible": n.eligible, "labels": n.labels,
                               "drain_deadline_ms": (n.drain_deadline_ms > 0).then_some(n.drain_deadline_ms),
                               "usage": n.usage.as_ref().map(|u| json!({
                                   "cpu_busy": u.cpu_busy, "memory_available_bytes": u.memory_available_bytes,
                                   "disk_available_bytes": u.disk_available_bytes, "running_allocs": u.running_allocs,
                                   "gpus_simulated": u.gpus_simulated, "gpu_power_watts": u.gpu_power_watts,
                                   "heartbeat_age_ms": n.heartbeat_age_ms})),
                               "capacity": {"cpu_millis": cap.cpu_millis, "memory_bytes": cap.memory_bytes,
                                            "gpus": cap.gpus, "gpu_model": cap.gpu_model},
                               "drivers": drivers_json(&n.drivers)})
                    })
                    .collect();
                print_json(&json!(list));
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        let cap = n.capacity.clone().unwrap_or_default();
                        vec![
                            n.name.clone(),
                            match n.drain_deadline_ms {
                                0 => n.status.clone(),
                                at => format!(
                                    "{} (until {} UTC)",
                                    n.status,
                                    crate::output::format_time(at)
                                ),
                            },
                            n.addr.clone(),
                            cap.cpu_millis.to_string(),
                            display_memory(cap.memory_bytes),
                            match (cap.gpus, &n.usage) {
                                (0, _) => "0".to_string(),
                                (g, Some(u)) if u.gpus_simulated => {
                                    format!("{g} {} (simulated)", cap.gpu_model)
                                }
                                (g, _) => format!("{g} {}", cap.gpu_model),
                            },
                            n.usage
                                .as_ref()
                                .map_or("-".to_string(), |u| format!("{:.0}%", u.cpu_busy * 100.0)),
                            n.usage.as_ref().map_or("-".to_string(), |u| {
                                display_memory(u.memory_available_bytes)
                            }),
                            n.usage
                                .as_ref()
                                .map_or("-".to_string(), |u| u.running_allocs.to_string()),
                            movable_drivers(&n.drivers),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAME", "STATUS", "ADDRESS", "CPU(m)", "MEMORY", "GPUS", "CPU BUSY",
                        "MEM FREE", "RUNNING", "MOVES",
                    ],
                    &rows,
                );
            }
        }
        NodeCommand::Eligibility { name, state } => {
            let eligible = state == "on";
            client
                .call(|ch| {
                    let request = SetEligibilityRequest {
                        name: name.clone(),
                        eligible,
                    };
                    async move { NodesClient::new(ch).set_eligibility(request).await }
                })
                .await?;
            println!("node {name}: eligibility {state}");
        }
        NodeCommand::Drain { name, deadline } => {
            let deadline_ms =
                deadline.map_or(0, |d| d.as_millis().clamp(1, u64::MAX as u128) as u64);
            client
                .call(|ch| {
                    let request = DrainNodeRequest {
                        name: name.clone(),
                        deadline_ms,
                    };
                    async move { NodesClient::new(ch).drain(request).await }
                })
                .await?;
            match deadline {
                Some(d) => println!(
                    "node {name} draining: services are placed elsewhere now, batch work within {}s",
                    d.as_secs()
                ),
                None => println!("node {name} draining: its allocations are placed elsewhere"),
            }
        }
    }
    Ok(())
}
