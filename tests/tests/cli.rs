//! Black-box tests of the `savestream` command-line client, run as a
//! person runs it:
//! - `savestream up` with the README's config (`config.example.toml`, three
//!   keys changed for a test machine) starts its own redis-server, the API
//!   and a worker, completes a direct-link task end to end, and on SIGTERM
//!   leaves no child behind; a terminal's Ctrl-C (SIGINT to `up`'s whole
//!   process group) stops the worker once, gracefully, so the download in
//!   flight is released to the queue;
//! - `add`, `status`, `ls`, `cancel` and `workers` against a real API, with
//!   the URL and token from flags or the environment, and the API's refusals
//!   printed as one line;
//! - `watch` under a real pseudo-terminal draws a progress bar with bytes and
//!   speed while a throttled download runs, and ends saying it completed.
//!
//! Nothing here sleeps to synchronise: every wait is `eventually` on
//! something observable (an HTTP answer, the screen, a process table entry).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::{Store, WorkerInfo};
use savestream_shared::task::{TaskId, TaskStatus};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::{eventually, free_port, RedisServer};
use savestream_tests::{binary_path, TestApp, TestOptions, TEST_USER};
use serde_json::json;

const TOKEN: &str = "cli-test-token-51f0";

/// A deadline for one step that waits on the servers.
const STEP: Duration = Duration::from_secs(30);

/// Deterministic file contents, so a wrong byte cannot go unnoticed.
fn body(size: usize) -> Vec<u8> {
    (0..size).map(|index| ((index * 7919) % 251) as u8).collect()
}

/// Runs `savestream` with `args` and `env`, none of the ambient settings.
/// Async, because the file server some tests use runs on the test's runtime.
async fn savestream(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(binary_path("savestream"));
    command
        .args(args)
        .env_remove("SAVESTREAM_URL")
        .env_remove("SAVESTREAM_TOKEN")
        .env_remove("SAVESTREAM_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.expect("running savestream")
}

fn explain(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", explain(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one stderr line of a command that failed with exit code 1.
fn error_line(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{}", explain(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", explain(output));
    lines[0].to_owned()
}

/// `--url` and `--token` for `app`.
fn flags(app: &TestApp) -> Vec<String> {
    vec![
        "--url".to_owned(),
        app.base_url(),
        "--token".to_owned(),
        TOKEN.to_owned(),
    ]
}

async fn run_with_flags(app: &TestApp, args: &[&str]) -> Output {
    let mut all = flags(app);
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    savestream(&all, &[]).await
}

async fn spawn_app(workers: usize) -> TestApp {
    TestApp::spawn(TestOptions {
        token: Some(TOKEN.to_owned()),
        workers,
        ..TestOptions::default()
    })
    .await
}

// ----- (a) the README's run command ---------------------------------------

/// `savestream up`; killed with what it started on drop, if a test fails
/// before stopping it, so no process outlives the test.
struct Up {
    child: std::process::Child,
    log: PathBuf,
}

impl Up {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- savestream up log -----\n{}", self.log());
        }
        // Only while `up` runs are its children surely still its own (a pid
        // taken from an exited process may name another process by now).
        if let Ok(None) = self.child.try_wait() {
            for (pid, _) in children_of(self.child.id()) {
                signal(pid, "KILL");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends SIGINT/SIGTERM/... (`name`) to the process group `group_id`.
fn signal_group(group_id: u32, name: &str) {
    signal_target(&format!("-{group_id}"), name);
}

fn signal(pid: u32, name: &str) {
    signal_target(&pid.to_string(), name);
}

fn signal_target(target: &str, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(target)
        .stderr(Stdio::null())
        .status();
}

/// The live children of `parent`, with their command lines, from /proc.
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(parent) && is_alive(pid) {
            children.push((pid, command_line(pid)));
        }
    }
    children
}

/// A process' parent pid: field 4 of /proc/<pid>/stat, after the `(comm)`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Alive and not a zombie waiting to be reaped.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// `config.example.toml` with the three changes a test machine needs, each
/// checked, so a change to the example that breaks this test says so.
fn example_config_for_test(api_port: u16, downloads: &Path) -> String {
    let example_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.toml");
    let example = std::fs::read_to_string(example_path).expect("reading config.example.toml");
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "config.example.toml no longer contains `{from}`: update this test"
        );
        text.replacen(from, to, 1)
    };
    let config = replace(example, "port = 8080", &format!("port = {api_port}"));
    let config = replace(
        config,
        "base_path = \"./downloads\"",
        &format!("base_path = \"{}\"", downloads.display()),
    );
    replace(
        config,
        "allow_private_networks = false",
        "allow_private_networks = true",
    )
}

/// Starts `savestream up --config <config_path>` in `dir`, with `env` and
/// none of the ambient settings, logging to `dir/up.log`. It leads a process
/// group of its own, as a shell makes a foreground job, so a signal to that
/// group (a terminal's Ctrl-C) reaches it and not the test runner.
fn start_up(dir: &Path, config_path: &Path, env: &[(&str, &str)]) -> Up {
    start_up_through(&[], dir, config_path, env)
}

/// `savestream up` run by `wrapper` (for example `["nohup"]`), in a process
/// group of its own as a shell's job is.
fn start_up_through(wrapper: &[&str], dir: &Path, config_path: &Path, env: &[(&str, &str)]) -> Up {
    use std::os::unix::process::CommandExt as _;
    let log = dir.join("up.log");
    let log_file = std::fs::File::create(&log).expect("creating the log");
    let savestream = binary_path("savestream");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = std::process::Command::new(program);
            command.args(args).arg(&savestream);
            command
        }
        None => std::process::Command::new(&savestream),
    };
    command
        .args(["up", "--config"])
        .arg(config_path)
        .current_dir(dir)
        .env_remove("SAVESTREAM_CONFIG")
        .env_remove("SAVESTREAM_API_PORT")
        .env_remove("SAVESTREAM_REDIS_URL")
        .env_remove("SAVESTREAM_WORKER_SHUTDOWN_GRACE_SECONDS")
        .env("NO_COLOR", "1")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().expect("cloning a file handle")))
        .stderr(Stdio::from(log_file));
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().expect("running savestream up");
    Up { child, log }
}

/// A directory for `savestream up` with the README's config in it, made
/// for a test machine (`example_config_for_test`).
struct UpSite {
    dir: tempfile::TempDir,
    downloads: PathBuf,
    config_path: PathBuf,
    api_port: u16,
}

impl UpSite {
    fn new(prefix: &str) -> UpSite {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("creating a temp dir");
        let downloads = dir.path().join("downloads");
        let api_port = free_port();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, example_config_for_test(api_port, &downloads))
            .expect("writing the config");
        UpSite {
            dir,
            downloads,
            config_path,
            api_port,
        }
    }
}

