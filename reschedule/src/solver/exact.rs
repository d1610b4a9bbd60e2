//! The exact yardstick: the final placement as a mixed-integer programme,
//! solved by HiGHS within a time limit, then ordered into moves.
//!
//! Variables: x[v, p, s] = 1 when movable VM v ends on PM p, NUMA nodes s;
//! y[n] = free target-shaped slots left on NUMA node n. Per node, the cores
//! and memory of the VMs on it plus y[n] target shapes fit its capacity;
//! each VM is in exactly one place; at most MNL VMs end elsewhere than they
//! started; an anti-affinity group has at most one VM per PM. Maximise
//! Σ y (the same as minimising FR, since moves keep Σ free constant).
//!
//! Any sequence of at most MNL moves changes at most MNL VMs' placements,
//! so the MIP's optimum bounds every solver. Its final placement is turned
//! into an order of moves, each possible at its turn; a move that can never
//! be made before the others (a cycle of full nodes) is dropped and said so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use highs::{HighsModelStatus, RowProblem, Sense};

use super::{Limits, Solution, SolveError, Solver};
use crate::model::{placements_on, Instance, Move, Placement};
use crate::state::{mem_i64, State};

/// The MIP solver.
#[derive(Debug, Clone, Copy)]
pub struct Exact {
    /// Refuse instances needing more placement variables than this (HiGHS
    /// would spend the whole limit building and presolving).
    pub max_columns: usize,
}

impl Default for Exact {
    fn default() -> Self {
        Exact {
            max_columns: 400_000,
        }
    }
}

