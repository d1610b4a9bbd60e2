//! `herd power budget set|list|remove` and `herd power status`: GPU power
//! budgets per group of nodes (issue 20, POLCA).
//!
//! The service refuses, before proposing anything, what depends on the
//! nodes as they are now: a group no node belongs to, a group without GPUs,
//! a budget below the group's idle GPU power. Apply checks the rest again
//! (group syntax, watts, thresholds): network input is untrusted.

use std::sync::Arc;

use herd_api::power::{check_permille, check_watts, PowerGroup};
use herd_api::power::{DEFAULT_CAP_PERMILLE, DEFAULT_HARD_PERMILLE};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::power_server::Power;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error;
use crate::machine::command::Command;
use crate::power::budget::check_against_nodes;
use crate::power::report::{budget_to_proto, group_status};

/// Serves [`Power`].
pub struct PowerService {
    coordinator: Arc<Coordinator>,
}

impl PowerService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

fn parse_group(text: &str) -> Result<PowerGroup, Status> {
    PowerGroup::parse(text).map_err(|e| error::invalid_argument(format!("group: {e}")))
}

#[tonic::async_trait]
impl Power for PowerService {
    async fn set_budget(
        &self,
        request: Request<pb::SetPowerBudgetRequest>,
    ) -> Result<Response<pb::PowerBudgetReply>, Status> {
        let request = request.into_inner();
        let group = parse_group(&request.group)?;
        check_watts(request.watts).map_err(|e| error::invalid_argument(format!("watts: {e}")))?;
        let cap = match request.cap_permille {
            0 => DEFAULT_CAP_PERMILLE,
            cap => cap,
        };
        let hard = match request.hard_permille {
            0 => DEFAULT_HARD_PERMILLE.max(cap),
            hard => hard,
        };
        check_permille(cap, hard)
            .map_err(|e| error::invalid_argument(format!("thresholds: {e}")))?;
        // Judge the group on every node registered so far.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        if let Some(why) = self
            .coordinator
            .read_state(|s| check_against_nodes(s, &group, request.watts))
        {
            return Err(error::invalid_argument(why));
        }
        let written = self
            .coordinator
            .write(Command::SetPowerBudget {
                group: group.to_string(),
                watts: request.watts,
                cap_permille: cap,
                hard_permille: hard,
                now_ms: 0,
            })
            .await?;
        Ok(Response::new(pb::PowerBudgetReply {
            log_index: written.log_index,
        }))
    }

    async fn remove_budget(
        &self,
        request: Request<pb::RemovePowerBudgetRequest>,
    ) -> Result<Response<pb::PowerBudgetReply>, Status> {
        let group = parse_group(&request.into_inner().group)?;
        let written = self
            .coordinator
            .write(Command::RemovePowerBudget {
                group: group.to_string(),
            })
            .await?;
        Ok(Response::new(pb::PowerBudgetReply {
            log_index: written.log_index,
        }))
    }

    async fn list_budgets(
        &self,
        request: Request<pb::ListPowerBudgetsRequest>,
    ) -> Result<Response<pb::ListPowerBudgetsReply>, Status> {
        self.coordinator
            .read_barrier(consistency(request.into_inner().stale))
            .await?;
        let budgets = self.coordinator.read_state(|s| {
            s.power_budgets
                .iter()
                .map(|(group, budget)| budget_to_proto(s, group, budget))
                .collect()
        });
        Ok(Response::new(pb::ListPowerBudgetsReply { budgets }))
    }

    async fn status(
        &self,
        _request: Request<pb::PowerStatusRequest>,
    ) -> Result<Response<pb::PowerStatusReply>, Status> {
        // Draw comes from heartbeats, which only the leader holds.
        if !self.coordinator.is_leader() {
            return Err(error::not_leader(
                &self.coordinator,
                format!(
                    "coordinator {} is not the leader; power status comes from the leader's heartbeats",
                    self.coordinator.id()
                ),
            ));
        }
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let liveness = self.coordinator.liveness().clone();
        let ttl = liveness.ttl();
        let groups = self.coordinator.read_state(|s| {
            group_status(s, |node| {
                // A report older than the node TTL says nothing of now.
                liveness
                    .usage(node)
                    .filter(|(_, at)| at.elapsed() <= ttl)
                    .map(|(usage, _)| usage)
            })
        });
        Ok(Response::new(pb::PowerStatusReply { groups }))
    }
}
