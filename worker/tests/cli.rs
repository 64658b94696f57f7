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
fn an_unreachable_redis_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &format!("redis://127.0.0.1:{port}"));
    let output = worker().arg("--config").arg(&config).output().unwrap();

    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    let last = lines.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: starting the worker: cannot connect to redis at redis://127.0.0.1:{port}"
        )),
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
