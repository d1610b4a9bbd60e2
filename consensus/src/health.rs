//! When each peer was last in touch: the leader's view of member health, and
//! whether a member without a leader can still reach a majority.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

/// Last contact per peer, recorded by the Raft transport.
#[derive(Debug, Default)]
pub struct PeerHealth {
    /// Peers that answered a Raft RPC of this member's.
    last_ok: Mutex<HashMap<u64, Instant>>,
    /// Peers whose own Raft RPC (a leader's append, a candidate's vote
    /// request) reached this member. Kept apart from `last_ok`, which alone
    /// says whether this member can reach a peer.
    last_heard: Mutex<HashMap<u64, Instant>>,
}

fn stamp(map: &Mutex<HashMap<u64, Instant>>, peer: u64) {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(peer, Instant::now());
}

fn since(map: &Mutex<HashMap<u64, Instant>>, peer: u64) -> Option<Duration> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .map(|at| at.elapsed())
}

impl PeerHealth {
    /// Records a successful exchange with `peer`.
    pub fn record_ok(&self, peer: u64) {
        stamp(&self.last_ok, peer);
    }

    /// Records a valid Raft request from `peer`.
    pub fn record_heard(&self, peer: u64) {
        stamp(&self.last_heard, peer);
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn since_last_contact(&self, peer: u64) -> Option<Duration> {
        since(&self.last_ok, peer)
    }

    /// Whether `peer` answered this member, or wrote to it, within `window`.
    pub fn in_touch_within(&self, peer: u64, window: Duration) -> bool {
        [since(&self.last_ok, peer), since(&self.last_heard, peer)]
            .into_iter()
            .flatten()
            .any(|ago| ago <= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn either_direction_counts_and_contact_ages() {
        let health = PeerHealth::default();
        health.record_ok(2);
        health.record_heard(3);
        let generous = Duration::from_secs(60);
        assert!(health.in_touch_within(2, generous));
        assert!(health.in_touch_within(3, generous));
        assert!(!health.in_touch_within(4, generous), "never heard of");
        // Only answers count as reaching a peer.
        assert!(health.since_last_contact(3).is_none());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let tight = Duration::from_millis(10);
        assert!(!health.in_touch_within(2, tight));
        assert!(!health.in_touch_within(3, tight));
    }
}
