//! Errors of the coordinator, and their one mapping to gRPC statuses.
//!
//! Every error status a coordinator returns says, in its metadata, why
//! (a stable reason code) and whether the request certainly had no effect
//! (`herd_api::retry`): clients decide whether to send a request again on
//! that, not on how a transport library reports failures.

use herd_api::retry::{ErrorMarks, LeaderHint, Reason};
use thiserror::Error;
use tonic::{Code, Status};

use crate::coordinator::Coordinator;
use crate::machine::command::Rejection;

/// Metadata key carrying the leader's address on errors, so clients can go
/// there (defined once, in `herd_api::retry`, for clients and coordinators).
pub use herd_api::retry::LEADER_HINT_KEY;

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
    /// This member may be cut off from a majority, or doubts its leader is
    /// not; nothing was proposed, so another member may serve (retryable).
    #[error("unavailable: {0}")]
    CutOff(String),
    /// Temporarily unable to serve, before anything was proposed: a read
    /// that could not be confirmed (retryable).
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
    /// The gRPC status: stable codes, the message as above, and the marks
    /// of [`CoordinatorError::marks`] in its metadata.
    pub fn to_status(&self) -> Status {
        let code = match self {
            CoordinatorError::NotMember { .. } => Code::FailedPrecondition,
            CoordinatorError::NoLeader { .. }
            | CoordinatorError::CutOff(_)
            | CoordinatorError::Unavailable(_) => Code::Unavailable,
            CoordinatorError::Rejected(Rejection::JobNotFound(_) | Rejection::NodeNotFound(_)) => {
                Code::NotFound
            }
            CoordinatorError::Rejected(Rejection::VersionMismatch { .. }) => Code::Aborted,
            CoordinatorError::Rejected(_) | CoordinatorError::Invalid(_) => Code::InvalidArgument,
            CoordinatorError::OutcomeUnknown(_) => Code::DeadlineExceeded,
            CoordinatorError::Membership(_) => Code::FailedPrecondition,
            CoordinatorError::Internal(_) => Code::Internal,
        };
        self.marks().on(Status::new(code, self.to_string()))
    }

    /// The reason code of this error, and whether the request certainly had
    /// no effect. Only an unknown outcome and an internal error leave that
    /// open; every other error is given before anything was proposed, or
    /// (a rejection) by an apply that changed nothing.
    pub fn marks(&self) -> ErrorMarks {
        let (reason, not_applied) = match self {
            CoordinatorError::NotMember { .. } => (Reason::NotMember, true),
            CoordinatorError::NoLeader { .. } => (Reason::NoLeader, true),
            CoordinatorError::CutOff(_) => (Reason::CutOff, true),
            CoordinatorError::Unavailable(_) => (Reason::Unavailable, true),
            CoordinatorError::Rejected(Rejection::JobNotFound(_) | Rejection::NodeNotFound(_)) => {
                (Reason::NotFound, true)
            }
            CoordinatorError::Rejected(Rejection::VersionMismatch { .. }) => {
                (Reason::Conflict, true)
            }
            CoordinatorError::Rejected(_) => (Reason::Rejected, true),
            CoordinatorError::Invalid(_) => (Reason::Invalid, true),
            CoordinatorError::Membership(_) => (Reason::Membership, true),
            CoordinatorError::OutcomeUnknown(_) => (Reason::OutcomeUnknown, false),
            CoordinatorError::Internal(_) => (Reason::Internal, false),
        };
        ErrorMarks {
            reason: Some(reason),
            not_applied,
            leader: None,
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        e.to_status()
    }
}

/// A malformed request, refused before anything was proposed: the status
/// says so in its metadata (`herd_api::retry`), with `message` as is.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    marked(
        Status::invalid_argument(message),
        Reason::Invalid,
        true,
        None,
    )
}

/// Something a read names does not exist; a read has no effect.
pub fn not_found(message: impl Into<String>) -> Status {
    marked(Status::not_found(message), Reason::NotFound, true, None)
}

/// A request for the leader only reached a member that is not it; nothing
/// was done, and the status names the leader when this member knows it.
pub fn not_leader(coordinator: &Coordinator, message: impl Into<String>) -> Status {
    marked(
        Status::failed_precondition(message),
        Reason::NotLeader,
        true,
        leader_hint(coordinator),
    )
}

/// A peer's message meant for another cluster or member, refused unread:
/// this is not the member it was meant for.
pub fn wrong_member(message: impl Into<String>) -> Status {
    marked(
        Status::failed_precondition(message),
        Reason::NotMember,
        true,
        None,
    )
}

/// A bug: an internal error, whose effect is unknown.
pub fn internal(message: impl Into<String>) -> Status {
    marked(Status::internal(message), Reason::Internal, false, None)
}

