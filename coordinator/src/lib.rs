//! The coordinator: the replicated cluster state, the commands that change
//! it, and the gRPC services that serve clients, agents and peers.
//!
//! Laid out by role:
//! - [`state`]: what is replicated (`ClusterState`), how it persists, what
//!   each node is assigned, and the feed of what each batch changed;
//! - [`machine`]: how it changes: commands and the deterministic `apply`;
//! - [`coordinator`] and [`routing`]: one member's handle, and how any
//!   member gets a request to the leader (forwarding, group commit,
//!   read-index, leadership doubts, membership changes);
//! - [`leader`]: the loops only the leader runs (scheduling, liveness),
//!   each deciding in a term and proposing fenced by it;
//! - [`planning`] and [`scheduler`]: the bridge from the state to the pure
//!   placement policy, and the policy itself;
//! - [`service`]: the gRPC services; [`start`], [`config`]: running a member.
//! - [`dashboard`]: the read-only web pages of `--http-listen`.
//! - [`acl`]: client authentication, tokens and the role each RPC needs.
//! - [`autoscale`]: inference services' autoscaler (a leader loop) and
//!   `herd service status|scale`.
//! - [`metrics`]: the Prometheus metrics of `--metrics-listen`.
//! - [`request_record`]: which client request last changed a job, so its
//!   request id reaches the leader's and the agents' logs.
//!
//! Storage and Raft mechanics come from `herd-consensus`; this crate never
//! names sled.
#![warn(missing_docs)]

pub mod acl;
pub mod autoscale;
pub mod config;
pub mod coordinator;
pub mod dashboard;
pub mod data_dir;
pub mod error;
pub mod leader;
pub mod limits;
pub mod machine;
pub mod metrics;
pub mod planning;
pub mod power;
pub mod request_record;
pub mod reschedule;
pub mod routing;
pub mod scheduler;
pub mod service;
pub mod snapshot;
pub mod start;
pub mod state;
#[cfg(test)]
mod testkit;

pub use config::CoordinatorConfig;
pub use coordinator::{Coordinator, ReadConsistency};
pub use error::CoordinatorError;
pub use machine::command;
pub use start::{start, RunningCoordinator};
