//! The solvers, all behind one trait: a pure function from an instance, a
//! move budget and a deadline to an ordered plan of moves.
//!
//! - [`greedy::Greedy`]: the VMR2L paper's greedy heuristic, the baseline.
//! - [`exact::Exact`]: a MIP through HiGHS with a time limit, the yardstick
//!   on small instances.
//! - [`fast::Fast`]: herd's own anytime method (steepest-descent moves with
//!   a tie-breaking potential, then large-neighbourhood search until the
//!   deadline).

pub mod exact;
pub mod fast;
pub mod greedy;

use std::time::Duration;

use crate::model::{Instance, Move, Shape};

/// What a solver may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// At most this many moves (MNL).
    pub max_moves: usize,
    /// Return within about this long (the best plan found by then).
    pub deadline: Duration,
    /// The VM shape whose fragment rate to lower.
    pub shape: Shape,
    /// Seed for solvers that randomise (same seed, same plan, given time).
    pub seed: u64,
}

/// A solver's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// The moves, in the order to make them.
    pub moves: Vec<Move>,
    /// The FR the solver says the plan reaches.
    pub fr_after: f64,
    /// Whether the solver proved no plan within the budget does better.
    pub proved_optimal: bool,
    /// Anything worth saying (e.g. a time limit hit).
    pub note: Option<String>,
    /// A proven lower bound on the FR any plan within the budget reaches
    /// (the exact solver's dual bound), so that a planner cut off by its
    /// limit still tells how far the best plan found may be from optimal.
    pub fr_bound: Option<f64>,
}

/// Why a solver gave no plan at all.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// The MIP solver failed.
    #[error("MIP solver: {0}")]
    Mip(String),
    /// The instance is too big for this solver.
    #[error("instance too large for {solver}: {why}")]
    TooLarge {
        /// The solver.
        solver: &'static str,
        /// Why.
        why: String,
    },
}

/// A rescheduling planner.
pub trait Solver {
    /// The name `herd reschedule eval --solver` knows it by.
    fn name(&self) -> &'static str;
    /// A plan of at most `limits.max_moves` moves lowering FR, within about
    /// `limits.deadline`.
    fn solve(&self, inst: &Instance, limits: &Limits) -> Result<Solution, SolveError>;
}

/// Every solver's name, in the order eval runs them by default.
pub const SOLVER_NAMES: [&str; 3] = ["greedy", "herd", "exact"];

/// The solver named `name`, if there is one.
pub fn by_name(name: &str) -> Option<Box<dyn Solver>> {
    match name {
        "greedy" => Some(Box::new(greedy::Greedy)),
        "herd" | "fast" => Some(Box::new(fast::Fast::default())),
        "herd-restart" => Some(Box::new(fast::Fast {
            lns: false,
            ..fast::Fast::default()
        })),
        "exact" | "mip" => Some(Box::new(exact::Exact::default())),
        _ => None,
    }
}

/// Keeps the prefix of `moves` that reaches the fewest fragments (earliest
/// such prefix): trailing moves that did not help are not worth migrating.
pub(crate) fn best_prefix(inst: &Instance, shape: Shape, moves: &[Move]) -> (Vec<Move>, f64) {
    let mut state = crate::state::State::new(inst, shape);
    let mut best = (0usize, state.slots());
    for (i, &mv) in moves.iter().enumerate() {
        if state.apply(mv).is_err() {
            break;
        }
        if state.slots() > best.1 {
            best = (i + 1, state.slots());
        }
    }
    let kept = moves[..best.0].to_vec();
    let mut state = crate::state::State::new(inst, shape);
    for &mv in &kept {
        state.apply_unchecked(mv);
    }
    (kept, state.fragment_rate())
}
