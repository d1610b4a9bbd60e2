//! The POLCA policy, pure: from a budget, the measured draw and each GPU's
//! figures, the power limits to set. No clock, no I/O, so the same code runs
//! in the node's PowerGovernor, in tests and in fleet simulations.
//!
//! POLCA (Patel et al., "Characterizing Power Management Opportunities for
//! LLMs in the Cloud", ASPLOS 2024) oversubscribes a power feed and caps
//! GPUs when the measured draw nears the budget, in two steps:
//! - above the first threshold (`cap`, e.g. 90 % of the budget), the GPUs of
//!   low-priority work are capped, batch first, then training, just enough
//!   to bring the draw under that threshold (less a margin);
//! - above the second (`hard`, e.g. 97 %), when low-priority work is already
//!   at its floor, inference GPUs are capped too, just enough to bring the
//!   draw under that threshold (less a margin);
//! - below `release` (e.g. 85 %), limits are raised a step at a time,
//!   inference first, never by more than the headroom to the first
//!   threshold: the band between `release` and `cap` is the hysteresis.
//!
//! Every limit it returns lies within its device's settable range, and an
//! inference GPU is only ever lowered while every low-priority GPU's limit is
//! at its floor. A GPU whose range is empty (it cannot be capped) is left
//! alone.

use herd_api::job::JobType;
use herd_api::power::Thresholds;

/// How much a GPU's work matters when power is short, lowest first: the
/// policy caps in this order and releases in the reverse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PriorityClass {
    /// Batch jobs: capped first.
    Batch,
    /// Training: capped after batch.
    Training,
    /// Latency-bound serving: capped last, released first.
    Inference,
}

impl PriorityClass {
    /// Every class, lowest priority first.
    pub const ALL: [PriorityClass; 3] = [
        PriorityClass::Batch,
        PriorityClass::Training,
        PriorityClass::Inference,
    ];

    /// The stable name reports and `herd power status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityClass::Batch => "batch",
            PriorityClass::Training => "training",
            PriorityClass::Inference => "inference",
        }
    }

    /// The class of work of `job_type` run by `driver`: the inference
    /// driver's engines and other services are inference (someone waits on
    /// them), the dljob driver's jobs are training, other batch jobs batch.
    pub fn of_work(job_type: JobType, driver: &str) -> Self {
        match (driver, job_type) {
            ("inference", _) => PriorityClass::Inference,
            ("dljob", _) => PriorityClass::Training,
            (_, JobType::Service) => PriorityClass::Inference,
            (_, JobType::Batch) => PriorityClass::Batch,
        }
    }

    fn low_priority(self) -> bool {
        self != PriorityClass::Inference
    }
}

/// One GPU as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPowerState {
    /// Its index on its node.
    pub index: u32,
    /// Its node (a fleet simulation runs the policy over several).
    pub node: String,
    /// The class of the work on it.
    pub class: PriorityClass,
    /// The limit in force.
    pub limit_watts: u32,
    /// Lowest settable limit.
    pub min_watts: u32,
    /// Highest settable limit (0: it cannot be capped).
    pub max_watts: u32,
    /// What it draws now.
    pub draw_watts: f64,
}

impl GpuPowerState {
    fn controllable(&self) -> bool {
        self.max_watts > 0 && self.min_watts <= self.max_watts
    }

    /// What it will draw once its limit holds: a limit just lowered binds
    /// within milliseconds, so the policy never sheds the same watts twice.
    fn expected_draw(&self) -> f64 {
        let draw = if self.draw_watts.is_finite() {
            self.draw_watts.max(0.0)
        } else {
            0.0
        };
        draw.min(f64::from(self.limit_watts))
    }

    /// Whether its limit is at its floor.
    pub fn at_floor(&self) -> bool {
        self.limit_watts <= self.min_watts
    }
}

/// Tuning of the policy beyond the thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// How far under a threshold a cap aims, as a fraction of the budget,
    /// so that noise does not trip it again at once.
    pub margin: f64,
    /// How much one release step raises a limit, as a fraction of the
    /// GPU's settable range.
    pub release_step: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            margin: 0.02,
            release_step: 0.1,
        }
    }
}

/// What the policy decided to do this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between the thresholds, or nothing to change.
    Hold,
    /// Above the first threshold: low-priority GPUs lowered.
    Cap,
    /// Above the second threshold: inference GPUs lowered too.
    CapAll,
    /// Below the release threshold: limits raised.
    Release,
}

