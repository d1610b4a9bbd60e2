//! Tokens in the replicated state, the commands that change them, and the
//! check of a presented token against them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use herd_api::acl::Denied;
use herd_api::acl::{check, TokenView};

use super::secret::{self, SecretHash};
use super::Role;

/// Most tokens the state keeps, revoked ones included: each is a record
/// every member holds.
pub const MAX_TOKENS: usize = 10_000;

/// Longest token name.
pub const MAX_NAME: usize = 128;

/// When and by which token authentication was turned on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrapped {
    /// Leader's clock when it was applied, ms since the epoch.
    pub at_ms: u64,
    /// The log index of the bootstrap.
    pub index: u64,
    /// The first operator token's accessor.
    pub accessor: String,
}

/// One token as the state keeps it: never its secret, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// What it is for, for people.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret.
    pub secret_hash: SecretHash,
    /// Leader's clock at creation, ms since the epoch.
    pub created_at_ms: u64,
    /// When it stops being accepted (ms since the epoch); None: never.
    pub expires_at_ms: Option<u64>,
    /// Revoked tokens are kept (listed as such) and refused.
    pub revoked: bool,
    /// Log index of the creation.
    pub create_index: u64,
    /// Log index of the last change.
    pub modify_index: u64,
}

impl TokenRecord {
    /// What the token check (`herd_api::acl::check`) reads of it.
    pub fn view(&self) -> TokenView<'_> {
        TokenView {
            role: self.role,
            secret_hash: &self.secret_hash,
            expires_at_ms: self.expires_at_ms,
            revoked: self.revoked,
        }
    }
}

/// The access-control part of the cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclState {
    /// Set once by `herd acl bootstrap`; from then on every client and
    /// agent request needs a token. Never cleared: revoking every token
    /// does not open the cluster again.
    pub bootstrapped: Option<Bootstrapped>,
    /// Tokens by accessor.
    pub tokens: BTreeMap<String, TokenRecord>,
}

/// A token to create, as a [`crate::machine::command::Command`] carries it
/// (JSON inside the entry, so that fields added later can default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// A fresh random accessor.
    pub accessor: String,
    /// What it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, made by the member that took the request
    /// (the secret itself never enters the log).
    pub secret_hash: SecretHash,
    /// Expires this long after it is applied, ms; None: never.
    pub ttl_ms: Option<u64>,
}

/// A token as a successful ACL command left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenWritten {
    /// Its accessor.
    pub accessor: String,
    /// When it was created.
    pub created_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: Option<u64>,
}

impl AclState {
    /// Whether requests need a token.
    pub fn enforced(&self) -> bool {
        self.bootstrapped.is_some()
    }

    /// The valid token `bearer` names, at `now_ms` (this member's clock):
    /// its accessor and role.
    pub fn authenticate(&self, bearer: &str, now_ms: u64) -> Result<(String, Role), Denied> {
        check::authenticate(bearer, now_ms, |accessor| {
            self.tokens.get(accessor).map(TokenRecord::view)
        })
    }

    /// Whether `bearer` names an accessor this state does not hold (a
    /// token created moments ago that this member has not applied yet).
    pub fn is_unknown(&self, bearer: &str) -> bool {
        secret::parse(bearer).is_some_and(|p| !self.tokens.contains_key(p.accessor))
    }
}

/// Checks a grant's own fields (name, TTL), the same in the service and in
/// apply.
pub fn check_grant(grant: &TokenGrant) -> Result<(), String> {
    check_name(&grant.name)?;
    if grant.accessor.is_empty() || grant.accessor.len() > 64 || grant.accessor.contains('.') {
        return Err(format!("accessor {:?} is malformed", grant.accessor));
    }
    if grant.ttl_ms == Some(0) {
        return Err("a TTL must be positive (omit it for a token that never expires)".into());
    }
    Ok(())
}

/// Checks a token name: 1 to [`MAX_NAME`] characters, none of them control
/// characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(format!(
            "field `name`: must be 1 to {MAX_NAME} characters, got {}",
            name.chars().count()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("field `name`: {name:?} holds control characters"));
    }
    Ok(())
}

/// Adds `grant` to `acl` at log `index` (leader's clock `now_ms`); refuses,
/// changing nothing, a malformed grant, a reused accessor, or a full table.
pub fn create_token(
    acl: &mut AclState,
    index: u64,
    grant: TokenGrant,
    now_ms: u64,
) -> Result<TokenWritten, String> {
    check_grant(&grant)?;
    if acl.tokens.contains_key(&grant.accessor) {
        return Err(format!("accessor {} is taken", grant.accessor));
    }
    if acl.tokens.len() >= MAX_TOKENS {
        return Err(format!(
            "the cluster already holds {MAX_TOKENS} tokens (revoked ones included)"
        ));
    }
    let expires_at_ms = grant.ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
    acl.tokens.insert(
        grant.accessor.clone(),
        TokenRecord {
            name: grant.name,
            role: grant.role,
            secret_hash: grant.secret_hash,
            created_at_ms: now_ms,
            expires_at_ms,
            revoked: false,
            create_index: index,
            modify_index: index,
        },
    );
    Ok(TokenWritten {
        accessor: grant.accessor,
        created_at_ms: now_ms,
        expires_at_ms,
    })
}

