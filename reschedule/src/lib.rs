//! herd's defragmenting rescheduler, planning half: the NUMA placement
//! model, the fragment rate objective, and planners that pick at most N
//! migrations lowering it.
//!
//! Data centres that create and release VMs all day end with free cores in
//! pieces too small for new VMs. This crate answers "which few migrations
//! free the most room for the VM shape we care about", as pure functions
//! (no I/O besides reading an instance file, no async), so the same code
//! plans for an instance file (`herd reschedule eval`) and, later, for a
//! live cluster.
//!
//! - [`model`]: PMs with NUMA nodes, VMs pinned to one or two of them,
//!   anti-affinity groups, moves.
//! - [`objective`]: the fragment rate for a target shape.
//! - [`state`]: a mutable state with incremental slot counting.
//! - [`validate`]: replays a plan and checks every rule.
//! - [`solver`]: the solvers behind one trait.
//! - [`vmr2l`]: the VMR2L paper's instance format.
//! - [`generate`]: seeded synthetic instances.
//! - [`fallback`]: the placement fallback's exact model (make room for a
//!   pending job by moving or evicting flexible work, or prove none).

pub mod fallback;
pub mod generate;
pub mod model;
pub mod objective;
pub mod rng;
pub mod solver;
pub mod state;
pub mod validate;
pub mod vmr2l;

pub use model::{Instance, Move, Placement, Shape};
pub use solver::{by_name, Limits, Solution, SolveError, Solver, SOLVER_NAMES};
pub use validate::{validate_plan, PlanError, Replay};
