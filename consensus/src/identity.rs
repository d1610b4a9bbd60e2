//! Which cluster and member this process is, checked on every Raft message.
//!
//! A data dir copied from another cluster, or a peer list pointing at the
//! wrong addresses, must be refused loudly instead of silently mixing logs.

use std::sync::RwLock;

/// This member's id and, once known, the id of the cluster it belongs to.
#[derive(Debug)]
pub struct ClusterIdentity {
    member_id: u64,
    cluster_id: RwLock<Option<String>>,
}

impl ClusterIdentity {
    /// A member that may or may not know its cluster yet.
    pub fn new(member_id: u64, cluster_id: Option<String>) -> Self {
        Self {
            member_id,
            cluster_id: RwLock::new(cluster_id),
        }
    }

    /// This member's Raft id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The cluster id, once a leader has established one.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the cluster id (from the replicated state).
    pub fn set_cluster_id(&self, id: &str) {
        let mut guard = self.cluster_id.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_deref() != Some(id) {
            *guard = Some(id.to_string());
        }
    }

    /// Refuses a message from another cluster or meant for another member.
    /// An empty `sender_cluster` (a sender that does not know yet) passes.
    pub fn check_incoming(&self, sender_cluster: &str, target_id: u64) -> Result<(), String> {
        if target_id != 0 && target_id != self.member_id {
            return Err(format!(
                "message meant for member {target_id} reached member {}: check the peer addresses",
                self.member_id
            ));
        }
        if let Some(mine) = self.cluster_id() {
            if !sender_cluster.is_empty() && sender_cluster != mine {
                return Err(format!(
                    "message from cluster {sender_cluster}, but member {} belongs to cluster {mine}",
                    self.member_id
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_cluster_and_other_member() {
        let id = ClusterIdentity::new(2, None);
        assert!(
            id.check_incoming("abc", 2).is_ok(),
            "unknown cluster accepts"
        );
        id.set_cluster_id("abc");
        assert!(id.check_incoming("abc", 2).is_ok());
        assert!(id.check_incoming("", 0).is_ok());
        let err = id.check_incoming("xyz", 2).unwrap_err();
        assert!(err.contains("cluster xyz") && err.contains("abc"), "{err}");
        let err = id.check_incoming("abc", 3).unwrap_err();
        assert!(err.contains("member 3"), "{err}");
    }
}
