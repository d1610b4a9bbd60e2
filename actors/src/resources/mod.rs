//! What this node offers: the host's CPUs, memory and disk, and its GPUs.
//!
//! - [`host`]: figures read from `/proc`, cgroup files and `statvfs`;
//! - [`gpu`]: the [`GpuBackend`] seam and [`detect`], over [`nvml`] (real
//!   NVIDIA GPUs), [`simulated`] (`--sim-gpus`) or no GPU at all.

pub mod error;
pub mod gpu;
pub mod host;
pub mod nvml;
pub mod simulated;

pub use error::ResourceError;
pub use gpu::{detect, GpuBackend, GpuDetection, GpuInfo, NoGpuBackend};
pub use nvml::{normalise_model_name, NvmlBackend};
pub use simulated::{SimGpus, SimulatedGpuBackend};
