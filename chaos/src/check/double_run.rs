//! Never two running copies: in no sample may one allocation run as two
//! processes, and once the cluster has settled no job instance may either,
//! in one version of the job, save right after a drain.
//!
//! While an agent is dead its workloads run on unsupervised and the
//! coordinator rightly starts replacements elsewhere, so two copies of an
//! *instance* can overlap until the agent returns and stops its stale one;
//! two copies of one *allocation* never may. An update starts the new
//! version's instance while the old one is being stopped (herd does not
//! order the two yet, as Nomad's destructive updates do not), so copies of
//! *different* versions may overlap briefly, settled or not. A drain does
//! the same within one version: it stops what cannot move live and places
//! it again elsewhere at once, so the drained node's copy may still be
//! stopping when its replacement starts. Such an overlap is excused for
//! [`DRAIN_OVERLAP_NS`] after the drain's answer, and only when the older
//! copy runs on the drained node, was placed before the drain and the
//! newer one after it (Raft indexes: the allocation id's and the drain's
//! `log_index`). Jobs that must never overlap (`careful`) are checked by
//! the at-most-once checker instead.
//!
//! A simulated VM moving live has two copies of one allocation, the
//! source and the target's incoming one, and only one may run its guest:
//! a copy counts only when it said, twice, that its guest runs
//! ([`GuestSeen`]), so two copies that both run are the failure.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{GuestSeen, Op, OpKind, Outcome, Sample, SeenProcess};

/// How long after a drain's answer the drained node's copy of an instance
/// may still run beside its replacement: the agent hears of the stop
/// within a second and the chaos jobs end at SIGTERM; the rest is slack
/// for a loaded machine and Docker. An overlap longer than this is a copy
/// an agent failed to stop, and fails.
pub const DRAIN_OVERLAP_NS: u64 = 10_000_000_000;

/// Checks every sample; `ops` are the history's client operations (for
/// the drains).
pub fn check(samples: &[Sample], ops: &[Op]) -> Verdict {
    if samples.is_empty() {
        return Verdict::Pass;
    }
    for sample in samples {
        let mut by_alloc: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut by_instance: BTreeMap<(&str, u32, Option<&str>), Vec<&SeenProcess>> =
            BTreeMap::new();
        for p in sample
            .processes
            .iter()
            .filter(|p| GuestSeen::counts(p.guest))
        {
            by_alloc.entry(&p.alloc_id).or_default().push(p.pid);
            if let Some(instance) = p.instance {
                by_instance
                    .entry((&p.job, instance, p.mark.as_deref()))
                    .or_default()
                    .push(p);
            }
        }
        if let Some((alloc, pids)) = by_alloc.iter().find(|(_, pids)| pids.len() > 1) {
            return Verdict::Fail(format!(
                "allocation {alloc} ran as pids {pids:?} at {} ms",
                sample.at_ns / 1_000_000
            ));
        }
        if sample.settled {
            if let Some(((job, instance, _), copies)) = by_instance
                .iter()
                .find(|(_, copies)| copies.len() > 1 && !drain_overlap(copies, sample.at_ns, ops))
            {
                let pids: Vec<u32> = copies.iter().map(|p| p.pid).collect();
                let allocs: Vec<String> = copies
                    .iter()
                    .map(|p| format!("{} on {}", p.alloc_id, p.node))
                    .collect();
                return Verdict::Fail(format!(
                    "instance {instance} of job {job} ran twice (pids {pids:?}: {}) at {} ms, after the cluster settled",
                    allocs.join(", "),
                    sample.at_ns / 1_000_000
                ));
            }
        }
    }
    Verdict::Pass
}

