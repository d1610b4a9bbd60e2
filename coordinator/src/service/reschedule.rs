//! `Reschedule.Plan`: a defragmenting plan for the live cluster, computed
//! on this member's state (read-only), for `herd reschedule plan|apply`.
//!
//! The state is copied under the read lock and the planner runs on a
//! blocking thread, so a planning deadline never holds the state lock or an
//! async worker; one plan is computed at a time per member (the planner is
//! CPU-bound for its whole deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_api::proto::v1 as pb;
use herd_api::proto::v1::reschedule_server::Reschedule;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::error;
use crate::reschedule::{self, LivePlan, LiveSolver, PlanError, PlanRequest};

/// The planning time of a request that sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
/// The target shape's CPU of a request that sets none: 16 cores, the
/// VMR2L paper's target.
pub const DEFAULT_TARGET_CPU_MILLIS: u64 = 16_000;

/// Serves [`Reschedule`].
pub struct RescheduleService {
    coordinator: Arc<Coordinator>,
    /// One plan at a time on this member.
    planning: Semaphore,
}

impl RescheduleService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self {
            coordinator,
            planning: Semaphore::new(1),
        }
    }
}

/// The planner's request from the wire's, defaults filled in and checked.
pub fn request_from(request: &pb::ReschedulePlanRequest) -> Result<PlanRequest, Status> {
    let solver = LiveSolver::parse(&request.solver)
        .map_err(|m| error::invalid_argument(format!("field `solver`: {m}")))?;
    let deadline = match request.deadline_ms {
        0 => DEFAULT_DEADLINE,
        ms => Duration::from_millis(ms),
    };
    let cpu = match request.target_cpu_millis {
        0 => DEFAULT_TARGET_CPU_MILLIS,
        millis => millis,
    };
    let planned = PlanRequest {
        max_migrations: usize::try_from(request.max_migrations).unwrap_or(usize::MAX),
        deadline,
        shape: reschedule::shape(cpu, request.target_memory_bytes),
        solver,
        seed: request.seed,
    };
    reschedule::plan::check_request(&planned)
        .map_err(|e| error::invalid_argument(e.to_string()))?;
    Ok(planned)
}

/// `plan` as the wire carries it.
pub fn to_proto(
    plan: &LivePlan,
    request: &pb::ReschedulePlanRequest,
    solver: LiveSolver,
    ms: u64,
) -> pb::ReschedulePlanReply {
    pb::ReschedulePlanReply {
        fr_before: plan.fr_before,
        fr_after: plan.fr_after,
        moves: plan
            .moves
            .iter()
            .map(|m| pb::RescheduleMove {
                alloc_id: m.alloc_id.clone(),
                job: m.job.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                cpu_millis: m.cpu_millis,
                memory_bytes: m.memory_bytes,
            })
            .collect(),
        solver: solver.as_str().to_string(),
        planning_ms: ms,
        nodes: count(plan.model.nodes),
        active_nodes: count(plan.model.active_nodes),
        allocations: count(plan.model.allocations),
        movable: count(plan.model.movable),
        immovable: plan
            .model
            .immovable
            .iter()
            .map(|(reason, n)| pb::ImmovableCount {
                reason: reason.clone(),
                count: *n,
            })
            .collect(),
        note: plan.note.clone().unwrap_or_default(),
        target_cpu_millis: match request.target_cpu_millis {
            0 => DEFAULT_TARGET_CPU_MILLIS,
            millis => millis,
        },
        target_memory_bytes: request.target_memory_bytes,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl Reschedule for RescheduleService {
    async fn plan(
        &self,
        request: Request<pb::ReschedulePlanRequest>,
    ) -> Result<Response<pb::ReschedulePlanReply>, Status> {
        let request = request.into_inner();
        let planned = request_from(&request)?;
        let _permit = self
            .planning
            .acquire()
            .await
            .map_err(|e| error::internal(format!("planning slot: {e}")))?;
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let state = self.coordinator.read_state(|s| s.clone());
        let started = Instant::now();
        let plan = tokio::task::spawn_blocking(move || reschedule::plan(&state, &planned))
            .await
            .map_err(|e| error::internal(format!("the planner stopped: {e}")))?
            .map_err(|e| match e {
                PlanError::Invalid(m) => error::invalid_argument(m),
                other => error::internal(other.to_string()),
            })?;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(Response::new(to_proto(&plan, &request, planned.solver, ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_bad_limits_are_invalid_arguments() {
        let request = pb::ReschedulePlanRequest {
            max_migrations: 50,
            ..Default::default()
        };
        let planned = request_from(&request).expect("valid");
        assert_eq!(planned.deadline, DEFAULT_DEADLINE);
        assert_eq!(planned.shape.cpu, 16_000);
        assert_eq!(planned.shape.mem_mb, 0);
        assert_eq!(planned.solver, LiveSolver::Herd);
        for bad in [
            pb::ReschedulePlanRequest {
                max_migrations: 5000,
                ..Default::default()
            },
            pb::ReschedulePlanRequest {
                deadline_ms: 3_600_000,
                ..Default::default()
            },
            pb::ReschedulePlanRequest {
                solver: "exact".into(),
                ..Default::default()
            },
        ] {
            let status = request_from(&bad).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
}
