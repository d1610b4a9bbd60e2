//! `herd job ...`: submit, list, inspect and stop jobs.

use std::sync::Arc;

use herd_api::job::JobSpec;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::jobs_server::Jobs;
use herd_api::request_id::RequestId;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::error::{self, CoordinatorError};
use crate::machine::command::{Command, CommandResult};
use crate::request_record::{Action, JobRequest};
use crate::scheduler::could_hold;
use crate::state::{ClusterState, Job};
use herd_api::resources::display_memory;

/// Serves [`Jobs`].
pub struct JobsService {
    coordinator: Arc<Coordinator>,
}

impl JobsService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

fn to_proto(state: &ClusterState, job: &Job) -> pb::Job {
    // Instances with a live (pending or running) allocation.
    let placed = crate::planning::instance_histories(state, job)
        .values()
        .filter(|h| h.live)
        .count();
    pb::Job {
        placed: u32::try_from(placed).unwrap_or(u32::MAX),
        spec: Some(pb::JobSpec::from(&job.spec)),
        version: job.version,
        status: job.status.as_str().to_string(),
        submitted_at_ms: job.submitted_at_ms,
        updated_at_ms: job.updated_at_ms,
        modify_index: job.modify_index,
        blocked: job.blocked.clone().unwrap_or_default(),
        request_id: crate::request_record::of_current_version(state, &job.spec.name)
            .map(String::from)
            .unwrap_or_default(),
    }
}

/// The request id of a call: the one the server's request-id layer gave
/// it (the client's, or a fresh one), or a fresh one where no layer ran.
fn request_id_of<T>(request: &Request<T>) -> RequestId {
    RequestId::of(request).unwrap_or_else(RequestId::generate)
}

impl JobsService {
    /// Records that request `id` is about to change `job`, so that the
    /// leader and the agents can name it in their logs
    /// ([`crate::request_record`]). A log aid: a record the state machine
    /// refuses lets the change go ahead (logged), but a cluster that cannot
    /// write now fails the call here, before the change, rather than make
    /// the client wait twice.
    async fn record_request(
        &self,
        job: &str,
        id: &RequestId,
        action: Action,
    ) -> Result<(), CoordinatorError> {
        let now = herd_api::clock::now_ms();
        let request = self
            .coordinator
            .read_state(|s| JobRequest::new(s, job, id.clone(), action, now));
        let command = match crate::request_record::record_command(job, &request) {
            Ok(command) => command,
            Err(e) => {
                tracing::warn!(%job, request_id = %id, error = %e, "request record not encoded; the job's logs will not name this request");
                return Ok(());
            }
        };
        match self.coordinator.write(command).await {
            Ok(_) => Ok(()),
            Err(CoordinatorError::Rejected(rejection)) => {
                tracing::warn!(%job, request_id = %id, ?rejection, "request record refused; the job's logs will not name this request");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Refuses, at submit time, an instance no registered node could ever hold.
/// (With no node registered yet the job is accepted and waits.)
fn larger_than_every_node(state: &ClusterState, spec: &JobSpec) -> Option<String> {
    let need = &spec.task.resources;
    if state.nodes.is_empty() {
        return None;
    }
    if state.nodes.values().any(|n| could_hold(&n.capacity, need)) {
        return None;
    }
    let max_cpu = state
        .nodes
        .values()
        .map(|n| n.capacity.cpu_millis)
        .max()
        .unwrap_or(0);
    let max_mem = state
        .nodes
        .values()
        .map(|n| n.capacity.memory_bytes)
        .max()
        .unwrap_or(0);
    let max_gpus = state
        .nodes
        .values()
        .map(|n| n.capacity.gpus)
        .max()
        .unwrap_or(0);
    Some(format!(
        "field `task.resources`: no node could ever hold one instance (cpu {}m, memory {}, {} GPUs); the largest nodes have cpu {}m, memory {}, {} GPUs",
        need.cpu_millis,
        display_memory(need.memory_bytes),
        need.gpus,
        max_cpu,
        display_memory(max_mem),
        max_gpus
    ))
}

/// Why `spec`'s `stop_after_disconnect` would not do its job: a node is
/// declared lost (and its work placed elsewhere) after `node_ttl` without a
/// heartbeat, so instances stopping any later would overlap their
/// replacements, which is what the setting exists to prevent.
fn stops_after_replacement(spec: &JobSpec, node_ttl: std::time::Duration) -> Option<String> {
    let after = spec.stop_after_disconnect?;
    (after >= node_ttl).then(|| {
        format!(
            "field `stop_after_disconnect`: {} ms is not shorter than the coordinators' \
             node TTL ({} ms), after which the node's work is placed elsewhere; \
             choose at most half of it",
            after.as_millis(),
            node_ttl.as_millis()
        )
    })
}

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn submit(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobReply>, Status> {
        let id = request_id_of(&request);
        let Some(spec) = request.into_inner().spec else {
            return Err(error::invalid_argument("field `spec` is missing"));
        };
        let spec = JobSpec::try_from(spec).map_err(|e| error::invalid_argument(e.to_string()))?;
        if let Some(problem) = stops_after_replacement(&spec, self.coordinator.liveness().ttl()) {
            return Err(error::invalid_argument(problem));
        }
        if let Some(problem) = self
            .coordinator
            .read_state(|s| larger_than_every_node(s, &spec))
        {
            return Err(error::invalid_argument(problem));
        }
        let job = spec.name.clone();
        tracing::info!(%job, request_id = %id, "job submitted");
        self.record_request(&job, &id, Action::Submit).await?;
        let written = self
            .coordinator
            .write(Command::SubmitJob { spec, now_ms: 0 })
            .await?;
        match written.result {
            CommandResult::JobSubmitted { version, changed } => {
                tracing::info!(%job, version, changed, index = written.log_index, request_id = %id, "job written");
                Ok(Response::new(pb::SubmitJobReply {
                    version,
                    log_index: written.log_index,
                    changed,
                    request_id: id.to_string(),
                }))
            }
            other => Err(CoordinatorError::Internal(format!("unexpected result {other:?}")).into()),
        }
    }

    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsReply>, Status> {
        self.coordinator
            .read_barrier(consistency(request.into_inner().stale))
            .await?;
        let jobs = self
            .coordinator
            .read_state(|s| s.jobs.values().map(|j| to_proto(s, j)).collect());
        Ok(Response::new(pb::ListJobsReply { jobs }))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        self.coordinator
            .read_state(|s| s.jobs.get(&request.name).map(|j| to_proto(s, j)))
            .map(Response::new)
            .ok_or_else(|| error::not_found(format!("job {:?} not found", request.name)))
    }

    async fn stop(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::StopJobReply>, Status> {
        let id = request_id_of(&request);
        let name = request.into_inner().name;
        tracing::info!(job = %name, request_id = %id, "job stop asked");
        // A job this member does not know gets no record: the stop is
        // refused (or, on a lagging member, goes through without one).
        if self.coordinator.read_state(|s| s.jobs.contains_key(&name)) {
            self.record_request(&name, &id, Action::Stop).await?;
        }
        let written = self
            .coordinator
            .write(Command::StopJob {
                name: name.clone(),
                now_ms: 0,
            })
            .await?;
        match written.result {
            CommandResult::JobStopped { version } => {
                tracing::info!(job = %name, version, index = written.log_index, request_id = %id, "job stopped");
                Ok(Response::new(pb::StopJobReply {
                    version,
                    log_index: written.log_index,
                    request_id: id.to_string(),
                }))
            }
            other => Err(CoordinatorError::Internal(format!("unexpected result {other:?}")).into()),
        }
    }
}
