//! The live event stream's lifetime: a stream ends after `[api]
//! live_stream_max_seconds` even while its task runs on, so a client that
//! opens streams and never reads them cannot hold the stream slots for as
//! long as its tasks run; it does not end before, when nothing happens; and
//! ending early loses nothing, because a client that reconnects with
//! `Last-Event-ID` gets exactly the events after it.
//!
//! The API runs in this process (`Application::build` on port 0) against a
//! private `redis-server`; requests are plain HTTP/1.1 written on a socket,
//! so the test sees the body's chunked framing and can tell a clean end of
//! the stream (the last chunk) from a dropped connection.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config as RedisConfig};
use savestream_api::Application;
use savestream_shared::config::Config;
use savestream_shared::store::Store;
use savestream_shared::task::TaskId;
use savestream_testkit::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const TOKEN: &str = "live-events-token";
const USER: i64 = 123_456_789;

/// `[api] live_stream_max_seconds` in the test's config: longer than the 5 s
/// that one read of the log blocks, so a stream lives through reads that
/// find nothing (which once ended it, as an error).
const LIFETIME: Duration = Duration::from_secs(6);

/// A safety net only: a stream ends well within this after its lifetime.
const STREAM_END: Duration = Duration::from_secs(30);

/// How soon after its lifetime a stream whose client stopped reading gives
/// its Redis connection back: the stream's own timer ends it, so this is a
/// timer's wake-up and a `QUIT`. (When the lifetime was checked only where
/// the server polls the body, the connection stayed until the kernel's
/// zero-window probes let the server write a little, 15 s after it opened
/// in the run that found it, and later with each probe's doubling wait.)
const CLOSED_WITHIN: Duration = Duration::from_secs(3);

/// The API with `[api] live_stream_max_seconds =` [`LIFETIME`], served until the test ends.
struct TestApi {
    address: String,
    config: Config,
    redis: RedisServer,
    _storage: tempfile::TempDir,
}

impl TestApi {
    async fn start() -> TestApi {
        let redis = RedisServer::start();
        let storage = tempfile::tempdir().expect("creating a storage dir");
        let text = format!(
            r#"
[api]
host = "127.0.0.1"
port = 0
token = "{TOKEN}"
live_stream_max_seconds = {lifetime}

[redis]
url = "{redis_url}"

[[storages]]
name = "local1"
type = "local"
base_path = "{base_path}"

[[users]]
id = {USER}
storages = ["local1"]
"#,
            lifetime = LIFETIME.as_secs(),
            redis_url = redis.url(),
            base_path = storage.path().display(),
        );
        let config = Config::from_toml_str(&text, "config.toml", std::iter::empty())
            .expect("the test config loads")
            .config;
        let app = Application::build(config.clone())
            .await
            .expect("building the API");
        let address = format!("127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        TestApi {
            address,
            config,
            redis,
            _storage: storage,
        }
    }

    /// The task store, as a worker uses it, on a connection of its own.
    async fn store(&self) -> Store {
        let store = Store::connect(&self.config.redis, &self.config.queue)
            .await
            .expect("connecting the store");
        store.ensure_group().await.expect("the workers' group");
        store
    }

    /// Sends one request on a connection of its own and reads the answer's head.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let socket = TcpStream::connect(&self.address)
            .await
            .expect("connecting to the API");
        self.send_on(socket, method, path, headers, body).await
    }

    /// Sends one request on `socket` and reads the answer's head.
    async fn send_on(
        &self,
        mut socket: TcpStream,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\n\
             connection: close\r\ncontent-length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        socket
            .write_all(request.as_bytes())
            .await
            .expect("sending the request");
        Response::read_head(BufReader::new(socket)).await
    }

    /// `POST /api/v1/tasks`: a task that stays queued, since no worker runs.
    async fn create_task(&self) -> String {
        let body = serde_json::json!({
            "telegram_url": "https://t.me/channel/123",
            "user_id": USER,
            "storage_name": "local1",
            "dir_path": "/downloads",
        });
        let response = self
            .send(
                "POST",
                "/api/v1/tasks",
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await;
        let (status, body) = response.json().await;
        assert_eq!(status, 201, "{body}");
        body["task_id"].as_str().expect("a task id").to_owned()
    }

    async fn cancel_task(&self, task_id: &str) {
        let response = self
            .send("DELETE", &format!("/api/v1/tasks/{task_id}"), &[], "")
            .await;
        let (status, body) = response.json().await;
        assert_eq!(status, 200, "{body}");
    }

    /// The ids and types of the task's events, from the JSON form.
    async fn history(&self, task_id: &str) -> Vec<(String, String)> {
        let response = self
            .send("GET", &format!("/api/v1/tasks/{task_id}/events"), &[], "")
            .await;
        let (status, body) = response.json().await;
        assert_eq!(status, 200, "{body}");
        body["events"]
            .as_array()
            .expect("the task's events")
            .iter()
            .map(id_and_type)
            .collect()
    }

    /// A live stream request, with `Last-Event-ID` when given.
    async fn open_stream(&self, task_id: &str, last_event_id: Option<&str>) -> Response {
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        self.send("GET", &format!("/api/v1/tasks/{task_id}/events"), &headers, "")
            .await
    }
}

