//! The SIMULATED engine on the real clock: a task owns the [`Engine`],
//! takes requests from a channel, and after each step sleeps for the step's
//! modelled duration times `time_scale` (so tests run the model faster than
//! real time). Token times stay on the modelled clock, whatever the scale.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::engine::{
    Engine, EngineConfig, EngineStats, KvExport, KvState, RequestId, RequestSpec, TokenEvent,
};
use super::error::EngineError;
use super::latency::LatencyLog;
use super::watchdog::{Bounds, Watchdog};
use crate::resources::gpu_work::{stretched, WorkMeter};

/// Requests queued to the engine task before `generate` waits.
const QUEUE: usize = 1024;

/// Tokens of one request, as the engine produces them.
pub type TokenStream = mpsc::UnboundedReceiver<TokenEvent>;

type Reply = oneshot::Sender<Result<(RequestId, TokenStream), EngineError>>;

/// A step of a request migration, run by the engine task between steps.
#[derive(Debug, Clone)]
pub enum KvOp {
    /// [`Engine::export_kv`].
    Export {
        /// The request.
        id: RequestId,
        /// First block wanted.
        from_block: u32,
        /// Stop it first (the last stage).
        freeze: bool,
    },
    /// [`Engine::thaw`].
    Thaw(RequestId),
    /// [`Engine::release_frozen`]; its token stream ends.
    Release(RequestId),
    /// [`Engine::stage_kv`].
    Stage {
        /// The migration.
        migration: String,
        /// Index of the first block in `data`.
        from_block: u32,
        /// Whole blocks.
        data: Vec<u8>,
    },
    /// [`Engine::resume_imported`]; its tokens stream from then on.
    Resume {
        /// The migration.
        migration: String,
        /// What it resumes from.
        state: KvState,
    },
    /// [`Engine::abort_import`].
    AbortImport(String),
}

/// What a [`KvOp`] gave.
#[derive(Debug)]
pub enum KvOutcome {
    /// Exported blocks.
    Blocks(KvExport),
    /// Blocks staged, freed or nothing to report.
    Count(u32),
    /// The resumed request and its tokens.
    Resumed(RequestId, TokenStream),
}

type KvReply = oneshot::Sender<Result<KvOutcome, EngineError>>;

enum Command {
    Generate(RequestSpec, Reply),
    Kv(KvOp, KvReply),
}

/// A handle on a running engine task; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    submit: mpsc::Sender<Command>,
    stats: watch::Receiver<EngineStats>,
    /// How busy the engine keeps its GPU, and the throughput share its
    /// (SIMULATED) GPU keeps under its power limit: every step's modelled
    /// duration is stretched by the share's inverse (see
    /// `resources::gpu_work`).
    meter: Arc<WorkMeter>,
    /// Recent TTFT and time-between-tokens samples.
    latency: Arc<LatencyLog>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Generate(spec, _) => write!(f, "Generate({spec:?})"),
            Command::Kv(op, _) => write!(f, "Kv({op:?})"),
        }
    }
}

/// Why the engine task could not take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine refused it.
    #[error(transparent)]
    Refused(#[from] EngineError),
    /// The engine task is gone.
    #[error("the engine stopped")]
    Stopped,
}

impl EngineHandle {
    /// Starts an engine task on the current tokio runtime, with the
    /// default [`Bounds`] on migration states.
    pub fn spawn(config: EngineConfig, time_scale: f64) -> Self {
        Self::spawn_with(config, time_scale, Bounds::default())
    }

    /// Starts an engine task whose frozen requests thaw, and whose staged
    /// blocks are freed, after `bounds` ([`super::watchdog`]).
    pub fn spawn_with(config: EngineConfig, time_scale: f64, bounds: Bounds) -> Self {
        let meter = Arc::new(WorkMeter::default());
        let gpu = Gpu {
            meter: meter.clone(),
            max_batch: config.max_batch,
        };
        let engine = Engine::new(config);
        let (submit, requests) = mpsc::channel(QUEUE);
        let (stats_tx, stats) = watch::channel(engine.stats());
        let watchdog = Watchdog::new(bounds);
        let latency = Arc::new(LatencyLog::default());
        tokio::spawn(run(
            engine,
            time_scale,
            requests,
            stats_tx,
            watchdog,
            gpu,
            latency.clone(),
        ));
        Self {
            submit,
            stats,
            meter,
            latency,
        }
    }

