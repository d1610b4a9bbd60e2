//! Fuzzing the SIMULATED inference engine's migration import (issue 24;
//! docs/fuzzing.md): what another agent sends to move a request here
//! (staged KV blocks, the state to resume from, a whole exported request)
//! is checked and refused with an [`EngineError`], never a panic, and the
//! engine goes on serving afterwards.
//!
//! The engine's gRPC server (`herd inference-engine`, in the cli crate) is
//! a thin shell: each method decodes its request, converts it with
//! `herd_actors::inference::wire` and runs one engine operation. This
//! target does the same for every `InferenceEngine` method of the `.proto`
//! file, from arbitrary bytes, without the process; a method with no
//! mapping here fails `every_engine_method_survives_any_bytes`.
//!
//! Cases per target: `HERD_FUZZ_CASES` (short by default, for CI).

// Test harness code: a panic here is a test failure with its location
// (clippy.toml allows unwrap/expect in tests; helpers outside #[test] need this).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../api/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use herd_actors::inference::cost::CostModel;
use herd_actors::inference::wire;
use herd_actors::inference::{
    Engine, EngineConfig, ExportedRequest, KvState, PreemptionMode, Priority, RequestSpec,
};
use herd_api::proto::inference as pb;
use proptest::prelude::*;
use prost::Message;

const TARGET: &str = "actors/tests/fuzz_inference.rs";
const BYTES_PER_TOKEN: usize = 4;

fn engine(preemption: PreemptionMode) -> Engine {
    Engine::new(EngineConfig {
        kv_blocks: 64,
        bytes_per_token: BYTES_PER_TOKEN,
        max_batch: 8,
        preemption,
        swap_blocks: 64,
        cost: CostModel::default(),
        priority_preemption: true,
    })
}

/// An engine with one request decoding, so imports compete for blocks.
fn busy_engine() -> Engine {
    let mut e = engine(PreemptionMode::Recompute);
    let _ = e.submit(
        RequestSpec {
            prompt_tokens: 40,
            max_tokens: 200,
            priority: Priority::Normal,
        },
        0,
    );
    for t in 1..5 {
        let _ = e.step(t * 1_000);
    }
    e
}

/// Runs the engine on for a while after an import: whatever it accepted
/// must decode to the end without a panic, and its figures stay sane.
fn run_on(e: &mut Engine, from: u64) -> Result<(), TestCaseError> {
    for t in 0..50 {
        let _ = e.step(from + t * 1_000);
    }
    let stats = e.stats();
    prop_assert!(
        stats.free_blocks <= stats.total_blocks,
        "{} free of {}",
        stats.free_blocks,
        stats.total_blocks
    );
    Ok(())
}

/// Runs what the server does for `method` with `bytes` as its request.
fn serve(e: &mut Engine, method: &str, bytes: &[u8], now: u64) -> Option<()> {
    match method {
        "Generate" => {
            let r = pb::GenerateRequest::decode(bytes).ok()?;
            let spec = wire::request_spec(&r).ok()?;
            let _ = e.submit(spec, now);
        }
        "Stats" => {
            pb::StatsRequest::decode(bytes).ok()?;
            let _ = wire::stats(&e.stats());
        }
        "ExportKv" => {
            let r = pb::ExportKvRequest::decode(bytes).ok()?;
            let _ = e.export_kv(r.request_id, r.from_block, r.freeze);
        }
        "Thaw" => {
            let r = pb::RequestRef::decode(bytes).ok()?;
            let _ = e.thaw(r.request_id);
        }
        "Release" => {
            let r = pb::RequestRef::decode(bytes).ok()?;
            let _ = e.release_frozen(r.request_id);
        }
        "ImportKv" => {
            let r = pb::ImportKvRequest::decode(bytes).ok()?;
            let _ = e.stage_kv(&r.migration_id, r.from_block, &r.data);
        }
        "ResumeImported" => {
            let r = pb::ResumeImportedRequest::decode(bytes).ok()?;
            let state = wire::parse_kv_state(r.state.as_ref()?).ok()?;
            let _ = e.resume_imported(&r.migration_id, state, now);
        }
        "AbortImport" => {
            let r = pb::AbortImportRequest::decode(bytes).ok()?;
            let _ = e.abort_import(&r.migration_id);
        }
        other => panic!(
            "InferenceEngine/{other} has no fuzz mapping in {TARGET}: add what its server does"
        ),
    }
    Some(())
}

fn spec() -> impl Strategy<Value = RequestSpec> {
    let tokens = prop_oneof![0u32..=3, 1u32..=600, Just(u32::MAX), any::<u32>()];
    (tokens.clone(), tokens, any::<bool>()).prop_map(|(p, m, high)| RequestSpec {
        prompt_tokens: p,
        max_tokens: m,
        priority: if high {
            Priority::High
        } else {
            Priority::Normal
        },
    })
}

