//! What a service's instances are doing: each instance's engine stats,
//! read from its node's agent (`NodeAgent.EngineStats`, the same call the
//! agents make of each other), and the service-wide figures built from
//! them: mean KV-cache load, TTFT and TBT percentiles over every
//! instance's recent samples together.
//!
//! Reading is on demand (a `herd service status`, an autoscaler tick): the
//! coordinators keep no engine stats, and an agent that does not answer
//! in time leaves its instances without stats (and the autoscaler holds).

use std::collections::BTreeMap;
use std::time::Duration;

use herd_api::alloc::{AllocDesired, AllocStatus};
use herd_api::proto::agent::node_agent_client::NodeAgentClient;
use herd_api::proto::agent::EngineStatsRequest;
use herd_api::proto::inference::EngineStats;

use crate::state::ClusterState;

/// How long one agent may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(750);
/// Tokens per KV block in herd's engine.
const BLOCK_TOKENS: u32 = 16;
/// Fewest latency samples for a percentile the autoscaler acts on.
pub const MIN_SAMPLES: usize = 8;

/// One instance of a service, as the state and its agent see it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// Its allocation.
    pub alloc_id: String,
    /// Its node.
    pub node: String,
    /// The allocation's status.
    pub status: AllocStatus,
    /// Its engine's stats, if its agent answered with them.
    pub stats: Option<EngineStats>,
}

impl InstanceView {
    /// KV-cache load (0 without stats).
    pub fn load(&self) -> f64 {
        self.stats.as_ref().map_or(0.0, load)
    }

    /// Whether it serves: running, with stats, not draining.
    pub fn ready(&self) -> bool {
        self.status == AllocStatus::Running && self.stats.as_ref().is_some_and(|s| !s.draining)
    }
}

/// A service's instances and the figures over all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceView {
    /// Every allocation meant to run, by allocation id.
    pub instances: Vec<InstanceView>,
}

/// Percentiles over a set of latency samples, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Samples they were computed over.
    pub samples: usize,
    /// Median (None without samples).
    pub p50: Option<f64>,
    /// 99th percentile (None without samples).
    pub p99: Option<f64>,
}

impl Latency {
    /// Nearest-rank percentiles over `samples` (ms).
    pub fn of(mut samples: Vec<u32>) -> Self {
        samples.sort_unstable();
        Latency {
            samples: samples.len(),
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
        }
    }

    /// The p99, only when there are enough samples to act on.
    pub fn p99_to_act_on(&self) -> Option<f64> {
        (self.samples >= MIN_SAMPLES).then_some(self.p99).flatten()
    }
}

/// The `q` quantile of sorted `samples`, nearest rank.
pub fn percentile(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let at = rank.clamp(1, sorted.len()) - 1;
    sorted.get(at).map(|&v| f64::from(v))
}

fn blocks_for(tokens: u32) -> u32 {
    tokens.div_ceil(BLOCK_TOKENS)
}

/// An engine's KV-cache load: the blocks its requests hold, plus the
/// blocks its waiting and swapped requests need to come back (the
/// dispatcher's virtual usage without headroom), over all its blocks. A
/// queue makes it pass 1.
pub fn load(stats: &EngineStats) -> f64 {
    if stats.total_blocks == 0 {
        return 0.0;
    }
    let used: u64 = stats
        .requests
        .iter()
        .map(|r| match r.phase.as_str() {
            "running" => u64::from(r.blocks),
            _ => u64::from(blocks_for(r.prompt_tokens.saturating_add(r.generated))),
        })
        .sum();
    let held = u64::from(stats.total_blocks.saturating_sub(stats.free_blocks));
    used.max(held) as f64 / f64::from(stats.total_blocks)
}

impl ServiceView {
    /// Instances that serve.
    pub fn ready(&self) -> u32 {
        self.instances.iter().filter(|i| i.ready()).count() as u32
    }

    /// Summed load of the serving instances.
    pub fn total_load(&self) -> f64 {
        self.instances
            .iter()
            .filter(|i| i.ready())
            .map(InstanceView::load)
            .sum()
    }

    /// Mean load of the instances with stats (0 with none).
    pub fn mean_load(&self) -> f64 {
        let with: Vec<f64> = self
            .instances
            .iter()
            .filter(|i| i.stats.is_some())
            .map(InstanceView::load)
            .collect();
        if with.is_empty() {
            0.0
        } else {
            with.iter().sum::<f64>() / with.len() as f64
        }
    }

    /// TTFT over every instance's recent samples together.
    pub fn ttft(&self) -> Latency {
        Latency::of(
            self.instances
                .iter()
                .filter_map(|i| i.stats.as_ref())
                .flat_map(|s| s.recent_ttft_ms.iter().copied())
                .collect(),
        )
    }

    /// Time between tokens over every instance's recent samples together.
    pub fn tbt(&self) -> Latency {
        Latency::of(
            self.instances
                .iter()
                .filter_map(|i| i.stats.as_ref())
                .flat_map(|s| s.recent_tbt_ms.iter().copied())
                .collect(),
        )
    }
}

