//! Node agents check client tokens too (docs/security.md, "Node agents"):
//! every `NodeAgent` RPC and every route of the OpenAI-compatible HTTP
//! endpoint needs a bearer token whose role allows it, once the cluster is
//! bootstrapped, exactly as on the coordinators.
//!
//! - [`table`]: the role each `NodeAgent` RPC and HTTP route needs;
//! - [`cache`]: the agent's copy of the cluster's token table (digests,
//!   never secrets) and the judgement of a presented token against it;
//! - [`refresh`]: fetching that table from the coordinators
//!   (`Agent.AclTable`) every few seconds, at once (rate-limited) on an
//!   unknown accessor, keeping the last one while they are away;
//! - [`guard`]: enforcement around the `NodeAgent` gRPC service;
//! - [`http`]: enforcement on the OpenAI-compatible endpoint, with
//!   OpenAI-style 401/403 bodies.
//!
//! Roles, bearer parsing and the digest check are `herd_api::acl`, the
//! same code the coordinators run.

pub mod cache;
pub mod guard;
pub mod http;
pub mod refresh;
pub mod table;

pub use cache::AgentAcl;
pub use guard::{guard, Guarded};
