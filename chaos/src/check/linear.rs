//! Linearizability of per-key registers with compare-and-set.
//!
//! The search is Wing and Gong's, with Lowe's memoisation of (set of
//! linearized operations, register state) as in Knossos and Porcupine: walk
//! the invocation/response entries in time order, linearize any pending
//! operation whose effect the model allows, backtrack when a response is
//! reached whose operation is not yet linearized. Keys are independent
//! registers, so each is checked alone (P-compositionality).
//!
//! Operations with an unknown outcome may take effect at any point after
//! they were invoked, or never: their response is placed at infinity and the
//! model accepts them in any state. Failed operations did not happen and are
//! left out, except a refused CAS, which still tells the version it saw.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Verdict;
use crate::history::{Op, OpKind, Outcome};

/// Register state: interned value (None: absent) and version (0: absent).
type State = (Option<u32>, u64);

/// One operation as the model sees it.
#[derive(Debug, Clone)]
enum Step {
    /// Acknowledged write that produced `version`.
    Write { value: u32, version: u64 },
    /// Write or CAS with an unknown outcome: applies if it can.
    MaybeWrite { value: u32, expected: Option<u64> },
    /// Acknowledged CAS.
    Cas {
        value: u32,
        expected: u64,
        version: u64,
    },
    /// Refused CAS that saw `actual`.
    CasRefused { expected: u64, actual: u64 },
    /// Acknowledged read.
    Read { value: Option<u32>, version: u64 },
}

impl Step {
    fn apply(&self, state: State) -> Option<State> {
        let (_, current) = state;
        match *self {
            Step::Write { value, version } => {
                (current + 1 == version).then_some((Some(value), version))
            }
            Step::MaybeWrite { value, expected } => match expected {
                Some(e) if e != current => Some(state),
                _ => Some((Some(value), current + 1)),
            },
            Step::Cas {
                value,
                expected,
                version,
            } => (current == expected && version == expected + 1).then_some((Some(value), version)),
            Step::CasRefused { expected, actual } => {
                (current != expected && current == actual).then_some(state)
            }
            Step::Read { value, version } => (state == (value, version)).then_some(state),
        }
    }
}

