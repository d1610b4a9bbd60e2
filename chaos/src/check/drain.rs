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
//! An allocation a migration moved (generation above 1) is judged on the
//! node it was placed on: the source of its first migration, where the
//! history still holds that migration; else it is left out, on the same
//! rule.

use super::Verdict;
use crate::history::{FinalAlloc, History, Op, OpKind, Outcome, Record, SeenMigration};

/// Checks the history's drains against its final allocation list.
pub fn check_history(history: &History) -> Verdict {
    let allocs = history.records.iter().rev().find_map(|r| match r {
        Record::FinalAllocs { allocs } => Some(allocs.clone()),
        _ => None,
    });
    let ops: Vec<Op> = history.ops().cloned().collect();
    let placed = allocs.flatten().map(|list| placed(history, list));
    check(&ops, placed.as_deref())
}

/// `allocs` on the nodes they were placed on: a moved one (generation
/// above 1) on the source of its first migration, or left out when the
/// history no longer holds it.
fn placed(history: &History, allocs: Vec<FinalAlloc>) -> Vec<FinalAlloc> {
    let migrations: Vec<&SeenMigration> = history
        .migrations()
        .filter_map(|a| a.last.as_ref())
        .chain(history.records.iter().flat_map(|r| match r {
            Record::FinalMigrations(f) => f.migrations.iter().flatten().collect(),
            _ => Vec::new(),
        }))
        .collect();
    allocs
        .into_iter()
        .filter_map(|mut alloc| {
            if alloc.generation.unwrap_or(1) <= 1 {
                return Some(alloc);
            }
            let first = migrations
                .iter()
                .find(|m| m.alloc_id == alloc.id && m.from_generation == 1)?;
            alloc.node = first.source.clone();
            Some(alloc)
        })
        .collect()
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
            generation: None,
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

    #[test]
    fn a_moved_allocation_is_judged_where_it_was_placed() {
        use crate::history::{FinalMigrationState, SeenMigration};
        // Placed on n2 at index 15 (n1 drained), moved to n1 later.
        let mut moved = alloc("n1", 15);
        moved.generation = Some(2);
        let migration = SeenMigration {
            id: "mig-30".into(),
            alloc_id: moved.id.clone(),
            kind: "dljob".into(),
            source: "n2".into(),
            target: "n1".into(),
            phase: "completed".into(),
            phase_deadline_ms: 0,
            started_at_ms: 0,
            ended_at_ms: Some(1),
            from_generation: 1,
            create_index: 30,
            bytes: 0,
            downtime_ms: None,
            error: None,
        };
        let mut records: Vec<Record> = cycle().into_iter().map(Record::Op).collect();
        records.push(Record::FinalAllocs {
            allocs: Some(vec![moved.clone()]),
        });
        let without = History {
            records: records.clone(),
        };
        // Its first move unknown: left out rather than judged on n1.
        assert_eq!(check_history(&without), Verdict::Pass);
        records.push(Record::FinalMigrations(FinalMigrationState {
            migrations: Some(vec![migration.clone()]),
            allocs: None,
            nodes: None,
        }));
        assert_eq!(
            check_history(&History {
                records: records.clone()
            }),
            Verdict::Pass
        );
        // Had it been placed on n1, the drained node, it fails.
        let mut from_n1 = migration;
        from_n1.source = "n1".into();
        from_n1.target = "n2".into();
        records.pop();
        records.push(Record::FinalMigrations(FinalMigrationState {
            migrations: Some(vec![from_n1]),
            allocs: None,
            nodes: None,
        }));
        assert!(check_history(&History { records }).is_fail());
    }
}
