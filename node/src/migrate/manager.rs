//! The MigrationManager actor: the agent's part in the migrations its
//! assignment set names.
//!
//! Every assignment set passes through it on its way from the coordinator
//! link to the workload supervisor, so that it can act before the
//! supervisor does:
//! - **source** (the allocation runs here and leaves): the allocation goes
//!   on to the supervisor marked `moving_out`, and the source's steps
//!   ([`super::source`]) run in a task, once per migration;
//! - **target** (the allocation arrives here at generation + 1): kept from
//!   the supervisor, which must not run it yet; the migration is
//!   authorized in the [`IncomingRegistry`] the `AgentPeer` service serves,
//!   and a live move's driver readies its incoming workload there;
//! - **ended**: a target whose allocation now comes without the migration,
//!   at the migration's generation, saw the switch-over commit: what
//!   arrived is installed (the checkpoint put in the allocation's
//!   directory, the incoming VM let run) *before* the set reaches the
//!   supervisor, which then starts or adopts it. Otherwise the migration
//!   was aborted and what arrived is dropped.
//!
//! A source agent that restarts mid-migration does not take the migration
//! up again: it aborts it, and its workload actor resumes the workload
//! stopped or paused for it (the persisted moving mark says so).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_actors::driver::live::SOURCE_NODE_ENV;
use herd_actors::driver::{Driver, MigrationMode, WorkloadHandle};
use herd_actors::workload::store::AllocStore;
use herd_actors::workload::{DesiredAlloc, SupervisorMsg};
use herd_api::client::HerdClient;
use herd_api::migration::MigrationPhase;
use herd_api::proto::agent::MigrationAssignment;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::gang;
use super::offline::{self, OfflineSource, SetItem};
use super::receiver::{
    ConfirmFuture, EndpointsFuture, IncomingConfirmation, IncomingEndpointsSource,
    IncomingMigration, IncomingRegistry,
};
use super::report::MigrationReporter;
use super::source::{self, Outgoing, CHECKPOINT_SUBDIR};
use crate::balance::journal::{MoveJournal, Phase, Role};

/// How often the move journal is laid over the last set unprompted.
const JOURNAL_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The role names of `MigrationAssignment.role`.
const SOURCE: &str = "source";
const TARGET: &str = "target";

/// Messages of the manager.
pub enum MigrationMsg {
    /// An assignment set, each allocation with the migration it takes part
    /// in, if any; passed on to `supervisor` once acted on.
    Assigned {
        /// The allocations wanted here.
        allocs: Vec<(DesiredAlloc, Option<MigrationAssignment>)>,
        /// The workload supervisor to pass the set on to.
        supervisor: ActorRef<SupervisorMsg>,
        /// The link's client, to report migrations with.
        client: HerdClient,
    },
    /// The move journal changed: act on the last set again, with the
    /// journal laid over it (see [`super::offline`]).
    JournalChanged,
}

/// What the manager is started with.
pub struct MigrationManagerArgs {
    /// This node's name.
    pub node: String,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// The drivers, by name.
    pub drivers: HashMap<String, Arc<dyn Driver>>,
    /// The migrations the `AgentPeer` service may receive.
    pub incoming: IncomingRegistry,
    /// Where ended migrations are counted (the agent's metrics).
    pub stats: Arc<crate::metrics::AgentStats>,
}

/// The actor; see the module documentation.
pub struct MigrationManager;

/// A migration arriving here.
struct Arrival {
    migration_id: String,
    /// The generation the switch-over gives the allocation.
    generation: u64,
    mode: MigrationMode,
    driver: Arc<dyn Driver>,
    /// A live move's incoming workload, once its driver readied it.
    live: Arc<Mutex<Option<WorkloadHandle>>>,
    /// Whether the `AgentPeer` registry serves it (an arrival taken up
    /// from disk after an agent restart is authorized again once a set
    /// names it).
    authorized: bool,
}

