//! Partition shapes, as Jepsen names them: which members can still talk.
//!
//! A partition is a list of groups; two members can talk when some group
//! holds both. Groups may overlap (a bridge member belongs to both sides;
//! a majority ring is made of overlapping neighbourhoods).

use std::fmt;

use super::rng::Rng;

/// Which members can reach which while a partition is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Members in one group reach each other.
    pub groups: Vec<Vec<u64>>,
}

impl Partition {
    /// Whether `a` and `b` can talk.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        a == b || self.groups.iter().any(|g| g.contains(&a) && g.contains(&b))
    }

    /// `leader` alone on one side, everyone else on the other.
    pub fn isolate(leader: u64, ids: &[u64]) -> Self {
        let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        Self {
            groups: vec![vec![leader], rest],
        }
    }

    /// Two random halves (the larger one holds a majority when the size is odd).
    pub fn halves(ids: &[u64], rng: &mut Rng) -> Self {
        let mut ids = ids.to_vec();
        rng.shuffle(&mut ids);
        let (a, b) = ids.split_at(ids.len() / 2);
        Self {
            groups: vec![a.to_vec(), b.to_vec()],
        }
    }

    /// Members on a random ring, each reaching the neighbours near enough
    /// that it sees a majority counting itself, but no two see the same
    /// majority: every member may believe it can win an election.
    pub fn majority_ring(ids: &[u64], rng: &mut Rng) -> Self {
        let mut ring = ids.to_vec();
        rng.shuffle(&mut ring);
        let n = ring.len();
        let majority = n / 2 + 1;
        let reach = majority / 2; // neighbours on each side: 2 * reach + 1 >= majority
        let mut groups = Vec::new();
        for i in 0..n {
            for d in 1..=reach.max(1) {
                groups.push(vec![ring[i], ring[(i + d) % n]]);
            }
        }
        Self { groups }
    }

    /// Two sides and one member, the bridge, that reaches both.
    pub fn bridge(ids: &[u64], rng: &mut Rng) -> Self {
        let mut ids = ids.to_vec();
        rng.shuffle(&mut ids);
        let middle = ids.len().saturating_sub(1) / 2;
        let Some(bridge) = ids.get(middle).copied() else {
            return Self { groups: Vec::new() };
        };
        let mut left = ids[..middle].to_vec();
        let mut right = ids[middle + 1..].to_vec();
        left.push(bridge);
        right.push(bridge);
        Self {
            groups: vec![left, right],
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| {
                let ids: Vec<String> = g.iter().map(u64::to_string).collect();
                format!("{{{}}}", ids.join(","))
            })
            .collect();
        write!(f, "{}", groups.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const FIVE: [u64; 5] = [1, 2, 3, 4, 5];

    fn sees(p: &Partition, member: u64, ids: &[u64]) -> BTreeSet<u64> {
        ids.iter()
            .copied()
            .filter(|o| p.connected(member, *o))
            .collect()
    }

    #[test]
    fn isolating_cuts_the_leader_from_everyone_else_only() {
        let p = Partition::isolate(2, &FIVE);
        assert_eq!(sees(&p, 2, &FIVE), BTreeSet::from([2]));
        assert_eq!(sees(&p, 4, &FIVE), BTreeSet::from([1, 3, 4, 5]));
    }

    #[test]
    fn halves_split_everyone_into_two_sides() {
        let p = Partition::halves(&FIVE, &mut Rng::new(5));
        let sides: BTreeSet<BTreeSet<u64>> = FIVE.iter().map(|m| sees(&p, *m, &FIVE)).collect();
        assert_eq!(sides.len(), 2, "{p}");
        let sizes: BTreeSet<usize> = sides.iter().map(BTreeSet::len).collect();
        assert_eq!(sizes, BTreeSet::from([2, 3]));
    }

    #[test]
    fn in_a_majority_ring_each_sees_a_different_majority() {
        for seed in 0..20 {
            let p = Partition::majority_ring(&FIVE, &mut Rng::new(seed));
            let views: Vec<BTreeSet<u64>> = FIVE.iter().map(|m| sees(&p, *m, &FIVE)).collect();
            assert!(views.iter().all(|v| v.len() == 3), "{p}: {views:?}");
            let distinct: BTreeSet<_> = views.iter().collect();
            assert_eq!(distinct.len(), 5, "{p}");
        }
    }

    #[test]
    fn a_bridge_reaches_both_sides_which_cannot_reach_each_other() {
        let p = Partition::bridge(&FIVE, &mut Rng::new(3));
        let views: Vec<BTreeSet<u64>> = FIVE.iter().map(|m| sees(&p, *m, &FIVE)).collect();
        assert_eq!(views.iter().filter(|v| v.len() == 5).count(), 1, "{p}");
        assert_eq!(views.iter().filter(|v| v.len() == 3).count(), 4, "{p}");
        let three = Partition::bridge(&[1, 2, 3], &mut Rng::new(3));
        let cut: usize = [(1, 2), (1, 3), (2, 3)]
            .iter()
            .filter(|(a, b)| !three.connected(*a, *b))
            .count();
        assert_eq!(cut, 1, "{three}");
    }
}
