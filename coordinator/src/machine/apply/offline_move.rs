//! Applying [`Command::AcceptOfflineMove`](crate::machine::command::Command::AcceptOfflineMove):
//! the reconciliation of a balancing move two agents made agent to agent
//! while every coordinator was away (docs/balancing.md).
//!
//! The rule, [`judge`], is a pure function of the state, used by the
//! service to answer and again by apply to decide (the state may have
//! changed between the two): the move is **accepted** as a switch-over if
//! the allocation is still where the move began, at the same generation,
//! still wanted and running, with no coordinator-recorded migration in
//! flight and no GPUs bound (a GPU binding is the leader's to choose); the
//! allocation then becomes the target's, one generation higher, in this one
//! entry, so the source's reports are fenced off as after any migration.
//! Otherwise the coordinators decided otherwise meanwhile (the allocation
//! stopped, was replaced after its node was marked down, or moved): the
//! move is **refused** and the target gives way. A move already accepted
//! (the allocation is the target's at the next generation) is answered as
//! accepted again, so either agent may report it, and repeat the report.

use herd_api::alloc::AllocDesired;

use crate::machine::apply::migration::active_migration_of;
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState, Record};

/// One reported move.
#[derive(Debug, Clone, Copy)]
pub struct OfflineMove<'a> {
    /// The move's id, as the agents journalled it.
    pub move_id: &'a str,
    /// The allocation.
    pub alloc_id: &'a str,
    /// The node it left.
    pub source: &'a str,
    /// The node it runs on.
    pub target: &'a str,
    /// Its generation when the move began.
    pub from_generation: u64,
}

/// What the coordinators make of a reported move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken already: the allocation is the target's at `generation`.
    Accepted {
        /// The allocation's generation now.
        generation: u64,
    },
    /// To be taken: the allocation is still where the move began.
    Accept,
    /// Refused, saying why: the target gives way.
    Refuse(String),
}

/// Decides what `m` does to `state`; see the module documentation.
pub fn judge(state: &ClusterState, m: &OfflineMove<'_>) -> Verdict {
    let Some(alloc) = state.allocations.get(m.alloc_id) else {
        return Verdict::Refuse(format!("allocation {} is gone", m.alloc_id));
    };
    if alloc.node == m.target && alloc.generation == m.from_generation + 1 {
        return Verdict::Accepted {
            generation: alloc.generation,
        };
    }
    if alloc.node != m.source || alloc.generation != m.from_generation {
        return Verdict::Refuse(format!(
            "allocation {} changed while the coordinators were away from the agents: it is on {} at generation {}, the move began on {} at {}",
            m.alloc_id, alloc.node, alloc.generation, m.source, m.from_generation
        ));
    }
    if alloc.desired != AllocDesired::Run || alloc.status.is_terminal() {
        return Verdict::Refuse(format!(
            "allocation {} is no longer wanted ({})",
            m.alloc_id,
            alloc.status.as_str()
        ));
    }
    if let Some(other) = active_migration_of(state, m.alloc_id) {
        return Verdict::Refuse(format!(
            "allocation {} is in migration {} recorded by the coordinators",
            m.alloc_id, other.id
        ));
    }
    if !alloc.gpu_indices.is_empty() {
        return Verdict::Refuse(format!(
            "allocation {} has GPUs bound; only the coordinators move it",
            m.alloc_id
        ));
    }
    if !state.nodes.contains_key(m.target) {
        return Verdict::Refuse(format!("node {} is not registered", m.target));
    }
    Verdict::Accept
}

