//! Batched Raft read-index on the leader.
//!
//! Every linearizable read needs the leader to confirm, with a quorum, that
//! it still leads. Concurrent reads share one confirmation through the same
//! group-commit primitive writes use ([`Batcher`]) with one batch in flight:
//! a read joins the next confirmation that starts after it arrived (never one
//! already in flight), so each read still sees every write acknowledged
//! before it began.

use herd_consensus::Raft;
use openraft::error::RaftError;

use crate::routing::batch::{BatchLimits, Batcher};
use crate::routing::forward::ForwardError;

/// One confirmation at a time; every read waiting joins the next one.
const LIMITS: BatchLimits = BatchLimits {
    max_in_flight: 1,
    max_items: usize::MAX,
    max_weight: usize::MAX,
};

/// Coalesces concurrent read-index requests into quorum confirmations.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    batcher: Batcher<(), u64>,
}

impl Default for ReadIndexBatcher {
    fn default() -> Self {
        Self {
            batcher: Batcher::new(LIMITS),
        }
    }
}

impl ReadIndexBatcher {
    /// The index a read arriving now must wait for, once leadership is confirmed.
    pub async fn read_index(&self, raft: &Raft) -> Result<u64, ForwardError> {
        let raft = raft.clone();
        self.batcher
            .submit((), 0, move |reads| {
                let raft = raft.clone();
                async move {
                    let result = match raft.get_read_log_id().await {
                        Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |id| id.index)),
                        Err(RaftError::APIError(_)) => Err(ForwardError::NotLeader),
                        Err(RaftError::Fatal(e)) => Err(ForwardError::Failed(e.to_string())),
                    };
                    vec![result; reads.len()]
                }
            })
            .await
    }
}
