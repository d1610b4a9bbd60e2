//! openraft's type configuration for herd, declared once, with aliases.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Member ids of the coordinator cluster.
pub type NodeId = u64;

/// A command as the log carries it: encoded by the application, opaque here.
///
/// Serialized as a byte string (one copy, not one call per byte); bincode
/// writes that exactly as it writes a plain `Vec<u8>`, so old logs decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal({} bytes)", self.0.len())
    }
}

/// The application's answer to an applied command, encoded by the application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// herd's openraft types: opaque commands, u64 member ids, members known by address.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft member.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Position of an entry in the log.
pub type LogId = openraft::LogId<NodeId>;
/// A member's vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the applied state.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Description of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
