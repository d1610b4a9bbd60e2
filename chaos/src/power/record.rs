//! What a power run records in its history: the budget it set, the load
//! spikes it forced, and every agent's GPU power figures, sampled several
//! times a second. The power checker (`check::power`) reads only these.

use serde::{Deserialize, Serialize};

/// The budget a power run set on a group of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSet {
    /// The group (`cluster` or `key=value`).
    pub group: String,
    /// Its nodes (every agent of the run for `cluster`).
    pub nodes: Vec<String>,
    /// The budget, watts.
    pub watts: f64,
    /// The second threshold, as a fraction of the budget: the group must
    /// not stay above `hard_fraction × watts` for longer than
    /// [`crate::check::power::OVER_LIMIT`].
    pub hard_fraction: f64,
    /// The period the sampler aimed at, ms (the checker's allowance).
    pub sample_period_ms: u64,
    /// The GPUs' nameplate power summed over the group, watts.
    pub nameplate_watts: f64,
    /// When it was set, ns since the run started.
    pub at_ns: u64,
}

impl BudgetSet {
    /// The hard budget, watts.
    pub fn hard_watts(&self) -> f64 {
        self.watts * self.hard_fraction
    }
}

/// One GPU's power figures as its agent reported them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// Its index on the node.
    pub index: u32,
    /// What it draws, watts.
    pub draw_watts: f64,
    /// The limit in force, watts.
    pub limit_watts: f64,
    /// The lowest limit the device accepts.
    pub min_watts: f64,
    /// The highest limit the device accepts.
    pub max_watts: f64,
    /// Whether the governor holds it under its maximum.
    pub capped: bool,
}

/// One node's figures in a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePower {
    /// Node name.
    pub node: String,
    /// Whether its agent answered this time (else `gpus` is empty and the
    /// checker carries its last figures forward).
    pub reached: bool,
    /// When its answer came, ns since the run started.
    pub at_ns: u64,
    /// The node's share, watts, while its governor holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_watts: Option<f64>,
    /// Its GPUs.
    #[serde(default)]
    pub gpus: Vec<GpuSample>,
}

impl NodePower {
    /// What its GPUs draw together, watts.
    pub fn draw_watts(&self) -> f64 {
        self.gpus.iter().map(|g| g.draw_watts).sum()
    }
}

/// Every node of the group sampled at (about) one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerTick {
    /// When the sample was taken (its last answer), ns since the run started.
    pub at_ns: u64,
    /// Each node's figures.
    pub nodes: Vec<NodePower>,
}

/// A load spike the harness forced on every simulated GPU (SIMULATION:
/// through the agents' spike file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpikeWindow {
    /// The activity floor it set, `0.0..=1.0`.
    pub activity: f64,
    /// When it began, ns since the run started.
    pub start_ns: u64,
    /// When it ended (None: cut short by the end of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
}
