//! Reading the token out of an `authorization` header, the same on every
//! server (gRPC metadata is an HTTP/2 header; the agents' OpenAI endpoint
//! reads the HTTP/1 header the `openai` clients send).

/// The header (and gRPC metadata key) a token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The token in an `authorization` header's value: None without the
/// header, `Some("")` when it is not `Bearer TOKEN` (which then fails as an
/// invalid token rather than as a missing one). The scheme is matched
/// without regard to case and spaces around the token are dropped.
/// `value` is None when the header is absent, `Some(Err(()))` when it is
/// not visible ASCII.
pub fn from_header(value: Option<Result<&str, ()>>) -> Option<&str> {
    let text = match value? {
        Ok(text) => text.trim(),
        Err(()) => return Some(""),
    };
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => Some(""),
    }
}

/// The token in a request's headers, as [`from_header`] reads it: what
/// every guard (coordinators' and agents' gRPC services, the agents' HTTP
/// endpoint) takes from a request.
pub fn from_headers(headers: &tonic::codegen::http::HeaderMap) -> Option<&str> {
    from_header(
        headers
            .get(AUTHORIZATION)
            .map(|value| value.to_str().map_err(|_| ())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_read_leniently_and_anything_else_is_invalid() {
        assert_eq!(from_header(None), None);
        assert_eq!(from_header(Some(Ok("Bearer a.b"))), Some("a.b"));
        assert_eq!(from_header(Some(Ok("bearer  a.b "))), Some("a.b"));
        assert_eq!(from_header(Some(Ok("Basic a.b"))), Some(""));
        assert_eq!(from_header(Some(Ok("a.b"))), Some(""));
        assert_eq!(from_header(Some(Err(()))), Some(""));
    }

    #[test]
    fn headers_are_read_through_the_authorization_header() {
        use tonic::codegen::http::{HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer a.b"));
        assert_eq!(from_headers(&headers), Some("a.b"));
        let opaque = HeaderValue::from_bytes(b"Bearer \xff").expect("header bytes");
        headers.insert(AUTHORIZATION, opaque);
        assert_eq!(from_headers(&headers), Some(""), "not visible ASCII");
    }
}
