//! Seeded synthetic instances of the VMR2L shape (two 44-core NUMA nodes
//! per PM, the paper's flavour mix), filled to a CPU load and then shuffled
//! until the fragment rate is near a target.
//!
//! Exists so benchmarks and tests run on many reproducible instances, not
//! only on the two published files, and so anti-affinity groups and
//! immovable VMs (absent from those files) get exercised.

use crate::model::{placements_on, Group, Instance, Move, NumaCap, Placement, Pm, Shape, Vm};
use crate::rng::SplitMix64;
use crate::state::State;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Number of PMs.
    pub pms: usize,
    /// Share of all cores the VMs take, in (0, 1).
    pub load: f64,
    /// The fragment rate to reach (16-core slots), within `fr_tolerance`.
    pub fr: f64,
    /// How close to `fr` is close enough.
    pub fr_tolerance: f64,
    /// Seed: the same parameters and seed give the same instance.
    pub seed: u64,
    /// Share of VMs marked `allow_migration: false`.
    pub immovable: f64,
    /// Number of anti-affinity groups.
    pub groups: usize,
    /// VMs per anti-affinity group.
    pub group_size: usize,
}

impl Default for GenParams {
    /// The paper's medium shape: 279 PMs near 90 % load, FR about 0.55.
    fn default() -> Self {
        GenParams {
            pms: 279,
            load: 0.9,
            fr: 0.55,
            fr_tolerance: 0.005,
            seed: 1,
            immovable: 0.0,
            groups: 0,
            group_size: 3,
        }
    }
}

/// Why no instance was generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    /// A parameter is out of range.
    #[error("bad parameter: {0}")]
    BadParam(String),
    /// The target FR was not reached (the load leaves too little or too
    /// much free space for it).
    #[error("could not reach FR {target:.4} (got {got:.4}); try another load or FR")]
    FrNotReached {
        /// The target.
        target: f64,
        /// The closest reached.
        got: f64,
    },
}

/// Cores per NUMA node and MiB per NUMA node, as in the published files.
const NUMA_CPU: u32 = 44;
const NUMA_MEM: u64 = 184_388;

/// The paper's flavour mix: (total cores, NUMA nodes spanned, weight ‰),
/// read off the published instances.
const FLAVOURS: [(u32, u8, u32); 11] = [
    (2, 1, 190),
    (4, 1, 240),
    (4, 2, 3),
    (8, 1, 140),
    (8, 2, 25),
    (16, 1, 150),
    (16, 2, 30),
    (32, 1, 50),
    (32, 2, 80),
    (64, 2, 70),
    (88, 2, 22),
];

/// A synthetic instance; errors on bad parameters or an FR not reached.
pub fn generate(p: &GenParams) -> Result<Instance, GenError> {
    if p.pms == 0 || p.pms > 100_000 {
        return Err(GenError::BadParam(format!(
            "pms is {} (1 to 100000)",
            p.pms
        )));
    }
    if !(p.load > 0.0 && p.load < 1.0) {
        return Err(GenError::BadParam(format!(
            "load is {} (between 0 and 1)",
            p.load
        )));
    }
    if !(0.0..=1.0).contains(&p.fr) || !(0.0..=1.0).contains(&p.immovable) {
        return Err(GenError::BadParam(
            "fr and immovable must be between 0 and 1".into(),
        ));
    }
    if p.groups > 0 && (p.group_size < 2 || p.group_size > p.pms) {
        return Err(GenError::BadParam(format!(
            "group_size is {} (2 to the number of PMs)",
            p.group_size
        )));
    }
    let mut rng = SplitMix64::new(p.seed);
    let pms: Vec<Pm> = (0..p.pms)
        .map(|i| Pm {
            id: format!("pm_{i}"),
            active: true,
            numa: vec![
                NumaCap {
                    cpu: NUMA_CPU,
                    mem_mb: NUMA_MEM
                };
                2
            ],
        })
        .collect();
    let mut free: Vec<[(i64, i64); 2]> = vec![[(i64::from(NUMA_CPU), NUMA_MEM as i64); 2]; p.pms];
    let total: f64 = (p.pms as f64) * f64::from(NUMA_CPU) * 2.0;
    let mut used = 0.0;
    let mut vms = Vec::new();
    let weight_sum: u32 = FLAVOURS.iter().map(|f| f.2).sum();
    let mut failures = 0;
    while used < p.load * total && failures < 500 {
        let mut draw = rng.below(weight_sum as usize) as u32;
        let &(cpu, span, _) = FLAVOURS
            .iter()
            .find(|f| {
                if draw < f.2 {
                    true
                } else {
                    draw -= f.2;
                    false
                }
            })
            .unwrap_or(&FLAVOURS[0]);
        let numa_cpu = cpu / u32::from(span);
        let per_core = if rng.unit() < 0.5 { 2048 } else { 4096 };
        let numa_mem = u64::from(numa_cpu) * per_core;
        let mut placed = false;
        for _ in 0..64 {
            let pm = rng.below(p.pms);
            let opts = placements_on(2, span);
            let numa = opts[rng.below(opts.len())];
            if numa
                .iter()
                .all(|n| free[pm][n].0 >= i64::from(numa_cpu) && free[pm][n].1 >= numa_mem as i64)
            {
                for n in numa.iter() {
                    free[pm][n].0 -= i64::from(numa_cpu);
                    free[pm][n].1 -= numa_mem as i64;
                }
                vms.push(Vm {
                    id: format!("vm_{}", vms.len()),
                    numa_cpu,
                    numa_mem_mb: numa_mem,
                    span,
                    movable: true,
                    placement: Placement { pm, numa },
                    groups: Vec::new(),
                });
                used += f64::from(cpu);
                placed = true;
                break;
            }
        }
        if placed {
            failures = 0;
        } else {
            failures += 1;
        }
    }
    let mut inst = Instance {
        pms,
        vms,
        groups: Vec::new(),
        target: Shape::default(),
    };
    shuffle_to_fr(&mut inst, p, &mut rng)?;
    add_constraints(&mut inst, p, &mut rng);
    inst.check().map_err(GenError::BadParam)?;
    Ok(inst)
}

