//! One seeded simulation: coordinators on turmoil hosts, register clients
//! recording a history, faults from a seeded schedule, then the chaos
//! harness's linearizability checkers on what the clients saw.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_api::client::HerdClient;
use herd_chaos::check::{self, Verdict};
use herd_chaos::history::{History, Op, OpKind, Outcome, Record};
use herd_chaos::nemesis::rng::Rng;
use herd_chaos::workload::{self, ClientContext, Recorder};
use herd_consensus::network::DialMap;
use herd_consensus::raft_config::RaftTuning;
use herd_consensus::storage::{KvStore, MemoryStore};
use herd_coordinator::config::StartMode;
use herd_coordinator::start::start_with;
use herd_coordinator::{Coordinator, CoordinatorConfig};

use crate::transport;

/// The port every simulated coordinator listens on.
const PORT: u16 = 7100;

/// How one simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the fault schedule, the clients and turmoil's network.
    pub seed: u64,
    /// Simulated time the clients run and faults are injected.
    pub duration: Duration,
    /// Coordinators.
    pub members: u64,
    /// Register clients.
    pub clients: u64,
    /// Register keys.
    pub keys: usize,
    /// Inject faults (off: a fault-free baseline).
    pub faults: bool,
    /// Clients read with `stale: true`, a planted bug the checkers must
    /// catch: the simulator's self-test.
    pub stale_reads: bool,
    /// The coordinators' Raft timings (to compare settings quickly).
    pub raft: RaftTuning,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            duration: Duration::from_secs(20),
            members: 3,
            clients: 3,
            keys: 2,
            faults: true,
            stale_reads: false,
            raft: RaftTuning::default(),
        }
    }
}

/// What one simulation observed and what the checkers made of it.
#[derive(Debug)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// Every operation the clients made.
    pub history: History,
    /// The faults injected, with their simulated times.
    pub faults: Vec<String>,
    /// The folded linearizability verdict on the registers.
    pub verdict: Verdict,
    /// For each fault that crashed the leader or cut it off from the
    /// others: simulated ms from the fault to the first acknowledged write.
    pub failovers_ms: Vec<u64>,
    /// Simulated time the run covered.
    pub simulated: Duration,
}

/// Why a simulation could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// turmoil stopped the simulation: a host failed or time ran out.
    #[error("simulation of seed {seed} failed: {message}")]
    Failed {
        /// The seed.
        seed: u64,
        /// What turmoil said.
        message: String,
    },
}

fn host_name(id: u64) -> String {
    format!("c{id}")
}

fn member_addr(id: u64) -> String {
    format!("{}:{PORT}", host_name(id))
}

/// A coordinator as the host that runs it last started it.
type Slot = Arc<Mutex<Option<Arc<Coordinator>>>>;

fn coordinator_config(id: u64, members: u64, raft: RaftTuning) -> CoordinatorConfig {
    let peers: BTreeMap<u64, String> = (1..=members).map(|m| (m, member_addr(m))).collect();
    CoordinatorConfig {
        id,
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
        advertise: member_addr(id),
        data_dir: PathBuf::from(format!("/simulated/{}", host_name(id))),
        mode: StartMode::Bootstrap(peers),
        raft,
        node_ttl: Duration::from_secs(5),
        dial: DialMap::default().with_connector(transport::connector()),
    }
}

/// The members' leader, as the first running member that knows one says.
fn leader(slots: &[Slot]) -> Option<u64> {
    slots.iter().find_map(|slot| {
        let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .and_then(|c| c.raft().metrics().borrow().current_leader)
    })
}

