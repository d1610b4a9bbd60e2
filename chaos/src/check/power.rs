//! The power checker: a group's GPUs never stay above its hard budget
//! (`hard × budget`) for longer than [`OVER_LIMIT`], and no GPU's limit is
//! ever outside the range its device accepts.
//!
//! It reads the power samples of a run ([`PowerTick`]: every node's GPU
//! figures, several times a second). The group's draw at a sample is the
//! sum over its nodes of their GPUs' draw; a node that did not answer that
//! sample (killed, paused, slow) counts with its last figures, which
//! over-states a node that lost power and so can only make the check
//! stricter. An *excursion* is a run of consecutive samples above the hard
//! budget; it is timed from its first sample to the first sample back
//! under (or to its last sample when the run ended inside it). Sampling
//! blurs both ends by up to one period, so the measured length of a true
//! excursion of exactly [`OVER_LIMIT`] can reach [`OVER_LIMIT`] plus one
//! period: the check fails an excursion only above that, the period being
//! the sampler's nominal one recorded with the budget. Where a gap between
//! two samples inside an excursion is itself longer than [`OVER_LIMIT`]
//! (the harness stalled), the length cannot be told and, unless the
//! excursion already fails, the verdict is undecided.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{BudgetSet, History, PowerTick};

/// Longest a group may stay above its hard budget, ns.
pub const OVER_LIMIT_NS: u64 = 1_000_000_000;
/// [`OVER_LIMIT_NS`] as a duration, for documentation and reports.
pub const OVER_LIMIT: std::time::Duration = std::time::Duration::from_nanos(OVER_LIMIT_NS);

/// One time above the hard budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Excursion {
    /// Its first sample, ns since the run started.
    pub start_ns: u64,
    /// Its measured length, ns (see the module doc).
    pub length_ns: u64,
    /// The highest group draw in it, watts.
    pub peak_watts: f64,
    /// The longest gap between two samples inside it, ns.
    pub widest_gap_ns: u64,
}

/// What the samples show, for the checker and the report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PowerFigures {
    /// Samples read.
    pub samples: usize,
    /// Samples per second over the sampled span.
    pub rate_hz: f64,
    /// Highest group draw seen, watts.
    pub peak_watts: f64,
    /// Each time above the hard budget.
    pub excursions: Vec<Excursion>,
    /// Limits seen outside their device's range, described.
    pub out_of_range: Vec<String>,
    /// Node answers missed (their last figures carried forward).
    pub missed: usize,
}

/// The group draw at each sample and the limits out of range.
pub fn figures(budget: &BudgetSet, ticks: &[PowerTick]) -> PowerFigures {
    let hard = budget.hard_watts();
    let mut last: BTreeMap<&str, f64> = BTreeMap::new();
    let mut out = PowerFigures {
        samples: ticks.len(),
        ..PowerFigures::default()
    };
    let mut open: Option<Excursion> = None;
    let mut previous_ns: Option<u64> = None;
    for tick in ticks {
        for node in tick.nodes.iter().filter(|n| budget.nodes.contains(&n.node)) {
            if !node.reached {
                out.missed += 1;
                continue;
            }
            last.insert(node.node.as_str(), node.draw_watts());
            for gpu in &node.gpus {
                let in_range = gpu.min_watts.is_finite()
                    && gpu.max_watts.is_finite()
                    && gpu.min_watts > 0.0
                    && gpu.min_watts <= gpu.max_watts
                    && gpu.limit_watts >= gpu.min_watts
                    && gpu.limit_watts <= gpu.max_watts;
                if !in_range && out.out_of_range.len() < 16 {
                    out.out_of_range.push(format!(
                        "node {} GPU {} at {:.2} s: limit {} W outside its range {}..={} W",
                        node.node,
                        gpu.index,
                        node.at_ns as f64 / 1e9,
                        gpu.limit_watts,
                        gpu.min_watts,
                        gpu.max_watts
                    ));
                }
            }
        }
        let draw: f64 = last.values().sum();
        out.peak_watts = out.peak_watts.max(draw);
        let gap = previous_ns.map_or(0, |p| tick.at_ns.saturating_sub(p));
        previous_ns = Some(tick.at_ns);
        match (&mut open, draw > hard) {
            (None, true) => {
                open = Some(Excursion {
                    start_ns: tick.at_ns,
                    length_ns: 0,
                    peak_watts: draw,
                    widest_gap_ns: 0,
                })
            }
            (Some(e), true) => {
                e.length_ns = tick.at_ns.saturating_sub(e.start_ns);
                e.peak_watts = e.peak_watts.max(draw);
                e.widest_gap_ns = e.widest_gap_ns.max(gap);
            }
            (Some(e), false) => {
                e.length_ns = tick.at_ns.saturating_sub(e.start_ns);
                e.widest_gap_ns = e.widest_gap_ns.max(gap);
                out.excursions.extend(open.take());
            }
            (None, false) => {}
        }
    }
    out.excursions.extend(open);
    if let (Some(first), Some(last)) = (ticks.first(), ticks.last()) {
        let span = last.at_ns.saturating_sub(first.at_ns);
        if span > 0 {
            out.rate_hz = (ticks.len() - 1) as f64 / (span as f64 / 1e9);
        }
    }
    out
}

