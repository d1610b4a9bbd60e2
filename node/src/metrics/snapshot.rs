//! What the agent's actors know now, asked for before each scrape: the
//! allocations running by driver (the supervisor), the GPUs' power figures
//! (the governor's while it holds a share, else the resource monitor's, as
//! heartbeats report them) and the share in force.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use herd_actors::power::PowerMsg;
use herd_actors::resources::ResourceMsg;
use herd_actors::workload::SupervisorMsg;
use herd_api::alloc::AllocStatus;
use herd_api::proto::v1::GpuPower;
use herd_metrics::prometheus_client::collector::Collector;
use herd_metrics::prometheus_client::encoding::DescriptorEncoder;
use herd_metrics::prometheus_client::registry::Unit;
use herd_metrics::write;
use ractor::ActorRef;

use super::stats::AgentStats;
use crate::agent::AgentMsg;

/// Longest an actor is waited for while reading, ms.
const ASK_MS: u64 = 1000;

/// The agent's figures at the last refresh.
#[derive(Debug, Default, Clone)]
pub struct AgentSnapshot {
    /// Running allocations by driver (every driver of the agent listed).
    running: BTreeMap<String, u64>,
    /// Each GPU's power figures.
    gpus: Vec<GpuPower>,
    /// The power share in force, watts.
    share_watts: Option<f64>,
}

/// Reads the actors under `root` into a snapshot the collector serves.
#[derive(Debug)]
pub struct SnapshotReader {
    root: ActorRef<AgentMsg>,
    stats: Arc<AgentStats>,
    drivers: Vec<String>,
    last: Arc<Mutex<AgentSnapshot>>,
}

impl SnapshotReader {
    /// Reads the tree under `root`; `drivers` are the agent's drivers.
    pub fn new(root: ActorRef<AgentMsg>, stats: Arc<AgentStats>, drivers: Vec<String>) -> Self {
        Self {
            root,
            stats,
            drivers,
            last: Arc::default(),
        }
    }

    /// The collector serving what the last [`SnapshotReader::refresh`] read.
    pub fn collector(&self) -> SnapshotCollector {
        SnapshotCollector {
            stats: self.stats.clone(),
            last: self.last.clone(),
        }
    }

    /// Asks the actors; what one does not answer is left out this time.
    pub async fn refresh(&self) {
        let mut snapshot = AgentSnapshot {
            running: self.drivers.iter().map(|d| (d.clone(), 0)).collect(),
            ..AgentSnapshot::default()
        };
        let children = ractor::call_t!(self.root, AgentMsg::Children, ASK_MS).ok();
        if let Some(children) = children {
            if let Ok(reports) =
                ractor::call_t!(children.supervisor, SupervisorMsg::Snapshot, ASK_MS)
            {
                for report in reports.iter().filter(|r| r.status == AllocStatus::Running) {
                    let driver = self
                        .stats
                        .driver_of(&report.alloc_id)
                        .unwrap_or_else(|| "unknown".to_string());
                    *snapshot.running.entry(driver).or_default() += 1;
                }
            }
            let governor = ractor::call_t!(children.governor, PowerMsg::Status, ASK_MS).ok();
            snapshot.share_watts = governor
                .as_ref()
                .and_then(|g| g.share.as_ref())
                .map(|s| s.watts);
            if let Ok(report) = ractor::call_t!(children.monitor, ResourceMsg::Snapshot, ASK_MS) {
                snapshot.gpus = crate::link::power_usage(&report, governor).0;
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }
}

/// Serves the last snapshot and the link's state.
#[derive(Debug)]
pub struct SnapshotCollector {
    stats: Arc<AgentStats>,
    last: Arc<Mutex<AgentSnapshot>>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (connected, since) = self.stats.link();
        write::gauge(
            &mut encoder,
            "agent_coordinator_connected",
            "1 while the coordinators accept this agent's heartbeats, else 0.",
            None,
            i64::from(connected),
        )?;
        write::gauge(
            &mut encoder,
            "agent_last_heartbeat_age",
            "Time since the last heartbeat (or registration) the coordinators accepted was sent (since start before any).",
            Some(&Unit::Seconds),
            since.as_secs_f64(),
        )?;
        write::gauge_family(
            &mut encoder,
            "agent_allocations_running",
            "Allocations running on this node, by driver.",
            None,
            snapshot
                .running
                .iter()
                .map(|(driver, n)| ([("driver", driver.as_str())], *n)),
        )?;
        let watts = write::watts();
        let gpu = |g: &GpuPower| [("gpu", g.index.to_string())];
        write::gauge_family(
            &mut encoder,
            "agent_gpu_power_draw",
            "Power each GPU of this node draws.",
            Some(&watts),
            snapshot.gpus.iter().map(|g| (gpu(g), g.draw_watts)),
        )?;
        write::gauge_family(
            &mut encoder,
            "agent_gpu_power_limit",
            "The power limit in force on each GPU of this node (its cap).",
            Some(&watts),
            snapshot
                .gpus
                .iter()
                .map(|g| (gpu(g), u64::from(g.limit_watts))),
        )?;
        write::gauge_family(
            &mut encoder,
            "agent_gpu_power_capped",
            "1 while the power governor holds a GPU under its maximum limit, else 0.",
            None,
            snapshot.gpus.iter().map(|g| (gpu(g), i64::from(g.capped))),
        )?;
        // The device's settable range, so that a scraper (the chaos
        // harness's power checker) can tell a limit outside it.
        write::gauge_family(
            &mut encoder,
            "agent_gpu_power_limit_min",
            "The lowest power limit each GPU of this node accepts.",
            Some(&watts),
            snapshot
                .gpus
                .iter()
                .map(|g| (gpu(g), u64::from(g.min_watts))),
        )?;
        write::gauge_family(
            &mut encoder,
            "agent_gpu_power_limit_max",
            "The highest power limit each GPU of this node accepts.",
            Some(&watts),
            snapshot
                .gpus
                .iter()
                .map(|g| (gpu(g), u64::from(g.max_watts))),
        )?;
        if let Some(share) = snapshot.share_watts {
            write::gauge(
                &mut encoder,
                "agent_power_share",
                "This node's share of the power budgets covering it, while it holds one.",
                Some(&watts),
                share,
            )?;
        }
        Ok(())
    }
}
