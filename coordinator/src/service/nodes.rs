//! `herd node list`, `eligibility` and `drain`.

use std::sync::Arc;

use herd_api::convert::capabilities::drivers_to_proto;
use herd_api::node::NodeInfo;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_server::Nodes;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::machine::apply::drain::{DrainMove, Unmoved};
use crate::machine::command::{Command, CommandResult};
use crate::state::ClusterState;

/// Serves [`Nodes`].
pub struct NodesService {
    coordinator: Arc<Coordinator>,
}

impl NodesService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

fn to_proto(state: &ClusterState, node: &NodeInfo) -> pb::Node {
    pb::Node {
        drain_deadline_ms: state.drain_deadlines.get(&node.name).copied().unwrap_or(0),
        name: node.name.clone(),
        addr: node.addr.clone(),
        status: node.status.as_str().to_string(),
        capacity: Some(pb::Resources::from(&node.capacity)),
        labels: node.labels.clone().into_iter().collect(),
        registered_at_ms: node.registered_at_ms,
        eligible: node.eligible,
        usage: None,
        heartbeat_age_ms: 0,
        drivers: state
            .node_drivers
            .get(&node.name)
            .map(drivers_to_proto)
            .unwrap_or_default(),
        http: state
            .node_endpoints
            .get(&node.name)
            .and_then(|e| e.get("http").cloned())
            .unwrap_or_default(),
    }
}

fn moving_to_proto(m: DrainMove) -> pb::DrainedAlloc {
    pb::DrainedAlloc {
        alloc: m.alloc_id,
        job: m.job,
        target: m.target,
        migration: m.migration,
        reason: String::new(),
    }
}

fn unmoved_to_proto(u: Unmoved) -> pb::DrainedAlloc {
    pb::DrainedAlloc {
        alloc: u.alloc_id,
        job: u.job,
        reason: u.why,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Nodes for NodesService {
    async fn list(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        self.coordinator
            .read_barrier(consistency(request.into_inner().stale))
            .await?;
        let mut nodes: Vec<pb::Node> = self
            .coordinator
            .read_state(|s| s.nodes.values().map(|n| to_proto(s, n)).collect());
        // Usage lives in the leader's memory only.
        if self.coordinator.is_leader() {
            let liveness = self.coordinator.liveness();
            for node in &mut nodes {
                if let Some((usage, at)) = liveness.usage(&node.name) {
                    node.heartbeat_age_ms = at.elapsed().as_millis() as u64;
                    node.usage = Some(usage);
                }
            }
        }
        Ok(Response::new(pb::ListNodesReply { nodes }))
    }

    async fn set_eligibility(
        &self,
        request: Request<pb::SetEligibilityRequest>,
    ) -> Result<Response<pb::NodeUpdateReply>, Status> {
        let pb::SetEligibilityRequest { name, eligible } = request.into_inner();
        let written = self
            .coordinator
            .write(Command::SetNodeEligibility {
                node: name,
                eligible,
            })
            .await?;
        Ok(Response::new(pb::NodeUpdateReply {
            log_index: written.log_index,
            ..Default::default()
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::NodeUpdateReply>, Status> {
        let request = request.into_inner();
        let command = Command::DrainNodeLive {
            node: request.name,
            grace_ms: request.deadline_ms,
            migrate: !request.no_migrate,
            now_ms: 0,
        };
        let written = self.coordinator.write(command).await?;
        let mut reply = pb::NodeUpdateReply {
            log_index: written.log_index,
            ..Default::default()
        };
        if let CommandResult::NodeDrained(outcome) = written.result {
            reply.moving = outcome.moving.into_iter().map(moving_to_proto).collect();
            reply.restarting = outcome
                .restarting
                .into_iter()
                .map(unmoved_to_proto)
                .collect();
            reply.until_deadline = outcome
                .until_deadline
                .into_iter()
                .map(unmoved_to_proto)
                .collect();
        }
        Ok(Response::new(reply))
    }
}
