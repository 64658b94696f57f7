//! What a running worker shows about itself, in process: the registry of
//! live workers (`Store::workers`), `/metrics` in Prometheus text format,
//! and which loops each `Role` runs.
//!
//! The metrics recorder is global to a process, and the tests of this file
//! share one: counter checks compare a scrape after with a scrape before,
//! and accept more (another test's task) but never less.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use savestream_shared::config::{Config, QueueConfig, RedisConfig};
use savestream_shared::store::{NewTask, Store, WorkerInfo};
use savestream_shared::task::{SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, RedisServer};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_worker::{Application, Role, RunError, StartupError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "test";

struct Harness {
    redis: RedisServer,
    store: Store,
    files: FileServer,
    storage_dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let redis = RedisServer::start();
        let store = Store::connect(
            &RedisConfig {
                url: redis.url(),
                prefix: PREFIX.into(),
                startup_wait_seconds: 0,
            },
            &QueueConfig {
                lease_seconds: 5,
                retention_hours: 1,
            },
        )
        .await
        .expect("connecting to the test redis");
        Harness {
            redis,
            store,
            files: FileServer::start().await,
            storage_dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// A config with `extra` appended: `[api]` and `[worker]` are written
    /// here, so `extra` adds keys through `api_extra` and `worker_extra`.
    fn config(&self, api_extra: &str, worker_extra: &str) -> Config {
        let text = format!(
            r#"workers = 2
retry = 1

[api]
token = "metrics-test"
{api_extra}

[redis]
url = "{redis}"
prefix = "{PREFIX}"

[queue]
lease_seconds = 5

[http]
allow_private_networks = true

[worker]
shutdown_grace_seconds = 5
{worker_extra}

[[storages]]
name = "local1"
type = "local"
base_path = "{storage}"

[[users]]
id = 1
storages = ["local1"]
"#,
            redis = self.redis.url(),
            storage = self.storage_dir.path().display(),
        );
        Config::from_toml_str(&text, "test.toml", Vec::new())
            .expect("the test config loads")
            .config
    }

    async fn create(&self, path_on_server: &str) -> TaskId {
        let task_id = TaskId::generate();
        let link = self.files.url(path_on_server);
        self.store
            .create(
                &NewTask {
                    task_id: task_id.clone(),
                    source: SourceKind::Http,
                    link: link.clone(),
                    user_id: 1,
                    storage: "local1".into(),
                    dir: "/".into(),
                    title: title::pending(SourceKind::Http, &link, "local1", "/"),
                },
                None,
            )
            .await
            .expect("creating a task");
        task_id
    }

    async fn wait_for(&self, task_id: &TaskId, status: TaskStatus) {
        eventually(
            &format!("task {task_id} to be {status}"),
            Duration::from_secs(15),
            || async {
                let record = self.store.get(task_id).await.unwrap()?;
                (record.task.status == status).then_some(())
            },
        )
        .await
    }

    /// The registry entry named `name`, once it shows up.
    async fn registered(&self, name: &str) -> WorkerInfo {
        eventually(
            &format!("{name} to register"),
            Duration::from_secs(10),
            || async {
                self.store
                    .workers()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|info| info.name == name)
            },
        )
        .await
    }
}

/// A worker running in this process.
struct Worker {
    consumer: String,
    metrics: Option<SocketAddr>,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
}

impl Worker {
    async fn start(config: Config, role: Role) -> Worker {
        let application = Application::build_with_role(config, role)
            .await
            .expect("the worker starts");
        let consumer = application.consumer().to_owned();
        let metrics = application.metrics_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));
        Worker {
            consumer,
            metrics,
            stop,
            handle,
        }
    }

    async fn shut_down(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("the worker stops in time")
            .expect("the worker does not panic")
            .expect("the worker stops only when told to");
    }
}

/// One sample of a scrape: its name with its labels, sorted, as the key.
type Samples = BTreeMap<String, f64>;

