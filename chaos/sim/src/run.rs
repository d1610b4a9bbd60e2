//! One seeded simulation: coordinators and node agents on turmoil hosts,
//! the chaos harness's clients recording a history, faults from a seeded
//! schedule, convergence judged from outside, then the harness's checkers
//! on the whole history.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_chaos::check::{self, CheckConfig, Verdict};
use herd_chaos::finals;
use herd_chaos::history::{FaultWindow, History, Record};
use herd_chaos::migrate;
use herd_chaos::nemesis::rng::Rng;
use herd_chaos::report::Report;
use herd_chaos::runner::{CAREFUL_COUNT, CAREFUL_JOB, CAREFUL_STOP_AFTER, SERVICE_JOB};
use herd_chaos::workload::{self, ClientContext, Recorder};
use herd_consensus::raft_config::RaftTuning;

use crate::faults::{self, Active, SimFault, Targets, Window};
use crate::hosts::{self, SimAgent, Slot};
use crate::live;
use crate::observe;

/// How one simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the fault schedule, the clients and turmoil's network.
    pub seed: u64,
    /// Simulated time the clients run and faults are injected.
    pub duration: Duration,
    /// Coordinators.
    pub members: u64,
    /// Node agents (0: coordinators and register clients only).
    pub agents: u64,
    /// Instances of the service job the agents run throughout.
    pub service_count: u32,
    /// Register clients.
    pub clients: u64,
    /// Register keys.
    pub keys: usize,
    /// The kinds of fault drawn (empty: a fault-free baseline; agent faults
    /// are left out when there are no agents).
    pub faults: Vec<SimFault>,
    /// Clients read with `stale: true`, a planted bug the checkers must
    /// catch: the simulator's self-test.
    pub stale_reads: bool,
    /// The simulated machines ignore requests to stop workloads, a planted
    /// bug the job checkers must catch: their self-test.
    pub ignore_stops: bool,
    /// The coordinators' Raft timings (to compare settings quickly).
    pub raft: RaftTuning,
    /// Longest the cluster may take to be whole again after the last heal.
    pub converge_bound: Duration,
    /// Live migrations during the faults: the agents run [`live::VM_JOB`]
    /// (SIMULATED VMs, [`live::SimulatedLiveVm`]) and a migration client
    /// keeps moving its allocations between them (needs agents); the
    /// migration checker then judges the run.
    pub migrations: bool,
    /// The simulated VMs' moves leave the source running beside the
    /// target, a planted bug the migration checker must catch: its
    /// self-test.
    pub leave_sources_running: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            duration: Duration::from_secs(20),
            members: 3,
            agents: 3,
            service_count: 2,
            clients: 3,
            keys: 2,
            faults: faults::ALL.to_vec(),
            stale_reads: false,
            ignore_stops: false,
            raft: RaftTuning::default(),
            converge_bound: Duration::from_secs(30),
            migrations: false,
            leave_sources_running: false,
        }
    }
}

/// What one simulation observed and what the checkers made of it.
#[derive(Debug)]
pub struct SimOutcome {
    /// The seed.
    pub seed: u64,
    /// Everything recorded: operations, faults, samples, final lists.
    pub history: History,
    /// The faults injected and healed, with their simulated times.
    pub faults: Vec<String>,
    /// Each checker's verdict.
    pub verdicts: Vec<(&'static str, Verdict)>,
    /// The verdicts folded: the first failure (named), else the first
    /// undecided one, else a pass.
    pub verdict: Verdict,
    /// For each fault that crashed the leader or cut it off from the
    /// others: simulated ms from the fault to the first acknowledged write.
    pub failovers_ms: Vec<u64>,
    /// For each fault during which a majority came to name another leader:
    /// simulated ms from the fault until it did.
    pub new_leader_ms: Vec<u64>,
    /// For each fault that took a busy node's agent away: simulated ms
    /// until its service instances ran elsewhere.
    pub rescheduled_ms: Vec<u64>,
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
        /// What went wrong.
        message: String,
    },
}

