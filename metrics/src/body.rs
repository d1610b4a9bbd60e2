//! A call being timed, and the response body that records it once its
//! status is known.
//!
//! A gRPC status travels in the response headers when the server answers
//! at once with an error ("trailers only"), and otherwise in the trailers
//! after the last message; a body dropped before its trailers is a call
//! the client gave up on (`Canceled`).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
// The runtime's clock: the deterministic simulation drives it.
use tokio::time::Instant;
use tonic::codegen::http::HeaderMap;
use tonic::Code;

use crate::grpc::GrpcMetrics;

/// A call not yet recorded; recorded as `Canceled` if dropped so.
pub struct PendingCall {
    metrics: GrpcMetrics,
    path: String,
    started: Instant,
    done: bool,
}

impl PendingCall {
    /// A call to `path` starting now.
    pub fn start(metrics: GrpcMetrics, path: &str) -> Self {
        Self {
            metrics,
            path: path.to_string(),
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the call as ended with `code` (once; later calls do nothing).
    pub fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        self.metrics
            .record(&self.path, code, self.started.elapsed());
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` in `headers`, if any (an unreadable one is `Unknown`).
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A response body that records its call when the status arrives.
pub struct CountedBody<B> {
    inner: B,
    call: Option<PendingCall>,
}

impl<B> CountedBody<B> {
    /// `inner`, recording `call` at its trailers (`None`: already recorded).
    pub fn new(inner: B, call: Option<PendingCall>) -> Self {
        Self { inner, call }
    }

    fn finish(&mut self, code: Code) {
        if let Some(mut call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            // The stream broke: the client sees no status.
            Poll::Ready(Some(Err(_))) => this.finish(Code::Unknown),
            // Ended without trailers: no status was sent.
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