fn state() -> impl Strategy<Value = KvState> {
    (
        any::<u64>(),
        spec(),
        prop_oneof![0u32..=600, any::<u32>()],
        prop_oneof![0u32..=600, any::<u32>()],
        proptest::option::of(any::<u64>()),
        prop_oneof![4 => Just(BYTES_PER_TOKEN), 1 => any::<usize>()],
    )
        .prop_map(|(seed, spec, generated, cached, ttft, bpt)| KvState {
            seed,
            spec,
            generated,
            cached_tokens: cached,
            ttft_us: ttft,
            bytes_per_token: bpt,
        })
}

/// One step of a hostile migration into the engine.
#[derive(Debug, Clone)]
enum Op {
    Stage(String, u32, Vec<u8>),
    Resume(String, KvState),
    Abort(String),
    Import(ExportedRequest),
}

fn migration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("m-1".to_string()),
        Just("m-2".to_string()),
        Just(String::new())
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Blocks are 16 tokens of BYTES_PER_TOKEN bytes: mostly whole ones.
    let data = prop_oneof![
        4 => (0usize..4).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 64)),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ];
    prop_oneof![
        4 => (migration(), prop_oneof![0u32..4, any::<u32>()], data.clone())
            .prop_map(|(m, b, d)| Op::Stage(m, b, d)),
        3 => (migration(), state()).prop_map(|(m, s)| Op::Resume(m, s)),
        1 => migration().prop_map(Op::Abort),
        3 => (state(), data).prop_map(|(s, kv)| Op::Import(ExportedRequest {
            seed: s.seed,
            spec: s.spec,
            generated: s.generated,
            cached_tokens: s.cached_tokens,
            kv,
            bytes_per_token: s.bytes_per_token,
            ttft_us: s.ttft_us,
        })),
    ]
}

#[test]
fn every_engine_method_survives_any_bytes() {
    let methods: Vec<String> = {
        let services: Vec<&str> = fuzz_support::SERVED_BY
            .iter()
            .filter(|(_, t)| *t == TARGET)
            .map(|(s, _)| *s)
            .collect();
        fuzz_support::rpcs()
            .into_iter()
            .filter(|r| services.contains(&r.full_service().as_str()))
            .map(|r| r.method)
            .collect()
    };
    assert!(methods.len() >= 8, "too few methods: {methods:?}");
    let mut runner = proptest::test_runner::TestRunner::new(fuzz_support::config(300));
    let result = runner.run(
        &proptest::collection::vec(
            (
                proptest::sample::select(methods.clone()),
                fuzz_support::request_bytes(),
            ),
            1..8,
        ),
        |calls| {
            let mut e = busy_engine();
            for (i, (method, bytes)) in calls.iter().enumerate() {
                let _ = serve(&mut e, method, bytes, 10_000 + i as u64 * 1_000);
            }
            run_on(&mut e, 100_000)
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(fuzz_support::config(1_000))]

    /// Hostile migration steps, in any order, into a busy engine.
    #[test]
    fn hostile_migrations_are_refused(ops in proptest::collection::vec(op(), 1..8)) {
        let mut e = busy_engine();
        for (i, op) in ops.into_iter().enumerate() {
            let now = 10_000 + i as u64 * 1_000;
            match op {
                Op::Stage(m, b, d) => { let _ = e.stage_kv(&m, b, &d); }
                Op::Resume(m, s) => { let _ = e.resume_imported(&m, s, now); }
                Op::Abort(m) => { let _ = e.abort_import(&m); }
                Op::Import(x) => { let _ = e.import_request(x, now); }
            }
            let _ = e.step(now + 500);
        }
        run_on(&mut e, 100_000)?;
    }

    /// A real export, with one field or byte changed, imported elsewhere:
    /// accepted only when still consistent, and never a panic.
    #[test]
    fn altered_real_exports_are_checked(
        steps in 1u64..30,
        field in 0usize..7,
        value in any::<u64>(),
        at in any::<prop::sample::Index>(),
    ) {
        let mut source = busy_engine();
        for t in 0..steps {
            let _ = source.step(10_000 + t * 1_000);
        }
        let Some(id) = source.phases().keys().next().copied() else {
            return Ok(());
        };
        let Ok(mut x) = source.export_request(id) else { return Ok(()) };
        match field {
            0 => x.generated = value as u32,
            1 => x.cached_tokens = value as u32,
            2 => x.bytes_per_token = value as usize,
            3 => x.spec.prompt_tokens = value as u32,
            4 => x.spec.max_tokens = value as u32,
            5 if !x.kv.is_empty() => {
                let i = at.index(x.kv.len());
                x.kv[i] ^= (value as u8) | 1;
            }
            _ => x.kv.truncate(at.index(x.kv.len() + 1)),
        }
        let mut target = engine(PreemptionMode::Swap);
        let _ = target.import_request(x, 0);
        run_on(&mut target, 1_000)?;
    }
}
