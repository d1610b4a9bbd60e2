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
//!
//! A move its **source** reports still `switching` (it asked the target to
//! commit and never heard the answer: the target died, or is cut off) is
//! settled by [`settle`], again a pure function, taken as one entry
//! ([`Command::SettleOfflineMove`](crate::machine::command::Command::SettleOfflineMove)):
//! if the target reported the move switched (accepted above), it is the
//! target's and the source destroys its copy; if the target is down (marked
//! down, or its heartbeat TTL lapsed as the leader saw it) or told the
//! source it never took over, the allocation stays the source's, at its
//! generation, and the source resumes its copy. That decision is recorded
//! as an aborted migration under the move's id, so that a target coming
//! back later with the move journalled `switched` is refused by [`judge`]
//! and gives way. Otherwise the target is alive and silent: the source asks
//! again later.

use herd_api::alloc::AllocDesired;
use herd_api::migration::{Migration, MigrationPhase};
use herd_api::node::NodeStatus;

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
    match judge_allocation(state, m) {
        Verdict::Accept if !state.nodes.contains_key(m.target) => {
            Verdict::Refuse(format!("node {} is not registered", m.target))
        }
        verdict => verdict,
    }
}

/// [`judge`] without the check that the target is registered (a target
/// gone from the list is, to [`settle`], a target down).
fn judge_allocation(state: &ClusterState, m: &OfflineMove<'_>) -> Verdict {
    let Some(alloc) = state.allocations.get(m.alloc_id) else {
        return Verdict::Refuse(format!("allocation {} is gone", m.alloc_id));
    };
    if let Some(settled) = state.migrations.get(m.move_id) {
        return Verdict::Refuse(format!(
            "move {} was settled by the coordinators: {}",
            m.move_id,
            settled.error.as_deref().unwrap_or("not the target's")
        ));
    }
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

/// What the source of a move it could not finish says of its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetWord {
    /// The leader has not heard the target's heartbeat for its TTL (the
    /// leader's own observation, so the entry carrying it is fenced by
    /// the leader's term).
    pub silent: bool,
    /// The target answered the source, after the source stopped asking
    /// it to commit, that it does not hold the move as taken over
    /// (`aborted`, or no such move): it never will.
    pub disowned: bool,
}

/// What the coordinators make of a move its source reports unsettled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The target reported it switched and it was accepted: the
    /// allocation is the target's at `generation`; the source's copy goes.
    Target {
        /// The allocation's generation now.
        generation: u64,
    },
    /// The allocation stays the source's at its generation; the source
    /// resumes its copy. `recorded`: the decision is in the state already.
    Source {
        /// Why (kept with the record).
        reason: String,
        /// Whether an entry recorded it already.
        recorded: bool,
    },
    /// The target is alive and has not reported: ask again later.
    Wait(String),
    /// The coordinators decided otherwise meanwhile (the allocation
    /// stopped, moved or was replaced): their own set says what runs.
    Refuse(String),
}

/// Settles a move its source reports still `switching`; see the module
/// documentation.
pub fn settle(state: &ClusterState, m: &OfflineMove<'_>, word: TargetWord) -> Settlement {
    if let Some(record) = state.migrations.get(m.move_id) {
        let ours = record.alloc_id == m.alloc_id
            && record.source == m.source
            && record.target == m.target
            && record.from_generation == m.from_generation
            && record.phase == MigrationPhase::Aborted;
        if !ours {
            return Settlement::Refuse(format!("move id {} names another migration", m.move_id));
        }
        return Settlement::Source {
            reason: record.error.clone().unwrap_or_default(),
            recorded: true,
        };
    }
    match judge_allocation(state, m) {
        Verdict::Accepted { generation } => return Settlement::Target { generation },
        Verdict::Refuse(why) => return Settlement::Refuse(why),
        Verdict::Accept => {}
    }
    let target_down = state
        .nodes
        .get(m.target)
        .is_none_or(|n| n.status == NodeStatus::Down);
    let reason = if target_down {
        format!("target node {} is down", m.target)
    } else if word.silent {
        format!("target node {} missed its heartbeats", m.target)
    } else if word.disowned {
        format!("target node {} never took the move over", m.target)
    } else {
        return Settlement::Wait(format!(
            "target node {} is alive and has not reported the move",
            m.target
        ));
    };
    Settlement::Source {
        reason: format!(
            "{}: kept on {} ({reason}); the source resumes its copy",
            m.move_id, m.source
        ),
        recorded: false,
    }
}

