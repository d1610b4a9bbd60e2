//! When each peer last answered a Raft RPC: the leader's view of member health.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Last successful contact per peer, recorded by the Raft transport.
#[derive(Debug, Default)]
pub struct PeerHealth {
    last_ok: Mutex<HashMap<u64, Instant>>,
}

impl PeerHealth {
    /// Records a successful exchange with `peer`.
    pub fn record_ok(&self, peer: u64) {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn since_last_contact(&self, peer: u64) -> Option<Duration> {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(|at| at.elapsed())
    }
}
