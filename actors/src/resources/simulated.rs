//! Simulated GPUs (`--sim-gpus 8 --sim-gpu-model h100`), so that scheduling
//! and power capping can be developed and tested on machines without GPUs.
//!
//! A SIMULATION, marked as such everywhere it is reported. Its power model:
//! each GPU has an activity `a` in `0.0..=1.0` (how busy the work bound to
//! it keeps it) and draws `idle + a × (nameplate − idle)` watts, clamped by
//! its power limit; the work it gets done per second falls with the limit
//! along its model's curve ([`throughput_fraction`], documented with its
//! sources in docs/power.md). A GPU starts idle (activity 0); the agent
//! drives each GPU's activity from the work bound to it
//! ([`SimulatedGpuBackend::set_work_activity`], fed by the `gpu-work` files
//! of [`super::gpu_work`]). Tests pin the activities instead
//! ([`SimGpus::with_pinned_activity`], `--sim-gpu-activity`), or set one
//! directly with [`SimulatedGpuBackend::set_activity`]. Each GPU also
//! counts the energy it used since the backend started, as NVML's total
//! energy counter does.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::gpu::{GpuBackend, GpuInfo};

use super::error::ResourceError;
use herd_api::power::{gpu_nameplate, GpuNameplate};
use herd_api::resources::GIB;

/// What to simulate: how many GPUs, of which model.
#[derive(Debug, Clone, PartialEq)]
pub struct SimGpus {
    /// Number of GPUs.
    pub count: u32,
    /// Model name as reported (e.g. `"h100"`); known models get their
    /// nameplate figures, others a generic mid-range GPU's.
    pub model: String,
    /// Fixed activities (SIMULATION, for tests): GPU `i` keeps
    /// `pinned[i % len]` whatever runs on it; the work's reports are then
    /// ignored. None: activity follows the work, idle when unbound.
    pub pinned_activity: Option<Vec<f64>>,
}

impl SimGpus {
    /// `count` GPUs of `model`, their activity driven by their work.
    pub fn new(count: u32, model: impl Into<String>) -> Self {
        SimGpus {
            count,
            model: model.into(),
            pinned_activity: None,
        }
    }

    /// The same GPUs with their activities pinned (see
    /// [`SimGpus::pinned_activity`]); an empty list pins nothing.
    pub fn with_pinned_activity(mut self, pinned: Vec<f64>) -> Self {
        self.pinned_activity = (!pinned.is_empty()).then_some(pinned);
        self
    }
}

/// The activity GPU `index` starts at (SIMULATION): its pinned one, else 0
/// (idle: no work is bound to it yet).
fn initial_activity(pinned: Option<&[f64]>, index: u32) -> f64 {
    match pinned {
        Some(list) if !list.is_empty() => {
            let i = usize::try_from(index).unwrap_or(0) % list.len();
            list[i]
        }
        _ => 0.0,
    }
}

/// Throughput of a fully busy GPU of `model` capped at `limit_watts`, as a
/// fraction of its throughput at its nameplate limit (SIMULATION, from
/// published measurements: see docs/power.md). Piecewise linear in the
/// limit as a fraction of the nameplate; 1.0 at or above the nameplate,
/// the curve's last point below its lowest settable limit. Models without
/// a curve of their own use the A100's, the more power-sensitive one.
pub fn throughput_fraction(model: &str, limit_watts: f64) -> f64 {
    let plate = gpu_nameplate(model);
    let curve: &[(f64, f64)] = match model {
        // H100 SXM (700 W): flat to ~80 % of TDP, then falling faster.
        "h100" | "h200" => &[
            (1.00, 1.00),
            (0.80, 0.97),
            (0.60, 0.88),
            (0.45, 0.75),
            (0.2857, 0.50),
        ],
        // A100 SXM (400 W).
        _ => &[
            (1.00, 1.00),
            (0.75, 0.97),
            (0.625, 0.92),
            (0.50, 0.80),
            (0.25, 0.45),
        ],
    };
    let x = if limit_watts.is_finite() {
        (limit_watts / f64::from(plate.max_watts)).max(0.0)
    } else {
        1.0
    };
    interpolate(curve, x)
}

