//! The placement fallback's decision for one job, pure: solve the model
//! within the window, re-solving without each move herd's migration rules
//! refuse, and turn what was found into moves, a placement plan and the
//! sentences `herd job status` prints.

use std::time::{Duration, Instant};

use herd_reschedule::fallback::{solve, Answer, FallbackError, Found};

use super::build::Built;
use crate::planning::{
    alloc_views, node_views, request_for, to_scheduler_plan, PlanCommand, PlannedEviction,
    PlannedPlacement,
};
use crate::power::placement::power_limits_all_seen;
use crate::reschedule::plan::{first_refused_move, LiveMove};
use crate::scheduler::verify_plan_with_power;
use crate::state::ClusterState;

/// Solves tried at most per decision: the first, and re-solves after
/// moves the migration rules refused or placements the scheduler's check
/// refused (each takes one destination or node out; all share the window).
const ROUNDS: u32 = 6;

/// The solver's verdict on one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The solver's answer; a found placement's moves are all accepted by
    /// the migration rules (replayed in order on a copy of the state).
    Answer(Answer),
    /// Every round's placement needed a move the migration rules refuse;
    /// the last refusal.
    Refused(String),
}

/// Decides for `built` on `state` within `window` (CPU-bound: call it off
/// the async runtime).
pub fn decide(
    state: &ClusterState,
    built: &mut Built,
    window: Duration,
) -> Result<Verdict, FallbackError> {
    let started = Instant::now();
    let mut last_refusal = String::new();
    for _ in 0..ROUNDS {
        let left = window.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let answer = solve(&built.problem, left)?;
        let Answer::Found(found) = &answer else {
            return Ok(Verdict::Answer(answer));
        };
        let named: Vec<(&str, &str)> = found
            .moves
            .iter()
            .map(|&(w, d)| (built.work[w].alloc_id.as_str(), built.nodes[d].as_str()))
            .collect();
        let Some((step, why)) = first_refused_move(state, &named) else {
            // The model keeps the scheduler's rules; this re-check is what
            // `apply` will do, so a disagreement (the state changed since
            // the model was built) is never proposed: the node it refuses
            // is taken out and the model solved again.
            let Some((node, why)) = first_rejection(state, built, found) else {
                return Ok(Verdict::Answer(answer));
            };
            last_refusal = format!("placing on {node} is refused: {why}");
            if let Some(n) = built.nodes.iter().position(|x| *x == node) {
                built.problem.nodes[n].takes_instances = false;
            }
            continue;
        };
        let (w, d) = found.moves[step];
        last_refusal = format!(
            "moving {} to {} is refused: {why}",
            built.work[w].alloc_id, built.nodes[d]
        );
        built.problem.work[w].forbid(d);
    }
    if last_refusal.is_empty() {
        return Ok(Verdict::Answer(Answer::TimedOut));
    }
    Ok(Verdict::Refused(last_refusal))
}

/// `found`'s moves as the apply engine takes them, in order.
pub fn moves(built: &Built, found: &Found) -> Vec<LiveMove> {
    found
        .moves
        .iter()
        .map(|&(w, d)| {
            let work = &built.work[w];
            let demand = &built.problem.work[w].demand;
            LiveMove {
                alloc_id: work.alloc_id.clone(),
                job: work.job.clone(),
                source: work.node.clone(),
                target: built.nodes[d].clone(),
                cpu_millis: demand[0],
                memory_bytes: demand[1].saturating_mul(herd_api::resources::MIB),
            }
        })
        .collect()
}

/// Why `apply` would refuse some of `found`'s placement plan once its
/// moves are made on `state` (the scheduler's own check, room and power
/// budgets alike, over the whole cluster), or None when it takes it all.
pub fn refused_plan(state: &ClusterState, built: &Built, found: &Found) -> Option<String> {
    first_rejection(state, built, found).map(|(node, why)| format!("instance on {node}: {why}"))
}

