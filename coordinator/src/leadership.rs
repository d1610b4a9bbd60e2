//! Whether a request started under a leader can still expect an answer
//! from it.
//!
//! openraft 0.9 has no check-quorum: a leader cut off from the others keeps
//! believing it leads, and a write proposed to it, or forwarded to it by a
//! follower, waits until the client gives up. Instead a member watches its
//! own Raft metrics: a leader that has heard from no quorum for longer than
//! an election timeout refuses new work at once (`Unavailable`, so clients
//! try another member), and a request in flight when the leader changes or
//! goes quiet is abandoned with an honest "outcome unknown" (writes) or
//! retried under the new leader (reads), rather than hanging.

use openraft::{BasicNode, RaftMetrics};

use herd_consensus::Raft;

/// Watches leadership for one member.
#[derive(Clone)]
pub struct LeadershipWatch {
    raft: Raft,
    me: u64,
    quorum_timeout_ms: u64,
}

impl LeadershipWatch {
    /// A watch for member `me`; a leader is doubted once it has heard from
    /// no quorum for as long as a follower waits before calling an
    /// election (openraft's leader lease, the maximal election timeout,
    /// plus the minimal one): by then another leader may be elected.
    pub fn new(raft: Raft, me: u64) -> Self {
        let config = raft.config();
        let quorum_timeout_ms = config.election_timeout_max + config.election_timeout_min;
        Self {
            raft,
            me,
            quorum_timeout_ms,
        }
    }

    /// Why `leader` should not be relied on now, if it should not.
    pub fn doubt(&self, leader: u64) -> Option<String> {
        doubt(
            &self.raft.metrics().borrow(),
            self.me,
            leader,
            self.quorum_timeout_ms,
        )
    }

    /// Resolves, with the reason, once `leader` should no longer be relied on.
    pub async fn lost(&self, leader: u64) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            let reason = doubt(
                &metrics.borrow_and_update(),
                self.me,
                leader,
                self.quorum_timeout_ms,
            );
            if let Some(reason) = reason {
                return reason;
            }
            // openraft publishes metrics on every turn of its loop, ticks
            // included, so a growing quorum silence is seen as it grows.
            if metrics.changed().await.is_err() {
                return "raft has stopped on this member".to_string();
            }
        }
    }
}

/// Why `leader` should not be relied on, seen from member `me`'s metrics.
pub fn doubt(
    metrics: &RaftMetrics<u64, BasicNode>,
    me: u64,
    leader: u64,
    quorum_timeout_ms: u64,
) -> Option<String> {
    if leader == me {
        // An election without a winner yet may elect this member again;
        // openraft answers what it proposed once the outcome is known.
        match metrics.current_leader {
            None => return None,
            Some(other) if other != me => {
                return Some(format!(
                    "leadership passed from member {me} to member {other}"
                ))
            }
            Some(_) => {}
        }
    } else if metrics.current_leader != Some(leader) {
        return Some(match metrics.current_leader {
            Some(other) => format!("leadership passed from member {leader} to member {other}"),
            None => {
                format!("member {me} no longer follows member {leader} (an election is under way)")
            }
        });
    } else {
        return None;
    }
    match metrics.millis_since_quorum_ack {
        Some(silent) if silent > quorum_timeout_ms => Some(format!(
            "member {me} leads term {} but has heard from no quorum for {silent} ms; it may be cut off from the others",
            metrics.current_term
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(me: u64, leader: Option<u64>, silent: Option<u64>) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(me);
        m.current_leader = leader;
        m.current_term = 4;
        m.millis_since_quorum_ack = silent;
        m
    }

    #[test]
    fn a_leader_heard_from_lately_is_trusted() {
        assert_eq!(doubt(&metrics(1, Some(1), Some(120)), 1, 1, 800), None);
        // Newly elected: no acknowledgement yet is not a doubt.
        assert_eq!(doubt(&metrics(1, Some(1), None), 1, 1, 800), None);
        // A follower cannot see the leader's quorum; it trusts whom it follows.
        assert_eq!(doubt(&metrics(2, Some(1), None), 2, 1, 800), None);
    }

    #[test]
    fn a_quiet_leader_and_a_changed_leader_are_doubted() {
        let quiet = doubt(&metrics(1, Some(1), Some(900)), 1, 1, 800).expect("doubted");
        assert!(quiet.contains("no quorum for 900 ms"), "{quiet}");
        let moved = doubt(&metrics(2, Some(3), None), 2, 1, 800).expect("doubted");
        assert!(moved.contains("from member 1 to member 3"), "{moved}");
        let electing = doubt(&metrics(2, None, None), 2, 1, 800).expect("doubted");
        assert!(electing.contains("election"), "{electing}");
        // A leader in an election of its own may win again: not doubted yet.
        assert_eq!(doubt(&metrics(1, None, None), 1, 1, 800), None);
        let replaced = doubt(&metrics(1, Some(2), None), 1, 1, 800).expect("doubted");
        assert!(replaced.contains("from member 1 to member 2"), "{replaced}");
    }
}
