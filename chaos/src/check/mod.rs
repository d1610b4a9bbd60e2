//! Checkers: each reads a [`History`](crate::history::History) and returns a
//! [`Verdict`]. A checker that cannot decide says [`Verdict::Unknown`] rather
//! than passing: a chaos run must never claim a correctness it did not show.

pub mod at_most_once;
pub mod converge;
pub mod double_run;
pub mod drain;
pub mod jobs;
pub mod leaks;
pub mod linear;
pub mod migrations;
pub mod offline_moves;
pub mod power;
pub mod version_order;

use serde::Serialize;

use crate::history::History;

/// A checker's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "lowercase")]
pub enum Verdict {
    /// The property held.
    Pass,
    /// The property was violated; says how.
    Fail(String),
    /// The checker could not decide (bound hit, data missing); says why.
    Unknown(String),
}

impl Verdict {
    /// Whether this is [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// Whether this is [`Verdict::Fail`].
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }

    /// The word a report prints.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::Unknown(_) => "UNDECIDED",
        }
    }

    /// Folds several verdicts: any failure fails, else any unknown is unknown.
    pub fn all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut unknown = None;
        for verdict in verdicts {
            match verdict {
                Verdict::Pass => {}
                Verdict::Fail(why) => return Verdict::Fail(why),
                Verdict::Unknown(why) => {
                    unknown.get_or_insert(why);
                }
            }
        }
        unknown.map_or(Verdict::Pass, Verdict::Unknown)
    }
}

/// Which properties a run checks, with their bounds.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Search steps the linearizability checker may take per key.
    pub linear_step_budget: u64,
    /// Whether the scenario ran jobs (else the job checkers are skipped).
    pub jobs: bool,
    /// Whether the run started real processes that could leak (the
    /// simulation's workloads are not processes).
    pub processes: bool,
}

/// Both register checkers folded: a failure of either fails (the two
/// disagreeing is a bug in one of them, worth a failed run). Either one's
/// pass decides: the exhaustive search is exact, and so is the version
/// order wherever it decides (see `version_order`'s module documentation
/// and its property tests). Only where neither decides (values written
/// twice, and the search out of steps) is the verdict *undecided*, never
/// a pass.
pub fn registers(ops: &[crate::history::Op], budget: u64) -> Verdict {
    let by_order = version_order::check_registers(ops);
    let by_search = linear::check_registers(ops, budget);
    fold_registers(by_order, by_search)
}

/// [`registers`]' rule for the two verdicts, on its own for its tests.
fn fold_registers(by_order: Verdict, by_search: Verdict) -> Verdict {
    match (by_order, by_search) {
        (Verdict::Fail(why), _) | (_, Verdict::Fail(why)) => Verdict::Fail(why),
        (Verdict::Pass, _) | (_, Verdict::Pass) => Verdict::Pass,
        (Verdict::Unknown(order), Verdict::Unknown(search)) => Verdict::Unknown(format!(
            "undecided: version order: {order}; exhaustive search: {search}"
        )),
    }
}

/// Every checker's verdict on `history`, named.
pub fn check_all(history: &History, config: &CheckConfig) -> Vec<(&'static str, Verdict)> {
    let ops: Vec<_> = history.ops().cloned().collect();
    let mut verdicts = vec![(
        "linearizable registers",
        registers(&ops, config.linear_step_budget),
    )];
    if config.jobs {
        verdicts.push(("no acknowledged job lost", jobs::check_history(history)));
        verdicts.push((
            "linearizable job versions",
            registers(&jobs::as_registers(&ops), config.linear_step_budget),
        ));
        verdicts.push(("drains respected", drain::check_history(history)));
        let samples: Vec<_> = history.samples().cloned().collect();
        verdicts.push(("no double run", double_run::check(&samples, &ops)));
        if let Some(verdict) = at_most_once::check_history(history, crate::runner::CAREFUL_JOB) {
            verdicts.push(("at most one copy", verdict));
        }
    }
    if let Some(verdict) = migrations::check_history(history) {
        verdicts.push(("migrations end, one copy", verdict));
    }
    if let Some(verdict) = offline_moves::check_history(history) {
        verdicts.push(("offline moves reported, one copy", verdict));
    }
    if let Some(verdict) = power::check_history(history) {
        verdicts.push(("power under hard budget", verdict));
    }
    verdicts.push(("converged within bound", converge::check_history(history)));
    if config.processes {
        verdicts.push(("no leaked processes", leaks::check_history(history)));
    }
    verdicts
}

/// Histories for the checkers' tests.
#[cfg(test)]
pub(crate) mod testkit {
    use crate::history::{Op, OpKind, Outcome};

    /// An acknowledged operation of process `id` on key `x`, invoked and
    /// completed at `t` (ns).
    pub fn op(
        id: u64,
        kind: OpKind,
        value: Option<&str>,
        version: Option<u64>,
        t: (u64, u64),
    ) -> Op {
        Op {
            id,
            process: id,
            kind,
            key: "x".into(),
            value: value.map(str::to_string),
            expected: None,
            version,
            invoke_ns: t.0,
            complete_ns: t.1,
            outcome: Outcome::Ok,
            error: None,
            member: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::op;
    use crate::history::{OpKind, Outcome};

    #[test]
    fn the_version_order_decides_where_the_search_runs_out() {
        // Valid, but with enough overlapping unknown writes that a search
        // of 50 steps cannot finish; the version order passes it.
        let mut ops: Vec<_> = (0..12)
            .map(|i| {
                let mut o = op(i, OpKind::Write, Some(&format!("v{i}")), None, (i, i + 1));
                o.outcome = Outcome::Unknown;
                o
            })
            .collect();
        // Version 1 unseen: any of the others may have made it, so the
        // search must try them.
        ops.push(op(100, OpKind::Read, Some("v3"), Some(2), (50, 51)));
        assert!(matches!(
            linear::check_registers(&ops, 50),
            Verdict::Unknown(_)
        ));
        assert_eq!(registers(&ops, 50), Verdict::Pass);
        // A stale read after it fails, whatever the search's budget.
        ops.push(op(101, OpKind::Read, None, Some(0), (60, 61)));
        assert!(registers(&ops, 50).is_fail());
        // Values written twice leave the version order undecided: with the
        // search out of steps too, the registers are undecided, not passed.
        let mut twice = ops[..13].to_vec();
        twice[0].value = Some("v1".into());
        let verdict = registers(&twice, 50);
        assert!(
            matches!(&verdict, Verdict::Unknown(why) if why.contains("undecided")),
            "{verdict:?}"
        );
    }

    #[test]
    fn the_fold_passes_on_either_pass_and_fails_on_any_failure() {
        let pass = || Verdict::Pass;
        let fail = || Verdict::Fail("stale".into());
        let unknown = || Verdict::Unknown("bound".into());
        assert!(fold_registers(pass(), pass()).is_pass());
        assert!(fold_registers(fail(), unknown()).is_fail());
        assert!(fold_registers(pass(), fail()).is_fail());
        assert!(fold_registers(fail(), pass()).is_fail());
        assert!(fold_registers(unknown(), pass()).is_pass());
        assert!(fold_registers(pass(), unknown()).is_pass());
        assert!(matches!(
            fold_registers(unknown(), unknown()),
            Verdict::Unknown(_)
        ));
    }
}
