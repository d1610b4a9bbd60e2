//! The placement fallback's exact model (after "Priority Matters",
//! Christensen, Giallorenzo and Mauro, 2025): when the fast placement
//! heuristic leaves instances of a job pending, a MIP solved by HiGHS
//! within a short window decides whether moving (live) or evicting some
//! work the caller marked flexible makes room for them, and how, or proves
//! that nothing does.
//!
//! The model is small on purpose: only the nodes that could take the job
//! (and the nodes flexible work may move to), and only the flexible work on
//! the former; everything else is folded into each node's free room.
//!
//! - `k[n]` (integer): instances placed on node `n` (nodes that take them).
//! - `m[w, d]` (binary): work `w` moves to node `d` (the destinations the
//!   caller allows); `e[w]` (binary): `w` is evicted (when allowed); at
//!   most one of them per `w`.
//! - Moves come first and never count on an eviction: after all moves,
//!   before any eviction, every node fits ("phase 1"); after the evictions
//!   and the placements too ("phase 2"). The moves are then ordered so that
//!   each fits at its turn (see [`order_moves`]).
//! - Maximise, lexicographically through weights: instances placed, then
//!   fewest evictions, then the lowest total priority evicted, then fewest
//!   moves. An all-or-nothing job (a gang) places all or none.
//!
//! Doing nothing is always feasible, so HiGHS always has an answer: an
//! optimum that places nothing is a proof that no placement exists under
//! these rules; a time limit with nothing placed proves nothing.

use std::time::Duration;

use highs::{HighsModelStatus, RowProblem, Sense};

/// Resource dimensions every demand and free room has (CPU, memory, GPUs,
/// in whatever units the caller uses, the same everywhere).
pub const DIMS: usize = 3;

/// Most flexible work items one model takes (it stays small: a larger set
/// is the caller's to trim, lowest priority first).
pub const MAX_WORK: usize = 256;
/// Most instances one model places.
pub const MAX_INSTANCES: u32 = 1024;

/// A node of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name, for messages.
    pub id: String,
    /// Room free now per dimension: capacity less everything on it,
    /// flexible work included.
    pub free: [u64; DIMS],
    /// Whether the job's instances may go there (it passes the job's
    /// filters).
    pub takes_instances: bool,
}

/// Work already on a node that the model may move or evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    /// Its id, for messages.
    pub id: String,
    /// Index of the node it is on.
    pub node: usize,
    /// What it holds there per dimension.
    pub demand: [u64; DIMS],
    /// Nodes it may move to (its own is ignored); empty: it may not move.
    pub move_to: Vec<usize>,
    /// Whether it may be evicted.
    pub evictable: bool,
    /// Its priority (0 to 100): evicting lower priorities first.
    pub priority: u32,
}

/// What to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The flexible work on them.
    pub work: Vec<Work>,
    /// Instances of the job to place (identical).
    pub instances: u32,
    /// What each instance needs per dimension.
    pub demand: [u64; DIMS],
    /// All instances or none (a gang).
    pub all_or_nothing: bool,
}

/// A placement the solver found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Instances per node index, nodes in index order (none with 0).
    pub placed: Vec<(usize, u32)>,
    /// Moves (work index, destination node), in an order where each fits
    /// once the earlier ones completed.
    pub moves: Vec<(usize, usize)>,
    /// Work indices evicted (after the moves, with the placements).
    pub evictions: Vec<usize>,
    /// Whether the solver proved no placement does better (more instances,
    /// fewer evictions, fewer moves).
    pub optimal: bool,
}

impl Found {
    /// Instances placed in all.
    pub fn total(&self) -> u32 {
        self.placed.iter().map(|&(_, k)| k).sum()
    }
}

/// The solver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Room for at least one instance (all of them for all-or-nothing).
    Found(Found),
    /// Proved: no instance can be placed, whatever is moved or evicted
    /// within the rules.
    Impossible,
    /// The window ended before any placement was found or ruled out.
    TimedOut,
}

