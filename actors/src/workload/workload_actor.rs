//! One actor per allocation: starts (or re-adopts) its workload through a
//! driver, watches it, restarts it by the restart policy and stops it when
//! told. Every driver call runs in a spawned task that messages the actor
//! back, so a handler never waits on a workload; messages carry the run
//! number they belong to, and those of an earlier run are dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;

use herd_api::alloc::AllocStatus;
use herd_api::job::JobType;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::report::{describe_exit, event, is_lost, AllocReport, DesiredAlloc};
use super::restart::{RestartPolicy, RestartTracker};
use super::store::AllocStore;
use super::supervisor::SupervisorMsg;
use crate::driver::{Driver, ExitInfo, WorkloadHandle, WorkloadState};

/// How a workload actor begins.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Nothing runs for the allocation: start it.
    Start(DesiredAlloc),
    /// A workload may already run (a handle was persisted): look at it and
    /// never start a second copy while it runs.
    Adopt {
        /// The persisted handle.
        handle: WorkloadHandle,
        /// What it was started for, when known.
        desired: Option<DesiredAlloc>,
        /// Whether the coordinators already said it is desired (adopted while
        /// reconciling) or not yet (adopted at agent start): an exited
        /// workload is restarted only once they have.
        confirmed: bool,
    },
}

/// What a workload actor is given by its supervisor.
pub struct WorkloadArgs {
    /// How it begins.
    pub mode: Mode,
    /// The driver of its workload.
    pub driver: Arc<dyn Driver>,
    /// Where handles are persisted.
    pub store: AllocStore,
    /// Where reports go.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// How exits are restarted.
    pub restart: RestartPolicy,
    /// How long a stopped workload gets before it is killed.
    pub stop_grace: Duration,
}

/// Messages of a workload actor: two from the supervisor, the others from
/// the tasks it spawns.
#[derive(Debug)]
pub enum WorkloadMsg {
    /// The coordinators still want this allocation at this generation.
    Confirm(Box<DesiredAlloc>),
    /// The allocation is no longer wanted here: stop its workload, forget
    /// its handle and end.
    Stop,
    /// A start finished (handle persisted) or failed.
    Started {
        /// The run it belongs to.
        run: u64,
        /// The persisted handle, or why there is none.
        result: Result<WorkloadHandle, String>,
    },
    /// An adopted workload was looked at.
    Observed {
        /// The run it belongs to.
        run: u64,
        /// Its state.
        result: Result<WorkloadState, String>,
    },
    /// A watched workload ended.
    Exited {
        /// The run it belongs to.
        run: u64,
        /// How, or why it could not be watched.
        result: Result<ExitInfo, String>,
    },
    /// The delay before a restart is over.
    RestartDue {
        /// The run it belongs to.
        run: u64,
    },
    /// A stop finished (handle removed) or failed.
    Stopped {
        /// The run it belongs to.
        run: u64,
        /// How the workload ended, or why it could not be stopped.
        result: Result<ExitInfo, String>,
    },
    /// A migration takes the workload out of this node: mark it moving
    /// (durably), and with `stop` (a checkpoint move) stop it so that it
    /// checkpoints and exits, keeping its handle; answer once it is ready
    /// to be copied. A live move leaves it running: the driver moves it.
    MoveOut {
        /// The migration.
        migration_id: String,
        /// Stop the workload (checkpoint moves) or leave it running (live).
        stop: bool,
        /// The workload as it stands for the move.
        reply: RpcReplyPort<Result<MoveOutReady, String>>,
    },
    /// A stop for a move finished.
    Suspended {
        /// The run it belongs to.
        run: u64,
        /// How the workload ended, or why it could not be stopped.
        result: Result<ExitInfo, String>,
    },
    /// Makes the handler fail, to test how the supervisor takes a crash.
    #[cfg(test)]
    Crash,
}

/// A workload ready to be moved out: what the migration copies or hands to
/// its driver.
#[derive(Clone)]
pub struct MoveOutReady {
    /// Its handle (of the stopped workload for a checkpoint move).
    pub handle: WorkloadHandle,
    /// The driver that runs it.
    pub driver: Arc<dyn Driver>,
    /// How it ended, for a checkpoint move.
    pub exit: Option<ExitInfo>,
}

