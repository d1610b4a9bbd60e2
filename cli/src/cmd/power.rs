//! `herd power budget set|list|remove` and `herd power status`: GPU power
//! budgets per group of nodes, enforced by each node's PowerGovernor
//! (issue 20, POLCA; see docs/power.md).

use clap::Subcommand;
use herd_api::client::Repeat;
use herd_api::power::{check_watts, PowerGroup};
use herd_api::proto::v1::power_client::PowerClient;
use herd_api::proto::v1::{
    ListPowerBudgetsRequest, PowerStatusRequest, RemovePowerBudgetRequest, SetPowerBudgetRequest,
};
use serde_json::json;

use super::Context;
use crate::exit::CliError;
use crate::output::{format_time, print_json, print_table};

/// Subcommands of `herd power`.
#[derive(Subcommand, Debug)]
pub enum PowerCommand {
    /// Set, list or remove the power budgets of groups of nodes.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Per group: budget, measured GPU draw, headroom, capped GPUs and the
    /// nodes' latest power events (from the leader's heartbeats).
    Status,
}

/// Subcommands of `herd power budget`.
#[derive(Subcommand, Debug)]
pub enum BudgetCommand {
    /// Set (or replace) a group's GPU power budget.
    Set {
        /// `cluster` (every node) or a node label `key=value` (e.g. rack=r1).
        group: String,
        /// Watts the group's GPUs may draw together.
        #[arg(long)]
        watts: u64,
        /// Cap low-priority GPUs above this fraction of the budget.
        #[arg(long, default_value_t = 0.90)]
        cap_at: f64,
        /// Cap every GPU, inference last, above this fraction of the budget.
        #[arg(long, default_value_t = 0.97)]
        hard_at: f64,
    },
    /// The budgets in force.
    List {
        /// Answer from the first coordinator's own state.
        #[arg(long)]
        stale: bool,
    },
    /// Remove a group's budget (its nodes' caps are released).
    Remove {
        /// The group, as set.
        group: String,
    },
}

/// `fraction` (e.g. 0.9) in thousandths, or a bad-input error naming `flag`.
fn permille(flag: &str, fraction: f64) -> Result<u32, CliError> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
        return Err(CliError::input(format!(
            "{flag}: must be a fraction of the budget in (0, 1], got {fraction}"
        )));
    }
    Ok((fraction * 1000.0).round() as u32)
}

/// Runs a `herd power` subcommand.
pub async fn run(ctx: &Context, command: PowerCommand) -> Result<(), CliError> {
    let client = ctx.client()?;
    match command {
        PowerCommand::Budget(BudgetCommand::Set {
            group,
            watts,
            cap_at,
            hard_at,
        }) => {
            // Checked here first: bad input never reaches a coordinator.
            let group = PowerGroup::parse(&group).map_err(CliError::input)?;
            check_watts(watts).map_err(|e| CliError::input(format!("--watts: {e}")))?;
            let cap = permille("--cap-at", cap_at)?;
            let hard = permille("--hard-at", hard_at)?;
            herd_api::power::check_permille(cap, hard).map_err(CliError::input)?;
            let request = SetPowerBudgetRequest {
                group: group.to_string(),
                watts,
                cap_permille: cap,
                hard_permille: hard,
            };
            // Setting the same budget twice is one budget.
            let reply = client
                .call_as(Repeat::Safe, |ch| {
                    let request = request.clone();
                    async move {
                        PowerClient::new(ch)
                            .set_budget(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(
                    &json!({"group": group.to_string(), "budget_watts": watts, "log_index": reply.log_index}),
                );
            } else {
                println!("power budget of group {group}: {watts} W");
            }
        }
        PowerCommand::Budget(BudgetCommand::List { stale }) => {
            let budgets = client
                .call_as(Repeat::Safe, |ch| async move {
                    PowerClient::new(ch)
                        .list_budgets(ListPowerBudgetsRequest { stale })
                        .await
                        .map(|r| r.into_inner().budgets)
                })
                .await?;
            if ctx.json() {
                let list: Vec<_> = budgets
                    .iter()
                    .map(|b| {
                        json!({"group": b.group, "budget_watts": b.watts,
                               "cap_fraction": f64::from(b.cap_permille) / 1000.0,
                               "hard_fraction": f64::from(b.hard_permille) / 1000.0,
                               "nodes": b.nodes, "idle_watts": b.idle_watts,
                               "set_at_ms": b.set_at_ms})
                    })
                    .collect();
                print_json(&json!(list));
            } else {
                let rows: Vec<Vec<String>> = budgets
                    .iter()
                    .map(|b| {
                        vec![
                            b.group.clone(),
                            b.watts.to_string(),
                            format!("{:.1}%", f64::from(b.cap_permille) / 10.0),
                            format!("{:.1}%", f64::from(b.hard_permille) / 10.0),
                            b.nodes.to_string(),
                            format!("{:.0}", b.idle_watts),
                            format_time(b.set_at_ms),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "GROUP",
                        "BUDGET_W",
                        "CAP_AT",
                        "HARD_AT",
                        "NODES",
                        "IDLE_W",
                        "SET (UTC)",
                    ],
                    &rows,
                );
            }
        }
        PowerCommand::Budget(BudgetCommand::Remove { group }) => {
            let group = PowerGroup::parse(&group).map_err(CliError::input)?;
            let request = RemovePowerBudgetRequest {
                group: group.to_string(),
            };
            let reply = client
                .call(|ch| {
                    let request = request.clone();
                    async move {
                        PowerClient::new(ch)
                            .remove_budget(request)
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if ctx.json() {
                print_json(&json!({"group": group.to_string(), "log_index": reply.log_index}));
            } else {
                println!("power budget of group {group} removed");
            }
        }
        PowerCommand::Status => {
            // Only the leader holds the heartbeats draw is summed from.
            let groups = client
                .with_leader_routing()
                .call_leader_as(Repeat::Safe, |ch| async move {
                    PowerClient::new(ch)
                        .status(PowerStatusRequest {})
                        .await
                        .map(|r| r.into_inner().groups)
                })
                .await?;
            if ctx.json() {
                let list: Vec<_> = groups
                    .iter()
                    .map(|g| {
                        let budget = g.budget.clone().unwrap_or_default();
                        json!({"group": budget.group, "budget_watts": budget.watts,
                               "draw_watts": g.draw_watts, "headroom_watts": g.headroom_watts,
                               "capped_gpus": g.capped_gpus,
                               "nodes": budget.nodes, "reporting_nodes": g.reporting_nodes,
                               "events": g.events.iter().map(|e| json!({
                                   "at_ms": e.at_ms, "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>()})
                    })
                    .collect();
                print_json(&json!(list));
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        let budget = g.budget.clone().unwrap_or_default();
                        vec![
                            budget.group,
                            budget.watts.to_string(),
                            format!("{:.0}", g.draw_watts),
                            format!("{:.0}", g.headroom_watts),
                            g.capped_gpus.to_string(),
                            format!("{}/{}", g.reporting_nodes, budget.nodes),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "GROUP",
                        "BUDGET_W",
                        "DRAW_W",
                        "HEADROOM_W",
                        "CAPPED",
                        "REPORTING",
                    ],
                    &rows,
                );
                for g in &groups {
                    let group = g.budget.as_ref().map(|b| b.group.as_str()).unwrap_or("");
                    for e in g.events.iter().rev().take(5).rev() {
                        println!(
                            "{group}  {} UTC  {}  {}",
                            format_time(e.at_ms),
                            e.kind,
                            e.detail
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
