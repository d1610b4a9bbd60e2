//! `herd alloc migrate` and `herd migration list|status`: the client side of
//! live migrations.
//!
//! Start proposes `Command::StartMigration` through the leader like every
//! write; apply decides (see `machine::apply::migration`) and its reason is
//! passed on as is. Only the gRPC code is chosen here, from the state: a
//! name that does not exist is NOT_FOUND, a request wrong in itself
//! (migrate to its own node, a limit out of range) INVALID_ARGUMENT, and a
//! request the cluster cannot serve now (not running, already moving, a
//! target down or full, a kind that cannot move) FAILED_PRECONDITION.

use std::sync::Arc;
use std::time::Duration;

use herd_api::migration::Migration;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::migrations_server::Migrations;
use herd_api::retry::{ErrorMarks, Reason};
use tonic::{Code, Request, Response, Status};

use super::consistency;
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error::{self, CoordinatorError};
use crate::machine::apply::gang_migration::{gang_members, MAX_GANG_MEMBERS};
use crate::machine::apply::migration::MAX_DOWNTIME_LIMIT_MS;
use crate::machine::command::{Command, CommandResult, Rejection};
use crate::state::ClusterState;

/// The downtime limit of a request that sets none (0), ms.
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// Longest allocation id, node name or migration id accepted, in bytes
/// (ids are short; the bound keeps an echoed error small).
pub const MAX_NAME: usize = 128;
/// How long a reply waits for this member to apply the write it forwarded,
/// so that it can answer with the record as written.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Serves [`Migrations`].
pub struct MigrationsService {
    coordinator: Arc<Coordinator>,
}

impl MigrationsService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// `migration` as clients see it, its total time counted to `now_ms`
/// while it runs.
pub fn to_proto(m: &Migration, now_ms: u64) -> pb::MigrationInfo {
    pb::MigrationInfo {
        id: m.id.clone(),
        alloc_id: m.alloc_id.clone(),
        job: m.job.clone(),
        kind: m.kind.clone(),
        source: m.source.clone(),
        target: m.target.clone(),
        phase: m.phase.as_str().to_string(),
        bytes: m.bytes,
        rounds: m.rounds,
        downtime_ms: m.downtime_ms,
        total_ms: m
            .ended_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(m.started_at_ms),
        error: m.error.clone().unwrap_or_default(),
        started_at_ms: m.started_at_ms,
        ended_at_ms: m.ended_at_ms,
        phase_deadline_ms: m.phase_deadline_ms,
        downtime_limit_ms: m.downtime_limit_ms,
        bandwidth_bytes_per_sec: m.bandwidth_bytes_per_sec.unwrap_or(0),
        from_generation: m.from_generation,
        create_index: m.create_index,
        modify_index: m.modify_index,
        group: m.gang.as_ref().map(|g| g.group.clone()).unwrap_or_default(),
        stop_step: m.gang.as_ref().and_then(|g| g.stop_step),
    }
}

