//! The yardstick: what the leader would do with a global view, in one
//! central decision — greedy, heaviest node to lightest node.
//!
//! Each step takes the heaviest and the lightest node and moves the
//! heaviest item from the first that fits in half their gap (so the pair
//! never swaps order), until the coefficient of variation is under the
//! target or no item fits. Greedy is not optimal (minimum-move balancing is
//! NP-hard, like bin packing), but it is what a central rebalancer would
//! do, and its move count is the "minimum needed" the decentralised
//! SIMULATION is compared against.

use serde::Serialize;

use crate::agent::Spread;

/// The central plan's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CentralReport {
    /// Moves in the plan.
    pub moves: u64,
    /// Weight moved, score points.
    pub moved_weight: f64,
    /// Lower bound on the weight any plan must move: the total excess
    /// over the mean.
    pub min_weight: f64,
    /// CV before.
    pub initial_cv: f64,
    /// CV after the plan.
    pub final_cv: f64,
}

/// Plans the central rebalancing of `nodes` (each node's item weights)
/// down to `cv_target`.
pub fn rebalance(nodes: &[Vec<f64>], cv_target: f64) -> CentralReport {
    let mut items: Vec<Vec<f64>> = nodes
        .iter()
        .map(|n| {
            let mut v = n.clone();
            v.sort_by(|a, b| b.total_cmp(a));
            v
        })
        .collect();
    let mut loads: Vec<f64> = items.iter().map(|v| v.iter().sum()).collect();
    let initial = Spread::of(&loads);
    let mean = initial.mean;
    let min_weight: f64 = loads.iter().map(|l| (l - mean).max(0.0)).sum();
    let (mut moves, mut moved) = (0u64, 0.0);
    loop {
        if loads.is_empty() || Spread::of(&loads).cv < cv_target {
            break;
        }
        let (h, l) = extremes(&loads);
        let gap = loads[h] - loads[l];
        // Items are sorted heaviest first: the first that fits.
        let Some(k) = items[h].iter().position(|&w| w <= gap / 2.0 && w > 0.0) else {
            break;
        };
        let w = items[h].remove(k);
        let pos = items[l].partition_point(|&x| x > w);
        items[l].insert(pos, w);
        loads[h] -= w;
        loads[l] += w;
        moves += 1;
        moved += w;
    }
    CentralReport {
        moves,
        moved_weight: moved,
        min_weight,
        initial_cv: initial.cv,
        final_cv: Spread::of(&loads).cv,
    }
}

fn extremes(loads: &[f64]) -> (usize, usize) {
    let (mut h, mut l) = (0, 0);
    for (i, &x) in loads.iter().enumerate() {
        if x > loads[h] {
            h = i;
        }
        if x < loads[l] {
            l = i;
        }
    }
    (h, l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_balances_two_nodes_in_few_moves() {
        let nodes = vec![vec![1.0; 10], vec![]];
        let r = rebalance(&nodes, 0.1);
        assert_eq!(r.moves, 5);
        assert!(r.final_cv < 1e-9);
        assert!((r.min_weight - 5.0).abs() < 1e-9);
    }
}