/// The manager's state.
pub struct ManagerState {
    node: String,
    data_dir: PathBuf,
    drivers: HashMap<String, Arc<dyn Driver>>,
    registry: IncomingRegistry,
    store: AllocStore,
    /// Source tasks by migration id (finished ones stay until the set no
    /// longer names the migration, so that none runs twice).
    outgoing: HashMap<String, JoinHandle<()>>,
    /// Arrivals by allocation id.
    arrivals: HashMap<String, Arrival>,
    /// Whether the first set was acted on: arrivals and staging
    /// directories an earlier agent process left are looked at before it.
    first_set_seen: bool,
    stats: Arc<crate::metrics::AgentStats>,
    /// The balancing moves made with the coordinators away (None: the
    /// journal could not be read; no such move is made then).
    journal: Option<MoveJournal>,
    /// The last set from the link, acted on again when the journal changes.
    last: Option<LastSet>,
    /// Wakes the actor on every journal change.
    journal_watch: Option<JoinHandle<()>>,
}

/// The last assignment set, as the link sent it.
struct LastSet {
    allocs: Vec<SetItem>,
    supervisor: ActorRef<SupervisorMsg>,
    client: HerdClient,
}

impl Actor for MigrationManager {
    type Msg = MigrationMsg;
    type State = ManagerState;
    type Arguments = MigrationManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let journal = match MoveJournal::open(&args.data_dir) {
            Ok(journal) => Some(journal),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the balancing move journal; no move is made with the coordinators away");
                None
            }
        };
        // The journal is laid over the last set again now and then, so that
        // an arrival whose source went silent is given up even while no set
        // and no journal change comes.
        myself.send_interval(JOURNAL_RECHECK, || MigrationMsg::JournalChanged);
        let journal_watch = journal.as_ref().map(|journal| {
            offline::take_up(journal, &args.node, args.incoming.peer_connector());
            let mut changes = journal.subscribe();
            let myself = myself.clone();
            tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    if myself.cast(MigrationMsg::JournalChanged).is_err() {
                        return;
                    }
                }
            })
        });
        Ok(ManagerState {
            journal,
            last: None,
            journal_watch,
            store: AllocStore::new(&args.data_dir),
            node: args.node,
            data_dir: args.data_dir,
            drivers: args.drivers,
            registry: args.incoming,
            outgoing: HashMap::new(),
            arrivals: HashMap::new(),
            first_set_seen: false,
            stats: args.stats,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A source task dies with its manager: the migration times out or
        // is aborted by the next manager (see the module documentation).
        for (_, task) in state.outgoing.drain() {
            task.abort();
        }
        if let Some(watch) = state.journal_watch.take() {
            watch.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MigrationMsg::Assigned {
                allocs,
                supervisor,
                client,
            } => {
                state.last = Some(LastSet {
                    allocs: allocs.clone(),
                    supervisor: supervisor.clone(),
                    client: client.clone(),
                });
                let desired = state.assigned(allocs, &supervisor, &client).await;
                supervisor.cast(SupervisorMsg::Reconcile(desired))?;
            }
            MigrationMsg::JournalChanged => {
                let Some(last) = &state.last else {
                    return Ok(());
                };
                let (allocs, supervisor, client) = (
                    last.allocs.clone(),
                    last.supervisor.clone(),
                    last.client.clone(),
                );
                let desired = state.assigned(allocs, &supervisor, &client).await;
                supervisor.cast(SupervisorMsg::Reconcile(desired))?;
            }
        }
        Ok(())
    }
}

