//! What the simulation sees of the cluster between steps, from outside
//! its hosts: whether it is whole, and which workloads run where. The
//! observer reads the coordinators' applied state and the simulated
//! machines directly (no request of its own crosses the simulated network,
//! so observing never changes what the clients see).

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::{AllocDesired, AllocStatus};
use herd_api::node::NodeStatus;
use herd_chaos::history::Sample;
use herd_chaos::runner::SERVICE_JOB;

use crate::hosts::{self, SimAgent, Slot};

/// The leader every coordinator agrees on, if they all run and agree.
pub fn agreed_leader(slots: &[Slot]) -> Option<u64> {
    let mut agreed = None;
    for slot in slots {
        let coordinator = hosts::running(slot)?;
        let leader = coordinator.raft().metrics().borrow().current_leader?;
        if agreed.is_some_and(|l| l != leader) {
            return None;
        }
        agreed = Some(leader);
    }
    agreed
}

/// The leader a majority of all members (running ones) name.
pub fn majority_leader(slots: &[Slot]) -> Option<u64> {
    let mut named: BTreeMap<u64, usize> = BTreeMap::new();
    for slot in slots {
        if let Some(leader) =
            hosts::running(slot).and_then(|c| c.raft().metrics().borrow().current_leader)
        {
            *named.entry(leader).or_default() += 1;
        }
    }
    named
        .into_iter()
        .find(|(_, count)| *count > slots.len() / 2)
        .map(|(leader, _)| leader)
}

/// The leader as the first running member that knows one says.
pub fn some_leader(slots: &[Slot]) -> Option<u64> {
    slots.iter().find_map(|slot| {
        hosts::running(slot).and_then(|c| c.raft().metrics().borrow().current_leader)
    })
}

/// Whether the cluster is whole, as `chaos run` judges it: a leader every
/// member agrees on, every agent's node ready (or draining) in its state,
/// the service's allocations running at their count, and on the machines
/// exactly one workload per service instance and no job instance twice.
pub fn whole(slots: &[Slot], agents: &[SimAgent], service_count: u32) -> bool {
    let Some(leader) = agreed_leader(slots) else {
        return false;
    };
    let Some(coordinator) = slots
        .get((leader as usize).wrapping_sub(1))
        .and_then(hosts::running)
    else {
        return false;
    };
    if agents.is_empty() {
        return true;
    }
    let (nodes_ready, service_running) = coordinator.read_state(|state| {
        let ready = agents.iter().all(|a| {
            state
                .nodes
                .get(&a.name)
                .is_some_and(|n| matches!(n.status, NodeStatus::Ready | NodeStatus::Draining))
        });
        let running = state
            .allocs_of_job(SERVICE_JOB)
            .filter(|a| a.status == AllocStatus::Running && a.desired == AllocDesired::Run)
            .count();
        (ready, running)
    });
    if !nodes_ready || service_running != service_count as usize {
        return false;
    }
    let processes: Vec<_> = agents.iter().flat_map(|a| a.machine.processes()).collect();
    let mut instances = BTreeSet::new();
    if !processes
        .iter()
        .filter_map(|p| p.instance.map(|i| (p.job.as_str(), i)))
        .all(|key| instances.insert(key))
    {
        return false;
    }
    let service: BTreeSet<Option<u32>> = processes
        .iter()
        .filter(|p| p.job == SERVICE_JOB)
        .map(|p| p.instance)
        .collect();
    let service_processes = processes.iter().filter(|p| p.job == SERVICE_JOB).count();
    service_processes == service_count as usize && service.len() == service_count as usize
}

/// What runs on every machine now.
pub fn sample(agents: &[SimAgent], at_ns: u64, settled: bool) -> Sample {
    Sample {
        at_ns,
        settled,
        processes: agents.iter().flat_map(|a| a.machine.processes()).collect(),
    }
}
