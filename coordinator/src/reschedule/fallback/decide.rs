//! The placement fallback's decision for one job, pure: solve the model
//! within the window, re-solving without each move herd's migration rules
//! refuse, and turn what was found into moves, a placement plan and the
//! sentences `herd job status` prints.

use std::time::{Duration, Instant};

use herd_reschedule::fallback::{solve, Answer, FallbackError, Found};

use super::build::Built;
use crate::planning::{PlanCommand, PlannedEviction, PlannedPlacement};
use crate::reschedule::plan::{first_refused_move, LiveMove};
use crate::state::ClusterState;

/// Solves tried at most per decision: the first, and re-solves after
/// moves the migration rules refused.
const ROUNDS: u32 = 3;

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
            return Ok(Verdict::Answer(answer));
        };
        let (w, d) = found.moves[step];
        last_refusal = format!(
            "moving {} to {} is refused: {why}",
            built.work[w].alloc_id, built.nodes[d]
        );
        built.problem.work[w].move_to.retain(|&x| x != d);
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

/// The placement plan `found` makes once its moves are done: its instances
/// on their nodes, the evictions on a node made for the first instance
/// placed there. `blocked`: the job's reason while some instances stay
/// unplaced.
pub fn plan_command(built: &Built, found: &Found, blocked: Option<String>) -> PlanCommand {
    let mut instances = built.instances.iter().copied();
    let mut placements = Vec::new();
    let mut first_on: Vec<(usize, u32)> = Vec::new();
    for &(n, count) in &found.placed {
        for _ in 0..count {
            let Some(instance) = instances.next() else {
                break;
            };
            if !first_on.iter().any(|&(x, _)| x == n) {
                first_on.push((n, instance));
            }
            placements.push(PlannedPlacement::new(instance, built.nodes[n].clone()));
        }
    }
    let evictions = found
        .evictions
        .iter()
        .filter_map(|&w| {
            let node = built.problem.work[w].node;
            let (_, for_instance) = first_on.iter().find(|&&(x, _)| x == node)?;
            Some(PlannedEviction {
                alloc_id: built.work[w].alloc_id.clone(),
                node: built.nodes[node].clone(),
                for_instance: *for_instance,
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
    use super::*;
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
    }

    /// A move the migration rules refuse (the target's driver cannot
    /// receive) is planned around.
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
    }
}
