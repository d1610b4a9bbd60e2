//! The figures a run prints: faults, operations, availability during
//! faults, recovery times, and each checker's verdict.

use std::fmt::Write as _;

use crate::check::Verdict;
use std::collections::BTreeSet;

use crate::history::{History, OpKind, Outcome, Sample};
use crate::runner::SERVICE_JOB;

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

/// One fault's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultFigures {
    /// What was done.
    pub what: String,
    /// When, ms from the start of the run.
    pub start_ms: u64,
    /// How long it was in force, ms.
    pub length_ms: u64,
    /// Whole again this long after the heal, ms (None: not measured).
    pub recovered_ms: Option<u64>,
    /// The first write acknowledged this long after injection, ms.
    pub writes_back_ms: Option<u64>,
    /// A majority named a new leader this long after injection, ms (None:
    /// the leader did not change).
    pub new_leader_ms: Option<u64>,
    /// For a lost node: its service instances ran again on the other nodes
    /// this long after the loss, ms (None: another fault, or they did not
    /// before the node came back).
    pub rescheduled_ms: Option<u64>,
}

/// Distinct service instances running in `sample`, leaving out `node`.
fn service_instances(sample: &Sample, without: Option<&str>) -> usize {
    sample
        .processes
        .iter()
        .filter(|p| p.job == SERVICE_JOB && Some(p.node.as_str()) != without)
        .map(|p| p.instance)
        .collect::<BTreeSet<_>>()
        .len()
}

