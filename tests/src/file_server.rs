//! [`FileServer`]: a real HTTP/1.1 server on `127.0.0.1:0` that serves
//! files configured by a test, for the `http` source to download.
//!
//! Each [`ServedFile`] can send or omit Content-Length and
//! Content-Disposition, honour or ignore `Range` (or honour it with at most
//! so many bytes per 206, as some servers cap a range, and even answer a GET
//! without `Range` with such a 206), be throttled to a number
//! of bytes per second (so a test can act in the middle of a download),
//! answer 500 to its first requests, always answer one status (404), or
//! redirect. Opt-in, it sends an `ETag` and/or a `Last-Modified` and then
//! honours `If-Range` (a validator that does not match answers 200 with the
//! whole file, as RFC 9110 says). It can be replaced by another after so
//! many requests (a file that changes between two requests of one
//! attempt). Every request is recorded with its `Range`
//! and `If-Range` headers, how many body bytes were sent and whether the
//! client hung up, so tests can assert that a resume used `Range` and that
//! a canceled download stopped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE,
    LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a path is served.
#[derive(Clone, Debug)]
pub struct ServedFile {
    pub body: Bytes,
    pub content_disposition: Option<String>,
    /// Honour `Range: bytes=N-` with 206; when false, answer 200 with the whole file.
    pub ranges: bool,
    /// Send at most this many bytes in a 206 (`Content-Range: bytes N-M/LEN`
    /// with `M` short of the end), as servers that cap a range do; `None`
    /// sends the rest of the file.
    pub range_cap: Option<u64>,
    /// Answer a GET without `Range` as one for `bytes=0-`: a 206 with
    /// `Content-Range` (of at most `range_cap` bytes), as servers that cap
    /// every answer do.
    pub partial_without_range: bool,
    /// Send at most this many bytes of each answer's body, then end it short
    /// of its `Content-Length`: the connection breaks off mid-body.
    pub break_off_after: Option<u64>,
    /// Send at most this many bytes per second; `None` sends at full speed.
    pub bytes_per_second: Option<u64>,
    /// Answer 500 to this many requests before serving the file.
    pub fail_first: usize,
    /// Always answer this status with an empty body instead of the file.
    pub status: Option<u16>,
    /// Send this `Retry-After` with `status`.
    pub retry_after: Option<String>,
    /// Send Content-Length (else the body is chunked, of unknown size).
    pub content_length: bool,
    /// Answer 302 to this location instead of the file.
    pub redirect_to: Option<String>,
    /// Send this `ETag` (as given: `"v1"`, or weak `W/"v1"`).
    pub etag: Option<String>,
    /// Send this `Last-Modified`.
    pub last_modified: Option<String>,
    /// Answer `Range` even when `If-Range` does not match (a server that
    /// ignores `If-Range`, as some do).
    pub ignores_if_range: bool,
    /// After this many requests for its path, the path serves the other
    /// file instead (see [`ServedFile::replaced_after`]).
    pub replaced: Option<(usize, Box<ServedFile>)>,
}

impl ServedFile {
    /// `body` with Content-Length and Range support, at full speed.
    pub fn new(body: impl Into<Bytes>) -> ServedFile {
        ServedFile {
            body: body.into(),
            content_disposition: None,
            ranges: true,
            range_cap: None,
            partial_without_range: false,
            break_off_after: None,
            bytes_per_second: None,
            fail_first: 0,
            status: None,
            retry_after: None,
            content_length: true,
            redirect_to: None,
            etag: None,
            last_modified: None,
            ignores_if_range: false,
            replaced: None,
        }
    }

    /// A path that always answers `status` (404, 500, ...).
    pub fn status(status: u16) -> ServedFile {
        ServedFile {
            status: Some(status),
            ..ServedFile::new(Bytes::new())
        }
    }

    /// With [`ServedFile::status`]: the answer carries this `Retry-After`
    /// (delta-seconds or an HTTP date).
    pub fn with_retry_after(mut self, value: impl Into<String>) -> ServedFile {
        self.retry_after = Some(value.into());
        self
    }

    /// A path that answers 302 to `location`.
    pub fn redirect(location: impl Into<String>) -> ServedFile {
        ServedFile {
            redirect_to: Some(location.into()),
            ..ServedFile::new(Bytes::new())
        }
    }

    pub fn with_content_disposition(mut self, header: impl Into<String>) -> ServedFile {
        self.content_disposition = Some(header.into());
        self
    }

    pub fn without_ranges(mut self) -> ServedFile {
        self.ranges = false;
        self
    }

    /// Answers a range with at most `bytes` bytes of it.
    pub fn capping_ranges(mut self, bytes: u64) -> ServedFile {
        self.range_cap = Some(bytes);
        self
    }

    /// Answers every GET, with or without `Range`, with a 206 of at most
    /// `bytes` bytes: a GET without `Range` gets `Content-Range: bytes
    /// 0-M/LEN` (the whole file when `bytes` covers it).
    pub fn partial_even_without_range(mut self, bytes: u64) -> ServedFile {
        self.range_cap = Some(bytes);
        self.partial_without_range = true;
        self
    }

