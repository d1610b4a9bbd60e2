//! What the scheduler is asked to place.

use herd_api::power_class::PowerClass;
use herd_api::resources::Resources;

use super::{Affinity, Constraint, Spread};

/// Instances of one job to place, with everything that decides where they
/// may go and which nodes they prefer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// The job the instances belong to; spreading counts its existing
    /// allocations ([`AllocView::job`](super::AllocView::job)).
    pub job: String,
    /// The job's priority, 0 (lowest) to 100 (highest): it may evict only
    /// allocations of strictly lower priority.
    pub priority: u32,
    /// Indexes of the instances to place, each once, in the order to place
    /// them.
    pub instances: Vec<u32>,
    /// What each instance needs from its node.
    pub resources: Resources,
    /// Label conditions every chosen node must meet.
    pub constraints: Vec<Constraint>,
    /// Label preferences that score nodes up or down (never filter them).
    pub affinities: Vec<Affinity>,
    /// Which fitting nodes are preferred.
    pub spread: Spread,
    /// All or nothing: either every instance is placed or none is (learners
    /// of a training job are useless alone).
    pub gang: bool,
    /// What each GPU of an instance is expected to draw: committed against
    /// the hard budgets of the chosen node's power groups.
    pub power_class: PowerClass,
}
