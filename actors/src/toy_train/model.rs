//! The toy model and its training step: linear regression fit by mini-batch
//! gradient descent on a stream of synthetic samples. Pure arithmetic on
//! `f64` (`+ - * /` only, always in the same order), so that the same state
//! gives the same bits on every run and every x86-64 or aarch64 host.

use super::rng::SplitMix64;

/// Input features per sample.
pub const FEATURES: usize = 4;
/// Parameters: one weight per feature, then the bias.
pub const PARAMS: usize = FEATURES + 1;
/// Samples per mini-batch.
pub const BATCH: usize = 8;
/// Learning rate.
pub const LEARNING_RATE: f64 = 0.05;
/// Amplitude of the uniform noise added to targets (so the loss has a floor).
pub const NOISE: f64 = 0.1;

/// Mixed into the seed for the hidden true parameters, so that they do not
/// repeat the data stream.
const TRUTH_STREAM: u64 = 0x5EED_7AB1_E000_0001;

/// Everything a run needs to continue: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// The run's seed (fixes the hidden true parameters and the data stream).
    pub seed: u64,
    /// Steps done so far.
    pub step: u64,
    /// The current parameters (`PARAMS` of them: weights, then bias).
    pub weights: Vec<f64>,
    /// The data stream's PRNG state after `step` steps.
    pub rng: u64,
}

impl TrainState {
    /// A run that has done nothing yet: zero parameters, data stream at `seed`.
    pub fn fresh(seed: u64) -> Self {
        Self {
            seed,
            step: 0,
            weights: vec![0.0; PARAMS],
            rng: seed,
        }
    }

    /// The parameters' bit patterns, to compare runs exactly.
    pub fn weight_bits(&self) -> Vec<u64> {
        self.weights.iter().map(|w| w.to_bits()).collect()
    }
}

/// The hidden parameters the synthetic data is generated from, in `[-2, 2)`.
pub fn true_weights(seed: u64) -> [f64; PARAMS] {
    let mut rng = SplitMix64::new(seed ^ TRUTH_STREAM);
    let mut truth = [0.0; PARAMS];
    for w in &mut truth {
        *w = rng.uniform(-2.0, 2.0);
    }
    truth
}

/// One step: what was measured before the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step's number (1 for the first).
    pub step: u64,
    /// Mean squared error on the step's batch before the update.
    pub loss: f64,
}

/// Trains a model: holds the state and the hidden truth derived from its seed.
#[derive(Debug, Clone)]
pub struct Trainer {
    state: TrainState,
    truth: [f64; PARAMS],
}

impl Trainer {
    /// A trainer continuing `state` (fresh or from a checkpoint). `None` when
    /// the state does not hold `PARAMS` parameters.
    pub fn new(state: TrainState) -> Option<Self> {
        (state.weights.len() == PARAMS).then(|| Self {
            truth: true_weights(state.seed),
            state,
        })
    }

    /// The state now, to checkpoint.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Draws a batch, measures the loss, takes one gradient step.
    pub fn step(&mut self) -> StepReport {
        let mut rng = SplitMix64::new(self.state.rng);
        let mut grad = [0.0; PARAMS];
        let mut loss = 0.0;
        for _ in 0..BATCH {
            let mut x = [0.0; FEATURES];
            for v in &mut x {
                *v = rng.uniform(-1.0, 1.0);
            }
            let noise = rng.uniform(-NOISE, NOISE);
            let target = dot(&self.truth, &x) + noise;
            let err = dot(&self.state.weights, &x) - target;
            loss += err * err;
            for (g, v) in grad.iter_mut().zip(x.iter()) {
                *g += err * v;
            }
            grad[FEATURES] += err;
        }
        let n = BATCH as f64;
        for (w, g) in self.state.weights.iter_mut().zip(grad.iter()) {
            *w -= LEARNING_RATE * (2.0 * g / n);
        }
        self.state.rng = rng.state();
        self.state.step += 1;
        StepReport {
            step: self.state.step,
            loss: loss / n,
        }
    }
}

/// `w · x + bias`, summed left to right.
fn dot(params: &[f64], x: &[f64; FEATURES]) -> f64 {
    let mut sum = 0.0;
    for (w, v) in params.iter().zip(x.iter()) {
        sum += w * v;
    }
    sum + params.get(FEATURES).copied().unwrap_or(0.0)
}
