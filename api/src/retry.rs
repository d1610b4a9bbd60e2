//! What a coordinator's error status says about sending the request again.
//!
//! Whether a client may resend a request elsewhere must not hinge on how a
//! transport library happens to report failures. So every error status a
//! coordinator returns carries, in its metadata, a stable reason code
//! ([`REASON_KEY`]), a "not applied" mark ([`APPLIED_KEY`]) when the
//! coordinator knows the request had no effect, and, when it knows a
//! leader it is not, that leader's address and id ([`LEADER_HINT_KEY`],
//! [`LEADER_ID_KEY`]). The key names live here only, so the coordinators
//! that write them and the client that reads them cannot drift apart.
//!
//! Metadata arrives from the network: [`ErrorMarks::read`] takes only what
//! it can parse and bounds what it keeps.

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::config_file::check_host_port;

/// Metadata key of the stable reason code ([`Reason::as_str`]).
pub const REASON_KEY: &str = "herd-reason";
/// Metadata key of the "not applied" mark: [`NOT_APPLIED`] when the
/// coordinator knows the request had no effect, absent otherwise.
pub const APPLIED_KEY: &str = "herd-applied";
/// The value of [`APPLIED_KEY`] that says the request had no effect.
pub const NOT_APPLIED: &str = "no";
/// Metadata key of the leader's address (`HOST:PORT`, as it advertises it)
/// on a status from a member that is not the leader but knows who is.
pub const LEADER_HINT_KEY: &str = "herd-leader";
/// Metadata key of the leader's member id, beside [`LEADER_HINT_KEY`], so a
/// client that reaches members at other addresses than they advertise can
/// still find the leader among its own.
pub const LEADER_ID_KEY: &str = "herd-leader-id";

/// Longest leader address a client accepts from a hint.
const MAX_HINT_LEN: usize = 256;

/// Why a coordinator did not serve a request: the stable codes of
/// [`REASON_KEY`], so clients decide on them instead of on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// This member is not the leader, and the request is for the leader only.
    NotLeader,
    /// No leader was elected within the wait.
    NoLeader,
    /// This member may be cut off from a majority (or doubts its leader).
    CutOff,
    /// This coordinator does not belong to a cluster yet.
    NotMember,
    /// Temporarily unable to serve, for another reason.
    Unavailable,
    /// The request may or may not have been applied.
    OutcomeUnknown,
    /// The state machine refused the command; nothing changed.
    Rejected,
    /// What the request names does not exist.
    NotFound,
    /// A compare-and-set's expected version did not match.
    Conflict,
    /// The request itself is malformed.
    Invalid,
    /// A membership change was refused.
    Membership,
    /// A bug or a storage failure.
    Internal,
}

impl Reason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Reason; 12] = [
        Reason::NotLeader,
        Reason::NoLeader,
        Reason::CutOff,
        Reason::NotMember,
        Reason::Unavailable,
        Reason::OutcomeUnknown,
        Reason::Rejected,
        Reason::NotFound,
        Reason::Conflict,
        Reason::Invalid,
        Reason::Membership,
        Reason::Internal,
    ];

    /// The code on the wire; stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotLeader => "not-leader",
            Reason::NoLeader => "no-leader",
            Reason::CutOff => "cut-off",
            Reason::NotMember => "not-member",
            Reason::Unavailable => "unavailable",
            Reason::OutcomeUnknown => "outcome-unknown",
            Reason::Rejected => "rejected",
            Reason::NotFound => "not-found",
            Reason::Conflict => "conflict",
            Reason::Invalid => "invalid",
            Reason::Membership => "membership",
            Reason::Internal => "internal",
        }
    }

    /// The reason a wire code names; None for one this release does not know.
    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// Whether another coordinator might serve what this one did not: it
    /// could not serve here (no leader, not a member, cut off...), as
    /// opposed to an answer (a rejection, a not-found) that any member
    /// would give alike.
    pub fn elsewhere(self) -> bool {
        matches!(
            self,
            Reason::NotLeader
                | Reason::NoLeader
                | Reason::CutOff
                | Reason::NotMember
                | Reason::Unavailable
                | Reason::OutcomeUnknown
        )
    }
}

