//! The client side of leader forwarding: how a member reaches the leader
//! with a leader-only request or a read-index question.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_api::client::is_connect_failure;
use herd_api::proto::internal::internal_client::InternalClient;
use herd_api::proto::internal::{RaftEnvelope, ReadIndexRequest};
use herd_consensus::codec;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::network::{internal_client, DialMap};
use herd_consensus::Raft;
use tonic::transport::Channel;

use crate::machine::command::Command;
use crate::routing::forward::{ForwardError, LeaderReply, LeaderRequest, Written};
use crate::routing::leadership::LeadershipWatch;

/// Forwarded requests give up after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Membership changes can wait for a learner to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Connections from this member to the others; cheap to clone.
#[derive(Clone)]
pub struct LeaderLink {
    raft: Raft,
    identity: Arc<ClusterIdentity>,
    dial: DialMap,
    peers: Arc<Mutex<HashMap<String, InternalClient<Channel>>>>,
}

impl LeaderLink {
    /// Links for the member running `raft`.
    pub fn new(raft: Raft, identity: Arc<ClusterIdentity>, dial: DialMap) -> Self {
        Self {
            raft,
            identity,
            dial,
            peers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The address member `id` advertises in the current membership.
    pub fn member_addr(&self, id: u64) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Where to dial member `id`: its advertised address unless the dial
    /// map says otherwise.
    fn dial_addr(&self, id: u64) -> Option<String> {
        let advertised = self.member_addr(id)?;
        Some(self.dial.resolve(id, &advertised).to_string())
    }

    /// The current leader, if it is another member.
    pub fn remote_leader(&self) -> Option<u64> {
        let leader = self.raft.metrics().borrow().current_leader?;
        (leader != self.identity.member_id()).then_some(leader)
    }

    fn client(&self, addr: &str) -> Result<InternalClient<Channel>, ForwardError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let client = internal_client(self.dial.channel(addr).map_err(ForwardError::Failed)?);
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

    /// Sends `request` to member `leader`; `NotLeader` when it is not (or unreachable).
    pub async fn forward(
        &self,
        leader: u64,
        request: &LeaderRequest,
    ) -> Result<LeaderReply, ForwardError> {
        let Some(addr) = self.dial_addr(leader) else {
            return Err(ForwardError::NotLeader);
        };
        let mut client = self.client(&addr)?;
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

    /// Forwards a batch of writes to the current leader in one call.
    ///
    /// The call is abandoned once `leadership` doubts the leader it went to:
    /// a batch stuck on a leader cut off from the others would otherwise
    /// hold its in-flight slot, and every write behind it, until the cut heals.
    pub async fn forward_writes(
        &self,
        commands: Vec<Command>,
        leadership: &LeadershipWatch,
    ) -> Vec<Result<Written, ForwardError>> {
        let count = commands.len();
        let all = |e: ForwardError| vec![Err(e); count];
        let Some(leader) = self.remote_leader() else {
            return all(ForwardError::NotLeader);
        };
        let request = LeaderRequest::WriteBatch(commands);
        let reply = tokio::select! {
            reply = self.forward(leader, &request) => reply,
            reason = leadership.lost(leader) => Err(ForwardError::Failed(format!(
                "{reason} while the forwarded batch was in flight; it may or may not have been applied"
            ))),
        };
        match reply {
            Ok(LeaderReply::WrittenBatch(results)) if results.len() == count => results,
            Ok(other) => all(ForwardError::Failed(format!(
                "unexpected leader reply {other:?}"
            ))),
            Err(e) => all(e),
        }
    }

    /// Asks member `leader` for the index a linearizable read must wait for.
    pub async fn read_index(&self, leader: u64) -> Result<u64, ForwardError> {
        let Some(addr) = self.dial_addr(leader) else {
            return Err(ForwardError::NotLeader);
        };
        let mut client = self.client(&addr)?;
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
}
