//! The engine under load, on the simulated clock.

use std::collections::BTreeMap;

use super::cost::CostModel;
use super::engine::*;
use super::EngineError;

fn config(kv_blocks: u32, max_batch: usize, preemption: PreemptionMode) -> EngineConfig {
    EngineConfig {
        kv_blocks,
        bytes_per_token: 4,
        max_batch,
        preemption,
        swap_blocks: kv_blocks,
        cost: CostModel::default(),
        priority_preemption: true,
    }
}

fn normal(prompt: u32, max: u32) -> RequestSpec {
    RequestSpec {
        prompt_tokens: prompt,
        max_tokens: max,
        priority: Priority::Normal,
    }
}

/// Tokens and TTFTs per request, and the preemptions seen.
#[derive(Default)]
struct Run {
    tokens: BTreeMap<RequestId, Vec<u32>>,
    ttft: BTreeMap<RequestId, u64>,
    preempted: Vec<(RequestId, PreemptionMode)>,
    now: u64,
}

impl Run {
    /// Steps until the engine is idle (or `max_steps`), advancing the clock.
    fn drive(&mut self, engine: &mut Engine, max_steps: usize) {
        for _ in 0..max_steps {
            if engine.is_idle() {
                return;
            }
            self.step(engine);
        }
        panic!(
            "engine not idle after {max_steps} steps: {:?}",
            engine.stats()
        );
    }

    fn step(&mut self, engine: &mut Engine) {
        let report = engine.step(self.now);
        assert!(report.duration_us > 0, "a busy engine makes progress");
        // Every request in the batch keeps a verifiable cache.
        for (id, phase) in engine.phases() {
            if phase != Phase::Waiting {
                assert!(engine.verify_request(id).expect("known"), "cache of {id}");
            }
        }
        self.now += report.duration_us;
        self.preempted.extend(report.preempted);
        for t in report.tokens {
            assert_eq!(t.at_us, self.now);
            self.tokens.entry(t.request).or_default().push(t.index);
            if let Some(ttft) = t.ttft_us {
                self.ttft.insert(t.request, ttft);
            }
        }
    }
}

fn exhausting_load_completes(mode: PreemptionMode) {
    // 24 blocks = 384 tokens of KV; 12 requests of 40 + 60 tokens need
    // 7 blocks each at the end: far more than fits at once.
    let mut engine = Engine::new(config(24, 8, mode));
    let mut run = Run::default();
    let ids: Vec<_> = (0..12)
        .map(|_| engine.submit(normal(40, 60), 0).expect("fits alone"))
        .collect();
    run.drive(&mut engine, 10_000);
    assert!(
        !run.preempted.is_empty(),
        "the load must exhaust the blocks"
    );
    assert!(
        run.preempted.iter().all(|(_, m)| *m == mode),
        "{:?}",
        run.preempted
    );
    for id in ids {
        let tokens = &run.tokens[&id];
        assert_eq!(tokens.len(), 60, "request {id}");
        assert_eq!(
            *tokens,
            (0..60).collect::<Vec<_>>(),
            "request {id} in order"
        );
    }
    let stats = engine.stats();
    assert_eq!((stats.free_blocks, stats.completed_total), (24, 12));
}

#[test]
fn exhausted_kv_blocks_preempt_by_recompute_and_all_complete() {
    exhausting_load_completes(PreemptionMode::Recompute);
}

#[test]
fn exhausted_kv_blocks_preempt_by_swap_and_all_complete() {
    exhausting_load_completes(PreemptionMode::Swap);
}

