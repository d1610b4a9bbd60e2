//! The engine's settings, read from a task's `[task.config]` table: one
//! parser, used by the driver (to refuse a bad job before it starts) and by
//! the engine process (which receives the same keys).

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::blocks::BLOCK_TOKENS;
use super::cost::CostModel;
use super::engine::{EngineConfig, PreemptionMode};

/// Largest KV arena an engine allocates (real bytes in the engine process).
pub const MAX_ARENA_BYTES: u64 = 1 << 30;

/// A bad `[task.config]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("task.config.{key}: {message}")]
pub struct SettingsError {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Everything the engine process runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// The engine core's shape.
    pub engine: EngineConfig,
    /// Real time per modelled time (0.01 runs 100× faster than modelled; 0
    /// does not sleep at all).
    pub time_scale: f64,
    /// How often the engine's stats are refreshed for pollers (ms).
    pub stats_interval_ms: u64,
}

/// The keys [`EngineSettings::from_config`] knows; others are refused so a
/// typo is not silently ignored.
pub const KEYS: &[&str] = &[
    "kv_blocks",
    "bytes_per_token",
    "max_batch",
    "preemption",
    "swap_blocks",
    "time_scale",
    "prefill_base_us",
    "prefill_per_token_us",
    "prefill_quadratic_us",
    "decode_base_us",
    "decode_per_seq_us",
    "decode_per_context_token_us",
    "swap_per_block_us",
];

impl Default for EngineSettings {
    /// 512 blocks (8192 tokens) of 16 bytes per token, batches of 32,
    /// recompute preemption, real time.
    fn default() -> Self {
        Self {
            engine: EngineConfig {
                kv_blocks: 512,
                bytes_per_token: 16,
                max_batch: 32,
                preemption: PreemptionMode::Recompute,
                swap_blocks: 512,
                cost: CostModel::default(),
            },
            time_scale: 1.0,
            stats_interval_ms: 200,
        }
    }
}

fn parse<T: FromStr>(
    config: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<T>, SettingsError>
where
    T::Err: std::fmt::Display,
{
    config
        .get(key)
        .map(|v| {
            v.trim().parse::<T>().map_err(|e| SettingsError {
                key: key.to_string(),
                message: format!("{v:?} is not valid: {e}"),
            })
        })
        .transpose()
}

fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, SettingsError> {
    if value < min || value > max {
        return Err(SettingsError {
            key: key.to_string(),
            message: format!("must be between {min} and {max}, got {value}"),
        });
    }
    Ok(value)
}

impl EngineSettings {
    /// Reads the settings from `[task.config]`, defaults for what is absent;
    /// errors name `task.config.<key>`.
    pub fn from_config(config: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        if let Some(key) = config.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(SettingsError {
                key: key.clone(),
                message: format!(
                    "unknown setting of the inference driver; known: {}",
                    KEYS.join(", ")
                ),
            });
        }
        let mut s = Self::default();
        let e = &mut s.engine;
        if let Some(v) = parse::<u32>(config, "kv_blocks")? {
            e.kv_blocks = bounded("kv_blocks", v, 1, 1 << 20)?;
            e.swap_blocks = e.kv_blocks;
        }
        if let Some(v) = parse::<usize>(config, "bytes_per_token")? {
            e.bytes_per_token = bounded("bytes_per_token", v, 1, 1 << 20)?;
        }
        let arena = e.kv_blocks as u64 * BLOCK_TOKENS as u64 * e.bytes_per_token as u64;
        if arena > MAX_ARENA_BYTES {
            return Err(SettingsError {
                key: "bytes_per_token".to_string(),
                message: format!(
                    "kv_blocks × 16 × bytes_per_token = {arena} bytes, more than the {MAX_ARENA_BYTES} a simulated engine allocates"
                ),
            });
        }
        if let Some(v) = parse::<usize>(config, "max_batch")? {
            e.max_batch = bounded("max_batch", v, 1, 4096)?;
        }
        if let Some(v) = config.get("preemption") {
            e.preemption = match v.trim() {
                "recompute" => PreemptionMode::Recompute,
                "swap" => PreemptionMode::Swap,
                other => {
                    return Err(SettingsError {
                        key: "preemption".to_string(),
                        message: format!("must be \"recompute\" or \"swap\", got {other:?}"),
                    })
                }
            };
        }
        if let Some(v) = parse::<u32>(config, "swap_blocks")? {
            e.swap_blocks = bounded("swap_blocks", v, 0, 1 << 22)?;
        }
        let costs: [(&str, &mut f64); 7] = [
            ("prefill_base_us", &mut e.cost.prefill_base_us),
            ("prefill_per_token_us", &mut e.cost.prefill_per_token_us),
            ("prefill_quadratic_us", &mut e.cost.prefill_quadratic_us),
            ("decode_base_us", &mut e.cost.decode_base_us),
            ("decode_per_seq_us", &mut e.cost.decode_per_seq_us),
            (
                "decode_per_context_token_us",
                &mut e.cost.decode_per_context_token_us,
            ),
            ("swap_per_block_us", &mut e.cost.swap_per_block_us),
        ];
        for (key, slot) in costs {
            if let Some(v) = parse::<f64>(config, key)? {
                *slot = finite(key, v, 1e9)?;
            }
        }
        if let Some(v) = parse::<f64>(config, "time_scale")? {
            s.time_scale = finite("time_scale", v, 100.0)?;
        }
        Ok(s)
    }
}

fn finite(key: &str, v: f64, max: f64) -> Result<f64, SettingsError> {
    if !v.is_finite() || !(0.0..=max).contains(&v) {
        return Err(SettingsError {
            key: key.to_string(),
            message: format!("must be a number between 0 and {max}, got {v}"),
        });
    }
    Ok(v)
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
        let s = EngineSettings::from_config(&BTreeMap::new()).expect("defaults");
        assert_eq!(s, EngineSettings::default());
        let s = EngineSettings::from_config(&config(&[
            ("kv_blocks", "8"),
            ("bytes_per_token", "4"),
            ("preemption", "swap"),
            ("time_scale", "0.01"),
            ("decode_base_us", "1000"),
        ]))
        .expect("valid");
        assert_eq!(s.engine.kv_blocks, 8);
        assert_eq!(s.engine.swap_blocks, 8);
        assert_eq!(s.engine.preemption, PreemptionMode::Swap);
        assert_eq!(s.engine.cost.decode_base_us, 1000.0);
    }

    #[test]
    fn errors_name_the_key() {
        for (pairs, key) in [
            (vec![("kv_blocks", "0")], "task.config.kv_blocks"),
            (vec![("kv_blocks", "lots")], "task.config.kv_blocks"),
            (vec![("max_batch", "-1")], "task.config.max_batch"),
            (vec![("preemption", "drop")], "task.config.preemption"),
            (vec![("time_scale", "NaN")], "task.config.time_scale"),
            (vec![("kv_blcks", "3")], "task.config.kv_blcks"),
            (
                vec![("kv_blocks", "1048576"), ("bytes_per_token", "1024")],
                "task.config.bytes_per_token",
            ),
        ] {
            let err = EngineSettings::from_config(&config(&pairs)).expect_err("invalid");
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }
}
