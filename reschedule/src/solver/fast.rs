//! herd's own planner: steepest descent over single moves, ranked by slots
//! gained and then by a potential that rewards gathering fragments on few
//! NUMA nodes, followed by large-neighbourhood search (drop some moves of
//! the best plan, replay the rest, descend again with randomised
//! tie-breaking) until the deadline. Anytime: it returns the best plan
//! found when the deadline hits.
//!
//! One descent step costs O(shapes × placements + VMs): VMs of one shape
//! (cores and memory per NUMA node, span) share their best destinations,
//! so the best destination of every VM comes from a short per-shape list.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{best_prefix, Limits, Solution, SolveError, Solver};
use crate::model::{placements_on, Instance, Move, Placement};
use crate::objective::node_slots;
use crate::rng::SplitMix64;
use crate::state::{mem_i64, State};

/// herd's anytime planner.
#[derive(Debug, Clone, Copy)]
pub struct Fast {
    /// Large-neighbourhood search after the first descent (`true`), or
    /// restarts from the initial state with fresh tie-breaking (`false`,
    /// the design it was compared with).
    pub lns: bool,
    /// Best destinations kept per VM shape (enough to skip a VM's own
    /// nodes; a VM with anti-affinity groups falls back to a full scan).
    pub top: usize,
}

impl Default for Fast {
    fn default() -> Self {
        Fast { lns: true, top: 8 }
    }
}

/// A move's worth: slots gained first, then the potential's change.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Gain {
    slots: i64,
    phi: i64,
}

impl Gain {
    fn improves(self) -> bool {
        self.slots > 0 || (self.slots == 0 && self.phi > 0)
    }
    fn add(self, o: Gain) -> Gain {
        Gain {
            slots: self.slots + o.slots,
            phi: self.phi + o.phi,
        }
    }
}

/// Slots and fragments² of a node with these free resources.
fn node_value(state: &State<'_>, cpu: i64, mem: i64) -> (i64, i64) {
    let k = node_slots(cpu, mem, state.shape());
    let r = cpu.max(0) - i64::from(state.shape().cpu) * k;
    (k, r * r)
}

/// Gain on `node` of its free resources changing by (dc, dm); None if it
/// would go negative.
fn node_gain(state: &State<'_>, node: usize, dc: i64, dm: i64) -> Option<Gain> {
    let (c, m) = (state.free_cpu(node), state.free_mem(node));
    if c + dc < 0 || m + dm < 0 {
        return None;
    }
    if !state.node_active(node) {
        return Some(Gain { slots: 0, phi: 0 });
    }
    let (k0, p0) = node_value(state, c, m);
    let (k1, p1) = node_value(state, c + dc, m + dm);
    Some(Gain {
        slots: k1 - k0,
        phi: p1 - p0,
    })
}

/// The per-instance data a descent needs, built once per solve.
struct Prep {
    /// Shape id of each VM (usize::MAX: never moved).
    shape_of: Vec<usize>,
    /// Per shape: (cores per node, MiB per node, span).
    shapes: Vec<(u32, u64, u8)>,
    /// Destinations for span 1 and span 2 on active PMs.
    dests: [Vec<Placement>; 2],
}

impl Prep {
    fn new(inst: &Instance) -> Prep {
        let mut ids: HashMap<(u32, u64, u8), usize> = HashMap::new();
        let mut shapes = Vec::new();
        let mut shape_of = Vec::with_capacity(inst.vms.len());
        for vm in &inst.vms {
            let key = (vm.numa_cpu, vm.numa_mem_mb, vm.span);
            let id = *ids.entry(key).or_insert_with(|| {
                shapes.push(key);
                shapes.len() - 1
            });
            shape_of.push(id);
        }
        let mut dests = [Vec::new(), Vec::new()];
        for (p, pm) in inst.pms.iter().enumerate() {
            if !pm.active {
                continue;
            }
            for span in 1..=2u8 {
                for numa in placements_on(pm.numa.len(), span) {
                    dests[usize::from(span - 1)].push(Placement { pm: p, numa });
                }
            }
        }
        Prep {
            shape_of,
            shapes,
            dests,
        }
    }
}

