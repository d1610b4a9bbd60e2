//! The replicated power budgets as the scheduler's [`PowerLimit`]s, so that
//! placement (the leader's plan and `apply`'s re-check alike) never commits
//! a group's GPUs past its hard budget.
//!
//! A pure function of the state: the leader and every member applying a
//! plan compute the same limits from the same state.

use herd_api::power::PowerGroup;

use crate::planning::{power_class_of, reservations};
use crate::scheduler::{extra_watts_of, idle_watts_of, PowerLimit};
use crate::state::ClusterState;

use super::budget::group_nodes;

/// Every budget as a power limit for a call that is given the nodes for
/// which `seen` holds: what the group's other nodes commit (their GPUs'
/// idle draw, their allocations' and incoming migrations' expected draw
/// above idle) is carried in [`PowerLimit::unseen_watts`]. Budgets whose
/// group text no longer parses are left out (apply checks it on the way
/// in, so none should exist).
///
/// Costs O(budgets × unseen nodes of their groups, and their allocations),
/// nothing beyond the budgets' groups, and nothing at all without budgets.
pub fn power_limits(state: &ClusterState, seen: impl Fn(&str) -> bool) -> Vec<PowerLimit> {
    state
        .power_budgets
        .iter()
        .filter_map(|(text, budget)| {
            let group = PowerGroup::parse(text).ok()?;
            let mut unseen: u64 = 0;
            for node in group_nodes(state, &group) {
                if seen(&node.name) {
                    continue;
                }
                unseen = unseen.saturating_add(idle_watts_of(&node.capacity));
                for alloc in state.allocs_on_node(&node.name) {
                    if alloc.status.holds_resources() {
                        let class = power_class_of(state, &alloc.job);
                        let gpus = u64::from(alloc.resources.gpus);
                        unseen = unseen.saturating_add(extra_watts_of(&node.capacity, class, gpus));
                    }
                }
            }
            let unseen_target = |name: &str| {
                !seen(name)
                    && state
                        .nodes
                        .get(name)
                        .is_some_and(|n| group.contains(&n.labels))
            };
            for incoming in reservations(state, unseen_target) {
                if let Some(node) = state.nodes.get(&incoming.node) {
                    let gpus = u64::from(incoming.resources.gpus);
                    let extra = extra_watts_of(&node.capacity, incoming.power_class, gpus);
                    unseen = unseen.saturating_add(extra);
                }
            }
            Some(PowerLimit {
                group,
                budget_watts: budget.watts,
                hard_permille: budget.hard_permille,
                unseen_watts: unseen,
            })
        })
        .collect()
}

/// [`power_limits`] for a call given every node (a scheduling pass, a
/// drain's targets): nothing is unseen.
pub fn power_limits_all_seen(state: &ClusterState) -> Vec<PowerLimit> {
    power_limits(state, |_| true)
}

#[cfg(test)]
mod tests {
    use herd_api::job::JobType;
    use herd_api::power_class::PowerClass;

    use super::*;
    use crate::machine::command::{Command, CommandResult};
    use crate::planning::{plan_job, PlannedPlacement};
    use crate::testkit::{run, spec};

    /// Nodes a and b, 8 H100s each, in rack r1 with a 2500 W budget: idle
    /// 1280 W, hard budget 2425 W, room for one GPU at TDP (620 W).
    fn rack() -> (ClusterState, u64) {
        let mut state = ClusterState::default();
        let mut index = 1;
        for name in ["a", "b"] {
            let node = crate::power::budget::tests::node(name, "r1", 8, "h100");
            run(&mut state, index, Command::RegisterNode { node, now_ms: 1 });
            index += 1;
        }
        let budget = Command::SetPowerBudget {
            group: "rack=r1".into(),
            watts: 2500,
            cap_permille: 900,
            hard_permille: 970,
            now_ms: 1,
        };
        run(&mut state, index, budget);
        (state, index + 1)
    }

    fn gpu_job(name: &str, class: PowerClass) -> herd_api::job::JobSpec {
        let mut job = spec(name, JobType::Service, 1);
        job.task.resources.gpus = 1;
        job.task.resources.memory_bytes = 1 << 20;
        job.placement.power_class = class;
        job
    }

    #[test]
    fn apply_counts_the_nodes_a_plan_does_not_touch() {
        let (mut state, mut index) = rack();
        for name in ["one", "two"] {
            let spec = gpu_job(name, PowerClass::Max);
            run(&mut state, index, Command::SubmitJob { spec, now_ms: 2 });
            index += 1;
        }
        let limits = power_limits_all_seen(&state);
        assert_eq!(limits.len(), 1);
        assert_eq!((limits[0].hard_watts(), limits[0].unseen_watts), (2425, 0));
        // Both plans built on the same snapshot fit alone.
        let one = plan_job(&state, &state.jobs["one"], 2).expect("plan");
        let mut two = plan_job(&state, &state.jobs["two"], 2).expect("plan");
        assert_eq!(one.placements[0].node, "a");
        // The second goes to b instead (as after another snapshot), where
        // the check sees only b: a's GPU comes as unseen watts.
        two.placements = vec![PlannedPlacement::new(0, "b")];
        run(&mut state, index, Command::apply_plan(one, 2));
        let unseen = power_limits(&state, |n| n == "b")[0].unseen_watts;
        assert_eq!(unseen, 640 + 620);
        let (result, _) = run(&mut state, index + 1, Command::apply_plan(two, 2));
        let CommandResult::PlanApplied {
            placed, rejected, ..
        } = result
        else {
            panic!("{result:?}")
        };
        assert!(placed.is_empty(), "{placed:?}");
        assert!(
            rejected[0].contains("group rack=r1 would commit 2520 W"),
            "{rejected:?}"
        );
        let blocked = state.jobs["two"].blocked.clone().unwrap_or_default();
        assert!(blocked.contains("power: group rack=r1"), "{blocked}");
        // The next plan says why it waits.
        let again = plan_job(&state, &state.jobs["two"], 3).expect("plan");
        assert!(again.placements.is_empty());
        let blocked = again.blocked.unwrap_or_default();
        assert!(blocked.contains("held back by power"), "{blocked}");
    }

