//! Client authentication: bearer tokens with roles, kept hashed in the
//! replicated state (docs/security.md).
//!
//! - [`role`]: the roles and which includes which;
//! - [`table`]: the one table of the role each RPC needs;
//! - [`secret`]: making, parsing, hashing and comparing token secrets;
//! - [`state`]: the tokens in the cluster state, and the check of a
//!   presented token; [`apply`]: the ACL commands applied to the state;
//! - [`guard`]: enforcement around each client and agent service;
//! - [`service`]: the `Acl` gRPC service (`herd acl ...`);
//! - [`agent_table`]: the token table node agents fetch to check their
//!   own services (`Agent.AclTable`);
//! - [`revoked`]: revoked TLS certificates, from the state to this
//!   process's gates and to the agents.
//!
//! Roles, bearer parsing and the digest check live in `herd_api::acl`
//! (node agents check tokens too) and are re-exported here.
//!
//! Until `herd acl bootstrap` the cluster is open, as Nomad's is before
//! `nomad acl bootstrap`: `herd dev`, the chaos harness and every cluster
//! that never bootstraps run without tokens.

pub mod agent_table;
pub mod apply;
pub mod guard;
pub mod revoked;
pub mod role;
pub mod secret;
pub mod service;
pub mod state;
pub mod table;

pub use guard::{guard, Guarded};
pub use role::Role;
pub use state::{AclState, Denied, TokenGrant, TokenWritten};
