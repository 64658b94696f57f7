//! A whole worker, in process: `Application::build` and
//! `run_until_stopped` against a real Redis and a real HTTP server. These
//! tests cover what lives around the pipeline: the intake loop, leases and
//! the reaper, the cancel subscription, undecodable work items, a Redis
//! restart, a Redis outage as the webhook dispatcher starts, and the
//! graceful shutdown.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use savestream_shared::config::{Config, QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::shutdown::ANSWER_MARGIN;
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::{NewTask, Store, TaskRecord};
use savestream_shared::task::{SourceKind, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, names_in, RedisServer};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_worker::app::{BACKGROUND_WAIT, RELEASE_WAIT};
use savestream_worker::consumer::BLOCK;
use savestream_worker::pipeline::RELEASED_MESSAGE;
use savestream_worker::running::RunningTasks;
use savestream_worker::storage::{FileName, LocalStorage, Storage, StorageDir, Storages};
use savestream_worker::{cancel, lease, Application, Role, RunError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "test";

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|index| (index * 13 % 241) as u8).collect()
}

fn config(redis_url: &str, storage: &std::path::Path, slots: usize, grace_seconds: u64) -> Config {
    let text = format!(
        r#"workers = {slots}
retry = 2

[redis]
url = "{redis_url}"
prefix = "{PREFIX}"

[queue]
lease_seconds = 5

[http]
allow_private_networks = true

[worker]
shutdown_grace_seconds = {grace_seconds}

[[storages]]
name = "local1"
type = "local"
base_path = "{storage}"

[[users]]
id = 1
storages = ["local1"]
"#,
        storage = storage.display(),
    );
    Config::from_toml_str(&text, "test.toml", Vec::new())
        .expect("the test config loads")
        .config
}

/// A cancel listener running in this process.
struct Listener {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Listener {
    async fn stop(self) {
        self.stop.cancel();
        self.handle.await.unwrap();
    }
}

/// Waits until the partial file `part` has bytes in it.
async fn wait_until_under_way(part: &std::path::Path) {
    eventually(
        "the download to be under way",
        Duration::from_secs(10),
        || async {
            let len = std::fs::metadata(part)
                .map(|metadata| metadata.len())
                .unwrap_or(0);
            (len > 0).then_some(())
        },
    )
    .await;
}

/// A worker running in this process.
struct Worker {
    consumer: String,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
}

impl Worker {
    async fn start(config: Config) -> Worker {
        let application = Application::build(config).await.expect("the worker starts");
        let consumer = application.consumer().to_owned();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let handle = tokio::spawn(application.run_until_stopped(shutdown));
        Worker {
            consumer,
            stop,
            handle,
        }
    }

