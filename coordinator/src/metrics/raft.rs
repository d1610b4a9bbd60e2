//! This member's Raft figures: term, log, commit and applied indexes,
//! apply lag, leadership, and the leader changes it saw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herd_metrics::prometheus_client::encoding::DescriptorEncoder;
use herd_metrics::prometheus_client::metrics::counter::Counter;
use herd_metrics::prometheus_client::registry::Unit;
use herd_metrics::write;

use crate::coordinator::Coordinator;

/// Counts every leader this member learns of (a new leader, or the same
/// one elected again in a new term; the first one included) until the
/// member shuts down.
pub async fn count_leader_changes(coordinator: Arc<Coordinator>, changes: Counter) {
    let mut metrics = coordinator.raft().metrics();
    let mut known: Option<(u64, u64)> = None;
    loop {
        let leader = {
            let m = metrics.borrow_and_update();
            m.current_leader.map(|leader| (leader, m.current_term))
        };
        if leader.is_some() && leader != known {
            known = leader;
            changes.inc();
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Writes the Raft gauges; `committed` is the log store's commit index.
pub fn encode(
    encoder: &mut DescriptorEncoder,
    coordinator: &Coordinator,
    committed: &AtomicU64,
) -> std::fmt::Result {
    let m = coordinator.metrics();
    let applied = m.last_applied.map_or(0, |id| id.index);
    let last_log = m.last_log_index.unwrap_or(0);
    // Saved just before applying: never behind what was applied.
    let committed = committed.load(Ordering::Relaxed).max(applied);
    let is_leader = m.current_leader == Some(coordinator.id());
    write::gauge(
        encoder,
        "raft_term",
        "The Raft term this member is in.",
        None,
        m.current_term,
    )?;
    write::gauge(
        encoder,
        "raft_last_log_index",
        "The index of the last entry in this member's Raft log.",
        None,
        last_log,
    )?;
    write::gauge(
        encoder,
        "raft_commit_index",
        "The highest Raft log index this member knows committed.",
        None,
        committed,
    )?;
    write::gauge(
        encoder,
        "raft_applied_index",
        "The highest Raft log index this member applied to its state.",
        None,
        applied,
    )?;
    write::gauge(
        encoder,
        "raft_apply_lag_entries",
        "Committed entries this member has not applied yet.",
        None,
        committed.saturating_sub(applied),
    )?;
    write::gauge(
        encoder,
        "raft_is_leader",
        "1 while this member is the Raft leader, else 0.",
        None,
        i64::from(is_leader),
    )?;
    write::gauge(
        encoder,
        "raft_voters",
        "Voting members in this member's view of the cluster configuration.",
        None,
        m.membership_config.membership().voter_ids().count() as u64,
    )?;
    write::counter(
        encoder,
        "raft_snapshots_installed",
        "Snapshots this member received from a leader and installed since it started.",
        coordinator
            .sm_stats
            .snapshots_installed
            .load(Ordering::Relaxed),
    )?;
    if let (true, Some(ms)) = (is_leader, m.millis_since_quorum_ack) {
        write::gauge(
            encoder,
            "raft_quorum_ack_age",
            "Leader only: time since a quorum last acknowledged this leader.",
            Some(&Unit::Seconds),
            ms as f64 / 1000.0,
        )?;
    }
    Ok(())
}
