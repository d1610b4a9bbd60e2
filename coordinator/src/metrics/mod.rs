//! A coordinator's Prometheus metrics, served on `--metrics-listen`
//! (docs/metrics.md lists them).
//!
//! Most are read at scrape time rather than counted as things happen:
//! Raft's figures from openraft and the log store ([`raft`]), the cluster
//! from the replicated state ([`cluster`]), ended migrations by diffing the
//! state's records ([`migrations`]). Only events that leave no trace in
//! the state are counted where they happen, in [`Instruments`]: gRPC calls
//! (a layer on the server), plan outcomes (the leader's scheduling loop)
//! and leader changes (a watch on Raft's metrics).

pub mod cluster;
pub mod collector;
pub mod migrations;
pub mod raft;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use herd_metrics::prometheus_client::metrics::counter::Counter;
use herd_metrics::{Exporter, GrpcMetrics};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::coordinator::Coordinator;
pub use scheduler::SchedulerCounters;

/// What a coordinator counts as it happens, whether or not it serves its
/// metrics (counting costs an atomic add).
#[derive(Debug, Default)]
pub struct Instruments {
    /// The gRPC server's calls.
    pub grpc: GrpcMetrics,
    /// The leader's plans.
    pub scheduler: SchedulerCounters,
    /// Leaders this member learned of.
    pub leader_changes: Counter,
}

/// A coordinator's metrics endpoint, running.
pub struct MetricsServer {
    /// The address bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The endpoint and the leader watch, for the member to stop.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Serves `coordinator`'s metrics on `listener` (bound before the member
/// started, so that a taken port refuses the start); `committed` is its
/// log store's commit index.
pub fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    committed: Arc<AtomicU64>,
) -> std::io::Result<MetricsServer> {
    let instruments = coordinator.instruments().clone();
    let mut registry = herd_metrics::exporter::registry();
    instruments.grpc.register(&mut registry);
    instruments.scheduler.register(&mut registry);
    registry.register(
        "raft_leader_changes",
        "Leaders this member learned of since it started (a new leader, or one re-elected in a new term)",
        instruments.leader_changes.clone(),
    );
    registry.register_collector(Box::new(collector::StateCollector::new(
        coordinator.clone(),
        committed,
    )));
    let running = Exporter::new(registry).serve(listener)?;
    let local_addr = running.local_addr;
    let watch = tokio::spawn(raft::count_leader_changes(
        coordinator,
        instruments.leader_changes.clone(),
    ));
    Ok(MetricsServer {
        local_addr,
        tasks: vec![running.into_task(), watch],
    })
}
