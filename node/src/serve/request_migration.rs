//! Request live migration, Llumnix-style: a request decoding on an engine
//! of this node moves to an engine on another (or the same) node while it
//! keeps decoding, and its client's token stream goes on from there.
//!
//! [`migrate_request`] runs on the SOURCE agent:
//! 1. copy stages: the request's full KV blocks written so far, then those
//!    written meanwhile, go source engine → this agent → `AgentPeer.RequestKv`
//!    (chunks of whole blocks, CRC-32C each) → target agent → target engine,
//!    where they are staged in real KV blocks; the request keeps decoding;
//! 2. when a stage copied at most [`FINAL_BLOCKS`] blocks (or after
//!    [`MAX_STAGES`]), the request is frozen on the source, its last blocks
//!    (the partial one included) and its state are copied, and the target
//!    engine checks every KV byte and resumes it (the downtime is this step);
//! 3. the source records where the request went, then releases it: its
//!    engine stream ends, and the agent relaying it to the client sees a
//!    `moved` message and follows to the target ([`crate::infer`]). The
//!    source keeps a copy of what it sent for a few seconds, for a target
//!    whose agent dies before the client claims the request there
//!    ([`super::request_fallback`]).
//!
//! A request still waiting for its prefill moves the same way with no
//! block to copy: frozen (kept out of its engine's batch), its state sent,
//! queued on the target; the relay knows its id from the engine's answer
//! (`x-herd-request-id`), since it has no token to name it yet.
//!
//! A failure before step 3 thaws the request on the source (it goes on
//! decoding there) and tells the target to drop what it staged. The
//! balancer can call [`migrate_request`] directly; `NodeAgent.MigrateRequest`
//! and `herd infer-migrate` are thin callers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use herd_api::proto::agent::agent_peer_client::AgentPeerClient;
use herd_api::proto::agent::{
    AbortRequestKvRequest, InferToken, RequestKvChunk, RequestKvReply, RequestMoved,
};
use herd_api::proto::inference::inference_engine_client::InferenceEngineClient;
use herd_api::proto::inference::{
    AbortImportRequest, ExportKvRequest, ImportKvRequest, KvState, RequestRef,
    ResumeImportedRequest,
};
use tonic::transport::Channel;
use tonic::Status;

use super::request_fallback::{block_chunks, Fallback, Fallbacks};
use crate::engines::connect_lazy;
use crate::infer::{InferStream, Inference};
use crate::migrate::{checksum, MAX_MESSAGE_BYTES};

/// A copy stage that moved at most this many blocks is the last before the
/// freeze: the freeze then copies about as few (a bounded downtime).
pub const FINAL_BLOCKS: u32 = 2;
/// Copy stages at most before the freeze, whatever the decode rate (a
/// request writing blocks faster than they copy still moves).
pub const MAX_STAGES: u32 = 8;
/// How long a resumed request waits on the target for the agent relaying
/// it to its client; unclaimed, its stream is dropped and the engine
/// cancels it (a source that gave up after the target resumed).
const HANDOFF_TTL: Duration = Duration::from_secs(30);
/// Largest engine reply read (a freeze of a long request's blocks).
const ENGINE_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
/// Longest migration or allocation id accepted from a peer.
const MAX_ID_BYTES: usize = 256;
/// How long dialing another agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// FAULT-INJECTION HOOK for tests: `STEP:MS` makes the source of every
/// request migration hold for MS milliseconds at STEP, inside the window
/// between the freeze and the commit, so that a test can kill an agent
/// there: `frozen` (the request is frozen on the source and its last
/// blocks read; nothing of the last stage sent, the target holds staged
/// blocks only) or `resumed` (the target checked the blocks and resumed
/// the request, holding its stream; the source has not committed). Read
/// from this environment variable only; unset in production.
pub const FAULT_HOLD_ENV: &str = "HERD_FAULT_REQUEST_MIGRATION_HOLD";

/// How long [`FAULT_HOLD_ENV`] says to hold at `step`, if at all.
fn fault_hold_at(step: &str) -> Option<Duration> {
    let value = std::env::var(FAULT_HOLD_ENV).ok()?;
    let (at, ms) = value.split_once(':')?;
    (at == step)
        .then(|| ms.parse::<u64>().ok())
        .flatten()
        .map(Duration::from_millis)
}

