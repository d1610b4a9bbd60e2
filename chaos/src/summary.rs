//! Figures over many runs of one scenario (`herd chaos run --runs N`): how
//! many passed, and recovery percentiles across every fault of every run,
//! as docs/chaos.md reports them.

use std::fmt::Write as _;

use crate::report::{quantile, Report};

/// Accumulated figures of one scenario's runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Runs carried out (checked).
    pub runs: u32,
    /// Runs with every checker passing.
    pub passed: u32,
    /// Runs with a violation.
    pub violated: u32,
    /// Runs checked but not decided: a checker could not decide (e.g. the
    /// linearizability search ran out of steps) and none failed. Not a
    /// pass, and counted apart from passes for that reason.
    pub undecided: u32,
    /// Runs that could not be carried out at all (the cluster never got
    /// ready, a harness failure): nothing was checked.
    pub not_carried_out: u32,
    /// Faults injected over all runs.
    pub faults: u32,
    /// Operations over all runs.
    pub ops: u64,
    /// Whole again after each heal, ms (faults after which it never was are absent).
    pub recovered_ms: Vec<u64>,
    /// First acknowledged write after each injection, ms.
    pub writes_back_ms: Vec<u64>,
    /// Leader changes after injection, ms.
    pub new_leader_ms: Vec<u64>,
    /// Service rescheduled off each lost node, ms after the loss.
    pub rescheduled_ms: Vec<u64>,
    /// Faults after which the cluster was never whole again within the bound.
    pub never_recovered: u32,
}

impl Summary {
    /// An empty summary for `scenario`.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_string(),
            ..Self::default()
        }
    }

    /// Adds one checked run.
    pub fn add(&mut self, report: &Report) {
        self.runs += 1;
        if report.violated() {
            self.violated += 1;
        } else if report.passed() {
            self.passed += 1;
        } else {
            self.undecided += 1;
        }
        self.faults += report.faults.len() as u32;
        self.ops += report.ops.total();
        for f in &report.faults {
            match f.recovered_ms {
                Some(ms) => self.recovered_ms.push(ms),
                None => self.never_recovered += 1,
            }
            self.writes_back_ms.extend(f.writes_back_ms);
            self.new_leader_ms.extend(f.new_leader_ms);
            self.rescheduled_ms.extend(f.rescheduled_ms);
        }
    }

    /// Adds a run that could not be carried out.
    pub fn add_not_carried_out(&mut self) {
        self.runs += 1;
        self.not_carried_out += 1;
    }

    /// One Markdown table row: scenario, runs, verdicts, faults, ops, then
    /// p50/p99/max of whole-again, writes-back and node-loss rescheduling.
    pub fn row(&self) -> String {
        let mut row = String::new();
        let _ = write!(
            row,
            "| {} | {} | {} pass / {} violation / {} undecided{} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.runs,
            self.passed,
            self.violated,
            self.undecided,
            if self.not_carried_out > 0 {
                format!(" / {} not carried out", self.not_carried_out)
            } else {
                String::new()
            },
            self.faults,
            self.ops,
            spread(&self.recovered_ms),
            spread(&self.writes_back_ms),
            spread(&self.new_leader_ms),
            spread(&self.rescheduled_ms),
        );
        row
    }

    /// The header [`Summary::row`] fits under.
    pub fn header() -> &'static str {
        "| scenario | runs | verdicts | faults | ops | whole again after heal, ms (p50 / p99 / max) | writes back after injection, ms (p50 / p99 / max) | new leader after injection, ms (p50 / p99 / max) | service rescheduled after node loss, ms (p50 / p99 / max) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    }
}

fn spread(values: &[u64]) -> String {
    match (
        quantile(values, 0.5),
        quantile(values, 0.99),
        quantile(values, 1.0),
    ) {
        (Some(p50), Some(p99), Some(max)) => format!("{p50} / {p99} / {max}"),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_counts_verdicts_and_spreads_recoveries() {
        let mut summary = Summary::new("kill-leader");
        summary.runs = 3;
        summary.passed = 2;
        summary.undecided = 1;
        summary.recovered_ms = vec![10, 30, 20];
        let row = summary.row();
        assert!(
            row.starts_with("| kill-leader | 3 | 2 pass / 0 violation / 1 undecided |"),
            "{row}"
        );
        assert!(row.contains("20 / 30 / 30"), "{row}");
        assert!(row.ends_with("| - | - | - |"), "{row}");
    }

    #[test]
    fn runs_not_carried_out_are_told_apart_from_undecided_ones() {
        let mut summary = Summary::new("restart-all");
        summary.add_not_carried_out();
        let row = summary.row();
        assert!(
            row.starts_with(
                "| restart-all | 1 | 0 pass / 0 violation / 0 undecided / 1 not carried out |"
            ),
            "{row}"
        );
    }
}
