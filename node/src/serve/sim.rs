//! A SIMULATED fleet of inference instances on one modelled clock, to
//! compare dispatch policies on the same request stream: each instance is
//! the engine core (`herd_actors::inference::Engine`, the same code the
//! engine processes run), stepped back to back; requests arrive at their
//! trace times ([`super::sim_trace`] generates traces) and are dispatched by
//! round-robin, to the least-loaded instance, or by virtual usage
//! ([`super::dispatch`]), optionally with request migration between
//! instances ([`super::sim_migrate`]). Nothing sleeps: a run of thousands of
//! requests takes seconds.
//!
//! It is a simulation with perfect, instant load information (the agents
//! see stats a poll period old); the numbers compare policies, they are not
//! measurements of any deployment. Every token is checked: each request's
//! tokens must arrive once each, in order, wherever it runs
//! ([`SimReport::token_errors`]).

use std::collections::HashMap;

use herd_actors::inference::{
    wire, Engine, EngineConfig, Priority, RequestId, RequestSpec, TokenEvent,
};

use super::dispatch::{peak_blocks, pick, prompt_blocks, InstanceLoad, Policy};
use super::sim_migrate::{self, Migration, MigrationModel, Outcome};

/// How requests are spread over the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPolicy {
    /// Instance 0, 1, 2, ... in turn, whatever their load.
    RoundRobin,
    /// The fewest requests in the engine (running, queued and swapped out),
    /// the usual "least outstanding requests" load balancer.
    LeastLoaded,
    /// herd's dispatcher ([`super::dispatch::pick`]): the highest freeness,
    /// from each instance's virtual usage.
    VirtualUsage,
    /// Virtual usage, plus herd's rescheduling: request migration off
    /// instances about to run out of KV blocks ([`super::sim_migrate`],
    /// [`super::resched_policy`]).
    VirtualUsageMigration,
}

impl SimPolicy {
    /// Every policy, in the order the benchmark prints them.
    pub const ALL: [SimPolicy; 4] = [
        SimPolicy::RoundRobin,
        SimPolicy::LeastLoaded,
        SimPolicy::VirtualUsage,
        SimPolicy::VirtualUsageMigration,
    ];

    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            SimPolicy::RoundRobin => "round-robin",
            SimPolicy::LeastLoaded => "least-loaded",
            SimPolicy::VirtualUsage => "herd",
            SimPolicy::VirtualUsageMigration => "herd + migration",
        }
    }
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
    /// Requests in the trace.
    pub requests: usize,
    /// Requests that produced their last token.
    pub finished: usize,
    /// Requests refused at submission (larger than an instance).
    pub refused: usize,
    /// Mean time to first token, ms.
    pub ttft_mean_ms: f64,
    /// 99th percentile time to first token, ms.
    pub ttft_p99_ms: f64,
    /// 99th percentile time between two tokens of a request, ms (a
    /// migration's downtime and a preemption's wait show here).
    pub tbt_p99_ms: f64,
    /// Preemptions, all instances together.
    pub preemptions: u64,
    /// Requests migrated (switched over to their target).
    pub migrations: u64,
    /// Migrations given up (the request went on on its source).
    pub migrations_aborted: u64,
    /// p99 TTFT of high-priority requests, ms (`None` without any).
    pub high_ttft_p99_ms: Option<f64>,
    /// p99 TTFT of normal-priority requests, ms (`None` without any).
    pub normal_ttft_p99_ms: Option<f64>,
    /// Tokens that came out of order, twice, or for an unknown request, plus
    /// requests left unfinished: 0 in a correct run.
    pub token_errors: u64,
    /// When the last token came out, s of modelled time.
    pub makespan_s: f64,
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

/// Every request's progress as the client would see it, by trace index.
struct Tracker {
    arrival_us: Vec<u64>,
    high: Vec<bool>,
    max_tokens: Vec<u32>,
    next_index: Vec<u32>,
    last_at: Vec<Option<u64>>,
    ttft_us: Vec<Option<u64>>,
    gaps_us: Vec<u64>,
    finished: usize,
    errors: u64,
    end_us: u64,
}

impl Tracker {
    fn new(trace: &[Arrival]) -> Self {
        let n = trace.len();
        Self {
            arrival_us: trace.iter().map(|a| a.at_us).collect(),
            high: trace
                .iter()
                .map(|a| a.spec.priority == Priority::High)
                .collect(),
            max_tokens: trace.iter().map(|a| a.spec.max_tokens).collect(),
            next_index: vec![0; n],
            last_at: vec![None; n],
            ttft_us: vec![None; n],
            gaps_us: Vec::new(),
            finished: 0,
            errors: 0,
            end_us: 0,
        }
    }