impl std::fmt::Debug for MoveOutReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoveOutReady")
            .field("handle", &self.handle)
            .field("driver", &self.driver.name())
            .field("exit", &self.exit)
            .finish()
    }
}

/// The ractor actor of one allocation.
pub struct WorkloadActor;

/// Where the actor's workload stands.
#[derive(Debug, Clone)]
enum Phase {
    /// A start task runs; after an exit when it is a restart.
    Starting(Option<ExitInfo>),
    /// An adopted workload is being looked at.
    Observing,
    /// The workload runs and a wait task watches it.
    Running,
    /// The workload exited and is restarted after a delay.
    Backoff,
    /// Found exited after an agent restart; restarted once confirmed.
    AwaitingConfirm(ExitInfo),
    /// Completed or failed for good at this generation (handle kept so that
    /// a restarted agent does not run it again).
    Finished,
    /// A stop task runs; `report` is false when the allocation had finished.
    Stopping {
        /// Whether a "stopped" report follows.
        report: bool,
    },
    /// Stopping for a move: the workload checkpoints and exits; its
    /// handle stays, and the answer goes to the migration.
    Suspending,
    /// Stopped for a move (its moving mark persisted): it runs again here
    /// if the migration is aborted, and is forgotten once the allocation
    /// left.
    Suspended,
}

/// The state of a workload actor.
pub struct WorkloadActorState {
    alloc_id: String,
    generation: u64,
    desired: Option<DesiredAlloc>,
    confirmed: bool,
    handle: Option<WorkloadHandle>,
    phase: Phase,
    run: u64,
    stop_requested: bool,
    /// The migration moving the workload out, while one does (mirrors the
    /// persisted moving mark).
    moving: Option<String>,
    /// Who waits for a stop for a move.
    suspend_reply: Option<RpcReplyPort<Result<MoveOutReady, String>>>,
    tracker: RestartTracker,
    pending_restart: Option<ExitInfo>,
    driver: Arc<dyn Driver>,
    store: AllocStore,
    supervisor: ActorRef<SupervisorMsg>,
    stop_grace: Duration,
}

impl Actor for WorkloadActor {
    type Msg = WorkloadMsg;
    type State = WorkloadActorState;
    type Arguments = WorkloadArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (alloc_id, generation, desired, confirmed, handle) = match args.mode {
            Mode::Start(desired) => (
                desired.alloc_id.clone(),
                desired.generation,
                Some(desired),
                true,
                None,
            ),
            Mode::Adopt {
                handle,
                desired,
                confirmed,
            } => (
                handle.alloc_id.clone(),
                handle.generation,
                desired,
                confirmed,
                Some(handle),
            ),
        };
        let mut state = WorkloadActorState {
            alloc_id,
            generation,
            desired,
            confirmed,
            handle,
            phase: Phase::Observing,
            run: 0,
            stop_requested: false,
            moving: None,
            suspend_reply: None,
            tracker: RestartTracker::new(args.restart),
            pending_restart: None,
            driver: args.driver,
            store: args.store,
            supervisor: args.supervisor,
            stop_grace: args.stop_grace,
        };
        match state.store.moving(&state.alloc_id) {
            Ok(moving) => state.moving = moving,
            Err(e) => {
                tracing::warn!(alloc = %state.alloc_id, error = %e, "cannot read its moving mark")
            }
        }
        match state.handle.clone() {
            Some(handle) => state.begin_observe(&myself, handle),
            None => state.begin_start(&myself, None),
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkloadMsg::Confirm(desired) => state.on_confirm(&myself, *desired),
            WorkloadMsg::Stop => state.on_stop(&myself),
            WorkloadMsg::Started { run, result } if run == state.run => {
                state.on_started(&myself, result)
            }
            WorkloadMsg::Observed { run, result } if run == state.run => {
                state.on_observed(&myself, result)
            }
            WorkloadMsg::Exited { run, result } if run == state.run => {
                state.on_exited(&myself, result)
            }
            WorkloadMsg::RestartDue { run } if run == state.run => state.on_restart_due(&myself),
            WorkloadMsg::Stopped { run, result } if run == state.run => {
                state.on_stopped(&myself, result)
            }
            WorkloadMsg::MoveOut {
                migration_id,
                stop,
                reply,
            } => state.on_move_out(&myself, migration_id, stop, reply),
            WorkloadMsg::Suspended { run, result } if run == state.run => {
                state.on_suspended(&myself, result)
            }
            #[cfg(test)]
            WorkloadMsg::Crash => return Err("crash requested by a test".into()),
            stale => tracing::debug!(alloc = %state.alloc_id, ?stale, "dropping a stale message"),
        }
        Ok(())
    }
}

