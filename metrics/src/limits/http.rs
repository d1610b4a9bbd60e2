//! Limits for herd's HTTP servers (axum: the agent's OpenAI-compatible
//! endpoint, the coordinator's dashboard, the `/metrics` endpoints): a
//! per-IP request rate (token buckets, as for gRPC) and a cap on the
//! requests in flight at once, a streamed response counting until its last
//! byte. Over either, a request is answered at once with a JSON error
//! (429 Too Many Requests, or 503 when the server is full) and never reaches
//! the handler. Request bodies are bounded by each handler (the agent reads
//! at most 1 MiB).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::Frame;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::bucket::{Buckets, Rate};
use super::layer::MAX_TRACKED_CLIENTS;

/// Requests in flight at once on a read-only HTTP endpoint (dashboard,
/// metrics): far more than any number of browsers and scrapers needs.
pub const READ_ONLY_MAX_CONCURRENT: usize = 64;

/// What an HTTP server allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    /// Each client IP's request rate; None: not limited.
    pub rate: Option<Rate>,
    /// Requests in flight at once, all clients together (>= 1).
    pub max_concurrent: usize,
}

impl HttpLimits {
    /// The limits of a read-only endpoint: [`READ_ONLY_MAX_CONCURRENT`]
    /// requests at once, `rate` per client.
    pub fn read_only(rate: Option<Rate>) -> Self {
        Self {
            rate,
            max_concurrent: READ_ONLY_MAX_CONCURRENT,
        }
    }
}

struct Shared {
    buckets: Option<Buckets<IpAddr>>,
    in_flight: Arc<Semaphore>,
    max_concurrent: usize,
}

/// `router` with `limits` applied. Serve it with [`serve`] (or
/// `into_make_service_with_connect_info::<SocketAddr>`), or the rate
/// cannot tell clients apart and is not applied.
pub fn limit(router: Router, limits: HttpLimits) -> Router {
    let max_concurrent = limits.max_concurrent.max(1);
    let shared = Arc::new(Shared {
        buckets: limits
            .rate
            .map(|rate| Buckets::new(rate, MAX_TRACKED_CLIENTS)),
        in_flight: Arc::new(Semaphore::new(max_concurrent)),
        max_concurrent,
    });
    router.layer(axum::middleware::from_fn_with_state(shared, gate))
}

/// Serves `router` with `limits` on `listener` until the future is
/// dropped: HTTPS only when the process installed HTTPS settings
/// ([`crate::https`]), else plain HTTP.
pub fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let app = limit(router, limits);
    async move {
        match crate::https::installed() {
            Some(config) => {
                let app = crate::https::with_peer_addr(app)
                    .into_make_service_with_connect_info::<crate::https::HttpsPeer>();
                axum::serve(crate::https::listener(listener, config)?, app).await
            }
            None => {
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(listener, app).await
            }
        }
    }
}

fn refuse(status: StatusCode, code: &str, message: &str, retry_after_s: Option<u64>) -> Response {
    // The message is ours (no quotes or backslashes), so this is valid JSON.
    let body = format!(
        "{{\"error\":{{\"message\":\"{message}\",\"type\":\"server_error\",\"param\":null,\"code\":\"{code}\"}}}}"
    );
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(seconds) = retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let (Some(buckets), Some(ip)) = (&shared.buckets, peer) {
        if let Err(wait) = buckets.take(&ip, Instant::now()) {
            let rate = buckets.rate();
            tracing::debug!(client = %ip, "HTTP request refused: over the rate limit");
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                &format!(
                    "rate limit: client {ip} sent more than {} requests per second (burst {}); \
                     retry in {} ms",
                    rate.per_second,
                    rate.burst,
                    wait.as_millis().max(1)
                ),
                Some(wait.as_secs_f64().ceil() as u64),
            );
        }
    }
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        tracing::debug!(client = ?peer, "HTTP request refused: the server is full");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            &format!(
                "this server already serves {} requests at once, its limit; retry shortly",
                shared.max_concurrent
            ),
            Some(1),
        );
    };
    next.run(request).await.map(|body| {
        Body::new(Held {
            body,
            _permit: permit,
        })
    })
}

/// A response body that holds its request's place until it ends.
struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;

    use super::*;

    /// The status line of a `GET path` sent over a fresh connection.
    async fn get_status(addr: SocketAddr, path: &str) -> u16 {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.expect("status line");
        let text = String::from_utf8_lossy(&head[9..12]).to_string();
        text.parse().expect("status code")
    }

    #[tokio::test]
    async fn the_rate_and_the_requests_in_flight_are_capped() {
        let release = Arc::new(Notify::new());
        let wait = release.clone();
        let router = Router::new().route("/fast", get(|| async { "ok" })).route(
            "/slow",
            get(move || {
                let wait = wait.clone();
                async move {
                    wait.notified().await;
                    "late"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = HttpLimits {
            rate: Some(Rate {
                per_second: 0.001,
                burst: 4.0,
            }),
            max_concurrent: 1,
        };
        tokio::spawn(serve(listener, router, limits));
        assert_eq!(get_status(addr, "/fast").await, 200);
        // One slow request fills the server: the next is refused at once.
        let slow = tokio::spawn(async move { get_status(addr, "/slow").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get_status(addr, "/fast").await, 503);
        release.notify_one();
        assert_eq!(slow.await.expect("slow"), 200);
        // Every request takes a token, refused ones too: four of four.
        assert_eq!(get_status(addr, "/fast").await, 200);
        assert_eq!(get_status(addr, "/fast").await, 429);
    }
}
