//! The GPU seam: one trait over NVML, a simulation and "no GPU at all".
//!
//! The agent must run the same on a laptop, in CI and on an 8-GPU node, and a
//! later issue caps GPU power through the same seam; so everything the agent
//! knows or does to GPUs goes through [`GpuBackend`], and [`detect`] picks the
//! backend once at start-up.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::ResourceError;
use super::nvml::NvmlBackend;
use super::simulated::{SimGpus, SimulatedGpuBackend};

/// What one GPU is and is doing, as the scheduler and power capping need it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Index on this host, as `set_power_limit` and `CUDA_VISIBLE_DEVICES`
    /// count them.
    pub index: u32,
    /// Stable identity (`GPU-…` from NVML, `SIM-GPU-<n>` when simulated).
    pub uuid: String,
    /// Short lower-case model, e.g. `"h100"`: what task specs ask for.
    pub model: String,
    /// Installed memory.
    pub memory_total_bytes: u64,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// Power drawn now, in watts.
    pub power_draw_watts: f64,
    /// Power limit now in force, in watts.
    pub power_limit_watts: u32,
    /// Lowest limit `set_power_limit` accepts (0 when the GPU cannot be capped).
    pub power_limit_min_watts: u32,
    /// Highest limit `set_power_limit` accepts (0 when the GPU cannot be capped).
    pub power_limit_max_watts: u32,
    /// Percent of the last sample period a kernel was running (0 to 100).
    pub utilisation_percent: u32,
    /// Energy the GPU has used, in millijoules: NVML's total energy counter
    /// (since the driver loaded), or the simulation's since the agent
    /// started; 0 where the device has no counter. Power budgets can check
    /// measured energy against the sampled draw with it.
    #[serde(default)]
    pub energy_millijoules: u64,
}

impl GpuInfo {
    /// Checks `watts` against this GPU's settable range, so every backend
    /// refuses out-of-range limits with the same error naming the range.
    pub fn check_power_limit(&self, watts: u32) -> Result<(), ResourceError> {
        if (self.power_limit_min_watts..=self.power_limit_max_watts).contains(&watts)
            && self.power_limit_max_watts > 0
        {
            Ok(())
        } else {
            Err(ResourceError::PowerLimitOutOfRange {
                index: self.index,
                watts,
                min_watts: self.power_limit_min_watts,
                max_watts: self.power_limit_max_watts,
            })
        }
    }
}

/// A source of GPU figures and the one control the agent uses (power limits).
///
/// Implementations may block (NVML calls the driver): the monitor calls them
/// from `spawn_blocking`, never on an actor's handler.
pub trait GpuBackend: Send + Sync {
    /// Short name for logs and reports: `"nvml"`, `"simulated"`, `"none"`.
    fn name(&self) -> &str;
    /// Whether the GPUs are made up; reported everywhere so that simulated
    /// capacity is never mistaken for real hardware.
    fn simulated(&self) -> bool;
    /// Every GPU on the host, by index.
    fn gpus(&self) -> Result<Vec<GpuInfo>, ResourceError>;
    /// Sets the power limit of GPU `index`; a value outside the GPU's
    /// settable range is an error naming the range.
    fn set_power_limit(&self, index: u32, watts: u32) -> Result<(), ResourceError>;
    /// Locks GPU `index`'s graphics clock to `min_mhz..=max_mhz` (the
    /// agent's `gpu_lock_clocks` setting: steadier power and speed under a
    /// cap); a range the device does not support is an error. Only NVML
    /// can: the others say so.
    fn lock_clocks(&self, index: u32, min_mhz: u32, max_mhz: u32) -> Result<(), ResourceError> {
        Err(ResourceError::Gpu {
            backend: self.name().to_string(),
            message: format!(
                "GPU {index}: cannot lock clocks to {min_mhz}..={max_mhz} MHz: \
                 only the nvml backend can"
            ),
        })
    }
    /// The simulated backend behind this one, when it is simulated: its
    /// activity knob ([`SimulatedGpuBackend::set_activity`]) drives the
    /// simulated draw. None for real GPUs.
    fn as_simulated(&self) -> Option<&SimulatedGpuBackend> {
        None
    }
}

/// The backend of a host without usable GPUs: zero GPUs, and the reason why,
/// so the agent can say in its log why it offers none.
#[derive(Debug, Clone)]
pub struct NoGpuBackend {
    reason: String,
}

impl NoGpuBackend {
    /// A backend with no GPUs because of `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        NoGpuBackend {
            reason: reason.into(),
        }
    }

    /// Why there are no GPUs (e.g. `"NVML not available: …"`).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl GpuBackend for NoGpuBackend {
    fn name(&self) -> &str {
        "none"
    }

    fn simulated(&self) -> bool {
        false
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, ResourceError> {
        Ok(Vec::new())
    }

    fn set_power_limit(&self, index: u32, _watts: u32) -> Result<(), ResourceError> {
        Err(ResourceError::NoSuchGpu {
            backend: self.name().to_string(),
            index,
            count: 0,
        })
    }
}

