//! Nemeses: the faults a chaos run injects into a real cluster, and how each
//! is healed. Every target is drawn from the run's seeded [`rng::Rng`].
//!
//! Network partitions are not here yet: they need each coordinator to dial
//! its peers through a fault-injecting proxy (see docs/chaos.md).

pub mod rng;
pub mod schedule;

use serde::Serialize;

use crate::agents::AgentSet;
use crate::process_cluster::{ClusterError, ProcessCluster};
use rng::Rng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` one random coordinator; restart it at the heal.
    KillOne,
    /// `kill -9` the leader.
    KillLeader,
    /// `kill -9` a majority (the cluster is unavailable until the heal).
    KillMajority,
    /// `kill -9` every coordinator.
    KillAll,
    /// SIGSTOP one random coordinator; SIGCONT at the heal.
    PauseOne,
    /// SIGSTOP the leader.
    PauseLeader,
    /// `kill -9` one node agent and its workloads (a node losing power);
    /// restart the agent at the heal.
    KillNode,
    /// `kill -9` one node agent only; its workloads run on unsupervised.
    KillAgent,
}

/// A fault in force, and what undoes it.
#[derive(Debug, Clone)]
pub struct Active {
    /// What was done, for the report (`kill -9 members [2] (leader)`).
    pub what: String,
    heal: Heal,
}

#[derive(Debug, Clone)]
enum Heal {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    RestartAgents(Vec<String>),
}

/// A nemesis could not act on the cluster.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// The harness failed to kill, signal or start a process.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The fault needs node agents and the scenario has none.
    #[error("fault {0:?} needs node agents")]
    NoAgents(Fault),
}

/// Injects `fault`; `leader` is the current leader when known.
pub fn inject(
    fault: Fault,
    cluster: &mut ProcessCluster,
    agents: Option<&mut AgentSet>,
    leader: Option<u64>,
    rng: &mut Rng,
) -> Result<Active, NemesisError> {
    let mut ids = cluster.ids();
    rng.shuffle(&mut ids);
    // The leader when asked for it (and known), else a random member.
    let leader_or_any = |ids: &[u64]| -> (u64, &'static str) {
        match leader.filter(|l| ids.contains(l)) {
            Some(l) => (l, " (leader)"),
            None => (ids.first().copied().unwrap_or(1), " (leader unknown)"),
        }
    };
    let active = match fault {
        Fault::KillOne | Fault::KillLeader | Fault::KillMajority | Fault::KillAll => {
            let (targets, note) = match fault {
                Fault::KillOne => (ids[..1.min(ids.len())].to_vec(), ""),
                Fault::KillLeader => {
                    let (id, note) = leader_or_any(&ids);
                    (vec![id], note)
                }
                Fault::KillMajority => {
                    // Include the leader so the survivors must elect anew.
                    let majority = ids.len() / 2 + 1;
                    let (first, note) = leader_or_any(&ids);
                    let mut targets = vec![first];
                    targets.extend(
                        ids.iter()
                            .copied()
                            .filter(|i| *i != first)
                            .take(majority - 1),
                    );
                    (targets, note)
                }
                _ => (ids.clone(), ""),
            };
            for id in &targets {
                cluster.kill(*id)?;
            }
            Active {
                what: format!("kill -9 members {targets:?}{note}"),
                heal: Heal::Restart(targets),
            }
        }
        Fault::PauseOne | Fault::PauseLeader => {
            let (id, note) = if fault == Fault::PauseLeader {
                leader_or_any(&ids)
            } else {
                (ids.first().copied().unwrap_or(1), "")
            };
            cluster.pause(id)?;
            Active {
                what: format!("SIGSTOP member {id}{note}"),
                heal: Heal::Resume(vec![id]),
            }
        }
        Fault::KillNode | Fault::KillAgent => {
            let agents = agents.ok_or(NemesisError::NoAgents(fault))?;
            let names = agents.names();
            let Some(name) = rng.pick(&names).cloned() else {
                return Err(NemesisError::NoAgents(fault));
            };
            if fault == Fault::KillNode {
                agents.kill_node(&name)?;
            } else {
                agents.kill_agent(&name)?;
            }
            let what = if fault == Fault::KillNode {
                format!("kill -9 node {name} (agent and workloads)")
            } else {
                format!("kill -9 agent {name}")
            };
            Active {
                what,
                heal: Heal::RestartAgents(vec![name]),
            }
        }
    };
    Ok(active)
}

/// Undoes `active`: restarts what was killed, resumes what was paused.
pub fn heal(
    active: &Active,
    cluster: &mut ProcessCluster,
    agents: Option<&mut AgentSet>,
) -> Result<(), NemesisError> {
    match &active.heal {
        Heal::Restart(ids) => {
            for id in ids {
                cluster.restart(*id)?;
            }
        }
        Heal::Resume(ids) => {
            for id in ids {
                cluster.resume(*id)?;
            }
        }
        Heal::RestartAgents(names) => {
            if let Some(agents) = agents {
                for name in names {
                    agents.restart(name)?;
                }
            }
        }
    }
    Ok(())
}
