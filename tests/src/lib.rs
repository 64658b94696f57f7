//! [`TestApp`]: the real savestream processes, started for one test.
//!
//! A `TestApp` owns a temp dir, a private `redis-server`, a config.toml
//! written for the test, a `savestream-api` process on a free port and any
//! number of `savestream-worker` processes. Dropping it kills them all; when
//! the test is failing, their logs are printed so the failure explains itself.
//!
//! The binaries are found next to the test executable (`target/<profile>/`):
//! `cargo test --workspace` builds them, because the `api` and `worker`
//! packages have integration tests of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use savestream_testkit::{eventually, free_port, target_bin_dir, RedisServer};

pub use savestream_testkit;

pub mod file_server;

/// The user id every test config allows, as in the contract's examples.
pub const TEST_USER: i64 = 123456789;
/// The storage every test config has.
pub const TEST_STORAGE: &str = "local1";

/// How a [`TestApp`] is set up. `Default` gives one API, no worker, no token.
#[derive(Clone, Debug)]
pub struct TestOptions {
    pub token: Option<String>,
    pub workers: usize,
    pub slots_per_worker: usize,
    pub retry: u32,
    pub lease_seconds: u64,
    pub shutdown_grace_seconds: u64,
    /// `[api] webhook_url`: every process of the app delivers outcomes there.
    pub webhook_url: Option<String>,
    /// Extra TOML appended to the generated config.toml.
    pub extra_config: String,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            token: None,
            workers: 0,
            slots_per_worker: 3,
            retry: 3,
            lease_seconds: 5,
            shutdown_grace_seconds: 10,
            webhook_url: None,
            extra_config: String::new(),
        }
    }
}

/// A running process and where its output goes.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Whether the process was started and neither killed nor exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// How the process ended, if it exited on its own since it was last
    /// asked; after that it counts as gone (`pid` 0).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, as a crash or a lost machine would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as `docker stop` does; returns the child to wait on.
    pub fn terminate(&mut self) -> Option<Child> {
        let child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        Some(child)
    }

    /// Waits for a process that was sent SIGTERM to exit, at most
    /// `timeout`; one that does not is killed before the test fails, so it
    /// cannot outlive the test (a `Child` dropped is not killed).
    pub async fn wait_exit(mut child: Child, timeout: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("waiting on a child process") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the process did not exit within {timeout:?}: killed it");
            }
            // A child's exit is not an event this runtime can await here.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct TestApp {
    pub options: TestOptions,
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
    pub config_path: PathBuf,
    /// The local storage's base path.
    pub storage_dir: PathBuf,
    pub api: Option<Process>,
    pub api_port: u16,
    pub workers: Vec<Process>,
    /// A client that sends the bearer token when the app has one.
    pub client: reqwest::Client,
}

impl TestApp {
    /// Starts Redis, the API, and `options.workers` workers.
    pub async fn spawn(options: TestOptions) -> TestApp {
        let redis = RedisServer::start();
        TestApp::spawn_with_redis(options, redis).await
    }