/// The leader a member that is not it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// Its member id, when known.
    pub id: Option<u64>,
    /// Its advertised address, `HOST:PORT`.
    pub addr: String,
}

/// What a coordinator said about an error status, read back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMarks {
    /// The reason; None when its code is one this release does not know
    /// (a newer coordinator's).
    pub reason: Option<Reason>,
    /// Whether the coordinator knows the request had no effect.
    pub not_applied: bool,
    /// The leader, when the coordinator named one (and it parsed).
    pub leader: Option<LeaderHint>,
}

impl ErrorMarks {
    /// The marks of `status`; None when it carries no reason code at all
    /// (an older coordinator's status, or the transport's own).
    pub fn read(status: &Status) -> Option<ErrorMarks> {
        let metadata = status.metadata();
        let reason = metadata
            .get(REASON_KEY)?
            .to_str()
            .ok()
            .and_then(Reason::parse);
        let not_applied = metadata
            .get(APPLIED_KEY)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == NOT_APPLIED);
        let leader = metadata
            .get(LEADER_HINT_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|addr| addr.len() <= MAX_HINT_LEN && check_host_port(addr).is_ok())
            .map(|addr| LeaderHint {
                id: metadata
                    .get(LEADER_ID_KEY)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|id| id.parse::<u64>().ok())
                    .filter(|id| *id != 0),
                addr: addr.to_string(),
            });
        Some(ErrorMarks {
            reason,
            not_applied,
            leader,
        })
    }

    /// Writes these marks into `status`'s metadata. A leader address that
    /// cannot travel as metadata (not visible ASCII) is left out.
    pub fn write(&self, status: &mut Status) {
        let metadata = status.metadata_mut();
        if let Some(reason) = self.reason {
            metadata.insert(REASON_KEY, MetadataValue::from_static(reason.as_str()));
        }
        if self.not_applied {
            metadata.insert(APPLIED_KEY, MetadataValue::from_static(NOT_APPLIED));
        }
        if let Some(hint) = &self.leader {
            if let Ok(addr) = MetadataValue::try_from(hint.addr.as_str()) {
                metadata.insert(LEADER_HINT_KEY, addr);
                if let Some(id) = hint.id {
                    metadata.insert(LEADER_ID_KEY, MetadataValue::from(id));
                }
            }
        }
    }

    /// `status` with these marks written into it.
    pub fn on(&self, mut status: Status) -> Status {
        self.write(&mut status);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_are_distinct() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        let mut codes: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        assert_eq!(Reason::parse("from-the-future"), None);
    }

    #[test]
    fn marks_survive_the_metadata_and_bad_hints_are_dropped() {
        let marks = ErrorMarks {
            reason: Some(Reason::NotLeader),
            not_applied: true,
            leader: Some(LeaderHint {
                id: Some(3),
                addr: "10.0.0.3:7100".into(),
            }),
        };
        let status = marks.on(Status::failed_precondition("not the leader"));
        assert_eq!(ErrorMarks::read(&status), Some(marks));

        // No reason code: not a coordinator that speaks this protocol.
        assert_eq!(ErrorMarks::read(&Status::unavailable("x")), None);

        // Untrusted values: an unknown reason, a malformed address and id.
        let mut status = Status::unavailable("x");
        let metadata = status.metadata_mut();
        metadata.insert(REASON_KEY, MetadataValue::from_static("from-the-future"));
        metadata.insert(APPLIED_KEY, MetadataValue::from_static("maybe"));
        metadata.insert(
            LEADER_HINT_KEY,
            MetadataValue::from_static("not an address"),
        );
        let read = ErrorMarks::read(&status).expect("marked");
        assert_eq!(read.reason, None);
        assert!(!read.not_applied);
        assert_eq!(read.leader, None);

        let mut status = Status::unavailable("x");
        let metadata = status.metadata_mut();
        metadata.insert(REASON_KEY, MetadataValue::from_static("no-leader"));
        metadata.insert(LEADER_HINT_KEY, MetadataValue::from_static("h:1"));
        metadata.insert(LEADER_ID_KEY, MetadataValue::from_static("-1"));
        let read = ErrorMarks::read(&status).expect("marked");
        assert_eq!(
            read.leader,
            Some(LeaderHint {
                id: None,
                addr: "h:1".into()
            })
        );
    }
}
