//! The second objective: among the plans as good as the first solve's
//! (as many instances placed, no more evictions, no higher evicted
//! priority, no more moves), the one the scheduler's heuristic would
//! prefer: its spread first (fewest instances of the job per node, or per
//! label value), then its affinities (the highest summed bonus).
//!
//! A second solve rather than a lowest-weight term in the first: the first
//! objective's weights already span nine orders of magnitude, and one more
//! level below them would leave too little of a double's precision for
//! HiGHS to prove anything. The second solve starts from the first's plan,
//! so when its window ends early it still holds at least that plan.
//!
//! Spread is convex in the count per node: the `j`-th instance on a node
//! that already runs `e` of the job costs `e + j`, through one binary
//! column per possible instance (bounded by the node's cap), so the
//! cheapest plan evens the counts out. One spread step outweighs every
//! affinity difference together, as in the heuristic, where spread counts
//! rank before the score.

use std::collections::BTreeMap;
use std::time::Duration;

use highs::{Col, RowProblem};

use super::mip::{self, Choice, Costs};
use super::{FallbackError, Problem, SpreadPref};

/// Most spread columns one second solve adds; past it the spread term is
/// left out (the affinities still count).
pub(super) const MAX_SPREAD_COLUMNS: usize = 4096;

/// Whether a preference could tell plans apart: a spread policy, or
/// affinities that score some candidate nodes differently.
pub(super) fn wanted(problem: &Problem, caps: &[u32]) -> bool {
    problem.prefer.spread != SpreadPref::None || bonus_range(problem, caps).is_some()
}

/// The highest and lowest affinity bonus over the candidate nodes, when
/// they differ.
fn bonus_range(problem: &Problem, caps: &[u32]) -> Option<(i64, i64)> {
    let bonus = &problem.prefer.bonus;
    let mut values = caps
        .iter()
        .enumerate()
        .filter(|&(_, &cap)| cap > 0)
        .filter_map(|(n, _)| bonus.get(n).copied());
    let first = values.next()?;
    let (low, high) = values.fold((first, first), |(lo, hi), b| (lo.min(b), hi.max(b)));
    (low < high).then_some((high, low))
}

/// Spread groups: per group, its nodes (candidates only) and the job's
/// instances already in it. Empty without a spread policy.
fn spread_groups(problem: &Problem, caps: &[u32]) -> Vec<(Vec<usize>, u64)> {
    let existing = |n: usize| u64::from(problem.prefer.existing.get(n).copied().unwrap_or(0));
    match &problem.prefer.spread {
        SpreadPref::None => Vec::new(),
        SpreadPref::Nodes => (0..problem.nodes.len())
            .filter(|&n| caps[n] > 0)
            .map(|n| (vec![n], existing(n)))
            .collect(),
        SpreadPref::Groups(of) => {
            let mut groups: BTreeMap<usize, (Vec<usize>, u64)> = BTreeMap::new();
            for (n, &g) in of.iter().enumerate() {
                let entry = groups.entry(g).or_default();
                if caps.get(n).is_some_and(|&c| c > 0) {
                    entry.0.push(n);
                }
                entry.1 += existing(n);
            }
            groups
                .into_values()
                .filter(|(n, _)| !n.is_empty())
                .collect()
        }
    }
}

/// The plan as good as `first` that the heuristic would prefer, solved
/// within `window`; None when the second solve found nothing to return
/// (the first plan then stands).
pub(super) fn refine(
    problem: &Problem,
    caps: &[u32],
    first: &Choice,
    window: Duration,
) -> Result<Option<Choice>, FallbackError> {
    let total = first.total();
    let (high, range) = match bonus_range(problem, caps) {
        Some((high, low)) => (high, high - low),
        None => (0, 0),
    };
    let bonus = |n: usize| problem.prefer.bonus.get(n).copied().unwrap_or(high);
    // One spread step outweighs every affinity difference together.
    let step = (i64::from(total) * range + 1) as f64;

    let mut pb = RowProblem::default();
    let place = |n: usize| -((high - bonus(n)) as f64);
    let evict = |_: usize| 0.0;
    let costs = Costs {
        place: &place,
        moves: 0.0,
        evict: &evict,
    };
    let mut cols = mip::columns(&mut pb, problem, caps, &costs);
    mip::rules(&mut pb, problem, &mut cols);
    // No worse than the first plan on anything the first objective ranks.
    let all: Vec<(Col, f64)> = cols.k.iter().flatten().map(|&c| (c, 1.0)).collect();
    pb.add_row(f64::from(total)..=f64::from(total), &all);
    let evictions: Vec<(Col, f64)> = cols.e.iter().flatten().map(|&c| (c, 1.0)).collect();
    if !evictions.is_empty() {
        pb.add_row(..=first.evictions.len() as f64, &evictions);
        let priority: Vec<(Col, f64)> = cols
            .e
            .iter()
            .enumerate()
            .filter_map(|(w, c)| Some(((*c)?, f64::from(problem.work[w].priority))))
            .collect();
        pb.add_row(..=first.evicted_priority(problem) as f64, &priority);
    }
    let moves: Vec<(Col, f64)> = cols.m.iter().flatten().map(|&(_, c)| (c, 1.0)).collect();
    if !moves.is_empty() {
        pb.add_row(..=first.moves.len() as f64, &moves);
    }
    // Spread: y[g, j] for the j-th instance in group g.
    let groups = spread_groups(problem, caps);
    let sizes: Vec<u32> = groups
        .iter()
        .map(|(nodes, _)| {
            let cap: u64 = nodes.iter().map(|&n| u64::from(caps[n])).sum();
            u32::try_from(cap.min(u64::from(total))).unwrap_or(total)
        })
        .collect();
    let columns: usize = sizes.iter().map(|&s| s as usize).sum();
    let mut spread: Vec<(Vec<Col>, &[usize])> = Vec::new();
    if columns <= MAX_SPREAD_COLUMNS {
        for ((nodes, existing), &size) in groups.iter().zip(&sizes) {
            let ys: Vec<Col> = (1..=u64::from(size))
                .map(|j| pb.add_integer_column(-step * (existing + j) as f64, 0..=1))
                .collect();
            let mut link: Vec<(Col, f64)> = ys.iter().map(|&y| (y, 1.0)).collect();
            link.extend(nodes.iter().filter_map(|&n| cols.k[n]).map(|c| (c, -1.0)));
            pb.add_row(0.0..=0.0, &link);
            spread.push((ys, nodes.as_slice()));
        }
    } else if range == 0 {
        return Ok(None);
    }
    let mut start = mip::start(pb.num_cols(), &cols, first);
    for (ys, nodes) in &spread {
        let count: u32 = nodes.iter().map(|&n| first.k[n]).sum();
        for y in ys.iter().take(count as usize) {
            if let Some(slot) = start.get_mut(y.index()) {
                *slot = 1.0;
            }
        }
    }
    let run = mip::run(pb, window, Some(&start))?;
    if !run.feasible {
        return Ok(None);
    }
    let better = mip::choice(&cols, &run.values);
    let as_good = better.total() == total
        && better.evictions.len() <= first.evictions.len()
        && better.evicted_priority(problem) <= first.evicted_priority(problem)
        && better.moves.len() <= first.moves.len();
    Ok(as_good.then_some(better))
}
