//! No acknowledged job lost: every job whose submit was acknowledged is
//! listed, not stopped, once faults healed, unless a stop of it may have
//! happened after the submit.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{FinalJob, History, Op, OpKind, Outcome, Record};

/// Checks the history's job operations against its final job list.
pub fn check_history(history: &History) -> Verdict {
    let final_jobs = history.records.iter().rev().find_map(|r| match r {
        Record::FinalJobs { jobs } => Some(jobs.clone()),
        _ => None,
    });
    let ops: Vec<Op> = history.ops().cloned().collect();
    match final_jobs {
        Some(jobs) => check(&ops, jobs.as_deref()),
        None => check(&ops, None),
    }
}

/// Each job's history as a versioned register: submits, updates and stops
/// write their marker (the answer names the version they made), queries
/// read the marker and version they saw, and a query answered "not found"
/// after the read barrier read the job absent (no marker, version 0), so
/// that an acknowledged job that vanished, or one seen before its submit,
/// fails as a stale read would. Other operations without a marker (the
/// harness's own setup submit) are left out.
pub fn as_registers(ops: &[Op]) -> Vec<Op> {
    ops.iter()
        .filter(|o| o.value.is_some() || (o.kind == OpKind::Query && o.outcome == Outcome::Ok))
        .filter_map(|o| {
            let kind = match o.kind {
                OpKind::Submit | OpKind::Update | OpKind::Stop => OpKind::Write,
                OpKind::Query => OpKind::Read,
                _ => return None,
            };
            Some(Op {
                kind,
                key: format!("job:{}", o.key),
                ..o.clone()
            })
        })
        .collect()
}

