//! Power budgets in the replicated state: set and remove, with the checks
//! that depend on the command alone (group syntax, watts, thresholds).
//! Checks against the nodes (a group no node belongs to, a budget below
//! the group's idle power) belong to the service: nodes come and go, and
//! a budget stays valid as they do.

use herd_api::power::{check_permille, check_watts, PowerGroup};

use crate::machine::command::{CommandResult, Rejection};
use crate::power::PowerBudget;
use crate::state::{ChangeLog, ClusterState, Record};

/// Most budgets the state keeps: each is checked at every heartbeat.
pub const MAX_BUDGETS: usize = 1024;

fn refuse(reason: String) -> CommandResult {
    CommandResult::Rejected(Rejection::PowerBudget(reason))
}

/// The budget asked for, as a [`crate::machine::command::Command::SetPowerBudget`] carries it.
pub struct BudgetRequest<'a> {
    /// The group text.
    pub group: &'a str,
    /// Watts.
    pub watts: u64,
    /// First threshold, thousandths.
    pub cap_permille: u32,
    /// Second threshold, thousandths.
    pub hard_permille: u32,
}

/// Sets (or replaces) a group's budget; the group is stored as
/// [`PowerGroup`] prints it.
pub fn set_budget(
    state: &mut ClusterState,
    index: u64,
    request: BudgetRequest<'_>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let group = match PowerGroup::parse(request.group) {
        Ok(group) => group.to_string(),
        Err(e) => return refuse(format!("group: {e}")),
    };
    if let Err(e) = check_watts(request.watts) {
        return refuse(format!("group {group}: {e}"));
    }
    if let Err(e) = check_permille(request.cap_permille, request.hard_permille) {
        return refuse(format!("group {group}: {e}"));
    }
    if !state.power_budgets.contains_key(&group) && state.power_budgets.len() >= MAX_BUDGETS {
        return refuse(format!(
            "group {group}: the cluster already has {MAX_BUDGETS} budgets"
        ));
    }
    state.power_budgets.insert(
        group.clone(),
        PowerBudget {
            watts: request.watts,
            cap_permille: request.cap_permille,
            hard_permille: request.hard_permille,
            set_at_ms: now_ms,
            modify_index: index,
        },
    );
    changes.put(Record::PowerBudget(&group), state);
    CommandResult::PowerBudgetUpdated { group }
}

/// Removes a group's budget; a group without one is refused.
pub fn remove_budget(
    state: &mut ClusterState,
    group: &str,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let group = match PowerGroup::parse(group) {
        Ok(group) => group.to_string(),
        Err(e) => return refuse(format!("group: {e}")),
    };
    if state.power_budgets.remove(&group).is_none() {
        return refuse(format!("group {group} has no power budget"));
    }
    changes.put(Record::PowerBudget(&group), state);
    CommandResult::PowerBudgetUpdated { group }
}

#[cfg(test)]
mod tests {
    use crate::machine::command::{Command, CommandResult, Rejection};
    use crate::state::ClusterState;
    use crate::testkit::run;

    fn set(group: &str, watts: u64, cap: u32, hard: u32) -> Command {
        Command::SetPowerBudget {
            group: group.into(),
            watts,
            cap_permille: cap,
            hard_permille: hard,
            now_ms: 42,
        }
    }

    #[test]
    fn budgets_are_set_replaced_and_removed() {
        let mut state = ClusterState::default();
        let (r, ops) = run(&mut state, 5, set("rack=r1", 40_000, 900, 970));
        assert_eq!(
            r,
            CommandResult::PowerBudgetUpdated {
                group: "rack=r1".into()
            }
        );
        assert_eq!(ops.len(), 1);
        let budget = &state.power_budgets["rack=r1"];
        assert_eq!(
            (budget.watts, budget.set_at_ms, budget.modify_index),
            (40_000, 42, 5)
        );
        run(&mut state, 6, set("rack=r1", 30_000, 800, 950));
        assert_eq!(state.power_budgets["rack=r1"].watts, 30_000);
        assert_eq!(state.power_budgets.len(), 1);
        let (r, ops) = run(
            &mut state,
            7,
            Command::RemovePowerBudget {
                group: "rack=r1".into(),
            },
        );
        assert_eq!(
            r,
            CommandResult::PowerBudgetUpdated {
                group: "rack=r1".into()
            }
        );
        assert_eq!(ops.len(), 1);
        assert!(state.power_budgets.is_empty());
    }

    #[test]
    fn bad_budgets_are_refused_and_change_nothing() {
        let mut state = ClusterState::default();
        run(&mut state, 1, set("cluster", 1000, 900, 970));
        let before = state.clone();
        for (command, needle) in [
            (set("cluster", 0, 900, 970), "more than 0"),
            (set("cluster", 100_000_001, 900, 970), "100 MW"),
            (set("rack", 1000, 900, 970), "key=value"),
            (set("rack=", 1000, 900, 970), "non-empty"),
            (set("cluster", 1000, 990, 970), "second threshold"),
            (set("cluster", 1000, 100, 970), "first threshold"),
            (
                Command::RemovePowerBudget {
                    group: "rack=r1".into(),
                },
                "no power budget",
            ),
            (
                Command::RemovePowerBudget {
                    group: "bad group".into(),
                },
                "group",
            ),
        ] {
            let (r, ops) = run(&mut state, 2, command.clone());
            match r {
                CommandResult::Rejected(Rejection::PowerBudget(why)) => {
                    assert!(why.contains(needle), "{command:?}: {why}")
                }
                other => panic!("{command:?} applied: {other:?}"),
            }
            assert!(ops.is_empty());
            assert_eq!(state, before);
        }
    }

    #[test]
    fn power_commands_round_trip_through_the_log_codec() {
        for command in [
            set("rack=r1", 5, 900, 970),
            Command::RemovePowerBudget {
                group: "cluster".into(),
            },
        ] {
            let bytes = herd_consensus::codec::encode(&command).expect("encode");
            let back = crate::machine::legacy::decode_command(&bytes).expect("decode");
            assert_eq!(back, command);
        }
    }
}
