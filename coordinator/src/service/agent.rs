//! The agent API: node agents register, heartbeat, watch the allocations
//! assigned to them and report what their workloads do.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use futures::Stream;
use herd_api::alloc::AllocUpdate;
use herd_api::convert::capabilities::drivers_from_proto;
use herd_api::convert::report::MAX_REPORT_ID;
use herd_api::node::{NodeInfo, NodeStatus};
use herd_api::proto::agent::agent_server::Agent;
use herd_api::proto::agent::{
    AllocReport, AssignedAllocation, AssignedAllocations, HeartbeatReply, HeartbeatRequest,
    MalformedReport, MigrationReportReply, MigrationReportRequest, RegisterNodeReply,
    RegisterNodeRequest, ReportAllocationsReply, ReportAllocationsRequest, WatchAllocationsRequest,
};
use herd_api::resources::Resources;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::migration_report::{decide, read_report, reply_for, Decision};
use super::migrations::{applied, refused};
use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error::{self, CoordinatorError};
use crate::machine::apply::alloc::MAX_UPDATES;
use crate::machine::command::{Command, CommandResult, Rejection};
use crate::state::assignments::{assigned_to, interest_of};
use crate::state::changes::{Changed, NodeInterest};

/// A watch stream sends the set again after this long even when it did not
/// change, so an agent notices a stream that silently stalled.
const RESEND_EVERY: Duration = Duration::from_secs(5);
/// Changes closer together than this are sent as one set. The first change
/// after a quiet spell goes out at once (a migration's start and its
/// switch-over are waited for by the agents): only a change within this
/// long of the last set sent waits for the rest of it. Short, because the
/// second of two quick changes waits: a migration's switch-over commits a
/// millisecond or two after its `switching` report, and the target's
/// workload waits paused for that set (docs/benchmarks.md measured 20 ms
/// here as 20 ms more pause).
const COALESCE: Duration = Duration::from_millis(5);
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
        return Err(error::invalid_argument(format!(
            "field `name`: node names are 1 to {MAX_NODE_NAME} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

/// The reports of one request split into those to apply and those this
/// coordinator cannot read, each refused on its own: a newer agent's report
/// with a status this release does not know (a rolling upgrade) must not
/// cost the other reports of its batch.
fn read_reports(reports: Vec<AllocReport>) -> (Vec<AllocUpdate>, Vec<MalformedReport>) {
    let mut updates = Vec::with_capacity(reports.len());
    let mut malformed = Vec::new();
    for (position, report) in reports.into_iter().enumerate() {
        let (id, generation) = (report.id.clone(), report.generation);
        match AllocUpdate::try_from(report) {
            Ok(update) => updates.push(update),
            Err(e) => malformed.push(MalformedReport {
                position: position as u32,
                // An id too long to keep is cut, so the reply stays small.
                id: id.chars().take(MAX_REPORT_ID).collect(),
                generation,
                reason: format!("reports[{position}]: {e}"),
            }),
        }
    }
    (updates, malformed)
}

/// The set of allocations `node` should run, labelled with the index and
/// cluster of the very state it was computed from (one read, one lock).
fn assignment_set(coordinator: &Coordinator, node: &str) -> (AssignedAllocations, NodeInterest) {
    let (index, (allocs, cluster_id, interest)) = coordinator.read_state_at(|state| {
        (
            assigned_to(state, node),
            state.cluster_id.clone().unwrap_or_default(),
            interest_of(state, node),
        )
    });
    let set = AssignedAllocations {
        index,
        allocs,
        cluster_id,
    };
    (set, interest)
}

/// Waits until apply reports a change that concerns `interest`, `deadline`
/// passes, or the stream's receiver is gone (false).
async fn concerning_change(
    changes: &mut broadcast::Receiver<Arc<Changed>>,
    interest: &NodeInterest,
    deadline: Instant,
    tx: &mpsc::Sender<Result<AssignedAllocations, Status>>,
) -> bool {
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) if change.concerns(interest) => return true,
                Ok(_) => {}
                // Fell behind: anything may have changed.
                Err(RecvError::Lagged(_)) => return true,
                Err(RecvError::Closed) => return false,
            },
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = tx.closed() => return false,
        }
    }
}

type AssignedStream = Pin<Box<dyn Stream<Item = Result<AssignedAllocations, Status>> + Send>>;

