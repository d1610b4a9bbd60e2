//! [`ExecBacked`]: one adaptor through which every driver that runs its
//! workload as the exec driver's task (`dljob`, `simvm`, `inference`, `vm`)
//! implements [`Driver`].
//!
//! The exec driver's detached executor supervises the process, records its
//! exit while no agent runs and lets a new agent re-adopt it (see
//! [`super::exec`]). What a kind adds is small and goes through
//! [`ExecKind`]: its name and capabilities, how its settings are parsed (by
//! the same `herd_api::driver_settings` function that submit calls), which
//! host checks it needs, the command line, environment and files its
//! settings turn into, and, where its handle carries more than the exec
//! run's, how that is stored. Everything else (handle checks, start,
//! recovery, state, wait, stop) is written here once, so the kinds cannot
//! drift apart.
//!
//! The moves a migration needs (pause, resume, checkpoint, and a live
//! move's prepare-incoming, migrate-out, cancel-out and finish-incoming)
//! are hooks of [`ExecKind`] with refusing defaults, reachable through
//! [`Driver`] (so through `Arc<dyn Driver>`): a VM overrides pause, resume
//! and the live moves, a trainer checkpoint, and a kind that cannot do one
//! says so in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_api::job::TaskSpec;
use herd_api::validate::FieldError;

use super::confine::Confinement;
use super::exec::standby::Standby;
use super::exec::ExecDriver;
use super::live::{IncomingEndpoints, MoveLimits, MoveStats, ProgressSink};
use super::{
    Driver, DriverCapabilities, DriverError, ExitInfo, WorkloadHandle, WorkloadSpec, WorkloadState,
};

/// What an exec-backed kind runs: the exec task its settings turn into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables the kind sets; they win over the task's own `env`, as the
    /// agent's do, so a task cannot shadow them by accident.
    pub env: BTreeMap<String, String>,
}

/// One workload of an exec-backed kind, as the kind's hooks see it.
pub struct Run<'a> {
    /// The workload's handle, as this kind wrote it.
    pub handle: &'a WorkloadHandle,
    exec_handle: WorkloadHandle,
    exec: &'a ExecDriver,
}

impl Run<'_> {
    /// The state of the process under the executor (not refined by the kind).
    pub async fn exec_state(&self) -> Result<WorkloadState, DriverError> {
        self.exec.state(&self.exec_handle).await
    }
}