impl WorkloadActorState {
    fn report(&self, status: AllocStatus, event: &str, detail: String, exit: Option<ExitInfo>) {
        let report = AllocReport::new(&self.alloc_id, self.generation, status, event, detail, exit);
        if let Err(e) = self.supervisor.cast(SupervisorMsg::Report(report)) {
            tracing::warn!(alloc = %self.alloc_id, error = %e, "supervisor gone, report dropped");
        }
    }

    fn next_run(&mut self) -> u64 {
        self.run += 1;
        self.run
    }

    /// Starts (or restarts, after `after`) the workload in a task.
    fn begin_start(&mut self, myself: &ActorRef<WorkloadMsg>, after: Option<ExitInfo>) {
        let Some(desired) = self.desired.clone() else {
            self.report(
                AllocStatus::Failed,
                event::START_FAILED,
                "nothing known of what to run".to_string(),
                after,
            );
            self.phase = Phase::Finished;
            return;
        };
        self.phase = Phase::Starting(after);
        let run = self.next_run();
        let (driver, store, grace) = (self.driver.clone(), self.store.clone(), self.stop_grace);
        spawn_task(
            myself,
            async move { start(driver.as_ref(), &store, grace, desired).await },
            move |result| WorkloadMsg::Started { run, result },
        );
    }

    /// Looks at an adopted workload in a task.
    fn begin_observe(&mut self, myself: &ActorRef<WorkloadMsg>, handle: WorkloadHandle) {
        self.phase = Phase::Observing;
        let run = self.next_run();
        let driver = self.driver.clone();
        spawn_task(
            myself,
            async move { driver.state(&handle).await.map_err(|e| e.to_string()) },
            move |result| WorkloadMsg::Observed { run, result },
        );
    }

    /// Watches the running workload in a task.
    fn begin_wait(&mut self, myself: &ActorRef<WorkloadMsg>, handle: WorkloadHandle) {
        self.phase = Phase::Running;
        let run = self.next_run();
        let driver = self.driver.clone();
        spawn_task(
            myself,
            async move { driver.wait(&handle).await.map_err(|e| e.to_string()) },
            move |result| WorkloadMsg::Exited { run, result },
        );
    }

    /// Stops the workload (if there is a handle) and forgets its handle, in a task.
    fn begin_stop(&mut self, myself: &ActorRef<WorkloadMsg>) {
        let report = !matches!(self.phase, Phase::Finished);
        self.phase = Phase::Stopping { report };
        let run = self.next_run();
        let Some(handle) = self.handle.clone() else {
            if report {
                self.report(
                    AllocStatus::Stopped,
                    event::STOPPED,
                    "stopped: no longer desired here".to_string(),
                    None,
                );
            }
            myself.stop(None);
            return;
        };
        let (driver, store, grace) = (self.driver.clone(), self.store.clone(), self.stop_grace);
        spawn_task(
            myself,
            async move {
                let exit = driver
                    .stop(&handle, grace)
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .forget(&handle.alloc_id)
                    .map_err(|e| format!("stopped, but cannot forget its handle: {e}"))?;
                store
                    .clear_moving(&handle.alloc_id)
                    .map_err(|e| format!("stopped, but cannot clear its moving mark: {e}"))?;
                Ok(exit)
            },
            move |result| WorkloadMsg::Stopped { run, result },
        );
    }

    fn on_confirm(&mut self, myself: &ActorRef<WorkloadMsg>, desired: DesiredAlloc) {
        if desired.generation != self.generation {
            return;
        }
        let aborted = self.moving.is_some() && desired.moving_out.is_none();
        self.desired = Some(desired);
        self.confirmed = true;
        if aborted {
            self.on_move_aborted(myself);
            return;
        }
        if let Phase::AwaitingConfirm(exit) = self.phase.clone() {
            self.on_exit(myself, exit);
        }
    }