/// A fault in force and what mends it.
enum Active {
    Partition(Vec<(String, String)>),
    Crash(String),
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Result<SimOutcome, SimError> {
    let failed = |message: String| SimError::Failed {
        seed: config.seed,
        message,
    };
    let mut rng = Rng::new(config.seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(config.duration + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(rng.next_u64())
        .build();

    // Coordinators: each host keeps its in-memory store across crashes, as
    // a disk keeps what was synced.
    let mut slots: Vec<Slot> = Vec::new();
    for id in 1..=config.members {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let slot: Slot = Arc::new(Mutex::new(None));
        slots.push(slot.clone());
        let members = config.members;
        let raft = config.raft.clone();
        sim.host(host_name(id), move || {
            let store = store.clone();
            let slot = slot.clone();
            let raft = raft.clone();
            async move {
                let listener =
                    turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
                let local = SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT));
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

    // Clients.
    let recorder = Arc::new(Recorder::with_clock(simulated_ns));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<String> = (1..=config.members).map(member_addr).collect();
    let keys = workload::register_keys(config.keys);
    for process in 1..=config.clients {
        let mut ctx = ClientContext::new(addrs.clone(), recorder.clone(), stop.clone());
        ctx.stale_reads = config.stale_reads;
        let keys = keys.clone();
        let client_rng = rng.fork();
        let addrs = addrs.clone();
        sim.client(format!("client{process}"), async move {
            ctx.client = Some(sim_client(&addrs)?);
            // Let the first election settle, as the process harness does.
            tokio::time::sleep(Duration::from_secs(2)).await;
            workload::register_client(ctx, process, keys, client_rng).await;
            Ok(())
        });
    }
    // A last linearizable read of every key once the faults have healed:
    // a lost acknowledged write shows there at the latest.
    {
        let recorder = recorder.clone();
        let addrs = addrs.clone();
        let keys = keys.clone();
        let wait = config.duration + Duration::from_secs(5);
        sim.client("final-reader", async move {
            let client = sim_client(&addrs)?;
            tokio::time::sleep(wait).await;
            for key in &keys {
                let invoke_ns = recorder.now_ns();
                let answer = workload::register_op(&client, 0, OpKind::Read, key, None, None).await;
                recorder.push(Record::Op(Op {
                    id: recorder.next_id(),
                    process: 0,
                    kind: OpKind::Read,
                    key: key.clone(),
                    value: answer.1,
                    expected: None,
                    version: answer.2,
                    invoke_ns,
                    complete_ns: recorder.now_ns(),
                    outcome: answer.0,
                    error: answer.3,
                }));
            }
            Ok(())
        });
    }

    // Faults, drawn from the seed, injected between steps.
    let schedule = schedule(&mut rng, config);
    let mut next = 0;
    let mut active: Option<(Active, Duration)> = None;
    let mut faults = Vec::new();
    // Simulated start of each fault that took the leader away.
    let mut leader_lost_at: Vec<u64> = Vec::new();
    loop {
        let now = sim.elapsed();
        if now >= config.duration {
            stop.store(true, Ordering::Relaxed);
        }
        if let Some((fault, until)) = active.take() {
            if now >= until {
                match &fault {
                    Active::Partition(pairs) => {
                        for (a, b) in pairs {
                            sim.release(a.as_str(), b.as_str());
                        }
                    }
                    Active::Crash(host) => sim.bounce(host.as_str()),
                }
                faults.push(format!("{:>7.3} s  heal", now.as_secs_f64()));
            } else {
                active = Some((fault, until));
            }
        } else if let Some(&(at, length, kind)) = schedule.get(next) {
            if now >= at {
                next += 1;
                let members: Vec<u64> = (1..=config.members).collect();
                let injected = inject(&mut sim, kind, &members, leader(&slots), &mut rng);
                let (fault, what, took_leader) = injected;
                faults.push(format!("{:>7.3} s  {what}", now.as_secs_f64()));
                if took_leader {
                    leader_lost_at.push(now.as_nanos() as u64);
                }
                active = Some((fault, now + length));
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    let history = History {
        records: recorder.take(),
    };
    let ops: Vec<Op> = history.ops().cloned().collect();
    let verdict = check::registers(&ops, 2_000_000);
    let failovers_ms = leader_lost_at
        .iter()
        .filter_map(|start| {
            ops.iter()
                .filter(|o| {
                    matches!(o.kind, OpKind::Write | OpKind::Cas)
                        && o.outcome == Outcome::Ok
                        && o.complete_ns >= *start
                })
                .map(|o| (o.complete_ns - start) / 1_000_000)
                .min()
        })
        .collect();
    Ok(SimOutcome {
        seed: config.seed,
        history,
        faults,
        verdict,
        failovers_ms,
        simulated: sim.elapsed(),
    })
}

/// The simulation's clock, ns (0 outside a simulated host).
fn simulated_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

/// A client of every coordinator over the simulated network.
fn sim_client(addrs: &[String]) -> Result<HerdClient, Box<dyn std::error::Error>> {
    let channels = addrs
        .iter()
        .map(|a| transport::channel(a).map(|c| (a.clone(), c)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(HerdClient::from_channels(channels)?)
}

/// A kind of fault the simulation injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Cut the leader (or a random member) off from the other members.
    IsolateLeader,
    /// Split the members into two random halves.
    Halves,
    /// Crash a random member; restart it on its store at the heal.
    Crash,
}

/// `(start, length, fault)` windows: after 3 s, faults of 1-4 s separated
/// by 2-4 s, healed before the clients stop.
pub fn schedule(rng: &mut Rng, config: &SimConfig) -> Vec<(Duration, Duration, SimFault)> {
    let kinds = [SimFault::IsolateLeader, SimFault::Halves, SimFault::Crash];
    let mut windows = Vec::new();
    if !config.faults {
        return windows;
    }
    let end = config.duration.as_millis() as u64;
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

/// Injects `kind`: what mends it, what was done, and whether it took the
/// leader away (crashed it or cut it off from a majority).
fn inject(
    sim: &mut turmoil::Sim<'_>,
    kind: SimFault,
    members: &[u64],
    leader: Option<u64>,
    rng: &mut Rng,
) -> (Active, String, bool) {
    let mut ids = members.to_vec();
    rng.shuffle(&mut ids);
    let cut = |side_a: &[u64], side_b: &[u64]| {
        let mut pairs = Vec::new();
        for a in side_a {
            for b in side_b {
                pairs.push((host_name(*a), host_name(*b)));
            }
        }
        pairs
    };
    let pairs = match kind {
        SimFault::Crash => {
            let victim = host_name(ids[0]);
            sim.crash(victim.as_str());
            let took_leader = leader == Some(ids[0]);
            return (
                Active::Crash(victim.clone()),
                format!("crash {victim}"),
                took_leader,
            );
        }
        SimFault::IsolateLeader => {
            let target = leader.filter(|l| ids.contains(l)).unwrap_or(ids[0]);
            let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != target).collect();
            (cut(&[target], &rest), leader == Some(target))
        }
        SimFault::Halves => {
            // The smaller half first: a leader there has lost its majority.
            let half = ids.len() / 2;
            let took_leader = leader.is_some_and(|l| ids[..half].contains(&l));
            (cut(&ids[..half], &ids[half..]), took_leader)
        }
    };
    let (pairs, took_leader) = pairs;
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
    (Active::Partition(pairs), what, took_leader)
}