/// What differs between the kinds of workload run under the exec driver;
/// see the module documentation. Only [`ExecKind::NAME`],
/// [`ExecKind::capabilities`], [`ExecKind::settings`] and
/// [`ExecKind::command`] are required; the other hooks default to what a
/// plain process needs.
#[async_trait::async_trait]
pub trait ExecKind: Default + Send + Sync + 'static {
    /// The name job specs use and this kind's handles carry.
    const NAME: &'static str;

    /// The kind's typed settings.
    type Settings: Send + Sync;

    /// What this kind's workloads allow beyond start and stop.
    fn capabilities(&self) -> DriverCapabilities;

    /// [`Driver::pause`] for this kind; refuses unless the kind overrides it.
    async fn pause(driver: &ExecBacked<Self>, handle: &WorkloadHandle) -> Result<(), DriverError> {
        let _ = driver;
        Err(DriverError::cannot(handle, Self::NAME, "pause"))
    }

    /// [`Driver::resume`] for this kind; refuses unless the kind overrides it.
    async fn resume(driver: &ExecBacked<Self>, handle: &WorkloadHandle) -> Result<(), DriverError> {
        let _ = driver;
        Err(DriverError::cannot(handle, Self::NAME, "resume"))
    }

    /// [`Driver::checkpoint`] for this kind; refuses unless the kind
    /// overrides it.
    async fn checkpoint(
        driver: &ExecBacked<Self>,
        handle: &WorkloadHandle,
        timeout: Duration,
    ) -> Result<u64, DriverError> {
        let _ = (driver, timeout);
        Err(DriverError::cannot(handle, Self::NAME, "checkpoint"))
    }

    /// [`Driver::prepare_incoming`] for this kind; refuses unless the kind
    /// overrides it.
    async fn prepare_incoming(
        driver: &ExecBacked<Self>,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        let _ = driver;
        Err(DriverError::Unsupported {
            alloc: spec.alloc_id.clone(),
            message: format!("the {} driver cannot receive a live migration", Self::NAME),
        })
    }

    /// [`Driver::migrate_out`] for this kind; refuses unless the kind
    /// overrides it.
    async fn migrate_out(
        driver: &ExecBacked<Self>,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        let _ = (driver, to, limits, progress);
        Err(DriverError::cannot(handle, Self::NAME, "live-migrate"))
    }

    /// [`Driver::cancel_out`] for this kind; refuses unless the kind
    /// overrides it.
    async fn cancel_out(
        driver: &ExecBacked<Self>,
        handle: &WorkloadHandle,
    ) -> Result<(), DriverError> {
        let _ = driver;
        Err(DriverError::cannot(
            handle,
            Self::NAME,
            "cancel a live migration of",
        ))
    }

    /// [`Driver::confirm_incoming`] for this kind; nothing to confirm
    /// unless the kind overrides it.
    async fn confirm_incoming(
        driver: &ExecBacked<Self>,
        handle: &WorkloadHandle,
        wait: Duration,
    ) -> Result<(), DriverError> {
        let _ = (driver, handle, wait);
        Ok(())
    }

    /// [`Driver::finish_incoming`] for this kind; refuses unless the kind
    /// overrides it.
    async fn finish_incoming(
        driver: &ExecBacked<Self>,
        handle: &WorkloadHandle,
    ) -> Result<(), DriverError> {
        let _ = driver;
        Err(DriverError::cannot(
            handle,
            Self::NAME,
            "finish a live migration of",
        ))
    }

    /// Takes the node's confinement (see [`super::confine`]) for the kind's
    /// own checks (a VM's kernel and disk paths); the exec driver
    /// underneath gets the paths policy but never the exec user, since a
    /// kind runs herd's or QEMU's program rather than the job's own.
    /// Default: the kind has no paths of its own to check.
    fn confine(&mut self, confinement: &Confinement) {
        let _ = confinement;
    }

    /// Parses the task's settings: the `herd_api::driver_settings` function
    /// of this kind, which submit validation calls too.
    fn settings(&self, task: &TaskSpec) -> Result<Self::Settings, FieldError>;

    /// Checks on this host beyond the exec driver's (a binary installed, a
    /// device usable, a path short enough). Errors say what and where.
    fn check_host(
        &self,
        spec: &WorkloadSpec,
        settings: &Self::Settings,
    ) -> Result<(), DriverError> {
        let _ = (spec, settings);
        Ok(())
    }

    /// The command line and environment that run `spec`. `herd` is the herd
    /// binary (for kinds whose program is one of its subcommands). It may
    /// create the directories it names (it runs at check and at start).
    fn command(
        &self,
        herd: &Path,
        spec: &WorkloadSpec,
        settings: &Self::Settings,
    ) -> Result<ExecCommand, DriverError>;

    /// Creates what the run needs that a check must not create (a fresh
    /// disk) or must clear (a stale socket); called by `start` only, and not
    /// when a run of this generation is adopted instead.
    async fn prepare(
        &self,
        spec: &WorkloadSpec,
        settings: &Self::Settings,
    ) -> Result<(), DriverError> {
        let _ = (spec, settings);
        Ok(())
    }

    /// The detail this kind's handle stores, from the exec run's detail;
    /// `alloc_dir` is the allocation's directory. Default: the exec detail
    /// itself, so the handle differs from the exec driver's by name only.
    fn wrap_detail(alloc_dir: &Path, exec: serde_json::Value) -> Result<serde_json::Value, String> {
        let _ = alloc_dir;
        Ok(exec)
    }

    /// The exec run's detail inside one of this kind's handles: the inverse
    /// of [`ExecKind::wrap_detail`].
    fn exec_detail(detail: &serde_json::Value) -> Result<serde_json::Value, String> {
        Ok(detail.clone())
    }

    /// The state of a workload whose process runs: `Running` unless the
    /// kind knows better (a VM's guest may be paused).
    async fn running_state(&self, run: &Run<'_>) -> WorkloadState {
        let _ = run;
        WorkloadState::Running
    }

    /// Asks the workload to wind down before the executor is told to stop
    /// it (a VM's guest is asked to power off); the time it takes comes out
    /// of `grace`.
    async fn before_stop(&self, run: &Run<'_>, grace: Duration) -> Result<(), DriverError> {
        let _ = (run, grace);
        Ok(())
    }
}

