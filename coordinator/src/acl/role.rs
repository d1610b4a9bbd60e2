//! Roles: what a token may do. The type lives in `herd_api::acl::role`,
//! shared with the node agents, which check tokens too; re-exported here so
//! that `herd_coordinator::acl::role::Role` keeps naming it.

pub use herd_api::acl::role::*;
