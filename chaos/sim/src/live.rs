//! A SIMULATED VM that moves live between simulated machines: the driver
//! the simulated agents offer under the name `simvm`, so that the
//! simulation's scenarios can migrate allocations while faults strike.
//!
//! It runs nothing. A VM is a record on its node's [`Machine`], like an
//! `exec` workload, with a [`RunState`]; a live move follows the
//! protocol of a real one (`herd_actors::driver::live`) on those records:
//!
//! - **target** ([`Driver::prepare_incoming`]): a copy waiting for its
//!   state ([`RunState::Incoming`]) on the target's machine; its endpoint
//!   names that machine, the copy's pid and the machine's boot;
//! - **source** ([`Driver::migrate_out`]): pre-copy rounds of simulated
//!   time, each the bytes left to send over a simulated link of
//!   [`LINK_BYTES_PER_SEC`] (the whole memory first, then what the guest
//!   dirtied meanwhile at its `dirty_rate`), until the rest fits the
//!   downtime limit; then the source is paused, the rest "sent", and the
//!   target's copy marked as holding everything. A move that does not fit
//!   after [`MAX_ROUNDS`] rounds, outlives its deadline, or finds either
//!   copy gone (a machine lost, a copy stopped) fails, the source running;
//! - **abort** ([`Driver::cancel_out`]): the source runs again;
//! - **switch** ([`Driver::finish_incoming`]): the target's copy, which
//!   must hold everything, runs.
//!
//! The bytes do not cross turmoil's network: the state is "copied" by
//! marking the target's record, which this driver reaches through the
//! shared [`Fleet`]. Everything around it does: the agents' reports to the
//! coordinators, the assignment streams, and the source's PrepareIncoming
//! to the target's `AgentPeer` service, so partitions and crashes hit the
//! orchestration as on real hosts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herd_actors::driver::live::{
    IncomingEndpoints, MoveLimits, MoveProgress, MoveStats, ProgressSink,
};
use herd_actors::driver::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};

use crate::machine::{boot_of, process_of, simulated_ms, Machine, RunState};

/// The driver's name in job specs (the simulated VMs of the real agents
/// share it, so the same specs validate).
pub const NAME: &str = "simvm";
/// How fast the simulated link between two machines moves a VM's memory.
pub const LINK_BYTES_PER_SEC: u64 = 1 << 30;
/// Pre-copy rounds before a move that does not converge gives up.
pub const MAX_ROUNDS: u32 = 8;
/// How often [`Driver::wait`] looks at the machine, simulated time.
const WAIT_POLL: Duration = Duration::from_millis(50);
/// The signal a stopped VM is reported to have ended by (SIGTERM).
const STOP_SIGNAL: i32 = 15;
/// The endpoint's scheme: `sim://NODE/PID`.
const SCHEME: &str = "sim://";
/// The endpoint (in [`IncomingEndpoints::extra`]) naming the target
/// machine's boot, so that a copy on a machine lost since is not mistaken
/// for the one readied.
const BOOT_ENDPOINT: &str = "boot";

/// Every simulated machine, by node name: where a move finds its target.
pub type Fleet = Arc<BTreeMap<String, Machine>>;

/// The job a simulation that migrates keeps running and moving.
pub const VM_JOB: &str = "chaos-vms";
/// Its instances (each its own allocation).
pub const VM_COUNT: u32 = 2;

/// The spec of [`VM_JOB`]: small VMs (64 MiB, moved in about 70 ms of
/// simulated time when idle) whose guests dirty 128 MiB/s, so that a move
/// takes a few pre-copy rounds.
pub fn vm_job_spec() -> herd_api::proto::v1::JobSpec {
    herd_chaos::migrate::simvm_service(VM_JOB, VM_COUNT, 64, "128MiB")
}

/// The SIMULATED live-moving VM driver; see the module documentation.
#[derive(Debug, Clone)]
pub struct SimulatedLiveVm {
    machine: Machine,
    fleet: Fleet,
    leave_sources_running: bool,
}

/// A VM's size and how fast its guest dirties memory, from its spec.
fn sizes(spec: &WorkloadSpec) -> Result<(u64, u64), DriverError> {
    let settings =
        herd_api::driver_settings::simvm(&spec.task).map_err(|e| DriverError::Unsupported {
            alloc: spec.alloc_id.clone(),
            message: e.to_string(),
        })?;
    Ok((settings.memory_mib << 20, settings.dirty_bytes_per_sec))
}

