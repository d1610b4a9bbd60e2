//! The fallback's MIP, piece by piece: the decision columns, the rules
//! every plan keeps (one fate per work item, room on every node after the
//! moves and after everything, every power group under its hard budget,
//! all or none for a gang), and one HiGHS run. [`super::solve`] builds it
//! twice: once for the plan, once more for the preferred of the equal
//! plans.

use std::time::Duration;

use highs::{Col, HighsModelStatus, HighsSolutionStatus, RowProblem, Sense};

use super::{FallbackError, Problem, DIMS};

/// The decision columns of one model.
pub(super) struct Columns {
    /// `k[n]`: instances on node `n` (None where none may go).
    pub(super) k: Vec<Option<Col>>,
    /// `m[w, d]`: work `w` moves to node `d`.
    pub(super) m: Vec<Vec<(usize, Col)>>,
    /// `e[w]`: work `w` is evicted (None where it may not be).
    pub(super) e: Vec<Option<Col>>,
    /// The gang's all-or-nothing switch (a gang only).
    pub(super) gang: Option<Col>,
}

/// Objective coefficients of the decision columns (maximised).
pub(super) struct Costs<'a> {
    /// Per instance on node `n`.
    pub(super) place: &'a dyn Fn(usize) -> f64,
    /// Per move.
    pub(super) moves: f64,
    /// Per eviction of work `w`.
    pub(super) evict: &'a dyn Fn(usize) -> f64,
}

/// A plan as the columns' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Choice {
    /// Instances per node.
    pub(super) k: Vec<u32>,
    /// Moves (work, destination), unordered.
    pub(super) moves: Vec<(usize, usize)>,
    /// Work evicted.
    pub(super) evictions: Vec<usize>,
}

impl Choice {
    /// Instances placed in all.
    pub(super) fn total(&self) -> u32 {
        self.k.iter().sum()
    }

    /// The summed priority of the work it evicts.
    pub(super) fn evicted_priority(&self, problem: &Problem) -> u64 {
        self.evictions
            .iter()
            .map(|&w| u64::from(problem.work[w].priority))
            .sum()
    }
}

/// The most instances each node could take whatever is moved or evicted
/// (its free room plus everything flexible on it, and for work with GPUs
/// its power groups' headroom plus every flexible watt in them): 0 where
/// the job may not go, or where it commits watts in a group already over
/// its budget. Bounds `k` (and the spread columns) so the model stays
/// small.
pub(super) fn caps(problem: &Problem) -> Vec<u32> {
    problem
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            if !node.takes_instances {
                return 0;
            }
            let mut cap = u64::from(problem.instances);
            for r in 0..DIMS {
                let need = problem.demand[r];
                if need == 0 {
                    continue;
                }
                let flexible: u64 = problem
                    .work
                    .iter()
                    .filter(|w| w.node == n)
                    .map(|w| w.demand[r])
                    .sum();
                cap = cap.min(node.free[r].saturating_add(flexible) / need);
            }
            let watts = node.instance_watts;
            if watts > 0 {
                for g in problem.power.iter().filter(|g| g.nodes.contains(&n)) {
                    let Ok(headroom) = u64::try_from(g.headroom) else {
                        return 0;
                    };
                    let flexible: u64 = problem
                        .work
                        .iter()
                        .filter(|w| g.nodes.contains(&w.node))
                        .map(|w| w.watts)
                        .sum();
                    let most = headroom.saturating_add(flexible).checked_div(watts);
                    cap = cap.min(most.unwrap_or(cap));
                }
            }
            u32::try_from(cap).unwrap_or(u32::MAX)
        })
        .collect()
}

/// Whether moving work `w` to `d` may be modelled: it does not commit
/// watts in a group already over its budget.
fn may_move(problem: &Problem, w: usize, d: usize) -> bool {
    let watts = problem.work[w].watts_at(d);
    watts == 0
        || problem
            .power
            .iter()
            .all(|g| g.headroom >= 0 || !g.nodes.contains(&d))
}

/// Adds the decision columns with `costs`.
pub(super) fn columns(
    pb: &mut RowProblem,
    problem: &Problem,
    caps: &[u32],
    costs: &Costs<'_>,
) -> Columns {
    let k = caps
        .iter()
        .enumerate()
        .map(|(n, &cap)| {
            (cap > 0).then(|| {
                let most = i32::try_from(cap).unwrap_or(i32::MAX);
                pb.add_integer_column((costs.place)(n), 0..=most)
            })
        })
        .collect();
    let mut m = Vec::with_capacity(problem.work.len());
    let mut e = Vec::with_capacity(problem.work.len());
    for (w, work) in problem.work.iter().enumerate() {
        let mut row: Vec<(usize, Col)> = Vec::new();
        for &d in &work.move_to {
            if d != work.node && !row.iter().any(|&(x, _)| x == d) && may_move(problem, w, d) {
                row.push((d, pb.add_integer_column(costs.moves, 0..=1)));
            }
        }
        m.push(row);
        e.push(
            work.evictable
                .then(|| pb.add_integer_column((costs.evict)(w), 0..=1)),
        );
    }
    Columns {
        k,
        m,
        e,
        gang: None,
    }
}

