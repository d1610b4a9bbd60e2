//! Where a job's instances may and should run: label constraints (hard),
//! affinities (soft), the spread policy and gang placement.
//!
//! Part of [`JobSpec`](crate::job::JobSpec) as its `placement` field; written
//! at the top level of a spec file (see [`crate::spec_file`]), validated in
//! [`crate::validate`] and enforced by the coordinator's scheduler.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::power_class::PowerClass;

/// Everything a spec says about placement beyond resources. The default
/// (no constraints or affinities, bin-packing, no gang) is what specs written
/// before these fields existed mean.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlacementSpec {
    /// Label conditions every chosen node must meet (`[[constraint]]`).
    pub constraints: Vec<LabelConstraint>,
    /// Label preferences that score nodes up or down (`[[affinity]]`).
    pub affinities: Vec<Affinity>,
    /// Which fitting nodes are preferred (`spread = ...`).
    pub spread: SpreadPolicy,
    /// All instances are placed together or not at all (`gang = true`).
    pub gang: bool,
    /// What each GPU of an instance is expected to draw (`power_class =
    /// "medium"`), committed against the hard budgets of the instance's
    /// power groups at placement; the default (TDP) never under-counts.
    #[serde(skip_serializing_if = "PowerClass::is_default")]
    pub power_class: PowerClass,
}

impl PlacementSpec {
    /// Whether the spec asks for anything beyond the defaults, so that status
    /// output can stay quiet for plain jobs.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A hard condition on one node label, so that users can pin work to (or keep
/// it away from) racks, zones or hardware generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelConstraint {
    /// The label's key, e.g. `"rack"`.
    pub label: String,
    /// How the label is compared.
    pub op: ConstraintOp,
    /// The value compared with; required by `=` and `!=`, refused with `exists`.
    pub value: Option<String>,
}

/// How a [`LabelConstraint`] compares, as written in spec files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    /// `"="`: the label is present and equals the value.
    Equals,
    /// `"!="`: the label is absent or differs (a node without a rack label
    /// is not on rack r7).
    NotEquals,
    /// `"exists"`: the label is present, whatever its value.
    Exists,
}

impl ConstraintOp {
    /// Every operator, in the order error messages list them.
    pub const ALL: [ConstraintOp; 3] = [
        ConstraintOp::Equals,
        ConstraintOp::NotEquals,
        ConstraintOp::Exists,
    ];

    /// The spelling used in spec files, on the wire and in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Equals => "=",
            ConstraintOp::NotEquals => "!=",
            ConstraintOp::Exists => "exists",
        }
    }

    /// Reads a spelling written by [`ConstraintOp::as_str`]; exact match only.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// Whether the operator compares with a value.
    pub fn needs_value(self) -> bool {
        self != ConstraintOp::Exists
    }
}

/// The message for an operator [`ConstraintOp::parse`] does not know, shared
/// by the spec-file parser and the proto conversion.
pub(crate) fn unknown_op_message(got: &str) -> String {
    format!("must be \"=\", \"!=\" or \"exists\", got {got:?}")
}

/// Written as users read it in status output: `rack=r7`, `rack!=r7`,
/// `rack exists`.
impl fmt::Display for LabelConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value.as_deref().unwrap_or("");
        match self.op {
            ConstraintOp::Exists => write!(f, "{} exists", self.label),
            op => write!(f, "{}{}{value}", self.label, op.as_str()),
        }
    }
}

/// A soft preference for nodes whose label has a value: matching nodes score
/// `weight` higher (lower when negative: anti-affinity). Never makes a node
/// infeasible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// The label's key, e.g. `"gpu_gen"`.
    pub label: String,
    /// The value a node's label must equal to match.
    pub value: String,
    /// -100..=100, not 0: how strongly matching nodes are preferred (negative
    /// values: avoided).
    pub weight: i32,
}

/// Written as in status output: `gpu_gen=hopper (weight 50)`.
impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={} (weight {})", self.label, self.value, self.weight)
    }
}

/// How a job's instances are spread over the nodes that fit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpreadPolicy {
    /// The fullest node that fits first (density); the default.
    #[default]
    BinPack,
    /// `spread = "node"`: as few instances per node as possible.
    Nodes,
    /// `spread = "<label>"`: as few instances per value of the label (e.g.
    /// `"rack"`) as possible, then per node.
    Label(String),
}

impl SpreadPolicy {
    /// The spelling of the policy in spec files and on the wire: `""` for
    /// bin-packing, `"node"`, or the label.
    pub fn as_str(&self) -> &str {
        match self {
            SpreadPolicy::BinPack => "",
            SpreadPolicy::Nodes => "node",
            SpreadPolicy::Label(label) => label,
        }
    }

    /// Reads [`SpreadPolicy::as_str`]'s spelling.
    pub fn parse(text: &str) -> Self {
        match text {
            "" => SpreadPolicy::BinPack,
            "node" => SpreadPolicy::Nodes,
            label => SpreadPolicy::Label(label.to_string()),
        }
    }
}

/// As in status output: `bin-pack`, `node`, `label rack`.
impl fmt::Display for SpreadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpreadPolicy::BinPack => f.write_str("bin-pack"),
            SpreadPolicy::Nodes => f.write_str("node"),
            SpreadPolicy::Label(label) => write!(f, "label {label}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_spreads_round_trip_their_spellings() {
        for op in ConstraintOp::ALL {
            assert_eq!(ConstraintOp::parse(op.as_str()), Some(op));
        }
        assert_eq!(ConstraintOp::parse("=="), None);
        for spread in [
            SpreadPolicy::BinPack,
            SpreadPolicy::Nodes,
            SpreadPolicy::Label("rack".into()),
        ] {
            assert_eq!(SpreadPolicy::parse(spread.as_str()), spread);
        }
    }

    #[test]
    fn displays_as_status_output_shows_it() {
        let c = LabelConstraint {
            label: "rack".into(),
            op: ConstraintOp::NotEquals,
            value: Some("r7".into()),
        };
        assert_eq!(c.to_string(), "rack!=r7");
        let a = Affinity {
            label: "gpu_gen".into(),
            value: "hopper".into(),
            weight: -20,
        };
        assert_eq!(a.to_string(), "gpu_gen=hopper (weight -20)");
        assert_eq!(SpreadPolicy::Label("rack".into()).to_string(), "label rack");
    }
}
