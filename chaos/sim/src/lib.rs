//! herd's coordinators and node agents under a simulated network and clock.
//!
//! Each coordinator and each node agent runs as a host of a [turmoil]
//! simulation ([`hosts`]): the real `herd_coordinator` code (Raft through
//! openraft, the state machine, the gRPC services, forwarding, leadership
//! checks, scheduling, node liveness) over the in-memory storage engine,
//! and the real `herd_node` agent (its actor tree, coordinator link,
//! workload supervision and re-adoption), serving and dialling through
//! turmoil's network instead of the operating system's ([`transport`]).
//! The agents' workloads are SIMULATED ([`machine`]), VMs that move live
//! between them included ([`live`]). The chaos harness's
//! clients run as simulated hosts too, a seeded schedule partitions and
//! crashes members and agents between simulation steps ([`faults`]), an
//! observer judges when the cluster is whole ([`observe`]), and the
//! harness's checkers judge the history ([`run`]). Simulated seconds pass
//! much faster than real ones, so many seeds run per minute.
//!
//! It is a simulation and says so: no sled, no fsync, no processes; see
//! docs/simulation.md for what it covers and what not.

pub mod faults;
pub mod hosts;
pub mod live;
pub mod machine;
pub mod observe;
pub mod run;
pub mod transport;

pub use faults::SimFault;
pub use run::{run, SimConfig, SimError, SimOutcome};
