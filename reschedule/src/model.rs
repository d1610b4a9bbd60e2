//! The placement model the rescheduler plans over: physical machines (PMs)
//! split into NUMA nodes, VMs pinned to one NUMA node or spanning two of one
//! PM, anti-affinity groups, and the moves a plan is made of.
//!
//! It is herd's own model, not the VMR2L file format: the importer
//! ([`crate::vmr2l`]) maps that format onto it, and a live cluster's nodes and
//! VM allocations map onto it the same way.

use serde::{Deserialize, Serialize};

/// The most NUMA nodes one PM may have: a [`NumaSet`] is an 8-bit mask.
pub const MAX_NUMA: usize = 8;

/// What one NUMA node of a PM offers in total.
///
/// Exists because capacity is checked per NUMA node, not per PM: a VM pinned
/// to node 0 cannot use node 1's free cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaCap {
    /// Cores on this NUMA node.
    pub cpu: u32,
    /// Memory on this NUMA node, in MiB.
    pub mem_mb: u64,
}

/// A physical machine that hosts VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pm {
    /// The PM's id in its source (the file's `node_id`, a herd node id).
    pub id: String,
    /// Only active PMs count in the fragment rate and receive VMs; VMs on an
    /// inactive PM stay where they are.
    pub active: bool,
    /// Its NUMA nodes, indexed by NUMA node number.
    pub numa: Vec<NumaCap>,
}

/// A set of NUMA node numbers of one PM, as a bit mask.
///
/// Exists so a placement is a small copyable value and "same NUMA nodes" is
/// one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NumaSet(pub u8);

impl NumaSet {
    /// The set holding the given node numbers (each below [`MAX_NUMA`]).
    pub fn of(nodes: &[usize]) -> Self {
        let mut mask = 0u8;
        for &n in nodes {
            if n < MAX_NUMA {
                mask |= 1 << n;
            }
        }
        NumaSet(mask)
    }

    /// How many NUMA nodes are in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the two sets share a node.
    pub fn overlaps(self, other: NumaSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The node numbers, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_NUMA).filter(move |n| self.0 & (1 << n) != 0)
    }

    /// The node numbers as a vector, ascending (for output).
    pub fn to_vec(self) -> Vec<usize> {
        self.iter().collect()
    }
}

/// Where a VM sits: a PM (index into [`Instance::pms`]) and its NUMA nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Index of the PM in [`Instance::pms`].
    pub pm: usize,
    /// The NUMA nodes of that PM the VM is pinned to.
    pub numa: NumaSet,
}

/// A VM with its demand per NUMA node it occupies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// The VM's id in its source (the file's `instance_id`).
    pub id: String,
    /// Cores it takes on each NUMA node it occupies (a VM spanning two nodes
    /// takes half of its cores on each).
    pub numa_cpu: u32,
    /// Memory it takes on each NUMA node it occupies, in MiB.
    pub numa_mem_mb: u64,
    /// How many NUMA nodes of one PM it occupies: 1 or 2.
    pub span: u8,
    /// Whether a plan may move it (`allow_migration`).
    pub movable: bool,
    /// Where it sits now.
    pub placement: Placement,
    /// Indices into [`Instance::groups`] of the anti-affinity groups it is in.
    pub groups: Vec<usize>,
}

impl Vm {
    /// The VM's total cores (all NUMA nodes together).
    pub fn cpu(&self) -> u32 {
        self.numa_cpu * u32::from(self.span)
    }
}

/// An anti-affinity group (`deployment_set`): no two of its VMs may share a PM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's name in its source.
    pub name: String,
    /// Indices into [`Instance::vms`].
    pub vms: Vec<usize>,
}

/// The VM shape whose free slots the fragment rate counts.
///
/// Exists because "fragmented" only means something for a given shape: free
/// cores are fragments when no VM of this shape fits in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Cores the shape needs on one NUMA node (more than 0).
    pub cpu: u32,
    /// Memory it needs on that node, in MiB (0: memory not counted).
    pub mem_mb: u64,
}

impl Default for Shape {
    /// The paper's target: a 16-core single-NUMA VM, memory not counted.
    fn default() -> Self {
        Shape { cpu: 16, mem_mb: 0 }
    }
}