    fn on_stop(&mut self, myself: &ActorRef<WorkloadMsg>) {
        self.stop_requested = true;
        match self.phase {
            // The task in flight decides; its answer sees `stop_requested`.
            Phase::Starting(_) | Phase::Observing | Phase::Stopping { .. } | Phase::Suspending => {}
            Phase::Running
            | Phase::Backoff
            | Phase::AwaitingConfirm(_)
            | Phase::Finished
            | Phase::Suspended => self.begin_stop(myself),
        }
    }

    /// Persists the moving mark (so a restarted agent knows too).
    fn mark_moving(&mut self, migration_id: &str) -> Result<(), String> {
        self.store
            .mark_moving(&self.alloc_id, migration_id)
            .map_err(|e| format!("cannot persist the moving mark: {e}"))?;
        self.moving = Some(migration_id.to_string());
        Ok(())
    }

    fn clear_moving(&mut self) {
        if let Err(e) = self.store.clear_moving(&self.alloc_id) {
            tracing::warn!(alloc = %self.alloc_id, error = %e, "cannot clear its moving mark");
        }
        self.moving = None;
    }

    fn on_move_out(
        &mut self,
        myself: &ActorRef<WorkloadMsg>,
        migration_id: String,
        stop: bool,
        reply: RpcReplyPort<Result<MoveOutReady, String>>,
    ) {
        let driver = self.driver.clone();
        let ready = |handle: WorkloadHandle, exit| MoveOutReady {
            handle,
            driver,
            exit,
        };
        if self.stop_requested {
            let _ = reply.send(Err("the allocation is being stopped here".into()));
            return;
        }
        match (&self.phase, self.handle.clone()) {
            // Asked again (a retried step of the same migration).
            (Phase::Suspended, Some(handle)) if self.moving.as_deref() == Some(&migration_id) => {
                let _ = reply.send(Ok(ready(handle, None)));
            }
            (Phase::Running, Some(handle)) => {
                if let Err(e) = self.mark_moving(&migration_id) {
                    let _ = reply.send(Err(e));
                    return;
                }
                if !stop {
                    let _ = reply.send(Ok(ready(handle, None)));
                    return;
                }
                tracing::info!(alloc = %self.alloc_id, migration = %migration_id, "stopping to move out");
                self.phase = Phase::Suspending;
                self.suspend_reply = Some(reply);
                let run = self.next_run();
                let (driver, grace) = (self.driver.clone(), self.stop_grace);
                spawn_task(
                    myself,
                    async move { driver.stop(&handle, grace).await.map_err(|e| e.to_string()) },
                    move |result| WorkloadMsg::Suspended { run, result },
                );
            }
            (phase, _) => {
                let _ = reply.send(Err(format!("the workload is not running here ({phase:?})")));
            }
        }
    }

