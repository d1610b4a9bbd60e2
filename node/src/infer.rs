//! `NodeAgent.Infer`: one request run on a SIMULATED inference engine of
//! this node, its tokens proxied back as the engine streams them. Inputs
//! are checked here (bounds, priority) before any engine is contacted.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use herd_actors::inference::{wire, MAX_REQUEST_TOKENS};
use herd_api::proto::agent::{InferRequest, InferToken};
use herd_api::proto::inference::inference_engine_client::InferenceEngineClient;
use herd_api::proto::inference::GenerateRequest;
use tonic::Status;

use crate::engines::{connect_lazy, Engines};

/// The tokens of one request.
pub type InferStream = Pin<Box<dyn Stream<Item = Result<InferToken, Status>> + Send>>;

fn check(request: &InferRequest) -> Result<(), Status> {
    for (field, value) in [
        ("prompt_tokens", request.prompt_tokens),
        ("max_tokens", request.max_tokens),
    ] {
        if value == 0 || value > MAX_REQUEST_TOKENS {
            return Err(Status::invalid_argument(format!(
                "field `{field}`: must be between 1 and {MAX_REQUEST_TOKENS}, got {value}"
            )));
        }
    }
    wire::parse_priority(&request.priority).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(())
}

/// Runs `request` on the engine it names and streams its tokens.
pub async fn infer(engines: &Engines, request: InferRequest) -> Result<InferStream, Status> {
    check(&request)?;
    let engine = engines.find(&request.alloc_id, &request.job)?;
    let channel = connect_lazy(&engine.addr)?;
    let tokens = InferenceEngineClient::new(channel)
        .generate(GenerateRequest {
            prompt_tokens: request.prompt_tokens,
            max_tokens: request.max_tokens,
            priority: request.priority,
        })
        .await
        .map_err(|s| {
            let message = format!("inference engine of {}: {}", engine.alloc_id, s.message());
            match s.code() {
                tonic::Code::InvalidArgument => Status::invalid_argument(message),
                tonic::Code::Unavailable => Status::unavailable(message),
                _ => Status::internal(message),
            }
        })?
        .into_inner();
    let alloc_id = engine.alloc_id;
    let stream = tokens.map(move |token| {
        let id = alloc_id.clone();
        token
            .map(|t| InferToken {
                index: t.index,
                at_us: t.at_us,
                ttft_us: t.ttft_us,
                alloc_id: if t.ttft_us.is_some() {
                    id.clone()
                } else {
                    String::new()
                },
            })
            .map_err(|s| Status::unavailable(format!("inference engine of {id}: {}", s.message())))
    });
    Ok(Box::pin(stream))
}
