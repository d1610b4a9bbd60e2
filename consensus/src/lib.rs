//! Raft for herd: openraft's type configuration, a durable log and state
//! machine over a key/value store of herd's own, snapshots, and the Raft RPCs
//! over tonic.
//!
//! What is replicated is opaque here: commands are bytes applied by an
//! [`Application`] that the coordinator supplies. This crate must never
//! depend on the coordinator's state types, and nothing outside
//! [`storage`] may name sled.
#![warn(missing_docs)]
// openraft's storage traits return its 224-byte `StorageError`; helpers that
// feed them return it too rather than converting twice.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod error;
pub mod health;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod raft_config;
pub mod rpc;
pub mod seed;
pub mod state_machine;
pub mod storage;
pub mod types;

pub use error::{ConsensusError, Result};
pub use state_machine::Application;
pub use types::{NodeId, Raft, TypeConfig};
