//! Enforcement: a wrapper around each client- and agent-facing gRPC
//! service that checks the request's bearer token against the role table
//! before the service sees the request.
//!
//! A [`herd_api::gate`] (a tower service) around each server rather than
//! a tonic interceptor, because an interceptor is not told which RPC it
//! guards (the path is in the HTTP request, which it does not see); and
//! around each service rather than the whole server, so that the
//! coordinator-to-coordinator service is left out by construction (see
//! docs/security.md).
//!
//! Each member checks tokens against the state it has applied. Where that
//! may lag the leader, a follower first waits for the leader's commit
//! index (a read barrier), then checks again: before any write (so a
//! revocation acknowledged to its caller holds on every member for writes),
//! and when the token names an accessor it does not know yet (one created
//! a moment ago through another member).

use std::sync::Arc;

use herd_api::gate::{gate, Admission, Admit, Gated};
use tonic::body::Body;
use tonic::codegen::http;

use super::state::{AclState, Denied};
use super::{table, Role};
use crate::coordinator::{now_ms, Coordinator, ReadConsistency};

/// The metadata key a token travels in.
pub use herd_api::acl::bearer::AUTHORIZATION;

/// The token check of one coordinator: its applied state, and a read
/// barrier where that may lag.
#[derive(Clone)]
pub struct TokenCheck {
    coordinator: Arc<Coordinator>,
}

/// `inner`, with every request's token checked first.
pub type Guarded<S> = Gated<S, TokenCheck>;

/// Wraps `inner` (a generated `...Server`) so that each of its RPCs is
/// checked against [`table::RPC_ROLES`] on `coordinator`'s state.
pub fn guard<S>(coordinator: &Arc<Coordinator>, inner: S) -> Guarded<S> {
    gate(
        TokenCheck {
            coordinator: coordinator.clone(),
        },
        inner,
    )
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Serve it.
    Pass,
    /// Refuse it with this reason.
    Refuse(Denied),
    /// This member may lag: wait for the leader's commit index, then judge
    /// again (and finally).
    AfterBarrier,
}

/// Judges a request for `path` carrying `bearer`, on `acl` at `now_ms`.
/// `may_lag`: this member is not the leader, so its state may miss recent
/// token changes; `final_check`: the barrier has been waited for.
fn judge(acl: &AclState, path: &str, bearer: Option<&str>, now_ms: u64, may_lag: bool) -> Verdict {
    if !acl.enforced() {
        return Verdict::Pass;
    }
    let Some(need) = table::required_role(path) else {
        return Verdict::Refuse(Denied::Unlisted(path.to_string()));
    };
    let Some(bearer) = bearer else {
        return Verdict::Refuse(Denied::NoToken);
    };
    match acl.authenticate(bearer, now_ms) {
        Ok((_, have)) if have.allows(need) => {
            if may_lag && matches!(need, Role::Submit | Role::Operator) {
                Verdict::AfterBarrier
            } else {
                Verdict::Pass
            }
        }
        Ok((accessor, have)) => Verdict::Refuse(Denied::Role {
            accessor,
            have,
            need,
            rpc: path.to_string(),
        }),
        Err(Denied::Invalid) if may_lag && acl.is_unknown(bearer) => Verdict::AfterBarrier,
        Err(denied) => Verdict::Refuse(denied),
    }
}

fn refuse(path: &str, denied: &Denied) -> http::Response<Body> {
    tracing::debug!(rpc = path, reason = %denied, "request refused");
    denied.to_status().into_http()
}

impl Admit for TokenCheck {
    fn admit(&self, request: &http::Request<Body>) -> Admission {
        let path = request.uri().path().to_string();
        let token = herd_api::acl::bearer::from_headers(request.headers()).map(str::to_string);
        let coordinator = self.coordinator.clone();
        let may_lag = !coordinator.is_leader();
        let verdict =
            coordinator.read_state(|s| judge(&s.acl, &path, token.as_deref(), now_ms(), may_lag));
        match verdict {
            Verdict::Pass => Admission::Pass,
            Verdict::Refuse(denied) => Admission::Refuse(refuse(&path, &denied)),
            Verdict::AfterBarrier => Admission::Later(Box::pin(async move {
                if let Err(e) = coordinator
                    .read_barrier(ReadConsistency::Linearizable)
                    .await
                {
                    return Err(e.to_status().into_http());
                }
                let verdict = coordinator
                    .read_state(|s| judge(&s.acl, &path, token.as_deref(), now_ms(), false));
                match verdict {
                    Verdict::Refuse(denied) => Err(refuse(&path, &denied)),
                    Verdict::Pass | Verdict::AfterBarrier => Ok(()),
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::secret;
    use super::super::state::{bootstrap, create_token, TokenGrant};
    use super::*;

    fn token(acl: &mut AclState, role: Role, first: bool) -> String {
        let made = secret::generate().expect("random");
        let grant = TokenGrant {
            accessor: made.accessor,
            name: role.as_str().into(),
            role,
            secret_hash: made.hash,
            ttl_ms: None,
        };
        if first {
            bootstrap(acl, 1, grant, 0).expect("bootstrap");
        } else {
            create_token(acl, 2, grant, 0).expect("create");
        }
        made.bearer
    }

    #[test]
    fn the_table_decides_once_bootstrapped() {
        let mut acl = AclState::default();
        let submit = "/herd.v1.Jobs/Submit";
        assert_eq!(judge(&acl, submit, None, 0, false), Verdict::Pass);
        let operator = token(&mut acl, Role::Operator, true);
        let reader = token(&mut acl, Role::Read, false);
        let node = token(&mut acl, Role::Node, false);
        assert_eq!(
            judge(&acl, submit, None, 0, false),
            Verdict::Refuse(Denied::NoToken)
        );
        assert_eq!(
            judge(&acl, submit, Some(&operator), 0, false),
            Verdict::Pass
        );
        assert_eq!(
            judge(&acl, submit, Some(&operator), 0, true),
            Verdict::AfterBarrier,
            "a follower waits for the leader before a write"
        );
        assert!(matches!(
            judge(&acl, submit, Some(&reader), 0, false),
            Verdict::Refuse(Denied::Role {
                need: Role::Submit,
                ..
            })
        ));
        assert_eq!(
            judge(&acl, "/herd.v1.Jobs/List", Some(&node), 0, true),
            Verdict::Pass
        );
        assert!(matches!(
            judge(
                &acl,
                "/herd.agent.v1.Agent/Register",
                Some(&operator),
                0,
                false
            ),
            Verdict::Refuse(Denied::Role { .. })
        ));
        assert!(matches!(
            judge(&acl, "/herd.v1.Jobs/Teleport", Some(&operator), 0, false),
            Verdict::Refuse(Denied::Unlisted(_))
        ));
        let stranger = secret::generate().expect("random").bearer;
        assert_eq!(
            judge(&acl, "/herd.v1.Jobs/List", Some(&stranger), 0, false),
            Verdict::Refuse(Denied::Invalid)
        );
        assert_eq!(
            judge(&acl, "/herd.v1.Jobs/List", Some(&stranger), 0, true),
            Verdict::AfterBarrier,
            "an accessor a follower does not know may be new"
        );
    }
}