impl ManagerState {
    /// Acts on a set; returns what the supervisor is to run.
    async fn assigned(
        &mut self,
        allocs: Vec<(DesiredAlloc, Option<MigrationAssignment>)>,
        supervisor: &ActorRef<SupervisorMsg>,
        client: &HerdClient,
    ) -> Vec<DesiredAlloc> {
        if !self.first_set_seen {
            self.recover_arrivals().await;
        }
        let allocs = match &self.journal {
            Some(journal) => {
                offline::expire_stale_arrivals(journal, herd_api::clock::now_ms());
                let (allocs, close) = offline::overlay(&journal.entries(), allocs);
                for id in close {
                    tracing::info!(move_id = %id, "offline balancing move settled; closing its journal entry");
                    if let Err(e) = journal.close(&id) {
                        tracing::warn!(move_id = %id, error = %e, "cannot close a journal entry");
                    }
                }
                allocs
            }
            None => allocs,
        };
        let mut forward = Vec::with_capacity(allocs.len());
        let mut incoming: BTreeMap<String, (DesiredAlloc, MigrationAssignment)> = BTreeMap::new();
        let mut named: HashSet<String> = HashSet::new();
        for (mut desired, migration) in allocs {
            match migration {
                Some(m) if m.role == TARGET => {
                    incoming.insert(desired.alloc_id.clone(), (desired, m));
                }
                Some(m) if m.role == SOURCE => {
                    named.insert(m.id.clone());
                    desired.moving_out = Some(m.id.clone());
                    self.begin_source(&desired, m, supervisor, client);
                    forward.push(desired);
                }
                Some(m) => {
                    tracing::warn!(alloc = %desired.alloc_id, role = %m.role, "ignoring a migration with a role this agent does not know");
                    forward.push(desired);
                }
                None => forward.push(desired),
            }
        }
        // Source tasks of migrations that ended: nothing more to do.
        self.outgoing.retain(|id, task| {
            let keep = named.contains(id);
            if !keep {
                task.abort();
            }
            keep
        });
        self.release_held_learners(&forward);
        self.stats
            .observe_assignments(&forward, incoming.values().map(|(d, m)| (d, m)));
        self.end_arrivals(&incoming, &forward).await;
        for (alloc_id, (desired, m)) in incoming {
            self.begin_arrival(alloc_id, desired, m);
        }
        if !self.first_set_seen {
            self.first_set_seen = true;
            self.sweep_staging().await;
        }
        forward
    }

