//! Enforcement around the agent's `NodeAgent` gRPC service: each request's
//! bearer token is checked against [`super::table::RPC_ROLES`] on the
//! agent's token table before the service sees it.
//!
//! A [`herd_api::gate`] (a tower service) rather than a tonic interceptor,
//! because an interceptor is not told which RPC it guards (as on the
//! coordinators, `herd_coordinator::acl::guard`).

use herd_api::acl::bearer;
use herd_api::acl::Denied;
use herd_api::gate::{gate, Admission, Admit, Gated};
use tonic::body::Body;
use tonic::codegen::http;

use super::{table, AgentAcl};

/// The token check of one agent, on its token table.
#[derive(Clone)]
pub struct AgentCheck {
    acl: AgentAcl,
}

/// `inner`, with every request's token checked first.
pub type Guarded<S> = Gated<S, AgentCheck>;

/// Wraps `inner` (the generated `NodeAgentServer`) so that each of its
/// RPCs is checked on `acl`.
pub fn guard<S>(acl: &AgentAcl, inner: S) -> Guarded<S> {
    gate(AgentCheck { acl: acl.clone() }, inner)
}

impl Admit for AgentCheck {
    fn admit(&self, request: &http::Request<Body>) -> Admission {
        let path = request.uri().path().to_string();
        let certified = herd_api::tls::identity::peer_identity(request.extensions())
            .is_some_and(|peer| table::certified(&path, peer.role));
        if certified {
            return Admission::Pass;
        }
        let token = bearer::from_headers(request.headers()).map(str::to_string);
        let acl = self.acl.clone();
        Admission::Later(Box::pin(async move {
            let checked = match table::required_role(&path) {
                Some(need) => acl.check(need, &path, token.as_deref()).await,
                None => match acl.snapshot() {
                    // Unlisted: refused once bootstrapped, like every RPC
                    // the table forgot; served while the cluster is open.
                    Some(known) if known.bootstrapped => Err(Denied::Unlisted(path.clone())),
                    _ => Ok(()),
                },
            };
            checked.map_err(|denied| denied.to_status().into_http())
        }))
    }
}
