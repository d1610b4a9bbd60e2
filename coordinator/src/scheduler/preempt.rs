//! Preemption: the least set of lower-priority work whose eviction lets an
//! instance fit.
//!
//! A node whose power groups cannot take the instance (issue 20) needs
//! power freed too: each unit frees, in every group of the node, the
//! committed watts of its members on that group's nodes, and a set makes
//! room only when it covers the resources and every group's shortfall.
//!
//! Candidates on a node are "units": a single allocation, or a whole gang
//! (all its allocations, wherever they run), and only when every allocation
//! in the unit has a strictly lower priority than the request. The best set
//! over all nodes has the fewest evictions, then the lowest total priority,
//! then the least resources freed beyond need (GPUs, then memory, then CPU),
//! then the node name. A branch-and-bound search finds it exactly; its work is
//! bounded by a step budget (counted, not timed, so still deterministic),
//! past which the best set found so far is used.

use std::collections::BTreeMap;

use super::feasibility::Feasibility;
use super::index::{amounts, covers, Amounts, ClusterIndex, DIMS};

/// Search steps allowed per preemption over all nodes; past it each node
/// keeps the first set found (the lowest-count units, largest first).
const STEP_BUDGET: u32 = 200_000;

/// Units considered per node at most (largest, then lowest priority first):
/// bounds the search depth on absurdly crowded nodes.
const MAX_UNITS: usize = 1024;

/// What to evict, and the node that then has room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The node the instance goes to.
    pub(crate) node: usize,
    /// The allocation ids (positions) to evict, ordered by allocation id.
    pub(crate) allocs: Vec<usize>,
}

/// Ordering of eviction sets: smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    evictions: u32,
    priority: u64,
    excess: Amounts,
}

/// One thing that can be evicted: an allocation or a whole gang.
struct Unit<'v> {
    members: &'v [usize],
    evictions: u32,
    priority: u64,
    on_node: Amounts,
    elsewhere: Amounts,
    /// Committed watts freed in each of the node's power groups (in the
    /// order of [`ClusterIndex::power_shortfall`]).
    power: Vec<u64>,
}

/// Allocations per node and per gang, and which ones this plan evicted.
/// Built on the first preemption of a call only.
pub(crate) struct Victims<'a> {
    starts: Vec<usize>,
    by_node: Vec<usize>,
    gangs: BTreeMap<&'a str, Vec<usize>>,
    evicted: Vec<bool>,
}

impl<'a> Victims<'a> {
    /// Indexes the allocations of `index` by node and by gang.
    pub(crate) fn new(index: &ClusterIndex<'a>) -> Self {
        let nodes = index.nodes.len();
        let mut starts = vec![0usize; nodes + 1];
        for a in 0..index.allocs.len() {
            if let Some(n) = index.alloc_node(a) {
                starts[n + 1] += 1;
            }
        }
        for n in 0..nodes {
            starts[n + 1] += starts[n];
        }
        let mut next = starts.clone();
        let mut by_node = vec![0; starts[nodes]];
        let mut gangs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (a, alloc) in index.allocs.iter().enumerate() {
            if let Some(n) = index.alloc_node(a) {
                by_node[next[n]] = a;
                next[n] += 1;
            }
            if let Some(gang) = &alloc.gang {
                gangs.entry(gang.as_str()).or_default().push(a);
            }
        }
        Self {
            starts,
            by_node,
            gangs,
            evicted: vec![false; index.allocs.len()],
        }
    }

    /// Marks the chosen allocations as evicted.
    pub(crate) fn evict(&mut self, choice: &Choice) {
        for &a in &choice.allocs {
            self.evicted[a] = true;
        }
    }

    /// Marks allocations as not evicted again (a gang that did not fit).
    pub(crate) fn restore(&mut self, allocs: &[usize]) {
        for &a in allocs {
            self.evicted[a] = false;
        }
    }

