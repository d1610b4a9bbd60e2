//! The chaos harness: real herd clusters as OS processes, faults injected
//! into them, and checks on what clients observed.
//!
//! Today this crate owns [`process_cluster`], which starts, kills, restarts
//! and wipes coordinator processes; the integration tests and `herd bench`
//! drive real clusters through it. Fault schedules, histories and checkers
//! build on it. It talks to herd only through its binary and its public
//! gRPC API, never through internal crates.
#![warn(missing_docs)]

pub mod agents;
pub mod check;
pub mod history;
pub mod nemesis;
pub mod ports;
pub mod process_cluster;
