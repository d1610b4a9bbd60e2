//! Soft label preferences: a score term, never a filter.

use std::collections::BTreeMap;

/// Score added per point of affinity weight, in the same parts-per-million
/// unit as the fill score: a weight of 100 is worth as much as the whole
/// range of fill (an empty node against a full one).
pub(crate) const PPM_PER_WEIGHT: i64 = 10_000;

/// A preference for nodes whose `label` equals `value`, so that users can
/// steer work towards (positive weight) or away from (negative weight) a kind
/// of node without making other nodes infeasible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// The label's key, e.g. `"gpu_gen"`.
    pub label: String,
    /// The value the node's label must equal for the weight to count.
    pub value: String,
    /// -100..=100: how much a matching node is preferred (negative: avoided).
    pub weight: i32,
}

impl Affinity {
    /// Whether a node with these labels matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.label) == Some(&self.value)
    }
}

/// The affinity bonus of a node with `labels`, in parts per million: the sum
/// of the weights of the matching affinities times [`PPM_PER_WEIGHT`].
/// Integer arithmetic, so every member computes the same score.
pub(crate) fn bonus(affinities: &[Affinity], labels: &BTreeMap<String, String>) -> i64 {
    affinities
        .iter()
        .filter(|a| a.matches(labels))
        .map(|a| i64::from(a.weight) * PPM_PER_WEIGHT)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bonus_sums_matching_weights() {
        let labels: BTreeMap<String, String> = [("gen", "hopper"), ("rack", "r1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let a = |label: &str, value: &str, weight| Affinity {
            label: label.into(),
            value: value.into(),
            weight,
        };
        assert_eq!(bonus(&[], &labels), 0);
        let all = [
            a("gen", "hopper", 50),
            a("rack", "r1", -20),
            a("rack", "r2", 100),
        ];
        assert_eq!(bonus(&all, &labels), 30 * PPM_PER_WEIGHT);
    }
}