fn io(handle: &WorkloadHandle, message: impl Into<String>) -> DriverError {
    DriverError::Io {
        alloc: handle.alloc_id.clone(),
        message: message.into(),
    }
}

/// A figure of a handle's detail.
fn detail(handle: &WorkloadHandle, key: &str) -> u64 {
    handle.detail.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// Whole ms of `d`.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SimulatedLiveVm {
    /// A driver recording its VMs on `machine`, moving them to the
    /// machines of `fleet`.
    pub fn new(machine: Machine, fleet: Fleet) -> Self {
        Self {
            machine,
            fleet,
            leave_sources_running: false,
        }
    }

    /// A PLANTED BUG, for the migration checker's self-test: a move hands
    /// the state over without pausing the source, and stops of a source
    /// that moved out are acknowledged and not carried out, so the old
    /// copy runs on beside the new one after the switch-over.
    pub fn leaving_sources_running(self) -> Self {
        Self {
            leave_sources_running: true,
            ..self
        }
    }

    /// The state of the copy `handle` names on `machine`; None when it is
    /// not there (ended, or the machine went down since).
    fn copy_state(machine: &Machine, handle: &WorkloadHandle) -> Option<RunState> {
        let state = machine.state();
        if boot_of(handle) != Some(state.boot) {
            return None;
        }
        state.running.get(&handle.pid?).map(|p| p.state)
    }

    /// Sets the state of the copy `handle` names here, if it is in `from`.
    fn shift(&self, handle: &WorkloadHandle, from: &[RunState], to: RunState) -> bool {
        let mut state = self.machine.state();
        if boot_of(handle) != Some(state.boot) {
            return false;
        }
        match handle.pid.and_then(|pid| state.running.get_mut(&pid)) {
            Some(p) if from.contains(&p.state) => {
                p.state = to;
                true
            }
            _ => false,
        }
    }

    /// The handle of a copy of `spec` in `run` state on this machine, now.
    fn record(&self, spec: &WorkloadSpec, run: RunState) -> Result<WorkloadHandle, DriverError> {
        let (memory, dirty) = sizes(spec)?;
        let mut state = self.machine.state();
        let pid = self.machine.next_pid(&mut state);
        state.running.insert(pid, process_of(spec, run));
        Ok(WorkloadHandle {
            driver: NAME.into(),
            alloc_id: spec.alloc_id.clone(),
            generation: spec.generation,
            pid: Some(pid),
            started_at_ms: simulated_ms(),
            detail: serde_json::json!({ "boot": state.boot, "memory": memory, "dirty": dirty }),
        })
    }

    /// The target copy an endpoint names: its machine, pid and boot.
    fn target_of(&self, to: &IncomingEndpoints) -> Result<(Machine, u32, u64), String> {
        let rest = to
            .main
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("endpoint {:?} is not {SCHEME}NODE/PID", to.main))?;
        let (node, pid) = rest
            .split_once('/')
            .ok_or_else(|| format!("endpoint {:?} names no pid", to.main))?;
        let pid = pid
            .parse()
            .map_err(|_| format!("endpoint {:?}: bad pid", to.main))?;
        let boot = to
            .extra
            .get(BOOT_ENDPOINT)
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| format!("endpoint {:?} comes without its boot", to.main))?;
        let machine = self
            .fleet
            .get(node)
            .cloned()
            .ok_or_else(|| format!("no simulated machine {node}"))?;
        Ok((machine, pid, boot))
    }

    /// Whether the target copy still waits for its state.
    fn target_waits(machine: &Machine, pid: u32, boot: u64) -> bool {
        let state = machine.state();
        state.boot == boot
            && state
                .running
                .get(&pid)
                .is_some_and(|p| matches!(p.state, RunState::Incoming { .. }))
    }

    /// The pre-copy and the stop-and-copy; the source is left paused on
    /// success only.
    async fn move_state(
        &self,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        let started = tokio::time::Instant::now();
        let (target, pid, boot) = self.target_of(to).map_err(|e| io(handle, e))?;
        let memory = detail(handle, "memory");
        let dirty_rate = detail(handle, "dirty");
        let link = limits
            .bandwidth_bytes_per_sec
            .unwrap_or(LINK_BYTES_PER_SEC)
            .clamp(1, LINK_BYTES_PER_SEC);
        let at_link = |bytes: u64| Duration::from_secs_f64(bytes as f64 / link as f64);
        let both_there = || -> Result<(), DriverError> {
            if Self::copy_state(&self.machine, handle) != Some(RunState::Running) {
                return Err(io(handle, "the VM no longer runs here"));
            }
            if !Self::target_waits(&target, pid, boot) {
                return Err(io(handle, "the target's incoming copy is gone"));
            }
            Ok(())
        };
        let mut sent = 0u64;
        let mut rounds = 0u32;
        let mut to_send = memory;
        let rest = loop {
            rounds += 1;
            let pass = at_link(to_send);
            if started.elapsed() + pass > limits.deadline {
                return Err(io(
                    handle,
                    format!(
                        "the move did not finish within its deadline of {:?}",
                        limits.deadline
                    ),
                ));
            }
            tokio::time::sleep(pass).await;
            both_there()?;
            sent += to_send;
            let dirtied = ((dirty_rate as f64) * pass.as_secs_f64()) as u64;
            let dirtied = dirtied.min(memory);
            progress(MoveProgress {
                bytes: sent,
                rounds,
                dirty_rate_bytes_per_sec: Some(dirty_rate),
                remaining_bytes: Some(dirtied),
            });
            if at_link(dirtied) <= limits.downtime_limit {
                break dirtied;
            }
            if rounds >= MAX_ROUNDS {
                return Err(io(
                    handle,
                    format!(
                        "the guest dirties {dirty_rate} bytes/s, faster than the move converges at {link} bytes/s in {MAX_ROUNDS} rounds"
                    ),
                ));
            }
            to_send = dirtied;
        };
        // Stop and copy.
        if self.leave_sources_running {
            let mut state = self.machine.state();
            if let Some(p) = handle.pid.and_then(|pid| state.running.get_mut(&pid)) {
                p.moved_out = true;
            }
        } else if !self.shift(handle, &[RunState::Running], RunState::Paused) {
            return Err(io(handle, "the VM no longer runs here"));
        }
        let down = at_link(rest);
        tokio::time::sleep(down).await;
        let mut state = target.state();
        let same_boot = state.boot == boot;
        let arrived = match state.running.get_mut(&pid) {
            Some(p) if same_boot && matches!(p.state, RunState::Incoming { .. }) => {
                p.state = RunState::Incoming { received: true };
                true
            }
            _ => false,
        };
        drop(state);
        if !arrived {
            self.shift(handle, &[RunState::Paused], RunState::Running);
            return Err(io(handle, "the target's incoming copy is gone"));
        }
        Ok(MoveStats {
            bytes: sent + rest,
            rounds: rounds + 1,
            downtime_ms: ms(down),
            total_ms: ms(started.elapsed()),
        })
    }
}

