//! How a node agent applies `[limits]` (docs/security.md, "Limits"): on
//! its gRPC server, the per-client request rate (by peer IP: agents take no
//! tokens), HTTP/2 streams and calls in flight per connection, connections
//! per IP address; on its OpenAI-compatible HTTP endpoint, the same rate
//! and a cap on requests in flight ([`MAX_HTTP_IN_FLIGHT`]).

use std::net::IpAddr;

use herd_api::limits::Limits;
use herd_metrics::limits::http::HttpLimits;
use herd_metrics::limits::{ConnectionCap, Rate, RateLimitLayer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;

/// Requests the HTTP endpoint serves at once, streamed completions
/// included until their last event; more are answered 503 at once. Each
/// holds an inference engine's slot for seconds, so more would only queue
/// at the engines.
pub const MAX_HTTP_IN_FLIGHT: usize = 1024;

/// Largest message the agent's `NodeAgent` service reads or writes
/// (inference requests and replies, log chunks: all far smaller). The
/// agent-to-agent `AgentPeer` service has its own, one migration chunk.
pub const MAX_AGENT_MESSAGE: usize = 4 * 1024 * 1024;

/// `limits`' rate, in the layer's terms.
fn rate(limits: &Limits) -> Option<Rate> {
    limits.rate.map(|r| Rate {
        per_second: r.per_second,
        burst: r.burst,
    })
}

/// A server builder with `limits`' stream and concurrency caps.
pub fn server(limits: &Limits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.max_concurrent_streams as usize)
}

/// The rate limit layer of the agent's gRPC server.
pub fn rate_layer(limits: &Limits) -> RateLimitLayer {
    RateLimitLayer::optional(rate(limits))
}

/// The cap on connections per IP address, when `limits` sets one.
pub fn connection_cap(limits: &Limits) -> Option<ConnectionCap> {
    limits
        .max_connections_per_ip
        .map(|max| ConnectionCap::new(max as usize))
}

/// A TCP connection's peer IP, for [`connection_cap`].
pub fn tcp_peer(stream: &tokio::net::TcpStream) -> Option<IpAddr> {
    stream.peer_addr().ok().map(|addr| addr.ip())
}

/// Serves the OpenAI-compatible endpoint on `listener` with `limits`
/// until the task is aborted.
pub fn spawn_http(
    listener: TcpListener,
    router: axum::Router,
    limits: &Limits,
) -> JoinHandle<std::io::Result<()>> {
    let limits = HttpLimits {
        rate: rate(limits),
        max_concurrent: MAX_HTTP_IN_FLIGHT,
    };
    tokio::spawn(herd_metrics::limits::http::serve(listener, router, limits))
}
