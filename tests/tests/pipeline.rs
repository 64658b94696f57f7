//! Black-box tests of the whole pipeline: a private redis-server, the real
//! `savestream-api` and two or more real `savestream-worker` processes
//! (`TestApp`), downloading direct links from a local HTTP server
//! (`FileServer`) into the `local` storage.
//!
//! They show what issue 4 promises from the outside: files arrive byte for
//! byte with their title and path; a worker killed mid-download has its
//! task resumed by another from its offset (with a `Range` request) and
//! completed once; a cancel stops a download within a second and leaves no
//! file; retries back off and end in `failed`; a 404 fails at once; SIGTERM
//! drains, and releases what outlives the grace period, and a second SIGTERM
//! exits at once, leaving the task to be taken over; an idle fleet picks a
//! task up at once.
//!
//! The event log is read with the store itself, so these tests do not
//! depend on how the API shows events.

use std::time::Duration;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::event::{EventKind, TaskEvent};
use savestream_shared::store::Store;
use savestream_shared::task::TaskId;
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{TestApp, TestOptions, TEST_STORAGE, TEST_USER};
use serde_json::json;

/// Deterministic file contents that no two offsets share, so a resume from
/// a wrong offset cannot go unnoticed.
fn body(size: usize) -> Vec<u8> {
    (0..size).map(|index| ((index * 7919) % 251) as u8).collect()
}

async fn spawn(workers: usize, options: TestOptions) -> TestApp {
    TestApp::spawn(TestOptions { workers, ..options }).await
}

/// `POST /api/v1/tasks` with a direct link; returns the task id.
async fn create(app: &TestApp, url: &str, dir: Option<&str>) -> String {
    let mut request = json!({ "url": url, "user_id": TEST_USER, "storage_name": TEST_STORAGE });
    if let Some(dir) = dir {
        request["dir_path"] = json!(dir);
    }
    let (status, body) = app.create_task(request).await;
    assert_eq!(status, 201, "{body}");
    body["task_id"].as_str().expect("a task id").to_owned()
}

/// A store on the app's Redis, to read the event log and the projection.
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

async fn events(store: &Store, task_id: &str) -> Vec<TaskEvent> {
    let task_id = TaskId::parse(task_id).expect("a valid task id");
    store
        .events(&task_id)
        .await
        .expect("reading the event log")
        .into_iter()
        .map(|logged| logged.event)
        .collect()
}

fn names(events: &[TaskEvent]) -> Vec<&'static str> {
    events.iter().map(|event| event.kind.name()).collect()
}

/// The worker process that holds `task_id` now, by the pid in its consumer
/// name (`<hostname>-<pid>-<xid>`).
async fn holder(app: &TestApp, store: &Store, task_id: &str) -> usize {
    let task_id = TaskId::parse(task_id).expect("a valid task id");
    let record = store.get(&task_id).await.unwrap().expect("the task exists");
    let consumer = record.task.worker.expect("a running task has a worker");
    let pid: u32 = consumer
        .rsplit('-')
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in consumer name {consumer}"));
    app.workers
        .iter()
        .position(|worker| worker.pid() == pid)
        .unwrap_or_else(|| panic!("no worker process has pid {pid}"))
}

