//! Prometheus metrics, served at `http://ADDR/metrics` with `--metrics-listen ADDR`.
//!
//! Two kinds of figures, encoded by `prometheus-client` (the Prometheus
//! project's own Rust client, OpenMetrics text format):
//!
//! - **This process's**, kept in memory from start: every gRPC call, counted
//!   and timed by the observe layer (`call_finished`, called from
//!   `api::observe::record`), and the writer's queue and batches
//!   (`write_queued`, `write_taken`, `write_committed`, called from
//!   `db::writer`). They live in one process-wide registry, like a Prometheus
//!   client's default registry, so the hooks need no handle.
//! - **The database's**, read at every scrape from the counters the writer
//!   keeps (`pending_counts`, `operators.active_load`,
//!   `contact_counts.lapsed`), so every replica sharing one database reports
//!   the same figures: pending contacts per source, each operator's load and
//!   limit, and the lapses so far. A scrape reads at most [`MAX_ROWS`]
//!   sources and operators.
//!
//! Label values are bounded: `method` is one of the methods the server serves
//! (from the embedded descriptor sets) or `unknown`; `code` is one of the 17
//! gRPC codes, spelled as in the gRPC spec (`OK`, `NOT_FOUND`, ...).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

use crate::{Result, api::observe::CallOutcome, db::stats::Gauges, repository::Repository};

/// The most sources, and the most operators, one scrape reports (by id,
/// ascending); past that `minicrm_metrics_series_truncated` is 1. Bounds the
/// scrape's cost and size (about 60 bytes a series) on a large table.
pub const MAX_ROWS: i64 = 1_000;

/// The label of a call to a method the server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Call latencies: from 100 µs (a health check) to 10 s.
const RPC_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Units per batch: up to the writer's MAX_BATCH (128).
const BATCH_SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// A batch's transaction, from taking it to its commit.
const BATCH_DURATION_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type RpcLabels = [(&'static str, &'static str); 2];
type MethodLabels = [(&'static str, &'static str); 1];
type IdLabels = [(&'static str, i64); 1];

/// The process's own metrics.
struct ProcessMetrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    write_queue_depth: Gauge,
    write_batch_size: Histogram,
    write_batch_duration: Histogram,
}

static METRICS: LazyLock<ProcessMetrics> = LazyLock::new(ProcessMetrics::new);

impl ProcessMetrics {
    fn new() -> Self {
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS));
        let write_queue_depth = Gauge::default();
        let write_batch_size = Histogram::new(BATCH_SIZE_BUCKETS);
        let write_batch_duration = Histogram::new(BATCH_DURATION_BUCKETS);

        let mut registry = Registry::default();
        // Counters are exposed with the `_total` suffix.
        registry.register(
            "minicrm_rpc_requests",
            "gRPC calls handled, by method and status code",
            rpc_requests.clone(),
        );
        registry.register(
            "minicrm_rpc_duration_seconds",
            "gRPC call latency, from the request to its status (a stream's whole life), by method",
            rpc_duration.clone(),
        );
        registry.register(
            "minicrm_write_queue_depth",
            "Write calls waiting for the writer thread",
            write_queue_depth.clone(),
        );
        registry.register(
            "minicrm_write_batch_size",
            "Write calls per group-committed transaction",
            write_batch_size.clone(),
        );
        registry.register(
            "minicrm_write_batch_duration_seconds",
            "Time from taking a batch to its commit (or failure)",
            write_batch_duration.clone(),
        );
        Self {
            registry,
            rpc_requests,
            rpc_duration,
            write_queue_depth,
            write_batch_size,
            write_batch_duration,
        }
    }
}

/// Counts and times one finished call.
pub(crate) fn call_finished(outcome: &CallOutcome<'_>) {
    let method = method_label(outcome.path);
    let metrics = &*METRICS;
    metrics
        .rpc_requests
        .get_or_create(&[("method", method), ("code", code_label(outcome.code))])
        .inc();
    metrics
        .rpc_duration
        .get_or_create(&[("method", method)])
        .observe(outcome.latency.as_secs_f64());
}

