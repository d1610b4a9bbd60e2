//! herd's wire protocol and the plain types every crate shares.
//!
//! This crate owns the `.proto` definitions (compiled at build time), the
//! domain types that cross crate boundaries (job specs, resources, nodes),
//! their validation, and the conversions between the two. It must never
//! depend on consensus, storage or actor code: everything else depends on it.
#![warn(missing_docs)]

pub mod acl;
pub mod alloc;
pub mod autoscale;
pub mod capabilities;
pub mod client;
pub mod clock;
pub mod config_file;
pub mod convert;
pub mod driver_settings;
pub mod duration;
#[cfg(test)]
mod fixtures;
pub mod gate;
pub mod job;
pub mod limits;
pub mod migration;
pub mod node;
pub mod placement;
pub mod power;
pub mod power_class;
pub mod power_demand;
pub mod proto;
pub mod put_stream;
pub mod request_id;
pub mod resources;
pub mod retry;
pub mod rng;
pub mod spec_file;
pub mod tls;
pub mod validate;
pub mod vm;