/// An entry of the time-ordered list the search walks.
#[derive(Debug, Clone)]
struct Entry {
    op: usize,
    call: bool,
    /// For a call: its response entry.
    matching: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// Checks every key's register history; `budget` bounds the search steps per key.
pub fn check_registers(ops: &[Op], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if matches!(op.kind, OpKind::Write | OpKind::Cas | OpKind::Read) {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    Verdict::all(
        by_key
            .into_iter()
            .map(|(key, ops)| check_key(key, &ops, budget)),
    )
}

/// Turns a client operation into a model step (None: it did not happen).
/// Err: an acknowledged operation lacks what the model needs to place it
/// (its version, value or expected version), which no correct history
/// does: dropping it would let a stale answer pass unjudged.
fn to_step(op: &Op, intern: &mut HashMap<String, u32>) -> Result<Option<Step>, String> {
    let mut id = |v: &Option<String>| {
        v.as_ref().map(|v| {
            let next = intern.len() as u32;
            *intern.entry(v.clone()).or_insert(next)
        })
    };
    let missing = |what: &str| {
        format!(
            "{} carries no {what}, so it cannot be judged (a harness or server bug)",
            describe(op)
        )
    };
    let version = || op.version.ok_or_else(|| missing("version"));
    let expected = || op.expected.ok_or_else(|| missing("expected version"));
    let step = match (op.kind, op.outcome) {
        (OpKind::Read, Outcome::Ok) => Step::Read {
            value: id(&op.value),
            version: version()?,
        },
        (OpKind::Read, _) | (OpKind::Write, Outcome::Fail) => return Ok(None),
        (OpKind::Write, Outcome::Ok) => Step::Write {
            value: id(&op.value).ok_or_else(|| missing("value"))?,
            version: version()?,
        },
        (OpKind::Cas, Outcome::Ok) => Step::Cas {
            value: id(&op.value).ok_or_else(|| missing("value"))?,
            expected: expected()?,
            version: version()?,
        },
        // Refused without an answer (bad input, never sent): it saw nothing.
        (OpKind::Cas, Outcome::Fail) if op.version.is_none() => return Ok(None),
        (OpKind::Cas, Outcome::Fail) => Step::CasRefused {
            expected: expected()?,
            actual: version()?,
        },
        (OpKind::Write | OpKind::Cas, Outcome::Unknown) => Step::MaybeWrite {
            value: id(&op.value).ok_or_else(|| missing("value"))?,
            expected: if op.kind == OpKind::Cas {
                Some(expected()?)
            } else {
                None
            },
        },
        _ => return Ok(None),
    };
    Ok(Some(step))
}

fn describe(op: &Op) -> String {
    format!(
        "op {} by client {}{}: {:?} value={:?} expected={:?} version={:?} outcome={:?} [{}..{} ns]",
        op.id,
        op.process,
        op.via(),
        op.kind,
        op.value,
        op.expected,
        op.version,
        op.outcome,
        op.invoke_ns,
        op.complete_ns
    )
}

fn check_key(key: &str, ops: &[&Op], budget: u64) -> Verdict {
    let mut intern = HashMap::new();
    let mut kept: Vec<(&Op, Step)> = Vec::new();
    for op in ops {
        match to_step(op, &mut intern) {
            Ok(Some(step)) => kept.push((op, step)),
            Ok(None) => {}
            Err(why) => return Verdict::Fail(format!("key {key:?}: {why}")),
        }
    }
    let kept = without_unobserved_unknown_writes(kept);
    if kept.is_empty() {
        return Verdict::Pass;
    }
    // Time-ordered entries; at equal times calls first (the permissive order).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(kept.len() * 2);
    for (i, (op, _)) in kept.iter().enumerate() {
        let end = if op.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            op.complete_ns
        };
        events.push((op.invoke_ns, true, i));
        events.push((end, false, i));
    }
    events.sort_by_key(|&(t, call, i)| (t, !call, i));
    // Entry 0 is the head sentinel.
    let mut entries = vec![Entry {
        op: NIL,
        call: false,
        matching: NIL,
        prev: NIL,
        next: 1,
    }];
    let mut response_of = vec![NIL; kept.len()];
    for (n, &(_, call, op)) in events.iter().enumerate() {
        let index = n + 1;
        entries.push(Entry {
            op,
            call,
            matching: NIL,
            prev: index - 1,
            next: if n + 1 == events.len() {
                NIL
            } else {
                index + 1
            },
        });
        if !call {
            response_of[op] = index;
        }
    }
    for entry in entries.iter_mut().skip(1) {
        if entry.call {
            entry.matching = response_of[entry.op];
        }
    }

    let words = kept.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: State = (None, 0);
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut deepest = (0usize, NIL);
    let mut steps = 0u64;
    let mut entry = entries[0].next;
    while entries[0].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown(format!(
                "key {key:?}: search bound of {budget} steps hit ({} operations)",
                kept.len()
            ));
        }
        if entry == NIL {
            // Cannot happen: the list always ends with a response.
            return Verdict::Unknown(format!("key {key:?}: search ran off the list"));
        }
        let e = entries[entry].clone();
        if e.call {
            if let Some(next_state) = kept[e.op].1.apply(state) {
                let mut next_lin = linearized.clone();
                next_lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((next_lin.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = next_lin;
                    lift(&mut entries, entry);
                    entry = entries[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), e.op);
            }
            let Some((call, previous)) = stack.pop() else {
                let stuck = if deepest.1 == NIL { e.op } else { deepest.1 };
                return Verdict::Fail(format!(
                    "key {key:?} is not linearizable: after {} operations no order explains {}",
                    deepest.0,
                    describe(kept[stuck].0)
                ));
            };
            state = previous;
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut entries, call);
            entry = entries[call].next;
        }
    }
    Verdict::Pass
}

/// Leaves out writes of unknown outcome whose value no read returned, when
/// every version up to the highest seen has a known writer: such a write
/// can only have taken effect after everything that saw a version (its
/// version would otherwise belong to two writes), where nothing observes
/// it, so any order with it gives one without it and the other way round.
/// Partitions leave hundreds of such writes, each of which the search
/// would otherwise try at every point; without them it finishes.
fn without_unobserved_unknown_writes(kept: Vec<(&Op, Step)>) -> Vec<(&Op, Step)> {
    let mut observed: HashSet<u32> = HashSet::new();
    let mut claimed: HashSet<u64> = HashSet::new();
    let mut highest = 0;
    for (_, step) in &kept {
        match *step {
            Step::Write { version, .. } | Step::Cas { version, .. } => {
                claimed.insert(version);
                highest = highest.max(version);
            }
            Step::Read { value, version } => {
                if let Some(value) = value {
                    observed.insert(value);
                    claimed.insert(version);
                }
                highest = highest.max(version);
            }
            Step::CasRefused { actual, .. } => highest = highest.max(actual),
            Step::MaybeWrite { .. } => {}
        }
    }
    if (1..=highest).any(|v| !claimed.contains(&v)) {
        // A version gap: an unobserved write may be what filled it.
        return kept;
    }
    kept.into_iter()
        .filter(|(_, step)| match step {
            Step::MaybeWrite { value, .. } => observed.contains(value),
            _ => true,
        })
        .collect()
}

