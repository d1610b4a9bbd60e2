//! The tonic `AgentPeer` server: what a migration's source asks of this
//! node as its target, answered from the [`IncomingRegistry`]. Served on the
//! agent's `--listen` address beside `NodeAgent`.

use herd_api::proto::agent::agent_peer_server::{AgentPeer, AgentPeerServer};
use herd_api::proto::agent::{
    AbortIncomingReply, AbortIncomingRequest, ConfirmIncomingReply, ConfirmIncomingRequest,
    GossipPacket, GossipReply, PrepareIncomingReply, PrepareIncomingRequest, TransferChunk,
    TransferReply,
};
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

use super::receiver::{IncomingError, IncomingRegistry};
use super::MAX_MESSAGE_BYTES;

/// The longest migration id accepted (ids are short; this bounds what an
/// untrusted peer makes the target look up and log).
const MAX_ID_BYTES: usize = 256;

/// Serves `AgentPeer` over a registry shared with the orchestration.
#[derive(Clone)]
pub struct AgentPeerService {
    registry: IncomingRegistry,
    balance: crate::balance::BalanceHandle,
    /// This agent's engines, for request live migration (`RequestKv`).
    requests: Option<crate::infer::Inference>,
    /// This node's name and move journal, for balancing moves made with the
    /// coordinators away (`OfflineMove`).
    offline: Option<(String, crate::balance::journal::MoveJournal)>,
}

impl AgentPeerService {
    /// Serves the migrations `registry` authorizes.
    pub fn new(registry: IncomingRegistry, balance: crate::balance::BalanceHandle) -> Self {
        Self {
            registry,
            balance,
            requests: None,
            offline: None,
        }
    }

    /// Also takes balancing moves offered with the coordinators away, into
    /// the journal of the agent `node` whose data dir is `data_dir` (none
    /// if it cannot be read: offers are then refused).
    pub fn with_offline_moves(mut self, node: &str, data_dir: &std::path::Path) -> Self {
        match crate::balance::journal::MoveJournal::open(data_dir) {
            Ok(journal) => self.offline = Some((node.to_string(), journal)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the balancing move journal; offline moves are refused")
            }
        }
        self
    }

    /// Also takes request live migrations into the engines of `inference`.
    pub fn with_requests(mut self, inference: crate::infer::Inference) -> Self {
        self.requests = Some(inference);
        self
    }

    fn requests(&self) -> Result<&crate::infer::Inference, Status> {
        self.requests
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this agent runs no inference engines"))
    }