#[test]
fn a_high_priority_request_gets_its_first_token_quickly_in_a_saturated_engine() {
    let mut engine = Engine::new(config(160, 8, PreemptionMode::Recompute));
    let mut run = Run::default();
    let low: Vec<_> = (0..32)
        .map(|_| engine.submit(normal(200, 100), 0).expect("fits"))
        .collect();
    for _ in 0..20 {
        run.step(&mut engine);
    }
    let stats = engine.stats();
    assert_eq!(stats.batch_size, 8, "saturated: {stats:?}");
    assert!(stats.queue_len > 0);
    let high = engine
        .submit(
            RequestSpec {
                prompt_tokens: 200,
                max_tokens: 100,
                priority: Priority::High,
            },
            run.now,
        )
        .expect("fits");
    run.drive(&mut engine, 100_000);
    let high_ttft = run.ttft[&high];
    let mut low_ttfts: Vec<u64> = low.iter().map(|id| run.ttft[id]).collect();
    low_ttfts.sort();
    let median_low = low_ttfts[low_ttfts.len() / 2];
    // About one iteration (a 200-token prefill plus a decode step).
    assert!(high_ttft < 250_000, "high-priority TTFT {high_ttft} µs");
    assert!(
        high_ttft * 10 < median_low,
        "high {high_ttft} µs vs median low {median_low} µs"
    );
    assert_eq!(run.tokens[&high].len(), 100);
    assert!(low.iter().all(|id| run.tokens[id].len() == 100));
}

#[test]
fn without_priority_preemption_a_high_request_waits_for_room_at_the_head_of_the_queue() {
    let mut config = config(40, 8, PreemptionMode::Recompute);
    config.priority_preemption = false;
    let mut engine = Engine::new(config);
    let mut run = Run::default();
    // Two long requests hold 2 × 16 of the 40 blocks at the end.
    let low: Vec<_> = (0..2)
        .map(|_| engine.submit(normal(200, 50), 0).expect("fits"))
        .collect();
    for _ in 0..5 {
        run.step(&mut engine);
    }
    // 19 blocks: more than the 40 - 2 × 13 left.
    let high = engine
        .submit(
            RequestSpec {
                prompt_tokens: 300,
                max_tokens: 10,
                priority: Priority::High,
            },
            run.now,
        )
        .expect("fits");
    let queued = engine.submit(normal(16, 10), run.now).expect("fits");
    for _ in 0..5 {
        run.step(&mut engine);
    }
    assert!(run.preempted.is_empty(), "{:?}", run.preempted);
    let phases = engine.phases();
    assert_eq!(phases[&high], Phase::Waiting, "it waits for room");
    // At the head of the queue: a normal request behind it waits too.
    assert_eq!(phases[&queued], Phase::Waiting);
    run.drive(&mut engine, 10_000);
    assert!(run.preempted.is_empty(), "{:?}", run.preempted);
    // Admitted only once a long request finished (its 50 tokens).
    assert!(run.ttft[&high] > run.ttft[&low[0]] + 40 * 20_000);
    assert_eq!(run.tokens[&high].len(), 10);
    assert!(run.ttft[&queued] >= run.ttft[&high]);
}