    fn on_suspended(&mut self, myself: &ActorRef<WorkloadMsg>, result: Result<ExitInfo, String>) {
        let reply = self.suspend_reply.take();
        match (result, self.handle.clone()) {
            (Ok(exit), Some(handle)) => {
                self.phase = Phase::Suspended;
                if self.stop_requested {
                    self.begin_stop(myself);
                    if let Some(reply) = reply {
                        let _ = reply.send(Err("the allocation is being stopped here".into()));
                    }
                    return;
                }
                if self.moving.is_none() {
                    // Aborted while it stopped: run it here again.
                    if let Some(reply) = reply {
                        let _ = reply.send(Err("the migration was aborted".into()));
                    }
                    self.moving = Some(String::new());
                    self.on_move_aborted(myself);
                    return;
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(MoveOutReady {
                        handle,
                        driver: self.driver.clone(),
                        exit: Some(exit),
                    }));
                }
            }
            (result, _) => {
                // It may still run: it stays this node's, as if never asked.
                let message = match result {
                    Err(e) => format!("cannot stop it to move: {e}"),
                    Ok(_) => "stopped with no handle".to_string(),
                };
                self.phase = Phase::Finished;
                self.report(AllocStatus::Failed, event::FAILED, message.clone(), None);
                if let Some(reply) = reply {
                    let _ = reply.send(Err(message));
                }
            }
        }
    }

    /// The migration out ended without the allocation leaving: run here
    /// again what was stopped or paused for it.
    fn on_move_aborted(&mut self, myself: &ActorRef<WorkloadMsg>) {
        let migration = self.moving.clone().unwrap_or_default();
        self.clear_moving();
        match (&self.phase, self.handle.clone()) {
            (Phase::Suspended, _) => {
                self.report(
                    AllocStatus::Running,
                    event::MOVE_ABORTED,
                    format!(
                        "migration {migration} aborted: starting again here from its checkpoint"
                    ),
                    None,
                );
                self.begin_start(myself, None);
            }
            (Phase::Running, Some(handle)) => {
                self.report(
                    AllocStatus::Running,
                    event::MOVE_ABORTED,
                    format!("migration {migration} aborted: running on here"),
                    None,
                );
                let driver = self.driver.clone();
                let alloc = self.alloc_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = driver.cancel_out(&handle).await {
                        tracing::warn!(%alloc, error = %e, "cannot cancel the move out");
                    }
                });
            }
            // A stop in flight for the move: its answer finds the mark gone
            // and the next confirm starts it again.
            _ => {}
        }
    }

    fn on_started(
        &mut self,
        myself: &ActorRef<WorkloadMsg>,
        result: Result<WorkloadHandle, String>,
    ) {
        let after = match &self.phase {
            Phase::Starting(after) => after.clone(),
            _ => None,
        };
        match result {
            Ok(handle) => {
                self.handle = Some(handle.clone());
                if self.stop_requested {
                    self.begin_stop(myself);
                    return;
                }
                match after {
                    None => self.report(
                        AllocStatus::Running,
                        event::STARTED,
                        format!("started by driver {}", handle.driver),
                        None,
                    ),
                    Some(exit) => self.report(
                        AllocStatus::Running,
                        event::RESTARTED,
                        format!(
                            "restarted after {} (restart {} of {} allowed)",
                            describe_exit(&exit),
                            self.tracker.count(),
                            self.tracker.attempts()
                        ),
                        Some(exit),
                    ),
                }
                self.begin_wait(myself, handle);
            }
            Err(message) => {
                self.report(AllocStatus::Failed, event::START_FAILED, message, after);
                self.phase = Phase::Finished;
                if self.stop_requested {
                    self.begin_stop(myself);
                }
            }
        }
    }

    fn on_observed(
        &mut self,
        myself: &ActorRef<WorkloadMsg>,
        result: Result<WorkloadState, String>,
    ) {
        if self.stop_requested {
            self.begin_stop(myself);
            return;
        }
        let exit = match result {
            Ok(WorkloadState::Running | WorkloadState::Paused) => {
                let Some(handle) = self.handle.clone() else {
                    return;
                };
                self.report(
                    AllocStatus::Running,
                    event::ADOPTED,
                    "found running after an agent restart".to_string(),
                    None,
                );
                self.begin_wait(myself, handle);
                return;
            }
            Ok(WorkloadState::Exited(_)) if self.moving.is_some() => {
                // Stopped for a move before the agent restarted: the next
                // confirm says whether the move went on or was aborted.
                self.phase = Phase::Suspended;
                return;
            }
            Ok(WorkloadState::Exited(exit)) => exit,
            Ok(WorkloadState::Lost(message)) => ExitInfo {
                code: None,
                signal: None,
                finished_at_ms: 0,
                message: Some(format!("lost: {message}")),
            },
            Err(e) => {
                // It may still run: never start another copy.
                self.report(
                    AllocStatus::Failed,
                    event::FAILED,
                    format!("cannot look at the adopted workload: {e}"),
                    None,
                );
                self.phase = Phase::Finished;
                return;
            }
        };
        if self.confirmed {
            self.on_exit(myself, exit);
            return;
        }
        let batch_success = exit.success()
            && self
                .desired
                .as_ref()
                .is_some_and(|d| d.job_type == JobType::Batch);
        if batch_success {
            self.on_exit(myself, exit);
            return;
        }
        self.report(
            AllocStatus::Pending,
            event::EXITED,
            format!(
                "{} while the agent was down; restarted once the coordinators confirm it",
                describe_exit(&exit)
            ),
            Some(exit.clone()),
        );
        self.phase = Phase::AwaitingConfirm(exit);
    }

    fn on_exited(&mut self, myself: &ActorRef<WorkloadMsg>, result: Result<ExitInfo, String>) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        match result {
            Ok(exit) => self.on_exit(myself, exit),
            Err(e) => {
                // It may still run: never start another copy.
                self.report(
                    AllocStatus::Failed,
                    event::FAILED,
                    format!("cannot watch the workload: {e}"),
                    None,
                );
                self.phase = Phase::Finished;
            }
        }
    }

    /// Applies the exit rules: batch success completes; anything else is
    /// restarted by the policy until the attempts run out.
    fn on_exit(&mut self, myself: &ActorRef<WorkloadMsg>, exit: ExitInfo) {
        let batch = self
            .desired
            .as_ref()
            .is_none_or(|d| d.job_type == JobType::Batch);
        if batch && exit.success() {
            self.report(
                AllocStatus::Complete,
                event::COMPLETED,
                describe_exit(&exit),
                Some(exit),
            );
            self.phase = Phase::Finished;
            return;
        }
        match self.tracker.next(Instant::now()) {
            Some(delay) => {
                tracing::info!(alloc = %self.alloc_id, exit = %describe_exit(&exit), ?delay, "restarting");
                self.phase = Phase::Backoff;
                let run = self.next_run();
                let me = myself.clone();
                self.pending_restart = Some(exit);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.cast(WorkloadMsg::RestartDue { run });
                });
            }
            None => {
                let lost = is_lost(&exit);
                let detail = format!(
                    "{}; gave up after {} restarts",
                    describe_exit(&exit),
                    self.tracker.count()
                );
                let name = if lost { event::LOST } else { event::FAILED };
                self.report(AllocStatus::Failed, name, detail, Some(exit));
                self.phase = Phase::Finished;
            }
        }
    }

    fn on_restart_due(&mut self, myself: &ActorRef<WorkloadMsg>) {
        if matches!(self.phase, Phase::Backoff) {
            let after = self.pending_restart.take();
            self.begin_start(myself, after);
        }
    }

    fn on_stopped(&mut self, myself: &ActorRef<WorkloadMsg>, result: Result<ExitInfo, String>) {
        let report = matches!(self.phase, Phase::Stopping { report: true });
        match result {
            Ok(exit) if report => self.report(
                AllocStatus::Stopped,
                event::STOPPED,
                format!("stopped: {}", describe_exit(&exit)),
                Some(exit),
            ),
            Ok(_) => {}
            Err(message) => self.report(AllocStatus::Failed, event::STOP_FAILED, message, None),
        }
        myself.stop(None);
    }
}