#[async_trait::async_trait]
impl Driver for SimulatedLiveVm {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::LivePreCopy,
            pause: true,
            power_cap: false,
        }
    }

    fn check(&self, spec: &WorkloadSpec) -> Result<(), DriverError> {
        sizes(spec).map(|_| ())
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        self.record(spec, RunState::Running)
    }

    async fn recover(&self, spec: &WorkloadSpec) -> Result<Option<WorkloadHandle>, DriverError> {
        // A copy of this generation that the agent never saw the handle of
        // (it died in between): found on the machine.
        let (memory, dirty) = sizes(spec)?;
        let state = self.machine.state();
        let found = state
            .running
            .iter()
            .find(|(_, p)| p.alloc_id == spec.alloc_id && p.generation == spec.generation);
        Ok(found.map(|(pid, _)| WorkloadHandle {
            driver: NAME.into(),
            alloc_id: spec.alloc_id.clone(),
            generation: spec.generation,
            pid: Some(*pid),
            started_at_ms: simulated_ms(),
            detail: serde_json::json!({ "boot": state.boot, "memory": memory, "dirty": dirty }),
        }))
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        if let Some(run) = Self::copy_state(&self.machine, handle) {
            return Ok(match run {
                RunState::Running => WorkloadState::Running,
                RunState::Paused | RunState::Incoming { .. } => WorkloadState::Paused,
            });
        }
        let state = self.machine.state();
        let ended = handle
            .pid
            .filter(|_| boot_of(handle) == Some(state.boot))
            .and_then(|pid| state.ended.get(&pid).cloned());
        Ok(match ended {
            Some(info) => WorkloadState::Exited(info),
            None => WorkloadState::Lost("the simulated VM is gone".into()),
        })
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        loop {
            match self.state(handle).await? {
                WorkloadState::Running | WorkloadState::Paused => {}
                WorkloadState::Exited(info) => return Ok(info),
                WorkloadState::Lost(why) => {
                    return Ok(ExitInfo {
                        code: None,
                        signal: None,
                        finished_at_ms: 0,
                        message: Some(why),
                    })
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    async fn stop(
        &self,
        handle: &WorkloadHandle,
        _grace: Duration,
    ) -> Result<ExitInfo, DriverError> {
        {
            let mut state = self.machine.state();
            if let Some(pid) = handle.pid.filter(|_| boot_of(handle) == Some(state.boot)) {
                if state.running.get(&pid).is_some_and(|p| p.moved_out) {
                    return Ok(ExitInfo {
                        code: None,
                        signal: Some(STOP_SIGNAL),
                        finished_at_ms: simulated_ms(),
                        message: None,
                    });
                }
                if state.running.remove(&pid).is_some() {
                    let info = ExitInfo {
                        code: None,
                        signal: Some(STOP_SIGNAL),
                        finished_at_ms: simulated_ms(),
                        message: None,
                    };
                    state.ended.insert(pid, info.clone());
                    return Ok(info);
                }
            }
        }
        self.wait(handle).await
    }

    async fn pause(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        if self.shift(
            handle,
            &[RunState::Running, RunState::Paused],
            RunState::Paused,
        ) {
            Ok(())
        } else {
            Err(io(handle, "no running VM to pause"))
        }
    }

    async fn resume(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        if self.shift(
            handle,
            &[RunState::Running, RunState::Paused],
            RunState::Running,
        ) {
            Ok(())
        } else {
            Err(io(handle, "no paused VM to resume"))
        }
    }

    async fn prepare_incoming(
        &self,
        spec: &WorkloadSpec,
    ) -> Result<(WorkloadHandle, IncomingEndpoints), DriverError> {
        // Readied twice (its agent restarted midway): start over.
        if let Some(stale) = self.recover(spec).await? {
            self.stop(&stale, Duration::ZERO).await?;
        }
        let handle = self.record(spec, RunState::Incoming { received: false })?;
        let endpoints = IncomingEndpoints {
            main: format!(
                "{SCHEME}{}/{}",
                self.machine.node(),
                handle.pid.unwrap_or_default()
            ),
            extra: [(
                BOOT_ENDPOINT.to_string(),
                detail(&handle, "boot").to_string(),
            )]
            .into(),
            target_node: None,
        };
        Ok((handle, endpoints))
    }

    async fn migrate_out(
        &self,
        handle: &WorkloadHandle,
        to: &IncomingEndpoints,
        limits: &MoveLimits,
        progress: ProgressSink<'_>,
    ) -> Result<MoveStats, DriverError> {
        self.move_state(handle, to, limits, progress).await
    }

    async fn cancel_out(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        match Self::copy_state(&self.machine, handle) {
            Some(RunState::Running) => Ok(()),
            Some(RunState::Paused) => {
                self.shift(handle, &[RunState::Paused], RunState::Running);
                Ok(())
            }
            Some(RunState::Incoming { .. }) => Err(io(handle, "not the source of a move")),
            None => Err(io(handle, "the VM is gone")),
        }
    }

    async fn finish_incoming(&self, handle: &WorkloadHandle) -> Result<(), DriverError> {
        match Self::copy_state(&self.machine, handle) {
            Some(RunState::Running) => Ok(()),
            Some(RunState::Incoming { received: true }) => {
                self.shift(
                    handle,
                    &[RunState::Incoming { received: true }],
                    RunState::Running,
                );
                Ok(())
            }
            Some(RunState::Incoming { received: false }) => Err(io(
                handle,
                "the switch-over came before the whole state arrived",
            )),
            Some(RunState::Paused) => Err(io(handle, "a paused source, not an arrival")),
            None => Err(io(handle, "the incoming VM is gone")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alloc: &str, generation: u64, dirty: &str) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: alloc.into(),
            generation,
            job: "vms".into(),
            task: herd_api::job::TaskSpec {
                driver: NAME.into(),
                command: None,
                args: Vec::new(),
                env: Default::default(),
                workdir: None,
                resources: herd_api::resources::Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 << 20,
                    gpus: 0,
                    gpu_model: None,
                },
                config: [("dirty_rate".to_string(), dirty.to_string())].into(),
            },
            alloc_dir: "/simulated".into(),
            env: Default::default(),
        }
    }

    fn limits() -> MoveLimits {
        MoveLimits {
            downtime_limit: Duration::from_millis(300),
            bandwidth_bytes_per_sec: None,
            deadline: Duration::from_secs(60),
        }
    }

    fn pair() -> (Machine, Machine, SimulatedLiveVm, SimulatedLiveVm) {
        let (a, b) = (Machine::new("n1", 1), Machine::new("n2", 2));
        let fleet: Fleet =
            Arc::new([("n1".to_string(), a.clone()), ("n2".to_string(), b.clone())].into());
        let source = SimulatedLiveVm::new(a.clone(), fleet.clone());
        let target = SimulatedLiveVm::new(b.clone(), fleet);
        (a, b, source, target)
    }

    #[tokio::test(start_paused = true)]
    async fn a_vm_moves_and_only_one_copy_runs_at_any_time() {
        let (a, b, source, target) = pair();
        let src = source.start(&spec("v1", 1, "8MiB")).await.unwrap();
        let (dst, endpoints) = target
            .prepare_incoming(&spec("v1", 2, "8MiB"))
            .await
            .unwrap();
        assert!(endpoints.main.starts_with("sim://n2/"), "{endpoints:?}");
        assert_eq!(b.processes().len(), 0, "an incoming copy does not run");
        assert_eq!(target.state(&dst).await.unwrap(), WorkloadState::Paused);
        // The switch-over cannot come before the state arrived.
        assert!(target.finish_incoming(&dst).await.is_err());

        let stats = source
            .migrate_out(&src, &endpoints, &limits(), &|_| {})
            .await
            .unwrap();
        assert!(stats.bytes >= 64 << 20, "{stats:?}");
        assert!(stats.rounds >= 2, "{stats:?}");
        assert_eq!(source.state(&src).await.unwrap(), WorkloadState::Paused);
        assert!(a.processes().is_empty() && b.processes().is_empty());

        target.finish_incoming(&dst).await.unwrap();
        assert_eq!(b.processes().len(), 1);
        source.stop(&src, Duration::ZERO).await.unwrap();
        assert!(a.frozen().is_empty() && b.frozen().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_move_leaves_the_source_running() {
        let (a, b, source, target) = pair();
        let src = source.start(&spec("v1", 1, "0")).await.unwrap();
        let (_dst, endpoints) = target.prepare_incoming(&spec("v1", 2, "0")).await.unwrap();
        // The target machine goes down: the move fails, the source runs on.
        assert_eq!(b.power_off(), 1);
        let err = source
            .migrate_out(&src, &endpoints, &limits(), &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
        assert_eq!(a.processes().len(), 1);
        source.cancel_out(&src).await.unwrap();
        assert_eq!(source.state(&src).await.unwrap(), WorkloadState::Running);

        // A guest dirtying faster than the link never converges: its rest
        // (all of its 64 MiB) never fits a 10 ms pause.
        let fast = source.start(&spec("v2", 1, "4GiB")).await.unwrap();
        let (_dst, endpoints) = target
            .prepare_incoming(&spec("v2", 2, "4GiB"))
            .await
            .unwrap();
        let tight = MoveLimits {
            downtime_limit: Duration::from_millis(10),
            ..limits()
        };
        let err = source
            .migrate_out(&fast, &endpoints, &tight, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("converges"), "{err}");
        assert_eq!(source.state(&fast).await.unwrap(), WorkloadState::Running);
    }
}
