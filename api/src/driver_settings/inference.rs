//! The settings of an `inference` task (`[task.config]`): the shape of
//! herd's SIMULATED LLM engine. Checked at submit and read again, by the
//! same function, by the node's inference driver and by the engine process
//! (which receives the same keys as `--set KEY=VALUE`).
//!
//! The cost model's fitted constants live with the engine
//! (`herd_actors::inference::cost`); here a cost key is only an override.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::validate::{join_path, FieldError};

/// Tokens per KV block: fixed, so the arena size below is known at submit
/// (the engine's block pool uses the same value).
pub const BLOCK_TOKENS: u64 = 16;

/// Largest KV arena an engine allocates (real bytes in the engine process).
pub const MAX_ARENA_BYTES: u64 = 1 << 30;

/// The keys an `inference` task may set; others are refused so a typo is
/// not silently ignored.
pub const KEYS: &[&str] = &[
    "kv_blocks",
    "bytes_per_token",
    "max_batch",
    "preemption",
    "swap_blocks",
    "priority_preemption",
    "time_scale",
    "prefill_base_us",
    "prefill_per_token_us",
    "prefill_quadratic_us",
    "decode_base_us",
    "decode_per_seq_us",
    "decode_per_context_token_us",
    "swap_per_block_us",
];

/// What happens to a request preempted for lack of KV blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preemption {
    /// Free its blocks; re-prefill prompt and generated tokens later.
    Recompute,
    /// Copy its blocks to host memory; copy them back later.
    Swap,
}

/// Overrides of the engine's cost model (µs); `None` keeps the fitted value.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostOverrides {
    /// Fixed cost of a prefill.
    pub prefill_base_us: Option<f64>,
    /// Cost per prompt token of a prefill.
    pub prefill_per_token_us: Option<f64>,
    /// Quadratic cost per prompt token squared.
    pub prefill_quadratic_us: Option<f64>,
    /// Fixed cost of a decode step.
    pub decode_base_us: Option<f64>,
    /// Cost per sequence in the decode batch.
    pub decode_per_seq_us: Option<f64>,
    /// Cost per token of context summed over the batch.
    pub decode_per_context_token_us: Option<f64>,
    /// Cost of copying one KV block between GPU and host memory.
    pub swap_per_block_us: Option<f64>,
}

/// A validated `inference` task.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceSettings {
    /// KV blocks of [`BLOCK_TOKENS`] tokens on the (simulated) GPU.
    pub kv_blocks: u32,
    /// Bytes of KV per token (real bytes).
    pub bytes_per_token: usize,
    /// Most requests decoding together.
    pub max_batch: usize,
    /// How requests are preempted.
    pub preemption: Preemption,
    /// Host-memory blocks for swapped-out requests (defaults to `kv_blocks`).
    pub swap_blocks: u32,
    /// Whether a high-priority request that does not fit preempts normal
    /// ones (`true`, the default) or waits for room (`false`).
    pub priority_preemption: bool,
    /// Real time per modelled time (0.01 runs 100× faster; 0 never sleeps).
    pub time_scale: f64,
    /// Cost model overrides.
    pub costs: CostOverrides,
}

impl Default for InferenceSettings {
    /// 512 blocks (8192 tokens) of 16 bytes per token, batches of 32,
    /// recompute preemption, real time, the fitted costs.
    fn default() -> Self {
        Self {
            kv_blocks: 512,
            bytes_per_token: 16,
            max_batch: 32,
            preemption: Preemption::Recompute,
            swap_blocks: 512,
            priority_preemption: true,
            time_scale: 1.0,
            costs: CostOverrides::default(),
        }
    }
}

fn field(key: &str) -> String {
    join_path("task.config", key)
}

fn parse<T: FromStr>(config: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, FieldError>
where
    T::Err: std::fmt::Display,
{
    config
        .get(key)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|e| FieldError::new(field(key), format!("{v:?} is not valid: {e}")))
        })
        .transpose()
}

fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, FieldError> {
    if value < min || value > max {
        return Err(FieldError::new(
            field(key),
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

fn finite(key: &str, v: f64, max: f64) -> Result<f64, FieldError> {
    if !v.is_finite() || !(0.0..=max).contains(&v) {
        return Err(FieldError::new(
            field(key),
            format!("must be a number between 0 and {max}, got {v}"),
        ));
    }
    Ok(v)
}

impl InferenceSettings {
    /// Reads the settings from `[task.config]`, defaults for what is absent;
    /// errors name `task.config.<key>`.
    pub fn from_config(config: &BTreeMap<String, String>) -> Result<Self, FieldError> {
        if let Some(key) = config.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(FieldError::new(
                field(key),
                format!(
                    "unknown setting of the inference driver; known: {}",
                    KEYS.join(", ")
                ),
            ));
        }
        let mut s = Self::default();
        if let Some(v) = parse::<u32>(config, "kv_blocks")? {
            s.kv_blocks = bounded("kv_blocks", v, 1, 1 << 20)?;
            s.swap_blocks = s.kv_blocks;
        }
        if let Some(v) = parse::<usize>(config, "bytes_per_token")? {
            s.bytes_per_token = bounded("bytes_per_token", v, 1, 1 << 20)?;
        }
        let arena = u64::from(s.kv_blocks) * BLOCK_TOKENS * s.bytes_per_token as u64;
        if arena > MAX_ARENA_BYTES {
            return Err(FieldError::new(
                field("bytes_per_token"),
                format!(
                    "kv_blocks × {BLOCK_TOKENS} × bytes_per_token = {arena} bytes, more than \
                     the {MAX_ARENA_BYTES} a simulated engine allocates"
                ),
            ));
        }
        if let Some(v) = parse::<usize>(config, "max_batch")? {
            s.max_batch = bounded("max_batch", v, 1, 4096)?;
        }
        if let Some(v) = config.get("preemption") {
            s.preemption = match v.trim() {
                "recompute" => Preemption::Recompute,
                "swap" => Preemption::Swap,
                other => {
                    return Err(FieldError::new(
                        field("preemption"),
                        format!("must be \"recompute\" or \"swap\", got {other:?}"),
                    ))
                }
            };
        }
        if let Some(v) = parse::<bool>(config, "priority_preemption")? {
            s.priority_preemption = v;
        }
        if let Some(v) = parse::<u32>(config, "swap_blocks")? {
            s.swap_blocks = bounded("swap_blocks", v, 0, 1 << 22)?;
        }
        let c = &mut s.costs;
        let costs: [(&str, &mut Option<f64>); 7] = [
            ("prefill_base_us", &mut c.prefill_base_us),
            ("prefill_per_token_us", &mut c.prefill_per_token_us),
            ("prefill_quadratic_us", &mut c.prefill_quadratic_us),
            ("decode_base_us", &mut c.decode_base_us),
            ("decode_per_seq_us", &mut c.decode_per_seq_us),
            (
                "decode_per_context_token_us",
                &mut c.decode_per_context_token_us,
            ),
            ("swap_per_block_us", &mut c.swap_per_block_us),
        ];
        for (key, slot) in costs {
            if let Some(v) = parse::<f64>(config, key)? {
                *slot = Some(finite(key, v, 1e9)?);
            }
        }
        if let Some(v) = parse::<f64>(config, "time_scale")? {
            s.time_scale = finite("time_scale", v, 100.0)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = InferenceSettings::from_config(&BTreeMap::new()).expect("defaults");
        assert_eq!(s, InferenceSettings::default());
        let s = InferenceSettings::from_config(&config(&[
            ("kv_blocks", "8"),
            ("bytes_per_token", "4"),
            ("preemption", "swap"),
            ("time_scale", "0.01"),
            ("decode_base_us", "1000"),
            ("priority_preemption", "false"),
        ]))
        .expect("valid");
        assert!(!s.priority_preemption);
        assert!(InferenceSettings::default().priority_preemption);
        assert_eq!((s.kv_blocks, s.swap_blocks), (8, 8));
        assert_eq!(s.preemption, Preemption::Swap);
        assert_eq!(s.costs.decode_base_us, Some(1000.0));
        assert_eq!(s.costs.prefill_base_us, None);
    }

    #[test]
    fn errors_name_the_field() {
        for (pairs, name) in [
            (vec![("kv_blocks", "0")], "task.config.kv_blocks"),
            (vec![("kv_blocks", "lots")], "task.config.kv_blocks"),
            (vec![("max_batch", "-1")], "task.config.max_batch"),
            (vec![("preemption", "drop")], "task.config.preemption"),
            (
                vec![("priority_preemption", "maybe")],
                "task.config.priority_preemption",
            ),
            (vec![("time_scale", "NaN")], "task.config.time_scale"),
            (vec![("kv_blcks", "3")], "task.config.kv_blcks"),
            (
                vec![("kv_blocks", "1048576"), ("bytes_per_token", "1024")],
                "task.config.bytes_per_token",
            ),
        ] {
            let err = InferenceSettings::from_config(&config(&pairs)).expect_err(name);
            assert_eq!(err.field, name, "{err}");
        }
    }
}
