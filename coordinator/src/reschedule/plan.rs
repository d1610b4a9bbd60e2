//! A defragmenting plan for the live cluster: the model of the state
//! ([`super::live`]), a fast planner of `herd-reschedule`, and a replay of
//! every plan through herd's own migration rules.
//!
//! The model knows capacity only; herd's migration rules also check job
//! constraints, GPUs and the target's driver. So every plan is replayed on
//! a copy of the state with `start_migration` (the very rule the
//! `Migrations.Start` request is decided by), the allocation switched to
//! its target after each accepted move. A refused move marks its
//! allocation immovable and the plan is made again (a few rounds); what the
//! last round still refuses is cut off. Only the greedy planner and herd's
//! anytime planner run here: the exact (MIP) planner takes minutes on
//! anything large.

use std::time::{Duration, Instant};

use herd_reschedule::solver::fast::Fast;
use herd_reschedule::solver::greedy::Greedy;
use herd_reschedule::state::State;
use herd_reschedule::{validate_plan, Limits, Move, Shape, Solver};

use super::live::{build, LiveModel};
use crate::machine::apply::migration::{start_migration, MoveRequest};
use crate::machine::command::{CommandResult, Rejection};
use crate::state::{ChangeLog, ClusterState};

/// Most moves one plan may have.
pub const MAX_MIGRATIONS: usize = 1000;
/// Longest planning time one request may ask for.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);
/// The downtime limit the replayed moves ask for (any valid one: the
/// limit decides nothing at the start of a move).
const CHECK_DOWNTIME_LIMIT_MS: u64 = 300;
/// Plans made at most per request: the first, and re-plans after moves the
/// migration rules refused.
const ROUNDS: u32 = 3;

/// Which planner runs on the live cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveSolver {
    /// herd's anytime planner (`herd-reschedule`'s `herd`).
    Herd,
    /// The VMR2L paper's greedy heuristic.
    Greedy,
}

impl LiveSolver {
    /// The planner named `name` ("" is herd's); the exact one is refused.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "" | "herd" | "fast" => Ok(LiveSolver::Herd),
            "greedy" => Ok(LiveSolver::Greedy),
            other => Err(format!(
                "unknown solver {other:?} for the live cluster (known: herd, greedy)"
            )),
        }
    }

    /// Its name in output.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveSolver::Herd => "herd",
            LiveSolver::Greedy => "greedy",
        }
    }

    fn solver(self) -> Box<dyn Solver> {
        match self {
            LiveSolver::Herd => Box::new(Fast::default()),
            LiveSolver::Greedy => Box::new(Greedy),
        }
    }
}

/// What to plan for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanRequest {
    /// At most this many moves.
    pub max_migrations: usize,
    /// Planning time (all rounds together).
    pub deadline: Duration,
    /// The target shape, in model units (`super::live::shape`).
    pub shape: Shape,
    /// The planner.
    pub solver: LiveSolver,
    /// Seed of a randomised planner.
    pub seed: u64,
}

/// One planned move, in the cluster's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMove {
    /// The allocation.
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// Where it runs now (before the plan's earlier moves, the same).
    pub source: String,
    /// Where it goes.
    pub target: String,
    /// What it holds, millicores.
    pub cpu_millis: u64,
    /// What it holds, bytes.
    pub memory_bytes: u64,
}

/// A plan for the live cluster and what it was computed on.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePlan {
    /// FR of the state as it is.
    pub fr_before: f64,
    /// FR once every move is made (replayed on the model).
    pub fr_after: f64,
    /// The moves, in order.
    pub moves: Vec<LiveMove>,
    /// The model's counts (nodes, allocations, why some cannot move).
    pub model: ModelCounts,
    /// Anything worth saying: moves refused by the migration rules.
    pub note: Option<String>,
}

/// The size of the model a plan was made on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelCounts {
    /// Registered nodes.
    pub nodes: usize,
    /// Ready and eligible nodes (the ones counted).
    pub active_nodes: usize,
    /// Allocations holding resources.
    pub allocations: usize,
    /// Those a plan may move (before any was refused at planning).
    pub movable: usize,
    /// Why the others may not: reason, count.
    pub immovable: Vec<(String, u32)>,
}

