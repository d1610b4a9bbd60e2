//! The tower layer that counts and times a tonic server's calls:
//! `Server::builder().layer(metrics.layer())`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{Request, Response};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{status_in, CountedBody, PendingCall};
use crate::grpc::GrpcMetrics;

/// The layer stack of a `tonic` server built as
/// `Server::builder().layer(metrics.layer())`, for functions that return
/// its router.
pub type WithGrpcMetrics = tower_layer::Stack<GrpcMetricsLayer, tower_layer::Identity>;

/// Wraps a server's services in a [`GrpcMetricsService`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: GrpcMetrics,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: GrpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose every call is recorded when its status is known.
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

/// The future of a [`GrpcMetricsService`] call.
pub type CallFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CallFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut call = PendingCall::start(self.metrics.clone(), request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => match status_in(response.headers()) {
                    Some(code) => {
                        call.finish(code);
                        Ok(response.map(|body| CountedBody::new(body, None)))
                    }
                    None => Ok(response.map(|body| CountedBody::new(body, Some(call)))),
                },
                Err(e) => {
                    call.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::{ready, Ready};

    use http_body::{Body, Frame};
    use tonic::codegen::http::HeaderMap;

    use super::*;

    /// A response body of the frames given.
    struct Frames(VecDeque<Frame<&'static [u8]>>);

    impl Body for Frames {
        type Data = &'static [u8];
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// Answers every request with the status `code`: in the headers
    /// (trailers only) or after one message in the trailers.
    #[derive(Clone)]
    struct Answer {
        code: u8,
        trailers_only: bool,
    }

    impl Service<Request<()>> for Answer {
        type Response = Response<Frames>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            let code = self.code.to_string();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.parse().expect("header"));
            let response = if self.trailers_only {
                let mut response = Response::new(Frames(VecDeque::new()));
                *response.headers_mut() = trailers;
                response
            } else {
                Response::new(Frames(VecDeque::from([
                    Frame::data(&b"message"[..]),
                    Frame::trailers(trailers),
                ])))
            };
            ready(Ok(response))
        }
    }

    async fn call(metrics: &GrpcMetrics, answer: Answer, read_body: bool) {
        let mut service = metrics.layer().layer(answer);
        let request = Request::builder()
            .uri("/herd.v1.Jobs/Submit")
            .body(())
            .expect("request");
        let response = service.call(request).await.expect("response");
        let mut body = response.into_body();
        if read_body {
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
        }
    }

    #[tokio::test]
    async fn the_status_is_read_from_headers_or_trailers_and_a_dropped_call_is_canceled() {
        let metrics = GrpcMetrics::default();
        let count = |code| metrics.handled("herd.v1.Jobs", "Submit", code);
        let trailers_only = |code| Answer {
            code,
            trailers_only: true,
        };
        let streamed = |code| Answer {
            code,
            trailers_only: false,
        };
        call(&metrics, trailers_only(5), false).await;
        assert_eq!(count(Code::NotFound), 1);
        call(&metrics, streamed(0), true).await;
        assert_eq!(count(Code::Ok), 1);
        call(&metrics, streamed(0), false).await;
        assert_eq!(count(Code::Ok), 1, "not read to its trailers");
        assert_eq!(count(Code::Cancelled), 1, "dropped before its status");
        call(&metrics, streamed(14), true).await;
        assert_eq!(count(Code::Unavailable), 1);
    }
}
