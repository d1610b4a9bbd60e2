//! SIMULATED machines and their workloads: the simulation's stand-in for
//! the processes a real agent starts, which a simulation cannot contain.
//!
//! A [`Machine`] outlives its agent's host, as processes outlive a killed
//! agent: a crashed and restarted agent finds its workloads still running
//! and re-adopts them through the same [`Driver::state`] / [`Driver::wait`]
//! calls it makes on a real host. [`Machine::power_off`] loses them all, as
//! a node that went down does; their saved handles then read as lost.
//!
//! [`SimulatedExec`] is the driver the simulated agents offer under the
//! name `exec` (so the chaos harness's job specs run unchanged): it starts
//! nothing, it records the workload on its machine until it is stopped.
//! [`crate::live::SimulatedLiveVm`] records VMs that move live between
//! machines (`simvm`); a copy of one may be paused or waiting for its
//! state ([`RunState`]), and only running copies count as running
//! ([`Machine::processes`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herd_actors::driver::{
    Driver, DriverCapabilities, DriverError, ExitInfo, MigrationMode, WorkloadHandle, WorkloadSpec,
    WorkloadState,
};
use herd_chaos::history::SeenProcess;
use herd_chaos::workload::MARK_ENV;

/// How often [`Driver::wait`] looks at the machine, simulated time.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// The signal a stopped workload is reported to have ended by (SIGTERM).
const STOP_SIGNAL: i32 = 15;

/// Whether a simulated workload runs: always for `exec`; a live-moving
/// VM's copy may hold its state without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// It runs.
    Running,
    /// Frozen with its state: a source stopped for the last copy of a move.
    Paused,
    /// A move's target, waiting for the state (`received`: all of it is in).
    Incoming {
        /// The whole state arrived.
        received: bool,
    },
}

/// One simulated workload.
#[derive(Debug, Clone)]
pub(crate) struct SimProcess {
    pub(crate) alloc_id: String,
    pub(crate) job: String,
    pub(crate) instance: Option<u32>,
    pub(crate) mark: Option<String>,
    pub(crate) generation: u64,
    pub(crate) state: RunState,
    /// Handed its state over and left running: only the planted bug of
    /// [`crate::live::SimulatedLiveVm::leaving_sources_running`] does it.
    pub(crate) moved_out: bool,
}

#[derive(Debug, Default)]
pub(crate) struct MachineState {
    /// Bumped when the machine loses its workloads.
    pub(crate) boot: u64,
    pub(crate) next_pid: u32,
    /// Every workload present, running or not (see [`RunState`]).
    pub(crate) running: BTreeMap<u32, SimProcess>,
    pub(crate) ended: BTreeMap<u32, ExitInfo>,
}

/// One simulated machine's workloads, shared by the agent's driver and the
/// simulation's observer.
#[derive(Debug, Clone)]
pub struct Machine {
    node: String,
    /// Added to the machine's own counter, so pids are unique across machines.
    pid_base: u32,
    state: Arc<Mutex<MachineState>>,
}

impl Machine {
    /// The machine node `node` runs on; `index` keeps its pids apart from
    /// other machines'.
    pub fn new(node: &str, index: u32) -> Self {
        Self {
            node: node.to_string(),
            pid_base: index.saturating_mul(1_000_000),
            state: Arc::default(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, MachineState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node this machine is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A new workload's pid on this machine, in `state` (locked by the caller).
    pub(crate) fn next_pid(&self, state: &mut MachineState) -> u32 {
        state.next_pid += 1;
        self.pid_base + state.next_pid
    }

    /// What runs here now, as the double-run checker's samples name it: a
    /// paused or incoming copy of a moving VM holds state but runs nothing,
    /// like a stopped QEMU, and is left out.
    pub fn processes(&self) -> Vec<SeenProcess> {
        self.state()
            .running
            .iter()
            .filter(|(_, p)| p.state == RunState::Running)
            .map(|(pid, p)| SeenProcess {
                pid: *pid,
                node: self.node.clone(),
                alloc_id: p.alloc_id.clone(),
                job: p.job.clone(),
                instance: p.instance,
                mark: p.mark.clone(),
                guest: None,
            })
            .collect()
    }

    /// Copies here that hold state without running (paused, incoming), as
    /// (pid, allocation, state): what a finished run must not leave behind.
    pub fn frozen(&self) -> Vec<(u32, String, RunState)> {
        self.state()
            .running
            .iter()
            .filter(|(_, p)| p.state != RunState::Running)
            .map(|(pid, p)| (*pid, p.alloc_id.clone(), p.state))
            .collect()
    }

    /// The machine went down: every workload is gone, with no record of how
    /// it ended. Returns how many ran.
    pub fn power_off(&self) -> usize {
        let mut state = self.state();
        state.boot += 1;
        state.ended.clear();
        std::mem::take(&mut state.running).len()
    }
}

/// Simulated ms, as handles and exit records carry them.
pub(crate) fn simulated_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// The machine boot a handle was started in.
pub(crate) fn boot_of(handle: &WorkloadHandle) -> Option<u64> {
    handle.detail.get("boot").and_then(|b| b.as_u64())
}

/// The record of a workload of `spec` in `state`, as the samples name it.
pub(crate) fn process_of(spec: &WorkloadSpec, state: RunState) -> SimProcess {
    SimProcess {
        alloc_id: spec.alloc_id.clone(),
        job: spec.job.clone(),
        instance: spec
            .env
            .get("HERD_ALLOC_INSTANCE")
            .and_then(|i| i.parse().ok()),
        mark: spec.task.env.get(MARK_ENV).cloned(),
        generation: spec.generation,
        state,
        moved_out: false,
    }
}

/// The SIMULATED `exec` driver; see the module documentation.
#[derive(Debug, Clone)]
pub struct SimulatedExec {
    machine: Machine,
    ignore_stops: bool,
}

impl SimulatedExec {
    /// A driver recording its workloads on `machine`.
    pub fn new(machine: Machine) -> Self {
        Self {
            machine,
            ignore_stops: false,
        }
    }

    /// A PLANTED BUG, for the checkers' self-test: stops are acknowledged
    /// and not carried out, so stale copies run on.
    pub fn ignoring_stops(self) -> Self {
        Self {
            ignore_stops: true,
            ..self
        }
    }

    fn lookup(&self, handle: &WorkloadHandle) -> WorkloadState {
        let state = self.machine.state();
        if boot_of(handle) != Some(state.boot) {
            return WorkloadState::Lost("the simulated machine went down since it started".into());
        }
        let Some(pid) = handle.pid else {
            return WorkloadState::Lost("the handle names no pid".into());
        };
        if state.running.contains_key(&pid) {
            return WorkloadState::Running;
        }
        match state.ended.get(&pid) {
            Some(info) => WorkloadState::Exited(info.clone()),
            None => WorkloadState::Lost(format!("no simulated workload {pid}")),
        }
    }
}

#[async_trait::async_trait]
impl Driver for SimulatedExec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            migration: MigrationMode::None,
            pause: false,
            power_cap: false,
        }
    }

