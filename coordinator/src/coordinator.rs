//! `Coordinator`: one member's handle on Raft and the state, and the routing
//! that lets any member serve any request.
//!
//! Writes and membership changes run on the leader: forwarded when this
//! member is not it, with concurrent writes sharing one forwarding call.
//! Linearizable reads use Raft's read-index: the leader confirms its
//! leadership with a quorum and names a log index; this member waits until
//! it has applied that index and answers from its own state.

use std::sync::{Arc, RwLock};
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_consensus::health::PeerHealth;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::network::DialMap;
use herd_consensus::state_machine::StateMachineStats;
use herd_consensus::Raft;
use openraft::{BasicNode, RaftMetrics};

use crate::error::CoordinatorError;
use crate::leader::liveness::Liveness;
use crate::machine::app::StateApp;
use crate::machine::command::{Command, CommandResult};
use crate::routing::batch::{BatchLimits, Batcher};
use crate::routing::forward::{ForwardError, LeaderReply, LeaderRequest, Written};
use crate::routing::leader_link::LeaderLink;
use crate::routing::leadership::LeadershipWatch;
use crate::routing::propose::Proposer;
use crate::routing::read_index::ReadIndexBatcher;
use crate::state::{Changed, ClusterState};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read began.
    Linearizable,
    /// Whatever this member has applied (may lag; never blocks on the leader).
    Stale,
}

/// How long a request waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Writes a follower forwards in one call to the leader.
const FORWARD_LIMITS: BatchLimits = BatchLimits {
    max_in_flight: 2,
    max_items: 4096,
    max_weight: 4096,
};

/// A running coordinator member.
pub struct Coordinator {
    pub(crate) raft: Raft,
    app: Arc<RwLock<StateApp>>,
    pub(crate) identity: Arc<ClusterIdentity>,
    pub(crate) health: Arc<PeerHealth>,
    pub(crate) sm_stats: Arc<StateMachineStats>,
    link: LeaderLink,
    leadership: LeadershipWatch,
    proposer: Proposer,
    forwarded_writes: Batcher<Command, Written>,
    read_batcher: ReadIndexBatcher,
    liveness: Arc<Liveness>,
    instruments: Arc<crate::metrics::Instruments>,
}

/// Milliseconds since the Unix epoch; the leader stamps commands with it.
pub use herd_api::clock::now_ms;

impl Coordinator {
    /// Wraps the running pieces of a member.
    pub fn new(
        raft: Raft,
        app: Arc<RwLock<StateApp>>,
        identity: Arc<ClusterIdentity>,
        health: Arc<PeerHealth>,
        sm_stats: Arc<StateMachineStats>,
        node_ttl: Duration,
        dial: DialMap,
    ) -> Self {
        Self {
            link: LeaderLink::new(raft.clone(), identity.clone(), dial),
            leadership: LeadershipWatch::new(raft.clone(), identity.member_id()),
            proposer: Proposer::new(raft.clone()),
            forwarded_writes: Batcher::new(FORWARD_LIMITS),
            read_batcher: ReadIndexBatcher::default(),
            liveness: Arc::new(Liveness::new(node_ttl)),
            instruments: Arc::default(),
            raft,
            app,
            identity,
            health,
            sm_stats,
        }
    }

    /// This member's Raft id.
    pub fn id(&self) -> u64 {
        self.identity.member_id()
    }

    /// The Raft handle (for the Raft RPC service).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Who this member is and which cluster it belongs to.
    pub fn identity(&self) -> &Arc<ClusterIdentity> {
        &self.identity
    }

