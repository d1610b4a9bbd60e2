//! What the scheduler decided.

/// The outcome of placing one request: where each instance goes, what must be
/// evicted to make room, and which instances could not be placed and why.
///
/// A plan is a proposal computed from a snapshot; it takes effect only after
/// [`verify_plan`](super::verify_plan) re-checks it against the newest state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementPlan {
    /// Instances placed, in the order of the request's instances.
    pub placements: Vec<Placement>,
    /// Allocations to evict (preemption), grouped by the instance they make
    /// room for, in the order they were chosen.
    pub evictions: Vec<Eviction>,
    /// Instances that could not be placed.
    pub blocked: Vec<Blocked>,
}

/// One instance assigned to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The instance's index within its job.
    pub instance: u32,
    /// The name of the node it goes to.
    pub node: String,
    /// The GPUs it gets there, by index: the lowest free ones, as many as
    /// the request asks for (empty when it asks for none). In a plan
    /// checked by [`verify_plan`](super::verify_plan), empty means "choose
    /// them at the check" (plans logged before GPUs were bound).
    pub gpu_indices: Vec<u32>,
}

/// One allocation evicted so that a higher-priority instance fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The allocation to stop.
    pub alloc_id: String,
    /// The node it runs on (for gangs, possibly not the instance's node).
    pub node: String,
    /// The instance it makes room for: if that placement is rejected at apply
    /// time, the eviction is dropped with it.
    pub for_instance: u32,
}

/// An instance that could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The instance's index within its job.
    pub instance: u32,
    /// Why, counted per reason over all nodes, e.g. `"no node with 2 free h100
    /// GPUs: 5 nodes have 1, 2 nodes have none"`.
    pub reason: String,
    /// Whether freeing resources could ever help: some node passes every
    /// filter and is large enough, but is full. True means the instance can
    /// be unblocked by work stopping or by a higher priority that allows
    /// preemption; false means only changing the request or the nodes can
    /// (constraints, GPU model, node sizes). The Kubernetes framework draws
    /// the same line between "unschedulable" and "unresolvable".
    pub preemption_could_help: bool,
}