fn marked(status: Status, reason: Reason, not_applied: bool, leader: Option<LeaderHint>) -> Status {
    ErrorMarks {
        reason: Some(reason),
        not_applied,
        leader,
    }
    .on(status)
}

/// The leader as this member knows it (id and advertised address), unless
/// it is this member or unknown: what a client should try instead.
pub fn leader_hint(coordinator: &Coordinator) -> Option<LeaderHint> {
    let leader = coordinator.raft().metrics().borrow().current_leader?;
    if leader == coordinator.id() {
        return None;
    }
    Some(LeaderHint {
        id: Some(leader),
        addr: coordinator.member_addr(leader)?,
    })
}

#[cfg(test)]
mod tests {
    use herd_api::client::{may_try_elsewhere, Repeat};
    use herd_api::retry::{ErrorMarks, Reason, APPLIED_KEY, NOT_APPLIED, REASON_KEY};

    use super::*;

    #[test]
    fn every_error_carries_its_reason_and_whether_it_was_applied() {
        let cases = [
            (
                CoordinatorError::NotMember { id: 4 },
                Reason::NotMember,
                true,
            ),
            (
                CoordinatorError::NoLeader { waited_ms: 10 },
                Reason::NoLeader,
                true,
            ),
            (CoordinatorError::CutOff("x".into()), Reason::CutOff, true),
            (
                CoordinatorError::Unavailable("x".into()),
                Reason::Unavailable,
                true,
            ),
            (
                CoordinatorError::Rejected(Rejection::JobNotFound("j".into())),
                Reason::NotFound,
                true,
            ),
            (
                CoordinatorError::Rejected(Rejection::VersionMismatch {
                    key: "k".into(),
                    expected: 1,
                    actual: 2,
                }),
                Reason::Conflict,
                true,
            ),
            (
                CoordinatorError::Rejected(Rejection::InvalidSpec("s".into())),
                Reason::Rejected,
                true,
            ),
            (CoordinatorError::Invalid("x".into()), Reason::Invalid, true),
            (
                CoordinatorError::Membership("x".into()),
                Reason::Membership,
                true,
            ),
            (
                CoordinatorError::OutcomeUnknown("x".into()),
                Reason::OutcomeUnknown,
                false,
            ),
            (
                CoordinatorError::Internal("x".into()),
                Reason::Internal,
                false,
            ),
        ];
        for (error, reason, not_applied) in cases {
            let status = error.to_status();
            // On the wire, under the shared key names.
            assert_eq!(
                status
                    .metadata()
                    .get(REASON_KEY)
                    .and_then(|v| v.to_str().ok()),
                Some(reason.as_str()),
                "{error:?}"
            );
            assert_eq!(
                status
                    .metadata()
                    .get(APPLIED_KEY)
                    .and_then(|v| v.to_str().ok())
                    == Some(NOT_APPLIED),
                not_applied,
                "{error:?}"
            );
            let marks = ErrorMarks::read(&status).expect("marked");
            assert_eq!(marks.reason, Some(reason), "{error:?}");
            assert_eq!(marks.not_applied, not_applied, "{error:?}");
            assert_eq!(status.message(), error.to_string());
        }
    }

    #[test]
    fn clients_send_a_write_elsewhere_only_when_it_was_not_applied() {
        let write = Repeat::Unsafe;
        for error in [
            CoordinatorError::NotMember { id: 4 },
            CoordinatorError::NoLeader { waited_ms: 10 },
            CoordinatorError::CutOff("x".into()),
            CoordinatorError::Unavailable("x".into()),
        ] {
            assert!(may_try_elsewhere(&error.to_status(), write), "{error:?}");
        }
        let unknown = CoordinatorError::OutcomeUnknown("x".into()).to_status();
        assert!(!may_try_elsewhere(&unknown, write));
        assert!(may_try_elsewhere(&unknown, Repeat::Safe));
        for error in [
            CoordinatorError::Rejected(Rejection::JobNotFound("j".into())),
            CoordinatorError::Invalid("x".into()),
            CoordinatorError::Membership("x".into()),
            CoordinatorError::Internal("x".into()),
        ] {
            assert!(
                !may_try_elsewhere(&error.to_status(), Repeat::Safe),
                "{error:?}"
            );
        }
        // Statuses built in the services are marked the same way.
        assert!(!may_try_elsewhere(&invalid_argument("bad"), Repeat::Safe));
        assert!(!may_try_elsewhere(&not_found("gone"), Repeat::Safe));
        let bug = internal("bug");
        assert_eq!(ErrorMarks::read(&bug).map(|m| m.not_applied), Some(false));
    }
}
