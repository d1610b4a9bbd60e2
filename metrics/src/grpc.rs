//! The metrics of a gRPC server: calls handled by service, method and
//! status code, and how long each took, named as the gRPC ecosystem's
//! Prometheus middleware names them (`grpc_service`, `grpc_method`,
//! `grpc_code`) so that existing dashboards read them.
//!
//! Labels come from the request path, which a client chooses: a call the
//! server answers `Unimplemented` (an unknown service or method) is
//! counted under `unknown`, and past [`MAX_METHODS`] distinct methods any
//! new one is counted under `other`, so no client can grow the label sets
//! without bound.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;

/// Most distinct (service, method) pairs labelled by name.
pub const MAX_METHODS: usize = 256;

/// Upper bounds of the latency buckets, seconds: from half a millisecond
/// (a local read) to 10 s (a write waiting out an election).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of a handled call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `herd.v1.Jobs`, `unknown` or `other`.
    pub grpc_service: String,
    /// `Submit`, `unknown` or `other`.
    pub grpc_method: String,
    /// The status code as gRPC names it (`OK`, `NotFound`...).
    pub grpc_code: &'static str,
}

/// Labels of a call's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// As in [`CallLabels`].
    pub grpc_service: String,
    /// As in [`CallLabels`].
    pub grpc_method: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// One server's call counters and latency histograms; cheap to clone
/// (clones count into the same metrics).
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    handled: Family<CallLabels, Counter>,
    handling: LatencyFamily,
    named: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            handled: Family::default(),
            handling: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            named: Arc::default(),
        }
    }
}

impl GrpcMetrics {
    /// Registers `herd_grpc_server_handled_total` and
    /// `herd_grpc_server_handling_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_handled",
            "gRPC calls this process's server completed, by service, method and status code",
            self.handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "How long this process's server took to complete gRPC calls (streams: until they ended)",
            Unit::Seconds,
            self.handling.clone(),
        );
    }

    /// A layer that counts the calls of the server it wraps into these metrics.
    pub fn layer(&self) -> crate::layer::GrpcMetricsLayer {
        crate::layer::GrpcMetricsLayer::new(self.clone())
    }

    /// Records one call to `path` (`/package.Service/Method`) that ended
    /// with `code` after `elapsed`.
    pub fn record(&self, path: &str, code: Code, elapsed: Duration) {
        let (grpc_service, grpc_method) = self.labels_for(path, code);
        self.handled
            .get_or_create(&CallLabels {
                grpc_service: grpc_service.clone(),
                grpc_method: grpc_method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
        self.handling
            .get_or_create(&MethodLabels {
                grpc_service,
                grpc_method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// How many calls to `service`/`method` ended with `code` (for tests).
    pub fn handled(&self, service: &str, method: &str, code: Code) -> u64 {
        self.handled
            .get(&CallLabels {
                grpc_service: service.to_string(),
                grpc_method: method.to_string(),
                grpc_code: code_name(code),
            })
            .map_or(0, |c| c.get())
    }

    /// The (service, method) labels of a call to `path` that ended with
    /// `code`; see the module documentation for `unknown` and `other`.
    fn labels_for(&self, path: &str, code: Code) -> (String, String) {
        let unknown = || ("unknown".to_string(), "unknown".to_string());
        if code == Code::Unimplemented {
            return unknown();
        }
        let Some((service, method)) = split_path(path) else {
            return unknown();
        };
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_string(), method.to_string());
        if named.contains(&key) {
            return key;
        }
        if named.len() >= MAX_METHODS {
            return ("other".to_string(), "other".to_string());
        }
        named.insert(key.clone());
        key
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`), when the
/// path has that shape.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let well_formed = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    (well_formed(service) && well_formed(method)).then_some((service, method))
}

/// The status code as gRPC's own implementations name it (Go's
/// `codes.Code.String()`), which dashboards match on.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method_or_not_at_all() {
        assert_eq!(
            split_path("/herd.v1.Jobs/Submit"),
            Some(("herd.v1.Jobs", "Submit"))
        );
        for bad in ["", "/", "herd.v1.Jobs/Submit", "/a/", "/a/b/c", "/a b/c"] {
            assert_eq!(split_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn labels_are_bounded_whatever_paths_clients_send() {
        let metrics = GrpcMetrics::default();
        let ms = Duration::from_millis(1);
        metrics.record("/herd.v1.Jobs/Submit", Code::Ok, ms);
        metrics.record("/herd.v1.Jobs/Submit", Code::NotFound, ms);
        metrics.record("/herd.v1.Jobs/Nope", Code::Unimplemented, ms);
        metrics.record("/not a path", Code::InvalidArgument, ms);
        assert_eq!(metrics.handled("herd.v1.Jobs", "Submit", Code::Ok), 1);
        assert_eq!(metrics.handled("herd.v1.Jobs", "Submit", Code::NotFound), 1);
        assert_eq!(
            metrics.handled("unknown", "unknown", Code::Unimplemented),
            1
        );
        assert_eq!(
            metrics.handled("unknown", "unknown", Code::InvalidArgument),
            1
        );
        for i in 0..(MAX_METHODS + 10) {
            metrics.record(&format!("/x.S/M{i}"), Code::Unauthenticated, ms);
        }
        assert_eq!(
            metrics.handled("other", "other", Code::Unauthenticated),
            11,
            "the pairs past the bound (one slot went to Jobs/Submit)"
        );
        assert_eq!(metrics.handled("herd.v1.Jobs", "Submit", Code::Ok), 1);
        metrics.record("/herd.v1.Jobs/Submit", Code::Ok, ms);
        assert_eq!(
            metrics.handled("herd.v1.Jobs", "Submit", Code::Ok),
            2,
            "pairs named before the bound keep their name"
        );
    }

    #[test]
    fn every_code_has_a_distinct_name() {
        let names: HashSet<&str> = (0..=16).map(|i| code_name(Code::from_i32(i))).collect();
        assert_eq!(names.len(), 17);
    }
}
