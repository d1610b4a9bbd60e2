//! `Coordinator`: one member's handle on Raft and the state, and the routing
//! that lets any member serve any request.
//!
//! Writes and membership changes run on the leader (forwarded when this
//! member is not it). Linearizable reads use Raft's read-index: the leader
//! confirms its leadership with a quorum and names a log index; this member
//! waits until it has applied that index and answers from its own state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_api::proto::internal::internal_client::InternalClient;
use herd_api::proto::internal::{RaftEnvelope, ReadIndexRequest};
use herd_consensus::codec;
use herd_consensus::health::PeerHealth;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::network::{channel_to, internal_client};
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::state_machine::StateMachineStats;
use herd_consensus::types::Proposal;
use herd_consensus::Raft;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState};
use tonic::transport::Channel;

use crate::app::StateApp;
use crate::command::{Command, CommandResult};
use crate::error::CoordinatorError;
use crate::forward::{ForwardError, LeaderReply, LeaderRequest, MemberView, StatusView, Written};
use crate::read_index::ReadIndexBatcher;
use crate::state::ClusterState;

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
/// Peers that answered within this window count as healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(2);
/// Forwarded writes give up after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Membership changes can wait for a learner to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running coordinator member.
pub struct Coordinator {
    raft: Raft,
    app: Arc<RwLock<StateApp>>,
    identity: Arc<ClusterIdentity>,
    health: Arc<PeerHealth>,
    sm_stats: Arc<StateMachineStats>,
    tuning: RaftTuning,
    peers: Mutex<HashMap<String, InternalClient<Channel>>>,
    read_batcher: ReadIndexBatcher,
}

/// Milliseconds since the Unix epoch; the leader stamps commands with it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn server_state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn is_connect_failure(status: &tonic::Status) -> bool {
    // Only a refused or failed connection proves the request was never
    // delivered; anything else may have reached the leader and been applied.
    let text = format!("{status:?}").to_lowercase();
    status.code() == tonic::Code::Unavailable
        && (text.contains("connection refused")
            || text.contains("tcp connect error")
            || text.contains("connect error"))
}

