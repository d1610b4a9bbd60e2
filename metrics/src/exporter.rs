//! The `/metrics` HTTP endpoint a process serves on `--metrics-listen`.
//!
//! `GET /metrics` answers the Prometheus text format (version 0.0.4), what
//! every scraper and `promtool check metrics` read; a scraper whose
//! `Accept` header names `application/openmetrics-text` gets OpenMetrics
//! instead. Values that are read rather than kept up to date are read by a
//! refresh hook before each scrape (the node agent asks its actors) or by
//! a `prometheus-client` collector while encoding (the coordinator reads
//! its replicated state).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::MetricsError;

/// The content type of an OpenMetrics text answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest a refresh hook may take before a scrape answers without it
/// (a stuck actor must not hang every scrape).
pub const REFRESH_LIMIT: Duration = Duration::from_secs(5);

/// A hook run before every scrape, to read values that live elsewhere.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

static CERTIFICATE_EXPIRY: std::sync::OnceLock<Gauge<i64>> = std::sync::OnceLock::new();

/// Says when this process's TLS certificate expires (Unix seconds), at
/// start and again when a reload renews it, so that every registry made
/// after the first call exports it as
/// `herd_tls_certificate_expiry_timestamp_seconds`, current at each
/// scrape: an expired certificate cuts the process off from the cluster,
/// and operators alert on the date
/// (`herd_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400`)
/// rather than learn it from the outage, and see the alert clear once the
/// renewed certificate is loaded.
pub fn set_certificate_expiry(unix_seconds: i64) {
    CERTIFICATE_EXPIRY
        .get_or_init(Gauge::default)
        .set(unix_seconds);
}

/// Reads how many revocations this process holds: (revoked certificate
/// fingerprints, revocation lists for QEMU). A function, not the sets:
/// this crate knows nothing of where herd keeps them (`herd_api::tls`).
pub type RevocationCounts = fn() -> (usize, usize);

static REVOCATION_COUNTS: std::sync::OnceLock<RevocationCounts> = std::sync::OnceLock::new();

/// Says, once at start, how to read this process's revocations, so that
/// every registry made afterwards exports `herd_tls_revoked_certificates`
/// and `herd_tls_revocation_lists` as they are at each scrape: an
/// operator who revoked a certificate sees each process take it in (and
/// that QEMU's streams got a list) without reading logs. False when said
/// before.
pub fn set_revocation_counts(read: RevocationCounts) -> bool {
    REVOCATION_COUNTS.set(read).is_ok()
}

/// The revocation gauges, read at each scrape.
#[derive(Debug)]
struct RevocationCollector(RevocationCounts);

impl prometheus_client::collector::Collector for RevocationCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        let (certificates, lists) = (self.0)();
        crate::write::gauge(
            &mut encoder,
            "tls_revoked_certificates",
            "Revoked TLS certificates this process refuses (herd tls cert revoke), as it last learned them",
            None,
            i64::try_from(certificates).unwrap_or(i64::MAX),
        )?;
        crate::write::gauge(
            &mut encoder,
            "tls_revocation_lists",
            "Certificate revocation lists this process holds for QEMU's migration streams (revoked with --ca-key)",
            None,
            i64::try_from(lists).unwrap_or(i64::MAX),
        )
    }
}

/// A registry with herd's prefix (`herd_`), `herd_build_info` and, for a
/// process with TLS, `herd_tls_certificate_expiry_timestamp_seconds` and
/// the revocation gauges, for a process to register its metrics in.
pub fn registry() -> Registry {
    let mut registry = Registry::with_prefix(crate::PREFIX);
    registry.register(
        "build",
        "The herd release this process runs (always 1)",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    if let Some(expiry) = CERTIFICATE_EXPIRY.get() {
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this process's TLS certificate (--tls-cert) expires, Unix seconds",
            expiry.clone(),
        );
    }
    if let Some(read) = REVOCATION_COUNTS.get() {
        registry.register_collector(Box::new(RevocationCollector(*read)));
    }
    registry
}

/// What a `/metrics` endpoint serves: a registry, and what to refresh
/// before encoding it.
pub struct Exporter {
    registry: Registry,
    refresh: Option<Refresh>,
}

