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
//! - Power: every [`PowerGroup`] with a hard budget stays under it while
//!   moving and at the end, counting the watts instances and moved work
//!   commit and the watts evictions and moves away free (`mip`'s
//!   `power_rules`), so a plan passes the scheduler's own power check.
//! - Maximise, lexicographically through weights: instances placed, then
//!   fewest evictions, then the lowest total priority evicted, then fewest
//!   moves. An all-or-nothing job (a gang) places all or none. Among the
//!   plans equal on all of that, a second solve takes the one the
//!   scheduler's heuristic would prefer ([`Preference`]: spread, then
//!   affinities).
//!
//! Doing nothing is always feasible, so HiGHS always has an answer: an
//! optimum that places nothing is a proof that no placement exists under
//! these rules; a time limit with nothing placed proves nothing.

mod mip;
mod prefer;

use std::time::{Duration, Instant};

use highs::RowProblem;

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
    /// Watts one instance of the job commits here (its GPUs' expected draw
    /// above idle, as the scheduler's power check counts it); 0 for work
    /// without GPUs, which no power budget ever refuses.
    pub instance_watts: u64,
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
    /// Watts it commits on its node (its GPUs' expected draw above idle):
    /// what evicting it or moving it away frees in the node's power groups.
    pub watts: u64,
    /// Watts it would commit at each destination of `move_to`, in the same
    /// order (a GPU model of another TDP commits another figure); empty:
    /// `watts` everywhere.
    pub move_watts: Vec<u64>,
}

impl Work {
    /// Watts it would commit on node `d` once moved there.
    pub fn watts_at(&self, d: usize) -> u64 {
        self.move_to
            .iter()
            .position(|&x| x == d)
            .and_then(|i| self.move_watts.get(i).copied())
            .unwrap_or(self.watts)
    }

    /// Takes node `d` out of its destinations (a move there was refused).
    pub fn forbid(&mut self, d: usize) {
        if let Some(i) = self.move_to.iter().position(|&x| x == d) {
            self.move_to.remove(i);
            if i < self.move_watts.len() {
                self.move_watts.remove(i);
            }
        }
    }
}

/// A power group with a hard budget (`power/<group>`): every plan keeps
/// what its nodes commit at or under the budget, as the scheduler's power
/// check (`verify_plan_with_power`) demands of every placement and move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerGroup {
    /// Its name (`rack=r1`, `cluster`), for messages.
    pub id: String,
    /// Indices of its nodes in the model.
    pub nodes: Vec<usize>,
    /// Watts left under its hard budget now (the budget less what the
    /// group commits, flexible work included); negative when already over,
    /// and then nothing that commits watts may be placed or moved there.
    pub headroom: i64,
}

/// How the scheduler's heuristic would rank nodes for the job: the
/// fallback keeps what its first objective decides (instances placed,
/// evictions, moves) and, among the plans equal on all of it, takes the
/// one the heuristic would prefer (see [`solve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preference {
    /// The job's spread policy.
    pub spread: SpreadPref,
    /// Instances of the job already on each node (empty: none anywhere).
    pub existing: Vec<u32>,
    /// Each node's affinity bonus (the sum of the weights of the job's
    /// affinities it matches; empty: no affinities).
    pub bonus: Vec<i64>,
}

