//! `ResourceMonitor`: the actor that keeps the node's [`HostReport`] fresh.
//!
//! The agent asks for the report often (heartbeats, the CLI) and the figures
//! take a few file reads and driver calls to gather, so the monitor samples on
//! its own timer and answers from its latest sample at once. Sampling and
//! power-limit changes run on tokio's blocking pool: NVML calls may block
//! for a while, and the actor's mailbox must keep moving meanwhile. A failed
//! read keeps the previous figures and logs a warning; the actor never dies of
//! it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herd_api::clock::now_ms;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::error::ResourceError;
use super::gpu::{GpuBackend, GpuInfo};
use super::host::{sample_host, HostFigures};
use super::report::HostReport;
use crate::ticker::Ticker;

/// Shortest refresh interval: a zero interval would make the timer spin.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(10);

/// The resource monitor actor; spawn it with [`MonitorArgs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceMonitor;

/// What the monitor needs to start.
#[derive(Clone)]
pub struct MonitorArgs {
    /// The agent's data dir, whose file system's space is reported.
    pub data_dir: PathBuf,
    /// Where GPU figures come from (see [`super::detect`]).
    pub gpu: Arc<dyn GpuBackend>,
    /// How often to sample (at least [`MIN_REFRESH_INTERVAL`]).
    pub refresh_interval: Duration,
}

impl std::fmt::Debug for MonitorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorArgs")
            .field("data_dir", &self.data_dir)
            .field("gpu", &self.gpu.name())
            .field("refresh_interval", &self.refresh_interval)
            .finish()
    }
}

/// Messages the monitor answers.
#[derive(Debug)]
pub enum ResourceMsg {
    /// The latest report (immediately, from the last sample).
    Snapshot(RpcReplyPort<HostReport>),
    /// Sets GPU `index`'s power limit through the backend. On success the
    /// GPU figures are re-read before the reply, so a `Snapshot` sent after
    /// the reply already shows the new limit.
    SetGpuPowerLimit {
        /// The GPU.
        index: u32,
        /// The new limit, within the GPU's settable range.
        watts: u32,
        /// Ok, or why the limit was not set.
        reply: RpcReplyPort<Result<(), ResourceError>>,
    },
    /// Sample now rather than at the next tick (ignored while a sample is
    /// already being taken).
    Refresh,
    /// A sample finished on the blocking pool; only the monitor makes these.
    Sampled(Sampled),
}

/// The result of sampling off the actor's task. Opaque: only the monitor
/// creates it, so nothing else can forge figures.
#[derive(Debug)]
pub struct Sampled(SampledInner);

#[derive(Debug)]
enum SampledInner {
    /// A full sample, or why the sampling task failed (it panicked).
    Full(Result<Box<Sample>, String>),
    /// GPUs re-read after a power limit change.
    Gpus(Vec<GpuInfo>),
}

#[derive(Debug)]
struct Sample {
    /// The state's `gpu_generation` when sampling began.
    gpu_generation: u64,
    host: HostFigures,
    host_errors: Vec<ResourceError>,
    gpus: Result<Vec<GpuInfo>, ResourceError>,
    at_ms: u64,
}

/// The monitor's state: its arguments, the latest figures and its timer.
pub struct MonitorState {
    args: MonitorArgs,
    host: HostFigures,
    report: HostReport,
    sampling: bool,
    /// Bumped whenever GPUs are re-read after a power limit change, so a
    /// sample begun before the change does not put back the old figures.
    gpu_generation: u64,
    /// The tick, ended with the actor.
    ticker: Ticker,
}

/// Reads everything once; blocking.
fn take_sample(
    data_dir: &Path,
    previous: &HostFigures,
    gpu: &dyn GpuBackend,
    gpu_generation: u64,
) -> Sample {
    let (host, host_errors) = sample_host(data_dir, previous);
    Sample {
        gpu_generation,
        host,
        host_errors,
        gpus: gpu.gpus(),
        at_ms: now_ms(),
    }
}

/// Runs `take_sample` on the blocking pool.
async fn sample_off_task(
    data_dir: PathBuf,
    previous: HostFigures,
    gpu: Arc<dyn GpuBackend>,
    gpu_generation: u64,
) -> Result<Box<Sample>, String> {
    tokio::task::spawn_blocking(move || {
        Box::new(take_sample(
            &data_dir,
            &previous,
            gpu.as_ref(),
            gpu_generation,
        ))
    })
    .await
    .map_err(|e| format!("resource sampling task failed: {e}"))
}