/// Checks that `value` (field `field`) is a plausible name or id.
pub fn check_name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(error::invalid_argument(format!("field `{field}` is empty")));
    }
    if value.len() > MAX_NAME {
        return Err(error::invalid_argument(format!(
            "field `{field}`: at most {MAX_NAME} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// A status with `code` and `message`, marked as a refusal that changed
/// nothing (`herd_api::retry`), so that no client sends it elsewhere.
pub fn refused(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    ErrorMarks {
        reason: Some(reason),
        not_applied: true,
        leader: None,
    }
    .on(Status::new(code, message.into()))
}

/// The gRPC status of apply's refusal of `request`, its code chosen from
/// what `state` says of the names it carries.
fn start_refusal(state: &ClusterState, request: &pb::StartMigrationRequest, why: String) -> Status {
    let message = format!("cannot migrate: {why}");
    let alloc = state.allocations.get(&request.alloc_id);
    if alloc.is_none() || !state.nodes.contains_key(&request.target) {
        return refused(Code::NotFound, Reason::NotFound, message);
    }
    if alloc.is_some_and(|a| a.node == request.target)
        || request.downtime_limit_ms > MAX_DOWNTIME_LIMIT_MS
    {
        return refused(Code::InvalidArgument, Reason::Rejected, message);
    }
    refused(Code::FailedPrecondition, Reason::Rejected, message)
}

/// The moves of a `herd job migrate`: the live members of `job`'s gang in
/// rank order, each paired with the target named at its rank. Refused with
/// what is wrong when the job is unknown, not a gang, or the count of
/// targets differs from the count of members.
fn gang_moves(
    state: &ClusterState,
    job: &str,
    targets: &[String],
) -> Result<Vec<(String, String)>, Status> {
    let Some(spec) = state.jobs.get(job).map(|j| &j.spec) else {
        return Err(refused(
            Code::NotFound,
            Reason::NotFound,
            format!("cannot migrate: job {job:?} not found"),
        ));
    };
    if !spec.placement.gang {
        return Err(refused(
            Code::InvalidArgument,
            Reason::Rejected,
            format!(
                "cannot migrate: job {job} is not a gang; move its allocations one by one with `herd alloc migrate`"
            ),
        ));
    }
    let gang = state
        .allocs_of_job(job)
        .filter(|a| a.desired == herd_api::alloc::AllocDesired::Run && !a.status.is_terminal())
        .find_map(|a| a.gang.clone());
    let members = gang
        .map(|g| gang_members(state, job, &g))
        .unwrap_or_default();
    if members.is_empty() {
        return Err(refused(
            Code::FailedPrecondition,
            Reason::Rejected,
            format!("cannot migrate: job {job} has no running gang to move"),
        ));
    }
    if members.len() != targets.len() {
        let ranks: Vec<String> = members
            .iter()
            .map(|m| format!("rank {} on {}", m.instance, m.node))
            .collect();
        return Err(refused(
            Code::InvalidArgument,
            Reason::Rejected,
            format!(
                "cannot migrate: the gang of job {job} has {} members ({}); name one target node per member, in rank order, got {}",
                members.len(),
                ranks.join(", "),
                targets.len()
            ),
        ));
    }
    Ok(members
        .iter()
        .zip(targets)
        .map(|(m, t)| (m.id.clone(), t.clone()))
        .collect())
}

/// Waits until this member applied `log_index` (a write forwarded to the
/// leader is applied here a little later).
pub async fn applied(coordinator: &Coordinator, log_index: u64) -> Result<(), Status> {
    coordinator
        .raft()
        .wait(Some(APPLY_WAIT))
        .applied_index_at_least(Some(log_index), "migration reply")
        .await
        .map(|_| ())
        .map_err(|e| {
            CoordinatorError::Unavailable(format!("waiting to apply index {log_index}: {e}"))
                .to_status()
        })
}

#[tonic::async_trait]
impl Migrations for MigrationsService {
    async fn start(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        let request = request.into_inner();
        check_name("alloc_id", &request.alloc_id)?;
        check_name("target", &request.target)?;
        let downtime_limit_ms = match request.downtime_limit_ms {
            0 => DEFAULT_DOWNTIME_LIMIT_MS,
            ms => ms,
        };
        let command = Command::StartMigration {
            alloc_id: request.alloc_id.clone(),
            target: request.target.clone(),
            downtime_limit_ms,
            bandwidth_bytes_per_sec: (request.bandwidth_bytes_per_sec > 0)
                .then_some(request.bandwidth_bytes_per_sec),
            now_ms: 0,
        };
        let written = match self.coordinator.write(command).await {
            Ok(written) => written,
            Err(CoordinatorError::Rejected(Rejection::Migration(why))) => {
                // The state the refusal was decided on, or a newer one.
                self.coordinator
                    .read_barrier(ReadConsistency::Linearizable)
                    .await?;
                return Err(self
                    .coordinator
                    .read_state(|s| start_refusal(s, &request, why)));
            }
            Err(e) => return Err(e.into()),
        };
        let CommandResult::MigrationUpdated { id, .. } = written.result else {
            return Err(error::internal(format!(
                "unexpected result of a migration start: {:?}",
                written.result
            )));
        };
        applied(&self.coordinator, written.log_index).await?;
        let now = herd_api::clock::now_ms();
        self.coordinator
            .read_state(|s| s.migrations.get(&id).map(|m| to_proto(m, now)))
            .map(Response::new)
            // Ended and forgotten already: not in a few milliseconds.
            .ok_or_else(|| error::internal(format!("migration {id} vanished once written")))
    }

    async fn start_gang(
        &self,
        request: Request<pb::StartGangMigrationRequest>,
    ) -> Result<Response<pb::StartGangMigrationReply>, Status> {
        let request = request.into_inner();
        check_name("job", &request.job)?;
        if request.targets.len() > MAX_GANG_MEMBERS {
            return Err(error::invalid_argument(format!(
                "field `targets`: at most {MAX_GANG_MEMBERS} nodes, got {}",
                request.targets.len()
            )));
        }
        for (i, target) in request.targets.iter().enumerate() {
            check_name(&format!("targets[{i}]"), target)?;
        }
        let downtime_limit_ms = match request.downtime_limit_ms {
            0 => DEFAULT_DOWNTIME_LIMIT_MS,
            ms => ms,
        };
        // The members as the state holds them now; apply checks again.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let moves = self
            .coordinator
            .read_state(|s| gang_moves(s, &request.job, &request.targets))?;
        let command = Command::StartGangMigration {
            moves,
            downtime_limit_ms,
            bandwidth_bytes_per_sec: (request.bandwidth_bytes_per_sec > 0)
                .then_some(request.bandwidth_bytes_per_sec),
            now_ms: 0,
        };
        let written = match self.coordinator.write(command).await {
            Ok(written) => written,
            Err(CoordinatorError::Rejected(Rejection::Migration(why))) => {
                let code = if why.contains("not found") {
                    (Code::NotFound, Reason::NotFound)
                } else if why.contains("already runs on") || why.contains("downtime limit") {
                    (Code::InvalidArgument, Reason::Rejected)
                } else {
                    (Code::FailedPrecondition, Reason::Rejected)
                };
                return Err(refused(
                    code.0,
                    code.1,
                    format!("cannot migrate the gang of job {}: {why}", request.job),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let CommandResult::MigrationUpdated { id: group, .. } = written.result else {
            return Err(error::internal(format!(
                "unexpected result of a gang migration start: {:?}",
                written.result
            )));
        };
        applied(&self.coordinator, written.log_index).await?;
        let now = herd_api::clock::now_ms();
        let mut migrations: Vec<(u32, pb::MigrationInfo)> = self.coordinator.read_state(|s| {
            s.migrations
                .values()
                .filter(|m| m.gang.as_ref().is_some_and(|g| g.group == group))
                .map(|m| {
                    let rank = s.allocations.get(&m.alloc_id).map_or(0, |a| a.instance);
                    (rank, to_proto(m, now))
                })
                .collect()
        });
        migrations.sort_by_key(|(rank, _)| *rank);
        Ok(Response::new(pb::StartGangMigrationReply {
            group,
            migrations: migrations.into_iter().map(|(_, m)| m).collect(),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListMigrationsRequest>,
    ) -> Result<Response<pb::ListMigrationsReply>, Status> {
        let request = request.into_inner();
        if request.alloc_id.len() > MAX_NAME {
            return Err(error::invalid_argument(format!(
                "field `alloc_id`: at most {MAX_NAME} bytes, got {}",
                request.alloc_id.len()
            )));
        }
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let now = herd_api::clock::now_ms();
        let mut migrations: Vec<pb::MigrationInfo> = self.coordinator.read_state(|s| {
            s.migrations
                .values()
                .filter(|m| request.alloc_id.is_empty() || m.alloc_id == request.alloc_id)
                .map(|m| to_proto(m, now))
                .collect()
        });
        // Oldest first, as they were started (ids sort as strings).
        migrations.sort_by_key(|m| m.create_index);
        Ok(Response::new(pb::ListMigrationsReply { migrations }))
    }

    async fn get(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::MigrationInfo>, Status> {
        let request = request.into_inner();
        check_name("id", &request.id)?;
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let now = herd_api::clock::now_ms();
        self.coordinator
            .read_state(|s| s.migrations.get(&request.id).map(|m| to_proto(m, now)))
            .map(Response::new)
            .ok_or_else(|| error::not_found(format!("migration {:?} not found", request.id)))
    }
}

#[cfg(test)]
mod tests {
    use herd_api::job::JobType;

    use super::*;
    use crate::testkit::{place, spec};

    fn request(alloc_id: &str, target: &str, limit: u64) -> pb::StartMigrationRequest {
        pb::StartMigrationRequest {
            alloc_id: alloc_id.into(),
            target: target.into(),
            downtime_limit_ms: limit,
            bandwidth_bytes_per_sec: 0,
        }
    }

    #[test]
    fn refusals_carry_a_code_by_what_is_wrong_and_apply_reason() {
        let mut state = ClusterState::default();
        place(
            &mut state,
            &["n1", "n2"],
            vec![spec("web", JobType::Service, 1)],
            1_000,
        );
        let alloc = state.allocations.values().next().expect("placed").clone();
        let other = if alloc.node == "n1" { "n2" } else { "n1" };
        for (req, code) in [
            (request("nope", other, 300), Code::NotFound),
            (request(&alloc.id, "n9", 300), Code::NotFound),
            (request(&alloc.id, &alloc.node, 300), Code::InvalidArgument),
            (request(&alloc.id, other, 600_000), Code::InvalidArgument),
            (request(&alloc.id, other, 300), Code::FailedPrecondition),
        ] {
            let status = start_refusal(&state, &req, "why".into());
            assert_eq!(status.code(), code, "{req:?}");
            assert_eq!(status.message(), "cannot migrate: why");
            let marks = ErrorMarks::read(&status).expect("marked");
            assert!(marks.not_applied, "{req:?}");
        }
    }

    #[test]
    fn names_are_bounded_and_required() {
        assert!(check_name("id", "mig-3").is_ok());
        let empty = check_name("target", "").expect_err("empty");
        assert!(empty.message().contains("`target`"), "{}", empty.message());
        let long = check_name("id", &"x".repeat(MAX_NAME + 1)).expect_err("long");
        assert_eq!(long.code(), Code::InvalidArgument);
    }

    #[test]
    fn a_gang_move_pairs_members_by_rank_and_says_what_is_wrong() {
        let mut state = ClusterState::default();
        let mut train = spec("train", JobType::Batch, 2);
        train.placement.gang = true;
        train.placement.spread = herd_api::placement::SpreadPolicy::Nodes;
        place(
            &mut state,
            &["n1", "n2", "n3"],
            vec![train, spec("web", JobType::Service, 1)],
            1_000,
        );
        let targets = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let moves = gang_moves(&state, "train", &targets(&["n3", "n1"])).expect("moves");
        let ranks: Vec<u32> = moves
            .iter()
            .map(|(a, _)| state.allocations[a].instance)
            .collect();
        assert_eq!(ranks, [0, 1]);
        assert_eq!(moves[0].1, "n3");
        for (job, to, code, needle) in [
            ("nope", vec!["n1"], Code::NotFound, "not found"),
            ("web", vec!["n1"], Code::InvalidArgument, "not a gang"),
            (
                "train",
                vec!["n1"],
                Code::InvalidArgument,
                "has 2 members (rank 0 on",
            ),
        ] {
            let status = gang_moves(&state, job, &targets(&to)).expect_err(job);
            assert_eq!(status.code(), code, "{job}");
            assert!(status.message().contains(needle), "{}", status.message());
        }
    }
}
