//! The chaos harness: real herd clusters as OS processes (or containers,
//! [`docker`]), faults injected into them, and checks on what clients
//! observed.
//!
//! [`process_cluster`] and [`agents`] start, kill, pause and restart real
//! `herd coordinator` and `herd node` processes, [`proxy`] carries their
//! traffic through fault-injecting links, and [`shim`] slows their
//! fsyncs and skews their clocks from inside; [`nemesis`] draws faults
//! from a seeded schedule; [`workload`] runs clients that record every
//! operation into a [`history`], ending with the [`finals`]; [`migrate`]
//! keeps moving a training job between agents; [`power`] sets a power
//! budget, forces GPU load spikes and samples the GPUs' power; [`setup`] starts what a [`scenario`] needs
//! and [`runner`] runs it; [`check`] judges the history; [`report`] and [`svg`]
//! present it. `herd chaos` is the command line over all of this. The crate
//! talks to herd only through its binary and its public gRPC API, never
//! through internal crates.
#![warn(missing_docs)]

pub mod agents;
pub mod away;
pub mod check;
pub mod docker;
pub mod finals;
pub mod history;
pub mod migrate;
pub mod nemesis;
pub mod ports;
pub mod power;
pub mod process_cluster;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod setup;
pub mod shim;
pub mod summary;
pub mod svg;
pub mod tls;
pub mod workload;