/// Holds for as long as [`FAULT_HOLD_ENV`] says at `step`.
async fn fault_hold(step: &str, migration: &str) {
    if let Some(hold) = fault_hold_at(step) {
        tracing::warn!(
            %migration, step, ms = hold.as_millis() as u64,
            "fault injection: holding the request migration"
        );
        tokio::time::sleep(hold).await;
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The allocation whose engine takes it.
    pub alloc_id: String,
    /// Its node's agent (`HOST:PORT` of `NodeAgent`/`AgentPeer`).
    pub agent: String,
    /// Its node, when known: under TLS the agent at `agent` must then hold
    /// that node's certificate (otherwise any node's).
    pub node: Option<String>,
}

/// A request migration that completed, with its figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationOutcome {
    /// Copy stages, the frozen one included.
    pub stages: u32,
    /// KV blocks copied.
    pub blocks: u32,
    /// KV bytes copied.
    pub bytes: u64,
    /// From the freeze on the source to the request decoding on the target.
    pub downtime: Duration,
    /// The whole migration.
    pub total: Duration,
    /// The target checked every KV byte before resuming (always true on
    /// success: a mismatch aborts).
    pub verified: bool,
    /// Tokens generated on the source (the target's first has this index).
    pub switched_at: u32,
    /// The target's node.
    pub target_node: String,
}

/// Why a request migration failed; the request is still on the source
/// (or finished there) in every case.
#[derive(Debug, thiserror::Error)]
pub enum RequestMigrationError {
    /// The source engine refused or failed a step.
    #[error("source engine, {stage}: {status}")]
    Source {
        /// What was being done.
        stage: String,
        /// Its answer.
        status: Status,
    },
    /// The target agent or engine refused or failed a step.
    #[error("target {agent}, {stage}: {status}")]
    Target {
        /// The target agent.
        agent: String,
        /// What was being done.
        stage: String,
        /// Its answer.
        status: Status,
    },
    /// The arguments name nothing that can migrate.
    #[error("{0}")]
    Invalid(String),
}

impl From<RequestMigrationError> for Status {
    fn from(e: RequestMigrationError) -> Self {
        let message = e.to_string();
        match &e {
            RequestMigrationError::Invalid(_) => Status::invalid_argument(message),
            RequestMigrationError::Source { status, .. }
            | RequestMigrationError::Target { status, .. } => match status.code() {
                tonic::Code::NotFound => Status::not_found(message),
                tonic::Code::InvalidArgument => Status::invalid_argument(message),
                tonic::Code::FailedPrecondition => Status::failed_precondition(message),
                tonic::Code::ResourceExhausted => Status::resource_exhausted(message),
                _ => Status::unavailable(message),
            },
        }
    }
}

/// A resumed request waiting for the agent that relays it to its client.
struct Handoff {
    alloc_id: String,
    /// The request it continues: its source allocation and its id in the
    /// source's engine, read from the migration id (see [`source_of`]).
    source: Option<(String, u64)>,
    stream: InferStream,
}

/// The source allocation and engine request id a request migration's id
/// names: the source agent makes it `ALLOC.REQUEST.UUID` (the uuid in its
/// simple form, without dots; an allocation id may hold dots, so it is
/// read from the right).
fn source_of(migration_id: &str) -> Option<(String, u64)> {
    let mut parts = migration_id.rsplitn(3, '.');
    let _uuid = parts.next()?;
    let request = parts.next()?.parse().ok()?;
    let alloc = parts.next().filter(|a| !a.is_empty())?;
    Some((alloc.to_string(), request))
}

#[derive(Default)]
struct MovesInner {
    /// Requests that left this node's engines: (allocation, engine id) →
    /// where they went.
    moved: HashMap<(String, u64), RequestMoved>,
    /// Requests resumed here, by migration id.
    handoffs: HashMap<String, Handoff>,
    /// Channels to this node's engines, by address (kept: a new
    /// connection per chunk would lengthen the downtime).
    engines: HashMap<String, Channel>,
    /// Requests migrating off this node now: (allocation, engine id). A
    /// second migration of the same request (the rescheduler and the
    /// balancer both move requests) is refused while one runs.
    migrating: std::collections::HashSet<(String, u64)>,
}

/// Marks a request as migrating while alive.
struct Migrating {
    moves: RequestMoves,
    key: (String, u64),
}

