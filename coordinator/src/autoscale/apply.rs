//! [`Command::ScaleJob`](crate::machine::command::Command::ScaleJob): a
//! service's instance count changes without a new job version, so running
//! instances stay; scale-in stops the highest-numbered instances (their
//! engines get SIGTERM and drain, the agents' rescheduler moving their
//! running requests), scale-out leaves the missing instances to the
//! scheduler. Each change is kept as a scaling event, replicated, so that
//! `herd service status` shows them and a new leader's autoscaler knows
//! when the last change was (its cooldowns carry over a leader change).

use serde::{Deserialize, Serialize};

use crate::machine::apply::plan::stop_matching;
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState, JobStatus, Record};

/// Scaling events kept per service (older ones are dropped).
pub const MAX_EVENTS: usize = 32;
/// Longest reason kept with an event.
const MAX_REASON: usize = 512;

/// Who asked for a change.
pub const SOURCE_MANUAL: &str = "manual";
/// The leader's autoscaler.
pub const SOURCE_AUTOSCALER: &str = "autoscaler";

/// What a [`Command::ScaleJob`](crate::machine::command::Command::ScaleJob) asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The job (an inference service).
    pub job: String,
    /// The instance count wanted.
    pub count: u32,
    /// Apply only if the count is still this (the autoscaler's decisions
    /// are made on a view that may have changed); None: whatever it is.
    #[serde(default)]
    pub expect_count: Option<u32>,
    /// [`SOURCE_MANUAL`] or [`SOURCE_AUTOSCALER`].
    pub source: String,
    /// Why, in words (the autoscaler's observation).
    #[serde(default)]
    pub reason: String,
}

/// One change of a service's instance count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingEvent {
    /// When it was applied (leader's clock, ms since the epoch).
    pub at_ms: u64,
    /// The count before.
    pub from: u32,
    /// The count after.
    pub to: u32,
    /// [`SOURCE_MANUAL`] or [`SOURCE_AUTOSCALER`].
    pub source: String,
    /// Why.
    pub reason: String,
}

/// A service's recent scaling events, oldest first, at most [`MAX_EVENTS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingLog {
    /// The events.
    pub events: Vec<ScalingEvent>,
}

impl ScalingLog {
    /// When the count last changed, and the newest change.
    pub fn last(&self) -> Option<&ScalingEvent> {
        self.events.last()
    }
}

fn invalid(message: String) -> CommandResult {
    CommandResult::Rejected(Rejection::Invalid(message))
}