/// Checks every line of `text` against the Prometheus text exposition
/// format (version 0.0.4) and returns the samples. Strict on purpose: a
/// line that a scraper would reject fails the test with that line.
fn parse_exposition(text: &str) -> Samples {
    fn is_metric_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn is_label_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
    fn is_value(text: &str) -> bool {
        matches!(text, "+Inf" | "-Inf" | "NaN") || text.parse::<f64>().is_ok()
    }
    /// Parses `a="x",b="y"` (escapes `\\`, `\"`, `\n`); `None` when malformed.
    fn labels(text: &str) -> Option<Vec<(String, String)>> {
        let mut labels = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"")?;
            if !is_label_name(name) {
                return None;
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (index, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return None,
                    },
                    '"' => break index,
                    '\n' => return None,
                    c => value.push(c),
                }
            };
            labels.push((name.to_owned(), value));
            rest = &after[end + 1..];
            rest = match rest.strip_prefix(',') {
                Some(more) => more,
                None if rest.is_empty() => rest,
                None => return None,
            };
        }
        Some(labels)
    }

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(_)) if is_metric_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if is_metric_name(name) => {
                    assert!(
                        matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped"),
                        "unknown type: {line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "second TYPE: {line}"
                    );
                }
                _ => panic!("not a valid comment line: {line:?}"),
            }
            continue;
        }
        let (series, value) = match line.split_once('}') {
            Some((head, tail)) => {
                let (name, label_text) = head
                    .split_once('{')
                    .unwrap_or_else(|| panic!("no '{{': {line:?}"));
                assert!(is_metric_name(name), "bad metric name: {line:?}");
                let mut parsed = labels(label_text).unwrap_or_else(|| panic!("bad labels: {line:?}"));
                parsed.sort();
                let shown: Vec<String> = parsed.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let value = tail
                    .strip_prefix(' ')
                    .unwrap_or_else(|| panic!("no value: {line:?}"));
                (format!("{name}{{{}}}", shown.join(",")), value)
            }
            None => {
                let (name, value) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("no value: {line:?}"));
                assert!(is_metric_name(name), "bad metric name: {line:?}");
                (name.to_owned(), value)
            }
        };
        let mut parts = value.split(' ');
        let number = parts.next().unwrap_or_default();
        assert!(is_value(number), "bad value: {line:?}");
        if let Some(timestamp) = parts.next() {
            assert!(timestamp.parse::<i64>().is_ok(), "bad timestamp: {line:?}");
        }
        assert!(parts.next().is_none(), "trailing text: {line:?}");
        let base = series.split('{').next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                base.strip_suffix(suffix)
                    .filter(|family| types.contains_key(*family))
            })
            .unwrap_or(base);
        assert!(
            types.contains_key(family),
            "a sample without a TYPE line: {line:?}"
        );
        let value = match number {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            number => number.parse().unwrap_or_default(),
        };
        samples.insert(series, value);
    }
    samples
}

async fn scrape(address: SocketAddr) -> (String, Samples) {
    let url = format!("http://127.0.0.1:{}/metrics", address.port());
    let response = reqwest::get(&url).await.expect("scraping /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("the metrics text");
    let samples = parse_exposition(&text);
    (text, samples)
}

fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_when_a_task_completes() {
    let harness = Harness::start().await;
    harness.files.add("/m.bin", ServedFile::new(vec![3u8; 40_000]));
    let worker = Worker::start(harness.config("", "metrics_port = 0"), Role::All).await;
    let address = worker.metrics.expect("metrics_port is set");
    assert_ne!(address.port(), 0, "the bound port is reported");
    // The gauges are sampled when the worker starts.
    let before = eventually("the queue gauges", Duration::from_secs(10), || async {
        let (_, samples) = scrape(address).await;
        samples.contains_key("savestream_jobs_pending").then_some(samples)
    })
    .await;

    let task_id = harness.create("/m.bin").await;
    harness.wait_for(&task_id, TaskStatus::Completed).await;
    let (text, after) = eventually("the counters to move", Duration::from_secs(5), || async {
        let (text, samples) = scrape(address).await;
        (value(&samples, "savestream_tasks_completed_total{source=http}")
            > value(&before, "savestream_tasks_completed_total{source=http}"))
        .then_some((text, samples))
    })
    .await;

    let moved = |series: &str, by: f64| {
        let delta = value(&after, series) - value(&before, series);
        assert!(
            delta >= by,
            "{series} moved by {delta}, expected at least {by}:\n{text}"
        );
    };
    moved("savestream_tasks_started_total{source=http}", 1.0);
    moved("savestream_tasks_completed_total{source=http}", 1.0);
    moved("savestream_downloaded_bytes_total{source=http}", 40_000.0);
    moved("savestream_task_wait_seconds_count{source=http}", 1.0);
    moved("savestream_task_run_seconds_count{source=http}", 1.0);
    assert!(
        after.contains_key("savestream_task_run_seconds_bucket{le=+Inf,source=http}"),
        "{text}"
    );
    for state in ["queued", "running", "delayed"] {
        assert!(
            after.contains_key(&format!("savestream_queue_depth{{state={state}}}")),
            "{state}:\n{text}"
        );
    }
    // Every family says what it is: a scraper shows the HELP text beside it.
    let named = |kind: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(&format!("# {kind} ")))
            .filter_map(|rest| rest.split(' ').next().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        named("HELP"),
        named("TYPE"),
        "families without a HELP line:\n{text}"
    );
    assert!(named("TYPE").contains("savestream_storage_usable"), "{text}");
    assert!(!text.contains(task_id.as_str()), "no task id in the metrics");
    assert!(!text.contains("/m.bin"), "no link in the metrics");
    let not_found = reqwest::get(format!("http://127.0.0.1:{}/other", address.port()))
        .await
        .unwrap();
    assert_eq!(not_found.status(), 404);
    worker.shut_down().await;
}