/// Refuses an agent's call that speaks for `node` unless its TLS
/// certificate names that node: an agent may only report for its own node
/// (no check in plaintext, see `herd_api::tls`).
fn speaks_for<T>(request: &Request<T>, node: &str, rpc: &str) -> Result<(), Status> {
    herd_api::tls::require_node(request.extensions(), node, rpc)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        speaks_for(&request, &request.get_ref().name, "Agent.Register")?;
        let request = request.into_inner();
        check_node_name(&request.name)?;
        let capacity = match request.capacity {
            Some(c) => {
                Resources::try_from(c).map_err(|e| error::invalid_argument(e.to_string()))?
            }
            None => return Err(error::invalid_argument("field `capacity` is missing")),
        };
        // Read whole before anything is written: a bad declaration refuses
        // the registration, never half-applies it. Empty from an agent
        // older than the field: its capabilities are unknown.
        let drivers = drivers_from_proto(request.drivers)
            .map_err(|e| error::invalid_argument(e.to_string()))?;
        let endpoints: std::collections::BTreeMap<String, String> = if request.http.is_empty() {
            Default::default()
        } else {
            [("http".to_string(), request.http)].into()
        };
        crate::machine::apply::check_endpoints(&endpoints)
            .map_err(|e| error::invalid_argument(format!("field `http`: {e}")))?;
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
        self.coordinator
            .write(Command::RegisterNode { node, now_ms: 0 })
            .await?;
        // Then what its drivers allow, as a command of its own (a field of
        // `RegisterNode` would make old log entries unreadable). Sent on
        // every registration, an unknown set included, so an older agent
        // that replaces a newer one does not inherit what it cannot do;
        // apply writes nothing when nothing changed. A failure here fails
        // the registration, and the agent registers again.
        self.coordinator
            .write(Command::SetNodeDrivers {
                node: name.clone(),
                drivers: (!drivers.is_empty()).then_some(drivers),
            })
            .await?;
        // Then where it serves clients besides gRPC, the same way.
        let written = self
            .coordinator
            .write(Command::SetNodeEndpoints {
                node: name.clone(),
                endpoints,
            })
            .await?;
        // A node registering through the leader starts its TTL now.
        if self.coordinator.is_leader() {
            self.coordinator.liveness().heartbeat(&name, Instant::now());
        }
        let cluster_id = self
            .coordinator
            .read_state(|state| state.cluster_id.clone().unwrap_or_default());
        Ok(Response::new(RegisterNodeReply {
            log_index: written.log_index,
            cluster_id,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        speaks_for(&request, &request.get_ref().name, "Agent.Heartbeat")?;
        let request = request.into_inner();
        check_node_name(&request.name)?;
        if !self.coordinator.is_leader() {
            return Err(error::not_leader(
                &self.coordinator,
                format!(
                    "coordinator {} is not the leader; heartbeats go to the leader",
                    self.coordinator.id()
                ),
            ));
        }
        // The node's share of the power budgets covering it, from the
        // replicated state alone: every leader sends the same.
        let (status, share) = self.coordinator.read_state(|state| {
            (
                state.nodes.get(&request.name).map(|n| n.status),
                crate::power::share::share_of(state, &request.name),
            )
        });
        let now = Instant::now();
        let liveness = self.coordinator.liveness();
        liveness.heartbeat(&request.name, now);
        if let Some(usage) = request.usage {
            liveness.record_usage(&request.name, crate::power::report::bound_usage(usage), now);
        }
        Ok(Response::new(HeartbeatReply {
            ttl_ms: self.coordinator.liveness().ttl().as_millis() as u64,
            reregister: matches!(status, None | Some(NodeStatus::Down)),
            power: share.as_ref().map(Into::into),
        }))
    }

    type WatchAllocationsStream = AssignedStream;

    async fn watch_allocations(
        &self,
        request: Request<WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        speaks_for(&request, &request.get_ref().node, "Agent.WatchAllocations")?;
        let node = request.into_inner().node;
        check_node_name(&node)?;
        // The first set is at least as fresh as anything the agent saw before.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let coordinator = self.coordinator.clone();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            // Subscribed before the first set is read: no change is missed.
            let mut changes = coordinator.subscribe_changes();
            let mut last: Option<Vec<AssignedAllocation>> = None;
            let mut sent_at = Instant::now();
            loop {
                let (set, interest) = assignment_set(&coordinator, &node);
                if last.as_ref() != Some(&set.allocs) || sent_at.elapsed() >= RESEND_EVERY {
                    last = Some(set.allocs.clone());
                    if tx.send(Ok(set)).await.is_err() {
                        return;
                    }
                    sent_at = Instant::now();
                }
                let deadline = sent_at + RESEND_EVERY;
                if !concerning_change(&mut changes, &interest, deadline, &tx).await {
                    return;
                }
                tokio::time::sleep_until(sent_at + COALESCE).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acl_table(
        &self,
        _request: Request<herd_api::proto::agent::AclTableRequest>,
    ) -> Result<Response<herd_api::proto::agent::AclTableReply>, Status> {
        let (index, (reply, revocation_lists)) = self.coordinator.read_state_at(|s| {
            (
                crate::acl::agent_table::reply(&s.acl, crate::acl::revoked::revoked_in(s), 0),
                crate::acl::revoked::list_in(s).into_iter().collect(),
            )
        });
        Ok(Response::new(herd_api::proto::agent::AclTableReply {
            index,
            revocation_lists,
            ..reply
        }))
    }

    async fn report_offline_move(
        &self,
        request: Request<herd_api::proto::agent::OfflineMoveReport>,
    ) -> Result<Response<herd_api::proto::agent::OfflineMoveVerdict>, Status> {
        speaks_for(&request, &request.get_ref().node, "Agent.ReportOfflineMove")?;
        super::offline_move::serve(&self.coordinator, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_migration(
        &self,
        request: Request<MigrationReportRequest>,
    ) -> Result<Response<MigrationReportReply>, Status> {
        speaks_for(&request, &request.get_ref().node, "Agent.ReportMigration")?;
        let report = read_report(request.into_inner())?;
        // The migration may have started an instant ago on another member.
        self.coordinator
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let command = match self.coordinator.read_state(|s| decide(s, &report)) {
            Decision::Answer(reply) => return Ok(Response::new(reply)),
            Decision::Refuse(status) => return Err(status),
            Decision::Propose(command) => command,
        };
        let written = match self.coordinator.write(*command).await {
            Ok(written) => written,
            Err(CoordinatorError::Rejected(Rejection::Migration(why))) => {
                // The state moved between the decision and apply (the
                // leader aborted it, a retry raced): answer as it is now.
                self.coordinator
                    .read_barrier(ReadConsistency::Linearizable)
                    .await?;
                return match self.coordinator.read_state(|s| decide(s, &report)) {
                    Decision::Answer(reply) => Ok(Response::new(reply)),
                    Decision::Refuse(status) => Err(status),
                    Decision::Propose(_) => Err(refused(
                        tonic::Code::FailedPrecondition,
                        herd_api::retry::Reason::Rejected,
                        why,
                    )),
                };
            }
            Err(e) => return Err(e.into()),
        };
        applied(&self.coordinator, written.log_index).await?;
        self.coordinator
            .read_state(|s| s.migrations.get(&report.id).map(|m| reply_for(s, m)))
            .map(Response::new)
            .ok_or_else(|| {
                error::internal(format!("migration {} vanished once written", report.id))
            })
    }

    async fn report_allocations(
        &self,
        request: Request<ReportAllocationsRequest>,
    ) -> Result<Response<ReportAllocationsReply>, Status> {
        speaks_for(&request, &request.get_ref().node, "Agent.ReportAllocations")?;
        let request = request.into_inner();
        check_node_name(&request.node)?;
        if request.reports.len() > MAX_UPDATES {
            return Err(error::invalid_argument(format!(
                "{} reports in one request; at most {MAX_UPDATES}",
                request.reports.len()
            )));
        }
        let (updates, malformed) = read_reports(request.reports);
        for bad in &malformed {
            tracing::warn!(
                node = %request.node,
                alloc = %bad.id,
                generation = bad.generation,
                reason = %bad.reason,
                "refused an allocation report this coordinator cannot read (a newer agent?)"
            );
        }
        let unreadable = malformed
            .iter()
            .map(|bad| format!("{}: {}", bad.id, bad.reason));
        if updates.is_empty() {
            // Nothing to apply: no Raft entry for a request of refusals.
            return Ok(Response::new(ReportAllocationsReply {
                accepted: 0,
                refused: unreadable.collect(),
                malformed,
            }));
        }
        let written = self
            .coordinator
            .write(Command::UpdateAllocs {
                node: request.node,
                updates,
                now_ms: 0,
            })
            .await?;
        match written.result {
            CommandResult::AllocsUpdated {
                accepted,
                refused: applied_refused,
            } => {
                let refused = unreadable.chain(applied_refused).collect();
                Ok(Response::new(ReportAllocationsReply {
                    accepted,
                    refused,
                    malformed,
                }))
            }
            other => Err(error::internal(format!(
                "unexpected result of an allocation report: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use herd_api::alloc::AllocStatus;
    use herd_consensus::codec;
    use herd_consensus::identity::ClusterIdentity;
    use herd_consensus::state_machine::StateMachineStore;
    use herd_consensus::storage::{KvStore, MemoryStore};
    use herd_consensus::types::{Entry, Proposal};
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;

    use super::*;
    use crate::machine::app::StateApp;

    fn report(id: &str, status: &str) -> AllocReport {
        AllocReport {
            id: id.into(),
            generation: 2,
            status: status.into(),
            at_ms: 1,
            event: "started".into(),
            detail: String::new(),
            exit_code: None,
            signal: None,
        }
    }

    #[test]
    fn a_report_this_release_cannot_read_is_refused_alone_with_its_place_and_field() {
        let (updates, malformed) = read_reports(vec![
            report("a1", "running"),
            report("a2", "migrating"),
            report("a3", "complete"),
        ]);
        let kept: Vec<(&str, AllocStatus)> =
            updates.iter().map(|u| (u.id.as_str(), u.status)).collect();
        assert_eq!(
            kept,
            vec![("a1", AllocStatus::Running), ("a3", AllocStatus::Complete)]
        );
        assert_eq!(malformed.len(), 1);
        let bad = &malformed[0];
        assert_eq!(
            (bad.position, bad.id.as_str(), bad.generation),
            (1, "a2", 2)
        );
        assert!(
            bad.reason.starts_with("reports[1]: field `status`")
                && bad.reason.contains("migrating"),
            "{}",
            bad.reason
        );
    }

    #[test]
    fn a_huge_id_is_not_echoed_whole() {
        let (updates, malformed) = read_reports(vec![report(&"x".repeat(100_000), "running")]);
        assert!(updates.is_empty());
        assert_eq!(malformed[0].id.len(), MAX_REPORT_ID);
    }

    fn entry(
        index: u64,
        payload: openraft::EntryPayload<herd_consensus::types::TypeConfig>,
    ) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn app() -> Arc<RwLock<StateApp>> {
        Arc::new(RwLock::new(StateApp::new(Arc::new(ClusterIdentity::new(
            1, None,
        )))))
    }

    fn index_of(app: &RwLock<StateApp>) -> u64 {
        app.read().expect("lock").applied_index()
    }

    /// The watch labels each set with the index the state beside it
    /// reflects: that index moves with the state, under its lock, on every
    /// path that changes the state (entries of every kind, a restart, a
    /// snapshot), not when Raft's metrics get round to it.
    #[tokio::test]
    async fn the_state_says_which_log_index_it_reflects() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let first = app();
        let mut sm = StateMachineStore::open(store.clone(), first.clone()).expect("open");
        assert_eq!(index_of(&first), 0);
        let init = codec::encode(&Command::InitCluster {
            cluster_id: "c-1".into(),
        })
        .expect("encode");
        let batch = codec::encode(&vec![init]).expect("encode");
        sm.apply([entry(1, openraft::EntryPayload::Normal(Proposal(batch)))])
            .await
            .expect("apply");
        assert_eq!(index_of(&first), 1);
        // Blank entries change no record, but the state reflects them too,
        // as Raft's applied index does.
        sm.apply([
            entry(2, openraft::EntryPayload::Blank),
            entry(3, openraft::EntryPayload::Blank),
        ])
        .await
        .expect("apply");
        assert_eq!(index_of(&first), 3);
        assert_eq!(
            first.read().expect("lock").state().cluster_id.as_deref(),
            Some("c-1")
        );

        // A snapshot persists the state; a member restarting on the store
        // and one installing the snapshot both know where their state is.
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        let restarted = app();
        StateMachineStore::open(store, restarted.clone()).expect("reopen");
        assert_eq!(index_of(&restarted), 3);

        let installed = app();
        let mut other =
            StateMachineStore::open(Arc::new(MemoryStore::new()), installed.clone()).expect("open");
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        assert_eq!(index_of(&installed), 3);
        assert_eq!(
            installed
                .read()
                .expect("lock")
                .state()
                .cluster_id
                .as_deref(),
            Some("c-1")
        );
    }
}