/// The spread policy, as the model needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpreadPref {
    /// Bin-pack: no spreading preference.
    #[default]
    None,
    /// As few instances of the job per node as possible.
    Nodes,
    /// As few instances per value of a label: each node's value as a group
    /// number (nodes without the label share one more number).
    Groups(Vec<usize>),
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
    /// The power groups with a hard budget that hold some model node.
    pub power: Vec<PowerGroup>,
    /// Which of the equally good plans to take.
    pub prefer: Preference,
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
        if !w.move_watts.is_empty() && w.move_watts.len() != w.move_to.len() {
            return Err(FallbackError::Invalid(format!(
                "work {} has {} destination watts for {} destinations",
                w.id,
                w.move_watts.len(),
                w.move_to.len()
            )));
        }
    }
    for g in &problem.power {
        if let Some(&n) = g.nodes.iter().find(|&&n| n >= nodes) {
            return Err(FallbackError::Invalid(format!(
                "power group {} holds node index {n} of {nodes}",
                g.id
            )));
        }
    }
    let prefer = &problem.prefer;
    for (what, len) in [
        ("existing instances", prefer.existing.len()),
        ("affinity bonuses", prefer.bonus.len()),
        (
            "spread groups",
            match &prefer.spread {
                SpreadPref::Groups(of) => of.len(),
                _ => 0,
            },
        ),
    ] {
        if len != 0 && len != nodes {
            return Err(FallbackError::Invalid(format!(
                "{len} {what} for {nodes} nodes"
            )));
        }
    }
    Ok(())
}

