//! Writes to variables over one long-lived stream (`Variables.PutStream`).
//!
//! A unary `Put` costs an HTTP/2 stream of its own: headers, data and
//! trailers each way, and a service call on the coordinator. For a program
//! that writes thousands of times a second that costs more CPU than the
//! write's share of a Raft entry. A [`PutStream`] sends every put of its
//! callers over one stream instead, packing the puts that are waiting into
//! one message, and matches each answer to its caller by a tag. Each put is
//! still its own write: its own compare-and-set, its own reply.
//!
//! The stream ends with its connection: every put then in flight fails with
//! `Unavailable` and an unknown outcome, as a unary put cut off in flight
//! would, and so does every later put. Open a new stream to go on.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::proto::v1::variables_client::VariablesClient;
use crate::proto::v1::{
    PutVariableBatch, PutVariableReply, PutVariableRequest, PutVariableResults, TaggedPut,
    TaggedPutResult,
};
use crate::retry::{ErrorMarks, Reason};

/// Puts one stream keeps in flight; more callers wait for a slot. Below the
/// coordinator's own bound (4096), so that it never stops reading this
/// stream while this side waits for its answers.
pub const MAX_PUTS_IN_FLIGHT: usize = 1024;

/// Most puts packed into one message.
const MAX_PUTS_PER_MESSAGE: usize = 512;

type Answer = oneshot::Sender<Result<PutVariableReply, Status>>;

/// A put waiting to be sent, with where its answer goes.
struct Queued {
    put: PutVariableRequest,
    answer: Answer,
}

/// An open `Variables.PutStream` to one coordinator, shared by any number
/// of concurrent callers (clone it freely).
#[derive(Clone)]
pub struct PutStream {
    queue: mpsc::UnboundedSender<Queued>,
    slots: Arc<Semaphore>,
}

impl PutStream {
    /// Opens a stream on `channel`: to a follower, which forwards the puts
    /// to the leader as it forwards unary ones, or to the leader itself.
    /// Any channel a generated client takes: a plain one, or a
    /// [`crate::client::HerdChannel`] that carries a token.
    pub async fn open<T>(channel: T) -> Result<Self, Status>
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
        T::Future: Send,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        let (to_server, outgoing) = mpsc::unbounded_channel();
        let incoming = VariablesClient::new(channel)
            .put_stream(UnboundedReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(pump(queued, to_server, incoming));
        Ok(Self {
            queue,
            slots: Arc::new(Semaphore::new(MAX_PUTS_IN_FLIGHT)),
        })
    }

    /// Writes `put` and waits for its answer, as a unary `Put` would: a
    /// failed compare-and-set is an answer (`ok` false), not an error.
    pub async fn put(&self, put: PutVariableRequest) -> Result<PutVariableReply, Status> {
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { put, answer })
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }
}

fn closed() -> Status {
    Status::unavailable("the put stream is closed; the outcome of puts in flight is unknown")
}

/// What a tagged result says about its put.
fn outcome(result: TaggedPutResult) -> Result<PutVariableReply, Status> {
    match result.reply {
        Some(reply) => Ok(reply),
        None if result.error_code == Code::Ok as i32 => Err(Status::internal(format!(
            "put {}: the coordinator sent neither a reply nor an error",
            result.tag
        ))),
        None => {
            let status = Status::new(Code::from(result.error_code), result.error_message);
            // The marks a unary Put would carry in its metadata; a reason
            // this release does not know (or none, from an older
            // coordinator) leaves the status unmarked.
            match Reason::parse(&result.error_reason) {
                Some(reason) => Err(ErrorMarks {
                    reason: Some(reason),
                    not_applied: result.error_not_applied,
                    leader: None,
                }
                .on(status)),
                None => Err(status),
            }
        }
    }
}

/// Sends queued puts and hands answers back until the stream ends or every
/// handle is gone; then fails whatever is still waiting.
async fn pump(
    mut queued: mpsc::UnboundedReceiver<Queued>,
    to_server: mpsc::UnboundedSender<PutVariableBatch>,
    mut incoming: Streaming<PutVariableResults>,
) {
    let mut waiting: HashMap<u64, Answer> = HashMap::new();
    let mut next_tag: u64 = 0;
    let mut ready = Vec::new();
    let failure = loop {
        tokio::select! {
            count = queued.recv_many(&mut ready, MAX_PUTS_PER_MESSAGE) => {
                if count == 0 {
                    // Every handle is gone, so no caller waits for anything.
                    return;
                }
                let mut puts = Vec::with_capacity(count);
                for Queued { put, answer } in ready.drain(..) {
                    next_tag += 1;
                    waiting.insert(next_tag, answer);
                    puts.push(TaggedPut { tag: next_tag, put: Some(put) });
                }
                if to_server.send(PutVariableBatch { puts }).is_err() {
                    break closed();
                }
            }
            message = incoming.message() => match message {
                Ok(Some(results)) => {
                    for result in results.results {
                        // An unknown tag answers nobody: ignore it.
                        if let Some(answer) = waiting.remove(&result.tag) {
                            let _ = answer.send(outcome(result));
                        }
                    }
                }
                Ok(None) => break closed(),
                Err(status) => break Status::unavailable(format!(
                    "the put stream broke ({}); the outcome of puts in flight is unknown",
                    status.message()
                )),
            }
        }
    };
    queued.close();
    for (_, answer) in waiting.drain() {
        let _ = answer.send(Err(failure.clone()));
    }
    while let Ok(Queued { answer, .. }) = queued.try_recv() {
        let _ = answer.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_replies_and_statuses() {
        let reply = PutVariableReply {
            ok: true,
            version: 3,
            log_index: 9,
        };
        let answered = outcome(TaggedPutResult {
            tag: 1,
            reply: Some(reply),
            ..Default::default()
        });
        assert_eq!(answered.expect("a reply").version, 3);

        let refused = outcome(TaggedPutResult {
            tag: 2,
            reply: None,
            error_code: Code::InvalidArgument as i32,
            error_message: "key: must not be empty".into(),
            ..Default::default()
        })
        .expect_err("an error");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(refused.message(), "key: must not be empty");
        assert_eq!(ErrorMarks::read(&refused), None, "no marks were sent");

        // An election mid-put: the marks travel as a unary Put's would, so
        // a client can tell "try again" from "refused".
        let unknown = outcome(TaggedPutResult {
            tag: 4,
            error_code: Code::Unavailable as i32,
            error_message: "outcome unknown".into(),
            error_reason: Reason::OutcomeUnknown.as_str().into(),
            ..Default::default()
        })
        .expect_err("an error");
        let marks = ErrorMarks::read(&unknown).expect("marks");
        assert_eq!(marks.reason, Some(Reason::OutcomeUnknown));
        assert!(!marks.not_applied);
        let not_applied = outcome(TaggedPutResult {
            tag: 5,
            error_code: Code::Unavailable as i32,
            error_reason: Reason::NoLeader.as_str().into(),
            error_not_applied: true,
            ..Default::default()
        })
        .expect_err("an error");
        let marks = ErrorMarks::read(&not_applied).expect("marks");
        assert_eq!(marks.reason, Some(Reason::NoLeader));
        assert!(marks.not_applied);

        let empty = outcome(TaggedPutResult {
            tag: 3,
            ..Default::default()
        })
        .expect_err("neither reply nor error");
        assert_eq!(empty.code(), Code::Internal);
        assert!(empty.message().contains("put 3"), "{}", empty.message());
    }
}
