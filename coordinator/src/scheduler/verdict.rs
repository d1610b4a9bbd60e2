//! What the apply-time check decided about a plan.

use super::{Eviction, Placement};

/// The part of a plan that still holds against the newest state, and why the
/// rest does not: what `apply` commits, and what goes back to be re-planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanVerdict {
    /// Placements that still fit, in plan order.
    pub accepted: Vec<Placement>,
    /// Evictions to carry out: those made for accepted placements.
    pub evictions: Vec<Eviction>,
    /// Placements that no longer fit.
    pub rejected: Vec<Rejection>,
}

impl PlanVerdict {
    /// Whether the whole plan holds, so the caller need not re-plan.
    pub fn is_fully_accepted(&self) -> bool {
        self.rejected.is_empty()
    }
}

/// One placement the apply-time check refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The instance whose placement was refused.
    pub instance: u32,
    /// The node the plan wanted it on.
    pub node: String,
    /// Why, e.g. `"node n1 lacks free memory: needs 4GiB, 2GiB free"`.
    pub reason: String,
}
