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
