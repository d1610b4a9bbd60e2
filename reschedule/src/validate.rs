//! The plan validator: replays a plan move by move on the instance and
//! checks every rule, independently of the solver that made it.
//!
//! Exists so no solver is trusted: tests run every solver's plan through it,
//! and `herd reschedule eval` refuses to print a plan it rejects.

use crate::model::{Instance, Move, Placement, Shape};
use crate::objective::fragment_rate;
use crate::state::{MoveError, State};

/// What a valid plan leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// FR before the first move.
    pub fr_before: f64,
    /// FR after the last move, recomputed from scratch.
    pub fr_after: f64,
    /// How many moves the plan has.
    pub moves: usize,
    /// Where every VM ends up.
    pub placements: Vec<Placement>,
}

/// Why a plan is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// More moves than allowed.
    #[error("the plan has {moves} moves, at most {max} allowed")]
    TooManyMoves {
        /// Moves in the plan.
        moves: usize,
        /// The limit.
        max: usize,
    },
    /// A move cannot be made at its turn (capacity, anti-affinity, an
    /// immovable VM, a bad destination).
    #[error("move {step} (0-based): {error}")]
    Step {
        /// Its position in the plan.
        step: usize,
        /// Why it cannot be made.
        error: MoveError,
    },
    /// The FR the solver claims is not the FR the replay gives.
    #[error("the plan claims FR {claimed}, its replay gives {replayed}")]
    FrMismatch {
        /// The solver's claim.
        claimed: f64,
        /// The replay's FR.
        replayed: f64,
    },
}

/// Replays `plan` on `inst`: at most `max_moves` moves, each possible at its
/// turn (no NUMA node over its cores or memory, anti-affinity kept, only
/// movable VMs moved to active PMs); with `claimed_fr`, the FR recomputed
/// from the final placements must equal it (within 1e-9).
pub fn validate_plan(
    inst: &Instance,
    shape: Shape,
    plan: &[Move],
    max_moves: usize,
    claimed_fr: Option<f64>,
) -> Result<Replay, PlanError> {
    if plan.len() > max_moves {
        return Err(PlanError::TooManyMoves {
            moves: plan.len(),
            max: max_moves,
        });
    }
    let mut state = State::new(inst, shape);
    let fr_before = fragment_rate(inst, state.placements(), shape);
    for (step, &mv) in plan.iter().enumerate() {
        state
            .apply(mv)
            .map_err(|error| PlanError::Step { step, error })?;
    }
    let placements = state.placements().to_vec();
    let fr_after = fragment_rate(inst, &placements, shape);
    if let Some(claimed) = claimed_fr {
        if (claimed - fr_after).abs() > 1e-9 {
            return Err(PlanError::FrMismatch {
                claimed,
                replayed: fr_after,
            });
        }
    }
    Ok(Replay {
        fr_before,
        fr_after,
        moves: plan.len(),
        placements,
    })
}
