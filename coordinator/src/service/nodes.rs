//! `herd node list`.

use std::sync::Arc;

use herd_api::convert::capabilities::drivers_to_proto;
use herd_api::node::NodeInfo;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_server::Nodes;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::machine::command::Command;
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
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::NodeUpdateReply>, Status> {
        let request = request.into_inner();
        let command = match request.deadline_ms {
            0 => Command::DrainNode {
                node: request.name,
                now_ms: 0,
            },
            grace_ms => Command::DrainNodeWithin {
                node: request.name,
                grace_ms,
                now_ms: 0,
            },
        };
        let written = self.coordinator.write(command).await?;
        Ok(Response::new(pb::NodeUpdateReply {
            log_index: written.log_index,
        }))
    }
}