/// Creates a task for a direct link, as the README's curl example does, and returns its id.
/// `savestream up` on a Redis of the test's own, its worker's grace period
/// `grace_seconds`, with a download posted that lasts 10 s (1 MB served at
/// 100 kB/s). The fields keep alive what the download needs.
struct UpWithADownload {
    redis: RedisServer,
    _site: tempfile::TempDir,
    up: Up,
    http: reqwest::Client,
    base_url: String,
    _files: FileServer,
    task_id: String,
}

async fn up_with_a_slow_download(prefix: &str, grace_seconds: &str) -> UpWithADownload {
    let redis = RedisServer::start();
    let UpSite {
        dir,
        config_path,
        api_port,
        ..
    } = UpSite::new(prefix);
    let up = start_up(
        dir.path(),
        &config_path,
        &[
            ("SAVESTREAM_REDIS_URL", &redis.url()),
            ("SAVESTREAM_WORKER_SHUTDOWN_GRACE_SECONDS", grace_seconds),
        ],
    );
    let base_url = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_until_ready(&http, &base_url).await;
    let files = FileServer::start().await;
    files.add("/slow.bin", ServedFile::new(body(1_000_000)).throttled(100_000));
    let task_id = post_direct_link(&http, &base_url, &files.url("/slow.bin")).await;
    UpWithADownload {
        redis,
        _site: dir,
        up,
        http,
        base_url,
        _files: files,
        task_id,
    }
}

async fn post_direct_link(http: &reqwest::Client, base_url: &str, url: &str) -> String {
    let created: serde_json::Value = http
        .post(format!("{base_url}/api/v1/tasks"))
        .header("Content-Type", "application/json")
        .body(json!({ "url": url, "user_id": 123456789 }).to_string())
        .send()
        .await
        .expect("POST /api/v1/tasks")
        .json()
        .await
        .expect("a JSON answer");
    created["task_id"].as_str().expect("a task id").to_owned()
}

