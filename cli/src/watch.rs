//! `savestream watch <id>`: follows a task until it ends, with a live
//! progress bar (bytes, speed, ETA), then prints how it ended on stdout and
//! exits 0 if it completed, 1 if it failed or was canceled. When it cannot
//! follow the task to its end (the API unreachable for too long, the task
//! unknown), its error exits 3 (see `main.rs`): how the task ends is unknown.
//!
//! Two sources feed the screen. The task's live event stream
//! (`GET /api/v1/tasks/{id}/events`, `Accept: text/event-stream`) says what
//! happens (started, resolved, retrying, how it ended); it reconnects with
//! `Last-Event-ID` (1, 2, 4 s apart, then every 5 s, for as long as the poll
//! below goes on) when the connection drops, cannot be made, or is ended by
//! the server before the task's end (as it is after `[api]
//! live_stream_max_seconds`; the replay loses nothing), and stops following when the API answers that with 204 (the task has ended and
//! nothing came after the last event read). Progress is not an event, so
//! `GET /api/v1/tasks/{id}` is polled a few times a second for the bytes and
//! the speed; it also notices the end when the event stream cannot.
//!
//! The bar is drawn on stderr only when it is a terminal; event lines are
//! printed either way, so a log of `watch` still tells the story.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use savestream_client::types::{EventType, Task, TaskEvent, TaskStatus};

use crate::api::Api;
use crate::exit;
use crate::sse::SseParser;
use crate::{format, out};

/// How often progress is polled: the worker writes it a few times a second.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long the API may stay unreachable before `watch` gives up: long
/// enough to ride out an API restart.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// The pause before reopening the event stream after one failure (a
/// stream that closed, or an attempt to open one that failed); it doubles
/// with each further failure in a row, up to [`MAX_RECONNECT_PAUSE`].
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// The longest pause between attempts to reopen the event stream: the
/// stream is reopened for as long as the poll goes on (up to
/// [`GIVE_UP_AFTER`] of an unreachable API), and within this long of the
/// API coming back.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The pause before the next attempt to open the event stream after
/// `failures` (at least one) failures in a row: 1, 2 and 4 s, then
/// [`MAX_RECONNECT_PAUSE`] for as long as it takes.
fn reconnect_pause(failures: u32) -> Duration {
    RECONNECT_AFTER
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_RECONNECT_PAUSE)
}

pub async fn run(api: &Api, task_id: &str) -> anyhow::Result<ExitCode> {
    let mut task = get_task(api, task_id).await?;
    let screen = Screen::new(&task);
    let mut events = std::pin::pin!(EventFollower::new(api, task_id).into_stream());
    let mut events_live = true;
    let mut poll = tokio::time::interval(POLL_EVERY);
    let mut unreachable_since: Option<Instant> = None;
    while !is_ended(task.status) {
        tokio::select! {
            event = events.next(), if events_live => match event {
                Some(event) => {
                    let ended = is_ended_event(event.type_);
                    screen.event(&event);
                    if ended {
                        break;
                    }
                }
                None => events_live = false,
            },
            _ = poll.tick() => match api.client().get_task().task_id(task_id).send().await {
                Ok(polled) => {
                    unreachable_since = None;
                    task = polled.into_inner();
                    screen.progress(&task);
                }
                Err(error) => {
                    let error = api.explain(error).await;
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GIVE_UP_AFTER {
                        screen.bar.abandon();
                        return Err(error);
                    }
                }
            },
        }
    }
    // The end as the event said it; read the task once more for its final
    // path, size and error.
    let task = get_task(api, task_id).await?;
    screen.finish(&task)
}

async fn get_task(api: &Api, task_id: &str) -> anyhow::Result<Task> {
    match api.client().get_task().task_id(task_id).send().await {
        Ok(task) => Ok(task.into_inner()),
        Err(error) => Err(api.explain(error).await),
    }
}

fn is_ended(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled
    )
}

fn is_ended_event(kind: EventType) -> bool {
    matches!(
        kind,
        EventType::Completed | EventType::Failed | EventType::Canceled
    )
}

/// The progress bar and the lines printed above it.
struct Screen {
    bar: ProgressBar,
    /// Whether the bar has a length (the file's size is known).
    sized: std::cell::Cell<bool>,
    /// The paths each attempt resolved so far, to tell a file replaced on
    /// the server (resolved again at the same path) from the next file of
    /// an album.
    resolved: std::cell::RefCell<Vec<(Option<String>, String)>>,
}

