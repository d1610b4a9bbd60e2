//! Errors of the coordinator, and their one mapping to gRPC statuses.

use thiserror::Error;
use tonic::{Code, Status};

use crate::command::Rejection;

/// Metadata key carrying the leader's address on errors, so clients can go there.
pub const LEADER_HINT_KEY: &str = "herd-leader";

/// Everything a coordinator request can end in besides success.
#[derive(Debug, Clone, Error)]
pub enum CoordinatorError {
    /// This coordinator has not joined a cluster yet (retry elsewhere).
    #[error("coordinator {id} is not a member of a cluster yet: start it with --bootstrap or --join, or add it with `herd cluster add {id} ADDR`")]
    NotMember {
        /// This coordinator's id.
        id: u64,
    },
    /// No leader was elected within the wait (retryable).
    #[error("no leader elected after {waited_ms} ms: is a majority of coordinators up?")]
    NoLeader {
        /// How long the request waited.
        waited_ms: u64,
    },
    /// The state machine refused the command; nothing changed.
    #[error("{0}")]
    Rejected(Rejection),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A request whose outcome is unknown: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Temporarily unable to serve (retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// A bug or a storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    /// The gRPC status: stable codes, the message as above.
    pub fn to_status(&self) -> Status {
        let code = match self {
            CoordinatorError::NotMember { .. } => Code::FailedPrecondition,
            CoordinatorError::NoLeader { .. } | CoordinatorError::Unavailable(_) => {
                Code::Unavailable
            }
            CoordinatorError::Rejected(Rejection::JobNotFound(_) | Rejection::NodeNotFound(_)) => {
                Code::NotFound
            }
            CoordinatorError::Rejected(Rejection::VersionMismatch { .. }) => Code::Aborted,
            CoordinatorError::Rejected(_) | CoordinatorError::Invalid(_) => Code::InvalidArgument,
            CoordinatorError::OutcomeUnknown(_) => Code::DeadlineExceeded,
            CoordinatorError::Membership(_) => Code::FailedPrecondition,
            CoordinatorError::Internal(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        e.to_status()
    }
}
