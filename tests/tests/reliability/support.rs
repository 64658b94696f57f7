//! What the reliability tests share: file contents that betray a wrong
//! offset, creating direct-link tasks (once, or as a careful client through
//! outages), reading the event log through the store, waiting until no task
//! is queued or running, a seeded random source for chaos, killing and
//! replacing workers, and [`RedisProcess`], a `redis-server` the test starts
//! itself (on a port and dir of its choosing, to restart Redis in place).
//!
//! It owns no process of the app: `TestApp` does. Nothing here sleeps to
//! synchronise; waits go through `eventually`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use savestream_shared::config::{QueueConfig, RedisConfig};
use savestream_shared::event::EventKind;
use savestream_shared::store::{LoggedEvent, Store};
use savestream_tests::file_server::{FileServer, ServedFile};
use savestream_tests::savestream_testkit::eventually;
use savestream_tests::{TestApp, TEST_STORAGE, TEST_USER};
use serde_json::json;

/// Deterministic contents of file number `seed`: no two offsets (and no two
/// files) share a pattern, so a resume from a wrong offset, or one file's
/// bytes in another's place, cannot go unnoticed.
pub fn body(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Whether the long run was asked for (`SAVESTREAM_SOAK=1`).
pub fn soak() -> bool {
    matches!(std::env::var("SAVESTREAM_SOAK").as_deref(), Ok("1") | Ok("true"))
}

/// Every this-many-th file of a chaos run is throttled.
const THROTTLED_EVERY: usize = 4;
const THROTTLE_BYTES_PER_SECOND: u64 = 32_000;

/// File number `index` of a chaos run, named `{stem}-NNNN.bin`, with its
/// contents and whether it is throttled: every fourth is a 40–56 KB file
/// served at 32 KB/s (1.3–1.8 s to download, so kills and outages land
/// mid-download), the others small ones at full speed.
pub fn chaos_file(stem: &str, index: usize) -> (String, Vec<u8>, bool) {
    let throttled = index.is_multiple_of(THROTTLED_EVERY);
    let size = if throttled {
        40_000 + (index * 131) % 16_000
    } else {
        1 + (index * 7_919) % 24_000
    };
    (
        format!("{stem}-{index:04}.bin"),
        body(index as u64, size),
        throttled,
    )
}

/// Serves chaos files `0..count` at `/{stem}/{name}`.
pub fn serve_chaos_files(files: &FileServer, stem: &str, count: usize) {
    for index in 0..count {
        let (name, bytes, throttled) = chaos_file(stem, index);
        let mut served = ServedFile::new(bytes);
        if throttled {
            served = served.throttled(THROTTLE_BYTES_PER_SECOND);
        }
        files.add(&format!("/{stem}/{name}"), served);
    }
}

/// The request body of a direct-link task.
pub fn direct_link_request(url: &str, dir: Option<&str>) -> serde_json::Value {
    let mut request = json!({ "url": url, "user_id": TEST_USER, "storage_name": TEST_STORAGE });
    if let Some(dir) = dir {
        request["dir_path"] = json!(dir);
    }
    request
}

/// `POST /api/v1/tasks` with a direct link; returns the task id.
pub async fn create(app: &TestApp, url: &str, dir: Option<&str>) -> String {
    let (status, body) = app.create_task(direct_link_request(url, dir)).await;
    assert_eq!(status, 201, "{body}");
    body["task_id"]
        .as_str()
        .expect("a 201 carries a task id")
        .to_owned()
}

/// What a careful client got for one logical create.
#[derive(Debug)]
pub struct Created {
    pub task_id: String,
    /// Requests that got no answer or a 503 before one succeeded.
    pub repeats: usize,
}

/// The careful client the contract allows: it sends `Idempotency-Key: key`
/// and repeats the same request, `retry_delay` apart, until it gets a 201
/// or a 200, so a create that Redis applied but could not acknowledge is
/// answered with the same task instead of created twice. Each request that
/// got no answer or a 503 counts in `refused`. Any other answer panics.
pub async fn create_until_answered(
    client: &reqwest::Client,
    create_url: &str,
    request: &serde_json::Value,
    key: &str,
    retry_delay: Duration,
    refused: &AtomicUsize,
) -> Created {
    let mut repeats = 0;
    loop {
        let answer = client
            .post(create_url)
            .header("Idempotency-Key", key)
            .json(request)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 201 || response.status() == 200 => {
                let body: serde_json::Value = response.json().await.expect("a JSON body");
                let task_id = body["task_id"].as_str().expect("a task id").to_owned();
                return Created { task_id, repeats };
            }
            Ok(response) if response.status() == 503 => {}
            Ok(response) => panic!(
                "create {key} answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        repeats += 1;
        refused.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(retry_delay).await;
    }
}

/// A store on the app's Redis, to read the event log and the projection.
pub async fn store(app: &TestApp) -> Store {
    store_at(&app.redis.url(), app.options.lease_seconds).await
}

pub async fn store_at(redis_url: &str, lease_seconds: u64) -> Store {
    Store::connect(
        &RedisConfig {
            url: redis_url.to_owned(),
            prefix: "savestream".into(),
            startup_wait_seconds: 0,
        },
        &QueueConfig {
            lease_seconds,
            retention_hours: 1,
        },
    )
    .await
    .expect("connecting to the app's redis")
}

/// The whole event log, grouped by task id, each task's events oldest first.
pub async fn events_by_task(store: &Store) -> HashMap<String, Vec<EventKind>> {
    let log: Vec<LoggedEvent> = store.read_log().await.expect("reading the event log");
    let mut by_task: HashMap<String, Vec<EventKind>> = HashMap::new();
    for logged in log {
        by_task
            .entry(logged.event.task_id.to_string())
            .or_default()
            .push(logged.event.kind);
    }
    by_task
}

/// How many of `events` are called `name` (`completed`, `started`, ...).
pub fn count(events: &[EventKind], name: &str) -> usize {
    events.iter().filter(|event| event.name() == name).count()
}

/// The events' names, for messages.
pub fn names(events: &[EventKind]) -> Vec<&'static str> {
    events.iter().map(EventKind::name).collect()
}

/// Checks that each of `task_ids` has, in the log, one `created` and
/// exactly one `completed` event and no other outcome: nothing lost, nothing
/// unfinished, nothing ended twice. Returns how many were started more than
/// once (taken over after a kill or an outage).
pub fn assert_each_completed_once<'a>(
    task_ids: impl IntoIterator<Item = &'a str>,
    log: &HashMap<String, Vec<EventKind>>,
) -> usize {
    let (mut checked, mut takeovers, mut wrong) = (0, 0, Vec::new());
    for task_id in task_ids {
        checked += 1;
        let events = log.get(task_id).map(Vec::as_slice).unwrap_or_default();
        if count(events, "started") > 1 {
            takeovers += 1;
        }
        let other_outcomes = count(events, "failed") + count(events, "canceled");
        if count(events, "created") != 1 || count(events, "completed") != 1 || other_outcomes != 0 {
            wrong.push(format!("{task_id}: {:?}", names(events)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} tasks lost, unfinished or not ended by exactly one `completed`:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    takeovers
}

/// Where the `completed` event says the file is.
pub fn completed_path(events: &[EventKind]) -> Option<&str> {
    events.iter().find_map(|event| match event {
        EventKind::Completed { path, .. } => Some(path.as_str()),
        _ => None,
    })
}

/// Waits until the projection lists no queued and no running task: every
/// task created so far has ended (retrying tasks are listed as queued).
pub async fn wait_until_no_task_is_pending(store: &Store, timeout: Duration) {
    eventually("every task to end", timeout, || async {
        let list = store.list(1).await.ok()?;
        (list.queued.is_empty() && list.running.is_empty()).then_some(())
    })
    .await;
}

/// Every file under `root` whose name ends in `.part`.
pub fn partial_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "part") {
                found.push(path);
            }
        }
    }
    found
}

