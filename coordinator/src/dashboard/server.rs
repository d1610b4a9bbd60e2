//! The dashboard's HTTP server (axum, HTTP/1): one GET route per page,
//! each reading this member's applied state once, under one lock, with the
//! index it reflects, as the API's `stale` reads do; nothing is forwarded
//! to the leader, so a page loads even when the leader is unreachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::auth::{self, Viewer};
use super::history::{run_sampler, History};
use super::html::{query_param, Html};
use super::login;
use super::pages::{self, Served};
use super::view::{self, Contact, MemberInput, RaftInfo};
use crate::coordinator::Coordinator;

/// How recently a follower must have heard from the leader to call it in
/// touch (the window `herd cluster status` uses for the leader's view).
const IN_TOUCH: Duration = Duration::from_secs(1);

/// What every page is served from.
pub struct Dashboard {
    coordinator: Arc<Coordinator>,
    history: Arc<History>,
}

impl Dashboard {
    /// A dashboard of `coordinator`, charting `history`.
    pub fn new(coordinator: Arc<Coordinator>, history: Arc<History>) -> Self {
        Self {
            coordinator,
            history,
        }
    }

    /// The coordinator whose state the pages show and whose ACLs guard them.
    pub(super) fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// What this member knows of Raft, and how it last heard from each member.
    fn raft_info(&self) -> RaftInfo {
        let c = &self.coordinator;
        let report = c.member_report(false);
        let view = c.local_status_view();
        let me = c.id();
        let leading = report.leader == Some(me);
        let members = view
            .members
            .into_iter()
            .map(|m| {
                let contact = if m.id == me {
                    Contact::Healthy
                } else if leading {
                    // The leader's view, as `herd cluster status` gives it.
                    if m.healthy {
                        Contact::Healthy
                    } else {
                        Contact::Unreachable
                    }
                } else if report.leader == Some(m.id) {
                    if c.health.in_touch_within(m.id, IN_TOUCH) {
                        Contact::Healthy
                    } else {
                        Contact::Unreachable
                    }
                } else {
                    Contact::Unknown
                };
                MemberInput {
                    id: m.id,
                    addr: m.addr,
                    voter: m.voter,
                    contact,
                    matched_index: if leading { m.matched_index } else { None },
                }
            })
            .collect();
        RaftInfo {
            member_id: me,
            role: report.state,
            term: report.term,
            leader: report.leader,
            last_log_index: report.last_log_index,
            snapshot_index: report.snapshot_index,
            members,
        }
    }

    /// Who serves a page built from the state at `applied_index`, to
    /// `viewer` (None while the dashboard is open).
    fn served(
        &self,
        raft: &RaftInfo,
        applied_index: u64,
        viewer: Option<Extension<Viewer>>,
    ) -> Served {
        let leader = raft.leader.map(|id| {
            let addr = raft
                .members
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.addr.clone())
                .unwrap_or_default();
            (id, addr)
        });
        Served {
            member_id: raft.member_id,
            role: raft.role.clone(),
            applied_index,
            leader,
            at_ms: herd_api::clock::now_ms(),
            viewer: viewer.map(|Extension(v)| v),
        }
    }

    /// The nodes' last heartbeat reports with their ages in ms: the
    /// leader's memory, nothing elsewhere.
    fn reports(&self) -> BTreeMap<String, (herd_api::proto::v1::NodeUsage, u64)> {
        let c = &self.coordinator;
        if !c.is_leader() {
            return BTreeMap::new();
        }
        let names: Vec<String> = c.read_state(|s| s.nodes.keys().cloned().collect());
        let liveness = c.liveness();
        names
            .into_iter()
            .filter_map(|name| {
                let (usage, at) = liveness.usage(&name)?;
                let age = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                Some((name, (usage, age)))
            })
            .collect()
    }
}

