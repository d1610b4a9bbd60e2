//! Why the metrics endpoint could not start.

use std::net::SocketAddr;

use thiserror::Error;

/// Why the metrics endpoint could not start.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The `--metrics-listen` address is taken or invalid.
    #[error("cannot serve metrics on {addr} (--metrics-listen): {message}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        message: String,
    },
}
