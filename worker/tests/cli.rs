//! The `savestream-worker` binary from the outside: exit codes and the one
//! line it prints when it cannot start, and a clean exit on SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

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
    let port = free_port();
    let config = write_config(dir.path(), &format!("redis://:hunter2@127.0.0.1:{port}"));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[redis]\n", "[redis]\nstartup_wait_seconds = 1\n"),
    )
    .unwrap();
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
