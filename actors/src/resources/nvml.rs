//! Real NVIDIA GPUs through NVML (`nvml-wrapper`, which loads
//! `libnvidia-ml.so` at run time, so the agent builds and runs on hosts
//! without the driver and simply finds no GPUs there).
//!
//! What the agent uses of it: each GPU's power draw, total energy counter,
//! power limit and the limit's settable range (its constraints), setting
//! the limit (never outside that range: checked before NVML is called),
//! and, when the agent is configured to (`gpu_lock_clocks`), locking the
//! graphics clock to a range the device supports.

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::GpuLockedClocksSetting;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::error::ResourceError;
use super::gpu::{GpuBackend, GpuInfo};

const NAME: &str = "nvml";

/// Short lower-case model name from NVML's marketing name, the form task
/// specs ask for: `"NVIDIA H100 80GB HBM3"` → `"h100"`, `"NVIDIA
/// A100-SXM4-40GB"` → `"a100"`, `"Tesla T4"` → `"t4"`, `"NVIDIA GeForce RTX
/// 4090"` → `"rtx4090"`. The model is the first word made of letters then
/// digits (then optional letters, as in `l40s`); `RTX`/`GTX` are joined to the
/// number after them. A name with no such word is lower-cased with dashes
/// for spaces, so it is still one stable token.
pub fn normalise_model_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, word) in words.iter().enumerate() {
        if matches!(*word, "rtx" | "gtx") {
            if let Some(next) = words.get(i + 1).filter(|n| is_model_number(n)) {
                return format!("{word}{next}");
            }
        }
        if is_model_word(word) {
            return (*word).to_string();
        }
    }
    if words.is_empty() {
        "unknown".to_string()
    } else {
        words.join("-")
    }
}

/// Letters, then digits, then optional letters: `h100`, `l40s`, `a10g`.
fn is_model_word(word: &str) -> bool {
    let letters = word.bytes().take_while(u8::is_ascii_lowercase).count();
    let rest = &word[letters..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    letters > 0 && digits > 0 && rest[digits..].bytes().all(|b| b.is_ascii_lowercase())
}

/// What follows `RTX`: `4090`, `a6000`, `6000`.
fn is_model_number(word: &str) -> bool {
    word.bytes().next().is_some_and(|b| b.is_ascii_digit()) || is_model_word(word)
}

/// Watts from NVML's milliwatts, rounded to the nearest watt.
fn watts(milliwatts: u32) -> u32 {
    milliwatts.saturating_add(500) / 1000
}

/// GPUs seen through NVML.
pub struct NvmlBackend {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlBackend")
    }
}

fn gpu_error(what: &str, index: Option<u32>, err: NvmlError) -> ResourceError {
    let message = match index {
        Some(index) => format!("GPU {index}: {what}: {err}"),
        None => format!("{what}: {err}"),
    };
    ResourceError::Gpu {
        backend: NAME.to_string(),
        message,
    }
}

/// A figure the GPU may not support (power on some boards): 0 then, other
/// errors are errors.
fn optional<T: Default>(result: Result<T, NvmlError>) -> Result<T, NvmlError> {
    match result {
        Err(NvmlError::NotSupported) => Ok(T::default()),
        other => other,
    }
}

impl NvmlBackend {
    /// Loads and initialises NVML; fails on hosts without the NVIDIA driver,
    /// in which case the caller falls back to no GPUs.
    pub fn init() -> Result<Self, ResourceError> {
        let nvml = Nvml::init().map_err(|e| gpu_error("cannot initialise NVML", None, e))?;
        Ok(NvmlBackend { nvml })
    }

    fn device(&self, index: u32) -> Result<Device<'_>, ResourceError> {
        self.nvml
            .device_by_index(index)
            .map_err(|e| gpu_error("cannot open device", Some(index), e))
    }

    fn info(&self, index: u32) -> Result<GpuInfo, ResourceError> {
        let device = self.device(index)?;
        let err = |what: &'static str| move |e| gpu_error(what, Some(index), e);
        let name = device.name().map_err(err("name"))?;
        let memory = device.memory_info().map_err(err("memory"))?;
        let draw = optional(device.power_usage()).map_err(err("power usage"))?;
        let limit = optional(device.enforced_power_limit()).map_err(err("power limit"))?;
        let (min_mw, max_mw) = match device.power_management_limit_constraints() {
            Ok(c) => (c.min_limit, c.max_limit),
            Err(NvmlError::NotSupported) => (0, 0),
            Err(e) => return Err(err("power limit range")(e)),
        };
        let utilisation =
            optional(device.utilization_rates().map(|u| u.gpu)).map_err(err("utilisation"))?;
        let energy = optional(device.total_energy_consumption()).map_err(err("energy counter"))?;
        Ok(GpuInfo {
            index,
            uuid: device.uuid().map_err(err("uuid"))?,
            model: normalise_model_name(&name),
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            power_draw_watts: f64::from(draw) / 1000.0,
            power_limit_watts: watts(limit),
            // Rounded inwards, so every whole watt in the range is settable.
            power_limit_min_watts: min_mw.div_ceil(1000),
            power_limit_max_watts: max_mw / 1000,
            utilisation_percent: utilisation.min(100),
            energy_millijoules: energy,
        })
    }

    /// Checks `index` against the device count, naming it when absent.
    fn check_index(&self, index: u32) -> Result<(), ResourceError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| gpu_error("cannot count devices", None, e))?;
        if index >= count {
            return Err(ResourceError::NoSuchGpu {
                backend: NAME.to_string(),
                index,
                count,
            });
        }
        Ok(())
    }
}

