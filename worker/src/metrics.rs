//! The worker's Prometheus metrics: what it counts, the queue gauges it
//! samples from Redis, and the `/metrics` endpoint (`[worker] metrics_port`
//! and `metrics_host`).
//!
//! Counters and histograms are recorded where things happen, through the
//! functions here, so metric and label names are spelled in one module:
//! - `savestream_tasks_started_total{source}`: attempts started;
//! - `savestream_tasks_{completed,failed,canceled,retried}_total{source}`:
//!   attempts that ended that way (`retried` counts attempts that queued the
//!   task again after a failure);
//! - `savestream_task_wait_seconds{source}`: from a task's creation to the
//!   start of its first attempt;
//! - `savestream_task_run_seconds{source}`: from the start of the attempt
//!   that ended a task (completed, failed or canceled) to that end;
//! - `savestream_downloaded_bytes_total{source}`: bytes written to storages;
//! - `savestream_redis_errors_total`: store calls that failed because Redis
//!   did not answer;
//! - `savestream_queue_depth{state}` and `savestream_jobs_pending`: gauges
//!   sampled every [`SAMPLE_INTERVAL`] (the names and labels the API uses);
//! - `savestream_storage_usable{storage}`: 1 when this worker can write to
//!   the storage, 0 while it cannot (set by the worker's start-up and by
//!   `UnusableStorage`);
//! - `savestream_webhook_deliveries_total{outcome}`: recorded by the webhook
//!   crate when the dispatcher runs in this process.
//!
//! The exposition text is rendered by `metrics-exporter-prometheus` and
//! served by a small hyper route of our own ([`MetricsServer`]), so the
//! listener binds port 0 in tests and stops with the worker. The page holds
//! counts and label values from closed sets only: never a task id, link,
//! path or token.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use savestream_shared::store::{QueueDepth, Store, StoreError};
use savestream_shared::task::SourceKind;
use savestream_webhook::dispatcher::{DELIVERIES_METRIC, DELIVERY_OUTCOMES};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::storage::STORAGE_USABLE_METRIC;

pub const TASKS_STARTED: &str = "savestream_tasks_started_total";
pub const TASKS_COMPLETED: &str = "savestream_tasks_completed_total";
pub const TASKS_FAILED: &str = "savestream_tasks_failed_total";
pub const TASKS_CANCELED: &str = "savestream_tasks_canceled_total";
pub const TASKS_RETRIED: &str = "savestream_tasks_retried_total";
pub const TASK_WAIT: &str = "savestream_task_wait_seconds";
pub const TASK_RUN: &str = "savestream_task_run_seconds";
pub const DOWNLOADED_BYTES: &str = "savestream_downloaded_bytes_total";
pub const REDIS_ERRORS: &str = "savestream_redis_errors_total";
pub const QUEUE_DEPTH: &str = "savestream_queue_depth";
pub const JOBS_PENDING: &str = "savestream_jobs_pending";

/// How often the queue gauges are read from Redis.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How long one gauge read may wait for Redis.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(3);

/// Histogram buckets in seconds: from a quick pick-up (10 ms) to a long
/// download (a few hours).
const SECONDS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// The process-wide recorder's handle. The `metrics` facade has one global
/// recorder, so it is installed once, by the first worker built.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = || match PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS) {
                Ok(builder) => builder,
                // Only an empty bucket list is refused, and ours is not empty.
                Err(_) => PrometheusBuilder::new(),
            };
            let handle = match builder().install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    // Another recorder owns the facade (an embedding program
                    // installed its own): serve an empty page rather than fail.
                    warn!(%error, "cannot install the metrics recorder: /metrics will show nothing");
                    builder().build_recorder().handle()
                }
            };
            describe();
            initialize();
            handle
        })
        .clone()
}

