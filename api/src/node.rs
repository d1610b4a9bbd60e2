//! Nodes as the replicated state knows them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// Whether the scheduler may place work on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Heartbeating and eligible for new work.
    Ready,
    /// Missed its heartbeat TTL; its work is placed elsewhere.
    Down,
    /// Being emptied by an operator; takes no new work.
    Draining,
}

impl NodeStatus {
    /// The stable lower-case name scripts read in `--output json`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Draining => "draining",
        }
    }
}

/// A node agent registered with the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique, operator-chosen name (`herd node --name`).
    pub name: String,
    /// Address of the agent's own gRPC server.
    pub addr: String,
    /// What the node offers to workloads.
    pub capacity: Resources,
    /// Free-form labels used by constraints.
    pub labels: BTreeMap<String, String>,
    /// Current scheduling status.
    pub status: NodeStatus,
    /// Whether new work may be placed here (`herd node eligibility NAME off`
    /// keeps what runs and takes nothing new).
    pub eligible: bool,
    /// When the node first registered, in ms since the Unix epoch (stamped by the leader).
    pub registered_at_ms: u64,
}