async fn wait_until_ready(http: &reqwest::Client, base_url: &str) {
    eventually("the API that `savestream up` started to be ready", STEP, || {
        let request = http.get(format!("{base_url}/ready")).send();
        async move {
            request
                .await
                .ok()
                .filter(|response| response.status().is_success())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savestream_up_starts_its_own_redis_completes_a_direct_link_task_and_stops_everything_on_sigterm() {
    // Arrange: the example config, with nothing listening at [redis] url.
    let UpSite {
        dir,
        downloads,
        config_path,
        api_port,
    } = UpSite::new("savestream-up-");
    let no_redis = format!("redis://127.0.0.1:{}", free_port());
    let mut up = start_up(dir.path(), &config_path, &[("SAVESTREAM_REDIS_URL", &no_redis)]);
    let base_url = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_until_ready(&http, &base_url).await;
    let children = children_of(up.child.id());
    for binary in ["redis-server", "savestream-api", "savestream-worker"] {
        assert!(
            children.iter().any(|(_, command)| command.contains(binary)),
            "`savestream up` has no {binary} child: {children:?}"
        );
    }
    assert!(
        up.log().contains("started a private redis-server"),
        "{}",
        up.log()
    );
    assert!(
        dir.path().join(".savestream/redis").is_dir(),
        "the private redis keeps its data (AOF) under .savestream/redis"
    );
    let files = FileServer::start().await;
    let contents = body(200_000);
    files.add("/rfc9110.txt", ServedFile::new(contents.clone()));

    // Act: the README's first task, as its curl example sends it.
    let task_id = post_direct_link(&http, &base_url, &files.url("/rfc9110.txt")).await;
    let task = eventually("the task to complete", STEP, || {
        let request = http.get(format!("{base_url}/api/v1/tasks/{task_id}")).send();
        async move {
            let task: serde_json::Value = request.await.ok()?.json().await.ok()?;
            assert_ne!(task["status"], "failed", "{task}");
            (task["status"] == "completed").then_some(task)
        }
    })
    .await;

    // Assert: the file is in the storage, byte for byte.
    assert_eq!(task["title"], "[directlinks](rfc9110.txt->local1:/rfc9110.txt)");
    assert_eq!(
        std::fs::read(downloads.join("rfc9110.txt")).expect("the saved file"),
        contents
    );

    // Act: stop it as Ctrl-C or a service manager would.
    signal(up.child.id(), "TERM");
    let status = eventually(
        "`savestream up` to exit after SIGTERM",
        Duration::from_secs(60),
        || {
            let exited = up.child.try_wait().expect("waiting on savestream up");
            async move { exited }
        },
    )
    .await;

    // Assert: a clean exit, and not one of its children is left.
    assert!(status.success(), "savestream up exited with {status}");
    assert!(
        up.log()
            .contains("SIGTERM received: stopping the worker, the API and Redis in turn"),
        "the Redis it started is named among what it stops:\n{}",
        up.log()
    );
    let left: Vec<&(u32, String)> = children
        .iter()
        .filter(|(pid, command)| is_alive(*pid) && command_line(*pid) == *command)
        .collect();
    for (pid, _) in &left {
        signal(*pid, "KILL");
    }
    assert!(left.is_empty(), "children still running after SIGTERM: {left:?}");
    assert!(
        reqwest::get(format!("{base_url}/health")).await.is_err(),
        "the API still answers after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_to_savestream_ups_process_group_stops_the_worker_gracefully_and_releases_its_running_task() {
    // Arrange: `up` on a Redis of the test's own, so the task can be read
    // after `up` has ended, with a grace period of 1 s and a download
    // throttled to last 10 s: the drain must end in a release.
    // Every part bound: the site and the file server must outlive the test.
    let UpWithADownload {
        redis,
        _site,
        mut up,
        http: _http,
        base_url: _base_url,
        _files,
        task_id,
    } = up_with_a_slow_download("savestream-up-ctrl-c-", "1").await;
    let redis_url = redis.url();
    let task_id = TaskId::parse(&task_id).expect("a valid task id");
    let store = Store::connect(
        &RedisConfig {
            url: redis_url.clone(),
            prefix: "savestream".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds: 30,
            retention_hours: 1,
        },
    )
    .await
    .expect("connecting to the test's redis");
    eventually("the download to be under way", STEP, || {
        let store = store.clone();
        let task_id = task_id.clone();
        async move {
            let record = store.get(&task_id).await.ok()??;
            (record.task.status == TaskStatus::Running && record.progress.downloaded_bytes > 0).then_some(())
        }
    })
    .await;

    let children: Vec<u32> = children_of(up.child.id())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();

    // Act: Ctrl-C as a terminal sends it, to the whole foreground group.
    signal_group(up.child.id(), "INT");
    let status = eventually(
        "`savestream up` to exit after Ctrl-C",
        Duration::from_secs(60),
        || {
            let exited = up.child.try_wait().expect("waiting on savestream up");
            async move { exited }
        },
    )
    .await;

    // Assert: one graceful stop, not a drain cut short (exit 3), and the
    // task handed back to the queue rather than left running on its lease.
    assert!(
        status.success(),
        "savestream up exited with {status}\n{}",
        up.log()
    );
    let log = up.log();
    assert!(
        log.contains("savestream: savestream-worker stopped (exit status: 0)"),
        "the worker did not exit 0:\n{log}"
    );
    assert!(
        log.contains("Ctrl-C received: stopping the worker and the API in turn")
            && !log.contains("and Redis"),
        "the user's own Redis is not said to be stopped:\n{log}"
    );
    assert!(
        !log.contains("received again"),
        "a second signal reached the worker:\n{log}"
    );
    let record = store
        .get(&task_id)
        .await
        .expect("reading the task")
        .expect("the task exists");
    assert_eq!(record.task.status, TaskStatus::Queued, "{log}");
    let released = store
        .events(&task_id)
        .await
        .expect("reading the event log")
        .into_iter()
        .any(|logged| {
            matches!(&logged.event.kind, EventKind::Retrying { error, .. } if error == "worker shut down before the task finished")
        });
    assert!(released, "no release was recorded:\n{log}");
    assert!(
        children.len() >= 2,
        "the API and the worker ran: {children:?}\n{log}"
    );
    assert!(
        children.iter().all(|pid| !is_alive(*pid)),
        "children left behind: {children:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savestream_up_under_nohup_keeps_running_when_the_terminal_hangs_up() {
    // Arrange: `nohup savestream up`, which starts it with SIGHUP ignored.
    let UpSite {
        dir,
        config_path,
        api_port,
        ..
    } = UpSite::new("savestream-up-nohup-");
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let mut up = start_up_through(
        &["nohup"],
        dir.path(),
        &config_path,
        &[("SAVESTREAM_REDIS_URL", &redis_url)],
    );
    let base_url = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_until_ready(&http, &base_url).await;

    // Act: the terminal closes, hanging up its whole session's jobs.
    signal_group(up.child.id(), "HUP");
    let files = FileServer::start().await;
    files.add("/after.bin", ServedFile::new(body(1_000)));
    let task_id = post_direct_link(&http, &base_url, &files.url("/after.bin")).await;

    // Assert: everything still runs, and a task created after the hangup completes.
    eventually("the task created after the hangup to complete", STEP, || {
        let request = http.get(format!("{base_url}/api/v1/tasks/{task_id}")).send();
        async move {
            let task: serde_json::Value = request.await.ok()?.json().await.ok()?;
            (task["status"] == "completed").then_some(())
        }
    })
    .await;
    assert!(
        up.child.try_wait().unwrap().is_none(),
        "up stopped:\n{}",
        up.log()
    );
    assert!(!up.log().contains("SIGHUP received"), "{}", up.log());
    signal(up.child.id(), "TERM");
    let status = eventually("`savestream up` to exit after SIGTERM", STEP, || {
        let exited = up.child.try_wait().expect("waiting on savestream up");
        async move { exited }
    })
    .await;
    assert!(status.success(), "{status}\n{}", up.log());
}

/// Waits (bounded) until none of `pids` is alive, killing what is left
/// and failing the test if that takes longer than `STEP`.
async fn all_exit(pids: &[(u32, String)], what: &str) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let left: Vec<&(u32, String)> = pids
            .iter()
            .filter(|(pid, command)| is_alive(*pid) && command_line(*pid) == *command)
            .collect();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            for (pid, _) in &left {
                signal(*pid, "KILL");
            }
            panic!("{what}: still running after {STEP:?}: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savestream_up_killed_with_sigkill_leaves_nothing_running_and_a_second_up_may_not_share_its_redis_directory(
) {
    // Arrange: `up` with its private Redis.
    let UpSite {
        dir,
        config_path,
        api_port,
        ..
    } = UpSite::new("savestream-up-kill-");
    let no_redis = format!("redis://127.0.0.1:{}", free_port());
    let env = [("SAVESTREAM_REDIS_URL", no_redis.as_str())];
    let mut up = start_up(dir.path(), &config_path, &env);
    let base_url = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();
    wait_until_ready(&http, &base_url).await;
    let children = children_of(up.child.id());
    assert_eq!(
        children.len(),
        3,
        "redis-server, the API and the worker: {children:?}"
    );

    // Act: a second `up` in the same directory while the first runs.
    let second = std::process::Command::new(binary_path("savestream"))
        .args(["up", "--config"])
        .arg(&config_path)
        .current_dir(dir.path())
        .env_remove("SAVESTREAM_CONFIG")
        .env("SAVESTREAM_REDIS_URL", &no_redis)
        .stdin(Stdio::null())
        .output()
        .expect("running a second savestream up");

    // Assert: refused, naming the directory, the first `up` and how to stop it.
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{}", explain(&second));
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "savestream: .savestream/redis is in use by another `savestream up` (pid {})",
            up.child.id()
        )),
        "{}",
        explain(&second)
    );
    assert!(
        line.contains("Ctrl-C") && line.contains("fuser -v .savestream/redis/up.lock"),
        "{line}"
    );
    assert_eq!(children_of(up.child.id()).len(), 3, "the first `up` runs on");

    // Act: the OOM killer, or `kill -9`, ends the first `up`.
    signal(up.child.id(), "KILL");
    let status = up.child.wait().expect("waiting on savestream up");

    // Assert: its children stop, and the directory is free again.
    assert_eq!(status.code(), None, "killed: {status}");
    all_exit(&children, "the children of a `savestream up` killed with SIGKILL").await;
    let mut again = start_up(dir.path(), &config_path, &env);
    wait_until_ready(&http, &base_url).await;
    signal(again.child.id(), "TERM");
    let status = eventually("the next `savestream up` to exit after SIGTERM", STEP, || {
        let exited = again.child.try_wait().expect("waiting on savestream up");
        async move { exited }
    })
    .await;
    assert!(status.success(), "{status}\n{}", again.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savestream_up_exits_3_when_a_second_signal_cuts_the_workers_drain_short() {
    // Arrange: `up` on the test's Redis, with a download under way that
    // lasts 10 s and a grace period longer than that.
    // Every part bound: Redis, the site and the file server must outlive the test.
    let UpWithADownload {
        redis: _redis,
        _site,
        mut up,
        http,
        base_url,
        _files,
        task_id,
    } = up_with_a_slow_download("savestream-up-cut-short-", "60").await;
    eventually("the download to be under way", STEP, || {
        let request = http.get(format!("{base_url}/api/v1/tasks/{task_id}")).send();
        async move {
            let task: serde_json::Value = request.await.ok()?.json().await.ok()?;
            (task["status"] == "running").then_some(())
        }
    })
    .await;

    // Act: SIGTERM, and once the drain has begun, SIGTERM again.
    signal(up.child.id(), "TERM");
    eventually("`up` to begin stopping", STEP, || {
        let begun = up.log().contains("SIGTERM received: stopping");
        async move { begun.then_some(()) }
    })
    .await;
    signal(up.child.id(), "TERM");
    let status = eventually("`savestream up` to exit", STEP, || {
        let exited = up.child.try_wait().expect("waiting on savestream up");
        async move { exited }
    })
    .await;

    // Assert: not 0: the worker left its task to its lease.
    let log = up.log();
    assert!(
        log.contains("savestream: savestream-worker stopped (exit status: 3)"),
        "the drain was not cut short:\n{log}"
    );
    assert_eq!(status.code(), Some(3), "{status}\n{log}");
}

/// Makes `redis` ask for `password` from now on (`CONFIG SET requirepass`):
/// the harness's ready check sends a bare PING, which a Redis started with
/// `--requirepass` answers with NOAUTH.
fn require_password(redis: &RedisServer, password: &str) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port())).expect("connecting to redis");
    stream
        .write_all(format!("CONFIG SET requirepass {password}\r\n").as_bytes())
        .expect("sending CONFIG SET");
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).expect("reading the reply");
    assert_eq!(&reply, b"+OK\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savestream_up_stops_naming_the_auth_error_when_the_redis_at_its_url_refuses_the_login() {
    // Arrange: a Redis that asks for a password; one URL with the wrong
    // password, one with none.
    let redis = RedisServer::start();
    require_password(&redis, "the-right-password");
    let wrong_password = format!("redis://:not-the-password-9f2@127.0.0.1:{}", redis.port());
    let no_password = redis.url();

    for (url, reply) in [(&wrong_password, "WRONGPASS"), (&no_password, "NOAUTH")] {
        let UpSite { dir, config_path, .. } = UpSite::new("savestream-up-auth-");
        let private_redis = dir.path().join(".savestream/redis");

        // Act
        let mut up = start_up(dir.path(), &config_path, &[("SAVESTREAM_REDIS_URL", url)]);
        let status = eventually(
            "`savestream up` to exit, or to start a private Redis",
            STEP,
            || {
                let exited = up.child.try_wait().expect("waiting on savestream up");
                let started = private_redis.exists();
                async move { exited.map(Some).or(started.then_some(None)) }
            },
        )
        .await;

        // Assert: it stopped, named what Redis said and what to fix, and
        // left the store to the user's Redis.
        let log = up.log();
        assert!(!private_redis.exists(), "a private Redis was started:\n{log}");
        let status = status.unwrap_or_else(|| panic!("`up` runs on a private Redis:\n{log}"));
        assert_eq!(status.code(), Some(1), "{log}");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one error line:\n{log}");
        let line = lines[0];
        assert!(
            line.starts_with("savestream: cannot use the Redis at [redis] url: "),
            "{line}"
        );
        assert!(line.contains(reply), "{line}");
        assert!(line.contains(&format!("127.0.0.1:{}", redis.port())), "{line}");
        assert!(line.contains("password in [redis] url"), "{line}");
        assert!(line.contains("SAVESTREAM_REDIS_URL"), "{line}");
        assert!(
            !line.contains("not-the-password-9f2"),
            "the password is never shown: {line}"
        );
    }
}

// ----- (b) add, status, ls, cancel, workers --------------------------------

#[tokio::test]
async fn add_prints_the_id_of_a_queued_task_that_status_and_ls_show() {
    // Arrange: an API without workers, so tasks stay queued.
    let app = spawn_app(0).await;
    let link = "https://example.com/files/report.pdf";

    // Act
    let added = run_with_flags(
        &app,
        &["add", link, "--user", &TEST_USER.to_string(), "--dir", "/docs"],
    )
    .await;
    let task_id = stdout(&added).trim().to_owned();
    let status = run_with_flags(&app, &["status", &task_id]).await;
    let listed = run_with_flags(&app, &["ls"]).await;

    // Assert: the id alone on stdout names a real task with what was given.
    assert_eq!(task_id.len(), 20, "add prints the id alone: {}", explain(&added));
    let (code, task) = app.get_task(&task_id).await;
    assert_eq!(code, 200, "{task}");
    assert_eq!(task["source"], "http");
    assert_eq!(task["link"], link);
    assert_eq!(task["dir_path"], "/docs");
    let status = stdout(&status);
    assert!(status.contains(&format!("task      {task_id}")), "{status}");
    assert!(status.contains("status    queued"), "{status}");
    assert!(status.contains("storage   local1:/docs"), "{status}");
    let listed = stdout(&listed);
    let line = listed
        .lines()
        .find(|line| line.starts_with(&task_id))
        .unwrap_or_else(|| panic!("ls does not list {task_id}:\n{listed}"));
    assert!(
        line.contains("queued") && line.contains("[directlinks]"),
        "{line}"
    );
}

/// `savestream add <link>` for `app`, its stdout piped and its stderr
/// read line by line, killed if the test ends first.
fn spawn_add(
    app: &TestApp,
    link: &str,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut args = flags(app);
    args.extend(["add".into(), link.into(), "--user".into(), TEST_USER.to_string()]);
    let mut add = tokio::process::Command::new(binary_path("savestream"))
        .args(&args)
        .env_remove("SAVESTREAM_URL")
        .env_remove("SAVESTREAM_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running savestream add");
    let stderr = tokio::io::BufReader::new(add.stderr.take().unwrap()).lines();
    (add, stderr)
}

/// The next stderr line of `savestream add` that announces a repeat; fails
/// the test if `add` ends (gives up) instead.
async fn next_repeat(
    stderr: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    what: &str,
) -> String {
    tokio::time::timeout(STEP, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("trying again") {
                return line;
            }
        }
        panic!("savestream add ended without trying again ({what})");
    })
    .await
    .unwrap_or_else(|_| panic!("savestream add to announce a repeat ({what})"))
}