    /// The best node and eviction set for one instance needing `need` at
    /// `priority` and drawing `watts_on(node)` of committed power there,
    /// among feasible nodes; `None` if no set makes room in both resources
    /// and power.
    pub(crate) fn choose(
        &self,
        index: &ClusterIndex<'a>,
        feas: &Feasibility,
        need: &Amounts,
        priority: u32,
        watts_on: &dyn Fn(usize) -> u64,
    ) -> Option<Choice> {
        let mut best: Option<(Cost, &str, usize, Vec<usize>)> = None;
        let mut steps = 0;
        for &n in &feas.feasible {
            let free = index.free(n);
            let shortfall = DIMS.map(|d| need[d].saturating_sub(free[d]));
            let power = index.power_shortfall(n, watts_on(n));
            let groups: Vec<usize> = power.iter().map(|(g, _)| *g).collect();
            let power_need: Vec<u64> = power.iter().map(|(_, w)| *w).collect();
            let units = self.units(index, n, priority, &groups);
            let total = units.iter().fold([0; 3], |acc, u| add(&acc, &u.on_node));
            let power_total = units
                .iter()
                .fold(vec![0; groups.len()], |acc, u| add_watts(&acc, &u.power));
            if units.is_empty()
                || !covers(&total, &shortfall)
                || !covers_watts(&power_total, &power_need)
            {
                continue;
            }
            let mut search = Search::new(&units, shortfall, power_need, best.as_ref().map(|b| b.0));
            search.run(&mut steps);
            let Some((cost, picked)) = search.best else {
                continue;
            };
            let name = index.nodes[n].name.as_str();
            if best
                .as_ref()
                .is_none_or(|b| (cost, name, n) < (b.0, b.1, b.2))
            {
                let mut allocs: Vec<usize> = picked
                    .iter()
                    .flat_map(|&u| units[u].members)
                    .copied()
                    .filter(|&m| !self.evicted[m])
                    .collect();
                allocs.sort_by(|&x, &y| index.allocs[x].id.cmp(&index.allocs[y].id));
                best = Some((cost, name, n, allocs));
            }
        }
        best.map(|(_, _, node, allocs)| Choice { node, allocs })
    }

    /// The evictable units on node `n` for work at `priority`, best first,
    /// with the watts each frees in the power groups `groups`.
    fn units(
        &self,
        index: &ClusterIndex<'a>,
        n: usize,
        priority: u32,
        groups: &[usize],
    ) -> Vec<Unit<'_>> {
        let mut units = Vec::new();
        let mut gangs_seen: Vec<&str> = Vec::new();
        for pos in self.starts[n]..self.starts[n + 1] {
            let a = self.by_node[pos];
            let alloc = &index.allocs[a];
            if self.evicted[a] {
                continue;
            }
            let members = match &alloc.gang {
                None => std::slice::from_ref(&self.by_node[pos]),
                Some(gang) if gangs_seen.contains(&gang.as_str()) => continue,
                Some(gang) => {
                    gangs_seen.push(gang.as_str());
                    match self.gangs.get(gang.as_str()) {
                        Some(members) => members.as_slice(),
                        None => continue,
                    }
                }
            };
            if members
                .iter()
                .any(|&m| !self.evicted[m] && index.allocs[m].priority >= priority)
            {
                continue;
            }
            let mut unit = Unit {
                members,
                evictions: 0,
                priority: 0,
                on_node: [0; 3],
                elsewhere: [0; 3],
                power: vec![0; groups.len()],
            };
            for &m in members.iter().filter(|&&m| !self.evicted[m]) {
                let member = &index.allocs[m];
                let used = amounts(&member.resources);
                unit.evictions += 1;
                unit.priority += u64::from(member.priority);
                let at = index.alloc_node(m);
                if at == Some(n) {
                    unit.on_node = add(&unit.on_node, &used);
                } else {
                    unit.elsewhere = add(&unit.elsewhere, &used);
                }
                if let Some(at) = at {
                    let watts = index.alloc_watts(m);
                    for (k, &g) in groups.iter().enumerate() {
                        if index.in_power_group(at, g) {
                            unit.power[k] = unit.power[k].saturating_add(watts);
                        }
                    }
                }
            }
            units.push(unit);
        }
        let first_id = |u: &Unit<'_>| {
            u.members
                .iter()
                .map(|&m| index.allocs[m].id.as_str())
                .min()
                .unwrap_or("")
        };
        units.sort_by(|x, y| {
            (
                x.evictions,
                std::cmp::Reverse(x.on_node),
                x.priority,
                first_id(x),
            )
                .cmp(&(
                    y.evictions,
                    std::cmp::Reverse(y.on_node),
                    y.priority,
                    first_id(y),
                ))
        });
        units.truncate(MAX_UNITS);
        units
    }
}

fn add(x: &Amounts, y: &Amounts) -> Amounts {
    DIMS.map(|d| x[d].saturating_add(y[d]))
}

fn add_watts(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.iter().zip(y).map(|(a, b)| a.saturating_add(*b)).collect()
}

fn covers_watts(have: &[u64], need: &[u64]) -> bool {
    have.iter().zip(need).all(|(h, n)| h >= n)
}