impl MonitorState {
    fn apply(&mut self, sampled: SampledInner) {
        match sampled {
            SampledInner::Full(Err(message)) => {
                self.sampling = false;
                tracing::warn!(error = %message, "resource sample lost; keeping the previous figures");
            }
            SampledInner::Full(Ok(sample)) => {
                self.sampling = false;
                for error in &sample.host_errors {
                    tracing::warn!(%error, "host figure not read; keeping its previous value");
                }
                self.host = sample.host;
                match sample.gpus {
                    Ok(_) if sample.gpu_generation != self.gpu_generation => {}
                    Ok(gpus) => self.report.gpus = gpus,
                    Err(error) => {
                        tracing::warn!(%error, "GPU figures not read; keeping the previous ones")
                    }
                }
                self.report.sampled_at_ms = sample.at_ms;
                self.fill_host_figures();
            }
            SampledInner::Gpus(gpus) => {
                self.gpu_generation += 1;
                self.report.gpus = gpus;
            }
        }
    }

    fn fill_host_figures(&mut self) {
        let host = &self.host;
        let report = &mut self.report;
        report.cpus = host.cpus;
        report.cpu_busy_fraction = host.cpu_busy_fraction;
        report.memory_total_bytes = host.memory.total_bytes;
        report.memory_available_bytes = host.memory.available_bytes;
        report.disk_total_bytes = host.disk.total_bytes;
        report.disk_available_bytes = host.disk.available_bytes;
        report.load1 = host.load.load1;
        report.load5 = host.load.load5;
        report.load15 = host.load.load15;
    }
}

