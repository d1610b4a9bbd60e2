//! A mutable cluster state that solvers and the validator move VMs in:
//! free CPU and memory per NUMA node, each VM's placement, anti-affinity
//! counts, and the number of free target-shaped slots kept up to date move
//! by move (O(NUMA nodes touched) per move, not O(cluster)).

use std::collections::HashMap;

use crate::model::{Instance, Move, NumaSet, Placement, Shape};
use crate::objective::{node_slots, ratio};

/// Why a move cannot be made in a given state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// The move names a VM the instance does not have.
    #[error("no VM with index {0}")]
    NoSuchVm(usize),
    /// The move names a PM the instance does not have.
    #[error("no PM with index {0}")]
    NoSuchPm(usize),
    /// The VM may not be migrated (`allow_migration: false`, or it sits on
    /// an inactive PM).
    #[error("VM {0} may not be moved")]
    Immovable(String),
    /// The destination PM is not active.
    #[error("PM {0} is not active")]
    InactivePm(String),
    /// The destination NUMA set does not suit the VM (wrong count of nodes,
    /// or nodes the PM does not have).
    #[error("NUMA nodes {numa:?} of PM {pm} do not suit VM {vm} (it spans {span})")]
    BadNuma {
        /// The VM.
        vm: String,
        /// The PM.
        pm: String,
        /// The nodes asked for.
        numa: Vec<usize>,
        /// How many nodes the VM spans.
        span: u8,
    },
    /// The VM is already exactly there.
    #[error("VM {0} is already on that PM and NUMA nodes")]
    NoOp(String),
    /// A NUMA node lacks the cores.
    #[error("NUMA node {numa} of PM {pm} has {free} free cores, VM {vm} needs {need}")]
    NoCpu {
        /// The VM.
        vm: String,
        /// The PM.
        pm: String,
        /// The NUMA node.
        numa: usize,
        /// Free cores there.
        free: i64,
        /// Cores the VM needs there.
        need: u32,
    },
    /// A NUMA node lacks the memory.
    #[error("NUMA node {numa} of PM {pm} has {free} MiB free, VM {vm} needs {need}")]
    NoMem {
        /// The VM.
        vm: String,
        /// The PM.
        pm: String,
        /// The NUMA node.
        numa: usize,
        /// Free MiB there.
        free: i64,
        /// MiB the VM needs there.
        need: u64,
    },
    /// Another VM of one of the VM's anti-affinity groups is on the PM.
    #[error("PM {pm} already hosts a VM of anti-affinity group {group}, which VM {vm} is in")]
    AntiAffinity {
        /// The VM.
        vm: String,
        /// The PM.
        pm: String,
        /// The group's name.
        group: String,
    },
}

/// The state: placements and per-node free resources, with the slot count.
#[derive(Debug, Clone)]
pub struct State<'a> {
    inst: &'a Instance,
    shape: Shape,
    /// Index of each PM's first NUMA node in the flat node arrays.
    node_base: Vec<usize>,
    free_cpu: Vec<i64>,
    free_mem: Vec<i64>,
    node_active: Vec<bool>,
    place: Vec<Placement>,
    /// (group, pm) → how many of the group's VMs are on the PM.
    group_pm: HashMap<(usize, usize), u32>,
    slots: i64,
    total_free: i64,
}

impl<'a> State<'a> {
    /// The state of `inst` as it stands, counting slots of `shape`.
    pub fn new(inst: &'a Instance, shape: Shape) -> Self {
        let mut node_base = Vec::with_capacity(inst.pms.len());
        let mut free_cpu = Vec::new();
        let mut free_mem = Vec::new();
        let mut node_active = Vec::new();
        for pm in &inst.pms {
            node_base.push(free_cpu.len());
            for n in &pm.numa {
                free_cpu.push(i64::from(n.cpu));
                free_mem.push(i64::try_from(n.mem_mb).unwrap_or(i64::MAX));
                node_active.push(pm.active);
            }
        }
        let mut state = State {
            inst,
            shape,
            node_base,
            free_cpu,
            free_mem,
            node_active,
            place: inst.vms.iter().map(|v| v.placement).collect(),
            group_pm: HashMap::new(),
            slots: 0,
            total_free: 0,
        };
        for (i, vm) in inst.vms.iter().enumerate() {
            for n in vm.placement.numa.iter() {
                if let Some(node) = state.node(vm.placement.pm, n) {
                    state.free_cpu[node] -= i64::from(vm.numa_cpu);
                    state.free_mem[node] -= mem_i64(vm.numa_mem_mb);
                }
            }
            for &g in &vm.groups {
                *state.group_pm.entry((g, state.place[i].pm)).or_insert(0) += 1;
            }
        }
        for node in 0..state.free_cpu.len() {
            if state.node_active[node] {
                state.total_free += state.free_cpu[node].max(0);
                state.slots += state.node_slots(node);
            }
        }
        state
    }

