//! A SIMULATED LLM serving engine, for the `inference` driver.
//!
//! Nothing here runs a model: the engine schedules requests the way a
//! serving engine such as vLLM does (continuous batching, a paged KV cache,
//! preemption by recompute or swap) and advances a clock by the durations of
//! a [`cost::CostModel`] fitted to published figures. The KV cache holds real
//! bytes, so that migrating a request's cache between instances (later,
//! Llumnix-style) moves and verifies real data.
//!
//! - [`engine`]: the pure, deterministic core, stepped by the caller's clock.
//! - [`blocks`]: the block pool over one byte arena.
//! - [`cost`]: the cost model and its constants, with their sources.
//! - [`settings`]: `[task.config]` keys and their bounds.
//! - [`runtime`]: the core on the real clock, for the engine process.
//! - [`latency`]: recent TTFT and time-between-tokens samples, for stats.
//! - [`watchdog`]: bounds on frozen requests and staged blocks of migrations.
//! - [`endpoint`]: `engine.json`, where a running engine listens.
//! - [`wire`]: conversions to and from `herd.inference.v1`.

pub mod blocks;
pub mod cost;
pub mod endpoint;
pub mod engine;
mod error;
pub mod latency;
pub mod runtime;
pub mod settings;
pub mod watchdog;
pub mod wire;

#[cfg(test)]
mod tests;

pub use engine::{
    Engine, EngineConfig, EngineStats, ExportedRequest, KvExport, KvState, Phase, PreemptionMode,
    Priority, RequestId, RequestProgress, RequestSpec, StepReport, TokenEvent, MAX_REQUEST_TOKENS,
};
pub use error::EngineError;
pub use settings::{EngineSettings, SettingsError};