/// The first placement of `found`'s plan the scheduler's check refuses
/// once its moves are made: its node and why.
fn first_rejection(state: &ClusterState, built: &Built, found: &Found) -> Option<(String, String)> {
    let mut after = state.clone();
    for mv in moves(built, found) {
        after.move_alloc(&mv.alloc_id, &mv.target);
    }
    let job = after.jobs.get(&built.job)?;
    let plan = plan_command(built, found, None);
    let instances = plan.placements.iter().map(|p| p.instance).collect();
    let verdict = verify_plan_with_power(
        &node_views(&after),
        &alloc_views(&after),
        &power_limits_all_seen(&after),
        &request_for(job, instances),
        &to_scheduler_plan(&plan),
    );
    // A gang's placements are all rejected with one's cause: that one.
    let own = verdict
        .rejected
        .iter()
        .find(|r| !r.reason.starts_with("gang: "));
    own.or(verdict.rejected.first()).map(|r| {
        (
            r.node.clone(),
            format!("instance {}: {}", r.instance, r.reason),
        )
    })
}

/// The placement plan `found` makes once its moves are done: its instances
/// on their nodes, every eviction made for the first instance placed (so
/// all of them come before any placement: the model checks room and power
/// after all evictions, and placements only add, so each placement's own
/// check then passes, a power group's watts freed on another node
/// included). `blocked`: the job's reason while some instances stay
/// unplaced.
pub fn plan_command(built: &Built, found: &Found, blocked: Option<String>) -> PlanCommand {
    let mut instances = built.instances.iter().copied();
    let mut placements = Vec::new();
    for &(n, count) in &found.placed {
        for _ in 0..count {
            let Some(instance) = instances.next() else {
                break;
            };
            placements.push(PlannedPlacement::new(instance, built.nodes[n].clone()));
        }
    }
    let first = placements.first().map(|p: &PlannedPlacement| p.instance);
    let evictions = found
        .evictions
        .iter()
        .filter_map(|&w| {
            let node = built.problem.work[w].node;
            Some(PlannedEviction {
                alloc_id: built.work[w].alloc_id.clone(),
                node: built.nodes[node].clone(),
                for_instance: first?,
            })
        })
        .collect();
    let partial = found.total() < built.problem.instances;
    PlanCommand {
        job: built.job.clone(),
        job_version: built.version,
        placements,
        evictions,
        blocked: if partial { blocked } else { None },
    }
}

/// `ALLOC (JOB) SOURCE -> TARGET` per move of `found`.
pub fn moved_names(built: &Built, found: &Found) -> Vec<String> {
    found
        .moves
        .iter()
        .map(|&(w, d)| {
            let work = &built.work[w];
            format!(
                "{} ({}) {} -> {}",
                work.alloc_id, work.job, work.node, built.nodes[d]
            )
        })
        .collect()
}

/// `ALLOC (JOB, priority P)` per eviction of `found`.
pub fn evicted_names(built: &Built, found: &Found) -> Vec<String> {
    found
        .evictions
        .iter()
        .map(|&w| {
            let work = &built.work[w];
            format!(
                "{} ({}, priority {})",
                work.alloc_id, work.job, work.priority
            )
        })
        .collect()
}

/// What the rules let the fallback touch, in words.
pub fn rules(move_any_priority: bool) -> &'static str {
    if move_any_priority {
        "moving movable work or evicting lower-priority work"
    } else {
        "moving or evicting lower-priority work"
    }
}

/// `placed N of M instances` or `placed` for all of one.
fn placed_words(placed: u32, wanted: u32) -> String {
    match (placed, wanted) {
        (1, 1) => "placed".to_string(),
        (p, w) if p == w => format!("placed all {w} instances"),
        (p, w) => format!("placed {p} of {w} instances"),
    }
}

