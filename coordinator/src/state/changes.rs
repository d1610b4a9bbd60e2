//! What applying a batch of commands changed, told to the loops that care.
//!
//! The scheduler and the agents' watch streams used to wake on every Raft
//! metrics change (every entry, a variable write included) and recompute.
//! Apply now says which records it touched, so each wakes only for what
//! concerns it: the scheduler for jobs, nodes and allocations, a node's
//! watch stream for its own node and the jobs it runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::broadcast;

/// The records one applied batch of commands changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The log index of the batch.
    pub index: u64,
    /// The whole state was replaced (start-up, or a snapshot installed):
    /// anything may have changed.
    pub everything: bool,
    /// Jobs whose record changed (submitted, stopped, status).
    pub jobs: BTreeSet<String>,
    /// Nodes whose record or drain deadline changed.
    pub nodes: BTreeSet<String>,
    /// Nodes that gained, lost or changed an allocation.
    pub alloc_nodes: BTreeSet<String>,
    /// Jobs that gained, lost or changed an allocation.
    pub alloc_jobs: BTreeSet<String>,
    /// Whether a variable changed.
    pub variables: bool,
}

impl Changed {
    /// A change of unknown extent (the state was replaced).
    pub fn everything(index: u64) -> Self {
        Self {
            index,
            everything: true,
            ..Self::default()
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.jobs.is_empty()
            && self.nodes.is_empty()
            && self.alloc_nodes.is_empty()
            && self.alloc_jobs.is_empty()
            && !self.variables
    }

    /// Whether the scheduler could plan differently: jobs, nodes or
    /// allocations changed (variables never matter to it).
    pub fn concerns_scheduling(&self) -> bool {
        self.everything
            || !self.jobs.is_empty()
            || !self.nodes.is_empty()
            || !self.alloc_nodes.is_empty()
    }

    /// Whether what a node is assigned could differ (see [`NodeInterest`]).
    pub fn concerns(&self, interest: &NodeInterest) -> bool {
        self.everything
            || self.nodes.contains(&interest.node)
            || self.alloc_nodes.contains(&interest.node)
            || (interest.other_nodes && !self.nodes.is_empty())
            || interest.peers.iter().any(|peer| self.nodes.contains(peer))
            || interest
                .jobs
                .iter()
                .any(|job| self.jobs.contains(job) || self.alloc_jobs.contains(job))
    }
}

/// What one node's assignment set is computed from, so that its watch
/// stream recomputes only when one of these changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInterest {
    /// The node.
    pub node: String,
    /// Jobs with allocations on the node: their spec and version decide
    /// what it runs, and their copies elsewhere can hold a copy here back.
    pub jobs: BTreeSet<String>,
    /// Whether other nodes' records matter too (a gang member is told
    /// every member's host).
    pub other_nodes: bool,
    /// Other nodes whose record matters: the peers of the migrations the
    /// node takes part in (it is told their agent's address).
    pub peers: BTreeSet<String>,
}

/// Where apply publishes what it changed; loops subscribe.
///
/// A subscriber that falls more than [`FEED_DEPTH`] batches behind is told
/// it lagged (`broadcast::error::RecvError::Lagged`) and must assume
/// everything changed.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    sender: broadcast::Sender<Arc<Changed>>,
}

/// Batches a subscriber may fall behind before it is told it lagged.
pub const FEED_DEPTH: usize = 1024;

impl Default for ChangeFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(FEED_DEPTH).0,
        }
    }
}

impl ChangeFeed {
    /// Tells every subscriber; a batch that changed nothing is not sent.
    pub fn publish(&self, changed: Changed) {
        if changed.is_empty() {
            return;
        }
        // No subscriber is fine: nobody is waiting.
        let _ = self.sender.send(Arc::new(changed));
    }

    /// Changes applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Changed>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(node: &str, jobs: &[&str], other_nodes: bool) -> NodeInterest {
        NodeInterest {
            node: node.into(),
            jobs: jobs.iter().map(|j| j.to_string()).collect(),
            other_nodes,
            peers: BTreeSet::new(),
        }
    }

    #[test]
    fn a_variable_write_concerns_neither_the_scheduler_nor_any_node() {
        let changed = Changed {
            index: 7,
            variables: true,
            ..Changed::default()
        };
        assert!(!changed.concerns_scheduling());
        assert!(!changed.concerns(&interest("n1", &["web"], true)));
    }

    #[test]
    fn a_node_is_concerned_by_its_allocations_its_record_and_its_jobs() {
        let allocs = Changed {
            alloc_nodes: ["n2".to_string()].into(),
            alloc_jobs: ["db".to_string()].into(),
            ..Changed::default()
        };
        assert!(allocs.concerns_scheduling());
        assert!(allocs.concerns(&interest("n2", &[], false)));
        // Another node running db: its copies there may now be released.
        assert!(allocs.concerns(&interest("n1", &["web", "db"], false)));
        assert!(!allocs.concerns(&interest("n1", &["web"], false)));

        let record = Changed {
            nodes: ["n1".to_string()].into(),
            ..Changed::default()
        };
        assert!(record.concerns(&interest("n1", &[], false)));
        assert!(!record.concerns(&interest("n3", &["web"], false)));
        // A gang member on n3 is told n1's host.
        assert!(record.concerns(&interest("n3", &["train"], true)));
        assert!(Changed::everything(1).concerns(&interest("n3", &[], false)));
        // A migration's peer re-registered at another address.
        let mut moving = interest("n4", &[], false);
        moving.peers.insert("n1".into());
        assert!(record.concerns(&moving));
    }

    #[tokio::test]
    async fn empty_batches_are_not_published() {
        let feed = ChangeFeed::default();
        let mut rx = feed.subscribe();
        feed.publish(Changed {
            index: 1,
            ..Changed::default()
        });
        feed.publish(Changed {
            index: 2,
            jobs: ["web".to_string()].into(),
            ..Changed::default()
        });
        let first = rx.recv().await.expect("a change");
        assert_eq!(first.index, 2, "the empty batch was published");
    }
}
