//! Request traces for the SIMULATED fleet ([`super::sim`]): when requests
//! arrive and how long their prompts and outputs are, drawn from seeded
//! distributions so that the same seed gives the same trace.
//!
//! Why these distributions (they follow the Llumnix paper's evaluation,
//! Sun et al., *Llumnix: Dynamic Scheduling for Large Language Model
//! Serving*, OSDI 2024, §6.1):
//! - arrivals are a Poisson process, or a **Gamma** renewal process whose
//!   coefficient of variation (CV) sets how bursty it is (CV 1 is Poisson;
//!   Llumnix varies the CV to make bursts);
//! - prompt and output lengths are **power-law** (bounded Pareto) with a
//!   stated mean, as Llumnix's generated distributions (means of 128, 256
//!   and 512 tokens for short, medium and long): most requests are short and
//!   a few are very long, which is what makes round-robin dispatch pile long
//!   requests on one instance while another idles.
//!
//! The Pareto shape is solved from the mean and the bounds, so "mean 256 in
//! [8, 4096]" is exactly that distribution, whatever the tail exponent
//! needed for it.

use herd_actors::inference::{Priority, RequestSpec};

use super::sim::Arrival;

/// How request arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalProcess {
    /// Exponential gaps (memoryless, CV 1).
    Poisson,
    /// Gamma-distributed gaps with this coefficient of variation (> 1 is
    /// bursty: many short gaps, a few long ones).
    Gamma {
        /// Standard deviation over mean of the gaps.
        cv: f64,
    },
}

/// A bounded power-law (Pareto) length distribution with a given mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthDist {
    /// Shortest length (tokens, ≥ 1).
    pub min: u32,
    /// Longest length (tokens).
    pub max: u32,
    /// The mean the shape is solved for (tokens).
    pub mean: f64,
}

/// Everything that defines a trace (with a seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSpec {
    /// Requests in the trace.
    pub count: usize,
    /// Mean arrival rate (requests per second of the modelled clock).
    pub rate_per_s: f64,
    /// How arrivals are spaced.
    pub arrivals: ArrivalProcess,
    /// Prompt lengths.
    pub prompt: LengthDist,
    /// Output lengths (`max_tokens`; the SIMULATED engine always generates
    /// all of them).
    pub output: LengthDist,
    /// Share of requests with high priority, in [0, 1].
    pub high_share: f64,
}

/// Why a trace cannot be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// The rate is not a positive finite number.
    #[error("the arrival rate must be a positive number of requests per second, got {0}")]
    Rate(f64),
    /// The Gamma CV is not a positive finite number.
    #[error(
        "the Gamma arrivals' coefficient of variation must be positive and at most 100, got {0}"
    )]
    Cv(f64),
    /// The high-priority share is outside [0, 1].
    #[error("the high-priority share must be between 0 and 1, got {0}")]
    HighShare(f64),
    /// A length distribution cannot have that mean within its bounds.
    #[error("{what} lengths: a power law on [{min}, {max}] cannot have mean {mean} (it must lie strictly between {min} and {limit:.0})")]
    Mean {
        /// Which distribution.
        what: &'static str,
        /// Its lower bound.
        min: u32,
        /// Its upper bound.
        max: u32,
        /// The mean asked for.
        mean: f64,
        /// The largest mean a decreasing power law on the bounds reaches.
        limit: f64,
    },
}

/// The Pareto shape `a` and bounds that give the distribution its mean.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pareto {
    shape: f64,
    min: f64,
    max: f64,
}

impl Pareto {
    /// Mean of a Pareto of shape `a` bounded to [l, h].
    fn mean_of(a: f64, l: f64, h: f64) -> f64 {
        if (a - 1.0).abs() < 1e-9 {
            return h * l / (h - l) * (h / l).ln();
        }
        let norm = 1.0 - (l / h).powf(a);
        l.powf(a) / norm * a / (a - 1.0) * (l.powf(1.0 - a) - h.powf(1.0 - a))
    }

    /// Solves the shape for `dist.mean` by bisection (the mean falls as the
    /// shape grows).
    fn solve(dist: &LengthDist, what: &'static str) -> Result<Self, TraceError> {
        let (l, h) = (dist.min.max(1) as f64, dist.max as f64);
        let (mut lo, mut hi) = (1e-3, 50.0);
        let limit = Self::mean_of(lo, l, h);
        if !(dist.mean.is_finite() && h > l && dist.mean > l && dist.mean < limit) {
            return Err(TraceError::Mean {
                what,
                min: dist.min,
                max: dist.max,
                mean: dist.mean,
                limit: if h > l { limit } else { l },
            });
        }
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if Self::mean_of(mid, l, h) > dist.mean {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Self {
            shape: (lo + hi) / 2.0,
            min: l,
            max: h,
        })
    }

