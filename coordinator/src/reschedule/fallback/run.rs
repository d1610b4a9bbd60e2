//! The leader's placement-fallback loop: about once a second, while this
//! member leads, it takes one job the scheduling loop left pending (its
//! `blocked` reason set), gives the exact solver its window, and acts on
//! the verdict as decisions of its term:
//!
//! - a placement needing no move: proposed as a placement plan
//!   (`Command::ApplyPlan`), which `apply` re-checks like the scheduler's
//!   own (evictions of strictly lower priority only, room on each node);
//! - a placement needing moves: the moves run through live migrations with
//!   the shared engine (`reschedule::apply`, each re-checked at its start),
//!   then the placement plan is proposed against the state at that moment;
//! - no placement: the proof (or the time limit) is recorded.
//!
//! Each outcome is written to `herd/placement/<job>` (see [`super::record`])
//! for `herd job status`. One job at a time; a job is tried again after
//! [`RETRY_AFTER`] or when its version changes, so a job that stays
//! pending costs one short solve per period, not one per second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_reschedule::fallback::{Answer, Found};

use super::build::{build, Built};
use super::decide::{
    decide, evicted_names, making_room_text, moved_names, moves, placed_text, plan_command, rules,
    Verdict,
};
use super::record::{key, FallbackRecord, Outcome};
use crate::coordinator::{now_ms, Coordinator};
use crate::machine::command::{Command, CommandResult};
use crate::planning::missing_instances;
use crate::reschedule::apply::{self, ApplyOptions};
use crate::reschedule::config::{FallbackConfig, DEFAULT_DOWNTIME_LIMIT_MS};
use crate::reschedule::leader::LeaderCluster;
use crate::state::{ClusterState, JobStatus};

/// How often the loop looks for a pending job.
const TICK: Duration = Duration::from_secs(1);
/// A job is tried again after this long at the same version.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Runs the loop until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>, config: FallbackConfig) {
    tracing::info!(
        window_ms = config.window.as_millis() as u64,
        move_any_priority = config.move_any_priority,
        "placement fallback on"
    );
    // Per job: the version tried and when.
    let mut tried: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut leading: Option<u64> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(term) = coordinator.leading_term() else {
            leading = None;
            continue;
        };
        if leading != Some(term) {
            leading = Some(term);
            tried.clear();
        }
        tried.retain(|_, (_, at)| at.elapsed() < RETRY_AFTER);
        let now = now_ms();
        let next = coordinator.read_state(|s| next_job(s, &tried, now));
        let Some((job, version)) = next else {
            continue;
        };
        tried.insert(job.clone(), (version, Instant::now()));
        handle(&coordinator, term, &config, &job).await;
    }
}

/// The first job (by name) left pending with instances missing at
/// `now_ms`, not tried at its version lately.
fn next_job(
    state: &ClusterState,
    tried: &HashMap<String, (u64, Instant)>,
    now_ms: u64,
) -> Option<(String, u64)> {
    state
        .jobs
        .values()
        .filter(|j| j.blocked.is_some())
        .filter(|j| matches!(j.status, JobStatus::Pending | JobStatus::Running))
        .filter(|j| {
            tried
                .get(&j.spec.name)
                .is_none_or(|&(version, _)| version != j.version)
        })
        .find(|j| !missing_instances(state, j, now_ms).is_empty())
        .map(|j| (j.spec.name.clone(), j.version))
}

/// Runs the fallback for `job` as the leader of `term`.
async fn handle(coordinator: &Arc<Coordinator>, term: u64, config: &FallbackConfig, job: &str) {
    let state = coordinator.read_state(|s| s.clone());
    let Some(spec) = state.jobs.get(job).cloned() else {
        return;
    };
    let Some(mut built) = build(&state, &spec, now_ms(), config.move_any_priority) else {
        return;
    };
    let at_ms = now_ms();
    let window = config.window;
    let started = Instant::now();
    let solved = tokio::task::spawn_blocking(move || {
        let verdict = decide(&state, &mut built, window);
        (verdict, built)
    })
    .await;
    let solver_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (verdict, built) = match solved {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(%job, error = %e, "placement fallback: the solver stopped");
            return;
        }
    };
    let mut record = FallbackRecord {
        job: job.to_string(),
        version: built.version,
        at_ms,
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        solver_ms,
        outcome: Outcome::Error,
        wanted: built.problem.instances,
        placed: 0,
        moved: Vec::new(),
        evicted: Vec::new(),
        text: String::new(),
    };
    let rules = rules(config.move_any_priority);
    match verdict {
        Err(e) => {
            record.text = format!("the exact solver failed: {e}");
        }
        Ok(Verdict::Refused(why)) => {
            record.outcome = Outcome::Refused;
            record.text = format!("a placement was found but {why}; tried again later");
        }
        Ok(Verdict::Answer(Answer::Impossible)) if built.complete => {
            record.outcome = Outcome::Impossible;
            record.text = format!(
                "no placement exists even {rules} (proved by the exact solver in {solver_ms} ms)"
            );
        }
        Ok(Verdict::Answer(Answer::Impossible)) => {
            record.outcome = Outcome::NotFound;
            record.text = format!(
                "no placement found {rules} among the {} allocations considered (the model was trimmed to stay small: no proof)",
                built.work.len()
            );
        }
        Ok(Verdict::Answer(Answer::TimedOut)) => {
            record.outcome = Outcome::TimedOut;
            record.text = format!(
                "solver timed out after {} ms: no placement found, none ruled out",
                record.window_ms
            );
        }
        Ok(Verdict::Answer(Answer::Found(found))) => {
            let blocked =
                coordinator.read_state(|s| s.jobs.get(job).and_then(|j| j.blocked.clone()));
            place(
                coordinator,
                term,
                config,
                &built,
                &found,
                blocked,
                &mut record,
            )
            .await;
        }
    }
    if record.text.is_empty() {
        // Leadership moved on mid-way: the new leader decides afresh.
        return;
    }
    tracing::info!(%job, outcome = record.outcome.as_str(), text = %record.text, "placement fallback");
    write(coordinator, term, &record).await;
}

