//! `herd inference-engine` (hidden): the SIMULATED LLM engine as a process,
//! started by the `inference` driver. It serves `herd.inference.v1` on a
//! port it picks on 127.0.0.1, written to `<alloc_dir>/engine.json` for the
//! node agent, and runs the engine core on the real clock, sleeping for the
//! modelled step durations scaled by `time_scale`. SIGTERM or SIGINT end it
//! (and remove `engine.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;

use clap::Args;
use futures::{Stream, StreamExt};
use herd_actors::inference::endpoint::EngineEndpoint;
use herd_actors::inference::runtime::{EngineHandle, RuntimeError};
use herd_actors::inference::{wire, EngineSettings};
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

/// Serves one engine.
struct Service {
    engine: EngineHandle,
}

type TokenStream = Pin<Box<dyn Stream<Item = Result<pb::Token, Status>> + Send>>;

#[tonic::async_trait]
impl InferenceEngine for Service {
    type GenerateStream = TokenStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let spec = wire::request_spec(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tokens = self.engine.generate(spec).await.map_err(|e| match e {
            RuntimeError::Refused(e) => Status::invalid_argument(e.to_string()),
            RuntimeError::Stopped => Status::unavailable(e.to_string()),
        })?;
        let stream = UnboundedReceiverStream::new(tokens).map(|t| Ok(wire::token(&t)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::EngineStats>, Status> {
        Ok(Response::new(wire::stats(&self.engine.stats())))
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
    let e = &settings.engine;
    println!(
        "SIMULATED inference engine on {addr}: {} KV blocks of 16 tokens × {} bytes, batches of {}, {:?} preemption, time scale {}",
        e.kv_blocks, e.bytes_per_token, e.max_batch, e.preemption, settings.time_scale
    );
    let served = tonic::transport::Server::builder()
        .add_service(InferenceEngineServer::new(Service { engine }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            if let Err(e) = super::coordinator::wait_for_signal().await {
                eprintln!("herd: {e}");
            }
        })
        .await;
    let removed = EngineEndpoint::remove(&args.alloc_dir);
    served.map_err(|e| CliError::runtime(format!("the engine's server failed: {e}")))?;
    removed.map_err(|e| CliError::runtime(format!("cannot remove engine.json: {e}")))?;
    println!("SIMULATED inference engine stopped");
    Ok(())
}