/// Why the solver gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackError {
    /// The problem is malformed; the message names what.
    #[error("invalid problem: {0}")]
    Invalid(String),
    /// HiGHS failed.
    #[error("MIP solver: {0}")]
    Mip(String),
    /// The solution's moves cannot be made one after another (they need
    /// each other's room).
    #[error("the moves found cannot be ordered: {0}")]
    Unordered(String),
}

/// Checks `problem` before it is modelled.
pub fn check(problem: &Problem) -> Result<(), FallbackError> {
    let nodes = problem.nodes.len();
    if problem.work.len() > MAX_WORK {
        return Err(FallbackError::Invalid(format!(
            "{} work items, at most {MAX_WORK}",
            problem.work.len()
        )));
    }
    if problem.instances == 0 || problem.instances > MAX_INSTANCES {
        return Err(FallbackError::Invalid(format!(
            "{} instances to place, 1 to {MAX_INSTANCES} supported",
            problem.instances
        )));
    }
    for w in &problem.work {
        if w.node >= nodes {
            return Err(FallbackError::Invalid(format!(
                "work {} is on node index {} of {nodes}",
                w.id, w.node
            )));
        }
        if let Some(&d) = w.move_to.iter().find(|&&d| d >= nodes) {
            return Err(FallbackError::Invalid(format!(
                "work {} may move to node index {d} of {nodes}",
                w.id
            )));
        }
    }
    Ok(())
}