impl Solver for Exact {
    fn name(&self) -> &'static str {
        "exact"
    }

    fn solve(&self, inst: &Instance, limits: &Limits) -> Result<Solution, SolveError> {
        let start = Instant::now();
        let shape = limits.shape;
        let state0 = State::new(inst, shape);
        let c_t = f64::from(shape.cpu);
        let m_t = shape.mem_mb as f64;

        // Fixed use per node: VMs that cannot move.
        let mut fixed_cpu = vec![0i64; state0.node_count()];
        let mut fixed_mem = vec![0i64; state0.node_count()];
        // (group, pm) -> fixed members there.
        let mut fixed_group: HashMap<(usize, usize), u32> = HashMap::new();
        let movable: Vec<usize> = (0..inst.vms.len()).filter(|&v| state0.movable(v)).collect();
        for (v, vm) in inst.vms.iter().enumerate() {
            if state0.movable(v) {
                continue;
            }
            for n in vm.placement.numa.iter() {
                if let Some(node) = state0.node(vm.placement.pm, n) {
                    fixed_cpu[node] += i64::from(vm.numa_cpu);
                    fixed_mem[node] += mem_i64(vm.numa_mem_mb);
                }
            }
            for &g in &vm.groups {
                *fixed_group.entry((g, vm.placement.pm)).or_insert(0) += 1;
            }
        }

        // Candidate placements per movable VM.
        let mut cands: Vec<Vec<Placement>> = Vec::with_capacity(movable.len());
        let mut columns = 0usize;
        for &v in &movable {
            let vm = &inst.vms[v];
            let mut list = Vec::new();
            for (p, pm) in inst.pms.iter().enumerate() {
                if !pm.active {
                    continue;
                }
                if vm.groups.iter().any(|&g| fixed_group.contains_key(&(g, p))) {
                    continue;
                }
                for numa in placements_on(pm.numa.len(), vm.span) {
                    let fits = numa.iter().all(|n| {
                        state0.node(p, n).is_some_and(|node| {
                            i64::from(pm.numa[n].cpu) - fixed_cpu[node] >= i64::from(vm.numa_cpu)
                                && mem_i64(pm.numa[n].mem_mb) - fixed_mem[node]
                                    >= mem_i64(vm.numa_mem_mb)
                        })
                    });
                    let here = Placement { pm: p, numa };
                    if fits || here == vm.placement {
                        list.push(here);
                    }
                }
            }
            columns += list.len();
            cands.push(list);
        }
        if columns > self.max_columns {
            return Err(SolveError::TooLarge {
                solver: "exact",
                why: format!(
                    "{columns} placement variables, at most {} supported",
                    self.max_columns
                ),
            });
        }

        let mut pb = RowProblem::default();
        let mut start_cols: Vec<f64> = Vec::with_capacity(columns + state0.node_count());
        // x columns
        let mut xcols = Vec::with_capacity(movable.len());
        for (i, &v) in movable.iter().enumerate() {
            let mut row = Vec::with_capacity(cands[i].len());
            for &p in &cands[i] {
                row.push(pb.add_integer_column(0.0, 0..=1));
                start_cols.push(if p == inst.vms[v].placement { 1.0 } else { 0.0 });
            }
            xcols.push(row);
        }
        // y columns, one per active node
        let mut ycol = vec![None; state0.node_count()];
        for (node, slot) in ycol.iter_mut().enumerate() {
            if state0.node_active(node) {
                let cap = state0.free_cpu(node).max(0) / i64::from(shape.cpu) + 1;
                *slot = Some(pb.add_integer_column(1.0, 0..=cap.max(0) as i32));
                start_cols.push(state0.node_slots(node) as f64);
            }
        }
        // Capacity rows.
        let mut cpu_terms: Vec<Vec<(highs::Col, f64)>> = vec![Vec::new(); state0.node_count()];
        let mut mem_terms: Vec<Vec<(highs::Col, f64)>> = vec![Vec::new(); state0.node_count()];
        for (i, &v) in movable.iter().enumerate() {
            let vm = &inst.vms[v];
            for (j, p) in cands[i].iter().enumerate() {
                for n in p.numa.iter() {
                    if let Some(node) = state0.node(p.pm, n) {
                        cpu_terms[node].push((xcols[i][j], f64::from(vm.numa_cpu)));
                        mem_terms[node].push((xcols[i][j], vm.numa_mem_mb as f64));
                    }
                }
            }
        }
        for (node, y) in ycol.iter().enumerate() {
            let Some(y) = *y else { continue };
            let (pm, n) = node_owner(inst, &state0, node);
            let cap = &inst.pms[pm].numa[n];
            let mut cpu = std::mem::take(&mut cpu_terms[node]);
            cpu.push((y, c_t));
            pb.add_row(..=(f64::from(cap.cpu) - fixed_cpu[node] as f64), &cpu);
            let mut mem = std::mem::take(&mut mem_terms[node]);
            if m_t > 0.0 {
                mem.push((y, m_t));
            }
            if !mem.is_empty() {
                pb.add_row(..=(cap.mem_mb as f64 - fixed_mem[node] as f64), &mem);
            }
        }
        // Each VM in one place; count the ones that stay.
        let mut stay = Vec::with_capacity(movable.len());
        for (i, &v) in movable.iter().enumerate() {
            let all: Vec<(highs::Col, f64)> = xcols[i].iter().map(|&c| (c, 1.0)).collect();
            pb.add_row(1.0..=1.0, &all);
            if let Some(j) = cands[i].iter().position(|p| *p == inst.vms[v].placement) {
                stay.push((xcols[i][j], 1.0));
            }
        }
        let min_stay = movable.len() as f64 - limits.max_moves as f64;
        if min_stay > 0.0 {
            pb.add_row(min_stay.., &stay);
        }
        // Anti-affinity: per group and PM, at most one member.
        let mut group_terms: HashMap<(usize, usize), Vec<(highs::Col, f64)>> = HashMap::new();
        for (i, &v) in movable.iter().enumerate() {
            for &g in &inst.vms[v].groups {
                for (j, p) in cands[i].iter().enumerate() {
                    group_terms
                        .entry((g, p.pm))
                        .or_default()
                        .push((xcols[i][j], 1.0));
                }
            }
        }
        for ((g, p), terms) in group_terms {
            if terms.len() > 1 {
                let fixed = f64::from(fixed_group.get(&(g, p)).copied().unwrap_or(0));
                pb.add_row(..=(1.0 - fixed), &terms);
            }
        }

        let mut model = pb.optimise(Sense::Maximise);
        model.make_quiet();
        let left = limits
            .deadline
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(10));
        model
            .try_set_option("time_limit", left.as_secs_f64())
            .map_err(|e| SolveError::Mip(format!("time_limit: {e:?}")))?;
        // The objective is a whole number: a gap under 1 proves optimality.
        model
            .try_set_option("mip_abs_gap", 0.99)
            .map_err(|e| SolveError::Mip(format!("mip_abs_gap: {e:?}")))?;
        model
            .try_set_option("threads", 1)
            .map_err(|e| SolveError::Mip(format!("threads: {e:?}")))?;
        // Start from the placement as it stands (0 moves, always feasible).
        model
            .try_set_solution(Some(&start_cols), None, None, None)
            .map_err(|e| SolveError::Mip(format!("start solution: {e:?}")))?;
        let solved = model
            .try_solve()
            .map_err(|e| SolveError::Mip(format!("{e:?}")))?;
        let status = solved.status();
        // Σ y can be no higher than the dual bound, so the FR can be no
        // lower than the FR with floor(bound) slots.
        let fr_bound = solved
            .double_info_value(c"mip_dual_bound")
            .ok()
            .filter(|b| b.is_finite())
            .map(|bound| {
                let total = state0.total_free();
                if total <= 0 {
                    return 0.0;
                }
                let slots = (bound + 1e-6).floor().max(0.0);
                ((total as f64 - c_t * slots) / total as f64).max(0.0)
            });
        let solution = solved.get_solution();
        let values = solution.columns();

        // Final placements from the x values (a VM with none set stays).
        let mut target: Vec<(usize, Placement)> = Vec::new();
        for (i, &v) in movable.iter().enumerate() {
            let chosen = cands[i]
                .iter()
                .zip(&xcols[i])
                .find(|(_, col)| values.get(col_index(**col)).is_some_and(|x| *x > 0.5))
                .map(|(p, _)| *p);
            if let Some(p) = chosen {
                if p != inst.vms[v].placement {
                    target.push((v, p));
                }
            }
        }
        let (moves, dropped, fr_after) = sequence(inst, limits, target);
        let optimal = status == HighsModelStatus::Optimal && dropped == 0;
        let mut note = match status {
            HighsModelStatus::Optimal => "optimal".to_string(),
            HighsModelStatus::ReachedTimeLimit => {
                "time limit reached; best placement found so far".to_string()
            }
            other => format!("HiGHS status {other:?}"),
        };
        if dropped > 0 {
            note.push_str(&format!(
                "; {dropped} moves could not be ordered and were dropped"
            ));
        }
        Ok(Solution {
            moves,
            fr_after,
            proved_optimal: optimal,
            note: Some(note),
            fr_bound,
        })
    }
}

/// The column's position in the solution vector.
fn col_index(col: highs::Col) -> usize {
    col.index()
}

/// The PM and NUMA number of a flat node.
fn node_owner(inst: &Instance, state: &State<'_>, node: usize) -> (usize, usize) {
    for (p, pm) in inst.pms.iter().enumerate() {
        for n in 0..pm.numa.len() {
            if state.node(p, n) == Some(node) {
                return (p, n);
            }
        }
    }
    (0, 0)
}

/// Orders the changed placements into moves, each possible at its turn:
/// repeatedly makes every pending move that fits now. Returns the moves,
/// how many could not be made, and the FR reached.
pub(crate) fn sequence(
    inst: &Instance,
    limits: &Limits,
    mut pending: Vec<(usize, Placement)>,
) -> (Vec<Move>, usize, f64) {
    let mut state = State::new(inst, limits.shape);
    let mut moves = Vec::new();
    loop {
        let before = pending.len();
        pending.retain(|&(vm, to)| {
            let mv = Move { vm, to };
            if moves.len() < limits.max_moves && state.check(mv).is_ok() {
                state.apply_unchecked(mv);
                moves.push(mv);
                false
            } else {
                true
            }
        });
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    (moves, pending.len(), state.fragment_rate())
}
