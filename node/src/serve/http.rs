//! The agent's OpenAI-compatible HTTP endpoint (`herd node --http-listen
//! ADDR`), because that is the API every LLM client already speaks:
//! `POST /v1/completions`, `POST /v1/chat/completions` (`stream: true` as
//! server-sent events ending with `data: [DONE]`) and `GET /v1/models`.
//! The model is the inference service (job); each request is dispatched
//! across the fleet like `NodeAgent.Infer` ([`crate::infer`]). Bodies are
//! bounded and read by [`super::openai`]; every error is an OpenAI-style
//! JSON body with a 4xx or 5xx status.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use herd_api::proto::agent::InferRequest;
use serde_json::Value;

use super::openai::{self, Generate, Kind, Origin};
use crate::infer::{InferStream, Inference, Served};

/// Largest request body read, bytes.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON response.
fn json(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn invalid(status: StatusCode, message: &str, param: Option<&str>, code: Option<&str>) -> Response {
    json(
        status,
        &openai::error(message, "invalid_request_error", param, code),
    )
}

fn server_error(status: StatusCode, message: &str) -> Response {
    json(status, &openai::error(message, "server_error", None, None))
}

/// A refused dispatch, as an HTTP error.
fn refused(model: &str, status: tonic::Status) -> Response {
    match status.code() {
        tonic::Code::NotFound => invalid(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist: {}", status.message()),
            Some("model"),
            Some("model_not_found"),
        ),
        tonic::Code::InvalidArgument => invalid(
            StatusCode::BAD_REQUEST,
            status.message(),
            None,
            Some("invalid_request"),
        ),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
            server_error(StatusCode::SERVICE_UNAVAILABLE, status.message())
        }
        _ => server_error(StatusCode::BAD_GATEWAY, status.message()),
    }
}

/// The routes, serving requests through `inference`.
pub fn router(inference: Inference) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .fallback(unknown_route)
        .with_state(Arc::new(inference))
}

async fn unknown_route(method: Method, uri: Uri) -> Response {
    invalid(
        StatusCode::NOT_FOUND,
        &format!("no route {method} {}", uri.path()),
        None,
        Some("unknown_url"),
    )
}

async fn models(State(inference): State<Arc<Inference>>) -> Response {
    let services = match inference.fleet() {
        Some(fleet) => fleet.services(),
        None => inference
            .engines()
            .local()
            .into_iter()
            .map(|(e, _)| e.job)
            .collect(),
    };
    json(StatusCode::OK, &openai::models(&services))
}

async fn completions(State(inference): State<Arc<Inference>>, body: Body) -> Response {
    generate(&inference, Kind::Completion, body).await
}

async fn chat(State(inference): State<Arc<Inference>>, body: Body) -> Response {
    generate(&inference, Kind::Chat, body).await
}

async fn generate(inference: &Inference, kind: Kind, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return invalid(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {MAX_BODY} bytes (or was cut off)"),
            None,
            Some("body_too_large"),
        );
    };
    let request = match openai::parse(kind, &bytes) {
        Ok(r) => r,
        Err(e) => {
            let param = (!e.param.is_empty()).then_some(e.param.as_str());
            return invalid(StatusCode::BAD_REQUEST, &e.message, param, None);
        }
    };
    let dispatched = inference
        .dispatch(InferRequest {
            alloc_id: String::new(),
            job: request.model.clone(),
            prompt_tokens: request.prompt_tokens,
            max_tokens: request.max_tokens,
            priority: request.priority.clone(),
            ..Default::default()
        })
        .await;
    let (served, tokens) = match dispatched {
        Ok(d) => d,
        Err(status) => return refused(&request.model, status),
    };
    let prefix = match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    };
    let origin = Origin {
        id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        created: herd_api::clock::now_ms() / 1000,
        alloc_id: served.alloc_id.clone(),
        node: served.node.clone(),
    };
    let headers = served_headers(&served);
    if request.stream {
        let events = sse_events(request, origin, tokens);
        (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response()
    } else {
        (headers, whole(&request, &origin, tokens).await).into_response()
    }
}

/// `x-herd-alloc-id` and `x-herd-node`: where the request runs.
fn served_headers(served: &Served) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-herd-alloc-id", &served.alloc_id),
        ("x-herd-node", &served.node),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers
}

/// The response of a request that does not stream, once every token came.
async fn whole(request: &Generate, origin: &Origin, mut tokens: InferStream) -> Response {
    let mut text = String::new();
    let mut produced = 0u32;
    while let Some(token) = tokens.next().await {
        match token {
            Ok(t) => {
                text.push_str(&openai::token_text(t.index));
                produced += 1;
            }
            Err(e) => return server_error(StatusCode::BAD_GATEWAY, e.message()),
        }
    }
    if produced != request.max_tokens {
        return server_error(
            StatusCode::BAD_GATEWAY,
            &format!(
                "the engine's stream ended after {produced} of {} tokens",
                request.max_tokens
            ),
        );
    }
    json(
        StatusCode::OK,
        &openai::response(request, origin, &text, produced),
    )
}

struct Relay {
    request: Generate,
    origin: Origin,
    tokens: InferStream,
    produced: u32,
    ended: bool,
}

/// The server-sent events of a streamed request: one chunk per token, then
/// the usage chunk when asked for and `[DONE]`; an error event (and no
/// `[DONE]`) when the stream fails or ends short.
fn sse_events(
    request: Generate,
    origin: Origin,
    tokens: InferStream,
) -> impl futures::Stream<Item = Result<Event, Infallible>> + Send {
    let relay = Relay {
        request,
        origin,
        tokens,
        produced: 0,
        ended: false,
    };
    futures::stream::unfold(relay, |mut relay| async move {
        if relay.ended {
            return None;
        }
        let events = match relay.tokens.next().await {
            Some(Ok(t)) => {
                relay.produced += 1;
                let last = relay.produced == relay.request.max_tokens;
                vec![openai::chunk(&relay.request, &relay.origin, t.index, last).to_string()]
            }
            Some(Err(e)) => {
                relay.ended = true;
                vec![openai::error(e.message(), "server_error", None, None).to_string()]
            }
            None if relay.produced != relay.request.max_tokens => {
                relay.ended = true;
                let message = format!(
                    "the engine's stream ended after {} of {} tokens",
                    relay.produced, relay.request.max_tokens
                );
                vec![openai::error(&message, "server_error", None, None).to_string()]
            }
            None => {
                relay.ended = true;
                let mut tail = Vec::new();
                if relay.request.include_usage {
                    tail.push(
                        openai::usage_chunk(&relay.request, &relay.origin, relay.produced)
                            .to_string(),
                    );
                }
                tail.push("[DONE]".to_string());
                tail
            }
        };
        Some((events, relay))
    })
    .flat_map(|events| {
        futures::stream::iter(events.into_iter().map(|e| Ok(Event::default().data(e))))
    })
}