/// Takes a call and its response out of the list.
fn lift(entries: &mut [Entry], call: usize) {
    for index in [call, entries[call].matching] {
        let (prev, next) = (entries[index].prev, entries[index].next);
        entries[prev].next = next;
        if next != NIL {
            entries[next].prev = prev;
        }
    }
}

/// Puts back what [`lift`] took out (in reverse order).
fn unlift(entries: &mut [Entry], call: usize) {
    for index in [entries[call].matching, call] {
        let (prev, next) = (entries[index].prev, entries[index].next);
        entries[prev].next = index;
        if next != NIL {
            entries[next].prev = index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::op;

    fn cas(id: u64, value: &str, expected: u64, version: u64, ok: bool, t: (u64, u64)) -> Op {
        Op {
            expected: Some(expected),
            outcome: if ok { Outcome::Ok } else { Outcome::Fail },
            ..op(id, OpKind::Cas, Some(value), Some(version), t)
        }
    }

    const BUDGET: u64 = 1_000_000;

    #[test]
    fn sequential_writes_and_reads_pass() {
        let ops = vec![
            op(1, OpKind::Read, None, Some(0), (0, 1)),
            op(2, OpKind::Write, Some("a"), Some(1), (2, 3)),
            op(3, OpKind::Read, Some("a"), Some(1), (4, 5)),
            cas(4, "b", 1, 2, true, (6, 7)),
            cas(5, "c", 1, 2, false, (8, 9)),
            op(6, OpKind::Read, Some("b"), Some(2), (10, 11)),
        ];
        assert_eq!(check_registers(&ops, BUDGET), Verdict::Pass);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: old or new value are both fine.
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 10)),
            op(2, OpKind::Read, None, Some(0), (1, 9)),
            op(3, OpKind::Write, Some("b"), Some(2), (2, 20)),
            op(4, OpKind::Read, Some("a"), Some(1), (12, 13)),
        ];
        assert_eq!(check_registers(&ops, BUDGET), Verdict::Pass);
    }

    #[test]
    fn a_stale_read_fails() {
        // "b" was acknowledged before the read began, yet the read saw "a".
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 1)),
            op(2, OpKind::Write, Some("b"), Some(2), (2, 3)),
            op(3, OpKind::Read, Some("a"), Some(1), (4, 5)),
        ];
        let verdict = check_registers(&ops, BUDGET);
        assert!(verdict.is_fail(), "{verdict:?}");
    }

    #[test]
    fn a_lost_write_fails() {
        // An acknowledged write later vanished: the read sees the state before it.
        let ops = vec![
            cas(1, "a", 0, 1, true, (0, 1)),
            cas(2, "b", 1, 2, true, (2, 3)),
            op(3, OpKind::Read, Some("a"), Some(1), (10, 11)),
        ];
        assert!(check_registers(&ops, BUDGET).is_fail());
        // Or a later CAS is told the version is still the old one.
        let ops = vec![
            cas(1, "a", 0, 1, true, (0, 1)),
            cas(2, "b", 1, 2, true, (2, 3)),
            cas(3, "c", 2, 1, false, (4, 5)),
        ];
        assert!(check_registers(&ops, BUDGET).is_fail());
    }

    #[test]
    fn a_write_applied_twice_fails() {
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 1)),
            op(2, OpKind::Read, Some("a"), Some(2), (2, 3)),
        ];
        assert!(check_registers(&ops, BUDGET).is_fail());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let mut maybe = op(2, OpKind::Write, Some("b"), None, (2, 3));
        maybe.outcome = Outcome::Unknown;
        let mut never = op(4, OpKind::Write, Some("c"), None, (6, 7));
        never.outcome = Outcome::Unknown;
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 1)),
            maybe,
            // It took effect, but long after it was invoked.
            op(3, OpKind::Read, Some("a"), Some(1), (4, 5)),
            op(5, OpKind::Read, Some("b"), Some(2), (8, 9)),
            never,
            op(6, OpKind::Read, Some("b"), Some(2), (10, 11)),
        ];
        assert_eq!(check_registers(&ops, BUDGET), Verdict::Pass);
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
        let mut late = op(2, OpKind::Write, Some("b"), None, (10, 11));
        late.outcome = Outcome::Unknown;
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 1)),
            op(3, OpKind::Read, Some("b"), Some(2), (4, 5)),
            late,
        ];
        assert!(check_registers(&ops, BUDGET).is_fail());
    }

    #[test]
    fn an_acknowledged_operation_without_a_version_fails_and_names_its_member() {
        // Dropping it would let this stale read pass unjudged.
        let mut read = op(2, OpKind::Read, Some("a"), None, (4, 5));
        read.member = Some(3);
        let ops = vec![op(1, OpKind::Write, Some("a"), Some(1), (0, 1)), read];
        let verdict = check_registers(&ops, BUDGET);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains("no version") && why.contains("via member 3")),
            "{verdict:?}"
        );
        let unversioned_write = vec![op(1, OpKind::Write, Some("a"), None, (0, 1))];
        assert!(check_registers(&unversioned_write, BUDGET).is_fail());
        let mut unversioned_cas = cas(1, "a", 0, 1, true, (0, 1));
        unversioned_cas.version = None;
        assert!(check_registers(&[unversioned_cas], BUDGET).is_fail());
    }

    #[test]
    fn a_stale_read_is_traced_to_the_member_that_served_it() {
        let mut stale = op(3, OpKind::Read, Some("a"), Some(1), (4, 5));
        stale.member = Some(2);
        let ops = vec![
            op(1, OpKind::Write, Some("a"), Some(1), (0, 1)),
            op(2, OpKind::Write, Some("b"), Some(2), (2, 3)),
            stale,
        ];
        let verdict = check_registers(&ops, BUDGET);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains("via member 2")),
            "{verdict:?}"
        );
    }

    #[test]
    fn unobserved_unknown_writes_do_not_exhaust_the_search() {
        // Sixty writes of unknown outcome nobody saw (a partition's worth)
        // around a history with every version accounted for: decided at
        // once, where trying each of them everywhere would not finish.
        let mut ops: Vec<Op> = (0..60)
            .map(|i| {
                let mut o = op(
                    100 + i,
                    OpKind::Write,
                    Some(&format!("lost{i}")),
                    None,
                    (i, i + 1),
                );
                o.outcome = Outcome::Unknown;
                o
            })
            .collect();
        ops.push(op(1, OpKind::Write, Some("a"), Some(1), (10, 70)));
        ops.push(op(2, OpKind::Read, Some("a"), Some(1), (80, 81)));
        assert_eq!(check_registers(&ops, 10_000), Verdict::Pass);
        // A stale read among them is still caught.
        ops.push(op(3, OpKind::Write, Some("b"), Some(2), (90, 91)));
        ops.push(op(4, OpKind::Read, Some("a"), Some(1), (95, 96)));
        assert!(check_registers(&ops, 10_000).is_fail());
        // With a version gap they stay: one of them may have filled it.
        let mut gap: Vec<Op> = ops[..60].to_vec();
        gap.push(op(1, OpKind::Write, Some("a"), Some(1), (10, 70)));
        gap.push(op(2, OpKind::Read, Some("z"), Some(3), (80, 81)));
        let mut z = op(5, OpKind::Write, Some("z"), None, (75, 76));
        z.outcome = Outcome::Unknown;
        gap.push(z);
        let verdict = check_registers(&gap, 1_000_000);
        assert!(!verdict.is_fail(), "{verdict:?}");
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = op(3, OpKind::Read, None, Some(0), (4, 5));
        other.key = "y".into();
        let ops = vec![op(1, OpKind::Write, Some("a"), Some(1), (0, 1)), other];
        assert_eq!(check_registers(&ops, BUDGET), Verdict::Pass);
    }

    #[test]
    fn hitting_the_bound_is_unknown_never_a_pass() {
        // Many overlapping unknown writes and a read that none explains.
        let mut ops: Vec<Op> = (0..40)
            .map(|i| {
                let mut o = op(i, OpKind::Write, Some(&format!("v{i}")), None, (i, i + 1));
                o.outcome = Outcome::Unknown;
                o
            })
            .collect();
        ops.push(op(100, OpKind::Read, Some("nowhere"), Some(3), (50, 51)));
        let verdict = check_registers(&ops, 500);
        assert!(matches!(verdict, Verdict::Unknown(_)), "{verdict:?}");
    }
}