impl Drop for Migrating {
    fn drop(&mut self) {
        let key = self.key.clone();
        self.moves.with(|i| i.migrating.remove(&key));
    }
}

/// What an agent remembers of request migrations; cheap to clone.
#[derive(Clone, Default)]
pub struct RequestMoves {
    inner: Arc<Mutex<MovesInner>>,
    fallbacks: Fallbacks,
}

impl RequestMoves {
    fn with<T>(&self, f: impl FnOnce(&mut MovesInner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut inner| f(&mut inner))
    }

    /// The copies of requests this agent handed over, kept a few seconds.
    pub fn fallbacks(&self) -> &Fallbacks {
        &self.fallbacks
    }

    /// Where request `id` of `alloc_id` went, taken (its stream ended).
    pub fn take_moved(&self, alloc_id: &str, id: u64) -> Option<RequestMoved> {
        self.with(|i| i.moved.remove(&(alloc_id.to_string(), id)))
            .flatten()
    }

    /// Marks request `id` of `alloc_id` as migrating, unless it already is.
    fn start_migrating(&self, alloc_id: &str, id: u64) -> Option<Migrating> {
        let key = (alloc_id.to_string(), id);
        let fresh = self.with(|i| i.migrating.insert(key.clone()))?;
        fresh.then(|| Migrating {
            moves: self.clone(),
            key,
        })
    }

    fn record_moved(&self, alloc_id: &str, id: u64, moved: RequestMoved) {
        self.with(|i| i.moved.insert((alloc_id.to_string(), id), moved));
    }

    /// The resumed request `handoff` of `alloc_id`, taken by its relay.
    pub fn take_handoff(&self, handoff: &str, alloc_id: &str) -> Option<InferStream> {
        self.with(|i| match i.handoffs.get(handoff) {
            Some(h) if h.alloc_id == alloc_id => i.handoffs.remove(handoff).map(|h| h.stream),
            _ => None,
        })
        .flatten()
    }

    /// The resumed request that continues request `request_id` of
    /// `source_alloc` (whatever its migration's id), taken by a relay that
    /// lost the source's `moved` message; with the allocation it runs on.
    pub fn take_handoff_of(
        &self,
        source_alloc: &str,
        request_id: u64,
    ) -> Option<(String, InferStream)> {
        self.with(|i| {
            let key = i
                .handoffs
                .iter()
                .find(|(_, h)| {
                    h.source
                        .as_ref()
                        .is_some_and(|(a, r)| a == source_alloc && *r == request_id)
                })
                .map(|(k, _)| k.clone())?;
            i.handoffs.remove(&key).map(|h| (h.alloc_id, h.stream))
        })
        .flatten()
    }

    fn put_handoff(&self, handoff: &str, alloc_id: &str, stream: InferStream) {
        self.with(|i| {
            i.handoffs.insert(
                handoff.to_string(),
                Handoff {
                    alloc_id: alloc_id.to_string(),
                    source: source_of(handoff),
                    stream,
                },
            )
        });
        let moves = self.clone();
        let handoff = handoff.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOFF_TTL).await;
            if moves
                .with(|i| i.handoffs.remove(&handoff))
                .flatten()
                .is_some()
            {
                tracing::warn!(%handoff, "resumed request never claimed: cancelled");
            }
        });
    }

    /// A client of the engine at `addr`, on a kept channel.
    pub(crate) fn engine(&self, addr: &str) -> Result<InferenceEngineClient<Channel>, Status> {
        let kept = self.with(|i| i.engines.get(addr).cloned()).flatten();
        let channel = match kept {
            Some(c) => c,
            None => {
                let c = connect_lazy(addr)?;
                self.with(|i| i.engines.insert(addr.to_string(), c.clone()));
                c
            }
        };
        Ok(InferenceEngineClient::new(channel)
            .max_decoding_message_size(ENGINE_MESSAGE_BYTES)
            .max_encoding_message_size(ENGINE_MESSAGE_BYTES))
    }

    fn drop_handoff(&self, handoff: &str) {
        self.with(|i| i.handoffs.remove(handoff));
    }
}

