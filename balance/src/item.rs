//! Work the caller lets the policy move, as the policy sees it.

use serde::{Deserialize, Serialize};

/// The caller's name for a movable item (a request id, an allocation id).
pub type ItemId = String;

/// What sort of work an item is; the caller moves each kind its own way
/// (request migration, re-queueing a batch instance, live migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ItemKind {
    /// A queued or running inference request (moved by request migration).
    InferenceRequest,
    /// A batch instance placed here but not started.
    BatchInstance,
    /// An allocation of a job with `[balance] movable = true` whose driver
    /// can move it live.
    Allocation,
}

/// One item the caller allows the policy to move.
///
/// The caller lists only items it allows to move (`Agent::set_movable`):
/// balancing is switched off for a job or an item by leaving it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovableItem {
    /// The caller's id; unique on this node.
    pub id: ItemId,
    /// How the caller would move it.
    pub kind: ItemKind,
    /// Its contribution to this node's [`crate::LoadSummary::score`], in
    /// score points: how much the score drops here (and rises there) when
    /// it moves.
    pub weight: f64,
    /// Moves it has made so far (carried along by the caller, and in the
    /// offer, so the budget holds across nodes).
    pub moves_so_far: u32,
    /// When it last moved, in this caller's clock (ms), if ever.
    pub last_moved_ms: Option<u64>,
    /// The service whose instance must take it (an inference request can
    /// only continue on an engine of its own service); `None`: any peer
    /// may. The policy offers it only to peers whose load names an instance
    /// of it, and a recipient without one refuses.
    pub service: Option<String>,
}
