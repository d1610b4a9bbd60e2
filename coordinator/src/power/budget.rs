//! A group's power budget as the replicated state keeps it, and what the
//! services check against the nodes before proposing one.

use herd_api::node::NodeInfo;
use herd_api::power::{gpu_nameplate, PowerGroup};
use herd_api::resources::Resources;
use serde::{Deserialize, Serialize};

use crate::state::ClusterState;

/// A group's GPU power budget (stored as JSON inside its record, so that
/// fields added later can default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerBudget {
    /// Watts the group's GPUs may draw together.
    pub watts: u64,
    /// First threshold, thousandths of `watts`: cap low-priority work.
    pub cap_permille: u32,
    /// Second threshold, thousandths of `watts`: cap everything.
    pub hard_permille: u32,
    /// When it was set (leader's clock, ms since the epoch).
    pub set_at_ms: u64,
    /// Raft index of the command that set it.
    pub modify_index: u64,
}

/// The nodes of `group`, registered, whatever their status: a node marked
/// down may only be cut off, and it keeps drawing power under its last
/// share, so it keeps its part of the budget.
pub fn group_nodes<'s>(state: &'s ClusterState, group: &PowerGroup) -> Vec<&'s NodeInfo> {
    state
        .nodes
        .values()
        .filter(|n| group.contains(&n.labels))
        .collect()
}

/// The nameplate power (sum of TDPs) of what a node offers, in watts.
pub fn nameplate_watts(capacity: &Resources) -> f64 {
    let model = capacity.gpu_model.as_deref().unwrap_or("");
    f64::from(capacity.gpus) * f64::from(gpu_nameplate(model).max_watts)
}

/// What a node's GPUs draw with nothing running, in watts (an estimate:
/// the GPU count it reported times its model's idle figure).
pub fn idle_watts(capacity: &Resources) -> f64 {
    let model = capacity.gpu_model.as_deref().unwrap_or("");
    f64::from(capacity.gpus) * f64::from(gpu_nameplate(model).idle_watts)
}

/// Why a budget cannot be set on the nodes as they are, or None: the group
/// must have a node, a GPU, and the budget must cover its idle GPU power.
pub fn check_against_nodes(state: &ClusterState, group: &PowerGroup, watts: u64) -> Option<String> {
    let nodes = group_nodes(state, group);
    if nodes.is_empty() {
        return Some(match group {
            PowerGroup::Cluster => "group cluster: no node is registered".to_string(),
            PowerGroup::Label { key, value } => {
                let mut known: Vec<&str> = state
                    .nodes
                    .values()
                    .filter_map(|n| n.labels.get(key).map(String::as_str))
                    .collect();
                known.sort_unstable();
                known.dedup();
                if known.is_empty() {
                    format!("group {group}: no node has the label {key:?}")
                } else {
                    format!(
                        "group {group}: no node has {key}={value} (values of {key}: {})",
                        known.join(", ")
                    )
                }
            }
        });
    }
    let gpus: u64 = nodes.iter().map(|n| u64::from(n.capacity.gpus)).sum();
    if gpus == 0 {
        return Some(format!(
            "group {group}: its {} node(s) have no GPU to cap",
            nodes.len()
        ));
    }
    let idle: f64 = nodes.iter().map(|n| idle_watts(&n.capacity)).sum();
    if (watts as f64) < idle {
        return Some(format!(
            "budget of {watts} W is below group {group}'s idle GPU power of {idle:.0} W \
             ({gpus} GPU(s) on {} node(s))",
            nodes.len()
        ));
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use herd_api::node::NodeStatus;

    pub(crate) fn node(name: &str, rack: &str, gpus: u32, model: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            addr: "127.0.0.1:1".into(),
            capacity: Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                gpus,
                gpu_model: (!model.is_empty()).then(|| model.to_string()),
            },
            labels: [("rack".to_string(), rack.to_string())].into(),
            status: NodeStatus::Ready,
            eligible: true,
            registered_at_ms: 1,
        }
    }

    #[test]
    fn budgets_need_a_group_with_gpus_and_at_least_its_idle_power() {
        let mut state = ClusterState::default();
        for n in [
            node("a", "r1", 8, "h100"),
            node("b", "r1", 4, "a100"),
            node("c", "r2", 0, ""),
        ] {
            state.nodes.insert(n.name.clone(), n);
        }
        let r1 = PowerGroup::parse("rack=r1").expect("group");
        assert_eq!(group_nodes(&state, &r1).len(), 2);
        // Idle: 8 × 80 W + 4 × 55 W = 860 W.
        assert_eq!(check_against_nodes(&state, &r1, 860), None);
        let e = check_against_nodes(&state, &r1, 859).expect("below idle");
        assert!(
            e.contains("idle GPU power of 860 W") && e.contains("12 GPU(s) on 2 node(s)"),
            "{e}"
        );
        let e = check_against_nodes(&state, &PowerGroup::parse("rack=r9").expect("g"), 10_000)
            .expect("unknown");
        assert!(
            e.contains("no node has rack=r9 (values of rack: r1, r2)"),
            "{e}"
        );
        let e = check_against_nodes(&state, &PowerGroup::parse("zone=z").expect("g"), 10_000)
            .expect("unknown");
        assert!(e.contains("no node has the label \"zone\""), "{e}");
        let e = check_against_nodes(&state, &PowerGroup::parse("rack=r2").expect("g"), 10_000)
            .expect("no GPU");
        assert!(e.contains("no GPU"), "{e}");
        assert_eq!(
            check_against_nodes(&state, &PowerGroup::Cluster, 10_000),
            None
        );
        assert!(
            check_against_nodes(&ClusterState::default(), &PowerGroup::Cluster, 10_000).is_some()
        );
        assert_eq!(nameplate_watts(&state.nodes["a"].capacity), 5600.0);
    }
}