    /// What each batch applied from now on changed: loops wait on this
    /// instead of recomputing on every Raft entry.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<Changed>> {
        self.app
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .feed()
            .subscribe()
    }

    /// Reads the applied state. Call [`Coordinator::read_barrier`] first for fresh reads.
    pub fn read_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let guard = self.app.read().unwrap_or_else(|p| p.into_inner());
        f(guard.state())
    }

    /// Reads the applied state together with the log index it reflects,
    /// under one lock: [`Coordinator::applied_index`] comes from Raft's
    /// metrics, published after the state moves, so reading the two apart
    /// can label a read with an index older or newer than what it saw.
    pub fn read_state_at<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> (u64, R) {
        let guard = self.app.read().unwrap_or_else(|p| p.into_inner());
        (guard.applied_index(), f(guard.state()))
    }

    pub(crate) fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// What this member counts as it happens, for its metrics.
    pub fn instruments(&self) -> &Arc<crate::metrics::Instruments> {
        &self.instruments
    }

    /// The leader's record of node heartbeats.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// The term this member leads in, if it leads now (as far as it
    /// knows): what a leader loop decides under and fences its proposals by
    /// ([`Coordinator::decide_as_leader`]).
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader == Some(self.id())).then_some(m.current_term)
    }

    /// Whether this member leads now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.leading_term().is_some()
    }

    /// Whether this member belongs to a cluster (has a membership config).
    pub fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }

    pub(crate) fn member_addr(&self, id: u64) -> Option<String> {
        self.link.member_addr(id)
    }

    /// Proposes `command` through the leader and returns what apply did.
    pub async fn write(&self, command: Command) -> Result<Written, CoordinatorError> {
        match self.on_leader(LeaderRequest::Write(command)).await? {
            LeaderReply::Written(written) => match written.result {
                CommandResult::Rejected(rejection) => Err(CoordinatorError::Rejected(rejection)),
                _ => Ok(written),
            },
            other => Err(CoordinatorError::Internal(format!(
                "unexpected leader reply {other:?}"
            ))),
        }
    }

    /// Proposes a decision this member made as leader of `term` (a node
    /// marked down, a plan, a lapsed drain): proposed here, never forwarded,
    /// and fenced by `term` so that apply refuses it if another leader
    /// appended it (see [`Command::Fenced`]).
    ///
    /// A leader loop that lost leadership gets an error and decides again
    /// under the next leader, from that leader's view.
    pub async fn decide_as_leader(
        &self,
        term: u64,
        command: Command,
    ) -> Result<Written, CoordinatorError> {
        let request = LeaderRequest::Write(Command::fenced(term, command));
        match self.execute_as_leader(request).await {
            Ok(LeaderReply::Written(written)) => match written.result {
                CommandResult::Rejected(rejection) => Err(CoordinatorError::Rejected(rejection)),
                _ => Ok(written),
            },
            Ok(other) => Err(CoordinatorError::Internal(format!(
                "unexpected reply to a leader's decision {other:?}"
            ))),
            Err(ForwardError::NotLeader) => Err(CoordinatorError::Unavailable(format!(
                "member {} no longer leads term {term}; the decision is dropped",
                self.id()
            ))),
            Err(ForwardError::NotMember { id }) => Err(CoordinatorError::NotMember { id }),
            Err(ForwardError::Membership(message)) => Err(CoordinatorError::Membership(message)),
            Err(ForwardError::Failed(message)) => Err(CoordinatorError::OutcomeUnknown(message)),
        }
    }

    /// Runs `request` on the leader, wherever it is, waiting for one if needed.
    pub async fn on_leader(&self, request: LeaderRequest) -> Result<LeaderReply, CoordinatorError> {
        let request = &request;
        self.with_leader(|leader| async move {
            let attempt = tokio::select! {
                attempt = self.attempt_on(leader, request) => attempt,
                reason = self.leadership.lost(leader) => match request {
                    // Read-only: ask again under the new leader.
                    LeaderRequest::Status => Err(ForwardError::NotLeader),
                    _ => {
                        return Err(CoordinatorError::OutcomeUnknown(format!(
                            "{reason} while the request was in flight; it may or may not have been applied"
                        )))
                    }
                },
            };
            match attempt {
                Ok(reply) => Ok(Some(reply)),
                Err(ForwardError::NotLeader) => Ok(None),
                Err(ForwardError::NotMember { id }) => {
                    tracing::debug!(
                        member = id,
                        "forward target is not a member; waiting for a new leader"
                    );
                    Ok(None)
                }
                Err(ForwardError::Membership(message)) => {
                    Err(CoordinatorError::Membership(message))
                }
                Err(ForwardError::Failed(message)) => Err(match request {
                    LeaderRequest::Status => CoordinatorError::Unavailable(message),
                    _ => CoordinatorError::OutcomeUnknown(message),
                }),
            }
        })
        .await
    }

    /// Waits for a leader (up to [`LEADER_WAIT`], on the runtime's clock)
    /// and runs `attempt` on it until it gives an answer: `Ok(Some(_))`, or
    /// an error, ends the wait; `Ok(None)` (that member was not the leader
    /// after all) asks again once a leader is known.
    ///
    /// Refuses at once, with nothing sent, when this member is not in a
    /// cluster, doubts the leader it knows, or has no leader and may be cut
    /// off from a majority: another member may do better.
    async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, CoordinatorError>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, CoordinatorError>>,
    {
        let started = Instant::now();
        loop {
            if !self.is_member() {
                return Err(CoordinatorError::NotMember { id: self.id() });
            }
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(leader) => {
                    if let Some(reason) = self.leadership.doubt(leader) {
                        return Err(CoordinatorError::CutOff(reason));
                    }
                    if let Some(answer) = attempt(leader).await? {
                        return Ok(answer);
                    }
                }
                None => {
                    if let Some(reason) = self.leadership.cut_off(&self.health) {
                        return Err(CoordinatorError::CutOff(reason));
                    }
                }
            }
            if started.elapsed() > LEADER_WAIT {
                return Err(CoordinatorError::NoLeader {
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One try of `request` on `leader`: here when this member leads, else forwarded.
    async fn attempt_on(
        &self,
        leader: u64,
        request: &LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        if leader == self.id() {
            return self.execute_as_leader(request.clone()).await;
        }
        match request {
            LeaderRequest::Write(command) => {
                let link = self.link.clone();
                let leadership = self.leadership.clone();
                self.forwarded_writes
                    .submit(command.clone(), 1, move |batch| {
                        let link = link.clone();
                        let leadership = leadership.clone();
                        async move { link.forward_writes(batch, &leadership).await }
                    })
                    .await
                    .map(LeaderReply::Written)
            }
            _ => self.link.forward(leader, request).await,
        }
    }

    /// Serves a leader-only request here; `NotLeader` when this member is not the leader.
    pub async fn execute_as_leader(
        &self,
        request: LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        if !self.is_member() {
            return Err(ForwardError::NotMember { id: self.id() });
        }
        match request {
            LeaderRequest::Write(command) => {
                let kind = command.kind();
                let written = self.proposer.propose(command).await?;
                tracing::debug!(command = kind, index = written.log_index, "command applied");
                Ok(LeaderReply::Written(written))
            }
            LeaderRequest::WriteBatch(commands) => Ok(LeaderReply::WrittenBatch(
                self.proposer.propose_all(commands).await,
            )),
            LeaderRequest::AddMember { id, addr } => self.add_member(id, addr).await,
            LeaderRequest::RemoveMember { id } => self.remove_member(id).await,
            LeaderRequest::ReplaceMember {
                old_id,
                new_id,
                new_addr,
            } => self.replace_member(old_id, new_id, new_addr).await,
            LeaderRequest::Status => {
                if self.raft.metrics().borrow().current_leader != Some(self.id()) {
                    return Err(ForwardError::NotLeader);
                }
                Ok(LeaderReply::Status(self.local_status_view()))
            }
        }
    }

    /// Returns once a read started now would see every write acknowledged before it.
    pub async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), CoordinatorError> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        let read_index = self
            .with_leader(|leader| async move {
                let confirm = async {
                    if leader == self.id() {
                        self.read_index_as_leader().await
                    } else {
                        self.link.read_index(leader).await
                    }
                };
                let attempt = tokio::select! {
                    attempt = confirm => attempt,
                    // A read has no effect: ask again under the new leader.
                    _ = self.leadership.lost(leader) => Err(ForwardError::NotLeader),
                };
                match attempt {
                    Ok(index) => Ok(Some(index)),
                    Err(ForwardError::Failed(message)) => {
                        Err(CoordinatorError::Unavailable(message))
                    }
                    Err(_) => Ok(None),
                }
            })
            .await?;
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map_err(|e| {
                CoordinatorError::Unavailable(format!("waiting to apply index {read_index}: {e}"))
            })?;
        Ok(())
    }

    /// Confirms leadership with a quorum and returns the index reads must wait for.
    pub async fn read_index_as_leader(&self) -> Result<u64, ForwardError> {
        self.read_batcher.read_index(&self.raft).await
    }
}