/// A page as an HTTP response: HTML, never cached, and a content security
/// policy that lets it load nothing from anywhere (its style and script
/// are inline; forms post only to this server: the logout button).
pub(super) fn respond(status: StatusCode, page: Html) -> Response {
    let mut response = (status, page.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn overview(State(d): State<Arc<Dashboard>>, viewer: Option<Extension<Viewer>>) -> Response {
    let raft = d.raft_info();
    let (applied, o) = d.coordinator.read_state_at(|s| view::overview(s, &raft));
    let body = pages::overview(&o, &d.history.samples());
    respond(
        StatusCode::OK,
        pages::layout("/", "Overview", &body, &d.served(&raft, applied, viewer)),
    )
}

async fn nodes(State(d): State<Arc<Dashboard>>, viewer: Option<Extension<Viewer>>) -> Response {
    let raft = d.raft_info();
    let reports = d.reports();
    let ttl_ms = u64::try_from(d.coordinator.liveness().ttl().as_millis()).unwrap_or(u64::MAX);
    let (applied, page) = d
        .coordinator
        .read_state_at(|s| view::nodes(s, &reports, ttl_ms));
    let served = d.served(&raft, applied, viewer);
    let leading = raft.leader == Some(raft.member_id);
    let body = pages::nodes(&page, leading, served.at_ms);
    respond(
        StatusCode::OK,
        pages::layout("/nodes", "Nodes", &body, &served),
    )
}

async fn jobs(State(d): State<Arc<Dashboard>>, viewer: Option<Extension<Viewer>>) -> Response {
    let raft = d.raft_info();
    let (applied, rows) = d.coordinator.read_state_at(view::jobs);
    let body = pages::jobs(&rows);
    respond(
        StatusCode::OK,
        pages::layout("/jobs", "Jobs", &body, &d.served(&raft, applied, viewer)),
    )
}

async fn allocs(
    State(d): State<Arc<Dashboard>>,
    viewer: Option<Extension<Viewer>>,
    uri: Uri,
) -> Response {
    let raft = d.raft_info();
    let job = query_param(uri.query(), "job").filter(|j| !j.is_empty());
    let (applied, page) = d
        .coordinator
        .read_state_at(|s| view::allocs(s, job.as_deref()));
    let body = pages::allocs(&page);
    respond(
        StatusCode::OK,
        pages::layout(
            "/allocs",
            "Allocations",
            &body,
            &d.served(&raft, applied, viewer),
        ),
    )
}

async fn migrations(
    State(d): State<Arc<Dashboard>>,
    viewer: Option<Extension<Viewer>>,
) -> Response {
    let raft = d.raft_info();
    let now = herd_api::clock::now_ms();
    let (applied, page) = d.coordinator.read_state_at(|s| view::migrations(s, now));
    let body = pages::migrations(&page);
    respond(
        StatusCode::OK,
        pages::layout(
            "/migrations",
            "Migrations",
            &body,
            &d.served(&raft, applied, viewer),
        ),
    )
}

async fn fragmentation(
    State(d): State<Arc<Dashboard>>,
    viewer: Option<Extension<Viewer>>,
) -> Response {
    let raft = d.raft_info();
    let (applied, f) = d.coordinator.read_state_at(view::fragmentation);
    let body = pages::fragmentation(&f, &d.history.samples());
    respond(
        StatusCode::OK,
        pages::layout(
            "/fragmentation",
            "Fragmentation",
            &body,
            &d.served(&raft, applied, viewer),
        ),
    )
}

async fn not_found(
    State(d): State<Arc<Dashboard>>,
    viewer: Option<Extension<Viewer>>,
    uri: Uri,
) -> Response {
    let raft = d.raft_info();
    let applied = d.coordinator.read_state_at(|_| ()).0;
    respond(
        StatusCode::NOT_FOUND,
        pages::layout(
            uri.path(),
            "Not found",
            &pages::not_found(uri.path()),
            &d.served(&raft, applied, viewer),
        ),
    )
}

/// The dashboard's routes, every one but the login's behind
/// [`auth::require`].
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/nodes", get(nodes))
        .route("/jobs", get(jobs))
        .route("/allocs", get(allocs))
        .route("/migrations", get(migrations))
        .route("/fragmentation", get(fragmentation))
        .route(
            "/login",
            get(login::form)
                .post(login::submit)
                .layer(DefaultBodyLimit::max(login::MAX_FORM_BYTES)),
        )
        .route("/logout", post(login::logout))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            dashboard.clone(),
            auth::require,
        ))
        .with_state(dashboard)
}

/// Serves the dashboard of `coordinator` on `listener`, and samples its
/// state for the charts; both run until their tasks are aborted.
pub fn spawn(listener: TcpListener, coordinator: Arc<Coordinator>) -> Vec<JoinHandle<()>> {
    let history = Arc::new(History::default());
    let sampler = tokio::spawn(run_sampler(coordinator.clone(), history.clone()));
    let dashboard = Arc::new(Dashboard::new(coordinator, history));
    let server = tokio::spawn(async move {
        // At most 64 requests in flight (docs/security.md, "Limits").
        use herd_metrics::limits::http;
        let limits = http::HttpLimits::read_only(None);
        if let Err(e) = http::serve(listener, router(dashboard), limits).await {
            tracing::error!(error = %e, "the dashboard's HTTP server stopped");
        }
    });
    vec![sampler, server]
}
