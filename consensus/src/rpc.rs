//! Raft RPCs from other coordinators (the server side): decode, hand to
//! openraft, encode the result. The gRPC service that calls these lives in
//! the coordinator, which also checks the envelope's cluster and target.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::codec;
use crate::types::Raft;

fn decode_request<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Status> {
    codec::decode(payload, what).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode_reply<T: Serialize>(reply: &T) -> Result<Vec<u8>, Status> {
    codec::encode(reply).map_err(|e| Status::internal(e.to_string()))
}

/// Handles an AppendEntries request.
pub async fn append_entries(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let request = decode_request(payload, "append-entries request")?;
    encode_reply(&raft.append_entries(request).await)
}

/// Handles a RequestVote request.
pub async fn vote(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let request = decode_request(payload, "vote request")?;
    encode_reply(&raft.vote(request).await)
}

/// Handles one chunk of an InstallSnapshot transfer.
pub async fn install_snapshot(raft: &Raft, payload: &[u8]) -> Result<Vec<u8>, Status> {
    let request = decode_request(payload, "install-snapshot request")?;
    encode_reply(&raft.install_snapshot(request).await)
}