/// How many queued tasks the app's Redis holds.
async fn queued_total(app: &TestApp) -> u64 {
    store(app).await.list(10).await.unwrap().queued_total
}

#[tokio::test]
async fn add_repeats_a_create_redis_did_not_answer_with_the_same_key_and_creates_the_task_once() {
    let app = spawn_app(0).await;
    // A Redis that holds its connections open and answers nothing: the
    // API's call times out and it answers 503, while the create itself
    // waits unread in Redis' socket and runs once Redis goes on.
    signal(app.redis.pid(), "STOP");
    let (add, mut stderr) = spawn_add(&app, "https://example.com/once.bin");

    let announced = next_repeat(&mut stderr, "after a 503").await;
    signal(app.redis.pid(), "CONT");
    let output = tokio::time::timeout(STEP, add.wait_with_output())
        .await
        .expect("savestream add to end")
        .unwrap();

    assert!(announced.contains("same Idempotency-Key"), "{announced}");
    assert!(output.status.success(), "{}", explain(&output));
    let task_id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let (code, task) = app.get_task(&task_id).await;
    assert_eq!(code, 200, "{task}");
    assert_eq!(queued_total(&app).await, 1, "one task, not one per try");
}

#[tokio::test]
async fn add_rides_out_an_api_restart_after_a_lost_answer_and_creates_the_task_once() {
    // Arrange: a create whose fate is unknown (Redis stopped: the API
    // answers 503 while the create waits unread in Redis' socket).
    let mut app = spawn_app(0).await;
    signal(app.redis.pid(), "STOP");
    let (add, mut stderr) = spawn_add(&app, "https://example.com/restart.bin");
    next_repeat(&mut stderr, "after a 503").await;

    // Act: the API goes away (its port refuses connections) and comes
    // back on the same port, with Redis going on meanwhile.
    app.api.as_mut().expect("the API process").kill();
    signal(app.redis.pid(), "CONT");
    let refused = next_repeat(&mut stderr, "after a refused connection").await;
    app.start_api().await;
    let output = tokio::time::timeout(STEP, add.wait_with_output())
        .await
        .expect("savestream add to end")
        .unwrap();

    // Assert: the refused try was repeated, and the create that Redis
    // applied after all was answered with its task, not made again.
    assert!(
        refused.contains(&app.base_url()) && refused.contains("same Idempotency-Key"),
        "{refused}"
    );
    assert!(output.status.success(), "{}", explain(&output));
    let task_id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let (code, task) = app.get_task(&task_id).await;
    assert_eq!(code, 200, "{task}");
    assert_eq!(queued_total(&app).await, 1, "one task, not one per try");
}

