//! The API's Prometheus metrics: what it counts, the gauges it reads from
//! Redis when scraped, and the `GET /metrics` endpoint that renders them.
//!
//! Counters are recorded where things happen, through the functions here
//! (so metric and label names are spelled in one module):
//! - `savestream_tasks_created_total{source}`: tasks this API created (a
//!   repeated `Idempotency-Key` creates nothing and is not counted);
//! - `savestream_tasks_canceled_total{source}`: tasks this API canceled;
//! - `savestream_http_requests_total{method,path,status}`: every response,
//!   with `path` the route's template (`/api/v1/tasks/{task_id}`), never the
//!   concrete path, so ids do not make a series each, and `method` one of
//!   the nine standard methods or `other`, so made-up methods do not either;
//! - `savestream_redis_errors_total`: store calls that failed because Redis
//!   did not answer;
//! - `savestream_create_batch_size`: creates per store call
//!   ([`crate::create_batcher`]); its `_count` is the calls, its `_sum` the
//!   creates they carried, so their ratio shows how much batching a load gets.
//!
//! Gauges are read from Redis (`Store::queue_depth`) at scrape time, so they
//! are right whichever process changed the queue:
//! `savestream_queue_depth{state}` (the sizes of the `queued`, `running` and
//! `delayed` sorted sets; delayed tasks are queued too) and
//! `savestream_jobs_pending` (work items read by a worker and not yet
//! acknowledged).
//!
//! `/metrics` needs no token, like `/health` and `/ready`: a scraper should
//! not need the API's secret. It shows counts and route templates only, never
//! a task id, title, link or token; still, it is for the operator's network,
//! not the internet.
//!
//! This module does not touch task state; it only reads.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::Counter;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::http::StatusCode;
use poem::web::Data;
use poem::{handler, IntoResponse, Response};
use savestream_shared::store::QueueDepth;
use savestream_shared::task::SourceKind;

use crate::state::AppState;

pub const TASKS_CREATED: &str = "savestream_tasks_created_total";
pub const TASKS_CANCELED: &str = "savestream_tasks_canceled_total";
pub const HTTP_REQUESTS: &str = "savestream_http_requests_total";
pub const REDIS_ERRORS: &str = "savestream_redis_errors_total";
pub const CREATE_BATCH_SIZE: &str = "savestream_create_batch_size";
pub const QUEUE_DEPTH: &str = "savestream_queue_depth";
pub const JOBS_PENDING: &str = "savestream_jobs_pending";

/// The `path` label of a request that matched no route: one series for all
/// of them, however many different paths scanners try.
pub const UNMATCHED_PATH: &str = "unmatched";

/// The `method` label of a request whose method is not one of HTTP's
/// standard nine: one series for all of them, however many names clients
/// make up (the method is read before any token is checked).
pub const OTHER_METHOD: &str = "other";

/// How long a scrape waits for Redis before it answers with the counters
/// alone; Prometheus' own scrape timeout is 10 s by default.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(3);

/// The process-wide recorder's handle. The `metrics` facade has one global
/// recorder, so it is installed once, by the first `Application` built.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => handle,
                Err(error) => {
                    // Another recorder owns the facade (an embedding program
                    // installed its own): serve an empty page rather than fail.
                    tracing::warn!(%error, "cannot install the metrics recorder: /metrics will show nothing");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            // Built now, so the first request does not pay for it.
            route_templates();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        TASKS_CREATED,
        "Tasks created through this API, by source (telegram, http)"
    );
    metrics::describe_counter!(
        TASKS_CANCELED,
        "Tasks canceled through this API, by source (telegram, http)"
    );
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP responses of this API, by method, route template and status"
    );
    metrics::describe_counter!(
        REDIS_ERRORS,
        "Store calls of this API that failed because Redis did not answer"
    );
    metrics::describe_histogram!(
        CREATE_BATCH_SIZE,
        "Creates carried by each store call of this API: concurrent creates share one"
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Tasks in each sorted set of the projection at scrape time (queued, running, delayed)"
    );
    metrics::describe_gauge!(
        JOBS_PENDING,
        "Work items read by a worker and not yet acknowledged, at scrape time"
    );
}

pub fn task_created(source: SourceKind) {
    static COUNTERS: OnceLock<[Counter; 2]> = OnceLock::new();
    per_source(&COUNTERS, TASKS_CREATED, source).increment(1);
}

pub fn task_canceled(source: SourceKind) {
    static COUNTERS: OnceLock<[Counter; 2]> = OnceLock::new();
    per_source(&COUNTERS, TASKS_CANCELED, source).increment(1);
}

/// The counter `name{source}`, registered on first use and kept, so that a
/// create does not build a labelled key and look it up on every request. The
/// first use is a request, so the recorder (installed by `Application::build`)
/// is in place by then.
fn per_source(
    counters: &'static OnceLock<[Counter; 2]>,
    name: &'static str,
    source: SourceKind,
) -> &'static Counter {
    let [telegram, http] = counters.get_or_init(|| {
        [SourceKind::Telegram, SourceKind::Http]
            .map(|source| metrics::counter!(name, "source" => source.as_str()))
    });
    match source {
        SourceKind::Telegram => telegram,
        SourceKind::Http => http,
    }
}

