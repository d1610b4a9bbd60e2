//! SIMULATED GPUs driven by the work bound to them (issue 20).
//!
//! Only when the agent's GPUs are simulated (`--sim-gpus`): every
//! [`DRIVE_EVERY`], for every allocation running here that holds GPUs
//! (`HERD_GPU_INDICES` in the environment persisted with it), this task
//!
//! 1. reads the allocation's `gpu-work` report (how busy its work keeps its
//!    GPUs; see `herd_actors::resources::gpu_work`) and sets each GPU's
//!    activity from it: the highest report of the allocations holding the
//!    GPU, 0 (idle) for a GPU no allocation holds or whose work has not
//!    reported for a while;
//! 2. writes the allocation's `gpu-throttle`: the lowest throughput share
//!    its GPUs keep under the limits the governor set, so that its work
//!    slows down as a capped GPU would.
//!
//! The allocations come from the allocation directories (what this agent
//! runs, its restarts included), not from the assignment stream, so the
//! task needs nothing of the link. On NVML or no GPU it is not started:
//! real work is never slowed artificially.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_actors::resources::gpu_work::{read_work, write_throttle};
use herd_actors::resources::{GpuBackend, SimulatedGpuBackend};
use herd_actors::workload::store::AllocStore;
use tokio::task::JoinHandle;

/// How often activities and throttles are brought up to date.
pub const DRIVE_EVERY: Duration = Duration::from_millis(250);
/// A throttle is rewritten when it moves by more than this.
const THROTTLE_STEP: f64 = 0.002;
/// The environment variable naming an allocation's GPUs.
const GPU_ENV: &str = "HERD_GPU_INDICES";

/// The task, aborted when dropped (with the agent that started it).
#[derive(Debug)]
pub struct GpuDrive(JoinHandle<()>);

impl Drop for GpuDrive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts driving `backend`'s GPUs from the work under `data_dir`; None
/// (nothing started) when the GPUs are not simulated.
pub fn spawn(backend: Arc<dyn GpuBackend>, data_dir: PathBuf) -> Option<GpuDrive> {
    backend.as_simulated()?;
    let store = AllocStore::new(&data_dir);
    let task = tokio::spawn(async move {
        let mut driver = Driver::default();
        let mut tick = tokio::time::interval(DRIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let backend = backend.clone();
            let store = store.clone();
            let mut owned = std::mem::take(&mut driver);
            let done = tokio::task::spawn_blocking(move || {
                if let Some(sim) = backend.as_simulated() {
                    owned.drive(sim, &store, herd_api::clock::now_ms());
                }
                owned
            })
            .await;
            match done {
                Ok(back) => driver = back,
                Err(e) => tracing::warn!(error = %e, "driving the simulated GPUs failed"),
            }
        }
    });
    Some(GpuDrive(task))
}

/// One allocation holding GPUs here.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// Its id.
    pub alloc_id: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The GPUs it holds.
    pub gpus: Vec<u32>,
}

/// The GPU indices of `HERD_GPU_INDICES` (`"0,3"`); entries that are not
/// indices are left out.
pub fn parse_indices(text: &str) -> Vec<u32> {
    text.split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect()
}

/// Every allocation running here (a handle persisted) that holds GPUs.
fn bound(store: &AllocStore) -> Vec<Bound> {
    let Ok(found) = store.scan() else {
        return Vec::new();
    };
    found
        .into_iter()
        .flatten()
        .filter_map(|persisted| {
            let desired = persisted.desired?;
            let env = desired
                .env
                .get(GPU_ENV)
                .or_else(|| desired.task.env.get(GPU_ENV))?;
            let gpus = parse_indices(env);
            let dir = store.alloc_dir(&persisted.alloc_id).ok()?;
            (!gpus.is_empty()).then_some(Bound {
                alloc_id: persisted.alloc_id,
                dir,
                gpus,
            })
        })
        .collect()
}

/// Each of `count` GPUs' activity from the allocations' reports (`None`:
/// no fresh report): the highest report among the allocations holding it,
/// 0 for a GPU none holds. Indices past `count` are ignored.
pub fn activities(count: u32, reports: &[(Vec<u32>, Option<f64>)]) -> Vec<f64> {
    let mut activity = vec![0.0; usize::try_from(count).unwrap_or(0)];
    for (gpus, report) in reports {
        let report = report.unwrap_or(0.0);
        for &index in gpus {
            if let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| activity.get_mut(i))
            {
                *slot = f64::max(*slot, report);
            }
        }
    }
    activity
}

/// What the task keeps between rounds: the throttles it last wrote.
#[derive(Debug, Default)]
pub struct Driver {
    written: HashMap<String, f64>,
    warned: bool,
}

