//! Who may see the dashboard: nobody needs a token until `herd acl
//! bootstrap` (as for the gRPC API); from then on every page needs a token
//! of role `read` or more, checked on every request against this member's
//! applied state with the same check the gRPC guard uses
//! ([`crate::acl::AclState::authenticate`], [`crate::acl::Role::allows`]),
//! so a revoked or expired token stops working at once. Node tokens are
//! refused: they are agents' credentials, not people's.
//!
//! The token comes as `Authorization: Bearer TOKEN` (scripts, curl) or in
//! the cookie [`COOKIE`] that `POST /login` sets ([`super::login`]). The
//! cookie holds the token itself, because that is what is checked each
//! time: there is no session table to replicate or to forget to revoke.
//! Neither the token nor the cookie is ever logged.
//!
//! A request refused here never reaches a page: a browser (an `Accept`
//! naming `text/html`) is sent to `/login` with a 303, anything else gets
//! 401 (no valid token) or 403 (a valid token whose role may not read).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::html::query_value;
use super::server::Dashboard;
use crate::acl::{AclState, Role};
use crate::coordinator::{now_ms, ReadConsistency};

/// The cookie that carries a browser's token.
pub const COOKIE: &str = "herd_dashboard_token";

/// How long a browser keeps the cookie, in seconds (12 h): a bound on how
/// long a forgotten browser stays signed in, whatever the token's own TTL.
pub const COOKIE_MAX_AGE_S: u64 = 12 * 3600;

/// Paths served without a token: the login form and the logout.
pub const OPEN_PATHS: [&str; 2] = ["/login", "/logout"];

/// Who is looking at a page, once their token was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The token's public id.
    pub accessor: String,
    /// Its role.
    pub role: Role,
    /// Whether it came in the login cookie (so the page offers to log out).
    pub by_cookie: bool,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one that is not valid here (unknown, wrong secret,
    /// revoked, expired): 401.
    Unauthenticated(String),
    /// A valid token whose role may not read the dashboard: 403.
    Forbidden(String),
}

impl Refusal {
    /// The reason, for people (never holds a secret).
    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(m) | Refusal::Forbidden(m) => m,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// ACLs are not bootstrapped: the dashboard is open.
    Open,
    /// A token that may read: its accessor and role.
    Allowed(String, Role),
    /// Refused.
    Refused(Refusal),
    /// This member may lag and does not know the token's accessor (a token
    /// created a moment ago through another member): wait for the
    /// leader's commit index, then judge again.
    Recheck,
}

/// The message for a request without a token.
const NO_TOKEN: &str = "this dashboard requires a token of role read, submit or operator: \
     send `Authorization: Bearer TOKEN` or log in at /login";

/// Judges `token` on `acl` at `now_ms`; `may_lag`: this member is not the
/// leader, so it may not have applied a token created a moment ago.
pub fn judge(acl: &AclState, token: Option<&str>, now_ms: u64, may_lag: bool) -> Verdict {
    if !acl.enforced() {
        return Verdict::Open;
    }
    let Some(token) = token else {
        return Verdict::Refused(Refusal::Unauthenticated(NO_TOKEN.to_string()));
    };
    match acl.authenticate(token, now_ms) {
        Ok((accessor, role)) if role != Role::Node && role.allows(Role::Read) => {
            Verdict::Allowed(accessor, role)
        }
        Ok((accessor, role)) => Verdict::Refused(Refusal::Forbidden(format!(
            "token {accessor} has role {role}; the dashboard needs role read, submit or operator"
        ))),
        Err(_) if may_lag && acl.is_unknown(token) => Verdict::Recheck,
        Err(denied) => Verdict::Refused(Refusal::Unauthenticated(denied.to_string())),
    }
}

/// [`judge`] on `dashboard`'s coordinator, waiting for the leader's
/// commit index first when this member may not know the token yet.
pub async fn check(dashboard: &Dashboard, token: Option<&str>) -> Verdict {
    let coordinator = dashboard.coordinator();
    let may_lag = !coordinator.is_leader();
    let verdict = coordinator.read_state(|s| judge(&s.acl, token, now_ms(), may_lag));
    if verdict != Verdict::Recheck {
        return verdict;
    }
    if let Err(e) = coordinator
        .read_barrier(ReadConsistency::Linearizable)
        .await
    {
        return Verdict::Refused(Refusal::Unauthenticated(format!(
            "this member does not know the token and cannot reach the leader to check it: {e}"
        )));
    }
    coordinator.read_state(|s| judge(&s.acl, token, now_ms(), false))
}