#[tokio::test]
async fn add_with_the_same_idempotency_key_again_answers_with_the_first_tasks_instead_of_creating_more() {
    // Arrange: what a user does after `add` gave up saying a task may have
    // been created: the same command again, with the key it printed.
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let one = ["add", "https://example.com/once.bin", "--user", &user];
    let many = [
        "add",
        "https://example.com/a.bin",
        "https://example.com/b.bin",
        "--user",
        &user,
    ];
    let with_key = |args: &[&str], key: &str| {
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.extend(["--idempotency-key".to_owned(), key.to_owned()]);
        args
    };
    let run = |args: Vec<String>| {
        let app = &app;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_with_flags(app, &args).await
        }
    };

    // Act
    let first = run(with_key(&one, "savestream-add-test-one")).await;
    let again = run(with_key(&one, "savestream-add-test-one")).await;
    let first_many = run(with_key(&many, "savestream-add-test-many")).await;
    let again_many = run(with_key(&many, "savestream-add-test-many")).await;
    let blank = run(with_key(&one, " ")).await;

    // Assert: one task per link, whichever run created it.
    let first = stdout(&first);
    assert_eq!(first.trim().len(), 20, "{first}");
    assert_eq!(stdout(&again), first);
    let first_many = stdout(&first_many);
    assert_eq!(first_many.lines().count(), 2, "{first_many}");
    assert_eq!(stdout(&again_many), first_many);
    assert_eq!(queued_total(&app).await, 3, "one task per link, not one per run");
    assert_eq!(blank.status.code(), Some(2), "{}", explain(&blank));
    let stderr = String::from_utf8_lossy(&blank.stderr);
    assert!(stderr.contains("--idempotency-key"), "{stderr}");
}

#[tokio::test]
async fn add_of_a_list_refused_partway_gives_the_key_whose_rerun_answers_the_created_links_and_creates_the_rest(
) {
    // Arrange: 1200 links (three batches), link 800 one the API refuses
    // (a Telegram channel name too short).
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let mut links: Vec<String> = (1..=1200)
        .map(|number| format!("https://example.com/files/{number}.bin"))
        .collect();
    links[799] = "https://t.me/chan/5".to_owned();
    let list = |links: &[String]| format!("{}\n", links.join("\n"));

    // Act
    let first = spawn_piped(&app, &["add", "-", "--user", &user], &list(&links)).await;
    let first = first.wait_with_output().await.expect("savestream add -");

    // Assert: the ids of the batches before link 800, and a line that
    // says what became of each link and gives the key.
    assert_eq!(first.status.code(), Some(1), "{}", explain(&first));
    let created: Vec<String> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let done = created.len();
    assert!(done > 0 && done < 800, "{}", explain(&first));
    let stderr = String::from_utf8_lossy(&first.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", explain(&first));
    let line = lines[0];
    assert!(
        line.starts_with("savestream: link 800 (`https://t.me/chan/5`, line 800 of standard input): "),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "(links 1 to {done} of 1200 were created, their ids are printed above; links {} to ",
            done + 1
        )),
        "{line}"
    );
    assert!(
        line.contains(" were refused, nothing of that request was created; links "),
        "{line}"
    );
    assert!(line.contains(" to 1200 were not sent): "), "{line}");
    let key = line
        .split("--idempotency-key ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .unwrap_or_else(|| panic!("no key in: {line}"))
        .to_owned();
    assert!(key.starts_with("savestream-add-"), "{line}");

    // Act: the list fixed, and the same command with the key.
    links[799] = "https://example.com/files/800.bin".to_owned();
    let again = spawn_piped(
        &app,
        &["add", "-", "--user", &user, "--idempotency-key", &key],
        &list(&links),
    )
    .await;
    let again = again.wait_with_output().await.expect("savestream add - again");

    // Assert: the created links answered with their tasks, the rest created.
    let ids: Vec<String> = stdout(&again).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 1200, "{}", explain(&again));
    assert_eq!(
        ids[..done],
        created[..],
        "the created links' ids come back the same"
    );
    assert_eq!(
        queued_total(&app).await,
        1200,
        "one task per link, not one per run"
    );
    let (_, task) = app.get_task(&ids[799]).await;
    assert_eq!(task["link"], links[799], "{task}");
}

#[tokio::test]
async fn add_of_a_changed_list_under_its_first_key_is_refused_saying_the_list_differs() {
    // Arrange: three links sent with a key, then the list changed at link 2.
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let key = "nightly-list";
    let list = |second: &str| {
        format!("https://example.com/files/1.bin\n{second}\nhttps://example.com/files/3.bin\n")
    };
    let args = ["add", "-", "--user", &user, "--idempotency-key", key];
    let first = spawn_piped(&app, &args, &list("https://example.com/files/2.bin")).await;
    let first = first.wait_with_output().await.expect("savestream add -");
    assert_eq!(first.status.code(), Some(0), "{}", explain(&first));

    // Act
    let changed = spawn_piped(&app, &args, &list("https://example.com/files/two.bin")).await;
    let changed = changed.wait_with_output().await.expect("savestream add - again");

    // Assert: refused, saying why and what to do, and nothing created.
    assert_eq!(changed.status.code(), Some(1), "{}", explain(&changed));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr.contains(&format!(
            "this list differs from the one first sent with --idempotency-key {key}"
        )) && stderr.contains("leave the key out"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("run this command again with --idempotency-key"),
        "advice that cannot work: {stderr}"
    );
    assert_eq!(queued_total(&app).await, 3, "nothing was created");
}