/// Gain of putting a VM of shape (c, m) on `to` (the VM not there yet).
fn dest_gain(state: &State<'_>, to: Placement, c: i64, m: i64) -> Option<Gain> {
    let mut g = Gain { slots: 0, phi: 0 };
    for n in to.numa.iter() {
        let node = state.node(to.pm, n)?;
        g = g.add(node_gain(state, node, -c, -m)?);
    }
    Some(g)
}

/// Gain of taking VM `v` off its nodes.
fn source_gain(state: &State<'_>, v: usize) -> Gain {
    let vm = &state.instance().vms[v];
    let from = state.placement(v);
    let mut g = Gain { slots: 0, phi: 0 };
    for n in from.numa.iter() {
        if let Some(node) = state.node(from.pm, n) {
            if let Some(x) = node_gain(state, node, i64::from(vm.numa_cpu), mem_i64(vm.numa_mem_mb))
            {
                g = g.add(x);
            }
        }
    }
    g
}

/// Score used to rank improving moves: slots dominate, then potential plus
/// a random nudge (`noise` in 0..amplitude).
fn score(g: Gain, noise: f64) -> f64 {
    g.slots as f64 * 1.0e7 + g.phi as f64 + noise
}

/// Per VM shape, its best few destinations by score (randomly nudged).
type Tops = Vec<Vec<(f64, Gain, Placement)>>;

fn shape_tops(
    state: &State<'_>,
    prep: &Prep,
    top: usize,
    rng: &mut SplitMix64,
    noise: f64,
) -> Tops {
    let mut tops: Tops = Vec::with_capacity(prep.shapes.len());
    for &(c, m, span) in &prep.shapes {
        let mut best: Vec<(f64, Gain, Placement)> = Vec::with_capacity(top + 1);
        for &to in &prep.dests[usize::from(span.clamp(1, 2) - 1)] {
            let Some(g) = dest_gain(state, to, i64::from(c), mem_i64(m)) else {
                continue;
            };
            let s = score(g, if noise > 0.0 { rng.unit() * noise } else { 0.0 });
            if best.len() == top && best.last().is_some_and(|b| b.0 >= s) {
                continue;
            }
            let at = best.iter().position(|b| b.0 < s).unwrap_or(best.len());
            best.insert(at, (s, g, to));
            best.truncate(top);
        }
        tops.push(best);
    }
    tops
}

/// The best improving single move from `state` with its gain (None: no
/// move improves), skipping VMs in `moved`.
fn best_move(state: &State<'_>, prep: &Prep, tops: &Tops, moved: &[bool]) -> Option<(Gain, Move)> {
    let inst = state.instance();
    let mut pick: Option<(f64, Gain, Move)> = None;
    for (v, vm) in inst.vms.iter().enumerate() {
        if moved[v] || !state.movable(v) {
            continue;
        }
        let from = state.placement(v);
        let out = source_gain(state, v);
        let own = |to: &Placement| to.pm == from.pm && to.numa.overlaps(from.numa);
        let mut chosen = None;
        for &(s, g, to) in &tops[prep.shape_of[v]] {
            if own(&to) || (!vm.groups.is_empty() && state.conflicts(v, to.pm).is_some()) {
                continue;
            }
            chosen = Some((s, g, to));
            break;
        }
        if chosen.is_none() && !vm.groups.is_empty() {
            // Every listed destination conflicts: scan them all.
            for &to in &prep.dests[usize::from(vm.span.clamp(1, 2) - 1)] {
                if own(&to) || state.conflicts(v, to.pm).is_some() {
                    continue;
                }
                let Some(g) = dest_gain(state, to, i64::from(vm.numa_cpu), mem_i64(vm.numa_mem_mb))
                else {
                    continue;
                };
                let s = score(g, 0.0);
                if chosen.is_none_or(|(b, _, _)| s > b) {
                    chosen = Some((s, g, to));
                }
            }
        }
        let Some((s, g, to)) = chosen else { continue };
        let total = out.add(g);
        if !total.improves() {
            continue;
        }
        let s = s + score(out, 0.0);
        if pick.is_none_or(|(b, _, _)| s > b) {
            pick = Some((s, total, Move { vm: v, to }));
        }
    }
    pick.map(|(_, g, mv)| (g, mv))
}