    /// One token of request `logical` (its trace index).
    fn token(&mut self, logical: usize, token: &TokenEvent) {
        let Some(expected) = self.next_index.get_mut(logical) else {
            self.errors += 1;
            return;
        };
        if token.index != *expected {
            self.errors += 1;
        }
        *expected = token.index.saturating_add(1);
        match self.last_at[logical] {
            None => {
                self.ttft_us[logical] = Some(token.at_us.saturating_sub(self.arrival_us[logical]))
            }
            Some(last) => self.gaps_us.push(token.at_us.saturating_sub(last)),
        }
        self.last_at[logical] = Some(token.at_us);
        self.end_us = self.end_us.max(token.at_us);
        if token.last {
            self.finished += 1;
            if token.index + 1 != self.max_tokens[logical] {
                self.errors += 1;
            }
        }
    }
}

/// One instance: its engine, when its next step starts, and which trace
/// request each of its engine requests is.
pub(crate) struct Instance {
    pub(crate) engine: Engine,
    /// When the engine may step next; `None` while it has nothing to run.
    pub(crate) next_at: Option<u64>,
    /// Engine request id → trace index.
    pub(crate) owner: HashMap<RequestId, usize>,
}

impl Instance {
    /// Something changed at `now`: step again from then if it was not going to.
    pub(crate) fn wake(&mut self, now: u64) {
        self.next_at = Some(self.next_at.unwrap_or(now));
    }

    /// Runs every step that starts at or before `until`; records tokens.
    fn advance(&mut self, until: u64, tracker: &mut Tracker) {
        while let Some(at) = self.next_at.filter(|at| *at <= until) {
            let report = self.engine.step(at);
            for token in &report.tokens {
                match self.owner.get(&token.request) {
                    Some(&logical) => tracker.token(logical, token),
                    None => tracker.errors += 1,
                }
                if token.last {
                    self.owner.remove(&token.request);
                }
            }
            self.next_at = (report.duration_us > 0 && !self.engine.is_idle())
                .then_some(at + report.duration_us);
        }
    }
}

/// Settings of a run beyond the fleet and the policy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SimSettings {
    /// Request migration's model and rule (used by
    /// [`SimPolicy::VirtualUsageMigration`] only).
    pub migration: MigrationModel,
}

/// Runs `trace` on `instances` engines of `config`, dispatching by `policy`
/// (ties broken by `seed`), until every request finished; default settings.
pub fn simulate(
    instances: usize,
    config: &EngineConfig,
    trace: &[Arrival],
    policy: SimPolicy,
    seed: u64,
) -> SimReport {
    simulate_with(
        instances,
        config,
        trace,
        policy,
        seed,
        &SimSettings::default(),
    )
}

/// Which instance a request goes to under `policy`, if any can take it.
fn choose(
    policy: SimPolicy,
    n: usize,
    fleet: &[Instance],
    migrations: &[Migration],
    spec: &RequestSpec,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    match policy {
        SimPolicy::RoundRobin => Some(n % fleet.len().max(1)),
        SimPolicy::LeastLoaded => {
            let counts: Vec<u32> = fleet
                .iter()
                .map(|i| {
                    let s = i.engine.stats();
                    s.batch_size + s.queue_len + s.swapped
                })
                .collect();
            let least = counts.iter().min()?;
            let tied: Vec<usize> = (0..fleet.len()).filter(|i| counts[*i] == *least).collect();
            Some(tied[rng.usize(..tied.len())])
        }
        SimPolicy::VirtualUsage | SimPolicy::VirtualUsageMigration => {
            let mut loads: Vec<InstanceLoad> = fleet
                .iter()
                .map(|i| InstanceLoad::from_stats(&wire::stats(&i.engine.stats())))
                .collect();
            // A request on its way in counts on its target, as a pending one.
            for m in migrations {
                if let Some(load) = loads.get_mut(m.target()) {
                    load.pending_blocks += m.blocks;
                    load.pending_requests += 1;
                }
            }
            let needed = peak_blocks(spec.prompt_tokens, spec.max_tokens);
            pick(
                &loads,
                needed.max(prompt_blocks(1)),
                &Policy::default(),
                rng,
            )
            .ok()
        }
    }
}

