//! The `savestream-worker` binary from the outside: exit codes and the one
//! line it prints when it cannot start, a clean exit on SIGTERM, and
//! `rebuild`.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use savestream_shared::config::Config;
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::{ApiInfo, Lease, NewTask, Store};
use savestream_shared::task::{SourceKind, Task, TaskId, TaskStatus};
use savestream_shared::title;
use savestream_testkit::{eventually, free_port, RedisServer};

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_savestream-worker"));
    command.env("NO_COLOR", "1").env_remove("RUST_LOG");
    // Settings from the environment of whoever runs the tests must not leak in.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SAVESTREAM_") {
            command.env_remove(name);
        }
    }
    command
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_config(dir: &std::path::Path, redis_url: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[api]\ntoken = \"t\"\n[redis]\nurl = \"{redis_url}\"\n[[storages]]\nname = \"local1\"\ntype = \"local\"\n\
         base_path = \"{}\"\n[[users]]\nid = 1\nstorages = [\"local1\"]\n",
        dir.join("downloads").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A config whose Redis is a free port with nothing listening, its URL
/// holding the password `hunter2`, waited for `wait_seconds` at start.
fn unreachable_redis_config(dir: &std::path::Path, wait_seconds: u64) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let config = write_config(dir, &format!("redis://:hunter2@127.0.0.1:{port}"));
    let text = std::fs::read_to_string(&config).unwrap();
    let waited = format!("[redis]\nstartup_wait_seconds = {wait_seconds}\n");
    std::fs::write(&config, text.replace("[redis]\n", &waited)).unwrap();
    (config, port)
}

/// A worker process that a failing test does not leave running.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // It may have exited already; then there is nothing to kill.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_missing_config_file_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = worker()
        .args(["--config", "nowhere.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: nowhere.toml: config file not found"),
        "{lines:?}"
    );
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "workers = 0\n").unwrap();
    let output = worker().current_dir(dir.path()).output().unwrap();

    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("error: config.toml: workers:"), "{lines:?}");
}

#[test]
fn an_unreachable_redis_is_waited_for_then_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = unreachable_redis_config(dir.path(), 1);
    let output = worker().arg("--config").arg(&config).output().unwrap();

    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("redis is not answering: waiting for it")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|line| line.contains("hunter2")),
        "the password leaked: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("error: starting the worker: cannot connect to redis at redis://")
            && last.contains(&format!("@127.0.0.1:{port}")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn sigterm_stops_an_idle_worker_with_exit_0() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis.url());
    let log = dir.path().join("worker.log");
    let mut child = worker()
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    eventually("the worker to start", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("worker started").then_some(())
    })
    .await;

    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = eventually("the worker to exit", Duration::from_secs(10), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("worker stopped"), "{text}");
}

#[test]
fn login_without_telegram_settings_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "redis://127.0.0.1:1");
    let output = worker()
        .arg("--config")
        .arg(&config)
        .arg("login")
        .stdin(Stdio::null())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "error: cannot log in: the Telegram settings cannot be used: set `[telegram] app_id`"
        ),
        "{lines:?}"
    );
    assert!(!lines[0].ends_with('.'), "{lines:?}");
}

#[test]
fn login_asks_for_the_phone_number_and_stops_cleanly_when_input_ends() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "redis://127.0.0.1:1");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[telegram]\napp_id = 12345\napp_hash = \"0123456789abcdef0123456789abcdef\"\n");
    text.push_str("[telegram.userbot]\nenable = true\n");
    std::fs::write(&config, text).unwrap();

    // No answers at all: the prompt must say what it wanted and fail in one
    // line, before any network traffic.
    let output = worker()
        .arg("--config")
        .arg(&config)
        .arg("login")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Phone number"), "{stdout}");
    let lines = stderr_lines(&output);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.starts_with("error: cannot log in: "), "{lines:?}");
}

#[test]
fn the_webhooks_role_without_a_webhook_url_exits_1_saying_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "redis://127.0.0.1:1");
    let output = worker()
        .arg("--config")
        .arg(&config)
        .args(["--role", "webhooks"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    assert_eq!(
        lines.last().map(String::as_str),
        Some(
            "error: starting the worker: --role webhooks runs only the webhook dispatcher, and \
             [api] webhook_url is not set: set it, or run another role"
        ),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_webhooks_role_whose_dispatcher_cannot_start_exits_1_naming_it() {
    let redis = RedisServer::start();
    // The event stream's key holds a string: Redis refuses the dispatcher's
    // XGROUP CREATE with WRONGTYPE, as surely as any refusal can be made.
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis.url()).unwrap())
        .build()
        .unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    let _: () =
        fred::prelude::KeysInterface::set(&client, "{savestream}:events", "not a stream", None, None, false)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis.url());
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[api]\n", "[api]\nwebhook_url = \"http://127.0.0.1:1/hook\"\n"),
    )
    .unwrap();
    let log = dir.path().join("worker.log");
    let mut child = KilledOnDrop(
        worker()
            .arg("--config")
            .arg(&config)
            .args(["--role", "webhooks"])
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );

    let exited = eventually("the worker to exit", Duration::from_secs(10), || {
        let status = child.0.try_wait().unwrap();
        async move { status }
    })
    .await;

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(exited.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: starting the worker: cannot start the webhook dispatcher: creating its consumer group on redis at redis://"
        ) && last.contains("WRONGTYPE"),
        "{text}"
    );
    assert!(!text.contains("worker started"), "{text}");
}