    /// Asks for a graceful shutdown and waits for it, at most `timeout`.
    async fn shut_down(self, timeout: Duration) {
        self.stop.cancel();
        tokio::time::timeout(timeout, self.handle)
            .await
            .expect("the worker stops in time")
            .expect("the worker does not panic")
            .expect("the worker stops only when told to");
    }
}

struct Harness {
    redis: RedisServer,
    store: Store,
    files: FileServer,
    storage_dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let redis = RedisServer::start();
        let store = connect(&redis.url(), 5).await;
        Harness {
            redis,
            store,
            files: FileServer::start().await,
            storage_dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    fn config(&self, slots: usize, grace_seconds: u64) -> Config {
        config(&self.redis.url(), self.storage_dir.path(), slots, grace_seconds)
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

    /// The test's local storage, and a `Leftovers` that cleans it.
    fn leftovers(&self) -> (Arc<LocalStorage>, cancel::Leftovers) {
        let storage = Arc::new(LocalStorage::new("local1", self.storage_dir.path()).unwrap());
        let mut storages = Storages::default();
        storages.insert(storage.clone());
        let leftovers = cancel::Leftovers {
            store: self.store.clone(),
            storages,
        };
        (storage, leftovers)
    }

    /// The cancel listener a worker runs, on this harness' Redis.
    async fn listen_for_cancels(&self, running: RunningTasks, leftovers: cancel::Leftovers) -> Listener {
        let redis = RedisConfig {
            url: self.redis.url(),
            prefix: PREFIX.into(),
            startup_wait_seconds: 0,
        };
        let subscriber = cancel::subscribe(&redis, &self.store.keys().cancel_channel())
            .await
            .expect("subscribing");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(cancel::listen(subscriber, running, leftovers, stop.clone()));
        Listener { stop, handle }
    }

    async fn record(&self, task_id: &TaskId) -> TaskRecord {
        self.store.get(task_id).await.unwrap().expect("the task exists")
    }

    async fn wait_for(&self, task_id: &TaskId, status: TaskStatus, timeout: Duration) -> TaskRecord {
        eventually(&format!("task {task_id} to be {status}"), timeout, || async {
            let record = self.record(task_id).await;
            (record.task.status == status).then_some(record)
        })
        .await
    }

    async fn events(&self, task_id: &TaskId) -> Vec<(i64, EventKind)> {
        self.store
            .events(task_id)
            .await
            .unwrap()
            .into_iter()
            .map(|logged| (logged.event.at, logged.event.kind))
            .collect()
    }

    fn stored(&self, relative: &str) -> PathBuf {
        self.storage_dir.path().join(relative.trim_start_matches('/'))
    }

    async fn raw(&self) -> Client {
        let client = Builder::from_config(fred::types::config::Config::from_url(&self.redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }

    /// Waits until `count` workers block in `XREADGROUP`: idle, and woken
    /// by the next task. (Redis 7.0 lists no consumer before its first
    /// entry, so the client list is what shows them.)
    async fn wait_for_idle_workers(&self, count: usize) {
        let raw = self.raw().await;
        eventually(
            "the workers to block on the queue",
            Duration::from_secs(10),
            || {
                let raw = raw.clone();
                async move {
                    let clients: String = raw.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.ok()?;
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
}

async fn connect(redis_url: &str, lease_seconds: u64) -> Store {
    let store = Store::connect(
        &RedisConfig {
            url: redis_url.to_owned(),
            prefix: PREFIX.into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds,
            retention_hours: 1,
        },
    )
    .await
    .expect("connecting to the test redis");
    store.ensure_group().await.expect("creating the workers group");
    store
}

#[tokio::test]
async fn an_idle_worker_picks_tasks_up_at_once_and_runs_them_side_by_side() {
    let harness = Harness::start().await;
    for index in 0..3 {
        harness.files.add(
            &format!("/f{index}.bin"),
            ServedFile::new(body(300_000)).throttled(600_000),
        );
    }
    let worker = Worker::start(harness.config(3, 10)).await;
    harness.wait_for_idle_workers(1).await;

    let mut task_ids = Vec::new();
    for index in 0..3 {
        task_ids.push(harness.create(&format!("/f{index}.bin")).await);
    }
    eventually("three tasks to run at once", Duration::from_secs(5), || async {
        (harness.store.list(10).await.unwrap().running.len() == 3).then_some(())
    })
    .await;
    for (index, task_id) in task_ids.iter().enumerate() {
        harness
            .wait_for(task_id, TaskStatus::Completed, Duration::from_secs(10))
            .await;
        assert_eq!(
            std::fs::read(harness.stored(&format!("/f{index}.bin"))).unwrap(),
            body(300_000)
        );
        let events = harness.events(task_id).await;
        let created = events[0].0;
        let started = events
            .iter()
            .find(|(_, kind)| kind.name() == "started")
            .map(|(at, _)| *at)
            .expect("a started event");
        assert!(
            started - created < 500,
            "picked up after {} ms",
            started - created
        );
    }

    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_worker_starts_without_a_storage_it_cannot_use_retries_its_tasks_and_uses_it_once_it_works() {
    // Arrange: the base path cannot be made (a file is where its parent
    // should be), as a mount that is missing or read-only cannot be used.
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(50_000)));
    let blocked = harness.storage_dir.path().join("mount");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let base = blocked.join("base");
    let worker = Worker::start(config(&harness.redis.url(), &base, 1, 10)).await;

    // Act
    let task_id = harness.create("/f.bin").await;

    // Assert: retried, saying why and that another worker may take it...
    let error = eventually("the attempt to fail", Duration::from_secs(10), || async {
        harness
            .events(&task_id)
            .await
            .into_iter()
            .find_map(|(_, kind)| match kind {
                EventKind::Retrying { error, .. } => Some(error),
                _ => None,
            })
    })
    .await;
    assert!(
        error.starts_with("storage local1 is unusable on this worker: cannot create the base path")
            && error.ends_with("the task is retried, for a worker where the storage works"),
        "{error}"
    );
    // ...using up none of its retries (one bad mount must not exhaust the
    // retries of every task that lands on it)...
    assert_eq!(harness.record(&task_id).await.task.retries, 0);
    // ...and saved by the next attempt once the mount works.
    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    let record = harness
        .wait_for(&task_id, TaskStatus::Completed, Duration::from_secs(20))
        .await;
    assert_eq!(record.task.retries, 0);
    assert_eq!(std::fs::read(base.join("f.bin")).unwrap(), body(50_000));

    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_cancel_message_reaches_the_token_of_the_running_task() {
    let harness = Harness::start().await;
    let running = RunningTasks::default();
    let leftovers = cancel::Leftovers {
        store: harness.store.clone(),
        storages: Storages::default(),
    };
    let listener = harness.listen_for_cancels(running.clone(), leftovers).await;
    let task_id = harness.create("/whatever").await;
    let other = harness.create("/other").await;
    let guard = running.register("1-0", &task_id);
    let other_guard = running.register("2-0", &other);

    harness.store.cancel(&task_id).await.unwrap();

    tokio::time::timeout(Duration::from_secs(1), guard.signals.cancel.cancelled())
        .await
        .expect("the cancel message arrives within a second");
    assert!(!other_guard.signals.cancel.is_cancelled());
    listener.stop().await;
}

#[tokio::test]
async fn a_task_canceled_while_queued_loses_the_partial_files_an_earlier_attempt_left() {
    let harness = Harness::start().await;
    let (storage, leftovers) = harness.leftovers();
    let listener = harness
        .listen_for_cancels(RunningTasks::default(), leftovers)
        .await;
    let task_id = harness.create("/f.bin").await;
    let other = TaskId::generate();
    // An earlier attempt of the task reserved its file, then was released:
    // the task waits in the queue. Another task downloads beside it.
    reserve(&storage, &task_id, "/", "f.bin").await;
    reserve(&storage, &other, "/", "g.bin").await;

    harness.store.cancel(&task_id).await.unwrap();

    let others_only = vec![format!(".g.bin.{other}.part"), "g.bin.part".to_owned()];
    eventually(
        "the canceled task's partial files to go",
        Duration::from_secs(2),
        || async { (names_in(harness.storage_dir.path()) == others_only).then_some(()) },
    )
    .await;
    listener.stop().await;
}

#[tokio::test]
async fn a_burst_of_cancels_removes_the_partial_files_of_every_canceled_task() {
    let harness = Harness::start().await;
    let (storage, leftovers) = harness.leftovers();
    let listener = harness
        .listen_for_cancels(RunningTasks::default(), leftovers)
        .await;
    // Many queued tasks that earlier attempts left partial files of: far
    // more cancel messages at once than a subscriber's channel holds (1,024).
    let mut tasks = Vec::new();
    for index in 0..1500 {
        let file = format!("f{index}.bin");
        let task_id = harness.create(&format!("/{file}")).await;
        reserve(&storage, &task_id, "/", &file).await;
        tasks.push(task_id);
    }

    futures::future::try_join_all(tasks.iter().map(|task_id| harness.store.cancel(task_id)))
        .await
        .unwrap();

    eventually(
        "every canceled task's partial files to go",
        Duration::from_secs(60),
        || async { names_in(harness.storage_dir.path()).is_empty().then_some(()) },
    )
    .await;
    listener.stop().await;
}

/// Reserves `file` in `dir` for `task_id`, as an attempt does before it
/// downloads: the partial file and the name's reservation.
async fn reserve(storage: &LocalStorage, task_id: &TaskId, dir: &str, file: &str) {
    storage
        .reserve(
            task_id,
            &StorageDir::parse(dir).unwrap(),
            &FileName::parse(file).unwrap(),
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_sweep_removes_partial_files_of_ended_tasks_only() {
    let harness = Harness::start().await;
    let (storage, leftovers) = harness.leftovers();
    let canceled = harness.create("/c.bin").await;
    let queued = harness.create("/q.bin").await;
    let unknown = TaskId::generate();
    for (task_id, file) in [(&canceled, "c.bin"), (&queued, "q.bin"), (&unknown, "u.bin")] {
        reserve(&storage, task_id, "/", file).await;
    }
    // Canceled with no listener: nobody heard the message.
    harness.store.cancel(&canceled).await.unwrap();

    let removed = leftovers.sweep().await.expect("the sweep reads the store");

    assert_eq!(removed, 1);
    assert_eq!(
        names_in(harness.storage_dir.path()),
        vec![
            format!(".q.bin.{queued}.part"),
            format!(".u.bin.{unknown}.part"),
            "q.bin.part".to_owned(),
            "u.bin.part".to_owned(),
        ],
        "a queued task resumes its partial file; an unknown task's is not for this worker to judge"
    );
}

#[tokio::test]
async fn a_starting_worker_removes_what_a_task_canceled_while_no_worker_ran_left() {
    let harness = Harness::start().await;
    let storage = LocalStorage::new("local1", harness.storage_dir.path()).unwrap();
    let task_id = harness.create("/f.bin").await;
    reserve(&storage, &task_id, "/deep/er", "f.bin").await;
    harness.store.cancel(&task_id).await.unwrap();

    let worker = Worker::start(harness.config(1, 5)).await;

    let directory = harness.stored("/deep/er");
    eventually("the partial files to go", Duration::from_secs(10), || async {
        names_in(&directory).is_empty().then_some(())
    })
    .await;
    worker.shut_down(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_canceled_running_task_stops_within_a_second_and_leaves_nothing() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(2_000_000)).throttled(100_000));
    let worker = Worker::start(harness.config(2, 10)).await;
    let task_id = harness.create("/slow.bin").await;
    let part = harness.stored("/slow.bin.part");
    wait_until_under_way(&part).await;

    harness.store.cancel(&task_id).await.unwrap();

    eventually("the partial file to go", Duration::from_secs(1), || async {
        (!part.exists()).then_some(())
    })
    .await;
    eventually("the download to stop", Duration::from_secs(1), || async {
        harness
            .files
            .requests_for("/slow.bin")
            .iter()
            .all(|request| request.finished && !request.complete)
            .then_some(())
    })
    .await;
    assert!(!harness.stored("/slow.bin").exists());
    let names: Vec<&str> = harness
        .events(&task_id)
        .await
        .iter()
        .map(|(_, kind)| kind.name())
        .collect();
    assert_eq!(names, vec!["created", "started", "resolved", "canceled"]);
    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_attempt_whose_item_another_worker_took_over_stops_writing_and_leaves_its_partial_file() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(2_000_000)).throttled(100_000));
    let worker = Worker::start(harness.config(2, 10)).await;
    let task_id = harness.create("/slow.bin").await;
    let part = harness.stored("/slow.bin.part");
    wait_until_under_way(&part).await;

    // Another worker claims the item, as its reaper would once the lease
    // expired, and has not started its attempt yet: the attempt number is
    // unchanged, so this worker's progress writes still succeed and only
    // its heartbeat can tell it.
    let raw = harness.raw().await;
    let _: Value = raw
        .custom(
            fred::cmd!("XAUTOCLAIM"),
            vec![
                harness.store.keys().jobs(),
                "workers".to_owned(),
                "other-worker".to_owned(),
                "0".to_owned(),
                "0-0".to_owned(),
                "JUSTID".to_owned(),
            ],
        )
        .await
        .unwrap();

    // A heartbeat comes every third of the 5 s lease.
    eventually("the download to stop", Duration::from_secs(4), || async {
        harness
            .files
            .requests_for("/slow.bin")
            .iter()
            .all(|request| request.finished && !request.complete)
            .then_some(())
    })
    .await;
    assert!(part.exists(), "the partial file stays for the new holder");
    assert!(!harness.stored("/slow.bin").exists());
    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Running);
    let names: Vec<&str> = harness
        .events(&task_id)
        .await
        .iter()
        .map(|(_, kind)| kind.name())
        .collect();
    assert_eq!(names, vec!["created", "started", "resolved"]);
    // With a 10 s grace period, a prompt shutdown shows the attempt is over.
    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_undecodable_work_item_is_discarded_and_the_worker_goes_on() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(1_000)));
    let raw = harness.raw().await;
    let jobs = harness.store.keys().jobs();
    for fields in [["task", "not-a-task-id"], ["something", "else"]] {
        let mut args = vec![jobs.clone(), "*".to_owned()];
        args.extend(fields.map(str::to_owned));
        let _: String = raw.custom(fred::cmd!("XADD"), args).await.unwrap();
    }
    let worker = Worker::start(harness.config(2, 10)).await;

    let task_id = harness.create("/f.bin").await;

    harness
        .wait_for(&task_id, TaskStatus::Completed, Duration::from_secs(10))
        .await;
    eventually("the bad items to be deleted", Duration::from_secs(5), || async {
        let length: u64 = raw.xlen(&jobs).await.unwrap();
        (length == 0).then_some(())
    })
    .await;
    worker.shut_down(Duration::from_secs(5)).await;
}

/// A `redis-server` started by hand on a given port, for the restart test.
struct ReplacementRedis(Child);

impl ReplacementRedis {
    fn start(port: u16, dir: &std::path::Path) -> ReplacementRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        ReplacementRedis(child)
    }
}

impl Drop for ReplacementRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_worker_carries_on_after_redis_restarts_empty() {
    let mut harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(1_000)));
    let worker = Worker::start(harness.config(2, 10)).await;
    let before = harness.create("/f.bin").await;
    harness
        .wait_for(&before, TaskStatus::Completed, Duration::from_secs(10))
        .await;

    // Redis dies and comes back on the same port with nothing: no
    // function library, no stream, no consumer group.
    let port = harness.redis.port();
    harness.redis.kill();
    let _replacement = ReplacementRedis::start(port, harness.redis.dir());
    let after = eventually("redis to be back", Duration::from_secs(10), || async {
        let task_id = TaskId::generate();
        let link = harness.files.url("/f.bin");
        harness
            .store
            .create(
                &NewTask {
                    task_id: task_id.clone(),
                    source: SourceKind::Http,
                    link: link.clone(),
                    user_id: 1,
                    storage: "local1".into(),
                    dir: "/after".into(),
                    title: title::pending(SourceKind::Http, &link, "local1", "/after"),
                },
                None,
            )
            .await
            .ok()
            .map(|_| task_id)
    })
    .await;

    let record = harness
        .wait_for(&after, TaskStatus::Completed, Duration::from_secs(15))
        .await;
    assert_eq!(record.task.path.as_deref(), Some("/after/f.bin"));
    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_task_left_by_a_dead_worker_is_resumed_by_a_live_one() {
    let harness = Harness::start().await;
    harness.files.add("/f.bin", ServedFile::new(body(100_000)));
    let task_id = harness.create("/f.bin").await;
    // A worker took the task, resolved it, wrote 40 000 bytes and died.
    let dead = connect(&harness.redis.url(), 1).await;
    let jobs = dead
        .with_own_connection()
        .await
        .unwrap()
        .read_jobs("dead-worker", 1, Duration::from_secs(1))
        .await
        .unwrap();
    let lease = dead
        .start(&jobs[0].job_id, &task_id, "dead-worker")
        .await
        .unwrap();
    let resolved = title::resolved(SourceKind::Http, "f.bin", "local1", "/f.bin");
    dead.resolve(&lease, "f.bin", Some(100_000), "/f.bin", &resolved, None)
        .await
        .unwrap();
    let own_partial = LocalStorage::own_partial_name(&FileName::parse("f.bin").unwrap(), &task_id);
    std::fs::write(harness.stored(&own_partial), &body(100_000)[..40_000]).unwrap();
    let mut config = harness.config(2, 10);
    // Below the config's minimum, to keep the test short.
    config.queue.lease_seconds = 1;

    let worker = Worker::start(config).await;

    let record = harness
        .wait_for(&task_id, TaskStatus::Completed, Duration::from_secs(15))
        .await;
    assert_eq!(record.task.worker.as_deref(), Some(worker.consumer.as_str()));
    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(100_000));
    let requests = harness.files.requests_for("/f.bin");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].range_start(), Some(40_000));
    let names: Vec<&str> = harness
        .events(&task_id)
        .await
        .iter()
        .map(|(_, kind)| kind.name())
        .collect();
    assert_eq!(
        names,
        vec!["created", "started", "resolved", "started", "completed"]
    );
    worker.shut_down(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_lets_a_running_task_finish() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/f.bin", ServedFile::new(body(300_000)).throttled(300_000));
    let worker = Worker::start(harness.config(2, 10)).await;
    let task_id = harness.create("/f.bin").await;
    harness
        .wait_for(&task_id, TaskStatus::Running, Duration::from_secs(5))
        .await;

    worker.shut_down(Duration::from_secs(10)).await;

    assert_eq!(harness.record(&task_id).await.task.status, TaskStatus::Completed);
    assert_eq!(std::fs::read(harness.stored("/f.bin")).unwrap(), body(300_000));
}

#[tokio::test]
async fn shutdown_releases_a_task_still_running_when_the_grace_period_ends() {
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(2_000_000)).throttled(100_000));
    let worker = Worker::start(harness.config(2, 1)).await;
    let task_id = harness.create("/slow.bin").await;
    harness
        .wait_for(&task_id, TaskStatus::Running, Duration::from_secs(5))
        .await;

    worker.shut_down(Duration::from_secs(6)).await;

    let record = harness.record(&task_id).await;
    assert_eq!(record.task.status, TaskStatus::Queued);
    assert_eq!(record.task.error, RELEASED_MESSAGE);
    assert_eq!(record.task.retries, 0);
    assert!(harness.stored("/slow.bin.part").exists());
}

