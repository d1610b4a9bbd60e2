//! The SIMULATED engine on the real clock: a task owns the [`Engine`],
//! takes requests from a channel, and after each step sleeps for the step's
//! modelled duration times `time_scale` (so tests run the model faster than
//! real time). Token times stay on the modelled clock, whatever the scale.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::engine::{
    Engine, EngineConfig, EngineStats, KvExport, KvState, RequestId, RequestSpec, TokenEvent,
};
use super::error::EngineError;

/// Requests queued to the engine task before `generate` waits.
const QUEUE: usize = 1024;

/// Tokens of one request, as the engine produces them.
pub type TokenStream = mpsc::UnboundedReceiver<TokenEvent>;

type Reply = oneshot::Sender<Result<TokenStream, EngineError>>;

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
    /// Starts an engine task on the current tokio runtime.
    pub fn spawn(config: EngineConfig, time_scale: f64) -> Self {
        let engine = Engine::new(config);
        let (submit, requests) = mpsc::channel(QUEUE);
        let (stats_tx, stats) = watch::channel(engine.stats());
        tokio::spawn(run(engine, time_scale, requests, stats_tx));
        Self { submit, stats }
    }

    /// Queues a request; its tokens arrive on the stream, which ends after
    /// the last. Dropping the stream cancels the request.
    pub async fn generate(&self, spec: RequestSpec) -> Result<TokenStream, RuntimeError> {
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

    /// The latest stats (refreshed after every step).
    pub fn stats(&self) -> EngineStats {
        self.stats.borrow().clone()
    }
}

fn scaled(us: u64, scale: f64) -> Duration {
    Duration::from_secs_f64((us as f64 * scale / 1e6).clamp(0.0, 3600.0))
}

async fn run(
    mut engine: Engine,
    scale: f64,
    mut requests: mpsc::Receiver<Command>,
    stats: watch::Sender<EngineStats>,
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
            let Some(first) = requests.recv().await else {
                return;
            };
            if scale > 0.0 {
                now += (idle_from.elapsed().as_secs_f64() * 1e6 / scale) as u64;
            }
            accept(&mut engine, &mut streams, first, now);
        }
        while let Ok(request) = requests.try_recv() {
            accept(&mut engine, &mut streams, request, now);
        }
        let report = engine.step(now);
        stalled = report.duration_us == 0 && report.tokens.is_empty();
        now += report.duration_us;
        if report.duration_us > 0 && scale > 0.0 {
            tokio::time::sleep(scaled(report.duration_us, scale)).await;
        } else {
            tokio::task::yield_now().await;
        }
        for token in report.tokens {
            let gone = match streams.get(&token.request) {
                Some(tx) => tx.send(token).is_err(),
                None => true,
            };
            if token.last {
                streams.remove(&token.request);
            } else if gone {
                streams.remove(&token.request);
                let _ = engine.cancel(token.request);
            }
        }
        stats.send_replace(engine.stats());
    }
}

fn accept(
    engine: &mut Engine,
    streams: &mut HashMap<RequestId, mpsc::UnboundedSender<TokenEvent>>,
    command: Command,
    now: u64,
) {
    let (spec, reply) = match command {
        Command::Generate(spec, reply) => (spec, reply),
        Command::Kv(op, reply) => {
            let _ = reply.send(kv(engine, streams, op, now));
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
            if reply.send(Ok(rx)).is_err() {
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
    op: KvOp,
    now: u64,
) -> Result<KvOutcome, EngineError> {
    Ok(match op {
        KvOp::Export {
            id,
            from_block,
            freeze,
        } => KvOutcome::Blocks(engine.export_kv(id, from_block, freeze)?),
        KvOp::Thaw(id) => {
            engine.thaw(id)?;
            KvOutcome::Count(0)
        }
        KvOp::Release(id) => {
            let freed = engine.release_frozen(id)?;
            // Ends the stream after the tokens already sent.
            streams.remove(&id);
            KvOutcome::Count(freed)
        }
        KvOp::Stage {
            migration,
            from_block,
            data,
        } => KvOutcome::Count(engine.stage_kv(&migration, from_block, &data)?),
        KvOp::Resume { migration, state } => {
            let id = engine.resume_imported(&migration, state, now)?;
            let (tx, rx) = mpsc::unbounded_channel();
            streams.insert(id, tx);
            KvOutcome::Resumed(id, rx)
        }
        KvOp::AbortImport(migration) => KvOutcome::Count(engine.abort_import(&migration)),
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
}
