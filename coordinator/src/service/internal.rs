//! Coordinator-to-coordinator RPCs: Raft, forwarding, read-index, identity.

use std::sync::Arc;

use herd_api::proto::internal::internal_server::Internal;
use herd_api::proto::internal::{
    IdentityReply, IdentityRequest, RaftEnvelope, ReadIndexReply, ReadIndexRequest,
};
use herd_consensus::{codec, rpc};
use tonic::{Request, Response, Status};

use crate::coordinator::Coordinator;
use crate::error::{self, CoordinatorError};
use crate::routing::forward::{ForwardError, LeaderReply, LeaderRequest};

/// The Raft RPCs [`InternalService::serve_raft`] serves alike.
#[derive(Debug, Clone, Copy)]
enum RaftRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// Serves [`Internal`] for one member.
pub struct InternalService {
    coordinator: Arc<Coordinator>,
}

impl InternalService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    fn check(&self, envelope: &RaftEnvelope) -> Result<(), Status> {
        self.coordinator
            .identity()
            .check_incoming(&envelope.cluster_id, envelope.target_id)
            .map_err(|reason| {
                tracing::warn!(%reason, "refused raft message");
                error::wrong_member(reason)
            })
    }

    /// Serves one of the Raft RPCs, which differ only in the openraft call:
    /// the envelope is checked, its payload handed to `kind`'s handler, and
    /// the answer sealed in an envelope of this cluster.
    async fn serve_raft(
        &self,
        kind: RaftRpc,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        let envelope = request.into_inner();
        self.check(&envelope)?;
        let raft = self.coordinator.raft();
        let health = &self.coordinator.health;
        let payload = &envelope.payload;
        let answer = match kind {
            RaftRpc::AppendEntries => rpc::append_entries(raft, health, payload).await?,
            RaftRpc::Vote => rpc::vote(raft, health, payload).await?,
            RaftRpc::InstallSnapshot => rpc::install_snapshot(raft, health, payload).await?,
        };
        Ok(self.reply(answer))
    }

    fn reply(&self, payload: Vec<u8>) -> Response<RaftEnvelope> {
        Response::new(RaftEnvelope {
            cluster_id: self.coordinator.identity().cluster_id().unwrap_or_default(),
            target_id: 0,
            payload,
        })
    }
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn append_entries(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.serve_raft(RaftRpc::AppendEntries, request).await
    }

    async fn vote(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftEnvelope>, Status> {
        self.serve_raft(RaftRpc::Vote, request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        self.serve_raft(RaftRpc::InstallSnapshot, request).await
    }

    async fn forward(
        &self,
        request: Request<RaftEnvelope>,
    ) -> Result<Response<RaftEnvelope>, Status> {
        let envelope = request.into_inner();
        self.check(&envelope)?;
        let leader_request: LeaderRequest = codec::decode(&envelope.payload, "forwarded request")
            .map_err(|e| error::invalid_argument(e.to_string()))?;
        let result: Result<LeaderReply, ForwardError> =
            self.coordinator.execute_as_leader(leader_request).await;
        let payload = codec::encode(&result).map_err(|e| error::internal(e.to_string()))?;
        Ok(self.reply(payload))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let request = request.into_inner();
        self.coordinator
            .identity()
            .check_incoming(&request.cluster_id, 0)
            .map_err(error::wrong_member)?;
        match self.coordinator.read_index_as_leader().await {
            Ok(read_index) => Ok(Response::new(ReadIndexReply { read_index })),
            Err(ForwardError::Failed(message)) => {
                Err(CoordinatorError::Unavailable(message).to_status())
            }
            Err(_) => Err(error::not_leader(&self.coordinator, "not the leader")),
        }
    }

    async fn identity(
        &self,
        _request: Request<IdentityRequest>,
    ) -> Result<Response<IdentityReply>, Status> {
        Ok(Response::new(IdentityReply {
            member_id: self.coordinator.id(),
            cluster_id: self.coordinator.identity().cluster_id().unwrap_or_default(),
            initialized: self.coordinator.is_member(),
        }))
    }
}
