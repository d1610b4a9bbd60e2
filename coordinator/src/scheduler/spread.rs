//! How a request's instances are spread over nodes.

/// Which nodes a request prefers among those that fit, so that operators can
/// trade density (fewer, fuller nodes) against fault tolerance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Spread {
    /// Prefer the fullest node that fits, leaving whole nodes free for large
    /// work (and for powering down).
    #[default]
    BinPack,
    /// Prefer nodes that run the fewest instances of this job (at most one per
    /// node while such nodes exist), then the emptiest node, so that losing
    /// one node loses as few instances as possible.
    SpreadNodes,
    /// Prefer the value of this label (e.g. `"rack"`) with the fewest instances
    /// of this job, then nodes with the fewest instances, then the fullest
    /// node; nodes without the label count as one more value.
    SpreadLabel(String),
}
