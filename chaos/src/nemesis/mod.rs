//! Nemeses: the faults a chaos run injects into a real cluster, and how each
//! is healed. Every target is drawn from the run's seeded [`rng::Rng`].
//!
//! Network faults act on the links between coordinators through the
//! [`ProxyNet`] the cluster was started behind; clients and node agents
//! reach the coordinators directly.

pub mod away;
pub mod partition;
pub mod rng;
pub mod schedule;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use crate::agents::AgentSet;
use crate::process_cluster::{ClusterError, ProcessCluster};
use crate::proxy::{AgentLinks, LinkFault, ProxyNet};
use crate::shim::ShimFaults;
use partition::Partition;
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
    /// Cut one node agent off from every coordinator (through its own
    /// proxies) while it and its workloads run on; heal the links.
    PartitionNode,
    /// SIGSTOP one node agent (its workloads run on), as a node cut off
    /// from the coordinators; SIGCONT at the heal, when it must stop the
    /// copies that were placed elsewhere meanwhile.
    PauseAgent,
    /// Cut the leader off from every other coordinator.
    PartitionLeader,
    /// Split the coordinators into two random halves.
    PartitionHalves,
    /// A majority ring: each coordinator reaches a majority, no two the same one.
    PartitionRing,
    /// Two sides joined only through one coordinator.
    PartitionBridge,
    /// Every link between coordinators delayed by 5-30 ms each way, plus up
    /// to half that in jitter (round trips stay under the default
    /// heartbeat period, which bounds each replication call).
    SlowNetwork,
    /// Every link between coordinators losing 5-25% of its segments
    /// (each loss costs a retransmission timeout).
    LossyNetwork,
    /// Fill the data dir of the leader or a random coordinator to the last
    /// byte (a tmpfs of its own); free it and restart the member if it
    /// stopped.
    DiskFull,
    /// Make every fsync, fdatasync and sync_file_range of the leader or a
    /// random coordinator sleep 50-400 ms first (through the fault shim).
    SlowFsync,
    /// Move the wall clock of every coordinator by its own random offset of
    /// up to ten minutes either way (through the fault shim); the heal
    /// jumps them back.
    ClockSkew,
    /// Every coordinator killed for a long stretch (the whole window)
    /// while node agents are killed and restarted inside it
    /// ([`away::Churn`]): the agents balance among themselves with the
    /// coordinators away, and reconcile with them at the heal.
    CoordinatorsAway,
}

impl Fault {
    /// Whether the fault acts on the network between coordinators, so the
    /// cluster must run behind a [`ProxyNet`].
    pub fn needs_proxies(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader
                | Fault::PartitionHalves
                | Fault::PartitionRing
                | Fault::PartitionBridge
                | Fault::SlowNetwork
                | Fault::LossyNetwork
        )
    }

    /// Whether the fault cuts agents off, so every agent must reach the
    /// coordinators through [`AgentLinks`].
    pub fn needs_agent_proxies(self) -> bool {
        self == Fault::PartitionNode
    }

    /// Whether the fault fills disks, so each coordinator needs a data dir
    /// of its own size-limited file system.
    pub fn needs_disks(self) -> bool {
        self == Fault::DiskFull
    }

    /// Whether the fault acts through `libherd_chaos_shim.so`, so every
    /// coordinator must run with it preloaded.
    pub fn needs_shim(self) -> bool {
        matches!(self, Fault::SlowFsync | Fault::ClockSkew)
    }
}

/// What nemeses act on.
pub struct Targets<'a> {
    /// The coordinators.
    pub cluster: &'a mut ProcessCluster,
    /// The node agents, when the scenario has any.
    pub agents: Option<&'a mut AgentSet>,
    /// The links between coordinators, when the cluster runs behind proxies.
    pub net: Option<&'a ProxyNet>,
    /// The links from agents to coordinators, when agents run behind proxies.
    pub agent_net: Option<&'a AgentLinks>,
}

/// A fault in force, and what undoes it.
#[derive(Debug, Clone)]
pub struct Active {
    /// What was done, for the report (`kill -9 members [2] (leader)`).
    pub what: String,
    /// The node taken down with its workloads, if any.
    pub lost_node: Option<String>,
    /// The node whose agent the fault killed or paused while its workloads
    /// ran on, unsupervised: nothing can stop them until the agent is back.
    pub unsupervised_node: Option<String>,
    heal: Heal,
}