/// A [`Driver`] for the kind `K`, running its workloads under the exec
/// driver's executor.
#[derive(Debug, Clone)]
pub struct ExecBacked<K> {
    exec: ExecDriver,
    herd: PathBuf,
    kind: K,
}

impl<K: ExecKind> ExecBacked<K> {
    /// A driver whose executors (and whose herd subcommands, for the kinds
    /// that run one) are the herd binary `herd`.
    pub fn new(herd: impl Into<PathBuf>) -> Self {
        let herd = herd.into();
        Self {
            exec: ExecDriver::new(&herd),
            herd,
            kind: K::default(),
        }
    }

    /// Confines this driver's workloads by the node's policy: the paths
    /// their specs name (checked by the kind and by the exec driver), but
    /// not the exec user, which is for `exec` tasks only (see
    /// [`ExecKind::confine`]).
    pub fn with_confinement(mut self, confinement: &Confinement) -> Self {
        self.exec = self.exec.with_confinement(confinement.without_exec_user());
        self.kind.confine(confinement);
        self
    }

    /// Starts this kind's workloads through the agent's standby executor
    /// (see [`crate::driver::exec::standby`]), if it keeps one.
    pub fn with_standby(mut self, standby: Option<Arc<Standby>>) -> Self {
        self.exec = self.exec.with_standby(standby);
        self
    }

    /// The exec driver underneath, for a kind's own operations.
    pub fn exec(&self) -> &ExecDriver {
        &self.exec
    }

    /// The kind's own settings, for its operations (a VM's migration host).
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// The kind's own settings, to set node settings the kind takes beyond
    /// the confinement (a VM's migration host).
    pub fn kind_mut(&mut self) -> &mut K {
        &mut self.kind
    }

    /// The exec driver's view of one of this kind's handles; a handle of
    /// another driver, or one whose detail does not decode, is refused.
    pub fn exec_handle(handle: &WorkloadHandle) -> Result<WorkloadHandle, DriverError> {
        let bad = |message: String| DriverError::BadHandle {
            alloc: handle.alloc_id.clone(),
            message,
        };
        if handle.driver != K::NAME {
            return Err(bad(format!(
                "it belongs to driver {:?}, not {:?}",
                handle.driver,
                K::NAME
            )));
        }
        Ok(WorkloadHandle {
            driver: "exec".to_string(),
            detail: K::exec_detail(&handle.detail).map_err(bad)?,
            ..handle.clone()
        })
    }

    /// This kind's handle of the exec run `exec` of `spec`.
    fn own_handle(
        spec: &WorkloadSpec,
        exec: WorkloadHandle,
    ) -> Result<WorkloadHandle, DriverError> {
        let detail = K::wrap_detail(&spec.alloc_dir, exec.detail.clone()).map_err(|e| {
            DriverError::Start {
                alloc: spec.alloc_id.clone(),
                message: format!("cannot encode the handle: {e}"),
            }
        })?;
        Ok(WorkloadHandle {
            driver: K::NAME.to_string(),
            detail,
            ..exec
        })
    }

    fn settings(&self, spec: &WorkloadSpec) -> Result<K::Settings, DriverError> {
        self.kind
            .settings(&spec.task)
            .map_err(|e| DriverError::Unsupported {
                alloc: spec.alloc_id.clone(),
                message: e.to_string(),
            })
    }

