//! The data of a live move: what a target readied, the limits a move keeps
//! to, and the figures it reports. Drivers whose workloads move live
//! (migration mode `live`: QEMU, the simulated VM) implement
//! [`super::Driver::prepare_incoming`], [`super::Driver::migrate_out`],
//! [`super::Driver::cancel_out`] and [`super::Driver::finish_incoming`]
//! with these types; the agent's migration code drives them without
//! knowing the kind.

use std::collections::BTreeMap;
use std::time::Duration;

/// Where a target readied an incoming live migration: what the source's
/// program connects to. Travels from target to source in
/// `PrepareIncomingReply` (`endpoint`, `endpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncomingEndpoints {
    /// The main endpoint (QEMU's `-incoming` address, `HOST:PORT`).
    pub main: String,
    /// Further endpoints by name (QEMU's NBD export of the disk: `"nbd"`).
    pub extra: BTreeMap<String, String>,
}

/// What the operator allows a live move (`herd alloc migrate
/// --downtime-limit --bandwidth`), and how long it may take in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveLimits {
    /// The longest pause of the workload the move may cause.
    pub downtime_limit: Duration,
    /// A cap on the bytes per second the move sends; None: no cap.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Past this the move gives up (the phase deadline the leader set).
    pub deadline: Duration,
}

/// How far a live move has come, reported while it runs (the agent turns
/// it into migration progress for the coordinators and `--wait`'s bar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveProgress {
    /// Bytes sent so far.
    pub bytes: u64,
    /// Pre-copy passes so far (QEMU's dirty-sync count).
    pub rounds: u32,
    /// How fast the workload dirties its memory, when known.
    pub dirty_rate_bytes_per_sec: Option<u64>,
    /// Bytes still to send, when known.
    pub remaining_bytes: Option<u64>,
}

/// The figures of a live move that reached the switch-over point: the
/// source is paused and the target holds the whole state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Bytes sent in all.
    pub bytes: u64,
    /// Pre-copy passes.
    pub rounds: u32,
    /// How long the workload was paused (as the moving program measured it).
    pub downtime_ms: u64,
    /// From the start of the move to its end.
    pub total_ms: u64,
}

/// A sink for [`MoveProgress`] reports; called often, must not block.
pub type ProgressSink<'a> = &'a (dyn Fn(MoveProgress) + Send + Sync);