/// The token of `Authorization: Bearer TOKEN`: None without that header,
/// `""` (never valid) when it is there but not a bearer token.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some("");
    };
    match text.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => Some(""),
    }
}

/// The value of the cookie [`COOKIE`], if the request carries it.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        })
}

/// The token a request presents, and whether it came in the cookie: the
/// `Authorization` header wins over the cookie.
pub fn presented(headers: &HeaderMap) -> Option<(&str, bool)> {
    bearer(headers)
        .map(|t| (t, false))
        .or_else(|| cookie(headers).map(|t| (t, true)))
}

/// Whether the client is a browser that should be sent to the login page
/// rather than given a bare 401: it accepts `text/html`.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

/// Whether `text` may be a cookie value as RFC 6265 allows (tokens are
/// UUIDs, a dot and URL-safe base64: always).
fn cookie_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// Whether the browser reached us through TLS (a TLS-terminating proxy in
/// front says so with `X-Forwarded-Proto: https`): the cookie is then
/// `Secure`, so it never travels in clear text.
fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for `token`: HttpOnly (no script reads it), SameSite=Strict
/// (no other site's page makes the browser send it), Path=/, Secure when
/// served over HTTPS (herd's own, or a proxy's). None when `token` could
/// not be a cookie value.
pub fn set_cookie(token: &str, headers: &HeaderMap) -> Option<HeaderValue> {
    if !cookie_safe(token) {
        return None;
    }
    let https = herd_metrics::https::installed().is_some() || behind_tls(headers);
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={COOKIE_MAX_AGE_S}{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that makes the browser forget its token.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("herd_dashboard_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Where to go after logging in: `next` when it is a path on this server
/// (not another site's URL, and not the login or logout itself), `/`
/// otherwise.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/".to_string();
    };
    let path = next.split('?').next().unwrap_or_default();
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && !OPEN_PATHS.contains(&path);
    if ok {
        next.to_string()
    } else {
        "/".to_string()
    }
}

/// A 303 to `location` (a path made safe by [`safe_next`] or ours).
pub fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer to a refused request: a browser's GET goes to the login
/// page, remembering where it was going; anything else gets the status
/// and the reason as text.
fn refused(refusal: &Refusal, request: &Request) -> Response {
    let headers = request.headers();
    if wants_html(headers) && matches!(*request.method(), Method::GET | Method::HEAD) {
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        return see_other(&format!("/login?next={}", query_value(target)));
    }
    let mut response = (refusal.status(), format!("{}\n", refusal.message())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if refusal.status() == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herd dashboard\""),
        );
    }
    response
}

