//! The WorkloadSupervisor: makes the workloads on this node match the
//! coordinators' desired set, one linked [`WorkloadActor`] per allocation,
//! and keeps the latest report of each for heartbeats.
//!
//! Rules it enforces:
//! - fencing: a desired allocation with a lower generation than the one
//!   running is ignored; a higher one replaces it (stop, then start);
//! - nothing is stopped before the first `Reconcile` (an agent that starts
//!   while the coordinators are unreachable keeps running its work);
//! - a workload with a persisted handle is re-adopted, never started twice;
//! - a crashed workload actor is reported and never stops the supervisor;
//! - a job that asked for it (`stop_after_disconnect`) is stopped once the
//!   coordinators have been silent that long, reported lost, and not
//!   started again at that generation; the one exception to the rule above,
//!   since a re-adopted workload's persisted desired state carries the
//!   setting (the agent's start then counts as the last contact);
//! - such a job is not *started* while the coordinators have been silent
//!   that long either (an assignment can arrive before the first heartbeat
//!   after an outage is accepted): it is held until one is, instead of
//!   being started and stopped at once, which would report it lost.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_api::alloc::AllocStatus;
use herd_api::duration::format_duration;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc::UnboundedSender;

use super::report::{event, AllocReport, DesiredAlloc};
use super::restart::RestartPolicy;
use super::store::{AllocStore, Persisted};
use super::workload_actor::{Mode, MoveOutReady, WorkloadActor, WorkloadArgs, WorkloadMsg};
use crate::driver::{logs, Driver};

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// The complete desired set for this node, as the coordinators see it:
    /// what is missing is started, what is absent is stopped, a higher
    /// generation replaces a lower one, a lower one is ignored.
    Reconcile(Vec<DesiredAlloc>),
    /// The latest report of every allocation known here (heartbeats,
    /// `herd alloc status`).
    Snapshot(RpcReplyPort<Vec<AllocReport>>),
    /// Where an allocation's stdout and stderr files are (`herd alloc
    /// logs`); `None` when this node has no directory for it.
    LogPaths(String, RpcReplyPort<Option<(PathBuf, PathBuf)>>),
    /// A report from a workload actor, recorded and forwarded.
    Report(AllocReport),
    /// How many allocations have a workload actor (starting, running,
    /// stopping or finished but still desired); 0 once a `Reconcile` with an
    /// empty set has taken effect.
    Active(RpcReplyPort<usize>),
    /// No coordinator has accepted this node's heartbeat for this long (sent
    /// by the agent's link every 100 ms).
    CoordinatorsSilent(Duration),
    /// A migration takes an allocation running here at `generation` out of
    /// this node: its workload actor marks it moving and, with `stop`,
    /// stops it at a checkpoint (see [`WorkloadMsg::MoveOut`]).
    MoveOut {
        /// The allocation.
        alloc_id: String,
        /// The generation the migration began with.
        generation: u64,
        /// The migration.
        migration_id: String,
        /// Stop the workload (checkpoint moves) or leave it running (live).
        stop: bool,
        /// The workload as it stands for the move.
        reply: RpcReplyPort<Result<MoveOutReady, String>>,
    },
}

/// What the supervisor is started with.
pub struct SupervisorArgs {
    /// The agent's data directory; allocations live in `data_dir/allocs/<id>/`.
    pub data_dir: PathBuf,
    /// The drivers this node runs, by the name job specs use.
    pub drivers: HashMap<String, Arc<dyn Driver>>,
    /// Where every report goes (the agent forwards them to the coordinators).
    pub reports: UnboundedSender<AllocReport>,
    /// How exited workloads are restarted in place.
    pub restart: RestartPolicy,
    /// How long a stopped workload gets before it is killed.
    pub stop_grace: Duration,
}

/// The ractor actor that owns every workload of this node.
pub struct WorkloadSupervisor;

