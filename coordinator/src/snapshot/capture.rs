//! Taking a backup on a running member: a Raft snapshot that holds every
//! write acknowledged before the request.
//!
//! The member passes a linearizable read barrier (the leader confirms its
//! leadership with a quorum and names an index; this member waits until it
//! has applied it), then makes sure its current Raft snapshot is at least
//! as new as what it has applied, building one if needed, and hands that
//! snapshot out. A Raft snapshot is every record at one exact log position
//! (captured while no entry is being applied), so the position the backup
//! names is the one its records reflect, not an estimate.

use std::time::Duration;

use herd_consensus::types::LogId;
use openraft::metrics::WaitError;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use crate::coordinator::{Coordinator, ReadConsistency};
use crate::error::CoordinatorError;

/// How long a backup may wait for its snapshot to be built.
const BUILD_WAIT: Duration = Duration::from_secs(60);
/// How long one build is awaited before asking for another (a build
/// already running when the first was asked for may end short of it).
const BUILD_RETRY: Duration = Duration::from_secs(2);

/// A snapshot taken for a backup.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The log position its records reflect.
    pub last_log_id: LogId,
    /// The Raft snapshot body (`herd_consensus::state_machine::decode_snapshot_body`).
    pub data: Vec<u8>,
    /// The cluster it belongs to.
    pub cluster_id: String,
    /// The member that took it.
    pub member: u64,
}

/// Takes a snapshot on `coordinator` that reflects every write
/// acknowledged before this call.
pub async fn capture(coordinator: &Coordinator) -> Result<Captured, CoordinatorError> {
    coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await?;
    // Everything acknowledged before the call is applied here now.
    let (wanted, cluster_id) = coordinator.read_state_at(|state| state.cluster_id.clone());
    let raft = coordinator.raft();
    let started = Instant::now();
    loop {
        let current = raft.metrics().borrow().snapshot.map(|id| id.index);
        if current.is_some_and(|index| index >= wanted) {
            break;
        }
        if started.elapsed() > BUILD_WAIT {
            return Err(CoordinatorError::Unavailable(format!(
                "no snapshot at index {wanted} or later was built within {BUILD_WAIT:?} (newest: {current:?})"
            )));
        }
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| CoordinatorError::Unavailable(format!("cannot build a snapshot: {e}")))?;
        match raft
            .wait(Some(BUILD_RETRY))
            .metrics(
                |m| m.snapshot.is_some_and(|id| id.index >= wanted),
                "a snapshot for a backup",
            )
            .await
        {
            Ok(_) | Err(WaitError::Timeout(..)) => {}
            Err(WaitError::ShuttingDown) => {
                return Err(CoordinatorError::Unavailable(
                    "the member is shutting down".to_string(),
                ))
            }
        }
    }
    let snapshot = raft
        .get_snapshot()
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("cannot read the snapshot: {e}")))?
        .ok_or_else(|| {
            CoordinatorError::Internal("the snapshot just built is not there".to_string())
        })?;
    let last_log_id = snapshot.meta.last_log_id.ok_or_else(|| {
        CoordinatorError::Internal("the snapshot names no log position".to_string())
    })?;
    if last_log_id.index < wanted {
        return Err(CoordinatorError::Internal(format!(
            "the snapshot reflects index {}, older than the {wanted} the backup must hold",
            last_log_id.index
        )));
    }
    Ok(Captured {
        last_log_id,
        data: snapshot.snapshot.into_inner(),
        cluster_id: cluster_id.unwrap_or_default(),
        member: coordinator.id(),
    })
}