/// Turns authentication on with `grant`, an operator token; refuses a
/// second time, or a grant of another role.
pub fn bootstrap(
    acl: &mut AclState,
    index: u64,
    grant: TokenGrant,
    now_ms: u64,
) -> Result<TokenWritten, String> {
    if acl.bootstrapped.is_some() {
        return Err("ACLs are already bootstrapped; ask an operator for a token".into());
    }
    if grant.role != Role::Operator {
        return Err(format!(
            "the bootstrap token must have role operator, not {}",
            grant.role
        ));
    }
    let written = create_token(acl, index, grant, now_ms)?;
    acl.bootstrapped = Some(Bootstrapped {
        at_ms: now_ms,
        index,
        accessor: written.accessor.clone(),
    });
    Ok(written)
}

/// Revokes the token `accessor`; revoking it again changes nothing and
/// succeeds. An unknown accessor is refused.
pub fn revoke_token(
    acl: &mut AclState,
    index: u64,
    accessor: &str,
) -> Result<(TokenWritten, bool), String> {
    let Some(token) = acl.tokens.get_mut(accessor) else {
        return Err(format!("no token with accessor {accessor:?}"));
    };
    let changed = !token.revoked;
    if changed {
        token.revoked = true;
        token.modify_index = index;
    }
    Ok((
        TokenWritten {
            accessor: accessor.to_string(),
            created_at_ms: token.created_at_ms,
            expires_at_ms: token.expires_at_ms,
        },
        changed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, ttl_ms: Option<u64>) -> (TokenGrant, String) {
        let made = secret::generate().expect("random");
        (
            TokenGrant {
                accessor: made.accessor,
                name: "t".into(),
                role,
                secret_hash: made.hash,
                ttl_ms,
            },
            made.bearer,
        )
    }

    #[test]
    fn bootstrap_once_then_tokens_authenticate_until_revoked_or_expired() {
        let mut acl = AclState::default();
        assert!(!acl.enforced());
        let (first, first_bearer) = grant(Role::Operator, None);
        bootstrap(&mut acl, 3, first, 1_000).expect("first bootstrap");
        assert!(acl.enforced());
        let (again, _) = grant(Role::Operator, None);
        let before = acl.clone();
        assert!(bootstrap(&mut acl, 4, again, 1_000)
            .unwrap_err()
            .contains("already"));
        assert_eq!(acl, before, "a refused bootstrap changes nothing");
        assert_eq!(
            acl.authenticate(&first_bearer, 5_000).map(|(_, r)| r),
            Ok(Role::Operator)
        );

        let (short, short_bearer) = grant(Role::Read, Some(1_000));
        let written = create_token(&mut acl, 5, short, 2_000).expect("create");
        assert_eq!(written.expires_at_ms, Some(3_000));
        assert!(acl.authenticate(&short_bearer, 2_999).is_ok());
        assert!(matches!(
            acl.authenticate(&short_bearer, 3_000),
            Err(Denied::Expired { at_ms: 3_000, .. })
        ));

        let accessor = acl.bootstrapped.clone().expect("set").accessor;
        let (_, changed) = revoke_token(&mut acl, 6, &accessor).expect("revoke");
        assert!(changed);
        assert!(matches!(
            acl.authenticate(&first_bearer, 5_000),
            Err(Denied::Revoked(_))
        ));
        assert!(
            acl.enforced(),
            "revoking every token keeps the cluster closed"
        );
        assert!(!revoke_token(&mut acl, 7, &accessor).expect("again").1);
        assert!(revoke_token(&mut acl, 7, "nope").is_err());
    }

    #[test]
    fn wrong_secrets_and_strangers_are_invalid_alike() {
        let mut acl = AclState::default();
        let (g, bearer) = grant(Role::Operator, None);
        bootstrap(&mut acl, 1, g, 0).expect("bootstrap");
        let (accessor, _) = bearer.split_once('.').expect("dot");
        let other = secret::generate().expect("random");
        let (_, other_secret) = other.bearer.split_once('.').expect("dot");
        let forged = format!("{accessor}.{other_secret}");
        assert_eq!(acl.authenticate(&forged, 0), Err(Denied::Invalid));
        assert_eq!(acl.authenticate(&other.bearer, 0), Err(Denied::Invalid));
        assert!(acl.is_unknown(&other.bearer));
        assert!(!acl.is_unknown(&forged));
        assert_eq!(acl.authenticate("garbage", 0), Err(Denied::Invalid));
    }

    #[test]
    fn grants_are_checked() {
        let mut acl = AclState::default();
        let (mut g, _) = grant(Role::Read, Some(0));
        assert!(create_token(&mut acl, 1, g.clone(), 0).is_err());
        g.ttl_ms = None;
        g.name = String::new();
        assert!(create_token(&mut acl, 1, g.clone(), 0).is_err());
        g.name = "ok".into();
        create_token(&mut acl, 1, g.clone(), 0).expect("valid");
        assert!(create_token(&mut acl, 2, g, 0)
            .unwrap_err()
            .contains("taken"));
        let (reader, _) = grant(Role::Read, None);
        assert!(bootstrap(&mut AclState::default(), 1, reader, 0).is_err());
    }
}