/// The verdict on `budget` and its samples.
pub fn check(budget: &BudgetSet, ticks: &[PowerTick]) -> Verdict {
    if ticks.is_empty() {
        return Verdict::Unknown("no power samples were recorded".into());
    }
    let f = figures(budget, ticks);
    if let Some(first) = f.out_of_range.first() {
        return Verdict::Fail(format!(
            "{} limit(s) outside the device's range, first: {first}",
            f.out_of_range.len()
        ));
    }
    let allowed = OVER_LIMIT_NS + budget.sample_period_ms * 1_000_000;
    let hard = budget.hard_watts();
    if let Some(e) = f.excursions.iter().find(|e| e.length_ns > allowed) {
        let measured_apart = e.widest_gap_ns <= OVER_LIMIT_NS;
        if measured_apart {
            return Verdict::Fail(format!(
                "group {} above its hard budget {hard:.0} W for {} ms from {:.2} s (peak {:.0} W; allowed {} ms: 1 s plus one {} ms sampling period)",
                budget.group,
                e.length_ns / 1_000_000,
                e.start_ns as f64 / 1e9,
                e.peak_watts,
                allowed / 1_000_000,
                budget.sample_period_ms
            ));
        }
        return Verdict::Unknown(format!(
            "group {} above its hard budget from {:.2} s with a {} ms gap between samples: how long cannot be told",
            budget.group,
            e.start_ns as f64 / 1e9,
            e.widest_gap_ns / 1_000_000
        ));
    }
    Verdict::Pass
}

/// The verdict on a history, when its run set a power budget (None otherwise).
pub fn check_history(history: &History) -> Option<Verdict> {
    let budget = history.power_budget()?;
    let ticks: Vec<PowerTick> = history.power_ticks().cloned().collect();
    Some(check(budget, &ticks))
}

