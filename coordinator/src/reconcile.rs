//! The leader's scheduling loop: compare what jobs want with the
//! allocations that exist, and propose plans for the difference.
//!
//! Runs on every member but acts only while it leads, re-evaluating when the
//! applied state moved. Plans are built from the leader's applied state (a
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

use crate::command::Command;
use crate::handle::{now_ms, Coordinator};
use futures::future::join_all;

use crate::placement::{pass_input, plan_pass, PlanCommand};

/// Longest pause between passes while leading, even when nothing moved.
const IDLE_PASS: Duration = Duration::from_secs(1);
/// An identical plan is not proposed again sooner than this (a plan that
/// `apply` keeps refusing must not flood the log).
const SAME_PLAN_BACKOFF: Duration = Duration::from_secs(5);

/// Runs the loop until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>) {
    let mut metrics = coordinator.raft().metrics();
    let mut evaluated_at: Option<u64> = None;
    let mut last_pass = Instant::now();
    let mut proposed: HashMap<String, (PlanCommand, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(IDLE_PASS) => {}
        }
        let (leading, applied) = {
            let m = metrics.borrow();
            (
                m.current_leader == Some(coordinator.id()),
                m.last_applied.map(|l| l.index),
            )
        };
        if !leading {
            evaluated_at = None;
            proposed.clear();
            continue;
        }
        // Re-evaluated when the state moved, and at least every IDLE_PASS:
        // failed instances wait out a retry delay that no write ends.
        if applied == evaluated_at && last_pass.elapsed() < IDLE_PASS {
            continue;
        }
        evaluated_at = applied;
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
            writes.push(async move {
                match coordinator
                    .write(Command::ApplyPlan { plan, now_ms: 0 })
                    .await
                {
                    Ok(written) => {
                        tracing::debug!(%job, index = written.log_index, result = ?written.result, "plan applied")
                    }
                    Err(e) => tracing::debug!(%job, error = %e, "plan not applied"),
                }
            });
        }
        join_all(writes).await;
    }
}
