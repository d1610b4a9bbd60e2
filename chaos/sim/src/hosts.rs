//! The simulation's hosts: coordinators (`c1`..) and node agents (`n1`..),
//! each the unchanged herd code started on turmoil's network, and the
//! clients' connections to them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_api::client::HerdClient;
use herd_consensus::network::DialMap;
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::storage::{KvStore, MemoryStore};
use herd_coordinator::config::StartMode;
use herd_coordinator::start::start_with;
use herd_coordinator::{Coordinator, CoordinatorConfig};
use herd_node::{NodeConfig, Wiring};

use crate::live::{Fleet, SimulatedLiveVm};
use crate::machine::{Machine, SimulatedExec};
use crate::transport;

/// The port every simulated coordinator listens on.
const COORDINATOR_PORT: u16 = 7100;
/// The port every simulated agent listens on.
const AGENT_PORT: u16 = 7200;
/// How long a node may miss heartbeats, as the process harness configures
/// its coordinators (`--node-ttl-ms 2000`).
const NODE_TTL: Duration = Duration::from_secs(2);

/// Host name of coordinator `id`.
pub fn coordinator_host(id: u64) -> String {
    format!("c{id}")
}

/// Address clients and members reach coordinator `id` at.
pub fn member_addr(id: u64) -> String {
    format!("{}:{COORDINATOR_PORT}", coordinator_host(id))
}

/// Host name, and node name, of agent `index`.
pub fn agent_host(index: u64) -> String {
    format!("n{index}")
}

/// A coordinator as the host that runs it last started it (`None` while
/// the host is crashed).
pub type Slot = Arc<Mutex<Option<Arc<Coordinator>>>>;

/// Locks a slot, whatever a panicking holder left in it.
pub fn running(slot: &Slot) -> Option<Arc<Coordinator>> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Empties a slot (its host crashed).
pub fn clear(slot: &Slot) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

fn coordinator_config(id: u64, members: u64, raft: RaftTuning) -> CoordinatorConfig {
    let peers: BTreeMap<u64, String> = (1..=members).map(|m| (m, member_addr(m))).collect();
    CoordinatorConfig {
        id,
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, COORDINATOR_PORT)),
        advertise: member_addr(id),
        data_dir: PathBuf::from(format!("/simulated/{}", coordinator_host(id))),
        mode: StartMode::Bootstrap(peers),
        raft,
        node_ttl: NODE_TTL,
        dial: DialMap::default().with_connector(transport::connector()),
        http_listen: None,
        metrics_listen: None,
        join_token: None,
        limits: Default::default(),
        // Off: the fallback's solver limit is wall-clock time, not the
        // simulation's, and would make runs differ.
        reschedule: herd_coordinator::reschedule::config::Rescheduling::off(),
    }
}

/// Adds `members` coordinators. Each keeps its in-memory store across
/// crashes, as a disk keeps what was synced: a restarted host first loses
/// every write its store had not synced ([`MemoryStore::lose_unsynced`]),
/// as a real crash may (a crash that kept them would hide every bug that
/// needs a lost unsynced write, like the stale read after restart-all).
pub fn add_coordinators(sim: &mut turmoil::Sim<'_>, members: u64, raft: &RaftTuning) -> Vec<Slot> {
    let mut slots = Vec::new();
    for id in 1..=members {
        let disk = Arc::new(MemoryStore::new());
        let slot: Slot = Arc::new(Mutex::new(None));
        slots.push(slot.clone());
        let raft = raft.clone();
        sim.host(coordinator_host(id), move || {
            // The host starts (first start: nothing written, nothing lost)
            // or restarts after a crash: the power loss happens here.
            let lost = disk.lose_unsynced();
            if lost > 0 {
                tracing::info!(member = id, lost, "restart: unsynced writes lost");
            }
            let store: Arc<dyn KvStore> = disk.clone();
            let slot = slot.clone();
            let raft = raft.clone();
            async move {
                let listener =
                    turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, COORDINATOR_PORT))
                        .await?;
                let local = SocketAddr::from((Ipv4Addr::UNSPECIFIED, COORDINATOR_PORT));
                let running = start_with(
                    coordinator_config(id, members, raft),
                    store,
                    transport::incoming(listener),
                    local,
                )
                .await
                .map_err(|e| e.to_string())?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(running.coordinator.clone());
                running.wait().await?;
                Ok(())
            }
        });
    }
    slots
}

