//! The fragment rate (FR): the share of free cores that cannot host another
//! VM of the target shape.
//!
//! Per NUMA node of an active PM with `f` free cores and `g` free MiB, the
//! node holds `k = min(f / c, g / m)` more VMs of shape (c cores, m MiB) and
//! `f - c·k` of its free cores are fragments. FR = Σ fragments / Σ free.
//! Migrations between active PMs leave Σ free unchanged, so minimising FR is
//! maximising Σ k, the number of free target-shaped slots.

use crate::model::{Instance, Placement, Shape};

/// Free target-shaped slots on one NUMA node with `free_cpu` cores and
/// `free_mem` MiB free (0 when either is negative).
pub fn node_slots(free_cpu: i64, free_mem: i64, shape: Shape) -> i64 {
    if free_cpu <= 0 || free_mem < 0 || shape.cpu == 0 {
        return 0;
    }
    let by_cpu = free_cpu / i64::from(shape.cpu);
    if shape.mem_mb == 0 {
        return by_cpu;
    }
    let mem = i64::try_from(shape.mem_mb).unwrap_or(i64::MAX);
    by_cpu.min(free_mem / mem)
}

/// Free cores and MiB of every NUMA node of every PM, with the VMs placed as
/// `placements` says (one entry per VM of `inst`). Indexed `[pm][numa]`.
pub fn free_per_node(inst: &Instance, placements: &[Placement]) -> Vec<Vec<(i64, i64)>> {
    let mut free: Vec<Vec<(i64, i64)>> = inst
        .pms
        .iter()
        .map(|pm| {
            pm.numa
                .iter()
                .map(|n| {
                    (
                        i64::from(n.cpu),
                        i64::try_from(n.mem_mb).unwrap_or(i64::MAX),
                    )
                })
                .collect()
        })
        .collect();
    for (vm, p) in inst.vms.iter().zip(placements) {
        for n in p.numa.iter() {
            if let Some(node) = free.get_mut(p.pm).and_then(|pm| pm.get_mut(n)) {
                node.0 -= i64::from(vm.numa_cpu);
                node.1 -= i64::try_from(vm.numa_mem_mb).unwrap_or(i64::MAX);
            }
        }
    }
    free
}

/// The fragment rate of `inst` with its VMs at `placements`, computed from
/// scratch (the yardstick every solver's claim is checked against).
///
/// Only active PMs count. 0 when no active PM has a free core.
pub fn fragment_rate(inst: &Instance, placements: &[Placement], shape: Shape) -> f64 {
    let free = free_per_node(inst, placements);
    let mut total = 0i64;
    let mut frag = 0i64;
    for (pm, nodes) in inst.pms.iter().zip(&free) {
        if !pm.active {
            continue;
        }
        for &(cpu, mem) in nodes {
            let cpu = cpu.max(0);
            total += cpu;
            frag += cpu - i64::from(shape.cpu) * node_slots(cpu, mem, shape);
        }
    }
    ratio(frag, total)
}

/// FR from its two sums; 0 for no free cores.
pub fn ratio(frag: i64, total_free: i64) -> f64 {
    if total_free <= 0 {
        0.0
    } else {
        frag as f64 / total_free as f64
    }
}

/// The fragment rate of `inst` as it stands (every VM where it sits now).
pub fn initial_fragment_rate(inst: &Instance, shape: Shape) -> f64 {
    let placements: Vec<Placement> = inst.vms.iter().map(|v| v.placement).collect();
    fragment_rate(inst, &placements, shape)
}