    /// Takes up the arrivals an earlier agent process readied (their
    /// directories carry the incoming mark): a checkpoint move's staged
    /// files, a live move's incoming workload. The first set then installs
    /// those whose switch-over committed meanwhile and drops the others like
    /// any arrival. A live mark without a handle (the agent died while
    /// readying it) is dropped, stopping whatever its driver finds running.
    async fn recover_arrivals(&mut self) {
        let found = match self.store.incoming() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot look for arriving workloads");
                return;
            }
        };
        for (alloc_id, migration_id, persisted) in found {
            let handle_driver = persisted.as_ref().map(|p| p.handle.driver.clone());
            let desired = persisted
                .as_ref()
                .and_then(|p| p.desired.clone())
                .or_else(|| self.store.desired_of(&alloc_id));
            let Some(driver) = handle_driver
                .or_else(|| desired.as_ref().map(|d| d.task.driver.clone()))
                .and_then(|name| self.drivers.get(&name).cloned())
            else {
                tracing::warn!(alloc = %alloc_id, "an arriving workload of a driver this node lacks; forgetting it");
                let _ = self.store.clear_incoming(&alloc_id);
                continue;
            };
            let mode = driver.capabilities().migration;
            let desired_here = desired;
            match persisted {
                None if mode == MigrationMode::CheckpointRestart => {
                    let Some(desired) = desired_here else {
                        let _ = self.store.clear_incoming(&alloc_id);
                        continue;
                    };
                    tracing::info!(migration = %migration_id, alloc = %alloc_id, "taking up a checkpoint arrival an earlier agent staged");
                    self.arrivals.insert(
                        alloc_id,
                        Arrival {
                            migration_id,
                            generation: desired.generation,
                            mode,
                            driver,
                            live: Arc::new(Mutex::new(None)),
                            authorized: false,
                        },
                    );
                }
                Some(p) => {
                    tracing::info!(migration = %migration_id, alloc = %alloc_id, "taking up an arrival an earlier agent readied");
                    self.arrivals.insert(
                        alloc_id,
                        Arrival {
                            migration_id,
                            generation: p.handle.generation,
                            mode,
                            driver,
                            live: Arc::new(Mutex::new(Some(p.handle))),
                            authorized: false,
                        },
                    );
                }
                None => {
                    let dir = self.store.alloc_dir(&alloc_id);
                    let spec = match (desired_here, dir) {
                        (Some(desired), Ok(dir)) => Some(desired.spec(dir)),
                        _ => None,
                    };
                    if let Some(spec) = spec {
                        if let Ok(Some(handle)) = driver.recover(&spec).await {
                            let _ = driver
                                .stop(&handle, std::time::Duration::from_secs(5))
                                .await;
                        }
                    }
                    let _ = self.store.forget(&alloc_id);
                    let _ = self.store.clear_incoming(&alloc_id);
                }
            }
        }
    }

    /// Deletes the staging directories no arrival of the first set names:
    /// an earlier agent process received them for migrations that ended
    /// while it was down.
    async fn sweep_staging(&self) {
        let root = self.data_dir.join("migrations");
        let live: HashSet<String> = self
            .arrivals
            .values()
            .map(|a| a.migration_id.clone())
            .collect();
        let Ok(mut entries) = tokio::fs::read_dir(&root).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&name) {
                continue;
            }
            tracing::info!(migration = %name, "removing what an earlier agent received for a migration that ended");
            if let Err(e) = tokio::fs::remove_dir_all(entry.path()).await {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale staging directory");
            }
        }
    }

    /// Lets go every learner a gang move held (`checkpoint.hold`) whose
    /// allocation no longer moves out: the move ended without it, however
    /// (see [`super::gang`]).
    fn release_held_learners(&self, forward: &[DesiredAlloc]) {
        for desired in forward.iter().filter(|d| d.moving_out.is_none()) {
            let checkpoints = self
                .drivers
                .get(&desired.task.driver)
                .is_some_and(|d| d.capabilities().migration == MigrationMode::CheckpointRestart);
            if !checkpoints {
                continue;
            }
            if let Ok(dir) = self.store.alloc_dir(&desired.alloc_id) {
                gang::release_hold(&dir.join(CHECKPOINT_SUBDIR));
            }
        }
    }

    /// Starts the source's steps of `m` once.
    fn begin_source(
        &mut self,
        desired: &DesiredAlloc,
        m: MigrationAssignment,
        supervisor: &ActorRef<SupervisorMsg>,
        client: &HerdClient,
    ) {
        if self.outgoing.contains_key(&m.id) {
            return;
        }
        if let Some(task) = self.begin_offline_source(desired, &m, supervisor, client) {
            self.outgoing.insert(m.id.clone(), task);
            return;
        }
        let reporter = MigrationReporter::new(self.node.clone(), client.clone());
        let id = m.id.clone();
        let key = m.id.clone();
        let planned = MigrationPhase::parse(&m.phase) == Some(MigrationPhase::Planned);
        let mode = self
            .drivers
            .get(&desired.task.driver)
            .map(|d| d.capabilities().migration);
        let alloc_dir = match self.store.alloc_dir(&desired.alloc_id) {
            Ok(dir) => dir,
            Err(e) => {
                tracing::warn!(alloc = %desired.alloc_id, error = %e, "bad allocation id");
                return;
            }
        };
        let task = match mode {
            Some(mode) if planned => {
                let outgoing = Outgoing {
                    node: self.node.clone(),
                    alloc_id: desired.alloc_id.clone(),
                    generation: desired.generation,
                    alloc_dir,
                    mode,
                    assignment: m,
                    peers: self.registry.peer_connector(),
                };
                let supervisor = supervisor.clone();
                tokio::spawn(async move {
                    let _ = source::run(outgoing, supervisor, reporter).await;
                })
            }
            _ => {
                let reason = match mode {
                    None => format!("this node has no {} driver", desired.task.driver),
                    Some(_) => format!(
                        "the source agent restarted while the migration was {}",
                        m.phase
                    ),
                };
                tokio::spawn(async move {
                    if let Err(e) = reporter.abort(&id, &reason).await {
                        tracing::warn!(migration = %id, error = %e, "cannot report the abort");
                    }
                })
            }
        };
        self.outgoing.insert(key, task);
    }

    /// Starts the source's steps of an offline balancing move (the journal
    /// names `m` as one this agent is the source of): the offer to the
    /// target, then the usual steps with the journal as the record. A move
    /// found past `moving` (this agent restarted in the switch-over) is
    /// only settled with the target. None: `m` is no offline move.
    fn begin_offline_source(
        &self,
        desired: &DesiredAlloc,
        m: &MigrationAssignment,
        supervisor: &ActorRef<SupervisorMsg>,
        client: &HerdClient,
    ) -> Option<JoinHandle<()>> {
        let journal = self.journal.clone()?;
        let entry = journal.get(&m.id).filter(|e| e.role == Role::Source)?;
        let source = OfflineSource {
            journal,
            move_id: m.id.clone(),
            node: self.node.clone(),
            connector: self.registry.peer_connector(),
        };
        if entry.phase != Phase::Moving {
            return Some(tokio::spawn(offline::resolve_switching(source)));
        }
        let mode = self
            .drivers
            .get(&desired.task.driver)
            .map(|d| d.capabilities().migration);
        let alloc_dir = self.store.alloc_dir(&desired.alloc_id);
        let reporter =
            MigrationReporter::offline(self.node.clone(), client.clone(), source.clone());
        let mut offered = desired.clone();
        offered.moving_out = None;
        let (node, alloc_id, generation) = (
            self.node.clone(),
            desired.alloc_id.clone(),
            desired.generation,
        );
        let (m, supervisor, peers) = (
            m.clone(),
            supervisor.clone(),
            self.registry.peer_connector(),
        );
        Some(tokio::spawn(async move {
            let (Some(mode), Ok(alloc_dir)) = (mode, alloc_dir) else {
                let _ = source
                    .abort("this node cannot move the allocation (no driver, or a bad id)")
                    .await;
                return;
            };
            if let Err(e) = source.offer(&offered).await {
                tracing::warn!(move_id = %m.id, alloc = %alloc_id, error = %e, "the target refused the offline move");
                let _ = source.abort(&format!("the target refused: {e}")).await;
                return;
            }
            let outgoing = Outgoing {
                node,
                alloc_id,
                generation,
                alloc_dir,
                mode,
                assignment: m,
                peers,
            };
            let _ = source::run(outgoing, supervisor, reporter).await;
        }))
    }

    /// Authorizes an arrival the first time the set names it.
    fn begin_arrival(&mut self, alloc_id: String, desired: DesiredAlloc, m: MigrationAssignment) {
        if let Some(arrival) = self.arrivals.get_mut(&alloc_id) {
            if !arrival.authorized && arrival.migration_id == m.id {
                // Taken up from disk: serve what it holds again (files
                // only: a live move's endpoints were handed out already),
                // and confirm what its program took in.
                arrival.authorized = true;
                let confirmation = confirmation(arrival.mode, &arrival.driver, &arrival.live);
                self.authorize(&alloc_id, &m, None, confirmation);
            }
            return;
        }
        let Some(driver) = self.drivers.get(&desired.task.driver).cloned() else {
            tracing::warn!(alloc = %alloc_id, driver = %desired.task.driver, "cannot receive: no such driver here");
            return;
        };
        let mode = driver.capabilities().migration;
        if mode == MigrationMode::CheckpointRestart {
            // Marked, with what it will run, so that an agent restarted
            // before the install still finds the staged checkpoint (and its
            // supervisor leaves the directory alone until then).
            let marked = self
                .store
                .mark_incoming(&alloc_id, &m.id)
                .and_then(|()| self.store.save_desired(&desired).map(|_| ()));
            if let Err(e) = marked {
                tracing::warn!(alloc = %alloc_id, error = %e, "cannot mark an arrival; receiving it anyway");
            }
        }
        let live = Arc::new(Mutex::new(None));
        let endpoints = (mode == MigrationMode::LivePreCopy).then(|| {
            let (driver, store, desired, live, migration_id) = (
                driver.clone(),
                self.store.clone(),
                desired.clone(),
                live.clone(),
                m.id.clone(),
            );
            let source = m.peer_node.clone();
            let ready: Arc<dyn Fn() -> EndpointsFuture + Send + Sync> = Arc::new(move || {
                let (driver, store, desired, live, migration_id) = (
                    driver.clone(),
                    store.clone(),
                    desired.clone(),
                    live.clone(),
                    migration_id.clone(),
                );
                let source = source.clone();
                Box::pin(async move {
                    // Marked first: from here the supervisor's start-up
                    // scans leave the directory to the manager.
                    store
                        .mark_incoming(&desired.alloc_id, &migration_id)
                        .map_err(|e| e.to_string())?;
                    let alloc_dir = store.save_desired(&desired).map_err(|e| e.to_string())?;
                    // The source, for a target that checks who connects.
                    let mut spec = desired.spec(alloc_dir);
                    spec.env.insert(SOURCE_NODE_ENV.to_string(), source);
                    let (handle, endpoints) = driver
                        .prepare_incoming(&spec)
                        .await
                        .map_err(|e| e.to_string())?;
                    store.save_handle(&handle).map_err(|e| e.to_string())?;
                    *lock(&live) = Some(handle);
                    Ok((endpoints.main, endpoints.extra))
                })
            });
            ready
        });
        let confirmation = confirmation(mode, &driver, &live);
        self.authorize(&alloc_id, &m, endpoints, confirmation);
        // A live move's target program starts now, not when the source asks.
        self.registry.ready_early(&m.id);
        tracing::info!(migration = %m.id, alloc = %alloc_id, source = %m.peer_node, "ready to receive");
        self.arrivals.insert(
            alloc_id,
            Arrival {
                migration_id: m.id,
                generation: desired.generation,
                mode,
                driver,
                live,
                authorized: true,
            },
        );
    }

    /// Ends the arrivals the set no longer names: installs those whose
    /// switch-over committed (the allocation is now this node's at their
    /// generation), drops the others.
    async fn end_arrivals(
        &mut self,
        incoming: &BTreeMap<String, (DesiredAlloc, MigrationAssignment)>,
        forward: &[DesiredAlloc],
    ) {
        let ended: Vec<String> = self
            .arrivals
            .iter()
            .filter(|(alloc, arrival)| {
                incoming
                    .get(*alloc)
                    .is_none_or(|(_, m)| m.id != arrival.migration_id)
            })
            .map(|(alloc, _)| alloc.clone())
            .collect();
        for alloc_id in ended {
            let Some(arrival) = self.arrivals.remove(&alloc_id) else {
                continue;
            };
            let switched = forward
                .iter()
                .any(|d| d.alloc_id == alloc_id && d.generation == arrival.generation);
            if switched {
                if let Err(e) = self.install(&alloc_id, &arrival).await {
                    tracing::error!(migration = %arrival.migration_id, alloc = %alloc_id, error = %e, "cannot install what arrived");
                }
            } else {
                self.drop_arrival(&alloc_id, &arrival).await;
            }
        }
    }

    /// Lets the `AgentPeer` service receive `m` for `alloc_id` from its
    /// source, into its staging directory.
    fn authorize(
        &self,
        alloc_id: &str,
        m: &MigrationAssignment,
        endpoints: IncomingEndpointsSource,
        confirmation: IncomingConfirmation,
    ) {
        self.registry.authorize(IncomingMigration {
            migration_id: m.id.clone(),
            alloc_id: alloc_id.to_string(),
            source_node: m.peer_node.clone(),
            kind: m.kind.clone(),
            staging_dir: self.staging_dir(&m.id),
            endpoints,
            confirmation,
        });
    }

    /// Where migration `id` arrives on this node.
    fn staging_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("migrations").join(id)
    }

    /// The switch-over committed: make what arrived the allocation's.
    async fn install(&self, alloc_id: &str, arrival: &Arrival) -> Result<(), String> {
        let staging = self.registry.take(&arrival.migration_id).await;
        match arrival.mode {
            MigrationMode::CheckpointRestart => {
                // An arrival taken up from disk was never served by this
                // process's registry: its staging directory is the truth
                // (the switch-over commits only after the source sent all).
                let staging = staging
                    .or_else(|| {
                        let dir = self.staging_dir(&arrival.migration_id);
                        dir.is_dir().then_some(dir)
                    })
                    .ok_or("nothing arrived")?;
                let alloc_dir = self.store.alloc_dir(alloc_id).map_err(|e| e.to_string())?;
                let target = alloc_dir.join(CHECKPOINT_SUBDIR);
                tokio::task::spawn_blocking(move || install_dir(&staging, &target))
                    .await
                    .map_err(|e| e.to_string())??;
                self.store
                    .clear_incoming(alloc_id)
                    .map_err(|e| e.to_string())?;
                tracing::info!(migration = %arrival.migration_id, alloc = %alloc_id, "checkpoint installed; the workload starts from it");
            }
            MigrationMode::LivePreCopy => {
                if let Some(staging) = staging {
                    let _ = tokio::fs::remove_dir_all(staging).await;
                }
                let handle = lock(&arrival.live)
                    .clone()
                    .ok_or("no incoming workload was readied")?;
                arrival
                    .driver
                    .finish_incoming(&handle)
                    .await
                    .map_err(|e| e.to_string())?;
                // The supervisor adopts it from here (same generation).
                self.store
                    .clear_incoming(alloc_id)
                    .map_err(|e| e.to_string())?;
                tracing::info!(migration = %arrival.migration_id, alloc = %alloc_id, "live migration arrived; the workload runs here");
            }
            MigrationMode::None | MigrationMode::RequestKvCache => {}
        }
        Ok(())
    }

    /// The migration was aborted: drop what arrived.
    async fn drop_arrival(&self, alloc_id: &str, arrival: &Arrival) {
        tracing::info!(migration = %arrival.migration_id, alloc = %alloc_id, "migration ended without the switch-over; dropping what arrived");
        match self.registry.revoke(&arrival.migration_id).await {
            Ok(true) => {}
            // Not served by this process (taken up from disk): its
            // staging directory is removed here.
            Ok(false) => {
                let _ = tokio::fs::remove_dir_all(self.staging_dir(&arrival.migration_id)).await;
            }
            Err(e) => {
                tracing::warn!(migration = %arrival.migration_id, error = %e, "cannot drop the staging directory")
            }
        }
        if arrival.mode == MigrationMode::CheckpointRestart {
            let forgot = self
                .store
                .forget(alloc_id)
                .and_then(|()| self.store.clear_incoming(alloc_id));
            if let Err(e) = forgot {
                tracing::warn!(alloc = %alloc_id, error = %e, "cannot forget an arrival");
            }
        }
        let live = lock(&arrival.live).take();
        if let Some(handle) = live {
            match arrival
                .driver
                .stop(&handle, std::time::Duration::from_secs(5))
                .await
            {
                Ok(_) => {
                    let forgot = self
                        .store
                        .forget(alloc_id)
                        .and_then(|()| self.store.clear_incoming(alloc_id));
                    if let Err(e) = forgot {
                        tracing::warn!(alloc = %alloc_id, error = %e, "cannot forget the incoming workload");
                    }
                }
                Err(e) => {
                    tracing::error!(alloc = %alloc_id, error = %e, "cannot stop the incoming workload")
                }
            }
        }
    }
}

/// Moves the staging directory's files into `target` (replacing what was
/// there), durably.
fn install_dir(staging: &Path, target: &Path) -> Result<(), String> {
    let parent = target
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", target.display()))?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    std::fs::rename(staging, target)
        .map_err(|e| format!("{} -> {}: {e}", staging.display(), target.display()))?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", parent.display()))
}

/// How the `AgentPeer` service confirms, before the switch-over, that a
/// live arrival's program (readied into `live`) took in the whole state;
/// None for moves of files, which the transfer itself confirms.
fn confirmation(
    mode: MigrationMode,
    driver: &Arc<dyn Driver>,
    live: &Arc<Mutex<Option<WorkloadHandle>>>,
) -> IncomingConfirmation {
    if mode != MigrationMode::LivePreCopy {
        return None;
    }
    let (driver, live) = (driver.clone(), live.clone());
    Some(Arc::new(move |wait: Duration| -> ConfirmFuture {
        let driver = driver.clone();
        let handle = lock(&live).clone();
        Box::pin(async move {
            let handle = handle.ok_or("no incoming workload was readied")?;
            driver
                .confirm_incoming(&handle, wait)
                .await
                .map_err(|e| e.to_string())
        })
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
