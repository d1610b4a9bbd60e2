//! Power budgets: the words the coordinators, the node agents and the CLI
//! share about GPU power (issue 20, POLCA).
//!
//! - [`PowerGroup`]: which nodes a budget covers (`cluster`, or a label
//!   `key=value`);
//! - [`Thresholds`]: the two fractions of a budget at which GPUs are capped
//!   (low-priority work first, then everything), and the one under which
//!   caps are released;
//! - [`gpu_nameplate`]: the power figures of the GPU models herd knows, for
//!   splitting budgets by nameplate and checking that a budget covers the
//!   group's idle power. They are published specifications, and idle
//!   figures are approximations (see docs/power.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest budget accepted, in watts (100 MW): anything above is a typo.
pub const MAX_BUDGET_WATTS: u64 = 100_000_000;
/// The group that covers every node.
pub const CLUSTER_GROUP: &str = "cluster";
/// Longest group text (`key=value`) accepted.
pub const MAX_GROUP_LEN: usize = 256;

/// The nodes a power budget covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PowerGroup {
    /// Every node of the cluster.
    Cluster,
    /// The nodes whose label `key` is `value` (e.g. `rack=r1`).
    Label {
        /// Label key.
        key: String,
        /// Label value.
        value: String,
    },
}

impl PowerGroup {
    /// Parses `cluster` or `key=value` (both parts non-empty, no spaces
    /// around them, no NUL, at most [`MAX_GROUP_LEN`] characters); the error
    /// says what is wrong with `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == CLUSTER_GROUP {
            return Ok(PowerGroup::Cluster);
        }
        let len = text.chars().count();
        if len > MAX_GROUP_LEN {
            return Err(format!(
                "group must be at most {MAX_GROUP_LEN} characters, got {len}"
            ));
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!(
                "group {text:?} must be `cluster` or a node label `key=value` (e.g. rack=r1)"
            ));
        };
        let bad = |part: &str| {
            part.is_empty()
                || part.trim() != part
                || part.contains('\0')
                || part.contains('=')
                || part.contains(',')
        };
        if bad(key) || bad(value) {
            return Err(format!(
                "group {text:?}: key and value must be non-empty, without spaces around them, \
                 `=`, `,` or NUL (e.g. rack=r1)"
            ));
        }
        Ok(PowerGroup::Label {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// Whether a node with `labels` belongs to this group.
    pub fn contains(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            PowerGroup::Cluster => true,
            PowerGroup::Label { key, value } => labels.get(key) == Some(value),
        }
    }
}

impl fmt::Display for PowerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerGroup::Cluster => f.write_str(CLUSTER_GROUP),
            PowerGroup::Label { key, value } => write!(f, "{key}={value}"),
        }
    }
}

/// Where, as fractions of a budget, the PowerGovernor acts: above `cap` it
/// caps low-priority GPUs (batch, then training); above `hard` it caps
/// inference too, once low-priority work is at its floor; below `release`
/// it raises limits again, step by step (the band between `release` and
/// `cap` is the hysteresis that keeps it from flapping).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// First threshold: cap low-priority work.
    pub cap: f64,
    /// Second threshold: cap everything, inference last.
    pub hard: f64,
    /// Below this, caps are released.
    pub release: f64,
}

impl Default for Thresholds {
    /// Two thresholds in the manner of POLCA's two-level capping (herd's
    /// defaults, not the paper's figures: 90 % and 97 % of the budget), and
    /// a release 5 points under the first.
    fn default() -> Self {
        Thresholds {
            cap: DEFAULT_CAP_PERMILLE as f64 / 1000.0,
            hard: DEFAULT_HARD_PERMILLE as f64 / 1000.0,
            release: DEFAULT_CAP_PERMILLE.saturating_sub(RELEASE_GAP_PERMILLE) as f64 / 1000.0,
        }
    }
}

/// The first threshold by default, in thousandths of the budget.
pub const DEFAULT_CAP_PERMILLE: u32 = 900;
/// The second threshold by default, in thousandths of the budget.
pub const DEFAULT_HARD_PERMILLE: u32 = 970;
/// How far under the first threshold caps are released, in thousandths.
pub const RELEASE_GAP_PERMILLE: u32 = 50;
/// The lowest first threshold accepted (a lower one wastes the budget).
pub const MIN_CAP_PERMILLE: u32 = 500;

impl Thresholds {
    /// The thresholds of a budget stored in thousandths; the release sits
    /// [`RELEASE_GAP_PERMILLE`] under the first threshold.
    pub fn from_permille(cap: u32, hard: u32) -> Result<Self, String> {
        check_permille(cap, hard)?;
        Ok(Thresholds {
            cap: f64::from(cap) / 1000.0,
            hard: f64::from(hard) / 1000.0,
            release: f64::from(cap.saturating_sub(RELEASE_GAP_PERMILLE)) / 1000.0,
        })
    }