/// How long after losing `node` at `start_ns` the service ran at its
/// earlier count on the remaining nodes, from the workload samples taken
/// before the node came back at `end_ns` (after that, work leaving it is
/// not a rescheduling: a drain or another fault moved it).
fn rescheduled_after(history: &History, node: &str, start_ns: u64, end_ns: u64) -> Option<u64> {
    let samples: Vec<&Sample> = history.samples().collect();
    let before = samples.iter().rev().find(|s| s.at_ns < start_ns)?;
    let count = service_instances(before, None);
    if count == 0 || service_instances(before, Some(node)) >= count {
        // Nothing ran there: nothing to reschedule.
        return None;
    }
    samples
        .iter()
        .filter(|s| s.at_ns >= start_ns && s.at_ns <= end_ns)
        .find(|s| service_instances(s, Some(node)) >= count)
        .map(|s| s.at_ns - start_ns)
}

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
    /// What the migration client did, in runs that migrate.
    pub migrations: Option<crate::check::migrations::MigrationCounts>,
    /// The power figures, in runs that set a power budget.
    pub power: Option<String>,
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
                FaultFigures {
                    what: f.what.clone(),
                    start_ms: f.start_ns / 1_000_000,
                    length_ms: f.end_ns.unwrap_or(f.start_ns).saturating_sub(f.start_ns)
                        / 1_000_000,
                    recovered_ms: f.recovered_after_ns.map(|n| n / 1_000_000),
                    writes_back_ms: resumed.map(|n| n / 1_000_000),
                    new_leader_ms: f.new_leader_after_ns.map(|n| n / 1_000_000),
                    rescheduled_ms: f
                        .lost_node
                        .as_deref()
                        .and_then(|node| {
                            let end = f.end_ns.unwrap_or(u64::MAX);
                            rescheduled_after(history, node, f.start_ns, end)
                        })
                        .map(|n| n / 1_000_000),
                }
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
            migrations: crate::check::migrations::counts(history),
            power: power_line(history),
        }
    }

    /// Recovery times after heals, ms.
    pub fn recoveries_ms(&self) -> Vec<u64> {
        self.faults.iter().filter_map(|f| f.recovered_ms).collect()
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
        for f in &self.faults {
            let recovered = f
                .recovered_ms
                .map_or("not measured".into(), |r| format!("{r} ms"));
            let resumed = f
                .writes_back_ms
                .map_or("never".into(), |r| format!("{r} ms"));
            let new_leader = f
                .new_leader_ms
                .map(|l| format!("; new leader {l} ms after injection"))
                .unwrap_or_default();
            let rescheduled = f
                .rescheduled_ms
                .map(|r| format!("; service rescheduled {r} ms after the loss"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  at {:>6.1} s for {:>5} ms  {}; whole again {recovered} after heal; writes acknowledged again {resumed} after injection{new_leader}{rescheduled}",
                f.start_ms as f64 / 1000.0,
                f.length_ms,
                f.what
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
        if let Some(m) = &self.migrations {
            let _ = writeln!(out, "{}", migration_line(m));
        }
        if let Some(p) = &self.power {
            let _ = writeln!(out, "{p}");
        }
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

/// The report's lines about power (runs with a power budget): the budget,
/// the sampling, the spikes (and how many overlapped a fault), the peak and
/// the times above the hard budget.
fn power_line(history: &History) -> Option<String> {
    let (budget, f) = crate::check::power::figures_of(history)?;
    let faults: Vec<(u64, u64)> = history
        .faults()
        .map(|w| (w.start_ns, w.end_ns.unwrap_or(u64::MAX)))
        .collect();
    let spikes: Vec<_> = history.spikes().collect();
    let overlapping = spikes
        .iter()
        .filter(|s| {
            let end = s.end_ns.unwrap_or(u64::MAX);
            faults.iter().any(|(a, b)| s.start_ns < *b && *a < end)
        })
        .count();
    let longest = f.excursions.iter().map(|e| e.length_ns).max().unwrap_or(0);
    Some(format!(
        "power (SIMULATED GPUs): budget {:.0} W on {} nodes (nameplate {:.0} W, hard {:.0} W); {} samples at {:.1} Hz ({} node answers missed); {} spikes ({} during a fault); peak {:.0} W; above the hard budget {} times, longest {} ms",
        budget.watts,
        budget.nodes.len(),
        budget.nameplate_watts,
        budget.hard_watts(),
        f.samples,
        f.rate_hz,
        f.missed,
        spikes.len(),
        overlapping,
        f.peak_watts,
        f.excursions.len(),
        longest / 1_000_000
    ))
}

/// The report's line about migrations.
fn migration_line(m: &crate::check::migrations::MigrationCounts) -> String {
    let mut line = format!(
        "migrations: {} asked ({} started, {} refused, {} unknown); {} completed, {} aborted",
        m.attempts, m.started, m.refused, m.unknown, m.completed, m.aborted
    );
    if m.completed_by_kind.len() > 1 {
        let kinds: Vec<String> = m
            .completed_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let _ = write!(line, " (completed: {})", kinds.join(", "));
    }
    if let (Some(p50), Some(max)) = (quantile(&m.total_ms, 0.5), m.total_ms.iter().max()) {
        let _ = write!(line, "; total p50 {p50} ms, max {max} ms");
    }
    if let (Some(p50), Some(max)) = (quantile(&m.downtime_ms, 0.5), m.downtime_ms.iter().max()) {
        let _ = write!(line, "; downtime p50 {p50} ms, max {max} ms");
    }
    for (reason, n) in &m.abort_reasons {
        let _ = write!(line, "\n  aborted {n}x: {reason}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultWindow, Record, SeenProcess};

    fn sample(at_ns: u64, running: &[(&str, u32)]) -> Record {
        Record::Sample(Sample {
            at_ns,
            settled: false,
            processes: running
                .iter()
                .map(|(node, instance)| SeenProcess {
                    pid: 100 + instance,
                    node: node.to_string(),
                    alloc_id: format!("a-{node}-{instance}"),
                    job: SERVICE_JOB.into(),
                    instance: Some(*instance),
                    mark: None,
                    guest: None,
                })
                .collect(),
        })
    }

    fn node_loss(records: Vec<Record>) -> Option<u64> {
        let mut records = records;
        records.push(Record::Fault(FaultWindow {
            what: "kill -9 node n1".into(),
            start_ns: 10,
            end_ns: Some(10 + 5_000_000),
            recovered_after_ns: None,
            lost_node: Some("n1".into()),
            unsupervised_node: None,
            new_leader_after_ns: None,
        }));
        let report = Report::new("node-loss", 1, &History { records }, vec![]);
        report.faults[0].rescheduled_ms
    }

    #[test]
    fn rescheduling_is_timed_from_the_loss_to_the_count_on_other_nodes() {
        let ms = 1_000_000;
        let before = sample(5, &[("n1", 0), ("n2", 1), ("n3", 2)]);
        // Instance 0 runs again on n2 4 ms after the loss.
        let rescheduled = node_loss(vec![
            before.clone(),
            sample(10 + ms, &[("n2", 1), ("n3", 2)]),
            sample(10 + 4 * ms, &[("n2", 0), ("n2", 1), ("n3", 2)]),
        ]);
        assert_eq!(rescheduled, Some(4));
        // Moved after the node came back (5 ms after the loss): not a
        // rescheduling.
        let late = node_loss(vec![
            before.clone(),
            sample(10 + 6 * ms, &[("n2", 0), ("n2", 1), ("n3", 2)]),
        ]);
        assert_eq!(late, None);
        // Running again only on the lost node (it came back) is not a
        // rescheduling.
        let back = node_loss(vec![
            before,
            sample(10 + 4 * ms, &[("n1", 0), ("n2", 1), ("n3", 2)]),
        ]);
        assert_eq!(back, None);
        // No service before the loss, or none on the lost node: nothing
        // to measure.
        assert_eq!(node_loss(vec![sample(5, &[])]), None);
        assert_eq!(
            node_loss(vec![
                sample(5, &[("n2", 0), ("n2", 1)]),
                sample(10 + ms, &[("n2", 0), ("n2", 1)]),
            ]),
            None
        );
    }

    #[test]
    fn a_leader_change_is_reported_in_ms_after_injection() {
        let fault = |new_leader_after_ns| {
            Record::Fault(FaultWindow {
                what: "kill -9 members [2] (leader)".into(),
                start_ns: 10,
                end_ns: Some(100),
                recovered_after_ns: None,
                lost_node: None,
                unsupervised_node: None,
                new_leader_after_ns,
            })
        };
        let changed = Report::new(
            "kill-leader",
            1,
            &History {
                records: vec![fault(Some(312_000_000))],
            },
            vec![],
        );
        assert_eq!(changed.faults[0].new_leader_ms, Some(312));
        assert!(
            changed
                .render()
                .contains("new leader 312 ms after injection"),
            "{}",
            changed.render()
        );
        let unchanged = Report::new(
            "kill-one",
            1,
            &History {
                records: vec![fault(None)],
            },
            vec![],
        );
        assert_eq!(unchanged.faults[0].new_leader_ms, None);
        assert!(!unchanged.render().contains("new leader"));
    }

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[5, 1, 3], 0.5), Some(3));
        assert_eq!(quantile(&[5, 1, 3], 0.99), Some(5));
    }
}
