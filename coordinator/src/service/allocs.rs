//! `herd alloc list|status`.

use std::sync::Arc;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::allocs_server::Allocs;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::error;

/// Serves [`Allocs`].
pub struct AllocsService {
    coordinator: Arc<Coordinator>,
}

impl AllocsService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

fn to_proto(alloc: &Allocation) -> pb::Alloc {
    pb::Alloc {
        id: alloc.id.clone(),
        job: alloc.job.clone(),
        job_version: alloc.job_version,
        instance: alloc.instance,
        node: alloc.node.clone(),
        status: alloc.status.as_str().to_string(),
        desired: match alloc.desired {
            AllocDesired::Run => "run",
            AllocDesired::Stop => "stop",
        }
        .to_string(),
        generation: alloc.generation,
        priority: alloc.priority,
        resources: Some(pb::Resources::from(&alloc.resources)),
        events: alloc
            .events
            .iter()
            .map(|e| pb::AllocEvent {
                at_ms: e.at_ms,
                kind: e.kind.clone(),
                detail: e.detail.clone(),
            })
            .collect(),
        create_index: alloc.create_index,
        modify_index: alloc.modify_index,
        gpu_indices: alloc.gpu_indices.clone(),
    }
}

#[tonic::async_trait]
impl Allocs for AllocsService {
    async fn list(
        &self,
        request: Request<pb::ListAllocsRequest>,
    ) -> Result<Response<pb::ListAllocsReply>, Status> {
        let request = request.into_inner();
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let allocs = self.coordinator.read_state(|s| {
            if request.job.is_empty() {
                s.allocations.values().map(to_proto).collect()
            } else {
                s.allocs_of_job(&request.job).map(to_proto).collect()
            }
        });
        Ok(Response::new(pb::ListAllocsReply { allocs }))
    }

    async fn get(
        &self,
        request: Request<pb::GetAllocRequest>,
    ) -> Result<Response<pb::Alloc>, Status> {
        let request = request.into_inner();
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        self.coordinator
            .read_state(|s| s.allocations.get(&request.id).map(to_proto))
            .map(Response::new)
            .ok_or_else(|| error::not_found(format!("allocation {:?} not found", request.id)))
    }
}
