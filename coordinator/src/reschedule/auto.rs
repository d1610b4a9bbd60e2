//! The leader's defragmenting loop (`[reschedule] every = "10m"`, off by
//! default): every period, while this member leads, it plans on a copy of
//! the state (herd's planner, within the deadline) and, when the fragment
//! rate is at least the threshold, runs the plan through live migrations
//! with the shared engine ([`super::apply`]), exactly as `herd reschedule
//! apply --wait` does: each move re-checked against the state at its
//! start, at most `concurrency` at once.
//!
//! One task runs the loop, so a run never overlaps the previous one: the
//! next period starts counting when a run ends. Every step is a decision of
//! the leader of one term: a member that stops leading ends its run at the
//! next step (its migrations go on and end under the new leader's watch),
//! and a new leader starts its own schedule, its first run one period after
//! it took over.
//!
//! Each run's outcome is written to the variable [`LAST_RUN_KEY`] (JSON,
//! [`LastRun`]), which `herd reschedule status` prints.

use std::sync::Arc;
use std::time::Duration;

use herd_reschedule::objective::initial_fragment_rate;
use serde::{Deserialize, Serialize};
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use super::apply::{self, ApplyError, ApplyOptions, Event, Outcome};
use super::config::LoopConfig;
use super::leader::{LeaderCluster, LeaderError};
use super::live::{build, shape};
use super::plan::{plan, LivePlan, PlanRequest};
use crate::coordinator::{now_ms, Coordinator};
use crate::machine::command::Command;
use crate::state::ClusterState;

/// The variable each run's outcome is written to. Keys under `herd/` are
/// herd's own records.
pub const LAST_RUN_KEY: &str = "herd/reschedule/last-run";

/// How often the loop checks whether it leads and whether a run is due.
const TICK: Duration = Duration::from_millis(250);

/// One move of a run, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMove {
    /// The allocation.
    pub alloc: String,
    /// Its job.
    pub job: String,
    /// Where it ran.
    pub source: String,
    /// Where it was to go.
    pub target: String,
    /// `completed`, `aborted`, `skipped` or `running`.
    pub outcome: String,
    /// The migration, when one was started.
    pub migration: Option<String>,
    /// Why it was skipped or aborted.
    pub reason: Option<String>,
}

/// What one run of the loop did: the record `herd reschedule status`
/// prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// When the run started, ms since the epoch.
    pub at_ms: u64,
    /// When it ended.
    pub ended_at_ms: u64,
    /// The member that ran it, and its term.
    pub member: u64,
    /// The term it led.
    pub term: u64,
    /// The loop's period, ms.
    pub every_ms: u64,
    /// `below-threshold`, `nothing-to-gain`, `applied` or `failed`.
    pub outcome: String,
    /// The fragment rate when the run planned.
    pub fr_before: f64,
    /// The threshold it was compared with.
    pub fr_threshold: f64,
    /// The fragment rate the plan promised.
    pub fr_planned: f64,
    /// The fragment rate measured once the moves ended (applied runs).
    pub fr_after: Option<f64>,
    /// The target shape's CPU, millicores.
    pub target_cpu_millis: u64,
    /// The target shape's memory, bytes (0: not counted).
    pub target_memory_bytes: u64,
    /// Moves planned.
    pub planned: usize,
    /// Moves started.
    pub started: usize,
    /// Moves completed.
    pub completed: usize,
    /// Moves aborted.
    pub aborted: usize,
    /// Moves skipped (no longer fitting when their turn came).
    pub skipped: usize,
    /// Each move and how it ended.
    pub moves: Vec<RunMove>,
    /// Anything worth saying (moves the migration rules refused at
    /// planning, why the run failed).
    pub note: Option<String>,
}

/// Runs the loop until the member shuts down.
pub async fn run(coordinator: Arc<Coordinator>, config: LoopConfig) {
    tracing::info!(
        every_ms = config.every.as_millis() as u64,
        fr_threshold = config.fr_threshold,
        max_migrations = config.max_migrations,
        "defragmenting loop on"
    );
    let mut leading: Option<u64> = None;
    let mut due = Instant::now() + config.every;
    loop {
        tokio::time::sleep(TICK.min(config.every)).await;
        let Some(term) = coordinator.leading_term() else {
            leading = None;
            continue;
        };
        if leading != Some(term) {
            // A new leadership: its own schedule.
            leading = Some(term);
            due = Instant::now() + config.every;
            continue;
        }
        if Instant::now() < due {
            continue;
        }
        run_once(&coordinator, term, &config).await;
        due = Instant::now() + config.every;
    }
}