/// Solves `problem` within `window`.
pub fn solve(problem: &Problem, window: Duration) -> Result<Answer, FallbackError> {
    check(problem)?;
    let nodes = problem.nodes.len();
    let works = problem.work.len();
    if !problem.nodes.iter().any(|n| n.takes_instances) {
        return Ok(Answer::Impossible);
    }
    // Weights, lexicographic: a move is 1; priorities scaled past all
    // moves; an eviction past all priorities; an instance past all
    // evictions.
    let a = works as f64 + 1.0;
    let b = (100.0 * works as f64 + 1.0) * a;
    let place_weight = (works as f64 + 1.0) * (b + 100.0 * a);

    let mut pb = RowProblem::default();
    let mut start: Vec<f64> = Vec::new();
    // k[n]
    let mut k = vec![None; nodes];
    for (n, node) in problem.nodes.iter().enumerate() {
        if node.takes_instances {
            let most = i32::try_from(problem.instances).unwrap_or(i32::MAX);
            k[n] = Some(pb.add_integer_column(place_weight, 0..=most));
            start.push(0.0);
        }
    }
    // m[w, d], e[w]
    let mut m: Vec<Vec<(usize, highs::Col)>> = Vec::with_capacity(works);
    let mut e: Vec<Option<highs::Col>> = Vec::with_capacity(works);
    for w in &problem.work {
        let mut row = Vec::new();
        for &d in &w.move_to {
            if d != w.node && !row.iter().any(|&(x, _)| x == d) {
                row.push((d, pb.add_integer_column(-1.0, 0..=1)));
                start.push(0.0);
            }
        }
        m.push(row);
        e.push(if w.evictable {
            start.push(0.0);
            Some(pb.add_integer_column(-(b + a * f64::from(w.priority)), 0..=1))
        } else {
            None
        });
    }
    // At most one fate per work item.
    for (w, moves) in m.iter().enumerate() {
        let mut terms: Vec<(highs::Col, f64)> = moves.iter().map(|&(_, c)| (c, 1.0)).collect();
        if let Some(c) = e[w] {
            terms.push((c, 1.0));
        }
        if terms.len() > 1 {
            pb.add_row(..=1.0, &terms);
        }
    }
    // Capacity, per node and dimension, after the moves (phase 1) and
    // after the evictions and placements (phase 2).
    for (n, (node, kn)) in problem.nodes.iter().zip(&k).enumerate() {
        for r in 0..DIMS {
            let mut phase1: Vec<(highs::Col, f64)> = Vec::new();
            for (w, work) in problem.work.iter().enumerate() {
                let dem = work.demand[r] as f64;
                if dem == 0.0 {
                    continue;
                }
                for &(d, c) in &m[w] {
                    if d == n {
                        phase1.push((c, dem));
                    }
                    if work.node == n {
                        phase1.push((c, -dem));
                    }
                }
            }
            let free = node.free[r] as f64;
            let mut phase2 = phase1.clone();
            for (w, work) in problem.work.iter().enumerate() {
                if let (true, Some(c)) = (work.node == n, e[w]) {
                    if work.demand[r] > 0 {
                        phase2.push((c, -(work.demand[r] as f64)));
                    }
                }
            }
            if let Some(c) = *kn {
                if problem.demand[r] > 0 {
                    phase2.push((c, problem.demand[r] as f64));
                }
            }
            if phase1.iter().any(|&(_, v)| v > 0.0) {
                pb.add_row(..=free, &phase1);
            }
            // Without instances here, evictions only loosen phase 1.
            if kn.is_some() && problem.demand[r] > 0 {
                pb.add_row(..=free, &phase2);
            }
        }
    }
    // How many instances: all or none for a gang.
    let all: Vec<(highs::Col, f64)> = k.iter().flatten().map(|&c| (c, 1.0)).collect();
    let wanted = f64::from(problem.instances);
    if problem.all_or_nothing {
        let g = pb.add_integer_column(0.0, 0..=1);
        start.push(0.0);
        let mut terms = all;
        terms.push((g, -wanted));
        pb.add_row(0.0..=0.0, &terms);
    } else {
        pb.add_row(..=wanted, &all);
    }

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
    // The objective is a whole number: a gap under 1 proves the optimum.
    set(&mut model, "mip_rel_gap", 0.0)?;
    set(&mut model, "mip_abs_gap", 0.5)?;
    model
        .try_set_option("threads", 1)
        .map_err(|e| FallbackError::Mip(format!("threads: {e:?}")))?;
    model
        .try_set_solution(Some(&start), None, None, None)
        .map_err(|e| FallbackError::Mip(format!("start solution: {e:?}")))?;
    let solved = model
        .try_solve()
        .map_err(|e| FallbackError::Mip(format!("{e:?}")))?;
    let status = solved.status();
    let optimal = match status {
        HighsModelStatus::Optimal => true,
        HighsModelStatus::ReachedTimeLimit => false,
        other => return Err(FallbackError::Mip(format!("HiGHS status {other:?}"))),
    };
    let solution = solved.get_solution();
    let values = solution.columns();
    let value = |c: highs::Col| values.get(c.index()).copied().unwrap_or(0.0);
    let placed: Vec<(usize, u32)> = k
        .iter()
        .enumerate()
        .filter_map(|(n, c)| {
            let count = value((*c)?).round();
            (count >= 1.0).then_some((n, count as u32))
        })
        .collect();
    if placed.is_empty() {
        return Ok(if optimal {
            Answer::Impossible
        } else {
            Answer::TimedOut
        });
    }
    let chosen: Vec<(usize, usize)> = m
        .iter()
        .enumerate()
        .flat_map(|(w, row)| {
            row.iter()
                .filter(|&&(_, c)| value(c) > 0.5)
                .map(move |&(d, _)| (w, d))
        })
        .collect();
    let evictions: Vec<usize> = e
        .iter()
        .enumerate()
        .filter_map(|(w, c)| (value((*c)?) > 0.5).then_some(w))
        .collect();
    let moves = order_moves(problem, &chosen)?;
    Ok(Answer::Found(Found {
        placed,
        moves,
        evictions,
        optimal,
    }))
}

