//! The leader's scheduling loop: compare what jobs want with the
//! allocations that exist, and propose plans for the difference.
//!
//! Runs on every member but acts only while it leads, re-evaluating when
//! apply reports a change to jobs, nodes or allocations (variable writes
//! never wake it), when leadership changes, and at least once a second. Plans are built from the leader's applied state (a
//! snapshot) and re-checked inside `apply`, so a plan that raced another
//! never over-commits a node; it is simply re-planned on the next pass.
//!
//! One pass copies what it needs out of the state (fully placed jobs are
//! skipped at the cost of their own allocations), plans every pending job
//! against one index of the cluster (`scheduler::Pass`, each job seeing the
//! room earlier ones took) without holding the state's lock, and proposes
//! all plans at once: the proposer packs them into one Raft entry, applied
//! plan after plan.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use tokio::sync::broadcast::error::RecvError;

use crate::coordinator::{now_ms, Coordinator};
use crate::machine::command::Command;
use futures::future::join_all;
use tracing::Instrument;

use crate::planning::{pass_input, plan_pass, PlanCommand};

/// Longest pause between passes while leading, even when nothing moved.
const IDLE_PASS: Duration = Duration::from_secs(1);
/// An identical plan is not proposed again sooner than this (a plan that
/// `apply` keeps refusing must not flood the log).
const SAME_PLAN_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the loop until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>) {
    let mut metrics = coordinator.raft().metrics();
    let mut changes = coordinator.subscribe_changes();
    // Whether something the scheduler reads changed since the last pass.
    let mut dirty = true;
    let mut leading_term: Option<u64> = None;
    let mut last_pass = Instant::now();
    let mut proposed: HashMap<String, (PlanCommand, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            // Leadership (and everything else Raft reports): checked below.
            changed = metrics.changed() => if changed.is_err() { return },
            change = changes.recv() => match change {
                Ok(change) => dirty |= change.concerns_scheduling(),
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(last_pass + IDLE_PASS) => {}
        }
        let (leading, term) = {
            let m = metrics.borrow();
            (m.current_leader == Some(coordinator.id()), m.current_term)
        };
        if !leading {
            leading_term = None;
            proposed.clear();
            last_pass = Instant::now();
            continue;
        }
        if leading_term != Some(term) {
            // A new leadership: plan from scratch.
            leading_term = Some(term);
            dirty = true;
        }
        // Re-evaluated when what it reads changed, and at least every
        // IDLE_PASS: failed instances wait out a retry delay that no write ends.
        if !dirty && last_pass.elapsed() < IDLE_PASS {
            continue;
        }
        dirty = false;
        last_pass = Instant::now();
        let now = now_ms();
        let input = coordinator.read_state(|state| pass_input(state, now));
        if input.jobs.is_empty() {
            continue;
        }
        // CPU-bound (every pending job against every node): off the runtime's
        // worker threads, which serve RPCs and Raft meanwhile.
        let plans = match tokio::task::spawn_blocking(move || plan_pass(&input)).await {
            Ok(plans) => plans,
            Err(e) => {
                tracing::warn!(error = %e, "scheduling pass failed");
                continue;
            }
        };
        proposed.retain(|_, (_, at)| at.elapsed() < SAME_PLAN_BACKOFF);
        let mut writes = Vec::with_capacity(plans.len());
        for plan in plans {
            if let Some((previous, at)) = proposed.get(&plan.job) {
                if *previous == plan && at.elapsed() < SAME_PLAN_BACKOFF {
                    continue;
                }
            }
            proposed.insert(plan.job.clone(), (plan.clone(), Instant::now()));
            let job = plan.job.clone();
            let coordinator = coordinator.clone();
            // The request that made the version, so that the placement's
            // log lines name it (crate::request_record).
            let request_id = coordinator
                .read_state(|s| crate::request_record::of_current_version(s, &job))
                .map(String::from)
                .unwrap_or_default();
            let span = tracing::info_span!("place", %job, %request_id);
            writes.push(
                async move {
                    let placements = plan.placements.len();
                    let evictions = plan.evictions.len();
                    let result = coordinator
                        .decide_as_leader(term, Command::apply_plan(plan, 0))
                        .await;
                    coordinator.instruments().scheduler.record(&result);
                    match result {
                        Ok(written) if placements > 0 || evictions > 0 => {
                            tracing::info!(%job, %request_id, placements, evictions, index = written.log_index, result = ?written.result, "plan applied")
                        }
                        Ok(written) => {
                            tracing::debug!(%job, index = written.log_index, result = ?written.result, "plan applied")
                        }
                        Err(e) => tracing::debug!(%job, error = %e, "plan not applied"),
                    }
                }
                .instrument(span),
            );
        }
        join_all(writes).await;
    }
}
