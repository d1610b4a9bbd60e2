//! The `Services` gRPC service: `herd service status SERVICE` (instances,
//! load, TTFT and TBT percentiles read from the agents now, and the
//! replicated scaling events) and `herd service scale SERVICE N`.

use std::sync::Arc;

use herd_api::proto::v1 as pb;
use herd_api::proto::v1::services_server::Services;
use tonic::{Request, Response, Status};

use super::apply::{ScaleRequest, SOURCE_MANUAL};
use super::stats::{self, Latency};
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error;
use crate::machine::command::{Command, CommandResult};
use crate::state::{ClusterState, JobStatus};

/// Serves [`Services`].
pub struct ServicesService {
    coordinator: Arc<Coordinator>,
}

impl ServicesService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// Err (NOT_FOUND) unless `name` is an inference service that is not stopped.
fn check_service(state: &ClusterState, name: &str) -> Result<(), Status> {
    match state.jobs.get(name) {
        None => Err(error::not_found(format!(
            "service {name:?} not found: no job of that name (`herd job list` lists them)"
        ))),
        Some(job) if job.spec.task.driver != "inference" => Err(error::not_found(format!(
            "service {name:?} not found: job {name:?} runs driver {:?}, not an inference service",
            job.spec.task.driver
        ))),
        Some(job) if job.status == JobStatus::Stopped => {
            Err(error::not_found(format!("service {name:?} is stopped")))
        }
        Some(_) => Ok(()),
    }
}

fn ms(value: Option<f64>) -> f64 {
    value.unwrap_or(0.0)
}

#[tonic::async_trait]
impl Services for ServicesService {
    async fn status(
        &self,
        request: Request<pb::ServiceStatusRequest>,
    ) -> Result<Response<pb::ServiceStatusReply>, Status> {
        let name = request.into_inner().name;
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let (job, instances, events) = self.coordinator.read_state(|s| {
            check_service(s, &name)?;
            let job = s.jobs.get(&name).cloned();
            let events = s.scaling.get(&name).cloned().unwrap_or_default();
            Ok::<_, Status>((job, stats::instances_of(s, &name), events))
        })?;
        let Some(job) = job else {
            return Err(error::not_found(format!("service {name:?} not found")));
        };
        let view = stats::gather(instances).await;
        let (ttft, tbt) = (view.ttft(), view.tbt());
        let instances = view
            .instances
            .iter()
            .map(|i| {
                let stats = i.stats.as_ref();
                let ttft = Latency::of(stats.map(|s| s.recent_ttft_ms.clone()).unwrap_or_default());
                let tbt = Latency::of(stats.map(|s| s.recent_tbt_ms.clone()).unwrap_or_default());
                pb::ServiceInstance {
                    alloc_id: i.alloc_id.clone(),
                    node: i.node.clone(),
                    status: i.status.as_str().to_string(),
                    has_stats: stats.is_some(),
                    load: i.load(),
                    batch_size: stats.map_or(0, |s| s.batch_size),
                    queue_len: stats.map_or(0, |s| s.queue_len),
                    draining: stats.is_some_and(|s| s.draining),
                    ttft_p50_ms: ms(ttft.p50),
                    ttft_p99_ms: ms(ttft.p99),
                    tbt_p50_ms: ms(tbt.p50),
                    tbt_p99_ms: ms(tbt.p99),
                    completed_total: stats.map_or(0, |s| s.completed_total),
                }
            })
            .collect();
        let autoscale = job.spec.autoscale.as_deref().copied();
        Ok(Response::new(pb::ServiceStatusReply {
            name,
            count: job.spec.count,
            min: autoscale.map_or(0, |a| a.min),
            max: autoscale.map_or(0, |a| a.max),
            instances,
            load: view.mean_load(),
            ttft_p50_ms: ms(ttft.p50),
            ttft_p99_ms: ms(ttft.p99),
            tbt_p50_ms: ms(tbt.p50),
            tbt_p99_ms: ms(tbt.p99),
            events: events
                .events
                .iter()
                .map(|e| pb::ScalingEvent {
                    at_ms: e.at_ms,
                    from: e.from,
                    to: e.to,
                    source: e.source.clone(),
                    reason: e.reason.clone(),
                })
                .collect(),
            slo_ttft_p99_ms: autoscale.and_then(|a| a.ttft_p99_ms).unwrap_or(0),
            slo_tbt_p99_ms: autoscale.and_then(|a| a.tbt_p99_ms).unwrap_or(0),
            target_load: autoscale.map_or(0.0, |a| a.target_load()),
        }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ScaleServiceReply>, Status> {
        let request = request.into_inner();
        let max = herd_api::validate::MAX_COUNT;
        if !(1..=max).contains(&request.count) {
            return Err(error::invalid_argument(format!(
                "count: must be between 1 and {max}, got {}",
                request.count
            )));
        }
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        self.coordinator.read_state(|s| {
            check_service(s, &request.name)?;
            if let Some(autoscale) = s
                .jobs
                .get(&request.name)
                .and_then(|j| j.spec.autoscale.as_deref())
            {
                autoscale.check_count(request.count).map_err(|why| {
                    error::invalid_argument(format!(
                        "count: {why}; [autoscale] in its spec sets the range"
                    ))
                })?;
            }
            Ok::<_, Status>(())
        })?;
        // Apply checks all of it again, against the state it lands on.
        let written = self
            .coordinator
            .write(Command::ScaleJob {
                scale: ScaleRequest {
                    job: request.name.clone(),
                    count: request.count,
                    expect_count: None,
                    source: SOURCE_MANUAL.to_string(),
                    reason: format!("herd service scale {} {}", request.name, request.count),
                },
                now_ms: 0,
            })
            .await?;
        let (from, to) = match written.result {
            CommandResult::JobScaled { from, to } => (from, to),
            other => {
                return Err(Status::internal(format!(
                    "unexpected result of a scale: {other:?}"
                )))
            }
        };
        Ok(Response::new(pb::ScaleServiceReply {
            from,
            to,
            log_index: written.log_index,
        }))
    }
}