impl Actor for ResourceMonitor {
    type Msg = ResourceMsg;
    type State = MonitorState;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        mut args: MonitorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.refresh_interval = args.refresh_interval.max(MIN_REFRESH_INTERVAL);
        let report = HostReport {
            gpu_backend: args.gpu.name().to_string(),
            gpus_simulated: args.gpu.simulated(),
            ..HostReport::default()
        };
        let mut state = MonitorState {
            host: HostFigures::default(),
            report,
            sampling: false,
            gpu_generation: 0,
            ticker: Ticker::default(),
            args,
        };
        // One sample before answering anything, so the first Snapshot has
        // real figures.
        let first = sample_off_task(
            state.args.data_dir.clone(),
            state.host,
            state.args.gpu.clone(),
            state.gpu_generation,
        )
        .await;
        state.apply(SampledInner::Full(first));
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state
            .ticker
            .start(myself.send_interval(state.args.refresh_interval, || ResourceMsg::Refresh));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ResourceMsg::Snapshot(reply) => {
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(state.report.clone());
            }
            ResourceMsg::Refresh => {
                if !state.sampling {
                    state.sampling = true;
                    let data_dir = state.args.data_dir.clone();
                    let previous = state.host;
                    let gpu = state.args.gpu.clone();
                    let generation = state.gpu_generation;
                    tokio::spawn(async move {
                        let sample = sample_off_task(data_dir, previous, gpu, generation).await;
                        // Fails only when the monitor has stopped.
                        let _ = myself.send_message(ResourceMsg::Sampled(Sampled(
                            SampledInner::Full(sample),
                        )));
                    });
                }
            }
            ResourceMsg::SetGpuPowerLimit {
                index,
                watts,
                reply,
            } => {
                let gpu = state.args.gpu.clone();
                let backend = gpu.name().to_string();
                tokio::spawn(async move {
                    let outcome = tokio::task::spawn_blocking(move || {
                        gpu.set_power_limit(index, watts)?;
                        Ok::<_, ResourceError>(gpu.gpus())
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(ResourceError::Gpu {
                            backend,
                            message: format!("GPU {index}: setting the power limit failed: {e}"),
                        })
                    });
                    let result = outcome.map(|reread| match reread {
                        Ok(gpus) => {
                            // Before the reply: a Snapshot sent after it
                            // is queued behind this and sees the new limit.
                            let gpus = Sampled(SampledInner::Gpus(gpus));
                            let _ = myself.send_message(ResourceMsg::Sampled(gpus));
                        }
                        Err(error) => tracing::warn!(
                            %error,
                            "GPU figures not re-read after a power limit change"
                        ),
                    });
                    let _ = reply.send(result);
                });
            }
            ResourceMsg::Sampled(Sampled(sampled)) => state.apply(sampled),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Reserved, SimGpus, SimulatedGpuBackend};
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn spawn(gpu: Arc<dyn GpuBackend>, dir: &Path) -> ActorRef<ResourceMsg> {
        let args = MonitorArgs {
            data_dir: dir.to_path_buf(),
            gpu,
            refresh_interval: Duration::from_millis(20),
        };
        let (actor, _handle) = Actor::spawn(None, ResourceMonitor, args)
            .await
            .expect("monitor starts");
        actor
    }

    async fn snapshot(actor: &ActorRef<ResourceMsg>) -> HostReport {
        ractor::call!(actor, ResourceMsg::Snapshot).expect("snapshot")
    }

    fn sim_h100(count: u32) -> Arc<dyn GpuBackend> {
        Arc::new(SimulatedGpuBackend::new(SimGpus::new(count, "h100")).expect("sim"))
    }

    #[tokio::test]
    async fn snapshot_has_this_hosts_figures_and_the_simulated_gpus() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actor = spawn(sim_h100(8), dir.path()).await;
        let report = snapshot(&actor).await;
        assert!(report.cpus >= 1);
        assert!(report.memory_total_bytes > 0);
        assert!(report.memory_available_bytes <= report.memory_total_bytes);
        assert!(report.disk_total_bytes > 0);
        assert!(report.sampled_at_ms > 0);
        assert_eq!(report.gpu_backend, "simulated");
        assert!(report.gpus_simulated);
        let capacity = report.capacity(&Reserved::default());
        assert_eq!(capacity.gpus, 8);
        assert_eq!(capacity.gpu_model.as_deref(), Some("h100"));
        assert_eq!(capacity.cpu_millis, u64::from(report.cpus) * 1000);
        actor.stop(None);
    }

    #[tokio::test]
    async fn samples_again_on_its_timer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actor = spawn(sim_h100(1), dir.path()).await;
        let first = snapshot(&actor).await.sampled_at_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if snapshot(&actor).await.sampled_at_ms > first {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new sample in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        actor.stop(None);
    }

    #[tokio::test]
    async fn power_limits_go_through_the_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let actor = spawn(sim_h100(2), dir.path()).await;
        let set = |index, watts| {
            let actor = actor.clone();
            async move {
                ractor::call!(actor, |reply| ResourceMsg::SetGpuPowerLimit {
                    index,
                    watts,
                    reply
                })
                .expect("call")
            }
        };
        set(1, 300).await.expect("in range");
        let gpu = &snapshot(&actor).await.gpus[1];
        assert_eq!(gpu.power_limit_watts, 300);
        assert!(gpu.power_draw_watts <= 300.0);

        let err = set(0, 900).await.expect_err("out of range");
        assert!(err.to_string().contains("200..=700 W"), "{err}");
        let err = set(5, 300).await.expect_err("no such GPU");
        assert!(err.to_string().contains("no GPU with index 5"), "{err}");
        assert_eq!(snapshot(&actor).await.gpus[0].power_limit_watts, 700);
        actor.stop(None);
    }

    /// GPUs that answer once, then fail: the report must keep the first list.
    struct FlakyGpus {
        calls: AtomicUsize,
        inner: SimulatedGpuBackend,
    }

    impl GpuBackend for FlakyGpus {
        fn name(&self) -> &str {
            "flaky"
        }
        fn simulated(&self) -> bool {
            true
        }
        fn gpus(&self) -> Result<Vec<GpuInfo>, ResourceError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.inner.gpus()
            } else {
                Err(ResourceError::Gpu {
                    backend: "flaky".into(),
                    message: "driver went away".into(),
                })
            }
        }
        fn set_power_limit(&self, index: u32, watts: u32) -> Result<(), ResourceError> {
            self.inner.set_power_limit(index, watts)
        }
    }

    #[tokio::test]
    async fn failed_reads_keep_the_previous_figures_and_the_actor_alive() {
        let flaky = Arc::new(FlakyGpus {
            calls: AtomicUsize::new(0),
            inner: SimulatedGpuBackend::new(SimGpus::new(3, "a100")).expect("sim"),
        });
        // A data dir that does not exist: disk figures cannot be read.
        let actor = spawn(flaky.clone(), Path::new("/nonexistent/herd-data")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while flaky.calls.load(Ordering::SeqCst) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no resampling in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = snapshot(&actor).await;
        assert_eq!(report.gpus.len(), 3, "GPUs from the first sample kept");
        assert_eq!(report.disk_total_bytes, 0);
        assert!(report.memory_total_bytes > 0);
        actor.stop(None);
    }
}
