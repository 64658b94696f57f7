//! Redis restart: Redis, with its append-only file, is SIGKILLed in the
//! middle of a run and started again on the same port and dir, while a
//! client keeps creating tasks and two workers keep downloading. Redis stays
//! away for about ten seconds, longer than a lease.
//!
//! What must hold: every task that got a 201 reaches a terminal state
//! (`completed` here), none is lost and none is duplicated: the tasks in the
//! log are exactly the tasks the client was given, each with one `created`
//! and one terminal event, and every file is byte-identical where its task
//! says it is. The client is the careful one the contract allows: it sends
//! an `Idempotency-Key` and repeats the same key until it gets an answer, so
//! a create that Redis applied but could not acknowledge before dying is
//! answered 200 with the same task, not created twice.
//!
//! The second test pins down, deterministically, what the first one meets
//! by chance: an attempt that reserves its file while Redis is away, and so
//! cannot record where. The next attempt must take the same name back (not
//! `<name>_1`) and no partial file may be left behind.
//!
//! # Durability: the setting that guarantees this
//!
//! `appendonly yes` with `appendfsync always` (and `maxmemory-policy
//! noeviction`, Redis's default). With `always`, Redis writes and fsyncs
//! each write to the append-only file before it answers, so every 201 the
//! API gave, and every transition a worker was told succeeded, survives a
//! crash of Redis *or of the machine*. That is the setting tested here.
//!
//! `appendfsync everysec` (Redis's default once AOF is on) fsyncs once a
//! second. A crash of the Redis process alone normally loses nothing, since
//! each write reaches the kernel before the answer is sent, except while a
//! slow disk makes Redis postpone its writes (up to two seconds). A power
//! loss or kernel crash loses up to about a second of acknowledged writes
//! (two with a stalled disk): tasks that got a 201 can vanish, and a
//! transition can roll back, in which case the attempt is made again after
//! its lease (a file already complete is recognised by its size).
//! `appendonly no` (no persistence, as in the other tests) loses everything
//! on any restart.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::{eventually, RedisServer};
use savestream_tests::{TestApp, TestOptions};

use savestream_shared::store::Store;

use super::support::{
    assert_each_completed_once, body, completed_path, create, create_until_answered, direct_link_request,
    events_by_task, partial_files, store_at, wait_until_no_task_is_pending, Created, GatedServer,
    RedisProcess, REDIS_AOF_ALWAYS,
};

const TASKS: usize = 120;
/// The client's pace: one create every this long, so the run spans the outage.
const CREATE_EVERY: Duration = Duration::from_millis(40);
/// Redis stays down until the client has been refused this often. The API
/// answers a create 503 after its 5-second Redis timeout, so the outage
/// lasts about ten seconds: longer than a lease, so every running task's
/// lease runs out while Redis is away.
const REFUSALS_DURING_OUTAGE: usize = 2;
/// How long the client waits before repeating a create that got no answer.
const CLIENT_RETRY_DELAY: Duration = Duration::from_millis(50);

fn served_file(index: usize) -> (String, Vec<u8>, bool) {
    let throttled = index.is_multiple_of(3);
    let size = if throttled {
        30_000
    } else {
        1 + (index * 4_099) % 20_000
    };
    (
        format!("r-{index:03}.bin"),
        body(1_000 + index as u64, size),
        throttled,
    )
}

/// A finished run: the app (still up, for its files), Redis as restarted,
/// and what the client was given.
struct Restarted {
    app: TestApp,
    store: Store,
    created: Vec<Created>,
    _redis: RedisProcess,
    _files: FileServer,
}

