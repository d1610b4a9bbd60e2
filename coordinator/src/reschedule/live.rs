//! The live cluster as `herd-reschedule`'s model: nodes become PMs,
//! allocations holding resources become VMs, pure conversion from a
//! [`ClusterState`].
//!
//! herd nodes do not report a NUMA topology (their capacity is one CPU and
//! memory figure), so each node is one PM with ONE NUMA node holding its
//! whole capacity, and every VM sits on NUMA node 0 with span 1. CPU is
//! counted in millicores (the model's integer "cores" unit), memory in MiB
//! (a node's capacity rounded down, an allocation's demand rounded up, so
//! the model never sees more room than there is).

use std::collections::BTreeMap;

use herd_api::alloc::{AllocDesired, AllocStatus, Allocation};
use herd_api::node::NodeStatus;
use herd_api::resources::MIB;
use herd_reschedule::model::{NumaCap, NumaSet, Pm, Vm};
use herd_reschedule::{Instance, Placement, Shape};

use crate::machine::apply::migration::{active_migration_of, moves_whole};
use crate::state::ClusterState;

/// What one VM of the model stands for in the cluster.
///
/// Exists so a plan's VM indices map back to allocation ids and nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVm {
    /// The allocation's id (for a reservation, `ALLOC@TARGET`).
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// The node it holds resources on.
    pub node: String,
    /// What it holds there.
    pub cpu_millis: u64,
    /// Memory it holds there, bytes.
    pub memory_bytes: u64,
}

/// The cluster as a rescheduling instance, with the way back to names.
#[derive(Debug, Clone)]
pub struct LiveModel {
    /// The instance the planners solve; PM `i` is node `instance.pms[i].id`.
    pub instance: Instance,
    /// Per VM index of `instance`, what it stands for.
    pub vms: Vec<LiveVm>,
    /// Registered nodes.
    pub nodes: usize,
    /// Nodes that count in the fragment rate and receive moves (ready and
    /// eligible, not over capacity).
    pub active_nodes: usize,
    /// Allocations holding resources (reservations of moves in flight not
    /// counted).
    pub allocations: usize,
    /// How many of them a plan may move.
    pub movable: usize,
    /// Why the others may not move: reason, count.
    pub immovable: BTreeMap<String, u32>,
}

/// Why an allocation may not be moved by a plan; the reasons are
/// categories, so a reply can count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Immovable {
    /// It is not running, or is being stopped.
    NotRunning,
    /// It belongs to a gang (members move together: not supported).
    Gang,
    /// A migration of it is in flight.
    Moving,
    /// Its job is gone.
    NoJob,
    /// Its node's driver for its kind cannot move a running workload.
    Driver,
    /// Its node takes part in no plan (down, draining, not eligible, or
    /// over capacity).
    InactiveNode,
}

impl Immovable {
    /// A short phrase for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Immovable::NotRunning => "not running",
            Immovable::Gang => "gang member",
            Immovable::Moving => "already moving",
            Immovable::NoJob => "job gone",
            Immovable::Driver => "driver cannot move it live",
            Immovable::InactiveNode => "node not ready or not eligible",
        }
    }
}

/// Whether `alloc` may be moved by a plan: running and meant to, not in a
/// gang, not moving already, and its node's driver for its job's kind can
/// move a running workload (as the node's agent declared:
/// `ClusterState::driver_capabilities`). Whether a target can take it is
/// not decided here but by the migration rules, move by move.
pub fn movability(state: &ClusterState, alloc: &Allocation) -> Result<(), Immovable> {
    if alloc.desired != AllocDesired::Run || alloc.status != AllocStatus::Running {
        return Err(Immovable::NotRunning);
    }
    if alloc.gang.is_some() {
        return Err(Immovable::Gang);
    }
    if active_migration_of(state, &alloc.id).is_some() {
        return Err(Immovable::Moving);
    }
    let Some(job) = state.jobs.get(&alloc.job) else {
        return Err(Immovable::NoJob);
    };
    moves_whole(state, &alloc.node, &job.spec.task.driver).map_err(|_| Immovable::Driver)
}

/// Millicores as the model's integer CPU unit (saturating: no node or
/// allocation has 4 million cores).
fn cpu_units(millis: u64) -> u32 {
    u32::try_from(millis).unwrap_or(u32::MAX)
}