/// The sentence for a placement made after `moved` and `evicted`.
pub fn placed_text(placed: u32, wanted: u32, moved: &[String], evicted: &[String]) -> String {
    let head = placed_words(placed, wanted);
    match (moved.is_empty(), evicted.is_empty()) {
        (true, true) => format!("{head} by the exact solver, moving and evicting nothing"),
        (false, true) => format!("{head} after moving {}", moved.join(", ")),
        (true, false) => format!("{head} after evicting {}", evicted.join(", ")),
        (false, false) => format!(
            "{head} after moving {} and evicting {}",
            moved.join(", "),
            evicted.join(", ")
        ),
    }
}

/// The sentence while moves are under way.
pub fn making_room_text(moved: &[String], evicted: &[String]) -> String {
    let then = if evicted.is_empty() {
        String::new()
    } else {
        format!(", then evicting {}", evicted.join(", "))
    };
    format!(
        "making room: moving {}{then}; placed once the moves complete",
        moved.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use herd_reschedule::fallback::SpreadPref;

    use super::*;
    use crate::machine::command::{Command, CommandResult};
    use crate::planning::plan_job;
    use crate::reschedule::fallback::build::build;
    use crate::reschedule::fallback::build::tests::{pending, spread};

    const WINDOW: Duration = Duration::from_secs(10);

    /// Every node has 3 of 4 CPUs free, a job of the same priority needs 4:
    /// the scheduler leaves it pending (nothing lower to evict), and the
    /// exact solver, allowed to move work of any priority, moves one
    /// allocation and places the job where it left.
    #[test]
    fn the_heuristic_leaves_the_job_pending_and_a_move_places_it() {
        let mut state = spread();
        pending(&mut state, "peer", 4000, 50);
        let job = state.jobs["peer"].clone();
        let heuristic = plan_job(&state, &job, 0).expect("a plan");
        assert!(heuristic.placements.is_empty(), "{heuristic:?}");
        assert!(heuristic.blocked.is_some());

        let mut built = build(&state, &job, 0, true).expect("pending");
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("a move makes room")
        };
        assert_eq!(found.moves.len(), 1, "{found:?}");
        assert!(found.evictions.is_empty());
        let mv = &moves(&built, &found)[0];
        let plan = plan_command(&built, &found, None);
        assert_eq!(plan.placements.len(), 1);
        assert_eq!(plan.placements[0].node, mv.source, "placed where it left");
        assert_eq!(plan.job_version, job.version);
        let text = placed_text(1, 1, &moved_names(&built, &found), &[]);
        assert!(text.starts_with("placed after moving a-"), "{text}");

        // Once the move is made, the plan passes the scheduler's own
        // apply-time check.
        state.move_alloc(&mv.alloc_id, &mv.target);
        let verdict = crate::scheduler::verify_plan(
            &crate::planning::node_views(&state),
            &crate::planning::alloc_views(&state),
            &crate::planning::request_for(&job, vec![0]),
            &crate::planning::to_scheduler_plan(&plan),
        );
        assert_eq!(verdict.accepted.len(), 1, "{verdict:?}");
    }

    /// Under the default rules (lower priority only) the same job has
    /// nothing it may touch: proved impossible.
    #[test]
    fn with_nothing_lower_to_touch_no_placement_is_proved() {
        let mut state = spread();
        pending(&mut state, "peer", 4000, 50);
        let job = state.jobs["peer"].clone();
        let mut built = build(&state, &job, 0, false).expect("pending");
        assert!(built.complete);
        assert_eq!(
            decide(&state, &mut built, WINDOW),
            Ok(Verdict::Answer(Answer::Impossible))
        );
    }

    /// A higher-priority job: moving one lower-priority allocation is
    /// preferred to evicting it.
    #[test]
    fn moving_lower_priority_work_beats_evicting_it() {
        let mut state = spread();
        pending(&mut state, "urgent", 4000, 90);
        let job = state.jobs["urgent"].clone();
        let mut built = build(&state, &job, 0, false).expect("pending");
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("room exists")
        };
        assert_eq!((found.moves.len(), found.evictions.len()), (1, 0));
        must_apply(&state, &built, &found);
    }

    /// A move the migration rules refuse (the target's driver cannot
    /// receive) is planned around, and so is a placement the scheduler's
    /// check refuses (n2 is no longer eligible): the plan passes `apply`.
    #[test]
    fn a_refused_move_is_planned_around() {
        let mut state = spread();
        pending(&mut state, "peer", 4000, 50);
        // n2 cannot take a moving VM: only moves to n1 or n3 remain.
        let mut built = build(&state, &state.jobs["peer"].clone(), 0, true).expect("pending");
        state.nodes.get_mut("n2").expect("n2").eligible = false;
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("another move makes room")
        };
        assert!(
            moves(&built, &found).iter().all(|m| m.target != "n2"),
            "{found:?}"
        );
        must_apply(&state, &built, &found);
    }

    /// Every plan `decide` returns passes the scheduler's own check once
    /// its moves are made, and `apply` takes it whole.
    fn must_apply(state: &ClusterState, built: &Built, found: &Found) -> ClusterState {
        assert_eq!(refused_plan(state, built, found), None);
        let mut after = state.clone();
        for mv in moves(built, found) {
            after.move_alloc(&mv.alloc_id, &mv.target);
        }
        let plan = plan_command(built, found, None);
        let (result, _) = crate::testkit::run(&mut after, 1000, Command::apply_plan(plan, 0));
        let CommandResult::PlanApplied {
            placed, rejected, ..
        } = result
        else {
            panic!("{result:?}")
        };
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(placed.len() as u32, found.total());
        after
    }

    /// A GPU job of priority `priority` on a node labelled `fast=yes` when
    /// `fast`.
    fn gpu_spec(name: &str, priority: u32, fast: bool) -> herd_api::job::JobSpec {
        let mut spec = crate::testkit::spec(name, herd_api::job::JobType::Service, 1);
        spec.task.resources.gpus = 1;
        spec.task.resources.memory_bytes = 1 << 20;
        spec.task.resources.cpu_millis = 100;
        spec.priority = priority;
        if fast {
            spec.placement.constraints = vec![herd_api::placement::LabelConstraint {
                label: "fast".into(),
                op: herd_api::placement::ConstraintOp::Equals,
                value: Some("yes".into()),
            }];
        }
        spec
    }

    /// Rack r1: a (labelled fast) and b, one H100 each, a 1000 W budget
    /// (970 W hard: the idle 160 W and one GPU at TDP, 620 W). Low-priority
    /// GPU work runs on b; an urgent GPU job may only go to a, whose GPU is
    /// free but whose group has no watts left.
    fn power_bound() -> ClusterState {
        let mut state = ClusterState::default();
        for (index, name) in [(1, "a"), (2, "b")] {
            let mut node = crate::power::budget::tests::node(name, "r1", 1, "h100");
            if name == "a" {
                node.labels.insert("fast".into(), "yes".into());
            }
            crate::testkit::run(&mut state, index, Command::RegisterNode { node, now_ms: 1 });
        }
        let budget = Command::SetPowerBudget {
            group: "rack=r1".into(),
            watts: 1000,
            cap_permille: 900,
            hard_permille: 970,
            now_ms: 1,
        };
        crate::testkit::run(&mut state, 3, budget);
        for (index, spec) in [
            (4, gpu_spec("low", 10, false)),
            (6, gpu_spec("urgent", 90, true)),
        ] {
            let name = spec.name.clone();
            crate::testkit::run(&mut state, index, Command::SubmitJob { spec, now_ms: 2 });
            if name == "low" {
                let plan = plan_job(&state, &state.jobs["low"], 2).expect("plan");
                crate::testkit::run(&mut state, index + 1, Command::apply_plan(plan, 2));
                let id = state
                    .allocs_of_job("low")
                    .next()
                    .expect("placed")
                    .id
                    .clone();
                state.move_alloc(&id, "b");
            }
        }
        state
    }

    /// The heuristic leaves the urgent job pending (a's power group is
    /// full, and preemption looks at a only); the fallback evicts the
    /// low-priority work on b, freeing its watts, and `apply` takes the
    /// plan. Placing on a without the eviction, as a model blind to power
    /// would, is refused by the same check.
    #[test]
    fn a_power_budget_is_kept_by_evicting_work_elsewhere_in_the_group() {
        let state = power_bound();
        let job = state.jobs["urgent"].clone();
        let heuristic = plan_job(&state, &job, 2).expect("a plan");
        assert!(heuristic.placements.is_empty(), "{heuristic:?}");
        assert!(
            heuristic.blocked.as_deref().unwrap_or("").contains("power"),
            "{heuristic:?}"
        );

        let mut built = build(&state, &job, 2, false).expect("pending");
        assert!(built.complete);
        assert_eq!(built.problem.power.len(), 1);
        assert_eq!(built.problem.power[0].headroom, 970 - 160 - 620);
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("evicting low makes room")
        };
        assert_eq!(evicted_names(&built, &found).len(), 1, "{found:?}");
        assert!(evicted_names(&built, &found)[0].starts_with("low-"));
        let after = must_apply(&state, &built, &found);
        assert_eq!(
            after.allocs_of_job("urgent").next().expect("placed").node,
            "a"
        );

        let blind = Found {
            evictions: Vec::new(),
            ..found
        };
        let why = refused_plan(&state, &built, &blind).expect("refused");
        assert!(why.contains("power: group rack=r1"), "{why}");

        // Without anything lower to evict: proved impossible.
        let mut peer = state.clone();
        peer.jobs.get_mut("urgent").expect("urgent").spec.priority = 10;
        let job = peer.jobs["urgent"].clone();
        let mut built = build(&peer, &job, 2, false).expect("pending");
        assert_eq!(
            decide(&peer, &mut built, WINDOW),
            Ok(Verdict::Answer(Answer::Impossible))
        );
    }

    /// A job of three 1.5-CPU instances spread over nodes, each node with
    /// 3 CPUs free: one instance per node, as the heuristic places them;
    /// with an affinity for n2 and one instance, it goes to n2.
    #[test]
    fn spread_and_affinities_are_honoured_when_free() {
        let mut state = spread();
        pending(&mut state, "wide", 1500, 60);
        {
            let spec = &mut state.jobs.get_mut("wide").expect("wide").spec;
            spec.count = 3;
            spec.placement.spread = herd_api::placement::SpreadPolicy::Nodes;
        }
        let job = state.jobs["wide"].clone();
        let mut built = build(&state, &job, 0, false).expect("pending");
        assert_eq!(built.problem.prefer.spread, SpreadPref::Nodes);
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("room exists")
        };
        assert_eq!(found.placed.len(), 3, "{found:?}");
        must_apply(&state, &built, &found);

        pending(&mut state, "near", 1000, 60);
        state
            .nodes
            .get_mut("n2")
            .expect("n2")
            .labels
            .insert("zone".into(), "z2".into());
        state
            .jobs
            .get_mut("near")
            .expect("near")
            .spec
            .placement
            .affinities = vec![herd_api::placement::Affinity {
            label: "zone".into(),
            value: "z2".into(),
            weight: 40,
        }];
        let job = state.jobs["near"].clone();
        let mut built = build(&state, &job, 0, false).expect("pending");
        let Verdict::Answer(Answer::Found(found)) =
            decide(&state, &mut built, WINDOW).expect("solve")
        else {
            panic!("room exists")
        };
        assert_eq!(plan_command(&built, &found, None).placements[0].node, "n2");
    }
}
