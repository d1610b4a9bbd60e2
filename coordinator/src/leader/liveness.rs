//! Node liveness: heartbeats kept in the leader's memory, and the loop that
//! marks a node down when its TTL lapses.
//!
//! Heartbeats never go through Raft (one write per node per second would
//! dominate the log); only the verdict does, as [`Command::MarkNodeDown`].
//! A leader that just took over knows no heartbeat times, so it first grants
//! every node a fresh TTL: a failover never marks healthy nodes down.
//!
//! The same loop ends drains whose deadline passed (`herd node drain
//! --deadline`): the deadline is in the replicated state, so a new leader
//! keeps it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_api::node::NodeStatus;
use herd_api::proto::v1::NodeUsage;

use crate::coordinator::Coordinator;
use crate::machine::apply::drain::lapsed_drains;
use crate::machine::command::Command;

/// TTL a coordinator gives nodes unless configured otherwise.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(5);

/// The leader's record of when each node was last heard from.
#[derive(Debug)]
pub struct Liveness {
    ttl: Duration,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The term these times were recorded in; another term starts afresh.
    term: Option<u64>,
    at: HashMap<String, Instant>,
    /// What each node reported with its last heartbeat, and when.
    usage: HashMap<String, (NodeUsage, Instant)>,
}

impl Liveness {
    /// A record whose nodes are marked down after `ttl` without a heartbeat.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Seen::default()),
        }
    }

    /// How long a node may stay silent.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat from `node` at `now`.
    pub fn heartbeat(&self, node: &str, now: Instant) {
        self.seen().at.insert(node.to_string(), now);
    }

    /// Keeps what `node` reported with its heartbeat at `now`, for `herd
    /// node list` (and, next, the power and balancing loops).
    pub fn record_usage(&self, node: &str, usage: NodeUsage, now: Instant) {
        self.seen().usage.insert(node.to_string(), (usage, now));
    }

    /// The last usage `node` reported and when, while this member leads.
    pub fn usage(&self, node: &str) -> Option<(NodeUsage, Instant)> {
        self.seen().usage.get(node).cloned()
    }

    /// When each node was last heard from, while this member leads (for
    /// the metrics' heartbeat ages).
    pub fn last_heard(&self) -> Vec<(String, Instant)> {
        self.seen()
            .at
            .iter()
            .map(|(node, at)| (node.clone(), *at))
            .collect()
    }

    /// Forgets everything: called when this member stops leading.
    pub fn step_down(&self) {
        let mut seen = self.seen();
        seen.term = None;
        seen.at.clear();
        seen.usage.clear();
    }

    /// The nodes among `alive` (those not already down) whose TTL lapsed at
    /// `now`, for a leader of `term`. A node never heard from in this term
    /// (every node, right after an election) gets a fresh TTL from `now`.
    pub fn lapsed<'a>(
        &self,
        term: u64,
        alive: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Vec<String> {
        let mut seen = self.seen();
        if seen.term != Some(term) {
            seen.term = Some(term);
            seen.at.clear();
        }
        let mut lapsed = Vec::new();
        for node in alive {
            let last = *seen.at.entry(node.to_string()).or_insert(now);
            if now.saturating_duration_since(last) > self.ttl {
                lapsed.push(node.to_string());
            }
        }
        lapsed
    }
}

/// Runs the leader's liveness checks until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>) {
    let liveness = coordinator.liveness().clone();
    let tick = (liveness.ttl() / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(term) = coordinator.leading_term() else {
            liveness.step_down();
            continue;
        };
        let alive: Vec<String> = coordinator.read_state(|state| {
            state
                .nodes
                .values()
                .filter(|n| n.status != NodeStatus::Down)
                .map(|n| n.name.clone())
                .collect()
        });
        let lapsed = liveness.lapsed(term, alive.iter().map(String::as_str), Instant::now());
        let now = crate::coordinator::now_ms();
        let drains = coordinator.read_state(|state| lapsed_drains(state, now));
        for node in drains {
            tracing::info!(%node, "drain deadline passed; stopping what still runs there");
            if let Err(e) = coordinator
                .decide_as_leader(
                    term,
                    Command::DrainNode {
                        node: node.clone(),
                        now_ms: 0,
                    },
                )
                .await
            {
                tracing::warn!(%node, error = %e, "could not end the drain");
            }
        }
        for node in lapsed {
            tracing::warn!(%node, ttl_ms = liveness.ttl().as_millis() as u64, "node missed its heartbeats; marking it down");
            if let Err(e) = coordinator
                .decide_as_leader(
                    term,
                    Command::MarkNodeDown {
                        node: node.clone(),
                        now_ms: 0,
                    },
                )
                .await
            {
                tracing::warn!(%node, error = %e, "could not mark node down");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_node_lapses_after_its_ttl_and_a_heartbeat_renews_it() {
        let liveness = Liveness::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(liveness.lapsed(1, ["a", "b"], t0).is_empty());
        liveness.heartbeat("a", t0 + Duration::from_secs(4));
        let lapsed = liveness.lapsed(1, ["a", "b"], t0 + Duration::from_secs(6));
        assert_eq!(lapsed, vec!["b".to_string()]);
        let lapsed = liveness.lapsed(1, ["a", "b"], t0 + Duration::from_secs(10));
        assert_eq!(lapsed, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_new_term_grants_every_node_a_fresh_ttl() {
        let liveness = Liveness::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(liveness.lapsed(1, ["a"], t0).is_empty());
        assert_eq!(
            liveness.lapsed(1, ["a"], t0 + Duration::from_secs(6)),
            vec!["a".to_string()]
        );
        // Leadership moved (and came back): nobody is down on the first check.
        assert!(liveness
            .lapsed(2, ["a"], t0 + Duration::from_secs(7))
            .is_empty());
        liveness.step_down();
        assert!(liveness
            .lapsed(3, ["a"], t0 + Duration::from_secs(60))
            .is_empty());
        assert_eq!(
            liveness.lapsed(3, ["a"], t0 + Duration::from_secs(66)),
            vec!["a".to_string()]
        );
    }
}