/// Whether two or more copies of one instance and version seen at `at_ns`
/// are a drain's replacement starting while the drained copy stops: every
/// copy but the newest (by the Raft index in its allocation id) runs on a
/// node whose drain was answered at most [`DRAIN_OVERLAP_NS`] before, and
/// was placed before that drain, the newest after it. A drain whose
/// outcome is unknown counts (it may have been applied) when its index is
/// unknown too; then only the time bound holds.
fn drain_overlap(copies: &[&SeenProcess], at_ns: u64, ops: &[Op]) -> bool {
    let indexed: Option<Vec<(u64, &SeenProcess)>> = copies
        .iter()
        .map(|p| placed_at(&p.alloc_id).map(|index| (index, *p)))
        .collect();
    let Some(mut indexed) = indexed else {
        return false;
    };
    indexed.sort_by_key(|(index, _)| *index);
    let Some((newest, older)) = indexed.split_last() else {
        return false;
    };
    older.iter().all(|(index, copy)| {
        ops.iter().any(|op| {
            op.kind == OpKind::Drain
                && op.outcome != Outcome::Fail
                && op.key == copy.node
                && op.invoke_ns <= at_ns
                && at_ns <= op.complete_ns.saturating_add(DRAIN_OVERLAP_NS)
                && op
                    .version
                    .is_none_or(|drained| *index < drained && newest.0 > drained)
        })
    })
}

