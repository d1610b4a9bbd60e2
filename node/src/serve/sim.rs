//! A SIMULATED fleet of inference instances on one modelled clock, to
//! compare dispatch policies on the same request stream: each instance is
//! the engine core (`herd_actors::inference::Engine`, the same code the
//! engine processes run), stepped back to back; requests arrive at their
//! trace times and are dispatched by round-robin or by virtual usage
//! ([`super::dispatch`]). Nothing sleeps: a run takes milliseconds.
//!
//! It is a simulation with perfect, instant load information (the agents
//! see stats a poll period old); the numbers compare policies, they are not
//! measurements of any deployment.

use herd_actors::inference::{wire, Engine, EngineConfig, Priority, RequestSpec};

use super::dispatch::{peak_blocks, pick, prompt_blocks, InstanceLoad, Policy};

/// How requests are spread over the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPolicy {
    /// Instance 0, 1, 2, ... in turn, whatever their load.
    RoundRobin,
    /// The lowest virtual usage ([`super::dispatch::pick`]).
    VirtualUsage,
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// When it arrives (µs on the modelled clock).
    pub at_us: u64,
    /// What it asks for.
    pub spec: RequestSpec,
}

/// What a run measured, on the modelled clock.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// Requests that produced their last token.
    pub finished: usize,
    /// Requests refused at submission (larger than an instance).
    pub refused: usize,
    /// Mean time to first token, ms.
    pub ttft_mean_ms: f64,
    /// 99th percentile time to first token, ms.
    pub ttft_p99_ms: f64,
    /// Preemptions, all instances together.
    pub preemptions: u64,
}

/// A request stream with skewed lengths: Poisson arrivals at `rate_per_s`;
/// one request in ten is long (a 1 024-token prompt, 384 tokens out), the
/// others short (64 in, 32 out), as in chat traffic mixed with document
/// summaries. Deterministic for a seed.
pub fn skewed_trace(seed: u64, count: usize, rate_per_s: f64) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = 0f64;
    (0..count)
        .map(|_| {
            // Exponential gaps: -ln(U)/λ, U in (0, 1].
            at += -(1.0 - rng.f64()).ln() / rate_per_s * 1e6;
            let (prompt_tokens, max_tokens) = if rng.u32(..10) == 0 {
                (1024, 384)
            } else {
                (64, 32)
            };
            Arrival {
                at_us: at as u64,
                spec: RequestSpec {
                    prompt_tokens,
                    max_tokens,
                    priority: Priority::Normal,
                },
            }
        })
        .collect()
}

/// One instance: its engine and when its current step ends.
struct Instance {
    engine: Engine,
    /// When the engine may step next; `None` while it is idle.
    next_at: Option<u64>,
}

impl Instance {
    /// Runs every step that starts before `until`; records first tokens.
    fn advance(&mut self, until: u64, ttfts: &mut Vec<u64>, finished: &mut usize) {
        while let Some(at) = self.next_at.filter(|at| *at <= until) {
            let report = self.engine.step(at);
            for token in &report.tokens {
                if let Some(ttft) = token.ttft_us {
                    ttfts.push(ttft);
                }
                if token.last {
                    *finished += 1;
                }
            }
            self.next_at = (report.duration_us > 0 && !self.engine.is_idle())
                .then_some(at + report.duration_us);
        }
    }
}

/// Runs `trace` on `instances` engines of `config`, dispatching by `policy`
/// (ties broken by `seed`), until every request finished.
pub fn simulate(
    instances: usize,
    config: &EngineConfig,
    trace: &[Arrival],
    policy: SimPolicy,
    seed: u64,
) -> SimReport {
    let mut fleet: Vec<Instance> = (0..instances)
        .map(|_| Instance {
            engine: Engine::new(config.clone()),
            next_at: None,
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let rules = Policy::default();
    let (mut ttfts, mut finished, mut refused) = (Vec::new(), 0, 0);
    for (n, arrival) in trace.iter().enumerate() {
        for instance in &mut fleet {
            instance.advance(arrival.at_us, &mut ttfts, &mut finished);
        }
        let chosen = match policy {
            SimPolicy::RoundRobin => Some(n % instances.max(1)),
            SimPolicy::VirtualUsage => {
                let loads: Vec<InstanceLoad> = fleet
                    .iter()
                    .map(|i| InstanceLoad::from_stats(&wire::stats(&i.engine.stats())))
                    .collect();
                let needed = peak_blocks(arrival.spec.prompt_tokens, arrival.spec.max_tokens);
                pick(&loads, needed.max(prompt_blocks(1)), &rules, &mut rng).ok()
            }
        };
        let Some(instance) = chosen.and_then(|i| fleet.get_mut(i)) else {
            refused += 1;
            continue;
        };
        match instance.engine.submit(arrival.spec, arrival.at_us) {
            Ok(_) => {
                instance.next_at = Some(instance.next_at.unwrap_or(arrival.at_us));
            }
            Err(_) => refused += 1,
        }
    }
    for instance in &mut fleet {
        instance.advance(u64::MAX, &mut ttfts, &mut finished);
    }
    ttfts.sort_unstable();
    let mean = if ttfts.is_empty() {
        0.0
    } else {
        ttfts.iter().sum::<u64>() as f64 / ttfts.len() as f64 / 1e3
    };
    let p99 = match ttfts.len() {
        0 => 0.0,
        n => ttfts[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3,
    };
    SimReport {
        finished,
        refused,
        ttft_mean_ms: mean,
        ttft_p99_ms: p99,
        preemptions: fleet
            .iter()
            .map(|i| i.engine.stats().preemptions_total)
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_actors::inference::cost::CostModel;
    use herd_actors::inference::PreemptionMode;

    fn config() -> EngineConfig {
        EngineConfig {
            kv_blocks: 256,
            bytes_per_token: 1,
            max_batch: 32,
            preemption: PreemptionMode::Recompute,
            swap_blocks: 0,
            cost: CostModel::default(),
        }
    }

    #[test]
    fn virtual_usage_queues_less_than_round_robin_under_skewed_lengths() {
        // 8 requests a second: where round-robin starts to queue (at 4 it
        // barely does; above 10 both are overloaded).
        let trace = skewed_trace(42, 1500, 8.0);
        let rr = simulate(4, &config(), &trace, SimPolicy::RoundRobin, 42);
        let vu = simulate(4, &config(), &trace, SimPolicy::VirtualUsage, 42);
        eprintln!(
            "SIMULATED, 4 instances, 1500 requests: round-robin {rr:?}; virtual usage {vu:?}"
        );
        for report in [&rr, &vu] {
            assert_eq!((report.finished, report.refused), (1500, 0), "{report:?}");
        }
        assert!(
            vu.ttft_p99_ms * 3.0 < rr.ttft_p99_ms,
            "p99 TTFT: virtual usage {} ms, round-robin {} ms",
            vu.ttft_p99_ms,
            rr.ttft_p99_ms
        );
        assert!(
            vu.ttft_mean_ms * 2.0 < rr.ttft_mean_ms,
            "mean TTFT: virtual usage {} ms, round-robin {} ms",
            vu.ttft_mean_ms,
            rr.ttft_mean_ms
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let trace = skewed_trace(5, 200, 20.0);
        assert_eq!(trace, skewed_trace(5, 200, 20.0));
        let a = simulate(3, &config(), &trace, SimPolicy::VirtualUsage, 9);
        let b = simulate(3, &config(), &trace, SimPolicy::VirtualUsage, 9);
        assert_eq!(a, b);
    }
}