/// The report's figures, when the run set a power budget.
pub fn figures_of(history: &History) -> Option<(BudgetSet, PowerFigures)> {
    let budget = history.power_budget()?.clone();
    let ticks: Vec<PowerTick> = history.power_ticks().cloned().collect();
    let f = figures(&budget, &ticks);
    Some((budget, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{GpuSample, NodePower};

    const MS: u64 = 1_000_000;

    fn budget() -> BudgetSet {
        BudgetSet {
            group: "cluster".into(),
            nodes: vec!["n1".into(), "n2".into()],
            watts: 2000.0,
            hard_fraction: 0.97,
            sample_period_ms: 200,
            nameplate_watts: 2800.0,
            at_ns: 0,
        }
    }

    fn gpu(index: u32, draw: f64, limit: f64) -> GpuSample {
        GpuSample {
            index,
            draw_watts: draw,
            limit_watts: limit,
            min_watts: 200.0,
            max_watts: 700.0,
            capped: limit < 700.0,
        }
    }

    /// Two nodes of two GPUs each, every GPU drawing `per_gpu`, sampled at `ms`.
    fn tick(ms: u64, per_gpu: f64) -> PowerTick {
        PowerTick {
            at_ns: ms * MS,
            nodes: ["n1", "n2"]
                .iter()
                .map(|n| NodePower {
                    node: n.to_string(),
                    reached: true,
                    at_ns: ms * MS,
                    share_watts: Some(1000.0),
                    gpus: vec![gpu(0, per_gpu, 700.0), gpu(1, per_gpu, 700.0)],
                })
                .collect(),
        }
    }

    /// Samples every 200 ms for `ms`, drawing `watts(t)` per GPU.
    fn run(ms: u64, watts: impl Fn(u64) -> f64) -> Vec<PowerTick> {
        (0..=ms / 200)
            .map(|i| tick(i * 200, watts(i * 200)))
            .collect()
    }

    #[test]
    fn a_group_under_its_hard_budget_passes() {
        // Hard budget 1940 W: 4 GPUs at 480 W = 1920 W.
        let ticks = run(5000, |_| 480.0);
        assert_eq!(check(&budget(), &ticks), Verdict::Pass);
        let f = figures(&budget(), &ticks);
        assert!(f.excursions.is_empty());
        assert!((f.rate_hz - 5.0).abs() < 1e-9, "{}", f.rate_hz);
    }

    #[test]
    fn a_short_spike_capped_within_a_second_passes() {
        // Over (4 × 700 W) from 1000 ms; the first sample back under at
        // 2000 ms: measured 1000 ms, within 1 s plus a period.
        let ticks = run(5000, |t| {
            if (1000..2000).contains(&t) {
                700.0
            } else {
                450.0
            }
        });
        assert_eq!(check(&budget(), &ticks), Verdict::Pass);
        let f = figures(&budget(), &ticks);
        assert_eq!(f.excursions.len(), 1);
        assert_eq!(f.excursions[0].length_ns, 1000 * MS);
        assert_eq!(f.peak_watts, 2800.0);
    }

    #[test]
    fn a_group_over_its_hard_budget_for_too_long_fails() {
        let ticks = run(5000, |t| {
            if (1000..2600).contains(&t) {
                700.0
            } else {
                450.0
            }
        });
        let verdict = check(&budget(), &ticks);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains("1600 ms") && why.contains("above its hard budget")),
            "{verdict:?}"
        );
        // Still over when the run ends: judged on what was seen.
        let ticks = run(3000, |t| if t >= 1000 { 700.0 } else { 450.0 });
        assert!(check(&budget(), &ticks).is_fail());
    }

    #[test]
    fn a_limit_outside_the_device_range_fails() {
        let mut ticks = run(1000, |_| 300.0);
        ticks[2].nodes[1].gpus[0].limit_watts = 150.0;
        let verdict = check(&budget(), &ticks);
        assert!(
            matches!(&verdict, Verdict::Fail(why) if why.contains("node n2 GPU 0") && why.contains("150 W outside its range 200..=700 W")),
            "{verdict:?}"
        );
        let mut ticks = run(1000, |_| 300.0);
        ticks[1].nodes[0].gpus[1].limit_watts = 701.0;
        assert!(check(&budget(), &ticks).is_fail());
        // A device reporting no range at all is not "in range" either.
        let mut ticks = run(1000, |_| 300.0);
        ticks[1].nodes[0].gpus[1].min_watts = 0.0;
        ticks[1].nodes[0].gpus[1].max_watts = 0.0;
        assert!(check(&budget(), &ticks).is_fail());
    }

    #[test]
    fn a_node_that_stops_answering_counts_with_its_last_figures() {
        // n2 goes silent while at 700 W per GPU; n1 alone would be under,
        // but n2's last figures keep the group over, so it fails.
        let mut ticks = run(4000, |t| if t >= 1000 { 700.0 } else { 450.0 });
        for t in ticks.iter_mut().skip(6) {
            let n2 = &mut t.nodes[1];
            n2.reached = false;
            n2.gpus.clear();
            t.nodes[0]
                .gpus
                .iter_mut()
                .for_each(|g| g.draw_watts = 300.0);
        }
        assert!(check(&budget(), &ticks).is_fail());
        assert!(figures(&budget(), &ticks).missed > 0);
    }

    #[test]
    fn a_sampling_gap_inside_an_excursion_is_undecided_not_passed() {
        // Over at 1000 ms, the next sample only at 2600 ms, back under.
        let ticks = vec![
            tick(0, 450.0),
            tick(800, 450.0),
            tick(1000, 700.0),
            tick(2600, 450.0),
            tick(2800, 450.0),
        ];
        assert!(matches!(check(&budget(), &ticks), Verdict::Unknown(_)));
        assert!(matches!(check(&budget(), &[]), Verdict::Unknown(_)));
    }

    #[test]
    fn nodes_outside_the_group_are_left_out() {
        let mut ticks = run(3000, |_| 450.0);
        for t in &mut ticks {
            let mut other = t.nodes[0].clone();
            other.node = "elsewhere".into();
            other.gpus.iter_mut().for_each(|g| g.draw_watts = 700.0);
            t.nodes.push(other);
        }
        assert_eq!(check(&budget(), &ticks), Verdict::Pass);
    }
}
