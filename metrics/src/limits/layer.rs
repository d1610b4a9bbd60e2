//! The per-client request rate limit of a tonic server, as a tower layer:
//! `Server::builder().layer(RateLimitLayer::new(...))`.
//!
//! A client is the bearer token's accessor when the request carries a
//! token the server vouches for (the coordinator checks it against its
//! token table, see [`Authenticate`]), else the peer's IP address. A
//! request over the client's rate is answered at once with
//! `RESOURCE_EXHAUSTED`, naming the client and the limit, and never reaches
//! the service. Requests whose path starts with an exempt prefix (the
//! coordinators' own Raft service) are not counted.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::bucket::{Buckets, Rate};

/// The most clients tracked at once per server (see [`Buckets`]).
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Who sent a request, for the rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The accessor of a valid bearer token.
    Token(String),
    /// The peer's IP address (no token, or one the server does not vouch for).
    Peer(IpAddr),
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Token(accessor) => write!(f, "token {accessor}"),
            ClientKey::Peer(ip) => write!(f, "client {ip}"),
        }
    }
}

/// The peer address of a connection, for servers whose connections are not
/// plain TCP (a TLS wrapper, a test transport): a connection wrapper may
/// insert it into the request extensions, and [`peer_ip`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// The IP a request came from: tonic's TCP connect info (plain or under
/// TLS), or a [`PeerAddr`] extension; None when neither is there (the deterministic simulation's
/// network), and such requests are not rate limited.
pub fn peer_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    if let Some(addr) = tcp.and_then(TcpConnectInfo::remote_addr) {
        return Some(addr.ip());
    }
    extensions.get::<PeerAddr>().map(|peer| peer.0)
}

/// The bearer token in `headers` (`authorization: Bearer TOKEN`), if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let text = headers.get("authorization")?.to_str().ok()?.trim();
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim()).filter(|t| !t.is_empty())
        }
        _ => None,
    }
}

/// Checks a bearer token: its accessor when it is valid, None otherwise
/// (then the request counts against its peer IP, so that invented tokens
/// do not each get a bucket).
pub type Authenticate = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Adds what the server wants on every refusal (the coordinator's retry
/// marks: final, not applied).
pub type Mark = Arc<dyn Fn(Status) -> Status + Send + Sync>;

/// Limits each client of a server to a [`Rate`].
#[derive(Clone)]
pub struct RateLimitLayer {
    state: Arc<Shared>,
}

struct Shared {
    /// None: the limit is off and every request passes.
    buckets: Option<Buckets<ClientKey>>,
    authenticate: Option<Authenticate>,
    mark: Option<Mark>,
    exempt: Vec<String>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("rate", &self.state.buckets.as_ref().map(Buckets::rate))
            .field("exempt", &self.state.exempt)
            .finish()
    }
}

impl RateLimitLayer {
    /// Each client gets `rate`; clients are told apart by peer IP only
    /// (see [`RateLimitLayer::with_tokens`]).
    pub fn new(rate: Rate) -> Self {
        Self::build(Some(rate), None, None, Vec::new())
    }

    /// Each client gets `rate`; None: no limit (every request passes).
    pub fn optional(rate: Option<Rate>) -> Self {
        Self::build(rate, None, None, Vec::new())
    }

    fn build(
        rate: Option<Rate>,
        authenticate: Option<Authenticate>,
        mark: Option<Mark>,
        exempt: Vec<String>,
    ) -> Self {
        Self {
            state: Arc::new(Shared {
                buckets: rate.map(|rate| Buckets::new(rate, MAX_TRACKED_CLIENTS)),
                authenticate,
                mark,
                exempt,
            }),
        }
    }

    fn rebuilt(
        self,
        f: impl FnOnce(&mut Option<Authenticate>, &mut Option<Mark>, &mut Vec<String>),
    ) -> Self {
        let rate = self.state.buckets.as_ref().map(Buckets::rate);
        let (mut authenticate, mut mark, mut exempt) = (
            self.state.authenticate.clone(),
            self.state.mark.clone(),
            self.state.exempt.clone(),
        );
        f(&mut authenticate, &mut mark, &mut exempt);
        Self::build(rate, authenticate, mark, exempt)
    }

    /// Tells clients apart by the accessor `authenticate` returns for their
    /// bearer token.
    pub fn with_tokens(self, authenticate: Authenticate) -> Self {
        self.rebuilt(|a, _, _| *a = Some(authenticate))
    }

    /// Passes every refusal through `mark`.
    pub fn with_mark(self, mark: Mark) -> Self {
        self.rebuilt(|_, m, _| *m = Some(mark))
    }

    /// Does not count requests whose path starts with `prefix`
    /// (`/herd.internal.v1.`).
    pub fn exempt(self, prefix: &str) -> Self {
        let prefix = prefix.to_string();
        self.rebuilt(|_, _, e| e.push(prefix))
    }

