//! `herd cluster ...`: status and membership changes.

use std::sync::Arc;

use herd_api::proto::v1::cluster_server::Cluster;
use herd_api::proto::v1::{
    AddMemberRequest, ClusterStatus, ClusterStatusRequest, Member, MemberReport,
    MemberStatusRequest, MembershipReply, RemoveMemberRequest, ReplaceMemberRequest,
};
use tonic::{Request, Response, Status};

use crate::config::check_host_port;
use crate::coordinator::Coordinator;
use crate::error::{self, CoordinatorError};
use crate::routing::forward::{LeaderReply, LeaderRequest};

/// Serves [`Cluster`].
pub struct ClusterService {
    coordinator: Arc<Coordinator>,
}

impl ClusterService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }

    async fn change(&self, request: LeaderRequest) -> Result<Response<MembershipReply>, Status> {
        match self.coordinator.on_leader(request).await? {
            LeaderReply::Membership { voters, log_index } => Ok(Response::new(MembershipReply {
                voters,
                cluster_id: self.coordinator.identity().cluster_id().unwrap_or_default(),
                log_index,
            })),
            other => {
                Err(CoordinatorError::Internal(format!("unexpected leader reply {other:?}")).into())
            }
        }
    }
}

fn check_addr(addr: &str) -> Result<(), Status> {
    check_host_port(addr).map_err(error::invalid_argument)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let view = self.coordinator.status(request.into_inner().stale).await?;
        Ok(Response::new(ClusterStatus {
            leader: view.leader,
            term: view.term,
            cluster_id: view.cluster_id,
            commit_index: view.commit_index,
            members: view
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    addr: m.addr,
                    healthy: m.healthy,
                    voter: m.voter,
                    matched_index: m.matched_index,
                })
                .collect(),
        }))
    }

    async fn member_status(
        &self,
        request: Request<MemberStatusRequest>,
    ) -> Result<Response<MemberReport>, Status> {
        Ok(Response::new(
            self.coordinator
                .member_report(request.into_inner().with_digest),
        ))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let AddMemberRequest { id, addr } = request.into_inner();
        check_addr(&addr)?;
        self.change(LeaderRequest::AddMember { id, addr }).await
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.change(LeaderRequest::RemoveMember {
            id: request.into_inner().id,
        })
        .await
    }

    async fn replace_member(
        &self,
        request: Request<ReplaceMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let ReplaceMemberRequest {
            old_id,
            new_id,
            new_addr,
        } = request.into_inner();
        check_addr(&new_addr)?;
        self.change(LeaderRequest::ReplaceMember {
            old_id,
            new_id,
            new_addr,
        })
        .await
    }
}
