//! A node as the scheduler sees it.

use std::collections::BTreeMap;

use herd_api::resources::Resources;

/// What the scheduler needs to know about one node, and nothing more, so that
/// placement stays a pure function that tests can feed synthetic clusters.
///
/// Names are unique within one call: ties between equally good nodes are
/// broken by name, which makes plans independent of the order of the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's unique name; plans refer to nodes by it.
    pub name: String,
    /// Everything the node offers to workloads, before any allocation.
    pub capacity: Resources,
    /// Labels that [`Constraint`](super::Constraint)s and
    /// [`Spread::SpreadLabel`](super::Spread::SpreadLabel) read.
    pub labels: BTreeMap<String, String>,
    /// Whether new work may go there: ready and eligible. Draining and down
    /// nodes are not schedulable; their allocations still count as used.
    pub schedulable: bool,
}
