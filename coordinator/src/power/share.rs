//! A group's budget split into node shares.
//!
//! Each node of a group gets a part of the budget proportional to its GPUs'
//! nameplate power (count × the model's TDP): a static split that depends on
//! the replicated state alone, so every leader (a new one included, before
//! it has heard a heartbeat) sends every node the same share, and a node
//! cut off keeps a share that the others' shares do not overlap. It is not
//! demand-aware: an idle node's unused watts are not lent to a busy one (a
//! later step; POLCA's own controller works per row the same way). A node
//! in several groups gets the smallest of its shares, with that budget's
//! thresholds, so it stays within every budget covering it.

use std::collections::BTreeMap;

use herd_api::power::{PowerGroup, Thresholds};
use herd_api::proto::agent::PowerShare;

use super::budget::{group_nodes, nameplate_watts};
use crate::state::ClusterState;

/// A node's share of a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeShare {
    /// Watts the node's GPUs may draw together.
    pub watts: f64,
    /// The budget's thresholds.
    pub thresholds: Thresholds,
    /// The group the share comes from.
    pub group: String,
}

impl From<&NodeShare> for PowerShare {
    fn from(share: &NodeShare) -> Self {
        PowerShare {
            watts: share.watts,
            cap_fraction: share.thresholds.cap,
            hard_fraction: share.thresholds.hard,
            release_fraction: share.thresholds.release,
            group: share.group.clone(),
        }
    }
}

/// Splits `budget_watts` over `nodes` (name, nameplate watts) in
/// proportion to their nameplate; nodes without GPUs get nothing. The
/// shares add up to the budget (when any node has a nameplate).
pub fn split(budget_watts: f64, nodes: &[(&str, f64)]) -> BTreeMap<String, f64> {
    let total: f64 = nodes.iter().map(|(_, w)| w.max(0.0)).sum();
    if total <= 0.0 || !total.is_finite() {
        return BTreeMap::new();
    }
    nodes
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(name, w)| (name.to_string(), budget_watts * w / total))
        .collect()
}

/// `node`'s share of the budgets covering it (the smallest), or None when
/// no budget covers it or it has no GPU.
pub fn share_of(state: &ClusterState, node: &str) -> Option<NodeShare> {
    let info = state.nodes.get(node)?;
    let mut best: Option<NodeShare> = None;
    for (group_text, budget) in &state.power_budgets {
        let Ok(group) = PowerGroup::parse(group_text) else {
            continue;
        };
        if !group.contains(&info.labels) {
            continue;
        }
        let Ok(thresholds) = Thresholds::from_permille(budget.cap_permille, budget.hard_permille)
        else {
            continue;
        };
        let members: Vec<(&str, f64)> = group_nodes(state, &group)
            .into_iter()
            .map(|n| (n.name.as_str(), nameplate_watts(&n.capacity)))
            .collect();
        let Some(watts) = split(budget.watts as f64, &members).get(node).copied() else {
            continue;
        };
        if best.as_ref().is_none_or(|b| watts < b.watts) {
            best = Some(NodeShare {
                watts,
                thresholds,
                group: group_text.clone(),
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::budget::tests::node;
    use crate::power::PowerBudget;

    fn budget(watts: u64) -> PowerBudget {
        PowerBudget {
            watts,
            cap_permille: 900,
            hard_permille: 970,
            set_at_ms: 1,
            modify_index: 1,
        }
    }

    #[test]
    fn shares_follow_the_nameplate_and_add_up_to_the_budget() {
        let shares = split(1000.0, &[("a", 5600.0), ("b", 1600.0), ("c", 0.0)]);
        assert_eq!(shares.len(), 2);
        assert!((shares["a"] - 1000.0 * 5600.0 / 7200.0).abs() < 1e-9);
        assert!((shares.values().sum::<f64>() - 1000.0).abs() < 1e-9);
        assert!(split(1000.0, &[("c", 0.0)]).is_empty());
        assert!(split(1000.0, &[]).is_empty());
    }

    #[test]
    fn a_node_gets_the_smallest_share_of_the_budgets_covering_it() {
        let mut state = ClusterState::default();
        for n in [
            node("a", "r1", 8, "h100"),
            node("b", "r1", 8, "h100"),
            node("c", "r2", 8, "h100"),
            node("d", "r2", 0, ""),
        ] {
            state.nodes.insert(n.name.clone(), n);
        }
        assert_eq!(share_of(&state, "a"), None, "no budget yet");
        state.power_budgets.insert("rack=r1".into(), budget(8000));
        let a = share_of(&state, "a").expect("covered");
        assert!((a.watts - 4000.0).abs() < 1e-9);
        assert_eq!(a.group, "rack=r1");
        assert_eq!(a.thresholds, Thresholds::default());
        assert_eq!(share_of(&state, "c"), None);
        // The whole cluster at 9000 W: 3000 W a GPU node, less than r1's 4000.
        state.power_budgets.insert("cluster".into(), budget(9000));
        let a = share_of(&state, "a").expect("covered");
        assert!((a.watts - 3000.0).abs() < 1e-9);
        assert_eq!(a.group, "cluster");
        assert!((share_of(&state, "c").expect("covered").watts - 3000.0).abs() < 1e-9);
        assert_eq!(share_of(&state, "d"), None, "no GPU, no share");
        assert_eq!(share_of(&state, "zz"), None);
        let wire = PowerShare::from(&a);
        assert_eq!((wire.cap_fraction, wire.hard_fraction), (0.9, 0.97));
    }
}
