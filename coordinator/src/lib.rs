//! The coordinator: the replicated cluster state, the commands that change
//! it, and the gRPC services that serve clients, agents and peers.
//!
//! Owns `ClusterState` and its deterministic `apply`; leader-side machinery
//! (forwarding, cluster id) lives beside it. Storage and Raft mechanics come
//! from `herd-consensus`; this crate never names sled.
#![warn(missing_docs)]

pub mod app;
pub mod apply;
pub mod apply_alloc;
pub mod apply_drain;
pub mod apply_plan;
pub mod assignments;
pub mod batch;
pub mod command;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod forward;
pub mod handle;
pub mod leader_link;
pub mod leadership;
pub mod legacy;
pub mod liveness;
pub mod membership;
pub mod planning;
pub mod propose;
pub mod read_index;
pub mod reconcile;
pub mod scheduler;
pub mod service;
pub mod spec_codec;
pub mod start;
pub mod state;
pub mod status;
#[cfg(test)]
mod testkit;

pub use config::CoordinatorConfig;
pub use error::CoordinatorError;
pub use handle::{Coordinator, ReadConsistency};
pub use start::{start, RunningCoordinator};