impl Phase {
    /// The stable name events use.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Hold => "hold",
            Phase::Cap => "cap",
            Phase::CapAll => "cap_all",
            Phase::Release => "release",
        }
    }
}

/// One limit to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitChange {
    /// The GPU's node.
    pub node: String,
    /// The GPU's index there.
    pub index: u32,
    /// Its limit before.
    pub from_watts: u32,
    /// The limit to set, within its settable range.
    pub to_watts: u32,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What it did.
    pub phase: Phase,
    /// The limits to set (only those that change).
    pub changes: Vec<LimitChange>,
    /// The draw it expects once the changes hold.
    pub projected_watts: f64,
}

/// Decides the limits for `gpus` under `budget_watts` given the measured
/// draw `draw_watts` (of the same GPUs, or of the whole group when the
/// caller adds what it cannot control). See the module doc.
pub fn decide(
    budget_watts: f64,
    draw_watts: f64,
    thresholds: &Thresholds,
    config: &PolicyConfig,
    gpus: &[GpuPowerState],
) -> Decision {
    let hold = |projected| Decision {
        phase: Phase::Hold,
        changes: Vec::new(),
        projected_watts: projected,
    };
    if !(budget_watts.is_finite() && budget_watts > 0.0 && draw_watts.is_finite())
        || thresholds.check().is_err()
    {
        return hold(draw_watts);
    }
    let mut limits: Vec<u32> = gpus.iter().map(|g| g.limit_watts).collect();
    // Limits about to bind: count them as shed already.
    let pending: f64 = gpus
        .iter()
        .map(|g| {
            let draw = if g.draw_watts.is_finite() {
                g.draw_watts.max(0.0)
            } else {
                0.0
            };
            draw - g.expected_draw()
        })
        .sum();
    let projected = (draw_watts - pending).max(0.0);
    let margin = config.margin.clamp(0.0, 0.5);
    let phase = if projected > thresholds.cap * budget_watts {
        let aim = (thresholds.cap - margin).max(0.0) * budget_watts;
        let mut shed = 0.0;
        for class in [PriorityClass::Batch, PriorityClass::Training] {
            let need = projected - shed - aim;
            if need <= 0.0 {
                break;
            }
            shed += shed_class(gpus, &mut limits, class, need);
        }
        let after_low = projected - shed;
        let low_at_floor = gpus
            .iter()
            .zip(&limits)
            .filter(|(g, _)| g.class.low_priority() && g.controllable())
            .all(|(g, limit)| *limit <= g.min_watts);
        let mut phase = Phase::Cap;
        if after_low > thresholds.hard * budget_watts && low_at_floor {
            let aim = (thresholds.hard - margin).max(0.0) * budget_watts;
            let need = after_low - aim;
            if need > 0.0 {
                shed_class(gpus, &mut limits, PriorityClass::Inference, need);
                phase = Phase::CapAll;
            }
        }
        phase
    } else if projected < thresholds.release * budget_watts {
        let mut headroom = (thresholds.cap - margin).max(0.0) * budget_watts - projected;
        for class in PriorityClass::ALL.iter().rev() {
            for (gpu, limit) in gpus.iter().zip(limits.iter_mut()) {
                if gpu.class != *class || !gpu.controllable() || *limit >= gpu.max_watts {
                    continue;
                }
                if headroom < 1.0 {
                    break;
                }
                let range = f64::from(gpu.max_watts - gpu.min_watts);
                let step = (range * config.release_step.clamp(0.01, 1.0))
                    .max(1.0)
                    .min(headroom)
                    .floor() as u32;
                let raised = limit
                    .saturating_add(step)
                    .clamp(gpu.min_watts, gpu.max_watts);
                headroom -= f64::from(raised.saturating_sub(*limit));
                *limit = raised;
            }
            // Lower classes wait until the higher ones are fully released,
            // so inference is never capped while batch runs uncapped.
            let class_released = gpus
                .iter()
                .zip(&limits)
                .filter(|(g, _)| g.class == *class && g.controllable())
                .all(|(g, limit)| *limit >= g.max_watts);
            if !class_released {
                break;
            }
        }
        Phase::Release
    } else {
        Phase::Hold
    };
    let changes: Vec<LimitChange> = gpus
        .iter()
        .zip(&limits)
        .filter(|(g, limit)| g.controllable() && **limit != g.limit_watts)
        .map(|(g, limit)| LimitChange {
            node: g.node.clone(),
            index: g.index,
            from_watts: g.limit_watts,
            to_watts: (*limit).clamp(g.min_watts, g.max_watts),
        })
        .collect();
    if changes.is_empty() {
        return hold(projected);
    }
    let lowered: f64 = gpus
        .iter()
        .zip(&limits)
        .map(|(g, limit)| (g.expected_draw() - f64::from(*limit)).max(0.0))
        .sum();
    Decision {
        phase,
        changes,
        projected_watts: projected - lowered,
    }
}