/// A whole rescheduling problem: PMs, VMs where they sit, and constraints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The physical machines.
    pub pms: Vec<Pm>,
    /// The VMs, each with its current placement.
    pub vms: Vec<Vm>,
    /// Anti-affinity groups.
    pub groups: Vec<Group>,
    /// The shape the source names as the one to make room for (the file's
    /// weight-1 flavour); [`Shape::default`] when it names none.
    pub target: Shape,
}

/// One migration: put VM `vm` on PM `pm`, NUMA nodes `numa`.
///
/// A move between NUMA nodes of the same PM is a move too, and counts as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Move {
    /// Index into [`Instance::vms`].
    pub vm: usize,
    /// Where it goes.
    pub to: Placement,
}

/// The candidate placements of a VM of `span` nodes on a PM of `numa_count`
/// NUMA nodes: every node alone, or every pair of nodes.
pub fn placements_on(numa_count: usize, span: u8) -> Vec<NumaSet> {
    let n = numa_count.min(MAX_NUMA);
    match span {
        1 => (0..n).map(|a| NumaSet::of(&[a])).collect(),
        2 => {
            let mut out = Vec::new();
            for a in 0..n {
                for b in a + 1..n {
                    out.push(NumaSet::of(&[a, b]));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

impl Instance {
    /// Checks the instance is consistent: every placement names a PM and
    /// NUMA nodes it has with the VM's span, no NUMA node is over capacity,
    /// no anti-affinity group has two VMs on one PM, group members exist.
    /// The message names the VM, PM or group at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.target.cpu == 0 {
            return Err("the target shape has 0 cores".into());
        }
        for pm in &self.pms {
            if pm.numa.is_empty() || pm.numa.len() > MAX_NUMA {
                return Err(format!(
                    "PM {}: has {} NUMA nodes (1 to {MAX_NUMA} supported)",
                    pm.id,
                    pm.numa.len()
                ));
            }
        }
        for vm in &self.vms {
            let Some(pm) = self.pms.get(vm.placement.pm) else {
                return Err(format!(
                    "VM {}: sits on PM index {} that does not exist",
                    vm.id, vm.placement.pm
                ));
            };
            if !(1..=2).contains(&vm.span) {
                return Err(format!(
                    "VM {}: spans {} NUMA nodes (1 or 2 supported)",
                    vm.id, vm.span
                ));
            }
            if vm.placement.numa.len() != usize::from(vm.span)
                || vm.placement.numa.iter().any(|n| n >= pm.numa.len())
            {
                return Err(format!(
                    "VM {}: pinned to NUMA nodes {:?} of PM {}, which has {} (the VM spans {})",
                    vm.id,
                    vm.placement.numa.to_vec(),
                    pm.id,
                    pm.numa.len(),
                    vm.span
                ));
            }
        }
        let placements: Vec<Placement> = self.vms.iter().map(|v| v.placement).collect();
        let free = crate::objective::free_per_node(self, &placements);
        for (pm, nodes) in self.pms.iter().zip(&free) {
            for (n, &(cpu, mem)) in nodes.iter().enumerate() {
                if cpu < 0 {
                    return Err(format!(
                        "PM {}: NUMA node {n} is over capacity by {} cores with the VMs placed on it",
                        pm.id, -cpu
                    ));
                }
                if mem < 0 {
                    return Err(format!(
                        "PM {}: NUMA node {n} is over capacity by {} MiB with the VMs placed on it",
                        pm.id, -mem
                    ));
                }
            }
        }
        for group in &self.groups {
            let mut seen = std::collections::HashMap::new();
            for &i in &group.vms {
                let Some(vm) = self.vms.get(i) else {
                    return Err(format!(
                        "anti-affinity group {}: VM index {i} does not exist",
                        group.name
                    ));
                };
                if let Some(other) = seen.insert(vm.placement.pm, i) {
                    return Err(format!(
                        "anti-affinity group {}: VMs {} and {} are both on PM {}",
                        group.name, self.vms[other].id, vm.id, self.pms[vm.placement.pm].id
                    ));
                }
            }
        }
        Ok(())
    }
}
