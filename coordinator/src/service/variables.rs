//! Variables: replicated registers with compare-and-set.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::variables_server::Variables;
use herd_api::retry::ErrorMarks;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use super::consistency;
use crate::coordinator::Coordinator;
use crate::error::{self, CoordinatorError};
use crate::machine::command::{CommandResult, Rejection};

/// Puts of one `PutStream` in flight, from read to answer sent. Past it the
/// stream is not read until some answers leave: a client that writes
/// without reading cannot make a member hold more.
const MAX_STREAMED_PUTS_IN_FLIGHT: usize = 4096;

/// Most results sent back in one message of a `PutStream`.
const MAX_RESULTS_PER_MESSAGE: usize = 1024;

/// Keys under this prefix are herd's own records (the defragmenting loop's
/// last run, the placement fallback's outcomes): the leader writes them as
/// commands of its term, and a client may read them but not write them, so
/// that what `herd reschedule status` and `herd job status` show is what
/// herd decided, not what anyone with write access put there.
pub const RESERVED_PREFIX: &str = "herd/";

/// Serves [`Variables`].
pub struct VariablesService {
    coordinator: Arc<Coordinator>,
}

impl VariablesService {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// One put, as both the unary call and the stream serve it.
async fn put_variable(
    coordinator: &Coordinator,
    request: pb::PutVariableRequest,
) -> Result<pb::PutVariableReply, Status> {
    let pb::PutVariableRequest {
        key,
        value,
        expected_version,
    } = request;
    if key.starts_with(RESERVED_PREFIX) {
        return Err(error::invalid_argument(format!(
            "variable key {key:?}: keys under {RESERVED_PREFIX:?} are herd's own records and read-only to clients"
        )));
    }
    let command = crate::machine::next_format::put_variable(key, value, expected_version);
    match coordinator.write(command).await {
        Ok(written) => match written.result {
            CommandResult::VariablePut { version } => Ok(pb::PutVariableReply {
                ok: true,
                version,
                log_index: written.log_index,
            }),
            other => Err(CoordinatorError::Internal(format!("unexpected result {other:?}")).into()),
        },
        // A failed compare-and-set is an answer, not an error.
        Err(CoordinatorError::Rejected(Rejection::VersionMismatch { actual, .. })) => {
            Ok(pb::PutVariableReply {
                ok: false,
                version: actual,
                log_index: 0,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A streamed put's answer, tagged as the client asked.
fn tagged_result(tag: u64, result: Result<pb::PutVariableReply, Status>) -> pb::TaggedPutResult {
    match result {
        Ok(reply) => pb::TaggedPutResult {
            tag,
            reply: Some(reply),
            ..Default::default()
        },
        Err(status) => {
            let marks = ErrorMarks::read(&status);
            pb::TaggedPutResult {
                tag,
                reply: None,
                error_code: status.code() as i32,
                error_message: status.message().to_string(),
                error_reason: marks
                    .as_ref()
                    .and_then(|m| m.reason)
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                error_not_applied: marks.is_some_and(|m| m.not_applied),
            }
        }
    }
}

/// Reads a `PutStream` until the client closes it, proposing each put on
/// its own task so that puts of one stream share group commits; results go
/// to `results` as they come.
async fn serve_put_stream(
    coordinator: Arc<Coordinator>,
    mut incoming: Streaming<pb::PutVariableBatch>,
    results: mpsc::UnboundedSender<(pb::TaggedPutResult, OwnedSemaphorePermit)>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_STREAMED_PUTS_IN_FLIGHT));
    // A broken or closed request stream ends the reading; puts already
    // proposed still finish and answer while the response stream is open.
    while let Ok(Some(batch)) = incoming.message().await {
        for tagged in batch.puts {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let coordinator = coordinator.clone();
            let results = results.clone();
            tokio::spawn(async move {
                let result = match tagged.put {
                    Some(put) => put_variable(&coordinator, put).await,
                    None => Err(error::invalid_argument(format!(
                        "put {}: the field `put` is missing",
                        tagged.tag
                    ))),
                };
                // The permit travels with the answer until it is sent. The
                // client may have gone; the put stands all the same.
                let _ = results.send((tagged_result(tagged.tag, result), permit));
            });
        }
    }
}

type PutResultStream = Pin<Box<dyn Stream<Item = Result<pb::PutVariableResults, Status>> + Send>>;

#[tonic::async_trait]
impl Variables for VariablesService {
    async fn put(
        &self,
        request: Request<pb::PutVariableRequest>,
    ) -> Result<Response<pb::PutVariableReply>, Status> {
        put_variable(&self.coordinator, request.into_inner())
            .await
            .map(Response::new)
    }

    type PutStreamStream = PutResultStream;

    async fn put_stream(
        &self,
        request: Request<Streaming<pb::PutVariableBatch>>,
    ) -> Result<Response<Self::PutStreamStream>, Status> {
        // Unbounded in type only: each answer holds a permit of the
        // semaphore in `serve_put_stream` until it is handed to the
        // transport, which bounds what can wait here.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve_put_stream(
            self.coordinator.clone(),
            request.into_inner(),
            tx,
        ));
        // Whatever finished while the last message was being sent goes out
        // together; the stream ends once the client closed its side and
        // every put has answered.
        let out = futures::stream::unfold(rx, |mut rx| async move {
            let mut answered = Vec::new();
            if rx.recv_many(&mut answered, MAX_RESULTS_PER_MESSAGE).await == 0 {
                return None;
            }
            let results = answered
                .into_iter()
                .map(|(result, _permit)| result)
                .collect();
            Some((Ok(pb::PutVariableResults { results }), rx))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get(
        &self,
        request: Request<pb::GetVariableRequest>,
    ) -> Result<Response<pb::GetVariableReply>, Status> {
        let request = request.into_inner();
        self.coordinator
            .read_barrier(consistency(request.stale))
            .await?;
        let reply = self
            .coordinator
            .read_state(|s| match s.variables.get(&request.key) {
                Some(v) => pb::GetVariableReply {
                    found: true,
                    value: v.value.clone(),
                    version: v.version,
                },
                None => pb::GetVariableReply::default(),
            });
        Ok(Response::new(reply))
    }
}