#[tokio::test]
async fn add_that_gave_up_on_503s_says_the_api_answered_503_not_that_an_answer_was_lost() {
    // Arrange: Redis stopped for the whole run: every try is answered 503.
    let app = spawn_app(0).await;
    signal(app.redis.pid(), "STOP");

    // Act
    let (add, mut stderr) = spawn_add(&app, "https://example.com/unavailable.bin");
    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(150), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            said.push(line);
        }
    })
    .await
    .expect("savestream add to give up");
    let output = add.wait_with_output().await.unwrap();
    signal(app.redis.pid(), "CONT");

    // Assert
    assert_eq!(output.status.code(), Some(1), "{}\n{said:#?}", explain(&output));
    let line = said.last().map(String::as_str).unwrap_or_default();
    assert!(line.starts_with("savestream: gave up after 5 tries"), "{line}");
    assert!(line.contains("the API answered 503 on every try"), "{line}");
    assert!(!line.contains("lost"), "{line}");
    assert!(line.contains("--idempotency-key savestream-add-"), "{line}");
}

#[tokio::test]
async fn ls_says_when_the_limit_cut_the_list_short() {
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let links = ["https://example.com/a.bin", "https://example.com/b.bin"];
    let added = run_with_flags(&app, &["add", links[0], links[1], "--user", &user]).await;
    let ids: Vec<String> = stdout(&added).lines().map(str::to_owned).collect();

    let cut = run_with_flags(&app, &["ls", "--limit", "1"]).await;
    let whole = run_with_flags(&app, &["ls"]).await;
    let out_of_range = run_with_flags(&app, &["ls", "--limit", "0"]).await;

    assert_eq!(ids.len(), 2, "{}", explain(&added));
    assert!(cut.status.success(), "{}", explain(&cut));
    let listed = stdout(&cut);
    assert!(listed.contains(&ids[0]) && !listed.contains(&ids[1]), "{listed}");
    let note = String::from_utf8_lossy(&cut.stderr).into_owned();
    assert!(
        note.contains("showing the oldest 1 of 2 queued tasks: `savestream ls --limit 10` shows more"),
        "{note}"
    );
    assert!(whole.stderr.is_empty(), "nothing was cut: {}", explain(&whole));
    assert_eq!(out_of_range.status.code(), Some(2), "{}", explain(&out_of_range));
}

#[tokio::test]
async fn add_sends_a_t_me_link_as_telegram_url_and_takes_the_url_and_token_from_the_environment() {
    let app = spawn_app(0).await;
    let base_url = app.base_url();
    let env = [("SAVESTREAM_URL", base_url.as_str()), ("SAVESTREAM_TOKEN", TOKEN)];

    let added = savestream(
        &[
            "add",
            "https://t.me/channel/123",
            "--user",
            &TEST_USER.to_string(),
            "--storage",
            "local1",
        ],
        &env,
    )
    .await;

    let task_id = stdout(&added).trim().to_owned();
    let (_, task) = app.get_task(&task_id).await;
    assert_eq!(task["source"], "telegram", "{task}");
    assert_eq!(task["link"], "https://t.me/channel/123");
    assert_eq!(task["storage_name"], "local1");
}

#[tokio::test]
async fn add_with_several_links_prints_their_ids_in_order_and_a_refused_link_creates_none() {
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let links = [
        "https://example.com/files/1.bin",
        "https://t.me/channel/7",
        "https://example.com/files/3.bin",
    ];

    let added = run_with_flags(&app, &["add", links[0], links[1], links[2], "--user", &user]).await;
    let refused = run_with_flags(
        &app,
        &[
            "add",
            "https://example.com/files/4.bin",
            "https://t.me/chan/5",
            "--user",
            &user,
        ],
    )
    .await;

    let ids: Vec<String> = stdout(&added).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 3, "{}", explain(&added));
    for (id, link) in ids.iter().zip(links) {
        let (_, task) = app.get_task(id).await;
        assert_eq!(task["link"], link, "{task}");
    }
    assert!(
        error_line(&refused).starts_with("savestream: link 2 (`https://t.me/chan/5`): `telegram_url`: "),
        "{}",
        explain(&refused)
    );
    let listed = stdout(&run_with_flags(&app, &["ls"]).await);
    assert!(
        !listed.contains("4.bin"),
        "the refused batch created a task:\n{listed}"
    );
}

#[tokio::test]
async fn add_dash_reads_one_link_per_line_from_standard_input() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(0).await;
    let links: Vec<String> = (0..30)
        .map(|index| format!("https://example.com/files/{index}.bin"))
        .collect();
    let mut command = tokio::process::Command::new(binary_path("savestream"));
    command
        .args(flags(&app))
        .args(["add", "-", "--user", &TEST_USER.to_string()])
        .env_remove("SAVESTREAM_URL")
        .env_remove("SAVESTREAM_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("running savestream add -");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin
        .write_all(format!("{}\n\n", links.join("\n")).as_bytes())
        .await
        .expect("writing the links");
    drop(stdin);

    let added = child.wait_with_output().await.expect("savestream add -");

    let ids: Vec<String> = stdout(&added).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), links.len(), "{}", explain(&added));
    for index in [0, 17, 29] {
        let (_, task) = app.get_task(&ids[index]).await;
        assert_eq!(task["link"], links[index], "{task}");
    }
}

/// `savestream <args>` for `app` with `input` on its stdin, stdout and
/// stderr piped.
async fn spawn_piped(app: &TestApp, args: &[&str], input: &str) -> tokio::process::Child {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(binary_path("savestream"))
        .args(flags(app))
        .args(args)
        .env_remove("SAVESTREAM_URL")
        .env_remove("SAVESTREAM_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running savestream");
    let mut stdin = child.stdin.take().expect("a stdin pipe");
    stdin.write_all(input.as_bytes()).await.expect("writing stdin");
    drop(stdin);
    child
}

/// Reads one line of the child's stdout, byte by byte so nothing more is
/// taken from the pipe, then closes it as `| head -1` does, and waits for
/// the child to end. Returns that line and how the child ended.
async fn read_one_line_then_close(mut child: tokio::process::Child) -> (String, Output) {
    use tokio::io::AsyncReadExt;
    let mut stdout = child.stdout.take().expect("a stdout pipe");
    let mut line = Vec::new();
    tokio::time::timeout(STEP, async {
        loop {
            match stdout.read_u8().await.expect("reading one line") {
                b'\n' => break,
                byte => line.push(byte),
            }
        }
    })
    .await
    .expect("a first line on stdout");
    drop(stdout);
    let output = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .expect("savestream to end once its reader is gone")
        .expect("waiting on savestream");
    (String::from_utf8_lossy(&line).into_owned(), output)
}

