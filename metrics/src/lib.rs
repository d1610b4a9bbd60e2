//! What every herd process needs to export Prometheus metrics, so that the
//! coordinator and the node agent each keep only their own metrics:
//!
//! - [`exporter`]: the `/metrics` HTTP endpoint (`--metrics-listen`),
//!   serving a `prometheus-client` registry in the Prometheus text format
//!   (OpenMetrics when the scraper asks for it);
//! - [`https`]: HTTPS for all of a process's HTTP servers when it runs
//!   with TLS;
//! - [`grpc`] and [`layer`]: a tower layer for tonic servers that counts
//!   every call by service, method and gRPC status code, and times it;
//! - [`limits`]: a per-client request rate limit for tonic servers and a
//!   cap on connections per address;
//! - [`write`]: helpers for collectors that read their values at scrape
//!   time instead of keeping them up to date.
//!
//! Its own crate rather than a module of `herd-api`: `herd-api` is the wire
//! protocol every client links, and should not pull an HTTP server and a
//! metrics library into each of them. It never depends on the coordinator
//! or node crates.
#![warn(missing_docs)]

pub mod accept;
pub mod body;
pub mod error;
pub mod exporter;
pub mod grpc;
pub mod https;
pub mod layer;
pub mod limits;
pub mod write;

pub use error::MetricsError;
pub use exporter::{Exporter, RunningExporter};
pub use grpc::GrpcMetrics;
pub use layer::{GrpcMetricsLayer, WithGrpcMetrics};
pub use prometheus_client;

/// The prefix of every metric herd exports.
pub const PREFIX: &str = "herd";
