//! Raft RPCs from other coordinators (the server side): decode, hand to
//! openraft, encode the result. The gRPC service that calls these lives in
//! the coordinator, which also checks the envelope's cluster and target.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::codec;
use crate::health::PeerHealth;
use crate::types::{NodeId, Raft, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

fn decode_request<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Status> {
    codec::decode(payload, what).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode_reply<T: Serialize>(reply: &T) -> Result<Vec<u8>, Status> {
    codec::encode(reply).map_err(|e| Status::internal(e.to_string()))
}

/// Handles an AppendEntries request, noting in `health` that its leader
/// reached this member.
pub async fn append_entries(
    raft: &Raft,
    health: &PeerHealth,
    payload: &[u8],
) -> Result<Vec<u8>, Status> {
    let request: AppendEntriesRequest<TypeConfig> =
        decode_request(payload, "append-entries request")?;
    heard(health, &request.vote);
    encode_reply(&raft.append_entries(request).await)
}

/// Handles a RequestVote request, noting in `health` that its candidate
/// reached this member.
pub async fn vote(raft: &Raft, health: &PeerHealth, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let request: VoteRequest<NodeId> = decode_request(payload, "vote request")?;
    heard(health, &request.vote);
    encode_reply(&raft.vote(request).await)
}

/// Handles one chunk of an InstallSnapshot transfer, noting in `health`
/// that its leader reached this member.
pub async fn install_snapshot(
    raft: &Raft,
    health: &PeerHealth,
    payload: &[u8],
) -> Result<Vec<u8>, Status> {
    let request: InstallSnapshotRequest<TypeConfig> =
        decode_request(payload, "install-snapshot request")?;
    heard(health, &request.vote);
    encode_reply(&raft.install_snapshot(request).await)
}

/// Records the sender of a request carrying `vote`: the leader or the
/// candidate it speaks for.
fn heard(health: &PeerHealth, vote: &Vote) {
    if let Some(sender) = vote.leader_id().voted_for() {
        health.record_heard(sender);
    }
}
