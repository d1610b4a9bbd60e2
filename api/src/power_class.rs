//! A job's power class: how much power each of its GPUs is expected to draw,
//! so that placement can keep a power group under its hard budget (issue 20).
//!
//! Placement cannot know what a GPU will draw before the work runs, so a job
//! says it (`power_class = "medium"` in its spec) as a fraction of its GPU
//! model's TDP, and the scheduler commits that much per GPU. With no class,
//! a GPU is expected at its full TDP: conservative, so a job that says
//! nothing can never push a group past its budget by surprise.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::power::gpu_nameplate;

/// The expected draw of each GPU of a job, as a fraction of its model's TDP.
///
/// The figures are herd's, chosen from what POLCA (Patel et al., 2023)
/// reports of LLM inference: memory-bound decoding draws about half of TDP,
/// mixed inference 60–80 %, training and prefill-heavy work near TDP. They
/// are documented in docs/power.md, not measured here.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum PowerClass {
    /// About half of TDP (memory-bound inference, light batch work).
    Low,
    /// About 70 % of TDP (typical mixed inference).
    Medium,
    /// About 85 % of TDP (prefill-heavy inference, most training).
    High,
    /// The full TDP: the default, which never under-counts.
    #[default]
    Max,
}

impl PowerClass {
    /// Every class, in the order messages list them.
    pub const ALL: [PowerClass; 4] = [
        PowerClass::Low,
        PowerClass::Medium,
        PowerClass::High,
        PowerClass::Max,
    ];

    /// The stable name used in spec files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerClass::Low => "low",
            PowerClass::Medium => "medium",
            PowerClass::High => "high",
            PowerClass::Max => "max",
        }
    }

    /// The class called `text` (exactly, lower case); the empty text is the
    /// default ([`PowerClass::Max`]), as proto3 sends an unset field.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(PowerClass::default());
        }
        PowerClass::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| unknown_power_class_message(text))
    }

    /// Thousandths of the TDP a GPU of this class is expected to draw.
    pub fn permille_of_tdp(self) -> u32 {
        match self {
            PowerClass::Low => 500,
            PowerClass::Medium => 700,
            PowerClass::High => 850,
            PowerClass::Max => 1000,
        }
    }

    /// Whole watts one GPU of `model` (lower-case short name, any case
    /// accepted) is expected to draw in this class: the fraction of its
    /// TDP, never below its idle draw.
    pub fn gpu_watts(self, model: &str) -> u64 {
        let plate = gpu_nameplate(&model.to_ascii_lowercase());
        let watts = u64::from(plate.max_watts) * u64::from(self.permille_of_tdp()) / 1000;
        watts.max(u64::from(plate.idle_watts))
    }

    /// Whether this is the default class (kept out of stored specs then).
    pub fn is_default(&self) -> bool {
        *self == PowerClass::default()
    }
}

/// The error for an unknown class name, listing the accepted ones.
pub fn unknown_power_class_message(text: &str) -> String {
    let names: Vec<&str> = PowerClass::ALL.iter().map(|c| c.as_str()).collect();
    format!(
        "unknown power class {text:?}: expected one of {} (the expected draw of each GPU \
         as a fraction of its TDP: 50, 70, 85 or 100 %)",
        names.join(", ")
    )
}

impl fmt::Display for PowerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for PowerClass {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        PowerClass::parse(&text)
    }
}

impl From<PowerClass> for String {
    fn from(class: PowerClass) -> Self {
        class.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_by_their_names_and_default_to_max() {
        for class in PowerClass::ALL {
            assert_eq!(PowerClass::parse(class.as_str()), Ok(class));
        }
        assert_eq!(PowerClass::parse(""), Ok(PowerClass::Max));
        let e = PowerClass::parse("Huge").expect_err("unknown");
        assert!(
            e.contains("\"Huge\"") && e.contains("low, medium, high, max"),
            "{e}"
        );
        assert!(PowerClass::parse("LOW").is_err(), "names are lower case");
    }

    #[test]
    fn expected_watts_follow_the_tdp_and_never_fall_below_idle() {
        assert_eq!(PowerClass::Max.gpu_watts("h100"), 700);
        assert_eq!(PowerClass::Medium.gpu_watts("H100"), 490);
        assert_eq!(PowerClass::Low.gpu_watts("a100"), 200);
        assert_eq!(PowerClass::High.gpu_watts("a100"), 340);
        // The generic 300 W board for unknown models.
        assert_eq!(PowerClass::Low.gpu_watts("mystery"), 150);
        // t4: 70 W TDP, 10 W idle; l4 half of 72 W is 36 W, above 16 W idle.
        assert_eq!(PowerClass::Low.gpu_watts("l4"), 36);
        for class in PowerClass::ALL {
            for model in ["h100", "h200", "a100", "l40s", "a10", "l4", "t4", ""] {
                let plate = gpu_nameplate(model);
                let watts = class.gpu_watts(model);
                assert!(watts >= u64::from(plate.idle_watts), "{class} {model}");
                assert!(watts <= u64::from(plate.max_watts), "{class} {model}");
            }
        }
    }

    #[test]
    fn serializes_by_name() {
        let json = serde_json::to_string(&PowerClass::Medium).expect("json");
        assert_eq!(json, "\"medium\"");
        let back: PowerClass = serde_json::from_str(&json).expect("back");
        assert_eq!(back, PowerClass::Medium);
        assert!(serde_json::from_str::<PowerClass>("\"x\"").is_err());
    }
}
