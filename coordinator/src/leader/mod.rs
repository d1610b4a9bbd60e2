//! The loops only the leader runs (scheduling, node liveness, migration
//! deadlines). Each decides from what only the leader
//! of the current term knows and proposes through
//! [`crate::Coordinator::decide_as_leader`], so a decision never outlives
//! the term it was made in.

pub mod liveness;
pub mod migrations;
pub mod scheduling;
