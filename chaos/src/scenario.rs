//! Named scenarios: a cluster shape, the faults drawn from, and the workload.

use crate::nemesis::schedule::SHORT_FAULTS_MS;
use crate::nemesis::Fault;

/// One scenario `herd chaos run --scenario NAME` can run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line for `herd chaos list`.
    pub about: &'static str,
    /// Coordinators.
    pub members: u64,
    /// Node agents (0: coordinators only).
    pub agents: usize,
    /// The faults its schedule draws from.
    pub faults: &'static [Fault],
    /// Service instances kept running on the agents (0: none).
    pub service_count: u32,
    /// Shortest and longest fault, ms.
    pub fault_ms: (u64, u64),
    /// Whether a client drains nodes and makes them eligible again (with
    /// agents only). Off where a drain would hide what is measured.
    pub drains: bool,
    /// Whether a training job and a simulated VM run on the agents and
    /// migration clients keep moving their allocations between them
    /// ([`crate::migrate`]), judged by the migration checker (with agents
    /// only).
    pub migrations: bool,
    /// Whether that training job is `[balance] movable` and the agents
    /// move it among themselves (decentralised balancing) instead of
    /// migration clients; judged by the same checker, every balancing move
    /// being a recorded migration (with agents only).
    pub balancing: bool,
    /// Whether the agents run SIMULATED GPUs under an oversubscribed power
    /// budget, with load spikes forced on them and their power sampled for
    /// the power checker ([`crate::power`]; with agents only, not in
    /// Docker mode).
    pub power: bool,
}

