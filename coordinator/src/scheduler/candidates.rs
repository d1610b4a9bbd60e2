//! The fit and score stages: the best node for the next instance.
//!
//! Every feasible node that has room for one more instance has a key, and the
//! smallest key wins. Keys change only on the node just placed on or freed by
//! an eviction (and, for [`Spread::SpreadLabel`], the count of its label
//! value), so they are computed once per call and then updated one node at a
//! time. Small requests scan the keys; larger ones keep them ordered, which
//! makes each instance O(log nodes). Both give the same node, exactly: there
//! is no limit on how many nodes are considered, so no candidate limit can
//! make a plan worse or depend on node order.

use std::collections::{BTreeMap, BTreeSet};

use super::affinity::bonus;
use super::feasibility::Feasibility;
use super::index::{Amounts, ClusterIndex};
use super::{PlacementRequest, Spread};

/// Requests with at least this many instances keep the keys ordered: below
/// it, one linear scan per instance costs less than sorting the nodes once.
pub(crate) const ORDERED_FROM: usize = 8;

/// The highest fill score (a full node), in parts per million.
const FULL: u64 = 1_000_000;

/// How the best node is found; both give the same answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// A linear scan of all keys per instance.
    Scan,
    /// Keys kept in ordered sets, per label value and across them.
    Ordered,
}

impl Strategy {
    /// The cheaper strategy for a request of `instances` instances.
    pub(crate) fn for_instances(instances: usize) -> Self {
        if instances >= ORDERED_FROM {
            Strategy::Ordered
        } else {
            Strategy::Scan
        }
    }
}

/// A node's rank within its label value: fewer instances of the job first,
/// then the better score (fill for the spread policy, less the affinity
/// bonus), then more power headroom in its tightest budgeted group, then
/// the name (ties never depend on node order), then the position (only
/// duplicate names reach it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NodeKey<'a> {
    node_jobs: u32,
    score: i64,
    /// `u64::MAX` less the headroom, as of the node's last refresh (the
    /// same for every node without a budget).
    short_of_power: u64,
    name: &'a str,
    id: usize,
}

/// The nodes an instance could go to now, best first.
pub(crate) struct Candidates<'a> {
    need: Amounts,
    spread: Spread,
    feasible: Vec<bool>,
    /// Affinity bonus per node (ppm); empty when the request has none.
    bonus: Vec<i64>,
    keys: Vec<Option<NodeKey<'a>>>,
    node_jobs: Vec<u32>,
    /// Label-value group per node; empty (all in group 0) unless spreading
    /// over a label.
    group_of: Vec<usize>,
    group_jobs: Vec<u32>,
    ordered: Option<Ordered<'a>>,
}

impl<'a> Candidates<'a> {
    /// Scores every feasible node that has room for one instance.
    pub(crate) fn new(
        index: &ClusterIndex<'a>,
        feas: &Feasibility,
        request: &PlacementRequest,
        need: Amounts,
        strategy: Strategy,
    ) -> Self {
        let nodes = index.nodes.len();
        let mut node_jobs = vec![0u32; nodes];
        if request.spread != Spread::BinPack {
            for (a, alloc) in index.allocs.iter().enumerate() {
                if let (Some(n), true) = (index.alloc_node(a), alloc.job == request.job) {
                    node_jobs[n] += 1;
                }
            }
        }
        let (group_of, groups) = match &request.spread {
            Spread::SpreadLabel(label) => label_groups(index, label),
            _ => (Vec::new(), 1),
        };
        let mut candidates = Self {
            need,
            spread: request.spread.clone(),
            feasible: (0..nodes).map(|n| feas.is_feasible(n)).collect(),
            bonus: if request.affinities.is_empty() {
                Vec::new()
            } else {
                index
                    .nodes
                    .iter()
                    .map(|node| bonus(&request.affinities, &node.labels))
                    .collect()
            },
            keys: vec![None; nodes],
            node_jobs,
            group_of,
            group_jobs: vec![0; groups],
            ordered: None,
        };
        for n in 0..nodes {
            let g = candidates.group(n);
            candidates.group_jobs[g] += candidates.node_jobs[n];
        }
        for &n in &feas.feasible {
            candidates.keys[n] = candidates.key(index, n);
        }
        if strategy == Strategy::Ordered {
            candidates.ordered = Some(Ordered::new(&candidates, groups));
        }
        candidates
    }

    /// The best node for the next instance, if any has room.
    pub(crate) fn best(&self) -> Option<usize> {
        match &self.ordered {
            Some(ordered) => ordered.top.first().map(|&(_, key, _)| key.id),
            None => self
                .keys
                .iter()
                .flatten()
                .min_by_key(|key| (self.group_jobs[self.group(key.id)], **key))
                .map(|key| key.id),
        }
    }

