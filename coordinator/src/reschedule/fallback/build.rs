//! The cluster state as the placement fallback's model
//! (`herd_reschedule::fallback`): the job's pending instances, the nodes
//! that could take them, the work on those nodes that may move or be
//! evicted, and where that work may go. A pure function of the state.
//!
//! Units: CPU in millicores, memory in MiB (a node's capacity rounded down,
//! a demand rounded up, so the model never sees more room than exists),
//! GPUs by count (which indices is left to `apply`).
//!
//! The rules, as the issue has them: only work of LOWER priority than the
//! job is touched: evicted when it is not in a gang, moved live when it can
//! move (`reschedule::live::movability`) to a node its own job's filters
//! accept. With `move_any_priority`, movable work of any priority may be
//! moved too (never evicted): a live migration keeps it running.
//!
//! Power: every budgeted power group (`power/<group>`) comes with its
//! headroom under the hard budget, counted as the scheduler counts it
//! (`power_limits_all_seen`: idle GPUs plus each allocation's and
//! reservation's expected draw above idle), and every instance, work item
//! and destination with the watts it commits there, so the solver's plans
//! pass the scheduler's power check. For a GPU job, lower-priority work on
//! the other nodes of a candidate's power groups is flexible too: evicting
//! it frees watts the job may need (the scheduler's preemption looks at
//! one node only).
//!
//! Preferences: the job's spread policy, its instances already on each
//! node, and each node's affinity bonus, as the scheduler's scoring sees
//! them (`herd_reschedule::fallback::Preference`).

use std::collections::BTreeMap;

use herd_api::alloc::{AllocDesired, Allocation};
use herd_api::resources::{Resources, MIB};
use herd_reschedule::fallback::{
    Node, PowerGroup, Preference, Problem, SpreadPref, Work, DIMS, MAX_INSTANCES, MAX_WORK,
};

use crate::machine::apply::migration::moves_whole;
use crate::planning::{alloc_views, missing_instances, node_views, power_class_of, request_for};
use crate::power::placement::power_limits_all_seen;
use crate::reschedule::live::movability;
use crate::scheduler::{
    could_hold, extra_watts_of, idle_watts_of, AllocView, NodeView, PlacementRequest, Spread,
};
use crate::state::{ClusterState, Job};

/// Most destinations one work item may be moved to (the roomiest ones):
/// keeps the model small on large clusters.
pub const MAX_DESTINATIONS: usize = 32;

/// One flexible work item of the model, in the cluster's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlexWork {
    /// The allocation.
    pub alloc_id: String,
    /// Its job.
    pub job: String,
    /// Its node.
    pub node: String,
    /// Its priority.
    pub priority: u32,
}

/// The model of one pending job, with the way back to names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// What the solver decides.
    pub problem: Problem,
    /// Node name per model node index.
    pub nodes: Vec<String>,
    /// Per model work index, what it stands for.
    pub work: Vec<FlexWork>,
    /// The job's pending instances, in the order they are placed.
    pub instances: Vec<u32>,
    /// The job.
    pub job: String,
    /// Its version (a plan for another version is stale).
    pub version: u64,
    /// Its priority.
    pub priority: u32,
    /// Whether the model holds everything the rules allow (no work or
    /// destination left out to keep it small): only then is "impossible" a
    /// proof.
    pub complete: bool,
}

/// The model's units of `r`: millicores, MiB (rounded up for a demand,
/// down for a capacity), GPUs.
fn units(r: &Resources, demand: bool) -> [u64; DIMS] {
    let mib = if demand {
        r.memory_bytes.div_ceil(MIB)
    } else {
        r.memory_bytes / MIB
    };
    [r.cpu_millis, mib, u64::from(r.gpus)]
}

/// Whether `node` passes `request`'s filters: schedulable, its
/// constraints, GPU model and size (what the scheduler's filter stage
/// checks).
fn passes(node: &NodeView, request: &PlacementRequest) -> bool {
    node.schedulable
        && request.constraints.iter().all(|c| c.matches(&node.labels))
        && could_hold(&node.capacity, &request.resources)
}