    /// The exec spec that runs `spec`: its command line and environment are
    /// the kind's, its driver settings consumed.
    fn launch(
        &self,
        spec: &WorkloadSpec,
        settings: &K::Settings,
    ) -> Result<WorkloadSpec, DriverError> {
        let command = self.kind.command(&self.herd, spec, settings)?;
        let mut exec = spec.clone();
        exec.task.driver = "exec".to_string();
        exec.task.command = Some(command.program);
        exec.task.args = command.args;
        exec.task.config.clear();
        exec.env.extend(command.env);
        Ok(exec)
    }

    /// Settings parsed, host checked: the exec spec that runs `spec`, as
    /// `check` and `start` hand it to the exec driver.
    pub(crate) fn checked_launch(
        &self,
        spec: &WorkloadSpec,
    ) -> Result<(K::Settings, WorkloadSpec), DriverError> {
        let settings = self.settings(spec)?;
        self.kind.check_host(spec, &settings)?;
        let launch = self.launch(spec, &settings)?;
        Ok((settings, launch))
    }

    /// Starts `spec` as [`Driver::start`] does, with `extra_args` after the
    /// kind's own arguments (a live move's target: QEMU's `-incoming defer
    /// -S`). Unlike `start` it adopts nothing: a run of this generation
    /// already going is the caller's to deal with first (see
    /// [`Driver::recover`]), since its state is not what the caller asks for.
    pub async fn start_with_args(
        &self,
        spec: &WorkloadSpec,
        extra_args: &[String],
    ) -> Result<WorkloadHandle, DriverError> {
        let (settings, mut launch) = self.checked_launch(spec)?;
        launch.task.args.extend(extra_args.iter().cloned());
        self.exec.check(&launch)?;
        self.kind.prepare(spec, &settings).await?;
        let exec = self.exec.start(&launch).await?;
        Self::own_handle(spec, exec)
    }

    fn run<'a>(&'a self, handle: &'a WorkloadHandle) -> Result<Run<'a>, DriverError> {
        Ok(Run {
            handle,
            exec_handle: Self::exec_handle(handle)?,
            exec: &self.exec,
        })
    }
}