/// Linear interpolation on `curve` (x descending), flat beyond both ends.
fn interpolate(curve: &[(f64, f64)], x: f64) -> f64 {
    let (Some(&(x_hi, y_hi)), Some(&(x_lo, y_lo))) = (curve.first(), curve.last()) else {
        return 1.0;
    };
    if x >= x_hi {
        return y_hi;
    }
    if x <= x_lo {
        return y_lo;
    }
    for pair in curve.windows(2) {
        let ((x1, y1), (x0, y0)) = (pair[0], pair[1]);
        if x <= x1 && x >= x0 {
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
    }
    y_lo
}

/// The share of its uncapped throughput a GPU of `model` keeps when its work
/// would draw `wanted_watts` but the limit is `limit_watts` (SIMULATION):
/// 1.0 when the limit does not bind, else the ratio of the curve's values.
pub fn relative_throughput(model: &str, limit_watts: f64, wanted_watts: f64) -> f64 {
    if limit_watts >= wanted_watts {
        return 1.0;
    }
    let wanted = throughput_fraction(model, wanted_watts);
    if wanted <= 0.0 {
        return 1.0;
    }
    (throughput_fraction(model, limit_watts) / wanted).clamp(0.0, 1.0)
}

/// What a GPU of `plate` would draw at `activity` with no limit
/// (SIMULATION): `idle + activity × (nameplate − idle)`.
pub fn uncapped_draw(plate: &GpuNameplate, activity: f64) -> f64 {
    let idle = f64::from(plate.idle_watts);
    idle + activity.clamp(0.0, 1.0) * (f64::from(plate.max_watts) - idle)
}

/// One simulated GPU's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SimGpu {
    limit_watts: u32,
    activity: f64,
    /// Energy used since the backend started (mJ, fractional so that short
    /// intervals are not lost to rounding).
    energy_mj: f64,
}

impl SimGpu {
    /// Its draw with its activity raised to `floor` (a spike file's).
    fn draw(&self, plate: &GpuNameplate, floor: f64) -> f64 {
        uncapped_draw(plate, self.activity.max(floor)).min(f64::from(self.limit_watts))
    }
}

/// Every GPU, and when their energy was last added up.
#[derive(Debug)]
struct SimState {
    gpus: Vec<SimGpu>,
    accounted_at: Instant,
}

impl SimState {
    /// Adds each GPU's energy since the last call at its present draw
    /// (which held since then: every change goes through here first).
    fn accrue(&mut self, plate: &GpuNameplate) {
        let now = Instant::now();
        let seconds = now
            .saturating_duration_since(self.accounted_at)
            .as_secs_f64();
        self.accounted_at = now;
        let floor = spiked(0.0);
        for gpu in &mut self.gpus {
            gpu.energy_mj += gpu.draw(plate, floor) * seconds * 1000.0;
        }
    }
}

