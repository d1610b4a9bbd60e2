//! A job's `[autoscale]` table: how many instances an inference service
//! may run, and the load and latency objectives (SLOs) the coordinators'
//! autoscaler keeps it within (see docs/inference.md, *Autoscaling*).
//!
//! ```toml
//! [autoscale]
//! min = 1
//! max = 4
//! target_load = 0.7          # KV-cache load per instance to aim for, (0, 1]
//! ttft_p99_ms = 2000         # time to first token, p99 (optional)
//! tbt_p99_ms = 200           # time between tokens, p99 (optional)
//! scale_out_cooldown = "15s" # between a scale-out and the next change
//! scale_in_cooldown = "60s"  # between any change and a scale-in
//! ```
//!
//! The spec's `count` is the number of instances the service starts with;
//! it must lie within `min..=max`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// Most instances an autoscaled service may have (the cluster's `count`
/// bound is higher; a service beyond this is a typo).
pub const MAX_INSTANCES: u32 = 1_000;
/// `target_load` when the table leaves it out, in thousandths.
pub const DEFAULT_TARGET_LOAD_PERMILLE: u32 = 700;
/// `scale_out_cooldown` when the table leaves it out.
pub const DEFAULT_SCALE_OUT_COOLDOWN: Duration = Duration::from_secs(15);
/// `scale_in_cooldown` when the table leaves it out.
pub const DEFAULT_SCALE_IN_COOLDOWN: Duration = Duration::from_secs(60);
/// Shortest cooldown: below one second the autoscaler would act on stats
/// that do not yet show its last change.
pub const MIN_COOLDOWN: Duration = Duration::from_secs(1);
/// Longest cooldown: a day.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(86_400);
/// Largest latency objective accepted: an hour.
pub const MAX_SLO_MS: u32 = 3_600_000;

/// A job's `[autoscale]` table (absent: the service runs `count` instances
/// until someone changes it with `herd service scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleSpec {
    /// Fewest instances.
    pub min: u32,
    /// Most instances.
    pub max: u32,
    /// KV-cache load per instance to aim for, thousandths (700: 0.7).
    pub target_load_permille: u32,
    /// Objective for the p99 time to first token, ms (None: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p99_ms: Option<u32>,
    /// Objective for the p99 time between tokens, ms (None: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tbt_p99_ms: Option<u32>,
    /// Least time after a scale-out before the next change, ms.
    pub scale_out_cooldown_ms: u64,
    /// Least time after any change before a scale-in, ms.
    pub scale_in_cooldown_ms: u64,
}

impl AutoscaleSpec {
    /// A table with only `min` and `max`, the rest at their defaults.
    pub fn new(min: u32, max: u32) -> Self {
        Self {
            min,
            max,
            target_load_permille: DEFAULT_TARGET_LOAD_PERMILLE,
            ttft_p99_ms: None,
            tbt_p99_ms: None,
            scale_out_cooldown_ms: DEFAULT_SCALE_OUT_COOLDOWN.as_millis() as u64,
            scale_in_cooldown_ms: DEFAULT_SCALE_IN_COOLDOWN.as_millis() as u64,
        }
    }

    /// `target_load` as a fraction.
    pub fn target_load(&self) -> f64 {
        f64::from(self.target_load_permille) / 1000.0
    }