/// Shows every counter at 0 from the start, for each source, so a query
/// like `rate(...)` has a series before the first task of its kind.
fn initialize() {
    for source in [SourceKind::Http, SourceKind::Telegram] {
        let source = source.as_str();
        for name in [
            TASKS_STARTED,
            TASKS_COMPLETED,
            TASKS_FAILED,
            TASKS_CANCELED,
            TASKS_RETRIED,
            DOWNLOADED_BYTES,
        ] {
            metrics::counter!(name, "source" => source).increment(0);
        }
    }
    metrics::counter!(REDIS_ERRORS).increment(0);
    // Every outcome from the start, so an alert on `outcome="gave_up"` has
    // a series before the first delivery gives up.
    for outcome in DELIVERY_OUTCOMES {
        metrics::counter!(DELIVERIES_METRIC, "outcome" => outcome).increment(0);
    }
}

fn describe() {
    metrics::describe_counter!(
        DELIVERIES_METRIC,
        "Webhook tries by outcome (delivered, retrying, gave_up, gone), terminal events acknowledged \
         without a delivery (skipped) and event entries that cannot be read (unreadable)"
    );
    metrics::describe_counter!(
        TASKS_STARTED,
        "Attempts this worker started, by source (telegram, http)"
    );
    metrics::describe_counter!(TASKS_COMPLETED, "Tasks this worker completed, by source");
    metrics::describe_counter!(
        TASKS_FAILED,
        "Tasks that failed for good on this worker, by source"
    );
    metrics::describe_counter!(
        TASKS_CANCELED,
        "Running tasks this worker stopped because they were canceled, by source"
    );
    metrics::describe_counter!(
        TASKS_RETRIED,
        "Attempts on this worker that failed and queued their task again, by source"
    );
    metrics::describe_histogram!(
        TASK_WAIT,
        metrics::Unit::Seconds,
        "From a task's creation to the start of its first attempt, by source"
    );
    metrics::describe_histogram!(
        TASK_RUN,
        metrics::Unit::Seconds,
        "From the start of a task's last attempt to its end, by source"
    );
    metrics::describe_counter!(
        DOWNLOADED_BYTES,
        metrics::Unit::Bytes,
        "Bytes this worker wrote to storages, by source"
    );
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Store calls of this worker that failed because Redis did not answer"
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Tasks in each sorted set of the projection (queued, running, delayed), sampled"
    );
    metrics::describe_gauge!(
        JOBS_PENDING,
        "Work items read by a worker and not yet acknowledged, sampled"
    );
    metrics::describe_gauge!(
        STORAGE_USABLE_METRIC,
        "1 when this worker can write to the storage, 0 while it cannot (tasks for it wait for a \
         worker that can), by storage"
    );
}

pub fn task_started(source: SourceKind) {
    metrics::counter!(TASKS_STARTED, "source" => source.as_str()).increment(1);
}

/// How an attempt ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Completed,
    Failed,
    Canceled,
    Retried,
}

/// Counts an attempt's end; a task's end (everything but a retry) also
/// records how long its last attempt ran.
pub fn task_ended(source: SourceKind, ended: Ended, ran: Duration) {
    let name = match ended {
        Ended::Completed => TASKS_COMPLETED,
        Ended::Failed => TASKS_FAILED,
        Ended::Canceled => TASKS_CANCELED,
        Ended::Retried => TASKS_RETRIED,
    };
    metrics::counter!(name, "source" => source.as_str()).increment(1);
    if ended != Ended::Retried {
        metrics::histogram!(TASK_RUN, "source" => source.as_str()).record(ran.as_secs_f64());
    }
}

/// Records how long a task waited between its creation and its first start.
pub fn task_waited(source: SourceKind, waited: Duration) {
    metrics::histogram!(TASK_WAIT, "source" => source.as_str()).record(waited.as_secs_f64());
}

/// The counter of bytes written for tasks of `source`; the pipeline keeps
/// the handle for a whole download rather than looking it up per chunk.
pub fn downloaded_bytes(source: SourceKind) -> metrics::Counter {
    metrics::counter!(DOWNLOADED_BYTES, "source" => source.as_str())
}

pub fn redis_error() {
    metrics::counter!(REDIS_ERRORS).increment(1);
}

/// Samples the queue gauges from Redis (`Store::queue_depth`) on a
/// connection of its own, so a slow sample never delays task transitions.
pub struct QueueGauges {
    store: Store,
}

