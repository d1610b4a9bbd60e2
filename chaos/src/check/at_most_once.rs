//! At most one copy: two copies of one instance of a job that set
//! `stop_after_disconnect` never run at once, faults or not.
//!
//! The promise has two halves. A node cut off from every coordinator stops
//! such a job before the node TTL runs out and its replacement is placed;
//! and herd's own moves (drains, updates, a node declared lost) hand a
//! replacement to its node only once the copy it replaces has ended. Both
//! need the node's agent: while an agent is killed or paused its workloads
//! run on and nothing can stop them (true of Nomad and every cluster
//! manager whose agent does the stopping), so a copy on such a node is
//! excused from the fault until [`AGENT_RETURN_GRACE`] after its heal,
//! time for the agent to start, hear the coordinators and stop it.
//!
//! The samples are 250 ms apart, so an overlap shorter than that may slip
//! between two; one that lasts longer cannot.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{FaultWindow, History, OpKind, Outcome, Sample};

/// How long after an agent fault heals its node's copies stay excused: a
/// killed agent must start again (a debug build, in a container, on a
/// loaded machine in CI), register, hear its assignments and stop what
/// was placed elsewhere. Stale copies that outlive this also keep the
/// cluster from being judged whole, so convergence fails as well.
pub const AGENT_RETURN_GRACE_NS: u64 = 10_000_000_000;

/// Checks `job` in `history`, if the run submitted it (else `None`).
pub fn check_history(history: &History, job: &str) -> Option<Verdict> {
    let submitted = history
        .ops()
        .any(|op| op.kind == OpKind::Submit && op.key == job && op.outcome == Outcome::Ok);
    if !submitted {
        return None;
    }
    let samples: Vec<&Sample> = history.samples().collect();
    let faults: Vec<&FaultWindow> = history.faults().collect();
    Some(check(job, &samples, &faults))
}

/// Checks every sample for two unexcused copies of one instance of `job`.
pub fn check(job: &str, samples: &[&Sample], faults: &[&FaultWindow]) -> Verdict {
    let mut seen = false;
    for sample in samples {
        let mut by_instance: BTreeMap<u32, Vec<(u32, &str)>> = BTreeMap::new();
        for p in sample.processes.iter().filter(|p| p.job == job) {
            seen = true;
            if let Some(instance) = p.instance {
                if !excused(&p.node, sample.at_ns, faults) {
                    by_instance
                        .entry(instance)
                        .or_default()
                        .push((p.pid, &p.node));
                }
            }
        }
        if let Some((instance, copies)) = by_instance.iter().find(|(_, c)| c.len() > 1) {
            return Verdict::Fail(format!(
                "instance {instance} of {job} (stop_after_disconnect set) ran as {copies:?} \
                 (pid, node) at {} ms",
                sample.at_ns / 1_000_000
            ));
        }
    }
    if seen {
        Verdict::Pass
    } else {
        Verdict::Unknown(format!("no sample saw {job} running"))
    }
}

/// Whether a copy on `node` at `at_ns` ran while its agent was down.
fn excused(node: &str, at_ns: u64, faults: &[&FaultWindow]) -> bool {
    faults.iter().any(|f| {
        f.unsupervised_node.as_deref() == Some(node)
            && at_ns >= f.start_ns
            && f.end_ns
                .is_none_or(|end| at_ns <= end.saturating_add(AGENT_RETURN_GRACE_NS))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::SeenProcess;

    const JOB: &str = "careful";

    fn copy(pid: u32, node: &str, instance: u32) -> SeenProcess {
        SeenProcess {
            pid,
            node: node.into(),
            alloc_id: format!("a{pid}"),
            job: JOB.into(),
            instance: Some(instance),
            mark: None,
            guest: None,
        }
    }

    fn at(ms: u64, processes: Vec<SeenProcess>) -> Sample {
        Sample {
            at_ns: ms * 1_000_000,
            settled: false,
            processes,
        }
    }

    fn agent_paused(node: &str, from_ms: u64, to_ms: u64) -> FaultWindow {
        FaultWindow {
            what: format!("pause agent {node}"),
            start_ns: from_ms * 1_000_000,
            end_ns: Some(to_ms * 1_000_000),
            recovered_after_ns: None,
            lost_node: Some(node.into()),
            unsupervised_node: Some(node.into()),
            new_leader_after_ns: None,
        }
    }

    fn verdict(samples: &[Sample], faults: &[FaultWindow]) -> Verdict {
        let samples: Vec<&Sample> = samples.iter().collect();
        let faults: Vec<&FaultWindow> = faults.iter().collect();
        check(JOB, &samples, &faults)
    }

    #[test]
    fn a_replacement_after_the_old_copy_ended_passes() {
        let samples = [
            at(0, vec![copy(1, "n1", 0), copy(2, "n2", 1)]),
            at(250, vec![copy(2, "n2", 1)]),
            at(500, vec![copy(3, "n2", 0), copy(2, "n2", 1)]),
        ];
        assert_eq!(verdict(&samples, &[]), Verdict::Pass);
    }

    #[test]
    fn two_copies_of_one_instance_at_once_fail_even_while_unsettled() {
        let samples = [at(250, vec![copy(1, "n1", 0), copy(3, "n2", 0)])];
        let v = verdict(&samples, &[]);
        assert!(v.is_fail(), "{v:?}");
    }

    #[test]
    fn a_copy_whose_agent_is_down_is_excused_until_the_grace_after_the_heal() {
        let fault = agent_paused("n1", 1_000, 8_000);
        let overlap = |ms| at(ms, vec![copy(1, "n1", 0), copy(3, "n2", 0)]);
        assert_eq!(
            verdict(&[overlap(4_000)], std::slice::from_ref(&fault)),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&[overlap(17_000)], std::slice::from_ref(&fault)),
            Verdict::Pass
        );
        // Past the grace the agent should have stopped it.
        assert!(verdict(&[overlap(18_500)], std::slice::from_ref(&fault)).is_fail());
        // Before the fault there was no excuse.
        assert!(verdict(&[overlap(500)], std::slice::from_ref(&fault)).is_fail());
        // A fault on another node excuses nothing here.
        assert!(verdict(&[overlap(4_000)], &[agent_paused("n3", 1_000, 8_000)]).is_fail());
        // A cut-off node is not excused: its agent runs and must stop the copy.
        let cut_off = FaultWindow {
            unsupervised_node: None,
            ..fault
        };
        assert!(verdict(&[overlap(4_000)], &[cut_off]).is_fail());
    }

    #[test]
    fn a_run_that_never_saw_the_job_cannot_pass() {
        let samples = [at(0, vec![])];
        assert!(matches!(verdict(&samples, &[]), Verdict::Unknown(_)));
    }

    #[test]
    fn a_history_without_the_job_is_not_checked() {
        assert_eq!(check_history(&History::default(), JOB), None);
    }
}