    /// The engine's GPU meter: its busy time, and the throughput share it
    /// runs at (1.0 unless a throttle is set).
    pub fn meter(&self) -> Arc<WorkMeter> {
        self.meter.clone()
    }

    /// Queues a request; its tokens arrive on the stream, which ends after
    /// the last. Dropping the stream cancels the request.
    pub async fn generate(&self, spec: RequestSpec) -> Result<TokenStream, RuntimeError> {
        self.generate_with_id(spec).await.map(|(_, tokens)| tokens)
    }

    /// [`EngineHandle::generate`], with the request's id in this engine (the
    /// agent needs it to follow a request that migrates before its first
    /// token, see [`super::wire::REQUEST_ID_HEADER`]).
    pub async fn generate_with_id(
        &self,
        spec: RequestSpec,
    ) -> Result<(RequestId, TokenStream), RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.submit
            .send(Command::Generate(spec, reply))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        Ok(answer.await.map_err(|_| RuntimeError::Stopped)??)
    }

    /// Runs one step of a request migration between engine steps.
    pub async fn kv(&self, op: KvOp) -> Result<KvOutcome, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        self.submit
            .send(Command::Kv(op, reply))
            .await
            .map_err(|_| RuntimeError::Stopped)?;
        Ok(answer.await.map_err(|_| RuntimeError::Stopped)??)
    }

    /// TTFT and time-between-tokens samples (ms, modelled clock) of the
    /// last [`super::latency::WINDOW`] of wall time.
    pub fn recent_latencies(&self) -> (Vec<u32>, Vec<u32>) {
        self.latency.recent(Instant::now())
    }

    /// The latest stats (refreshed after every step).
    pub fn stats(&self) -> EngineStats {
        self.stats.borrow().clone()
    }
}

fn scaled(us: u64, scale: f64) -> Duration {
    Duration::from_secs_f64((us as f64 * scale / 1e6).clamp(0.0, 3600.0))
}

/// What the engine loop needs of its GPU.
struct Gpu {
    meter: Arc<WorkMeter>,
    max_batch: usize,
}

impl Gpu {
    /// How hard a step of `report` works the GPU: a prefill is compute
    /// bound (1.0); a decode step is memory bound, from 0.5 for one
    /// sequence to 1.0 for a full batch (POLCA: inference draws well under
    /// nameplate at low load, close to it under a full batch).
    fn intensity(&self, report: &super::engine::StepReport) -> f64 {
        if !report.prefilled.is_empty() {
            return 1.0;
        }
        let full = self.max_batch.max(1) as f64;
        0.5 + 0.5 * (report.decoded as f64 / full).min(1.0)
    }

    /// A step's modelled duration (µs) on this GPU: stretched by the
    /// inverse of its throughput share; its busy time counted.
    fn step_us(&self, report: &super::engine::StepReport, scale: f64) -> u64 {
        let modelled = stretched(
            Duration::from_micros(report.duration_us),
            self.meter.throughput(),
        );
        let us = u64::try_from(modelled.as_micros()).unwrap_or(u64::MAX);
        if us > 0 {
            // With no sleeping (scale 0), the modelled time counts.
            let busy = if scale > 0.0 {
                scaled(us, scale)
            } else {
                modelled
            };
            self.meter
                .add_busy(busy.as_secs_f64(), self.intensity(report));
        }
        us
    }
}

