//! The report a node sends about itself, and the capacity it offers.

use std::collections::BTreeMap;

use herd_api::resources::Resources;
use serde::{Deserialize, Serialize};

use super::gpu::GpuInfo;

/// Everything the node agent knows about its host at one instant: what the
/// coordinator needs to place work and to show operators the node's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    /// CPUs this agent may use (affinity and cgroup quota applied).
    pub cpus: u32,
    /// Host-wide busy fraction (0.0 to 1.0) since the previous sample.
    pub cpu_busy_fraction: f64,
    /// RAM the kernel manages.
    pub memory_total_bytes: u64,
    /// RAM new work can get without swapping.
    pub memory_available_bytes: u64,
    /// Size of the file system holding the data dir.
    pub disk_total_bytes: u64,
    /// Space still writable there.
    pub disk_available_bytes: u64,
    /// Load average over one minute.
    pub load1: f64,
    /// Load average over five minutes.
    pub load5: f64,
    /// Load average over fifteen minutes.
    pub load15: f64,
    /// Every GPU, by index.
    pub gpus: Vec<GpuInfo>,
    /// The GPU backend's name: `"nvml"`, `"simulated"` or `"none"`.
    pub gpu_backend: String,
    /// Whether the GPUs are simulated, so made-up capacity is never taken
    /// for real hardware.
    pub gpus_simulated: bool,
    /// When the figures were read, in milliseconds since the Unix epoch
    /// (0 before the first sample).
    pub sampled_at_ms: u64,
}

/// What the node keeps for itself (the agent, the OS) and does not offer to
/// workloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// CPU kept back, in millicores.
    pub cpu_millis: u64,
    /// Memory kept back, in bytes.
    pub memory_bytes: u64,
}

impl HostReport {
    /// What the node offers to workloads: its CPUs and memory less what is
    /// reserved (never below zero), all its GPUs, and their model: the one
    /// they share, or the most common when they differ (ties go to the name
    /// first in alphabetical order, so the answer does not flicker).
    pub fn capacity(&self, reserved: &Reserved) -> Resources {
        Resources {
            cpu_millis: u64::from(self.cpus)
                .saturating_mul(1000)
                .saturating_sub(reserved.cpu_millis),
            memory_bytes: self
                .memory_total_bytes
                .saturating_sub(reserved.memory_bytes),
            gpus: u32::try_from(self.gpus.len()).unwrap_or(u32::MAX),
            gpu_model: self.main_gpu_model(),
        }
    }

    fn main_gpu_model(&self) -> Option<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for gpu in &self.gpus {
            *counts.entry(gpu.model.as_str()).or_default() += 1;
        }
        // max_by_key keeps the last maximum; iterate in reverse so it is the
        // alphabetically first.
        counts
            .into_iter()
            .rev()
            .max_by_key(|(_, count)| *count)
            .map(|(model, _)| model.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::resources::GIB;

    fn gpu(index: u32, model: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index}"),
            model: model.to_string(),
            memory_total_bytes: 80 * GIB,
            memory_used_bytes: 0,
            power_draw_watts: 0.0,
            power_limit_watts: 700,
            power_limit_min_watts: 200,
            power_limit_max_watts: 700,
            utilisation_percent: 0,
            energy_millijoules: 0,
        }
    }

    #[test]
    fn capacity_subtracts_the_reserve() {
        let report = HostReport {
            cpus: 16,
            memory_total_bytes: 64 * GIB,
            ..HostReport::default()
        };
        let reserved = Reserved {
            cpu_millis: 500,
            memory_bytes: 2 * GIB,
        };
        assert_eq!(
            report.capacity(&reserved),
            Resources {
                cpu_millis: 15_500,
                memory_bytes: 62 * GIB,
                gpus: 0,
                gpu_model: None,
            }
        );
        let greedy = Reserved {
            cpu_millis: 1_000_000,
            memory_bytes: u64::MAX,
        };
        let capacity = report.capacity(&greedy);
        assert_eq!((capacity.cpu_millis, capacity.memory_bytes), (0, 0));
    }

    #[test]
    fn gpu_model_is_the_shared_or_most_common_one() {
        let mut report = HostReport {
            gpus: (0..4).map(|i| gpu(i, "h100")).collect(),
            ..HostReport::default()
        };
        let capacity = report.capacity(&Reserved::default());
        assert_eq!(
            (capacity.gpus, capacity.gpu_model.as_deref()),
            (4, Some("h100"))
        );

        report.gpus.push(gpu(4, "a100"));
        assert_eq!(
            report.capacity(&Reserved::default()).gpu_model.as_deref(),
            Some("h100")
        );

        report.gpus = vec![gpu(0, "l4"), gpu(1, "a100")];
        assert_eq!(
            report.capacity(&Reserved::default()).gpu_model.as_deref(),
            Some("a100")
        );
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = HostReport {
            cpus: 2,
            gpus: vec![gpu(0, "h100")],
            gpu_backend: "simulated".into(),
            gpus_simulated: true,
            sampled_at_ms: 42,
            ..HostReport::default()
        };
        let json = serde_json::to_string(&report).expect("serialise");
        let back: HostReport = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, report);
    }
}
