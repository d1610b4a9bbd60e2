//! An allocation as the scheduler sees it.

use herd_api::power_class::PowerClass;
use herd_api::resources::Resources;

/// Work that already runs on a node, or has been placed there: it uses the
/// node's resources, and it may be evicted for higher-priority work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocView {
    /// Unique id; evictions name allocations by it.
    pub id: String,
    /// The job the allocation belongs to, so that spreading can count a job's
    /// instances per node and per label value.
    pub job: String,
    /// Name of the node the allocation uses; allocations on nodes that are not
    /// in the node list use nothing the scheduler can place on.
    pub node: String,
    /// What the allocation reserves on its node.
    pub resources: Resources,
    /// Its job's priority (0..=100): only strictly lower priorities than a
    /// request's may be evicted for it.
    pub priority: u32,
    /// The gang it belongs to, if any: a gang's allocations are evicted all
    /// together or not at all, on whatever nodes they run.
    pub gang: Option<String>,
    /// The GPU indices it holds on its node (empty: none, or a record from
    /// before GPUs were bound, which holds a count only): no index is
    /// given to a new placement while something holds it.
    pub gpu_indices: Vec<u32>,
    /// What each of its GPUs is expected to draw (its job's class): its
    /// part of its node's power groups' committed power.
    pub power_class: PowerClass,
}