/// Adds a `..=rhs` row of `terms` when some term could bind it (a
/// positive coefficient); rows of only freeing terms always hold.
fn at_most(pb: &mut RowProblem, terms: &[(Col, f64)], rhs: f64) {
    if terms.iter().any(|&(_, v)| v > 0.0) {
        pb.add_row(..=rhs, terms);
    }
}

/// Adds the rules every plan keeps.
pub(super) fn rules(pb: &mut RowProblem, problem: &Problem, cols: &mut Columns) {
    // At most one fate per work item.
    for (w, moves) in cols.m.iter().enumerate() {
        let mut terms: Vec<(Col, f64)> = moves.iter().map(|&(_, c)| (c, 1.0)).collect();
        if let Some(c) = cols.e[w] {
            terms.push((c, 1.0));
        }
        if terms.len() > 1 {
            pb.add_row(..=1.0, &terms);
        }
    }
    // Room, per node and dimension, after the moves (phase 1) and after
    // the evictions and placements too (phase 2).
    for (n, node) in problem.nodes.iter().enumerate() {
        for r in 0..DIMS {
            let mut phase1: Vec<(Col, f64)> = Vec::new();
            for (w, work) in problem.work.iter().enumerate() {
                let dem = work.demand[r] as f64;
                if dem == 0.0 {
                    continue;
                }
                for &(d, c) in &cols.m[w] {
                    if d == n {
                        phase1.push((c, dem));
                    }
                    if work.node == n {
                        phase1.push((c, -dem));
                    }
                }
            }
            let free = node.free[r] as f64;
            at_most(pb, &phase1, free);
            if let (Some(c), true) = (cols.k[n], problem.demand[r] > 0) {
                let mut phase2 = phase1;
                for (w, work) in problem.work.iter().enumerate() {
                    if let (true, Some(e), true) = (work.node == n, cols.e[w], work.demand[r] > 0) {
                        phase2.push((e, -(work.demand[r] as f64)));
                    }
                }
                phase2.push((c, problem.demand[r] as f64));
                at_most(pb, &phase2, free);
            }
        }
    }
    power_rules(pb, problem, cols);
    // How many instances: all or none for a gang.
    let all: Vec<(Col, f64)> = cols.k.iter().flatten().map(|&c| (c, 1.0)).collect();
    let wanted = f64::from(problem.instances);
    if problem.all_or_nothing {
        let g = pb.add_integer_column(0.0, 0..=1);
        let mut terms = all;
        terms.push((g, -wanted));
        pb.add_row(0.0..=0.0, &terms);
        cols.gang = Some(g);
    } else {
        pb.add_row(..=wanted, &all);
    }
}

/// Every power group with room stays under its hard budget:
///
/// - while moving: what moves in (at its destination's watts) less what
///   moves out of the group, a move inside the group counting in full
///   (its source holds the watts until it ends, and moves run several at
///   once), fits the headroom; each move is re-checked at its turn when
///   the moves are ordered;
/// - at the end: moves in, less every watt moved out or evicted, plus the
///   instances placed, fits the headroom. Placements only add watts and
///   the plan makes every eviction before its first placement, so each
///   placement's own check passes.
fn power_rules(pb: &mut RowProblem, problem: &Problem, cols: &Columns) {
    for g in problem.power.iter().filter(|g| g.headroom >= 0) {
        let mut member = vec![false; problem.nodes.len()];
        for &n in &g.nodes {
            member[n] = true;
        }
        let inside = |n: usize| member[n];
        let mut moving: Vec<(Col, f64)> = Vec::new();
        let mut end: Vec<(Col, f64)> = Vec::new();
        for (w, work) in problem.work.iter().enumerate() {
            let own = work.watts as f64;
            for &(d, c) in &cols.m[w] {
                let there = work.watts_at(d) as f64;
                match (inside(work.node), inside(d)) {
                    (true, true) => {
                        moving.push((c, there));
                        end.push((c, there - own));
                    }
                    (false, true) => {
                        moving.push((c, there));
                        end.push((c, there));
                    }
                    (true, false) => {
                        moving.push((c, -own));
                        end.push((c, -own));
                    }
                    (false, false) => {}
                }
            }
            if let (true, Some(e)) = (inside(work.node), cols.e[w]) {
                end.push((e, -own));
            }
        }
        for (n, node) in problem.nodes.iter().enumerate() {
            if let (true, Some(c)) = (inside(n), cols.k[n]) {
                end.push((c, node.instance_watts as f64));
            }
        }
        let headroom = g.headroom as f64;
        moving.retain(|&(_, v)| v != 0.0);
        end.retain(|&(_, v)| v != 0.0);
        at_most(pb, &moving, headroom);
        at_most(pb, &end, headroom);
    }
}