/// Why no plan was made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A request out of range.
    #[error("{0}")]
    Invalid(String),
    /// A planner failed (neither live planner fails today; kept so a new
    /// one cannot panic the service).
    #[error("planner {solver}: {why}")]
    Solver {
        /// The planner.
        solver: &'static str,
        /// What it said.
        why: String,
    },
}

/// Checks a request's limits.
pub fn check_request(request: &PlanRequest) -> Result<(), PlanError> {
    if request.max_migrations > MAX_MIGRATIONS {
        return Err(PlanError::Invalid(format!(
            "max_migrations: at most {MAX_MIGRATIONS}, got {}",
            request.max_migrations
        )));
    }
    if request.deadline > MAX_DEADLINE || request.deadline.is_zero() {
        return Err(PlanError::Invalid(format!(
            "deadline: 1 ms to {} s, got {} ms",
            MAX_DEADLINE.as_secs(),
            request.deadline.as_millis()
        )));
    }
    if request.shape.cpu == 0 {
        return Err(PlanError::Invalid("target cpu: more than 0".into()));
    }
    Ok(())
}

/// A plan for `state` (pure: `state` is not changed; runs up to about
/// `request.deadline`, so call it off the async runtime).
pub fn plan(state: &ClusterState, request: &PlanRequest) -> Result<LivePlan, PlanError> {
    check_request(request)?;
    let started = Instant::now();
    let mut model = build(state, request.shape);
    let counts = ModelCounts {
        nodes: model.nodes,
        active_nodes: model.active_nodes,
        allocations: model.allocations,
        movable: model.movable,
        immovable: {
            let mut v: Vec<(String, u32)> = model
                .immovable
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        },
    };
    let solver = request.solver.solver();
    let mut refused: Vec<String> = Vec::new();
    let mut moves: Vec<Move> = Vec::new();
    for round in 0..ROUNDS {
        // The first plan gets half the time, later ones share the rest.
        let left = request.deadline.saturating_sub(started.elapsed());
        let budget = if round == 0 {
            request.deadline / 2
        } else {
            left / (ROUNDS - round)
        }
        .max(Duration::from_millis(10));
        let limits = Limits {
            max_moves: request.max_migrations,
            deadline: budget,
            shape: request.shape,
            seed: request.seed.wrapping_add(u64::from(round)),
        };
        let solution = solver
            .solve(&model.instance, &limits)
            .map_err(|e| PlanError::Solver {
                solver: request.solver.as_str(),
                why: e.to_string(),
            })?;
        moves = solution.moves;
        match first_refusal(state, &model, &moves) {
            None => break,
            Some((step, why)) => {
                let vm = moves[step].vm;
                refused.push(format!("{}: {why}", model.vms[vm].alloc_id));
                if round + 1 == ROUNDS {
                    moves.truncate(step);
                    moves = best_prefix(&model, request.shape, &moves);
                } else {
                    model.instance.vms[vm].movable = false;
                }
            }
        }
    }
    let replay = validate_plan(
        &model.instance,
        request.shape,
        &moves,
        request.max_migrations,
        None,
    )
    .map_err(|e| PlanError::Solver {
        solver: request.solver.as_str(),
        why: format!("its plan does not replay: {e}"),
    })?;
    let live_moves = moves
        .iter()
        .map(|mv| {
            let vm = &model.vms[mv.vm];
            LiveMove {
                alloc_id: vm.alloc_id.clone(),
                job: vm.job.clone(),
                source: vm.node.clone(),
                target: model.instance.pms[mv.to.pm].id.clone(),
                cpu_millis: vm.cpu_millis,
                memory_bytes: vm.memory_bytes,
            }
        })
        .collect();
    let note = (!refused.is_empty()).then(|| {
        format!(
            "moves the migration rules refuse were left out: {}",
            refused.join("; ")
        )
    });
    Ok(LivePlan {
        fr_before: replay.fr_before,
        fr_after: replay.fr_after,
        moves: live_moves,
        model: counts,
        note,
    })
}