/// Runs a driver call in a task and sends its result back as a message. A
/// panicking driver becomes an error, so the actor never waits forever for
/// an answer that will not come.
fn spawn_task<T, F, M>(myself: &ActorRef<WorkloadMsg>, work: F, message: M)
where
    T: Send + 'static,
    F: Future<Output = Result<T, String>> + Send + 'static,
    M: FnOnce(Result<T, String>) -> WorkloadMsg + Send + 'static,
{
    let me = myself.clone();
    tokio::spawn(async move {
        let result = match tokio::spawn(work).await {
            Ok(result) => result,
            Err(e) => Err(format!("the driver call failed: {e}")),
        };
        // Fails only when the actor has ended: nobody wants the answer.
        let _ = me.cast(message(result));
    });
}

/// Persists the desired allocation, checks and starts the workload, then
/// persists its handle; a workload whose handle cannot be persisted is
/// stopped again (an agent must not run what it could not re-adopt).
async fn start(
    driver: &dyn Driver,
    store: &AllocStore,
    grace: Duration,
    desired: DesiredAlloc,
) -> Result<WorkloadHandle, String> {
    let alloc_dir = store.save_desired(&desired).map_err(|e| e.to_string())?;
    let spec = desired.spec(alloc_dir);
    driver.check(&spec).map_err(|e| e.to_string())?;
    let handle = driver.start(&spec).await.map_err(|e| e.to_string())?;
    if let Err(e) = store.save_handle(&handle) {
        let stopped = match driver.stop(&handle, grace).await {
            Ok(_) => "stopped it again".to_string(),
            Err(stop) => format!("and cannot stop it: {stop}"),
        };
        return Err(format!(
            "started, but cannot persist its handle ({e}); {stopped}"
        ));
    }
    Ok(handle)
}