/// A write call enters the writer's queue.
pub(crate) fn write_queued() {
    METRICS.write_queue_depth.inc();
}

/// A write call could not be queued after [`write_queued`] (the writer stopped).
pub(crate) fn write_not_queued() {
    METRICS.write_queue_depth.dec();
}

/// The writer took `units` calls off the queue as one batch.
pub(crate) fn write_taken(units: usize) {
    METRICS
        .write_queue_depth
        .dec_by(i64::try_from(units).unwrap_or(i64::MAX));
    METRICS.write_batch_size.observe(units as f64);
}

/// A batch's transaction ended (committed or not) `elapsed` after it was taken.
pub(crate) fn write_committed(elapsed: Duration) {
    METRICS.write_batch_duration.observe(elapsed.as_secs_f64());
}

/// Every method the server serves, by request path, with its label: the
/// method's name, as the observe layer logs it.
static METHODS: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    let mut methods = HashMap::new();
    for encoded in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(encoded)
            .expect("the embedded descriptor sets are valid");
        for file in set.file {
            let package = file.package().to_owned();
            for service in &file.service {
                for method in &service.method {
                    let service = match package.as_str() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    // Leaked once: a few dozen names for the process's life.
                    let name: &'static str = Box::leak(method.name().into());
                    methods.insert(format!("/{service}/{}", method.name()), name);
                }
            }
        }
    }
    methods
});

/// The `method` label of a request path: bounded to the served methods.
pub fn method_label(path: &str) -> &'static str {
    METHODS.get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

/// The gRPC spec's name of a status code.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The bound metrics listener, ready to serve.
pub struct MetricsEndpoint {
    listener: TcpListener,
    scraper: Arc<Scraper>,
}

impl MetricsEndpoint {
    /// Binds `address` (port 0 picks one).
    pub async fn bind(address: &str, repository: Repository) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(address).await?,
            scraper: Arc::new(Scraper {
                repository,
                one_at_a_time: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves HTTP/1.1 until the task is dropped.
    pub async fn serve(self) {
        if let Ok(address) = self.local_addr() {
            tracing::info!(%address, "serving Prometheus metrics at /metrics");
        }
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(%error, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let scraper = Arc::clone(&self.scraper);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let scraper = Arc::clone(&scraper);
                    async move { Ok::<_, Infallible>(scraper.answer(&request).await) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "metrics connection ended");
                }
            });
        }
    }
}

struct Scraper {
    repository: Repository,
    /// Scrapes read the database one at a time, however many come at once.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Scraper {
    async fn answer(&self, request: &Request<Incoming>) -> Response<String> {
        let plain = |status: StatusCode, body: &str| {
            let mut response = Response::new(body.to_owned());
            *response.status_mut() = status;
            response
        };
        if request.uri().path() != "/metrics" {
            return plain(
                StatusCode::NOT_FOUND,
                "minicrm serves its metrics at /metrics\n",
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        }
        match self.render().await {
            Ok(text) => {
                let mut response = Response::new(text);
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, CONTENT_TYPE.parse().expect("valid"));
                response
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode the metrics");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot encode the metrics\n",
                )
            }
        }
    }

    /// The whole exposition: the process's metrics, then the database's.
    async fn render(&self) -> Result<String, std::fmt::Error> {
        let database = {
            let _one_at_a_time = self.one_at_a_time.lock().await;
            let started = Instant::now();
            let gauges = self.repository.metrics_gauges(MAX_ROWS).await;
            (gauges, started.elapsed())
        };
        let mut text = String::with_capacity(16 * 1024);
        encode_registry(&mut text, &METRICS.registry)?;
        encode_registry(&mut text, &database_registry(database.0, database.1))?;
        encode_eof(&mut text)?;
        Ok(text)
    }
}

