//! A gate that serves a gRPC service only to peers holding a certificate
//! of given roles: Raft to coordinators, the agent-to-agent service to
//! node agents. A [`crate::gate`] (not an interceptor) so that the
//! refusal names the RPC it refused.

use tonic::body::Body;
use tonic::codegen::http;

use super::identity::{require_role, PeerRole};
use crate::gate::{gate, Admission, Admit, Gated};

/// The certificate roles a service is served to.
#[derive(Clone, Copy)]
pub struct PeerRoles(&'static [PeerRole]);

impl Admit for PeerRoles {
    fn admit(&self, request: &http::Request<Body>) -> Admission {
        match require_role(request.extensions(), self.0, request.uri().path()) {
            Ok(_) => Admission::Pass,
            Err(status) => Admission::Refuse(status.into_http()),
        }
    }
}

/// `inner`, served only to peers of given roles (under TLS; plaintext
/// serves everyone, as `--insecure` says).
pub type RolesOnly<S> = Gated<S, PeerRoles>;

/// Wraps `inner` (a generated `...Server`) so that only peers with a
/// certificate of one of `roles` reach it.
pub fn roles_only<S>(roles: &'static [PeerRole], inner: S) -> RolesOnly<S> {
    gate(PeerRoles(roles), inner)
}