/// Applies a scale request, committed at `index`.
pub fn scale_job(
    state: &mut ClusterState,
    index: u64,
    request: &ScaleRequest,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let name = request.job.as_str();
    let Some(job) = state.jobs.get_mut(name) else {
        return CommandResult::Rejected(Rejection::JobNotFound(name.to_string()));
    };
    if job.status == JobStatus::Stopped {
        return invalid(format!("service {name:?} is stopped; run it again first"));
    }
    if job.spec.task.driver != "inference" {
        return invalid(format!(
            "job {name:?} is not an inference service (driver {:?}); change its count with a new spec",
            job.spec.task.driver
        ));
    }
    let max = herd_api::validate::MAX_COUNT;
    if !(1..=max).contains(&request.count) {
        return invalid(format!(
            "count must be between 1 and {max}, got {}",
            request.count
        ));
    }
    if let Some(autoscale) = &job.spec.autoscale {
        if let Err(message) = autoscale.check_count(request.count) {
            return invalid(message);
        }
    }
    let from = job.spec.count;
    if let Some(expected) = request.expect_count {
        if expected != from {
            return invalid(format!(
                "service {name:?} has {from} instances now, not {expected}: decided on a stale view"
            ));
        }
    }
    if from == request.count {
        return CommandResult::JobScaled { from, to: from };
    }
    let to = request.count;
    job.spec.count = to;
    job.modify_index = index;
    job.updated_at_ms = now_ms;
    changes.put(Record::Job(name), state);
    if to < from {
        let reason = format!("scaled in from {from} to {to} instances");
        stop_matching(state, index, now_ms, changes, &reason, |a| {
            a.job == name && a.instance >= to
        });
    }
    let mut reason = request.reason.clone();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let log = state.scaling.entry(name.to_string()).or_default();
    log.events.push(ScalingEvent {
        at_ms: now_ms,
        from,
        to,
        source: request.source.clone(),
        reason,
    });
    let excess = log.events.len().saturating_sub(MAX_EVENTS);
    log.events.drain(..excess);
    changes.put(Record::Scaling(name), state);
    CommandResult::JobScaled { from, to }
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::AllocDesired;
    use herd_api::autoscale::AutoscaleSpec;
    use herd_api::job::JobType;

    use super::*;
    use crate::machine::command::Command;
    use crate::testkit::{run, spec};

    fn service(state: &mut ClusterState, count: u32, autoscale: Option<AutoscaleSpec>) {
        let mut job = spec("llm", JobType::Service, count);
        job.task.driver = "inference".into();
        job.task.command = None;
        job.autoscale = autoscale.map(Box::new);
        let (result, _) = run(
            state,
            1,
            Command::SubmitJob {
                spec: job,
                now_ms: 1,
            },
        );
        assert!(
            matches!(result, CommandResult::JobSubmitted { .. }),
            "{result:?}"
        );
    }

    fn scale(
        state: &mut ClusterState,
        index: u64,
        count: u32,
        expect: Option<u32>,
    ) -> CommandResult {
        run(
            state,
            index,
            Command::ScaleJob {
                scale: ScaleRequest {
                    job: "llm".into(),
                    count,
                    expect_count: expect,
                    source: SOURCE_MANUAL.into(),
                    reason: "test".into(),
                },
                now_ms: index * 10,
            },
        )
        .0
    }

    #[test]
    fn scaling_changes_the_count_keeps_the_version_and_records_an_event() {
        let mut state = ClusterState::default();
        service(&mut state, 2, None);
        assert_eq!(
            scale(&mut state, 2, 4, None),
            CommandResult::JobScaled { from: 2, to: 4 }
        );
        let job = &state.jobs["llm"];
        assert_eq!((job.spec.count, job.version), (4, 1));
        let events = &state.scaling["llm"].events;
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].from, events[0].to, events[0].at_ms), (2, 4, 20));
        // The same count again changes nothing and records nothing.
        assert_eq!(
            scale(&mut state, 3, 4, None),
            CommandResult::JobScaled { from: 4, to: 4 }
        );
        assert_eq!(state.scaling["llm"].events.len(), 1);
        // Survives a rebuild from the persisted records (a new leader).
        let rebuilt = ClusterState::from_pairs(state.to_pairs()).expect("rebuild");
        assert_eq!(rebuilt.scaling, state.scaling);
        assert_eq!(rebuilt.jobs["llm"].spec.count, 4);
    }

    #[test]
    fn scale_in_stops_the_highest_instances_only() {
        let mut state = ClusterState::default();
        let mut job = spec("llm", JobType::Service, 3);
        job.task.driver = "inference".into();
        job.task.command = None;
        let index = crate::testkit::place(&mut state, &["n1", "n2"], vec![job], 5);
        assert_eq!(state.allocs_of_job("llm").count(), 3);
        assert_eq!(
            scale(&mut state, index, 1, Some(3)),
            CommandResult::JobScaled { from: 3, to: 1 }
        );
        for alloc in state.allocs_of_job("llm") {
            let expected = if alloc.instance == 0 {
                AllocDesired::Run
            } else {
                AllocDesired::Stop
            };
            assert_eq!(alloc.desired, expected, "instance {}", alloc.instance);
        }
        assert_eq!(
            state.jobs["llm"].version, 1,
            "no new version: instance 0 keeps running"
        );
        // Scaling out again leaves instances 1 and 2 to the scheduler.
        scale(&mut state, index + 1, 3, None);
        let missing = crate::planning::retry::missing_instances(&state, &state.jobs["llm"], 10);
        assert_eq!(missing, vec![1, 2]);
    }

    #[test]
    fn bad_scales_are_refused_and_change_nothing() {
        let mut state = ClusterState::default();
        service(&mut state, 2, Some(AutoscaleSpec::new(1, 3)));
        let before = state.clone();
        for (count, expect) in [(4, None), (0, None), (3, Some(1))] {
            let result = scale(&mut state, 2, count, expect);
            assert!(
                matches!(result, CommandResult::Rejected(Rejection::Invalid(_))),
                "{count}: {result:?}"
            );
        }
        let unknown = run(
            &mut state,
            3,
            Command::ScaleJob {
                scale: ScaleRequest {
                    job: "nope".into(),
                    count: 1,
                    expect_count: None,
                    source: SOURCE_MANUAL.into(),
                    reason: String::new(),
                },
                now_ms: 1,
            },
        )
        .0;
        assert_eq!(
            unknown,
            CommandResult::Rejected(Rejection::JobNotFound("nope".into()))
        );
        assert_eq!(state, before);
    }

    #[test]
    fn events_are_bounded() {
        let mut state = ClusterState::default();
        service(&mut state, 1, None);
        for i in 0..(MAX_EVENTS as u64 + 10) {
            let count = if i % 2 == 0 { 2 } else { 1 };
            scale(&mut state, 2 + i, count, None);
        }
        let events = &state.scaling["llm"].events;
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(
            events.last().map(|e| e.at_ms),
            Some((2 + MAX_EVENTS as u64 + 9) * 10)
        );
    }
}
