//! Logging a browser in and out: `GET /login` a small form, `POST /login`
//! checks the token as every page will ([`super::auth::check`]) and, when
//! it may read, sets the cookie and sends the browser to the page it asked
//! for; `POST /logout` clears the cookie. A refused token gets the form
//! again with the reason, and no cookie.
//!
//! The login page shows nothing of the cluster (no navigation, no footer
//! naming members): it is the one page served to anyone.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;

use super::auth::{self, Verdict};
use super::html::{decode_query_value, query_param, Html};
use super::pages::STYLE;
use super::server::{respond, Dashboard};

/// Largest login form body accepted, bytes (a token is under 100).
pub const MAX_FORM_BYTES: usize = 4096;

/// What the login page says besides the form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Nothing: a first visit.
    None,
    /// The token just submitted was refused, and why.
    Refused(String),
    /// The token this browser held in its cookie no longer works, and why.
    CookieRefused(String),
    /// ACLs are not bootstrapped: there is nothing to log in to.
    Open,
}

/// The login page: the form posting to `/login`, returning to `next`.
pub fn page(next: &str, notice: &Notice) -> Html {
    let mut h = Html::new();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>herd · Log in</title>")
        .raw(STYLE)
        .raw("<style>form.login{background:#fff;border:1px solid var(--line);padding:14px 16px;max-width:560px;display:grid;gap:10px}\
form.login input[type=password]{font:13px ui-monospace,monospace;padding:6px;width:100%;box-sizing:border-box}\
form.login button{justify-self:start;padding:6px 16px}.error{color:#991b1b;background:#fee2e2;padding:8px 12px;max-width:560px}</style>")
        .raw("</head><body><header><span class=\"brand\">herd</span></header><main><h1>Log in</h1>");
    match notice {
        Notice::Open => {
            h.raw("<p data-k=\"open\">This cluster has not bootstrapped its ACLs: the dashboard is open to anyone who reaches it, and needs no token. <a href=\"")
                .text(next)
                .raw("\">Go to the dashboard</a>.</p></main></body></html>");
            return h;
        }
        Notice::Refused(why) => {
            h.raw("<p class=\"error\" data-k=\"error\">That token was refused: ")
                .text(why)
                .raw("</p>");
        }
        Notice::CookieRefused(why) => {
            h.raw("<p class=\"error\" data-k=\"error\">The token this browser held is no longer accepted: ")
                .text(why)
                .raw(". Log in again.</p>");
        }
        Notice::None => {}
    }
    h.raw("<p>This cluster requires a token to view its dashboard: one of role <code>read</code>, <code>submit</code> or <code>operator</code> (an operator makes one with <code>herd acl token create --name NAME --role read</code>). It is kept in a cookie of this browser for this dashboard only, until you log out, for at most 12 hours.</p>")
        .raw("<form class=\"login\" method=\"post\" action=\"/login\">")
        .open_with("input type=\"hidden\" name=\"next\"", "value", next)
        .raw("<label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" spellcheck=\"false\" required autofocus></label>")
        .raw("<button type=\"submit\" data-k=\"login\">Log in</button></form></main></body></html>");
    h
}

/// The fields of an `application/x-www-form-urlencoded` body: the value of
/// `key`, decoded.
fn form_field(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query_value(k).as_deref() == Some(key))
            .then(|| decode_query_value(v))
            .flatten()
    })
}

/// `GET /login[?next=PATH]`: the form; straight on to `next` when the
/// browser's cookie still works or the dashboard is open.
pub async fn form(State(d): State<Arc<Dashboard>>, uri: Uri, headers: HeaderMap) -> Response {
    let next = auth::safe_next(query_param(uri.query(), "next").as_deref());
    let cookie = auth::cookie(&headers);
    match auth::check(&d, cookie).await {
        Verdict::Open => respond(StatusCode::OK, page(&next, &Notice::Open)),
        Verdict::Allowed(..) if cookie.is_some() => auth::see_other(&next),
        Verdict::Refused(refusal) if cookie.is_some() => {
            let mut response = respond(
                StatusCode::OK,
                page(&next, &Notice::CookieRefused(refusal.message().to_string())),
            );
            response
                .headers_mut()
                .insert(header::SET_COOKIE, auth::clear_cookie());
            response
        }
        _ => respond(StatusCode::OK, page(&next, &Notice::None)),
    }
}

/// `POST /login` with `token` and `next`: a token that may read sets the
/// cookie and goes on to `next` (303); any other gets the form again with
/// the reason (401, or 403 for a role that may not read), and no cookie.
pub async fn submit(State(d): State<Arc<Dashboard>>, headers: HeaderMap, body: String) -> Response {
    let next = auth::safe_next(form_field(&body, "next").as_deref());
    let token = form_field(&body, "token")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let refused = |refusal: auth::Refusal| {
        tracing::debug!(reason = refusal.message(), "dashboard login refused");
        respond(
            refusal.status(),
            page(&next, &Notice::Refused(refusal.message().to_string())),
        )
    };
    let Some(token) = token else {
        return refused(auth::Refusal::Unauthenticated(
            "no token was given".to_string(),
        ));
    };
    match auth::check(&d, Some(&token)).await {
        Verdict::Open => auth::see_other(&next),
        Verdict::Allowed(accessor, role) => {
            let Some(cookie) = auth::set_cookie(&token, &headers) else {
                return refused(auth::Refusal::Unauthenticated(
                    "the token is not valid here".to_string(),
                ));
            };
            tracing::info!(accessor = %accessor, role = %role, "dashboard login");
            let mut response = auth::see_other(&next);
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Verdict::Refused(refusal) => refused(refusal),
        Verdict::Recheck => refused(auth::Refusal::Unauthenticated(
            "the token is not valid here".to_string(),
        )),
    }
}

/// `POST /logout`: forgets the browser's token and shows the login form.
pub async fn logout() -> Response {
    let mut response = auth::see_other("/login");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, auth::clear_cookie());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let body = "next=%2Fallocs%3Fjob%3Da%2520b&token=abc.d-e_f%3D";
        assert_eq!(
            form_field(body, "next").as_deref(),
            Some("/allocs?job=a%20b")
        );
        assert_eq!(form_field(body, "token").as_deref(), Some("abc.d-e_f="));
        assert_eq!(form_field(body, "other"), None);
        assert_eq!(form_field("token", "token").as_deref(), Some(""));
    }

    #[test]
    fn the_page_escapes_what_it_is_given_and_shows_no_cluster() {
        let h = page("/jobs\"><x", &Notice::Refused("<b>no</b>".into())).into_string();
        assert!(h.contains("value=\"/jobs&quot;&gt;&lt;x\""), "{h}");
        assert!(
            h.contains("data-k=\"error\">That token was refused: &lt;b&gt;"),
            "{h}"
        );
        assert!(h.contains("action=\"/login\"") && h.contains("name=\"token\""));
        assert!(!h.contains("<nav>") && !h.contains("<footer"), "{h}");
        let open = page("/", &Notice::Open).into_string();
        assert!(open.contains("data-k=\"open\"") && !open.contains("<form"));
        let plain = page("/", &Notice::None).into_string();
        assert!(!plain.contains("data-k=\"error\""));
    }
}