/// Random relocations (not counted as moves: this builds the starting
/// state) until FR is within tolerance of the target.
fn shuffle_to_fr(inst: &mut Instance, p: &GenParams, rng: &mut SplitMix64) -> Result<(), GenError> {
    let shape = Shape::default();
    let placements = {
        let mut state = State::new(inst, shape);
        let n_vm = inst.vms.len();
        if n_vm == 0 {
            return Err(GenError::BadParam("no VM could be placed".into()));
        }
        let mut best = state.fragment_rate();
        for i in 0..4_000_000u32 {
            let fr = state.fragment_rate();
            if (fr - p.fr).abs() <= p.fr_tolerance {
                break;
            }
            if (fr - p.fr).abs() <= (best - p.fr).abs() && i > 200_000 {
                break;
            }
            let v = rng.below(n_vm);
            let pm = rng.below(inst.pms.len());
            let opts = placements_on(2, inst.vms[v].span);
            let mv = Move {
                vm: v,
                to: Placement {
                    pm,
                    numa: opts[rng.below(opts.len())],
                },
            };
            if state.check(mv).is_err() {
                continue;
            }
            let d = state.delta(mv);
            let want_more_slots = fr > p.fr;
            let ok = if want_more_slots { d > 0 } else { d < 0 } || (d == 0 && rng.unit() < 0.3);
            if ok {
                state.apply_unchecked(mv);
            }
            if (state.fragment_rate() - p.fr).abs() < (best - p.fr).abs() {
                best = state.fragment_rate();
            }
        }
        let fr = state.fragment_rate();
        // A small instance cannot hit a tight tolerance: one move shifts FR
        // by up to 16 cores over the total free.
        let reachable = 32.0 / state.total_free().max(1) as f64;
        if (fr - p.fr).abs() > p.fr_tolerance.max(reachable) {
            return Err(GenError::FrNotReached {
                target: p.fr,
                got: best,
            });
        }
        state.placements().to_vec()
    };
    for (vm, pl) in inst.vms.iter_mut().zip(placements) {
        vm.placement = pl;
    }
    Ok(())
}

/// Marks immovable VMs and forms anti-affinity groups of VMs on distinct PMs.
fn add_constraints(inst: &mut Instance, p: &GenParams, rng: &mut SplitMix64) {
    for vm in inst.vms.iter_mut() {
        if rng.unit() < p.immovable {
            vm.movable = false;
        }
    }
    let n = inst.vms.len();
    for g in 0..p.groups {
        let mut members: Vec<usize> = Vec::new();
        for _ in 0..p.group_size * 20 {
            if members.len() == p.group_size {
                break;
            }
            let v = rng.below(n);
            let pm = inst.vms[v].placement.pm;
            if inst.vms[v].groups.is_empty()
                && !members
                    .iter()
                    .any(|&m| m == v || inst.vms[m].placement.pm == pm)
            {
                members.push(v);
            }
        }
        for &m in &members {
            inst.vms[m].groups.push(inst.groups.len());
        }
        inst.groups.push(Group {
            name: format!("set_{g}"),
            vms: members,
        });
    }
}