/// [`simulate`] with explicit settings.
pub fn simulate_with(
    instances: usize,
    config: &EngineConfig,
    trace: &[Arrival],
    policy: SimPolicy,
    seed: u64,
    settings: &SimSettings,
) -> SimReport {
    let mut fleet: Vec<Instance> = (0..instances)
        .map(|_| Instance {
            engine: Engine::new(config.clone()),
            next_at: None,
            owner: HashMap::new(),
        })
        .collect();
    let mut tracker = Tracker::new(trace);
    let mut rng = fastrand::Rng::with_seed(seed);
    let model = settings.migration;
    let mut failures = sim_migrate::Failures::default();
    let migrating = policy == SimPolicy::VirtualUsageMigration;
    let mut migrations: Vec<Migration> = Vec::new();
    let (mut next_arrival, mut refused) = (0usize, 0usize);
    let (mut migrated, mut aborted, mut migration_ids) = (0u64, 0u64, 0u64);
    let mut next_tick = model.interval_us.max(1);
    loop {
        let t_arrival = trace.get(next_arrival).map(|a| a.at_us);
        let t_migration = migrations.iter().map(|m| m.due_us).min();
        let busy = t_arrival.is_some()
            || !migrations.is_empty()
            || fleet.iter().any(|i| i.next_at.is_some());
        let t_tick = (migrating && busy).then_some(next_tick);
        let Some(now) = [t_migration, t_arrival, t_tick].into_iter().flatten().min() else {
            break;
        };
        for instance in &mut fleet {
            instance.advance(now, &mut tracker);
        }
        if t_migration == Some(now) {
            let Some(i) = migrations.iter().position(|m| m.due_us == now) else {
                break;
            };
            match migrations[i].run(&mut fleet, now, &model) {
                Outcome::Continue => {}
                Outcome::Done => {
                    migrated += 1;
                    migrations.remove(i);
                }
                Outcome::Aborted => {
                    aborted += 1;
                    failures.add(&migrations[i], now);
                    migrations.remove(i);
                }
            }
        } else if t_arrival == Some(now) {
            let arrival = trace[next_arrival];
            let chosen = choose(
                policy,
                next_arrival,
                &fleet,
                &migrations,
                &arrival.spec,
                &mut rng,
            );
            match chosen.and_then(|i| fleet.get_mut(i)) {
                Some(instance) => match instance.engine.submit(arrival.spec, now) {
                    Ok(id) => {
                        instance.owner.insert(id, next_arrival);
                        instance.wake(now);
                    }
                    Err(_) => refused += 1,
                },
                None => refused += 1,
            }
            next_arrival += 1;
        } else {
            let started = sim_migrate::plan(
                &fleet,
                &migrations,
                &mut failures,
                &model,
                now,
                &mut migration_ids,
            );
            migrations.extend(started);
            next_tick = now + model.interval_us.max(1);
        }
    }
    for instance in &mut fleet {
        instance.advance(u64::MAX, &mut tracker);
    }
    report(trace, &fleet, tracker, refused, migrated, aborted)
}

/// The `q`-quantile (nearest rank) of sorted values, in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3,
    }
}