/// A simulated node: its agent's host and the machine its workloads run on.
#[derive(Debug, Clone)]
pub struct SimAgent {
    /// Host and node name.
    pub name: String,
    /// Its workloads, which outlive the agent's host.
    pub machine: Machine,
}

fn node_config(name: &str, members: u64, data_dir: PathBuf) -> NodeConfig {
    NodeConfig {
        name: name.to_string(),
        coordinators: (1..=members).map(member_addr).collect(),
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, AGENT_PORT)),
        advertise: format!("{name}:{AGENT_PORT}"),
        // Unused: the simulation's live VMs are simulated drivers.
        migration_host: Default::default(),
        data_dir,
        labels: BTreeMap::new(),
        sim_gpus: None,
        gpu_lock_clocks: None,
        reserved_cpu_millis: 0,
        reserved_memory_bytes: 0,
        heartbeat: Duration::from_secs(1),
        stop_grace: Duration::from_secs(1),
        http: None,
        metrics_listen: None,
        token: None,
        limits: Default::default(),
        confinement: Default::default(),
        // The agents' balancing dials peers over plain TCP, outside the
        // simulated network: off in the simulation.
        balance_enabled: false,
        balance: Default::default(),
        reschedule_requests: true,
        reschedule_policy: Default::default(),
    }
}

/// Adds `count` node agents, each with its data directory (real files)
/// under `root` and a [`Machine`] of SIMULATED workloads: `exec` ones and
/// live-moving VMs (`simvm`, [`SimulatedLiveVm`], which move to the other
/// agents' machines). A restarted host starts the agent again on the same
/// directory and machine, so it re-adopts what still runs there.
/// `ignore_stops` and `leave_sources_running` plant bugs for the checkers'
/// self-tests (see [`SimulatedExec::ignoring_stops`] and
/// [`SimulatedLiveVm::leaving_sources_running`]).
pub fn add_agents(
    sim: &mut turmoil::Sim<'_>,
    count: u64,
    members: u64,
    root: &Path,
    ignore_stops: bool,
    leave_sources_running: bool,
) -> Vec<SimAgent> {
    let agents: Vec<SimAgent> = (1..=count)
        .map(|index| {
            let name = agent_host(index);
            SimAgent {
                machine: Machine::new(&name, index as u32),
                name,
            }
        })
        .collect();
    let fleet: Fleet = Arc::new(
        agents
            .iter()
            .map(|a| (a.name.clone(), a.machine.clone()))
            .collect(),
    );
    for agent in &agents {
        let (name, machine, fleet) = (agent.name.clone(), agent.machine.clone(), fleet.clone());
        let data_dir = root.join(&name);
        sim.host(name.clone(), move || {
            let config = node_config(&name, members, data_dir.clone());
            let (machine, fleet) = (machine.clone(), fleet.clone());
            async move {
                let listener =
                    turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, AGENT_PORT)).await?;
                let local = SocketAddr::from((Ipv4Addr::UNSPECIFIED, AGENT_PORT));
                let mut live = SimulatedLiveVm::new(machine.clone(), fleet);
                if leave_sources_running {
                    live = live.leaving_sources_running();
                }
                let mut driver = SimulatedExec::new(machine);
                if ignore_stops {
                    driver = driver.ignoring_stops();
                }
                let mut wiring = Wiring::with_drivers(vec![Arc::new(driver), Arc::new(live)]);
                wiring.connector = Some(transport::connector());
                let mut running =
                    herd_node::start_with(config, wiring, transport::incoming(listener), local)
                        .await
                        .map_err(|e| e.to_string())?;
                running.stopped().await;
                Err("the agent's actor tree stopped: more restarts than it tolerates".into())
            }
        });
    }
    agents
}

/// A client of every coordinator over the simulated network.
pub fn client(members: u64) -> Result<HerdClient, Box<dyn std::error::Error>> {
    let addrs: Vec<String> = (1..=members).map(member_addr).collect();
    Ok(HerdClient::with_connector(&addrs, &transport::connector())?)
}