    /// The instance this state is of.
    pub fn instance(&self) -> &'a Instance {
        self.inst
    }

    /// The shape whose slots are counted.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Flat index of NUMA node `numa` of PM `pm`, if it exists.
    pub fn node(&self, pm: usize, numa: usize) -> Option<usize> {
        let pm_ref = self.inst.pms.get(pm)?;
        (numa < pm_ref.numa.len()).then(|| self.node_base[pm] + numa)
    }

    /// Number of NUMA nodes over all PMs.
    pub fn node_count(&self) -> usize {
        self.free_cpu.len()
    }

    /// Free cores of a flat node.
    pub fn free_cpu(&self, node: usize) -> i64 {
        self.free_cpu[node]
    }

    /// Free MiB of a flat node.
    pub fn free_mem(&self, node: usize) -> i64 {
        self.free_mem[node]
    }

    /// Whether a flat node belongs to an active PM.
    pub fn node_active(&self, node: usize) -> bool {
        self.node_active[node]
    }

    /// Slots of the target shape on a flat node (0 on inactive PMs).
    pub fn node_slots(&self, node: usize) -> i64 {
        if !self.node_active[node] {
            return 0;
        }
        node_slots(self.free_cpu[node], self.free_mem[node], self.shape)
    }

    /// Where each VM sits now.
    pub fn placements(&self) -> &[Placement] {
        &self.place
    }

    /// Where VM `vm` sits now.
    pub fn placement(&self, vm: usize) -> Placement {
        self.place[vm]
    }

    /// Free target-shaped slots over all active NUMA nodes.
    pub fn slots(&self) -> i64 {
        self.slots
    }

    /// Free cores over all active NUMA nodes (constant under moves).
    pub fn total_free(&self) -> i64 {
        self.total_free
    }

    /// The fragment rate now.
    pub fn fragment_rate(&self) -> f64 {
        ratio(
            self.total_free - i64::from(self.shape.cpu) * self.slots,
            self.total_free,
        )
    }

    /// Whether the VM may move at all (flag set and on an active PM).
    pub fn movable(&self, vm: usize) -> bool {
        let Some(v) = self.inst.vms.get(vm) else {
            return false;
        };
        v.movable
            && self
                .inst
                .pms
                .get(self.place[vm].pm)
                .is_some_and(|p| p.active)
    }

    /// Whether PM `pm` hosts another VM of one of `vm`'s anti-affinity groups.
    pub fn conflicts(&self, vm: usize, pm: usize) -> Option<usize> {
        let v = &self.inst.vms[vm];
        let here = self.place[vm].pm == pm;
        v.groups.iter().copied().find(|&g| {
            let n = self.group_pm.get(&(g, pm)).copied().unwrap_or(0);
            n > u32::from(here)
        })
    }

    /// Checks that `mv` can be made now, saying why not.
    pub fn check(&self, mv: Move) -> Result<(), MoveError> {
        let inst = self.inst;
        let v = inst.vms.get(mv.vm).ok_or(MoveError::NoSuchVm(mv.vm))?;
        let pm = inst
            .pms
            .get(mv.to.pm)
            .ok_or(MoveError::NoSuchPm(mv.to.pm))?;
        if !self.movable(mv.vm) {
            return Err(MoveError::Immovable(v.id.clone()));
        }
        if !pm.active {
            return Err(MoveError::InactivePm(pm.id.clone()));
        }
        if mv.to.numa.len() != usize::from(v.span) || mv.to.numa.iter().any(|n| n >= pm.numa.len())
        {
            return Err(MoveError::BadNuma {
                vm: v.id.clone(),
                pm: pm.id.clone(),
                numa: mv.to.numa.to_vec(),
                span: v.span,
            });
        }
        let from = self.place[mv.vm];
        if from == mv.to {
            return Err(MoveError::NoOp(v.id.clone()));
        }
        for n in mv.to.numa.iter() {
            let node = self.node_base[mv.to.pm] + n;
            let back = from.pm == mv.to.pm && from.numa.iter().any(|m| m == n);
            let (give_cpu, give_mem) = if back {
                (i64::from(v.numa_cpu), mem_i64(v.numa_mem_mb))
            } else {
                (0, 0)
            };
            let free = self.free_cpu[node] + give_cpu;
            if free < i64::from(v.numa_cpu) {
                return Err(MoveError::NoCpu {
                    vm: v.id.clone(),
                    pm: pm.id.clone(),
                    numa: n,
                    free,
                    need: v.numa_cpu,
                });
            }
            let free = self.free_mem[node] + give_mem;
            if free < mem_i64(v.numa_mem_mb) {
                return Err(MoveError::NoMem {
                    vm: v.id.clone(),
                    pm: pm.id.clone(),
                    numa: n,
                    free,
                    need: v.numa_mem_mb,
                });
            }
        }
        if let Some(g) = self.conflicts(mv.vm, mv.to.pm) {
            return Err(MoveError::AntiAffinity {
                vm: v.id.clone(),
                pm: pm.id.clone(),
                group: inst
                    .groups
                    .get(g)
                    .map(|g| g.name.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Makes `mv` if it can be made now; the state is unchanged otherwise.
    pub fn apply(&mut self, mv: Move) -> Result<(), MoveError> {
        self.check(mv)?;
        self.apply_unchecked(mv);
        Ok(())
    }

    /// Makes `mv` without checking it (the caller checked, e.g. through
    /// [`State::check`] or a solver's own feasibility test).
    pub fn apply_unchecked(&mut self, mv: Move) {
        let inst = self.inst;
        let v = &inst.vms[mv.vm];
        let from = self.place[mv.vm];
        self.shift(from, -i64::from(v.numa_cpu), -mem_i64(v.numa_mem_mb));
        self.shift(mv.to, i64::from(v.numa_cpu), mem_i64(v.numa_mem_mb));
        if from.pm != mv.to.pm {
            for &g in &v.groups {
                if let Some(n) = self.group_pm.get_mut(&(g, from.pm)) {
                    *n = n.saturating_sub(1);
                }
                *self.group_pm.entry((g, mv.to.pm)).or_insert(0) += 1;
            }
        }
        self.place[mv.vm] = mv.to;
    }

    /// Adds `cpu`/`mem` of use to each node of `p` (negative: frees it),
    /// keeping the slot count.
    fn shift(&mut self, p: Placement, cpu: i64, mem: i64) {
        for n in p.numa.iter() {
            let node = self.node_base[p.pm] + n;
            let before = self.node_slots(node);
            self.free_cpu[node] -= cpu;
            self.free_mem[node] -= mem;
            self.slots += self.node_slots(node) - before;
        }
    }

    /// Change in slots if `mv` were made (no feasibility check), computed
    /// on the nodes it touches only.
    pub fn delta(&self, mv: Move) -> i64 {
        let v = &self.inst.vms[mv.vm];
        let from = self.place[mv.vm];
        let (c, m) = (i64::from(v.numa_cpu), mem_i64(v.numa_mem_mb));
        let mut touched: [(usize, i64, i64); 2 * crate::model::MAX_NUMA] =
            [(usize::MAX, 0, 0); 2 * crate::model::MAX_NUMA];
        let mut len = 0;
        let mut touch = |node: usize, dc: i64, dm: i64| {
            if let Some(t) = touched[..len].iter_mut().find(|t| t.0 == node) {
                t.1 += dc;
                t.2 += dm;
            } else if len < touched.len() {
                touched[len] = (node, dc, dm);
                len += 1;
            }
        };
        for n in from.numa.iter() {
            touch(self.node_base[from.pm] + n, c, m);
        }
        for n in mv.to.numa.iter() {
            touch(self.node_base[mv.to.pm] + n, -c, -m);
        }
        let mut d = 0;
        for &(node, dc, dm) in &touched[..len] {
            if !self.node_active[node] {
                continue;
            }
            d += node_slots(
                self.free_cpu[node] + dc,
                self.free_mem[node] + dm,
                self.shape,
            ) - self.node_slots(node);
        }
        d
    }

    /// Placement options on PM `pm` for VM `vm` (by its span), any fit.
    pub fn options(&self, vm: usize, pm: usize) -> Vec<NumaSet> {
        let span = self.inst.vms[vm].span;
        crate::model::placements_on(self.inst.pms[pm].numa.len(), span)
    }
}

/// MiB as i64 (saturating; real memory sizes are far below the limit).
pub fn mem_i64(mb: u64) -> i64 {
    i64::try_from(mb).unwrap_or(i64::MAX)
}
