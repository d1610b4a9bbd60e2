//! A SIMULATION of a power-oversubscribed fleet: 10 nodes × 8 H100s under a
//! group budget 30 % below their nameplate, each node running the pure
//! POLCA policy on its share every 50 ms of simulated time, the GPUs
//! following the simulated power model (draw = idle + activity × (nameplate
//! − idle), clamped by the limit; throughput along the H100 curve). A load
//! spike hits every node at once.
//!
//! Checked: the group's draw is back under its budget within 1 s of
//! simulated time, low-priority GPUs were capped before any inference GPU,
//! and inference throughput fell by less than 5 %.

use herd_api::power::{gpu_nameplate, Thresholds};
use herd_api::rng::SplitMix64;

use super::policy::{decide, GpuPowerState, PolicyConfig, PriorityClass};
use crate::resources::simulated::{relative_throughput, uncapped_draw};

const NODES: usize = 10;
const GPUS_PER_NODE: u32 = 8;
/// Simulated time step.
const STEP_MS: u64 = 10;
/// The governors' sampling period.
const ROUND_MS: u64 = 50;

struct SimGpu {
    state: GpuPowerState,
    activity: f64,
}

fn class_of(index: u32) -> PriorityClass {
    match index {
        0..=3 => PriorityClass::Inference,
        4 | 5 => PriorityClass::Training,
        _ => PriorityClass::Batch,
    }
}

#[test]
fn an_oversubscribed_fleet_is_back_under_budget_within_a_second_of_a_spike() {
    let plate = gpu_nameplate("h100");
    let nameplate_total = f64::from(plate.max_watts) * (NODES as f64) * f64::from(GPUS_PER_NODE);
    // 30 % oversubscribed: the nameplate is 1.3 times the budget.
    let budget = nameplate_total / 1.3;
    // Equal nodes: equal shares (the coordinators split by nameplate).
    let share = budget / NODES as f64;
    let thresholds = Thresholds::default();
    let config = PolicyConfig::default();
    let mut rng = SplitMix64::new(20);

    let mut nodes: Vec<Vec<SimGpu>> = (0..NODES)
        .map(|n| {
            (0..GPUS_PER_NODE)
                .map(|index| SimGpu {
                    state: GpuPowerState {
                        index,
                        node: format!("n{n}"),
                        class: class_of(index),
                        limit_watts: plate.max_watts,
                        min_watts: plate.min_watts,
                        max_watts: plate.max_watts,
                        draw_watts: 0.0,
                    },
                    activity: 0.5,
                })
                .collect()
        })
        .collect();
    let settle = |gpus: &mut Vec<SimGpu>| {
        for gpu in gpus.iter_mut() {
            let wanted = uncapped_draw(&plate, gpu.activity);
            gpu.state.draw_watts = wanted.min(f64::from(gpu.state.limit_watts));
        }
    };
    for gpus in &mut nodes {
        settle(gpus);
    }
    let group_draw = |nodes: &Vec<Vec<SimGpu>>| -> f64 {
        nodes.iter().flatten().map(|g| g.state.draw_watts).sum()
    };
    assert!(
        group_draw(&nodes) < thresholds.release * budget,
        "calm before the spike"
    );

    let spike_at_ms = 1000;
    let end_ms = 6000;
    let mut back_under_at: Option<u64> = None;
    let mut first_low_cap_ms: Option<u64> = None;
    let mut first_inference_cap_ms: Option<u64> = None;
    // Inference work done during the spike, and what it would have been
    // uncapped (GPU-seconds at full throughput).
    let (mut inference_work, mut inference_uncapped) = (0.0, 0.0);
    let mut over_budget_ms = 0;

    let mut t = 0;
    while t < end_ms {
        if t == spike_at_ms {
            for gpu in nodes.iter_mut().flatten() {
                gpu.activity = rng.uniform(0.95, 1.0);
            }
        } else if t > spike_at_ms {
            // Load jitters by a couple of percent each step.
            for gpu in nodes.iter_mut().flatten() {
                gpu.activity = (gpu.activity + rng.uniform(-0.02, 0.02)).clamp(0.9, 1.0);
            }
        }
        for (n, gpus) in nodes.iter_mut().enumerate() {
            // The nodes' governors are not in step with each other.
            let offset = (n as u64 * 7) % ROUND_MS;
            if t % ROUND_MS == offset - offset % STEP_MS {
                let states: Vec<GpuPowerState> = gpus.iter().map(|g| g.state.clone()).collect();
                let draw: f64 = states.iter().map(|g| g.draw_watts).sum();
                let decision = decide(share, draw, &thresholds, &config, &states);
                for change in &decision.changes {
                    let gpu = &mut gpus[change.index as usize];
                    assert!(
                        (gpu.state.min_watts..=gpu.state.max_watts).contains(&change.to_watts),
                        "limit out of range: {change:?}"
                    );
                    if change.to_watts < change.from_watts {
                        let slot = if gpu.state.class == PriorityClass::Inference {
                            &mut first_inference_cap_ms
                        } else {
                            &mut first_low_cap_ms
                        };
                        slot.get_or_insert(t);
                    }
                    gpu.state.limit_watts = change.to_watts;
                }
            }
            settle(gpus);
        }
        let draw = group_draw(&nodes);
        if t > spike_at_ms {
            if draw > budget {
                over_budget_ms += STEP_MS;
            } else if back_under_at.is_none() {
                back_under_at = Some(t);
            }
            for gpu in nodes.iter().flatten() {
                if gpu.state.class == PriorityClass::Inference {
                    let wanted = uncapped_draw(&plate, gpu.activity);
                    let rate =
                        relative_throughput("h100", f64::from(gpu.state.limit_watts), wanted);
                    inference_work += gpu.activity * rate;
                    inference_uncapped += gpu.activity;
                }
            }
        }
        t += STEP_MS;
    }

    let back_under_at = back_under_at.expect("the group's draw never fell under its budget");
    assert!(
        back_under_at - spike_at_ms <= 1000,
        "back under budget {} ms after the spike",
        back_under_at - spike_at_ms
    );
    assert!(
        over_budget_ms <= 1000,
        "{over_budget_ms} ms over budget in all"
    );
    let low = first_low_cap_ms.expect("low-priority work was capped");
    if let Some(inference) = first_inference_cap_ms {
        assert!(
            low < inference,
            "inference capped at {inference} ms, low priority at {low} ms"
        );
    }
    let loss = 1.0 - inference_work / inference_uncapped;
    assert!(
        loss < 0.05,
        "inference throughput fell by {:.1} %",
        loss * 100.0
    );
    // The group ends under its budget, and its low-priority work capped.
    assert!(group_draw(&nodes) <= budget);
    assert!(nodes
        .iter()
        .flatten()
        .filter(|g| g.state.class != PriorityClass::Inference)
        .all(|g| g.state.limit_watts < plate.max_watts));
    eprintln!(
        "SIMULATION: budget {budget:.0} W, back under {} ms after the spike, {over_budget_ms} ms over, \
         inference throughput loss {:.2} %",
        back_under_at - spike_at_ms,
        loss * 100.0
    );
}