/// Applies [`settle`]: records a decision for the source as an aborted
/// migration under the move's id (the fence a returning target meets);
/// changes nothing otherwise.
pub fn settle_unfinished(
    state: &mut ClusterState,
    index: u64,
    m: &OfflineMove<'_>,
    word: TargetWord,
    now_ms: u64,
    changes: &mut ChangeLog<'_>,
) -> CommandResult {
    let reason = match settle(state, m, word) {
        Settlement::Source {
            reason,
            recorded: false,
        } => reason,
        Settlement::Source { recorded: true, .. } | Settlement::Target { .. } => {
            return CommandResult::AllocsUpdated {
                accepted: 0,
                refused: Vec::new(),
            }
        }
        Settlement::Wait(why) | Settlement::Refuse(why) => {
            return CommandResult::Rejected(Rejection::Migration(why))
        }
    };
    let Some(alloc) = state.allocations.get_mut(m.alloc_id) else {
        return CommandResult::Rejected(Rejection::Migration(format!(
            "allocation {} is gone",
            m.alloc_id
        )));
    };
    alloc.modify_index = index;
    alloc.record(now_ms, "migration_aborted", reason.clone());
    let record = Migration {
        id: m.move_id.to_string(),
        alloc_id: m.alloc_id.to_string(),
        job: alloc.job.clone(),
        kind: "offline".into(),
        source: m.source.to_string(),
        target: m.target.to_string(),
        phase: MigrationPhase::Aborted,
        phase_deadline_ms: now_ms,
        started_at_ms: now_ms,
        ended_at_ms: Some(now_ms),
        bytes: 0,
        rounds: 0,
        downtime_ms: None,
        downtime_limit_ms: 0,
        bandwidth_bytes_per_sec: None,
        error: Some(reason),
        from_generation: m.from_generation,
        create_index: index,
        modify_index: index,
        target_gpu_indices: Vec::new(),
        gang: None,
    };
    state.migrations.insert(m.move_id.to_string(), record);
    changes.put(Record::Alloc(m.alloc_id), state);
    changes.put(Record::Migration(m.move_id), state);
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

    /// A running `web` and the nodes a move of it names.
    struct Web {
        id: String,
        source: String,
        target: String,
        generation: u64,
    }

    impl Web {
        /// A move `move_id` of `web` from its node to the other, as of its
        /// generation.
        fn move_named<'a>(&'a self, move_id: &'a str) -> OfflineMove<'a> {
            OfflineMove {
                move_id,
                alloc_id: &self.id,
                source: &self.source,
                target: &self.target,
                from_generation: self.generation,
            }
        }
    }

    /// One running `web` on one of n1, n2; returns the state, `web` and
    /// the next index.
    fn running() -> (ClusterState, Web, u64) {
        let mut state = ClusterState::default();
        let web = spec("web", JobType::Service, 1);
        let index = place(&mut state, &["n1", "n2"], vec![web], 1_000);
        let alloc = state.allocations.values().next().cloned().expect("placed");
        let update = alloc_update(&alloc, AllocStatus::Running);
        let (accepted, refused) = report(&mut state, index, &alloc.node, vec![update], 1_500);
        assert_eq!(accepted, 1, "{refused:?}");
        let other = if alloc.node == "n1" { "n2" } else { "n1" };
        let web = Web {
            id: alloc.id.clone(),
            source: alloc.node.clone(),
            target: other.to_string(),
            generation: alloc.generation,
        };
        (state, web, index + 1)
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
        let (mut state, web, index) = running();
        let (id, generation) = (&web.id, web.generation);
        let m = web.move_named("off-1");
        assert_eq!(judge(&state, &m), Verdict::Accept);
        let result = reported(&mut state, index, &m);
        assert!(
            matches!(result, CommandResult::AllocsUpdated { accepted: 1, .. }),
            "{result:?}"
        );
        let alloc = &state.allocations[id];
        assert_eq!(alloc.node, web.target);
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
        assert_eq!(state.allocations[id].generation, generation + 1);
    }

    #[test]
    fn a_move_the_coordinators_overtook_is_refused() {
        // The job stopped meanwhile.
        let (mut state, web, index) = running();
        let m = web.move_named("off-1");
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
        assert_eq!(state.allocations[&web.id].node, web.source);

        // The source node was marked down and its work replaced.
        let (mut state, web, index) = running();
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: web.source.clone(),
                now_ms: 1_800,
            },
        );
        let Verdict::Refuse(why) = judge(&state, &web.move_named("off-2")) else {
            panic!("a move off a node marked down was accepted");
        };
        assert!(why.contains(&web.id), "{why}");

        // A stale generation, or a stranger's claim.
        let (state, web, _) = running();
        for (src, gen) in [
            (web.source.as_str(), web.generation + 5),
            (web.target.as_str(), web.generation),
        ] {
            let m = OfflineMove {
                source: src,
                from_generation: gen,
                ..web.move_named("off-3")
            };
            assert!(
                matches!(judge(&state, &m), Verdict::Refuse(_)),
                "{src} {gen}"
            );
        }
        let m = OfflineMove {
            alloc_id: "no-such",
            ..web.move_named("off-4")
        };
        assert!(matches!(judge(&state, &m), Verdict::Refuse(_)));
    }

    fn settled(
        state: &mut ClusterState,
        index: u64,
        m: &OfflineMove<'_>,
        word: TargetWord,
    ) -> CommandResult {
        run(
            state,
            index,
            Command::SettleOfflineMove {
                move_id: m.move_id.into(),
                alloc_id: m.alloc_id.into(),
                source: m.source.into(),
                target: m.target.into(),
                from_generation: m.from_generation,
                target_silent: word.silent,
                target_disowned: word.disowned,
                now_ms: 2_000,
            },
        )
        .0
    }

    #[test]
    fn an_unsettled_move_waits_while_its_target_lives_and_is_kept_once_it_is_down() {
        let (mut state, web, index) = running();
        let Web {
            id,
            source,
            target,
            generation,
        } = &web;
        let generation = *generation;
        let m = web.move_named("off-1");
        let alive = TargetWord::default();
        assert!(matches!(settle(&state, &m, alive), Settlement::Wait(_)));
        // Written anyway (the state changed between the service's look and
        // apply): refused, nothing recorded.
        let result = settled(&mut state, index, &m, alive);
        assert!(
            matches!(result, CommandResult::Rejected(Rejection::Migration(_))),
            "{result:?}"
        );
        assert!(state.migrations.is_empty());

        // The target missed its heartbeats, or disowned the move: kept.
        for word in [
            TargetWord {
                silent: true,
                disowned: false,
            },
            TargetWord {
                silent: false,
                disowned: true,
            },
        ] {
            let Settlement::Source { reason, recorded } = settle(&state, &m, word) else {
                panic!("{word:?} not kept on the source");
            };
            assert!(!recorded);
            assert!(reason.contains(target.as_str()), "{reason}");
        }

        // Marked down: kept, recorded once, at the same node and generation.
        run(
            &mut state,
            index,
            Command::MarkNodeDown {
                node: target.clone(),
                now_ms: 1_800,
            },
        );
        let result = settled(&mut state, index + 1, &m, alive);
        assert!(
            matches!(result, CommandResult::AllocsUpdated { accepted: 1, .. }),
            "{result:?}"
        );
        let alloc = &state.allocations[id];
        assert_eq!(
            (alloc.node.as_str(), alloc.generation),
            (source.as_str(), generation)
        );
        let record = &state.migrations["off-1"];
        assert_eq!(record.phase, MigrationPhase::Aborted);
        assert!(record.error.as_deref().is_some_and(|e| e.contains("down")));
        // Asked again (a lost answer): the same decision, nothing written.
        assert!(matches!(
            settle(&state, &m, alive),
            Settlement::Source { recorded: true, .. }
        ));
        let again = settled(&mut state, index + 2, &m, alive);
        assert!(
            matches!(again, CommandResult::AllocsUpdated { accepted: 0, .. }),
            "{again:?}"
        );
        assert_eq!(state.migrations.len(), 1);

        // The target comes back with the move journalled switched: its
        // report is refused, and the allocation stays the source's.
        let Verdict::Refuse(why) = judge(&state, &m) else {
            panic!("a returning target's report was not refused");
        };
        assert!(why.contains("settled"), "{why}");
        let result = reported(&mut state, index + 3, &m);
        assert!(
            matches!(result, CommandResult::Rejected(Rejection::Migration(_))),
            "{result:?}"
        );
        assert_eq!(state.allocations[id].node, *source);
        assert_eq!(state.allocations[id].generation, generation);
    }

    #[test]
    fn an_unsettled_move_the_target_reported_is_the_targets() {
        let (mut state, web, index) = running();
        let generation = web.generation;
        let m = web.move_named("off-1");
        let result = reported(&mut state, index, &m);
        assert!(
            matches!(result, CommandResult::AllocsUpdated { accepted: 1, .. }),
            "{result:?}"
        );
        // Even with the target silent since: the switch-over stands.
        let silent = TargetWord {
            silent: true,
            disowned: true,
        };
        assert_eq!(
            settle(&state, &m, silent),
            Settlement::Target {
                generation: generation + 1
            }
        );
        let again = settled(&mut state, index + 1, &m, silent);
        assert!(
            matches!(again, CommandResult::AllocsUpdated { accepted: 0, .. }),
            "{again:?}"
        );
        assert!(state.migrations.is_empty());
        assert_eq!(state.allocations[&web.id].node, web.target);

        // The job stopped meanwhile: refused, whatever the target did.
        let (mut state, web, index) = running();
        run(
            &mut state,
            index,
            Command::StopJob {
                name: "web".into(),
                now_ms: 1_800,
            },
        );
        let m = web.move_named("off-2");
        assert!(matches!(settle(&state, &m, silent), Settlement::Refuse(_)));

        // A move id naming a migration of the coordinators': refused.
        let (mut state, web, _) = running();
        let m = web.move_named("mig-9");
        state.migrations.insert(
            "mig-9".into(),
            Migration {
                id: "mig-9".into(),
                alloc_id: "another".into(),
                job: "web".into(),
                kind: "simvm".into(),
                source: web.source.clone(),
                target: web.target.clone(),
                phase: MigrationPhase::Aborted,
                phase_deadline_ms: 0,
                started_at_ms: 0,
                ended_at_ms: None,
                bytes: 0,
                rounds: 0,
                downtime_ms: None,
                downtime_limit_ms: 0,
                bandwidth_bytes_per_sec: None,
                error: None,
                from_generation: web.generation,
                create_index: 1,
                modify_index: 1,
                target_gpu_indices: Vec::new(),
                gang: None,
            },
        );
        assert!(matches!(settle(&state, &m, silent), Settlement::Refuse(_)));
    }

    #[test]
    fn an_unregistered_target_counts_as_down() {
        let (state, web, _) = running();
        let m = OfflineMove {
            target: "n9",
            ..web.move_named("off-1")
        };
        assert!(matches!(judge(&state, &m), Verdict::Refuse(_)));
        assert!(matches!(
            settle(&state, &m, TargetWord::default()),
            Settlement::Source {
                recorded: false,
                ..
            }
        ));
    }
}