impl Coordinator {
    /// Wraps the running pieces of a member.
    pub fn new(
        raft: Raft,
        app: Arc<RwLock<StateApp>>,
        identity: Arc<ClusterIdentity>,
        health: Arc<PeerHealth>,
        sm_stats: Arc<StateMachineStats>,
        tuning: RaftTuning,
    ) -> Self {
        Self {
            raft,
            app,
            identity,
            health,
            sm_stats,
            tuning,
            peers: Mutex::new(HashMap::new()),
            read_batcher: ReadIndexBatcher::default(),
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

    /// Reads the applied state. Call [`Coordinator::read_barrier`] first for fresh reads.
    pub fn read_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let guard = self.app.read().unwrap_or_else(|p| p.into_inner());
        f(guard.state())
    }

    fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// Whether this member belongs to a cluster (has a membership config).
    pub fn is_member(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_some()
    }

    fn member_addr(&self, id: u64) -> Option<String> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    fn peer_client(&self, addr: &str) -> Result<InternalClient<Channel>, CoordinatorError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client = internal_client(channel_to(addr).map_err(CoordinatorError::Internal)?);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn envelope(&self, target_id: u64, payload: Vec<u8>) -> RaftEnvelope {
        RaftEnvelope {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            target_id,
            payload,
        }
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

    /// Runs `request` on the leader, wherever it is, waiting for one if needed.
    pub async fn on_leader(&self, request: LeaderRequest) -> Result<LeaderReply, CoordinatorError> {
        let started = Instant::now();
        loop {
            if !self.is_member() {
                return Err(CoordinatorError::NotMember { id: self.id() });
            }
            let attempt = match self.metrics().current_leader {
                Some(leader) if leader == self.id() => {
                    self.execute_as_leader(request.clone()).await
                }
                Some(leader) => self.forward(leader, &request).await,
                None => Err(ForwardError::NotLeader),
            };
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(ForwardError::NotLeader) => {}
                Err(ForwardError::NotMember { id }) => {
                    tracing::debug!(
                        member = id,
                        "forward target is not a member; waiting for a new leader"
                    )
                }
                Err(ForwardError::Membership(message)) => {
                    return Err(CoordinatorError::Membership(message))
                }
                Err(ForwardError::Failed(message)) => {
                    return Err(match request {
                        LeaderRequest::Status => CoordinatorError::Unavailable(message),
                        _ => CoordinatorError::OutcomeUnknown(message),
                    })
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

    async fn forward(
        &self,
        leader: u64,
        request: &LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        let Some(addr) = self.member_addr(leader) else {
            return Err(ForwardError::NotLeader);
        };
        let mut client = self
            .peer_client(&addr)
            .map_err(|e| ForwardError::Failed(e.to_string()))?;
        let payload = codec::encode(request).map_err(|e| ForwardError::Failed(e.to_string()))?;
        let mut rpc = tonic::Request::new(self.envelope(leader, payload));
        rpc.set_timeout(match request {
            LeaderRequest::AddMember { .. }
            | LeaderRequest::ReplaceMember { .. }
            | LeaderRequest::RemoveMember { .. } => MEMBERSHIP_TIMEOUT,
            _ => FORWARD_TIMEOUT,
        });
        match client.forward(rpc).await {
            Ok(reply) => codec::decode::<Result<LeaderReply, ForwardError>>(
                &reply.into_inner().payload,
                "forward reply",
            )
            .map_err(|e| ForwardError::Failed(e.to_string()))?,
            Err(status) if is_connect_failure(&status) => {
                tracing::debug!(leader, %addr, "leader unreachable; waiting for a new one");
                Err(ForwardError::NotLeader)
            }
            Err(status) => Err(ForwardError::Failed(format!(
                "leader {leader} at {addr}: {}",
                status.message()
            ))),
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
            LeaderRequest::Write(mut command) => {
                command.stamp(now_ms());
                let kind = command.kind();
                let bytes =
                    codec::encode(&command).map_err(|e| ForwardError::Failed(e.to_string()))?;
                let response = self
                    .raft
                    .client_write(Proposal(bytes))
                    .await
                    .map_err(write_error)?;
                let result: CommandResult = codec::decode(&response.data.0, "command result")
                    .map_err(|e| ForwardError::Failed(e.to_string()))?;
                tracing::debug!(
                    command = kind,
                    index = response.log_id.index,
                    "command applied"
                );
                Ok(LeaderReply::Written(Written {
                    result,
                    log_index: response.log_id.index,
                }))
            }
            LeaderRequest::AddMember { id, addr } => self.add_member(id, addr).await,
            LeaderRequest::RemoveMember { id } => self.remove_member(id).await,
            LeaderRequest::ReplaceMember {
                old_id,
                new_id,
                new_addr,
            } => self.replace_member(old_id, new_id, new_addr).await,
            LeaderRequest::Status => {
                if self.metrics().current_leader != Some(self.id()) {
                    return Err(ForwardError::NotLeader);
                }
                Ok(LeaderReply::Status(self.local_status_view()))
            }
        }
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    fn membership_reply(&self, log_index: u64) -> LeaderReply {
        LeaderReply::Membership {
            voters: self.voters().into_iter().collect(),
            log_index,
        }
    }

    async fn add_member(&self, id: u64, addr: String) -> Result<LeaderReply, ForwardError> {
        if id == 0 {
            return Err(ForwardError::Membership("member id 0 is reserved".into()));
        }
        if self.voters().contains(&id) {
            return match self.member_addr(id) {
                Some(existing) if existing == addr => Ok(self.membership_reply(self.metrics().last_log_index.unwrap_or(0))),
                Some(existing) => Err(ForwardError::Membership(format!(
                    "member {id} already exists at {existing}; to move it use `herd cluster replace {id} NEW_ID NEW_ADDR`"
                ))),
                None => Err(ForwardError::Membership(format!("member {id} already exists"))),
            };
        }
        tracing::info!(member = id, %addr, "adding learner, then promoting to voter");
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(write_error)?;
        let response = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }

    async fn remove_member(&self, id: u64) -> Result<LeaderReply, ForwardError> {
        let voters = self.voters();
        if !voters.contains(&id) {
            return Err(ForwardError::Membership(format!(
                "member {id} is not a voter (voters: {voters:?})"
            )));
        }
        if voters.len() == 1 {
            return Err(ForwardError::Membership(
                "cannot remove the last voter".into(),
            ));
        }
        tracing::info!(member = id, "removing voter");
        let response = self
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }

    async fn replace_member(
        &self,
        old_id: u64,
        new_id: u64,
        new_addr: String,
    ) -> Result<LeaderReply, ForwardError> {
        let voters = self.voters();
        if !voters.contains(&old_id) {
            return Err(ForwardError::Membership(format!(
                "member {old_id} is not a voter (voters: {voters:?})"
            )));
        }
        if old_id == new_id {
            return Err(ForwardError::Membership(
                "a replacement needs a new member id: a wiped member must not reuse its old id, or it could vote twice in one term"
                    .into(),
            ));
        }
        if voters.contains(&new_id) {
            return Err(ForwardError::Membership(format!(
                "member {new_id} is already a voter"
            )));
        }
        tracing::info!(old = old_id, new = new_id, addr = %new_addr, "replacing member");
        self.raft
            .add_learner(new_id, BasicNode::new(new_addr), true)
            .await
            .map_err(write_error)?;
        let mut next = voters;
        next.remove(&old_id);
        next.insert(new_id);
        let response = self
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await
            .map_err(write_error)?;
        Ok(self.membership_reply(response.log_id.index))
    }

    /// Returns once a read started now would see every write acknowledged before it.
    pub async fn read_barrier(&self, consistency: ReadConsistency) -> Result<(), CoordinatorError> {
        if consistency == ReadConsistency::Stale {
            return Ok(());
        }
        let started = Instant::now();
        let read_index = loop {
            if !self.is_member() {
                return Err(CoordinatorError::NotMember { id: self.id() });
            }
            let attempt = match self.metrics().current_leader {
                Some(leader) if leader == self.id() => self.read_index_as_leader().await,
                Some(leader) => self.remote_read_index(leader).await,
                None => Err(ForwardError::NotLeader),
            };
            match attempt {
                Ok(index) => break index,
                Err(ForwardError::Failed(message)) => {
                    return Err(CoordinatorError::Unavailable(message))
                }
                Err(_) if started.elapsed() > LEADER_WAIT => {
                    return Err(CoordinatorError::NoLeader {
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
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

    async fn remote_read_index(&self, leader: u64) -> Result<u64, ForwardError> {
        let Some(addr) = self.member_addr(leader) else {
            return Err(ForwardError::NotLeader);
        };
        let mut client = self
            .peer_client(&addr)
            .map_err(|e| ForwardError::Failed(e.to_string()))?;
        let mut rpc = tonic::Request::new(ReadIndexRequest {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
        });
        rpc.set_timeout(FORWARD_TIMEOUT);
        match client.read_index(rpc).await {
            Ok(reply) => Ok(reply.into_inner().read_index),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    || is_connect_failure(&status) =>
            {
                Err(ForwardError::NotLeader)
            }
            Err(status) => Err(ForwardError::Failed(format!(
                "read index from {addr}: {}",
                status.message()
            ))),
        }
    }

    /// The cluster status: the leader's view, or this member's own when `stale`.
    pub async fn status(&self, stale: bool) -> Result<StatusView, CoordinatorError> {
        if stale {
            return Ok(self.local_status_view());
        }
        match self.on_leader(LeaderRequest::Status).await? {
            LeaderReply::Status(view) => Ok(view),
            other => Err(CoordinatorError::Internal(format!(
                "unexpected leader reply {other:?}"
            ))),
        }
    }

    fn local_status_view(&self) -> StatusView {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, Option<u64>> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let me = self.id();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberView {
                id: *id,
                addr: node.addr.clone(),
                healthy: *id == me
                    || self
                        .health
                        .since_last_contact(*id)
                        .is_some_and(|since| since < HEALTHY_WITHIN),
                voter: voters.contains(id),
                matched_index: if *id == me {
                    metrics.last_log_index
                } else {
                    matched.get(id).copied().flatten()
                },
            })
            .collect();
        StatusView {
            leader: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            commit_index: metrics.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// This member's own Raft state, answered without contacting anyone.
    pub fn member_report(&self) -> herd_api::proto::v1::MemberReport {
        let metrics = self.metrics();
        herd_api::proto::v1::MemberReport {
            id: self.id(),
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            state: server_state_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|l| l.index),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            snapshots_installed: self
                .sm_stats
                .snapshots_installed
                .load(std::sync::atomic::Ordering::Relaxed),
            initialized: self.is_member(),
            state_digest: self.read_state(|s| s.digest()),
        }
    }

    /// Raft tuning in force (status pages show it).
    pub fn tuning(&self) -> &RaftTuning {
        &self.tuning
    }
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ForwardError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Membership(e.to_string())
        }
        RaftError::Fatal(e) => ForwardError::Failed(format!("raft stopped: {e}")),
    }
}
