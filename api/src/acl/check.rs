//! The check of a presented token against the record of its accessor: one
//! function, so that a coordinator (on its replicated state) and a node
//! agent (on the copy of the table it fetched) judge a token alike.

use super::secret::{self, SecretHash};
use super::{Denied, Role};

/// What the check needs of a token's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenView<'a> {
    /// What it may do.
    pub role: Role,
    /// SHA-256 of its secret.
    pub secret_hash: &'a SecretHash,
    /// When it stops being accepted, ms since the epoch; None: never.
    pub expires_at_ms: Option<u64>,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// The valid token `bearer` names, at `now_ms` (the checking process's
/// clock), looking its accessor up with `lookup`: its accessor and role.
/// A malformed token, an unknown accessor and a wrong secret are all
/// [`Denied::Invalid`]; the digest is compared in constant time.
pub fn authenticate<'t>(
    bearer: &str,
    now_ms: u64,
    lookup: impl FnOnce(&str) -> Option<TokenView<'t>>,
) -> Result<(String, Role), Denied> {
    let presented = secret::parse(bearer).ok_or(Denied::Invalid)?;
    let token = lookup(presented.accessor).ok_or(Denied::Invalid)?;
    if !secret::same(token.secret_hash, &presented.hash) {
        return Err(Denied::Invalid);
    }
    if token.revoked {
        return Err(Denied::Revoked(presented.accessor.to_string()));
    }
    if let Some(at_ms) = token.expires_at_ms {
        if now_ms >= at_ms {
            return Err(Denied::Expired {
                accessor: presented.accessor.to_string(),
                at_ms,
            });
        }
    }
    Ok((presented.accessor.to_string(), token.role))
}

#[cfg(test)]
mod tests {
    use super::super::secret::{encode, hash};
    use super::*;

    fn lookup<'a>(
        digest: &'a SecretHash,
        revoked: bool,
        expires_at_ms: Option<u64>,
    ) -> impl FnOnce(&str) -> Option<TokenView<'a>> + 'a {
        move |accessor| {
            (accessor == "a1").then_some(TokenView {
                role: Role::Submit,
                secret_hash: digest,
                expires_at_ms,
                revoked,
            })
        }
    }

    #[test]
    fn a_token_is_checked_for_secret_revocation_and_expiry() {
        let digest = hash(&[3; 32]);
        let bearer = format!("a1.{}", encode(&[3; 32]));
        let forged = format!("a1.{}", encode(&[4; 32]));
        let view = |revoked, expires_at_ms| lookup(&digest, revoked, expires_at_ms);
        assert_eq!(
            authenticate(&bearer, 5, view(false, None)),
            Ok(("a1".to_string(), Role::Submit))
        );
        assert_eq!(
            authenticate(&forged, 5, view(false, None)),
            Err(Denied::Invalid)
        );
        assert_eq!(
            authenticate("garbage", 5, view(false, None)),
            Err(Denied::Invalid)
        );
        let stranger = format!("a2.{}", encode(&[3; 32]));
        assert_eq!(
            authenticate(&stranger, 5, view(false, None)),
            Err(Denied::Invalid)
        );
        assert_eq!(
            authenticate(&bearer, 5, view(true, None)),
            Err(Denied::Revoked("a1".into()))
        );
        assert!(authenticate(&bearer, 9, view(false, Some(10))).is_ok());
        assert_eq!(
            authenticate(&bearer, 10, view(false, Some(10))),
            Err(Denied::Expired {
                accessor: "a1".into(),
                at_ms: 10
            })
        );
    }
}