/// N simulated GPUs of one model; see the module doc.
#[derive(Debug)]
pub struct SimulatedGpuBackend {
    model: String,
    nameplate: GpuNameplate,
    /// Whether activities are pinned (work reports ignored).
    pinned: bool,
    /// Each GPU's limit, activity and energy, by index.
    state: Mutex<SimState>,
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
        let nameplate = gpu_nameplate(&model);
        let count = usize::try_from(sim.count)
            .map_err(|_| ResourceError::BadSimulation(format!("too many GPUs: {}", sim.count)))?;
        let pinned = sim.pinned_activity.as_deref();
        if let Some(bad) = pinned
            .into_iter()
            .flatten()
            .find(|a| !(0.0..=1.0).contains(*a))
        {
            return Err(ResourceError::BadSimulation(format!(
                "pinned activity must be 0.0 to 1.0, got {bad}"
            )));
        }
        let mut gpus = Vec::with_capacity(count);
        gpus.extend((0..sim.count).map(|index| SimGpu {
            limit_watts: nameplate.max_watts,
            activity: initial_activity(pinned, index),
            energy_mj: 0.0,
        }));
        Ok(SimulatedGpuBackend {
            model,
            nameplate,
            pinned: pinned.is_some(),
            state: Mutex::new(SimState {
                gpus,
                accounted_at: Instant::now(),
            }),
        })
    }

    /// Whether the activities are pinned, so work reports change nothing.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Number of simulated GPUs.
    pub fn count(&self) -> u32 {
        u32::try_from(self.lock().gpus.len()).unwrap_or(u32::MAX)
    }

    /// The simulated model, lower-cased.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The simulated model's power figures.
    pub fn nameplate(&self) -> GpuNameplate {
        self.nameplate
    }

    /// The state, its energy counters brought up to now (so that a change
    /// made under the guard starts a new interval).
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // Plain numbers: a panic elsewhere cannot leave them half-written,
        // so a poisoned lock is still good to use.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.accrue(&self.nameplate);
        state
    }

    fn with_gpu<T>(
        &self,
        index: u32,
        f: impl FnOnce(&mut SimGpu) -> Result<T, ResourceError>,
    ) -> Result<T, ResourceError> {
        let mut state = self.lock();
        let count = u32::try_from(state.gpus.len()).unwrap_or(u32::MAX);
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| state.gpus.get_mut(i))
            .ok_or_else(|| ResourceError::NoSuchGpu {
                backend: "simulated".to_string(),
                index,
                count,
            })?;
        f(slot)
    }

    /// Sets how busy GPU `index`'s work keeps it (SIMULATION), `0.0..=1.0`:
    /// its draw follows at once. An activity outside that range (or NaN)
    /// is refused, naming it.
    pub fn set_activity(&self, index: u32, activity: f64) -> Result<(), ResourceError> {
        if !(0.0..=1.0).contains(&activity) {
            return Err(ResourceError::BadSimulation(format!(
                "GPU {index}: activity must be 0.0 to 1.0, got {activity}"
            )));
        }
        self.with_gpu(index, |gpu| {
            gpu.activity = activity;
            Ok(())
        })
    }

    /// Sets GPU `index`'s activity from what its work reported (the agent's
    /// path, SIMULATION): like [`Self::set_activity`], but nothing changes
    /// while the activities are pinned; returns whether it was applied.
    pub fn set_work_activity(&self, index: u32, activity: f64) -> Result<bool, ResourceError> {
        if self.pinned {
            return Ok(false);
        }
        self.set_activity(index, activity).map(|()| true)
    }

    /// Sets every GPU's activity (a load spike or lull in tests).
    pub fn set_all_activity(&self, activity: f64) -> Result<(), ResourceError> {
        for index in 0..self.count() {
            self.set_activity(index, activity)?;
        }
        Ok(())
    }

    /// The share of its uncapped throughput GPU `index` keeps under its
    /// limit now (SIMULATION; see [`relative_throughput`]).
    pub fn throughput(&self, index: u32) -> Result<f64, ResourceError> {
        let plate = self.nameplate;
        let model = self.model.clone();
        self.with_gpu(index, |gpu| {
            let wanted = uncapped_draw(&plate, spiked(gpu.activity));
            Ok(relative_throughput(
                &model,
                f64::from(gpu.limit_watts),
                wanted,
            ))
        })
    }

    fn info(&self, index: u32, gpu: SimGpu) -> GpuInfo {
        let plate = self.nameplate;
        let memory_bytes = plate.memory_gib * GIB;
        let activity = spiked(gpu.activity);
        GpuInfo {
            index,
            uuid: format!("SIM-GPU-{index}"),
            model: self.model.clone(),
            memory_total_bytes: memory_bytes,
            memory_used_bytes: (memory_bytes as f64 * activity * 0.5) as u64,
            power_draw_watts: gpu.draw(&plate, activity),
            power_limit_watts: gpu.limit_watts,
            power_limit_min_watts: plate.min_watts,
            power_limit_max_watts: plate.max_watts,
            utilisation_percent: (activity * 100.0).round() as u32,
            energy_millijoules: gpu.energy_mj as u64,
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
        let gpus = self.lock().gpus.clone();
        Ok((0u32..)
            .zip(gpus)
            .map(|(index, gpu)| self.info(index, gpu))
            .collect())
    }

    fn set_power_limit(&self, index: u32, watts: u32) -> Result<(), ResourceError> {
        let info = self.with_gpu(index, |gpu| Ok(*gpu))?;
        self.info(index, info).check_power_limit(watts)?;
        self.with_gpu(index, |gpu| {
            gpu.limit_watts = watts;
            Ok(())
        })
    }

    fn as_simulated(&self) -> Option<&SimulatedGpuBackend> {
        Some(self)
    }
}

