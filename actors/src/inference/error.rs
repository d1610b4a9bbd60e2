//! Errors of the SIMULATED inference engine: each names what was wrong and
//! by how much, since a client sees them as they are.

use thiserror::Error;

/// Why the engine refused or could not do something.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    /// A request field is out of bounds.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`prompt_tokens`, `max_tokens`...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The request can never fit in this instance's KV cache, even alone.
    #[error(
        "request needs {needed_tokens} tokens of KV cache ({needed_blocks} blocks of 16) but this \
         instance holds {capacity_tokens} tokens ({capacity_blocks} blocks); \
         lower prompt_tokens + max_tokens or give the engine more kv_blocks"
    )]
    OverCapacity {
        /// Tokens the request needs (prompt + max_tokens - 1).
        needed_tokens: u64,
        /// Blocks it needs.
        needed_blocks: u64,
        /// Tokens the whole cache holds.
        capacity_tokens: u64,
        /// Blocks in the cache.
        capacity_blocks: u64,
    },
    /// No request with this id is in the engine.
    #[error("no request {0} in this engine")]
    UnknownRequest(u64),
    /// An imported request does not match this engine (block size, bytes).
    #[error("cannot import the request: {0}")]
    Import(String),
    /// A request migration step does not apply (phase, order, bytes).
    #[error("request migration: {0}")]
    Migration(String),
    /// Not enough free blocks right now (imports do not preempt).
    #[error("not enough free KV blocks: {needed} needed, {free} free")]
    NoFreeBlocks {
        /// Blocks needed.
        needed: u64,
        /// Blocks free.
        free: u64,
    },
}
