//! What this node offers: the host's CPUs, memory and disk, its GPUs, and
//! the actor that keeps a fresh report of them for the node agent.
//!
//! - [`host`]: figures read from `/proc`, cgroup files and `statvfs`;
//! - [`gpu`]: the [`GpuBackend`] seam and [`detect`], over [`nvml`] (real
//!   NVIDIA GPUs), [`simulated`] (`--sim-gpus`) or no GPU at all;
//! - [`report`]: [`HostReport`] and the [`Resources`](herd_api::resources::Resources)
//!   capacity it offers;
//! - [`monitor`]: the [`ResourceMonitor`] actor.

pub mod error;
pub mod gpu;
pub mod gpu_work;
pub mod host;
pub mod monitor;
pub mod nvml;
pub mod report;
pub mod simulated;

pub use error::ResourceError;
pub use gpu::{detect, GpuBackend, GpuDetection, GpuInfo, NoGpuBackend};
pub use monitor::{MonitorArgs, ResourceMonitor, ResourceMsg};
pub use nvml::{normalise_model_name, NvmlBackend};
pub use report::{HostReport, Reserved};
pub use simulated::{SimGpus, SimulatedGpuBackend};
