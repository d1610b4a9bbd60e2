//! GPU power budgets on the coordinators' side (issue 20, POLCA): what the
//! replicated state keeps of them, and the pure functions the leader and
//! the services compute from it.
//!
//! - [`budget`]: the [`PowerBudget`] record, a group's nodes, and its idle
//!   GPU power;
//! - [`share`]: a group's budget split into node shares, sent to each node
//!   with its heartbeat reply;
//! - [`placement`]: the budgets as the scheduler's power limits, so
//!   placement keeps every group under its hard budget;
//! - [`report`]: what nodes report of their GPUs' power, bounded, and the
//!   per-group status `herd power status` shows.

pub mod budget;
pub mod placement;
pub mod report;
pub mod share;

pub use budget::PowerBudget;