/// What one HiGHS run gave.
pub(super) struct Run {
    /// The columns' values.
    pub(super) values: Vec<f64>,
    /// Whether it proved its answer optimal.
    pub(super) optimal: bool,
    /// Whether it holds a feasible solution at all.
    pub(super) feasible: bool,
}

/// Solves `pb` (maximising) within `window`, from `start` when given.
pub(super) fn run(
    pb: RowProblem,
    window: Duration,
    start: Option<&[f64]>,
) -> Result<Run, FallbackError> {
    let mut model = pb.optimise(Sense::Maximise);
    model.make_quiet();
    let set = |model: &mut highs::Model, name: &str, value: f64| {
        model
            .try_set_option(name, value)
            .map_err(|e| FallbackError::Mip(format!("{name}: {e:?}")))
    };
    set(
        &mut model,
        "time_limit",
        window.max(Duration::from_millis(10)).as_secs_f64(),
    )?;
    // The objectives are whole numbers: a gap under 1 proves the optimum.
    set(&mut model, "mip_rel_gap", 0.0)?;
    set(&mut model, "mip_abs_gap", 0.5)?;
    model
        .try_set_option("threads", 1)
        .map_err(|e| FallbackError::Mip(format!("threads: {e:?}")))?;
    if let Some(start) = start {
        model
            .try_set_solution(Some(start), None, None, None)
            .map_err(|e| FallbackError::Mip(format!("start solution: {e:?}")))?;
    }
    let solved = model
        .try_solve()
        .map_err(|e| FallbackError::Mip(format!("{e:?}")))?;
    let optimal = match solved.status() {
        HighsModelStatus::Optimal => true,
        HighsModelStatus::ReachedTimeLimit => false,
        other => return Err(FallbackError::Mip(format!("HiGHS status {other:?}"))),
    };
    let feasible = optimal || solved.primal_solution_status() == HighsSolutionStatus::Feasible;
    Ok(Run {
        values: solved.get_solution().columns().to_vec(),
        optimal,
        feasible,
    })
}

/// The plan `values` hold.
pub(super) fn choice(cols: &Columns, values: &[f64]) -> Choice {
    let value = |c: Col| values.get(c.index()).copied().unwrap_or(0.0);
    Choice {
        k: cols
            .k
            .iter()
            .map(|c| c.map_or(0, |c| value(c).round().max(0.0) as u32))
            .collect(),
        moves: cols
            .m
            .iter()
            .enumerate()
            .flat_map(|(w, row)| {
                row.iter()
                    .filter(|&&(_, c)| value(c) > 0.5)
                    .map(move |&(d, _)| (w, d))
            })
            .collect(),
        evictions: cols
            .e
            .iter()
            .enumerate()
            .filter_map(|(w, c)| (value((*c)?) > 0.5).then_some(w))
            .collect(),
    }
}

/// `choice` as start values for a model of `count` columns whose decision
/// columns are `cols` (other columns 0 unless set after).
pub(super) fn start(count: usize, cols: &Columns, choice: &Choice) -> Vec<f64> {
    let mut start = vec![0.0; count];
    let mut set = |c: Col, v: f64| {
        if let Some(slot) = start.get_mut(c.index()) {
            *slot = v;
        }
    };
    for (n, c) in cols.k.iter().enumerate() {
        if let Some(c) = *c {
            set(c, f64::from(choice.k.get(n).copied().unwrap_or(0)));
        }
    }
    for &(w, d) in &choice.moves {
        if let Some(&(_, c)) = cols.m[w].iter().find(|&&(x, _)| x == d) {
            set(c, 1.0);
        }
    }
    for &w in &choice.evictions {
        if let Some(c) = cols.e[w] {
            set(c, 1.0);
        }
    }
    if let Some(g) = cols.gang {
        set(g, if choice.total() > 0 { 1.0 } else { 0.0 });
    }
    start
}
