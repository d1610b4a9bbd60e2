//! Placement policy: where the instances of a job should run.
//!
//! Pure functions over plain inputs ([`NodeView`], [`AllocView`],
//! [`PlacementRequest`]): no I/O, no clock, no randomness. The same inputs
//! always give the same [`PlacementPlan`], whatever the order of the nodes, so
//! the leader can build a plan from a snapshot with [`place`] and Raft's
//! `apply` can re-check it against the newest state with [`verify_plan`].
//!
//! Placement runs in stages, as in Nomad and the Kubernetes scheduler
//! framework: feasibility filters (schedulable, constraints, GPU model, total
//! capacity), then fit against free resources, then scoring (bin-pack or
//! spread), then the best node; when nothing fits, preemption of strictly
//! lower-priority work. Every rejection is counted per reason so that blocked
//! work says why in words a user can act on.
//!
//! Choices worth knowing:
//! - Scores are integers (fill in parts per million) and ties fall to the node
//!   name, so plans do not depend on node order, floating point or hashing.
//! - Affinities are a score term: a matching node's score improves by its
//!   weight times 10,000 ppm (weight 100 = the whole fill range), summed over
//!   the affinities, and added to the bin-pack or spread fill score. Spread
//!   counts (instances per node or label value) still rank first, so an
//!   affinity chooses among equally spread nodes and never breaks a spread.
//! - There is no candidate limit: every feasible node is scored once per call
//!   and then kept in order, so each instance costs O(log nodes) in large
//!   requests and the plan is the best one, not the best of a sample.
//! - `preemption_could_help` follows the Kubernetes framework: it says whether
//!   freeing room on some node could ever let the instance in, not whether
//!   this plan could (it already tried).
//!
//! This module must never depend on `ClusterState`, commands or `apply`:
//! callers map their state into the views.

mod affinity;
mod alloc_view;
mod candidates;
mod constraint;
mod feasibility;
mod index;
mod node_view;
mod pass;
mod place;
mod plan;
mod power;
mod preempt;
mod reason;
mod request;
mod spread;
mod verdict;
mod verify;

#[cfg(test)]
mod gpu_index_tests;
#[cfg(test)]
mod power_tests;
#[cfg(test)]
mod testkit;

pub use affinity::Affinity;
pub use alloc_view::AllocView;
pub use constraint::{Constraint, ConstraintOp};
pub use feasibility::could_hold;
pub use node_view::NodeView;
pub use pass::Pass;
pub use place::place;
pub use plan::{Blocked, Eviction, Placement, PlacementPlan};
pub use power::PowerLimit;
pub(crate) use power::{extra_watts_of, idle_watts_of};
pub use request::PlacementRequest;
pub use spread::Spread;
pub use verdict::{PlanVerdict, Rejection};
pub use verify::{verify_plan, verify_plan_with_power};
