//! [`FlappingReceiver`]: a webhook endpoint on loopback that fails on
//! purpose, written on raw TCP so it can misbehave the ways HTTP libraries
//! will not: answer 500, hang up without answering, or hold a request open
//! until the sender gives up, before it finally answers 200.
//!
//! What it answers depends on how many times it has seen the request's
//! `webhook-id` (its [`Script`]), so every delivery meets every failure
//! mode whatever order deliveries arrive in. It records every request that
//! arrived in full (headers and body) with what it answered; holding a
//! request open ends when the sender hangs up, or after a minute.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use savestream_tests::savestream_testkit::eventually;

/// One way to answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer this status with an empty body.
    Status(u16),
    /// Close the connection without a byte of answer.
    HangUp,
    /// Never answer: hold the connection until the sender times out.
    Hold,
}

/// What to answer the n-th request (from 0) carrying a given `webhook-id`:
/// the script of the delivery, picked by how the id hashes. A delivery past
/// its script's end gets its last entry again.
pub type Script = Vec<Vec<Behaviour>>;

/// One request, as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    /// Header names lowercased.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub answered: Behaviour,
}

impl Received {
    pub fn webhook_id(&self) -> &str {
        self.headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    seen: HashMap<String, usize>,
}

pub struct FlappingReceiver {
    port: u16,
    state: Arc<Mutex<State>>,
    accept_loop: JoinHandle<()>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panicking test thread must not make the record unreadable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FlappingReceiver {
    pub async fn start(script: Script) -> FlappingReceiver {
        assert!(script.iter().all(|entry| !entry.is_empty()), "empty script entry");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver on loopback");
        let port = listener
            .local_addr()
            .expect("a bound listener has an address")
            .port();
        let state: Arc<Mutex<State>> = Arc::default();
        let script = Arc::new(script);
        let accept_state = state.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, script) = (accept_state.clone(), script.clone());
                tokio::spawn(serve(stream, state, script));
            }
        });
        FlappingReceiver {
            port,
            state,
            accept_loop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// The tasks whose outcome it answered 200 at least once.
    pub fn delivered_tasks(&self) -> BTreeSet<String> {
        lock(&self.state)
            .received
            .iter()
            .filter(|received| received.answered == Behaviour::Status(200))
            .filter_map(|received| received.json()["task_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until the outcome of every task in `task_ids` was answered 200.
    pub async fn wait_until_delivered(&self, task_ids: &BTreeSet<String>, timeout: Duration) {
        eventually("every outcome to be answered 200", timeout, || async {
            let delivered = self.delivered_tasks();
            task_ids.is_subset(&delivered).then_some(())
        })
        .await;
    }
}

/// Checks what repeats must keep, over every request `received`: a task's
/// outcome arrives under one `webhook-id`, and an id always carries the
/// same body. Returns how many outcomes (tasks) the requests carried.
pub fn assert_repeats_are_identical(received: &[Received]) -> usize {
    let mut ids_by_task: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut bodies_by_id: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for request in received {
        assert!(!request.webhook_id().is_empty(), "no webhook-id: {request:?}");
        let task_id = request.json()["task_id"].as_str().unwrap_or_default().to_owned();
        ids_by_task
            .entry(task_id)
            .or_default()
            .insert(request.webhook_id());
        bodies_by_id
            .entry(request.webhook_id())
            .or_default()
            .insert(&request.body);
    }
    let split: Vec<_> = ids_by_task.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "outcomes delivered under several webhook-ids: {split:?}"
    );
    let mixed: Vec<_> = bodies_by_id
        .iter()
        .filter(|(_, bodies)| bodies.len() > 1)
        .collect();
    assert!(
        mixed.is_empty(),
        "webhook-ids that carried different bodies: {mixed:?}"
    );
    ids_by_task.len()
}

impl Drop for FlappingReceiver {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Serves the requests of one connection (keep-alive) until it closes or
/// the script says to hang up.
async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, script: Arc<Script>) {
    let mut buffer = Vec::new();
    loop {
        let Some((headers, body)) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let webhook_id = headers.get("webhook-id").cloned().unwrap_or_default();
        let behaviour = {
            let mut state = lock(&state);
            let seen = state.seen.entry(webhook_id.clone()).or_default();
            let entry = &script[pick(&webhook_id, script.len())];
            let behaviour = entry[(*seen).min(entry.len() - 1)];
            *seen += 1;
            state.received.push(Received {
                headers,
                body,
                answered: behaviour,
            });
            behaviour
        };
        match behaviour {
            Behaviour::Status(status) => {
                let reply = format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\n\r\n");
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            Behaviour::HangUp => return,
            Behaviour::Hold => {
                // Ends when the sender gives up and closes (read returns 0 or
                // fails), or after a minute as a bound on a broken sender.
                let mut byte = [0u8; 1];
                let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut byte)).await;
                return;
            }
        }
    }
}

/// The script entry for a delivery: a stable hash of its id.
fn pick(webhook_id: &str, entries: usize) -> usize {
    let hash = webhook_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % entries as u64) as usize
}

/// Reads one request (headers, and a body of `content-length` bytes);
/// `None` when the connection closes first or the request is malformed.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(HashMap<String, String>, String)> {
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).into_owned();
    buffer.drain(..header_end + length);
    Some((headers, body))
}