/// Bytes as MiB, rounded up (a demand) or down (a capacity).
fn mib(bytes: u64, round_up: bool) -> u64 {
    if round_up {
        bytes.div_ceil(MIB)
    } else {
        bytes / MIB
    }
}

/// The target shape in model units: millicores and MiB (rounded up: a
/// slot must hold the whole shape).
pub fn shape(cpu_millis: u64, memory_bytes: u64) -> Shape {
    Shape {
        cpu: cpu_units(cpu_millis).max(1),
        mem_mb: mib(memory_bytes, true),
    }
}

/// Builds the model of `state` for target `shape` (model units, see
/// [`shape`]).
///
/// - Every registered node is a PM of one NUMA node; it is active when it is
///   ready and eligible. A node whose allocations hold more than its
///   capacity (its capacity shrank) is made inactive with its capacity
///   raised to what they hold, so the model stays consistent and nothing
///   moves to or from it.
/// - Every allocation holding resources (pending or running) on a
///   registered node is a VM there; movable per [`movability`] and only on
///   an active node.
/// - Every migration in flight holds its allocation's resources on its
///   target too: an immovable VM there (`ALLOC@TARGET`).
///
/// herd has no hard anti-affinity between allocations (spread is a
/// preference), so the model has no groups; job constraints, GPUs and
/// drivers on the target are left to the migration rules, which the planner
/// replays on each plan (see `super::plan`).
pub fn build(state: &ClusterState, target: Shape) -> LiveModel {
    let index: BTreeMap<&str, usize> = state
        .nodes
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let mut pms: Vec<Pm> = state
        .nodes
        .values()
        .map(|n| Pm {
            id: n.name.clone(),
            active: n.status == NodeStatus::Ready && n.eligible,
            numa: vec![NumaCap {
                cpu: cpu_units(n.capacity.cpu_millis),
                mem_mb: mib(n.capacity.memory_bytes, false),
            }],
        })
        .collect();
    let mut vms = Vec::new();
    let mut live = Vec::new();
    let mut immovable: BTreeMap<String, u32> = BTreeMap::new();
    let mut allocations = 0usize;
    let mut movable = 0usize;
    let on_node = NumaSet::of(&[0]);
    for alloc in state.allocations.values() {
        if !alloc.status.holds_resources() {
            continue;
        }
        let Some(&pm) = index.get(alloc.node.as_str()) else {
            continue;
        };
        allocations += 1;
        let can_move = if pms[pm].active {
            movability(state, alloc)
        } else {
            Err(Immovable::InactiveNode)
        };
        match can_move {
            Ok(()) => movable += 1,
            Err(why) => *immovable.entry(why.as_str().to_string()).or_default() += 1,
        }
        vms.push(Vm {
            id: alloc.id.clone(),
            numa_cpu: cpu_units(alloc.resources.cpu_millis),
            numa_mem_mb: mib(alloc.resources.memory_bytes, true),
            span: 1,
            movable: can_move.is_ok(),
            placement: Placement { pm, numa: on_node },
            groups: Vec::new(),
        });
        live.push(LiveVm {
            alloc_id: alloc.id.clone(),
            job: alloc.job.clone(),
            node: alloc.node.clone(),
            cpu_millis: alloc.resources.cpu_millis,
            memory_bytes: alloc.resources.memory_bytes,
        });
    }
    for m in state.migrations.values().filter(|m| m.is_active()) {
        let (Some(alloc), Some(&pm)) = (
            state.allocations.get(&m.alloc_id),
            index.get(m.target.as_str()),
        ) else {
            continue;
        };
        let id = format!("{}@{}", alloc.id, m.target);
        vms.push(Vm {
            id: id.clone(),
            numa_cpu: cpu_units(alloc.resources.cpu_millis),
            numa_mem_mb: mib(alloc.resources.memory_bytes, true),
            span: 1,
            movable: false,
            placement: Placement { pm, numa: on_node },
            groups: Vec::new(),
        });
        live.push(LiveVm {
            alloc_id: id,
            job: alloc.job.clone(),
            node: m.target.clone(),
            cpu_millis: alloc.resources.cpu_millis,
            memory_bytes: alloc.resources.memory_bytes,
        });
    }
    fit_over_capacity(&mut pms, &mut vms, &mut immovable, &mut movable);
    let active_nodes = pms.iter().filter(|p| p.active).count();
    LiveModel {
        instance: Instance {
            pms,
            vms,
            groups: Vec::new(),
            target,
        },
        vms: live,
        nodes: state.nodes.len(),
        active_nodes,
        allocations,
        movable,
        immovable,
    }
}