/// Applies the move if [`judge`] still accepts it.
pub fn accept(
    state: &mut ClusterState,
    index: u64,
    m: &OfflineMove<'_>,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    match judge(state, m) {
        Verdict::Accept => {}
        Verdict::Accepted { .. } => {
            return CommandResult::AllocsUpdated {
                accepted: 0,
                refused: Vec::new(),
            }
        }
        Verdict::Refuse(why) => return CommandResult::Rejected(Rejection::Migration(why)),
    }
    state.move_alloc(m.alloc_id, m.target);
    if let Some(alloc) = state.allocations.get_mut(m.alloc_id) {
        alloc.generation += 1;
        alloc.modify_index = index;
        alloc.record(
            now_ms,
            "migrated",
            format!(
                "{}: {} \u{2192} {}, moved agent to agent while the coordinators were away (balancing)",
                m.move_id, m.source, m.target
            ),
        );
    }
    changes.put(Record::Alloc(m.alloc_id), state);
    CommandResult::AllocsUpdated {
        accepted: 1,
        refused: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use herd_api::alloc::AllocStatus;
    use herd_api::job::JobType;

    use super::*;
    use crate::machine::command::Command;
    use crate::testkit::{alloc_update, place, report, run, spec};

    /// One running `web` on one of n1, n2; returns the state, the
    /// allocation id, its node, the other node and the next index.
    fn running() -> (ClusterState, String, String, String, u64) {
        let mut state = ClusterState::default();
        let web = spec("web", JobType::Service, 1);
        let index = place(&mut state, &["n1", "n2"], vec![web], 1_000);
        let alloc = state.allocations.values().next().cloned().expect("placed");
        let update = alloc_update(&alloc, AllocStatus::Running);
        let (accepted, refused) = report(&mut state, index, &alloc.node, vec![update], 1_500);
        assert_eq!(accepted, 1, "{refused:?}");
        let other = if alloc.node == "n1" { "n2" } else { "n1" };
        (state, alloc.id, alloc.node, other.to_string(), index + 1)
    }

    fn reported(state: &mut ClusterState, index: u64, m: &OfflineMove<'_>) -> CommandResult {
        run(
            state,
            index,
            Command::AcceptOfflineMove {
                move_id: m.move_id.into(),
                alloc_id: m.alloc_id.into(),
                source: m.source.into(),
                target: m.target.into(),
                from_generation: m.from_generation,
                now_ms: 2_000,
            },
        )
        .0
    }

    #[test]
    fn a_move_of_an_allocation_still_where_it_began_is_a_switch_over() {
        let (mut state, id, source, target, index) = running();
        let generation = state.allocations[&id].generation;
        let m = OfflineMove {
            move_id: "off-1",
            alloc_id: &id,
            source: &source,
            target: &target,
            from_generation: generation,
        };
        assert_eq!(judge(&state, &m), Verdict::Accept);
        let result = reported(&mut state, index, &m);
        assert!(
            matches!(result, CommandResult::AllocsUpdated { accepted: 1, .. }),
            "{result:?}"
        );
        let alloc = &state.allocations[&id];
        assert_eq!(alloc.node, target);
        assert_eq!(alloc.generation, generation + 1);
        assert!(alloc.events.iter().any(|e| e.detail.contains("off-1")));
        // The other agent's report of the same move: accepted, unchanged.
        assert_eq!(
            judge(&state, &m),
            Verdict::Accepted {
                generation: generation + 1
            }
        );
        let again = reported(&mut state, index + 1, &m);
        assert!(
            matches!(again, CommandResult::AllocsUpdated { accepted: 0, .. }),
            "{again:?}"
        );
        assert_eq!(state.allocations[&id].generation, generation + 1);
    }

    #[test]
    fn a_move_the_coordinators_overtook_is_refused() {
        // The job stopped meanwhile.
        let (mut state, id, source, target, index) = running();
        let generation = state.allocations[&id].generation;
        let m = OfflineMove {
            move_id: "off-1",
            alloc_id: &id,
            source: &source,
            target: &target,
            from_generation: generation,
        };
        run(
            &mut state,
            index,
            Command::StopJob {
                name: "web".into(),
                now_ms: 1_800,
            },
        );
        assert!(matches!(judge(&state, &m), Verdict::Refuse(_)));
        let result = reported(&mut state, index + 1, &m);
        assert!(
            matches!(result, CommandResult::Rejected(Rejection::Migration(_))),
            "{result:?}"
        );
        assert_eq!(state.allocations[&id].node, source);

        // The source node was marked down and its work replaced.
        let (mut state, id, source, target, index) = running();
        let generation = state.allocations[&id].generation;
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: source.clone(),
                now_ms: 1_800,
            },
        );
        let m = OfflineMove {
            move_id: "off-2",
            alloc_id: &id,
            source: &source,
            target: &target,
            from_generation: generation,
        };
        let Verdict::Refuse(why) = judge(&state, &m) else {
            panic!("a move off a node marked down was accepted");
        };
        assert!(why.contains(&id), "{why}");

        // A stale generation, or a stranger's claim.
        let (state, id, source, target, _) = running();
        let generation = state.allocations[&id].generation;
        for (src, gen) in [
            (source.as_str(), generation + 5),
            (target.as_str(), generation),
        ] {
            let m = OfflineMove {
                move_id: "off-3",
                alloc_id: &id,
                source: src,
                target: &target,
                from_generation: gen,
            };
            assert!(
                matches!(judge(&state, &m), Verdict::Refuse(_)),
                "{src} {gen}"
            );
        }
        let m = OfflineMove {
            move_id: "off-4",
            alloc_id: "no-such",
            source: &source,
            target: &target,
            from_generation: generation,
        };
        assert!(matches!(judge(&state, &m), Verdict::Refuse(_)));
    }
}