/// The Raft index of the plan that placed an allocation, from its id
/// (`JOB-INSTANCE-INDEX`).
fn placed_at(alloc_id: &str) -> Option<u64> {
    alloc_id.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::SeenProcess;

    fn seen(pid: u32, alloc: &str, instance: u32) -> SeenProcess {
        SeenProcess {
            pid,
            node: "n1".into(),
            alloc_id: alloc.into(),
            job: "web".into(),
            instance: Some(instance),
            mark: None,
            guest: None,
        }
    }

    fn sample(settled: bool, processes: Vec<SeenProcess>) -> Sample {
        Sample {
            at_ns: 1_000_000,
            settled,
            processes,
        }
    }

    #[test]
    fn one_copy_each_passes() {
        let samples = vec![
            sample(false, vec![seen(1, "a0", 0), seen(2, "a1", 1)]),
            // An orphan overlapping its replacement while unsettled is allowed.
            sample(false, vec![seen(1, "a0", 0), seen(3, "b0", 0)]),
            sample(true, vec![seen(3, "b0", 0), seen(2, "a1", 1)]),
        ];
        assert_eq!(check(&samples, &[]), Verdict::Pass);
    }

    #[test]
    fn a_moving_vm_may_have_a_paused_copy_but_never_two_running() {
        let vm = |pid: u32, guest: GuestSeen| SeenProcess {
            guest: Some(guest),
            ..seen(pid, "vm0", 0)
        };
        // Source running, target incoming (paused); then the other way
        // round; a copy not judged (no answer) beside a running one.
        for settled in [false, true] {
            for copies in [
                vec![vm(1, GuestSeen::Running), vm(2, GuestSeen::Paused)],
                vec![vm(1, GuestSeen::Paused), vm(2, GuestSeen::Running)],
                vec![vm(1, GuestSeen::Unknown), vm(2, GuestSeen::Running)],
            ] {
                assert_eq!(check(&[sample(settled, copies)], &[]), Verdict::Pass);
            }
        }
        let split = vec![sample(
            false,
            vec![vm(1, GuestSeen::Running), vm(2, GuestSeen::Running)],
        )];
        assert!(check(&split, &[]).is_fail());
    }

    #[test]
    fn two_answers_make_a_running_copy_only_when_both_say_so() {
        assert_eq!(GuestSeen::of(Some(true), Some(true)), GuestSeen::Running);
        // A source seen running, then paused by its move's last pass.
        assert_eq!(GuestSeen::of(Some(true), Some(false)), GuestSeen::Paused);
        assert_eq!(GuestSeen::of(None, Some(false)), GuestSeen::Paused);
        // A target resumed between the two questions.
        assert_eq!(GuestSeen::of(Some(false), Some(true)), GuestSeen::Paused);
        assert_eq!(GuestSeen::of(Some(true), None), GuestSeen::Unknown);
        assert_eq!(GuestSeen::of(None, None), GuestSeen::Unknown);
        assert!(GuestSeen::counts(None));
        assert!(GuestSeen::counts(Some(GuestSeen::Running)));
        assert!(!GuestSeen::counts(Some(GuestSeen::Paused)));
    }

    #[test]
    fn one_allocation_running_twice_fails() {
        let samples = vec![sample(false, vec![seen(1, "a0", 0), seen(2, "a0", 0)])];
        assert!(check(&samples, &[]).is_fail());
    }

    #[test]
    fn an_instance_running_twice_after_settling_fails() {
        let samples = vec![sample(true, vec![seen(1, "a0", 0), seen(2, "b0", 0)])];
        assert!(check(&samples, &[]).is_fail());
    }

    #[test]
    fn versions_may_overlap_in_an_update_but_one_version_may_not_run_twice() {
        let version = |mut p: SeenProcess, mark: &str| {
            p.mark = Some(mark.into());
            p
        };
        let update = vec![sample(
            true,
            vec![
                version(seen(1, "a0", 0), "v1"),
                version(seen(2, "b0", 0), "v2"),
            ],
        )];
        assert_eq!(check(&update, &[]), Verdict::Pass);
        let twice = vec![sample(
            true,
            vec![
                version(seen(1, "a0", 0), "v2"),
                version(seen(2, "b0", 0), "v2"),
            ],
        )];
        assert!(check(&twice, &[]).is_fail());
    }

    #[test]
    fn a_drains_replacement_may_overlap_the_drained_copy_briefly_and_nothing_else() {
        const MS: u64 = 1_000_000;
        let on = |pid: u32, alloc: &str, node: &str| SeenProcess {
            node: node.into(),
            ..seen(pid, alloc, 0)
        };
        let drain = |node: &str, outcome: Outcome, index: Option<u64>| Op {
            id: 1,
            process: 9,
            kind: OpKind::Drain,
            key: node.into(),
            value: None,
            expected: None,
            version: index,
            invoke_ns: 400 * MS,
            complete_ns: 500 * MS,
            outcome,
            error: None,
            member: None,
        };
        let at = |ms: u64, copies: Vec<SeenProcess>| Sample {
            at_ns: ms * MS,
            settled: true,
            processes: copies,
        };
        let drained = [drain("n1", Outcome::Ok, Some(15))];
        let overlap = || vec![on(1, "web-0-10", "n1"), on(2, "web-0-20", "n2")];
        // The drained node's copy, placed before the drain, beside the
        // replacement placed after it, a second after the drain's answer.
        assert_eq!(check(&[at(1_500, overlap())], &drained), Verdict::Pass);
        let unknown = [drain("n1", Outcome::Unknown, None)];
        assert_eq!(check(&[at(1_500, overlap())], &unknown), Verdict::Pass);
        // Not after the bound: a copy its agent failed to stop.
        let late = 500 + DRAIN_OVERLAP_NS / MS + 1;
        assert!(check(&[at(late, overlap())], &drained).is_fail());
        // Not before the drain was sent, nor for a failed drain.
        assert!(check(&[at(300, overlap())], &drained).is_fail());
        let failed = [drain("n1", Outcome::Fail, Some(15))];
        assert!(check(&[at(1_500, overlap())], &failed).is_fail());
        // Not when the older copy runs on a node that was not drained.
        let elsewhere = vec![on(1, "web-0-10", "n3"), on(2, "web-0-20", "n2")];
        assert!(check(&[at(1_500, elsewhere)], &drained).is_fail());
        // Not when both were placed before the drain, or both after it.
        let both_before = vec![on(1, "web-0-10", "n1"), on(2, "web-0-12", "n2")];
        assert!(check(&[at(1_500, both_before)], &drained).is_fail());
        let both_after = vec![on(1, "web-0-16", "n1"), on(2, "web-0-20", "n2")];
        assert!(check(&[at(1_500, both_after)], &drained).is_fail());
        // Not when an allocation id names no index.
        let unindexed = vec![on(1, "web-0-x", "n1"), on(2, "web-0-20", "n2")];
        assert!(check(&[at(1_500, unindexed)], &drained).is_fail());
    }
}
