//! The simulation's faults: a schedule drawn from the seed, and how each
//! fault is put into force and mended on turmoil's hosts.

use std::time::Duration;

use herd_chaos::nemesis::rng::Rng;

use crate::hosts::{self, coordinator_host, SimAgent, Slot};

/// A kind of fault the simulation injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Cut the leader (or a random member) off from the other members.
    IsolateLeader,
    /// Split the members into two random halves.
    Halves,
    /// Crash a random member; restart it on its store at the heal.
    Crash,
    /// Crash every member at once; restart them all at the heal, each on
    /// what its store had synced (`herd chaos run`'s restart-all, which
    /// once served a stale read after the restart: docs/chaos.md).
    CrashAll,
    /// Crash a node agent; its workloads run on (as processes outlive a
    /// killed agent); restart it at the heal, when it re-adopts them.
    AgentCrash,
    /// A node goes down with its workloads; its agent starts again at the
    /// heal on an empty machine.
    NodeLoss,
    /// Cut a node agent off from every coordinator.
    AgentPartition,
}

impl SimFault {
    /// The name `herd chaos sim --fault` takes.
    pub fn name(self) -> &'static str {
        match self {
            SimFault::IsolateLeader => "isolate-leader",
            SimFault::Halves => "halves",
            SimFault::Crash => "crash",
            SimFault::CrashAll => "crash-all",
            SimFault::AgentCrash => "agent-crash",
            SimFault::NodeLoss => "node-loss",
            SimFault::AgentPartition => "agent-partition",
        }
    }

    /// The fault named `name`.
    pub fn by_name(name: &str) -> Option<SimFault> {
        ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this fault needs node agents.
    pub fn needs_agents(self) -> bool {
        matches!(
            self,
            SimFault::AgentCrash | SimFault::NodeLoss | SimFault::AgentPartition
        )
    }
}

/// Every kind, coordinators' first.
pub const ALL: [SimFault; 7] = [
    SimFault::IsolateLeader,
    SimFault::Halves,
    SimFault::Crash,
    SimFault::CrashAll,
    SimFault::AgentCrash,
    SimFault::NodeLoss,
    SimFault::AgentPartition,
];

/// One scheduled fault: when (after the clients started), for how long, what.
pub type Window = (Duration, Duration, SimFault);

/// Windows within `duration` of faults drawn from `kinds`: after 3 s,
/// faults of 1-4 s separated by 2-4 s, healed before the clients stop.
/// Agent faults are drawn only when there are agents.
pub fn schedule(
    rng: &mut Rng,
    duration: Duration,
    kinds: &[SimFault],
    agents: bool,
) -> Vec<Window> {
    let kinds: Vec<SimFault> = kinds
        .iter()
        .copied()
        .filter(|k| agents || !k.needs_agents())
        .collect();
    let mut windows = Vec::new();
    if kinds.is_empty() {
        return windows;
    }
    let end = duration.as_millis() as u64;
    let mut at = 3_000;
    loop {
        let length = rng.between(1_000, 4_000);
        if at + length > end {
            break;
        }
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        windows.push((
            Duration::from_millis(at),
            Duration::from_millis(length),
            kind,
        ));
        at += length + rng.between(2_000, 4_000);
    }
    windows
}

/// A fault in force and what mends it.
pub enum Active {
    /// Messages held between these host pairs.
    Partition(Vec<(String, String)>),
    /// These hosts are crashed; they restart at the heal.
    Crashed(Vec<String>),
}

/// What [`inject`] did.
pub struct Injected {
    /// What mends it.
    pub active: Active,
    /// What was done, for the report.
    pub what: String,
    /// Whether it took the leader away (crashed it or cut it off from a
    /// majority).
    pub took_leader: bool,
    /// The node whose agent it took away, if it did.
    pub lost_node: Option<String>,
}

/// The cluster a fault is injected into.
pub struct Targets<'a> {
    /// Coordinators by id - 1.
    pub slots: &'a [Slot],
    /// Node agents.
    pub agents: &'a [SimAgent],
    /// The leader, as the members know it.
    pub leader: Option<u64>,
}