#[test]
fn an_unknown_role_is_a_usage_error() {
    let output = worker().args(["--role", "everything"]).output().unwrap();

    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`everything` is not a role: use all, tasks or webhooks"),
        "{stderr}"
    );
}

#[test]
fn a_bot_token_without_an_app_id_exits_1_saying_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "redis://127.0.0.1:1");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[telegram]\ntoken = \"123:abc\"\n");
    std::fs::write(&config, text).unwrap();

    let output = worker().arg("--config").arg(&config).output().unwrap();

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let lines = stderr_lines(&output);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: starting the worker: the Telegram settings cannot be used: set `[telegram] app_id`"
        ),
        "{lines:?}"
    );
    assert!(!last.contains("123:abc"), "the token is not printed: {last}");
}

/// A store on the Redis, prefix and lease the config file names, as the
/// binary reads them (without the environment of whoever runs the tests).
async fn store_of(config: &Path) -> Store {
    let config = Config::load_with_env(config, []).unwrap().config;
    let store = Store::connect(&config.redis, &config.queue).await.unwrap();
    store.ensure_group().await.unwrap();
    store
}

/// Creates a direct-link task.
async fn create(store: &Store) -> TaskId {
    let task_id = TaskId::generate();
    let link = "https://example.com/file.bin";
    let new_task = NewTask {
        task_id: task_id.clone(),
        source: SourceKind::Http,
        link: link.into(),
        user_id: 1,
        storage: "local1".into(),
        dir: "/inbox".into(),
        title: title::pending(SourceKind::Http, link, "local1", "/inbox"),
    };
    assert!(store.create(&new_task, None).await.unwrap().is_new);
    task_id
}

/// Creates a task and starts it as worker `test-worker` would.
async fn create_and_start(store: &Store, reader: &Store) -> Lease {
    let task_id = create(store).await;
    let jobs = reader
        .read_jobs("test-worker", 1, Duration::from_secs(1))
        .await
        .unwrap();
    let job = jobs.into_iter().next().expect("the task's work item");
    assert_eq!(job.task_id.as_ref(), Ok(&task_id), "the queue was not empty");
    store.start(&job.job_id, &task_id, "test-worker").await.unwrap()
}

/// Tasks that have ended: one completed, one failed, one canceled while queued.
/// A Redis of the test's own holding three ended tasks ([`ended_tasks`]),
/// the worker's config for it, a store on it and a second connection for
/// reading work items.
struct EndedTasks {
    redis: RedisServer,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    store: Store,
    reader: Store,
}

async fn with_ended_tasks() -> EndedTasks {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis.url());
    let store = store_of(&config).await;
    let reader = store.with_own_connection().await.unwrap();
    ended_tasks(&store, &reader).await;
    EndedTasks {
        redis,
        dir,
        config,
        store,
        reader,
    }
}

async fn ended_tasks(store: &Store, reader: &Store) {
    let lease = create_and_start(store, reader).await;
    store.complete(&lease, Some(3), "/inbox/file.bin").await.unwrap();
    let lease = create_and_start(store, reader).await;
    store.fail(&lease, "the server said 404").await.unwrap();
    let canceled = create(store).await;
    store.cancel(&canceled).await.unwrap();
}

/// The log folded, as the projection should hold it.
async fn fold(store: &Store) -> HashMap<TaskId, Task> {
    let folded = store.fold_log().await.unwrap();
    assert!(folded.truncated.is_empty());
    folded
        .tasks
        .into_iter()
        .map(|(task_id, folded)| (task_id, folded.task))
        .collect()
}

/// Deletes the projection: every task hash and the sorted sets.
async fn lose_projection(redis: &RedisServer, store: &Store) {
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis.url()).unwrap())
        .build()
        .unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    let keys = store.keys();
    let mut doomed: Vec<String> = store
        .projection()
        .await
        .unwrap()
        .keys()
        .map(|task_id| keys.task(task_id))
        .collect();
    doomed.extend([keys.queued(), keys.running(), keys.delayed()]);
    let _: i64 = fred::prelude::KeysInterface::del(&client, doomed).await.unwrap();
    assert!(store.projection().await.unwrap().is_empty());
}