/// Makes `found` happen: its moves, then its placement plan. Fills
/// `record` (left without text when leadership moved on).
async fn place(
    coordinator: &Arc<Coordinator>,
    term: u64,
    config: &FallbackConfig,
    built: &Built,
    found: &Found,
    blocked: Option<String>,
    record: &mut FallbackRecord,
) {
    record.moved = moved_names(built, found);
    record.evicted = evicted_names(built, found);
    record.placed = found.total();
    if !found.moves.is_empty() {
        record.outcome = Outcome::MakingRoom;
        record.text = making_room_text(&record.moved, &record.evicted);
        write(coordinator, term, record).await;
        let cluster = LeaderCluster::new(coordinator.clone(), term, DEFAULT_DOWNTIME_LIMIT_MS);
        let options = ApplyOptions {
            concurrency: config.concurrency,
            wait: true,
            ..ApplyOptions::default()
        };
        let planned = moves(built, found);
        let outcomes = match apply::execute(&cluster, &planned, &options, |_| {}).await {
            Ok(outcomes) => outcomes,
            Err(apply::ApplyError::Cluster(
                crate::reschedule::leader::LeaderError::NotLeading { .. },
            )) => {
                record.text.clear();
                return;
            }
            Err(e) => {
                record.outcome = Outcome::Refused;
                record.text = format!("making room failed: {e}; tried again later");
                return;
            }
        };
        if let Some((m, o)) = planned
            .iter()
            .zip(&outcomes)
            .find(|(_, o)| o.name() != "completed")
        {
            let why = match o {
                apply::Outcome::Skipped(why) => format!("skipped: {why}"),
                apply::Outcome::Aborted { why, .. } => format!("aborted: {why}"),
                other => other.name().to_string(),
            };
            record.outcome = Outcome::Refused;
            record.text = format!(
                "making room failed: moving {} to {} was {why}; nothing placed, tried again later",
                m.alloc_id, m.target
            );
            return;
        }
    }
    let plan = plan_command(built, found, blocked);
    let result = coordinator
        .decide_as_leader(term, Command::apply_plan(plan, 0))
        .await;
    let placed_now = |coordinator: &Coordinator| {
        coordinator.read_state(|s| {
            s.jobs
                .get(&built.job)
                .is_some_and(|j| missing_instances(s, j, now_ms()).len() < built.instances.len())
        })
    };
    match result {
        Ok(written) => match written.result {
            CommandResult::PlanApplied {
                placed, rejected, ..
            } if !placed.is_empty() => {
                record.outcome = Outcome::Placed;
                record.placed = u32::try_from(placed.len()).unwrap_or(u32::MAX);
                record.text =
                    placed_text(record.placed, record.wanted, &record.moved, &record.evicted);
                if let Some(why) = rejected.first() {
                    record.text.push_str(&format!("; some refused: {why}"));
                }
            }
            CommandResult::PlanApplied { rejected, .. } if placed_now(coordinator) => {
                // The scheduler placed it in the room made meanwhile.
                let _ = rejected;
                record.outcome = Outcome::Placed;
                record.text =
                    placed_text(record.placed, record.wanted, &record.moved, &record.evicted);
            }
            CommandResult::PlanApplied { rejected, .. } => {
                record.outcome = Outcome::Refused;
                record.text = format!(
                    "the placement found was refused when made: {}; tried again later",
                    rejected.first().map_or("no reason given", String::as_str)
                );
            }
            other => {
                record.outcome = Outcome::Refused;
                record.text = format!("unexpected result of the placement: {other:?}");
            }
        },
        Err(e) => {
            if coordinator.leading_term() != Some(term) {
                record.text.clear();
                return;
            }
            record.outcome = Outcome::Refused;
            record.text =
                format!("the placement found was refused when made: {e}; tried again later");
        }
    }
}

/// Writes `record` to its variable as the leader of `term`; a failure
/// already recorded for the same job version is not written again (a job
/// that stays pending is tried every [`RETRY_AFTER`]).
async fn write(coordinator: &Coordinator, term: u64, record: &FallbackRecord) {
    let same = coordinator.read_state(|s| {
        s.variables
            .get(&key(&record.job))
            .and_then(|v| serde_json::from_slice::<FallbackRecord>(&v.value).ok())
            .is_some_and(|old| {
                old.version == record.version
                    && old.outcome == record.outcome
                    && record.outcome.while_pending()
            })
    });
    if same {
        return;
    }
    let value = match serde_json::to_vec(record) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the fallback's record");
            return;
        }
    };
    let put = Command::PutVariable {
        key: key(&record.job),
        value,
        expected_version: None,
    };
    if let Err(e) = coordinator.decide_as_leader(term, put).await {
        tracing::debug!(error = %e, "the fallback's record was not written");
    }
}
