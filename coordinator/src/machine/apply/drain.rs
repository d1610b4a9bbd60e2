//! Draining a node: no new work goes there, and what runs is moved away,
//! at once ([`drain_now`]) or, for batch work, by a deadline
//! ([`drain_within`]) so that jobs close to finishing are not thrown away.

use herd_api::job::JobType;
use herd_api::node::NodeStatus;

use crate::machine::apply::plan::stop_matching;
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState, Record};

/// Longest grace a drain accepts (a week): a longer one is a typo.
pub const MAX_DRAIN_GRACE_MS: u64 = 7 * 24 * 3600 * 1000;

fn start_draining(
    state: &mut ClusterState,
    node: &str,
    changes: &mut ChangeLog<'_>,
) -> Result<(), CommandResult> {
    let Some(info) = state.nodes.get_mut(node) else {
        return Err(CommandResult::Rejected(Rejection::NodeNotFound(
            node.to_string(),
        )));
    };
    if info.status != NodeStatus::Down {
        info.status = NodeStatus::Draining;
    }
    info.eligible = false;
    changes.put(Record::Node(node), state);
    Ok(())
}

/// Ends a drain's deadline, if it had one.
pub fn clear_deadline(state: &mut ClusterState, node: &str, changes: &mut ChangeLog<'_>) {
    if state.drain_deadlines.remove(node).is_some() {
        changes.put(Record::DrainDeadline(node), state);
    }
}

/// Drains `node` now: everything running there is stopped and placed
/// again elsewhere by the scheduler.
pub fn drain_now(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if let Err(rejected) = start_draining(state, node, changes) {
        return rejected;
    }
    clear_deadline(state, node, changes);
    stop_matching(
        state,
        index,
        now_ms,
        changes,
        &format!("node {node} drained"),
        |a| a.node == node,
    );
    CommandResult::NodeUpdated
}

/// Drains `node` with a deadline `grace_ms` from now: service allocations
/// are stopped (and placed elsewhere) now, batch allocations may run to
/// completion until the deadline, when the leader drains the node at once.
pub fn drain_within(
    state: &mut ClusterState,
    index: u64,
    node: &str,
    grace_ms: u64,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    if grace_ms > MAX_DRAIN_GRACE_MS {
        return CommandResult::Rejected(Rejection::Invalid(format!(
            "drain deadline of {grace_ms} ms is over a week"
        )));
    }
    if let Err(rejected) = start_draining(state, node, changes) {
        return rejected;
    }
    state
        .drain_deadlines
        .insert(node.to_string(), now_ms.saturating_add(grace_ms));
    changes.put(Record::DrainDeadline(node), state);
    let services: Vec<String> = state
        .jobs
        .values()
        .filter(|j| j.spec.job_type == JobType::Service)
        .map(|j| j.spec.name.clone())
        .collect();
    stop_matching(
        state,
        index,
        now_ms,
        changes,
        &format!("node {node} draining"),
        |a| a.node == node && services.contains(&a.job),
    );
    CommandResult::NodeUpdated
}

/// Nodes whose drain deadline has passed at `now_ms`.
pub fn lapsed_drains(state: &ClusterState, now_ms: u64) -> Vec<String> {
    state
        .drain_deadlines
        .iter()
        .filter(|(_, deadline)| **deadline <= now_ms)
        .map(|(node, _)| node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::{AllocDesired, AllocStatus};
    use herd_api::job::JobType;
    use herd_api::node::NodeStatus;

    use super::*;
    use crate::machine::command::Command;
    use crate::testkit::{place, run, spec};

    fn desired_on(state: &ClusterState, job: &str, node: &str) -> Vec<AllocDesired> {
        state
            .allocations
            .values()
            .filter(|a| a.job == job && a.node == node)
            .map(|a| a.desired)
            .collect()
    }

    #[test]
    fn a_drain_with_a_deadline_moves_services_now_and_batch_work_at_the_deadline() {
        let mut state = ClusterState::default();
        let index = place(
            &mut state,
            &["n1"],
            vec![
                spec("web", JobType::Service, 1),
                spec("train", JobType::Batch, 1),
            ],
            1_000,
        );
        let (result, _) = run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: 60_000,
                now_ms: 2_000,
            },
        );
        assert_eq!(result, CommandResult::NodeUpdated);
        assert_eq!(state.nodes["n1"].status, NodeStatus::Draining);
        assert!(!state.nodes["n1"].eligible);
        assert_eq!(desired_on(&state, "web", "n1"), vec![AllocDesired::Stop]);
        assert_eq!(desired_on(&state, "train", "n1"), vec![AllocDesired::Run]);
        assert!(lapsed_drains(&state, 61_999).is_empty());
        assert_eq!(lapsed_drains(&state, 62_000), vec!["n1".to_string()]);

        // The deadline survives a restart (it is persisted)...
        let restored = ClusterState::from_pairs(state.to_pairs()).expect("restore");
        assert_eq!(restored.drain_deadlines.get("n1"), Some(&62_000));
        // ...and the leader's drain at the deadline stops the rest and ends it.
        run(
            &mut state,
            index + 1,
            Command::DrainNode {
                node: "n1".into(),
                now_ms: 62_000,
            },
        );
        assert_eq!(desired_on(&state, "train", "n1"), vec![AllocDesired::Stop]);
        assert!(state.drain_deadlines.is_empty());
        let pending_stopped = state
            .allocations
            .values()
            .all(|a| a.status != AllocStatus::Pending);
        assert!(pending_stopped, "never-started work stops at once");
    }

    #[test]
    fn eligibility_on_ends_a_drain_and_its_deadline() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1"], vec![], 1_000);
        run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: 1_000,
                now_ms: 2_000,
            },
        );
        run(
            &mut state,
            index + 1,
            Command::SetNodeEligibility {
                node: "n1".into(),
                eligible: true,
            },
        );
        assert_eq!(state.nodes["n1"].status, NodeStatus::Ready);
        assert!(lapsed_drains(&state, u64::MAX).is_empty());
    }

    #[test]
    fn absurd_or_unknown_drains_are_refused() {
        let mut state = ClusterState::default();
        let index = place(&mut state, &["n1"], vec![], 1_000);
        let (result, ops) = run(
            &mut state,
            index,
            Command::DrainNodeWithin {
                node: "n1".into(),
                grace_ms: MAX_DRAIN_GRACE_MS + 1,
                now_ms: 2_000,
            },
        );
        assert!(matches!(
            result,
            CommandResult::Rejected(Rejection::Invalid(_))
        ));
        assert!(ops.is_empty(), "nothing written");
        let (result, _) = run(
            &mut state,
            index + 1,
            Command::DrainNodeWithin {
                node: "ghost".into(),
                grace_ms: 1_000,
                now_ms: 2_000,
            },
        );
        assert!(matches!(
            result,
            CommandResult::Rejected(Rejection::NodeNotFound(_))
        ));
    }
}