/// The middleware in front of every route: lets a request through when
/// the dashboard is open or its token may read (telling the page who it
/// is, as a [`Viewer`] extension), and refuses it otherwise. The login
/// and logout routes pass untouched.
pub async fn require(
    State(dashboard): State<Arc<Dashboard>>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let token = presented(request.headers()).map(|(t, by_cookie)| (t.to_string(), by_cookie));
    match check(&dashboard, token.as_ref().map(|(t, _)| t.as_str())).await {
        Verdict::Open => next.run(request).await,
        Verdict::Allowed(accessor, role) => {
            let by_cookie = token.is_some_and(|(_, c)| c);
            request.extensions_mut().insert(Viewer {
                accessor,
                role,
                by_cookie,
            });
            next.run(request).await
        }
        Verdict::Refused(refusal) => {
            tracing::debug!(
                path = request.uri().path(),
                reason = refusal.message(),
                "dashboard request refused"
            );
            refused(&refusal, &request)
        }
        Verdict::Recheck => refused(&Refusal::Unauthenticated(NO_TOKEN.to_string()), &request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::secret;
    use crate::acl::state::{bootstrap, create_token, revoke_token};
    use crate::acl::TokenGrant;

    fn token(acl: &mut AclState, role: Role, ttl_ms: Option<u64>) -> (String, String) {
        let made = secret::generate().expect("random");
        let grant = TokenGrant {
            accessor: made.accessor.clone(),
            name: role.as_str().into(),
            role,
            secret_hash: made.hash,
            ttl_ms,
        };
        if acl.enforced() {
            create_token(acl, 2, grant, 1_000).expect("create");
        } else {
            bootstrap(acl, 1, grant, 1_000).expect("bootstrap");
        }
        (made.accessor, made.bearer)
    }

    #[test]
    fn open_until_bootstrap_then_read_or_more_and_never_a_node() {
        let mut acl = AclState::default();
        assert_eq!(judge(&acl, None, 0, false), Verdict::Open);
        assert_eq!(judge(&acl, Some("junk"), 0, false), Verdict::Open);
        let (op_acc, operator) = token(&mut acl, Role::Operator, None);
        let (read_acc, reader) = token(&mut acl, Role::Read, None);
        let (_, submitter) = token(&mut acl, Role::Submit, None);
        let (node_acc, node) = token(&mut acl, Role::Node, None);
        let (_, brief) = token(&mut acl, Role::Read, Some(500));
        assert!(matches!(
            judge(&acl, None, 1_000, false),
            Verdict::Refused(Refusal::Unauthenticated(m)) if m.contains("/login")
        ));
        assert_eq!(
            judge(&acl, Some(&reader), 1_000, false),
            Verdict::Allowed(read_acc.clone(), Role::Read)
        );
        assert_eq!(
            judge(&acl, Some(&operator), 1_000, false),
            Verdict::Allowed(op_acc, Role::Operator)
        );
        assert!(matches!(
            judge(&acl, Some(&submitter), 1_000, false),
            Verdict::Allowed(_, Role::Submit)
        ));
        assert!(matches!(
            judge(&acl, Some(&node), 1_000, false),
            Verdict::Refused(Refusal::Forbidden(m)) if m.contains(&node_acc) && m.contains("role node")
        ));
        assert!(matches!(
            judge(&acl, Some(&brief), 1_400, false),
            Verdict::Allowed(..)
        ));
        assert!(matches!(
            judge(&acl, Some(&brief), 1_500, false),
            Verdict::Refused(Refusal::Unauthenticated(m)) if m.contains("expired")
        ));
        let stranger = secret::generate().expect("random").bearer;
        assert!(matches!(
            judge(&acl, Some(&stranger), 1_000, false),
            Verdict::Refused(Refusal::Unauthenticated(_))
        ));
        assert_eq!(
            judge(&acl, Some(&stranger), 1_000, true),
            Verdict::Recheck,
            "a follower may not have applied a new token yet"
        );
        revoke_token(&mut acl, 9, &read_acc).expect("revoke");
        assert!(matches!(
            judge(&acl, Some(&reader), 1_000, true),
            Verdict::Refused(Refusal::Unauthenticated(m)) if m.contains("revoked")
        ));
        for refusal in [
            Refusal::Unauthenticated("x".into()),
            Refusal::Forbidden("y".into()),
        ] {
            assert!(refusal.status().is_client_error());
        }
    }

    #[test]
    fn tokens_come_from_the_header_first_then_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herd_dashboard_token=acc.sec; b=2"),
        );
        assert_eq!(presented(&headers), Some(("acc.sec", true)));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y"),
        );
        assert_eq!(presented(&headers), Some(("x.y", false)));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x.y"));
        assert_eq!(presented(&headers), Some(("", false)));
        let mut empty = HeaderMap::new();
        empty.insert(
            header::COOKIE,
            HeaderValue::from_static("herd_dashboard_token="),
        );
        assert_eq!(presented(&empty), None, "a cleared cookie is no token");
    }

    #[test]
    fn browsers_are_told_apart_by_accept() {
        let mut headers = HeaderMap::new();
        assert!(!wants_html(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_html(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("Text/HTML,application/xhtml+xml;q=0.9"),
        );
        assert!(wants_html(&headers));
    }

    #[test]
    fn the_cookie_is_locked_down_and_secure_behind_tls() {
        let mut headers = HeaderMap::new();
        let c = set_cookie("acc.sec-_1", &headers).expect("cookie");
        let c = c.to_str().expect("ascii");
        assert!(c.starts_with("herd_dashboard_token=acc.sec-_1;"), "{c}");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(c.contains(part), "{part} in {c}");
        }
        assert!(!c.contains("Secure"), "{c}");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let c = set_cookie("acc.sec", &headers).expect("cookie");
        assert!(c.to_str().expect("ascii").ends_with("; Secure"));
        assert_eq!(set_cookie("a b", &headers), None);
        assert_eq!(set_cookie("a;b", &headers), None);
        assert_eq!(set_cookie("", &headers), None);
        assert!(clear_cookie()
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0"));
    }

    #[test]
    fn logins_only_send_the_browser_back_to_this_server() {
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/jobs")), "/jobs");
        assert_eq!(safe_next(Some("/allocs?job=a%20b")), "/allocs?job=a%20b");
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "jobs",
            "/login",
            "/logout?x=1",
            "/a b",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
    }
}
