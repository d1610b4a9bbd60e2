//! How a coordinator applies `[limits]` (docs/security.md, "Limits"): the
//! per-client request rate, keyed by the accessor of a token this member's
//! table vouches for, else by the peer IP; HTTP/2 streams and calls in
//! flight per connection; connections per IP address. The coordinators'
//! own Raft service is exempt from the rate: throttling it would slow the
//! cluster, not a client.

use std::net::IpAddr;
use std::sync::Arc;

use herd_api::limits::Limits;
use herd_api::retry::{ErrorMarks, Reason};
use herd_metrics::limits::{ConnectionCap, Rate, RateLimitLayer};
use tonic::transport::Server;

use crate::coordinator::{now_ms, Coordinator};

/// The path prefix of the coordinator-to-coordinator service.
pub const INTERNAL_PREFIX: &str = "/herd.internal.v1.";

/// A server builder with `limits`' stream and concurrency caps.
pub fn server(limits: &Limits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .concurrency_limit_per_connection(limits.max_concurrent_streams as usize)
}

/// The rate limit layer of `coordinator`'s gRPC server.
pub fn rate_layer(coordinator: &Arc<Coordinator>, limits: &Limits) -> RateLimitLayer {
    let rate = limits.rate.map(|r| Rate {
        per_second: r.per_second,
        burst: r.burst,
    });
    let tokens = Arc::downgrade(coordinator);
    RateLimitLayer::optional(rate)
        .exempt(INTERNAL_PREFIX)
        .with_tokens(Arc::new(move |bearer: &str| {
            let coordinator = tokens.upgrade()?;
            coordinator.read_state(|s| {
                s.acl
                    .authenticate(bearer, now_ms())
                    .ok()
                    .map(|(accessor, _)| accessor)
            })
        }))
        .with_mark(Arc::new(|status| {
            ErrorMarks {
                reason: Some(Reason::Rejected),
                not_applied: true,
                leader: None,
            }
            .on(status)
        }))
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
