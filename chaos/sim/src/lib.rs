//! herd's coordinators under a simulated network and clock.
//!
//! Each coordinator runs as a host of a [turmoil] simulation: the real
//! `herd_coordinator` code (Raft through openraft, the state machine, the
//! gRPC services, forwarding, leadership checks) over the in-memory storage
//! engine, serving and dialling through turmoil's network instead of the
//! operating system's ([`transport`]). Register clients from the chaos
//! harness run as simulated hosts too, a seeded schedule partitions and
//! crashes members between simulation steps, and the harness's
//! linearizability checkers judge the history ([`run`]). Simulated seconds
//! pass much faster than real ones, so many seeds run per minute.
//!
//! It is a simulation and says so: no sled, no fsync, no processes, no
//! node agents; see docs/simulation.md for what it covers and what not.

pub mod run;
pub mod transport;

pub use run::{run, SimConfig, SimError, SimFault, SimOutcome};
