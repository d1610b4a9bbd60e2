//! GPU power budgets on the node (issue 20, POLCA): the pure policy that
//! decides limits, and the actor that applies it.
//!
//! - [`policy`]: from a share of a budget, the measured draw and each GPU's
//!   figures and priority class, the limits to set (no I/O);
//! - [`governor`]: the [`PowerGovernor`] actor, beside the resource
//!   monitor, which holds the node's share, samples the GPUs every 50 ms and
//!   caps them through the [`GpuBackend`](crate::resources::GpuBackend);
//! - [`trace`] and [`replay`]: a SIMULATION for `herd bench power`, a
//!   synthetic fleet power trace replayed over simulated GPUs under the
//!   same policy.

pub mod governor;
pub mod policy;
pub mod replay;
pub mod share_file;
pub mod trace;

#[cfg(test)]
mod fleet_simulation;
#[cfg(test)]
mod governor_tests;

pub use governor::{
    GovernedGpu, GovernorArgs, GovernorStatus, NodeShare, PowerEvent, PowerGovernor, PowerMsg,
};
pub use policy::{
    decide, Decision, GpuPowerState, LimitChange, Phase, PolicyConfig, PriorityClass,
};
