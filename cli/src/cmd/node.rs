//! `herd node list|eligibility|drain`, and the flags of `herd node` that run
//! an agent.

use clap::{Args, Subcommand};
use herd_api::capabilities::MigrationMode;
use herd_api::client::Repeat;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_api::proto::v1::DriverCapabilities;
use herd_api::proto::v1::{
    DrainNodeRequest, DrainedAlloc, ListNodesRequest, NodeUpdateReply, SetEligibilityRequest,
};
use herd_api::resources::display_memory;
use serde_json::{json, Value};

use super::{Context, RIDE_OUT_ELECTIONS};
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
    /// Empty a node: no new work; what can move live moves (same allocation,
    /// to a node the scheduler picks), the rest is placed again elsewhere.
    Drain {
        /// Node name.
        name: String,
        /// Let batch work that cannot move run to completion for up to this
        /// long (e.g. 30m); the rest moves at once. Without it, everything
        /// moves at once.
        #[arg(long, value_parser = herd_api::duration::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Move nothing live: stop everything and place it again elsewhere
        /// (new allocations), as drains did before live moves.
        #[arg(long)]
        no_migrate: bool,
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

/// The GPU backend a node's agent reported (`nvml`, `simulated`, `none`),
/// `unknown` from an agent too old to say; cut short, since it comes from
/// the agent unchecked.
fn gpu_backend(usage: &herd_api::proto::v1::NodeUsage) -> String {
    match usage.gpu_backend.as_str() {
        "" => "unknown".to_string(),
        name => name.chars().take(16).collect(),
    }
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

/// One drained allocation for `-o json`: moving ones carry `target` and
/// `migration`, the others `reason`.
fn drained_json(a: &DrainedAlloc) -> Value {
    if a.migration.is_empty() {
        json!({"alloc": a.alloc, "job": a.job, "reason": a.reason})
    } else {
        json!({"alloc": a.alloc, "job": a.job, "target": a.target, "migration": a.migration})
    }
}

/// `herd node drain -o json`: `{"node", "deadline_ms", "moving": [...],
/// "restarting": [...], "until_deadline": [...]}`.
fn drain_json(name: &str, deadline_ms: u64, reply: &NodeUpdateReply) -> Value {
    let list = |items: &[DrainedAlloc]| items.iter().map(drained_json).collect::<Vec<_>>();
    json!({
        "node": name,
        "deadline_ms": (deadline_ms > 0).then_some(deadline_ms),
        "moving": list(&reply.moving),
        "restarting": list(&reply.restarting),
        "until_deadline": list(&reply.until_deadline),
    })
}

/// `herd node drain`'s answer in words: what moves live (and where), what
/// restarts elsewhere (and why it does not move), what may finish first.
fn print_drain(name: &str, deadline: Option<std::time::Duration>, reply: &NodeUpdateReply) {
    match deadline {
        Some(d) => println!(
            "node {name} draining: batch work that cannot move may run {}s more",
            d.as_secs()
        ),
        None => println!("node {name} draining"),
    }
    if reply.moving.is_empty() && reply.restarting.is_empty() && reply.until_deadline.is_empty() {
        println!("nothing runs there");
        return;
    }
    for m in &reply.moving {
        println!(
            "  {:<15}{} ({}) to {}, {}",
            "moving live", m.alloc, m.job, m.target, m.migration
        );
    }
    for r in &reply.restarting {
        let what = "restarting";
        println!("  {what:<15}{} ({}): {}", r.alloc, r.job, r.reason);
    }
    for r in &reply.until_deadline {
        let what = "until deadline";
        println!("  {what:<15}{} ({}): {}", r.alloc, r.job, r.reason);
    }
    if !reply.moving.is_empty() {
        println!("follow the moves with `herd migration list`");
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
                               "http": (!n.http.is_empty()).then_some(&n.http),
                               "drain_deadline_ms": (n.drain_deadline_ms > 0).then_some(n.drain_deadline_ms),
                               "usage": n.usage.as_ref().map(|u| json!({
                                   "cpu_busy": u.cpu_busy, "memory_available_bytes": u.memory_available_bytes,
                                   "disk_available_bytes": u.disk_available_bytes, "running_allocs": u.running_allocs,
                                   "gpus_simulated": u.gpus_simulated, "gpu_power_watts": u.gpu_power_watts,
                                   "gpu_backend": gpu_backend(u),
                                   "gpus": u.gpus.iter().map(|g| json!({
                                       "index": g.index, "draw_watts": g.draw_watts,
                                       "limit_watts": g.limit_watts, "min_watts": g.min_watts,
                                       "max_watts": g.max_watts, "capped": g.capped,
                                       "class": g.class, "energy_mj": g.energy_mj,
                                   })).collect::<Vec<_>>(),
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
                            n.usage.as_ref().map_or("-".to_string(), gpu_backend),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NAME", "STATUS", "ADDRESS", "CPU(m)", "MEMORY", "GPUS", "CPU BUSY",
                        "MEM FREE", "RUNNING", "MOVES", "GPU API",
                    ],
                    &rows,
                );
            }
        }
        NodeCommand::Eligibility { name, state } => {
            let eligible = state == "on";
            // Safe to send again: it sets the flag, whatever it was.
            client
                .call_patiently(Repeat::Safe, RIDE_OUT_ELECTIONS, |ch| {
                    let request = SetEligibilityRequest {
                        name: name.clone(),
                        eligible,
                    };
                    async move { NodesClient::new(ch).set_eligibility(request).await }
                })
                .await?;
            println!("node {name}: eligibility {state}");
        }
        NodeCommand::Drain {
            name,
            deadline,
            no_migrate,
        } => {
            let deadline_ms =
                deadline.map_or(0, |d| d.as_millis().clamp(1, u64::MAX as u128) as u64);
            let reply = client
                .call(|ch| {
                    let request = DrainNodeRequest {
                        name: name.clone(),
                        deadline_ms,
                        no_migrate,
                    };
                    async move { NodesClient::new(ch).drain(request).await }
                })
                .await?
                .into_inner();
            if ctx.json() {
                print_json(&drain_json(&name, deadline_ms, &reply));
            } else {
                print_drain(&name, deadline, &reply);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_json_lists_moves_with_their_target_and_restarts_with_their_reason() {
        let reply = NodeUpdateReply {
            log_index: 9,
            moving: vec![DrainedAlloc {
                alloc: "a-1".into(),
                job: "train".into(),
                target: "m2".into(),
                migration: "mig-9".into(),
                reason: String::new(),
            }],
            restarting: vec![DrainedAlloc {
                alloc: "a-2".into(),
                job: "tool".into(),
                reason: "m1: its exec driver moves none only".into(),
                ..Default::default()
            }],
            until_deadline: Vec::new(),
        };
        assert_eq!(
            drain_json("m1", 0, &reply),
            json!({
                "node": "m1",
                "deadline_ms": null,
                "moving": [{"alloc": "a-1", "job": "train", "target": "m2", "migration": "mig-9"}],
                "restarting": [{"alloc": "a-2", "job": "tool", "reason": "m1: its exec driver moves none only"}],
                "until_deadline": [],
            })
        );
    }
}