#[test]
fn a_request_longer_than_the_kv_capacity_is_refused_and_leaves_nothing() {
    let mut engine = Engine::new(config(4, 8, PreemptionMode::Recompute));
    // 4 blocks hold 64 tokens; 40 + 30 - 1 = 69 do not fit.
    let err = engine.submit(normal(40, 30), 0).expect_err("too long");
    assert!(
        matches!(
            err,
            EngineError::OverCapacity {
                needed_tokens: 69,
                capacity_tokens: 64,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("64 tokens"), "{err}");
    assert!(engine.is_idle());
    // Exactly at capacity is fine.
    engine.submit(normal(40, 25), 0).expect("64 tokens fit");
    for bad in [
        normal(0, 5),
        normal(5, 0),
        normal(MAX_REQUEST_TOKENS + 1, 1),
    ] {
        assert!(matches!(
            engine.check(&bad),
            Err(EngineError::Invalid { .. })
        ));
    }
}

#[test]
fn an_exported_request_resumes_in_another_engine_with_its_cache_intact() {
    let mut a = Engine::new(config(16, 4, PreemptionMode::Recompute));
    let mut b = Engine::new(config(16, 4, PreemptionMode::Recompute));
    let id = a.submit(normal(30, 20), 0).expect("fits");
    let mut run = Run::default();
    for _ in 0..5 {
        run.step(&mut a);
    }
    let exported = a.export_request(id).expect("export");
    assert_eq!(exported.generated, 5);
    assert_eq!(a.stats().free_blocks, 16, "blocks freed at the source");
    let moved = b.import_request(exported, run.now).expect("import");
    assert!(b.verify_request(moved).expect("known"));
    let mut rest = Run {
        now: run.now,
        ..Run::default()
    };
    rest.drive(&mut b, 1000);
    assert_eq!(rest.tokens[&moved], (5..20).collect::<Vec<_>>());
}

#[test]
fn the_same_load_runs_the_same_way() {
    let go = || {
        let mut engine = Engine::new(config(20, 6, PreemptionMode::Swap));
        for i in 0..10 {
            engine.submit(normal(20 + i, 30 + i), 0).expect("fits");
        }
        let mut run = Run::default();
        run.drive(&mut engine, 10_000);
        (run.now, run.preempted, run.ttft)
    };
    assert_eq!(go(), go());
}

/// Request live migration between two engines: copy stages while the
/// request decodes, a frozen last stage, resume on the target.
mod request_migration {
    use crate::inference::blocks::BLOCK_TOKENS;
    use crate::inference::{Engine, EngineError, EngineSettings, Priority, RequestSpec};

    fn engine() -> Engine {
        let mut settings = EngineSettings::default();
        settings.engine.kv_blocks = 32;
        settings.engine.bytes_per_token = 8;
        Engine::new(settings.engine)
    }

    fn spec() -> RequestSpec {
        RequestSpec {
            prompt_tokens: 40,
            max_tokens: 100,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn stages_then_freeze_move_every_block_and_positions_go_on() {
        let (mut source, mut target) = (engine(), engine());
        let id = source.submit(spec(), 0).expect("submitted");
        let mut now = 0;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let r = source.step(now);
            now += r.duration_us;
            seen.extend(r.tokens.iter().map(|t| t.index));
        }
        // Stage 1: the full blocks so far; the request keeps decoding.
        let first = source.export_kv(id, 0, false).expect("stage 1");
        assert_eq!(
            first.blocks as usize,
            first.cached_tokens as usize / BLOCK_TOKENS
        );
        assert!(first.state.is_none());
        target.stage_kv("m", 0, &first.data).expect("staged");
        for _ in 0..20 {
            let r = source.step(now);
            now += r.duration_us;
            seen.extend(r.tokens.iter().map(|t| t.index));
        }
        // Out of step: refused.
        assert!(matches!(
            target.stage_kv("m", first.blocks + 1, &[0; 128]),
            Err(EngineError::Migration(_))
        ));
        // Freeze: no more tokens on the source.
        let last = source.export_kv(id, first.blocks, true).expect("freeze");
        let state = last.state.expect("state");
        assert_eq!(state.generated as usize, seen.len());
        assert!(source.step(now).tokens.is_empty());
        target
            .stage_kv("m", last.from_block, &last.data)
            .expect("staged");
        let moved = target.resume_imported("m", state, now).expect("resumed");
        assert!(target.verify_request(moved).expect("known"));
        assert!(source.release_frozen(id).expect("released") > 0);
        assert_eq!(source.stats().free_blocks, source.stats().total_blocks);
        while !target.is_idle() {
            let r = target.step(now);
            now += r.duration_us;
            seen.extend(r.tokens.iter().map(|t| t.index));
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(target.stats().free_blocks, target.stats().total_blocks);
    }

    #[test]
    fn a_waiting_request_moves_with_no_blocks_and_is_queued_on_the_target() {
        let (mut source, mut target) = (engine(), engine());
        // 30 of the 32 blocks held: the next request waits.
        let big = source
            .submit(
                RequestSpec {
                    prompt_tokens: 470,
                    max_tokens: 10,
                    priority: Priority::Normal,
                },
                0,
            )
            .expect("fits");
        let id = source.submit(spec(), 0).expect("submitted");
        let r = source.step(0);
        assert_eq!(r.prefilled, vec![big]);
        // Nothing to copy while it waits; the freeze keeps it out of the batch.
        let copy = source.export_kv(id, 0, false).expect("stage");
        assert_eq!((copy.blocks, copy.data.len()), (0, 0));
        let frozen = source.export_kv(id, 0, true).expect("freeze");
        let state = frozen.state.expect("state");
        assert_eq!(
            (frozen.blocks, state.cached_tokens, state.generated),
            (0, 0, 0)
        );
        let mut now = 1;
        while source.stats().requests.len() > 1 {
            let r = source.step(now);
            now += r.duration_us.max(1);
            assert!(r.tokens.iter().all(|t| t.request == big), "{r:?}");
        }
        let moved = target.resume_imported("w", state, now).expect("queued");
        assert_eq!(target.phases()[&moved], super::Phase::Waiting);
        assert_eq!(source.release_frozen(id).expect("released"), 0);
        assert!(source.is_idle());
        let mut seen = Vec::new();
        while !target.is_idle() {
            let r = target.step(now);
            now += r.duration_us;
            seen.extend(r.tokens.iter().map(|t| t.index));
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(target.stats().free_blocks, target.stats().total_blocks);
        // A swapped-out request does not migrate.
        let mut settings = EngineSettings::default();
        settings.engine.kv_blocks = 4;
        settings.engine.bytes_per_token = 8;
        settings.engine.preemption = crate::inference::PreemptionMode::Swap;
        let mut small = Engine::new(settings.engine);
        let a = small
            .submit(
                RequestSpec {
                    prompt_tokens: 30,
                    max_tokens: 30,
                    priority: Priority::Normal,
                },
                0,
            )
            .expect("fits");
        let b = small
            .submit(
                RequestSpec {
                    prompt_tokens: 30,
                    max_tokens: 30,
                    priority: Priority::Normal,
                },
                0,
            )
            .expect("fits");
        let mut now = 0;
        let swapped = loop {
            let r = small.step(now);
            now += r.duration_us;
            if let Some((v, _)) = r.preempted.first() {
                break *v;
            }
            assert!(!small.is_idle(), "never preempted");
        };
        assert!([a, b].contains(&swapped));
        assert_eq!(small.phases()[&swapped], super::Phase::Swapped);
        assert!(matches!(
            small.export_kv(swapped, 0, true),
            Err(EngineError::Migration(_))
        ));
    }

    #[test]
    fn an_abort_thaws_the_source_and_frees_the_staged_blocks() {
        let (mut source, mut target) = (engine(), engine());
        let id = source.submit(spec(), 0).expect("submitted");
        source.step(0);
        let frozen = source.export_kv(id, 0, true).expect("freeze");
        target.stage_kv("m", 0, &frozen.data).expect("staged");
        assert!(target.stats().free_blocks < target.stats().total_blocks);
        assert_eq!(target.abort_import("m"), frozen.blocks);
        assert_eq!(target.stats().free_blocks, target.stats().total_blocks);
        source.thaw(id).expect("thawed");
        assert_eq!(source.step(1).tokens.len(), 1);
        // Bytes that do not verify are refused and freed.
        let mut state = source
            .export_kv(id, 0, true)
            .expect("freeze")
            .state
            .expect("state");
        let bad = vec![0u8; frozen.data.len()];
        target.stage_kv("n", 0, &bad).expect("staged");
        state.seed ^= 1;
        assert!(matches!(
            target.resume_imported("n", state, 0),
            Err(EngineError::Migration(_))
        ));
        assert_eq!(target.stats().free_blocks, target.stats().total_blocks);
    }
}
