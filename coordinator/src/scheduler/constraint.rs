//! Label conditions a node must meet to take a request.

use std::collections::BTreeMap;
use std::fmt;

/// A condition on one node label, so that users can pin work to (or keep it
/// away from) racks, zones, hardware generations and the like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The label's key, e.g. `"rack"`.
    pub label: String,
    /// How the label is compared.
    pub op: ConstraintOp,
    /// The value to compare with; ignored by [`ConstraintOp::Exists`], and
    /// read as the empty string when missing for the other operators.
    pub value: Option<String>,
}

/// How a [`Constraint`] compares a node's label, as the three forms users
/// write: `rack=r7`, `rack!=r7` and `rack exists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintOp {
    /// The label is present and equals the value.
    Equals,
    /// The label is absent or differs from the value (as in Nomad, a node
    /// without the label is not on rack r7).
    NotEquals,
    /// The label is present, whatever its value.
    Exists,
}

impl Constraint {
    /// `label=value`: the node's label must equal `value`.
    pub fn equals(label: impl Into<String>, value: impl Into<String>) -> Self {
        Self::with(label, ConstraintOp::Equals, Some(value.into()))
    }

    /// `label!=value`: the node's label must be absent or differ.
    pub fn not_equals(label: impl Into<String>, value: impl Into<String>) -> Self {
        Self::with(label, ConstraintOp::NotEquals, Some(value.into()))
    }

    /// `label exists`: the node must carry the label.
    pub fn exists(label: impl Into<String>) -> Self {
        Self::with(label, ConstraintOp::Exists, None)
    }

    fn with(label: impl Into<String>, op: ConstraintOp, value: Option<String>) -> Self {
        Self {
            label: label.into(),
            op,
            value,
        }
    }

    /// Whether a node with these labels meets the condition.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.label).map(String::as_str);
        let wanted = self.value.as_deref().unwrap_or("");
        match self.op {
            ConstraintOp::Equals => actual == Some(wanted),
            ConstraintOp::NotEquals => actual != Some(wanted),
            ConstraintOp::Exists => actual.is_some(),
        }
    }
}

/// Written as users write it (`rack=r7`, `rack!=r7`, `rack exists`), so that
/// blocked reasons quote the constraint that failed.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.value.as_deref().unwrap_or("");
        match self.op {
            ConstraintOp::Equals => write!(f, "{}={value}", self.label),
            ConstraintOp::NotEquals => write!(f, "{}!={value}", self.label),
            ConstraintOp::Exists => write!(f, "{} exists", self.label),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_operator_matches_as_documented() {
        let r7 = labels(&[("rack", "r7")]);
        let r8 = labels(&[("rack", "r8")]);
        let none = labels(&[]);

        let eq = Constraint::equals("rack", "r7");
        assert!(eq.matches(&r7));
        assert!(!eq.matches(&r8));
        assert!(!eq.matches(&none));

        let ne = Constraint::not_equals("rack", "r7");
        assert!(!ne.matches(&r7));
        assert!(ne.matches(&r8));
        assert!(ne.matches(&none), "a node without the label is not on r7");

        let exists = Constraint::exists("rack");
        assert!(exists.matches(&r7));
        assert!(exists.matches(&r8));
        assert!(!exists.matches(&none));
    }

    #[test]
    fn a_missing_value_compares_as_empty() {
        let eq = Constraint::with("rack", ConstraintOp::Equals, None);
        assert!(eq.matches(&labels(&[("rack", "")])));
        assert!(!eq.matches(&labels(&[("rack", "r7")])));
        assert!(!eq.matches(&labels(&[])));
    }

    #[test]
    fn displays_as_users_write_it() {
        assert_eq!(Constraint::equals("rack", "r7").to_string(), "rack=r7");
        assert_eq!(Constraint::not_equals("rack", "r7").to_string(), "rack!=r7");
        assert_eq!(Constraint::exists("rack").to_string(), "rack exists");
    }
}
