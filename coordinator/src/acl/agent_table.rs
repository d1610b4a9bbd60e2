//! `Agent.AclTable`: the token table node agents check their own services
//! against (docs/security.md, "Node agents check tokens too").
//!
//! An agent holds a node certificate and a node token, and is trusted with
//! what the coordinators keep: digests, never secrets. The table is read
//! from this member's applied state, without a read barrier: agents poll it
//! every few seconds, so a follower's lag (about one heartbeat) is small
//! beside the polling interval.

use herd_api::proto::agent::{AclTableReply, AclTableToken};

use super::AclState;

/// The reply for `acl` and the revoked certificates `revoked`
/// ([`super::revoked::revoked_in`]), read at applied log index `index`.
pub fn reply(acl: &AclState, revoked: Vec<String>, index: u64) -> AclTableReply {
    AclTableReply {
        revoked_certificates: revoked,
        revocation_lists: Vec::new(),
        bootstrapped: acl.enforced(),
        tokens: acl
            .tokens
            .iter()
            .map(|(accessor, token)| AclTableToken {
                accessor: accessor.clone(),
                secret_sha256: token.secret_hash.to_vec(),
                role: token.role.as_str().to_string(),
                expires_at_ms: token.expires_at_ms.unwrap_or(0),
                revoked: token.revoked,
            })
            .collect(),
        index,
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{bootstrap, create_token, revoke_token, TokenGrant};
    use super::super::{secret, Role};
    use super::*;

    #[test]
    fn the_table_carries_digests_roles_expiry_and_revocation_never_secrets() {
        let mut acl = AclState::default();
        let open = reply(&acl, Vec::new(), 1);
        assert!(!open.bootstrapped && open.tokens.is_empty());
        let first = secret::generate().expect("random");
        let grant = |made: &secret::NewSecret, role, ttl_ms| TokenGrant {
            accessor: made.accessor.clone(),
            name: "t".into(),
            role,
            secret_hash: made.hash,
            ttl_ms,
        };
        bootstrap(&mut acl, 2, grant(&first, Role::Operator, None), 100).expect("bootstrap");
        let reader = secret::generate().expect("random");
        create_token(&mut acl, 3, grant(&reader, Role::Read, Some(50)), 100).expect("create");
        revoke_token(&mut acl, 4, &first.accessor).expect("revoke");
        let table = reply(&acl, Vec::new(), 4);
        assert!(table.bootstrapped);
        assert_eq!(table.index, 4);
        assert_eq!(table.tokens.len(), 2);
        let find = |accessor: &str| {
            table
                .tokens
                .iter()
                .find(|t| t.accessor == accessor)
                .expect("listed")
        };
        let op = find(&first.accessor);
        assert_eq!(
            (op.role.as_str(), op.revoked, op.expires_at_ms),
            ("operator", true, 0)
        );
        assert_eq!(op.secret_sha256, first.hash.to_vec());
        let rd = find(&reader.accessor);
        assert_eq!(
            (rd.role.as_str(), rd.revoked, rd.expires_at_ms),
            ("read", false, 150)
        );
        let secret_part = reader.bearer.split_once('.').expect("dot").1;
        assert!(!format!("{table:?}").contains(secret_part));
    }
}