    /// Records one more instance of the job on `node` (whose use `index`
    /// already counts).
    pub(crate) fn placed(&mut self, index: &ClusterIndex<'a>, node: usize) {
        let g = self.group(node);
        self.node_jobs[node] += 1;
        self.group_jobs[g] += 1;
        self.refresh(index, node);
    }

    /// Records that room was freed on `node`, by evicting `job_allocs`
    /// allocations of the job itself among others.
    pub(crate) fn freed(&mut self, index: &ClusterIndex<'a>, node: usize, job_allocs: u32) {
        let g = self.group(node);
        self.node_jobs[node] = self.node_jobs[node].saturating_sub(job_allocs);
        self.group_jobs[g] = self.group_jobs[g].saturating_sub(job_allocs);
        self.refresh(index, node);
    }

    /// Takes `node` out of the running for the rest of the request (its
    /// power groups cannot take the instance).
    pub(crate) fn exclude(&mut self, index: &ClusterIndex<'a>, node: usize) {
        if let Some(feasible) = self.feasible.get_mut(node) {
            *feasible = false;
            self.refresh(index, node);
        }
    }

    fn group(&self, node: usize) -> usize {
        self.group_of.get(node).copied().unwrap_or(0)
    }

    fn key(&self, index: &ClusterIndex<'a>, n: usize) -> Option<NodeKey<'a>> {
        if !self.feasible[n] || !index.fits(n, &self.need) {
            return None;
        }
        let fill = index.fill_after(n, &self.need);
        let (node_jobs, score) = match self.spread {
            Spread::BinPack => (0, FULL.saturating_sub(fill)),
            Spread::SpreadNodes => (self.node_jobs[n], fill),
            Spread::SpreadLabel(_) => (self.node_jobs[n], FULL.saturating_sub(fill)),
        };
        // Fill is at most a million ppm, so it always fits an i64.
        let score = i64::try_from(score).unwrap_or(i64::MAX);
        let bonus = self.bonus.get(n).copied().unwrap_or(0);
        Some(NodeKey {
            node_jobs,
            score: score.saturating_sub(bonus),
            short_of_power: u64::MAX - index.power_headroom(n),
            name: index.nodes[n].name.as_str(),
            id: n,
        })
    }

    fn refresh(&mut self, index: &ClusterIndex<'a>, node: usize) {
        let old = self.keys[node];
        let new = self.key(index, node);
        self.keys[node] = new;
        let g = self.group(node);
        let jobs = self.group_jobs[g];
        if let Some(ordered) = &mut self.ordered {
            ordered.replace(g, old, new, jobs);
        }
    }
}

/// Groups nodes by their value of `label` (nodes without it form one more
/// group); group ids follow the values' order, not the nodes'.
fn label_groups(index: &ClusterIndex<'_>, label: &str) -> (Vec<usize>, usize) {
    let values: Vec<Option<&str>> = index
        .nodes
        .iter()
        .map(|n| n.labels.get(label).map(String::as_str))
        .collect();
    let mut ids: BTreeMap<Option<&str>, usize> = values.iter().map(|&v| (v, 0)).collect();
    for (i, id) in ids.values_mut().enumerate() {
        *id = i;
    }
    let group_of = values
        .iter()
        .map(|v| ids.get(v).copied().unwrap_or(0))
        .collect();
    (group_of, ids.len().max(1))
}

/// The keys in ordered sets: per group, and each group's best across groups
/// (ranked first by the group's count of the job's instances).
struct Ordered<'a> {
    members: Vec<BTreeSet<NodeKey<'a>>>,
    tops: Vec<Option<(u32, NodeKey<'a>)>>,
    top: BTreeSet<(u32, NodeKey<'a>, usize)>,
}

impl<'a> Ordered<'a> {
    fn new(candidates: &Candidates<'a>, groups: usize) -> Self {
        let mut per_group: Vec<Vec<NodeKey<'a>>> = vec![Vec::new(); groups];
        for key in candidates.keys.iter().flatten() {
            per_group[candidates.group(key.id)].push(*key);
        }
        let mut ordered = Self {
            members: per_group.into_iter().map(BTreeSet::from_iter).collect(),
            tops: vec![None; groups],
            top: BTreeSet::new(),
        };
        for (g, &jobs) in candidates.group_jobs.iter().enumerate() {
            ordered.set_top(g, jobs);
        }
        ordered
    }

    fn replace(&mut self, g: usize, old: Option<NodeKey<'a>>, new: Option<NodeKey<'a>>, jobs: u32) {
        if let Some(old) = old {
            self.members[g].remove(&old);
        }
        if let Some(new) = new {
            self.members[g].insert(new);
        }
        self.set_top(g, jobs);
    }

    fn set_top(&mut self, g: usize, jobs: u32) {
        if let Some((old_jobs, old_key)) = self.tops[g].take() {
            self.top.remove(&(old_jobs, old_key, g));
        }
        if let Some(&first) = self.members[g].first() {
            self.top.insert((jobs, first, g));
            self.tops[g] = Some((jobs, first));
        }
    }
}
