//! Demand-following power shares (issue 20), pure: how a group's budget is
//! re-split among its nodes from what each reports it would draw, so that
//! an idle node's unused watts go to a busy one instead of lying unused
//! under a static split. No clock, no I/O: the coordinators and the
//! SIMULATION of `herd bench power` call the same function.
//!
//! The split, in order (every step only spends what the previous left):
//! 1. **pinned** nodes (not reporting: cut off, down, or not heard from
//!    yet) keep their previous share, or their static (nameplate) share
//!    when they never had one, since they go on drawing under it: their
//!    watts are not lent to anyone;
//! 2. every other node gets its **floor** (the least its GPUs can be set
//!    to together: below that its governor could not hold the share);
//! 3. then the demand of **inference** work, then **training**, then
//!    **batch**, each scaled up by `1 / aim` (a governor aims at `aim` of
//!    its share, so a node drawing `d` needs `d / aim` to run uncapped).
//!    When a level does not fit, it is granted in proportion to what each
//!    node asks at that level, and lower levels get nothing: low-priority
//!    work is capped first, as the node's own policy does; then each
//!    node's **spike** (how far over its demand it peaked), the same way;
//! 4. what is left goes to every node in proportion to its room up to
//!    `nameplate / aim` (a share past that is never used), so a node has
//!    headroom for a spike until the next re-split;
//! 5. **hysteresis**: a node whose new share is within `hysteresis` ×
//!    its nameplate of its previous one keeps the previous one, unless
//!    that would take the sum over the budget; noise in the reports does
//!    not move shares.
//!
//! Whatever the input, the shares add up to at most the budget, and a
//! node's share is at least its floor whenever the floors fit in the
//! budget.

use std::collections::BTreeMap;

/// What a node asks for, per priority class, in watts it would draw
/// uncapped (see [`gpu_demand_watts`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ClassDemand {
    /// Latency-bound serving: granted first.
    pub inference: f64,
    /// Training: granted after inference.
    pub training: f64,
    /// Batch (and idle GPUs): granted last.
    pub batch: f64,
}

impl ClassDemand {
    /// The sum over classes.
    pub fn total(&self) -> f64 {
        self.inference + self.training + self.batch
    }

    fn sanitized(self) -> Self {
        ClassDemand {
            inference: finite_non_negative(self.inference),
            training: finite_non_negative(self.training),
            batch: finite_non_negative(self.batch),
        }
    }
}

/// One node of a group, as the re-split sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDemand {
    /// The node's name.
    pub name: String,
    /// Its GPUs' nameplate (TDP) together, watts: the most they can draw.
    pub nameplate_watts: f64,
    /// The least its GPUs' limits can be set to together, watts: its share
    /// never goes under this when the floors fit in the budget.
    pub floor_watts: f64,
    /// What it would draw uncapped, per class (typically, on average
    /// since its last report).
    pub demand: ClassDemand,
    /// How far above `demand` its draw went at its peak since its last
    /// report (an inference prefill spike), watts: granted after every
    /// node's demand, as headroom for the next spike.
    pub spike_watts: f64,
    /// Whether its report is fresh: a node that is not reporting keeps its
    /// previous share (it goes on drawing under it).
    pub reporting: bool,
}

/// The re-split's tuning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandConfig {
    /// The fraction of its share a node's governor aims at when it caps
    /// (the cap threshold less its margin: 0.88 by default).
    pub aim: f64,
    /// Shares move only by more than this fraction of the node's
    /// nameplate (0.03 by default).
    pub hysteresis: f64,
}

impl Default for DemandConfig {
    fn default() -> Self {
        DemandConfig {
            aim: 0.88,
            hysteresis: 0.03,
        }
    }
}

impl DemandConfig {
    /// Checks the tuning: `aim` in (0, 1], `hysteresis` in [0, 0.5].
    pub fn check(&self) -> Result<(), String> {
        if !(self.aim.is_finite() && self.aim > 0.0 && self.aim <= 1.0) {
            return Err(format!(
                "demand shares: aim must be in (0, 1], got {}",
                self.aim
            ));
        }
        if !(self.hysteresis.is_finite() && (0.0..=0.5).contains(&self.hysteresis)) {
            return Err(format!(
                "demand shares: hysteresis must be 0 to 0.5, got {}",
                self.hysteresis
            ));
        }
        Ok(())
    }
}

