//! Simulated GPUs (`--sim-gpus 8 --sim-gpu-model h100`), so that scheduling
//! and power capping can be developed and tested on machines without GPUs.
//!
//! The figures are plausible nameplate ones and deterministic: each GPU has a
//! fixed load, and its draw is that load capped by its power limit, so a test
//! can set a limit and see the draw follow. Everything is marked simulated.

use std::sync::{Mutex, PoisonError};

use super::gpu::{GpuBackend, GpuInfo};

use super::error::ResourceError;
use herd_api::resources::GIB;

/// What to simulate: how many GPUs, of which model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGpus {
    /// Number of GPUs.
    pub count: u32,
    /// Model name as reported (e.g. `"h100"`); known models get their
    /// nameplate figures, others a generic mid-range GPU's.
    pub model: String,
}

impl SimGpus {
    /// `count` GPUs of `model`.
    pub fn new(count: u32, model: impl Into<String>) -> Self {
        SimGpus {
            count,
            model: model.into(),
        }
    }
}

/// Nameplate figures of a simulated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nameplate {
    /// Default (and highest settable) power limit.
    max_watts: u32,
    /// Lowest settable power limit.
    min_watts: u32,
    memory_bytes: u64,
}

/// The nameplate of `model` (already lower-cased); a generic 300 W / 16 GiB
/// GPU for models not in the table.
fn nameplate(model: &str) -> Nameplate {
    let (max_watts, min_watts, memory_gib) = match model {
        "h200" => (700, 200, 141),
        "h100" => (700, 200, 80),
        "a100" => (400, 100, 80),
        "l40s" => (350, 100, 48),
        "a10" | "a10g" => (150, 100, 24),
        "l4" => (72, 40, 24),
        "t4" => (70, 60, 16),
        _ => (300, 100, 16),
    };
    Nameplate {
        max_watts,
        min_watts,
        memory_bytes: memory_gib * GIB,
    }
}

/// Deterministic share of the nameplate power GPU `index` would draw if
/// uncapped: 60 %, 70 %, 80 %, 90 %, then again.
fn load_fraction(index: u32) -> f64 {
    0.6 + 0.1 * f64::from(index % 4)
}

/// N simulated GPUs of one model; see the module doc.
#[derive(Debug)]
pub struct SimulatedGpuBackend {
    model: String,
    nameplate: Nameplate,
    /// Power limit of each GPU, by index.
    limits: Mutex<Vec<u32>>,
}

impl SimulatedGpuBackend {
    /// The simulation asked for; an empty model name is an error (it would
    /// make tasks asking for a model unschedulable in a confusing way).
    pub fn new(sim: SimGpus) -> Result<Self, ResourceError> {
        let model = sim.model.trim().to_ascii_lowercase();
        if model.is_empty() {
            return Err(ResourceError::BadSimulation(
                "the GPU model name is empty".to_string(),
            ));
        }
        let nameplate = nameplate(&model);
        let count = usize::try_from(sim.count)
            .map_err(|_| ResourceError::BadSimulation(format!("too many GPUs: {}", sim.count)))?;
        Ok(SimulatedGpuBackend {
            model,
            nameplate,
            limits: Mutex::new(vec![nameplate.max_watts; count]),
        })
    }

    /// Number of simulated GPUs.
    pub fn count(&self) -> u32 {
        u32::try_from(self.limits().len()).unwrap_or(u32::MAX)
    }

    /// The simulated model, lower-cased.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        // The data is a plain Vec<u32>: a panic elsewhere cannot leave it
        // half-written, so a poisoned lock is still good to use.
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self, index: u32, limit: u32) -> GpuInfo {
        let plate = self.nameplate;
        let load = load_fraction(index);
        let uncapped = f64::from(plate.max_watts) * load;
        GpuInfo {
            index,
            uuid: format!("SIM-GPU-{index}"),
            model: self.model.clone(),
            memory_total_bytes: plate.memory_bytes,
            memory_used_bytes: (plate.memory_bytes as f64 * load * 0.5) as u64,
            power_draw_watts: uncapped.min(f64::from(limit)),
            power_limit_watts: limit,
            power_limit_min_watts: plate.min_watts,
            power_limit_max_watts: plate.max_watts,
            utilisation_percent: (load * 100.0).round() as u32,
        }
    }
}

impl GpuBackend for SimulatedGpuBackend {
    fn name(&self) -> &str {
        "simulated"
    }