/// Makes `task_id` wait out a retry backoff of `delay` in the delayed set,
/// as a failed attempt would.
async fn delay_retry(harness: &Harness, task_id: &TaskId, delay: Duration) {
    let reader = harness.store.with_own_connection().await.unwrap();
    let jobs = reader
        .read_jobs("failing-worker", 1, Duration::from_secs(1))
        .await
        .unwrap();
    let lease = harness
        .store
        .start(&jobs[0].job_id, task_id, "failing-worker")
        .await
        .unwrap();
    harness
        .store
        .retry(&lease, "boom", RetryKind::Failure { max_retries: 3 }, delay)
        .await
        .unwrap();
    assert!(harness.store.next_due().await.unwrap().is_some());
}

/// A local clock `offset_ms` away from the real one (and Redis').
fn skewed_clock(offset_ms: i64) -> impl Fn() -> i64 {
    move || Store::now_ms() + offset_ms
}

#[tokio::test]
async fn a_due_retry_is_promoted_on_time_when_this_clock_runs_an_hour_behind_redis() {
    let harness = Harness::start().await;
    let task_id = harness.create("/f.bin").await;
    delay_retry(&harness, &task_id, Duration::from_millis(300)).await;
    let stop = CancellationToken::new();

    let promoter = tokio::spawn(lease::promote_with_clock(
        harness.store.clone(),
        stop.clone(),
        skewed_clock(-3_600_000),
    ));

    // Due in 300 ms by Redis' clock; the promoter sleeps at most 1 s.
    eventually("the retry to be queued again", Duration::from_secs(3), || async {
        harness.store.next_due().await.unwrap().is_none().then_some(())
    })
    .await;
    let reader = harness.store.with_own_connection().await.unwrap();
    let jobs = reader
        .read_jobs("next-worker", 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].task_id.as_ref().ok(), Some(&task_id));
    stop.cancel();
    promoter.await.unwrap();
}