/// A client of the test's Redis, for what the test reads or writes there itself.
async fn redis_client(url: &str) -> Client {
    let client = Builder::from_config(RedisConfig::from_url(url).expect("a redis url"))
        .build()
        .expect("a redis client");
    client.init().await.expect("connecting to the test's redis");
    client
}

/// How many connections the test's Redis has: the API's shared ones, the
/// test's own, and one for each open live stream.
async fn connections(redis: &Client) -> usize {
    let clients: String = redis
        .custom(fred::cmd!("CLIENT"), vec!["LIST"])
        .await
        .expect("CLIENT LIST");
    clients.lines().filter(|line| !line.trim().is_empty()).count()
}

fn id_and_type(event: &serde_json::Value) -> (String, String) {
    (
        event["id"].as_str().expect("an event id").to_owned(),
        event["type"].as_str().expect("an event type").to_owned(),
    )
}

/// An answer whose head has been read; the body is read on demand.
struct Response {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    reader: BufReader<TcpStream>,
    finished: bool,
}

impl Response {
    async fn read_head(mut reader: BufReader<TcpStream>) -> Response {
        let status_line = read_line(&mut reader).await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut chunked = false;
        let mut content_length = None;
        loop {
            let line = read_line(&mut reader).await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                "content-length" => content_length = value.trim().parse().ok(),
                _ => {}
            }
        }
        Response {
            status,
            chunked,
            content_length,
            reader,
            finished: false,
        }
    }

    /// The body's next piece, or `None` after its end. Panics when the
    /// connection closes before the end: the server dropped the stream
    /// rather than ending it.
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        if !self.chunked {
            self.finished = true;
            let mut body = Vec::new();
            match self.content_length {
                Some(length) => {
                    body.resize(length, 0);
                    self.reader.read_exact(&mut body).await.expect("reading the body");
                }
                None => {
                    self.reader
                        .read_to_end(&mut body)
                        .await
                        .expect("reading the body");
                }
            }
            return Some(body);
        }
        let size_line = read_line(&mut self.reader).await;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {size_line:?}"));
        if size == 0 {
            // The last chunk: trailers, if any, up to an empty line.
            while !read_line(&mut self.reader).await.is_empty() {}
            self.finished = true;
            return None;
        }
        let mut chunk = vec![0; size + 2];
        self.reader
            .read_exact(&mut chunk)
            .await
            .expect("the connection closed inside a chunk: the stream was dropped, not ended");
        assert!(chunk.ends_with(b"\r\n"), "a chunk not followed by CRLF");
        chunk.truncate(size);
        Some(chunk)
    }

    async fn json(mut self) -> (u16, serde_json::Value) {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            body.extend(chunk);
        }
        let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
            panic!(
                "a {} body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&body)
            )
        });
        (self.status, json)
    }

    /// Every event of an SSE body, as (id, type), read until the body ends.
    async fn events_to_the_end(mut self) -> Vec<(String, String)> {
        assert_eq!(self.status, 200, "a live stream opens with 200");
        let mut text = String::new();
        while let Some(chunk) = self.next_chunk().await {
            text.push_str(std::str::from_utf8(&chunk).expect("an SSE body is UTF-8"));
        }
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "the stream ended inside an event: {text:?}"
        );
        text.split("\n\n")
            .filter_map(|block| {
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(value.trim().to_owned());
                    }
                }
                // Keep-alive comments carry no data.
                let data: serde_json::Value = serde_json::from_str(&data?).expect("SSE data is JSON");
                let (data_id, kind) = id_and_type(&data);
                assert_eq!(
                    id.as_deref(),
                    Some(data_id.as_str()),
                    "the SSE id is the event's id"
                );
                Some((data_id, kind))
            })
            .collect()
    }
}

/// One line of the head or of the chunk framing, without its CRLF.
async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = Vec::new();
    let read = reader
        .read_until(b'\n', &mut line)
        .await
        .expect("reading from the API");
    assert!(read > 0, "the API closed the connection mid-answer");
    String::from_utf8(line)
        .expect("an ASCII line")
        .trim_end_matches(['\r', '\n'])
        .to_owned()
}

