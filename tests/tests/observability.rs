//! Black-box tests of what an operator sees of a running API: `/metrics` in
//! the Prometheus text format, its counters moving with the requests and its
//! gauges with the queue, and `GET /api/v1/workers` listing the live workers.
//!
//! The exposition text is read by a strict parser written here: every line
//! must follow the text format's grammar (0.0.4), or the test fails. (The
//! `prometheus-parse` crate was tried first: it cuts a label value at the
//! first `}`, so it cannot read `path="/api/v1/tasks/{task_id}"`, which the
//! format allows and Prometheus reads.)

use std::collections::BTreeMap;
use std::time::Duration;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::store::{Store, WorkerInfo};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{TestApp, TestOptions, TEST_USER};
use serde_json::json;

const TOKEN: &str = "metrics-test-token-90aa";
const STEP: Duration = Duration::from_secs(20);

async fn spawn_app(workers: usize) -> TestApp {
    TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        workers,
        ..TestOptions::default()
    })
    .await
}

/// A scrape: the samples by `name{label="value",...}` (labels sorted), after
/// checking the page line by line.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of a sample, 0 when the series does not exist yet (as
    /// Prometheus' `rate` treats a counter that has not been touched).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(&series(name, labels)).copied().unwrap_or(0.0)
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// `GET /metrics` without a token (scrapers do not carry one).
async fn scrape(app: &TestApp) -> Scrape {
    let response = reqwest::get(app.url("/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content type: {content_type}"
    );
    let text = response.text().await.expect("reading /metrics");
    let samples = parse_exposition_text(&text);
    Scrape { text, samples }
}

/// The samples of a page, by series. Every line must be a `# HELP`, a
/// `# TYPE` or a sample of the text format (0.0.4), metric and label names
/// legal, label values properly escaped, every sample's family typed before
/// it, no series twice, and the page must end with a newline.
fn parse_exposition_text(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the page ends with a newline");
    let is_name = |name: &str, colons: bool| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_' || (colons && first == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    };
    let mut typed: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(is_name(name, true), "bad metric name in: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            assert_eq!(parts.len(), 2, "bad TYPE line: {line}");
            assert!(is_name(parts[0], true), "bad metric name in: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&parts[1]),
                "bad type in: {line}"
            );
            typed.push(parts[0].to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "a comment that is neither HELP nor TYPE: {line}"
        );
        let (series_text, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("a sample without a value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            number => number.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let (name, labels) = match series_text.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (name, Some(labels))
            }
            None => (series_text, None),
        };
        assert!(is_name(name, true), "bad metric name in: {line}");
        assert!(
            typed.iter().any(|family| name == family
                || name
                    .strip_prefix(family.as_str())
                    .is_some_and(|suffix| { ["_bucket", "_sum", "_count"].contains(&suffix) })),
            "a sample before its TYPE line: {line}"
        );
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut labels = labels.unwrap_or_default();
        // label="value" pairs, separated by commas; values may hold escaped quotes.
        while !labels.is_empty() {
            let (label, rest) = labels
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in: {line}"));
            assert!(is_name(label, false), "bad label name `{label}` in: {line}");
            let mut end = None;
            let mut escaped = false;
            for (index, c) in rest.char_indices() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(index);
                        break;
                    }
                    (true, 'n' | '\\' | '"') => escaped = false,
                    (true, other) => panic!("bad escape \\{other} in: {line}"),
                    (false, '\n') => panic!("raw newline in a label value: {line}"),
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unclosed label value in: {line}"));
            pairs.push((label.to_owned(), rest[..end].to_owned()));
            labels = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
        }
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(label, value)| (label.as_str(), value.as_str()))
            .collect();
        let key = series(name, &pairs);
        assert!(samples.insert(key, value).is_none(), "a series twice: {line}");
    }
    samples
}

async fn create(app: &TestApp, body: serde_json::Value) -> String {
    let (status, reply) = app.create_task(body).await;
    assert_eq!(status, 201, "{reply}");
    reply["task_id"].as_str().expect("a task id").to_owned()
}