/// The first move of `moves` that herd's migration rules refuse when the
/// moves before it have been made, with the reason: each is started on a
/// copy of `state` with `start_migration` and then switched over.
pub fn first_refusal(
    state: &ClusterState,
    model: &LiveModel,
    moves: &[Move],
) -> Option<(usize, String)> {
    let mut named = Vec::with_capacity(moves.len());
    for mv in moves {
        let alloc_id = model.vms.get(mv.vm)?.alloc_id.as_str();
        let target = model.instance.pms.get(mv.to.pm)?.id.as_str();
        named.push((alloc_id, target));
    }
    first_refused_move(state, &named)
}

/// The first of `moves` (allocation, target node) that herd's migration
/// rules refuse when the moves before it have been made, with the reason:
/// each is started on a copy of `state` with `start_migration` (the rule
/// `Migrations.Start` is decided by) and then switched over.
pub fn first_refused_move(state: &ClusterState, moves: &[(&str, &str)]) -> Option<(usize, String)> {
    let mut sim = state.clone();
    for (step, &(alloc_id, target)) in moves.iter().enumerate() {
        let mut ops = Vec::new();
        let result = start_migration(
            &mut sim,
            u64::MAX,
            MoveRequest {
                alloc_id,
                target,
                downtime_limit_ms: CHECK_DOWNTIME_LIMIT_MS,
                bandwidth_bytes_per_sec: None,
            },
            0,
            &mut ChangeLog::new(&mut ops),
        );
        match result {
            CommandResult::MigrationUpdated { id, .. } => {
                sim.migrations.remove(&id);
                sim.move_alloc(alloc_id, target);
            }
            CommandResult::Rejected(Rejection::Migration(why)) => return Some((step, why)),
            other => return Some((step, format!("unexpected result {other:?}"))),
        }
    }
    None
}