/// The environment variable naming a SIMULATION spike file (a test knob for
/// the chaos harness, docs/chaos.md "Power"): while the file holds a number
/// `0.0..=1.0`, every simulated GPU of the process is at least that busy, so
/// a harness can make a real agent's GPUs spike from outside, whatever work
/// runs on them. Absent, empty or not such a number: no floor.
pub const SPIKE_FILE_ENV: &str = "HERD_SIM_GPU_SPIKE_FILE";

/// `activity` raised to the spike file's floor ([`SPIKE_FILE_ENV`]), when
/// one is named and holds a valid number (SIMULATION). Read at every
/// sample: the file is a few bytes and samples come every 50 ms at most.
fn spiked(activity: f64) -> f64 {
    let Some(path) = std::env::var_os(SPIKE_FILE_ENV) else {
        return activity;
    };
    activity.max(spike_floor(std::path::Path::new(&path)))
}

/// The floor a spike file holds: its number when in `0.0..=1.0`, else 0.
fn spike_floor(path: &std::path::Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|f| (0.0..=1.0).contains(f))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod spike_tests {
    #[test]
    fn a_spike_file_holds_a_floor_or_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("spike");
        assert_eq!(super::spike_floor(&path), 0.0);
        for (text, floor) in [
            ("1.0\n", 1.0),
            ("0.25", 0.25),
            ("", 0.0),
            ("2", 0.0),
            ("x", 0.0),
        ] {
            std::fs::write(&path, text).expect("write");
            assert_eq!(super::spike_floor(&path), floor, "{text:?}");
        }
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
        // GPU 1 70 % busy: 80 W idle + 0.7 × 620 W = 514 W uncapped.
        backend.set_activity(1, 0.7).expect("valid");
        let before = &backend.gpus().expect("gpus")[1];
        assert!((before.power_draw_watts - 514.0).abs() < 1e-9);
        backend.set_power_limit(1, 300).expect("in range");
        let after = &backend.gpus().expect("gpus")[1];
        assert_eq!(after.power_limit_watts, 300);
        assert!((after.power_draw_watts - 300.0).abs() < 1e-9);
        // A limit above the load leaves the draw at the load.
        backend.set_power_limit(1, 600).expect("in range");
        assert!((backend.gpus().expect("gpus")[1].power_draw_watts - 514.0).abs() < 1e-9);
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

    #[test]
    fn draw_follows_the_activity_between_idle_and_nameplate() {
        let backend = sim(2, "a100");
        backend.set_activity(0, 0.0).expect("valid");
        backend.set_activity(1, 1.0).expect("valid");
        let gpus = backend.gpus().expect("gpus");
        assert!((gpus[0].power_draw_watts - 55.0).abs() < 1e-9);
        assert!((gpus[1].power_draw_watts - 400.0).abs() < 1e-9);
        assert_eq!(gpus[1].utilisation_percent, 100);
        // Clamped by the limit, and the work slows down accordingly.
        backend.set_power_limit(1, 200).expect("in range");
        assert!((backend.gpus().expect("gpus")[1].power_draw_watts - 200.0).abs() < 1e-9);
        let slowed = backend.throughput(1).expect("gpu 1");
        assert!((slowed - 0.80).abs() < 1e-9, "{slowed}");
        // An idle GPU under the same limit loses nothing.
        backend.set_power_limit(0, 200).expect("in range");
        assert_eq!(backend.throughput(0).expect("gpu 0"), 1.0);
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(backend.set_activity(0, bad).is_err(), "{bad}");
        }
        assert!(backend.set_activity(2, 0.5).is_err());
        backend.set_all_activity(0.5).expect("valid");
        assert!(backend
            .gpus()
            .expect("gpus")
            .iter()
            .all(|g| g.utilisation_percent == 50));
    }

    #[test]
    fn gpus_start_idle_and_follow_their_work_unless_pinned() {
        let backend = sim(2, "h100");
        assert!(!backend.pinned());
        let gpus = backend.gpus().expect("gpus");
        assert!(gpus
            .iter()
            .all(|g| (g.power_draw_watts - 80.0).abs() < 1e-9));
        assert_eq!(backend.set_work_activity(0, 1.0), Ok(true));
        assert!((backend.gpus().expect("gpus")[0].power_draw_watts - 700.0).abs() < 1e-9);
        assert!(backend.set_work_activity(0, 1.5).is_err());
        assert!(backend.set_work_activity(5, 0.5).is_err());

        let pinned =
            SimulatedGpuBackend::new(SimGpus::new(3, "h100").with_pinned_activity(vec![0.5, 1.0]))
                .expect("valid");
        assert!(pinned.pinned());
        let draws: Vec<f64> = pinned
            .gpus()
            .expect("gpus")
            .iter()
            .map(|g| g.power_draw_watts)
            .collect();
        assert_eq!(draws, vec![390.0, 700.0, 390.0]);
        // Work reports change nothing; the explicit knob still does.
        assert_eq!(pinned.set_work_activity(0, 0.0), Ok(false));
        assert_eq!(pinned.gpus().expect("gpus")[0].power_draw_watts, 390.0);
        pinned.set_activity(0, 0.0).expect("valid");
        assert_eq!(pinned.gpus().expect("gpus")[0].power_draw_watts, 80.0);
        let bad = SimGpus::new(1, "h100").with_pinned_activity(vec![1.2]);
        assert!(SimulatedGpuBackend::new(bad).is_err());
        assert_eq!(
            SimGpus::new(1, "h100")
                .with_pinned_activity(Vec::new())
                .pinned_activity,
            None
        );
    }

    #[test]
    fn the_energy_counter_integrates_the_draw() {
        let backend = sim(2, "h100");
        backend.set_activity(1, 1.0).expect("valid");
        let before = backend.gpus().expect("gpus");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = backend.gpus().expect("gpus");
        let used = |i: usize| after[i].energy_millijoules - before[i].energy_millijoules;
        // 80 W idle and 700 W busy for at least 0.2 s: at least 16 J and
        // 140 J; a loaded machine may sleep longer, so no upper bound
        // beyond the ratio of the draws.
        assert!(used(0) >= 16_000, "{}", used(0));
        assert!(used(1) >= 140_000, "{}", used(1));
        let ratio = used(1) as f64 / used(0) as f64;
        assert!((ratio - 700.0 / 80.0).abs() < 0.5, "{ratio}");
    }

    #[test]
    fn throughput_falls_with_the_limit_along_the_model_curve() {
        for (model, max, min) in [("h100", 700.0, 200.0), ("a100", 400.0, 100.0)] {
            assert_eq!(throughput_fraction(model, max), 1.0);
            assert_eq!(throughput_fraction(model, max * 2.0), 1.0);
            let mut previous = 1.0;
            let mut watts = max;
            while watts >= min {
                let f = throughput_fraction(model, watts);
                assert!(f <= previous + 1e-12 && f > 0.0, "{model} {watts} W: {f}");
                previous = f;
                watts -= 10.0;
            }
            // Mild near the nameplate, steep near the floor.
            assert!(throughput_fraction(model, max * 0.8) > 0.95, "{model}");
            assert!(throughput_fraction(model, min) < 0.55, "{model}");
        }
        assert!((throughput_fraction("h100", 420.0) - 0.88).abs() < 1e-9);
        assert_eq!(throughput_fraction("h100", f64::NAN), 1.0);
        assert_eq!(relative_throughput("h100", 700.0, 500.0), 1.0);
        let r = relative_throughput("h100", 420.0, 700.0);
        assert!((r - 0.88).abs() < 1e-9, "{r}");
    }
}
