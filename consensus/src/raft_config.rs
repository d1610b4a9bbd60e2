//! The Raft timing and compaction knobs herd exposes, with tested defaults.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ConsensusError;

/// Raft tuning of a coordinator (`[raft]` in its config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, ms.
    pub election_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms.
    pub election_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so briefly lagging followers catch up without one.
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            // openraft times each AppendEntries out after one heartbeat
            // period, so the period bounds the round trip a link may take.
            // A follower calls an election once it has heard nothing for the
            // leader's lease (election_max_ms) plus its election timeout
            // (drawn once per process in the range), checked every 1.5
            // heartbeat periods: 0.4-0.65 s with these values, 4 heartbeat
            // periods at least. A follower whose log is behind loses its
            // first election and delays the next, so a failover can take
            // one more timeout: in the simulation (docs/simulation.md)
            // 150-250 ms brought the p90 from 1.36 s (200-350) to 0.73 s.
            heartbeat_ms: 100,
            election_min_ms: 150,
            election_max_ms: 250,
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

impl RaftTuning {
    /// openraft's configuration, validated.
    pub fn to_openraft(&self) -> Result<Arc<openraft::Config>, ConsensusError> {
        let config = openraft::Config {
            cluster_name: "herd".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            max_payload_entries: 1024,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        };
        let config = config
            .validate()
            .map_err(|e| ConsensusError::Config(e.to_string()))?;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_timeouts_do_not() {
        assert!(RaftTuning::default().to_openraft().is_ok());
        let bad = RaftTuning {
            election_min_ms: 900,
            election_max_ms: 800,
            ..RaftTuning::default()
        };
        assert!(bad.to_openraft().is_err());
    }
}