#[derive(Debug, Clone)]
enum Heal {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    RestartAgents(Vec<String>),
    ResumeAgents(Vec<String>),
    AgentNetwork,
    Network,
    FreeDisk(u64),
    ClearShim(Vec<u64>),
    /// Restart these coordinators; agents killed inside the window are
    /// restarted on the churn's own schedule ([`advance`]) or at the heal.
    Away(Vec<u64>, away::Churn),
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
    /// The fault needs the cluster behind proxies and it is not.
    #[error("fault {0:?} needs the coordinators behind the harness's proxies")]
    NoProxies(Fault),
}

/// Injects `fault`; `leader` is the current leader when known.
pub fn inject(
    fault: Fault,
    targets: &mut Targets<'_>,
    leader: Option<u64>,
    rng: &mut Rng,
) -> Result<Active, NemesisError> {
    let cluster = &mut *targets.cluster;
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
                lost_node: None,
                unsupervised_node: None,
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
                what: format!("pause member {id}{note}"),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::Resume(vec![id]),
            }
        }
        Fault::KillNode | Fault::KillAgent | Fault::PauseAgent | Fault::PartitionNode => {
            let agents = targets
                .agents
                .as_deref_mut()
                .ok_or(NemesisError::NoAgents(fault))?;
            // A node running work, when any does: losing it is the case
            // that must be rescheduled.
            let busy: BTreeSet<String> = agents.workloads().into_iter().map(|w| w.node).collect();
            let mut names = agents.names();
            if names.iter().any(|n| busy.contains(n)) {
                names.retain(|n| busy.contains(n));
            }
            let Some(name) = rng.pick(&names).cloned() else {
                return Err(NemesisError::NoAgents(fault));
            };
            let (what, heal) = match fault {
                Fault::KillNode => {
                    agents.kill_node(&name)?;
                    (
                        format!("kill -9 node {name} (agent and workloads)"),
                        Heal::RestartAgents(vec![name.clone()]),
                    )
                }
                Fault::KillAgent => {
                    agents.kill_agent(&name)?;
                    (
                        format!("kill -9 agent {name}"),
                        Heal::RestartAgents(vec![name.clone()]),
                    )
                }
                Fault::PartitionNode => {
                    let links = targets.agent_net.ok_or(NemesisError::NoProxies(fault))?;
                    links.isolate(&name);
                    (
                        format!("cut node {name} off from every coordinator"),
                        Heal::AgentNetwork,
                    )
                }
                _ => {
                    agents.pause_agent(&name)?;
                    (
                        format!("pause agent {name} (its workloads run on)"),
                        Heal::ResumeAgents(vec![name.clone()]),
                    )
                }
            };
            Active {
                what,
                lost_node: (fault != Fault::KillAgent).then(|| name.clone()),
                unsupervised_node: matches!(fault, Fault::KillAgent | Fault::PauseAgent)
                    .then_some(name),
                heal,
            }
        }
        Fault::PartitionLeader
        | Fault::PartitionHalves
        | Fault::PartitionRing
        | Fault::PartitionBridge => {
            let net = targets.net.ok_or(NemesisError::NoProxies(fault))?;
            let (partition, note) = match fault {
                Fault::PartitionLeader => {
                    let (id, note) = leader_or_any(&ids);
                    (Partition::isolate(id, &ids), note)
                }
                Fault::PartitionHalves => (Partition::halves(&ids, rng), ""),
                Fault::PartitionRing => (Partition::majority_ring(&ids, rng), ""),
                _ => (Partition::bridge(&ids, rng), ""),
            };
            net.partition(|a, b| partition.connected(a, b));
            Active {
                what: format!("partition {partition}{note}"),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::Network,
            }
        }
        Fault::DiskFull => {
            let (id, note) = if rng.below(2) == 0 {
                leader_or_any(&ids)
            } else {
                (ids.first().copied().unwrap_or(1), "")
            };
            let filled = cluster.fill_disk(id)?;
            Active {
                what: format!("fill the disk of member {id}{note} ({} MiB)", filled >> 20),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::FreeDisk(id),
            }
        }
        Fault::SlowFsync => {
            let (id, note) = if rng.below(2) == 0 {
                leader_or_any(&ids)
            } else {
                (ids.first().copied().unwrap_or(1), "")
            };
            let delay = rng.between(50, 400);
            cluster.set_shim_faults(
                id,
                ShimFaults {
                    fsync_delay_ms: delay,
                    ..ShimFaults::default()
                },
            )?;
            Active {
                what: format!("slow every fsync of member {id}{note} by {delay} ms"),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::ClearShim(vec![id]),
            }
        }
        Fault::ClockSkew => {
            let mut offsets = Vec::new();
            for id in cluster.ids() {
                let offset = rng.between(0, 1_200_000) as i64 - 600_000;
                cluster.set_shim_faults(
                    id,
                    ShimFaults {
                        clock_offset_ms: offset,
                        ..ShimFaults::default()
                    },
                )?;
                offsets.push(format!("{id}: {:+.1} s", offset as f64 / 1000.0));
            }
            Active {
                what: format!("skew wall clocks ({})", offsets.join(", ")),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::ClearShim(cluster.ids()),
            }
        }
        Fault::CoordinatorsAway => {
            let agents = targets
                .agents
                .as_deref()
                .ok_or(NemesisError::NoAgents(fault))?;
            let churn = away::Churn::plan(agents, rng);
            for id in &ids {
                cluster.kill(*id)?;
            }
            Active {
                what: format!(
                    "kill -9 every coordinator {ids:?} for the whole window; meanwhile {churn}"
                ),
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::Away(ids.clone(), churn),
            }
        }
        Fault::SlowNetwork | Fault::LossyNetwork => {
            let net = targets.net.ok_or(NemesisError::NoProxies(fault))?;
            let link = if fault == Fault::SlowNetwork {
                let delay = rng.between(5, 30);
                LinkFault {
                    delay: Duration::from_millis(delay),
                    jitter: Duration::from_millis(delay / 2),
                    ..LinkFault::HEALTHY
                }
            } else {
                LinkFault {
                    loss_per_mille: rng.between(50, 250) as u32,
                    ..LinkFault::HEALTHY
                }
            };
            net.set_all(link);
            let what = if fault == Fault::SlowNetwork {
                format!(
                    "delay every link {} ms (+ up to {} ms jitter)",
                    link.delay.as_millis(),
                    link.jitter.as_millis()
                )
            } else {
                format!(
                    "lose {:.1}% of segments on every link",
                    f64::from(link.loss_per_mille) / 10.0
                )
            };
            Active {
                what,
                lost_node: None,
                unsupervised_node: None,
                heal: Heal::Network,
            }
        }
    };
    Ok(active)
}