/// Waits until the partial file at `relative` holds bytes: the download is under way.
async fn wait_for_partial(app: &TestApp, relative: &str) {
    let part = app.storage_path(&format!("{relative}.part"));
    eventually(
        &format!("{} to fill", part.display()),
        Duration::from_secs(15),
        || {
            let part = part.clone();
            async move {
                let len = std::fs::metadata(&part)
                    .map(|metadata| metadata.len())
                    .unwrap_or(0);
                (len > 0).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn direct_links_are_saved_byte_identical_with_their_title_and_path() {
    let files = FileServer::start().await;
    files.add(
        "/files/download",
        ServedFile::new(body(300_000)).with_content_disposition("attachment; filename=\"Annual Report.pdf\""),
    );
    files.add(
        "/b/data%20set.csv",
        ServedFile::new(body(100_000)).without_content_length(),
    );
    let app = spawn(2, TestOptions::default()).await;

    let report = create(&app, &files.url("/files/download"), Some("/docs")).await;
    let data = create(&app, &files.url("/b/data%20set.csv?token=x"), None).await;

    let report_body = app
        .wait_for_status(&report, "completed", Duration::from_secs(20))
        .await;
    let data_body = app
        .wait_for_status(&data, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(
        report_body["title"],
        "[directlinks](Annual Report.pdf->local1:/docs/Annual Report.pdf)"
    );
    assert_eq!(report_body["error"], "");
    assert_eq!(
        data_body["title"],
        "[directlinks](data set.csv->local1:/data set.csv)"
    );
    assert_eq!(
        std::fs::read(app.storage_path("/docs/Annual Report.pdf")).unwrap(),
        body(300_000)
    );
    assert_eq!(
        std::fs::read(app.storage_path("/data set.csv")).unwrap(),
        body(100_000)
    );
    assert_eq!(
        app.stored_files(),
        vec!["data set.csv".to_owned(), "docs/Annual Report.pdf".to_owned()],
        "no partial file is left behind"
    );
    let store = store(&app).await;
    assert_eq!(
        names(&events(&store, &report).await),
        vec!["created", "started", "resolved", "completed"]
    );
}

#[tokio::test]
async fn a_worker_killed_mid_download_is_resumed_by_another_from_its_offset() {
    let files = FileServer::start().await;
    files.add("/big.bin", ServedFile::new(body(600_000)).throttled(100_000));
    let mut app = spawn(2, TestOptions::default()).await;
    let store = store(&app).await;
    let task_id = create(&app, &files.url("/big.bin"), None).await;
    wait_for_partial(&app, "/big.bin").await;
    let victim = holder(&app, &store, &task_id).await;

    app.workers[victim].kill();
    files.set_throttle("/big.bin", None);

    app.wait_for_status(&task_id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(
        std::fs::read(app.storage_path("/big.bin")).unwrap(),
        body(600_000)
    );
    assert_eq!(app.stored_files(), vec!["big.bin".to_owned()]);
    let resumed: Vec<u64> = files
        .requests_for("/big.bin")
        .iter()
        .filter(|request| request.status == 206)
        .filter_map(|request| request.range_start())
        .collect();
    assert!(
        resumed.len() == 1 && resumed[0] > 0,
        "one request resumed from the partial file's length: {:?}",
        files.requests_for("/big.bin")
    );
    let events = events(&store, &task_id).await;
    let completions = events
        .iter()
        .filter(|event| event.kind.name() == "completed")
        .count();
    assert_eq!(completions, 1, "{:?}", names(&events));
    let workers: Vec<&str> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Started { worker, .. } => Some(worker.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(workers.len(), 2, "{:?}", names(&events));
    assert_ne!(workers[0], workers[1], "another worker took the task over");
}

#[tokio::test]
async fn canceling_a_running_task_stops_it_within_a_second_and_leaves_no_file() {
    let files = FileServer::start().await;
    files.add("/slow.bin", ServedFile::new(body(2_000_000)).throttled(100_000));
    let app = spawn(2, TestOptions::default()).await;
    let task_id = create(&app, &files.url("/slow.bin"), None).await;
    wait_for_partial(&app, "/slow.bin").await;

    let response = app
        .client
        .delete(app.url(&format!("/api/v1/tasks/{task_id}")))
        .send()
        .await
        .expect("DELETE the task");
    assert_eq!(response.status().as_u16(), 200);

    eventually(
        "the download to stop and its partial file to go",
        Duration::from_secs(1),
        || async {
            let stopped = files
                .requests_for("/slow.bin")
                .iter()
                .all(|request| request.finished && !request.complete);
            (stopped && app.stored_files().is_empty()).then_some(())
        },
    )
    .await;
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(task["status"], "canceled");
    let store = store(&app).await;
    let names = names(&events(&store, &task_id).await);
    assert_eq!(names, vec!["created", "started", "resolved", "canceled"]);
    assert!(app.stored_files().is_empty());
}

#[tokio::test]
async fn retryable_failures_back_off_and_end_failed_with_the_last_error() {
    let files = FileServer::start().await;
    files.add("/flaky.bin", ServedFile::status(503));
    let app = spawn(
        2,
        TestOptions {
            retry: 2,
            ..TestOptions::default()
        },
    )
    .await;

    let task_id = create(&app, &files.url("/flaky.bin"), None).await;

    let task = app
        .wait_for_status(&task_id, "failed", Duration::from_secs(20))
        .await;
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.ends_with("/flaky.bin answered 503 Service Unavailable: the server is failing"),
        "{error}"
    );
    let store = store(&app).await;
    let events = events(&store, &task_id).await;
    assert_eq!(
        names(&events),
        vec!["created", "started", "retrying", "started", "retrying", "started", "failed"]
    );
    let backoffs: Vec<i64> = events
        .iter()
        .filter_map(|event| match &event.kind {
            EventKind::Retrying { due_at, .. } => Some(due_at - event.at),
            _ => None,
        })
        .collect();
    assert!((500..=1_000).contains(&backoffs[0]), "{backoffs:?}");
    assert!((1_000..=2_000).contains(&backoffs[1]), "{backoffs:?}");
    assert_eq!(files.requests_for("/flaky.bin").len(), 3);
}

#[tokio::test]
async fn a_missing_file_fails_at_once() {
    let files = FileServer::start().await;
    let app = spawn(2, TestOptions::default()).await;

    let task_id = create(&app, &files.url("/nothing.bin"), None).await;

    let task = app
        .wait_for_status(&task_id, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(
        task["error"],
        format!(
            "http://{}/nothing.bin answered 404 Not Found: check the link",
            files.address()
        )
    );
    let store = store(&app).await;
    assert_eq!(
        names(&events(&store, &task_id).await),
        vec!["created", "started", "failed"]
    );
}

#[tokio::test]
async fn a_telegram_task_fails_at_once_while_no_telegram_source_exists() {
    let app = spawn(2, TestOptions::default()).await;
    let (status, created) = app
        .create_task(json!({ "telegram_url": "https://t.me/channel/123", "user_id": TEST_USER }))
        .await;
    assert_eq!(status, 201, "{created}");
    let task_id = created["task_id"].as_str().unwrap().to_owned();

    let task = app
        .wait_for_status(&task_id, "failed", Duration::from_secs(10))
        .await;

    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("this worker has no Telegram source yet"),
        "{error}"
    );
}

#[tokio::test]
async fn sigterm_lets_a_running_task_finish_and_the_worker_exits_0() {
    let files = FileServer::start().await;
    files.add("/f.bin", ServedFile::new(body(300_000)).throttled(200_000));
    let mut app = spawn(1, TestOptions::default()).await;
    let task_id = create(&app, &files.url("/f.bin"), None).await;
    wait_for_partial(&app, "/f.bin").await;

    let child = app.workers[0].terminate().expect("the worker is running");
    let status = savestream_tests::Process::wait_exit(child, Duration::from_secs(15)).await;

    assert!(status.success(), "{status:?}\n{}", app.workers[0].log());
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(std::fs::read(app.storage_path("/f.bin")).unwrap(), body(300_000));
}

#[tokio::test]
async fn a_task_running_past_the_grace_period_is_released_and_finished_by_another_worker() {
    let files = FileServer::start().await;
    files.add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let mut app = spawn(
        1,
        TestOptions {
            shutdown_grace_seconds: 1,
            ..TestOptions::default()
        },
    )
    .await;
    let task_id = create(&app, &files.url("/slow.bin"), None).await;
    wait_for_partial(&app, "/slow.bin").await;
    // Only now a second worker: the task is certainly the first one's.
    let second = app.start_worker();

    let child = app.workers[0].terminate().expect("the worker is running");
    let status = savestream_tests::Process::wait_exit(child, Duration::from_secs(10)).await;
    files.set_throttle("/slow.bin", None);

    assert!(status.success(), "{status:?}\n{}", app.workers[0].log());
    app.wait_for_status(&task_id, "completed", Duration::from_secs(15))
        .await;
    assert_eq!(
        std::fs::read(app.storage_path("/slow.bin")).unwrap(),
        body(1_000_000)
    );
    let store = store(&app).await;
    let events = events(&store, &task_id).await;
    assert_eq!(
        names(&events),
        vec![
            "created",
            "started",
            "resolved",
            "retrying",
            "started",
            "completed"
        ]
    );
    let released = events.iter().find_map(|event| match &event.kind {
        EventKind::Retrying { error, retries, .. } => Some((error.clone(), *retries)),
        _ => None,
    });
    assert_eq!(
        released,
        Some(("worker shut down before the task finished".to_owned(), 0))
    );
    let resumed = files
        .requests_for("/slow.bin")
        .iter()
        .any(|request| request.status == 206 && request.range_start() > Some(0));
    assert!(resumed, "{:?}", files.requests_for("/slow.bin"));
    assert_eq!(holder(&app, &store, &task_id).await, second);
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once_with_3_and_the_task_is_taken_over() {
    let files = FileServer::start().await;
    files.add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    // A grace period far longer than the test: only the second signal can
    // end the drain in time.
    let mut app = spawn(
        1,
        TestOptions {
            shutdown_grace_seconds: 60,
            ..TestOptions::default()
        },
    )
    .await;
    let task_id = create(&app, &files.url("/slow.bin"), None).await;
    wait_for_partial(&app, "/slow.bin").await;
    let child = app.workers[0].terminate().expect("the worker is running");
    eventually("the drain to begin", Duration::from_secs(5), || async {
        app.workers[0].log().contains("shutting down").then_some(())
    })
    .await;

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = savestream_tests::Process::wait_exit(child, Duration::from_secs(10)).await;

    assert_eq!(status.code(), Some(3), "{status:?}\n{}", app.workers[0].log());
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(
        task["status"], "running",
        "nothing was written for the abandoned attempt"
    );
    // Nothing is lost: another worker takes the task over once the lease
    // expires, and resumes the partial file.
    files.set_throttle("/slow.bin", None);
    app.start_worker();
    app.wait_for_status(&task_id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(
        std::fs::read(app.storage_path("/slow.bin")).unwrap(),
        body(1_000_000)
    );
}

#[tokio::test]
async fn an_idle_fleet_picks_a_task_up_within_milliseconds() {
    let files = FileServer::start().await;
    files.add("/small.bin", ServedFile::new(body(1_000)));
    let app = spawn(2, TestOptions::default()).await;
    wait_for_idle_workers(&app, 2).await;
    let store = store(&app).await;

    let mut delays = Vec::new();
    for _ in 0..5 {
        let task_id = create(&app, &files.url("/small.bin"), None).await;
        app.wait_for_status(&task_id, "completed", Duration::from_secs(10))
            .await;
        let events = events(&store, &task_id).await;
        let started = events
            .iter()
            .find(|event| event.kind.name() == "started")
            .expect("a started event");
        delays.push(started.at - events[0].at);
    }

    assert!(
        delays.iter().all(|delay| *delay < 500),
        "milliseconds from created to started: {delays:?}"
    );
}

/// Waits until `count` worker connections block in `XREADGROUP`. Redis 7.0
/// lists no consumer before its first entry, so the client list shows them.
async fn wait_for_idle_workers(app: &TestApp, count: usize) {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&app.redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    eventually(
        "the workers to block on the queue",
        Duration::from_secs(15),
        || {
            let client = client.clone();
            async move {
                let clients: String = client.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.ok()?;
                let blocked = clients
                    .lines()
                    .filter(|line| line.contains("cmd=xreadgroup"))
                    .count();
                (blocked >= count).then_some(())
            }
        },
    )
    .await;
}
