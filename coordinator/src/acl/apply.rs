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