/// Longest the cluster may take to become whole before the clients start.
const SETUP_BOUND: Duration = Duration::from_secs(40);
/// How often the observer looks at the cluster and the machines.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);
/// How long settled samples are taken once the cluster converged.
const SETTLED_FOR: Duration = Duration::from_secs(1);
/// Longest the final reads and lists may take.
const FINALS_BOUND: Duration = Duration::from_secs(30);
/// Longest the finals wait for the migration client to see its last
/// migration end (within [`FINALS_BOUND`]).
const MIGRATIONS_BOUND: Duration = Duration::from_secs(15);
/// The simulated wall clock's epoch (2026-01-01T00:00:00Z): stamps are this
/// plus simulated time, the same in every run of a seed.
const SIMULATED_EPOCH_MS: u64 = 1_767_225_600_000;

/// Flags the simulation's driver loop raises for its client hosts.
#[derive(Default)]
struct Signals {
    /// The cluster was whole: clients start.
    go: AtomicBool,
    /// Drains end (before convergence is judged).
    drains_stop: Arc<AtomicBool>,
    /// Register and job clients end.
    clients_stop: Arc<AtomicBool>,
    /// The final reads and lists may run.
    finals: AtomicBool,
    /// They ran.
    finals_done: AtomicBool,
    /// The migration client followed its last migration to its end.
    migrations_done: AtomicBool,
}

/// Waits (in simulated time) until `flag` is raised.
async fn raised(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the simulated agents' data directories live (real files).
fn data_root(seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!("herd-sim-{}-{seed}", std::process::id()))
}

/// Removes the agents' data directories when the simulation ends.
struct DataRoot(PathBuf);

