//! Drains are respected: no allocation is placed on a node between the
//! Raft index of its acknowledged drain and that of the acknowledged
//! command that made it eligible again.
//!
//! Both indexes come from the answers (`log_index`), placements from the
//! allocations listed at the end (`create_index`), so the check is exact:
//! no timing slack. A drain cycle in which an undrain attempt's outcome is
//! unknown is skipped, since that attempt may have ended the drain at an
//! index nobody saw. Allocations garbage-collected before the end are not
//! seen; the check can miss a violation that way but never invent one.

use super::Verdict;
use crate::history::{FinalAlloc, History, Op, OpKind, Outcome, Record};

/// Checks the history's drains against its final allocation list.
pub fn check_history(history: &History) -> Verdict {
    let allocs = history.records.iter().rev().find_map(|r| match r {
        Record::FinalAllocs { allocs } => Some(allocs.clone()),
        _ => None,
    });
    let ops: Vec<Op> = history.ops().cloned().collect();
    check(&ops, allocs.flatten().as_deref())
}

/// A node's drained span of log indexes: `(node, drained at, eligible at)`.
type Window = (String, u64, u64);

/// The drained spans the history proves, per the module's rules.
fn windows(ops: &[Op]) -> Vec<Window> {
    let mut ordered: Vec<&Op> = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Drain | OpKind::Undrain))
        .collect();
    ordered.sort_by_key(|o| o.invoke_ns);
    let mut found = Vec::new();
    for (i, drain) in ordered.iter().enumerate() {
        if drain.kind != OpKind::Drain || drain.outcome != Outcome::Ok {
            continue;
        }
        let Some(drained_at) = drain.version else {
            continue;
        };
        let mut end = Some(u64::MAX);
        for later in &ordered[i + 1..] {
            if later.key != drain.key || later.process != drain.process {
                continue;
            }
            if later.kind == OpKind::Drain {
                break;
            }
            match later.outcome {
                Outcome::Ok => {
                    end = later.version;
                    break;
                }
                Outcome::Unknown => {
                    end = None;
                    break;
                }
                Outcome::Fail => {}
            }
        }
        if let Some(end) = end {
            found.push((drain.key.clone(), drained_at, end));
        }
    }
    found
}

/// Checks `ops` against the allocations listed at the end (None: not read).
pub fn check(ops: &[Op], allocs: Option<&[FinalAlloc]>) -> Verdict {
    let windows = windows(ops);
    if windows.is_empty() {
        return Verdict::Pass;
    }
    let Some(allocs) = allocs else {
        return Verdict::Unknown("the final allocation list could not be read".into());
    };
    for (node, from, to) in &windows {
        if let Some(alloc) = allocs
            .iter()
            .find(|a| &a.node == node && a.create_index > *from && a.create_index < *to)
        {
            return Verdict::Fail(format!(
                "allocation {} of job {} was placed on node {node} at index {} while it was drained (drained at {from}, eligible again at {})",
                alloc.id,
                alloc.job,
                alloc.create_index,
                if *to == u64::MAX { "never".to_string() } else { to.to_string() }
            ));
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_op(id: u64, kind: OpKind, outcome: Outcome, index: Option<u64>, t: u64) -> Op {
        Op {
            id,
            process: 9,
            kind,
            key: "n1".into(),
            value: None,
            expected: None,
            version: index,
            invoke_ns: t,
            complete_ns: t + 1,
            outcome,
            error: None,
            member: None,
        }
    }

    fn alloc(node: &str, index: u64) -> FinalAlloc {
        FinalAlloc {
            id: format!("a{index}"),
            job: "j".into(),
            node: node.into(),
            create_index: index,
        }
    }

    fn cycle() -> Vec<Op> {
        vec![
            node_op(1, OpKind::Drain, Outcome::Ok, Some(10), 0),
            node_op(2, OpKind::Undrain, Outcome::Fail, None, 5),
            node_op(3, OpKind::Undrain, Outcome::Ok, Some(20), 9),
        ]
    }

    #[test]
    fn placements_outside_the_drain_pass() {
        let allocs = [alloc("n1", 5), alloc("n1", 25), alloc("n2", 15)];
        assert_eq!(check(&cycle(), Some(&allocs)), Verdict::Pass);
    }

    #[test]
    fn a_placement_on_a_drained_node_fails() {
        let allocs = [alloc("n1", 15)];
        let verdict = check(&cycle(), Some(&allocs));
        assert!(verdict.is_fail(), "{verdict:?}");
    }

    #[test]
    fn an_undrain_of_unknown_outcome_leaves_the_cycle_unchecked() {
        let mut ops = cycle();
        ops[1].outcome = Outcome::Unknown;
        assert_eq!(check(&ops, Some(&[alloc("n1", 15)])), Verdict::Pass);
        // Without the allocation list a provable window cannot be judged.
        assert!(matches!(check(&cycle(), None), Verdict::Unknown(_)));
    }
}
