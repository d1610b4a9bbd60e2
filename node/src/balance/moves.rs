//! Carrying out a move the balancing negotiation approved.
//!
//! An allocation moves by live migration, recorded by the coordinators as
//! any migration is (`Migrations.Start`), so the switch-over is one Raft
//! entry and a failure anywhere ends with exactly one running copy. The
//! decision to move is the agents' own; the coordinators only keep the
//! record. While they are away an allocation does not move (the offer is
//! cancelled), and the items it would have been are not even offered
//! (see [`super::actor`]).

use std::time::Duration;

use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::v1::migrations_client::MigrationsClient;
use herd_api::proto::v1::{GetMigrationRequest, StartMigrationRequest};
use tokio::time::Instant;

use super::assigned::AssignedRx;

/// Longest a balancing move may take before it counts as failed (the
/// migration's own phase deadlines end it sooner).
const MOVE_LIMIT: Duration = Duration::from_secs(300);
/// How often the migration's record is read while it runs.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long the source waits, after the switch-over, for its assignment set
/// to stop listing the allocation (so the load it measures next reflects
/// the move).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// How a move ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The allocation runs on the target now.
    pub moved: bool,
    /// The migration's id, when one was recorded.
    pub migration: Option<String>,
    /// What happened, for the log.
    pub detail: String,
}

/// Moves allocation `alloc_id` to node `target` by live migration and
/// waits for the end: the migration's completion and this node's
/// assignment set no longer listing it.
pub async fn move_allocation(
    client: &HerdClient,
    alloc_id: &str,
    target: &str,
    assigned: &mut AssignedRx,
) -> MoveOutcome {
    let request = StartMigrationRequest {
        alloc_id: alloc_id.to_string(),
        target: target.to_string(),
        ..Default::default()
    };
    let started = client
        .call_leader_as(Repeat::Unsafe, |ch| {
            let request = request.clone();
            async move {
                MigrationsClient::new(ch)
                    .start(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await;
    let info = match started {
        Ok(info) => info,
        Err(e) => {
            return MoveOutcome {
                moved: false,
                migration: None,
                detail: format!("the coordinators did not start the migration: {e}"),
            }
        }
    };
    let id = info.id.clone();
    let deadline = Instant::now() + MOVE_LIMIT;
    let mut phase = info.phase;
    let mut error = info.error;
    while phase != "completed" && phase != "aborted" {
        if Instant::now() > deadline {
            return MoveOutcome {
                moved: false,
                migration: Some(id),
                detail: format!("still {phase} after {} s", MOVE_LIMIT.as_secs()),
            };
        }
        tokio::time::sleep(POLL_EVERY).await;
        let request = GetMigrationRequest {
            id: id.clone(),
            stale: true,
        };
        if let Ok(info) = client
            .call_as(Repeat::Safe, |ch| {
                let request = request.clone();
                async move {
                    MigrationsClient::new(ch)
                        .get(request)
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
        {
            phase = info.phase;
            error = info.error;
        }
    }
    if phase == "aborted" {
        return MoveOutcome {
            moved: false,
            migration: Some(id),
            detail: format!("migration aborted: {error}"),
        };
    }
    let settle = tokio::time::timeout(
        SETTLE_LIMIT,
        assigned.wait_for(|work| work.iter().all(|w| w.alloc_id != alloc_id)),
    )
    .await;
    let detail = match settle {
        Ok(Ok(_)) => "moved".to_string(),
        _ => "moved (this node's assignment set still lists it)".to_string(),
    };
    MoveOutcome {
        moved: true,
        migration: Some(id),
        detail,
    }
}
