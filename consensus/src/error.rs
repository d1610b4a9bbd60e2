//! Errors of the consensus layer.

use thiserror::Error;

/// What can go wrong below the Raft API: storage, encoding, configuration.
#[derive(Debug, Error)]
pub enum ConsensusError {
    /// The storage engine failed; retrying rarely helps, the disk or data dir needs attention.
    #[error("storage error in {dir}: {message}")]
    Storage {
        /// Data directory the store lives in.
        dir: String,
        /// What the engine reported.
        message: String,
    },
    /// Bytes on disk or on the wire could not be decoded.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded ("log entry 17", "append-entries request").
        what: String,
        /// The decoder's complaint.
        message: String,
    },
    /// The Raft configuration was rejected by openraft.
    #[error("invalid raft configuration: {0}")]
    Config(String),
}

/// Result with [`ConsensusError`].
pub type Result<T, E = ConsensusError> = std::result::Result<T, E>;
