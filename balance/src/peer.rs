//! Who an agent is and how to reach it.

use serde::{Deserialize, Serialize};

/// A node's unique name (the coordinators' node name).
pub type NodeId = String;

/// How to reach an agent: what seeds carry and what every packet names as
/// its sender, so a reply needs no other address book.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node's name, unique in the fleet.
    pub id: NodeId,
    /// Where its agent-to-agent gRPC service (`AgentPeer`) listens.
    pub peer_addr: String,
    /// Where its HTTP endpoint listens, if it has one (for status links).
    pub http_addr: Option<String>,
}

impl PeerInfo {
    /// A peer with no HTTP endpoint.
    pub fn new(id: impl Into<NodeId>, peer_addr: impl Into<String>) -> Self {
        PeerInfo {
            id: id.into(),
            peer_addr: peer_addr.into(),
            http_addr: None,
        }
    }
}