/// Runs the binary with `args` after `--config config`, off the runtime's thread.
async fn run_worker(config: &Path, args: &[&str]) -> Output {
    let mut command = worker();
    command.arg("--config").arg(config).args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn rebuild_restores_a_lost_projection_from_the_log_and_prints_what_it_rebuilt() {
    let EndedTasks {
        redis,
        dir: _dir,
        config,
        store,
        reader,
    } = with_ended_tasks().await;
    let backing_off = create_and_start(&store, &reader).await;
    store
        .retry(
            &backing_off,
            "the server said 503",
            RetryKind::Failure { max_retries: 3 },
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let running = create_and_start(&store, &reader).await;
    let queued = create(&store).await;
    let live = store.projection().await.unwrap();
    assert_eq!(live, fold(&store).await);
    let list_before = store.list(100).await.unwrap();
    let due_before = store.next_due().await.unwrap();
    assert!(due_before.is_some(), "the backing-off task is delayed");
    lose_projection(&redis, &store).await;

    let output = run_worker(&config, &["rebuild"]).await;

    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "tasks rebuilt: 6\nqueued: 2\nrunning: 1\ndelayed: 1\nexpired: 0\nkept: 0\n",
        "{output:?}"
    );
    let rebuilt = store.projection().await.unwrap();
    assert_eq!(rebuilt, fold(&store).await);
    assert_eq!(rebuilt, live);
    assert_eq!(store.list(100).await.unwrap(), list_before);
    assert_eq!(rebuilt[&running.task.id].status, TaskStatus::Running);
    assert_eq!(rebuilt[&queued].status, TaskStatus::Queued);
    assert_eq!(
        store.next_due().await.unwrap(),
        due_before,
        "the backing-off task is delayed again"
    );
}

/// Asserts that a `rebuild` was refused: exit 1, nothing on stdout, a last
/// line that starts with `starts`, names each of `names`, says to stop the
/// processes or use `--force`; and that it wrote nothing.
async fn assert_rebuild_refused(refused: &Output, store: &Store, starts: &str, names: &[&str]) {
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let lines = stderr_lines(refused);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(starts)
            && names.iter().all(|name| last.contains(name))
            && last.contains("Stop the workers and the API first")
            && last.contains("--force"),
        "{lines:?}"
    );
    assert!(
        store.projection().await.unwrap().is_empty(),
        "the refused rebuild wrote"
    );
}

#[tokio::test]
async fn rebuild_refuses_while_a_worker_is_registered_naming_it_and_runs_with_force() {
    // Only ended tasks: the live worker below has nothing to take or write.
    let EndedTasks {
        redis,
        dir,
        config,
        store,
        ..
    } = with_ended_tasks().await;
    let live = store.projection().await.unwrap();
    let log = dir.path().join("worker.log");
    let mut running_worker = KilledOnDrop(
        worker()
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let registered = eventually("the worker to register", Duration::from_secs(10), || async {
        store.workers().await.unwrap().into_iter().next()
    })
    .await;
    assert_eq!(registered.pid, running_worker.0.id());
    lose_projection(&redis, &store).await;

    let refused = run_worker(&config, &["rebuild"]).await;

    assert_rebuild_refused(
        &refused,
        &store,
        "error: refusing to rebuild: 1 worker process is registered as live",
        &[&registered.name],
    )
    .await;

    // A worker that crashed stays registered until its registration
    // expires: the rebuild still refuses, and --force runs it.
    running_worker.0.kill().unwrap();
    running_worker.0.wait().unwrap();
    let names: Vec<String> = store
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, vec![registered.name.clone()]);
    let still_refused = run_worker(&config, &["rebuild"]).await;
    assert_eq!(still_refused.status.code(), Some(1), "{still_refused:?}");
    assert!(
        store.projection().await.unwrap().is_empty(),
        "the refused rebuild wrote"
    );

    let forced = run_worker(&config, &["rebuild", "--force"]).await;

    assert_eq!(forced.status.code(), Some(0), "{forced:?}");
    assert_eq!(
        String::from_utf8_lossy(&forced.stdout),
        "tasks rebuilt: 3\nqueued: 0\nrunning: 0\ndelayed: 0\nexpired: 0\nkept: 0\n",
        "{forced:?}"
    );
    assert!(
        String::from_utf8_lossy(&forced.stderr).contains(&registered.name),
        "--force names whom it overrides: {forced:?}"
    );
    let rebuilt = store.projection().await.unwrap();
    assert_eq!(rebuilt, fold(&store).await);
    assert_eq!(rebuilt, live);
}