/// Solves `problem` within `window`.
///
/// Two solves: the first decides what matters (the lexicographic
/// objective above); when the job has a spread policy or affinities that
/// tell nodes apart, a second one, in what is left of the window, picks
/// among the plans equal on all of that the one the scheduler's heuristic
/// would prefer ([`prefer`]). Its moves must still be orderable, or the
/// first plan stands; so does it when the second solve fails.
pub fn solve(problem: &Problem, window: Duration) -> Result<Answer, FallbackError> {
    check(problem)?;
    let started = Instant::now();
    let caps = mip::caps(problem);
    if caps.iter().all(|&c| c == 0) {
        return Ok(Answer::Impossible);
    }
    let works = problem.work.len();
    // Weights, lexicographic: a move is 1; priorities scaled past all
    // moves; an eviction past all priorities; an instance past all
    // evictions.
    let a = works as f64 + 1.0;
    let b = (100.0 * works as f64 + 1.0) * a;
    let place_weight = (works as f64 + 1.0) * (b + 100.0 * a);
    let place = |_: usize| place_weight;
    let evict = |w: usize| -(b + a * f64::from(problem.work[w].priority));
    let costs = mip::Costs {
        place: &place,
        moves: -1.0,
        evict: &evict,
    };
    let mut pb = RowProblem::default();
    let mut cols = mip::columns(&mut pb, problem, &caps, &costs);
    mip::rules(&mut pb, problem, &mut cols);
    // Doing nothing is always feasible: HiGHS starts from it.
    let nothing = vec![0.0; pb.num_cols()];
    let run = mip::run(pb, window, Some(&nothing))?;
    let optimal = run.optimal;
    let mut chosen = mip::choice(&cols, &run.values);
    if !run.feasible || chosen.total() == 0 {
        return Ok(if optimal {
            Answer::Impossible
        } else {
            Answer::TimedOut
        });
    }
    let left = window.saturating_sub(started.elapsed());
    if prefer::wanted(problem, &caps) && !left.is_zero() {
        if let Ok(Some(better)) = prefer::refine(problem, &caps, &chosen, left) {
            if order_moves(problem, &better.moves).is_ok() {
                chosen = better;
            }
        }
    }
    let moves = order_moves(problem, &chosen.moves)?;
    Ok(Answer::Found(Found {
        placed: chosen
            .k
            .iter()
            .enumerate()
            .filter(|&(_, &k)| k > 0)
            .map(|(n, &k)| (n, k))
            .collect(),
        moves,
        evictions: chosen.evictions,
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
    // Watts left per power group; a move that commits watts needs them in
    // every group of its destination, and gives its own back to its
    // source's groups once it ends.
    let mut headroom: Vec<i128> = problem
        .power
        .iter()
        .map(|g| i128::from(g.headroom))
        .collect();
    let mut pending: Vec<(usize, usize)> = moves.to_vec();
    let mut ordered = Vec::with_capacity(moves.len());
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|&(w, d)| {
            let work = &problem.work[w];
            let watts = i128::from(work.watts_at(d));
            let fits = (0..DIMS).all(|r| free[d][r] >= i128::from(work.demand[r]))
                && (watts == 0
                    || problem
                        .power
                        .iter()
                        .zip(&headroom)
                        .all(|(g, &left)| !g.nodes.contains(&d) || left >= watts));
            if fits {
                for (r, &dem) in work.demand.iter().enumerate() {
                    free[d][r] -= i128::from(dem);
                    free[work.node][r] += i128::from(dem);
                }
                for (g, left) in problem.power.iter().zip(headroom.iter_mut()) {
                    if g.nodes.contains(&d) {
                        *left -= watts;
                    }
                    if g.nodes.contains(&work.node) {
                        *left += i128::from(work.watts);
                    }
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
            instance_watts: 0,
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
            watts: 0,
            move_watts: Vec::new(),
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
        must_keep_power(problem, found);
    }

    /// Replays `found`'s watts as the scheduler's power check does: each
    /// move that commits watts fits every group of its destination at its
    /// turn (its source still holding its own), and after the evictions
    /// every placement that commits watts fits every group of its node.
    fn must_keep_power(problem: &Problem, found: &Found) {
        let mut left: Vec<i128> = problem
            .power
            .iter()
            .map(|g| i128::from(g.headroom))
            .collect();
        let groups_of = |n: usize| -> Vec<usize> {
            (0..problem.power.len())
                .filter(|&g| problem.power[g].nodes.contains(&n))
                .collect()
        };
        for &(w, d) in &found.moves {
            let work = &problem.work[w];
            let watts = i128::from(work.watts_at(d));
            for g in groups_of(d) {
                assert!(
                    watts == 0 || left[g] >= watts,
                    "moving {} breaks power group {}",
                    work.id,
                    problem.power[g].id
                );
                left[g] -= watts;
            }
            for g in groups_of(work.node) {
                left[g] += i128::from(work.watts);
            }
        }
        for &w in &found.evictions {
            for g in groups_of(problem.work[w].node) {
                left[g] += i128::from(problem.work[w].watts);
            }
        }
        for &(n, count) in &found.placed {
            let watts = i128::from(problem.nodes[n].instance_watts) * i128::from(count);
            for g in groups_of(n) {
                left[g] -= watts;
                assert!(
                    watts == 0 || left[g] >= 0,
                    "placing on {} breaks power group {}",
                    problem.nodes[n].id,
                    problem.power[g].id
                );
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
            power: Vec::new(),
            prefer: Preference::default(),
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
            power: Vec::new(),
            prefer: Preference::default(),
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
            power: Vec::new(),
            prefer: Preference::default(),
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
            power: Vec::new(),
            prefer: Preference::default(),
        };
        assert_eq!(solve(&problem, WINDOW), Ok(Answer::Impossible));
        // A gang of three when room exists for two: none.
        let gang = Problem {
            nodes: vec![node("a", 4, true)],
            work: Vec::new(),
            instances: 3,
            demand: [2, 1, 0],
            all_or_nothing: true,
            power: Vec::new(),
            prefer: Preference::default(),
        };
        assert_eq!(solve(&gang, WINDOW), Ok(Answer::Impossible));
        // The same job without all-or-nothing: two placed, proved the most.
        let Answer::Found(found) = solve(
            &Problem {
                all_or_nothing: false,
                power: Vec::new(),
                prefer: Preference::default(),
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
            power: Vec::new(),
            prefer: Preference::default(),
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

    /// A GPU node: 8 GPUs free of `free_gpus`, plenty of CPU and memory,
    /// one instance committing 620 W (an H100 at TDP above idle).
    fn gpu_node(id: &str, free_gpus: u64, takes: bool) -> Node {
        Node {
            id: id.into(),
            free: [64_000, 1 << 20, free_gpus],
            takes_instances: takes,
            instance_watts: 620,
        }
    }

    /// One GPU of work of `priority` committing 620 W on `node`.
    fn gpu_work(id: &str, node: usize, evictable: bool, priority: u32) -> Work {
        Work {
            id: id.into(),
            node,
            demand: [1000, 1, 1],
            move_to: Vec::new(),
            evictable,
            priority,
            watts: 620,
            move_watts: Vec::new(),
        }
    }

    fn group(id: &str, nodes: &[usize], headroom: i64) -> PowerGroup {
        PowerGroup {
            id: id.into(),
            nodes: nodes.to_vec(),
            headroom,
        }
    }

    fn gpu_job(nodes: Vec<Node>, work: Vec<Work>, power: Vec<PowerGroup>) -> Problem {
        Problem {
            nodes,
            work,
            instances: 1,
            demand: [1000, 1, 1],
            all_or_nothing: false,
            power,
            prefer: Preference::default(),
        }
    }

    fn found(problem: &Problem) -> Found {
        match solve(problem, WINDOW).expect("solve") {
            Answer::Found(found) => {
                must_replay(problem, &found);
                found
            }
            other => panic!("a placement exists: {other:?}"),
        }
    }

    /// Both nodes have a free GPU, but rack r1 (node a) has no watts left:
    /// the instance goes to b, in r2, where the budget has room.
    #[test]
    fn a_group_without_watts_is_avoided_where_another_has_room() {
        let problem = gpu_job(
            vec![gpu_node("a", 1, true), gpu_node("b", 1, true)],
            Vec::new(),
            vec![group("rack=r1", &[0], 100), group("rack=r2", &[1], 700)],
        );
        let found = found(&problem);
        assert_eq!(found.placed, vec![(1, 1)]);
        // With r2 out of watts too, nothing fits: proved.
        let mut none = problem.clone();
        none.power[1].headroom = 619;
        assert_eq!(solve(&none, WINDOW), Ok(Answer::Impossible));
    }

    /// The GPU is free on a, but its group's watts are held by
    /// lower-priority GPU work on b (a node the job cannot use): evicting
    /// it frees the watts, as preemption frees power; moving it would not
    /// (it stays in the group). Without an eviction allowed: impossible.
    #[test]
    fn evicting_work_elsewhere_in_the_group_frees_its_watts() {
        let mut x = gpu_work("x", 1, true, 10);
        x.move_to = vec![1];
        let mut y = gpu_work("y", 1, true, 20);
        y.move_to = vec![0];
        let problem = gpu_job(
            vec![gpu_node("a", 1, true), gpu_node("b", 0, false)],
            vec![x, y],
            vec![group("cluster", &[0, 1], 0)],
        );
        let found = found(&problem);
        assert_eq!(found.placed, vec![(0, 1)]);
        assert_eq!(found.evictions, vec![0], "the lowest priority: {found:?}");
        assert!(found.moves.is_empty());

        let mut kept = problem.clone();
        for w in &mut kept.work {
            w.evictable = false;
        }
        assert_eq!(solve(&kept, WINDOW), Ok(Answer::Impossible));
    }

    /// A group already over its budget takes nothing that commits watts,
    /// even where the GPUs are free; work without GPUs still goes there.
    #[test]
    fn a_group_over_its_budget_takes_no_gpu_work() {
        let problem = gpu_job(
            vec![gpu_node("a", 8, true)],
            Vec::new(),
            vec![group("cluster", &[0], -5)],
        );
        assert_eq!(solve(&problem, WINDOW), Ok(Answer::Impossible));
        let mut cpu = problem.clone();
        cpu.demand = [1000, 1, 0];
        cpu.nodes[0].instance_watts = 0;
        assert_eq!(found(&cpu).placed, vec![(0, 1)]);
    }

    /// A move into a group needs its watts there at its turn: x (GPU
    /// work) may go to b or c; b's group has no watts, so it goes to c.
    #[test]
    fn a_move_commits_watts_at_its_destination() {
        let mut x = gpu_work("x", 0, false, 10);
        x.move_to = vec![1, 2];
        x.move_watts = vec![620, 320];
        let problem = gpu_job(
            vec![
                gpu_node("a", 0, true),
                gpu_node("b", 1, false),
                gpu_node("c", 1, false),
            ],
            vec![x],
            vec![group("rack=r1", &[0], 0), group("rack=r2", &[1], 0), {
                group("rack=r3", &[2], 320)
            }],
        );
        let found = found(&problem);
        assert_eq!(found.moves, vec![(0, 2)]);
        assert_eq!(found.placed, vec![(0, 1)]);
        assert_eq!(problem.work[0].watts_at(2), 320);
        assert_eq!(problem.work[0].watts_at(1), 620);
    }

    /// Three roomy nodes, three instances: without a preference any split
    /// is as good; with `spread = "node"` one each; with two of the job
    /// already on a, the two new ones go to b and c.
    #[test]
    fn a_spread_job_gets_spread_instances() {
        let mut problem = Problem {
            nodes: vec![node("a", 8, true), node("b", 8, true), node("c", 8, true)],
            work: Vec::new(),
            instances: 3,
            demand: [1, 1, 0],
            all_or_nothing: false,
            power: Vec::new(),
            prefer: Preference {
                spread: SpreadPref::Nodes,
                ..Preference::default()
            },
        };
        assert_eq!(found(&problem).placed, vec![(0, 1), (1, 1), (2, 1)]);
        problem.instances = 2;
        problem.prefer.existing = vec![2, 0, 0];
        assert_eq!(found(&problem).placed, vec![(1, 1), (2, 1)]);
        // Spread by label: a and b share a value, c has another: of two
        // instances one goes to c.
        problem.prefer.existing.clear();
        problem.prefer.spread = SpreadPref::Groups(vec![0, 0, 1]);
        let placed = found(&problem).placed;
        assert!(placed.contains(&(2, 1)), "{placed:?}");
        assert_eq!(placed.len(), 2, "{placed:?}");
    }

    /// Spread never costs more: room on a for two instances, b full of
    /// evictable work; a spread job still places both on a, evicting
    /// nothing. And spread keeps the gang's all-or-nothing.
    #[test]
    fn spreading_never_costs_an_eviction_or_a_move() {
        let mut x = work("x", 1, 4, &[0], true);
        x.priority = 0;
        let problem = Problem {
            nodes: vec![node("a", 2, true), node("b", 0, true)],
            work: vec![x],
            instances: 2,
            demand: [1, 1, 0],
            all_or_nothing: true,
            power: Vec::new(),
            prefer: Preference {
                spread: SpreadPref::Nodes,
                ..Preference::default()
            },
        };
        let found = found(&problem);
        assert_eq!(found.placed, vec![(0, 2)]);
        assert!(found.evictions.is_empty() && found.moves.is_empty());
    }

    /// An affinity is honoured when free: the instance goes to the node
    /// with the bonus; when that node needs an eviction, not.
    #[test]
    fn an_affinity_is_honoured_when_it_costs_nothing() {
        let mut problem = Problem {
            nodes: vec![node("a", 4, true), node("b", 4, true), node("c", 4, true)],
            work: Vec::new(),
            instances: 1,
            demand: [2, 1, 0],
            all_or_nothing: false,
            power: Vec::new(),
            prefer: Preference {
                bonus: vec![0, 50, -20],
                ..Preference::default()
            },
        };
        assert_eq!(found(&problem).placed, vec![(1, 1)]);
        problem.nodes[1].free[0] = 0;
        problem.work = vec![work("x", 1, 4, &[], true)];
        let found = found(&problem);
        assert_eq!(found.placed, vec![(0, 1)], "{found:?}");
        assert!(found.evictions.is_empty());
        // Spread ranks before affinities: two instances, one each on a
        // and b rather than two on b.
        problem.nodes[1].free[0] = 4;
        problem.work.clear();
        problem.instances = 2;
        problem.prefer.spread = SpreadPref::Nodes;
        assert_eq!(found_placed(&problem), vec![(0, 1), (1, 1)]);
    }

    fn found_placed(problem: &Problem) -> Vec<(usize, u32)> {
        found(problem).placed
    }

    /// Random small problems with power groups, spread and affinities:
    /// every plan found replays (room at every step, every power group
    /// under its budget at every move and placement), and the preferred
    /// plan is as good as the plan without preferences.
    #[test]
    fn every_plan_found_replays_within_room_and_power() {
        let mut rng = crate::rng::SplitMix64::new(21);
        let mut found_some = 0;
        for _ in 0..60 {
            let nodes = 2 + rng.below(4);
            let problem = random_problem(&mut rng, nodes);
            let answer = solve(&problem, WINDOW).expect("solve");
            let plain = Problem {
                prefer: Preference::default(),
                ..problem.clone()
            };
            let without = solve(&plain, WINDOW).expect("solve");
            match (&answer, &without) {
                (Answer::Found(a), Answer::Found(b)) => {
                    must_replay(&problem, a);
                    found_some += 1;
                    assert_eq!(a.total(), b.total());
                    assert_eq!(a.evictions.len(), b.evictions.len());
                    assert_eq!(a.moves.len(), b.moves.len());
                }
                (a, b) => assert_eq!(a, b),
            }
        }
        assert!(found_some > 10, "only {found_some} plans found");
    }

    fn random_problem(rng: &mut crate::rng::SplitMix64, nodes: usize) -> Problem {
        let mut problem = Problem {
            nodes: (0..nodes)
                .map(|n| Node {
                    id: format!("n{n}"),
                    free: [rng.below(5) as u64, 1 << 20, rng.below(3) as u64],
                    takes_instances: rng.below(4) > 0,
                    instance_watts: 300 + 100 * rng.below(4) as u64,
                })
                .collect(),
            work: Vec::new(),
            instances: 1 + rng.below(4) as u32,
            demand: [1, 1, 1],
            all_or_nothing: rng.below(3) == 0,
            power: Vec::new(),
            prefer: Preference {
                spread: if rng.below(2) == 0 {
                    SpreadPref::Nodes
                } else {
                    SpreadPref::Groups((0..nodes).map(|n| n % 2).collect())
                },
                existing: (0..nodes).map(|_| rng.below(2) as u32).collect(),
                bonus: (0..nodes).map(|_| rng.below(3) as i64 * 25).collect(),
            },
        };
        for w in 0..rng.below(6) {
            let node = rng.below(nodes);
            let move_to: Vec<usize> = (0..nodes).filter(|_| rng.below(2) == 0).collect();
            let move_watts = move_to
                .iter()
                .map(|_| 200 + rng.below(3) as u64 * 100)
                .collect();
            problem.work.push(Work {
                id: format!("w{w}"),
                node,
                demand: [1 + rng.below(2) as u64, 1, rng.below(2) as u64],
                move_to,
                evictable: rng.below(2) == 0,
                priority: rng.below(50) as u32,
                watts: 300,
                move_watts,
            });
        }
        let half: Vec<usize> = (0..nodes / 2).collect();
        let all: Vec<usize> = (0..nodes).collect();
        problem.power = vec![
            group("rack=r1", &half, rng.below(1500) as i64),
            group("cluster", &all, rng.below(3000) as i64 - 200),
        ];
        problem
    }

    #[test]
    fn malformed_power_and_preferences_are_refused_naming_what() {
        let mut problem = gpu_job(vec![gpu_node("a", 1, true)], Vec::new(), Vec::new());
        problem.power = vec![group("rack=r9", &[3], 10)];
        assert!(
            matches!(solve(&problem, WINDOW), Err(FallbackError::Invalid(m)) if m.contains("rack=r9"))
        );
        problem.power.clear();
        problem.prefer.bonus = vec![1, 2];
        assert!(
            matches!(solve(&problem, WINDOW), Err(FallbackError::Invalid(m)) if m.contains("affinity"))
        );
        problem.prefer.bonus.clear();
        let mut x = gpu_work("x", 0, false, 1);
        x.move_to = vec![0];
        x.move_watts = vec![1, 2];
        problem.work = vec![x];
        assert!(
            matches!(solve(&problem, WINDOW), Err(FallbackError::Invalid(m)) if m.contains("x"))
        );
    }
}
