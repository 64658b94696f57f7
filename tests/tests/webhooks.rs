//! Black-box tests of webhook delivery from worker processes: the real
//! `savestream-api` (`TestApp`), real `savestream-worker` processes started
//! with `--role`, and a real HTTP receiver on loopback that records every
//! POST.
//!
//! `TestApp` writes `[api]` itself and cannot add `webhook_url` to it, so
//! the workers here run on a copy of its config.toml with `webhook_url` and
//! `webhook_secret` added to `[api]` (`worker_config`). The API process does
//! not need them: only workers deliver webhooks.
//!
//! What they show: a direct-link task that completes produces exactly one
//! POST with the contract's body, the bearer token and a Standard Webhooks
//! signature that a verifier written from the spec accepts; the dispatcher
//! runs in `--role all` (the default) and `--role webhooks` workers and not
//! in `--role tasks` ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::Store;
use savestream_shared::task::TaskId;
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{Process, TestApp, TestOptions, TEST_STORAGE, TEST_USER};
use serde_json::json;
use sha2::Sha256;
use tokio::net::TcpListener;

const TOKEN: &str = "webhook-test-token";
/// A Standard Webhooks secret: `whsec_` and the base64 of the key bytes.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: hyper::HeaderMap,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }
}

/// A webhook receiver on `127.0.0.1:0` that answers 200 to everything.
struct Receiver {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let address = listener.local_addr().expect("the receiver's address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = received.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|body| body.to_bytes())
                                .unwrap_or_default();
                            record.lock().unwrap().push(Received {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            address,
            received,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/savestream", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The app's config.toml with `webhook_url` and `webhook_secret` added to
/// `[api]`, written beside it.
fn worker_config(app: &TestApp, webhook_url: &str) -> PathBuf {
    let text = std::fs::read_to_string(&app.config_path).expect("reading the app's config.toml");
    let with_webhook = text.replacen(
        "[api]\n",
        &format!("[api]\nwebhook_url = \"{webhook_url}\"\nwebhook_secret = \"{SECRET}\"\n"),
        1,
    );
    assert_ne!(text, with_webhook, "the app's config.toml has an [api] table");
    let path = app.dir.path().join("worker-webhooks.toml");
    std::fs::write(&path, with_webhook).expect("writing the workers' config.toml");
    path
}

/// Workers this test started itself; their logs are printed when it fails.
struct Workers(Vec<Process>);

impl Drop for Workers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for process in &self.0 {
                eprintln!("----- {} log -----\n{}", process.name, process.log());
            }
        }
    }
}

/// Starts a worker on `config` with `role`, and waits until it runs.
async fn start_worker(app: &TestApp, config: &std::path::Path, role: &str) -> Process {
    let config = config.display().to_string();
    let process = app.spawn_process(
        "savestream-worker",
        &["--config", &config, "--role", role],
        &format!("worker-{role}"),
    );
    eventually(
        &format!("the {role} worker to start"),
        Duration::from_secs(20),
        || {
            let log = process.log();
            async move { log.contains("worker started").then_some(()) }
        },
    )
    .await;
    process
}

/// Waits until a dispatcher has created its consumer group: events before
/// that moment are not delivered (the group starts at the end of the log).
async fn wait_for_dispatcher(process: &Process) {
    eventually("the webhook dispatcher to start", Duration::from_secs(20), || {
        let log = process.log();
        async move { log.contains("webhook dispatcher started").then_some(()) }
    })
    .await;
}

async fn create_direct_link_task(app: &TestApp, url: &str) -> String {
    let (status, body) = app
        .create_task(json!({ "url": url, "user_id": TEST_USER, "storage_name": TEST_STORAGE }))
        .await;
    assert_eq!(status, 201, "{body}");
    body["task_id"].as_str().expect("a task id").to_owned()
}

/// Checks a delivery's signature as the Standard Webhooks spec says a
/// receiver should: HMAC-SHA256 over `id.timestamp.body` with the base64
/// key after `whsec_`, compared with each `v1,` signature in the header.
fn signature_is_valid(delivery: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("the test secret is base64");
    let signed = format!(
        "{}.{}.{}",
        delivery.header("webhook-id"),
        delivery.header("webhook-timestamp"),
        delivery.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    delivery
        .header("webhook-signature")
        .split(' ')
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .any(|signature| signature == expected)
}

/// Waits for `count` deliveries, then gives a late duplicate a moment to
/// show up before returning what arrived.
async fn deliveries(receiver: &Receiver, count: usize) -> Vec<Received> {
    eventually(
        &format!("{count} webhook deliveries"),
        Duration::from_secs(20),
        || async { (receiver.received().len() >= count).then_some(()) },
    )
    .await;
    // Absence cannot be polled for: a short look for a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.received()
}

#[tokio::test]
async fn a_completed_task_is_posted_once_signed_with_the_contract_body() {
    let files = FileServer::start().await;
    files.add("/report.pdf", ServedFile::new(vec![7u8; 20_000]));
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        ..TestOptions::default()
    })
    .await;
    let config = worker_config(&app, &receiver.url());
    let worker = start_worker(&app, &config, "all").await;
    wait_for_dispatcher(&worker).await;
    let workers = Workers(vec![worker]);