/// One allocation with a workload actor.
struct Entry {
    actor: ActorRef<WorkloadMsg>,
    generation: u64,
    stopping: bool,
    /// Started once the stopping actor has ended.
    replacement: Option<DesiredAlloc>,
    /// The job's `stop_after_disconnect`, from the latest desired state.
    stop_after_disconnect: Option<Duration>,
}

/// The supervisor's state.
pub struct SupervisorState {
    store: AllocStore,
    drivers: HashMap<String, Arc<dyn Driver>>,
    reports: UnboundedSender<AllocReport>,
    restart: RestartPolicy,
    stop_grace: Duration,
    entries: HashMap<String, Entry>,
    by_actor: HashMap<ActorId, String>,
    /// Allocations refused at a generation (unknown driver, fenced...), so
    /// that they are reported once rather than on every reconcile.
    rejected: HashMap<String, u64>,
    latest: BTreeMap<String, AllocReport>,
    /// How long the coordinators had been silent at the last word from the
    /// link.
    silent: Duration,
    /// New allocations of jobs with `stop_after_disconnect` waiting for
    /// the coordinators to be heard again before they start.
    held: BTreeMap<String, DesiredAlloc>,
}

impl Actor for WorkloadSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            store: AllocStore::new(&args.data_dir),
            drivers: args.drivers,
            reports: args.reports,
            restart: args.restart,
            stop_grace: args.stop_grace,
            entries: HashMap::new(),
            by_actor: HashMap::new(),
            rejected: HashMap::new(),
            latest: BTreeMap::new(),
            silent: Duration::ZERO,
            held: BTreeMap::new(),
        })
    }

    /// Re-adopts every workload with a persisted handle before the first
    /// message is handled, so the first `Reconcile` sees them.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let found = match state.store.scan() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the allocation directories");
                return Ok(());
            }
        };
        for persisted in found {
            match persisted {
                Ok(persisted) => {
                    state.adopt(&myself, persisted, false).await;
                }
                Err(e) => tracing::error!(error = %e, "cannot re-adopt an allocation"),
            }
        }
        state.recover_unpersisted(&myself).await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Workload actors end with it; their workloads keep running and the
        // next supervisor re-adopts them.
        myself.stop_children(None);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Reconcile(desired) => state.reconcile(&myself, desired).await,
            SupervisorMsg::Snapshot(reply) => {
                let _ = reply.send(state.latest.values().cloned().collect());
            }
            SupervisorMsg::LogPaths(alloc_id, reply) => {
                let _ = reply.send(state.log_paths(&alloc_id));
            }
            SupervisorMsg::Report(report) => state.record(report),
            SupervisorMsg::Active(reply) => {
                let _ = reply.send(state.entries.len());
            }
            SupervisorMsg::MoveOut {
                alloc_id,
                generation,
                migration_id,
                stop,
                reply,
            } => match state.entries.get(&alloc_id) {
                Some(entry) if entry.generation == generation && !entry.stopping => {
                    let _ = entry.actor.cast(WorkloadMsg::MoveOut {
                        migration_id,
                        stop,
                        reply,
                    });
                }
                Some(entry) => {
                    let _ = reply.send(Err(format!(
                        "generation {generation} does not run here (generation {}{})",
                        entry.generation,
                        if entry.stopping { ", stopping" } else { "" }
                    )));
                }
                None => {
                    let _ = reply.send(Err("no workload runs here for it".into()));
                }
            },
            SupervisorMsg::CoordinatorsSilent(silent) => {
                state.silent = silent;
                state.stop_disconnected(silent);
                state.start_held(&myself).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.child_ended(&myself, cell.get_id(), None).await
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                state
                    .child_ended(&myself, cell.get_id(), Some(error.to_string()))
                    .await
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// Records a report as the latest of its allocation (unless it is about
    /// an older generation than the latest) and forwards it.
    fn record(&mut self, report: AllocReport) {
        let newer = self
            .latest
            .get(&report.alloc_id)
            .is_none_or(|old| old.generation <= report.generation);
        if newer {
            self.latest.insert(report.alloc_id.clone(), report.clone());
        }
        if self.reports.send(report).is_err() {
            tracing::warn!("the agent's report channel is closed");
        }
    }

    fn reject(&mut self, alloc_id: &str, generation: u64, event: &str, detail: String) {
        tracing::warn!(alloc = alloc_id, generation, "{detail}");
        self.rejected.insert(alloc_id.to_string(), generation);
        self.record(AllocReport::new(
            alloc_id,
            generation,
            AllocStatus::Failed,
            event,
            detail,
            None,
        ));
    }

    fn driver(&self, name: &str) -> Result<Arc<dyn Driver>, String> {
        self.drivers.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<_> = self.drivers.keys().map(String::as_str).collect();
            known.sort_unstable();
            format!(
                "unknown driver {name:?}: this node runs [{}]",
                known.join(", ")
            )
        })
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        alloc_id: &str,
        generation: u64,
        mode: Mode,
        driver: Arc<dyn Driver>,
    ) -> Option<ActorRef<WorkloadMsg>> {
        let args = WorkloadArgs {
            mode,
            driver,
            store: self.store.clone(),
            supervisor: myself.clone(),
            restart: self.restart,
            stop_grace: self.stop_grace,
        };
        let stop_after_disconnect = match &args.mode {
            Mode::Start(desired) => desired.stop_after_disconnect,
            Mode::Adopt { desired, .. } => desired.as_ref().and_then(|d| d.stop_after_disconnect),
        };
        match Actor::spawn_linked(None, WorkloadActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), alloc_id.to_string());
                self.entries.insert(
                    alloc_id.to_string(),
                    Entry {
                        actor: actor.clone(),
                        generation,
                        stopping: false,
                        replacement: None,
                        stop_after_disconnect,
                    },
                );
                Some(actor)
            }
            Err(e) => {
                self.record(AllocReport::new(
                    alloc_id,
                    generation,
                    AllocStatus::Failed,
                    event::FAILED,
                    format!("cannot spawn the workload actor: {e}"),
                    None,
                ));
                None
            }
        }
    }

    /// Re-adopts workloads that run though their handle was never
    /// persisted (the agent died between starting one and writing its
    /// handle): their drivers find them from their own records. Without
    /// this such a workload would run on unseen, beside its replacement if
    /// the coordinators placed one meanwhile.
    async fn recover_unpersisted(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let candidates = match self.store.without_handle() {
            Ok(candidates) => candidates,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the allocation directories");
                return;
            }
        };
        for (desired, alloc_dir) in candidates {
            let Ok(driver) = self.driver(&desired.task.driver) else {
                continue;
            };
            let alloc_id = desired.alloc_id.clone();
            let handle = match driver.recover(&desired.spec(alloc_dir)).await {
                Ok(Some(handle)) => handle,
                Ok(None) => {
                    // Nothing runs for it (a failed start): forget it, so
                    // the next agent start does not ask again.
                    if let Err(e) = self.store.forget(&alloc_id) {
                        tracing::warn!(alloc = %alloc_id, error = %e, "cannot forget a start that left nothing running");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(alloc = %alloc_id, error = %e, "cannot tell whether its workload runs");
                    continue;
                }
            };
            tracing::warn!(
                alloc = %alloc_id,
                "its workload runs though its handle was never written (the agent died while starting it): adopting it"
            );
            if let Err(e) = self.store.save_handle(&handle) {
                tracing::error!(alloc = %alloc_id, error = %e, "cannot persist the recovered handle");
            }
            let persisted = Persisted {
                alloc_id,
                handle,
                desired: Some(desired),
            };
            self.adopt(myself, persisted, false).await;
        }
    }

    /// Spawns an actor that re-adopts a persisted workload.
    async fn adopt(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        persisted: Persisted,
        confirmed: bool,
    ) -> Option<ActorRef<WorkloadMsg>> {
        let handle = persisted.handle;
        let (alloc_id, generation) = (persisted.alloc_id, handle.generation);
        let driver = match self.driver(&handle.driver) {
            Ok(driver) => driver,
            Err(message) => {
                let detail = format!("cannot re-adopt its workload: {message}");
                self.reject(&alloc_id, generation, event::FAILED, detail);
                return None;
            }
        };
        let mode = Mode::Adopt {
            handle,
            desired: persisted.desired,
            confirmed,
        };
        self.spawn(myself, &alloc_id, generation, mode, driver)
            .await
    }

    /// Brings up a desired allocation that no actor runs: re-adopts what a
    /// persisted handle says runs, stops an older generation first, starts
    /// otherwise.
    async fn place(&mut self, myself: &ActorRef<SupervisorMsg>, desired: DesiredAlloc) {
        let (alloc_id, generation) = (desired.alloc_id.clone(), desired.generation);
        let driver = match self.driver(&desired.task.driver) {
            Ok(driver) => driver,
            Err(message) => {
                self.reject(&alloc_id, generation, event::FAILED, message);
                return;
            }
        };
        let persisted = match self.store.load(&alloc_id) {
            Ok(persisted) => persisted,
            Err(e) => {
                let detail = format!("cannot read what runs for it: {e}");
                self.reject(&alloc_id, generation, event::START_FAILED, detail);
                return;
            }
        };
        match persisted {
            None => {
                self.spawn(myself, &alloc_id, generation, Mode::Start(desired), driver)
                    .await;
            }
            Some(mut p) if p.handle.generation == generation => {
                p.desired = Some(desired);
                self.adopt(myself, p, true).await;
            }
            Some(p) if p.handle.generation < generation => {
                if self.adopt(myself, p, false).await.is_some() {
                    self.replace(&alloc_id, desired);
                }
            }
            Some(p) => {
                let detail = format!(
                    "generation {generation} refused: generation {} ran here",
                    p.handle.generation
                );
                tracing::warn!(alloc = %alloc_id, "{detail}");
                self.rejected.insert(alloc_id, generation);
            }
        }
    }

    /// Stops every workload whose job asked to stop after the coordinators
    /// have been silent for `silent`. The report (lost, so the coordinators
    /// place a replacement if they have not already) is sent first and
    /// queued until they answer; the generation is remembered as refused,
    /// so an assignment still naming it does not start it again.
    fn stop_disconnected(&mut self, silent: Duration) {
        let due: Vec<(String, u64, Duration)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.stopping)
            .filter_map(|(id, e)| {
                let after = e.stop_after_disconnect?;
                (silent >= after).then(|| (id.clone(), e.generation, after))
            })
            .collect();
        for (alloc_id, generation, after) in due {
            let detail = format!(
                "no coordinator answered for {} (the job's stop_after_disconnect is {}): stopped",
                format_duration(silent),
                format_duration(after)
            );
            tracing::warn!(alloc = %alloc_id, generation, "{detail}");
            self.record(AllocReport::new(
                &alloc_id,
                generation,
                AllocStatus::Lost,
                event::STOPPED_AFTER_DISCONNECT,
                detail,
                None,
            ));
            self.rejected.insert(alloc_id.clone(), generation);
            if let Some(entry) = self.entries.get_mut(&alloc_id) {
                entry.stopping = true;
                entry.replacement = None;
                let _ = entry.actor.cast(WorkloadMsg::Stop);
            }
        }
    }

    /// Whether `desired` must wait for the coordinators before it starts.
    fn must_hold(&self, desired: &DesiredAlloc) -> bool {
        desired
            .stop_after_disconnect
            .is_some_and(|after| self.silent >= after)
    }

    /// Starts the held allocations the coordinators' silence no longer
    /// forbids.
    async fn start_held(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(_, d)| !self.must_hold(d))
            .map(|(id, _)| id.clone())
            .collect();
        for alloc_id in due {
            if let Some(desired) = self.held.remove(&alloc_id) {
                tracing::info!(alloc = %alloc_id, "coordinators heard again: starting");
                self.place(myself, desired).await;
            }
        }
    }

    /// Stops the allocation's actor and starts `desired` once it has ended.
    fn replace(&mut self, alloc_id: &str, desired: DesiredAlloc) {
        if let Some(entry) = self.entries.get_mut(alloc_id) {
            if !entry.stopping {
                entry.stopping = true;
                let _ = entry.actor.cast(WorkloadMsg::Stop);
            }
            let newer = entry
                .replacement
                .as_ref()
                .is_none_or(|r| r.generation <= desired.generation);
            if newer {
                entry.replacement = Some(desired);
            }
        }
    }

    async fn reconcile(&mut self, myself: &ActorRef<SupervisorMsg>, desired: Vec<DesiredAlloc>) {
        let mut wanted: BTreeMap<String, DesiredAlloc> = BTreeMap::new();
        for d in desired {
            let keep = wanted
                .get(&d.alloc_id)
                .is_none_or(|old| old.generation < d.generation);
            if keep {
                wanted.insert(d.alloc_id.clone(), d);
            }
        }
        for (alloc_id, entry) in &mut self.entries {
            if wanted.contains_key(alloc_id) {
                continue;
            }
            entry.replacement = None;
            if !entry.stopping {
                tracing::info!(alloc = %alloc_id, "no longer desired here: stopping");
                entry.stopping = true;
                let _ = entry.actor.cast(WorkloadMsg::Stop);
            }
        }
        self.rejected.retain(|id, _| wanted.contains_key(id));
        self.held.retain(|id, _| wanted.contains_key(id));
        for (alloc_id, d) in &wanted {
            match self.rejected.get(alloc_id) {
                Some(generation) if *generation >= d.generation => continue,
                Some(_) => {
                    self.rejected.remove(alloc_id);
                }
                None => {}
            }
            let Some(entry) = self.entries.get_mut(alloc_id) else {
                if self.must_hold(d) {
                    if !self.held.contains_key(alloc_id) {
                        tracing::info!(
                            alloc = %alloc_id,
                            silent_ms = self.silent.as_millis() as u64,
                            "not started until a coordinator is heard again (stop_after_disconnect)"
                        );
                    }
                    self.held.insert(alloc_id.clone(), d.clone());
                } else {
                    self.held.remove(alloc_id);
                    self.place(myself, d.clone()).await;
                }
                continue;
            };
            if d.generation == entry.generation {
                entry.stop_after_disconnect = d.stop_after_disconnect;
            }
            if d.generation < entry.generation {
                tracing::warn!(
                    alloc = %alloc_id,
                    desired = d.generation,
                    running = entry.generation,
                    "ignoring an older generation than the one running here"
                );
            } else if entry.stopping || d.generation > entry.generation {
                self.replace(alloc_id, d.clone());
            } else {
                let _ = entry.actor.cast(WorkloadMsg::Confirm(Box::new(d.clone())));
            }
        }
        let entries = &self.entries;
        let rejected = &self.rejected;
        self.latest.retain(|id, _| {
            wanted.contains_key(id) || entries.contains_key(id) || rejected.contains_key(id)
        });
    }

    /// A workload actor ended: forget it, report a crash, and start the
    /// replacement it was stopped for.
    async fn child_ended(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        actor: ActorId,
        failure: Option<String>,
    ) {
        let Some(alloc_id) = self.by_actor.remove(&actor) else {
            return;
        };
        let Some(entry) = self.entries.get(&alloc_id) else {
            return;
        };
        if entry.actor.get_id() != actor {
            return;
        }
        let Some(entry) = self.entries.remove(&alloc_id) else {
            return;
        };
        if let Some(error) = failure {
            tracing::error!(alloc = %alloc_id, %error, "workload actor failed");
            self.record(AllocReport::new(
                &alloc_id,
                entry.generation,
                AllocStatus::Failed,
                event::FAILED,
                format!(
                    "its workload actor failed ({error}); taken up again on the next reconcile if still desired"
                ),
                None,
            ));
        }
        if let Some(desired) = entry.replacement {
            self.place(myself, desired).await;
        }
    }

    fn log_paths(&self, alloc_id: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.store.alloc_dir(alloc_id).ok()?;
        dir.is_dir().then(|| logs::paths(&dir))
    }
}