/// The model for `job`'s missing instances at `now_ms`; None when none is
/// missing (or too many are, for one model).
pub fn build(
    state: &ClusterState,
    job: &Job,
    now_ms: u64,
    move_any_priority: bool,
) -> Option<Built> {
    let mut instances = missing_instances(state, job, now_ms);
    if instances.is_empty() {
        return None;
    }
    instances.sort_unstable();
    let count = u32::try_from(instances.len()).ok()?;
    if count > MAX_INSTANCES {
        return None;
    }
    let request = request_for(job, instances.clone());
    let views = node_views(state);
    // Used room per node: every allocation holding resources, and what
    // migrations in flight hold on their targets.
    let mut used: BTreeMap<&str, [u64; DIMS]> = BTreeMap::new();
    let allocs = alloc_views(state);
    for a in &allocs {
        let u = used.entry(a.node.as_str()).or_insert([0; DIMS]);
        let d = units(&a.resources, true);
        for r in 0..DIMS {
            u[r] = u[r].saturating_add(d[r]);
        }
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(views.len());
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut over = Vec::with_capacity(views.len());
    for (i, v) in views.iter().enumerate() {
        let cap = units(&v.capacity, false);
        let u = used.get(v.name.as_str()).copied().unwrap_or([0; DIMS]);
        // A node holding more than it has (its capacity shrank) takes part
        // in nothing: its real free room is below zero.
        let over_full = (0..DIMS).any(|r| u[r] > cap[r]);
        over.push(over_full);
        nodes.push(Node {
            id: v.name.clone(),
            free: std::array::from_fn(|r| cap[r].saturating_sub(u[r])),
            takes_instances: !over_full && passes(v, &request),
            instance_watts: extra_watts_of(
                &v.capacity,
                request.power_class,
                u64::from(request.resources.gpus),
            ),
        });
        index.insert(v.name.as_str(), i);
    }

    let power = power_groups(state, &views, &allocs);
    // Nodes sharing a budgeted group with a node that could take the job,
    // for a job that commits watts: evicting GPU work there frees watts.
    let gpu_job = nodes
        .iter()
        .any(|n| n.takes_instances && n.instance_watts > 0);
    let mut power_peers = vec![false; nodes.len()];
    for g in &power {
        if gpu_job && g.nodes.iter().any(|&c| nodes[c].takes_instances) {
            for &n in &g.nodes {
                power_peers[n] = true;
            }
        }
    }

    // Flexible work: on the nodes that could take the job, and GPU work on
    // their power groups' other nodes.
    let mut flexible: Vec<(&Allocation, bool, Vec<usize>)> = Vec::new();
    for alloc in state.allocations.values() {
        if !alloc.status.holds_resources() || alloc.job == job.spec.name {
            continue;
        }
        let Some(&n) = index.get(alloc.node.as_str()) else {
            continue;
        };
        let frees_watts = power_peers[n] && alloc.resources.gpus > 0;
        if !(nodes[n].takes_instances || frees_watts) {
            continue;
        }
        let lower = alloc.priority < job.spec.priority;
        let evictable = lower && alloc.gang.is_none() && alloc.desired == AllocDesired::Run;
        let destinations = if (lower || move_any_priority) && movability(state, alloc).is_ok() {
            destinations(state, alloc, &views, &nodes, &over, n)
        } else {
            Vec::new()
        };
        if evictable || !destinations.is_empty() {
            flexible.push((alloc, evictable, destinations));
        }
    }
    // A group already over its budget takes no GPU instance in the model,
    // though evictions might bring it under: no proof then.
    let mut complete = flexible.iter().all(|(_, _, d)| d.len() < MAX_DESTINATIONS)
        && !power.iter().any(|g| {
            g.headroom < 0
                && g.nodes
                    .iter()
                    .any(|&n| nodes[n].takes_instances && nodes[n].instance_watts > 0)
        });
    if flexible.len() > MAX_WORK {
        // The lowest priorities first, then the largest.
        flexible.sort_by(|a, b| {
            (
                a.0.priority,
                std::cmp::Reverse(a.0.resources.cpu_millis),
                &a.0.id,
            )
                .cmp(&(
                    b.0.priority,
                    std::cmp::Reverse(b.0.resources.cpu_millis),
                    &b.0.id,
                ))
        });
        flexible.truncate(MAX_WORK);
        complete = false;
    }
    let mut work = Vec::with_capacity(flexible.len());
    let mut names = Vec::with_capacity(flexible.len());
    for (alloc, evictable, move_to) in flexible {
        let Some(&n) = index.get(alloc.node.as_str()) else {
            continue;
        };
        let class = power_class_of(state, &alloc.job);
        let gpus = u64::from(alloc.resources.gpus);
        let move_watts = move_to
            .iter()
            .map(|&d| extra_watts_of(&views[d].capacity, class, gpus))
            .collect();
        work.push(Work {
            id: alloc.id.clone(),
            node: n,
            demand: units(&alloc.resources, true),
            move_to,
            evictable,
            priority: alloc.priority,
            watts: extra_watts_of(&views[n].capacity, class, gpus),
            move_watts,
        });
        names.push(FlexWork {
            alloc_id: alloc.id.clone(),
            job: alloc.job.clone(),
            node: alloc.node.clone(),
            priority: alloc.priority,
        });
    }
    Some(Built {
        problem: Problem {
            nodes,
            work,
            instances: count,
            demand: units(&request.resources, true),
            all_or_nothing: request.gang,
            power,
            prefer: preference(&request, &views, &allocs),
        },
        nodes: views.iter().map(|v| v.name.clone()).collect(),
        work: names,
        instances,
        job: job.spec.name.clone(),
        version: job.version,
        priority: job.spec.priority,
        complete,
    })
}

/// Every budgeted power group holding some node, with its headroom: the
/// hard budget less what it commits now, counted as the scheduler's
/// power index counts it (idle GPUs of its nodes, and each allocation's
/// and migration reservation's expected draw above idle).
fn power_groups(state: &ClusterState, views: &[NodeView], allocs: &[AllocView]) -> Vec<PowerGroup> {
    let at: BTreeMap<&str, usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    power_limits_all_seen(state)
        .into_iter()
        .filter_map(|limit| {
            let member: Vec<bool> = views
                .iter()
                .map(|v| limit.group.contains(&v.labels))
                .collect();
            let members: Vec<usize> = (0..views.len()).filter(|&n| member[n]).collect();
            if members.is_empty() {
                return None;
            }
            let mut committed = limit.unseen_watts;
            for &n in &members {
                committed = committed.saturating_add(idle_watts_of(&views[n].capacity));
            }
            for a in allocs {
                if let Some(&n) = at.get(a.node.as_str()) {
                    if member[n] {
                        let gpus = u64::from(a.resources.gpus);
                        let watts = extra_watts_of(&views[n].capacity, a.power_class, gpus);
                        committed = committed.saturating_add(watts);
                    }
                }
            }
            let signed = |w: u64| i64::try_from(w).unwrap_or(i64::MAX);
            Some(PowerGroup {
                id: limit.group.to_string(),
                nodes: members,
                headroom: signed(limit.hard_watts()).saturating_sub(signed(committed)),
            })
        })
        .collect()
}

/// How the scheduler would rank the nodes for `request`: its spread
/// policy, the job's instances on each node (allocations and migration
/// reservations, as its spread counts them) and each node's affinity
/// bonus.
fn preference(request: &PlacementRequest, views: &[NodeView], allocs: &[AllocView]) -> Preference {
    let spread = match &request.spread {
        Spread::BinPack => SpreadPref::None,
        Spread::SpreadNodes => SpreadPref::Nodes,
        Spread::SpreadLabel(label) => {
            let of: Vec<Option<&str>> = views
                .iter()
                .map(|v| v.labels.get(label).map(String::as_str))
                .collect();
            let values: std::collections::BTreeSet<Option<&str>> = of.iter().copied().collect();
            let ids: BTreeMap<Option<&str>, usize> = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (v, i))
                .collect();
            SpreadPref::Groups(
                of.iter()
                    .map(|v| ids.get(v).copied().unwrap_or(0))
                    .collect(),
            )
        }
    };
    let existing = if spread == SpreadPref::None {
        Vec::new()
    } else {
        views
            .iter()
            .map(|v| {
                let count = allocs
                    .iter()
                    .filter(|a| a.job == request.job && a.node == v.name)
                    .count();
                u32::try_from(count).unwrap_or(u32::MAX)
            })
            .collect()
    };
    let bonus = if request.affinities.is_empty() {
        Vec::new()
    } else {
        views
            .iter()
            .map(|v| {
                request
                    .affinities
                    .iter()
                    .filter(|a| a.matches(&v.labels))
                    .map(|a| i64::from(a.weight))
                    .sum()
            })
            .collect()
    };
    Preference {
        spread,
        existing,
        bonus,
    }
}