#[tokio::test]
async fn the_promoter_asks_redis_at_most_five_times_a_second_when_this_clock_runs_an_hour_ahead() {
    let harness = Harness::start().await;
    let task_id = harness.create("/f.bin").await;
    delay_retry(&harness, &task_id, Duration::from_secs(30)).await;
    let raw = harness.raw().await;
    let _: Value = raw.custom(fred::cmd!("CONFIG"), vec!["RESETSTAT"]).await.unwrap();
    let stop = CancellationToken::new();

    let promoter = tokio::spawn(lease::promote_with_clock(
        harness.store.clone(),
        stop.clone(),
        skewed_clock(3_600_000),
    ));
    // A rate is measured over time: there is no event to wait for instead.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    promoter.await.unwrap();

    let stats: String = raw
        .custom(fred::cmd!("INFO"), vec!["commandstats"])
        .await
        .unwrap();
    let promote_calls: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=6).contains(&promote_calls),
        "{promote_calls} promote calls in a second: {stats}"
    );
    assert!(
        harness.store.next_due().await.unwrap().is_some(),
        "the retry is not due for 30 s by Redis' clock"
    );
}

#[tokio::test]
async fn a_redis_outage_as_the_webhook_dispatcher_starts_delays_it_and_stops_nothing() {
    // Arrange: a webhooks worker built while Redis answered; then Redis
    // dies, and its port refuses every connection (a listener that drops
    // them).
    let mut harness = Harness::start().await;
    let mut config = harness.config(1, 1);
    config.api.webhook_url = Some("http://127.0.0.1:1/hook".parse().expect("a valid URL"));
    let application = Application::build_with_role(config, Role::Webhooks)
        .await
        .expect("the worker starts");
    let port = harness.redis.port();
    harness.redis.kill();
    let refuser = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("taking the dead redis' port");
    let stop = CancellationToken::new();
    let mut handle = tokio::spawn(application.run_until_stopped(stop.clone().cancelled_owned()));

    // Act: an outage longer than the store's 5 s command timeout, so the
    // dispatcher's first calls fail rather than wait for a reconnect. The
    // span is the scenario itself, not a wait for something to happen.
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        tokio::select! {
            accepted = refuser.accept() => drop(accepted.expect("accepting a connection")),
            ended = &mut handle => panic!("the worker stopped during the outage: {ended:?}"),
            () = tokio::time::sleep_until(outage_ends) => break,
        }
    }
    drop(refuser);
    let _replacement = ReplacementRedis::start(port, harness.redis.dir());

    // Assert: the dispatcher starts once Redis is back (it blocks reading
    // the events), and the worker stops only when told to.
    eventually(
        "the dispatcher to read events from the replacement redis",
        Duration::from_secs(15),
        || async {
            let client =
                Builder::from_config(fred::types::config::Config::from_url(&harness.redis.url()).ok()?)
                    .build()
                    .ok()?;
            client.init().await.ok()?;
            let clients: String = client.custom(fred::cmd!("CLIENT"), vec!["LIST"]).await.ok()?;
            let _ = client.quit().await;
            clients.contains("cmd=xreadgroup").then_some(())
        },
    )
    .await;
    assert!(!handle.is_finished(), "{:?}", handle.await);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the worker stops in time")
        .expect("the worker does not panic")
        .expect("the worker stops only when told to");
}