#[tokio::test]
async fn a_batch_create_counts_each_new_task_once_and_a_repeat_counts_none() {
    let app = spawn_app(0).await;
    let batch = json!({ "tasks": [
        { "url": "https://example.com/a.zip", "user_id": TEST_USER },
        { "url": "https://example.com/b.zip", "user_id": TEST_USER },
        { "telegram_url": "https://t.me/channel/1", "user_id": TEST_USER },
    ]});
    let post = || {
        app.client
            .post(app.url("/api/v1/tasks/batch"))
            .header("Idempotency-Key", "metrics-batch")
            .json(&batch)
            .send()
    };
    let before = scrape(&app).await;

    let first = post().await.expect("POST a batch");
    let after_first = scrape(&app).await;
    let repeat = post().await.expect("POST the batch again");
    let after_repeat = scrape(&app).await;

    assert_eq!(first.status(), 201);
    assert_eq!(repeat.status(), 200);
    let created =
        |scrape: &Scrape, source: &str| scrape.value("savestream_tasks_created_total", &[("source", source)]);
    assert_eq!(created(&after_first, "http") - created(&before, "http"), 2.0);
    assert_eq!(
        created(&after_first, "telegram") - created(&before, "telegram"),
        1.0
    );
    assert_eq!(created(&after_repeat, "http"), created(&after_first, "http"));
    assert_eq!(
        created(&after_repeat, "telegram"),
        created(&after_first, "telegram")
    );
}

#[tokio::test]
async fn metrics_is_prometheus_text_and_its_counters_move_with_creates_and_cancels() {
    // Arrange: no worker, so created tasks stay queued.
    let app = spawn_app(0).await;
    let before = scrape(&app).await;

    // Act: two direct links and one Telegram link created, one canceled.
    let first = create(
        &app,
        json!({ "url": "https://example.com/a.zip", "user_id": TEST_USER }),
    )
    .await;
    create(
        &app,
        json!({ "url": "https://example.com/b.zip", "user_id": TEST_USER }),
    )
    .await;
    create(
        &app,
        json!({ "telegram_url": "https://t.me/channel/1", "user_id": TEST_USER }),
    )
    .await;
    let canceled = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{first}")))
        .send()
        .await
        .expect("DELETE a task");
    assert_eq!(canceled.status(), 200);
    let after = scrape(&app).await;

    // Assert
    let moved = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    assert_eq!(
        moved("savestream_tasks_created_total", &[("source", "http")]),
        2.0
    );
    assert_eq!(
        moved("savestream_tasks_created_total", &[("source", "telegram")]),
        1.0
    );
    assert_eq!(
        moved("savestream_tasks_canceled_total", &[("source", "http")]),
        1.0
    );
    let requests = "savestream_http_requests_total";
    assert_eq!(
        moved(
            requests,
            &[("method", "POST"), ("path", "/api/v1/tasks"), ("status", "201")]
        ),
        3.0
    );
    assert_eq!(
        moved(
            requests,
            &[
                ("method", "DELETE"),
                ("path", "/api/v1/tasks/{task_id}"),
                ("status", "200")
            ]
        ),
        1.0,
        "the path label is the route's template, never a task id:\n{}",
        after.text
    );
    assert_eq!(
        moved(
            requests,
            &[("method", "GET"), ("path", "/metrics"), ("status", "200")]
        ),
        1.0
    );
    // One after another, each create is a store call of its own.
    assert_eq!(moved("savestream_create_batch_size_count", &[]), 3.0);
    assert_eq!(moved("savestream_create_batch_size_sum", &[]), 3.0);
    assert!(
        !after.text.contains(&first),
        "no task id in /metrics:\n{}",
        after.text
    );
    assert_eq!(after.value("savestream_queue_depth", &[("state", "queued")]), 2.0);
    assert_eq!(
        after.value("savestream_queue_depth", &[("state", "running")]),
        0.0
    );
    assert_eq!(
        after.value("savestream_queue_depth", &[("state", "delayed")]),
        0.0
    );
    assert_eq!(after.value("savestream_jobs_pending", &[]), 0.0);
    for family in [
        "savestream_tasks_created_total",
        "savestream_tasks_canceled_total",
        "savestream_http_requests_total",
        "savestream_queue_depth",
        "savestream_jobs_pending",
    ] {
        assert!(
            after.text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line"
        );
    }
}

