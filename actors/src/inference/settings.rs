//! The engine's settings, read from a task's `[task.config]` table by
//! `herd_api::driver_settings::inference`, the one parser that submit
//! validation, the driver (to refuse a bad job before it starts) and the
//! engine process (which receives the same keys) all call; here they are
//! only turned into the engine's shape.

use std::collections::BTreeMap;

use herd_api::driver_settings::inference::{InferenceSettings, Preemption};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::cost::CostModel;
use super::engine::{EngineConfig, PreemptionMode};

pub use herd_api::driver_settings::inference::{KEYS, MAX_ARENA_BYTES};

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

impl Default for EngineSettings {
    /// The defaults of [`InferenceSettings`] (512 blocks of 16 bytes per
    /// token, batches of 32, recompute preemption, real time), the fitted
    /// cost model.
    fn default() -> Self {
        Self::from_settings(&InferenceSettings::default())
    }
}

impl EngineSettings {
    /// Reads the settings from `[task.config]`, defaults for what is absent;
    /// errors name `task.config.<key>`.
    pub fn from_config(config: &BTreeMap<String, String>) -> Result<Self, SettingsError> {
        InferenceSettings::from_config(config)
            .map(|settings| Self::from_settings(&settings))
            .map_err(|e| SettingsError {
                key: e
                    .field
                    .strip_prefix("task.config.")
                    .unwrap_or(&e.field)
                    .to_string(),
                message: e.message,
            })
    }

    /// The engine's shape for parsed settings: the cost model's fitted
    /// values where they are not overridden.
    pub fn from_settings(s: &InferenceSettings) -> Self {
        let fitted = CostModel::default();
        let c = &s.costs;
        Self {
            engine: EngineConfig {
                kv_blocks: s.kv_blocks,
                bytes_per_token: s.bytes_per_token,
                max_batch: s.max_batch,
                preemption: match s.preemption {
                    Preemption::Recompute => PreemptionMode::Recompute,
                    Preemption::Swap => PreemptionMode::Swap,
                },
                swap_blocks: s.swap_blocks,
                priority_preemption: s.priority_preemption,
                cost: CostModel {
                    prefill_base_us: c.prefill_base_us.unwrap_or(fitted.prefill_base_us),
                    prefill_per_token_us: c
                        .prefill_per_token_us
                        .unwrap_or(fitted.prefill_per_token_us),
                    prefill_quadratic_us: c
                        .prefill_quadratic_us
                        .unwrap_or(fitted.prefill_quadratic_us),
                    decode_base_us: c.decode_base_us.unwrap_or(fitted.decode_base_us),
                    decode_per_seq_us: c.decode_per_seq_us.unwrap_or(fitted.decode_per_seq_us),
                    decode_per_context_token_us: c
                        .decode_per_context_token_us
                        .unwrap_or(fitted.decode_per_context_token_us),
                    swap_per_block_us: c.swap_per_block_us.unwrap_or(fitted.swap_per_block_us),
                },
            },
            time_scale: s.time_scale,
            stats_interval_ms: 200,
        }
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
    fn the_parser_s_block_size_is_the_engine_s() {
        assert_eq!(
            herd_api::driver_settings::inference::BLOCK_TOKENS,
            super::super::blocks::BLOCK_TOKENS as u64
        );
        let fitted = CostModel::default();
        assert_eq!(EngineSettings::default().engine.cost, fitted);
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