/// The figures read from the database for this scrape. When the read fails
/// they are left out (not reported as zeros, which would reset the lapse
/// counter), and `minicrm_metrics_database_read_ok` says so.
fn database_registry(gauges: Result<Gauges>, elapsed: Duration) -> Registry {
    let mut registry = Registry::default();
    let read_ok: Gauge = Gauge::default();
    let read_seconds = Gauge::<f64, AtomicU64>::default();
    read_seconds.set(elapsed.as_secs_f64());
    registry.register(
        "minicrm_metrics_database_read_seconds",
        "How long this scrape took to read the database figures",
        read_seconds,
    );
    match gauges {
        Err(error) => {
            tracing::warn!(%error, "metrics: cannot read the database figures");
            read_ok.set(0);
        }
        Ok(gauges) => {
            read_ok.set(1);
            let pending = Family::<IdLabels, Gauge>::default();
            for &(source_id, count) in &gauges.pending {
                pending
                    .get_or_create(&[("source_id", source_id)])
                    .set(count);
            }
            registry.register(
                "minicrm_pending_contacts",
                "PENDING contacts waiting for an operator, by source (from the database)",
                pending,
            );
            let active_load = Family::<IdLabels, Gauge>::default();
            let max_load = Family::<IdLabels, Gauge>::default();
            let is_active = Family::<IdLabels, Gauge>::default();
            for operator in &gauges.operators {
                let labels = [("operator_id", operator.id)];
                active_load
                    .get_or_create(&labels)
                    .set(operator.active_load.into());
                max_load
                    .get_or_create(&labels)
                    .set(operator.max_load.into());
                is_active
                    .get_or_create(&labels)
                    .set(i64::from(operator.is_active));
            }
            registry.register(
                "minicrm_operator_active_load",
                "The operator's ACTIVE contacts now (from the database)",
                active_load,
            );
            registry.register(
                "minicrm_operator_max_load",
                "The most ACTIVE contacts the operator takes (from the database)",
                max_load,
            );
            registry.register(
                "minicrm_operator_is_active",
                "1 if the operator takes new contacts, 0 if not (from the database)",
                is_active,
            );
            let lapses: Counter = Counter::default();
            lapses.inc_by(u64::try_from(gauges.lapses).unwrap_or(0));
            registry.register(
                "minicrm_contact_lapses",
                "Times an operator let a contact's acceptance deadline pass (from the database)",
                lapses,
            );
            let truncated: Gauge = Gauge::default();
            truncated.set(i64::from(gauges.truncated));
            static WARNED: AtomicBool = AtomicBool::new(false);
            if gauges.truncated && !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    limit = MAX_ROWS,
                    "metrics: more sources or operators than a scrape reports; the rest are left out"
                );
            }
            registry.register(
                "minicrm_metrics_series_truncated",
                "1 if there are more sources or operators than a scrape reports",
                truncated,
            );
        }
    }
    registry.register(
        "minicrm_metrics_database_read_ok",
        "1 if this scrape read the database figures, 0 if the read failed",
        read_ok,
    );
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_name_and_others_are_unknown() {
        assert_eq!(
            method_label("/minicrm.v1.ContactService/RegisterContact"),
            "RegisterContact"
        );
        assert_eq!(
            method_label("/minicrm.v1.OperatorService/CreateOperator"),
            "CreateOperator"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(
            method_label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "ServerReflectionInfo"
        );
        for path in [
            "/minicrm.v1.ContactService/NoSuchMethod",
            "/minicrm.v1.NoService/RegisterContact",
            "/",
            "",
            "/x/y/z",
        ] {
            assert_eq!(method_label(path), UNKNOWN_METHOD, "{path:?}");
        }
    }

    #[test]
    fn codes_are_spelled_as_in_the_grpc_spec() {
        assert_eq!(code_label(Code::Ok), "OK");
        assert_eq!(code_label(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_label(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
