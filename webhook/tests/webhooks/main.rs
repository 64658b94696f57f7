//! The webhook dispatcher end to end: a private redis-server, tasks driven to
//! their end through the real store API, dispatchers running in-process, and
//! a real HTTP receiver on loopback (`receiver.rs`) that records what
//! arrives and answers from a script.
//!
//! Nothing here sleeps to synchronise: tests wait on observable state with
//! `eventually` (the delivery's state in Redis, what the receiver recorded).

mod receiver;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use savestream_shared::config::{Config, QueueConfig, RedisConfig, Secret};
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::webhooks::{TaskWebhook, WebhookState};
use savestream_shared::store::{NewTask, Store, StoreError};
use savestream_shared::task::{rfc3339, SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, free_port, RedisServer};
use savestream_webhook::dispatcher::webhook_id;
use savestream_webhook::{Dispatcher, DispatcherOptions, WebhookError};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

use receiver::{Receiver, Recorded, Reply};

const WORKER: &str = "test-worker";
const TOKEN: &str = "your-secret-token-here";
const WAIT: Duration = Duration::from_secs(20);

/// How a test task ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Complete,
    Fail,
    Cancel,
}

struct Harness {
    /// The private server: dropping it kills it; `redis_cli` reaches it by port.
    redis: RedisServer,
    store: Store,
    /// A second connection for the blocking job reads of the fake worker.
    reader: Store,
}

impl Harness {
    async fn start() -> Harness {
        let redis = RedisServer::start();
        let store = Store::connect(
            &RedisConfig {
                url: redis.url(),
                prefix: "test".into(),
                startup_wait_seconds: 0,
            },
            &QueueConfig {
                lease_seconds: 30,
                retention_hours: 1,
            },
        )
        .await
        .expect("connecting to the test redis");
        store.ensure_group().await.expect("creating the workers group");
        store
            .ensure_webhooks_group()
            .await
            .expect("creating the webhooks group before any task ends");
        let reader = store.with_own_connection().await.expect("a second connection");
        Harness { redis, store, reader }
    }

    /// Creates a task and ends it the given way, as a worker (or the API,
    /// for a cancel) would.
    async fn finish_task(&self, end: End) -> TaskId {
        let task_id = self.create().await;
        self.end(&task_id, end).await;
        task_id
    }

    async fn create(&self) -> TaskId {
        let task_id = TaskId::generate();
        let link = "https://t.me/channel/123";
        let new_task = NewTask {
            task_id: task_id.clone(),
            source: SourceKind::Telegram,
            link: link.into(),
            user_id: 123456789,
            storage: "local1".into(),
            dir: "/downloads".into(),
            title: title::pending(SourceKind::Telegram, link, "local1", "/downloads"),
        };
        self.store.create(&new_task, None).await.expect("creating a task");
        task_id
    }

    async fn end(&self, task_id: &TaskId, end: End) {
        if let End::Cancel = end {
            self.store
                .cancel(task_id)
                .await
                .expect("canceling the queued task");
            return;
        }
        let jobs = self
            .reader
            .read_jobs(WORKER, 1, Duration::from_secs(1))
            .await
            .expect("reading jobs");
        let job = jobs.into_iter().next().expect("a work item is waiting");
        assert_eq!(
            job.task_id.as_ref().ok(),
            Some(task_id),
            "tasks are ended in order"
        );
        let lease = self
            .store
            .start(&job.job_id, task_id, WORKER)
            .await
            .expect("starting the task");
        match end {
            End::Complete => self
                .store
                .complete(&lease, Some(42), "/downloads/file.pdf")
                .await
                .expect("completing the task"),
            End::Fail => self
                .store
                .fail(&lease, "the message has no file")
                .await
                .expect("failing the task"),
            End::Cancel => unreachable!("handled above"),
        }
    }

