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
}
