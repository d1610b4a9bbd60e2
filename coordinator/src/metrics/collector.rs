//! The collector that reads a coordinator's gauges at each scrape.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use herd_metrics::prometheus_client::collector::Collector;
use herd_metrics::prometheus_client::encoding::DescriptorEncoder;

use super::cluster::ClusterView;
use super::migrations::MigrationTally;
use crate::coordinator::Coordinator;

/// Reads Raft's figures and the replicated state when scraped.
pub struct StateCollector {
    coordinator: Arc<Coordinator>,
    committed: Arc<AtomicU64>,
    tally: Mutex<MigrationTally>,
}

impl StateCollector {
    /// Reads `coordinator`; `committed` is its log store's commit index.
    pub fn new(coordinator: Arc<Coordinator>, committed: Arc<AtomicU64>) -> Self {
        Self {
            coordinator,
            committed,
            tally: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector")
            .field("member", &self.coordinator.id())
            .finish()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        super::raft::encode(&mut encoder, &self.coordinator, &self.committed)?;
        // One scrape at a time reads and counts ended migrations.
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let view = ClusterView::read(&self.coordinator, &mut tally);
        view.encode(&mut encoder)?;
        tally.encode(&mut encoder)
    }
}
