//! The agent's own gRPC service, `NodeAgent`: `AllocLogs`, an allocation's
//! stdout or stderr, whole, from the end, or followed as it grows (`herd
//! alloc logs ID [-f]`); `Infer` and `EngineStats`, handed to
//! [`crate::infer`] and [`crate::engines`].

use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use herd_api::proto::agent::node_agent_server::NodeAgent;
use herd_api::proto::agent::{
    AllocLogsRequest, BalanceStatusReply, BalanceStatusRequest, EngineStatsReply,
    EngineStatsRequest, InferRequest, LogChunk,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::infer::{InferStream, Inference};

/// Bytes read and sent per message.
const CHUNK: usize = 64 * 1024;
/// How often a followed file is checked for more bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Finds an allocation's log files; the agent answers from its supervisor.
#[tonic::async_trait]
pub trait LogLocator: Send + Sync + 'static {
    /// (stdout, stderr) of `alloc_id`, or None when this node does not know it.
    async fn log_paths(&self, alloc_id: &str) -> Option<(PathBuf, PathBuf)>;
}

/// Serves [`NodeAgent`].
pub struct NodeAgentService<L> {
    locator: L,
    inference: Inference,
    balance: crate::balance::BalanceHandle,
}

impl<L: LogLocator> NodeAgentService<L> {
    /// Serves the logs `locator` finds and runs requests through `inference`.
    pub fn new(locator: L, inference: Inference, balance: crate::balance::BalanceHandle) -> Self {
        Self {
            locator,
            inference,
            balance,
        }
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<L: LogLocator> NodeAgent for NodeAgentService<L> {
    type AllocLogsStream = LogStream;
    type InferStream = InferStream;

    async fn infer(
        &self,
        request: Request<InferRequest>,
    ) -> Result<Response<Self::InferStream>, Status> {
        self.inference
            .infer(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn engine_stats(
        &self,
        _request: Request<EngineStatsRequest>,
    ) -> Result<Response<EngineStatsReply>, Status> {
        Ok(Response::new(EngineStatsReply {
            engines: self.inference.engines().snapshot(),
        }))
    }

    async fn migrate_request(
        &self,
        request: Request<herd_api::proto::agent::MigrateRequestRequest>,
    ) -> Result<Response<herd_api::proto::agent::MigrateRequestReply>, Status> {
        crate::serve::request_migration::serve_migrate(&self.inference, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn balance_status(
        &self,
        _request: Request<BalanceStatusRequest>,
    ) -> Result<Response<BalanceStatusReply>, Status> {
        Ok(Response::new(self.balance.status().await?))
    }

    async fn alloc_logs(
        &self,
        request: Request<AllocLogsRequest>,
    ) -> Result<Response<Self::AllocLogsStream>, Status> {
        let request = request.into_inner();
        let (stdout, stderr) =
            self.locator
                .log_paths(&request.alloc_id)
                .await
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "allocation {:?} has no logs on this node",
                        request.alloc_id
                    ))
                })?;
        let path = match request.stream.as_str() {
            "" | "stdout" => stdout,
            "stderr" => stderr,
            other => {
                return Err(Status::invalid_argument(format!(
                    "field `stream`: must be \"stdout\" or \"stderr\", got {other:?}"
                )))
            }
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::not_found(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Status::internal(format!("cannot stat {}: {e}", path.display())))?
            .len();
        let start = match request.tail_bytes {
            0 => 0,
            n => len.saturating_sub(n),
        };
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| Status::internal(format!("cannot seek {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) if request.follow => {
                        tokio::select! {
                            _ = tokio::time::sleep(FOLLOW_POLL) => {}
                            _ = tx.closed() => return,
                        }
                    }
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = LogChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("reading the log: {e}"))))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