pub fn create_batch(creates: usize) {
    metrics::histogram!(CREATE_BATCH_SIZE).record(creates as f64);
}

pub fn redis_error() {
    metrics::counter!(REDIS_ERRORS).increment(1);
}

/// Counts one response. `route` is poem's pattern of the matched route
/// (`/api/v1/tasks/:param0`), or `None` when no route matched.
pub fn http_request(method: &str, route: Option<&str>, status: u16) {
    let path = match route {
        // The API's operations are nested at `/`, so a path that matched
        // none of them still carries that nest's empty pattern.
        None | Some("") => UNMATCHED_PATH.to_owned(),
        Some(pattern) => match route_templates().get(pattern) {
            Some(template) => template.clone(),
            None => path_template(pattern),
        },
    };
    metrics::counter!(
        HTTP_REQUESTS,
        "method" => method_label(method),
        "path" => path,
        "status" => status.to_string(),
    )
    .increment(1);
}

/// The `method` label: a standard method as itself, any other as
/// [`OTHER_METHOD`]. Methods are case-sensitive (RFC 9110 §9.1), so `get` is
/// not `GET` and is `other` too; the label set stays at ten values whatever
/// clients send.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => OTHER_METHOD,
    }
}

/// The document's path templates (`/api/v1/tasks/{task_id}`) by the
/// pattern poem-openapi routes them with (`/api/v1/tasks/:param0`: it renames
/// path variables by position), so the label shows the documented name.
fn route_templates() -> &'static HashMap<String, String> {
    static TEMPLATES: OnceLock<HashMap<String, String>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let spec: serde_json::Value = match serde_json::from_str(&crate::openapi_json()) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(%error, "cannot read the OpenAPI document for metric labels");
                return HashMap::new();
            }
        };
        spec["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .keys()
                    .map(|template| (poem_openapi_pattern(template), template.clone()))
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// `/tasks/{task_id}/events` as poem-openapi routes it: `/tasks/:param0/events`.
fn poem_openapi_pattern(template: &str) -> String {
    let mut count = 0;
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                let renamed = format!(":param{count}");
                count += 1;
                renamed
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A pattern outside the document written the way the document would:
/// `:name` and the catch-all `*name` become `{name}`.
fn path_template(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |segment| match segment.strip_prefix(':').or_else(|| segment.strip_prefix('*')) {
                Some(name) if !name.is_empty() => format!("{{{name}}}"),
                _ => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Sets the gauges from one reading of the queue.
fn publish(depth: QueueDepth) {
    let gauge = |state: &'static str, value: u64| {
        metrics::gauge!(QUEUE_DEPTH, "state" => state).set(value as f64);
    };
    gauge("queued", depth.queued);
    gauge("running", depth.running);
    gauge("delayed", depth.delayed);
    metrics::gauge!(JOBS_PENDING).set(depth.jobs_pending as f64);
}

/// `GET /metrics`: the exposition text. When Redis does not answer, the
/// gauges keep their last values and `savestream_redis_errors_total` moves,
/// so the page itself still answers and says what is wrong.
#[handler]
pub async fn metrics_endpoint(state: Data<&AppState>) -> Response {
    match tokio::time::timeout(GAUGE_TIMEOUT, state.store.queue_depth()).await {
        Ok(Ok(depth)) => publish(depth),
        Ok(Err(error)) => {
            redis_error();
            tracing::warn!(%error, "cannot read the queue gauges for /metrics");
        }
        Err(_) => {
            redis_error();
            tracing::warn!("redis did not answer the queue gauges for /metrics in time");
        }
    }
    state
        .metrics
        .render()
        .with_content_type("text/plain; version=0.0.4; charset=utf-8")
        .with_status(StatusCode::OK)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_templates_label_the_routes_poem_openapi_renamed() {
        assert_eq!(
            poem_openapi_pattern("/api/v1/tasks/{task_id}/events"),
            "/api/v1/tasks/:param0/events"
        );
        let templates = route_templates();
        assert_eq!(templates["/api/v1/tasks/:param0"], "/api/v1/tasks/{task_id}");
        assert_eq!(templates["/api/v1/tasks"], "/api/v1/tasks");
        assert_eq!(templates["/api/v1/workers"], "/api/v1/workers");
    }

    #[test]
    fn standard_methods_label_themselves_and_every_other_method_is_other() {
        for method in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(method_label(method), method);
        }
        for method in ["M1", "M2", "PROPFIND", "get", "Post", ""] {
            assert_eq!(method_label(method), OTHER_METHOD, "{method:?}");
        }
    }

    #[test]
    fn route_patterns_become_openapi_templates() {
        assert_eq!(path_template("/api/v1/tasks/:task_id"), "/api/v1/tasks/{task_id}");
        assert_eq!(
            path_template("/api/v1/tasks/:task_id/events"),
            "/api/v1/tasks/{task_id}/events"
        );
        assert_eq!(path_template("/docs/*path"), "/docs/{path}");
        assert_eq!(path_template("/health"), "/health");
    }
}
