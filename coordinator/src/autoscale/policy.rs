//! The autoscaling policy, pure: from one observation of a service (its
//! instances' KV-cache load and latency percentiles) and its `[autoscale]`
//! table, whether to change its instance count. No clock, no I/O: the
//! leader's loop ([`super::run`]) gathers the observation and proposes
//! the decision.
//!
//! In the spirit of Faro (Jeon, Wang, Arroyo, Youssef, Gupta, *A House
//! United Within Itself: SLO-Awareness for On-Premises Containerized ML
//! Inference Clusters via Faro*, EuroSys 2025), two of its ideas, much
//! simplified, for one service at a time:
//!
//! - **A relaxed SLO.** Faro turns a latency SLO into a utility that keeps
//!   changing around the objective instead of a met/violated step, so that
//!   how far a job is from its SLO steers the allocation. Here the ratio
//!   `p99 / objective` (the worse of TTFT and TBT) sizes a scale-out
//!   (`count × ratio`, at most doubling), and scale-in waits until the
//!   p99s are comfortably inside the objectives (below [`SLO_RELAXED`] of
//!   them), not merely inside.
//! - **Conservative load prediction.** Faro sizes for an upper quantile
//!   of its predicted load rather than the mean, because under-provisioning
//!   costs SLO violations while over-provisioning only costs resources.
//!   Here scale-in is judged on the *peak* load over the scale-in cooldown
//!   window, and only one instance goes at a time.
//!
//! Not taken from Faro: its queueing-model latency estimate, its
//! probabilistic forecaster and its cluster-wide optimisation across jobs.
//!
//! Hysteresis, so that the count does not flap: scale-out happens when the
//! load per instance passes `target_load`; scale-in only when the peak
//! load would stay at or under [`SCALE_IN_HEADROOM`] × `target_load` per
//! instance with one instance fewer. Cooldowns (from the replicated scaling
//! events, so they hold across a leader change) space changes out, and no
//! change is made while an instance is still starting or draining.

use herd_api::autoscale::AutoscaleSpec;

/// Scale-in only when the p99s are under this fraction of their
/// objectives (the relaxed band of the SLO).
pub const SLO_RELAXED: f64 = 0.8;
/// Scale-in only when the peak load per instance, one instance fewer,
/// stays under this fraction of `target_load`.
pub const SCALE_IN_HEADROOM: f64 = 0.8;
/// The most a single scale-out multiplies the count by.
pub const MAX_STEP_FACTOR: f64 = 2.0;

/// One look at a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Leader's clock, ms since the epoch.
    pub now_ms: u64,
    /// The desired instance count in the state.
    pub count: u32,
    /// Instances serving: running, stats fresh, not draining.
    pub ready: u32,
    /// Their KV-cache loads summed (1.0: one instance's cache, full).
    pub load: f64,
    /// The highest summed load seen over the scale-in window.
    pub peak_load: f64,
    /// How long the loop has watched the service (its load history).
    pub observed_ms: u64,
    /// p99 time to first token over the service's recent samples (None:
    /// too few samples to judge).
    pub ttft_p99_ms: Option<f64>,
    /// p99 time between tokens, likewise.
    pub tbt_p99_ms: Option<f64>,
    /// When the count last changed (the newest scaling event), if ever.
    pub last_change_ms: Option<u64>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Keep the count; why, for logs and tests.
    Hold(String),
    /// Change it.
    Scale {
        /// The new count.
        to: u32,
        /// Why, in words (kept in the scaling event).
        reason: String,
    },
}

