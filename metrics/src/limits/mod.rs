//! Limits every herd server applies to its clients (issue "Limits"): a
//! per-client request rate ([`RateLimitLayer`], token buckets keyed by the
//! bearer token's accessor, else the peer IP) and a cap on the connections
//! one IP address may hold ([`cap_connections`]); for HTTP servers, a
//! per-IP rate and a cap on requests in flight ([`http`]).
//!
//! Here rather than in each daemon because coordinators and node agents
//! serve the same way; here rather than in `herd-api` because `herd-api`
//! is what every client links, and clients need no server plumbing. (The
//! crate already holds the other tower layer every server wears.)

pub mod bucket;
pub mod conns;
pub mod http;
pub mod layer;

pub use bucket::{Buckets, Rate};
pub use conns::{cap_connections, ConnectionCap, Counted};
pub use layer::{peer_ip, Authenticate, ClientKey, Mark, PeerAddr, RateLimitLayer, RateLimited};

/// The layer stack of a tonic server built as
/// `Server::builder().layer(metrics.layer()).layer(rate_limit)`, for
/// functions that return its router: counted first, then limited, so that
/// refusals show in the metrics.
pub type WithLimits = tower_layer::Stack<RateLimitLayer, crate::WithGrpcMetrics>;