    fn set_budget(state: &mut ClusterState, index: u64, group: &str, watts: u64) {
        let budget = Command::SetPowerBudget {
            group: group.into(),
            watts,
            cap_permille: 900,
            hard_permille: 970,
            now_ms: 1,
        };
        run(state, index, budget);
    }

    #[test]
    fn a_move_needs_power_on_its_target_and_its_reservation_counts_there() {
        use herd_api::alloc::AllocStatus;
        use herd_api::capabilities::{DriverCaps, MigrationMode};
        let mut state = ClusterState::default();
        // g1 in r1 (no budget), g2 in r2: 2 H100s each, 160 W idle.
        for (index, (name, rack)) in [(1, ("g1", "r1")), (2, ("g2", "r2"))] {
            let node = crate::power::budget::tests::node(name, rack, 2, "h100");
            run(&mut state, index, Command::RegisterNode { node, now_ms: 1 });
            let caps = DriverCaps {
                migration: MigrationMode::LivePreCopy,
                pause: true,
                power_cap: false,
            };
            let drivers = Some([("vm".to_string(), caps)].into());
            let node = name.to_string();
            run(
                &mut state,
                10 + index,
                Command::SetNodeDrivers { node, drivers },
            );
        }
        // r2: 776 W hard, below 160 + 620 W.
        set_budget(&mut state, 13, "rack=r2", 800);
        let mut vm = gpu_job("vm", PowerClass::Max);
        vm.task.driver = "vm".into();
        // g2 has no power for it: it goes to g1.
        run(
            &mut state,
            14,
            Command::SubmitJob {
                spec: vm,
                now_ms: 2,
            },
        );
        let plan = plan_job(&state, &state.jobs["vm"], 2).expect("plan");
        run(&mut state, 15, Command::apply_plan(plan, 2));
        let alloc = state.allocs_of_job("vm").next().expect("placed").clone();
        assert_eq!(alloc.node, "g1");
        let update = crate::testkit::alloc_update(&alloc, AllocStatus::Running);
        crate::testkit::report(&mut state, 16, "g1", vec![update], 16);
        let start = |target: &str| Command::StartMigration {
            alloc_id: alloc.id.clone(),
            target: target.into(),
            downtime_limit_ms: 300,
            bandwidth_bytes_per_sec: None,
            now_ms: 17,
        };
        let (refused, _) = run(&mut state, 17, start("g2"));
        let text = format!("{refused:?}");
        assert!(
            text.contains("group rack=r2 would commit 780 W") && state.migrations.is_empty(),
            "{text}"
        );
        // With room (970 W hard) it starts, and its reservation commits
        // 620 W on g2's group while it runs: no GPU job at TDP fits r2.
        set_budget(&mut state, 18, "rack=r2", 1000);
        let (started, _) = run(&mut state, 19, start("g2"));
        assert!(
            matches!(started, CommandResult::MigrationUpdated { .. }),
            "{started:?}"
        );
        let r2 = |state: &ClusterState, seen: &dyn Fn(&str) -> bool| {
            power_limits(state, seen)
                .into_iter()
                .find(|l| l.group.to_string() == "rack=r2")
                .expect("r2")
        };
        assert_eq!(r2(&state, &|n| n != "g2").unseen_watts, 160 + 620);
        assert_eq!(r2(&state, &|_| true).unseen_watts, 0);
        let mut late = gpu_job("late", PowerClass::Max);
        late.placement.constraints = vec![herd_api::placement::LabelConstraint {
            label: "rack".into(),
            op: herd_api::placement::ConstraintOp::Equals,
            value: Some("r2".into()),
        }];
        run(
            &mut state,
            20,
            Command::SubmitJob {
                spec: late,
                now_ms: 20,
            },
        );
        let plan = plan_job(&state, &state.jobs["late"], 20).expect("plan");
        assert!(plan.placements.is_empty(), "{plan:?}");
        let blocked = plan.blocked.unwrap_or_default();
        assert!(
            blocked.contains("group rack=r2 would commit 1400 W"),
            "{blocked}"
        );
    }

    #[test]
    fn a_lower_class_commits_less_and_unparsable_groups_are_skipped() {
        let (mut state, mut index) = rack();
        for name in ["one", "two"] {
            let spec = gpu_job(name, PowerClass::Low);
            run(&mut state, index, Command::SubmitJob { spec, now_ms: 2 });
            index += 1;
            let plan = plan_job(&state, &state.jobs[name], 2).expect("plan");
            assert_eq!(plan.placements.len(), 1, "{plan:?}");
            run(&mut state, index, Command::apply_plan(plan, 2));
            index += 1;
        }
        // Two GPUs at 350 W: 270 W each above idle, both on a.
        assert_eq!(
            power_limits(&state, |n| n == "b")[0].unseen_watts,
            640 + 540
        );
        state
            .power_budgets
            .insert("not a group".into(), state.power_budgets["rack=r1"].clone());
        assert_eq!(power_limits_all_seen(&state).len(), 1);
    }
}