#[tokio::test]
async fn metrics_needs_no_token_is_not_in_the_openapi_document_and_counts_refusals() {
    let app = spawn_app(0).await;

    let refused = reqwest::get(app.url("/api/v1/tasks"))
        .await
        .expect("GET without a token");
    let unknown = reqwest::get(app.url("/wp-login.php"))
        .await
        .expect("GET an unknown path");
    let spec: serde_json::Value = reqwest::get(app.url("/openapi.json"))
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("the spec is JSON");
    let scrape = scrape(&app).await;

    assert_eq!(refused.status(), 401);
    assert_eq!(unknown.status(), 404);
    assert!(
        spec["paths"].get("/metrics").is_none(),
        "/metrics is not an operation of the API"
    );
    let requests = "savestream_http_requests_total";
    assert_eq!(
        scrape.value(
            requests,
            &[("method", "GET"), ("path", "/api/v1/tasks"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            requests,
            &[("method", "GET"), ("path", "unmatched"), ("status", "404")]
        ),
        1.0,
        "unknown paths share one series:\n{}",
        scrape.text
    );
}

#[tokio::test]
async fn made_up_http_methods_share_one_other_series_in_metrics() {
    // Arrange: no token is sent, as a stranger on the network would not.
    let app = spawn_app(0).await;
    let made_up = ["M1", "M2", "M3", "PROPFIND", "get"];

    // Act: each made-up method on the same route, so only the method differs.
    let mut statuses = Vec::new();
    for name in made_up {
        let method = reqwest::Method::from_bytes(name.as_bytes()).expect("a valid method token");
        let response = reqwest::Client::new()
            .request(method, app.url("/api/v1/tasks"))
            .send()
            .await
            .unwrap_or_else(|error| panic!("{name} /api/v1/tasks: {error}"));
        statuses.push(response.status().as_u16());
    }
    let scrape = scrape(&app).await;

    // Assert: one series labelled `other` carries all of them, and no
    // series is labelled with a name a client made up.
    assert!(
        statuses.windows(2).all(|pair| pair[0] == pair[1]),
        "every made-up method is answered alike: {statuses:?}"
    );
    let other_series: Vec<(&String, &f64)> = scrape
        .samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with("savestream_http_requests_total{") && series.contains("method=\"other\"")
        })
        .collect();
    assert_eq!(
        other_series.len(),
        1,
        "one method=\"other\" series:\n{}",
        scrape.text
    );
    assert_eq!(*other_series[0].1, made_up.len() as f64, "{}", scrape.text);
    for name in made_up {
        assert!(
            !scrape.text.contains(&format!("method=\"{name}\"")),
            "no series for the made-up method {name}:\n{}",
            scrape.text
        );
    }
}

