//! The ACL commands applied to the cluster state: the bridge from
//! [`super::state`]'s rules to the command results and persisted records.

use super::state::{self, TokenGrant};
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState, Record};

fn refused(reason: String) -> CommandResult {
    CommandResult::Rejected(Rejection::Acl(reason))
}

/// Applies [`crate::machine::command::Command::BootstrapAcl`].
pub fn bootstrap(
    cluster: &mut ClusterState,
    index: u64,
    grant: TokenGrant,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match state::bootstrap(&mut cluster.acl, index, grant, now_ms) {
        Ok(written) => {
            changes.put(Record::AclToken(&written.accessor), cluster);
            changes.put(Record::AclBootstrap, cluster);
            CommandResult::AclToken(written)
        }
        Err(reason) => refused(reason),
    }
}

/// Applies [`crate::machine::command::Command::CreateToken`].
pub fn create_token(
    cluster: &mut ClusterState,
    index: u64,
    grant: TokenGrant,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match state::create_token(&mut cluster.acl, index, grant, now_ms) {
        Ok(written) => {
            changes.put(Record::AclToken(&written.accessor), cluster);
            CommandResult::AclToken(written)
        }
        Err(reason) => refused(reason),
    }
}

/// Applies [`crate::machine::command::Command::RevokeToken`].
pub fn revoke_token(
    cluster: &mut ClusterState,
    index: u64,
    accessor: &str,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match state::revoke_token(&mut cluster.acl, index, accessor) {
        Ok((written, changed)) => {
            if changed {
                changes.put(Record::AclToken(accessor), cluster);
            }
            CommandResult::AclToken(written)
        }
        Err(reason) => refused(reason),
    }
}

#[cfg(test)]
mod tests {
    use herd_consensus::codec;
    use herd_consensus::storage::WriteOp;

    use super::super::{secret, Role};
    use super::*;
    use crate::machine::apply::apply;
    use crate::machine::command::Command;

    fn grant(role: Role) -> TokenGrant {
        let made = secret::generate().expect("random");
        TokenGrant {
            accessor: made.accessor,
            name: "t".into(),
            role,
            secret_hash: made.hash,
            ttl_ms: Some(60_000),
        }
    }

    /// The state and what the write ops persisted of it.
    #[derive(Default)]
    struct Member {
        state: ClusterState,
        stored: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    }

    /// Applies `command` the way a committed entry is: decoded from the
    /// bytes the log holds, its changes persisted; what is persisted must
    /// rebuild the same state.
    fn apply_logged(member: &mut Member, index: u64, command: Command) -> CommandResult {
        let bytes = codec::encode(&command).expect("encode");
        let decoded: Command = codec::decode(&bytes, "command").expect("decode");
        assert_eq!(decoded, command);
        let mut ops = Vec::new();
        let result = apply(
            &mut member.state,
            index,
            decoded,
            &mut ChangeLog::new(&mut ops),
        );
        for op in ops {
            match op {
                WriteOp::Put(k, v) => member.stored.insert(k, v),
                WriteOp::Delete(k) => member.stored.remove(&k),
            };
        }
        let pairs = member.stored.clone().into_iter().collect();
        let reread = ClusterState::from_pairs(pairs).expect("records read back");
        assert_eq!(reread, member.state);
        result
    }

    #[test]
    fn acl_commands_travel_through_the_log_and_persist() {
        let mut member = Member::default();
        let first = grant(Role::Operator);
        let result = apply_logged(
            &mut member,
            1,
            Command::BootstrapAcl {
                grant: TokenGrant {
                    ttl_ms: None,
                    ..first.clone()
                },
                now_ms: 10,
            },
        );
        assert!(matches!(result, CommandResult::AclToken(_)), "{result:?}");
        let again = apply_logged(
            &mut member,
            2,
            Command::BootstrapAcl {
                grant: grant(Role::Operator),
                now_ms: 11,
            },
        );
        assert!(matches!(
            again,
            CommandResult::Rejected(Rejection::Acl(ref reason)) if reason.contains("already")
        ));
        let reader = grant(Role::Read);
        let CommandResult::AclToken(written) = apply_logged(
            &mut member,
            3,
            Command::CreateToken {
                grant: reader.clone(),
                now_ms: 1_000,
            },
        ) else {
            panic!("create refused");
        };
        assert_eq!(written.expires_at_ms, Some(61_000));
        apply_logged(
            &mut member,
            4,
            Command::RevokeToken {
                accessor: reader.accessor.clone(),
            },
        );
        let state = &member.state;
        let token = &state.acl.tokens[&reader.accessor];
        assert!(token.revoked);
        assert_eq!((token.create_index, token.modify_index), (3, 4));
        let pairs = state.to_pairs();
        let keys: Vec<String> = pairs
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(keys.contains(&"acl/bootstrap".to_string()), "{keys:?}");
        assert!(keys.contains(&format!("acl/token/{}", reader.accessor)));
        assert_eq!(&ClusterState::from_pairs(pairs).expect("reads"), state);
    }
}
