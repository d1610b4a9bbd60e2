//! Status reports: the cluster as the leader sees it, and a member's own view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ServerState;

use crate::coordinator::Coordinator;
use crate::error::CoordinatorError;
use crate::routing::forward::{LeaderReply, LeaderRequest, MemberView, StatusView};

/// Peers that answered within this window count as healthy (ten heartbeats
/// at the default interval).
const HEALTHY_WITHIN: Duration = Duration::from_secs(1);

fn server_state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Coordinator {
    /// The cluster status: the leader's view, or this member's own when `stale`.
    pub async fn status(&self, stale: bool) -> Result<StatusView, CoordinatorError> {
        if stale {
            return Ok(self.local_status_view());
        }
        match self.on_leader(LeaderRequest::Status).await? {
            LeaderReply::Status(view) => Ok(view),
            other => Err(CoordinatorError::Internal(format!(
                "unexpected leader reply {other:?}"
            ))),
        }
    }

    pub(crate) fn local_status_view(&self) -> StatusView {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched: BTreeMap<u64, Option<u64>> = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let me = self.id();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberView {
                id: *id,
                addr: node.addr.clone(),
                healthy: *id == me
                    || self
                        .health
                        .since_last_contact(*id)
                        .is_some_and(|since| since < HEALTHY_WITHIN),
                voter: voters.contains(id),
                matched_index: if *id == me {
                    metrics.last_log_index
                } else {
                    matched.get(id).copied().flatten()
                },
            })
            .collect();
        StatusView {
            leader: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            commit_index: metrics.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// This member's own Raft state, answered without contacting anyone.
    /// `with_digest` hashes the whole state: for consistency checks, not
    /// for the health probes that call this every few seconds.
    pub fn member_report(&self, with_digest: bool) -> herd_api::proto::v1::MemberReport {
        let metrics = self.metrics();
        herd_api::proto::v1::MemberReport {
            id: self.id(),
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            state: server_state_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|l| l.index),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            snapshots_installed: self
                .sm_stats
                .snapshots_installed
                .load(std::sync::atomic::Ordering::Relaxed),
            initialized: self.is_member(),
            state_digest: if with_digest {
                self.read_state(|s| s.digest())
            } else {
                0
            },
        }
    }
}