/// A small seeded random source (xorshift64*), so a chaos run can be
/// repeated from the seed it prints.
pub struct Chaos {
    state: u64,
}

impl Chaos {
    /// Seeded from `SAVESTREAM_CHAOS_SEED` when set, else from the clock.
    pub fn from_env() -> Chaos {
        let seed = std::env::var("SAVESTREAM_CHAOS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("chaos seed: {seed} (repeat with SAVESTREAM_CHAOS_SEED={seed})");
        Chaos { state: seed | 1 }
    }

    pub fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `range` (`range.start < range.end`).
    pub fn between(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// The durability setting the Redis restart tests run with: every write is
/// in the append-only file, fsynced, before Redis answers it
/// (`redis_restart.rs` says why that is the one that guarantees no loss).
pub const REDIS_AOF_ALWAYS: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];

/// SIGKILLs a worker picked at random among the live ones and starts a
/// new one in its place, as a fleet's supervisor would.
pub fn kill_and_replace_a_worker(app: &mut TestApp, chaos: &mut Chaos) {
    let live: Vec<usize> = (0..app.workers.len())
        .filter(|&index| app.workers[index].is_running())
        .collect();
    if let Some(&victim) = live.get(chaos.between(0..live.len().max(1) as u64) as usize) {
        app.workers[victim].kill();
    }
    app.start_worker();
}

/// Fails the test if a worker exited on its own. A worker ends only when
/// it is killed: one started while Redis is away waits for it (`[redis]
/// startup_wait_seconds`), one that loses Redis keeps retrying.
pub fn assert_no_worker_exited(app: &mut TestApp) {
    for worker in &mut app.workers {
        if let Some(status) = worker.exit_status() {
            panic!("{} exited on its own ({status}):\n{}", worker.name, worker.log());
        }
    }
}

/// Every 1.5–3.5 s, kills a random worker and starts a new one (failing
/// on any that exited on its own), until no task is queued or running;
/// returns how many it killed. The intervals are chaos, not waits.
pub async fn kill_workers_until_no_task_is_pending(
    app: &mut TestApp,
    chaos: &mut Chaos,
    store: &Store,
    timeout: Duration,
) -> usize {
    let mut kills = 0;
    let chaos_loop = async {
        loop {
            tokio::time::sleep(Duration::from_millis(chaos.between(1_500..3_500))).await;
            assert_no_worker_exited(app);
            kill_and_replace_a_worker(app, chaos);
            kills += 1;
        }
    };
    tokio::select! {
        () = wait_until_no_task_is_pending(store, timeout) => {}
        () = chaos_loop => unreachable!("the chaos loop never ends"),
    }
    kills
}

/// Checks the storage after a chaos run whose task number `index` (in
/// `task_ids`) downloaded `chaos_file(stem, index)`: each file is
/// byte-identical at the path asked for (a kill between reserving a file and
/// recording `resolved` must not make the next attempt take `name_1`), and
/// no `.part` file and no other file is left.
pub fn assert_chaos_files_stored(
    app: &TestApp,
    stem: &str,
    task_ids: &[&str],
    log: &HashMap<String, Vec<EventKind>>,
) {
    let mut expected_files = BTreeSet::new();
    for (index, task_id) in task_ids.iter().enumerate() {
        let (name, bytes, _) = chaos_file(stem, index);
        let wanted = format!("/{stem}/{name}");
        let path = log
            .get(*task_id)
            .and_then(|events| completed_path(events))
            .unwrap_or_default();
        let stored = std::fs::read(app.storage_path(path))
            .unwrap_or_else(|error| panic!("task {task_id} completed at {path:?}: {error}"));
        assert!(
            stored == bytes,
            "task {task_id}: {path} differs: {} bytes stored, {} served",
            stored.len(),
            bytes.len()
        );
        assert_eq!(path, wanted, "task {task_id} saved its file under another name");
        expected_files.insert(wanted.trim_start_matches('/').to_owned());
    }
    assert_eq!(partial_files(&app.storage_dir), Vec::<PathBuf>::new());
    let stored_files: BTreeSet<String> = app.stored_files().into_iter().collect();
    assert_eq!(
        stored_files.difference(&expected_files).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files nobody asked for"
    );
}

/// A `redis-server` this test started itself, killed when dropped. The
/// testkit's `RedisServer` picks its own port and dir; a restart in place
/// needs both given.
pub struct RedisProcess {
    child: Child,
}

impl RedisProcess {
    /// Starts `redis-server` on `port` with `dir` as its working dir, plus
    /// `extra_args`, and waits until it answers `PING` (it may first have to
    /// replay its append-only file).
    pub async fn start(port: u16, dir: &Path, extra_args: &[&str]) -> RedisProcess {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let mut process = RedisProcess { child };
        eventually(
            &format!("redis-server to answer on port {port}"),
            Duration::from_secs(20),
            || async { ping(port).await.then_some(()) },
        )
        .await;
        // A redis-server that found its port taken exits at once; then the
        // PONG came from whoever took the port, not from this Redis.
        let exited = process.child.try_wait().ok().flatten();
        assert!(
            exited.is_none(),
            "redis-server exited ({exited:?}): port {port} was taken while Redis was down"
        );
        process
    }

    /// SIGKILL, as a crash or a lost machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A file server that holds the answer to requests until [`GatedServer::open`],
/// so a test can act while a worker waits on it; open, it answers every
/// request 200 with the whole file (it ignores `Range`). Raw TCP, one
/// request per connection.
pub struct GatedServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl GatedServer {
    pub async fn start(file: Vec<u8>) -> GatedServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the gated server");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let requests = Arc::new(AtomicUsize::new(0));
        let (gate, opened) = tokio::sync::watch::channel(false);
        let file = Arc::new(file);
        let counter = requests.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, file, mut opened) = (counter.clone(), file.clone(), opened.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1024];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => head.extend_from_slice(&byte[..read]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\
                         connection: close\r\n\r\n",
                        file.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.write_all(&file).await;
                });
            }
        });
        GatedServer {
            port,
            requests,
            gate,
            accept_loop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests that arrived so far (answered or held).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Answers the held requests and every later one.
    pub fn open(&self) {
        let _ = self.gate.send(true);
    }
}

impl Drop for GatedServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Sends an inline `PING` and reports whether `+PONG` came back. A Redis
/// still loading its append-only file answers `-LOADING`, which is not ready.
pub async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.ok()?;
        Some(&reply == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