/// Runs the scenario of the module docs to its end: every pending task ended.
async fn run_through_a_redis_restart() -> Restarted {
    let redis = RedisServer::start_with(&REDIS_AOF_ALWAYS);
    let (port, redis_dir) = (redis.port(), redis.dir().to_path_buf());
    let files = FileServer::start().await;
    for index in 0..TASKS {
        let (name, bytes, throttled) = served_file(index);
        let mut served = ServedFile::new(bytes);
        if throttled {
            served = served.throttled(30_000);
        }
        files.add(&format!("/r/{name}"), served);
    }
    let mut app = TestApp::spawn_with_redis(
        TestOptions {
            workers: 2,
            ..TestOptions::default()
        },
        redis,
    )
    .await;
    let requests: Vec<serde_json::Value> = (0..TASKS)
        .map(|index| direct_link_request(&files.url(&format!("/r/{}", served_file(index).0)), Some("/r")))
        .collect();
    let client = app.client.clone();
    let create_url = app.url("/api/v1/tasks");
    let refused = Arc::new(AtomicUsize::new(0));
    let refused_seen = refused.clone();
    let creator = tokio::spawn(async move {
        let mut created = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            let key = format!("reliability-redis-restart-{index}");
            created.push(
                create_until_answered(&client, &create_url, &request, &key, CLIENT_RETRY_DELAY, &refused)
                    .await,
            );
            tokio::time::sleep(CREATE_EVERY).await;
        }
        created
    });
    let before = store_at(&app.redis.url(), app.options.lease_seconds).await;
    eventually(
        "a third of the tasks to be created",
        Duration::from_secs(30),
        || async {
            let log = before.read_log().await.ok()?;
            (log.iter()
                .filter(|logged| logged.event.kind.name() == "created")
                .count()
                >= TASKS / 3)
                .then_some(())
        },
    )
    .await;

    // Kill Redis just after a create, while a worker starts that task; once
    // the API has noticed and the client has been refused, start it again
    // in place.
    app.redis.kill();
    let ready = reqwest::Client::new();
    let ready_url = app.url("/ready");
    eventually(
        "the api to report redis down",
        Duration::from_secs(10),
        || async {
            let response = ready.get(&ready_url).send().await.ok()?;
            (response.status() == 503).then_some(())
        },
    )
    .await;
    eventually("creates to be refused", Duration::from_secs(30), || async {
        (refused_seen.load(Ordering::SeqCst) >= REFUSALS_DURING_OUTAGE).then_some(())
    })
    .await;
    let restarted = RedisProcess::start(port, &redis_dir, &REDIS_AOF_ALWAYS).await;
    let created = creator.await.expect("the creating client panicked");
    let store = store_at(&app.redis.url(), app.options.lease_seconds).await;
    wait_until_no_task_is_pending(&store, Duration::from_secs(90)).await;
    Restarted {
        app,
        store,
        created,
        _redis: restarted,
        _files: files,
    }
}

#[tokio::test]
async fn every_task_that_got_a_201_ends_once_when_redis_with_aof_always_is_killed_and_restarted() {
    // Bound whole: Redis and the file server must outlive the checks.
    let run = run_through_a_redis_restart().await;
    let (app, store, created) = (&run.app, &run.store, &run.created);

    // The client's tasks are exactly the log's, each created once and ended once.
    let given: Vec<&str> = created.iter().map(|created| created.task_id.as_str()).collect();
    let given_set: BTreeSet<&str> = given.iter().copied().collect();
    assert_eq!(
        given_set.len(),
        TASKS,
        "two creates got the same task: {created:?}"
    );
    let log = events_by_task(store).await;
    let logged_set: BTreeSet<&str> = log.keys().map(String::as_str).collect();
    assert_eq!(
        logged_set.difference(&given_set).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "tasks in the log that no client was given: duplicates"
    );
    assert_each_completed_once(given.iter().copied(), &log);
    // Each file is whole, where its task says it is.
    for (index, created) in created.iter().enumerate() {
        let (_, bytes, _) = served_file(index);
        let path = completed_path(&log[&created.task_id]).unwrap_or_default();
        let stored = std::fs::read(app.storage_path(path))
            .unwrap_or_else(|error| panic!("task {} at {path:?}: {error}", created.task_id));
        assert!(stored == bytes, "task {} at {path} differs", created.task_id);
    }
    let repeats: usize = created.iter().map(|created| created.repeats).sum();
    assert!(repeats > 0, "no create met the outage: the test proved nothing");
    let repeated = created.iter().filter(|created| created.repeats > 0).count();
    eprintln!(
        "redis restart: {TASKS} tasks, {repeated} creates repeated through the outage \
         ({repeats} requests refused), all completed once"
    );
}