    let task_id = create_direct_link_task(&app, &files.url("/report.pdf")).await;
    let task = app
        .wait_for_status(&task_id, "completed", Duration::from_secs(20))
        .await;
    let received = deliveries(&receiver, 1).await;

    assert_eq!(received.len(), 1, "{received:?}");
    let delivery = &received[0];
    assert_eq!(delivery.path, "/hooks/savestream");
    assert_eq!(delivery.header("content-type"), "application/json");
    assert_eq!(delivery.header("authorization"), format!("Bearer {TOKEN}"));
    assert!(!delivery.header("webhook-id").is_empty());
    let timestamp: i64 = delivery
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!(
        (chrono::Utc::now().timestamp() - timestamp).abs() < 60,
        "{timestamp}"
    );
    assert!(signature_is_valid(delivery), "{delivery:?}");
    let body: serde_json::Value = serde_json::from_str(&delivery.body).expect("a JSON body");
    assert_eq!(
        body,
        json!({
            "task_id": task_id,
            "status": "completed",
            "title": task["title"],
            "created_at": task["created_at"],
            "error": "",
        })
    );
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    // The API shows where the delivery stands, under the id the receiver got.
    let shown = eventually(
        "the delivery to be recorded as delivered",
        Duration::from_secs(10),
        || async {
            let (_, task) = app.get_task(&task_id).await;
            (task["webhook"]["state"] == "delivered").then_some(task)
        },
    )
    .await;
    assert_eq!(
        shown["webhook"],
        json!({
            "webhook_id": delivery.header("webhook-id"),
            "state": "delivered",
            "attempts": 1,
            "last_status": 200,
        })
    );
    drop(workers);
}

#[tokio::test]
async fn a_webhooks_role_worker_delivers_what_a_tasks_role_worker_completes() {
    let files = FileServer::start().await;
    files.add("/a.bin", ServedFile::new(vec![1u8; 5_000]));
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        ..TestOptions::default()
    })
    .await;
    let config = worker_config(&app, &receiver.url());
    // The tasks worker has the webhook URL too, and must not deliver.
    let tasks = start_worker(&app, &config, "tasks").await;
    let webhooks = start_worker(&app, &config, "webhooks").await;
    wait_for_dispatcher(&webhooks).await;
    let workers = Workers(vec![tasks, webhooks]);

    let task_id = create_direct_link_task(&app, &files.url("/a.bin")).await;
    app.wait_for_status(&task_id, "completed", Duration::from_secs(20))
        .await;
    let received = deliveries(&receiver, 1).await;

    assert_eq!(received.len(), 1, "{received:?}");
    assert!(signature_is_valid(&received[0]));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["task_id"], task_id.as_str());
    assert!(
        !workers.0[0].log().contains("webhook dispatcher started"),
        "a tasks-only worker runs no dispatcher"
    );
    let store = Store::connect(
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
    .expect("connecting to the app's redis");
    let ran_on: Vec<String> = store
        .events(&TaskId::parse(&task_id).unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|logged| match logged.event.kind {
            EventKind::Started { worker, .. } => Some(worker),
            _ => None,
        })
        .collect();
    // Consumer names are `<host>-<pid>-<xid>`.
    let tasks_pid = format!("-{}-", workers.0[0].pid());
    assert!(
        !ran_on.is_empty() && ran_on.iter().all(|worker| worker.contains(&tasks_pid)),
        "only the tasks worker (pid {}) runs tasks: {ran_on:?}",
        workers.0[0].pid()
    );
}
