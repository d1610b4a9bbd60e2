//! The leader's watch over migrations in flight: a migration whose phase
//! outlived its deadline, whose allocation stopped running or one of whose
//! nodes went down is aborted, so that every migration ends, completed or
//! aborted, and its reservation on the target is released.
//!
//! Deadlines are stamped into the state by the leader that applied each
//! phase, so a new leader carries them on. Aborts are the leader's own
//! decisions, fenced by its term like a node marked down.

use std::sync::Arc;
use std::time::Duration;

use crate::coordinator::{now_ms, Coordinator};
use crate::machine::apply::migration::migrations_to_abort;
use crate::machine::command::Command;

/// How often the leader looks.
const TICK: Duration = Duration::from_millis(500);

/// Runs until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(term) = coordinator.leading_term() else {
            continue;
        };
        let now = now_ms();
        let doomed = coordinator.read_state(|state| migrations_to_abort(state, now));
        for (id, reason) in doomed {
            tracing::warn!(migration = %id, %reason, "aborting a migration");
            let abort = Command::AbortMigration {
                id: id.clone(),
                reason,
                now_ms: 0,
            };
            if let Err(e) = coordinator.decide_as_leader(term, abort).await {
                tracing::debug!(migration = %id, error = %e, "could not abort the migration");
            }
        }
    }
}
