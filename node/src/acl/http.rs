//! The token check on the OpenAI-compatible endpoint: `Authorization:
//! Bearer TOKEN`, which is what the `openai` clients send for their
//! `api_key`. Refusals are OpenAI-style error bodies: 401 with code
//! `invalid_api_key` when no valid token came, 403 with
//! `insufficient_permissions` when its role is too small.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herd_api::acl::bearer;
use herd_api::acl::Denied;

use super::{table, AgentAcl};
use crate::serve::openai;

/// The response a refusal gets.
pub fn refusal(denied: &Denied) -> Response {
    let (status, kind, code) = if denied.is_unauthenticated() {
        (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        )
    } else {
        (
            StatusCode::FORBIDDEN,
            "insufficient_permissions",
            "insufficient_permissions",
        )
    };
    let body = openai::error(&denied.to_string(), kind, None, Some(code));
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Middleware (`axum::middleware::from_fn_with_state`): serves `request`
/// only when its token's role allows its route ([`table::http_role`]).
pub async fn check(State(acl): State<AgentAcl>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let need = table::http_role(&method, &path);
    let token = bearer::from_headers(request.headers()).map(str::to_string);
    let what = format!("{method} {path}");
    match acl.check(need, &what, token.as_deref()).await {
        Ok(()) => next.run(request).await,
        Err(denied) => refusal(&denied),
    }
}