    /// Checks every field on its own and against the job's `count` and
    /// driver; the error names the field as the spec file spells it.
    pub fn validate(&self, count: u32, driver: &str) -> Result<(), FieldError> {
        if driver != "inference" {
            return Err(FieldError::new(
                "autoscale",
                format!(
                    "only inference services (driver \"inference\") scale on load and latency, \
                     got driver {driver:?}; remove the [autoscale] table"
                ),
            ));
        }
        if !(1..=MAX_INSTANCES).contains(&self.min) {
            return Err(FieldError::new(
                "autoscale.min",
                format!("must be between 1 and {MAX_INSTANCES}, got {}", self.min),
            ));
        }
        if !(1..=MAX_INSTANCES).contains(&self.max) {
            return Err(FieldError::new(
                "autoscale.max",
                format!("must be between 1 and {MAX_INSTANCES}, got {}", self.max),
            ));
        }
        if self.max < self.min {
            return Err(FieldError::new(
                "autoscale.max",
                format!("must be at least min ({}), got {}", self.min, self.max),
            ));
        }
        if !(self.min..=self.max).contains(&count) {
            return Err(FieldError::new(
                "count",
                format!(
                    "the instances the service starts with must lie within autoscale.min..=max \
                     ({}..={}), got {count}",
                    self.min, self.max
                ),
            ));
        }
        if !(1..=1000).contains(&self.target_load_permille) {
            return Err(FieldError::new(
                "autoscale.target_load",
                format!(
                    "must be a fraction in (0, 1], got {}",
                    f64::from(self.target_load_permille) / 1000.0
                ),
            ));
        }
        for (field, slo) in [
            ("autoscale.ttft_p99_ms", self.ttft_p99_ms),
            ("autoscale.tbt_p99_ms", self.tbt_p99_ms),
        ] {
            if let Some(ms) = slo {
                if !(1..=MAX_SLO_MS).contains(&ms) {
                    return Err(FieldError::new(
                        field,
                        format!("must be between 1 and {MAX_SLO_MS} ms, got {ms}"),
                    ));
                }
            }
        }
        for (field, ms) in [
            ("autoscale.scale_out_cooldown", self.scale_out_cooldown_ms),
            ("autoscale.scale_in_cooldown", self.scale_in_cooldown_ms),
        ] {
            let bounds = MIN_COOLDOWN.as_millis() as u64..=MAX_COOLDOWN.as_millis() as u64;
            if !bounds.contains(&ms) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "must be between {}s and {}s, got {ms} ms",
                        MIN_COOLDOWN.as_secs(),
                        MAX_COOLDOWN.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `count` instances is allowed; the message says the range.
    pub fn check_count(&self, count: u32) -> Result<(), String> {
        if (self.min..=self.max).contains(&count) {
            Ok(())
        } else {
            Err(format!(
                "{count} instances is outside the service's autoscale range {}..={}",
                self.min, self.max
            ))
        }
    }
}

/// Reads a `target_load` fraction into thousandths; None where it is not a
/// finite number in (0, 1].
pub fn target_load_permille(fraction: f64) -> Option<u32> {
    (fraction.is_finite() && fraction > 0.0 && fraction <= 1.0)
        .then(|| ((fraction * 1000.0).round() as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_table_passes_and_each_bad_field_is_named() {
        let spec = AutoscaleSpec::new(1, 4);
        assert_eq!(spec.validate(2, "inference"), Ok(()));
        let field = |s: AutoscaleSpec, count: u32, driver: &str| {
            s.validate(count, driver).map_err(|e| e.field).unwrap_err()
        };
        assert_eq!(field(spec, 2, "exec"), "autoscale");
        assert_eq!(
            field(AutoscaleSpec::new(0, 4), 2, "inference"),
            "autoscale.min"
        );
        assert_eq!(
            field(AutoscaleSpec::new(3, 2), 2, "inference"),
            "autoscale.max"
        );
        assert_eq!(
            field(AutoscaleSpec::new(1, 5000), 2, "inference"),
            "autoscale.max"
        );
        assert_eq!(field(spec, 5, "inference"), "count");
        let mut bad = spec;
        bad.target_load_permille = 0;
        assert_eq!(field(bad, 2, "inference"), "autoscale.target_load");
        let mut bad = spec;
        bad.ttft_p99_ms = Some(0);
        assert_eq!(field(bad, 2, "inference"), "autoscale.ttft_p99_ms");
        let mut bad = spec;
        bad.tbt_p99_ms = Some(MAX_SLO_MS + 1);
        assert_eq!(field(bad, 2, "inference"), "autoscale.tbt_p99_ms");
        let mut bad = spec;
        bad.scale_in_cooldown_ms = 10;
        assert_eq!(field(bad, 2, "inference"), "autoscale.scale_in_cooldown");
    }

    #[test]
    fn counts_outside_the_range_are_refused_with_the_range() {
        let spec = AutoscaleSpec::new(2, 3);
        assert!(spec.check_count(2).is_ok());
        assert!(spec.check_count(3).is_ok());
        let message = spec.check_count(4).unwrap_err();
        assert!(message.contains("2..=3"), "{message}");
        assert!(spec.check_count(1).is_err());
    }

    #[test]
    fn target_load_fractions_round_to_thousandths() {
        assert_eq!(target_load_permille(0.7), Some(700));
        assert_eq!(target_load_permille(1.0), Some(1000));
        assert_eq!(target_load_permille(0.0001), Some(1));
        assert_eq!(target_load_permille(0.0), None);
        assert_eq!(target_load_permille(1.5), None);
        assert_eq!(target_load_permille(f64::NAN), None);
    }
}