#[tokio::test]
async fn a_worker_told_to_stop_while_redis_does_not_answer_exits_in_seconds_not_after_each_calls_timeout() {
    // Arrange: an idle worker (tasks and webhooks) with a grace period of
    // 1 s; then Redis stops answering without closing its connections (a
    // frozen host), so every call would wait out the store's 5 s command
    // timeout.
    let harness = Harness::start().await;
    let mut config = harness.config(1, 1);
    config.api.webhook_url = Some("http://127.0.0.1:1/hook".parse().expect("a valid URL"));
    let worker = Worker::start(config).await;
    harness.wait_for_idle_workers(1).await;
    let frozen = Frozen::stop(harness.redis.pid());

    // Act
    let asked = tokio::time::Instant::now();
    worker.shut_down(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    drop(frozen);

    // Assert: it runs no task, so nothing it holds needs Redis. At most it
    // waits for the read of work items in flight (its block time and a 1 s
    // margin), then for the background loops and for leaving the registry
    // (a second each). It took 16.7 s when every call waited for its
    // timeout in turn.
    let bound = BLOCK + ANSWER_MARGIN + 2 * BACKGROUND_WAIT + Duration::from_secs(1);
    assert!(
        took < bound,
        "the worker took {took:?} to stop while Redis did not answer (bound {bound:?})"
    );
}

#[tokio::test]
async fn attempts_that_cannot_release_their_tasks_are_abandoned_after_the_release_wait_and_nothing_is_lost() {
    // Arrange: a worker with a long lease runs a slow download; then Redis
    // stops answering (a frozen host), so the release at the end of the
    // grace period would retry for up to a lease (30 s).
    let harness = Harness::start().await;
    harness
        .files
        .add("/slow.bin", ServedFile::new(body(400_000)).throttled(100_000));
    let mut config = harness.config(1, 1);
    config.queue.lease_seconds = 30;
    let worker = Worker::start(config).await;
    let task_id = harness.create("/slow.bin").await;
    harness
        .wait_for(&task_id, TaskStatus::Running, Duration::from_secs(5))
        .await;
    let frozen = Frozen::stop(harness.redis.pid());

    // Act
    let asked = tokio::time::Instant::now();
    worker.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(30), worker.handle)
        .await
        .expect("the worker stops before the lease would let the release give up")
        .expect("the worker does not panic");
    let took = asked.elapsed();
    drop(frozen);

    // Assert: it exits with the abandoned attempt named, once the grace
    // period (1 s) and the release wait are over, not after the lease.
    match ended {
        Err(RunError::Abandoned { attempts }) => assert_eq!(attempts, 1),
        other => panic!("expected the attempt to be abandoned, got {other:?}"),
    }
    let bound = Duration::from_secs(1) + RELEASE_WAIT + BLOCK + ANSWER_MARGIN + 2 * BACKGROUND_WAIT;
    assert!(took < bound, "the worker took {took:?} to stop (bound {bound:?})");
    // And nothing is lost: Redis runs the release it was sent once it
    // answers again, or, had the release not reached it, the work item is
    // still pending and expires; either way another worker (with a short
    // lease here) finishes the task from the partial file.
    let mut config = harness.config(1, 10);
    config.queue.lease_seconds = 1;
    let second = Worker::start(config).await;
    let record = harness
        .wait_for(&task_id, TaskStatus::Completed, Duration::from_secs(20))
        .await;
    assert_eq!(record.task.worker.as_deref(), Some(second.consumer.as_str()));
    assert_eq!(std::fs::read(harness.stored("/slow.bin")).unwrap(), body(400_000));
    second.shut_down(Duration::from_secs(10)).await;
}

/// A process stopped with SIGSTOP until this drops (then SIGCONT), so a
/// failed assertion does not leave a frozen Redis behind.
struct Frozen(u32);

impl Frozen {
    fn stop(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {which} {pid} failed");
}