    /// Every answer breaks off after `bytes` bytes of its body (a link
    /// whose connection drops every so often).
    pub fn breaking_off_after(mut self, bytes: u64) -> ServedFile {
        self.break_off_after = Some(bytes);
        self
    }

    pub fn without_content_length(mut self) -> ServedFile {
        self.content_length = false;
        self
    }

    pub fn throttled(mut self, bytes_per_second: u64) -> ServedFile {
        self.bytes_per_second = Some(bytes_per_second);
        self
    }

    pub fn failing_first(mut self, requests: usize) -> ServedFile {
        self.fail_first = requests;
        self
    }

    /// Sends `ETag: <etag>` (quotes included: `"v1"`, or weak `W/"v1"`)
    /// and honours `If-Range` against it (see [`ServedFile::if_range_matches`]).
    pub fn with_etag(mut self, etag: impl Into<String>) -> ServedFile {
        self.etag = Some(etag.into());
        self
    }

    /// Sends `Last-Modified: <date>` and honours `If-Range` against it.
    pub fn with_last_modified(mut self, date: impl Into<String>) -> ServedFile {
        self.last_modified = Some(date.into());
        self
    }

    /// Honours `Range` whatever `If-Range` says.
    pub fn ignoring_if_range(mut self) -> ServedFile {
        self.ignores_if_range = true;
        self
    }

    /// Answers the first `requests` requests for its path (counting all of
    /// them, failed ones too) as this file, and every later one as `by`: a
    /// file replaced on the server between two requests.
    pub fn replaced_after(mut self, requests: usize, by: ServedFile) -> ServedFile {
        self.replaced = Some((requests, Box::new(by)));
        self
    }

    /// Whether a request's `If-Range` lets its `Range` stand. Only a file
    /// with a validator looks at `If-Range` (the default ignores it, as it
    /// always did). Then, as RFC 9110 (13.1.5) says: an entity tag matches
    /// only a strong `ETag` equal to it, a date only a `Last-Modified`
    /// equal to it; anything else means the file changed, and the whole
    /// file is sent with 200.
    pub fn if_range_matches(&self, if_range: Option<&str>) -> bool {
        let Some(if_range) = if_range.map(str::trim) else {
            return true;
        };
        if self.ignores_if_range || (self.etag.is_none() && self.last_modified.is_none()) {
            return true;
        }
        if if_range.starts_with('"') || if_range.starts_with("W/") {
            return self
                .etag
                .as_deref()
                .is_some_and(|etag| !etag.starts_with("W/") && etag == if_range);
        }
        self.last_modified.as_deref() == Some(if_range)
    }
}

/// One request the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub path: String,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    /// The `If-Range` header, as sent.
    pub if_range: Option<String>,
    pub status: u16,
    /// Body bytes handed to the connection so far.
    pub sent: u64,
    /// True once the body ended or the client went away.
    pub finished: bool,
    /// True when the whole body was sent.
    pub complete: bool,
}

impl RecordedRequest {
    /// The N of `Range: bytes=N-`, if the request had one.
    pub fn range_start(&self) -> Option<u64> {
        let range = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        range.split('-').next()?.trim().parse().ok()
    }
}