    fn check(&self, _spec: &WorkloadSpec) -> Result<(), DriverError> {
        Ok(())
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<WorkloadHandle, DriverError> {
        let mut state = self.machine.state();
        let pid = self.machine.next_pid(&mut state);
        state
            .running
            .insert(pid, process_of(spec, RunState::Running));
        Ok(WorkloadHandle {
            driver: "exec".into(),
            alloc_id: spec.alloc_id.clone(),
            generation: spec.generation,
            pid: Some(pid),
            started_at_ms: simulated_ms(),
            detail: serde_json::json!({ "boot": state.boot }),
        })
    }

    async fn state(&self, handle: &WorkloadHandle) -> Result<WorkloadState, DriverError> {
        Ok(self.lookup(handle))
    }

    async fn wait(&self, handle: &WorkloadHandle) -> Result<ExitInfo, DriverError> {
        loop {
            match self.lookup(handle) {
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
        if self.ignore_stops {
            return Ok(ExitInfo {
                code: None,
                signal: Some(STOP_SIGNAL),
                finished_at_ms: simulated_ms(),
                message: None,
            });
        }
        {
            let mut state = self.machine.state();
            if let Some(pid) = handle.pid.filter(|_| boot_of(handle) == Some(state.boot)) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alloc: &str, instance: u32) -> WorkloadSpec {
        WorkloadSpec {
            alloc_id: alloc.into(),
            generation: 1,
            job: "web".into(),
            task: herd_api::job::TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/sleep".into()),
                args: vec!["600".into()],
                env: [(MARK_ENV.to_string(), "m1".to_string())].into(),
                workdir: None,
                resources: Default::default(),
                config: Default::default(),
            },
            alloc_dir: "/simulated".into(),
            env: [("HERD_ALLOC_INSTANCE".to_string(), instance.to_string())].into(),
        }
    }

    #[tokio::test]
    async fn workloads_outlive_a_restarted_driver_but_not_a_powered_off_machine() {
        let machine = Machine::new("n1", 1);
        let driver = SimulatedExec::new(machine.clone());
        let first = driver.start(&spec("a1", 0)).await.unwrap();
        let second = driver.start(&spec("a2", 1)).await.unwrap();
        assert_ne!(first.pid, second.pid);
        assert_eq!(machine.processes().len(), 2);
        assert_eq!(machine.processes()[0].instance, Some(0));
        assert_eq!(machine.processes()[0].mark.as_deref(), Some("m1"));

        // A new driver on the same machine (a restarted agent) re-adopts.
        let restarted = SimulatedExec::new(machine.clone());
        assert_eq!(
            restarted.state(&first).await.unwrap(),
            WorkloadState::Running
        );
        let stopped = restarted.stop(&first, Duration::ZERO).await.unwrap();
        assert_eq!(stopped.signal, Some(STOP_SIGNAL));
        assert!(matches!(
            restarted.state(&first).await.unwrap(),
            WorkloadState::Exited(_)
        ));

        assert_eq!(machine.power_off(), 1);
        assert!(machine.processes().is_empty());
        assert!(matches!(
            restarted.state(&second).await.unwrap(),
            WorkloadState::Lost(_)
        ));
        let waited = restarted.wait(&second).await.unwrap();
        assert!(waited.message.is_some(), "{waited:?}");
    }
}
