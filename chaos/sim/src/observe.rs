//! What the simulation sees of the cluster between steps, from outside
//! its hosts: whether it is whole, and which workloads run where. The
//! observer reads the coordinators' applied state and the simulated
//! machines directly (no request of its own crosses the simulated network,
//! so observing never changes what the clients see).

use std::collections::{BTreeMap, BTreeSet};

use herd_api::alloc::{AllocDesired, AllocStatus};
use herd_api::node::NodeStatus;
use herd_chaos::history::Sample;
use herd_chaos::runner::{CAREFUL_COUNT, CAREFUL_JOB, SERVICE_JOB};

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
/// both services' allocations running at their counts, and on the machines
/// exactly one workload per instance of each and no job instance twice.
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
    let jobs = [(SERVICE_JOB, service_count), (CAREFUL_JOB, CAREFUL_COUNT)];
    let (nodes_ready, at_count) = coordinator.read_state(|state| {
        let ready = agents.iter().all(|a| {
            state
                .nodes
                .get(&a.name)
                .is_some_and(|n| matches!(n.status, NodeStatus::Ready | NodeStatus::Draining))
        });
        let at_count = jobs.iter().all(|(job, count)| {
            state
                .allocs_of_job(job)
                .filter(|a| a.status == AllocStatus::Running && a.desired == AllocDesired::Run)
                .count()
                == *count as usize
        });
        (ready, at_count)
    });
    if !nodes_ready || !at_count {
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
    jobs.iter().all(|(job, count)| {
        let instances: BTreeSet<Option<u32>> = processes
            .iter()
            .filter(|p| p.job == *job)
            .map(|p| p.instance)
            .collect();
        let copies = processes.iter().filter(|p| p.job == *job).count();
        copies == *count as usize && instances.len() == *count as usize
    })
}

/// What runs on every machine now.
pub fn sample(agents: &[SimAgent], at_ns: u64, settled: bool) -> Sample {
    Sample {
        at_ns,
        settled,
        processes: agents.iter().flat_map(|a| a.machine.processes()).collect(),
    }
}