/// The backend [`detect`] chose, with a line for the agent's start-up log.
#[derive(Clone)]
pub struct GpuDetection {
    /// The backend to hand to the monitor.
    pub backend: Arc<dyn GpuBackend>,
    /// What was chosen and why, e.g. `"8 simulated h100 GPU(s)"` or
    /// `"NVML not available: …"`.
    pub note: String,
}

impl std::fmt::Debug for GpuDetection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDetection")
            .field("backend", &self.backend.name())
            .field("note", &self.note)
            .finish()
    }
}

/// Picks the GPU backend: the simulation when `sim` is given; otherwise NVML
/// when it initialises; otherwise [`NoGpuBackend`] with NVML's error as the
/// reason. Only bad simulation options are an error: a host without GPUs or
/// without a driver is normal.
pub fn detect(sim: Option<SimGpus>) -> Result<GpuDetection, ResourceError> {
    if let Some(sim) = sim {
        let backend = SimulatedGpuBackend::new(sim)?;
        let note = format!("{} simulated {} GPU(s)", backend.count(), backend.model());
        return Ok(GpuDetection {
            backend: Arc::new(backend),
            note,
        });
    }
    match NvmlBackend::init() {
        Ok(backend) => {
            let note = match backend.gpus() {
                Ok(gpus) => format!("NVML: {} GPU(s)", gpus.len()),
                Err(e) => format!("NVML initialised but listing GPUs failed: {e}"),
            };
            Ok(GpuDetection {
                backend: Arc::new(backend),
                note,
            })
        }
        Err(e) => {
            let backend = NoGpuBackend::new(format!("NVML not available: {e}"));
            Ok(GpuDetection {
                note: backend.reason().to_string(),
                backend: Arc::new(backend),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(min: u32, max: u32) -> GpuInfo {
        GpuInfo {
            index: 3,
            uuid: "GPU-x".into(),
            model: "h100".into(),
            memory_total_bytes: 1,
            memory_used_bytes: 0,
            power_draw_watts: 0.0,
            power_limit_watts: max,
            power_limit_min_watts: min,
            power_limit_max_watts: max,
            utilisation_percent: 0,
            energy_millijoules: 0,
        }
    }

    #[test]
    fn power_limit_check_names_the_range() {
        let g = gpu(200, 700);
        assert_eq!(g.check_power_limit(200), Ok(()));
        assert_eq!(g.check_power_limit(700), Ok(()));
        let err = g.check_power_limit(701).expect_err("too high");
        assert_eq!(
            err.to_string(),
            "GPU 3: power limit 701 W is outside the settable range 200..=700 W"
        );
        assert!(g.check_power_limit(199).is_err());
        // A GPU that cannot be capped accepts nothing, not even 0.
        assert!(gpu(0, 0).check_power_limit(0).is_err());
    }

    #[test]
    fn no_gpu_backend_has_none_and_says_why() {
        let backend = NoGpuBackend::new("NVML not available: no driver");
        assert_eq!(backend.gpus(), Ok(Vec::new()));
        assert_eq!(backend.name(), "none");
        assert!(!backend.simulated());
        assert_eq!(backend.reason(), "NVML not available: no driver");
        let err = backend.set_power_limit(0, 100).expect_err("no GPU");
        assert!(err.to_string().contains("no GPU with index 0"), "{err}");
    }

    #[test]
    fn detect_without_simulation_uses_nvml_or_says_why_not() {
        let detection = detect(None).expect("never fails without simulation");
        match detection.backend.name() {
            "nvml" => assert!(detection.note.starts_with("NVML"), "{}", detection.note),
            "none" => {
                assert!(detection.note.starts_with("NVML not available: "));
                assert!(detection.note.len() > "NVML not available: ".len());
                assert_eq!(detection.backend.gpus(), Ok(Vec::new()));
            }
            other => panic!("unexpected backend {other}"),
        }
        assert!(!detection.backend.simulated());
    }

    #[test]
    fn detect_with_simulation_uses_it() {
        let detection = detect(Some(SimGpus::new(8, "h100"))).expect("valid");
        assert_eq!(detection.backend.name(), "simulated");
        assert!(detection.backend.simulated());
        assert_eq!(detection.backend.gpus().expect("sim").len(), 8);
        assert_eq!(detection.note, "8 simulated h100 GPU(s)");
        assert!(detect(Some(SimGpus::new(2, " "))).is_err());
    }
}