    fn simulated(&self) -> bool {
        true
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, ResourceError> {
        let limits = self.limits().clone();
        Ok((0u32..)
            .zip(limits)
            .map(|(index, limit)| self.info(index, limit))
            .collect())
    }

    fn set_power_limit(&self, index: u32, watts: u32) -> Result<(), ResourceError> {
        let mut limits = self.limits();
        let count = u32::try_from(limits.len()).unwrap_or(u32::MAX);
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| limits.get_mut(i))
            .ok_or_else(|| ResourceError::NoSuchGpu {
                backend: "simulated".to_string(),
                index,
                count,
            })?;
        self.info(index, *slot).check_power_limit(watts)?;
        *slot = watts;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(count: u32, model: &str) -> SimulatedGpuBackend {
        SimulatedGpuBackend::new(SimGpus::new(count, model)).expect("valid simulation")
    }

    #[test]
    fn reports_the_asked_count_and_model_as_simulated() {
        let backend = sim(8, "h100");
        assert!(backend.simulated());
        assert_eq!(backend.name(), "simulated");
        let gpus = backend.gpus().expect("gpus");
        assert_eq!(gpus.len(), 8);
        for (i, gpu) in (0u32..).zip(&gpus) {
            assert_eq!(gpu.index, i);
            assert_eq!(gpu.uuid, format!("SIM-GPU-{i}"));
            assert_eq!(gpu.model, "h100");
            assert_eq!(gpu.memory_total_bytes, 80 * GIB);
            assert_eq!(gpu.power_limit_watts, 700);
            assert_eq!(gpu.power_limit_max_watts, 700);
            assert!(gpu.memory_used_bytes < gpu.memory_total_bytes);
            assert!(gpu.power_draw_watts > 0.0 && gpu.power_draw_watts <= 700.0);
            assert!(gpu.utilisation_percent <= 100);
        }
        assert_eq!(sim(0, "a100").gpus(), Ok(Vec::new()));
    }

    #[test]
    fn models_get_their_nameplates() {
        let a100 = &sim(1, "A100").gpus().expect("gpus")[0];
        assert_eq!((a100.model.as_str(), a100.power_limit_watts), ("a100", 400));
        assert_eq!(a100.memory_total_bytes, 80 * GIB);
        let l4 = &sim(1, "l4").gpus().expect("gpus")[0];
        assert_eq!(
            (l4.power_limit_watts, l4.memory_total_bytes),
            (72, 24 * GIB)
        );
        let other = &sim(1, "mystery9000").gpus().expect("gpus")[0];
        assert_eq!(other.model, "mystery9000");
        assert_eq!(
            (other.power_limit_watts, other.memory_total_bytes),
            (300, 16 * GIB)
        );
        assert!(SimulatedGpuBackend::new(SimGpus::new(1, "")).is_err());
    }

    #[test]
    fn draw_follows_the_power_limit() {
        let backend = sim(2, "h100");
        // GPU 1 would draw 70 % of 700 W uncapped.
        let before = &backend.gpus().expect("gpus")[1];
        assert!((before.power_draw_watts - 490.0).abs() < 1e-9);
        backend.set_power_limit(1, 300).expect("in range");
        let after = &backend.gpus().expect("gpus")[1];
        assert_eq!(after.power_limit_watts, 300);
        assert!((after.power_draw_watts - 300.0).abs() < 1e-9);
        // A limit above the load leaves the draw at the load.
        backend.set_power_limit(1, 600).expect("in range");
        assert!((backend.gpus().expect("gpus")[1].power_draw_watts - 490.0).abs() < 1e-9);
        // GPU 0 was not touched.
        assert_eq!(backend.gpus().expect("gpus")[0].power_limit_watts, 700);
    }

    #[test]
    fn out_of_range_limits_and_indexes_are_refused() {
        let backend = sim(2, "h100");
        let err = backend.set_power_limit(0, 800).expect_err("too high");
        assert_eq!(
            err,
            ResourceError::PowerLimitOutOfRange {
                index: 0,
                watts: 800,
                min_watts: 200,
                max_watts: 700
            }
        );
        assert!(err.to_string().contains("200..=700 W"), "{err}");
        assert!(backend.set_power_limit(0, 100).is_err());
        let err = backend.set_power_limit(2, 300).expect_err("no GPU 2");
        assert!(err.to_string().contains("this host has 2 GPU(s)"), "{err}");
        assert_eq!(backend.gpus().expect("gpus")[0].power_limit_watts, 700);
    }
}
