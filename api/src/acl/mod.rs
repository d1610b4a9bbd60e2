//! The pure parts of client authentication that coordinators and node
//! agents share (docs/security.md): the roles, bearer tokens on the wire
//! (`ACCESSOR.SECRET`), the SHA-256 digests kept of their secrets and their
//! constant-time comparison, and the check of a presented token against a
//! token's record.
//!
//! Here rather than in the coordinator crate because node agents check
//! tokens too (their `NodeAgent` service and OpenAI-compatible endpoint),
//! and agents never depend on the coordinator crate. No clock, no state, no
//! randomness: making tokens and keeping them stay with the coordinators.

pub mod bearer;
pub mod check;
pub mod denied;
pub mod proto_rpcs;
pub mod role;
pub mod secret;

pub use check::{authenticate, TokenView};
pub use denied::Denied;
pub use role::Role;