#[derive(Default)]
struct State {
    files: HashMap<String, ServedFile>,
    /// How many requests each path has had.
    hits: HashMap<String, usize>,
    requests: Vec<RecordedRequest>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // Test state stays usable after a panicking test thread.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server; it stops when dropped.
pub struct FileServer {
    address: SocketAddr,
    state: Shared,
    accept_loop: JoinHandle<()>,
}

impl FileServer {
    /// Starts serving on a free loopback port.
    pub async fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 for the file server");
        let address = listener.local_addr().expect("a bound listener has an address");
        let state: Shared = Arc::default();
        let accept_state = state.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, request)) }
                    });
                    // A client that hangs up mid-body ends the connection with
                    // an error; that is what some tests are about.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FileServer {
            address,
            state,
            accept_loop,
        }
    }

    /// Serves `file` at `path` (which starts with `/`).
    pub fn add(&self, path: &str, file: ServedFile) {
        lock(&self.state).files.insert(path.to_owned(), file);
    }

    /// Changes the speed of later requests for `path`.
    pub fn set_throttle(&self, path: &str, bytes_per_second: Option<u64>) {
        if let Some(file) = lock(&self.state).files.get_mut(path) {
            file.bytes_per_second = bytes_per_second;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// The requests for `path`, oldest first.
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn respond(state: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let if_range = request
        .headers()
        .get(IF_RANGE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut guard = lock(state);
    let hit = {
        let hits = guard.hits.entry(path.clone()).or_default();
        *hits += 1;
        *hits
    };
    let file = guard.files.get(&path).map(|file| match &file.replaced {
        Some((requests, by)) if hit > *requests => (**by).clone(),
        _ => file.clone(),
    });
    let index = guard.requests.len();
    guard.requests.push(RecordedRequest {
        path,
        range: range.clone(),
        if_range: if_range.clone(),
        status: 0,
        sent: 0,
        finished: false,
        complete: false,
    });
    drop(guard);

    let (response, body) = match file {
        None => (empty(StatusCode::NOT_FOUND), None),
        Some(file) if file.status.is_some() => {
            let status = file.status.and_then(|code| StatusCode::from_u16(code).ok());
            let mut response = empty(status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
            if let Some(value) = file
                .retry_after
                .as_deref()
                .and_then(|value| HeaderValue::from_str(value).ok())
            {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            (response, None)
        }
        Some(file) if hit <= file.fail_first => (empty(StatusCode::INTERNAL_SERVER_ERROR), None),
        Some(file) if file.redirect_to.is_some() => {
            let mut response = empty(StatusCode::FOUND);
            if let Some(location) = file
                .redirect_to
                .as_deref()
                .and_then(|location| HeaderValue::from_str(location).ok())
            {
                response.headers_mut().insert(LOCATION, location);
            }
            (response, None)
        }
        Some(file) => {
            // A file that changed since the validator was taken ignores the range.
            let range = range.filter(|_| file.if_range_matches(if_range.as_deref()));
            serve(&file, range.as_deref())
        }
    };
    let status = response.status().as_u16();
    let mut guard = lock(state);
    guard.requests[index].status = status;
    match body {
        None => {
            guard.requests[index].finished = true;
            guard.requests[index].complete = true;
            drop(guard);
            response
        }
        Some((bytes, bytes_per_second)) => {
            drop(guard);
            let (parts, _) = response.into_parts();
            let stream = BodyStream {
                state: state.clone(),
                index,
                bytes,
                bytes_per_second,
                sleep: None,
            };
            Response::from_parts(parts, StreamBody::new(stream).boxed())
        }
    }
}

/// The response head for a file, and the bytes its body must carry.
fn serve(file: &ServedFile, range: Option<&str>) -> (Response<Body>, Option<(Bytes, Option<u64>)>) {
    let length = file.body.len() as u64;
    let start = if file.ranges {
        range
            .and_then(range_start)
            .or(file.partial_without_range.then_some(0))
    } else {
        None
    };
    let (status, bytes) = match start {
        Some(start) if start >= length => {
            let mut response = empty(StatusCode::RANGE_NOT_SATISFIABLE);
            insert(&mut response, CONTENT_RANGE, &format!("bytes */{length}"));
            return (response, None);
        }
        Some(start) => {
            let end = file
                .range_cap
                .map_or(length, |cap| length.min(start.saturating_add(cap.max(1))));
            (
                StatusCode::PARTIAL_CONTENT,
                file.body.slice(start as usize..end as usize),
            )
        }
        None => (StatusCode::OK, file.body.clone()),
    };
    let mut response = empty(status);
    if let Some(start) = start.filter(|_| status == StatusCode::PARTIAL_CONTENT) {
        let last = start + bytes.len() as u64 - 1;
        insert(
            &mut response,
            CONTENT_RANGE,
            &format!("bytes {start}-{last}/{length}"),
        );
    }
    if file.ranges {
        insert(&mut response, ACCEPT_RANGES, "bytes");
    }
    if file.content_length {
        insert(&mut response, CONTENT_LENGTH, &bytes.len().to_string());
    }
    if let Some(disposition) = &file.content_disposition {
        insert(&mut response, CONTENT_DISPOSITION, disposition);
    }
    if let Some(etag) = &file.etag {
        insert(&mut response, ETAG, etag);
    }
    if let Some(date) = &file.last_modified {
        insert(&mut response, LAST_MODIFIED, date);
    }
    let bytes = match file.break_off_after {
        Some(cap) => bytes.slice(..bytes.len().min(cap as usize)),
        None => bytes,
    };
    (response, Some((bytes, file.bytes_per_second)))
}

/// The N of `bytes=N-` or `bytes=N-M` (the end is ignored: the rest is sent).
fn range_start(header: &str) -> Option<u64> {
    header
        .trim()
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = status;
    response
}

fn insert(response: &mut Response<Body>, name: hyper::header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A body sent in slices, paced when throttled, that records what it sent
/// and notices when the client goes away (it is dropped unfinished).
struct BodyStream {
    state: Shared,
    index: usize,
    bytes: Bytes,
    bytes_per_second: Option<u64>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Throttled bodies are sent in slices this often.
const TICK: Duration = Duration::from_millis(50);
const FULL_SPEED_CHUNK: usize = 64 * 1024;

impl Stream for BodyStream {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.bytes.is_empty() {
            let mut guard = lock(&self.state);
            let index = self.index;
            guard.requests[index].finished = true;
            guard.requests[index].complete = true;
            return Poll::Ready(None);
        }
        let chunk_size = match self.bytes_per_second {
            Some(rate) => {
                if let Some(sleep) = self.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                self.sleep = Some(Box::pin(tokio::time::sleep(TICK)));
                ((rate as f64 * TICK.as_secs_f64()) as usize).max(1)
            }
            None => FULL_SPEED_CHUNK,
        };
        let chunk_size = chunk_size.min(self.bytes.len());
        let chunk = self.bytes.split_to(chunk_size);
        let index = self.index;
        lock(&self.state).requests[index].sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        lock(&self.state).requests[self.index].finished = true;
    }
}