/// The best compound move: two or three VMs taken off one PM together
/// (which frees a slot none of them frees alone), each put on the best
/// destination left for its shape. Returns the moves with the most slots
/// gained per move, or None when no compound of at most `budget` moves
/// gains a slot.
fn best_compound(
    state: &mut State<'_>,
    prep: &Prep,
    tops: &Tops,
    moved: &[bool],
    budget: usize,
) -> Option<Vec<Move>> {
    if budget < 2 {
        return None;
    }
    let inst = state.instance();
    let mut on_pm: Vec<Vec<usize>> = vec![Vec::new(); inst.pms.len()];
    for v in 0..inst.vms.len() {
        if !moved[v] && state.movable(v) {
            on_pm[state.placement(v).pm].push(v);
        }
    }
    let shape = state.shape();
    let mut best: Option<(f64, Vec<Move>)> = None;
    let mut subset: Vec<usize> = Vec::with_capacity(3);
    for (p, vms) in on_pm.iter().enumerate() {
        let n = vms.len();
        if n < 2 {
            continue;
        }
        let Some(base0) = state.node(p, 0) else {
            continue;
        };
        let nodes = inst.pms[p].numa.len();
        let max_size = budget.min(3);
        // Enumerate subsets of size 2..=max_size by index triples.
        for a in 0..n {
            for b in a + 1..n {
                for c in b..=n {
                    if c > b && max_size < 3 {
                        break;
                    }
                    if c == b {
                        // size 2 marker: (a, b)
                    } else if c == n {
                        continue;
                    }
                    subset.clear();
                    subset.push(vms[a]);
                    subset.push(vms[b]);
                    if c > b {
                        subset.push(vms[c]);
                    }
                    // Precheck: does taking them off free a slot here?
                    let mut gain = 0;
                    for k in 0..nodes {
                        let node = base0 + k;
                        let (mut fc, mut fm) = (state.free_cpu(node), state.free_mem(node));
                        for &v in &subset {
                            let vm = &inst.vms[v];
                            if state.placement(v).numa.iter().any(|x| x == k) {
                                fc += i64::from(vm.numa_cpu);
                                fm += mem_i64(vm.numa_mem_mb);
                            }
                        }
                        gain += node_slots(fc, fm, shape) - state.node_slots(node);
                    }
                    if gain <= 0 {
                        continue;
                    }
                    let before = state.slots();
                    let mut applied: Vec<(Move, Placement)> = Vec::with_capacity(3);
                    let mut ok = true;
                    for &v in &subset {
                        let from = state.placement(v);
                        let dest = tops[prep.shape_of[v]].iter().find(|(_, _, to)| {
                            to.pm != p && state.check(Move { vm: v, to: *to }).is_ok()
                        });
                        let Some(&(_, _, to)) = dest else {
                            ok = false;
                            break;
                        };
                        let mv = Move { vm: v, to };
                        state.apply_unchecked(mv);
                        applied.push((mv, from));
                    }
                    let delta = state.slots() - before;
                    for &(mv, from) in applied.iter().rev() {
                        state.apply_unchecked(Move {
                            vm: mv.vm,
                            to: from,
                        });
                    }
                    if !ok || delta <= 0 {
                        continue;
                    }
                    let ratio = delta as f64 / applied.len() as f64;
                    if best.as_ref().is_none_or(|(r, _)| ratio > *r) {
                        best = Some((ratio, applied.iter().map(|(mv, _)| *mv).collect()));
                    }
                }
            }
        }
    }
    best.map(|(_, moves)| moves)
}

/// Descends from `state` (already holding `moves`) until no move improves,
/// the budget is spent or the deadline passes.
#[allow(clippy::too_many_arguments)]
fn descend(
    state: &mut State<'_>,
    moves: &mut Vec<Move>,
    moved: &mut [bool],
    prep: &Prep,
    fast: &Fast,
    limits: &Limits,
    start: Instant,
    rng: &mut SplitMix64,
    noise: f64,
) {
    // Stop before a step that would likely end past the deadline.
    let mut last_step = std::time::Duration::ZERO;
    while moves.len() < limits.max_moves && start.elapsed() + last_step < limits.deadline {
        let step_start = Instant::now();
        let tops = shape_tops(state, prep, fast.top, rng, noise);
        let single = best_move(state, prep, &tops, moved);
        let step: Vec<Move> = match single {
            Some((g, mv)) if g.slots > 0 => vec![mv],
            _ => match best_compound(state, prep, &tops, moved, limits.max_moves - moves.len()) {
                Some(c) => c,
                None => match single {
                    Some((_, mv)) => vec![mv],
                    None => break,
                },
            },
        };
        last_step = step_start.elapsed();
        for mv in step {
            if state.check(mv).is_err() {
                return;
            }
            state.apply_unchecked(mv);
            moved[mv.vm] = true;
            moves.push(mv);
        }
    }
}