/// The nodes `alloc` (on model node `from`) may move to: schedulable, not
/// over-full, accepted by its own job's filters, with a driver that moves
/// its kind; the roomiest [`MAX_DESTINATIONS`] of those where it fits now
/// or that could take the job (room there may be freed by other moves).
fn destinations(
    state: &ClusterState,
    alloc: &Allocation,
    views: &[NodeView],
    nodes: &[Node],
    over: &[bool],
    from: usize,
) -> Vec<usize> {
    let Some(job) = state.jobs.get(&alloc.job) else {
        return Vec::new();
    };
    let request = request_for(job, Vec::new());
    let demand = units(&alloc.resources, true);
    let mut out: Vec<usize> = (0..views.len())
        .filter(|&d| d != from && !over[d])
        .filter(|&d| passes(&views[d], &request))
        .filter(|&d| moves_whole(state, &views[d].name, &job.spec.task.driver).is_ok())
        .filter(|&d| nodes[d].takes_instances || (0..DIMS).all(|r| nodes[d].free[r] >= demand[r]))
        .collect();
    out.sort_by(|&a, &b| {
        (std::cmp::Reverse(nodes[a].free[0]), &nodes[a].id)
            .cmp(&(std::cmp::Reverse(nodes[b].free[0]), &nodes[b].id))
    });
    out.truncate(MAX_DESTINATIONS);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use herd_api::job::JobType;

    use super::*;
    use crate::reschedule::live::tests::cluster;

    /// Submits a pending job `name` of `millis` millicores at `priority`
    /// (nothing placed).
    pub(crate) fn pending(state: &mut ClusterState, name: &str, millis: u64, priority: u32) {
        let mut spec = crate::testkit::spec(name, JobType::Service, 1);
        spec.task.driver = "simvm".into();
        spec.task.resources.cpu_millis = millis;
        spec.priority = priority;
        state.jobs.insert(
            name.to_string(),
            Job {
                spec,
                version: 1,
                status: crate::state::JobStatus::Pending,
                submitted_at_ms: 0,
                updated_at_ms: 0,
                modify_index: 1,
                blocked: Some("no room".into()),
            },
        );
    }

    /// Three 4-CPU nodes, each with one 1-CPU simvm allocation of
    /// priority 50 (the testkit's default), all running and movable.
    pub(crate) fn spread() -> ClusterState {
        let mut state = cluster(&[("a", 1000, 3)]);
        let ids: Vec<String> = state.allocs_of_job("a").map(|a| a.id.clone()).collect();
        for (id, node) in ids.iter().zip(["n1", "n2", "n3"]) {
            state.move_alloc(id, node);
        }
        state
    }

    #[test]
    fn lower_priority_work_on_candidate_nodes_is_flexible_and_nothing_else() {
        let mut state = spread();
        pending(&mut state, "big", 4000, 60);
        let built = build(&state, &state.jobs["big"].clone(), 0, false).expect("pending");
        assert_eq!(built.instances, vec![0]);
        assert_eq!(built.problem.demand[0], 4000);
        assert!(built.problem.nodes.iter().all(|n| n.takes_instances));
        // Every allocation is lower: evictable and movable to the other two.
        assert_eq!(built.work.len(), 3);
        assert!(built.problem.work.iter().all(|w| w.evictable));
        assert!(built.problem.work.iter().all(|w| w.move_to.len() == 2));
        assert!(built.complete);

        // At the same priority nothing may be touched...
        pending(&mut state, "peer", 4000, 50);
        let built = build(&state, &state.jobs["peer"].clone(), 0, false).expect("pending");
        assert!(built.work.is_empty());
        // ... unless moves of any priority are allowed (moves only).
        let built = build(&state, &state.jobs["peer"].clone(), 0, true).expect("pending");
        assert_eq!(built.work.len(), 3);
        assert!(built.problem.work.iter().all(|w| !w.evictable));
        assert!(built.problem.work.iter().all(|w| !w.move_to.is_empty()));
    }
}