/// The prefix of `moves` reaching the most free slots (the shortest such),
/// as the planners keep theirs: a cut plan may end in moves that only
/// prepared a refused one.
fn best_prefix(model: &LiveModel, shape: Shape, moves: &[Move]) -> Vec<Move> {
    let mut state = State::new(&model.instance, shape);
    let mut best = (0usize, state.slots());
    for (i, &mv) in moves.iter().enumerate() {
        if state.apply(mv).is_err() {
            break;
        }
        if state.slots() > best.1 {
            best = (i + 1, state.slots());
        }
    }
    moves[..best.0].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reschedule::live::shape;
    use crate::reschedule::live::tests::cluster;

    fn request(max: usize) -> PlanRequest {
        PlanRequest {
            max_migrations: max,
            deadline: Duration::from_millis(200),
            shape: shape(2000, 0),
            solver: LiveSolver::Herd,
            seed: 1,
        }
    }

    /// Moves every allocation of `job` to `node` (the state as a fragmented
    /// history would leave it).
    fn put(state: &mut ClusterState, job: &str, node: &str) {
        let ids: Vec<String> = state.allocs_of_job(job).map(|a| a.id.clone()).collect();
        for id in ids {
            state.move_alloc(&id, node);
        }
    }

    /// 4-CPU nodes, 2-CPU target: n1 and n2 hold three 1-CPU allocations
    /// each (1 CPU free: a fragment), n3 one (3 free: one slot and a
    /// fragment). FR 3/5; one move n1 or n2 -> n3 makes it 1/5.
    fn fragmented() -> ClusterState {
        let mut state = cluster(&[("a", 1000, 3), ("b", 1000, 3), ("c", 1000, 1)]);
        put(&mut state, "a", "n1");
        put(&mut state, "b", "n2");
        put(&mut state, "c", "n3");
        state
    }

    #[test]
    fn a_fragmented_cluster_gets_a_plan_that_lowers_fr_and_the_rules_accept() {
        for solver in [LiveSolver::Herd, LiveSolver::Greedy] {
            let state = fragmented();
            let plan = plan(
                &state,
                &PlanRequest {
                    solver,
                    ..request(5)
                },
            )
            .expect("plan");
            assert!((plan.fr_before - 0.6).abs() < 1e-9, "{plan:?}");
            assert!((plan.fr_after - 0.2).abs() < 1e-9, "{solver:?}: {plan:?}");
            assert_eq!(plan.moves.len(), 1, "{plan:?}");
            let mv = &plan.moves[0];
            // Off a full node, onto n3 or the other full node's last core.
            assert!(mv.source == "n1" || mv.source == "n2", "{mv:?}");
            assert_ne!(mv.source, mv.target);
            assert_eq!(state.allocations[&mv.alloc_id].node, mv.source);
            assert_eq!(plan.model.movable, 7);
            assert!(plan.note.is_none());
        }
    }

    #[test]
    fn a_move_the_migration_rules_refuse_is_planned_around() {
        let mut state = fragmented();
        // n3 stops offering a movable simvm driver: nothing may go there,
        // which the capacity-only model cannot see.
        state.node_drivers.insert(
            "n3".into(),
            [(
                "simvm".to_string(),
                herd_api::capabilities::DriverCaps {
                    migration: herd_api::capabilities::MigrationMode::None,
                    pause: false,
                    power_cap: false,
                },
            )]
            .into(),
        );
        let plan = plan(&state, &request(5)).expect("plan");
        assert!(plan.moves.iter().all(|m| m.target != "n3"), "{plan:?}");
        // n1 -> n2 (or back) is as good and the rules take it.
        assert!((plan.fr_after - 0.2).abs() < 1e-9, "{plan:?}");
        // Every move left is one the rules accept, in order.
        let model = build(&state, request(5).shape);
        let moves: Vec<Move> = plan
            .moves
            .iter()
            .map(|m| Move {
                vm: model
                    .vms
                    .iter()
                    .position(|v| v.alloc_id == m.alloc_id)
                    .expect("vm"),
                to: herd_reschedule::Placement {
                    pm: model
                        .instance
                        .pms
                        .iter()
                        .position(|p| p.id == m.target)
                        .expect("pm"),
                    numa: herd_reschedule::model::NumaSet::of(&[0]),
                },
            })
            .collect();
        assert_eq!(first_refusal(&state, &model, &moves), None);
    }

    #[test]
    fn first_refusal_names_the_move_and_why() {
        let state = fragmented();
        let model = build(&state, request(5).shape);
        let a = model
            .vms
            .iter()
            .position(|v| v.node == "n1")
            .expect("a VM on n1");
        let n2 = model
            .instance
            .pms
            .iter()
            .position(|p| p.id == "n2")
            .expect("n2");
        let mv = Move {
            vm: a,
            to: herd_reschedule::Placement {
                pm: n2,
                numa: herd_reschedule::model::NumaSet::of(&[0]),
            },
        };
        assert_eq!(first_refusal(&state, &model, &[mv]), None, "n2 has room");
        let mut closed = state.clone();
        closed.nodes.get_mut("n2").expect("n2").eligible = false;
        let (step, why) = first_refusal(&closed, &model, &[mv]).expect("n2 takes nothing");
        assert_eq!(step, 0);
        assert!(why.contains("n2") && why.contains("no new work"), "{why}");
    }

    #[test]
    fn requests_out_of_range_are_refused() {
        let state = fragmented();
        let too_many = PlanRequest {
            max_migrations: MAX_MIGRATIONS + 1,
            ..request(0)
        };
        assert!(
            matches!(plan(&state, &too_many), Err(PlanError::Invalid(m)) if m.contains("max_migrations"))
        );
        let no_time = PlanRequest {
            deadline: Duration::ZERO,
            ..request(1)
        };
        assert!(
            matches!(plan(&state, &no_time), Err(PlanError::Invalid(m)) if m.contains("deadline"))
        );
        assert!(LiveSolver::parse("exact").is_err());
        // No moves asked for: the FR as it stands.
        let none = plan(&state, &request(0)).expect("plan");
        assert!(none.moves.is_empty());
        assert!((none.fr_before - none.fr_after).abs() < 1e-12);
    }
}
