//! Moves made with every coordinator away end well (the `balance-away`
//! scenario): judged from the agents' journals and the coordinators' list
//! read once the cluster converged ([`OfflineState`]) and the workload
//! samples taken through /proc.
//!
//! 1. **Every offline move reported and settled.** No agent's journal
//!    (`<data_dir>/balance-moves.json`) holds a move at the end: an entry
//!    closes only once the coordinators have decided on the move (accepted
//!    and their sets agree, or refused and the target gave way), so an
//!    open one is a move never reported, or reported and never settled
//!    (e.g. a source left paused in `switching`).
//! 2. **One copy, where the coordinators say, after reconciliation.** In
//!    the samples taken once every journal closed, each trainer the coordinators list
//!    runs as exactly one process, on the node they list it on, and no
//!    process of the job runs that they do not list (a copy that should
//!    have given way).
//! 3. **Nothing lost.** They list as many running trainers as the job
//!    asks for.
//!
//! A journal or a list that could not be read, or no settled sample, is
//! *undecided*, never a pass.

use std::collections::{BTreeMap, BTreeSet};

use super::Verdict;
use crate::away::OfflineState;
use crate::history::{History, Record};

/// The verdict on `history`; None when the run did not balance with the
/// coordinators away (no [`OfflineState`] was recorded).
pub fn check_history(history: &History) -> Option<Verdict> {
    let state = history.records.iter().find_map(|r| match r {
        Record::Offline(state) => Some(state),
        _ => None,
    })?;
    Some(check(state))
}

/// Judges `state`, its samples included.
pub fn check(state: &OfflineState) -> Verdict {
    for (node, open) in &state.journals {
        match open {
            None => {
                return Verdict::Unknown(format!(
                    "the balancing journal of {node} could not be read"
                ))
            }
            Some(open) if !open.is_empty() => {
                return Verdict::Fail(format!(
                    "{} offline move(s) of {node} never settled with the coordinators: {}",
                    open.len(),
                    open.join("; ")
                ))
            }
            Some(_) => {}
        }
    }
    let Some(trainers) = &state.trainers else {
        return Verdict::Unknown(format!(
            "the coordinators' list of {} could not be read",
            state.job
        ));
    };
    if trainers.len() != state.count as usize {
        return Verdict::Fail(format!(
            "the coordinators list {} running trainers of {}, not {}: {trainers:?}",
            trainers.len(),
            state.job,
            state.count
        ));
    }
    let listed: BTreeMap<&str, &str> = trainers
        .iter()
        .map(|t| (t.id.as_str(), t.node.as_str()))
        .collect();
    if state.samples.is_empty() {
        return Verdict::Unknown("no sample was taken after reconciliation".into());
    }
    for sample in &state.samples {
        let mut seen: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
        for p in sample.processes.iter().filter(|p| p.job == state.job) {
            seen.entry(p.alloc_id.as_str())
                .or_default()
                .push((p.node.as_str(), p.pid));
        }
        let at_ms = sample.at_ns / 1_000_000;
        for (alloc, node) in &listed {
            match seen.get(alloc).map(Vec::as_slice) {
                Some([(on, _)]) if on == node => {}
                Some(copies) => {
                    return Verdict::Fail(format!(
                        "trainer {alloc}, listed on {node}, ran as {copies:?} (node, pid) at {at_ms} ms, after reconciliation"
                    ))
                }
                None => {
                    return Verdict::Fail(format!(
                        "trainer {alloc}, listed on {node}, ran nowhere at {at_ms} ms, after reconciliation"
                    ))
                }
            }
        }
        let unlisted: BTreeSet<&str> = seen
            .keys()
            .copied()
            .filter(|a| !listed.contains_key(a))
            .collect();
        if !unlisted.is_empty() {
            return Verdict::Fail(format!(
                "trainers {unlisted:?} ran at {at_ms} ms though the coordinators list them nowhere: a copy that did not give way"
            ));
        }
    }
    Verdict::Pass
}