#[tokio::test]
async fn a_file_reserved_while_redis_is_away_keeps_its_name_and_leaves_no_partial_file() {
    // Arrange: one worker, a server that holds the first request's answer.
    let redis = RedisServer::start_with(&REDIS_AOF_ALWAYS);
    let (port, redis_dir) = (redis.port(), redis.dir().to_path_buf());
    let server = GatedServer::start(body(9, 20_000)).await;
    let mut app = TestApp::spawn_with_redis(
        TestOptions {
            workers: 1,
            ..TestOptions::default()
        },
        redis,
    )
    .await;
    let task_id = create(&app, &server.url("/gated.bin"), Some("/g")).await;
    eventually(
        "the worker to ask for the file",
        Duration::from_secs(20),
        || async { (server.requests() > 0).then_some(()) },
    )
    .await;

    // Act: Redis dies while the worker waits for the answer; the worker
    // then reserves the file and cannot record where; Redis comes back
    // once the attempt has given up.
    app.redis.kill();
    server.open();
    eventually(
        "the attempt to give up on redis",
        Duration::from_secs(30),
        || async {
            app.workers[0]
                .log()
                .contains("redis stayed unavailable")
                .then_some(())
        },
    )
    .await;
    let _restarted = RedisProcess::start(port, &redis_dir, &REDIS_AOF_ALWAYS).await;
    let task = app
        .wait_for_status(&task_id, "completed", Duration::from_secs(60))
        .await;

    // Assert: the name asked for, and nothing else on disk.
    assert_eq!(task["path"], "/g/gated.bin", "{task}");
    assert_eq!(partial_files(&app.storage_dir), Vec::<std::path::PathBuf>::new());
    assert_eq!(app.stored_files(), vec!["g/gated.bin".to_owned()]);
}

#[tokio::test]
async fn a_worker_started_while_redis_is_down_waits_for_it_and_then_works() {
    // Arrange: a task queued with no worker to run it, then Redis dies.
    let redis = RedisServer::start_with(&REDIS_AOF_ALWAYS);
    let (port, redis_dir) = (redis.port(), redis.dir().to_path_buf());
    let files = FileServer::start().await;
    let bytes = body(11, 5_000);
    files.add("/late/file.bin", ServedFile::new(bytes.clone()));
    let mut app = TestApp::spawn_with_redis(TestOptions::default(), redis).await;
    let task_id = create(&app, &files.url("/late/file.bin"), Some("/late")).await;
    app.redis.kill();

    // Act: a worker starts during the outage; Redis comes back.
    let worker = app.start_worker();
    eventually(
        "the worker to wait for redis",
        Duration::from_secs(20),
        || async {
            app.workers[worker]
                .log()
                .contains("redis is not answering: waiting for it")
                .then_some(())
        },
    )
    .await;
    let _restarted = RedisProcess::start(port, &redis_dir, &REDIS_AOF_ALWAYS).await;

    // Assert: that worker, still the same process, ran the task.
    let task = app
        .wait_for_status(&task_id, "completed", Duration::from_secs(30))
        .await;
    assert!(app.workers[worker].is_running(), "{}", app.workers[worker].log());
    assert_eq!(task["path"], "/late/file.bin", "{task}");
    assert!(std::fs::read(app.storage_path("/late/file.bin")).unwrap() == bytes);
}