    /// Judges `request`: None to serve it, or the refusal.
    fn check<B>(&self, request: &Request<B>) -> Option<Status> {
        let state = &self.state;
        let buckets = state.buckets.as_ref()?;
        let path = request.uri().path();
        if state.exempt.iter().any(|p| path.starts_with(p.as_str())) {
            return None;
        }
        let accessor = match (&state.authenticate, bearer(request.headers())) {
            (Some(authenticate), Some(token)) => authenticate(token),
            _ => None,
        };
        let key = match (accessor, peer_ip(request)) {
            (Some(accessor), _) => ClientKey::Token(accessor),
            (None, Some(ip)) => ClientKey::Peer(ip),
            (None, None) => return None,
        };
        let wait = buckets.take(&key, Instant::now()).err()?;
        let rate = buckets.rate();
        tracing::debug!(client = %key, rpc = path, "request refused: over the rate limit");
        let status = Status::resource_exhausted(format!(
            "rate limit: {key} sent more than {} requests per second (burst {}); \
             slow down and retry in {} ms (server setting [limits] requests_per_second)",
            rate.per_second,
            rate.burst,
            wait.as_millis().max(1)
        ));
        Some(match &state.mark {
            Some(mark) => mark(status),
            None => status,
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limit: self.clone(),
        }
    }
}

/// A service whose callers are each held to the layer's rate.
#[derive(Clone, Debug)]
pub struct RateLimited<S> {
    inner: S,
    limit: RateLimitLayer,
}

/// The future of a [`RateLimited`] call.
pub type LimitedFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimited<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = LimitedFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.limit.check(&request) {
            None => Box::pin(self.inner.call(request)),
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{ready, Ready};
    use std::net::{Ipv4Addr, SocketAddr};

    use tonic::codegen::http::HeaderValue;

    use super::*;

    #[derive(Clone)]
    struct Ok200;

    impl Service<Request<()>> for Ok200 {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            ready(Ok(Response::new("served".to_string())))
        }
    }

    fn request(path: &str, ip: [u8; 4], token: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri(path).body(()).expect("request");
        request
            .extensions_mut()
            .insert(PeerAddr(IpAddr::from(Ipv4Addr::from(ip))));
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
            request.headers_mut().insert("authorization", value);
        }
        request
    }

    async fn served(service: &mut RateLimited<Ok200>, request: Request<()>) -> Result<(), Status> {
        let response = service.call(request).await.expect("infallible");
        match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != tonic::Code::Ok => Err(status),
            _ => Ok(()),
        }
    }

    #[tokio::test]
    async fn each_client_is_held_to_its_rate_by_token_or_ip_and_exempt_paths_pass() {
        let rate = Rate {
            per_second: 0.001,
            burst: 3.0,
        };
        let authenticate: Authenticate =
            Arc::new(|token: &str| token.strip_prefix("good-").map(str::to_string));
        let mut service = RateLimitLayer::new(rate)
            .with_tokens(authenticate)
            .exempt("/herd.internal.v1.")
            .layer(Ok200);
        let flood = |token| request("/herd.v1.Jobs/List", [10, 0, 0, 1], token);
        for _ in 0..3 {
            served(&mut service, flood(Some("good-a")))
                .await
                .expect("burst");
        }
        let refused = served(&mut service, flood(Some("good-a")))
            .await
            .expect_err("over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("token a"),
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains("requests_per_second"),
            "{}",
            refused.message()
        );
        // Another token from the same address has its own bucket.
        served(&mut service, flood(Some("good-b")))
            .await
            .expect("token b");
        // No token, or one the server does not vouch for: the IP's bucket.
        for _ in 0..2 {
            served(&mut service, flood(None)).await.expect("ip burst");
        }
        served(&mut service, flood(Some("forged-x")))
            .await
            .expect("ip burst");
        let refused = served(&mut service, flood(Some("forged-y")))
            .await
            .expect_err("forged tokens share the IP's bucket");
        assert!(
            refused.message().contains("client 10.0.0.1"),
            "{}",
            refused.message()
        );
        served(
            &mut service,
            request("/herd.v1.Jobs/List", [10, 0, 0, 2], None),
        )
        .await
        .expect("another IP");
        for _ in 0..10 {
            served(
                &mut service,
                request("/herd.internal.v1.Internal/Vote", [10, 0, 0, 1], None),
            )
            .await
            .expect("exempt");
        }
    }

    #[tokio::test]
    async fn a_request_without_a_peer_or_token_is_not_limited_and_marks_apply() {
        let rate = Rate {
            per_second: 0.001,
            burst: 1.0,
        };
        let mark: Mark = Arc::new(|mut status: Status| {
            status
                .metadata_mut()
                .insert("x-marked", "yes".parse().expect("value"));
            status
        });
        let mut service = RateLimitLayer::new(rate).with_mark(mark).layer(Ok200);
        for _ in 0..5 {
            let request = Request::builder().uri("/a/b").body(()).expect("request");
            served(&mut service, request).await.expect("unkeyed");
        }
        let mut tcp = Request::builder().uri("/a/b").body(()).expect("request");
        let addr: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        tcp.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(addr),
        });
        assert_eq!(peer_ip(&tcp), Some(addr.ip()));
        let again = || {
            let mut r = Request::builder().uri("/a/b").body(()).expect("request");
            r.extensions_mut().insert(PeerAddr(addr.ip()));
            r
        };
        served(&mut service, tcp).await.expect("first");
        let refused = served(&mut service, again()).await.expect_err("second");
        let response = service.call(again()).await.expect("infallible");
        assert!(response.headers().contains_key("x-marked"));
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn an_optional_limit_that_is_off_passes_everything() {
        let mut service = RateLimitLayer::optional(None).layer(Ok200);
        for _ in 0..100 {
            served(&mut service, request("/a/b", [10, 0, 0, 1], None))
                .await
                .expect("no limit");
        }
    }

    #[test]
    fn bearer_tokens_are_read_leniently() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("bearer  a.b "));
        assert_eq!(bearer(&headers), Some("a.b"));
        headers.insert("authorization", HeaderValue::from_static("Basic a.b"));
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