/// Puts `kind` into force.
pub fn inject(
    sim: &mut turmoil::Sim<'_>,
    kind: SimFault,
    targets: &Targets<'_>,
    rng: &mut Rng,
) -> Injected {
    let mut ids: Vec<u64> = (1..=targets.slots.len() as u64).collect();
    rng.shuffle(&mut ids);
    let leader = targets.leader;
    let cut = |side_a: &[String], side_b: &[String]| {
        let mut pairs = Vec::new();
        for a in side_a {
            for b in side_b {
                pairs.push((a.clone(), b.clone()));
            }
        }
        pairs
    };
    let names = |ids: &[u64]| ids.iter().map(|i| coordinator_host(*i)).collect::<Vec<_>>();
    let (pairs, took_leader, lost_node) = match kind {
        SimFault::Crash => {
            let victim = coordinator_host(ids[0]);
            sim.crash(victim.as_str());
            hosts::clear(&targets.slots[(ids[0] - 1) as usize]);
            return Injected {
                active: Active::Crashed(vec![victim.clone()]),
                what: format!("crash {victim}"),
                took_leader: leader == Some(ids[0]),
                lost_node: None,
            };
        }
        SimFault::CrashAll => {
            ids.sort_unstable();
            let victims = names(&ids);
            for (victim, slot) in victims.iter().zip(targets.slots) {
                sim.crash(victim.as_str());
                hosts::clear(slot);
            }
            return Injected {
                what: format!("crash all: {}", victims.join(" ")),
                active: Active::Crashed(victims),
                took_leader: leader.is_some(),
                lost_node: None,
            };
        }
        SimFault::AgentCrash | SimFault::NodeLoss => {
            let victim = busy_agent(targets.agents, rng);
            sim.crash(victim.name.as_str());
            let what = if kind == SimFault::NodeLoss {
                let lost = victim.machine.power_off();
                format!("node {} down with its {lost} workloads", victim.name)
            } else {
                format!("crash agent {}", victim.name)
            };
            return Injected {
                active: Active::Crashed(vec![victim.name.clone()]),
                what,
                took_leader: false,
                lost_node: Some(victim.name.clone()),
            };
        }
        SimFault::AgentPartition => {
            let victim = busy_agent(targets.agents, rng);
            let mut all: Vec<u64> = ids.clone();
            all.sort_unstable();
            (
                cut(std::slice::from_ref(&victim.name), &names(&all)),
                false,
                Some(victim.name.clone()),
            )
        }
        SimFault::IsolateLeader => {
            let target = leader.filter(|l| ids.contains(l)).unwrap_or(ids[0]);
            let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != target).collect();
            (
                cut(&names(&[target]), &names(&rest)),
                leader == Some(target),
                None,
            )
        }
        SimFault::Halves => {
            // The smaller half first: a leader there has lost its majority.
            let half = ids.len() / 2;
            let took_leader = leader.is_some_and(|l| ids[..half].contains(&l));
            (
                cut(&names(&ids[..half]), &names(&ids[half..])),
                took_leader,
                None,
            )
        }
    };
    for (a, b) in &pairs {
        sim.hold(a.as_str(), b.as_str());
    }
    let what = format!(
        "partition {}",
        pairs
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Injected {
        active: Active::Partition(pairs),
        what,
        took_leader,
        lost_node,
    }
}

/// Mends `active`.
pub fn heal(sim: &mut turmoil::Sim<'_>, active: &Active) {
    match active {
        Active::Partition(pairs) => {
            for (a, b) in pairs {
                sim.release(a.as_str(), b.as_str());
            }
        }
        Active::Crashed(hosts) => {
            for host in hosts {
                sim.bounce(host.as_str());
            }
        }
    }
}

/// An agent whose machine runs work (else any agent): losing it makes
/// the cluster reschedule something.
fn busy_agent<'a>(agents: &'a [SimAgent], rng: &mut Rng) -> &'a SimAgent {
    let busy: Vec<&SimAgent> = agents
        .iter()
        .filter(|a| !a.machine.processes().is_empty())
        .collect();
    match rng.pick(&busy) {
        Some(agent) => agent,
        None => &agents[rng.below(agents.len() as u64) as usize],
    }
}