#[tokio::test]
async fn the_worker_raises_its_open_file_limit_to_the_hard_limit() {
    // Arrange: a worker started with 256 open files allowed and 4,096 at
    // most, as a service manager may leave it (systemd's soft limit is
    // 1,024): too few for many downloads, each of which holds a descriptor
    // per directory level of its path.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis.url());
    let store = store_of(&config).await;
    let mut command = worker();
    command.arg("--config").arg(&config).stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec, and
    // makes one system call, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            use rustix::process::{setrlimit, Resource, Rlimit};
            let limit = Rlimit {
                current: Some(256),
                maximum: Some(4096),
            };
            setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)
        });
    }

    // Act
    let running = KilledOnDrop(command.spawn().unwrap());

    // Assert: once it runs (registered), its soft limit is the hard one.
    let pid = running.0.id();
    eventually("the worker to register", Duration::from_secs(10), || async {
        store
            .workers()
            .await
            .unwrap()
            .into_iter()
            .find(|worker| worker.pid == pid)
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a line for open files")
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files, ["4096", "4096"], "soft and hard limits: {limits}");
}

#[tokio::test]
async fn rebuild_refuses_while_an_api_process_is_registered_naming_it_and_runs_with_force() {
    // Arrange: a lost projection, and an API process registered as live
    // (as a running savestream-api keeps itself registered: its own test
    // is in api/tests/registration.rs). No worker runs.
    let EndedTasks {
        redis,
        dir: _dir,
        config,
        store,
        ..
    } = with_ended_tasks().await;
    let live = store.projection().await.unwrap();
    let api = ApiInfo {
        name: "api-host-4242-d4mq2nk0h9pc73b0qpag".to_owned(),
        host: "api-host".to_owned(),
        pid: 4242,
        address: "10.0.0.7:8080".to_owned(),
        started_at: Store::now_ms(),
        seen_at: 0,
    };
    store.register_api(&api).await.unwrap();
    lose_projection(&redis, &store).await;

    // Act
    let refused = run_worker(&config, &["rebuild"]).await;

    // Assert: refused, naming the API process and where it listens, with
    // nothing written; --force runs it.
    assert_rebuild_refused(
        &refused,
        &store,
        "error: refusing to rebuild: 1 API process is registered as live",
        &[&api.name, "API on 10.0.0.7:8080"],
    )
    .await;

    let forced = run_worker(&config, &["rebuild", "--force"]).await;

    assert_eq!(forced.status.code(), Some(0), "{forced:?}");
    assert!(
        String::from_utf8_lossy(&forced.stderr).contains(&api.name),
        "--force names whom it overrides: {forced:?}"
    );
    assert_eq!(store.projection().await.unwrap(), live);
}

#[test]
fn rebuild_with_an_unreachable_redis_exits_1_naming_it_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = unreachable_redis_config(dir.path(), 1);

    let output = worker()
        .arg("--config")
        .arg(&config)
        .arg("rebuild")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let lines = stderr_lines(&output);
    assert!(
        !lines.iter().any(|line| line.contains("hunter2")),
        "the password leaked: {lines:?}"
    );
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot connect to redis at redis://")
            && last.contains(&format!("@127.0.0.1:{port}")),
        "{lines:?}"
    );
}

#[test]
fn rebuild_with_an_unreachable_redis_says_what_to_do_in_the_words_of_the_workers_start() {
    let dir = tempfile::tempdir().unwrap();
    // Not waited for: the first refused connection is the answer.
    let (config, port) = unreachable_redis_config(dir.path(), 0);
    let last_line = |output: &Output| stderr_lines(output).last().cloned().unwrap_or_default();

    let rebuild = worker()
        .arg("--config")
        .arg(&config)
        .arg("rebuild")
        .output()
        .unwrap();
    let start = worker().arg("--config").arg(&config).output().unwrap();

    assert_eq!(rebuild.status.code(), Some(1), "{rebuild:?}");
    assert_eq!(start.status.code(), Some(1), "{start:?}");
    let rebuild_says = last_line(&rebuild);
    let start_says = last_line(&start);
    assert_eq!(
        rebuild_says.strip_prefix("error: "),
        start_says.strip_prefix("error: starting the worker: "),
        "rebuild: {rebuild:?}\nstart: {start:?}"
    );
    assert!(
        rebuild_says.starts_with(&format!(
            "error: cannot connect to redis at redis://:***@127.0.0.1:{port}"
        )) && rebuild_says
            .contains("start redis there, or point [redis] url (SAVESTREAM_REDIS_URL) at a running one"),
        "{rebuild_says}"
    );
    assert!(
        !rebuild_says.contains("hunter2"),
        "the password leaked: {rebuild_says}"
    );
}

#[test]
fn rebuild_with_a_missing_config_or_an_unknown_flag_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = worker()
        .args(["--config", "nowhere.toml", "rebuild"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");

    let config = write_config(dir.path(), "redis://127.0.0.1:1");
    let unknown = worker()
        .arg("--config")
        .arg(&config)
        .args(["rebuild", "--everything"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
}