#[tokio::test]
async fn redis_errors_are_counted_and_metrics_still_answers_without_redis() {
    let mut app = spawn_app(0).await;
    let before = scrape(&app).await.value("savestream_redis_errors_total", &[]);

    app.redis.kill();
    let unavailable = app
        .client
        .get(app.url("/api/v1/tasks"))
        .send()
        .await
        .expect("GET /api/v1/tasks");
    let after = scrape(&app).await;

    assert_eq!(unavailable.status(), 503);
    // The failed list, and the scrape's own failed read of the gauges.
    assert!(
        after.value("savestream_redis_errors_total", &[]) >= before + 2.0,
        "{}",
        after.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gauges_follow_a_task_from_queued_to_running_to_done() {
    // Arrange: a task queued while no worker runs, of a download slow
    // enough to be seen running.
    let mut app = spawn_app(0).await;
    let files = FileServer::start().await;
    files.add(
        "/slow.bin",
        ServedFile::new(vec![7u8; 300_000]).throttled(150_000),
    );
    let task_id = create(
        &app,
        json!({ "url": files.url("/slow.bin"), "user_id": TEST_USER }),
    )
    .await;
    let queued = scrape(&app).await;
    assert_eq!(
        queued.value("savestream_queue_depth", &[("state", "queued")]),
        1.0
    );
    assert_eq!(
        queued.value("savestream_queue_depth", &[("state", "running")]),
        0.0
    );

    // Act: a worker takes it.
    app.start_worker();

    // Assert: running, with its work item pending, then neither.
    eventually("the task to show as running and pending", STEP, || async {
        let scrape = scrape(&app).await;
        (scrape.value("savestream_queue_depth", &[("state", "queued")]) == 0.0
            && scrape.value("savestream_queue_depth", &[("state", "running")]) == 1.0
            && scrape.value("savestream_jobs_pending", &[]) == 1.0)
            .then_some(())
    })
    .await;
    app.wait_for_status(&task_id, "completed", STEP).await;
    let done = scrape(&app).await;
    assert_eq!(done.value("savestream_queue_depth", &[("state", "running")]), 0.0);
    assert_eq!(done.value("savestream_jobs_pending", &[]), 0.0);
}

/// A store on the app's Redis, to write the registry as a worker does.
async fn store(app: &TestApp) -> Store {
    Store::connect(
        &RedisConfig {
            url: app.redis.url(),
            prefix: "savestream".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: app.options.lease_seconds,
            retention_hours: 1,
        },
    )
    .await
    .expect("connecting to the app's redis")
}

#[tokio::test]
async fn workers_lists_registered_workers_with_their_fields() {
    // Arrange: a registry entry as a busy worker process writes it.
    let app = spawn_app(0).await;
    let info = WorkerInfo {
        name: "box1-4242-d4mq2nk0h9pc73b0qpcg".to_owned(),
        host: "box1".to_owned(),
        pid: 4242,
        role: "all".to_owned(),
        slots: 3,
        tasks: vec!["d4mq2nk0h9pc73b0qpag".to_owned()],
        started_at: 1_705_636_800_000,
        seen_at: 0,
    };
    store(&app)
        .await
        .register_worker(&info)
        .await
        .expect("registering a worker");

    // Act: through the generated client, and without a token.
    let client = savestream_client::with_token(&app.base_url(), TOKEN).expect("a client");
    let listed = client
        .list_workers()
        .send()
        .await
        .expect("GET /api/v1/workers")
        .into_inner();
    let anonymous = reqwest::get(app.url("/api/v1/workers"))
        .await
        .expect("GET without a token");

    // Assert
    assert_eq!(anonymous.status(), 401);
    assert_eq!(listed.workers.len(), 1);
    let worker = &listed.workers[0];
    assert_eq!(worker.name, info.name);
    assert_eq!(worker.host, "box1");
    assert_eq!(worker.pid, 4242);
    assert_eq!(worker.role, "all");
    assert_eq!(worker.slots, 3);
    assert_eq!(worker.tasks, info.tasks);
    assert_eq!(worker.started_at, "2024-01-19T04:00:00Z");
    let seen = chrono::DateTime::parse_from_rfc3339(&worker.seen_at).expect("seen_at is RFC 3339");
    let age = chrono::Utc::now().signed_duration_since(seen);
    assert!(
        age.num_seconds().abs() < 60,
        "seen_at is the registration time: {}",
        worker.seen_at
    );
}

#[tokio::test]
async fn workers_lists_a_running_worker_process_by_its_pid() {
    let app = spawn_app(1).await;
    let pid = app.workers[0].pid();
    let client = savestream_client::with_token(&app.base_url(), TOKEN).expect("a client");

    let worker = eventually("the worker process to register itself", STEP, || async {
        let listed = client.list_workers().send().await.ok()?.into_inner();
        listed.workers.into_iter().find(|worker| worker.pid == pid)
    })
    .await;

    assert!(worker.slots >= 1, "{worker:?}");
    assert!(
        worker.tasks.is_empty(),
        "an idle worker holds no task: {worker:?}"
    );
}
