//! A node agent's Prometheus metrics, served on `--metrics-listen`
//! (docs/metrics.md lists them).
//!
//! Events are counted where they happen, into one [`AgentStats`] shared by
//! the actors ([`stats`]: calls to the coordinators, migrations ended,
//! inference requests); what the actors know now is asked for before each
//! scrape ([`snapshot`]: allocations running, GPU power); the gRPC servers
//! count their calls through a layer ([`herd_metrics::GrpcMetrics`]).

pub mod snapshot;
pub mod stats;

use std::sync::Arc;

use herd_metrics::exporter::Refresh;
use herd_metrics::{Exporter, GrpcMetrics, RunningExporter};
use ractor::ActorRef;
use tokio::net::TcpListener;

use crate::agent::AgentMsg;
pub use snapshot::SnapshotReader;
pub use stats::AgentStats;

/// Serves the metrics of the agent whose actor tree is under `root` on
/// `listener`: its counters in `stats`, its servers' calls in `grpc`, and
/// what its actors answer when scraped; `drivers` are its drivers' names.
pub fn serve(
    listener: TcpListener,
    root: ActorRef<AgentMsg>,
    stats: Arc<AgentStats>,
    grpc: &GrpcMetrics,
    drivers: Vec<String>,
) -> std::io::Result<RunningExporter> {
    let mut registry = herd_metrics::exporter::registry();
    stats.register(&mut registry);
    grpc.register(&mut registry);
    let reader = Arc::new(SnapshotReader::new(root, stats, drivers));
    registry.register_collector(Box::new(reader.collector()));
    let refresh: Refresh = Arc::new(move || {
        let reader = reader.clone();
        Box::pin(async move { reader.refresh().await })
    });
    Exporter::new(registry)
        .with_refresh(refresh)
        .serve(listener)
}