    pub async fn spawn_with_redis(options: TestOptions, redis: RedisServer) -> TestApp {
        let dir = tempfile::Builder::new()
            .prefix("savestream-test-")
            .tempdir()
            .expect("creating a temp dir");
        let storage_dir = dir.path().join("downloads");
        std::fs::create_dir_all(&storage_dir).expect("creating the storage dir");
        let api_port = free_port();
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            config_toml(&options, &redis.url(), api_port, &storage_dir),
        )
        .expect("writing config.toml");
        let client = client_for(options.token.as_deref());
        let mut app = TestApp {
            options,
            dir,
            redis,
            config_path,
            storage_dir,
            api: None,
            api_port,
            workers: Vec::new(),
            client,
        };
        app.start_api().await;
        for _ in 0..app.options.workers {
            app.start_worker();
        }
        app
    }

    /// Starts the API process and waits until `/health` answers.
    pub async fn start_api(&mut self) {
        let process = self.spawn_process(
            "savestream-api",
            &["--config", &self.config_path.display().to_string()],
            "api",
        );
        self.api = Some(process);
        let url = format!("{}/health", self.base_url());
        let client = reqwest::Client::new();
        let api_log = self
            .api
            .as_ref()
            .map(|process| process.log.clone())
            .unwrap_or_default();
        eventually(
            &format!("savestream-api to answer /health (log: {})", api_log.display()),
            Duration::from_secs(20),
            || {
                let request = client.get(&url).send();
                async move {
                    request
                        .await
                        .ok()
                        .filter(|response| response.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Starts one more worker process and returns its index in `workers`.
    pub fn start_worker(&mut self) -> usize {
        let name = format!("worker-{}", self.workers.len());
        let process = self.spawn_process(
            "savestream-worker",
            &["--config", &self.config_path.display().to_string()],
            &name,
        );
        self.workers.push(process);
        self.workers.len() - 1
    }

    /// Runs a savestream binary with `args`, output to a log file in the temp dir.
    pub fn spawn_process(&self, binary: &str, args: &[&str], name: &str) -> Process {
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("creating a process log");
        let child = Command::new(binary_path(binary))
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,savestream=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log_file.try_clone().expect("cloning a file handle")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {binary}: {error}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// `POST /api/v1/tasks` with a JSON body; returns status and JSON body.
    pub async fn create_task(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url("/api/v1/tasks"))
            .json(&body)
            .send()
            .await
            .expect("POST /api/v1/tasks");
        json_reply(response).await
    }

    /// `DELETE /api/v1/tasks/{id}`; returns status and JSON body.
    pub async fn cancel_task(&self, task_id: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .delete(self.url(&format!("/api/v1/tasks/{task_id}")))
            .send()
            .await
            .expect("DELETE /api/v1/tasks/{id}");
        json_reply(response).await
    }

    /// `GET /api/v1/tasks/{id}`; returns status and JSON body.
    pub async fn get_task(&self, task_id: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .get(self.url(&format!("/api/v1/tasks/{task_id}")))
            .send()
            .await
            .expect("GET a task");
        json_reply(response).await
    }

    /// Waits until the task reaches `status`, and returns its body.
    pub async fn wait_for_status(&self, task_id: &str, status: &str, timeout: Duration) -> serde_json::Value {
        eventually(&format!("task {task_id} to be {status}"), timeout, || async {
            let (_, body) = self.get_task(task_id).await;
            (body["status"] == status).then_some(body)
        })
        .await
    }

    pub fn storage_path(&self, relative: &str) -> PathBuf {
        self.storage_dir.join(relative.trim_start_matches('/'))
    }

    /// Every file under the storage, relative paths, sorted.
    pub fn stored_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        collect_files(&self.storage_dir, &self.storage_dir, &mut files);
        files.sort();
        files
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for process in self.api.iter().chain(self.workers.iter()) {
                eprintln!("----- {} log -----\n{}", process.name, process.log());
            }
        }
    }
}

async fn json_reply(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

fn client_for(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("a token is a valid header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("building an HTTP client")
}

/// The path of a savestream binary in the target dir.
pub fn binary_path(binary: &str) -> PathBuf {
    let path = target_bin_dir().join(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

fn config_toml(options: &TestOptions, redis_url: &str, api_port: u16, storage_dir: &Path) -> String {
    let token = options.token.clone().unwrap_or_default();
    let webhook_url = options
        .webhook_url
        .as_ref()
        .map(|url| format!("webhook_url = \"{url}\"\n"))
        .unwrap_or_default();
    format!(
        r#"workers = {slots}
retry = {retry}

[api]
host = "127.0.0.1"
port = {api_port}
token = "{token}"
{webhook_url}
[redis]
url = "{redis_url}"
prefix = "savestream"

[queue]
lease_seconds = {lease}

[http]
allow_private_networks = true

[worker]
shutdown_grace_seconds = {grace}

[[storages]]
name = "{storage}"
type = "local"
base_path = "{base_path}"

[[users]]
id = {user}
storages = ["{storage}"]

{extra}
"#,
        slots = options.slots_per_worker,
        retry = options.retry,
        lease = options.lease_seconds,
        grace = options.shutdown_grace_seconds,
        storage = TEST_STORAGE,
        base_path = storage_dir.display(),
        user = TEST_USER,
        extra = options.extra_config,
    )
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, files);
        } else if let Ok(relative) = path.strip_prefix(root) {
            files.push(relative.display().to_string());
        }
    }
}