impl Exporter {
    /// Serves `registry` as it is at each scrape.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            refresh: None,
        }
    }

    /// Runs `refresh` before each scrape (bounded by [`REFRESH_LIMIT`]).
    pub fn with_refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// The registry encoded now, as OpenMetrics text or (by default) the
    /// Prometheus text format; runs no refresh hook.
    pub fn render(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        if openmetrics {
            text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }

    /// Refreshes, then renders (see [`Exporter::render`]).
    pub async fn scrape(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        if let Some(refresh) = &self.refresh {
            if tokio::time::timeout(REFRESH_LIMIT, refresh())
                .await
                .is_err()
            {
                tracing::warn!(
                    limit_ms = REFRESH_LIMIT.as_millis() as u64,
                    "metrics refresh timed out; serving the values read before"
                );
            }
        }
        self.render(openmetrics)
    }

    /// Binds `addr` and serves `GET /metrics` there until the returned
    /// task is aborted.
    pub async fn start(self, addr: SocketAddr) -> Result<RunningExporter, MetricsError> {
        let bind_error = |e: std::io::Error| MetricsError::Bind {
            addr,
            message: e.to_string(),
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        self.serve(listener).map_err(bind_error)
    }

    /// Serves `GET /metrics` on `listener` until the returned task is
    /// aborted (for a process that binds its ports before it starts).
    pub fn serve(self, listener: TcpListener) -> std::io::Result<RunningExporter> {
        let local_addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self));
        let task = tokio::spawn(async move {
            // At most 64 scrapes in flight (docs/security.md, "Limits").
            let limits = crate::limits::http::HttpLimits::read_only(None);
            if let Err(e) = crate::limits::http::serve(listener, app, limits).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
        tracing::info!(addr = %local_addr, "serving metrics at /metrics");
        Ok(RunningExporter { local_addr, task })
    }
}

/// A `/metrics` endpoint being served.
pub struct RunningExporter {
    /// The address bound (useful with port 0).
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningExporter {
    /// The serving task, for the process to stop with its other tasks.
    pub fn into_task(self) -> JoinHandle<()> {
        self.task
    }
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match exporter.scrape(openmetrics).await {
        Ok(body) => {
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                prometheus_text::CONTENT_TYPE
            };
            ([(CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, accept: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn serves_prometheus_text_or_openmetrics_as_asked_after_refreshing() {
        let mut registry = registry();
        let counter: Counter = Counter::default();
        registry.register("demo_events", "Events seen", counter.clone());
        let refreshed = Arc::new(AtomicU64::new(0));
        let hook = {
            let refreshed = refreshed.clone();
            let counter = counter.clone();
            Arc::new(move || {
                refreshed.fetch_add(1, Ordering::Relaxed);
                counter.inc();
                Box::pin(async {}) as Pin<Box<dyn Future<Output = ()> + Send>>
            })
        };
        let running = Exporter::new(registry)
            .with_refresh(hook)
            .start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("start");
        let plain = get(running.local_addr, "*/*").await;
        assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
        assert!(plain.contains("text/plain; version=0.0.4"), "{plain}");
        assert!(
            plain.contains("# TYPE herd_demo_events_total counter"),
            "{plain}"
        );
        assert!(plain.contains("herd_demo_events_total 1\n"), "{plain}");
        assert!(
            plain.contains(&format!(
                "herd_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{plain}"
        );
        assert!(!plain.contains("# EOF"), "{plain}");
        let open = get(running.local_addr, "application/openmetrics-text").await;
        assert!(open.contains("application/openmetrics-text"), "{open}");
        assert!(open.contains("herd_demo_events_total 2\n"), "{open}");
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        assert_eq!(refreshed.load(Ordering::Relaxed), 2);
        running.into_task().abort();
    }

    #[tokio::test]
    async fn a_taken_address_is_refused_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let Err(err) = Exporter::new(registry()).start(addr).await else {
            panic!("bound a taken address");
        };
        let text = err.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("--metrics-listen"),
            "{text}"
        );
    }
}
