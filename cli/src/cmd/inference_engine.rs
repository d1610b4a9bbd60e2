//! `herd inference-engine` (hidden): the SIMULATED LLM engine as a process,
//! started by the `inference` driver. It serves `herd.inference.v1` on a
//! port it picks on 127.0.0.1, written to `<alloc_dir>/engine.json` for the
//! node agent, and runs the engine core on the real clock, sleeping for the
//! modelled step durations scaled by `time_scale`. SIGTERM or SIGINT make it
//! *drain*: it refuses new requests and says `draining` in its stats (the
//! agent's rescheduler then moves its running requests to other instances),
//! and it ends (removing `engine.json`) once no request is left in it or
//! after [`DRAIN_LIMIT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use futures::{Stream, StreamExt};
use herd_actors::inference::endpoint::EngineEndpoint;
use herd_actors::inference::runtime::{EngineHandle, KvOp, KvOutcome, RuntimeError};
use herd_actors::inference::EngineError;
use herd_actors::inference::{wire, EngineSettings};
use herd_actors::resources::gpu_work;
use herd_api::proto::inference as pb;
use herd_api::proto::inference::inference_engine_server::{InferenceEngine, InferenceEngineServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

use crate::exit::CliError;

/// Arguments of `herd inference-engine`.
#[derive(Args, Debug)]
pub struct InferenceEngineArgs {
    /// The allocation directory (`engine.json` is written there).
    #[arg(long)]
    pub alloc_dir: PathBuf,
    /// An engine setting from `[task.config]`, as KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Longest a stopping engine waits for its requests to finish or move
/// away: below the agents' default 5 s stop grace, after which the
/// process is killed.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(4);
/// How long, after the drain, the streams of requests still in the engine
/// (those that neither finished nor moved) may stay open: enough for the
/// last tokens already sent, and to stay within the agent's stop grace.
const STREAM_CUT: std::time::Duration = std::time::Duration::from_millis(300);

/// Serves one engine.
struct Service {
    engine: EngineHandle,
    /// Set on SIGTERM: new requests are refused, stats say so.
    draining: Arc<AtomicBool>,
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<pb::Token, Status>> + Send>>;

/// A migration step's failure as a status: a refusal names what was wrong.
fn kv_status(e: RuntimeError) -> Status {
    match e {
        RuntimeError::Refused(EngineError::UnknownRequest(id)) => {
            Status::not_found(format!("no request {id} in this engine"))
        }
        RuntimeError::Refused(e @ EngineError::NoFreeBlocks { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        RuntimeError::Refused(e @ EngineError::Migration(_))
            if e.to_string().contains("verify") =>
        {
            Status::data_loss(e.to_string())
        }
        RuntimeError::Refused(e) => Status::failed_precondition(e.to_string()),
        RuntimeError::Stopped => Status::unavailable(e.to_string()),
    }
}

/// `response` naming its request ([`wire::REQUEST_ID_HEADER`]).
fn with_request_id<T>(mut response: Response<T>, id: u64) -> Response<T> {
    response
        .metadata_mut()
        .insert(wire::REQUEST_ID_HEADER, id.into());
    response
}

impl Service {
    async fn kv(&self, op: KvOp) -> Result<KvOutcome, Status> {
        self.engine.kv(op).await.map_err(kv_status)
    }

    async fn count(&self, op: KvOp) -> Result<Response<pb::KvAck>, Status> {
        match self.kv(op).await? {
            KvOutcome::Count(blocks) => Ok(Response::new(pb::KvAck { blocks })),
            other => Err(Status::internal(format!(
                "unexpected engine answer {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl InferenceEngine for Service {
    type GenerateStream = TokenStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let spec = wire::request_spec(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.draining.load(Ordering::Relaxed) {
            return Err(Status::unavailable(
                "this engine is stopping (draining): send the request to another instance",
            ));
        }
        let (id, tokens) = self
            .engine
            .generate_with_id(spec)
            .await
            .map_err(|e| match e {
                RuntimeError::Refused(e) => Status::invalid_argument(e.to_string()),
                RuntimeError::Stopped => Status::unavailable(e.to_string()),
            })?;
        let stream = UnboundedReceiverStream::new(tokens).map(|t| Ok(wire::token(&t)));
        Ok(with_request_id(Response::new(Box::pin(stream)), id))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::EngineStats>, Status> {
        let mut stats = wire::stats(&self.engine.stats());
        stats.draining = self.draining.load(Ordering::Relaxed);
        (stats.recent_ttft_ms, stats.recent_tbt_ms) = self.engine.recent_latencies();
        Ok(Response::new(stats))
    }

    async fn export_kv(
        &self,
        request: Request<pb::ExportKvRequest>,
    ) -> Result<Response<pb::KvBlocks>, Status> {
        let r = request.into_inner();
        let op = KvOp::Export {
            id: r.request_id,
            from_block: r.from_block,
            freeze: r.freeze,
        };
        match self.kv(op).await? {
            KvOutcome::Blocks(b) => Ok(Response::new(pb::KvBlocks {
                from_block: b.from_block,
                data: b.data,
                blocks: b.blocks,
                cached_tokens: b.cached_tokens,
                state: b.state.as_ref().map(wire::kv_state),
            })),
            other => Err(Status::internal(format!(
                "unexpected engine answer {other:?}"
            ))),
        }
    }

    async fn thaw(&self, request: Request<pb::RequestRef>) -> Result<Response<pb::KvAck>, Status> {
        self.count(KvOp::Thaw(request.into_inner().request_id))
            .await
    }

    async fn release(
        &self,
        request: Request<pb::RequestRef>,
    ) -> Result<Response<pb::KvAck>, Status> {
        self.count(KvOp::Release(request.into_inner().request_id))
            .await
    }

    async fn import_kv(
        &self,
        request: Request<pb::ImportKvRequest>,
    ) -> Result<Response<pb::KvAck>, Status> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Status::unavailable(
                "this engine is stopping (draining): it takes no migrated request",
            ));
        }
        let r = request.into_inner();
        self.count(KvOp::Stage {
            migration: r.migration_id,
            from_block: r.from_block,
            data: r.data,
        })
        .await
    }

    type ResumeImportedStream = TokenStream;

    async fn resume_imported(
        &self,
        request: Request<pb::ResumeImportedRequest>,
    ) -> Result<Response<Self::ResumeImportedStream>, Status> {
        let r = request.into_inner();
        let state = r
            .state
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("field `state` is missing"))?;
        let state =
            wire::parse_kv_state(state).map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self
            .kv(KvOp::Resume {
                migration: r.migration_id,
                state,
            })
            .await?
        {
            KvOutcome::Resumed(id, tokens) => {
                let stream = UnboundedReceiverStream::new(tokens).map(|t| Ok(wire::token(&t)));
                Ok(with_request_id(Response::new(Box::pin(stream)), id))
            }
            other => Err(Status::internal(format!(
                "unexpected engine answer {other:?}"
            ))),
        }
    }

    async fn abort_import(
        &self,
        request: Request<pb::AbortImportRequest>,
    ) -> Result<Response<pb::KvAck>, Status> {
        self.count(KvOp::AbortImport(request.into_inner().migration_id))
            .await
    }
}

fn settings(args: &InferenceEngineArgs) -> Result<EngineSettings, CliError> {
    let mut config = BTreeMap::new();
    for pair in &args.set {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CliError::input(format!("--set {pair:?}: expected KEY=VALUE")))?;
        config.insert(key.to_string(), value.to_string());
    }
    EngineSettings::from_config(&config).map_err(CliError::input)
}

/// On GPUs (`HERD_GPU_INDICES` set by the agent), reports every
/// [`gpu_work::REPORT_EVERY`] how busy the engine keeps them and takes the
/// throughput share the agent allows it (SIMULATED GPUs under a cap); see
/// `herd_actors::resources::gpu_work`. None on no GPU.
fn spawn_gpu_reporter(
    alloc_dir: &std::path::Path,
    engine: &EngineHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    let gpus = std::env::var("HERD_GPU_INDICES").unwrap_or_default();
    if gpus.trim().is_empty() {
        return None;
    }
    let meter = engine.meter();
    let mut reporter = gpu_work::WorkReporter::new(alloc_dir);
    reporter.read_throttle_now(&meter);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(gpu_work::REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tick.tick().await;
            if let Err(e) = reporter.tick(&meter) {
                if !warned {
                    eprintln!("herd inference-engine: warning: cannot report GPU work: {e}");
                    warned = true;
                }
            }
        }
    }))
}

/// Runs the engine until SIGTERM or SIGINT.
pub async fn run(args: InferenceEngineArgs) -> Result<(), CliError> {
    let settings = settings(&args)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::runtime(format!("cannot listen on 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::runtime(format!("cannot read the listening address: {e}")))?;
    let engine = EngineHandle::spawn(settings.engine.clone(), settings.time_scale);
    let endpoint = EngineEndpoint {
        addr: addr.to_string(),
        alloc_id: std::env::var("HERD_ALLOC_ID").unwrap_or_default(),
        job: std::env::var("HERD_JOB").unwrap_or_default(),
        pid: std::process::id(),
    };
    endpoint.write(&args.alloc_dir).map_err(|e| {
        CliError::runtime(format!(
            "cannot write {}: {e}",
            args.alloc_dir
                .join(herd_actors::inference::endpoint::ENGINE_FILE)
                .display()
        ))
    })?;
    let gpu_reporter = spawn_gpu_reporter(&args.alloc_dir, &engine);
    let e = &settings.engine;
    println!(
        "SIMULATED inference engine on {addr}: {} KV blocks of 16 tokens × {} bytes, batches of {}, {:?} preemption, time scale {}",
        e.kv_blocks, e.bytes_per_token, e.max_batch, e.preemption, settings.time_scale
    );
    let draining = Arc::new(AtomicBool::new(false));
    let service = Service {
        engine: engine.clone(),
        draining: draining.clone(),
    };
    // Told when the drain is over (done or out of time). The server's own
    // shutdown is graceful: it would wait for every open token stream to
    // end, so a request still decoding would keep the engine streaming
    // past DRAIN_LIMIT (up to the agent's SIGKILL); the streams are cut
    // instead, STREAM_CUT after the drain, and the process ends.
    let (drained, on_drained) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(InferenceEngineServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            if let Err(e) = super::coordinator::wait_for_signal().await {
                eprintln!("herd: {e}");
            }
            draining.store(true, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let left = |e: &EngineHandle| e.stats().requests.len();
            println!(
                "SIMULATED inference engine draining: {} requests left",
                left(&engine)
            );
            while left(&engine) > 0 && started.elapsed() < DRAIN_LIMIT {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            println!(
                "SIMULATED inference engine drained in {} ms, {} requests left",
                started.elapsed().as_millis(),
                left(&engine)
            );
            let _ = drained.send(());
        });
    let served = tokio::select! {
        served = server => served,
        () = async {
            if on_drained.await.is_err() {
                // The server ended before the drain: its arm answers.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(STREAM_CUT).await;
        } => {
            println!("SIMULATED inference engine cut its open streams");
            Ok(())
        }
    };
    if let Some(reporter) = gpu_reporter {
        reporter.abort();
    }
    let removed = EngineEndpoint::remove(&args.alloc_dir);
    served.map_err(|e| CliError::runtime(format!("the engine's server failed: {e}")))?;
    removed.map_err(|e| CliError::runtime(format!("cannot remove engine.json: {e}")))?;
    println!("SIMULATED inference engine stopped");
    Ok(())
}
