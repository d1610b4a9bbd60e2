//! Why a request was refused, the same words on coordinators and agents.

use super::Role;

/// Why a request was refused; the first four are `Unauthenticated` (HTTP
/// 401), the last two `PermissionDenied` (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `authorization: Bearer ...` metadata.
    #[error("this cluster requires a token: pass --token or set HERD_TOKEN")]
    NoToken,
    /// Not of the shape `ACCESSOR.SECRET`, or an unknown accessor, or the
    /// wrong secret: the three are not told apart to the caller.
    #[error("the token is not valid here")]
    Invalid,
    /// Past its expiry.
    #[error("token {accessor} expired at {at_ms} ms since the epoch")]
    Expired {
        /// Its accessor.
        accessor: String,
        /// Its expiry.
        at_ms: u64,
    },
    /// Revoked.
    #[error("token {0} was revoked")]
    Revoked(String),
    /// A valid token whose role does not allow the RPC.
    #[error("token {accessor} has role {have}; {rpc} needs role {need}")]
    Role {
        /// Its accessor.
        accessor: String,
        /// Its role.
        have: Role,
        /// The role the RPC needs.
        need: Role,
        /// The RPC.
        rpc: String,
    },
    /// An RPC the role table does not list: refused to every token.
    #[error("{0} has no entry in the role table; refused to every token")]
    Unlisted(String),
}

impl Denied {
    /// Whether the caller did not prove who it is (`Unauthenticated`), as
    /// opposed to being someone not allowed (`PermissionDenied`).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, Denied::Role { .. } | Denied::Unlisted(_))
    }

    /// The gRPC status a refused request gets, on coordinators and agents
    /// alike: marked final (no other member would answer otherwise) and
    /// certainly not applied, so that clients neither retry nor wonder.
    pub fn to_status(&self) -> tonic::Status {
        let status = if self.is_unauthenticated() {
            tonic::Status::unauthenticated(self.to_string())
        } else {
            tonic::Status::permission_denied(self.to_string())
        };
        crate::retry::ErrorMarks {
            reason: Some(crate::retry::Reason::Rejected),
            not_applied: true,
            leader: None,
        }
        .on(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_final_and_say_who_failed_to_prove_itself() {
        let status = Denied::NoToken.to_status();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let marks = crate::retry::ErrorMarks::read(&status).expect("marked");
        assert!(marks.not_applied, "{status:?}");
        assert_eq!(marks.reason, Some(crate::retry::Reason::Rejected));
        let status = Denied::Unlisted("/x/y".into()).to_status();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("/x/y"), "{status:?}");
    }
}
