//! The bridge between Raft and `ClusterState`: decodes committed commands,
//! applies them, and keeps the member's cluster identity current.

use std::sync::Arc;

use herd_consensus::codec;
use herd_consensus::identity::ClusterIdentity;
use herd_consensus::state_machine::EntryPosition;
use herd_consensus::storage::WriteOp;
use herd_consensus::Application;

use crate::machine::apply::apply_entry;
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeFeed, ChangeLog, Changed, ClusterState};

/// The coordinator's [`Application`]: `ClusterState` plus identity upkeep.
pub struct StateApp {
    state: ClusterState,
    identity: Arc<ClusterIdentity>,
    /// The log index `state` reflects, kept beside it so that a read can
    /// say exactly which state it saw (see [`StateApp::applied_index`]).
    applied_index: u64,
    /// Tells loops what each applied batch changed.
    feed: ChangeFeed,
}

impl StateApp {
    /// An empty state for the member described by `identity`.
    pub fn new(identity: Arc<ClusterIdentity>) -> Self {
        Self {
            state: ClusterState::default(),
            identity,
            applied_index: 0,
            feed: ChangeFeed::default(),
        }
    }

    /// Where what each applied batch changed is published.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// The current state, for reads.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The log index [`StateApp::state`] reflects: read under the same lock
    /// as the state, unlike Raft's metrics, which publish it after the
    /// state has moved on. Agents fence assignment sets by it.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
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
    fn apply(&mut self, at: EntryPosition, batch: &[u8], changes: &mut Vec<WriteOp>) -> Vec<u8> {
        let mut touched = Changed {
            index: at.index,
            ..Changed::default()
        };
        let results: Vec<CommandResult> = match codec::decode_batch(batch, "command batch") {
            Ok(commands) => commands
                .iter()
                .map(
                    |bytes| match crate::machine::legacy::decode_command(bytes) {
                        Ok(command) => apply_entry(
                            &mut self.state,
                            at,
                            command,
                            &mut ChangeLog::recording(changes, &mut touched),
                        ),
                        Err(e) => CommandResult::Rejected(Rejection::Invalid(e.to_string())),
                    },
                )
                .collect(),
            Err(e) => vec![CommandResult::Rejected(Rejection::Invalid(e.to_string()))],
        };
        self.sync_identity();
        self.feed.publish(touched);
        codec::encode(&results).unwrap_or_default()
    }

    fn restore(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        self.state = ClusterState::from_pairs(pairs)?;
        self.sync_identity();
        self.feed.publish(Changed::everything(0));
        Ok(())
    }

    fn applied_to(&mut self, index: u64) {
        self.applied_index = index;
    }
}