#[tokio::test]
async fn a_live_stream_ends_after_its_lifetime_and_the_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
) {
    let api = TestApi::start().await;
    // No worker runs: the task stays queued, and its stream would stay open
    // for as long as it does but for the lifetime.
    let task_id = api.create_task().await;

    let opened = std::time::Instant::now();
    let first = api.open_stream(&task_id, None).await;
    let first = tokio::time::timeout(LIFETIME + STREAM_END, first.events_to_the_end())
        .await
        .expect("the live stream of a queued task ends once its lifetime is over");
    let lived = opened.elapsed();

    let types: Vec<&str> = first.iter().map(|(_, kind)| kind.as_str()).collect();
    assert_eq!(
        types,
        ["created"],
        "the history, and the stream ended before the task"
    );
    assert!(
        lived >= LIFETIME,
        "the stream ended after {lived:?}, before its lifetime of {LIFETIME:?}, with nothing to end it"
    );

    // Reconnect as an SSE client does. The task ends while the second
    // stream is open: its end comes live, or (if that stream's lifetime ran
    // out first) in the replay of a third.
    let mut received = first;
    let mut streams = 1;
    let mut second_stream_opened = false;
    while received.last().is_none_or(|(_, kind)| kind != "canceled") {
        assert!(streams < 4, "the task's end never came: {received:?}");
        let last_event_id = received.last().map(|(id, _)| id.clone());
        let stream = api.open_stream(&task_id, last_event_id.as_deref()).await;
        if !second_stream_opened {
            second_stream_opened = true;
            api.cancel_task(&task_id).await;
        }
        let events = tokio::time::timeout(LIFETIME + STREAM_END, stream.events_to_the_end())
            .await
            .expect("a reconnected stream ends");
        received.extend(events);
        streams += 1;
    }

    assert_eq!(
        received,
        api.history(&task_id).await,
        "the streams together sent the task's history, each event once"
    );
    let last_event_id = &received.last().expect("the end").0;
    let after_the_end = api.open_stream(&task_id, Some(last_event_id)).await;
    assert_eq!(after_the_end.status, 204, "nothing after the task's end");
}

#[tokio::test]
async fn a_live_stream_whose_client_stops_reading_closes_its_redis_connection_once_its_lifetime_is_over() {
    // Arrange: a queued task, and its live stream opened by a client that
    // reads the answer's head and then nothing, with a small receive buffer.
    let api = TestApi::start().await;
    let redis = redis_client(&api.redis.url()).await;
    let task_id = api.create_task().await;
    let store = api.store().await;
    let without_the_stream = connections(&redis).await;
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    let socket = socket
        .connect(api.address.parse().expect("the API's address"))
        .await
        .expect("connecting to the API");
    let path = format!("/api/v1/tasks/{task_id}/events");
    let opened = std::time::Instant::now();
    let stream = api
        .send_on(socket, "GET", &path, &[("accept", "text/event-stream")], "")
        .await;
    assert_eq!(stream.status, 200, "the live stream opens");
    assert_eq!(
        connections(&redis).await,
        without_the_stream + 1,
        "the stream reads the log on a connection of its own"
    );

    // Act: the task starts and resolves its file 40 times with a 512 KiB
    // title: 20 MiB of events, far more than the client's socket and the
    // server's send buffer hold, so the server stops writing the body.
    let job = store
        .read_jobs("test-worker", 1, Duration::from_secs(5))
        .await
        .expect("reading the work item")
        .pop()
        .expect("the task's work item");
    let task = TaskId::parse(&task_id).expect("a task id");
    let lease = store
        .start(&job.job_id, &task, "test-worker")
        .await
        .expect("starting the task");
    let title = "t".repeat(512 * 1024);
    for _ in 0..40 {
        store
            .resolve(&lease, "big.bin", None, "/downloads/big.bin", &title, None)
            .await
            .expect("resolving the file");
    }

    // Assert: once the lifetime is over, the stream's Redis connection is
    // closed (and its slot given back with it), though the client has read
    // nothing since the head. Polled: nothing outside the API signals it.
    let deadline = opened + LIFETIME + CLOSED_WITHIN;
    while connections(&redis).await > without_the_stream {
        assert!(
            std::time::Instant::now() < deadline,
            "the live stream of a client that stopped reading still holds its redis connection {:?} \
             after it opened, {CLOSED_WITHIN:?} past its lifetime of {LIFETIME:?}",
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        opened.elapsed() >= LIFETIME,
        "the stream's connection closed after {:?}, before its lifetime of {LIFETIME:?}",
        opened.elapsed()
    );

    // ...and the client that reads again gets a clean end, and with a
    // reconnect every event once: ending the stream lost nothing.
    let mut received = tokio::time::timeout(STREAM_END, stream.events_to_the_end())
        .await
        .expect("the stream ends once its client reads");
    let last_event_id = received.last().expect("at least the history").0.clone();
    let rest = api.open_stream(&task_id, Some(&last_event_id)).await;
    api.cancel_task(&task_id).await;
    received.extend(
        tokio::time::timeout(LIFETIME + STREAM_END, rest.events_to_the_end())
            .await
            .expect("the reconnected stream ends with the task"),
    );
    assert_eq!(
        received,
        api.history(&task_id).await,
        "the two streams together sent the task's history, each event once"
    );
}

#[test]
fn a_live_stream_lifetime_of_zero_is_refused_with_the_range() {
    let error = Config::from_toml_str(
        "[api]\nlive_stream_max_seconds = 0\n",
        "config.toml",
        std::iter::empty(),
    )
    .expect_err("a lifetime of 0 would end every stream as it opens");
    assert_eq!(
        error.to_string(),
        "config.toml: api.live_stream_max_seconds: must be between 1 and 86400, found 0"
    );
}