/// The allocations of `job` meant to run, with their nodes' agent
/// addresses: what [`gather`] reads.
pub fn instances_of(state: &ClusterState, job: &str) -> Vec<(InstanceView, Option<String>)> {
    let mut list: Vec<(InstanceView, Option<String>)> = state
        .allocs_of_job(job)
        .filter(|a| a.desired == AllocDesired::Run)
        .filter(|a| matches!(a.status, AllocStatus::Pending | AllocStatus::Running))
        .map(|a| {
            let addr = state.nodes.get(&a.node).map(|n| n.addr.clone());
            (
                InstanceView {
                    alloc_id: a.id.clone(),
                    node: a.node.clone(),
                    status: a.status,
                    stats: None,
                },
                addr,
            )
        })
        .collect();
    list.sort_by(|a, b| a.0.alloc_id.cmp(&b.0.alloc_id));
    list
}

/// Reads the engine stats of `instances` from their agents, one call per
/// node, all at once.
pub async fn gather(instances: Vec<(InstanceView, Option<String>)>) -> ServiceView {
    // Each agent's address with its node: under TLS the agent must hold
    // that node's certificate.
    let mut by_agent: BTreeMap<String, String> = BTreeMap::new();
    for (view, addr) in &instances {
        if let Some(addr) = addr {
            by_agent.insert(addr.clone(), view.node.clone());
        }
    }
    let calls = by_agent.into_iter().map(|(addr, node)| async move {
        let stats = read_agent(&node, &addr).await;
        (addr, stats)
    });
    let answers: BTreeMap<String, BTreeMap<String, EngineStats>> =
        futures::future::join_all(calls).await.into_iter().collect();
    let instances = instances
        .into_iter()
        .map(|(mut view, addr)| {
            view.stats = addr
                .and_then(|addr| answers.get(&addr))
                .and_then(|engines| engines.get(&view.alloc_id).cloned());
            view
        })
        .collect();
    ServiceView { instances }
}

/// The engines' stats by allocation id of node `node`'s agent at `addr`;
/// empty when it does not answer in time.
async fn read_agent(node: &str, addr: &str) -> BTreeMap<String, EngineStats> {
    let Ok(endpoint) = herd_api::tls::node_endpoint(addr, node) else {
        return BTreeMap::new();
    };
    let call = async {
        let channel = endpoint
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .ok()?;
        NodeAgentClient::new(channel)
            .engine_stats(EngineStatsRequest {})
            .await
            .ok()
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Some(reply)) => reply
            .into_inner()
            .engines
            .into_iter()
            .filter_map(|e| Some((e.alloc_id, e.stats?)))
            .collect(),
        _ => {
            tracing::debug!(agent = addr, "no engine stats from the agent in time");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use herd_api::proto::inference::RequestProgress;

    use super::*;

    fn request(phase: &str, blocks: u32, prompt: u32, generated: u32) -> RequestProgress {
        RequestProgress {
            phase: phase.into(),
            blocks,
            prompt_tokens: prompt,
            generated,
            ..Default::default()
        }
    }

    #[test]
    fn load_counts_held_blocks_and_the_queue_s_demand() {
        let stats = EngineStats {
            total_blocks: 100,
            free_blocks: 70,
            requests: vec![
                request("running", 30, 400, 80),
                request("waiting", 0, 320, 0),
            ],
            ..Default::default()
        };
        // 30 held + 20 needed by the waiting one, over 100.
        assert!((load(&stats) - 0.5).abs() < 1e-9);
        let queued = EngineStats {
            total_blocks: 10,
            free_blocks: 0,
            requests: vec![
                request("running", 10, 160, 0),
                request("waiting", 0, 160, 0),
            ],
            ..Default::default()
        };
        assert!((load(&queued) - 2.0).abs() < 1e-9);
        assert_eq!(load(&EngineStats::default()), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_all_instances_together() {
        let samples: Vec<u32> = (1..=100).collect();
        let latency = Latency::of(samples);
        assert_eq!((latency.p50, latency.p99), (Some(50.0), Some(99.0)));
        assert_eq!(Latency::of(vec![]).p99, None);
        assert_eq!(Latency::of(vec![7]).p99, Some(7.0));
        let few = Latency::of(vec![1, 2, 3]);
        assert_eq!(few.p99_to_act_on(), None);

        let instance = |ttft: Vec<u32>, draining: bool| InstanceView {
            alloc_id: "a".into(),
            node: "n".into(),
            status: AllocStatus::Running,
            stats: Some(EngineStats {
                recent_ttft_ms: ttft,
                total_blocks: 10,
                free_blocks: 5,
                draining,
                ..Default::default()
            }),
        };
        // One fast instance, one slow one (2 of the 100 samples): the p99
        // is the slow one's, the median the fast one's.
        let view = ServiceView {
            instances: vec![
                instance(vec![10; 98], false),
                instance(vec![1000, 1000], true),
            ],
        };
        assert_eq!(view.ttft().p99, Some(1000.0));
        assert_eq!(view.ttft().p50, Some(10.0));
        assert_eq!(view.ready(), 1, "a draining instance does not serve");
        assert!((view.total_load() - 0.5).abs() < 1e-9);
        assert!((view.mean_load() - 0.5).abs() < 1e-9);
    }
}
