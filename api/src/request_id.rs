//! Request ids: one id per client action, so that one `grep` over every
//! process's logs follows a job from the CLI that submitted it, through the
//! coordinator that received it and the leader that placed it, to the agent
//! that started it (docs/logging.md).
//!
//! The client sends the id as gRPC metadata ([`HEADER`]); a server that gets
//! none (or one it will not log) makes its own, so every call has one. The
//! id is opaque text: a client may choose it (`herd --request-id`), which
//! is why it is checked ([`RequestId::parse`]) before it reaches a log line
//! or the replicated state, where a newline or a megabyte could forge or
//! flood records.
//!
//! Servers put the id in a `tracing` span around the whole call
//! ([`RequestIdLayer`]), so every event the call logs carries it without
//! being handed it; handlers that must store it read it from the request's
//! extensions ([`RequestId::of`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tracing::Instrument;

/// The gRPC metadata key (an HTTP/2 header) that carries the id.
pub const HEADER: &str = "x-herd-request-id";

/// The longest id accepted: long enough for a UUID with a prefix, short
/// enough that no client can flood a log line with it.
pub const MAX_LEN: usize = 64;

/// An id that names one client action in every process's logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

/// Why text is not a request id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestIdError {
    /// Nothing given.
    #[error("a request id cannot be empty")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("a request id has at most {MAX_LEN} characters, this one has {0}")]
    TooLong(usize),
    /// A character outside letters, digits and `-_.:`.
    #[error("a request id may hold letters, digits and `-_.:` only, not {0:?}")]
    BadChar(char),
}

impl RequestId {
    /// Checks `text`: 1 to [`MAX_LEN`] ASCII letters, digits or `-_.:`.
    pub fn parse(text: &str) -> Result<Self, RequestIdError> {
        if text.is_empty() {
            return Err(RequestIdError::Empty);
        }
        let length = text.chars().count();
        if length > MAX_LEN {
            return Err(RequestIdError::TooLong(length));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(RequestIdError::BadChar(bad));
        }
        Ok(Self(text.to_string()))
    }

    /// A fresh random id (`req-` and a UUID v4's 32 hex digits).
    pub fn generate() -> Self {
        Self(format!("req-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id a call's metadata carries, when it carries a valid one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        metadata
            .get(HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Self::parse(text).ok())
    }

    /// The id a server gave a call ([`RequestIdLayer`]), or the one in its
    /// metadata, or None (a server without the layer, a client without one).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .or_else(|| Self::from_metadata(request.metadata()))
    }

    /// The id as a metadata value (always valid: the characters were checked).
    pub fn to_metadata(&self) -> Option<AsciiMetadataValue> {
        self.0.parse().ok()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RequestId {
    type Error = RequestIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.0
    }
}

/// Gives every call of a tonic server a request id (the client's, when it
/// sent a valid one; else a fresh one), in the request's extensions and in
/// an `rpc` span (`method`, `request_id`) around the whole call:
/// `Server::builder().layer(RequestIdLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower_layer::Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service [`RequestIdLayer`] wraps around a server's services.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

/// The future of a [`RequestIdService`] call.
pub type RequestIdFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for RequestIdService<S>
where
    S: tower_service::Service<http::Request<ReqBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let sent = request
            .headers()
            .get(HEADER)
            .and_then(|value| value.to_str().ok());
        let id = match sent.map(RequestId::parse) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                let id = RequestId::generate();
                tracing::debug!(%id, "the caller's request id is not used: {e}");
                id
            }
            None => RequestId::generate(),
        };
        let span = tracing::info_span!("rpc", method = %request.uri().path(), request_id = %id);
        request.extensions_mut().insert(id);
        Box::pin(self.inner.call(request).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;
    use std::future::{ready, Ready};

    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    #[test]
    fn ids_are_short_plain_text() {
        assert_eq!(
            RequestId::parse("cli-42.a:b_c").unwrap().as_str(),
            "cli-42.a:b_c"
        );
        assert_eq!(RequestId::parse(""), Err(RequestIdError::Empty));
        assert_eq!(
            RequestId::parse(&"x".repeat(MAX_LEN + 1)),
            Err(RequestIdError::TooLong(MAX_LEN + 1))
        );
        assert!(RequestId::parse(&"x".repeat(MAX_LEN)).is_ok());
        assert_eq!(
            RequestId::parse("a\nforged log line"),
            Err(RequestIdError::BadChar('\n'))
        );
        assert_eq!(RequestId::parse("a b"), Err(RequestIdError::BadChar(' ')));
        assert_eq!(RequestId::parse("é"), Err(RequestIdError::BadChar('é')));
        let generated = RequestId::generate();
        assert_eq!(RequestId::parse(generated.as_str()), Ok(generated.clone()));
        assert_ne!(generated, RequestId::generate());
        let json = serde_json::to_string(&generated).unwrap();
        assert_eq!(serde_json::from_str::<RequestId>(&json).unwrap(), generated);
        assert!(serde_json::from_str::<RequestId>("\"a b\"").is_err());
    }

    /// Answers with the id the layer put in the request's extensions.
    #[derive(Clone)]
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = Option<RequestId>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            ready(Ok(request.extensions().get::<RequestId>().cloned()))
        }
    }

    async fn id_given(header: Option<&str>) -> RequestId {
        let mut request = http::Request::builder().uri("/herd.v1.Jobs/Submit");
        if let Some(value) = header {
            request = request.header(HEADER, value);
        }
        let mut service = RequestIdLayer.layer(Echo);
        service
            .call(request.body(()).unwrap())
            .await
            .unwrap()
            .expect("the layer gives every call an id")
    }

    #[tokio::test]
    async fn the_layer_keeps_a_valid_id_and_replaces_a_bad_or_missing_one() {
        assert_eq!(id_given(Some("cli-7")).await.as_str(), "cli-7");
        let replaced = id_given(Some(&"y".repeat(200))).await;
        assert!(replaced.as_str().starts_with("req-"), "{replaced}");
        let fresh = id_given(None).await;
        assert!(fresh.as_str().starts_with("req-"), "{fresh}");
    }

    #[test]
    fn metadata_round_trips_and_a_bad_value_reads_as_none() {
        let id = RequestId::parse("cli-9").unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert(HEADER, id.to_metadata().unwrap());
        assert_eq!(RequestId::from_metadata(&metadata), Some(id));
        metadata.insert(HEADER, "has space".parse().unwrap());
        assert_eq!(RequestId::from_metadata(&metadata), None);
    }
}
