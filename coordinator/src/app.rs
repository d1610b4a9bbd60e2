//! The bridge between Raft and `ClusterState`: decodes committed commands,
//! applies them, and keeps the member's cluster identity current.

use std::sync::Arc;

use herd_consensus::codec;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::storage::WriteOp;
use herd_consensus::Application;

use crate::apply::apply;
use crate::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState};

/// The coordinator's [`Application`]: `ClusterState` plus identity upkeep.
pub struct StateApp {
    state: ClusterState,
    identity: Arc<ClusterIdentity>,
}

impl StateApp {
    /// An empty state for the member described by `identity`.
    pub fn new(identity: Arc<ClusterIdentity>) -> Self {
        Self {
            state: ClusterState::default(),
            identity,
        }
    }

    /// The current state, for reads.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn sync_identity(&self) {
        if let Some(id) = &self.state.cluster_id {
            self.identity.set_cluster_id(id);
        }
    }
}

impl Application for StateApp {
    /// Applies a batch of commands (see `propose`), each on its own: one
    /// malformed command is rejected without touching the others.
    fn apply(&mut self, index: u64, batch: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8> {
        let results: Vec<CommandResult> = match codec::decode_batch(batch, "command batch") {
            Ok(commands) => commands
                .iter()
                .map(|bytes| match crate::legacy::decode_command(bytes) {
                    Ok(command) => apply(
                        &mut self.state,
                        index,
                        command,
                        &mut ChangeLog::new(changes),
                    ),
                    Err(e) => CommandResult::Rejected(Rejection::Invalid(e.to_string())),
                })
                .collect(),
            Err(e) => vec![CommandResult::Rejected(Rejection::Invalid(e.to_string()))],
        };
        self.sync_identity();
        codec::encode(&results).unwrap_or_default()
    }

    fn restore(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        self.state = ClusterState::from_pairs(pairs)?;
        self.sync_identity();
        Ok(())
    }
}
