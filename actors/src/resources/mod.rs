//! What this node offers: the host's CPUs, memory and disk.
//!
//! - [`host`]: figures read from `/proc`, cgroup files and `statvfs`.

pub mod error;
pub mod host;

pub use error::ResourceError;