impl Screen {
    fn new(task: &Task) -> Screen {
        let bar = ProgressBar::new_spinner();
        bar.set_style(spinner_style());
        bar.set_prefix(task.task_id.clone());
        bar.set_message(task.status.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Screen {
            bar,
            sized: std::cell::Cell::new(false),
            resolved: std::cell::RefCell::new(Vec::new()),
        }
    }

    fn say(&self, line: String) {
        // `suspend` prints whether or not the bar is drawn (`println` on a
        // hidden bar prints nothing).
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn event(&self, event: &TaskEvent) {
        let attempt = event
            .attempt
            .map(|attempt| format!(" (attempt {attempt})"))
            .unwrap_or_default();
        match event.type_ {
            EventType::Created => {}
            EventType::Started => {
                let worker = event.worker.as_deref().unwrap_or("a worker");
                self.say(format!("started on {worker}{attempt}"));
                self.bar.set_message("running");
            }
            EventType::Resolved => {
                let name = event.file_name.clone().unwrap_or_default();
                self.say(resolved_line(event, &mut self.resolved.borrow_mut()));
                if !name.is_empty() {
                    self.bar.set_prefix(name);
                }
            }
            EventType::Retrying => {
                let error = event.error.as_deref().unwrap_or_default();
                let due = event.due_at.as_deref().unwrap_or("soon");
                self.say(format!("retrying{attempt}: {error}; next attempt at {due}"));
                self.bar.set_message("waiting to retry");
            }
            // The end is printed by `finish`, with the task's final fields.
            EventType::Completed | EventType::Failed | EventType::Canceled => {}
        }
    }

    fn progress(&self, task: &Task) {
        let progress = &task.progress;
        if let Some(total) = progress.total_bytes.map(format::count).filter(|total| *total > 0) {
            if !self.sized.get() {
                self.bar.set_style(bar_style());
                self.sized.set(true);
            }
            self.bar.set_length(total);
        }
        self.bar.set_position(format::count(progress.downloaded_bytes));
        if task.status != TaskStatus::Running {
            self.bar.set_message(task.status.to_string());
            return;
        }
        let speed = format::count(progress.bytes_per_second);
        let mut message = format!("{}/s", HumanBytes(speed));
        if let Some(total) = progress.total_bytes.map(format::count).filter(|_| speed > 0) {
            let left = total.saturating_sub(format::count(progress.downloaded_bytes));
            let eta = Duration::from_secs(left.div_ceil(speed));
            message.push_str(&format!(", ETA {}", HumanDuration(eta)));
        }
        self.bar.set_message(message);
    }

    /// Prints how the task ended and returns the exit code that says it.
    fn finish(&self, task: &Task) -> anyhow::Result<ExitCode> {
        let place = format!("{}:{}", task.storage_name, format::saved_path(task));
        match task.status {
            TaskStatus::Completed => {
                let size = format::count(
                    task.progress
                        .total_bytes
                        .unwrap_or(task.progress.downloaded_bytes),
                );
                if self.sized.get() {
                    self.bar.set_position(size);
                }
                self.bar.set_message("done");
                self.bar.finish();
                out::line(format_args!("completed: saved {place} ({})", format::bytes(size)))?;
                Ok(ExitCode::SUCCESS)
            }
            TaskStatus::Failed => {
                self.bar.abandon_with_message("failed");
                out::line(format_args!("failed: {}", task.error))?;
                Ok(ExitCode::FAILURE)
            }
            TaskStatus::Canceled => {
                self.bar.abandon_with_message("canceled");
                out::line("canceled")?;
                Ok(ExitCode::FAILURE)
            }
            // Only reached if the event stream said the task ended and the
            // projection disagrees, which the store's atomic calls rule out.
            TaskStatus::Queued | TaskStatus::Running => {
                self.bar.abandon();
                out::line(format_args!(
                    "{}: the event stream ended before the task did",
                    task.status
                ))?;
                Ok(ExitCode::from(exit::NOT_FOLLOWED))
            }
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {bytes} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The task's events from its live stream, reconnecting after a drop.
struct EventFollower<'a> {
    api: &'a Api,
    task_id: String,
    response: Option<reqwest::Response>,
    parser: SseParser,
    last_event_id: Option<String>,
    pending: VecDeque<TaskEvent>,
    /// Failures in a row since a stream last opened: streams that closed
    /// and attempts to open one that failed, alike.
    failures: u32,
    ended: bool,
}

impl<'a> EventFollower<'a> {
    fn new(api: &'a Api, task_id: &str) -> EventFollower<'a> {
        EventFollower {
            api,
            task_id: task_id.to_owned(),
            response: None,
            parser: SseParser::default(),
            last_event_id: None,
            pending: VecDeque::new(),
            failures: 0,
            ended: false,
        }
    }

    /// The events as a stream, which keeps an unfinished read across the
    /// `select!` in [`run`] (a bare `next()` future would be dropped there).
    fn into_stream(self) -> impl futures::Stream<Item = TaskEvent> + 'a {
        futures::stream::unfold(self, |mut follower| async move {
            let event = follower.next().await?;
            Some((event, follower))
        })
    }

    /// The next event; `None` after the last one. A stream that closes, or
    /// cannot be opened, is reopened after [`reconnect_pause`] for as long
    /// as it takes: [`run`]'s poll decides when to give up.
    async fn next(&mut self) -> Option<TaskEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.ended = is_ended_event(event.type_);
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let Some(response) = self.response.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(reconnect_pause(self.failures)).await;
                }
                match self
                    .api
                    .open_event_stream(&self.task_id, self.last_event_id.as_deref())
                    .await
                {
                    Ok(Some(response)) => {
                        self.failures = 0;
                        self.response = Some(response);
                        self.parser = SseParser::default();
                    }
                    // 204: the task has ended and nothing comes after the
                    // last event read (its last one was one this client
                    // could not read). The poll reads how it ended.
                    Ok(None) => self.ended = true,
                    Err(_) => self.failures += 1,
                }
                continue;
            };
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    self.failures = 0;
                    for sse in self.parser.feed(&chunk) {
                        if sse.id.is_some() {
                            self.last_event_id = sse.id.clone();
                        }
                        // An event this client cannot read (a newer server's
                        // kind) is skipped: the poll still sees how the task ends.
                        if let Ok(event) = serde_json::from_str::<TaskEvent>(&sse.data) {
                            self.pending.push_back(event);
                        }
                    }
                }
                // The server closed the stream before the task's last event
                // (it is shutting down, lost Redis, or the stream reached the
                // server's `[api] live_stream_max_seconds`): reconnect.
                Ok(None) | Err(_) => {
                    self.response = None;
                    self.failures += 1;
                }
            }
        }
    }
}