/// Checks `ops` against the jobs listed at the end (None: never listed).
pub fn check(ops: &[Op], final_jobs: Option<&[FinalJob]>) -> Verdict {
    let acknowledged: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == OpKind::Submit && o.outcome == Outcome::Ok)
        .collect();
    if acknowledged.is_empty() {
        return Verdict::Pass;
    }
    let Some(final_jobs) = final_jobs else {
        return Verdict::Unknown("the final job list could not be read".into());
    };
    let listed: BTreeMap<&str, &str> = final_jobs
        .iter()
        .map(|j| (j.name.as_str(), j.status.as_str()))
        .collect();
    let mut lost = Vec::new();
    for submit in acknowledged {
        // A stop that may have taken effect after this submit excuses it.
        let stopped_later = ops.iter().any(|o| {
            o.kind == OpKind::Stop
                && o.key == submit.key
                && o.outcome != Outcome::Fail
                && (o.outcome == Outcome::Unknown || o.complete_ns > submit.invoke_ns)
        });
        if stopped_later {
            continue;
        }
        match listed.get(submit.key.as_str()) {
            None => lost.push(format!("{} (missing)", submit.key)),
            Some(&"stopped") => lost.push(format!("{} (stopped, never by a client)", submit.key)),
            Some(_) => {}
        }
    }
    lost.dedup();
    if lost.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("acknowledged jobs lost: {}", lost.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_op(id: u64, kind: OpKind, name: &str, outcome: Outcome, t: (u64, u64)) -> Op {
        Op {
            id,
            process: 0,
            kind,
            key: name.into(),
            value: None,
            expected: None,
            version: None,
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome,
            error: None,
            member: None,
        }
    }

    fn listed(jobs: &[(&str, &str)]) -> Vec<FinalJob> {
        jobs.iter()
            .map(|(n, s)| FinalJob {
                name: n.to_string(),
                status: s.to_string(),
            })
            .collect()
    }

    #[test]
    fn acknowledged_jobs_present_or_stopped_pass() {
        let ops = vec![
            job_op(1, OpKind::Submit, "a", Outcome::Ok, (0, 1)),
            job_op(2, OpKind::Submit, "b", Outcome::Ok, (2, 3)),
            job_op(3, OpKind::Stop, "b", Outcome::Unknown, (4, 5)),
            // Never acknowledged: may be missing.
            job_op(4, OpKind::Submit, "c", Outcome::Unknown, (6, 7)),
        ];
        let jobs = listed(&[("a", "running")]);
        assert_eq!(check(&ops, Some(&jobs)), Verdict::Pass);
    }

    #[test]
    fn job_versions_are_judged_as_registers() {
        let marked = |id, kind, mark: &str, version, t| Op {
            value: Some(mark.to_string()),
            version: Some(version),
            ..job_op(id, kind, "a", Outcome::Ok, t)
        };
        let good = vec![
            marked(1, OpKind::Submit, "m1", 1, (0, 10)),
            marked(2, OpKind::Update, "m2", 2, (20, 30)),
            marked(3, OpKind::Query, "m2", 2, (40, 50)),
            marked(4, OpKind::Stop, "stopped", 3, (60, 70)),
            marked(5, OpKind::Query, "stopped", 3, (80, 90)),
        ];
        let registers = as_registers(&good);
        assert_eq!(registers.len(), 5);
        assert!(registers.iter().all(|o| o.key == "job:a"));
        assert_eq!(
            crate::check::version_order::check_registers(&registers),
            Verdict::Pass
        );
        // A query after the update that still sees the first version.
        let mut stale = good;
        stale[2] = marked(3, OpKind::Query, "m1", 1, (40, 50));
        let verdict = crate::check::version_order::check_registers(&as_registers(&stale));
        assert!(verdict.is_fail(), "{verdict:?}");
    }

    #[test]
    fn a_job_not_found_after_its_acknowledged_submit_fails() {
        let marked = |id, kind, mark: &str, version, t| Op {
            value: Some(mark.to_string()),
            version: Some(version),
            ..job_op(id, kind, "a", Outcome::Ok, t)
        };
        // "not found" after the read barrier: recorded as absent, version 0.
        let absent = |id, t| Op {
            version: Some(0),
            ..job_op(id, OpKind::Query, "a", Outcome::Ok, t)
        };
        // Absent before the submit (or while its outcome is unknown) is fine.
        let mut maybe = marked(2, OpKind::Submit, "m1", 1, (20, 30));
        maybe.outcome = Outcome::Unknown;
        maybe.version = None;
        let good = vec![
            absent(1, (0, 10)),
            maybe,
            absent(3, (40, 50)),
            marked(4, OpKind::Query, "m1", 1, (60, 70)),
        ];
        assert_eq!(as_registers(&good).len(), 4);
        assert_eq!(
            crate::check::registers(&as_registers(&good), 1_000_000),
            Verdict::Pass
        );
        // Absent after an acknowledged submit: the job vanished.
        let lost = vec![
            marked(1, OpKind::Submit, "m1", 1, (0, 10)),
            absent(2, (20, 30)),
        ];
        let verdict = crate::check::registers(&as_registers(&lost), 1_000_000);
        assert!(verdict.is_fail(), "{verdict:?}");
        // A query that failed (no answer) observed nothing and is left out.
        let failed = job_op(3, OpKind::Query, "a", Outcome::Fail, (40, 50));
        assert!(as_registers(&[failed]).is_empty());
    }

    #[test]
    fn a_lost_job_fails() {
        let ops = vec![
            job_op(1, OpKind::Submit, "a", Outcome::Ok, (0, 1)),
            job_op(2, OpKind::Submit, "b", Outcome::Ok, (2, 3)),
        ];
        let jobs = listed(&[("a", "running")]);
        let verdict = check(&ops, Some(&jobs));
        assert!(verdict.is_fail(), "{verdict:?}");
    }

    #[test]
    fn a_stop_before_the_submit_does_not_excuse_it() {
        let ops = vec![
            job_op(1, OpKind::Stop, "a", Outcome::Ok, (0, 1)),
            job_op(2, OpKind::Submit, "a", Outcome::Ok, (2, 3)),
        ];
        let jobs = listed(&[("a", "stopped")]);
        assert!(check(&ops, Some(&jobs)).is_fail());
    }

    #[test]
    fn no_final_list_is_unknown() {
        let ops = vec![job_op(1, OpKind::Submit, "a", Outcome::Ok, (0, 1))];
        assert!(matches!(check(&ops, None), Verdict::Unknown(_)));
    }
}
