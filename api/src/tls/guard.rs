//! A wrapper that serves a gRPC service only to peers holding a
//! certificate of given roles: Raft to coordinators, the agent-to-agent
//! service to node agents. A tower service around the generated server
//! (not an interceptor) so that the refusal names the RPC it refused.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;

use super::identity::{require_role, PeerRole};

/// `inner`, served only to peers of `roles` (under TLS; plaintext serves
/// everyone, as `--insecure` says).
#[derive(Clone)]
pub struct RolesOnly<S> {
    inner: S,
    roles: &'static [PeerRole],
}

/// Wraps `inner` (a generated `...Server`) so that only peers with a
/// certificate of one of `roles` reach it.
pub fn roles_only<S>(roles: &'static [PeerRole], inner: S) -> RolesOnly<S> {
    RolesOnly { inner, roles }
}

impl<S: NamedService> NamedService for RolesOnly<S> {
    const NAME: &'static str = S::NAME;
}

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for RolesOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match require_role(request.extensions(), self.roles, request.uri().path()) {
            Ok(_) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
