//! Conversions between the engine's types and `herd.inference.v1`, kept at
//! the edge so the core never sees protobuf.

use herd_api::proto::inference as pb;

use super::engine::{EngineStats, KvState, Phase, Priority, RequestSpec, TokenEvent};
use super::error::EngineError;

/// Response metadata of `Generate` and `ResumeImported`: the request's id
/// in the engine, before any token (a request moved while it waits for its
/// prefill has produced none, and its relay must know which it is).
pub const REQUEST_ID_HEADER: &str = "x-herd-request-id";

/// Reads a wire priority: `""` or `"normal"`, or `"high"`.
pub fn parse_priority(text: &str) -> Result<Priority, EngineError> {
    match text {
        "" | "normal" => Ok(Priority::Normal),
        "high" => Ok(Priority::High),
        other => Err(EngineError::Invalid {
            field: "priority",
            message: format!("must be \"normal\" or \"high\", got {other:?}"),
        }),
    }
}

/// The request a `GenerateRequest` asks for (bounds are checked by the engine).
pub fn request_spec(request: &pb::GenerateRequest) -> Result<RequestSpec, EngineError> {
    Ok(RequestSpec {
        prompt_tokens: request.prompt_tokens,
        max_tokens: request.max_tokens,
        priority: parse_priority(&request.priority)?,
    })
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Normal => "normal",
        Priority::High => "high",
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Waiting => "waiting",
        Phase::Running => "running",
        Phase::Swapped => "swapped",
    }
}

/// A token on the wire.
pub fn token(t: &TokenEvent) -> pb::Token {
    pb::Token {
        index: t.index,
        at_us: t.at_us,
        ttft_us: t.ttft_us,
        request_id: t.request,
    }
}

/// A migrating request's state on the wire.
pub fn kv_state(s: &KvState) -> pb::KvState {
    pb::KvState {
        seed: s.seed,
        prompt_tokens: s.spec.prompt_tokens,
        max_tokens: s.spec.max_tokens,
        priority: priority_name(s.spec.priority).to_string(),
        generated: s.generated,
        cached_tokens: s.cached_tokens,
        ttft_us: s.ttft_us,
        bytes_per_token: s.bytes_per_token as u32,
    }
}

/// A migrating request's state from the wire (the engine checks its
/// bounds and consistency when it resumes it).
pub fn parse_kv_state(s: &pb::KvState) -> Result<KvState, EngineError> {
    Ok(KvState {
        seed: s.seed,
        spec: RequestSpec {
            prompt_tokens: s.prompt_tokens,
            max_tokens: s.max_tokens,
            priority: parse_priority(&s.priority)?,
        },
        generated: s.generated,
        cached_tokens: s.cached_tokens,
        ttft_us: s.ttft_us,
        bytes_per_token: s.bytes_per_token as usize,
    })
}

/// Stats on the wire.
pub fn stats(s: &EngineStats) -> pb::EngineStats {
    pb::EngineStats {
        batch_size: s.batch_size,
        queue_len: s.queue_len,
        swapped: s.swapped,
        free_blocks: s.free_blocks,
        total_blocks: s.total_blocks,
        preemptions_total: s.preemptions_total,
        completed_total: s.completed_total,
        requests: s
            .requests
            .iter()
            .map(|r| pb::RequestProgress {
                id: r.id,
                priority: priority_name(r.priority).to_string(),
                phase: phase_name(r.phase).to_string(),
                generated: r.generated,
                max_tokens: r.max_tokens,
                blocks: r.blocks,
                preemptions: r.preemptions,
                prompt_tokens: r.prompt_tokens,
            })
            .collect(),
        draining: false,
        recent_ttft_ms: Vec::new(),
        recent_tbt_ms: Vec::new(),
    }
}