/// Carries out what is due, `elapsed` into the window of `active`, of a
/// fault that acts in steps (agents killed and restarted while the
/// coordinators are away); nothing for any other fault.
pub fn advance(
    active: &mut Active,
    elapsed: Duration,
    targets: &mut Targets<'_>,
) -> Result<(), NemesisError> {
    if let (Heal::Away(_, churn), Some(agents)) = (&mut active.heal, targets.agents.as_deref_mut())
    {
        for step in churn.due(elapsed, agents)? {
            tracing::info!(step = %step, "inside the fault");
        }
    }
    Ok(())
}

/// Undoes `active`: restarts what was killed, resumes what was paused,
/// mends the network.
pub fn heal(active: &Active, targets: &mut Targets<'_>) -> Result<(), NemesisError> {
    match &active.heal {
        Heal::Restart(ids) => {
            for id in ids {
                targets.cluster.restart(*id)?;
            }
        }
        Heal::Resume(ids) => {
            for id in ids {
                targets.cluster.resume(*id)?;
            }
        }
        Heal::RestartAgents(names) => {
            if let Some(agents) = targets.agents.as_deref_mut() {
                for name in names {
                    agents.restart(name)?;
                }
            }
        }
        Heal::ResumeAgents(names) => {
            if let Some(agents) = targets.agents.as_deref_mut() {
                for name in names {
                    agents.resume_agent(name)?;
                }
            }
        }
        Heal::AgentNetwork => {
            if let Some(links) = targets.agent_net {
                links.heal();
            }
        }
        Heal::Network => {
            if let Some(net) = targets.net {
                net.heal();
            }
        }
        Heal::ClearShim(ids) => {
            for id in ids {
                targets
                    .cluster
                    .set_shim_faults(*id, ShimFaults::default())?;
            }
        }
        Heal::Away(ids, churn) => {
            if let Some(agents) = targets.agents.as_deref_mut() {
                churn.clone().finish(agents)?;
            }
            for id in ids {
                targets.cluster.restart(*id)?;
            }
        }
        Heal::FreeDisk(id) => {
            targets.cluster.free_disk(*id)?;
            // A member whose log write failed has exited; it resumes from
            // its data dir, as its supervisor would restart it.
            targets.cluster.restart(*id)?;
        }
    }
    Ok(())
}