#[tokio::test]
async fn metrics_listen_on_the_configured_address_and_a_taken_one_stops_the_start() {
    let harness = Harness::start().await;
    let worker = Worker::start(
        harness.config("", "metrics_port = 0\nmetrics_host = \"127.0.0.1\""),
        Role::All,
    )
    .await;
    let address = worker.metrics.expect("metrics_port is set");
    assert_eq!(address.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    let (text, _) = scrape(address).await;
    assert!(text.contains("savestream_tasks_started_total"), "{text}");

    // The address is taken (by this worker): a second start names it.
    let extra = format!("metrics_port = {}\nmetrics_host = \"127.0.0.1\"", address.port());
    let refused = Application::build_with_role(harness.config("", &extra), Role::All).await;
    let error = refused
        .err()
        .expect("a taken address stops the start")
        .to_string();
    assert!(error.contains(&address.to_string()), "{error}");
    assert!(error.contains("metrics_host and metrics_port"), "{error}");
    worker.shut_down().await;
}

#[test]
fn the_exposition_check_refuses_what_a_scraper_would() {
    let valid = "# HELP a_total A counter\n# TYPE a_total counter\na_total{source=\"http\"} 3\n\n\
                 # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let samples = parse_exposition(valid);
    assert_eq!(samples.get("a_total{source=http}"), Some(&3.0));
    assert_eq!(samples.get("h_count"), Some(&1.0));
    for invalid in [
        "a_total 3\n",                             // no TYPE
        "# TYPE a counter\na{source=http} 1\n",    // unquoted label
        "# TYPE a counter\na 1 2 3\n",             // trailing text
        "# TYPE a counter\na one\n",               // not a number
        "# TYPE 1a counter\n",                     // bad name
        "# TYPE a counter\na{x=\"1\"y=\"2\"} 1\n", // missing comma
        "# TYPE a thing\n",                        // unknown type
        "# comment without a keyword\n",           // free text
    ] {
        let outcome = std::panic::catch_unwind(|| parse_exposition(invalid));
        assert!(outcome.is_err(), "accepted: {invalid:?}");
    }
}

#[tokio::test]
async fn a_worker_registers_with_what_it_holds_and_leaves_the_registry_when_it_stops() {
    let harness = Harness::start().await;
    harness.files.add(
        "/slow.bin",
        ServedFile::new(vec![9u8; 400_000]).throttled(100_000),
    );
    let worker = Worker::start(harness.config("", ""), Role::All).await;
    let info = harness.registered(&worker.consumer).await;
    assert_eq!(info.role, "all");
    assert_eq!(info.slots, 2);
    assert_eq!(info.pid, std::process::id());
    assert!(!info.host.is_empty());
    assert!(info.name.contains(&format!("-{}-", info.pid)), "{info:?}");
    assert!(info.tasks.is_empty());

    let task_id = harness.create("/slow.bin").await;
    eventually(
        "the registry to show the held task",
        Duration::from_secs(10),
        || async {
            let workers = harness.store.workers().await.unwrap();
            workers
                .iter()
                .any(|info| info.name == worker.consumer && info.tasks == vec![task_id.to_string()])
                .then_some(())
        },
    )
    .await;
    harness.wait_for(&task_id, TaskStatus::Completed).await;

    let name = worker.consumer.clone();
    worker.shut_down().await;
    let workers = harness.store.workers().await.unwrap();
    assert!(
        workers.iter().all(|info| info.name != name),
        "a stopped worker leaves the registry: {workers:?}"
    );
}

#[tokio::test]
async fn roles_decide_what_a_worker_runs() {
    let harness = Harness::start().await;
    let with_webhook = "webhook_url = \"http://127.0.0.1:9/hook\"";

    let all = Application::build_with_role(harness.config(with_webhook, ""), Role::All)
        .await
        .unwrap();
    assert!(
        all.runs_dispatcher(),
        "all runs the dispatcher when a webhook_url is set"
    );
    let tasks = Application::build_with_role(harness.config(with_webhook, ""), Role::Tasks)
        .await
        .unwrap();
    assert!(!tasks.runs_dispatcher());
    let without_url = Application::build_with_role(harness.config("", ""), Role::All)
        .await
        .unwrap();
    assert!(!without_url.runs_dispatcher(), "nothing to deliver to");
    let refused = Application::build_with_role(harness.config("", ""), Role::Webhooks).await;
    assert!(matches!(refused, Err(StartupError::NothingToRun)));

    // A webhooks-only worker registers as such, holding no slots, and stops
    // with the others' shutdown.
    let webhooks = Worker::start(harness.config(with_webhook, ""), Role::Webhooks).await;
    let info = harness.registered(&webhooks.consumer).await;
    assert_eq!(info.role, "webhooks");
    assert_eq!(info.slots, 0);
    webhooks.shut_down().await;
}
