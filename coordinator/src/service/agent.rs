//! The agent API: node agents register, heartbeat, watch the allocations
//! assigned to them and report what their workloads do.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use futures::Stream;
use herd_api::alloc::{AllocStatus, AllocUpdate};
use herd_api::node::{NodeInfo, NodeStatus};
use herd_api::proto::agent::agent_server::Agent;
use herd_api::proto::agent::{
    AssignedAllocation, AssignedAllocations, HeartbeatReply, HeartbeatRequest, RegisterNodeReply,
    RegisterNodeRequest, ReportAllocationsReply, ReportAllocationsRequest, WatchAllocationsRequest,
};
use herd_api::resources::Resources;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::apply_alloc::MAX_UPDATES;
use crate::assignments::assigned_to;
use crate::command::{Command, CommandResult};
use crate::handle::{Coordinator, ReadConsistency};

/// A watch stream sends the set again after this long even when it did not
/// change, so an agent notices a stream that silently stalled.
const RESEND_EVERY: Duration = Duration::from_secs(5);
/// Changes closer together than this are sent as one set.
const COALESCE: Duration = Duration::from_millis(20);
/// Longest node name accepted (as `RegisterNode` checks in apply).
const MAX_NODE_NAME: usize = 128;

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

fn check_node_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(Status::invalid_argument(format!(
            "field `name`: node names are 1 to {MAX_NODE_NAME} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

fn update_from_proto(report: herd_api::proto::agent::AllocReport) -> Result<AllocUpdate, Status> {
    let status = AllocStatus::parse(&report.status).ok_or_else(|| {
        Status::invalid_argument(format!(
            "report for {}: field `status`: unknown status {:?}",
            report.id, report.status
        ))
    })?;
    let mut detail = report.detail;
    if let Some(code) = report.exit_code {
        detail = format!("{detail} (exit code {code})");
    }
    if let Some(signal) = report.signal {
        detail = format!("{detail} (signal {signal})");
    }
    Ok(AllocUpdate {
        id: report.id,
        generation: report.generation,
        status,
        event: report.event,
        detail: detail.trim().to_string(),
    })
}

type AssignedStream = Pin<Box<dyn Stream<Item = Result<AssignedAllocations, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        let request = request.into_inner();
        check_node_name(&request.name)?;
        let capacity = match request.capacity {
            Some(c) => {
                Resources::try_from(c).map_err(|e| Status::invalid_argument(e.to_string()))?
            }
            None => return Err(Status::invalid_argument("field `capacity` is missing")),
        };
        let name = request.name.clone();
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
        // A node registering through the leader starts its TTL now.
        if self.coordinator.is_leader() {
            self.coordinator.liveness().heartbeat(&name, Instant::now());
        }
        Ok(Response::new(RegisterNodeReply {
            log_index: written.log_index,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let request = request.into_inner();
        check_node_name(&request.name)?;
        if !self.coordinator.is_leader() {
            return Err(Status::failed_precondition(format!(
                "coordinator {} is not the leader; heartbeats go to the leader",
                self.coordinator.id()
            )));
        }
        let status = self
            .coordinator
            .read_state(|state| state.nodes.get(&request.name).map(|n| n.status));
        let now = Instant::now();
        let liveness = self.coordinator.liveness();
        liveness.heartbeat(&request.name, now);
        if let Some(usage) = request.usage {
            liveness.record_usage(&request.name, usage, now);
        }
        Ok(Response::new(HeartbeatReply {
            ttl_ms: self.coordinator.liveness().ttl().as_millis() as u64,
            reregister: matches!(status, None | Some(NodeStatus::Down)),
        }))
    }

    type WatchAllocationsStream = AssignedStream;

    async fn watch_allocations(
        &self,
        request: Request<WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        let node = request.into_inner().node;
        check_node_name(&node)?;
        // The first set is at least as fresh as anything the agent saw before.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let coordinator = self.coordinator.clone();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut metrics = coordinator.raft().metrics();
            let mut last: Option<Vec<AssignedAllocation>> = None;
            let mut sent_at = Instant::now();
            loop {
                let index = coordinator.applied_index();
                let allocs = coordinator.read_state(|state| assigned_to(state, &node));
                if last.as_ref() != Some(&allocs) || sent_at.elapsed() >= RESEND_EVERY {
                    let message = AssignedAllocations {
                        index,
                        allocs: allocs.clone(),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(allocs);
                    sent_at = Instant::now();
                }
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(RESEND_EVERY) => {}
                    _ = tx.closed() => return,
                }
                tokio::time::sleep(COALESCE).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_allocations(
        &self,
        request: Request<ReportAllocationsRequest>,
    ) -> Result<Response<ReportAllocationsReply>, Status> {
        let request = request.into_inner();
        check_node_name(&request.node)?;
        if request.reports.len() > MAX_UPDATES {
            return Err(Status::invalid_argument(format!(
                "{} reports in one request; at most {MAX_UPDATES}",
                request.reports.len()
            )));
        }
        let updates = request
            .reports
            .into_iter()
            .map(update_from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let written = self
            .coordinator
            .write(Command::UpdateAllocs {
                node: request.node,
                updates,
                now_ms: 0,
            })
            .await?;
        match written.result {
            CommandResult::AllocsUpdated { accepted, refused } => {
                Ok(Response::new(ReportAllocationsReply { accepted, refused }))
            }
            other => Err(Status::internal(format!(
                "unexpected result of an allocation report: {other:?}"
            ))),
        }
    }
}