/// How far the service is past its latency objectives: the worse of
/// `p99 / objective` over TTFT and TBT; None when no objective has a
/// measurement.
pub fn slo_pressure(spec: &AutoscaleSpec, obs: &Observation) -> Option<f64> {
    let ratio = |objective: Option<u32>, p99: Option<f64>| match (objective, p99) {
        (Some(objective), Some(p99)) if objective > 0 => Some(p99 / f64::from(objective)),
        _ => None,
    };
    let ttft = ratio(spec.ttft_p99_ms, obs.ttft_p99_ms);
    let tbt = ratio(spec.tbt_p99_ms, obs.tbt_p99_ms);
    match (ttft, tbt) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn describe(spec: &AutoscaleSpec, obs: &Observation) -> String {
    let mut text = format!(
        "load {:.2} over {} instances (target {:.2} each)",
        obs.load,
        obs.ready,
        spec.target_load()
    );
    if let (Some(objective), Some(p99)) = (spec.ttft_p99_ms, obs.ttft_p99_ms) {
        text.push_str(&format!(", TTFT p99 {p99:.0} ms (objective {objective})"));
    }
    if let (Some(objective), Some(p99)) = (spec.tbt_p99_ms, obs.tbt_p99_ms) {
        text.push_str(&format!(", TBT p99 {p99:.0} ms (objective {objective})"));
    }
    text
}

/// The decision for one observation.
pub fn decide(spec: &AutoscaleSpec, obs: &Observation) -> Decision {
    let (min, max) = (spec.min, spec.max);
    if obs.count < min || obs.count > max {
        let to = obs.count.clamp(min, max);
        return Decision::Scale {
            to,
            reason: format!("{} instances is outside {min}..={max}", obs.count),
        };
    }
    if obs.ready < obs.count {
        return Decision::Hold(format!(
            "{} of {} instances serving: waiting for the others to start or finish draining",
            obs.ready, obs.count
        ));
    }
    let since_change = obs.last_change_ms.map(|at| obs.now_ms.saturating_sub(at));
    let cooled = |cooldown_ms: u64| since_change.is_none_or(|since| since >= cooldown_ms);
    let target = spec.target_load();
    let pressure = slo_pressure(spec, obs);

    // Scale out: on load, and on the SLO in proportion to the violation.
    let by_load = (obs.load / target - 1e-9).ceil().max(1.0) as u32;
    let by_slo = match pressure {
        Some(ratio) if ratio > 1.0 => {
            let factor = ratio.min(MAX_STEP_FACTOR);
            ((f64::from(obs.count) * factor).ceil() as u32).max(obs.count + 1)
        }
        _ => 0,
    };
    let wanted = by_load.max(by_slo);
    if wanted > obs.count && obs.count < max {
        if !cooled(spec.scale_out_cooldown_ms) {
            return Decision::Hold(format!(
                "would scale out to {}, cooling down: {}",
                wanted.min(max),
                describe(spec, obs)
            ));
        }
        let to = wanted.min(max);
        let why = if by_slo > by_load {
            "latency objective missed"
        } else {
            "load above target"
        };
        return Decision::Scale {
            to,
            reason: format!("{why}: {}", describe(spec, obs)),
        };
    }

    // Scale in: one instance, when even the peak load fits the rest with
    // headroom and the latencies are well inside their objectives.
    if obs.count > min {
        let relaxed = pressure.is_none_or(|ratio| ratio <= SLO_RELAXED);
        let per_instance = obs.peak_load / f64::from(obs.count - 1);
        let fits = per_instance <= target * SCALE_IN_HEADROOM;
        let watched = obs.observed_ms >= spec.scale_in_cooldown_ms.min(obs.now_ms);
        if relaxed && fits {
            if !cooled(spec.scale_in_cooldown_ms) || !watched {
                return Decision::Hold(format!(
                    "would scale in to {}, cooling down: {}",
                    obs.count - 1,
                    describe(spec, obs)
                ));
            }
            return Decision::Scale {
                to: obs.count - 1,
                reason: format!(
                    "load below target: peak {:.2} would be {per_instance:.2} per instance on {}; {}",
                    obs.peak_load,
                    obs.count - 1,
                    describe(spec, obs)
                ),
            };
        }
    }
    Decision::Hold(format!("within target: {}", describe(spec, obs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AutoscaleSpec {
        AutoscaleSpec {
            ttft_p99_ms: Some(1000),
            tbt_p99_ms: Some(100),
            scale_out_cooldown_ms: 10_000,
            scale_in_cooldown_ms: 30_000,
            ..AutoscaleSpec::new(1, 6)
        }
    }

    fn obs(count: u32, load: f64) -> Observation {
        Observation {
            now_ms: 1_000_000,
            count,
            ready: count,
            load,
            peak_load: load,
            observed_ms: 60_000,
            ttft_p99_ms: Some(200.0),
            tbt_p99_ms: Some(30.0),
            last_change_ms: Some(900_000),
        }
    }

    fn to(decision: Decision) -> Option<u32> {
        match decision {
            Decision::Scale { to, .. } => Some(to),
            Decision::Hold(_) => None,
        }
    }

    #[test]
    fn load_above_target_scales_out_to_what_the_load_needs() {
        // 2 instances at 0.7 target, load 2.5: ceil(2.5 / 0.7) = 4.
        assert_eq!(to(decide(&spec(), &obs(2, 2.5))), Some(4));
        // Capped at max.
        assert_eq!(to(decide(&spec(), &obs(2, 20.0))), Some(6));
        // At max: nothing more.
        assert_eq!(to(decide(&spec(), &obs(6, 20.0))), None);
    }

    #[test]
    fn a_missed_latency_objective_scales_out_in_proportion() {
        let mut o = obs(2, 0.5);
        o.ttft_p99_ms = Some(1500.0); // 1.5× the objective: 2 × 1.5 = 3
        assert_eq!(to(decide(&spec(), &o)), Some(3));
        o.ttft_p99_ms = Some(9000.0); // at most doubling
        assert_eq!(to(decide(&spec(), &o)), Some(4));
        let mut o = obs(3, 0.5);
        o.tbt_p99_ms = Some(101.0); // just over: at least one more
        assert_eq!(to(decide(&spec(), &o)), Some(4));
    }

    #[test]
    fn low_load_scales_in_one_at_a_time() {
        assert_eq!(to(decide(&spec(), &obs(4, 0.3))), Some(3));
        // Never below min.
        assert_eq!(to(decide(&spec(), &obs(1, 0.0))), None);
    }

    #[test]
    fn the_band_between_thresholds_holds_so_the_count_does_not_flap() {
        // 3 instances, load 1.5: 0.5 each (under 0.7, no scale-out); with 2
        // it would be 0.75 each, over 0.8 × 0.7 = 0.56: no scale-in.
        assert!(matches!(decide(&spec(), &obs(3, 1.5)), Decision::Hold(_)));
        // After a scale-out to n, the load that caused it never scales in.
        for load in [0.8, 1.5, 2.2, 3.0, 4.1] {
            let Some(n) = to(decide(&spec(), &obs(1, load))) else {
                continue;
            };
            let after = decide(&spec(), &obs(n.min(6), load));
            assert!(
                to(after.clone()).is_none_or(|m| m >= n.min(6)),
                "load {load}: out to {n}, then {after:?}"
            );
        }
        // And after a scale-in, the same load does not scale out again.
        for load in [0.0, 0.3, 0.9, 1.6] {
            for count in 2..=6 {
                if let Some(m) = to(decide(&spec(), &obs(count, load))) {
                    if m < count {
                        let next = to(decide(&spec(), &obs(m, load)));
                        assert!(next.is_none_or(|k| k < m), "{load} {count}: {next:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn scale_in_waits_for_the_peak_and_for_relaxed_latencies() {
        let mut o = obs(4, 0.3);
        o.peak_load = 2.5; // a burst in the window: 2.5 / 3 > 0.56
        assert_eq!(to(decide(&spec(), &o)), None);
        let mut o = obs(4, 0.3);
        o.ttft_p99_ms = Some(900.0); // met, but not by the relaxed margin
        assert_eq!(to(decide(&spec(), &o)), None);
        let mut o = obs(4, 0.3);
        o.observed_ms = 5_000; // watched for less than the window
        assert_eq!(to(decide(&spec(), &o)), None);
    }

    #[test]
    fn cooldowns_space_changes_out() {
        let mut o = obs(2, 2.5);
        o.last_change_ms = Some(o.now_ms - 5_000);
        assert!(matches!(decide(&spec(), &o), Decision::Hold(m) if m.contains("cooling")));
        o.last_change_ms = Some(o.now_ms - 10_000);
        assert_eq!(to(decide(&spec(), &o)), Some(4));
        let mut o = obs(4, 0.3);
        o.last_change_ms = Some(o.now_ms - 29_000);
        assert_eq!(to(decide(&spec(), &o)), None);
        o.last_change_ms = None;
        assert_eq!(to(decide(&spec(), &o)), Some(3));
    }

    #[test]
    fn nothing_changes_while_instances_start_or_drain() {
        let mut o = obs(3, 5.0);
        o.ready = 2;
        assert!(matches!(decide(&spec(), &o), Decision::Hold(m) if m.contains("2 of 3")));
    }

    #[test]
    fn no_samples_means_load_alone_decides() {
        let mut o = obs(2, 0.1);
        o.ttft_p99_ms = None;
        o.tbt_p99_ms = None;
        assert_eq!(slo_pressure(&spec(), &o), None);
        assert_eq!(to(decide(&spec(), &o)), Some(1));
        let no_slo = AutoscaleSpec::new(1, 4);
        assert_eq!(slo_pressure(&no_slo, &obs(2, 0.1)), None);
    }

    #[test]
    fn a_count_outside_the_bounds_is_brought_back() {
        assert_eq!(to(decide(&AutoscaleSpec::new(2, 3), &obs(1, 0.0))), Some(2));
        assert_eq!(to(decide(&AutoscaleSpec::new(1, 3), &obs(5, 0.0))), Some(3));
    }
}
