//! What nodes report of their GPUs' power with each heartbeat, bounded
//! (network input), and the per-group status built from it.

use herd_api::power::PowerGroup;
use herd_api::proto::v1::{GroupPowerStatus, NodeUsage, PowerEvent};

use super::budget::{group_nodes, idle_watts};
use super::PowerBudget;
use crate::state::ClusterState;

/// Most GPUs kept per node report.
pub const MAX_REPORTED_GPUS: usize = 64;
/// Most power events kept per node report.
pub const MAX_REPORTED_EVENTS: usize = 8;
/// Most events a group's status shows.
pub const MAX_GROUP_EVENTS: usize = 16;
/// Longest event detail kept, in characters.
pub const MAX_EVENT_DETAIL: usize = 512;
/// Longest event kind or GPU class kept, in characters.
const MAX_WORD: usize = 32;

fn truncate(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
    }
}

/// `usage` with its power lists cut to their bounds and its texts to their
/// lengths, and non-finite draws read as 0: what the leader keeps in memory.
pub fn bound_usage(mut usage: NodeUsage) -> NodeUsage {
    if !usage.gpu_power_watts.is_finite() || usage.gpu_power_watts < 0.0 {
        usage.gpu_power_watts = 0.0;
    }
    usage.gpus.truncate(MAX_REPORTED_GPUS);
    for gpu in &mut usage.gpus {
        if !gpu.draw_watts.is_finite() || gpu.draw_watts < 0.0 {
            gpu.draw_watts = 0.0;
        }
        truncate(&mut gpu.class, MAX_WORD);
    }
    truncate(&mut usage.gpu_backend, MAX_WORD);
    let extra = usage.power_events.len().saturating_sub(MAX_REPORTED_EVENTS);
    usage.power_events.drain(..extra);
    for event in &mut usage.power_events {
        truncate(&mut event.kind, MAX_WORD);
        truncate(&mut event.detail, MAX_EVENT_DETAIL);
    }
    usage
}

/// The wire form of a budget, with its group's node count and idle power.
pub fn budget_to_proto(
    state: &ClusterState,
    group_text: &str,
    budget: &PowerBudget,
) -> herd_api::proto::v1::PowerBudget {
    let nodes = PowerGroup::parse(group_text)
        .map(|g| group_nodes(state, &g))
        .unwrap_or_default();
    herd_api::proto::v1::PowerBudget {
        group: group_text.to_string(),
        watts: budget.watts,
        cap_permille: budget.cap_permille,
        hard_permille: budget.hard_permille,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        idle_watts: nodes.iter().map(|n| idle_watts(&n.capacity)).sum(),
        set_at_ms: budget.set_at_ms,
        modify_index: budget.modify_index,
    }
}

/// Every budget's status: draw summed from the group's nodes' last
/// heartbeats (`usage_of`, the leader's memory), headroom, capped GPUs and
/// the newest events.
pub fn group_status(
    state: &ClusterState,
    usage_of: impl Fn(&str) -> Option<NodeUsage>,
) -> Vec<GroupPowerStatus> {
    state
        .power_budgets
        .iter()
        .map(|(group_text, budget)| {
            let nodes = PowerGroup::parse(group_text)
                .map(|g| group_nodes(state, &g))
                .unwrap_or_default();
            let mut draw = 0.0;
            let mut capped = 0u32;
            let mut reporting = 0u32;
            let mut events: Vec<PowerEvent> = Vec::new();
            for node in nodes {
                let Some(usage) = usage_of(&node.name) else {
                    continue;
                };
                reporting += 1;
                draw += usage.gpu_power_watts;
                capped += u32::try_from(usage.gpus.iter().filter(|g| g.capped).count())
                    .unwrap_or(u32::MAX);
                events.extend(usage.power_events.into_iter().map(|e| PowerEvent {
                    detail: format!("{}: {}", node.name, e.detail),
                    ..e
                }));
            }
            events.sort_by_key(|e| e.at_ms);
            let extra = events.len().saturating_sub(MAX_GROUP_EVENTS);
            events.drain(..extra);
            GroupPowerStatus {
                budget: Some(budget_to_proto(state, group_text, budget)),
                draw_watts: draw,
                headroom_watts: budget.watts as f64 - draw,
                capped_gpus: capped,
                reporting_nodes: reporting,
                events,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::budget::tests::node;
    use herd_api::proto::v1::GpuPower;

    #[test]
    fn usage_is_bounded() {
        let usage = NodeUsage {
            gpu_power_watts: f64::NAN,
            gpus: (0..100)
                .map(|i| GpuPower {
                    index: i,
                    draw_watts: f64::INFINITY,
                    class: "x".repeat(100),
                    ..GpuPower::default()
                })
                .collect(),
            power_events: (0..20)
                .map(|i| PowerEvent {
                    at_ms: i,
                    kind: "cap".into(),
                    detail: "é".repeat(1000),
                })
                .collect(),
            gpu_backend: "n".repeat(10_000),
            ..NodeUsage::default()
        };
        let bounded = bound_usage(usage);
        assert_eq!(bounded.gpu_power_watts, 0.0);
        assert_eq!(bounded.gpu_backend.len(), MAX_WORD);
        assert_eq!(bounded.gpus.len(), MAX_REPORTED_GPUS);
        assert!(bounded
            .gpus
            .iter()
            .all(|g| g.draw_watts == 0.0 && g.class.len() == MAX_WORD));
        assert_eq!(bounded.power_events.len(), MAX_REPORTED_EVENTS);
        assert_eq!(bounded.power_events[0].at_ms, 12, "the newest kept");
        assert_eq!(
            bounded.power_events[0].detail.chars().count(),
            MAX_EVENT_DETAIL
        );
    }

    #[test]
    fn status_sums_the_groups_reports() {
        let mut state = ClusterState::default();
        for n in [
            node("a", "r1", 8, "h100"),
            node("b", "r1", 8, "h100"),
            node("c", "r2", 8, "h100"),
        ] {
            state.nodes.insert(n.name.clone(), n);
        }
        state.power_budgets.insert(
            "rack=r1".into(),
            PowerBudget {
                watts: 8000,
                cap_permille: 900,
                hard_permille: 970,
                set_at_ms: 5,
                modify_index: 9,
            },
        );
        let usage = |name: &str| -> Option<NodeUsage> {
            let capped = name == "a";
            (name != "b").then(|| NodeUsage {
                gpu_power_watts: 4500.0,
                gpus: vec![
                    GpuPower {
                        index: 0,
                        capped,
                        ..GpuPower::default()
                    },
                    GpuPower {
                        index: 1,
                        capped,
                        ..GpuPower::default()
                    },
                ],
                power_events: vec![PowerEvent {
                    at_ms: 3,
                    kind: "cap".into(),
                    detail: "2 GPU(s) lowered".into(),
                }],
                ..NodeUsage::default()
            })
        };
        let status = group_status(&state, usage);
        assert_eq!(status.len(), 1);
        let s = &status[0];
        let budget = s.budget.as_ref().expect("budget");
        assert_eq!(
            (budget.group.as_str(), budget.watts, budget.nodes),
            ("rack=r1", 8000, 2)
        );
        assert_eq!(budget.idle_watts, 1280.0);
        assert_eq!((s.draw_watts, s.headroom_watts), (4500.0, 3500.0));
        assert_eq!((s.capped_gpus, s.reporting_nodes), (2, 1));
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].detail, "a: 2 GPU(s) lowered");
    }
}
