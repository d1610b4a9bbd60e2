//! The agent API: node agents register here.

use std::sync::Arc;

use herd_api::node::{NodeInfo, NodeStatus};
use herd_api::proto::agent::agent_server::Agent;
use herd_api::proto::agent::{RegisterNodeReply, RegisterNodeRequest};
use herd_api::resources::Resources;
use tonic::{Request, Response, Status};

use crate::command::Command;
use crate::handle::Coordinator;

/// Serves [`Agent`].
pub struct AgentService {
    coordinator: Arc<Coordinator>,
}

impl AgentService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        let request = request.into_inner();
        let capacity = match request.capacity {
            Some(c) => {
                Resources::try_from(c).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            None => return Err(Status::invalid_argument("field `capacity` is missing")),
        };
        let node = NodeInfo {
            name: request.name,
            addr: request.addr,
            capacity,
            labels: request.labels.into_iter().collect(),
            status: NodeStatus::Ready,
            eligible: true,
            registered_at_ms: 0,
        };
        let written = self
            .coordinator
            .write(Command::RegisterNode { node, now_ms: 0 })
            .await?;
        Ok(Response::new(RegisterNodeReply {
            log_index: written.log_index,
        }))
    }
}
