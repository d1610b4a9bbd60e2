//! Never two running copies: in no sample may one allocation run as two
//! processes, and once the cluster has settled no job instance may either,
//! in one version of the job.
//!
//! While an agent is dead its workloads run on unsupervised and the
//! coordinator rightly starts replacements elsewhere, so two copies of an
//! *instance* can overlap until the agent returns and stops its stale one;
//! two copies of one *allocation* never may. An update starts the new
//! version's instance while the old one is being stopped (herd does not
//! order the two yet, as Nomad's destructive updates do not), so copies of
//! *different* versions may overlap briefly, settled or not.
//!
//! A simulated VM moving live has two copies of one allocation, the
//! source and the target's incoming one, and only one may run its guest:
//! a copy counts only when it said, twice, that its guest runs
//! ([`GuestSeen`]), so two copies that both run are the failure.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{GuestSeen, Sample};

/// Checks every sample.
pub fn check(samples: &[Sample]) -> Verdict {
    if samples.is_empty() {
        return Verdict::Pass;
    }
    for sample in samples {
        let mut by_alloc: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut by_instance: BTreeMap<(&str, u32, Option<&str>), Vec<u32>> = BTreeMap::new();
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
                    .push(p.pid);
            }
        }
        if let Some((alloc, pids)) = by_alloc.iter().find(|(_, pids)| pids.len() > 1) {
            return Verdict::Fail(format!(
                "allocation {alloc} ran as pids {pids:?} at {} ms",
                sample.at_ns / 1_000_000
            ));
        }
        if sample.settled {
            if let Some(((job, instance, _), pids)) =
                by_instance.iter().find(|(_, pids)| pids.len() > 1)
            {
                return Verdict::Fail(format!(
                    "instance {instance} of job {job} ran twice (pids {pids:?}) at {} ms, after the cluster settled",
                    sample.at_ns / 1_000_000
                ));
            }
        }
    }
    Verdict::Pass
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
        assert_eq!(check(&samples), Verdict::Pass);
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
                assert_eq!(check(&[sample(settled, copies)]), Verdict::Pass);
            }
        }
        let split = vec![sample(
            false,
            vec![vm(1, GuestSeen::Running), vm(2, GuestSeen::Running)],
        )];
        assert!(check(&split).is_fail());
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
        assert!(check(&samples).is_fail());
    }

    #[test]
    fn an_instance_running_twice_after_settling_fails() {
        let samples = vec![sample(true, vec![seen(1, "a0", 0), seen(2, "b0", 0)])];
        assert!(check(&samples).is_fail());
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
        assert_eq!(check(&update), Verdict::Pass);
        let twice = vec![sample(
            true,
            vec![
                version(seen(1, "a0", 0), "v2"),
                version(seen(2, "b0", 0), "v2"),
            ],
        )];
        assert!(check(&twice).is_fail());
    }
}
