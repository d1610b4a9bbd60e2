//! Enforcement around the agent's `NodeAgent` gRPC service: each request's
//! bearer token is checked against [`super::table::RPC_ROLES`] on the
//! agent's token table before the service sees it.
//!
//! A tower service rather than a tonic interceptor, because an interceptor
//! is not told which RPC it guards (as on the coordinators,
//! `herd_coordinator::acl::guard`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use herd_api::acl::bearer;
use herd_api::acl::Denied;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower_service::Service;

use super::{table, AgentAcl};

/// `inner`, with every request's token checked first.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    acl: AgentAcl,
}

/// Wraps `inner` (the generated `NodeAgentServer`) so that each of its
/// RPCs is checked on `acl`.
pub fn guard<S>(acl: &AgentAcl, inner: S) -> Guarded<S> {
    Guarded {
        inner,
        acl: acl.clone(),
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path().to_string();
        let token = bearer::from_headers(request.headers()).map(str::to_string);
        let certified = herd_api::tls::identity::peer_identity(request.extensions())
            .is_some_and(|peer| table::certified(&path, peer.role));
        let acl = self.acl.clone();
        // The inner service was made ready for this call: take it, and
        // leave a fresh clone for the next one.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let checked = match table::required_role(&path) {
                _ if certified => Ok(()),
                Some(need) => acl.check(need, &path, token.as_deref()).await,
                None => match acl.snapshot() {
                    // Unlisted: refused once bootstrapped, like every RPC
                    // the table forgot; served while the cluster is open.
                    Some(known) if known.bootstrapped => Err(Denied::Unlisted(path.clone())),
                    _ => Ok(()),
                },
            };
            match checked {
                Ok(()) => inner.call(request).await,
                Err(denied) => Ok(denied.to_status().into_http()),
            }
        })
    }
}