async fn run(
    mut engine: Engine,
    scale: f64,
    mut requests: mpsc::Receiver<Command>,
    stats: watch::Sender<EngineStats>,
    mut watchdog: Watchdog,
    gpu: Gpu,
    latency: Arc<LatencyLog>,
) {
    let mut streams: HashMap<RequestId, mpsc::UnboundedSender<TokenEvent>> = HashMap::new();
    // The modelled clock (µs): advanced by steps, and by idle real time.
    let mut now: u64 = 0;
    // Whether the last step did nothing (only frozen requests): wait for a
    // command instead of spinning.
    let mut stalled = false;
    loop {
        if engine.is_idle() || stalled {
            let idle_from = Instant::now();
            // Until a command, or the watchdog's next deadline.
            let first = match watchdog.next_deadline() {
                Some(at) => match tokio::time::timeout_at(at.into(), requests.recv()).await {
                    Ok(Some(command)) => Some(command),
                    Ok(None) => return,
                    Err(_) => None,
                },
                None => match requests.recv().await {
                    Some(command) => Some(command),
                    None => return,
                },
            };
            if scale > 0.0 {
                now += (idle_from.elapsed().as_secs_f64() * 1e6 / scale) as u64;
            }
            if let Some(first) = first {
                accept(&mut engine, &mut streams, &mut watchdog, first, now);
            }
        }
        while let Ok(request) = requests.try_recv() {
            accept(&mut engine, &mut streams, &mut watchdog, request, now);
        }
        expire(&mut engine, &mut watchdog);
        let report = engine.step(now);
        stalled = report.duration_us == 0 && report.tokens.is_empty();
        // A capped (SIMULATED) GPU gets the step done more slowly.
        let duration_us = gpu.step_us(&report, scale);
        now += duration_us;
        if duration_us > 0 && scale > 0.0 {
            tokio::time::sleep(scaled(duration_us, scale)).await;
        } else {
            tokio::task::yield_now().await;
        }
        latency.record(&report.tokens, Instant::now());
        for token in report.tokens {
            let gone = match streams.get(&token.request) {
                Some(tx) => tx.send(token).is_err(),
                None => true,
            };
            if token.last {
                streams.remove(&token.request);
            } else if gone {
                streams.remove(&token.request);
                latency.forget(token.request);
                let _ = engine.cancel(token.request);
            }
        }
        stats.send_replace(engine.stats());
    }
}

/// Thaws the frozen requests, and aborts the staged migrations, that the
/// watchdog says waited too long for their agent.
fn expire(engine: &mut Engine, watchdog: &mut Watchdog) {
    let expired = watchdog.expired(Instant::now());
    for id in expired.thaw {
        // Gone already (cancelled) is fine: nothing is left frozen.
        if engine.thaw(id).is_ok() {
            tracing::warn!(
                request = id,
                "frozen for a migration that was neither committed nor given up in time: thawed"
            );
        }
    }
    for migration in expired.abort {
        let freed = engine.abort_import(&migration);
        tracing::warn!(%migration, freed, "staged KV blocks without progress: freed");
    }
}

fn accept(
    engine: &mut Engine,
    streams: &mut HashMap<RequestId, mpsc::UnboundedSender<TokenEvent>>,
    watchdog: &mut Watchdog,
    command: Command,
    now: u64,
) {
    let (spec, reply) = match command {
        Command::Generate(spec, reply) => (spec, reply),
        Command::Kv(op, reply) => {
            let _ = reply.send(kv(engine, streams, watchdog, op, now));
            return;
        }
    };
    let answer = engine.submit(spec, now).map(|id| {
        let (tx, rx) = mpsc::unbounded_channel();
        streams.insert(id, tx);
        (id, rx)
    });
    match answer {
        Ok((id, rx)) => {
            if reply.send(Ok((id, rx))).is_err() {
                streams.remove(&id);
                let _ = engine.cancel(id);
            }
        }
        Err(e) => {
            let _ = reply.send(Err(e));
        }
    }
}