#[async_trait::async_trait]
impl<K: ExecKind> Driver for ExecBacked<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn capabilities(&self) -> DriverCapabilities {
        self.kind.capabilities()
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        let (_, launch) = self.checked_launch(spec)?;
        self.exec.check(&launch)
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        let (settings, launch) = self.checked_launch(spec)?;
        self.exec.check(&launch)?;
        // A run of this generation already going (its agent died before
        // persisting the handle) is adopted before anything is prepared:
        // preparing could disturb it (a VM's QMP socket).
        if let Some(running) = self.exec.recover(spec).await? {
            return Self::own_handle(spec, running);
        }
        self.kind.prepare(spec, &settings).await?;
        let exec = self.exec.start(&launch).await?;
        Self::own_handle(spec, exec)
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        // Only the directory and generation find a run, not the command
        // line: a workload must be found (and so stopped if unwanted) even
        // if its settings would no longer be accepted here.
        match self.exec.recover(spec).await? {
            Some(exec) => Self::own_handle(spec, exec).map(Some),
            None => Ok(None),
        }
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        let run = self.run(handle)?;
        match run.exec_state().await? {
            WorkloadState::Running => Ok(self.kind.running_state(&run).await),
            other => Ok(other),
        }
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        self.exec.wait(&Self::exec_handle(handle)?).await
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        let run = self.run(handle)?;
        let started = Instant::now();
        self.kind.before_stop(&run, grace).await?;
        self.exec
            .stop(&run.exec_handle, grace.saturating_sub(started.elapsed()))
            .await
    }

    async fn pause(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.run(handle)?;
        K::pause(self, handle).await
    }

    async fn resume(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.run(handle)?;
        K::resume(self, handle).await
    }

    async fn checkpoint(
        &self,
        handle: &WorkloadHandle,
        timeout: Duration,
    ) -> Result<u64, DriverError> {
        self.run(handle)?;
        K::checkpoint(self, handle, timeout).await
    }

    async fn prepare_incoming(
        &self,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        K::prepare_incoming(self, spec).await
    }

    async fn migrate_out(
        &self,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        self.run(handle)?;
        K::migrate_out(self, handle, to, limits, progress).await
    }

    async fn cancel_out(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.run(handle)?;
        K::cancel_out(self, handle).await
    }

    async fn confirm_incoming(
        &self,
        handle: &WorkloadHandle,
        wait: Duration,
    ) -> Result<(), DriverError> {
        self.run(handle)?;
        K::confirm_incoming(self, handle, wait).await
    }

    async fn finish_incoming(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        self.run(handle)?;
        K::finish_incoming(self, handle).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::dljob::Dljob;
    use super::super::inference::Inference;
    use super::super::simvm::SimVm;
    use super::super::vm::Vm;
    use super::*;

    fn exec_handle() -> WorkloadHandle {
        WorkloadHandle {
            driver: "exec".into(),
            alloc_id: "a1".into(),
            generation: 3,
            pid: Some(42),
            started_at_ms: 7,
            detail: serde_json::json!({"alloc_dir": "/var/herd/a1", "executor_pid": 41}),
        }
    }

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: "a1".into(),
            generation: 3,
            job: "j".into(),
            task: TaskSpec {
                driver: "exec".into(),
                command: None,
                args: Vec::new(),
                env: BTreeMap::new(),
                workdir: None,
                resources: Default::default(),
                config: BTreeMap::new(),
            },
            alloc_dir: "/var/herd/a1".into(),
            env: BTreeMap::new(),
        }
    }

    /// Wraps the exec handle as `K`, checks it is named `K` and unwraps to
    /// the exec handle again; a handle of any other driver is refused.
    fn round_trip<K: ExecKind>() -> WorkloadHandle {
        let own = ExecBacked::<K>::own_handle(&spec(), exec_handle()).expect("wraps");
        assert_eq!(own.driver, K::NAME);
        assert_eq!((own.generation, own.pid), (3, Some(42)));
        assert_eq!(
            ExecBacked::<K>::exec_handle(&own).expect("ours"),
            exec_handle()
        );
        for other in ["exec", "dljob", "simvm", "inference", "vm"] {
            if other == K::NAME {
                continue;
            }
            let foreign = WorkloadHandle {
                driver: other.into(),
                ..own.clone()
            };
            let err = ExecBacked::<K>::exec_handle(&foreign).expect_err(other);
            assert!(matches!(err, DriverError::BadHandle { .. }), "{err}");
            assert!(err.to_string().contains(K::NAME), "{err}");
        }
        own
    }

    #[test]
    fn every_kind_checks_that_a_handle_is_its_own() {
        for flat in [
            round_trip::<Dljob>(),
            round_trip::<SimVm>(),
            round_trip::<Inference>(),
        ] {
            assert_eq!(
                flat.detail,
                exec_handle().detail,
                "stored as the exec detail"
            );
        }
        let vm = round_trip::<Vm>();
        assert_eq!(vm.detail["exec"], exec_handle().detail);
        assert_eq!(vm.detail["qmp"], "/var/herd/a1/qmp.sock");
        let mut broken = vm;
        broken.detail = serde_json::json!({"exec": {}});
        assert!(matches!(
            ExecBacked::<Vm>::exec_handle(&broken),
            Err(DriverError::BadHandle { .. })
        ));
    }

    #[tokio::test]
    async fn recovery_needs_only_the_directory_not_valid_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = spec();
        spec.alloc_dir = dir.path().to_path_buf();
        spec.task.driver = "simvm".into();
        spec.task
            .config
            .insert("seed".into(), "not a number".into());
        let driver = ExecBacked::<SimVm>::new("/usr/bin/herd");
        assert!(matches!(
            driver.check(&spec),
            Err(DriverError::Unsupported { .. })
        ));
        // Nothing runs there: nothing is recovered, and no error either.
        assert_eq!(driver.recover(&spec).await.expect("looks"), None);
    }
    #[tokio::test]
    async fn moves_a_kind_cannot_make_are_refused_through_the_trait_naming_it() {
        use std::sync::Arc;
        // As the agent holds drivers: behind `dyn Driver`.
        let drivers: Vec<(Arc<dyn Driver>, WorkloadHandle, [&str; 3])> = vec![
            (
                Arc::new(ExecBacked::<SimVm>::new("/usr/bin/herd")),
                round_trip::<SimVm>(),
                ["pause", "resume", "checkpoint"],
            ),
            (
                Arc::new(ExecBacked::<Inference>::new("/usr/bin/herd")),
                round_trip::<Inference>(),
                ["pause", "resume", "checkpoint"],
            ),
            (
                Arc::new(ExecBacked::<Dljob>::new("/usr/bin/herd")),
                round_trip::<Dljob>(),
                ["pause", "resume", "pause"],
            ),
            (
                Arc::new(ExecBacked::<Vm>::new("/usr/bin/herd")),
                round_trip::<Vm>(),
                ["checkpoint", "checkpoint", "checkpoint"],
            ),
        ];
        for (driver, handle, refused) in drivers {
            for what in refused {
                let result = match what {
                    "pause" => driver.pause(&handle).await,
                    "resume" => driver.resume(&handle).await,
                    _ => driver
                        .checkpoint(&handle, Duration::from_millis(1))
                        .await
                        .map(|_| ()),
                };
                let err = result.expect_err(what);
                assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
                assert!(
                    err.to_string()
                        .contains(&format!("the {} driver cannot {what}", driver.name())),
                    "{err}"
                );
            }
        }
        // Another driver's handle is refused before any move is tried.
        let vm = ExecBacked::<Vm>::new("/usr/bin/herd");
        let foreign = round_trip::<SimVm>();
        assert!(matches!(
            vm.pause(&foreign).await,
            Err(DriverError::BadHandle { .. })
        ));
        let to = IncomingEndpoints::default();
        let limits = MoveLimits {
            downtime_limit: Duration::from_millis(300),
            bandwidth_bytes_per_sec: None,
            deadline: Duration::from_secs(1),
        };
        assert!(matches!(
            vm.migrate_out(&foreign, &to, &limits, &|_| {}).await,
            Err(DriverError::BadHandle { .. })
        ));
    }

    #[tokio::test]
    async fn live_moves_are_refused_by_kinds_that_do_not_move_live_naming_them() {
        use std::sync::Arc;
        let drivers: Vec<(Arc<dyn Driver>, WorkloadHandle)> = vec![
            (
                Arc::new(ExecBacked::<Dljob>::new("/usr/bin/herd")),
                round_trip::<Dljob>(),
            ),
            (
                Arc::new(ExecBacked::<Inference>::new("/usr/bin/herd")),
                round_trip::<Inference>(),
            ),
        ];
        let to = IncomingEndpoints::default();
        let limits = MoveLimits {
            downtime_limit: Duration::from_millis(300),
            bandwidth_bytes_per_sec: None,
            deadline: Duration::from_secs(1),
        };
        for (driver, handle) in drivers {
            let name = driver.name();
            let mut spec = spec();
            spec.task.driver = name.into();
            let refusals = [
                (
                    driver.prepare_incoming(&spec).await.map(|_| ()),
                    "cannot receive a live migration",
                ),
                (
                    driver
                        .migrate_out(&handle, &to, &limits, &|_| {})
                        .await
                        .map(|_| ()),
                    "cannot live-migrate",
                ),
                (
                    driver.cancel_out(&handle).await,
                    "cannot cancel a live migration of",
                ),
                (
                    driver.finish_incoming(&handle).await,
                    "cannot finish a live migration of",
                ),
            ];
            for (result, what) in refusals {
                let err = result.expect_err(what);
                assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
                assert!(
                    err.to_string()
                        .contains(&format!("the {name} driver {what}")),
                    "{err}"
                );
            }
        }
    }
}
