//! The cost model of the SIMULATED engine: how long a prefill and a decode
//! iteration take on the modelled GPU. Nothing runs on a GPU; the engine's
//! clock advances by these durations.
//!
//! ```text
//! prefill(tokens)          = a + b·tokens + c·tokens²        (µs)
//! decode(batch, context)   = d + e·batch  + f·context        (µs)
//! swap(blocks)             = g·blocks                        (µs)
//! ```
//!
//! `context` is the sum of the context lengths (prompt + generated tokens) of
//! every request in the decode batch: attention reads their whole KV cache.
//!
//! The defaults model a 7B model (Llama-2-7B class) in fp16 on one A100-80GB
//! under vLLM. They are **approximate, fitted by hand to vLLM's published
//! benchmarks and the Llumnix paper** (OSDI '24, figures of decode latency
//! versus batch size and of prefill latency versus prompt length):
//! - a decode step at small batch takes about 20–30 ms (`d` = 20 ms, the
//!   weights read once per step; `e` = 0.15 ms per sequence; `f` = 0.25 µs
//!   per context token ≈ 0.5 MiB of KV per token read at ~2 TB/s);
//! - a prefill costs about 0.1–0.3 ms per prompt token (`b` = 0.15 ms) on
//!   top of a fixed launch cost (`a` = 15 ms), with a small quadratic
//!   attention term (`c`);
//! - swapping one 16-token block (~8 MiB of KV) over PCIe 4 at ~25 GB/s
//!   takes about 0.3 ms (`g`).
//!
//! They are adjustable ([`CostModel`] is plain data, and the engine's
//! settings override each constant): the model is for studying scheduling
//! and migration, not for predicting a real deployment.

use serde::{Deserialize, Serialize};

/// The constants of the cost model, in microseconds; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Fixed cost of a prefill (µs).
    pub prefill_base_us: f64,
    /// Cost per prompt token of a prefill (µs).
    pub prefill_per_token_us: f64,
    /// Quadratic (attention) cost per prompt token squared (µs).
    pub prefill_quadratic_us: f64,
    /// Fixed cost of a decode step (µs).
    pub decode_base_us: f64,
    /// Cost per sequence in the decode batch (µs).
    pub decode_per_seq_us: f64,
    /// Cost per token of context summed over the batch (µs).
    pub decode_per_context_token_us: f64,
    /// Cost of copying one KV block between GPU and host memory (µs).
    pub swap_per_block_us: f64,
}

impl Default for CostModel {
    /// The 7B-on-one-A100 fit described in the module documentation.
    fn default() -> Self {
        Self {
            prefill_base_us: 15_000.0,
            prefill_per_token_us: 150.0,
            prefill_quadratic_us: 0.02,
            decode_base_us: 20_000.0,
            decode_per_seq_us: 150.0,
            decode_per_context_token_us: 0.25,
            swap_per_block_us: 320.0,
        }
    }
}

impl CostModel {
    /// Time of one prefill of `tokens` tokens (µs); 0 for none.
    pub fn prefill_us(&self, tokens: u64) -> u64 {
        if tokens == 0 {
            return 0;
        }
        let t = tokens as f64;
        to_us(
            self.prefill_base_us
                + self.prefill_per_token_us * t
                + self.prefill_quadratic_us * t * t,
        )
    }

    /// Time of one decode step of `batch` sequences whose contexts sum to
    /// `context` tokens (µs); 0 for an empty batch.
    pub fn decode_us(&self, batch: u64, context: u64) -> u64 {
        if batch == 0 {
            return 0;
        }
        to_us(
            self.decode_base_us
                + self.decode_per_seq_us * batch as f64
                + self.decode_per_context_token_us * context as f64,
        )
    }

    /// Time to copy `blocks` KV blocks between GPU and host (µs).
    pub fn swap_us(&self, blocks: u64) -> u64 {
        to_us(self.swap_per_block_us * blocks as f64)
    }

    /// Whether every constant is finite and not negative (settings are checked with it).
    pub fn is_valid(&self) -> bool {
        [
            self.prefill_base_us,
            self.prefill_per_token_us,
            self.prefill_quadratic_us,
            self.decode_base_us,
            self.decode_per_seq_us,
            self.decode_per_context_token_us,
            self.swap_per_block_us,
        ]
        .iter()
        .all(|c| c.is_finite() && *c >= 0.0)
    }
}

fn to_us(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_grows_with_batch_and_context() {
        let m = CostModel::default();
        let mut last = 0;
        for batch in 1..=64 {
            let t = m.decode_us(batch, 512 * batch);
            assert!(t > last, "batch {batch}");
            last = t;
        }
        assert!(m.decode_us(8, 10_000) > m.decode_us(8, 1_000));
        assert_eq!(m.decode_us(0, 100), 0);
    }

    #[test]
    fn prefill_grows_with_tokens_and_matches_the_published_range() {
        let m = CostModel::default();
        let mut last = 0;
        for tokens in (1..=4096).step_by(97) {
            let t = m.prefill_us(tokens);
            assert!(t > last, "{tokens} tokens");
            last = t;
        }
        // Per token, a 512-token prefill lands in the 0.1–0.3 ms range.
        let per_token = m.prefill_us(512) as f64 / 512.0;
        assert!((100.0..=300.0).contains(&per_token), "{per_token}");
        // A small-batch decode step takes 20–30 ms.
        let step = m.decode_us(4, 4 * 1024);
        assert!((20_000..=30_000).contains(&step), "{step}");
    }
}