fn kv(
    engine: &mut Engine,
    streams: &mut HashMap<RequestId, mpsc::UnboundedSender<TokenEvent>>,
    watchdog: &mut Watchdog,
    op: KvOp,
    now: u64,
) -> Result<KvOutcome, EngineError> {
    Ok(match op {
        KvOp::Export {
            id,
            from_block,
            freeze,
        } => {
            let blocks = engine.export_kv(id, from_block, freeze)?;
            if freeze {
                watchdog.froze(id, Instant::now());
            }
            KvOutcome::Blocks(blocks)
        }
        KvOp::Thaw(id) => {
            watchdog.unfroze(id);
            engine.thaw(id)?;
            KvOutcome::Count(0)
        }
        KvOp::Release(id) => {
            let freed = engine.release_frozen(id)?;
            watchdog.unfroze(id);
            // Ends the stream after the tokens already sent.
            streams.remove(&id);
            KvOutcome::Count(freed)
        }
        KvOp::Stage {
            migration,
            from_block,
            data,
        } => {
            let staged = engine.stage_kv(&migration, from_block, &data)?;
            watchdog.staged(&migration, Instant::now());
            KvOutcome::Count(staged)
        }
        KvOp::Resume { migration, state } => {
            // Resumed or not, nothing stays staged for it.
            watchdog.unstaged(&migration);
            let id = engine.resume_imported(&migration, state, now)?;
            let (tx, rx) = mpsc::unbounded_channel();
            streams.insert(id, tx);
            KvOutcome::Resumed(id, rx)
        }
        KvOp::AbortImport(migration) => {
            watchdog.unstaged(&migration);
            KvOutcome::Count(engine.abort_import(&migration))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::{EngineSettings, Priority};

    #[tokio::test]
    async fn tokens_stream_back_and_over_capacity_is_refused() {
        let mut settings = EngineSettings::default();
        settings.engine.kv_blocks = 8;
        let engine = EngineHandle::spawn(settings.engine, 0.0);
        let spec = RequestSpec {
            prompt_tokens: 10,
            max_tokens: 12,
            priority: Priority::Normal,
        };
        let mut tokens = engine.generate(spec).await.expect("accepted");
        let mut got = Vec::new();
        while let Some(t) = tokens.recv().await {
            got.push(t);
        }
        assert_eq!(got.len(), 12);
        assert!(got[0].ttft_us.is_some() && got[11].last);
        let too_long = RequestSpec {
            prompt_tokens: 100,
            max_tokens: 100,
            ..spec
        };
        let err = engine.generate(too_long).await.expect_err("refused");
        assert!(matches!(
            err,
            RuntimeError::Refused(EngineError::OverCapacity { .. })
        ));
        assert_eq!(engine.stats().free_blocks, 8);
    }

    /// A source agent that froze a request and died, and a target whose
    /// source died mid-copy: the watchdog thaws the one and frees the other.
    #[tokio::test]
    async fn a_forgotten_freeze_thaws_and_forgotten_staged_blocks_are_freed() {
        let mut settings = EngineSettings::default();
        settings.engine.kv_blocks = 256;
        let bounds = Bounds {
            frozen: Duration::from_millis(300),
            staged_idle: Duration::from_millis(300),
        };
        // About 1 ms a step: 600 tokens decode for well over the bound.
        let engine = EngineHandle::spawn_with(settings.engine.clone(), 0.05, bounds);
        let spec = RequestSpec {
            prompt_tokens: 16,
            max_tokens: 600,
            priority: Priority::Normal,
        };
        let mut tokens = engine.generate(spec).await.expect("accepted");
        let first = tokens.recv().await.expect("first token");
        let frozen = engine
            .kv(KvOp::Export {
                id: first.request,
                from_block: 0,
                freeze: true,
            })
            .await
            .expect("frozen");
        let KvOutcome::Blocks(frozen) = frozen else {
            panic!("blocks expected, got {frozen:?}");
        };
        let at = frozen.state.expect("state").generated;
        // Drain what was produced before the freeze; then nothing comes.
        while tokens.try_recv().is_ok() {}
        let quiet = tokio::time::timeout(Duration::from_millis(100), tokens.recv()).await;
        assert!(quiet.is_err(), "a frozen request decodes no token");
        // Nobody commits or thaws: the bound thaws it, and it finishes here.
        let started = Instant::now();
        let mut last = None;
        while let Some(t) = tokens.recv().await {
            last = Some(t);
        }
        let last = last.expect("tokens after the thaw");
        assert!(last.last && last.index == 599, "finished: {last:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(at < 600);
        // A late commit is refused: the migration aborts, not duplicated.
        let late = engine.kv(KvOp::Release(first.request)).await;
        assert!(late.is_err(), "released after the thaw: {late:?}");

        // Two blocks staged for a migration whose source never comes back.
        let block = 16 * settings.engine.bytes_per_token;
        let staged = engine
            .kv(KvOp::Stage {
                migration: "m1".into(),
                from_block: 0,
                data: vec![0; 2 * block],
            })
            .await
            .expect("staged");
        assert!(matches!(staged, KvOutcome::Count(2)), "{staged:?}");
        // The stats refresh after the engine's next step.
        let started = Instant::now();
        while engine.stats().free_blocks == 256 && started.elapsed() < Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            engine.stats().free_blocks,
            254,
            "the staged blocks are held"
        );
        let started = Instant::now();
        while engine.stats().free_blocks != 256 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "staged blocks never freed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The next chunk of that migration finds nothing staged.
        let late = engine
            .kv(KvOp::Stage {
                migration: "m1".into(),
                from_block: 2,
                data: vec![0; block],
            })
            .await;
        assert!(late.is_err(), "{late:?}");
    }
}