/// The line for a `resolved` event. A second one of the same attempt at
/// the same path says the worker found another file at the link (replaced
/// on the server) and is downloading it from the start; `seen` holds the
/// (attempt, path) pairs of the events before.
fn resolved_line(event: &TaskEvent, seen: &mut Vec<(Option<String>, String)>) -> String {
    let name = event.file_name.as_deref().unwrap_or_default();
    let path = event.path.as_deref().unwrap_or_default();
    let key = (event.attempt.map(|attempt| attempt.to_string()), path.to_owned());
    if seen.contains(&key) {
        return format!("{name} changed on the server: downloading it again from the start -> {path}");
    }
    seen.push(key);
    let size = event
        .size
        .map(|size| format!(", {}", HumanBytes(format::count(size))))
        .unwrap_or_default();
    format!("resolved {name}{size} -> {path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-route HTTP server that answers its connections in turn with
    /// `answers` and hands each request's head to the test, with the
    /// (tokio) instant it arrived.
    async fn serve(
        answers: Vec<&'static str>,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(String, tokio::time::Instant)>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (requests, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answer in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap() == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let _ = requests.send((
                    String::from_utf8_lossy(&head).to_lowercase(),
                    tokio::time::Instant::now(),
                ));
                socket.write_all(answer.as_bytes()).await.unwrap();
                socket.shutdown().await.unwrap();
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn a_reconnect_answered_204_ends_the_event_stream_without_reconnecting_again() {
        // The first stream's last event is one this client cannot read (a
        // newer server's kind), so the follower reconnects after it; the API
        // answers that with 204: the task has ended with nothing after it.
        let (url, mut requests) = serve(vec![
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
             id: 1700000000000-3\ndata: {\"type\":\"archived\"}\n\n",
            "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
        ])
        .await;
        let api = Api::new(&url, "token").unwrap();
        let mut follower = EventFollower::new(&api, "d0bmcqqmclrc73a5e0fg");

        // Reconnecting takes `RECONNECT_AFTER`; a 204 retried as a drop
        // would be retried for ever.
        let next = tokio::time::timeout(Duration::from_secs(5), follower.next())
            .await
            .expect("the follower stopped after the 204");

        assert!(next.is_none(), "no events: {next:?}");
        let (first, _) = requests.recv().await.unwrap();
        let (second, _) = requests.recv().await.unwrap();
        assert!(!first.contains("last-event-id"), "{first}");
        assert!(second.contains("last-event-id: 1700000000000-3\r\n"), "{second}");
        assert!(follower.ended, "the 204 says the task has ended");
        assert_eq!(
            follower.failures, 1,
            "one reconnect: after the first stream ended"
        );
    }

    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const EMPTY_STREAM: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    const COMPLETED_STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
         id: 1700000000000-9\ndata: {\"id\":\"1700000000000-9\",\"type\":\"completed\",\"at\":\"2024-01-19T04:00:00Z\"}\n\n";

    // Time is paused: each pause passes at once, and the gaps between
    // requests are exactly the pauses the follower took.
    #[tokio::test(start_paused = true)]
    async fn the_event_stream_is_reopened_with_backoff_however_long_it_fails_and_the_backoff_restarts_when_one_opens(
    ) {
        // Arrange: an outage longer than any count of tries (six refused
        // opens), a stream that opens and closes at once (the API
        // restarting), eight more refused opens, then the task's end.
        let mut answers = vec![UNAVAILABLE; 6];
        answers.push(EMPTY_STREAM);
        answers.extend([UNAVAILABLE; 8]);
        answers.push(COMPLETED_STREAM);
        let (url, mut requests) = serve(answers).await;
        let api = Api::new(&url, "token").unwrap();
        let mut follower = EventFollower::new(&api, "d0bmcqqmclrc73a5e0fg");

        // Act (a timeout in paused time fails at once instead of hanging)
        let event = tokio::time::timeout(Duration::from_secs(600), follower.next())
            .await
            .expect("the follower to read the task's end");

        // Assert: the follower got through to the end, and paused 1, 2, 4,
        // then 5 s at most, from 1 s again after the stream that opened.
        let event = event.expect("the follower kept reopening the stream");
        assert_eq!(event.type_, EventType::Completed);
        assert_eq!(follower.failures, 0, "a stream opened");
        let mut arrivals = Vec::new();
        while let Ok((_, at)) = requests.try_recv() {
            arrivals.push(at);
        }
        assert_eq!(arrivals.len(), 16, "one request per answer");
        let pauses: Vec<u64> = arrivals
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs())
            .collect();
        assert_eq!(
            pauses,
            [1, 2, 4, 5, 5, 5, 1, 2, 4, 5, 5, 5, 5, 5, 5],
            "seconds between requests"
        );
    }

    fn resolved(attempt: u32, name: &str, path: &str) -> TaskEvent {
        serde_json::from_value(serde_json::json!({
            "id": "1700000000000-1", "type": "resolved", "at": "2024-01-19T04:00:00Z",
            "attempt": attempt, "file_name": name, "size": 2048, "path": path,
        }))
        .unwrap()
    }

    #[test]
    fn a_file_resolved_again_at_the_same_path_in_one_attempt_is_told_as_replaced_on_the_server() {
        let mut seen = Vec::new();
        let lines: Vec<String> = [
            resolved(1, "a.bin", "/a.bin"),
            // An album's next file: another path.
            resolved(1, "b.bin", "/b.bin"),
            // The first file again: the worker found another one at the link.
            resolved(1, "a.bin", "/a.bin"),
            // A later attempt that resolves again (Telegram does, every attempt).
            resolved(2, "a.bin", "/a.bin"),
        ]
        .iter()
        .map(|event| resolved_line(event, &mut seen))
        .collect();
        assert_eq!(
            lines,
            [
                "resolved a.bin, 2.00 KiB -> /a.bin",
                "resolved b.bin, 2.00 KiB -> /b.bin",
                "a.bin changed on the server: downloading it again from the start -> /a.bin",
                "resolved a.bin, 2.00 KiB -> /a.bin",
            ]
        );
    }

    #[test]
    fn reconnect_pauses_double_from_one_second_up_to_five_and_never_stop() {
        let pauses: Vec<u64> = (1..=6)
            .map(|failures| reconnect_pause(failures).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 5, 5, 5]);
        assert_eq!(reconnect_pause(u32::MAX), MAX_RECONNECT_PAUSE);
    }
}