/// Lowers the limits of `class`'s GPUs to shed `need` watts, in proportion
/// to what each can shed (its expected draw above its floor); when the class
/// cannot shed that much, every GPU of it goes to its floor. Returns the
/// watts shed. Never raises a limit.
fn shed_class(gpus: &[GpuPowerState], limits: &mut [u32], class: PriorityClass, need: f64) -> f64 {
    let members: Vec<usize> = gpus
        .iter()
        .enumerate()
        .filter(|(_, g)| g.class == class && g.controllable())
        .map(|(i, _)| i)
        .collect();
    let available: f64 = members
        .iter()
        .map(|&i| (gpus[i].expected_draw() - f64::from(gpus[i].min_watts)).max(0.0))
        .sum();
    if available <= need {
        for &i in &members {
            limits[i] = gpus[i].min_watts;
        }
        return available;
    }
    let mut shed = 0.0;
    for &i in &members {
        let gpu = &gpus[i];
        let draw = gpu.expected_draw();
        let share = need * (draw - f64::from(gpu.min_watts)).max(0.0) / available;
        if share <= 0.0 {
            continue;
        }
        let target = (draw - share).floor().max(0.0) as u32;
        let new = target.clamp(gpu.min_watts, gpu.max_watts).min(limits[i]);
        shed += (draw - f64::from(new)).max(0.0);
        limits[i] = new;
    }
    shed
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_api::rng::SplitMix64;

    fn gpu(index: u32, class: PriorityClass, limit: u32, draw: f64) -> GpuPowerState {
        GpuPowerState {
            index,
            node: "n1".into(),
            class,
            limit_watts: limit,
            min_watts: 200,
            max_watts: 700,
            draw_watts: draw,
        }
    }

    fn total(gpus: &[GpuPowerState]) -> f64 {
        gpus.iter().map(|g| g.draw_watts).sum()
    }

    /// [`decide`] with the default thresholds and policy, as most cases run it.
    fn decide_by_default(budget_watts: f64, draw_watts: f64, gpus: &[GpuPowerState]) -> Decision {
        decide(
            budget_watts,
            draw_watts,
            &Thresholds::default(),
            &PolicyConfig::default(),
            gpus,
        )
    }

    /// Applies `decision` to `gpus` as an ideal GPU would: the draw follows
    /// the limit down at once; up, it stays until the work asks for more.
    fn enforce(gpus: &mut [GpuPowerState], decision: &Decision, wanted: &[f64]) {
        for change in &decision.changes {
            let gpu = gpus
                .iter_mut()
                .find(|g| g.index == change.index && g.node == change.node)
                .expect("known GPU");
            gpu.limit_watts = change.to_watts;
        }
        for (gpu, want) in gpus.iter_mut().zip(wanted) {
            gpu.draw_watts = want.min(f64::from(gpu.limit_watts));
        }
    }

    use PriorityClass::{Batch, Inference, Training};

    #[test]
    fn classes_come_from_the_work() {
        assert_eq!(
            PriorityClass::of_work(JobType::Service, "inference"),
            Inference
        );
        assert_eq!(PriorityClass::of_work(JobType::Batch, "dljob"), Training);
        assert_eq!(PriorityClass::of_work(JobType::Batch, "exec"), Batch);
        assert_eq!(PriorityClass::of_work(JobType::Service, "exec"), Inference);
        assert!(Batch < Training && Training < Inference);
        assert_eq!(Training.as_str(), "training");
    }

    #[test]
    fn below_the_first_threshold_nothing_changes() {
        let gpus = vec![gpu(0, Batch, 700, 400.0), gpu(1, Inference, 700, 400.0)];
        let d = decide_by_default(1000.0, 880.0, &gpus);
        assert_eq!(d.phase, Phase::Hold);
        assert!(d.changes.is_empty());
    }

    #[test]
    fn past_the_first_threshold_batch_is_capped_first_and_inference_not_at_all() {
        let mut gpus = vec![
            gpu(0, Inference, 700, 600.0),
            gpu(1, Training, 700, 600.0),
            gpu(2, Batch, 700, 600.0),
        ];
        // 1800 W against 1900 W: 94.7 %, above 90 %, below 97 %.
        let d = decide_by_default(1900.0, total(&gpus), &gpus);
        assert_eq!(d.phase, Phase::Cap);
        assert_eq!(d.changes.len(), 1, "{d:?}");
        let change = &d.changes[0];
        assert_eq!(change.index, 2);
        // Aim: 88 % of 1900 = 1672 W, so batch sheds 128 W.
        assert_eq!(change.to_watts, 472);
        enforce(&mut gpus, &d, &[600.0; 3]);
        assert!(total(&gpus) <= 0.9 * 1900.0);
        // Once it holds, the next round changes nothing.
        let again = decide_by_default(1900.0, total(&gpus), &gpus);
        assert_eq!(again.phase, Phase::Hold, "{again:?}");
    }

    #[test]
    fn a_limit_not_yet_binding_is_not_shed_twice() {
        // The limit was lowered, but the draw has not followed yet.
        // 1200 W measured against 1200 W would call for a cap; but batch's
        // limit already holds it to 472 W: 1072 W, between the thresholds.
        let gpus = vec![gpu(0, Batch, 472, 600.0), gpu(1, Inference, 700, 600.0)];
        let d = decide_by_default(1200.0, 1200.0, &gpus);
        assert_eq!(d.phase, Phase::Hold, "{d:?}");
        assert!(d.changes.is_empty(), "{d:?}");
        assert!((d.projected_watts - 1072.0).abs() < 1e-9);
    }

    #[test]
    fn past_the_second_threshold_inference_is_capped_once_low_priority_is_at_its_floor() {
        let mut gpus = vec![
            gpu(0, Inference, 700, 700.0),
            gpu(1, Inference, 700, 700.0),
            gpu(2, Batch, 700, 700.0),
        ];
        // 2100 W against 1500 W: far past both thresholds.
        let d = decide_by_default(1500.0, total(&gpus), &gpus);
        assert_eq!(d.phase, Phase::CapAll);
        enforce(&mut gpus, &d, &[700.0; 3]);
        assert_eq!(gpus[2].limit_watts, 200, "batch at its floor");
        assert!(gpus[0].limit_watts < 700 && gpus[1].limit_watts < 700);
        // Inference is capped only to 95 % of the budget, not 88 %.
        let draw = total(&gpus);
        assert!((0.94 * 1500.0..=0.97 * 1500.0).contains(&draw), "{draw}");
    }

    #[test]
    fn release_raises_step_by_step_inference_first_with_hysteresis() {
        let mut gpus = vec![gpu(0, Inference, 500, 500.0), gpu(1, Batch, 200, 200.0)];
        let thresholds = Thresholds::default();
        let config = PolicyConfig::default();
        // The load fell: both want 300 W; 600 W of 1000 W is below 85 %.
        let wanted = [300.0, 300.0];
        enforce(
            &mut gpus,
            &Decision {
                phase: Phase::Hold,
                changes: vec![],
                projected_watts: 0.0,
            },
            &wanted,
        );
        let mut rounds = 0;
        let mut inference_released_at = None;
        while gpus.iter().any(|g| g.limit_watts < 700) {
            let d = decide(1000.0, total(&gpus), &thresholds, &config, &gpus);
            assert_eq!(d.phase, Phase::Release, "{d:?}");
            for change in &d.changes {
                assert!(change.to_watts > change.from_watts);
                // A step is at most 10 % of the range (50 W).
                assert!(change.to_watts - change.from_watts <= 50, "{change:?}");
            }
            enforce(&mut gpus, &d, &wanted);
            if d.changes.iter().any(|c| c.index == 1) {
                assert_eq!(gpus[0].limit_watts, 700, "batch released before inference");
            }
            rounds += 1;
            if gpus[0].limit_watts == 700 && inference_released_at.is_none() {
                inference_released_at = Some(rounds);
            }
            assert!(rounds < 100, "release never ends");
        }
        assert_eq!(inference_released_at, Some(4));
        // Between the release threshold and the first one: hold.
        let high = [450.0, 430.0];
        enforce(
            &mut gpus,
            &Decision {
                phase: Phase::Hold,
                changes: vec![],
                projected_watts: 0.0,
            },
            &high,
        );
        let d = decide(1000.0, total(&gpus), &thresholds, &config, &gpus);
        assert_eq!(d.phase, Phase::Hold);
    }

    #[test]
    fn release_never_raises_past_the_headroom() {
        let gpus = vec![gpu(0, Batch, 200, 200.0), gpu(1, Batch, 200, 200.0)];
        // 400 W of 500 W: below 85 %; headroom to 88 % is 40 W.
        let d = decide_by_default(500.0, 400.0, &gpus);
        let raised: u32 = d.changes.iter().map(|c| c.to_watts - c.from_watts).sum();
        assert!(raised <= 40 && raised > 0, "{d:?}");
    }

    #[test]
    fn gpus_that_cannot_be_capped_and_bad_input_are_left_alone() {
        let mut fixed = gpu(0, Batch, 0, 300.0);
        fixed.max_watts = 0;
        fixed.min_watts = 0;
        let d = decide_by_default(100.0, 300.0, &[fixed.clone()]);
        assert!(d.changes.is_empty());
        for (budget, draw) in [
            (f64::NAN, 1.0),
            (0.0, 1.0),
            (-5.0, 1.0),
            (100.0, f64::INFINITY),
        ] {
            let d = decide_by_default(budget, draw, &[gpu(0, Batch, 700, 700.0)]);
            assert!(d.changes.is_empty(), "{budget} {draw}");
        }
        let bad = Thresholds {
            cap: 0.99,
            hard: 0.9,
            release: 0.5,
        };
        let d = decide(
            100.0,
            700.0,
            &bad,
            &PolicyConfig::default(),
            &[gpu(0, Batch, 700, 700.0)],
        );
        assert!(d.changes.is_empty());
    }

    /// Property (seeded loop, 2,000 cases of random fleets, budgets and
    /// loads, run for several rounds each): every limit stays within its
    /// device's range, and an inference GPU is only lowered while every
    /// low-priority GPU is at its floor.
    #[test]
    fn limits_stay_in_range_and_inference_is_capped_only_after_low_priority() {
        let mut rng = SplitMix64::new(0x5eed_0020);
        for case in 0..2000 {
            let n = 1 + (rng.next_u64() % 12) as usize;
            let mut gpus: Vec<GpuPowerState> = (0..n)
                .map(|i| {
                    let min = 50 + (rng.next_u64() % 200) as u32;
                    let max = min + (rng.next_u64() % 600) as u32;
                    let class = PriorityClass::ALL[(rng.next_u64() % 3) as usize];
                    GpuPowerState {
                        index: i as u32,
                        node: format!("n{}", i % 3),
                        class,
                        limit_watts: max,
                        min_watts: min,
                        max_watts: max,
                        draw_watts: 0.0,
                    }
                })
                .collect();
            let nameplate: f64 = gpus.iter().map(|g| f64::from(g.max_watts)).sum();
            let budget = nameplate * (0.3 + rng.next_f64());
            let thresholds = Thresholds::default();
            let config = PolicyConfig::default();
            for round in 0..8 {
                let wanted: Vec<f64> = gpus
                    .iter()
                    .map(|g| rng.next_f64() * f64::from(g.max_watts) * 1.1)
                    .collect();
                let empty = Decision {
                    phase: Phase::Hold,
                    changes: vec![],
                    projected_watts: 0.0,
                };
                enforce(&mut gpus, &empty, &wanted);
                let d = decide(budget, total(&gpus), &thresholds, &config, &gpus);
                for change in &d.changes {
                    let g = &gpus[change.index as usize];
                    assert!(
                        (g.min_watts..=g.max_watts).contains(&change.to_watts),
                        "case {case} round {round}: {change:?} outside {}..={}",
                        g.min_watts,
                        g.max_watts
                    );
                }
                enforce(&mut gpus, &d, &wanted);
                let inference_lowered = d.changes.iter().any(|c| {
                    gpus[c.index as usize].class == Inference && c.to_watts < c.from_watts
                });
                let low_at_floor = gpus
                    .iter()
                    .filter(|g| g.class != Inference)
                    .all(GpuPowerState::at_floor);
                assert!(
                    !inference_lowered || low_at_floor,
                    "case {case} round {round}: inference lowered while low-priority work is above its floor: {d:?} {gpus:?}"
                );
                // And as a state: an inference GPU under its maximum means
                // low-priority work at its floor.
                let inference_capped = gpus
                    .iter()
                    .any(|g| g.class == Inference && g.limit_watts < g.max_watts);
                assert!(
                    !inference_capped || low_at_floor,
                    "case {case} round {round}: {gpus:?}"
                );
            }
        }
    }
}