/// How many times a trainer of `job` was seen to change node in the
/// samples (a move completes when it runs alone on a new node): the
/// scenario's test asks for at least one, so that the checker judged real
/// offline moves.
pub fn moves_seen(history: &History, job: &str) -> usize {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut moves = 0;
    for sample in history.samples() {
        let mut nodes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in sample.processes.iter().filter(|p| p.job == job) {
            nodes
                .entry(p.alloc_id.as_str())
                .or_default()
                .insert(p.node.as_str());
        }
        for (alloc, on) in nodes {
            let [node] = on.into_iter().collect::<Vec<_>>()[..] else {
                continue;
            };
            match last.insert(alloc.to_string(), node.to_string()) {
                Some(before) if before != node => moves += 1,
                _ => {}
            }
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::away::ListedTrainer;
    use crate::history::{Sample, SeenProcess};

    fn trainer(pid: u32, alloc: &str, node: &str) -> SeenProcess {
        SeenProcess {
            pid,
            node: node.into(),
            alloc_id: alloc.into(),
            job: "away".into(),
            instance: Some(0),
            mark: None,
            guest: None,
        }
    }

    fn sample(at_ms: u64, settled: bool, processes: Vec<SeenProcess>) -> Sample {
        Sample {
            at_ns: at_ms * 1_000_000,
            settled,
            processes,
        }
    }

    fn state(journals: &[(&str, Option<Vec<String>>)], listed: &[(&str, &str)]) -> OfflineState {
        OfflineState {
            job: "away".into(),
            count: listed.len().max(1) as u32,
            journals: journals
                .iter()
                .map(|(n, j)| (n.to_string(), j.clone()))
                .collect(),
            trainers: Some(
                listed
                    .iter()
                    .map(|(id, node)| ListedTrainer {
                        id: id.to_string(),
                        node: node.to_string(),
                        generation: 2,
                    })
                    .collect(),
            ),
            samples: Vec::new(),
        }
    }

    fn judge(state: &OfflineState, samples: &[Sample]) -> Verdict {
        let mut state = state.clone();
        state.samples = samples.to_vec();
        check(&state)
    }

    #[test]
    fn a_move_settled_where_the_coordinators_say_passes() {
        let s = state(
            &[("n1", Some(vec![])), ("n2", Some(vec![]))],
            &[("a", "n2")],
        );
        let samples = vec![
            sample(1, true, vec![trainer(2, "a", "n2")]),
            sample(2, true, vec![trainer(2, "a", "n2")]),
        ];
        assert_eq!(judge(&s, &samples), Verdict::Pass);
    }

    #[test]
    fn an_open_journal_entry_fails() {
        let s = state(
            &[("n1", Some(vec![r#"{"phase":"switching"}"#.into()]))],
            &[("a", "n2")],
        );
        let samples = vec![sample(2, true, vec![trainer(2, "a", "n2")])];
        let verdict = judge(&s, &samples);
        assert!(verdict.is_fail(), "{verdict:?}");
        assert!(format!("{verdict:?}").contains("switching"));
    }

    #[test]
    fn two_copies_or_the_wrong_node_after_reconciliation_fail() {
        let s = state(&[("n1", Some(vec![]))], &[("a", "n2")]);
        let twice = vec![sample(
            2,
            true,
            vec![trainer(1, "a", "n1"), trainer(2, "a", "n2")],
        )];
        assert!(judge(&s, &twice).is_fail());
        let elsewhere = vec![sample(2, true, vec![trainer(1, "a", "n1")])];
        assert!(judge(&s, &elsewhere).is_fail());
        let lost = vec![sample(2, true, vec![])];
        assert!(judge(&s, &lost).is_fail());
        let stale = vec![sample(
            2,
            true,
            vec![trainer(2, "a", "n2"), trainer(3, "old", "n1")],
        )];
        assert!(judge(&s, &stale).is_fail());
    }

    #[test]
    fn a_trainer_missing_from_the_list_fails_and_unreadable_state_is_undecided() {
        let mut s = state(&[("n1", Some(vec![]))], &[("a", "n2")]);
        s.count = 2;
        let samples = vec![sample(2, true, vec![trainer(2, "a", "n2")])];
        assert!(judge(&s, &samples).is_fail());
        let unread = state(&[("n1", None)], &[("a", "n2")]);
        assert!(matches!(judge(&unread, &samples), Verdict::Unknown(_)));
        let unsampled = state(&[("n1", Some(vec![]))], &[("a", "n2")]);
        assert!(matches!(judge(&unsampled, &[]), Verdict::Unknown(_)));
    }

    #[test]
    fn moves_are_counted_when_a_trainer_runs_alone_on_a_new_node() {
        let history = History {
            records: vec![
                Record::Sample(sample(1, false, vec![trainer(1, "a", "n1")])),
                Record::Sample(sample(
                    2,
                    false,
                    vec![trainer(1, "a", "n1"), trainer(2, "a", "n2")],
                )),
                Record::Sample(sample(3, false, vec![trainer(2, "a", "n2")])),
                Record::Sample(sample(4, true, vec![trainer(2, "a", "n2")])),
            ],
        };
        assert_eq!(moves_seen(&history, "away"), 1);
        assert_eq!(moves_seen(&history, "other"), 0);
    }
}
