//! One tower service that stands in front of a generated gRPC server and
//! lets each request through, refuses it, or decides after an await: what
//! the certificate-role gate ([`crate::tls::roles_only`]), the
//! coordinators' token guard and the node agents' token guard each need.
//!
//! Why a tower service rather than a tonic interceptor: an interceptor is
//! not told which RPC it guards (the path is in the HTTP request, which it
//! does not see), and every refusal names its RPC. Why one service with
//! an [`Admit`] policy rather than one service per guard: the tower
//! plumbing (readiness, taking the readied inner service for a deferred
//! call, boxing the reply) is subtle and was written three times; the
//! guards differ only in how they judge. Every gate refuses a peer whose
//! certificate was revoked ([`crate::tls::revocation`]) before its policy
//! is asked.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;

/// A decision still to be made: `Ok` serves the request, `Err` answers it
/// with this refusal.
pub type Deferred = Pin<Box<dyn Future<Output = Result<(), http::Response<Body>>> + Send>>;

/// What a gate does with one request.
pub enum Admission {
    /// Serve it now.
    Pass,
    /// Answer it with this refusal (a gRPC status as HTTP) without serving.
    Refuse(http::Response<Body>),
    /// Decide after this future (a read barrier, a token table fetched).
    Later(Deferred),
}

/// How a gate judges a request; cheap to clone (one clone per server
/// connection, as tonic clones services).
pub trait Admit: Clone + Send + 'static {
    /// Judges `request` before the service sees it.
    fn admit(&self, request: &http::Request<Body>) -> Admission;
}

/// `inner`, behind the judgement of `admit`.
#[derive(Clone)]
pub struct Gated<S, A> {
    inner: S,
    admit: A,
}

/// Puts `inner` (a generated `...Server`) behind `admit`.
pub fn gate<S, A: Admit>(admit: A, inner: S) -> Gated<S, A> {
    Gated { inner, admit }
}

impl<S: NamedService, A> NamedService for Gated<S, A> {
    const NAME: &'static str = S::NAME;
}

type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S, A> Service<http::Request<Body>> for Gated<S, A>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    A: Admit,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Reply;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // A revoked certificate is refused before anything else judges the
        // request (a valid token does not save it).
        if let Some(revoked) = crate::tls::revocation::refusal(request.extensions()) {
            return Box::pin(std::future::ready(Ok(revoked.into_http())));
        }
        match self.admit.admit(&request) {
            Admission::Pass => Box::pin(self.inner.call(request)),
            Admission::Refuse(refusal) => Box::pin(std::future::ready(Ok(refusal))),
            Admission::Later(decision) => {
                // The inner service was made ready for this call: take it,
                // and leave a fresh clone for the next one.
                let fresh = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, fresh);
                Box::pin(async move {
                    match decision.await {
                        Ok(()) => inner.call(request).await,
                        Err(refusal) => Ok(refusal),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers 200 with the path it served, counting its calls.
    #[derive(Clone, Default)]
    struct Echo {
        served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Service<http::Request<Body>> for Echo {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.served
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    /// Passes `/pass`, refuses `/refuse`, and defers the rest: `/later-ok`
    /// passes after an await, anything else is refused after it.
    #[derive(Clone)]
    struct ByPath;

    fn refusal() -> http::Response<Body> {
        tonic::Status::permission_denied("no").into_http()
    }

    impl Admit for ByPath {
        fn admit(&self, request: &http::Request<Body>) -> Admission {
            match request.uri().path() {
                "/pass" => Admission::Pass,
                "/refuse" => Admission::Refuse(refusal()),
                path => {
                    let ok = path == "/later-ok";
                    Admission::Later(Box::pin(async move {
                        tokio::task::yield_now().await;
                        if ok {
                            Ok(())
                        } else {
                            Err(refusal())
                        }
                    }))
                }
            }
        }
    }

    async fn call(gated: &mut Gated<Echo, ByPath>, path: &str) -> http::Response<Body> {
        std::future::poll_fn(|cx| gated.poll_ready(cx))
            .await
            .expect("ready");
        let request = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        gated.call(request).await.expect("infallible")
    }

    fn refused(response: &http::Response<Body>) -> bool {
        response
            .headers()
            .get("grpc-status")
            .is_some_and(|s| s == "7")
    }

    #[tokio::test]
    async fn a_gate_serves_what_it_admits_now_or_later_and_nothing_else() {
        let echo = Echo::default();
        let served = echo.served.clone();
        let mut gated = gate(ByPath, echo);
        let count = || served.load(std::sync::atomic::Ordering::SeqCst);

        assert!(!refused(&call(&mut gated, "/pass").await));
        assert_eq!(count(), 1);
        assert!(refused(&call(&mut gated, "/refuse").await));
        assert_eq!(count(), 1, "a refusal never reaches the service");
        assert!(!refused(&call(&mut gated, "/later-ok").await));
        assert_eq!(count(), 2, "served once decided");
        assert!(refused(&call(&mut gated, "/later-no").await));
        assert_eq!(count(), 2, "a late refusal never reaches the service");
        assert!(!refused(&call(&mut gated, "/pass").await));
        assert_eq!(count(), 3, "the gate serves on after a deferred call");
    }
}