/// Makes every node whose VMs hold more than its capacity inactive, its
/// capacity raised to what they hold, and its VMs immovable (counted under
/// "node over capacity").
fn fit_over_capacity(
    pms: &mut [Pm],
    vms: &mut [Vm],
    immovable: &mut BTreeMap<String, u32>,
    movable: &mut usize,
) {
    let mut used = vec![(0u64, 0u64); pms.len()];
    for vm in vms.iter() {
        let u = &mut used[vm.placement.pm];
        u.0 = u.0.saturating_add(u64::from(vm.numa_cpu));
        u.1 = u.1.saturating_add(vm.numa_mem_mb);
    }
    for (pm, &(cpu, mem)) in pms.iter_mut().zip(&used) {
        let cap = pm.numa[0];
        if cpu > u64::from(cap.cpu) || mem > cap.mem_mb {
            pm.active = false;
            pm.numa[0] = NumaCap {
                cpu: u32::try_from(cpu).unwrap_or(u32::MAX).max(cap.cpu),
                mem_mb: mem.max(cap.mem_mb),
            };
        }
    }
    for vm in vms.iter_mut() {
        if vm.movable && !pms[vm.placement.pm].active {
            vm.movable = false;
            *movable = movable.saturating_sub(1);
            *immovable.entry("node over capacity".into()).or_default() += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use herd_api::capabilities::{DriverCaps, MigrationMode, NodeDrivers};
    use herd_api::job::JobType;
    use herd_reschedule::objective::initial_fragment_rate;

    use super::*;
    use crate::testkit::{alloc_update, node, place, report, spec};

    fn drivers(mode: MigrationMode) -> NodeDrivers {
        [(
            "simvm".to_string(),
            DriverCaps {
                migration: mode,
                pause: true,
                power_cap: false,
            },
        )]
        .into()
    }

    /// Three 4-CPU nodes, `jobs` simvm jobs of `millis` each placed in
    /// order, all reported running, every node's simvm driver able to move.
    pub(crate) fn cluster(jobs: &[(&str, u64, u32)]) -> ClusterState {
        let mut state = ClusterState::default();
        let specs = jobs
            .iter()
            .map(|&(name, millis, count)| {
                let mut s = spec(name, JobType::Service, count);
                s.task.driver = "simvm".into();
                s.task.resources.cpu_millis = millis;
                s
            })
            .collect();
        let first = place(&mut state, &["n1", "n2", "n3"], specs, 0);
        for (index, n) in (first..).zip(["n1", "n2", "n3"]) {
            state
                .node_drivers
                .insert(n.into(), drivers(MigrationMode::LivePreCopy));
            let updates: Vec<_> = state
                .allocs_on_node(n)
                .map(|a| alloc_update(a, AllocStatus::Running))
                .collect();
            report(&mut state, index, n, updates, 1);
        }
        state
    }

    #[test]
    fn nodes_become_one_numa_node_pms_and_allocations_vms_on_them() {
        let state = cluster(&[("a", 1000, 3), ("b", 500, 2)]);
        let model = build(&state, shape(2000, 0));
        let inst = &model.instance;
        assert_eq!(inst.pms.len(), 3);
        assert!(inst.pms.iter().all(|p| p.active && p.numa.len() == 1));
        assert_eq!(
            inst.pms[0].numa[0].cpu,
            node("n1").capacity.cpu_millis as u32
        );
        assert_eq!(inst.pms[0].numa[0].mem_mb, 8 * 1024);
        assert_eq!(inst.vms.len(), 5);
        assert_eq!((model.allocations, model.movable), (5, 5));
        for (vm, live) in inst.vms.iter().zip(&model.vms) {
            let alloc = &state.allocations[&live.alloc_id];
            assert_eq!(inst.pms[vm.placement.pm].id, alloc.node);
            assert_eq!(u64::from(vm.numa_cpu), alloc.resources.cpu_millis);
            assert_eq!(vm.numa_mem_mb, 64);
            assert_eq!(vm.placement.numa, NumaSet::of(&[0]));
        }
        inst.check().expect("consistent");
        // FR recomputed by hand from the allocations per node.
        let mut used: BTreeMap<&str, u64> = BTreeMap::new();
        for a in state.allocations.values() {
            *used.entry(a.node.as_str()).or_default() += a.resources.cpu_millis;
        }
        let (mut free, mut frag) = (0u64, 0u64);
        for n in ["n1", "n2", "n3"] {
            let f = 4000 - used.get(n).copied().unwrap_or(0);
            free += f;
            frag += f % 2000;
        }
        let fr = initial_fragment_rate(inst, model.instance.target);
        assert!((fr - frag as f64 / free as f64).abs() < 1e-12, "{fr}");
    }

    #[test]
    fn what_cannot_move_is_immovable_and_counted_by_reason() {
        let mut state = cluster(&[("a", 1000, 2), ("b", 1000, 1)]);
        // b's node can only restart its kind; one of a's allocs is stopping.
        let b = state.allocs_of_job("b").next().expect("b").clone();
        state
            .node_drivers
            .insert(b.node.clone(), drivers(MigrationMode::None));
        let a: Vec<String> = state
            .allocs_of_job("a")
            .filter(|a| a.node != b.node)
            .map(|a| a.id.clone())
            .collect();
        if let Some(id) = a.first() {
            state.allocations.get_mut(id).expect("a").desired = AllocDesired::Stop;
        }
        let model = build(&state, shape(1000, 0));
        let by_id = |id: &str| {
            let i = model.vms.iter().position(|v| v.alloc_id == id).expect("vm");
            model.instance.vms[i].movable
        };
        assert!(!by_id(&b.id));
        if let Some(id) = a.first() {
            assert!(!by_id(id));
        }
        // Everything on b's node runs under the driver that cannot move.
        let on_b = state.allocs_on_node(&b.node).count() as u32;
        assert_eq!(
            model.immovable.get("driver cannot move it live"),
            Some(&on_b)
        );
        let stopping = u32::from(!a.is_empty());
        assert_eq!(
            model.immovable.get("not running").copied().unwrap_or(0),
            stopping
        );
        assert_eq!(
            model.movable + model.immovable.values().sum::<u32>() as usize,
            model.allocations
        );
    }

    #[test]
    fn inactive_and_over_full_nodes_take_part_in_nothing() {
        let mut state = cluster(&[("a", 1000, 3)]);
        let on_n1 = state.allocs_on_node("n1").count();
        state.nodes.get_mut("n2").expect("n2").eligible = false;
        // n1 shrank below what runs there.
        state.nodes.get_mut("n1").expect("n1").capacity.cpu_millis = 100;
        let model = build(&state, shape(1000, 0));
        model.instance.check().expect("consistent despite n1");
        let pm = |name: &str| {
            model
                .instance
                .pms
                .iter()
                .find(|p| p.id == name)
                .expect("pm")
        };
        assert!(!pm("n1").active && !pm("n2").active && pm("n3").active);
        assert_eq!(model.active_nodes, 1);
        assert!(model
            .instance
            .vms
            .iter()
            .filter(|v| model.instance.pms[v.placement.pm].id != "n3")
            .all(|v| !v.movable));
        if on_n1 > 0 {
            assert_eq!(
                model.immovable.get("node over capacity").copied(),
                Some(on_n1 as u32)
            );
        }
    }

    #[test]
    fn a_move_in_flight_holds_room_on_its_target_too() {
        use crate::machine::apply::migration::{start_migration, MoveRequest};
        use crate::state::ChangeLog;
        let mut state = cluster(&[("a", 1000, 1)]);
        let a = state.allocs_of_job("a").next().expect("a").clone();
        let target = if a.node == "n1" { "n2" } else { "n1" };
        let mut ops = Vec::new();
        start_migration(
            &mut state,
            100,
            MoveRequest {
                alloc_id: &a.id,
                target,
                downtime_limit_ms: 300,
                bandwidth_bytes_per_sec: None,
            },
            2,
            &mut ChangeLog::new(&mut ops),
        );
        let model = build(&state, shape(1000, 0));
        assert_eq!(model.instance.vms.len(), 2);
        let held: Vec<(&str, bool)> = model
            .instance
            .vms
            .iter()
            .map(|v| (model.instance.pms[v.placement.pm].id.as_str(), v.movable))
            .collect();
        assert!(held.contains(&(a.node.as_str(), false)), "{held:?}");
        assert!(held.contains(&(target, false)), "{held:?}");
        assert_eq!(model.immovable.get("already moving"), Some(&1));
    }
}
