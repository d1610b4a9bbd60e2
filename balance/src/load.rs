//! What an agent tells its peers about how busy it is, and the one number
//! the policy compares.
//!
//! The summary keeps the raw figures (so `herd balance status` can show
//! them) and [`LoadSummary::score`] folds them into a scalar so that nodes
//! of different sizes compare: a node's score is its dominant resource
//! share in percent, plus a queue term for work waiting to start.

use serde::{Deserialize, Serialize};

/// Score points added per waiting unit (queued inference request or
/// queued batch instance) per CPU core: a node with one waiting item per
/// core scores 10 points more than its resource share alone.
pub const QUEUE_POINTS_PER_ITEM_PER_CORE: f64 = 10.0;

/// Inference load of one service on a node, so peers see where requests
/// wait (the part of the load request migration can move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceLoad {
    /// The service (job) name.
    pub service: String,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// Requests being served.
    pub running: u32,
    /// KV-cache blocks in use over the service's instances on the node.
    pub kv_blocks_used: u32,
    /// KV-cache blocks those instances hold in all (0: none known).
    pub kv_blocks_total: u32,
    /// The instance (allocation id) of this service on the node that takes
    /// requests moved here, the one with the most free blocks; empty when
    /// the node runs no instance of it that answers. A request may only
    /// move to a node naming one (see [`LoadSummary::instance_of`]).
    pub instance: String,
}

/// One agent's load, as measured by its caller and exchanged by gossip.
///
/// Figures are absolute so that a reader can tell a small busy node from a
/// big idle one; totals of 0 mean "this node has none of it".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadSummary {
    /// CPU in use, millicores.
    pub cpu_used_milli: u64,
    /// CPU the node offers, millicores.
    pub cpu_total_milli: u64,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Memory the node offers, bytes.
    pub memory_total_bytes: u64,
    /// GPUs on the node.
    pub gpus: u32,
    /// Mean utilisation over the node's GPUs, per mille (0–1000).
    pub gpu_util_permille: u32,
    /// Inference load per service.
    pub services: Vec<ServiceLoad>,
    /// Batch instances placed here and waiting to start.
    pub queued_batch: u32,
}

impl LoadSummary {
    /// The scalar the policy balances: `100 × max(cpu share, memory share,
    /// GPU utilisation)` plus `100 ×` the KV-cache share of its inference
    /// instances plus [`QUEUE_POINTS_PER_ITEM_PER_CORE`] points per
    /// waiting item per core (queued inference requests and queued batch
    /// instances).
    ///
    /// The dominant share (as in dominant resource fairness) makes a node
    /// whose memory is full count as busy even if its CPU idles; the queue
    /// term separates two saturated nodes by how much waits on each. A
    /// resource whose total is 0 does not count; shares above 1
    /// (overcommit) are kept. Never NaN, never negative.
    pub fn score(&self) -> f64 {
        let share = |used: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            }
        };
        let cpu = share(self.cpu_used_milli, self.cpu_total_milli);
        let mem = share(self.memory_used_bytes, self.memory_total_bytes);
        let gpu = if self.gpus == 0 {
            0.0
        } else {
            f64::from(self.gpu_util_permille.min(1000)) / 1000.0
        };
        let dominant = cpu.max(mem).max(gpu);
        let waiting: u64 = self
            .services
            .iter()
            .map(|s| u64::from(s.queued))
            .sum::<u64>()
            + u64::from(self.queued_batch);
        let cores = (self.cpu_total_milli as f64 / 1000.0).max(1.0);
        100.0 * dominant
            + 100.0 * self.kv_share()
            + QUEUE_POINTS_PER_ITEM_PER_CORE * waiting as f64 / cores
    }

    /// KV-cache blocks in use over those the node's inference instances
    /// hold, all services together (0 with none): the part of the load
    /// request migration moves. It is added to the dominant share rather
    /// than competing in it, so that a request weighs the same on every
    /// node whatever else the node reserves (its weight at the sender is
    /// what it adds at a recipient of the same size, as the policy's pair
    /// rule assumes), and the reservations of the instances themselves
    /// (CPU, memory) still count.
    pub fn kv_share(&self) -> f64 {
        let (used, total) = self.services.iter().fold((0u64, 0u64), |(u, t), s| {
            (
                u + u64::from(s.kv_blocks_used),
                t + u64::from(s.kv_blocks_total),
            )
        });
        if total == 0 {
            0.0
        } else {
            used as f64 / total as f64
        }
    }

    /// The instance of `service` on this node that takes moved requests,
    /// if the node runs one: what makes it a compatible recipient of that
    /// service's requests.
    pub fn instance_of(&self, service: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|s| s.service == service && !s.instance.is_empty() && s.kv_blocks_total > 0)
            .map(|s| s.instance.as_str())
    }

    /// A summary whose score is `score` on a node of `cores` CPU cores
    /// (CPU only): what the simulation and tests use to state a load.
    pub fn from_score(score: f64, cores: u32) -> Self {
        let total = u64::from(cores.max(1)) * 1000;
        let used = (score.max(0.0) / 100.0 * total as f64).round() as u64;
        LoadSummary {
            cpu_used_milli: used,
            cpu_total_milli: total,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_the_dominant_share_plus_queue() {
        let l = LoadSummary {
            cpu_used_milli: 2000,
            cpu_total_milli: 8000,
            memory_used_bytes: 6,
            memory_total_bytes: 8,
            gpus: 1,
            gpu_util_permille: 500,
            services: vec![ServiceLoad {
                service: "llm".into(),
                queued: 4,
                running: 2,
                ..Default::default()
            }],
            queued_batch: 4,
        };
        // memory 75 % dominates; 8 waiting over 8 cores adds 10.
        assert!((l.score() - 85.0).abs() < 1e-9, "{}", l.score());
    }

    #[test]
    fn kv_cache_share_adds_to_the_dominant_share_and_names_the_instance() {
        let l = LoadSummary {
            cpu_used_milli: 100,
            cpu_total_milli: 2000,
            services: vec![
                ServiceLoad {
                    service: "llm".into(),
                    kv_blocks_used: 96,
                    kv_blocks_total: 256,
                    instance: "a1".into(),
                    ..Default::default()
                },
                ServiceLoad {
                    service: "other".into(),
                    kv_blocks_used: 32,
                    kv_blocks_total: 256,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        // 128 of 512 blocks (25) on top of the CPU's 5 %.
        assert!((l.score() - 30.0).abs() < 1e-9, "{}", l.score());
        assert_eq!(l.instance_of("llm"), Some("a1"));
        assert_eq!(l.instance_of("other"), None, "no instance named");
        assert_eq!(l.instance_of("absent"), None);
    }

    #[test]
    fn empty_node_scores_zero_and_from_score_round_trips() {
        assert_eq!(LoadSummary::default().score(), 0.0);
        let l = LoadSummary::from_score(37.5, 100);
        assert!((l.score() - 37.5).abs() < 1e-9);
    }
}