impl QueueGauges {
    pub async fn connect(store: &Store) -> Result<QueueGauges, StoreError> {
        Ok(QueueGauges {
            store: store.with_own_connection().await?,
        })
    }

    pub async fn read(&self) -> Result<QueueDepth, StoreError> {
        self.store.queue_depth().await
    }

    fn publish(depth: QueueDepth) {
        let gauge = |state: &'static str, value: u64| {
            metrics::gauge!(QUEUE_DEPTH, "state" => state).set(value as f64);
        };
        gauge("queued", depth.queued);
        gauge("running", depth.running);
        gauge("delayed", depth.delayed);
        metrics::gauge!(JOBS_PENDING).set(depth.jobs_pending as f64);
    }

    /// Samples the gauges now and every [`SAMPLE_INTERVAL`] until `stop`.
    /// A failed read leaves the last values and counts a Redis error.
    pub async fn sample(self, handle: PrometheusHandle, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match tokio::time::timeout(GAUGE_TIMEOUT, self.read()).await {
                Ok(Ok(depth)) => QueueGauges::publish(depth),
                Ok(Err(error)) => {
                    redis_error();
                    debug!(%error, "cannot read the queue gauges");
                }
                Err(_) => {
                    redis_error();
                    debug!("redis did not answer the queue gauges in time");
                }
            }
            // Histograms keep their recent samples until upkeep drains them.
            handle.run_upkeep();
        }
        if let Err(error) = self.store.quit().await {
            debug!(%error, "closing the gauge connection");
        }
    }
}

/// The `/metrics` listener, bound at start-up so a taken port is a start-up
/// error that names it.
pub struct MetricsServer {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsServer {
    /// Binds `address` (`[worker] metrics_host` and `metrics_port`: every
    /// interface unless told one, as Prometheus scrapes from outside the
    /// container); port 0 picks a free one.
    pub async fn bind(address: SocketAddr, handle: PrometheusHandle) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(address).await?;
        Ok(MetricsServer { listener, handle })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers `GET /metrics` until `stop`; connections in progress finish.
    pub async fn serve(self, stop: CancellationToken) {
        let connections = TaskTracker::new();
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(accepted) => {
                    backoff.accepted();
                    accepted
                }
                Err(error) => {
                    // EMFILE and its kin do not clear by asking again at once:
                    // a retry without a pause would spin a core while they last.
                    if backoff.failed() {
                        warn!(%error, "cannot accept metrics connections: trying again every {ACCEPT_BACKOFF:?} until one succeeds");
                    } else {
                        debug!(%error, "cannot accept a metrics connection");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            };
            let handle = self.handle.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&request, &handle)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            debug!(%error, "a metrics connection failed");
                        }
                    }
                    _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
                }
            });
        }
        connections.close();
        // A scraper holding a keep-alive connection open must not delay the
        // worker's exit for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
    }
}

/// The pause after a failed accept (as hyper's and tokio's examples do).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// When a failed accept is worth a warning: the first of a burst, that is,
/// the first since the listener last accepted a connection.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failing: bool,
}

impl AcceptBackoff {
    /// Records a failed accept; answers whether it starts a burst.
    fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    fn accepted(&mut self) {
        self.failing = false;
    }
}

fn answer(request: &Request<hyper::body::Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: this port serves GET /metrics only\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_outcome_is_described_and_shown_at_zero_from_the_start() {
        let text = install().render();

        assert!(text.contains(&format!("# HELP {DELIVERIES_METRIC} ")), "{text}");
        for outcome in DELIVERY_OUTCOMES {
            assert!(
                text.contains(&format!("{DELIVERIES_METRIC}{{outcome=\"{outcome}\"}} 0")),
                "{outcome}:\n{text}"
            );
        }
    }

    #[test]
    fn a_burst_of_accept_failures_warns_once_and_a_success_ends_the_burst() {
        let mut backoff = AcceptBackoff::default();

        assert!(backoff.failed(), "the first failure of a burst warns");
        assert!(!backoff.failed());
        assert!(!backoff.failed());
        backoff.accepted();
        assert!(backoff.failed(), "a failure after a success starts a new burst");
    }
}
