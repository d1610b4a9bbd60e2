//! Driver errors: each says what failed and for which allocation.

use thiserror::Error;

/// Why a driver could not do what was asked.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The spec cannot run on this host (missing binary, bad directory...): not retryable here.
    #[error("allocation {alloc}: {message}")]
    Unsupported {
        /// The allocation.
        alloc: String,
        /// What is missing or wrong.
        message: String,
    },
    /// Starting failed at run time (spawn error, permission...).
    #[error("allocation {alloc}: cannot start: {message}")]
    Start {
        /// The allocation.
        alloc: String,
        /// The OS or runtime error.
        message: String,
    },
    /// The handle does not belong to this driver or is malformed.
    #[error("allocation {alloc}: invalid handle: {message}")]
    BadHandle {
        /// The allocation.
        alloc: String,
        /// What is wrong with it.
        message: String,
    },
    /// Talking to a running workload failed.
    #[error("allocation {alloc}: {message}")]
    Io {
        /// The allocation.
        alloc: String,
        /// The OS error.
        message: String,
    },
}

impl DriverError {
    /// `driver` cannot do `what` to the workload of `handle` (a move its
    /// capabilities do not include).
    pub fn cannot(handle: &super::WorkloadHandle, driver: &str, what: &str) -> Self {
        DriverError::Unsupported {
            alloc: handle.alloc_id.clone(),
            message: format!("the {driver} driver cannot {what} a running workload"),
        }
    }
}