fn finite_non_negative(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// What one GPU would draw uncapped, estimated from its report: its draw,
/// plus, when its governor holds it under its maximum, the watts it was
/// capped by (`max − limit`), at most its maximum. Bad figures read as 0.
pub fn gpu_demand_watts(draw: f64, limit: f64, max: f64, capped: bool) -> f64 {
    let draw = finite_non_negative(draw);
    let max = finite_non_negative(max);
    let extra = if capped {
        (max - finite_non_negative(limit)).max(0.0)
    } else {
        0.0
    };
    let demand = draw + extra;
    if max > 0.0 {
        demand.min(max)
    } else {
        demand
    }
}

/// The static split, in proportion to nameplate: what a node that never
/// had a share is assumed to hold, and the split with no demand known.
pub fn nameplate_split(budget_watts: f64, nodes: &[NodeDemand]) -> BTreeMap<String, f64> {
    let budget = finite_non_negative(budget_watts);
    let total: f64 = nodes
        .iter()
        .map(|n| finite_non_negative(n.nameplate_watts))
        .sum();
    if total <= 0.0 || !total.is_finite() {
        return BTreeMap::new();
    }
    nodes
        .iter()
        .filter(|n| finite_non_negative(n.nameplate_watts) > 0.0)
        .map(|n| {
            (
                n.name.clone(),
                budget * finite_non_negative(n.nameplate_watts) / total,
            )
        })
        .collect()
}

/// Gives `left` watts to `grant` towards `target`, all of it when it
/// fits, else in proportion to what each lacks; returns what is left.
fn fill(grant: &mut [f64], target: &[f64], left: f64) -> f64 {
    let wanted: f64 = grant
        .iter()
        .zip(target)
        .map(|(g, t)| (t - g).max(0.0))
        .sum();
    if wanted <= 0.0 {
        return left;
    }
    if wanted <= left {
        for (g, t) in grant.iter_mut().zip(target) {
            *g = g.max(*t);
        }
        return left - wanted;
    }
    let scale = left / wanted;
    for (g, t) in grant.iter_mut().zip(target) {
        *g += (t - *g).max(0.0) * scale;
    }
    0.0
}

/// Re-splits `budget_watts` among `nodes` from their demand; `previous`
/// is the last split sent (by name). See the module doc for the rules.
/// Nodes without nameplate get nothing. Bad figures (non-finite or
/// negative) read as 0; a bad `config` is refused.
pub fn split_by_demand(
    budget_watts: f64,
    nodes: &[NodeDemand],
    previous: &BTreeMap<String, f64>,
    config: &DemandConfig,
) -> Result<BTreeMap<String, f64>, String> {
    config.check()?;
    let budget = finite_non_negative(budget_watts);
    let nodes: Vec<NodeDemand> = nodes
        .iter()
        .filter(|n| finite_non_negative(n.nameplate_watts) > 0.0)
        .map(|n| {
            let nameplate = finite_non_negative(n.nameplate_watts);
            NodeDemand {
                name: n.name.clone(),
                nameplate_watts: nameplate,
                floor_watts: finite_non_negative(n.floor_watts).min(nameplate),
                demand: n.demand.sanitized(),
                spike_watts: finite_non_negative(n.spike_watts),
                reporting: n.reporting,
            }
        })
        .collect();
    let fixed = nameplate_split(budget, &nodes);
    let mut shares = BTreeMap::new();
    // 1. Pinned nodes keep what they hold.
    let mut left = budget;
    for node in nodes.iter().filter(|n| !n.reporting) {
        let held = previous
            .get(&node.name)
            .copied()
            .map(finite_non_negative)
            .or_else(|| fixed.get(&node.name).copied())
            .unwrap_or(0.0);
        let held = held.min(left);
        left -= held;
        shares.insert(node.name.clone(), held);
    }
    let active: Vec<&NodeDemand> = nodes.iter().filter(|n| n.reporting).collect();
    if active.is_empty() {
        return Ok(shares);
    }
    let useful: Vec<f64> = active
        .iter()
        .map(|n| n.nameplate_watts / config.aim)
        .collect();
    let mut grant = vec![0.0; active.len()];
    // 2. Floors, then 3. demand by priority, cumulative.
    let levels: [fn(&NodeDemand) -> f64; 4] = [
        |n| n.demand.inference,
        |n| n.demand.inference + n.demand.training,
        |n| n.demand.total(),
        |n| n.demand.total() + n.spike_watts,
    ];
    let floors: Vec<f64> = active.iter().map(|n| n.floor_watts).collect();
    left = fill(&mut grant, &floors, left);
    for level in levels {
        if left <= 0.0 {
            break;
        }
        let target: Vec<f64> = active
            .iter()
            .zip(&useful)
            .map(|(n, u)| (level(n) / config.aim).min(*u).max(n.floor_watts))
            .collect();
        left = fill(&mut grant, &target, left);
    }
    // 4. The rest, in proportion to each node's room.
    if left > 0.0 {
        fill(&mut grant, &useful, left);
    }
    // 5. Hysteresis.
    let mut held_above = Vec::new();
    let mut chosen = grant.clone();
    for (i, node) in active.iter().enumerate() {
        let Some(prev) = previous.get(&node.name).copied() else {
            continue;
        };
        if !prev.is_finite() || prev < node.floor_watts {
            continue;
        }
        if (prev - grant[i]).abs() <= config.hysteresis * node.nameplate_watts {
            chosen[i] = prev;
            if prev > grant[i] {
                held_above.push(i);
            }
        }
    }
    let pinned: f64 = shares.values().sum();
    if pinned + chosen.iter().sum::<f64>() > budget {
        for i in held_above {
            chosen[i] = grant[i];
        }
    }
    for (node, share) in active.iter().zip(chosen) {
        shares.insert(node.name.clone(), share);
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, inference: f64, training: f64, batch: f64) -> NodeDemand {
        NodeDemand {
            name: name.to_string(),
            nameplate_watts: 5600.0,
            floor_watts: 8.0 * 200.0,
            demand: ClassDemand {
                inference,
                training,
                batch,
            },
            spike_watts: 0.0,
            reporting: true,
        }
    }

    fn sum(shares: &BTreeMap<String, f64>) -> f64 {
        shares.values().sum()
    }

    fn split(
        budget: f64,
        nodes: &[NodeDemand],
        prev: &BTreeMap<String, f64>,
    ) -> BTreeMap<String, f64> {
        split_by_demand(budget, nodes, prev, &DemandConfig::default()).expect("valid config")
    }

    #[test]
    fn shares_never_add_up_to_more_than_the_budget() {
        let none = BTreeMap::new();
        let mut rng = crate::rng::SplitMix64::new(7);
        for round in 0..500 {
            let count = 1 + (rng.next_u64() % 12) as usize;
            let nodes: Vec<NodeDemand> = (0..count)
                .map(|i| {
                    let mut n = node(
                        &format!("n{i}"),
                        rng.next_f64() * 2800.0,
                        rng.next_f64() * 1400.0,
                        rng.next_f64() * 1400.0,
                    );
                    n.reporting = !rng.next_u64().is_multiple_of(5);
                    n
                })
                .collect();
            let budget = rng.next_f64() * 5600.0 * count as f64;
            let prev: BTreeMap<String, f64> = if round % 2 == 0 {
                none.clone()
            } else {
                nameplate_split(budget * 1.1, &nodes)
            };
            let shares = split(budget, &nodes, &prev);
            assert!(
                sum(&shares) <= budget + 1e-6,
                "round {round}: {shares:?} over {budget}"
            );
            assert!(shares.values().all(|s| s.is_finite() && *s >= 0.0));
            if 1600.0 * count as f64 <= budget && prev.is_empty() {
                for n in nodes.iter().filter(|n| n.reporting) {
                    assert!(
                        shares[&n.name] >= 1600.0 - 1e-6,
                        "round {round}: floor of {}",
                        n.name
                    );
                }
            }
        }
    }

    #[test]
    fn an_idle_node_gives_its_headroom_to_busy_ones() {
        let nodes = [
            node("busy", 2000.0, 2000.0, 1000.0),
            node("idle", 0.0, 0.0, 0.0),
        ];
        // 8000 W for two 5600 W nodes: statically 4000 W each.
        let shares = split(8000.0, &nodes, &BTreeMap::new());
        assert!((sum(&shares) - 8000.0).abs() < 1e-6);
        assert!(shares["busy"] >= 5000.0 / 0.88 - 1e-6, "{shares:?}");
        assert!(shares["idle"] >= 1600.0, "the floor is kept: {shares:?}");
        assert!(shares["idle"] < 4000.0, "{shares:?}");
    }

    #[test]
    fn inference_is_granted_before_training_and_batch() {
        // Floors take 3200 W; a's inference asks 2600 / 0.88 − 1600 more.
        let nodes = [node("a", 2600.0, 0.0, 0.0), node("b", 0.0, 2600.0, 2600.0)];
        let shares = split(6000.0, &nodes, &BTreeMap::new());
        assert!((shares["a"] - 2600.0 / 0.88).abs() < 1e-6, "{shares:?}");
        assert!(
            (shares["b"] - (6000.0 - 2600.0 / 0.88)).abs() < 1e-6,
            "{shares:?}"
        );
        // Tighter: inference takes all there is above the floors, b's
        // training and batch nothing.
        let shares = split(4000.0, &nodes, &BTreeMap::new());
        assert!((shares["a"] - 2400.0).abs() < 1e-6, "{shares:?}");
        assert!((shares["b"] - 1600.0).abs() < 1e-6, "{shares:?}");
    }

    #[test]
    fn small_noise_moves_no_share() {
        let nodes = [
            node("a", 1500.0, 1500.0, 0.0),
            node("b", 500.0, 0.0, 1000.0),
            node("c", 0.0, 0.0, 200.0),
        ];
        let first = split(12_000.0, &nodes, &BTreeMap::new());
        let mut rng = crate::rng::SplitMix64::new(3);
        let mut prev = first.clone();
        for _ in 0..100 {
            let noisy: Vec<NodeDemand> = nodes
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    let jitter = |x: f64, r: f64| x * (0.98 + 0.04 * r);
                    n.demand.inference = jitter(n.demand.inference, rng.next_f64());
                    n.demand.training = jitter(n.demand.training, rng.next_f64());
                    n.demand.batch = jitter(n.demand.batch, rng.next_f64());
                    n
                })
                .collect();
            prev = split(12_000.0, &noisy, &prev);
            assert_eq!(prev, first, "±2 % of noise moved a share");
        }
        // A real change does move them.
        let mut moved = nodes.clone();
        moved[2].demand.inference = 3000.0;
        let after = split(12_000.0, &moved, &prev);
        assert!(after["c"] > first["c"] + 500.0, "{after:?}");
        assert!(sum(&after) <= 12_000.0 + 1e-6);
    }

    #[test]
    fn a_silent_node_keeps_its_share_and_nobody_takes_it() {
        let mut nodes = vec![node("a", 2500.0, 2500.0, 0.0), node("b", 0.0, 0.0, 0.0)];
        let before = split(8000.0, &nodes, &BTreeMap::new());
        nodes[0].reporting = false;
        nodes[1].demand.training = 4000.0;
        let after = split(8000.0, &nodes, &before);
        assert_eq!(
            after["a"], before["a"],
            "a cut-off node keeps what it holds"
        );
        assert!(after["b"] <= 8000.0 - before["a"] + 1e-6);
        // Never heard from: its nameplate share is set aside.
        let fresh = split(8000.0, &nodes, &BTreeMap::new());
        assert!((fresh["a"] - 4000.0).abs() < 1e-6, "{fresh:?}");
    }

    #[test]
    fn bad_figures_read_as_nothing_and_bad_tuning_is_refused() {
        let mut n = node("a", f64::NAN, -5.0, f64::INFINITY);
        n.floor_watts = f64::NAN;
        let shares = split(f64::NAN, &[n.clone()], &BTreeMap::new());
        assert_eq!(shares["a"], 0.0);
        let shares = split(4000.0, &[n], &BTreeMap::new());
        assert!(shares["a"] <= 4000.0 && shares["a"] > 0.0);
        let bad = DemandConfig {
            aim: 0.0,
            hysteresis: 0.03,
        };
        let err = split_by_demand(1.0, &[], &BTreeMap::new(), &bad).expect_err("refused");
        assert!(err.contains("aim"), "{err}");
        let bad = DemandConfig {
            aim: 0.9,
            hysteresis: f64::NAN,
        };
        assert!(bad.check().expect_err("refused").contains("hysteresis"));
    }

    #[test]
    fn a_gpu_asks_for_what_it_draws_plus_what_it_was_capped_by() {
        assert_eq!(gpu_demand_watts(300.0, 700.0, 700.0, false), 300.0);
        assert_eq!(gpu_demand_watts(400.0, 400.0, 700.0, true), 700.0);
        assert_eq!(gpu_demand_watts(390.0, 500.0, 700.0, true), 590.0);
        assert_eq!(gpu_demand_watts(f64::NAN, 500.0, 700.0, true), 200.0);
    }
}
