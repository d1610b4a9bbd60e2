//! The figures a run prints: faults, operations, availability during
//! faults, recovery times, and each checker's verdict.

use std::fmt::Write as _;

use crate::check::Verdict;
use crate::history::{History, OpKind, Outcome};

/// Operation counts by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely not applied.
    pub failed: u64,
    /// Unknown outcome.
    pub unknown: u64,
    /// Answered by the cluster: acknowledged, or refused with an answer (a
    /// CAS on a stale version is the cluster working, not unavailable).
    pub answered: u64,
}

impl Counts {
    fn add(&mut self, op: &crate::history::Op) {
        if op.outcome == Outcome::Ok || (op.kind == OpKind::Cas && op.version.is_some()) {
            self.answered += 1;
        }
        match op.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    /// All operations.
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }

    /// Share answered, in percent (100 with no operations).
    pub fn answered_percent(&self) -> f64 {
        if self.total() == 0 {
            100.0
        } else {
            self.answered as f64 * 100.0 / self.total() as f64
        }
    }
}

/// One fault's figures: what, start ms, length ms, whole again ms after
/// the heal, writes acknowledged again ms after injection.
pub type FaultFigures = (String, u64, u64, Option<u64>, Option<u64>);

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed it ran with.
    pub seed: u64,
    /// Every operation.
    pub ops: Counts,
    /// Operations invoked while a fault was in force.
    pub during_faults: Counts,
    /// Operations invoked with no fault in force.
    pub outside_faults: Counts,
    /// Faults, in injection order.
    pub faults: Vec<FaultFigures>,
    /// Each checker's verdict.
    pub verdicts: Vec<(&'static str, Verdict)>,
}

/// The `q` quantile (0..=1) of `values`, nearest rank (None when empty).
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Report {
    /// Builds the figures from `history` and the checkers' `verdicts`.
    pub fn new(
        scenario: &str,
        seed: u64,
        history: &History,
        verdicts: Vec<(&'static str, Verdict)>,
    ) -> Self {
        let windows: Vec<(u64, u64)> = history
            .faults()
            .map(|f| (f.start_ns, f.end_ns.unwrap_or(u64::MAX)))
            .collect();
        let mut ops = Counts::default();
        let mut during = Counts::default();
        let mut outside = Counts::default();
        for op in history.ops() {
            ops.add(op);
            if windows
                .iter()
                .any(|(s, e)| op.invoke_ns >= *s && op.invoke_ns < *e)
            {
                during.add(op);
            } else {
                outside.add(op);
            }
        }
        let faults = history
            .faults()
            .map(|f| {
                let resumed = history
                    .ops()
                    .filter(|o| {
                        matches!(o.kind, OpKind::Write | OpKind::Cas)
                            && o.outcome == Outcome::Ok
                            && o.complete_ns >= f.start_ns
                    })
                    .map(|o| o.complete_ns - f.start_ns)
                    .min();
                (
                    f.what.clone(),
                    f.start_ns / 1_000_000,
                    f.end_ns.unwrap_or(f.start_ns).saturating_sub(f.start_ns) / 1_000_000,
                    f.recovered_after_ns.map(|n| n / 1_000_000),
                    resumed.map(|n| n / 1_000_000),
                )
            })
            .collect();
        Self {
            scenario: scenario.to_string(),
            seed,
            ops,
            during_faults: during,
            outside_faults: outside,
            faults,
            verdicts,
        }
    }

    /// Recovery times after heals, ms.
    pub fn recoveries_ms(&self) -> Vec<u64> {
        self.faults.iter().filter_map(|f| f.3).collect()
    }

    /// Whether any checker failed.
    pub fn violated(&self) -> bool {
        self.verdicts.iter().any(|(_, v)| v.is_fail())
    }

    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|(_, v)| v.is_pass())
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario {} (seed {})", self.scenario, self.seed);
        let _ = writeln!(out, "faults injected: {}", self.faults.len());
        for (what, start, length, recovered, resumed) in &self.faults {
            let recovered = recovered.map_or("not measured".into(), |r| format!("{r} ms"));
            let resumed = resumed.map_or("never".into(), |r| format!("{r} ms"));
            let _ = writeln!(
                out,
                "  at {:>6.1} s for {:>5} ms  {what}; whole again {recovered} after heal; writes acknowledged again {resumed} after injection",
                *start as f64 / 1000.0,
                length
            );
        }
        let c = &self.ops;
        let _ = writeln!(
            out,
            "operations: {} (ok {}, failed {}, unknown {})",
            c.total(),
            c.ok,
            c.failed,
            c.unknown
        );
        let _ = writeln!(
            out,
            "availability (answered): {:.1}% during faults ({} ops), {:.1}% outside ({} ops)",
            self.during_faults.answered_percent(),
            self.during_faults.total(),
            self.outside_faults.answered_percent(),
            self.outside_faults.total()
        );
        let recoveries = self.recoveries_ms();
        if let (Some(p50), Some(p99), Some(max)) = (
            quantile(&recoveries, 0.5),
            quantile(&recoveries, 0.99),
            recoveries.iter().max(),
        ) {
            let _ = writeln!(
                out,
                "time to recover after heal: p50 {p50} ms, p99 {p99} ms, max {max} ms"
            );
        }
        let _ = writeln!(out, "checkers:");
        for (name, verdict) in &self.verdicts {
            let detail = match verdict {
                Verdict::Pass => String::new(),
                Verdict::Fail(d) | Verdict::Unknown(d) => format!(": {d}"),
            };
            let _ = writeln!(out, "  {name:<26} {}{detail}", verdict.word());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[5, 1, 3], 0.5), Some(3));
        assert_eq!(quantile(&[5, 1, 3], 0.99), Some(5));
    }
}
