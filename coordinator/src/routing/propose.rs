//! Group commit of commands on the leader.
//!
//! openraft 0.9 waits for each log append to be durable before it accepts
//! the next one, so one Raft entry per command would cap throughput at one
//! fsync per write. Instead, commands that arrive while an earlier batch is
//! committing are packed into one entry, applied in order, and each caller
//! gets its own command's result.

use futures::future::join_all;
use herd_consensus::codec;
use herd_consensus::types::Proposal;
use herd_consensus::Raft;
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;

use crate::coordinator::now_ms;
use crate::machine::command::{Command, CommandResult};
use crate::routing::batch::{BatchLimits, Batcher};
use crate::routing::forward::{ForwardError, Written};

/// One entry commits at a time: the next batch fills while it does.
const LIMITS: BatchLimits = BatchLimits {
    max_in_flight: 1,
    max_items: 4096,
    // Well under the transport's 64 MiB message limit.
    max_weight: 8 * 1024 * 1024,
};

/// Proposes commands through Raft, batching concurrent ones.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    batcher: Batcher<Vec<u8>, Written>,
}

impl Proposer {
    /// A proposer for the member running `raft`.
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            batcher: Batcher::new(LIMITS),
        }
    }

    /// Proposes `command`, stamped with this leader's clock, and waits for its result.
    pub async fn propose(&self, mut command: Command) -> Result<Written, ForwardError> {
        command.stamp(now_ms());
        let bytes = codec::encode(&command).map_err(|e| ForwardError::Failed(e.to_string()))?;
        let weight = bytes.len();
        let raft = self.raft.clone();
        self.batcher
            .submit(bytes, weight, move |batch| commit(raft.clone(), batch))
            .await
    }

    /// Proposes several commands (a forwarded batch); results in order.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Vec<Result<Written, ForwardError>> {
        join_all(commands.into_iter().map(|command| self.propose(command))).await
    }
}

/// Commits encoded commands as one entry; one result per command.
async fn commit(raft: Raft, commands: Vec<Vec<u8>>) -> Vec<Result<Written, ForwardError>> {
    let count = commands.len();
    let all = |e: ForwardError| vec![Err(e); count];
    let bytes = match codec::encode_batch(&commands) {
        Ok(bytes) => bytes,
        Err(e) => return all(ForwardError::Failed(e.to_string())),
    };
    let response = match raft.client_write(Proposal(bytes)).await {
        Ok(response) => response,
        Err(e) => return all(write_error(e)),
    };
    let log_index = response.log_id.index;
    match codec::decode::<Vec<CommandResult>>(&response.data.0, "batch result") {
        Ok(results) if results.len() == count => results
            .into_iter()
            .map(|result| Ok(Written { result, log_index }))
            .collect(),
        Ok(results) => all(ForwardError::Failed(format!(
            "a batch of {count} commands produced {} results",
            results.len()
        ))),
        Err(e) => all(ForwardError::Failed(e.to_string())),
    }
}

/// Maps openraft's write errors to what a forwarding member understands.
pub fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ForwardError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Membership(e.to_string())
        }
        RaftError::Fatal(e) => ForwardError::Failed(format!("raft stopped: {e}")),
    }
}
