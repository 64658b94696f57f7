//! A real HTTP webhook receiver on loopback, for the dispatcher tests.
//!
//! It records every request (method, path, headers, body, when it arrived),
//! answers from a per-request script (then from a default reply), and counts
//! requests in flight so a test can prove tries run in parallel. It is the
//! only place in the tests that sleeps, and only to *be* a slow receiver.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::{Body, Request, Response};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// This status with these headers (for `Retry-After`).
    StatusWithHeaders(u16, Vec<(&'static str, String)>),
    /// Wait, then answer this status: a slow receiver.
    Slow(Duration, u16),
    /// Hold the request until this many requests have been in flight at
    /// once (or 10 s pass), then answer 200.
    HoldUntilInFlight(usize),
    /// 200 with a body that never ends.
    EndlessBody,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub arrived: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_owned()
    }
}

struct State {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    requests: Mutex<Vec<Recorded>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    in_flight_changed: Notify,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

/// Counts a request in flight for as long as its handler lives, including
/// when the client goes away and the handler is dropped.
struct InFlight(Arc<State>);

impl InFlight {
    fn enter(state: &Arc<State>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        state.in_flight_changed.notify_waiters();
        InFlight(Arc::clone(state))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.in_flight_changed.notify_waiters();
    }
}

impl Receiver {
    /// A receiver on a free loopback port, answering 200 by default.
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// A receiver on this loopback port (0: any free one).
    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binding the receiver on loopback");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let state = Arc::new(State {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::Status(200)),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            in_flight_changed: Notify::new(),
        });
        let handler_state = Arc::clone(&state);
        let app = poem::endpoint::make(move |request: Request| {
            let state = Arc::clone(&handler_state);
            async move { handle(state, request).await }
        });
        let acceptor = TcpAcceptor::from_tokio(listener).expect("a tokio listener makes an acceptor");
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        Receiver { addr, state, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answers with this once the script is used up.
    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(state: Arc<State>, mut request: Request) -> Response {
    let _in_flight = InFlight::enter(&state);
    let body = request.take_body().into_bytes().await.unwrap_or_default();
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.requests.lock().unwrap().push(Recorded {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        arrived: Instant::now(),
    });
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.default.lock().unwrap().clone());
    match reply {
        Reply::Status(status) => status_response(status),
        Reply::StatusWithHeaders(status, headers) => {
            let mut response = status_response(status);
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, value.parse().expect("test header values are valid"));
            }
            response
        }
        Reply::Slow(delay, status) => {
            tokio::time::sleep(delay).await;
            status_response(status)
        }
        Reply::HoldUntilInFlight(wanted) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let changed = state.in_flight_changed.notified();
                // Once reached, the gate stays open: the first request
                // released leaves, and the rest must not wait again.
                if state.max_in_flight.load(Ordering::SeqCst) >= wanted {
                    break;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    break;
                }
            }
            status_response(200)
        }
        Reply::EndlessBody => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let endless = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::from_bytes_stream(endless))
        }
    }
}

fn status_response(status: u16) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("test statuses are valid"))
        .body(Body::empty())
}
