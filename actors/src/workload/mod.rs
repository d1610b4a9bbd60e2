//! Workloads on this node: the [`WorkloadSupervisor`] takes the desired set
//! of allocations from the node agent and makes reality match it, one
//! [`WorkloadActor`] per allocation, through the [`crate::driver::Driver`]
//! seam. It reports everything that happens as [`AllocReport`]s.
//!
//! - [`supervisor`]: the desired set, fencing by generation, re-adoption.
//! - [`workload_actor`]: one allocation's start, watch, restart and stop.
//! - [`store`]: the handles persisted so a restarted agent re-adopts.
//! - [`restart`]: the local restart policy.
//! - [`report`]: what goes in and out.

pub mod report;
pub mod restart;
pub mod store;
pub mod supervisor;
pub mod workload_actor;

#[cfg(test)]
mod test_driver;
#[cfg(test)]
mod tests;

pub use report::{event, AllocReport, DesiredAlloc};
pub use restart::RestartPolicy;
pub use supervisor::{SupervisorArgs, SupervisorMsg, WorkloadSupervisor};
pub use workload_actor::{MoveOutReady, WorkloadActor};