impl Solver for Fast {
    fn name(&self) -> &'static str {
        if self.lns {
            "herd"
        } else {
            "herd-restart"
        }
    }

    fn solve(&self, inst: &Instance, limits: &Limits) -> Result<Solution, SolveError> {
        let start = Instant::now();
        let prep = Prep::new(inst);
        let mut rng = SplitMix64::new(limits.seed);
        let top = self.top.max(3);
        let fast = Fast { top, ..*self };

        let built = Instant::now();
        let mut state = State::new(inst, limits.shape);
        // The deadline is a promise ("in under 1 s"): what a round does
        // around its descent (a fresh state, the replays that score its
        // plan) is measured, and each descent stops that much earlier.
        // Before any round, three state builds stand in for it.
        // A last descent step can still run longer than the one before it:
        // 1 % of the deadline is kept for that.
        let mut overhead = built.elapsed() * 3 + limits.deadline / 100;
        let within = |overhead: Duration| Limits {
            deadline: limits.deadline.saturating_sub(overhead),
            ..*limits
        };
        let mut moves = Vec::new();
        let mut moved = vec![false; inst.vms.len()];
        descend(
            &mut state,
            &mut moves,
            &mut moved,
            &prep,
            &fast,
            &within(overhead),
            start,
            &mut rng,
            0.0,
        );
        let (mut best, mut best_fr) = best_prefix(inst, limits.shape, &moves);
        let mut best_slots = slots_of(inst, limits, &best);
        let mut iterations = 0u64;

        while start.elapsed() + overhead < limits.deadline && limits.max_moves > 0 {
            iterations += 1;
            let round = Instant::now();
            let mut state = State::new(inst, limits.shape);
            let mut moves = Vec::new();
            let mut moved = vec![false; inst.vms.len()];
            if self.lns && !best.is_empty() {
                // Destroy: drop a random share of the best plan's moves, or
                // cut it at a random point; replay what is left.
                let cut = rng.unit() < 0.3;
                let keep_upto = rng.below(best.len() + 1);
                let drop_p = 0.1 + 0.4 * rng.unit();
                for (i, &mv) in best.iter().enumerate() {
                    let keep = if cut {
                        i < keep_upto
                    } else {
                        rng.unit() >= drop_p
                    };
                    if keep && state.check(mv).is_ok() {
                        state.apply_unchecked(mv);
                        moved[mv.vm] = true;
                        moves.push(mv);
                    }
                }
            }
            let noise = 8.0 + 120.0 * rng.unit();
            let before = round.elapsed();
            descend(
                &mut state,
                &mut moves,
                &mut moved,
                &prep,
                &fast,
                &within(overhead),
                start,
                &mut rng,
                noise,
            );
            let after = Instant::now();
            let (cand, fr) = best_prefix(inst, limits.shape, &moves);
            let slots = slots_of(inst, limits, &cand);
            if slots > best_slots || (slots == best_slots && cand.len() < best.len()) {
                best = cand;
                best_fr = fr;
                best_slots = slots;
            }
            overhead = overhead.max(before + after.elapsed() + limits.deadline / 100);
        }
        Ok(Solution {
            moves: best,
            fr_after: best_fr,
            proved_optimal: false,
            note: Some(format!(
                "{iterations} search rounds after the first descent"
            )),
            fr_bound: None,
        })
    }
}

/// Slots reached by replaying `moves` (all valid).
fn slots_of(inst: &Instance, limits: &Limits, moves: &[Move]) -> i64 {
    let mut state = State::new(inst, limits.shape);
    for &mv in moves {
        state.apply_unchecked(mv);
    }
    state.slots()
}