impl Drop for DataRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the run stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for the cluster to be whole, then the clients start.
    Setup,
    /// Clients and faults, from this simulated time.
    Faults { from: Duration },
    /// Faults over: waiting for the cluster to be whole again.
    Converging { since: Duration },
    /// Converged (or not): settled samples until then.
    Settling { until: Duration, converged: bool },
    /// Final reads and lists, started at this time.
    Finals { since: Duration },
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Result<SimOutcome, SimError> {
    let failed = |message: String| SimError::Failed {
        seed: config.seed,
        message,
    };
    // Stamps (deadlines the leader judges) on simulated time, as timers.
    herd_api::clock::set_source(simulated_wall_ms);
    let mut rng = Rng::new(config.seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(config.duration + SETUP_BOUND + config.converge_bound + 60 * SEC)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .rng_seed(rng.next_u64())
        .build();
    let root = DataRoot(data_root(config.seed));
    let slots = hosts::add_coordinators(&mut sim, config.members, &config.raft);
    let agents = hosts::add_agents(
        &mut sim,
        config.agents,
        config.members,
        &root.0,
        config.ignore_stops,
        config.leave_sources_running,
    );
    let recorder = Arc::new(Recorder::with_clock(simulated_ns));
    let signals = Arc::new(Signals::default());
    let keys = workload::register_keys(config.keys);
    add_clients(
        &mut sim, config, &agents, &recorder, &signals, &keys, &mut rng,
    );

    let schedule = faults::schedule(
        &mut rng,
        config.duration,
        &config.faults,
        !agents.is_empty(),
    );
    let mut driver = Driver {
        config,
        slots: &slots,
        agents: &agents,
        recorder: &recorder,
        signals: &signals,
        schedule,
        next: 0,
        active: None,
        windows: Vec::new(),
        took_leader: Vec::new(),
        awaiting_leader: None,
        unrecovered: Vec::new(),
        last_heal: Duration::ZERO,
        last_observed: None,
        lines: Vec::new(),
        phase: Phase::Setup,
    };
    loop {
        let now = sim.elapsed();
        if driver.tick(&mut sim, now, &mut rng)? {
            break;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    if !signals.finals_done.load(Ordering::Relaxed) {
        return Err(failed(format!(
            "the final reads did not finish within {} s",
            FINALS_BOUND.as_secs()
        )));
    }
    let Driver {
        windows,
        took_leader,
        lines,
        ..
    } = driver;
    let mut records = recorder.take();
    records.extend(windows.into_iter().map(Record::Fault));
    let history = History { records };
    let verdicts = check::check_all(
        &history,
        &CheckConfig {
            linear_step_budget: 2_000_000,
            jobs: !agents.is_empty(),
            processes: false,
        },
    );
    let verdict = fold(&verdicts);
    let report = Report::new("sim", config.seed, &history, verdicts.clone());
    let failovers_ms = report
        .faults
        .iter()
        .zip(&took_leader)
        .filter(|(_, took)| **took)
        .filter_map(|(f, _)| f.writes_back_ms)
        .collect();
    let new_leader_ms = report
        .faults
        .iter()
        .filter_map(|f| f.new_leader_ms)
        .collect();
    let rescheduled_ms = report
        .faults
        .iter()
        .filter_map(|f| f.rescheduled_ms)
        .collect();
    Ok(SimOutcome {
        seed: config.seed,
        history,
        faults: lines,
        verdicts,
        verdict,
        failovers_ms,
        new_leader_ms,
        rescheduled_ms,
        simulated: sim.elapsed(),
    })
}

const SEC: Duration = Duration::from_secs(1);

/// The first failing verdict, named; else the first undecided; else pass.
fn fold(verdicts: &[(&'static str, Verdict)]) -> Verdict {
    let named = |name: &str, why: &str| format!("{name}: {why}");
    if let Some((name, Verdict::Fail(why))) = verdicts.iter().find(|(_, v)| v.is_fail()) {
        return Verdict::Fail(named(name, why));
    }
    match verdicts
        .iter()
        .find(|(_, v)| matches!(v, Verdict::Unknown(_)))
    {
        Some((name, Verdict::Unknown(why))) => Verdict::Unknown(named(name, why)),
        _ => Verdict::Pass,
    }
}

/// Adds the client hosts: the service's submitter, register clients, a job
/// client and a draining node client (with agents), and the final reader.
#[allow(clippy::too_many_arguments)]
fn add_clients(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    agents: &[SimAgent],
    recorder: &Arc<Recorder>,
    signals: &Arc<Signals>,
    keys: &[String],
    rng: &mut Rng,
) {
    let members = config.members;
    let addrs: Vec<String> = (1..=members).map(hosts::member_addr).collect();
    let migrates = config.migrations && !agents.is_empty();
    if !agents.is_empty() && config.service_count > 0 {
        let recorder = recorder.clone();
        let count = config.service_count;
        sim.client("service", async move {
            let client = hosts::client(members)?;
            let careful = workload::careful_spec(CAREFUL_JOB, CAREFUL_COUNT, CAREFUL_STOP_AFTER);
            let mut specs = vec![workload::sleeper_spec(SERVICE_JOB, count), careful];
            if migrates {
                specs.push(live::vm_job_spec());
            }
            for spec in specs {
                // Tried until the simulation ends; every attempt is recorded.
                let _ = workload::submit_setup(
                    &client,
                    members as usize,
                    spec,
                    &recorder,
                    Duration::MAX,
                )
                .await;
            }
            Ok(())
        });
    }
    let context =
        |stop: &Arc<AtomicBool>| ClientContext::new(addrs.clone(), recorder.clone(), stop.clone());
    let mut clients: Vec<(String, StartClient)> = Vec::new();
    for process in 1..=config.clients {
        let keys = keys.to_vec();
        let client_rng = rng.fork();
        let stale = config.stale_reads;
        clients.push((
            format!("client{process}"),
            Box::new(move |mut ctx| {
                ctx.stale_reads = stale;
                Box::pin(workload::register_client(ctx, process, keys, client_rng))
            }),
        ));
    }
    if !agents.is_empty() {
        let job_rng = rng.fork();
        let process = config.clients + 1;
        clients.push((
            "jobs".into(),
            Box::new(move |ctx| Box::pin(workload::job_client(ctx, process, job_rng))),
        ));
    }
    for (name, task) in clients {
        let ctx = context(&signals.clients_stop);
        let signals = signals.clone();
        sim.client(name, async move {
            let ctx = ClientContext {
                client: Some(hosts::client(members)?),
                ..ctx
            };
            raised(&signals.go).await;
            task(ctx).await;
            Ok(())
        });
    }
    if !agents.is_empty() {
        let ctx = context(&signals.drains_stop);
        let nodes: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
        let node_rng = rng.fork();
        let process = config.clients + 2;
        let signals = signals.clone();
        sim.client("drains", async move {
            let ctx = ClientContext {
                client: Some(hosts::client(members)?),
                ..ctx
            };
            raised(&signals.go).await;
            workload::node_client(ctx, process, nodes, node_rng).await;
            Ok(())
        });
    }
    if migrates {
        // Moves with the faults, then follows its last move to its end.
        let ctx = context(&signals.drains_stop);
        let nodes: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
        let migrate_rng = rng.fork();
        let process = config.clients + 3;
        let signals = signals.clone();
        sim.client("migrations", async move {
            let ctx = ClientContext {
                client: Some(hosts::client(members)?),
                ..ctx
            };
            raised(&signals.go).await;
            migrate::migration_client(ctx, process, live::VM_JOB, nodes, migrate_rng).await;
            signals.migrations_done.store(true, Ordering::Relaxed);
            Ok(())
        });
    }
    // The final reads and lists once the cluster converged: a lost
    // acknowledged write or job shows there at the latest.
    let recorder = recorder.clone();
    let signals = signals.clone();
    let keys = keys.to_vec();
    sim.client("finals", async move {
        let client = hosts::client(members)?;
        raised(&signals.finals).await;
        finals::record(&client, &keys, &recorder).await;
        if migrates {
            // Every migration has ended by now, unless one never does,
            // which the checker then reports.
            let waited = tokio::time::timeout(MIGRATIONS_BOUND, raised(&signals.migrations_done));
            let _ = waited.await;
            migrate::record_final(&client, &recorder).await;
        }
        signals.finals_done.store(true, Ordering::Relaxed);
        Ok(())
    });
}

/// A client's work, boxed so that different clients share one list.
type ClientTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Starts a client's work once its context is ready.
type StartClient = Box<dyn FnOnce(ClientContext) -> ClientTask>;

/// The simulation's driver: between steps it injects and heals faults,
/// observes the cluster, samples the machines and moves the run through
/// its phases.
struct Driver<'a> {
    config: &'a SimConfig,
    slots: &'a [Slot],
    agents: &'a [SimAgent],
    recorder: &'a Recorder,
    signals: &'a Signals,
    schedule: Vec<Window>,
    next: usize,
    active: Option<(Active, Duration)>,
    windows: Vec<FaultWindow>,
    /// Per window: whether it took the leader away.
    took_leader: Vec<bool>,
    /// The leader before the fault in force, and its window, until a
    /// majority names another.
    awaiting_leader: Option<(u64, usize)>,
    /// Windows healed but not yet whole again.
    unrecovered: Vec<usize>,
    last_heal: Duration,
    last_observed: Option<Duration>,
    /// The fault log for the report (`  3.000 s  crash c2`).
    lines: Vec<String>,
    phase: Phase,
}

fn ns(at: Duration) -> u64 {
    at.as_nanos() as u64
}

impl Driver<'_> {
    /// One look between steps at simulated time `now`; true: the run is over.
    fn tick(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        rng: &mut Rng,
    ) -> Result<bool, SimError> {
        let observe = self
            .last_observed
            .is_none_or(|at| now.saturating_sub(at) >= OBSERVE_EVERY);
        if let Phase::Faults { from } = self.phase {
            self.faults(sim, now, from, rng);
        }
        if !observe {
            return Ok(false);
        }
        self.last_observed = Some(now);
        if let (Some((old, index)), Some(_)) = (self.awaiting_leader, &self.active) {
            if observe::majority_leader(self.slots).is_some_and(|l| l != old) {
                let window = &mut self.windows[index];
                window.new_leader_after_ns = Some(ns(now).saturating_sub(window.start_ns));
                self.awaiting_leader = None;
            }
        }
        let whole = observe::whole(self.slots, self.agents, self.config.service_count);
        let settled = match self.phase {
            Phase::Faults { .. } => self.active.is_none() && self.unrecovered.is_empty(),
            Phase::Settling { converged, .. } => converged,
            _ => false,
        };
        if !self.agents.is_empty() && self.phase != Phase::Setup {
            self.recorder.push(Record::Sample(observe::sample(
                self.agents,
                ns(now),
                settled,
            )));
        }
        match self.phase {
            Phase::Setup if whole => {
                self.signals.go.store(true, Ordering::Relaxed);
                self.phase = Phase::Faults { from: now };
            }
            Phase::Setup if now > SETUP_BOUND => {
                return Err(SimError::Failed {
                    seed: self.config.seed,
                    message: format!(
                        "the cluster was not whole (leader, nodes ready, service at count) within {} s of starting",
                        SETUP_BOUND.as_secs()
                    ),
                });
            }
            Phase::Setup => {}
            Phase::Faults { from } => {
                if whole && self.active.is_none() {
                    self.recovered(now);
                }
                if now >= from + self.config.duration && self.active.is_none() {
                    self.signals.drains_stop.store(true, Ordering::Relaxed);
                    self.phase = Phase::Converging { since: now };
                }
            }
            Phase::Converging { since } => {
                let late = now.saturating_sub(since) > self.config.converge_bound;
                if whole || late {
                    if whole {
                        self.recovered(now);
                    }
                    self.recorder.push(Record::Converged {
                        healed_ns: ns(self.last_heal),
                        at_ns: whole.then(|| ns(now)),
                        bound_ns: ns(self.config.converge_bound),
                    });
                    self.signals.clients_stop.store(true, Ordering::Relaxed);
                    self.phase = Phase::Settling {
                        until: now + SETTLED_FOR,
                        converged: whole,
                    };
                }
            }
            Phase::Settling { until, .. } if now >= until => {
                self.signals.finals.store(true, Ordering::Relaxed);
                self.phase = Phase::Finals { since: now };
            }
            Phase::Settling { .. } => {}
            Phase::Finals { since } => {
                if self.signals.finals_done.load(Ordering::Relaxed)
                    || now.saturating_sub(since) > FINALS_BOUND
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Injects the next scheduled fault, or heals the one in force.
    fn faults(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, from: Duration, rng: &mut Rng) {
        if let Some((active, until)) = self.active.take() {
            if now < until {
                self.active = Some((active, until));
                return;
            }
            faults::heal(sim, &active);
            self.awaiting_leader = None;
            self.last_heal = now;
            self.lines
                .push(format!("{:>7.3} s  heal", now.as_secs_f64()));
            if let Some(window) = self.windows.last_mut() {
                window.end_ns = Some(ns(now));
            }
            self.unrecovered.push(self.windows.len() - 1);
            return;
        }
        let Some(&(at, length, kind)) = self.schedule.get(self.next) else {
            return;
        };
        if now < from + at {
            return;
        }
        self.next += 1;
        let leader = observe::majority_leader(self.slots);
        let targets = Targets {
            slots: self.slots,
            agents: self.agents,
            leader: leader.or_else(|| observe::some_leader(self.slots)),
        };
        let injected = faults::inject(sim, kind, &targets, rng);
        self.lines
            .push(format!("{:>7.3} s  {}", now.as_secs_f64(), injected.what));
        self.windows.push(FaultWindow {
            what: injected.what,
            start_ns: ns(now),
            end_ns: None,
            recovered_after_ns: None,
            // A crashed agent's workloads run on with nothing to stop them.
            unsupervised_node: injected
                .lost_node
                .clone()
                .filter(|_| kind == SimFault::AgentCrash),
            lost_node: injected.lost_node,
            new_leader_after_ns: None,
        });
        self.took_leader.push(injected.took_leader);
        self.awaiting_leader = leader.map(|l| (l, self.windows.len() - 1));
        self.active = Some((injected.active, now + length));
    }

    /// The cluster is whole at `now`: every healed fault has recovered.
    fn recovered(&mut self, now: Duration) {
        for index in self.unrecovered.drain(..) {
            let window = &mut self.windows[index];
            let end = window.end_ns.unwrap_or(ns(now));
            window.recovered_after_ns = Some(ns(now).saturating_sub(end));
        }
    }
}

/// The simulation's clock, ns (0 outside a simulated host).
fn simulated_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

/// The wall clock inside a simulation ([`herd_api::clock::set_source`]):
/// [`SIMULATED_EPOCH_MS`] plus simulated time; None outside one (the
/// system clock is read then).
fn simulated_wall_ms() -> Option<u64> {
    turmoil::sim_elapsed().map(|d| SIMULATED_EPOCH_MS + d.as_millis() as u64)
}