    /// Runs one command on the test Redis through `redis-cli` (installed
    /// beside the `redis-server` the harness runs), for what the store
    /// deliberately cannot do: write a hash by hand, read a group's
    /// pending entries. Answers the raw reply, trimmed.
    fn redis_cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(self.redis.port().to_string())
            .args(args)
            .output()
            .expect("running redis-cli (it comes with redis-server)");
        assert!(output.status.success(), "redis-cli {args:?} failed: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// How many events the `webhooks` group has read and not acknowledged.
    fn webhook_events_pending(&self) -> usize {
        let events = self.store.keys().events();
        let summary = self.redis_cli(&["XPENDING", &events, "webhooks"]);
        let count = summary.lines().next().unwrap_or_default();
        count
            .parse()
            .unwrap_or_else(|_| panic!("XPENDING answered {summary:?}"))
    }

    /// Creates and ends `count` tasks, all created first (so the work items
    /// are read in creation order).
    async fn finish_tasks(&self, count: usize) -> Vec<TaskId> {
        let mut task_ids = Vec::new();
        for _ in 0..count {
            task_ids.push(self.create().await);
        }
        for task_id in &task_ids {
            self.end(task_id, End::Complete).await;
        }
        task_ids
    }

    /// Ends `count` tasks (as [`Harness::finish_tasks`]) and has
    /// `dispatcher` record a delivery for each: all due, none tried yet.
    async fn deliveries_due(&self, dispatcher: &Dispatcher, count: usize) -> Vec<TaskId> {
        let reader = self.store.with_own_connection().await.unwrap();
        let task_ids = self.finish_tasks(count).await;
        let ingested = dispatcher
            .ingest(&reader, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(ingested.enqueued, count);
        task_ids
    }

    /// The webhook id of the task's terminal event.
    async fn webhook_id_of(&self, task_id: &TaskId) -> String {
        let events = self
            .store
            .events(task_id)
            .await
            .expect("reading the task's events");
        let terminal = events.last().expect("an ended task has events");
        webhook_id(task_id, &terminal.id)
    }

    /// The exact body `GET /api/v1/tasks/{id}` fields give.
    async fn expected_body(&self, task_id: &TaskId) -> String {
        let task = self
            .store
            .get(task_id)
            .await
            .unwrap()
            .expect("the task exists")
            .task;
        format!(
            r#"{{"task_id":"{}","status":"{}","title":{},"created_at":"{}","error":{}}}"#,
            task.id,
            task.status,
            serde_json::to_string(&task.title).unwrap(),
            rfc3339(task.created_at),
            serde_json::to_string(&task.error).unwrap(),
        )
    }

    async fn task_webhook(&self, task_id: &TaskId) -> Option<TaskWebhook> {
        self.store
            .task_webhook(task_id)
            .await
            .expect("reading the task's webhook")
    }

    /// Waits until the task's delivery reaches `state`.
    async fn wait_for_state(&self, task_id: &TaskId, state: WebhookState) -> TaskWebhook {
        eventually(
            &format!("task {task_id}'s webhook to be {state:?}"),
            WAIT,
            || async {
                self.task_webhook(task_id)
                    .await
                    .filter(|webhook| webhook.state == state)
            },
        )
        .await
    }

    fn config(&self, url: &str, secret: Option<&str>) -> Config {
        let mut config = Config::default();
        config.api.webhook_url = Some(Url::parse(url).expect("a valid test URL"));
        config.api.token = Secret::new(TOKEN);
        config.api.webhook_secret = secret.map(Secret::new);
        config
    }

    /// Starts a dispatcher in-process; the handle's task is the dispatcher,
    /// so aborting it kills the dispatcher with its tries in flight.
    fn spawn(&self, config: &Config, options: DispatcherOptions) -> Running {
        let dispatcher =
            Dispatcher::with_options(self.store.clone(), config, options).expect("a valid dispatcher");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(dispatcher.run(shutdown.clone()));
        Running { handle, shutdown }
    }
}

struct Running {
    handle: JoinHandle<Result<(), WebhookError>>,
    shutdown: CancellationToken,
}

impl Running {
    /// A crash: the dispatcher and its tries in flight vanish mid-way.
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    async fn stop(self) -> Result<(), WebhookError> {
        self.shutdown.cancel();
        self.handle.await.expect("the dispatcher task does not panic")
    }
}

/// Options for tests: retries after 10-40 ms, a 1-minute span, quick polls.
fn fast(config: &Config) -> DispatcherOptions {
    DispatcherOptions {
        backoff_first: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        span: Duration::from_secs(60),
        request_timeout: Duration::from_secs(5),
        lease: Duration::from_secs(10),
        idle_poll: Duration::from_millis(50),
        ..DispatcherOptions::from_config(config)
    }
}

async fn wait_for_requests(receiver: &Receiver, count: usize) -> Vec<Recorded> {
    eventually(&format!("{count} requests at the receiver"), WAIT, || async {
        let requests = receiver.requests();
        (requests.len() >= count).then_some(requests)
    })
    .await
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A verifier written from the Standard Webhooks spec, as a receiver would
/// write it: the key is the base64 after an optional `whsec_` (savestream
/// requires the prefix; the spec's libraries accept it); the signed content is
/// `{id}.{timestamp}.{body}`; the header holds space-separated `v1,<base64>`
/// signatures, any of which may match; the timestamp must be within 5
/// minutes of now.
fn verify_standard_webhook(
    secret: &str,
    headers: &HashMap<String, String>,
    body: &str,
) -> Result<(), String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD.decode(encoded).map_err(|error| error.to_string())?;
    let id = headers.get("webhook-id").ok_or("no webhook-id")?;
    let timestamp = headers.get("webhook-timestamp").ok_or("no webhook-timestamp")?;
    let signatures = headers.get("webhook-signature").ok_or("no webhook-signature")?;
    let sent_at: i64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    if (unix_now() - sent_at).abs() > 5 * 60 {
        return Err("timestamp is too far from now".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|error| error.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = mac.finalize().into_bytes();
    for signature in signatures.split(' ') {
        let Some(("v1", encoded)) = signature.split_once(',') else {
            continue;
        };
        let Ok(candidate) = STANDARD.decode(encoded) else {
            continue;
        };
        let mut check = Hmac::<Sha256>::new_from_slice(&key).map_err(|error| error.to_string())?;
        check.update(format!("{id}.{timestamp}.{body}").as_bytes());
        // verify_slice compares in constant time.
        if check.verify_slice(&candidate).is_ok() {
            assert_eq!(candidate.as_slice(), expected.as_slice());
            return Ok(());
        }
    }
    Err("no signature matches".into())
}

#[tokio::test]
async fn each_terminal_task_gets_one_delivery_with_the_exact_body_and_headers() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let completed = harness.finish_task(End::Complete).await;
    let failed = harness.finish_task(End::Fail).await;
    let canceled = harness.finish_task(End::Cancel).await;
    let still_queued = harness.create().await;

    // Assert
    for task_id in [&completed, &failed, &canceled] {
        let webhook = harness.wait_for_state(task_id, WebhookState::Delivered).await;
        assert_eq!(webhook.attempts, 1);
        assert_eq!(webhook.last_status, Some(200));
    }
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "one request per terminal task: {requests:#?}");
    let before = unix_now();
    for task_id in [&completed, &failed, &canceled] {
        let webhook_id = harness.webhook_id_of(task_id).await;
        let request = requests
            .iter()
            .find(|request| request.webhook_id() == webhook_id)
            .unwrap_or_else(|| panic!("no request for task {task_id}"));
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("authorization"),
            Some("Bearer your-secret-token-here")
        );
        let sent_at: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(
            (before - sent_at).abs() <= 60,
            "timestamp {sent_at} is unix seconds of now"
        );
        assert_eq!(
            request.header("webhook-signature"),
            None,
            "no secret, no signature"
        );
        assert_eq!(request.body, harness.expected_body(task_id).await);
        assert_eq!(
            harness.task_webhook(task_id).await.unwrap().webhook_id,
            webhook_id
        );
    }
    let statuses: HashSet<String> = requests
        .iter()
        .map(|request| {
            let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
            body["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        HashSet::from(["completed".into(), "failed".into(), "canceled".into()])
    );
    let failed_id = harness.webhook_id_of(&failed).await;
    let failed_request = requests
        .iter()
        .find(|request| request.webhook_id() == failed_id)
        .unwrap();
    let failed_body: serde_json::Value = serde_json::from_str(&failed_request.body).unwrap();
    assert_eq!(failed_body["error"], "the message has no file");
    assert_eq!(harness.task_webhook(&still_queued).await, None);
    dispatcher.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn the_signature_is_accepted_by_a_verifier_written_from_the_spec() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let config = harness.config(&receiver.url(), Some(secret));
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    let request = receiver.requests().remove(0);
    let signature = request.header("webhook-signature").expect("a signed delivery");
    assert!(signature.starts_with("v1,"), "{signature}");
    assert_eq!(
        verify_standard_webhook(secret, &request.headers, &request.body),
        Ok(())
    );
    // The verifier is not a rubber stamp: another body or key fails it.
    assert!(verify_standard_webhook(
        secret,
        &request.headers,
        &request.body.replace("completed", "failed")
    )
    .is_err());
    assert!(verify_standard_webhook("whsec_QUFBQQ==", &request.headers, &request.body).is_err());
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_secret_without_the_whsec_prefix_is_refused_at_start_even_when_it_is_base64() {
    let harness = Harness::start().await;

    // The spec's example secret without its prefix, a passphrase and
    // `openssl rand -hex 32`'s output: all valid base64, so read as the
    // spec's libraries read them they would sign with other bytes than a
    // receiver holding the text itself checks against.
    for secret in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "mysecretpassword",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let config = harness.config("https://example.com/hook", Some(secret));

        let error = Dispatcher::new(harness.store.clone(), &config).err().unwrap();

        assert!(matches!(error, WebhookError::InvalidSecret { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("[api] webhook_secret"), "{message}");
        assert!(message.contains("`whsec_`"), "{message}");
        assert!(
            message.contains("echo whsec_$(openssl rand -base64 32)"),
            "{message}"
        );
        assert!(!message.contains(secret), "the secret is not echoed: {message}");
    }
}

#[tokio::test]
async fn an_empty_secret_in_the_config_file_sends_webhooks_unsigned() {
    // Arrange: an empty value unsets an optional key (so compose files can
    // pass `${VAR:-}` through); it is not a secret to refuse.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let text = format!(
        "[api]\nwebhook_url = \"{}\"\nwebhook_secret = \"\"\n",
        receiver.url()
    );
    let config = Config::from_toml_str(&text, "config.toml", Vec::new())
        .expect("a config with an empty webhook_secret loads")
        .config;
    assert!(config.api.webhook_secret.is_none());
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    let request = receiver.requests().remove(0);
    assert_eq!(request.header("webhook-signature"), None);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_try_with_the_same_id() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    let config = harness.config(&receiver.url(), Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    let webhook = harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    assert_eq!(webhook.attempts, 4);
    assert_eq!(webhook.last_status, Some(200));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4);
    let expected_id = harness.webhook_id_of(&task_id).await;
    assert!(requests.iter().all(|request| request.webhook_id() == expected_id));
    assert!(requests.iter().all(|request| request.body == requests[0].body));
    let delivery = harness
        .store
        .webhook_delivery(&expected_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.state, WebhookState::Delivered);
    assert_eq!(delivery.attempts, 4);
    assert_eq!(
        harness.store.next_webhook_due().await.unwrap(),
        None,
        "nothing is left to try"
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_410_stops_the_retries_of_that_delivery() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(410)]);
    let config = harness.config(&receiver.url(), None);
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let gone = harness.finish_task(End::Complete).await;

    // Assert
    let webhook = harness.wait_for_state(&gone, WebhookState::GaveUp).await;
    assert_eq!(webhook.attempts, 1);
    assert_eq!(webhook.last_status, Some(410));
    let delivery = harness
        .store
        .webhook_delivery(&webhook.webhook_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.state, WebhookState::Gone);
    assert_eq!(
        harness.store.next_webhook_due().await.unwrap(),
        None,
        "no retry is waiting"
    );
    // A later event is still tried (and delivered) at the same URL, and the
    // gone delivery was never tried again meanwhile.
    let later = harness.finish_task(End::Complete).await;
    harness.wait_for_state(&later, WebhookState::Delivered).await;
    let gone_tries = receiver
        .requests()
        .iter()
        .filter(|request| request.webhook_id() == webhook.webhook_id)
        .count();
    assert_eq!(gone_tries, 1);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_delivery_gives_up_after_max_attempts() {
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Status(500));
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        max_attempts: 3,
        ..fast(&config)
    };
    let dispatcher = harness.spawn(&config, options);

    let task_id = harness.finish_task(End::Complete).await;

    let webhook = harness.wait_for_state(&task_id, WebhookState::GaveUp).await;
    assert_eq!(webhook.attempts, 3);
    assert_eq!(webhook.last_status, Some(500));
    assert_eq!(receiver.count(), 3);
    assert_eq!(harness.store.next_webhook_due().await.unwrap(), None);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_is_honoured() {
    // Arrange: the backoff alone would retry after about 10 ms.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::StatusWithHeaders(503, vec![("retry-after", "1".into())])]);
    let config = harness.config(&receiver.url(), None);
    let dispatcher = harness.spawn(&config, fast(&config));

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    let webhook = harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    assert_eq!(webhook.attempts, 2);
    let requests = receiver.requests();
    let gap = requests[1].arrived - requests[0].arrived;
    assert!(
        gap >= Duration::from_millis(900),
        "the retry came after {gap:?}, not Retry-After's 1 s"
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_retry_after_of_zero_does_not_hasten_the_backoff() {
    // Arrange: the backoff waits 1 s (±25 % jitter); the receiver asks for
    // its retry at once.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::StatusWithHeaders(429, vec![("retry-after", "0".into())])]);
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        backoff_first: Duration::from_secs(1),
        backoff_max: Duration::from_secs(1),
        ..fast(&config)
    };
    let dispatcher = harness.spawn(&config, options);

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    let webhook = harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    assert_eq!(webhook.attempts, 2);
    let requests = receiver.requests();
    let gap = requests[1].arrived - requests[0].arrived;
    assert!(
        gap >= Duration::from_millis(700),
        "the retry came after {gap:?}, sooner than the backoff's 750 ms at least"
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_down_across_a_dispatcher_crash_gets_every_event_when_it_is_back() {
    // Arrange: nobody listens on the webhook port yet.
    let harness = Harness::start().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = harness.config(&url, None);
    let options = DispatcherOptions {
        lease: Duration::from_secs(6),
        ..fast(&config)
    };
    let first = harness.spawn(&config, options.clone());
    let mut task_ids = harness.finish_tasks(3).await;
    for task_id in &task_ids {
        let webhook = eventually("a failed try while the receiver is down", WAIT, || async {
            harness
                .task_webhook(task_id)
                .await
                .filter(|webhook| webhook.state == WebhookState::Retrying)
        })
        .await;
        assert_eq!(webhook.last_status, None, "no HTTP answer from a closed port");
    }

    // Act: the dispatcher dies; more tasks end while none runs; then the
    // receiver comes back and a new dispatcher starts.
    first.kill().await;
    task_ids.extend(harness.finish_tasks(2).await);
    let receiver = Receiver::start_on(port).await;
    let second = harness.spawn(&config, options);

    // Assert
    for task_id in &task_ids {
        harness.wait_for_state(task_id, WebhookState::Delivered).await;
    }
    let mut expected = HashSet::new();
    for task_id in &task_ids {
        expected.insert(harness.webhook_id_of(task_id).await);
    }
    let received: HashSet<String> = receiver.requests().iter().map(Recorded::webhook_id).collect();
    assert_eq!(received, expected);
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_try_cut_short_by_a_killed_dispatcher_is_taken_over_after_the_lease() {
    // Arrange: the first try hangs at the receiver.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Slow(Duration::from_secs(30), 200)]);
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        request_timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        ..fast(&config)
    };
    let options_lease = options.lease;
    let first = harness.spawn(&config, options.clone());
    let task_id = harness.finish_task(End::Complete).await;
    wait_for_requests(&receiver, 1).await;

    // Act: the dispatcher dies mid-try; another one starts.
    first.kill().await;
    let killed_at = Instant::now();
    let second = harness.spawn(&config, options);

    // Assert
    let webhook = harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    assert_eq!(webhook.attempts, 2, "the cut-short try counts");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].webhook_id(), requests[1].webhook_id());
    assert!(
        requests[1].arrived >= killed_at,
        "the second try is the new dispatcher's"
    );
    // The takeover waits out the first claim's lease. The first request
    // arrives a few ms after its claim, hence the small allowance.
    let gap = requests[1].arrived - requests[0].arrived;
    assert!(
        gap >= options_lease - Duration::from_millis(100),
        "the second try came {gap:?} after the first, before the lease ({options_lease:?}) ran out"
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_whose_hash_cannot_be_read_costs_only_its_own_webhook() {
    // Arrange: the first task's hash gets a `request` field no build of this
    // version writes (another version's, a hand edit), so the store fails
    // it at its start; the second task then completes. Both terminal events
    // wait in one read batch, the unreadable one first.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let unreadable = harness.create().await;
    let readable = harness.create().await;
    let unreadable_key = harness.store.keys().task(&unreadable);
    harness.redis_cli(&["HSET", &unreadable_key, "request", r#"["carrier-pigeon"]"#]);
    let job = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .expect("reading jobs")
        .remove(0);
    let started = harness.store.start(&job.job_id, &unreadable, WORKER).await;
    assert!(
        matches!(
            started,
            Err(StoreError::Ended {
                status: TaskStatus::Failed,
                ..
            })
        ),
        "the store fails a task it cannot read at its start: {started:?}"
    );
    harness.end(&readable, End::Complete).await;
    let config = harness.config(&receiver.url(), None);

    // Act
    let dispatcher = harness.spawn(&config, fast(&config));

    // Assert: the later task's webhook is delivered, the unreadable task's
    // event is acknowledged without a delivery, and nothing stays pending.
    harness.wait_for_state(&readable, WebhookState::Delivered).await;
    eventually(
        "every event read by the webhooks group to be acknowledged",
        WAIT,
        || async { (harness.webhook_events_pending() == 0).then_some(()) },
    )
    .await;
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        1,
        "only the readable task's webhook: {requests:#?}"
    );
    assert_eq!(requests[0].webhook_id(), harness.webhook_id_of(&readable).await);
    assert_eq!(harness.task_webhook(&unreadable).await, None);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn events_read_but_not_recorded_by_a_dead_dispatcher_are_taken_over() {
    // Arrange: a dispatcher read the events and died before recording them.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let task_ids = harness.finish_tasks(2).await;
    let dead_reader = harness.store.with_own_connection().await.unwrap();
    let taken = dead_reader
        .read_events("dead-dispatcher", 100, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(taken.len() >= 2, "the dead dispatcher holds the events");
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        request_timeout: Duration::from_secs(2),
        lease: Duration::from_millis(2500),
        ..fast(&config)
    };

    // Act
    let dispatcher = harness.spawn(&config, options);

    // Assert
    for task_id in &task_ids {
        harness.wait_for_state(task_id, WebhookState::Delivered).await;
    }
    assert_eq!(receiver.count(), 2);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn three_racing_dispatchers_deliver_each_of_50_events_exactly_once() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatchers: Vec<Running> = (0..3).map(|_| harness.spawn(&config, fast(&config))).collect();

    // Act
    let task_ids = harness.finish_tasks(50).await;

    // Assert
    for task_id in &task_ids {
        harness.wait_for_state(task_id, WebhookState::Delivered).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for request in receiver.requests() {
        *counts.entry(request.webhook_id()).or_default() += 1;
    }
    let mut expected = HashSet::new();
    for task_id in &task_ids {
        expected.insert(harness.webhook_id_of(task_id).await);
    }
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);
    let repeated: Vec<_> = counts.iter().filter(|(_, count)| **count != 1).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
    for dispatcher in dispatchers {
        dispatcher.stop().await.unwrap();
    }
}

#[tokio::test]
async fn slow_tries_run_in_parallel_up_to_the_concurrency() {
    // Arrange: each request is held until 6 are in flight at once, which
    // never happens unless the dispatcher sends 6 in parallel.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::HoldUntilInFlight(6));
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        concurrency: 6,
        ..fast(&config)
    };
    let dispatcher = harness.spawn(&config, options);
    let started = Instant::now();

    // Act
    let task_ids = harness.finish_tasks(6).await;

    // Assert
    for task_id in &task_ids {
        let webhook = harness.wait_for_state(task_id, WebhookState::Delivered).await;
        assert_eq!(webhook.attempts, 1);
    }
    assert_eq!(receiver.max_in_flight(), 6);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the receiver's 10 s hold never ran out: the tries overlapped"
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn no_more_tries_are_in_flight_than_the_concurrency() {
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::Slow(Duration::from_millis(100), 200));
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        concurrency: 2,
        ..fast(&config)
    };
    let dispatcher = harness.spawn(&config, options);

    let task_ids = harness.finish_tasks(6).await;

    for task_id in &task_ids {
        harness.wait_for_state(task_id, WebhookState::Delivered).await;
    }
    assert_eq!(receiver.max_in_flight(), 2);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn an_endless_response_body_does_not_stall_the_delivery() {
    // Arrange: a request timeout far beyond the wait, so that only the cap
    // on the response body (not the timeout) can end the read in time.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.set_default(Reply::EndlessBody);
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        request_timeout: Duration::from_secs(60),
        lease: Duration::from_secs(90),
        ..fast(&config)
    };
    let dispatcher = harness.spawn(&config, options);
    let started = Instant::now();

    // Act
    let task_id = harness.finish_task(End::Complete).await;

    // Assert
    let webhook = harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    assert_eq!(webhook.attempts, 1);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the delivery took {took:?}: the body was read until the timeout, not up to the cap"
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_lets_the_try_in_flight_finish_and_records_it() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Slow(Duration::from_millis(500), 200)]);
    let config = harness.config(&receiver.url(), None);
    let dispatcher = harness.spawn(&config, fast(&config));
    let task_id = harness.finish_task(End::Complete).await;
    wait_for_requests(&receiver, 1).await;

    // Act
    let stopped = dispatcher.stop().await;

    // Assert: by the time `run` returned, the result was recorded.
    assert!(stopped.is_ok());
    let webhook = harness.task_webhook(&task_id).await.unwrap();
    assert_eq!(webhook.state, WebhookState::Delivered);
}

#[tokio::test]
async fn tasks_that_ended_before_the_group_existed_are_not_replayed() {
    // Arrange: a Redis whose group does not exist yet, with history.
    let redis = RedisServer::start();
    let store = Store::connect(
        &RedisConfig {
            url: redis.url(),
            prefix: "test".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: 30,
            retention_hours: 1,
        },
    )
    .await
    .unwrap();
    store.ensure_group().await.unwrap();
    let harness = Harness {
        reader: store.with_own_connection().await.unwrap(),
        store,
        redis,
    };
    let old = harness.finish_task(End::Complete).await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);

    // Act: the first dispatcher creates the group, then a task ends.
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    dispatcher.ensure_group().await.unwrap();
    let running = {
        let shutdown = CancellationToken::new();
        Running {
            handle: tokio::spawn(dispatcher.run(shutdown.clone())),
            shutdown,
        }
    };
    let new = harness.finish_task(End::Complete).await;

    // Assert
    harness.wait_for_state(&new, WebhookState::Delivered).await;
    assert_eq!(harness.task_webhook(&old).await, None);
    assert_eq!(receiver.count(), 1);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_dispatcher_is_disabled_without_a_url_and_refuses_bad_urls_and_secrets() {
    let harness = Harness::start().await;

    let disabled = Dispatcher::new(harness.store.clone(), &Config::default());
    assert!(matches!(disabled, Err(WebhookError::Disabled)));
    assert!(disabled.err().unwrap().is_disabled());

    let mut ftp = Config::default();
    ftp.api.webhook_url = Some(Url::parse("ftp://example.com/hook").unwrap());
    assert!(matches!(
        Dispatcher::new(harness.store.clone(), &ftp),
        Err(WebhookError::InvalidUrl { .. })
    ));

    for secret in ["whsec_%%%", "a plain passphrase %%%"] {
        let bad_secret = harness.config("https://example.com/hook", Some(secret));
        let error = Dispatcher::new(harness.store.clone(), &bad_secret).err().unwrap();
        assert!(matches!(error, WebhookError::InvalidSecret { .. }));
        assert!(error.to_string().contains("[api] webhook_secret"), "{error}");
        assert!(!error.to_string().contains("%%%"), "the secret is not echoed");
    }

    let good = harness.config(
        "https://example.com/hook",
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    );
    let dispatcher = Dispatcher::new(harness.store.clone(), &good).unwrap();
    assert_eq!(dispatcher.options().max_attempts, 10);
    assert_eq!(dispatcher.options().span, Duration::from_secs(24 * 3600));
    assert!(dispatcher.consumer().contains(&std::process::id().to_string()));
}

#[tokio::test]
async fn the_step_functions_deliver_without_the_loop() {
    // Arrange
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        backoff_first: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..fast(&config)
    };
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, options).unwrap();
    let reader = harness.store.with_own_connection().await.unwrap();
    let task_id = harness.create().await;
    harness.end(&task_id, End::Complete).await;

    // Act and Assert: created, started and completed are read; one is a delivery.
    let ingested = dispatcher
        .ingest(&reader, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ingested.read, 3);
    assert_eq!(ingested.enqueued, 1);
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    let webhook = harness.task_webhook(&task_id).await.unwrap();
    assert_eq!(
        (webhook.state, webhook.attempts, webhook.last_status),
        (WebhookState::Retrying, 1, Some(500))
    );
    let retried = eventually("the retry to be due and tried", WAIT, || async {
        let tried = dispatcher.deliver_due().await.unwrap();
        (tried > 0).then_some(tried)
    })
    .await;
    assert_eq!(retried, 1);
    let webhook = harness.task_webhook(&task_id).await.unwrap();
    assert_eq!(
        (webhook.state, webhook.attempts, webhook.last_status),
        (WebhookState::Delivered, 2, Some(200))
    );
    assert_eq!(
        dispatcher
            .ingest(&reader, Duration::from_millis(10))
            .await
            .unwrap(),
        Default::default()
    );
}

#[tokio::test]
async fn a_terminal_event_of_another_format_version_is_delivered_and_an_unreadable_entry_is_left_pending() {
    // Arrange: a completed task whose own events were consumed elsewhere,
    // then entries a newer build might write: its terminal event in format
    // version 3 with a field this build does not know, an entry with no
    // type, and a terminal entry with no valid task.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    let reader = harness.store.with_own_connection().await.unwrap();
    let task_id = harness.finish_task(End::Complete).await;
    let history = harness
        .reader
        .read_events("elsewhere", 100, Duration::from_millis(100))
        .await
        .unwrap();
    let history_ids: Vec<String> = history.iter().map(|entry| entry.id.clone()).collect();
    harness.store.ack_events(&history_ids).await.unwrap();
    let events = harness.store.keys().events();
    let at = (unix_now() * 1000).to_string();
    let newer = harness.redis_cli(&[
        "XADD",
        &events,
        "*",
        "v",
        "3",
        "type",
        "completed",
        "task",
        task_id.as_str(),
        "at",
        &at,
        "attempt",
        "1",
        "size",
        "42",
        "path",
        "/downloads/file.pdf",
        "checksum",
        "sha256:00",
    ]);
    harness.redis_cli(&["XADD", &events, "*", "v", "3", "note", "no type"]);
    harness.redis_cli(&[
        "XADD",
        &events,
        "*",
        "v",
        "1",
        "type",
        "failed",
        "task",
        "not-a-task",
        "at",
        &at,
    ]);

    // Act
    let ingested = dispatcher
        .ingest(&reader, Duration::from_millis(100))
        .await
        .unwrap();
    let tried = dispatcher.deliver_due().await.unwrap();

    // Assert: the newer entry is delivered with the task's body; the two
    // unreadable ones stay pending, and later reads pass over them.
    assert_eq!((ingested.read, ingested.enqueued), (3, 1));
    assert_eq!(tried, 1);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].webhook_id(), webhook_id(&task_id, &newer));
    assert_eq!(requests[0].body, harness.expected_body(&task_id).await);
    assert_eq!(harness.webhook_events_pending(), 2);
    let again = dispatcher
        .ingest(&reader, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(again, Default::default());

    // An unreadable entry older than the retention period (here: any, on a
    // store whose retention is 0) is given up rather than kept pending.
    let no_retention = Store::connect(
        &RedisConfig {
            url: harness.redis.url(),
            prefix: "test".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: 30,
            retention_hours: 0,
        },
    )
    .await
    .unwrap();
    let late = Dispatcher::with_options(no_retention.clone(), &config, fast(&config)).unwrap();
    let old_entry = harness.redis_cli(&["XADD", &events, "*", "v", "3", "note", "no type either"]);
    // Past a retention of 0 once the clock has left the entry's millisecond.
    let written_at: i64 = old_entry.split('-').next().unwrap().parse().unwrap();
    while Store::now_ms() <= written_at {
        tokio::task::yield_now().await;
    }
    let ingested = late
        .ingest(
            &no_retention.with_own_connection().await.unwrap(),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(ingested.read, 1);
    assert_eq!(harness.webhook_events_pending(), 2, "the old entry was given up");
}

#[tokio::test]
async fn a_terminal_event_whose_task_hash_expired_is_delivered_with_its_body_from_the_log() {
    // Arrange: one task resolved (a title of its file) and completed, one
    // failed; both hashes expire (deleted here) before any dispatcher runs,
    // as they do when a dispatcher falls behind by more than the retention.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let resolved = harness.create().await;
    let failed = harness.create().await;
    let job = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let lease = harness.store.start(&job.job_id, &resolved, WORKER).await.unwrap();
    let resolved_title = title::resolved(SourceKind::Telegram, "file.pdf", "local1", "/downloads/file.pdf");
    harness
        .store
        .resolve(
            &lease,
            "file.pdf",
            Some(42),
            "/downloads/file.pdf",
            &resolved_title,
            None,
        )
        .await
        .unwrap();
    harness
        .store
        .complete(&lease, Some(42), "/downloads/file.pdf")
        .await
        .unwrap();
    harness.end(&failed, End::Fail).await;
    // A third is retried after an error, then canceled while it waits: its
    // body keeps the retry's error, as the projection does.
    let canceled = harness.create().await;
    let job = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let lease = harness.store.start(&job.job_id, &canceled, WORKER).await.unwrap();
    harness
        .store
        .retry(
            &lease,
            "FLOOD_WAIT_30",
            RetryKind::Failure { max_retries: 3 },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    harness.end(&canceled, End::Cancel).await;
    let mut expected = HashMap::new();
    for task_id in [&resolved, &failed, &canceled] {
        expected.insert(
            harness.webhook_id_of(task_id).await,
            harness.expected_body(task_id).await,
        );
        harness.redis_cli(&["DEL", &harness.store.keys().task(task_id)]);
    }
    assert!(expected.values().any(|body| body.contains(&resolved_title)));
    assert!(expected
        .values()
        .any(|body| body.contains(r#""error":"FLOOD_WAIT_30""#)));
    let config = harness.config(&receiver.url(), None);

    // Act
    let dispatcher = harness.spawn(&config, fast(&config));

    // Assert
    let requests = wait_for_requests(&receiver, 3).await;
    let received: HashMap<String, String> = requests
        .iter()
        .map(|request| (request.webhook_id(), request.body.clone()))
        .collect();
    assert_eq!(received, expected);
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_terminal_event_written_after_the_group_was_lost_is_delivered() {
    // Arrange: a running dispatcher has delivered one task's webhook.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = harness.spawn(&config, fast(&config));
    let task_id = harness.finish_task(End::Complete).await;
    harness.wait_for_state(&task_id, WebhookState::Delivered).await;

    // Act: in one step (so the dispatcher cannot re-create the group in
    // between), Redis loses the group and a terminal event is written.
    let events = harness.store.keys().events();
    let at = (unix_now() * 1000).to_string();
    let script = "redis.call('XGROUP', 'DESTROY', KEYS[1], 'webhooks') \
                  return redis.call('XADD', KEYS[1], '*', 'v', '1', 'type', 'completed', 'task', ARGV[1], \
                  'at', ARGV[2], 'attempt', '1', 'size', '42', 'path', '/downloads/file.pdf')";
    let after_loss = harness.redis_cli(&["EVAL", script, "1", &events, task_id.as_str(), &at]);

    // Assert: the dispatcher re-creates the group and delivers the event;
    // the earlier delivery, still recorded, is not sent again.
    let delivery = eventually(
        "the event written after the loss to be delivered",
        WAIT,
        || async {
            harness
                .store
                .webhook_delivery(&webhook_id(&task_id, &after_loss))
                .await
                .unwrap()
                .filter(|delivery| delivery.state == WebhookState::Delivered)
        },
    )
    .await;
    assert_eq!(delivery.task_id, task_id);
    let webhook_ids: Vec<String> = receiver.requests().iter().map(Recorded::webhook_id).collect();
    assert_eq!(
        webhook_ids,
        vec![
            harness.webhook_id_of(&task_id).await,
            webhook_id(&task_id, &after_loss)
        ]
    );
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_key_of_the_wrong_type_costs_only_its_own_webhook() {
    // Arrange: three tasks end; the first one's key then holds a string
    // (WRONGTYPE for any hash command), ahead of the others in one batch.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    let reader = harness.store.with_own_connection().await.unwrap();
    let task_ids = harness.finish_tasks(3).await;
    let broken_key = harness.store.keys().task(&task_ids[0]);
    harness.redis_cli(&["DEL", &broken_key]);
    harness.redis_cli(&["SET", &broken_key, "not a hash"]);

    // Act
    let ingested = dispatcher
        .ingest(&reader, Duration::from_millis(100))
        .await
        .expect("one task's key costs the batch nothing");
    let tried = dispatcher.deliver_due().await.unwrap();

    // Assert
    assert_eq!(ingested.enqueued, 2);
    assert_eq!(tried, 2);
    assert_eq!(harness.webhook_events_pending(), 0);
    for task_id in &task_ids[1..] {
        let webhook = harness.task_webhook(task_id).await.unwrap();
        assert_eq!(webhook.state, WebhookState::Delivered);
    }
}

#[tokio::test]
async fn a_delivery_record_that_cannot_be_read_costs_only_its_own_try() {
    // Arrange: two deliveries are due, beside a record whose task is not a
    // task id and a due member whose key is not a hash.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    let task_ids = harness.deliveries_due(&dispatcher, 2).await;
    let due = harness.store.keys().webhooks_due();
    let bad_record = harness.store.keys().webhook("msg_bad-record");
    harness.redis_cli(&[
        "HSET",
        &bad_record,
        "task",
        "not-a-task",
        "body",
        "{}",
        "status",
        "pending",
        "attempts",
        "0",
        "deadline",
        "99999999999999",
    ]);
    let not_a_hash = harness.store.keys().webhook("msg_not-a-hash");
    harness.redis_cli(&["SET", &not_a_hash, "x"]);
    harness.redis_cli(&["ZADD", &due, "0", "msg_bad-record", "0", "msg_not-a-hash"]);

    // Act
    let tried = dispatcher
        .deliver_due()
        .await
        .expect("bad records cost the claim nothing");

    // Assert
    assert_eq!(tried, 2);
    for task_id in &task_ids {
        let webhook = harness.task_webhook(task_id).await.unwrap();
        assert_eq!(webhook.state, WebhookState::Delivered);
    }
    assert_eq!(harness.redis_cli(&["HGET", &bad_record, "status"]), "gave_up");
    assert_eq!(
        harness.redis_cli(&["ZCARD", &due]),
        "0",
        "nothing bad is due again"
    );
    assert_eq!(
        harness.redis_cli(&["GET", &not_a_hash]),
        "x",
        "a foreign key is left alone"
    );
}

#[tokio::test]
async fn a_delivery_redis_refuses_to_record_for_lack_of_memory_is_kept_pending_until_it_can_be() {
    // Arrange: a task completes; then Redis reaches maxmemory with
    // noeviction (here: a limit below what it uses), so it refuses every
    // command that may grow its data (the enqueue function, with `OOM`)
    // while reads and XACK still succeed.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let options = DispatcherOptions {
        request_timeout: Duration::from_millis(100),
        lease: Duration::from_millis(200),
        ..fast(&config)
    };
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, options).unwrap();
    let reader = harness.store.with_own_connection().await.unwrap();
    let task_id = harness.finish_task(End::Complete).await;
    let info = harness.redis_cli(&["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO memory has used_memory: {info}"));
    harness.redis_cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    harness.redis_cli(&["CONFIG", "SET", "maxmemory", &(used / 2).to_string()]);

    // Act
    let ingested = dispatcher.ingest(&reader, Duration::from_millis(100)).await;

    // Assert: the batch fails with Redis's refusal; the terminal event
    // stays pending, with no delivery recorded nor sent.
    assert!(
        matches!(&ingested, Err(error) if error.to_string().contains("OOM")),
        "the enqueue is refused for lack of memory and fails the batch: {ingested:?}"
    );
    assert_eq!(
        harness.webhook_events_pending(),
        3,
        "created, started and completed stay pending"
    );
    assert_eq!(harness.task_webhook(&task_id).await, None);
    // Taken over again after the lease, the events are refused again.
    let retried = eventually("the reclaim to take the events over", WAIT, || async {
        dispatcher.reclaim_events().await.err()
    })
    .await;
    assert!(retried.to_string().contains("OOM"), "{retried}");
    assert_eq!(harness.webhook_events_pending(), 3);
    assert_eq!(harness.task_webhook(&task_id).await, None);
    assert_eq!(receiver.count(), 0);

    // Act: memory is freed.
    harness.redis_cli(&["CONFIG", "SET", "maxmemory", "0"]);

    // Assert: the events are taken over again, and the webhook delivered.
    eventually("the pending terminal event to be recorded", WAIT, || async {
        let ingested = dispatcher.reclaim_events().await.unwrap();
        (ingested.enqueued == 1).then_some(())
    })
    .await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    harness.wait_for_state(&task_id, WebhookState::Delivered).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].webhook_id(), harness.webhook_id_of(&task_id).await);
    assert_eq!(requests[0].body, harness.expected_body(&task_id).await);
    assert_eq!(harness.webhook_events_pending(), 0);
}

#[tokio::test]
async fn a_delivery_record_whose_attempts_are_not_a_number_is_given_up_alone() {
    // Arrange: two deliveries are due, behind (earliest in the due set) a
    // record with a status but attempts that are not a number, and one
    // with no attempts at all.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    let task_ids = harness.deliveries_due(&dispatcher, 2).await;
    let due = harness.store.keys().webhooks_due();
    let mut bad_records = Vec::new();
    for (webhook_id, attempts) in [("msg_bad-attempts", Some("many")), ("msg_no-attempts", None)] {
        let key = harness.store.keys().webhook(webhook_id);
        let mut hset = vec![
            "HSET",
            &key,
            "task",
            task_ids[0].as_str(),
            "body",
            "{}",
            "status",
            "pending",
            "deadline",
            "99999999999999",
        ];
        if let Some(attempts) = attempts {
            hset.extend(["attempts", attempts]);
        }
        harness.redis_cli(&hset);
        harness.redis_cli(&["ZADD", &due, "0", webhook_id]);
        bad_records.push(key);
    }

    // Act
    let tried = dispatcher
        .deliver_due()
        .await
        .expect("bad records cost the claim nothing");

    // Assert
    assert_eq!(tried, 2);
    for task_id in &task_ids {
        let webhook = harness.task_webhook(task_id).await.unwrap();
        assert_eq!(webhook.state, WebhookState::Delivered);
    }
    assert_eq!(receiver.count(), 2);
    for key in &bad_records {
        assert_eq!(harness.redis_cli(&["HGET", key, "status"]), "gave_up");
    }
    assert_eq!(
        harness.redis_cli(&["ZCARD", &due]),
        "0",
        "nothing bad is due again"
    );
}

#[tokio::test]
async fn a_body_from_the_log_has_the_last_resolved_title_even_past_the_scan_cap() {
    // Arrange: a task resolves, then, after more entries of other tasks
    // than the dispatcher's scan reads (20,000), resolves again and
    // completes; its hash expires before any dispatcher runs.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let task_id = harness.create().await;
    let job = harness
        .reader
        .read_jobs(WORKER, 1, Duration::from_secs(1))
        .await
        .unwrap()
        .remove(0);
    let lease = harness.store.start(&job.job_id, &task_id, WORKER).await.unwrap();
    let first = title::resolved(SourceKind::Telegram, "a.pdf", "local1", "/downloads/a.pdf");
    harness
        .store
        .resolve(&lease, "a.pdf", Some(1), "/downloads/a.pdf", &first, None)
        .await
        .unwrap();
    let events = harness.store.keys().events();
    let filler = "for i = 1, tonumber(ARGV[1]) do \
                  redis.call('XADD', KEYS[1], '*', 'v', '1', 'type', 'progress', 'task', 'another-task') end";
    harness.redis_cli(&["EVAL", filler, "1", &events, "20001"]);
    let last = title::resolved(SourceKind::Telegram, "b.pdf", "local1", "/downloads/b.pdf");
    harness
        .store
        .resolve(&lease, "b.pdf", Some(42), "/downloads/b.pdf", &last, None)
        .await
        .unwrap();
    harness
        .store
        .complete(&lease, Some(42), "/downloads/b.pdf")
        .await
        .unwrap();
    let expected = harness.expected_body(&task_id).await;
    assert!(expected.contains(&serde_json::to_string(&last).unwrap()));
    harness.redis_cli(&["DEL", &harness.store.keys().task(&task_id)]);
    let config = harness.config(&receiver.url(), None);

    // Act
    let dispatcher = harness.spawn(&config, fast(&config));

    // Assert: the title is the last resolve's. (The created event, past
    // the cap, is not read: the creation time is the id's, whole seconds.)
    let requests = wait_for_requests(&receiver, 1).await;
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(body["title"], expected["title"]);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["error"], "");
    dispatcher.stop().await.unwrap();
}

#[tokio::test]
async fn a_given_up_unreadable_delivery_shows_as_gave_up_on_its_task() {
    // Arrange: a task's delivery is recorded; its record then loses its
    // number of attempts (a hand edit), so it cannot be claimed.
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, fast(&config)).unwrap();
    let reader = harness.store.with_own_connection().await.unwrap();
    let task_id = harness.finish_task(End::Complete).await;
    let ingested = dispatcher
        .ingest(&reader, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ingested.enqueued, 1);
    let webhook_id = harness.webhook_id_of(&task_id).await;
    assert_eq!(
        harness.task_webhook(&task_id).await.map(|webhook| webhook.state),
        Some(WebhookState::Pending)
    );
    let record = harness.store.keys().webhook(&webhook_id);
    harness.redis_cli(&["HDEL", &record, "attempts"]);

    // Act
    let tried = dispatcher.deliver_due().await.unwrap();

    // Assert: nothing is tried; the record and the task both say gave_up.
    assert_eq!(tried, 0);
    assert_eq!(receiver.count(), 0);
    assert_eq!(harness.redis_cli(&["HGET", &record, "status"]), "gave_up");
    let webhook = harness.task_webhook(&task_id).await.unwrap();
    assert_eq!(
        (webhook.webhook_id, webhook.state),
        (webhook_id, WebhookState::GaveUp)
    );
}

#[tokio::test]
async fn the_reclaim_reaches_a_dead_dispatcher_s_terminal_event_behind_more_than_a_batch_of_unreadable_entries(
) {
    // Arrange: 150 entries no build can read (no type), then a task's
    // events, all read by a dispatcher that died; the unreadable entries
    // are ahead of the terminal event in the pending list, more than one
    // reclaim takes (100).
    let harness = Harness::start().await;
    let receiver = Receiver::start().await;
    let config = harness.config(&receiver.url(), None);
    let lease = Duration::from_millis(300);
    let options = DispatcherOptions {
        request_timeout: Duration::from_millis(100),
        lease,
        ..fast(&config)
    };
    let dispatcher = Dispatcher::with_options(harness.store.clone(), &config, options).unwrap();
    let events = harness.store.keys().events();
    let unreadable = "for i = 1, tonumber(ARGV[1]) do \
                      redis.call('XADD', KEYS[1], '*', 'v', '2', 'note', 'no type') end";
    harness.redis_cli(&["EVAL", unreadable, "1", &events, "150"]);
    let task_id = harness.finish_task(End::Complete).await;
    let dead_reader = harness.store.with_own_connection().await.unwrap();
    let taken = dead_reader
        .read_events("dead-dispatcher", 1000, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(taken.len(), 153, "the dead dispatcher holds every entry");
    let lease_ms = lease.as_millis().to_string();
    let all_idle = || async {
        // Four lines (id, consumer, idle, deliveries) per entry idle that long.
        let idle = harness.redis_cli(&[
            "XPENDING", &events, "webhooks", "IDLE", &lease_ms, "-", "+", "1000",
        ]);
        (idle.lines().count() == 4 * 153).then_some(())
    };

    // Act: two reclaim rounds, each once every pending entry has been idle
    // for the lease (the entries the first round took and left pending
    // included, as they would be after a while of a running dispatcher).
    eventually("the dead dispatcher's entries to be idle", WAIT, all_idle).await;
    let first = dispatcher.reclaim_events().await.unwrap();
    eventually("the first round's entries to be idle again", WAIT, all_idle).await;
    let second = dispatcher.reclaim_events().await.unwrap();

    // Assert: the first round takes a batch of unreadable entries; the
    // second goes on from there, past them, to the task's events.
    assert_eq!((first.read, first.enqueued), (100, 0));
    assert_eq!((second.read, second.enqueued), (53, 1));
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    let webhook = harness.task_webhook(&task_id).await.unwrap();
    assert_eq!(webhook.state, WebhookState::Delivered);
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        harness.webhook_events_pending(),
        150,
        "the unreadable entries stay pending"
    );
}
