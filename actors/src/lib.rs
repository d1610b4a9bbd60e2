//! The node agent's working parts: the `Driver` seam through which every kind
//! of workload runs (processes, VMs, simulated VMs, training jobs, simulated
//! inference engines), the ractor actors that supervise workloads and report
//! resources, and, as they land, those that execute migrations.
//!
//! This crate owns what happens on one node. It must never depend on the
//! coordinator's state or on consensus: it sees the cluster only through
//! `herd-api` types.
#![warn(missing_docs)]

pub mod driver;
pub mod inference;
pub mod power;
pub mod resources;
pub mod ticker;
pub mod toy_train;
pub mod workload;

pub use resources::{
    detect, GpuBackend, GpuDetection, GpuInfo, HostReport, MonitorArgs, Reserved, ResourceError,
    ResourceMonitor, ResourceMsg, SimGpus,
};
