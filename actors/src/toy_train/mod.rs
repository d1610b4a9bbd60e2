//! `herd toy-train`'s trainer: a small, real training loop that checkpoints
//! and resumes, so that the `dljob` driver's checkpoint/restart (and later its
//! migration) can be tested without a GPU or a DL framework.
//!
//! - [`model`]: linear regression on a seeded stream of synthetic samples,
//!   fit by mini-batch gradient descent; pure `f64` arithmetic in a fixed
//!   order, so a run is bit-reproducible under its seed.
//! - [`rng`]: the PRNG whose one-word state the checkpoint carries.
//! - [`checkpoint`]: atomic checkpoint files, a `latest` pointer, the
//!   control-file protocol, resumption that skips torn or corrupt files.
//!
//! Resuming from the checkpoint after step K and running to N gives the same
//! parameters, bit for bit, and the same loss lines as running 1..N at once:
//! the state after step K is all a step depends on.

pub mod checkpoint;
pub mod model;
pub mod rng;

#[cfg(test)]
mod tests;

pub use model::{StepReport, TrainState, Trainer};

/// The line `herd toy-train` prints for a step; identical losses give
/// identical lines (Rust prints the shortest text that reads back the same bits).
pub fn step_line(report: &StepReport) -> String {
    format!("step={} loss={}", report.step, report.loss)
}

/// The line `herd toy-train` prints at the end: the parameters' bit patterns.
pub fn final_line(state: &TrainState) -> String {
    let bits: Vec<String> = state
        .weight_bits()
        .iter()
        .map(|b| format!("{b:016x}"))
        .collect();
    format!("done step={} weights={}", state.step, bits.join(","))
}