/// The fragment rate of `state` for the shape `config` targets.
fn fragment_rate(state: &ClusterState, config: &LoopConfig) -> f64 {
    let target = shape(config.target_cpu_millis, config.target_memory_bytes);
    initial_fragment_rate(&build(state, target).instance, target)
}

/// One run as the leader of `term`: plan, compare, apply, record.
pub async fn run_once(coordinator: &Arc<Coordinator>, term: u64, config: &LoopConfig) {
    let at_ms = now_ms();
    let request = PlanRequest {
        max_migrations: config.max_migrations,
        deadline: config.deadline,
        shape: shape(config.target_cpu_millis, config.target_memory_bytes),
        solver: config.solver,
        seed: at_ms,
    };
    let state = coordinator.read_state(|s| s.clone());
    let threshold = config.fr_threshold;
    let measure = config.clone();
    // CPU-bound (the model of the whole cluster, then the planner): off
    // the runtime's worker threads.
    let planned = tokio::task::spawn_blocking(move || {
        let fr_now = fragment_rate(&state, &measure);
        if fr_now < threshold {
            // Nothing to do: no planning time spent.
            return Ok(Err(fr_now));
        }
        plan(&state, &request).map(Ok)
    })
    .await;
    let plan = match planned {
        Ok(Ok(Ok(plan))) => plan,
        Ok(Ok(Err(fr_now))) => {
            let mut record = empty_record(coordinator, term, config, at_ms, fr_now);
            record.outcome = "below-threshold".into();
            record.ended_at_ms = now_ms();
            tracing::debug!(fr = fr_now, "defragmenting run: below the threshold");
            write_record(coordinator, term, &record).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "defragmenting run: no plan");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "defragmenting run: the planner stopped");
            return;
        }
    };
    let mut record = empty_record(coordinator, term, config, at_ms, plan.fr_before);
    record.fr_planned = plan.fr_after;
    record.planned = plan.moves.len();
    record.note = plan.note.clone();
    if plan.moves.is_empty() {
        record.outcome = "nothing-to-gain".into();
    } else {
        match apply_plan(coordinator, term, config, &plan).await {
            Ok(outcomes) => {
                record.outcome = "applied".into();
                fill_moves(&mut record, &plan, &outcomes);
                record.fr_after = Some(coordinator.read_state(|s| fragment_rate(s, config)));
            }
            Err(ApplyError::Cluster(LeaderError::NotLeading { .. })) => {
                tracing::info!(term, "defragmenting run ended: leadership moved on");
                return;
            }
            Err(e) => {
                record.outcome = "failed".into();
                record.note = Some(e.to_string());
            }
        }
    }
    record.ended_at_ms = now_ms();
    tracing::info!(
        outcome = %record.outcome,
        fr_before = record.fr_before,
        fr_planned = record.fr_planned,
        fr_after = ?record.fr_after,
        started = record.started,
        skipped = record.skipped,
        "defragmenting run"
    );
    write_record(coordinator, term, &record).await;
}

/// A record of a run that moved nothing yet, at fragment rate `fr`.
fn empty_record(
    coordinator: &Coordinator,
    term: u64,
    config: &LoopConfig,
    at_ms: u64,
    fr: f64,
) -> LastRun {
    LastRun {
        at_ms,
        ended_at_ms: at_ms,
        member: coordinator.id(),
        term,
        every_ms: u64::try_from(config.every.as_millis()).unwrap_or(u64::MAX),
        outcome: String::new(),
        fr_before: fr,
        fr_threshold: config.fr_threshold,
        fr_planned: fr,
        fr_after: None,
        target_cpu_millis: config.target_cpu_millis,
        target_memory_bytes: config.target_memory_bytes,
        planned: 0,
        started: 0,
        completed: 0,
        aborted: 0,
        skipped: 0,
        moves: Vec::new(),
        note: None,
    }
}

