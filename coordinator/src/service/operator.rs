//! `herd operator ...`: backups (`Operator.SaveSnapshot`).
//!
//! The snapshot is streamed: a first message that describes it, then its
//! bytes in chunks of [`CHUNK_BYTES`]. A state can outgrow the 4 MiB a
//! single client message may carry, and a stream holds one chunk in
//! flight on each side rather than a second copy of the whole state.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use herd_api::proto::v1::operator_server::Operator;
use herd_api::proto::v1::snapshot_chunk::Part;
use herd_api::proto::v1::{SaveSnapshotRequest, SnapshotChunk, SnapshotInfo};
use tonic::{Request, Response, Status};

use crate::coordinator::Coordinator;
use crate::snapshot::capture::capture;

/// Payload bytes per streamed message.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Serves [`Operator`].
pub struct OperatorService {
    coordinator: Arc<Coordinator>,
}

impl OperatorService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Operator for OperatorService {
    type SaveSnapshotStream = ChunkStream;

    async fn save_snapshot(
        &self,
        _request: Request<SaveSnapshotRequest>,
    ) -> Result<Response<Self::SaveSnapshotStream>, Status> {
        let captured = capture(&self.coordinator).await?;
        let data = Arc::new(captured.data);
        let info = SnapshotInfo {
            index: captured.last_log_id.index,
            term: captured.last_log_id.leader_id.term,
            leader: captured.last_log_id.leader_id.node_id,
            cluster_id: captured.cluster_id,
            payload_bytes: data.len() as u64,
            crc32c: crc32c::crc32c(&data),
            member: captured.member,
            created_at_ms: herd_api::clock::now_ms(),
        };
        tracing::info!(
            index = info.index,
            term = info.term,
            bytes = info.payload_bytes,
            "snapshot sent for a backup"
        );
        let first = futures::stream::once(async move {
            Ok(SnapshotChunk {
                part: Some(Part::Info(info)),
            })
        });
        let chunks = data.len().div_ceil(CHUNK_BYTES);
        let body = futures::stream::iter((0..chunks).map(move |i| {
            let end = ((i + 1) * CHUNK_BYTES).min(data.len());
            Ok(SnapshotChunk {
                part: Some(Part::Data(data[i * CHUNK_BYTES..end].to_vec())),
            })
        }));
        Ok(Response::new(Box::pin(first.chain(body))))
    }
}