/// A channel to the agent at `addr`, of node `node` when known (under TLS
/// its certificate must then name that node, else any node's will do):
/// the fleet view's kept channel when the agent follows the fleet and
/// knows the node, else a new one.
pub fn agent_channel(
    inference: &Inference,
    node: Option<&str>,
    addr: &str,
) -> Result<Channel, Status> {
    let bad = |e: String| Status::invalid_argument(format!("bad agent address {addr:?}: {e}"));
    let endpoint = match (node, inference.fleet()) {
        (Some(node), Some(fleet)) => return fleet.channel(node, addr),
        (Some(node), None) => herd_api::tls::node_endpoint(addr, node).map_err(bad)?,
        (None, _) => herd_api::tls::endpoint(addr, herd_api::tls::PeerRole::Node).map_err(bad)?,
    };
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy())
}

/// The request id an engine's `Generate` or `ResumeImported` answer names
/// in its metadata (`REQUEST_ID_HEADER`); `None` from an engine that does
/// not (then the first token names it).
pub fn request_id_of(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata
        .get(herd_actors::inference::wire::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An engine's token stream as the agent relays it: each token naming its
/// request, and, when the request migrated away (its stream ended after a
/// `Release`), a last `moved` message saying where it went. `request_id`
/// is the request's id in the engine when the answer named it: a request
/// moved while it waited for its prefill has no token to name it.
pub fn relayed_tokens(
    tokens: tonic::Streaming<herd_api::proto::inference::Token>,
    alloc_id: String,
    moves: RequestMoves,
    request_id: Option<u64>,
) -> InferStream {
    let request = Arc::new(std::sync::atomic::AtomicU64::new(
        request_id.unwrap_or_default(),
    ));
    let seen = request.clone();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let after = next.clone();
    let id = alloc_id.clone();
    let body = tokens.map(move |token| {
        token
            .map(|t| {
                seen.store(t.request_id, std::sync::atomic::Ordering::Relaxed);
                after.store(t.index + 1, std::sync::atomic::Ordering::Relaxed);
                InferToken {
                    index: t.index,
                    at_us: t.at_us,
                    ttft_us: t.ttft_us,
                    request_id: t.request_id,
                    ..Default::default()
                }
            })
            .map_err(|s| Status::unavailable(format!("inference engine of {id}: {}", s.message())))
    });
    let tail = futures::stream::once(async move {
        let id = request.load(std::sync::atomic::Ordering::Relaxed);
        moves.take_moved(&alloc_id, id).map(|moved| {
            Ok(InferToken {
                index: next.load(std::sync::atomic::Ordering::Relaxed),
                request_id: id,
                moved: Some(moved),
                ..Default::default()
            })
        })
    })
    .filter_map(futures::future::ready);
    Box::pin(body.chain(tail))
}

/// Sends `data` (whole blocks of `block_bytes` from `from_block`) to the
/// target in chunks; `resume` goes with the last chunk.
#[allow(clippy::too_many_arguments)]
async fn send_blocks(
    peer: &mut AgentPeerClient<Channel>,
    migration: &str,
    target: &Target,
    from_block: u32,
    data: &[u8],
    block_bytes: usize,
    resume: Option<KvState>,
) -> Result<RequestKvReply, Status> {
    let chunks = block_chunks(data, from_block, block_bytes);
    let last = chunks.len() - 1;
    let mut reply = RequestKvReply::default();
    for (i, (block, chunk)) in chunks.into_iter().enumerate() {
        reply = peer
            .request_kv(RequestKvChunk {
                migration_id: migration.to_string(),
                alloc_id: target.alloc_id.clone(),
                from_block: block,
                data: chunk.to_vec(),
                crc32c: checksum(chunk),
                resume: if i == last { resume.clone() } else { None },
            })
            .await?
            .into_inner();
    }
    Ok(reply)
}

/// Moves running (or waiting) request `request_id` of this node's allocation
/// `alloc_id` to `target` (see the module documentation). On error the
/// request goes on (or finished) on the source.
pub async fn migrate_request(
    inference: &Inference,
    alloc_id: &str,
    request_id: u64,
    target: &Target,
) -> Result<MigrationOutcome, RequestMigrationError> {
    let started = Instant::now();
    if target.alloc_id.is_empty() || target.agent.is_empty() {
        return Err(RequestMigrationError::Invalid(
            "the target needs an allocation and its agent's address".into(),
        ));
    }
    if target.alloc_id == alloc_id {
        return Err(RequestMigrationError::Invalid(format!(
            "request {request_id} already runs on {alloc_id}"
        )));
    }
    let Some(_migrating) = inference.moves().start_migrating(alloc_id, request_id) else {
        return Err(RequestMigrationError::Source {
            stage: "starting".into(),
            status: Status::failed_precondition(format!(
                "request {request_id} of {alloc_id} is already migrating"
            )),
        });
    };
    let src = |stage: &str| {
        let stage = stage.to_string();
        move |status| RequestMigrationError::Source { stage, status }
    };
    let engine = inference
        .engines()
        .find(alloc_id, "")
        .map_err(src("finding the engine"))?;
    let mut source = inference
        .moves()
        .engine(&engine.addr)
        .map_err(src("dialing the engine"))?;
    let channel = agent_channel(inference, target.node.as_deref(), &target.agent)
        .map_err(|status| RequestMigrationError::Invalid(status.message().to_string()))?;
    let mut peer = AgentPeerClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let migration = format!("{alloc_id}.{request_id}.{}", uuid::Uuid::new_v4().simple());
    let tgt = |stage: String| {
        let agent = target.agent.clone();
        move |status| RequestMigrationError::Target {
            agent,
            stage,
            status,
        }
    };
    let mut outcome = MigrationOutcome {
        stages: 0,
        blocks: 0,
        bytes: 0,
        downtime: Duration::ZERO,
        total: Duration::ZERO,
        verified: false,
        switched_at: 0,
        target_node: String::new(),
    };
    let mut mark = 0u32;
    // Everything sent, kept for the fallback (step 3).
    let mut pieces: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut kv_block_bytes = 0;

    // 1. Copy stages while the request decodes.
    loop {
        let stage = outcome.stages + 1;
        let copied = async {
            let blocks = source
                .export_kv(ExportKvRequest {
                    request_id,
                    from_block: mark,
                    freeze: false,
                })
                .await
                .map_err(src(&format!("stage {stage} export")))?
                .into_inner();
            let block_bytes = block_bytes(&blocks.data, blocks.blocks);
            if blocks.blocks > 0 {
                send_blocks(
                    &mut peer,
                    &migration,
                    target,
                    blocks.from_block,
                    &blocks.data,
                    block_bytes,
                    None,
                )
                .await
                .map_err(tgt(format!("stage {stage} copy")))?;
            }
            Ok::<_, RequestMigrationError>(blocks)
        }
        .await;
        let blocks = match copied {
            Ok(b) => b,
            Err(e) => {
                abort_target(&mut peer, &migration, target).await;
                return Err(e);
            }
        };
        mark = blocks.from_block + blocks.blocks;
        outcome.stages = stage;
        outcome.blocks += blocks.blocks;
        outcome.bytes += blocks.data.len() as u64;
        let done = blocks.blocks <= FINAL_BLOCKS || stage >= MAX_STAGES;
        if blocks.blocks > 0 {
            kv_block_bytes = block_bytes(&blocks.data, blocks.blocks);
            pieces.push((blocks.from_block, blocks.data));
        }
        if done {
            break;
        }
    }

    // 2. Freeze, copy the rest, resume on the target.
    let frozen_at = Instant::now();
    let stage = outcome.stages + 1;
    let last = async {
        let blocks = source
            .export_kv(ExportKvRequest {
                request_id,
                from_block: mark,
                freeze: true,
            })
            .await
            .map_err(src("freeze and final export"))?
            .into_inner();
        fault_hold("frozen", &migration).await;
        let state = blocks
            .state
            .clone()
            .ok_or_else(|| RequestMigrationError::Source {
                stage: "freeze".into(),
                status: Status::internal("the engine sent no state with the frozen blocks"),
            })?;
        let reply = send_blocks(
            &mut peer,
            &migration,
            target,
            blocks.from_block,
            &blocks.data,
            block_bytes(&blocks.data, blocks.blocks),
            Some(state.clone()),
        )
        .await
        .map_err(tgt(format!("stage {stage} copy and resume")))?;
        Ok::<_, RequestMigrationError>((blocks, state, reply))
    }
    .await;
    let (blocks, state, reply) = match last {
        Ok(done) => done,
        Err(e) => {
            thaw(&mut source, request_id).await;
            abort_target(&mut peer, &migration, target).await;
            return Err(e);
        }
    };
    fault_hold("resumed", &migration).await;
    outcome.downtime = frozen_at.elapsed();
    outcome.stages = stage;
    outcome.blocks += blocks.blocks;
    outcome.bytes += blocks.data.len() as u64;
    outcome.verified = true;
    outcome.switched_at = state.generated;
    outcome.target_node = reply.node.clone();
    if blocks.blocks > 0 {
        kv_block_bytes = block_bytes(&blocks.data, blocks.blocks);
    }
    if !blocks.data.is_empty() {
        pieces.push((blocks.from_block, blocks.data));
    }

    // 3. Commit: say where it went, then release it on the source.
    let moves = inference.moves();
    moves.record_moved(
        alloc_id,
        request_id,
        RequestMoved {
            alloc_id: target.alloc_id.clone(),
            node: reply.node,
            agent: target.agent.clone(),
            handoff: reply.handoff,
        },
    );
    if let Err(status) = source.release(RequestRef { request_id }).await {
        moves.take_moved(alloc_id, request_id);
        thaw(&mut source, request_id).await;
        abort_target(&mut peer, &migration, target).await;
        return Err(RequestMigrationError::Source {
            stage: "release".into(),
            status,
        });
    }
    moves.fallbacks().keep(
        alloc_id,
        request_id,
        Fallback {
            pieces,
            block_bytes: kv_block_bytes,
            state,
            migration,
            target: target.clone(),
        },
    );
    outcome.total = started.elapsed();
    tracing::info!(
        %alloc_id, request_id, to = %target.alloc_id, stages = outcome.stages,
        blocks = outcome.blocks, bytes = outcome.bytes,
        downtime_us = outcome.downtime.as_micros() as u64, "request migrated"
    );
    Ok(outcome)
}

/// Bytes of one block in an export of `blocks` blocks.
fn block_bytes(data: &[u8], blocks: u32) -> usize {
    data.len().checked_div(blocks as usize).unwrap_or(0)
}

/// Best effort: the request decodes on the source again.
async fn thaw(source: &mut InferenceEngineClient<Channel>, request_id: u64) {
    if let Err(e) = source.thaw(RequestRef { request_id }).await {
        tracing::warn!(request_id, error = %e, "could not thaw the request");
    }
}

/// Best effort: the target agent at `target` drops what it staged or
/// resumed for `migration`, dialled afresh (the migration's own channel is
/// gone).
pub(crate) async fn abort_on_target(inference: &Inference, migration: &str, target: &Target) {
    match agent_channel(inference, target.node.as_deref(), &target.agent) {
        Ok(channel) => abort_target(&mut AgentPeerClient::new(channel), migration, target).await,
        Err(e) => tracing::warn!(%migration, error = %e, "could not dial the target to abort"),
    }
}

/// Best effort: the target drops what it staged or resumed.
async fn abort_target(peer: &mut AgentPeerClient<Channel>, migration: &str, target: &Target) {
    let request = AbortRequestKvRequest {
        migration_id: migration.to_string(),
        alloc_id: target.alloc_id.clone(),
    };
    if let Err(e) = peer.abort_request_kv(request).await {
        tracing::warn!(%migration, error = %e, "could not abort on the target");
    }
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "field `{field}`: must be 1 to {MAX_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Target side of `AgentPeer.RequestKv`: stages a chunk in the engine of
/// `chunk.alloc_id` and, on the last, resumes the request there, holding
/// its stream for the relay.
pub async fn receive_kv(
    inference: &Inference,
    chunk: RequestKvChunk,
) -> Result<RequestKvReply, Status> {
    check_id("migration_id", &chunk.migration_id)?;
    check_id("alloc_id", &chunk.alloc_id)?;
    let sum = checksum(&chunk.data);
    if sum != chunk.crc32c {
        return Err(Status::data_loss(format!(
            "chunk of migration {} from block {}: CRC-32C {sum:#010x}, sent {:#010x}",
            chunk.migration_id, chunk.from_block, chunk.crc32c
        )));
    }
    let engine = inference.engines().find(&chunk.alloc_id, "")?;
    let mut client = inference.moves().engine(&engine.addr)?;
    if !chunk.data.is_empty() {
        client
            .import_kv(ImportKvRequest {
                migration_id: chunk.migration_id.clone(),
                from_block: chunk.from_block,
                data: chunk.data,
            })
            .await?;
    }
    let Some(state) = chunk.resume else {
        return Ok(RequestKvReply {
            handoff: String::new(),
            node: inference.node().to_string(),
        });
    };
    let answer = client
        .resume_imported(ResumeImportedRequest {
            migration_id: chunk.migration_id.clone(),
            state: Some(state),
        })
        .await?;
    let id = request_id_of(answer.metadata());
    let stream = relayed_tokens(
        answer.into_inner(),
        chunk.alloc_id.clone(),
        inference.moves().clone(),
        id,
    );
    inference
        .moves()
        .put_handoff(&chunk.migration_id, &chunk.alloc_id, stream);
    Ok(RequestKvReply {
        handoff: chunk.migration_id,
        node: inference.node().to_string(),
    })
}

/// Target side of `AgentPeer.AbortRequestKv`: drops a resumed request's
/// stream (its engine cancels it) and what is staged.
pub async fn abort_kv(inference: &Inference, request: AbortRequestKvRequest) -> Result<(), Status> {
    check_id("migration_id", &request.migration_id)?;
    check_id("alloc_id", &request.alloc_id)?;
    inference.moves().drop_handoff(&request.migration_id);
    let engine = inference.engines().find(&request.alloc_id, "")?;
    inference
        .moves()
        .engine(&engine.addr)?
        .abort_import(AbortImportRequest {
            migration_id: request.migration_id,
        })
        .await?;
    Ok(())
}

/// `NodeAgent.MigrateRequest`: [`migrate_request`] from the wire, the
/// target's agent found in the fleet view when not given.
pub async fn serve_migrate(
    inference: &Inference,
    request: herd_api::proto::agent::MigrateRequestRequest,
) -> Result<herd_api::proto::agent::MigrateRequestReply, Status> {
    check_id("alloc_id", &request.alloc_id)?;
    check_id("to_alloc", &request.to_alloc)?;
    let agent = if request.to_agent.is_empty() {
        inference
            .fleet()
            .and_then(|f| f.agent_of(&request.to_alloc))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "field `to_agent`: not given, and allocation {} is no instance this agent knows",
                    request.to_alloc
                ))
            })?
    } else {
        request.to_agent
    };
    let node = inference.fleet().and_then(|f| f.node_of(&request.to_alloc));
    let target = Target {
        alloc_id: request.to_alloc,
        agent,
        node,
    };
    let outcome =
        migrate_request(inference, &request.alloc_id, request.request_id, &target).await?;
    Ok(herd_api::proto::agent::MigrateRequestReply {
        stages: outcome.stages,
        blocks: outcome.blocks,
        bytes: outcome.bytes,
        downtime_us: outcome.downtime.as_micros() as u64,
        total_us: outcome.total.as_micros() as u64,
        verified: outcome.verified,
        switched_at: outcome.switched_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_id_names_its_source_read_from_the_right() {
        assert_eq!(source_of("a1.42.0123abcd"), Some(("a1".to_string(), 42)));
        assert_eq!(
            source_of("web.3.7.0123abcd"),
            Some(("web.3".to_string(), 7)),
            "an allocation id with dots"
        );
        assert_eq!(source_of("a1.x.0123abcd"), None, "not a request id");
        assert_eq!(source_of(".42.0123abcd"), None, "no allocation");
        assert_eq!(source_of("0123abcd"), None);
    }

    #[tokio::test]
    async fn a_handoff_is_found_by_the_request_it_continues_and_taken_once() {
        let moves = RequestMoves::default();
        let stream = || -> InferStream { Box::pin(futures::stream::empty()) };
        moves.put_handoff("src.7.aaaa", "dst", stream());
        moves.put_handoff("src.8.bbbb", "dst", stream());
        assert!(moves.take_handoff_of("src", 9).is_none(), "no such request");
        assert!(
            moves.take_handoff_of("other", 7).is_none(),
            "another source"
        );
        let (alloc, _) = moves.take_handoff_of("src", 7).expect("request 7");
        assert_eq!(alloc, "dst");
        assert!(moves.take_handoff_of("src", 7).is_none(), "taken once");
        assert!(
            moves.take_handoff("src.8.bbbb", "dst").is_some(),
            "the other is still there by its migration id"
        );
    }
}