/// Runs `plan`'s moves as the leader of `term`, following them to their end.
async fn apply_plan(
    coordinator: &Arc<Coordinator>,
    term: u64,
    config: &LoopConfig,
    plan: &LivePlan,
) -> Result<Vec<Outcome>, ApplyError<LeaderError>> {
    let cluster = LeaderCluster::new(coordinator.clone(), term, config.downtime_limit_ms)
        .with_bandwidth(config.bandwidth_bytes_per_sec);
    let options = ApplyOptions {
        concurrency: config.concurrency,
        wait: true,
        ..ApplyOptions::default()
    };
    let moves = &plan.moves;
    apply::execute(&cluster, moves, &options, |event| match event {
        Event::Started { index, started } => tracing::info!(
            alloc = %moves[index].alloc_id,
            migration = %started.id,
            source = %started.source,
            target = %started.target,
            "defragmenting move started"
        ),
        Event::Ended { index, outcome } => tracing::info!(
            alloc = %moves[index].alloc_id,
            outcome = outcome.name(),
            detail = ?outcome,
            "defragmenting move ended"
        ),
    })
    .await
}

/// Fills the record's counts and moves from the run's outcomes.
fn fill_moves(record: &mut LastRun, plan: &LivePlan, outcomes: &[Outcome]) {
    record.completed = apply::count(outcomes, "completed");
    record.aborted = apply::count(outcomes, "aborted");
    record.skipped = apply::count(outcomes, "skipped");
    record.started = outcomes.len() - record.skipped;
    record.moves = plan
        .moves
        .iter()
        .zip(outcomes)
        .map(|(m, o)| {
            let (migration, reason) = match o {
                Outcome::Completed { id, .. } | Outcome::Running { id } => (Some(id.clone()), None),
                Outcome::Aborted { id, why } => (Some(id.clone()), Some(why.clone())),
                Outcome::Skipped(why) => (None, Some(why.clone())),
            };
            RunMove {
                alloc: m.alloc_id.clone(),
                job: m.job.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                outcome: o.name().to_string(),
                migration,
                reason,
            }
        })
        .collect();
}

/// Writes `record` to [`LAST_RUN_KEY`] as the leader of `term`.
async fn write_record(coordinator: &Coordinator, term: u64, record: &LastRun) {
    let value = match serde_json::to_vec(record) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the run's record");
            return;
        }
    };
    let put = Command::PutVariable {
        key: LAST_RUN_KEY.to_string(),
        value,
        expected_version: None,
    };
    if let Err(e) = coordinator.decide_as_leader(term, put).await {
        tracing::debug!(error = %e, "the run's record was not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reschedule::plan::{LiveMove, ModelCounts};

    #[test]
    fn a_run_record_counts_each_outcome_and_keeps_reasons() {
        let mv = |alloc: &str| LiveMove {
            alloc_id: alloc.into(),
            job: "j".into(),
            source: "n1".into(),
            target: "n2".into(),
            cpu_millis: 1,
            memory_bytes: 0,
        };
        let plan = LivePlan {
            fr_before: 0.6,
            fr_after: 0.2,
            moves: vec![mv("a"), mv("b"), mv("c")],
            model: ModelCounts::default(),
            note: None,
        };
        let outcomes = vec![
            Outcome::Completed {
                id: "m1".into(),
                downtime_ms: 3,
            },
            Outcome::Skipped("cannot migrate: full".into()),
            Outcome::Aborted {
                id: "m2".into(),
                why: "target down".into(),
            },
        ];
        let mut record = LastRun {
            at_ms: 1,
            ended_at_ms: 2,
            member: 1,
            term: 3,
            every_ms: 1000,
            outcome: "applied".into(),
            fr_before: 0.6,
            fr_threshold: 0.3,
            fr_planned: 0.2,
            fr_after: None,
            target_cpu_millis: 2000,
            target_memory_bytes: 0,
            planned: 3,
            started: 0,
            completed: 0,
            aborted: 0,
            skipped: 0,
            moves: Vec::new(),
            note: None,
        };
        fill_moves(&mut record, &plan, &outcomes);
        assert_eq!(
            (
                record.started,
                record.completed,
                record.aborted,
                record.skipped
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(
            record.moves[1].reason.as_deref(),
            Some("cannot migrate: full")
        );
        assert_eq!(record.moves[2].migration.as_deref(), Some("m2"));
        let json = serde_json::to_string(&record).expect("encode");
        let back: LastRun = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, record);
    }
}