fn report(
    trace: &[Arrival],
    fleet: &[Instance],
    mut tracker: Tracker,
    refused: usize,
    migrations: u64,
    migrations_aborted: u64,
) -> SimReport {
    let mut all = Vec::new();
    let (mut high, mut normal) = (Vec::new(), Vec::new());
    for (i, ttft) in tracker.ttft_us.iter().enumerate() {
        if let Some(t) = ttft {
            all.push(*t);
            if tracker.high[i] {
                high.push(*t);
            } else {
                normal.push(*t);
            }
        }
    }
    for v in [&mut all, &mut high, &mut normal] {
        v.sort_unstable();
    }
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<u64>() as f64 / all.len() as f64 / 1e3
    };
    let tbt_p99 = match tracker.gaps_us.len() {
        0 => 0.0,
        n => {
            let k = ((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1;
            *tracker.gaps_us.select_nth_unstable(k).1 as f64 / 1e3
        }
    };
    let unfinished = trace.len().saturating_sub(tracker.finished + refused);
    SimReport {
        requests: trace.len(),
        finished: tracker.finished,
        refused,
        ttft_mean_ms: mean,
        ttft_p99_ms: quantile_ms(&all, 0.99),
        tbt_p99_ms: tbt_p99,
        preemptions: fleet
            .iter()
            .map(|i| i.engine.stats().preemptions_total)
            .sum(),
        migrations,
        migrations_aborted,
        high_ttft_p99_ms: (!high.is_empty()).then(|| quantile_ms(&high, 0.99)),
        normal_ttft_p99_ms: (!normal.is_empty()).then(|| quantile_ms(&normal, 0.99)),
        token_errors: tracker.errors + unfinished as u64,
        makespan_s: tracker.end_us as f64 / 1e6,
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
            priority_preemption: true,
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

    /// A loaded, bursty trace with long-tailed lengths on small instances:
    /// preemptions and migrations happen.
    fn pressured_trace(seed: u64) -> Vec<Arrival> {
        use super::super::sim_trace::{generate, ArrivalProcess, LengthDist, TraceSpec};
        let spec = TraceSpec {
            count: 600,
            rate_per_s: 12.0,
            arrivals: ArrivalProcess::Gamma { cv: 3.0 },
            prompt: LengthDist {
                min: 8,
                max: 2048,
                mean: 192.0,
            },
            output: LengthDist {
                min: 8,
                max: 1024,
                mean: 128.0,
            },
            high_share: 0.1,
        };
        generate(&spec, seed).expect("a valid trace")
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let trace = skewed_trace(5, 200, 20.0);
        assert_eq!(trace, skewed_trace(5, 200, 20.0));
        let a = simulate(3, &config(), &trace, SimPolicy::VirtualUsage, 9);
        let b = simulate(3, &config(), &trace, SimPolicy::VirtualUsage, 9);
        assert_eq!(a, b);
        // With migration and a generated trace too.
        let trace = pressured_trace(3);
        assert_eq!(trace, pressured_trace(3));
        let a = simulate(4, &config(), &trace, SimPolicy::VirtualUsageMigration, 9);
        let b = simulate(4, &config(), &trace, SimPolicy::VirtualUsageMigration, 9);
        assert_eq!(a, b);
        assert!(a.migrations > 0, "{a:?}");
    }

    #[test]
    fn every_request_finishes_once_with_every_token_once_in_every_policy() {
        let trace = pressured_trace(11);
        for policy in SimPolicy::ALL {
            let r = simulate(4, &config(), &trace, policy, 1);
            eprintln!("SIMULATED {}: {r:?}", policy.name());
            // Every token of every request exactly once and in order,
            // wherever it ran (the tracker counts any break as an error).
            assert_eq!(
                (r.finished, r.refused, r.token_errors),
                (600, 0, 0),
                "{}: {r:?}",
                policy.name()
            );
            assert!(r.high_ttft_p99_ms.is_some() && r.normal_ttft_p99_ms.is_some());
            if policy == SimPolicy::VirtualUsageMigration {
                // Migrated requests are among those checked token by token.
                assert!(r.migrations > 0, "{r:?}");
            } else {
                assert_eq!(r.migrations + r.migrations_aborted, 0);
            }
        }
    }

    #[test]
    fn a_migrated_request_produces_each_token_once_and_leaves_its_source() {
        // Seven requests of 38 blocks on instance 0 (one must queue: it is
        // about to run out of blocks), none on instance 1.
        let spec = RequestSpec {
            prompt_tokens: 600,
            max_tokens: 200,
            priority: Priority::Normal,
        };
        let trace = vec![Arrival { at_us: 0, spec }; 7];
        let mut tracker = Tracker::new(&trace);
        let mut fleet: Vec<Instance> = (0..2)
            .map(|_| Instance {
                engine: Engine::new(config()),
                next_at: None,
                owner: HashMap::new(),
            })
            .collect();
        for logical in 0..7 {
            let id = fleet[0].engine.submit(spec, 0).expect("fits");
            fleet[0].owner.insert(id, logical);
        }
        fleet[0].wake(0);
        fleet[0].advance(0, &mut tracker);
        let model = MigrationModel::default();
        let mut ids = 0;
        let mut failures = sim_migrate::Failures::default();
        let mut planned = sim_migrate::plan(&fleet, &[], &mut failures, &model, 1, &mut ids);
        assert_eq!(planned.len(), 1, "instance 0 is short of blocks");
        let mut migration = planned.remove(0);
        assert_eq!(migration.target(), 1);
        // Run the stages and the engines on the modelled clock.
        let mut now = migration.due_us;
        loop {
            for instance in &mut fleet {
                instance.advance(now, &mut tracker);
            }
            if migration.due_us == now {
                match migration.run(&mut fleet, now, &model) {
                    Outcome::Continue => {}
                    Outcome::Done => break,
                    Outcome::Aborted => panic!("the migration was given up"),
                }
            }
            now = fleet
                .iter()
                .filter_map(|i| i.next_at)
                .chain([migration.due_us])
                .min()
                .expect("a next event");
        }
        // The request now lives on instance 1 only, with verified bytes.
        assert_eq!(fleet[0].engine.stats().requests.len(), 6);
        let moved = fleet[1].engine.stats().requests;
        assert_eq!(moved.len(), 1);
        assert!(fleet[1].engine.verify_request(moved[0].id).expect("known"));
        assert_eq!(fleet[1].owner.len(), 1);
        for instance in &mut fleet {
            instance.advance(u64::MAX, &mut tracker);
        }
        // Every request's 200 tokens came once each, in order, wherever
        // they ran; the switch-over shows as one gap of at least the downtime.
        assert_eq!((tracker.finished, tracker.errors), (7, 0));
        assert!(tracker.next_index.iter().all(|n| *n == 200));
        let widest = tracker.gaps_us.iter().max().copied().unwrap_or(0);
        assert!(widest >= model.downtime_us, "{widest}");
        assert!(fleet
            .iter()
            .all(|i| i.engine.is_idle() && i.owner.is_empty()));
        assert_eq!(fleet[0].engine.stats().free_blocks, 256);
    }
}