/// What a scenario is unless its entry says otherwise: short faults and no
/// workload beyond its service (no drains, migrations, balancing or power
/// budget). Not a scenario itself: every entry names its own name, shape and
/// faults.
const QUIET: Scenario = Scenario {
    name: "",
    about: "",
    members: 3,
    agents: 0,
    faults: &[],
    service_count: 0,
    fault_ms: SHORT_FAULTS_MS,
    drains: false,
    migrations: false,
    balancing: false,
    power: false,
};

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "kill-leader",
        about: "kill -9 the leader of 3 coordinators, restart it",
        members: 3,
        agents: 0,
        faults: &[Fault::KillLeader],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "kill-one",
        about: "kill -9 a random one of 5 coordinators, restart it",
        members: 5,
        agents: 0,
        faults: &[Fault::KillOne],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "kill-majority",
        about: "kill -9 a majority (leader included) of 3 coordinators, restart them",
        members: 3,
        agents: 0,
        faults: &[Fault::KillMajority],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "restart-all",
        about: "kill -9 every coordinator at once, restart them all",
        members: 3,
        agents: 0,
        faults: &[Fault::KillAll],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "pause-member",
        about: "SIGSTOP the leader or a random coordinator of 3, SIGCONT it",
        members: 3,
        agents: 0,
        faults: &[Fault::PauseLeader, Fault::PauseOne],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "agent-loss",
        about: "3 coordinators, 3 agents, a 3-instance service; kill -9 a node (agent and workloads) or an agent alone, restart it",
        members: 3,
        agents: 3,
        faults: &[Fault::KillNode, Fault::KillAgent],
        service_count: 3,
        drains: true,
        ..QUIET
    },
    Scenario {
        name: "node-loss",
        about: "3 coordinators, 3 agents, a 3-instance service; a node (agent and workloads) down for 7-10 s, long enough to be declared down and its work placed elsewhere",
        members: 3,
        agents: 3,
        faults: &[Fault::KillNode],
        service_count: 3,
        fault_ms: (7000, 10_000),
        ..QUIET
    },
    Scenario {
        name: "agent-pause",
        about: "3 coordinators, 3 agents, a 3-instance service; SIGSTOP an agent for 6-9 s (its workloads run on, it answers nothing): its node is declared down and its work placed elsewhere; once resumed it must stop its now-stale copies",
        members: 3,
        agents: 3,
        faults: &[Fault::PauseAgent],
        service_count: 3,
        fault_ms: (6000, 9000),
        ..QUIET
    },
    Scenario {
        name: "node-partition",
        about: "3 coordinators, 3 agents, a 3-instance service; cut a node off from every coordinator for 6-9 s (it and its workloads run on): its work is placed elsewhere, and once healed it must stop its stale copies",
        members: 3,
        agents: 3,
        faults: &[Fault::PartitionNode],
        service_count: 3,
        fault_ms: (6000, 9000),
        ..QUIET
    },
    Scenario {
        name: "partition-leader",
        about: "cut the leader of 3 coordinators off from the others (through the harness's TCP proxies), heal",
        members: 3,
        agents: 0,
        faults: &[Fault::PartitionLeader],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "partition-halves",
        about: "split 5 coordinators into random halves (2 and 3), heal",
        members: 5,
        agents: 0,
        faults: &[Fault::PartitionHalves],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "partition-ring",
        about: "a majority ring of 5 coordinators: each reaches 2 neighbours, no two the same majority",
        members: 5,
        agents: 0,
        faults: &[Fault::PartitionRing],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "partition-bridge",
        about: "5 coordinators in two sides of 2 joined only through a fifth, the bridge",
        members: 5,
        agents: 0,
        faults: &[Fault::PartitionBridge],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "slow-network",
        about: "3 coordinators, 2 agents; links between coordinators delayed (5-30 ms each way + jitter) or lossy (5-25%)",
        members: 3,
        agents: 2,
        faults: &[Fault::SlowNetwork, Fault::LossyNetwork],
        service_count: 2,
        drains: true,
        ..QUIET
    },
    Scenario {
        name: "disk-full",
        about: "fill the data dir (its own 128 MiB tmpfs; needs root) of the leader or a random one of 3 coordinators, free it, restart the member if it stopped",
        members: 3,
        agents: 0,
        faults: &[Fault::DiskFull],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "slow-fsync",
        about: "make every fsync of the leader or a random one of 3 coordinators sleep 50-400 ms first (LD_PRELOAD shim)",
        members: 3,
        agents: 0,
        faults: &[Fault::SlowFsync],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "clock-skew",
        about: "3 coordinators, 2 agents; move each coordinator's wall clock by up to 10 minutes either way (LD_PRELOAD shim), then back",
        members: 3,
        agents: 2,
        faults: &[Fault::ClockSkew],
        service_count: 2,
        drains: true,
        ..QUIET
    },
    Scenario {
        name: "mixed-coordinators",
        about: "3 coordinators, no agents; kills, pauses, partitions, slow links, slow fsyncs, skewed clocks",
        members: 3,
        agents: 0,
        faults: &[
            Fault::KillLeader,
            Fault::KillOne,
            Fault::PauseLeader,
            Fault::PartitionLeader,
            Fault::PartitionHalves,
            Fault::SlowNetwork,
            Fault::SlowFsync,
            Fault::ClockSkew,
        ],
        service_count: 0,
        ..QUIET
    },
    Scenario {
        name: "mixed",
        about: "3 coordinators, 2 agents; any of the faults above",
        members: 3,
        agents: 2,
        faults: &[
            Fault::KillLeader,
            Fault::KillOne,
            Fault::KillMajority,
            Fault::PauseLeader,
            Fault::KillNode,
            Fault::KillAgent,
            Fault::PartitionLeader,
            Fault::PartitionHalves,
            Fault::SlowNetwork,
        ],
        service_count: 2,
        drains: true,
        ..QUIET
    },
    Scenario {
        name: "migrate",
        about: "3 coordinators, 3 agents; a training job (dljob) and a simulated VM (simvm, moved live) kept moving between agents by migration clients while agents (alone or with their workloads) and the leader are killed and restarted",
        members: 3,
        agents: 3,
        faults: &[Fault::KillAgent, Fault::KillNode, Fault::KillLeader],
        service_count: 2,
        migrations: true,
        ..QUIET
    },
    Scenario {
        name: "balance",
        about: "3 coordinators, 3 agents; a [balance] movable training job (dljob) that the agents move among themselves to even out load, while agents (alone or with their workloads) and the leader are killed and restarted",
        members: 3,
        agents: 3,
        faults: &[Fault::KillAgent, Fault::KillNode, Fault::KillLeader],
        service_count: 2,
        balancing: true,
        ..QUIET
    },
    Scenario {
        name: "balance-away",
        about: "3 coordinators, 3 agents; two [balance] movable trainers (dljob) on one node, then every coordinator killed for 22-26 s while agents are killed and restarted: the agents move work among themselves agent to agent (journalled), and the coordinators reconcile every move when they return",
        members: 3,
        agents: 3,
        faults: &[Fault::CoordinatorsAway],
        service_count: 2,
        fault_ms: (22_000, 26_000),
        ..QUIET
    },
    Scenario {
        name: "power",
        about: "3 coordinators, 3 agents with 4 SIMULATED H100s each under a cluster power budget of nameplate / 1.3; load spikes on every GPU while nodes are killed, cut off from the coordinators, and coordinators killed or cut off; no group above its hard budget for over 1 s, no limit outside a device's range",
        members: 3,
        agents: 3,
        faults: &[
            Fault::KillNode,
            Fault::PartitionNode,
            Fault::KillMajority,
            Fault::PartitionLeader,
        ],
        service_count: 2,
        power: true,
        ..QUIET
    },
];

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