/// Orders `moves` (work, destination) so that each fits on its
/// destination once the earlier ones completed (a migration holds room on
/// both nodes until it ends, so room a move frees counts only after it).
pub fn order_moves(
    problem: &Problem,
    moves: &[(usize, usize)],
) -> Result<Vec<(usize, usize)>, FallbackError> {
    let mut free: Vec<[i128; DIMS]> = problem
        .nodes
        .iter()
        .map(|n| n.free.map(i128::from))
        .collect();
    let mut pending: Vec<(usize, usize)> = moves.to_vec();
    let mut ordered = Vec::with_capacity(moves.len());
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|&(w, d)| {
            let work = &problem.work[w];
            let fits = (0..DIMS).all(|r| free[d][r] >= i128::from(work.demand[r]));
            if fits {
                for (r, &dem) in work.demand.iter().enumerate() {
                    free[d][r] -= i128::from(dem);
                    free[work.node][r] += i128::from(dem);
                }
                ordered.push((w, d));
            }
            !fits
        });
        if pending.len() == before {
            let names: Vec<String> = pending
                .iter()
                .map(|&(w, d)| format!("{} -> {}", problem.work[w].id, problem.nodes[d].id))
                .collect();
            return Err(FallbackError::Unordered(names.join(", ")));
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn node(id: &str, free_cpu: u64, takes: bool) -> Node {
        Node {
            id: id.into(),
            free: [free_cpu, 1 << 20, 0],
            takes_instances: takes,
        }
    }

    fn work(id: &str, node: usize, cpu: u64, move_to: &[usize], evictable: bool) -> Work {
        Work {
            id: id.into(),
            node,
            demand: [cpu, 1, 0],
            move_to: move_to.to_vec(),
            evictable,
            priority: 10,
        }
    }

    /// Replays `found` on `problem`: every move fits at its turn with the
    /// earlier ones done (phase 1), then the evictions and the placements
    /// fit every node (phase 2), and nothing is moved or evicted against
    /// the rules.
    fn must_replay(problem: &Problem, found: &Found) {
        let mut free: Vec<[i128; DIMS]> = problem
            .nodes
            .iter()
            .map(|n| n.free.map(i128::from))
            .collect();
        for &(w, d) in &found.moves {
            let work = &problem.work[w];
            assert!(work.move_to.contains(&d), "{} may not go to {d}", work.id);
            for (r, &dem) in work.demand.iter().enumerate() {
                free[d][r] -= i128::from(dem);
                assert!(free[d][r] >= 0, "move {} overfills node {d}", work.id);
                free[work.node][r] += i128::from(dem);
            }
        }
        for &w in &found.evictions {
            let work = &problem.work[w];
            assert!(work.evictable, "{} may not be evicted", work.id);
            assert!(!found.moves.iter().any(|&(x, _)| x == w));
            for (slot, &dem) in free[work.node].iter_mut().zip(&work.demand) {
                *slot += i128::from(dem);
            }
        }
        for &(n, count) in &found.placed {
            assert!(problem.nodes[n].takes_instances);
            for (slot, &dem) in free[n].iter_mut().zip(&problem.demand) {
                *slot -= i128::from(dem) * i128::from(count);
                assert!(*slot >= 0, "node {n} overfilled by the placements");
            }
        }
    }

    /// Two 4-CPU nodes each half full of movable work of lower priority
    /// (2 CPUs free on each): the job needs 4 CPUs, which no node has free
    /// (the fit heuristic places nothing), and moving one allocation makes
    /// room without evicting anything, though evicting would too.
    #[test]
    fn a_move_makes_room_where_nothing_fits_and_beats_an_eviction() {
        let problem = Problem {
            nodes: vec![node("a", 2, true), node("b", 2, true)],
            work: vec![work("x", 0, 2, &[1], true), work("y", 1, 2, &[0], true)],
            instances: 1,
            demand: [4, 1, 0],
            all_or_nothing: false,
        };
        let Answer::Found(found) = solve(&problem, WINDOW).expect("solve") else {
            panic!("a placement exists")
        };
        must_replay(&problem, &found);
        assert_eq!(found.total(), 1);
        assert_eq!(found.moves.len(), 1, "{found:?}");
        assert!(found.evictions.is_empty(), "{found:?}");
        assert!(found.optimal);
        // The move leaves the node the instance goes to.
        let (w, _) = found.moves[0];
        assert_eq!(found.placed, vec![(problem.work[w].node, 1)]);
    }

    /// The same, but only eviction is allowed: one eviction, of the lowest
    /// priority.
    #[test]
    fn without_moves_the_lowest_priority_is_evicted() {
        let mut problem = Problem {
            nodes: vec![node("a", 2, true), node("b", 2, true)],
            work: vec![work("x", 0, 2, &[], true), work("y", 1, 2, &[], true)],
            instances: 1,
            demand: [4, 1, 0],
            all_or_nothing: false,
        };
        problem.work[1].priority = 5;
        let Answer::Found(found) = solve(&problem, WINDOW).expect("solve") else {
            panic!("a placement exists")
        };
        must_replay(&problem, &found);
        assert_eq!(found.evictions, vec![1]);
        assert_eq!(found.placed, vec![(1, 1)]);
        assert!(found.moves.is_empty());
    }

    /// Moves that need each other's room are ordered: y leaves b before x
    /// goes there.
    #[test]
    fn a_chain_of_moves_is_ordered_so_each_fits_at_its_turn() {
        let problem = Problem {
            // a: x (2) on it, 0 free; b: y (2), 0 free; c: 2 free.
            nodes: vec![node("a", 0, true), node("b", 0, false), node("c", 2, false)],
            work: vec![work("x", 0, 2, &[1], false), work("y", 1, 2, &[2], false)],
            instances: 1,
            demand: [2, 1, 0],
            all_or_nothing: false,
        };
        let Answer::Found(found) = solve(&problem, WINDOW).expect("solve") else {
            panic!("a placement exists")
        };
        must_replay(&problem, &found);
        assert_eq!(found.moves, vec![(1, 2), (0, 1)]);
    }

    /// Nothing can move or be evicted, or what can would not make enough
    /// room: proved impossible.
    #[test]
    fn no_placement_is_proved_impossible() {
        let problem = Problem {
            nodes: vec![node("a", 2, true), node("b", 1, true)],
            // x may move to b, but b has 1 CPU free for its 2.
            work: vec![work("x", 0, 2, &[1], false)],
            instances: 1,
            demand: [4, 1, 0],
            all_or_nothing: false,
        };
        assert_eq!(solve(&problem, WINDOW), Ok(Answer::Impossible));
        // A gang of three when room exists for two: none.
        let gang = Problem {
            nodes: vec![node("a", 4, true)],
            work: Vec::new(),
            instances: 3,
            demand: [2, 1, 0],
            all_or_nothing: true,
        };
        assert_eq!(solve(&gang, WINDOW), Ok(Answer::Impossible));
        // The same job without all-or-nothing: two placed, proved the most.
        let Answer::Found(found) = solve(
            &Problem {
                all_or_nothing: false,
                ..gang
            },
            WINDOW,
        )
        .expect("solve") else {
            panic!("two fit")
        };
        assert_eq!(found.total(), 2);
        assert!(found.optimal);
    }

    #[test]
    fn malformed_problems_are_refused_naming_what() {
        let bad = Problem {
            nodes: vec![node("a", 2, true)],
            work: vec![work("x", 3, 2, &[], true)],
            instances: 1,
            demand: [1, 0, 0],
            all_or_nothing: false,
        };
        assert!(matches!(solve(&bad, WINDOW), Err(FallbackError::Invalid(m)) if m.contains("x")));
        let none = Problem {
            instances: 0,
            work: Vec::new(),
            ..bad
        };
        assert!(matches!(
            solve(&none, WINDOW),
            Err(FallbackError::Invalid(_))
        ));
    }
}