/// Asserts that a command whose reader went away ended as a program killed
/// by SIGPIPE is seen by a shell (141), quietly: no panic, no message.
fn ended_quietly_for_a_gone_reader(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{}", explain(output));
    assert_ne!(output.status.code(), Some(101), "{}", explain(output));
    assert_eq!(output.status.code(), Some(141), "{}", explain(output));
    assert!(stderr.is_empty(), "{}", explain(output));
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_add_and_ls_quietly_with_141() {
    // Arrange: 1000 queued tasks for `ls`, and 4000 links for `add -`. Each
    // prints more than a pipe holds (64 KiB), so they must write after the
    // reader is gone however the two race.
    let app = spawn_app(0).await;
    let user = TEST_USER.to_string();
    let links = |prefix: &str, count: usize| {
        (0..count)
            .map(|index| format!("https://example.com/files/{prefix}-{index:0>40}.bin\n"))
            .collect::<String>()
    };
    let queued = spawn_piped(&app, &["add", "-", "--user", &user], &links("ls", 1000)).await;
    let queued = queued.wait_with_output().await.expect("savestream add -");
    assert_eq!(stdout(&queued).lines().count(), 1000, "{}", explain(&queued));
    let whole_list = stdout(&run_with_flags(&app, &["ls", "--limit", "1000"]).await);
    assert!(whole_list.len() > 80 * 1024, "{} bytes", whole_list.len());

    // Act: `savestream add - < links.txt | head -1`, and `savestream ls --limit 1000 | head -1`.
    let add = spawn_piped(&app, &["add", "-", "--user", &user], &links("add", 4000)).await;
    let (first_id, added) = read_one_line_then_close(add).await;
    let ls = spawn_piped(&app, &["ls", "--limit", "1000"], "").await;
    let (header, listed) = read_one_line_then_close(ls).await;

    // Assert
    assert_eq!(first_id.len(), 20, "{first_id}");
    ended_quietly_for_a_gone_reader(&added);
    assert!(header.starts_with("ID"), "{header}");
    ended_quietly_for_a_gone_reader(&listed);
}

#[tokio::test]
async fn cancel_cancels_a_queued_task_and_a_second_cancel_prints_the_apis_refusal() {
    let app = spawn_app(0).await;
    let added = run_with_flags(
        &app,
        &[
            "add",
            "https://example.com/a.zip",
            "--user",
            &TEST_USER.to_string(),
        ],
    )
    .await;
    let task_id = stdout(&added).trim().to_owned();

    let canceled = run_with_flags(&app, &["cancel", &task_id]).await;
    let again = run_with_flags(&app, &["cancel", &task_id]).await;
    let listed = run_with_flags(&app, &["ls"]).await;

    assert_eq!(stdout(&canceled).trim(), format!("canceled {task_id}"));
    assert_eq!(app.get_task(&task_id).await.1["status"], "canceled");
    assert_eq!(
        error_line(&again),
        format!(
            "savestream: task {task_id} has already ended (canceled): only queued or running tasks can be canceled"
        )
    );
    assert_eq!(stdout(&listed).trim(), "no queued or running tasks");
}

#[tokio::test]
async fn refusals_are_the_apis_own_words_on_one_line() {
    let app = spawn_app(0).await;

    let unknown_task = run_with_flags(&app, &["status", "d4mq2nk0h9pc73b0qpag"]).await;
    let unknown_user = run_with_flags(&app, &["add", "https://example.com/a.zip", "--user", "42"]).await;
    let bad_dir = run_with_flags(
        &app,
        &[
            "add",
            "https://example.com/a.zip",
            "--user",
            &TEST_USER.to_string(),
            "--dir",
            "../up",
        ],
    )
    .await;
    let wrong_token = savestream(&["--url", &app.base_url(), "--token", "wrong", "ls"], &[]).await;
    let no_token = savestream(&["--url", &app.base_url(), "ls"], &[]).await;

    assert_eq!(
        error_line(&unknown_task),
        "savestream: task d4mq2nk0h9pc73b0qpag not found: it never existed, or it ended longer ago than the retention period"
    );
    assert_eq!(
        error_line(&unknown_user),
        "savestream: user 42 is not configured: add a [[users]] entry with id = 42 to config.toml"
    );
    assert!(
        error_line(&bad_dir).starts_with("savestream: `dir_path`: "),
        "{}",
        explain(&bad_dir)
    );
    assert_eq!(
        error_line(&wrong_token),
        "savestream: wrong bearer token: send the token set in the server's [api] token"
    );
    let no_token = error_line(&no_token);
    assert!(
        no_token.starts_with("savestream: missing bearer token"),
        "{no_token}"
    );
    for hint in ["--token", "SAVESTREAM_TOKEN", "SAVESTREAM_API_TOKEN"] {
        assert!(no_token.contains(hint), "no `{hint}` in: {no_token}");
    }
}

#[tokio::test]
async fn a_token_is_taken_without_surrounding_whitespace_and_one_with_a_control_character_is_refused() {
    let app = spawn_app(0).await;
    let base_url = app.base_url();
    // `SAVESTREAM_TOKEN=$(cat token.txt)` from a file with CRLF lines keeps the CR.
    let with_cr = format!("{TOKEN}\r");
    let padded = format!("  {TOKEN}\t\n");
    let inner = "cli-test\u{7}token-51f0";

    let from_env = savestream(
        &["ls"],
        &[
            ("SAVESTREAM_URL", base_url.as_str()),
            ("SAVESTREAM_TOKEN", with_cr.as_str()),
        ],
    )
    .await;
    let from_flag = savestream(&["--url", &base_url, "--token", &padded, "ls"], &[]).await;
    let refused = savestream(&["--url", &base_url, "--token", inner, "ls"], &[]).await;

    assert_eq!(stdout(&from_env).trim(), "no queued or running tasks");
    assert_eq!(stdout(&from_flag).trim(), "no queued or running tasks");
    assert_eq!(refused.status.code(), Some(2), "{}", explain(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", explain(&refused));
    assert!(
        stderr.contains("--token")
            && stderr.contains("SAVESTREAM_TOKEN")
            && stderr.contains("control character"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cli-test") && !stderr.contains("token-51f0"),
        "the token is never printed: {stderr}"
    );
}

#[tokio::test]
async fn an_https_url_to_the_plain_http_api_says_the_tls_handshake_failed_not_that_it_is_not_running() {
    let app = spawn_app(0).await;
    let plain = app.base_url();
    let https = plain.replacen("http://", "https://", 1);

    let listed = savestream(&["--url", &https, "--token", TOKEN, "ls"], &[]).await;
    let added = savestream(
        &[
            "--url",
            &https,
            "--token",
            TOKEN,
            "add",
            "https://example.com/a.zip",
            "--user",
            &TEST_USER.to_string(),
        ],
        &[],
    )
    .await;

    for output in [&listed, &added] {
        let line = error_line(output);
        assert!(
            line.starts_with(&format!("savestream: cannot reach the API at {https}: ")),
            "{line}"
        );
        assert!(line.contains("TLS handshake failed"), "{line}");
        assert!(line.contains(&format!("use --url {plain}")), "{line}");
        assert!(!line.contains("is it running"), "{line}");
        assert!(!line.contains("savestream up"), "{line}");
    }
    assert_eq!(queued_total(&app).await, 0);
}

/// A store on the app's Redis, to register a worker as a worker process would.
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
async fn workers_lists_each_live_worker_with_its_slots_and_tasks() {
    // Arrange: one registry entry as a busy worker writes it.
    let app = spawn_app(0).await;
    let info = WorkerInfo {
        name: "box7-4242-d4mq2nk0h9pc73b0qpcg".to_owned(),
        host: "box7".to_owned(),
        pid: 4242,
        role: "tasks".to_owned(),
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

    let listed = run_with_flags(&app, &["workers"]).await;

    let listed = stdout(&listed);
    let mut lines = listed.lines();
    let header = lines.next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "HOST", "PID", "ROLE", "BUSY", "SEEN", "TASKS"]
    );
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [info.name.as_str(), "box7", "4242", "tasks", "1/3"],
        "{listed}"
    );
    assert_eq!(row[6], "d4mq2nk0h9pc73b0qpag", "{listed}");
}

// ----- (c) watch -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_draws_a_progress_bar_with_bytes_and_speed_in_a_terminal_and_ends_with_completed() {
    // Arrange: a download throttled to last a few seconds.
    let app = spawn_app(1).await;
    let files = FileServer::start().await;
    let size = 384 * 1024;
    files.add("/movie.bin", ServedFile::new(body(size)).throttled(96 * 1024));
    let added = run_with_flags(
        &app,
        &["add", &files.url("/movie.bin"), "--user", &TEST_USER.to_string()],
    )
    .await;
    let task_id = stdout(&added).trim().to_owned();

    // Act: `savestream watch` on a 100x30 pseudo-terminal.
    let terminal = Terminal::run(&[&flags(&app)[..], &["watch".to_owned(), task_id.clone()]].concat());

    // Assert: mid-download, a bar with the file's name, bytes of the total,
    // speed and ETA is on the screen.
    let bar = eventually("a progress bar with bytes and speed on the screen", STEP, || {
        let screen = terminal.screen();
        async move {
            screen
                .lines()
                .find(|line| {
                    line.contains("movie.bin")
                        && line.contains('[')
                        && line.contains("KiB/384.00 KiB")
                        && line.contains("KiB/s")
                        && line.contains("ETA")
                })
                .map(str::to_owned)
        }
    })
    .await;
    assert!(
        !bar.contains("384.00 KiB/384.00 KiB"),
        "caught mid-download: {bar}"
    );
    let status = terminal.wait(STEP).await;
    let screen = terminal.screen();
    let last_line = screen
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default();
    assert!(status.success(), "watch exited with {status:?}:\n{screen}");
    assert_eq!(
        last_line.trim_end(),
        "completed: saved local1:/movie.bin (384.00 KiB)",
        "\n{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_non_zero_and_says_why_when_the_task_fails() {
    let app = spawn_app(1).await;
    let files = FileServer::start().await;
    files.add("/gone.bin", ServedFile::status(404));
    let added = run_with_flags(
        &app,
        &["add", &files.url("/gone.bin"), "--user", &TEST_USER.to_string()],
    )
    .await;
    let task_id = stdout(&added).trim().to_owned();

    let watched = run_with_flags(&app, &["watch", &task_id]).await;

    assert_eq!(watched.status.code(), Some(1), "{}", explain(&watched));
    let out = String::from_utf8_lossy(&watched.stdout);
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("failed: ") && last.contains("404"),
        "{}",
        explain(&watched)
    );
}

#[tokio::test]
async fn watch_exits_3_when_it_cannot_follow_the_task_to_its_end() {
    let app = spawn_app(0).await;

    let watched = run_with_flags(&app, &["watch", "d4mq2nk0h9pc73b0qpag"]).await;

    // Not 1, which would say the task failed: a script must not add it again.
    assert_eq!(watched.status.code(), Some(3), "{}", explain(&watched));
    assert!(watched.stdout.is_empty(), "{}", explain(&watched));
    assert_eq!(
        String::from_utf8_lossy(&watched.stderr).trim_end(),
        "savestream: task d4mq2nk0h9pc73b0qpag not found: it never existed, or it ended longer ago than the retention period"
    );
}

/// A command on a pseudo-terminal, with a terminal emulator keeping the
/// screen it draws.
struct Terminal {
    screen: Arc<Mutex<vt100::Parser>>,
    child: Mutex<Box<dyn portable_pty::Child + Send + Sync>>,
    // Kept open until the child is gone: closing the master hangs it up.
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Terminal {
    const ROWS: u16 = 30;
    const COLUMNS: u16 = 100;

    fn run(args: &[String]) -> Terminal {
        let pty = portable_pty::native_pty_system()
            .openpty(portable_pty::PtySize {
                rows: Terminal::ROWS,
                cols: Terminal::COLUMNS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("opening a pseudo-terminal");
        let mut command = portable_pty::CommandBuilder::new(binary_path("savestream"));
        command.args(args);
        command.env("TERM", "xterm-256color");
        command.env("NO_COLOR", "1");
        command.env_remove("SAVESTREAM_URL");
        command.env_remove("SAVESTREAM_TOKEN");
        let child = pty
            .slave
            .spawn_command(command)
            .expect("running savestream on the pty");
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            Terminal::ROWS,
            Terminal::COLUMNS,
            0,
        )));
        let mut reader = pty.master.try_clone_reader().expect("reading the pty");
        let feed = screen.clone();
        // A blocking read: the pty gives no async handle. The thread ends
        // when the child exits and the pty reports end of file (or EIO).
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                feed.lock().expect("the screen lock").process(&buffer[..read]);
            }
        });
        Terminal {
            screen,
            child: Mutex::new(child),
            _master: pty.master,
        }
    }

    /// What the terminal shows now, one line per row (a row the cursor
    /// wrapped out of stays a row of its own, as a person sees it).
    fn screen(&self) -> String {
        let parser = self.screen.lock().expect("the screen lock");
        parser
            .screen()
            .rows(0, Terminal::COLUMNS)
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait(&self, timeout: Duration) -> portable_pty::ExitStatus {
        eventually("the command on the terminal to exit", timeout, || {
            let status = self
                .child
                .lock()
                .expect("the child lock")
                .try_wait()
                .expect("waiting on the command");
            async move { status }
        })
        .await
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("----- the terminal's screen -----\n{}", self.screen());
        }
    }
}