impl Driver {
    /// One round: activities from the reports, throttles from the limits.
    pub fn drive(&mut self, sim: &SimulatedGpuBackend, store: &AllocStore, now_ms: u64) {
        let allocs = bound(store);
        let reports: Vec<(Vec<u32>, Option<f64>)> = allocs
            .iter()
            .map(|a| (a.gpus.clone(), read_work(&a.dir, now_ms)))
            .collect();
        let count = sim.count();
        for (index, activity) in (0u32..).zip(activities(count, &reports)) {
            if let Err(e) = sim.set_work_activity(index, activity) {
                self.warn_once(&format!("GPU {index}: {e}"));
            }
        }
        let mut live = BTreeMap::new();
        for alloc in &allocs {
            let share = alloc
                .gpus
                .iter()
                .filter(|i| **i < count)
                .filter_map(|i| sim.throughput(*i).ok())
                .fold(1.0f64, f64::min);
            live.insert(alloc.alloc_id.clone(), share);
            let stale = self
                .written
                .get(&alloc.alloc_id)
                .is_none_or(|last| (last - share).abs() > THROTTLE_STEP);
            if stale
                || !alloc
                    .dir
                    .join(herd_actors::resources::gpu_work::THROTTLE_FILE)
                    .exists()
            {
                match write_throttle(&alloc.dir, share) {
                    Ok(()) => {
                        self.written.insert(alloc.alloc_id.clone(), share);
                    }
                    Err(e) => self.warn_once(&format!(
                        "cannot write the GPU throttle of {}: {e}",
                        alloc.alloc_id
                    )),
                }
            }
        }
        self.written.retain(|id, _| live.contains_key(id));
    }

    fn warn_once(&mut self, what: &str) {
        if !self.warned {
            tracing::warn!("simulated GPUs: {what}");
            self.warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_actors::driver::WorkloadHandle;
    use herd_actors::resources::gpu_work::{read_throttle, write_work};
    use herd_actors::resources::SimGpus;
    use herd_actors::workload::DesiredAlloc;

    use super::*;

    #[test]
    fn indices_and_activities() {
        assert_eq!(parse_indices("0,3"), vec![0, 3]);
        assert_eq!(parse_indices(" 1 , x,2"), vec![1, 2]);
        assert_eq!(parse_indices(""), Vec::<u32>::new());
        let got = activities(
            4,
            &[
                (vec![0], Some(0.5)),
                (vec![0, 1], Some(0.9)),
                (vec![2], None),
                (vec![9], Some(1.0)),
            ],
        );
        assert_eq!(got, vec![0.9, 0.9, 0.0, 0.0]);
    }

    fn run_here(store: &AllocStore, id: &str, gpus: &str) -> PathBuf {
        let desired = DesiredAlloc {
            alloc_id: id.into(),
            generation: 1,
            job: "j".into(),
            job_type: herd_api::job::JobType::Service,
            task: herd_api::job::TaskSpec {
                driver: "exec".into(),
                command: Some("/bin/true".into()),
                args: vec![],
                env: Default::default(),
                workdir: None,
                resources: Default::default(),
                config: Default::default(),
            },
            env: BTreeMap::from([(GPU_ENV.to_string(), gpus.to_string())]),
            stop_after_disconnect: None,
            moving_out: None,
        };
        let dir = store.save_desired(&desired).expect("desired");
        let handle = WorkloadHandle {
            driver: "exec".into(),
            alloc_id: id.into(),
            generation: 1,
            pid: Some(1),
            started_at_ms: 0,
            detail: serde_json::Value::Null,
        };
        store.save_handle(&handle).expect("handle");
        dir
    }

    #[test]
    fn work_drives_its_gpus_and_a_cap_throttles_it() {
        let data = tempfile::tempdir().expect("tempdir");
        let store = AllocStore::new(data.path());
        let sim = SimulatedGpuBackend::new(SimGpus::new(3, "h100")).expect("sim");
        let busy = run_here(&store, "a1", "0");
        let quiet = run_here(&store, "a2", "1");
        let now = herd_api::clock::now_ms();
        write_work(&busy, 1.0, now).expect("report");
        let mut driver = Driver::default();
        driver.drive(&sim, &store, now);
        let draws: Vec<f64> = sim
            .gpus()
            .expect("gpus")
            .iter()
            .map(|g| g.power_draw_watts)
            .collect();
        // Busy at nameplate; no report and unbound: idle.
        assert_eq!(draws, vec![700.0, 80.0, 80.0]);
        assert_eq!(read_throttle(&busy), 1.0);
        assert!(busy.join("gpu-throttle").exists());
        // A cap on GPU 0 slows a1's work; a2's idle GPU loses nothing.
        sim.set_power_limit(0, 420).expect("in range");
        sim.set_power_limit(1, 200).expect("in range");
        driver.drive(&sim, &store, now);
        assert!((read_throttle(&busy) - 0.88).abs() < 1e-3);
        assert_eq!(read_throttle(&quiet), 1.0);
        // A stale report: idle again.
        driver.drive(&sim, &store, now + 60_000);
        assert_eq!(sim.gpus().expect("gpus")[0].power_draw_watts, 80.0);
    }
}