/// Checks a clock lock `min_mhz..=max_mhz` against the device's highest
/// graphics clock `device_max_mhz`, so that NVML is never asked for a range
/// the device does not have.
pub fn check_clock_range(
    index: u32,
    min_mhz: u32,
    max_mhz: u32,
    device_max_mhz: u32,
) -> Result<(), ResourceError> {
    if min_mhz == 0 || min_mhz > max_mhz || max_mhz > device_max_mhz {
        return Err(ResourceError::Gpu {
            backend: NAME.to_string(),
            message: format!(
                "GPU {index}: clock lock {min_mhz}..={max_mhz} MHz is outside the device's \
                 range 1..={device_max_mhz} MHz (or its minimum is above its maximum)"
            ),
        });
    }
    Ok(())
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn simulated(&self) -> bool {
        false
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, ResourceError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| gpu_error("cannot count devices", None, e))?;
        (0..count).map(|index| self.info(index)).collect()
    }

    fn set_power_limit(&self, index: u32, watts: u32) -> Result<(), ResourceError> {
        self.check_index(index)?;
        self.info(index)?.check_power_limit(watts)?;
        let mut device = self.device(index)?;
        let milliwatts = watts.saturating_mul(1000);
        device
            .set_power_management_limit(milliwatts)
            .map_err(|e| gpu_error("cannot set power limit", Some(index), e))
    }

    fn lock_clocks(&self, index: u32, min_mhz: u32, max_mhz: u32) -> Result<(), ResourceError> {
        self.check_index(index)?;
        let mut device = self.device(index)?;
        let device_max = device
            .max_clock_info(Clock::Graphics)
            .map_err(|e| gpu_error("highest graphics clock", Some(index), e))?;
        check_clock_range(index, min_mhz, max_mhz, device_max)?;
        device
            .set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                min_clock_mhz: min_mhz,
                max_clock_mhz: max_mhz,
            })
            .map_err(|e| gpu_error("cannot lock clocks", Some(index), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_normalised_to_short_lower_case() {
        for (name, short) in [
            ("NVIDIA H100 80GB HBM3", "h100"),
            ("NVIDIA H100 NVL", "h100"),
            ("NVIDIA H100 PCIe", "h100"),
            ("NVIDIA H200", "h200"),
            ("NVIDIA GH200 480GB", "gh200"),
            ("NVIDIA A100-SXM4-80GB", "a100"),
            ("NVIDIA A100 80GB PCIe", "a100"),
            ("NVIDIA A10G", "a10g"),
            ("NVIDIA L4", "l4"),
            ("NVIDIA L40S", "l40s"),
            ("Tesla T4", "t4"),
            ("Tesla V100-SXM2-16GB", "v100"),
            ("NVIDIA GeForce RTX 4090", "rtx4090"),
            ("NVIDIA RTX A6000", "rtxa6000"),
            ("Quadro RTX 8000", "rtx8000"),
            ("NVIDIA B200", "b200"),
            ("Graphics Device", "graphics-device"),
            ("", "unknown"),
        ] {
            assert_eq!(normalise_model_name(name), short, "{name}");
        }
    }

    #[test]
    fn clock_locks_outside_the_device_range_are_refused() {
        assert_eq!(check_clock_range(0, 1000, 1980, 1980), Ok(()));
        assert_eq!(check_clock_range(0, 1980, 1980, 1980), Ok(()));
        for (min, max) in [(0, 1000), (1500, 1000), (1000, 2000)] {
            let err = check_clock_range(2, min, max, 1980).expect_err("out of range");
            assert!(err.to_string().contains("GPU 2: clock lock"), "{err}");
            assert!(err.to_string().contains("1..=1980 MHz"), "{err}");
        }
    }

    /// On a host with the NVIDIA driver, every figure the agent uses reads
    /// back sane; elsewhere the test says why it skipped.
    #[test]
    fn nvml_figures_read_back_where_a_gpu_is_present() {
        let backend = match NvmlBackend::init() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: no NVIDIA driver or GPU here ({e})");
                return;
            }
        };
        let gpus = backend.gpus().expect("listing the GPUs");
        if gpus.is_empty() {
            eprintln!("skipped: NVML has no GPU here");
            return;
        }
        for gpu in &gpus {
            assert!(gpu.power_draw_watts >= 0.0, "{gpu:?}");
            assert!(
                gpu.power_limit_min_watts <= gpu.power_limit_max_watts,
                "{gpu:?}"
            );
            // Never outside the range: refused before NVML is asked.
            if gpu.power_limit_max_watts > 0 {
                let err = backend
                    .set_power_limit(gpu.index, gpu.power_limit_max_watts + 1)
                    .expect_err("above the range");
                assert!(
                    matches!(err, ResourceError::PowerLimitOutOfRange { .. }),
                    "{err}"
                );
            }
            // The energy counter only grows.
            let again = backend.gpus().expect("again");
            assert!(again[gpu.index as usize].energy_millijoules >= gpu.energy_millijoules);
            let err = backend.lock_clocks(gpu.index, 0, 1).expect_err("min 0");
            assert!(err.to_string().contains("clock lock"), "{err}");
        }
        let count = u32::try_from(gpus.len()).expect("few GPUs");
        assert!(backend.set_power_limit(count, 100).is_err());
    }

    #[test]
    fn milliwatts_round_to_watts() {
        assert_eq!(watts(700_000), 700);
        assert_eq!(watts(72_499), 72);
        assert_eq!(watts(72_500), 73);
        assert_eq!(watts(u32::MAX), u32::MAX / 1000);
    }
}
