//! `herd node list`.

use std::sync::Arc;

use herd_api::node::NodeInfo;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_server::Nodes;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::handle::Coordinator;

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

fn to_proto(node: &NodeInfo) -> pb::Node {
    pb::Node {
        name: node.name.clone(),
        addr: node.addr.clone(),
        status: node.status.as_str().to_string(),
        capacity: Some(pb::Resources::from(&node.capacity)),
        labels: node.labels.clone().into_iter().collect(),
        registered_at_ms: node.registered_at_ms,
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
        let nodes = self
            .coordinator
            .read_state(|s| s.nodes.values().map(to_proto).collect());
        Ok(Response::new(pb::ListNodesReply { nodes }))
    }
}