    /// One length, by inverting the CDF.
    fn sample(&self, rng: &mut fastrand::Rng) -> u32 {
        let u = rng.f64();
        let tail = 1.0 - u * (1.0 - (self.min / self.max).powf(self.shape));
        let x = self.min / tail.powf(1.0 / self.shape);
        x.round().clamp(self.min, self.max) as u32
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64(); // (0, 1]
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang, 2000; boosted below 1).
fn gamma(rng: &mut fastrand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.f64();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.f64();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Generates the trace of `spec`; deterministic for a seed.
pub fn generate(spec: &TraceSpec, seed: u64) -> Result<Vec<Arrival>, TraceError> {
    if !(spec.rate_per_s.is_finite() && spec.rate_per_s > 0.0) {
        return Err(TraceError::Rate(spec.rate_per_s));
    }
    if let ArrivalProcess::Gamma { cv } = spec.arrivals {
        if !(cv.is_finite() && cv > 0.0 && cv <= 100.0) {
            return Err(TraceError::Cv(cv));
        }
    }
    if !(0.0..=1.0).contains(&spec.high_share) {
        return Err(TraceError::HighShare(spec.high_share));
    }
    let prompt = Pareto::solve(&spec.prompt, "prompt")?;
    let output = Pareto::solve(&spec.output, "output")?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mean_gap_us = 1e6 / spec.rate_per_s;
    let mut at = 0f64;
    Ok((0..spec.count)
        .map(|_| {
            let gap = match spec.arrivals {
                ArrivalProcess::Poisson => -(1.0 - rng.f64()).ln(),
                // Shape k = 1/CV², mean 1.
                ArrivalProcess::Gamma { cv } => {
                    let k = 1.0 / (cv * cv);
                    gamma(&mut rng, k) / k
                }
            };
            at += gap * mean_gap_us;
            let prompt_tokens = prompt.sample(&mut rng);
            let max_tokens = output.sample(&mut rng);
            let priority = if rng.f64() < spec.high_share {
                Priority::High
            } else {
                Priority::Normal
            };
            Arrival {
                at_us: at as u64,
                spec: RequestSpec {
                    prompt_tokens,
                    max_tokens,
                    priority,
                },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arrivals: ArrivalProcess) -> TraceSpec {
        TraceSpec {
            count: 20_000,
            rate_per_s: 50.0,
            arrivals,
            prompt: LengthDist {
                min: 8,
                max: 4096,
                mean: 256.0,
            },
            output: LengthDist {
                min: 8,
                max: 2048,
                mean: 128.0,
            },
            high_share: 0.1,
        }
    }

    fn mean_cv(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn lengths_rates_burstiness_and_priorities_are_what_was_asked() {
        for (arrivals, want_cv) in [
            (ArrivalProcess::Poisson, 1.0),
            (ArrivalProcess::Gamma { cv: 3.0 }, 3.0),
        ] {
            let trace = generate(&spec(arrivals), 7).expect("a trace");
            assert_eq!(trace, generate(&spec(arrivals), 7).expect("a trace"));
            let gaps: Vec<f64> = trace
                .windows(2)
                .map(|w| (w[1].at_us - w[0].at_us) as f64)
                .collect();
            let (gap_mean, gap_cv) = mean_cv(&gaps);
            assert!((gap_mean - 20_000.0).abs() < 2_000.0, "{gap_mean}");
            assert!((gap_cv - want_cv).abs() < want_cv * 0.2, "{gap_cv}");
            let prompts: Vec<f64> = trace.iter().map(|a| a.spec.prompt_tokens as f64).collect();
            let (prompt_mean, _) = mean_cv(&prompts);
            assert!((prompt_mean - 256.0).abs() < 20.0, "{prompt_mean}");
            // Long-tailed: the median is far below the mean.
            let mut sorted = prompts.clone();
            sorted.sort_by(f64::total_cmp);
            assert!(sorted[sorted.len() / 2] < 0.5 * prompt_mean);
            assert!(trace
                .iter()
                .all(|a| (8..=4096).contains(&a.spec.prompt_tokens)
                    && (8..=2048).contains(&a.spec.max_tokens)));
            let high = trace
                .iter()
                .filter(|a| a.spec.priority == Priority::High)
                .count();
            assert!((1_600..2_400).contains(&high), "{high}");
        }
    }

    #[test]
    fn impossible_distributions_are_refused_clearly() {
        let mut bad = spec(ArrivalProcess::Poisson);
        bad.prompt.mean = 5_000.0;
        let err = generate(&bad, 1).expect_err("mean above the bound");
        assert!(err.to_string().contains("prompt lengths"), "{err}");
        bad = spec(ArrivalProcess::Gamma { cv: -1.0 });
        assert_eq!(generate(&bad, 1), Err(TraceError::Cv(-1.0)));
        bad = spec(ArrivalProcess::Poisson);
        bad.rate_per_s = 0.0;
        assert_eq!(generate(&bad, 1), Err(TraceError::Rate(0.0)));
    }
}
