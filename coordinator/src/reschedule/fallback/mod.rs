//! The placement fallback ("Priority Matters"): when the fast placement
//! heuristic (the scheduler, with its node-by-node preemption) leaves a job
//! pending, the exact solver (`herd_reschedule::fallback`, HiGHS) gets a
//! short window to find a placement that moves (live) or evicts only what
//! the rules allow, or to prove that none exists; the outcome is recorded
//! for `herd job status`.
//!
//! - [`build`]: the state as the solver's model (pure).
//! - [`decide`]: the verdict, moves checked against the migration rules,
//!   and the placement plan (pure).
//! - [`run`]: the leader's loop that acts on it.
//! - [`record`]: what is recorded, and where.

pub mod build;
pub mod decide;
pub mod record;
pub mod run;