    /// Whether the fractions are usable: `0 < release < cap <= hard <= 1`
    /// (network input: a node checks what a coordinator sent).
    pub fn check(&self) -> Result<(), String> {
        let ordered = self.release > 0.0
            && self.release < self.cap
            && self.cap <= self.hard
            && self.hard <= 1.0;
        if ordered
            && [self.cap, self.hard, self.release]
                .iter()
                .all(|f| f.is_finite())
        {
            Ok(())
        } else {
            Err(format!(
                "power thresholds must satisfy 0 < release < cap <= hard <= 1, got release {}, cap {}, hard {}",
                self.release, self.cap, self.hard
            ))
        }
    }
}

/// Checks thresholds given in thousandths of a budget: the first at least
/// [`MIN_CAP_PERMILLE`], the second at or above it, neither above 1000.
pub fn check_permille(cap: u32, hard: u32) -> Result<(), String> {
    if !(MIN_CAP_PERMILLE..=1000).contains(&cap) {
        return Err(format!(
            "the first threshold must be {MIN_CAP_PERMILLE} to 1000 thousandths of the budget, got {cap}"
        ));
    }
    if !(cap..=1000).contains(&hard) {
        return Err(format!(
            "the second threshold must be between the first ({cap}) and 1000 thousandths of the budget, got {hard}"
        ));
    }
    Ok(())
}

/// Checks a budget's watts: more than 0, at most [`MAX_BUDGET_WATTS`].
pub fn check_watts(watts: u64) -> Result<(), String> {
    if watts == 0 {
        return Err("watts must be more than 0".to_string());
    }
    if watts > MAX_BUDGET_WATTS {
        return Err(format!(
            "watts must be at most {MAX_BUDGET_WATTS} (100 MW), got {watts}"
        ));
    }
    Ok(())
}

/// The power figures of one GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuNameplate {
    /// Default (and highest settable) power limit: the board's TDP.
    pub max_watts: u32,
    /// Lowest settable power limit.
    pub min_watts: u32,
    /// What the board draws with nothing running (an approximation).
    pub idle_watts: u32,
    /// Installed memory, GiB.
    pub memory_gib: u64,
}

/// The figures of `model` (lower-case short name, as `GpuInfo::model`);
/// a generic 300 W / 16 GiB board for models not in the table. TDP and
/// limit ranges are NVIDIA's specifications of the SXM (or only) boards;
/// idle draws are approximate readings of `nvidia-smi` on idle boards.
pub fn gpu_nameplate(model: &str) -> GpuNameplate {
    let (max_watts, min_watts, idle_watts, memory_gib) = match model {
        "h200" => (700, 200, 90, 141),
        "h100" => (700, 200, 80, 80),
        "a100" => (400, 100, 55, 80),
        "l40s" => (350, 100, 35, 48),
        "a10" | "a10g" => (150, 100, 20, 24),
        "l4" => (72, 40, 16, 24),
        "t4" => (70, 60, 10, 16),
        _ => (300, 100, 40, 16),
    };
    GpuNameplate {
        max_watts,
        min_watts,
        idle_watts,
        memory_gib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse_and_match_labels() {
        assert_eq!(PowerGroup::parse("cluster"), Ok(PowerGroup::Cluster));
        let rack = PowerGroup::parse("rack=r1").expect("label");
        assert_eq!(rack.to_string(), "rack=r1");
        let labels: BTreeMap<String, String> = [("rack".to_string(), "r1".to_string())].into();
        assert!(rack.contains(&labels));
        assert!(!PowerGroup::parse("rack=r2")
            .expect("label")
            .contains(&labels));
        assert!(PowerGroup::Cluster.contains(&BTreeMap::new()));
        for bad in [
            "", "rack", "=r1", "rack=", " rack=r1", "rack=r1 ", "a=b=c", "a=b,c=d",
        ] {
            let e = PowerGroup::parse(bad).expect_err(bad);
            assert!(e.contains("group"), "{bad}: {e}");
        }
        assert!(PowerGroup::parse(&format!("k={}", "v".repeat(300))).is_err());
    }

    #[test]
    fn watts_and_thresholds_are_bounded() {
        assert!(check_watts(1).is_ok());
        assert!(check_watts(MAX_BUDGET_WATTS).is_ok());
        assert!(check_watts(0).unwrap_err().contains("more than 0"));
        assert!(check_watts(MAX_BUDGET_WATTS + 1)
            .unwrap_err()
            .contains("100 MW"));
        let t = Thresholds::from_permille(900, 970).expect("valid");
        assert_eq!(t, Thresholds::default());
        assert!(t.check().is_ok());
        assert!((t.release - 0.85).abs() < 1e-12);
        assert!(Thresholds::from_permille(400, 970).is_err());
        assert!(Thresholds::from_permille(900, 800).is_err());
        assert!(Thresholds::from_permille(900, 1001).is_err());
        let bad = Thresholds {
            cap: 0.9,
            hard: f64::NAN,
            release: 0.8,
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn known_models_have_ordered_figures() {
        for model in ["h200", "h100", "a100", "l40s", "a10g", "l4", "t4", "other"] {
            let plate = gpu_nameplate(model);
            assert!(plate.idle_watts < plate.min_watts, "{model}");
            assert!(plate.min_watts < plate.max_watts, "{model}");
        }
        assert_eq!(gpu_nameplate("h100").max_watts, 700);
        assert_eq!(gpu_nameplate("a100").max_watts, 400);
    }
}
