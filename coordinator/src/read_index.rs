//! Batched Raft read-index on the leader.
//!
//! Every linearizable read needs the leader to confirm, with a quorum, that
//! it still leads. Concurrent reads share one confirmation: a read joins the
//! next confirmation that starts after it arrived (never one already in
//! flight), so each read still sees every write acknowledged before it began.

use std::sync::{Arc, Mutex};

use herd_consensus::Raft;
use openraft::error::RaftError;
use tokio::sync::oneshot;

use crate::forward::ForwardError;

type Waiter = oneshot::Sender<Result<u64, ForwardError>>;

#[derive(Default)]
struct Queue {
    confirming: bool,
    waiters: Vec<Waiter>,
}

/// Coalesces concurrent read-index requests into quorum confirmations.
#[derive(Clone, Default)]
pub struct ReadIndexBatcher {
    queue: Arc<Mutex<Queue>>,
}

impl ReadIndexBatcher {
    /// The index a read arriving now must wait for, once leadership is confirmed.
    pub async fn read_index(&self, raft: &Raft) -> Result<u64, ForwardError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiters.push(tx);
            !std::mem::replace(&mut queue.confirming, true)
        };
        if start {
            tokio::spawn(self.clone().confirm_until_empty(raft.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(ForwardError::Failed(
                "read-index confirmation was dropped".into(),
            ))
        })
    }

    async fn confirm_until_empty(self, raft: Raft) {
        loop {
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiters.is_empty() {
                    queue.confirming = false;
                    return;
                }
                std::mem::take(&mut queue.waiters)
            };
            // Every waiter in `batch` arrived before this confirmation starts.
            let result = match raft.get_read_log_id().await {
                Ok((read_log_id, _applied)) => Ok(read_log_id.map_or(0, |id| id.index)),
                Err(RaftError::APIError(_)) => Err(ForwardError::NotLeader),
                Err(RaftError::Fatal(e)) => Err(ForwardError::Failed(e.to_string())),
            };
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }
}