    /// The tonic service, its message size bounded to one chunk and its
    /// framing (the default 4 MiB would let a peer make it buffer more).
    pub fn into_server(self) -> AgentPeerServer<Self> {
        AgentPeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

impl From<IncomingError> for Status {
    fn from(e: IncomingError) -> Self {
        let message = e.to_string();
        match e {
            IncomingError::NotTarget { .. }
            | IncomingError::Aborted { .. }
            | IncomingError::Closed { .. }
            | IncomingError::NotPrepared { .. }
            | IncomingError::OutOfStep { .. }
            | IncomingError::Unconfirmed { .. } => Status::failed_precondition(message),
            IncomingError::BadChunk { .. } => Status::invalid_argument(message),
            IncomingError::Checksum { .. } => Status::data_loss(message),
            IncomingError::TooManyFiles { .. } => Status::resource_exhausted(message),
            IncomingError::Endpoints { .. } => Status::unavailable(message),
            IncomingError::Io { .. } | IncomingError::Internal(_) => Status::internal(message),
        }
    }
}

fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("migration_id is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "migration_id is {} bytes long, over the limit of {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl AgentPeer for AgentPeerService {
    async fn prepare_incoming(
        &self,
        request: Request<PrepareIncomingRequest>,
    ) -> Result<Response<PrepareIncomingReply>, Status> {
        let source = &request.get_ref().source_node;
        herd_api::tls::require_node(request.extensions(), source, "AgentPeer.PrepareIncoming")?;
        let request = request.into_inner();
        check_id(&request.migration_id)?;
        let reply = self.registry.prepare(&request).await.inspect_err(|e| {
            tracing::warn!(migration = %request.migration_id, error = %e, "PrepareIncoming refused");
        })?;
        tracing::info!(
            migration = %request.migration_id,
            source = %request.source_node,
            held = reply.received.len(),
            "incoming migration prepared"
        );
        Ok(Response::new(reply))
    }

    async fn transfer(
        &self,
        request: Request<Streaming<TransferChunk>>,
    ) -> Result<Response<TransferReply>, Status> {
        let mut stream = request.into_inner();
        let mut migration: Option<String> = None;
        while let Some(chunk) = stream.message().await? {
            let first = match &migration {
                None => {
                    check_id(&chunk.migration_id)?;
                    migration = Some(chunk.migration_id.clone());
                    true
                }
                Some(id) if *id != chunk.migration_id => {
                    return Err(Status::invalid_argument(format!(
                        "a Transfer stream carries one migration: started with {id:?}, then a chunk of {:?}",
                        chunk.migration_id
                    )))
                }
                Some(_) => false,
            };
            self.registry
                .receive(chunk, first)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "transfer chunk refused"))?;
        }
        // The stream ended: closed by the source, or cancelled (tonic reads
        // a cancelled request stream as its end, so this says nothing of
        // completion; the end-of-transfer chunk does).
        let Some(id) = migration else {
            return Ok(Response::new(TransferReply::default()));
        };
        let (bytes, files) = self.registry.totals(&id).await?;
        Ok(Response::new(TransferReply { bytes, files }))
    }

    async fn abort_incoming(
        &self,
        request: Request<AbortIncomingRequest>,
    ) -> Result<Response<AbortIncomingReply>, Status> {
        let request = request.into_inner();
        check_id(&request.migration_id)?;
        let known = self
            .registry
            .abort(&request.migration_id, &request.reason)
            .await?;
        let reason = self.registry.aborted(&request.migration_id);
        tracing::info!(migration = %request.migration_id, known, ?reason, "incoming migration aborted by its source");
        Ok(Response::new(AbortIncomingReply {}))
    }

    async fn confirm_incoming(
        &self,
        request: Request<ConfirmIncomingRequest>,
    ) -> Result<Response<ConfirmIncomingReply>, Status> {
        let source = &request.get_ref().source_node;
        herd_api::tls::require_node(request.extensions(), source, "AgentPeer.ConfirmIncoming")?;
        let request = request.into_inner();
        check_id(&request.migration_id)?;
        let wait = Duration::from_millis(request.wait_ms);
        self.registry
            .confirm(&request.migration_id, &request.source_node, wait)
            .await
            .inspect_err(|e| {
                tracing::warn!(migration = %request.migration_id, error = %e, "ConfirmIncoming: the target does not hold the whole state");
            })?;
        Ok(Response::new(ConfirmIncomingReply {}))
    }

    async fn request_kv(
        &self,
        request: Request<herd_api::proto::agent::RequestKvChunk>,
    ) -> Result<Response<herd_api::proto::agent::RequestKvReply>, Status> {
        crate::serve::request_migration::receive_kv(self.requests()?, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn abort_request_kv(
        &self,
        request: Request<herd_api::proto::agent::AbortRequestKvRequest>,
    ) -> Result<Response<AbortIncomingReply>, Status> {
        crate::serve::request_migration::abort_kv(self.requests()?, request.into_inner()).await?;
        Ok(Response::new(AbortIncomingReply {}))
    }

    async fn offline_move(
        &self,
        request: Request<herd_api::proto::agent::OfflineMoveRequest>,
    ) -> Result<Response<herd_api::proto::agent::OfflineMoveReply>, Status> {
        let source = &request.get_ref().source_node;
        herd_api::tls::require_node(request.extensions(), source, "AgentPeer.OfflineMove")?;
        let Some((node, journal)) = &self.offline else {
            return Err(Status::unavailable(
                "this agent takes no balancing moves with the coordinators away",
            ));
        };
        let action = request.get_ref().action.clone();
        let reply = super::offline::serve(journal, node, request.into_inner())?;
        super::offline::fault_commit_hold(&action).await;
        Ok(Response::new(reply))
    }

    async fn gossip(
        &self,
        request: Request<GossipPacket>,
    ) -> Result<Response<GossipReply>, Status> {
        // A node may not speak for another in the membership protocol.
        let from = &request.get_ref().from_node;
        herd_api::tls::require_node(request.extensions(), from, "AgentPeer.Gossip")?;
        let payloads = self.balance.gossip(request.into_inner()).await?;
        Ok(Response::new(GossipReply { payloads }))
    }
}