/// Branch and bound over the units of one node.
struct Search<'u, 'v> {
    units: &'u [Unit<'v>],
    need: Amounts,
    /// Watts to free in each of the node's power groups.
    power_need: Vec<u64>,
    /// `suffix[i]`: what units `i..` free on the node together.
    suffix: Vec<Amounts>,
    /// `power_suffix[i]`: the watts units `i..` free together, per group.
    power_suffix: Vec<Vec<u64>>,
    /// The watts the units chosen so far free, per group.
    power_freed: Vec<u64>,
    /// The best cost on earlier nodes: branches that cannot match it are cut.
    bound: Option<Cost>,
    chosen: Vec<usize>,
    best: Option<(Cost, Vec<usize>)>,
}

impl<'u, 'v> Search<'u, 'v> {
    fn new(
        units: &'u [Unit<'v>],
        need: Amounts,
        power_need: Vec<u64>,
        bound: Option<Cost>,
    ) -> Self {
        let mut suffix = vec![[0; 3]; units.len() + 1];
        let mut power_suffix = vec![vec![0; power_need.len()]; units.len() + 1];
        for i in (0..units.len()).rev() {
            suffix[i] = add(&suffix[i + 1], &units[i].on_node);
            power_suffix[i] = add_watts(&power_suffix[i + 1], &units[i].power);
        }
        Self {
            units,
            power_freed: vec![0; power_need.len()],
            need,
            power_need,
            suffix,
            power_suffix,
            bound,
            chosen: Vec::new(),
            best: None,
        }
    }

    fn run(&mut self, steps: &mut u32) {
        self.visit(0, 0, 0, [0; 3], steps);
    }

    fn limit(&self) -> Option<(u32, u64)> {
        let local = self.best.as_ref().map(|b| (b.0.evictions, b.0.priority));
        let global = self.bound.map(|b| (b.evictions, b.priority));
        match (local, global) {
            (Some(l), Some(g)) => Some(l.min(g)),
            (l, g) => l.or(g),
        }
    }

    fn visit(&mut self, i: usize, evictions: u32, priority: u64, freed: Amounts, steps: &mut u32) {
        if covers(&freed, &self.need) && covers_watts(&self.power_freed, &self.power_need) {
            self.record(evictions, priority, &freed);
            return;
        }
        if i == self.units.len()
            || self
                .limit()
                .is_some_and(|limit| (evictions + 1, priority) > limit)
            || !covers(&add(&freed, &self.suffix[i]), &self.need)
            || !covers_watts(
                &add_watts(&self.power_freed, &self.power_suffix[i]),
                &self.power_need,
            )
        {
            return;
        }
        *steps = steps.saturating_add(1);
        let unit = &self.units[i];
        self.chosen.push(i);
        for (f, w) in self.power_freed.iter_mut().zip(&unit.power) {
            *f = f.saturating_add(*w);
        }
        self.visit(
            i + 1,
            evictions + unit.evictions,
            priority + unit.priority,
            add(&freed, &unit.on_node),
            steps,
        );
        let unit = &self.units[i];
        for (f, w) in self.power_freed.iter_mut().zip(&unit.power) {
            *f = f.saturating_sub(*w);
        }
        self.chosen.pop();
        if *steps < STEP_BUDGET {
            self.visit(i + 1, evictions, priority, freed, steps);
        }
    }

    fn record(&mut self, evictions: u32, priority: u64, freed: &Amounts) {
        let mut excess = DIMS.map(|d| freed[d].saturating_sub(self.need[d]));
        for &u in &self.chosen {
            excess = add(&excess, &self.units[u].elsewhere);
        }
        let cost = Cost {
            evictions,
            priority,
            excess,
        };
        let beats_local = self.best.as_ref().is_none_or(|b| cost < b.0);
        let within_bound = self.bound.is_none_or(|b| cost <= b);
        if beats_local && within_bound {
            self.best = Some((cost, self.chosen.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::scheduler::testkit::{alloc, must_not_overcommit, node, placed_on, request};
    use crate::scheduler::{place, AllocView, Eviction, NodeView, PlacementPlan, PlacementRequest};

    fn evicted(plan: &PlacementPlan) -> Vec<(&str, &str, u32)> {
        let e = plan.evictions.iter();
        e.map(|e| (e.alloc_id.as_str(), e.node.as_str(), e.for_instance))
            .collect()
    }

    fn checked(nodes: &[NodeView], allocs: &[AllocView], req: &PlacementRequest) -> PlacementPlan {
        let plan = place(nodes, allocs, req);
        must_not_overcommit(nodes, allocs, req, &plan);
        plan
    }

    #[test]
    fn evicts_the_fewest_allocations_and_nothing_of_equal_or_higher_priority() {
        let nodes = [node("a", 8, 16), node("b", 8, 16), node("c", 4, 16)];
        let allocs = [
            alloc("x", "batch", "a", 4, 4, 10),
            alloc("y", "batch", "a", 2, 2, 10),
            alloc("z", "batch", "a", 2, 2, 10),
            alloc("u", "svc", "b", 4, 4, 60),
            alloc("v", "svc", "b", 4, 4, 50),
            alloc("s1", "batch", "c", 2, 2, 5),
            alloc("s2", "batch", "c", 2, 2, 5),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 4));
        assert_eq!(placed_on(&plan), ["a"]);
        assert_eq!(evicted(&plan), [("x", "a", 0)]);
    }

    #[test]
    fn prefers_lower_priority_then_the_least_excess_then_the_name() {
        let nodes = [node("a", 4, 16), node("b", 4, 16)];
        let allocs = [
            alloc("pa", "j", "a", 4, 1, 30),
            alloc("pb", "j", "b", 4, 1, 20),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert_eq!(evicted(&plan), [("pb", "b", 0)]);

        // Same count and priority: c frees 8 cores for 4, d exactly 4.
        let nodes = [node("c", 8, 16), node("d", 8, 16)];
        let allocs = [
            alloc("big", "j", "c", 8, 1, 20),
            alloc("small", "j", "d", 4, 1, 20),
            alloc("keep", "j", "d", 4, 1, 70),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert_eq!(evicted(&plan), [("small", "d", 0)]);

        // All equal: the first node by name.
        let nodes = [node("f", 4, 16), node("e", 4, 16)];
        let allocs = [
            alloc("pf", "j", "f", 4, 1, 20),
            alloc("pe", "j", "e", 4, 1, 20),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert_eq!(evicted(&plan), [("pe", "e", 0)]);
    }

    #[test]
    fn fewer_evictions_beat_lower_priority() {
        let mut nodes = [node("a", 4, 16), node("b", 4, 16)];
        let allocs = [
            alloc("one", "j", "a", 4, 1, 40),
            alloc("two1", "j", "b", 2, 1, 10),
            alloc("two2", "j", "b", 2, 1, 10),
        ];
        for _ in 0..2 {
            let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
            assert_eq!(evicted(&plan), [("one", "a", 0)]);
            nodes.reverse();
        }
    }

    #[test]
    fn gangs_are_evicted_whole_or_not_at_all() {
        let nodes = [node("a", 4, 16), node("b", 4, 16)];
        let allocs = [
            alloc("m1", "train", "a", 4, 1, 10).in_gang("g"),
            alloc("m2", "train", "b", 2, 1, 10).in_gang("g"),
            alloc("other", "j", "b", 2, 1, 60),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert_eq!(placed_on(&plan), ["a"]);
        assert_eq!(evicted(&plan), [("m1", "a", 0), ("m2", "b", 0)]);

        // One member of the request's priority protects the whole gang.
        let allocs = [
            alloc("m1", "train", "a", 4, 1, 10).in_gang("g"),
            alloc("m2", "train", "b", 2, 1, 50).in_gang("g"),
            alloc("other", "j", "b", 2, 1, 60),
        ];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert!(plan.placements.is_empty() && plan.evictions.is_empty());
        assert!(plan.blocked[0].preemption_could_help);
    }

    #[test]
    fn room_freed_by_an_eviction_serves_later_instances() {
        let nodes = [node("a", 8, 16)];
        let allocs = [alloc("big", "j", "a", 8, 1, 10)];
        let plan = checked(&nodes, &allocs, &request("web", 50, 2, 4, 1));
        assert_eq!(placed_on(&plan), ["a", "a"]);
        let expected = Eviction {
            alloc_id: "big".to_string(),
            node: "a".to_string(),
            for_instance: 0,
        };
        assert_eq!(plan.evictions, [expected]);
    }

    #[test]
    fn equal_priority_is_never_evicted() {
        let nodes = [node("a", 4, 8)];
        let allocs = [alloc("peer", "j", "a", 4, 1, 50)];
        let plan = checked(&nodes, &allocs, &request("web", 50, 1, 4, 1));
        assert!(plan.placements.is_empty() && plan.evictions.is_empty());
        assert_eq!(
            plan.blocked[0].reason,
            "no node fits 1GiB memory and 4 cpu: 1 node lacks free cpu; preemption at \
             priority 50 found no lower-priority work to evict that makes room"
        );
        assert!(plan.blocked[0].preemption_could_help);
    }
}
