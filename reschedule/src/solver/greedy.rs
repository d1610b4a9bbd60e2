//! The VMR2L paper's greedy heuristic, the baseline.
//!
//! Each step: among movable VMs of at most the target's cores, take the one
//! whose removal frees the most fragments on its PM; remove it; put it on
//! the other PM and NUMA nodes where it adds the fewest fragments (most
//! slots kept). Stop when the step would not lower the fragment count, when
//! the VM fits nowhere else, or at the move budget. Unlike the paper's code
//! it checks memory and anti-affinity too.

use std::time::Instant;

use super::{Limits, Solution, SolveError, Solver};
use crate::model::{placements_on, Instance, Move, Placement};
use crate::objective::node_slots;
use crate::state::{mem_i64, State};

/// The paper's greedy heuristic.
#[derive(Debug, Clone, Copy, Default)]
pub struct Greedy;

/// Fragments (free cores not in a slot) of a node with these free resources.
fn frag(state: &State<'_>, cpu: i64, mem: i64) -> i64 {
    cpu.max(0) - i64::from(state.shape().cpu) * node_slots(cpu, mem, state.shape())
}

impl Solver for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    fn solve(&self, inst: &Instance, limits: &Limits) -> Result<Solution, SolveError> {
        let start = Instant::now();
        let mut state = State::new(inst, limits.shape);
        let mut moves = Vec::new();
        let mut note = None;
        while moves.len() < limits.max_moves {
            if start.elapsed() > limits.deadline {
                note = Some("deadline reached".to_string());
                break;
            }
            // Filter: the VM whose removal frees the most fragments.
            let mut pick: Option<(i64, usize)> = None;
            for (v, vm) in inst.vms.iter().enumerate() {
                if vm.cpu() > limits.shape.cpu || !state.movable(v) {
                    continue;
                }
                let gain = removal_gain(&state, v);
                if pick.is_none_or(|(g, _)| gain > g) {
                    pick = Some((gain, v));
                }
            }
            let Some((out_gain, v)) = pick else { break };
            // Scorer: the destination (another PM) adding the fewest fragments.
            let vm = &inst.vms[v];
            let from = state.placement(v);
            let mut best: Option<(i64, Placement)> = None;
            for (p, pm) in inst.pms.iter().enumerate() {
                if p == from.pm || !pm.active {
                    continue;
                }
                for numa in placements_on(pm.numa.len(), vm.span) {
                    let to = Placement { pm: p, numa };
                    if state.check(Move { vm: v, to }).is_err() {
                        continue;
                    }
                    let mut gain = 0;
                    for n in numa.iter() {
                        let Some(node) = state.node(p, n) else {
                            continue;
                        };
                        let (c, m) = (state.free_cpu(node), state.free_mem(node));
                        gain += frag(&state, c, m)
                            - frag(
                                &state,
                                c - i64::from(vm.numa_cpu),
                                m - mem_i64(vm.numa_mem_mb),
                            );
                    }
                    if best.is_none_or(|(g, _)| gain > g) {
                        best = Some((gain, to));
                    }
                }
            }
            let Some((in_gain, to)) = best else { break };
            if out_gain + in_gain <= 0 {
                break;
            }
            let mv = Move { vm: v, to };
            state.apply_unchecked(mv);
            moves.push(mv);
        }
        Ok(Solution {
            fr_after: state.fragment_rate(),
            moves,
            proved_optimal: false,
            note,
            fr_bound: None,
        })
    }
}

/// Fragments freed on a VM's PM by taking the VM off it.
fn removal_gain(state: &State<'_>, v: usize) -> i64 {
    let vm = &state.instance().vms[v];
    let from = state.placement(v);
    let mut gain = 0;
    for n in from.numa.iter() {
        let Some(node) = state.node(from.pm, n) else {
            continue;
        };
        let (c, m) = (state.free_cpu(node), state.free_mem(node));
        gain += frag(state, c, m)
            - frag(
                state,
                c + i64::from(vm.numa_cpu),
                m + mem_i64(vm.numa_mem_mb),
            );
    }
    gain
}
