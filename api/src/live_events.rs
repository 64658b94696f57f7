//! Following one task's events live, for the Server-Sent Events form of
//! `GET /api/v1/tasks/{task_id}/events`.
//!
//! [`follow`] replays the history the handler read, then tails the `events`
//! stream with `XREAD BLOCK` from the later of the last history entry and
//! the log's newest entry read before the history, so no event falls
//! between the two reads, and keeps the entries of this task. (From the
//! last history entry alone, a watcher of a task queued behind a backlog
//! read the whole backlog, every task's events, each time it connected.)
//! The stream ends after the task's last event, when the server shuts down,
//! when Redis goes away, or when it has been open for `[api]
//! live_stream_max_seconds` (the client then reconnects with `Last-Event-ID`
//! and the replay sends what came after it, so an early end loses nothing).
//! The lifetime is what gives the stream slots back: a client that opens
//! streams and never reads them is never stopped by a write timeout (a few
//! events fit in the socket buffers), so without it each of its streams
//! would hold a slot for as long as its task runs, hours behind a backlog.
//! The live part therefore runs as a task of its own (`Follower::run`),
//! which hands events to the response body through a small channel: the
//! server polls a body only while the client's socket takes data, so a
//! lifetime checked in the body would never be checked for a client whose
//! socket buffers are full, and its slot and Redis connection would stay
//! taken until the connection died. The task ends at its deadline whether
//! or not anyone reads; the body then sends what the channel holds and ends.
//! A reconnect that finds the task ended and nothing after its
//! `Last-Event-ID` gets no stream at all ([`Follow::Ended`], a 204), because
//! only that stops a browser's `EventSource` from reconnecting.
//!
//! Each stream reads on a Redis connection of its own, because a blocking
//! read would stall every command multiplexed on the shared one; at most
//! [`crate::state::MAX_LIVE_STREAMS`] are open at once. The store has no
//! public call for a blocking read yet, so this module opens the connection
//! from `[redis] url` itself and decodes entries with `TaskEvent::from_fields`.

use std::collections::VecDeque;
use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config as RedisClientConfig, StreamsInterface};
use fred::types::streams::XReadResponse;
use fred::types::Value;
use futures::stream::{self, BoxStream, StreamExt};
use savestream_shared::event::TaskEvent;
use savestream_shared::store::LoggedEvent;
use savestream_shared::stream_id::StreamId;
use savestream_shared::task::TaskId;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::TaskEventBody;

/// How long one `XREAD` blocks before it is issued again.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per `XREAD`; other tasks' entries count too.
const BATCH: u64 = 500;
/// Events the live task may hand over ahead of the response body.
const HANDED_OVER: usize = 16;

/// What a request for the live stream gets.
pub enum Follow {
    /// The events to send; the stream ends after the task's last event.
    Events(BoxStream<'static, TaskEventBody>),
    /// The task has ended and none of its events comes after
    /// `Last-Event-ID`: there is nothing to send, now or later.
    Ended,
}

/// The task's events: `history` (those after `last_event_id`, when given),
/// then live ones until the task ends; or [`Follow::Ended`] when `history`
/// ends with the task's last event and nothing in it comes after
/// `last_event_id`. `newest` is the log's newest entry id, read before
/// `history`: every event of the task up to it is in `history` already, so
/// the live part starts after whichever of the two is later.
pub async fn follow(
    state: &AppState,
    task_id: TaskId,
    history: Vec<LoggedEvent>,
    newest: Option<String>,
    last_event_id: Option<String>,
) -> Result<Follow, ApiError> {
    let tail_from = history.last().map(|logged| match &newest {
        Some(newest) if stream_id_after(newest, &logged.id) => newest.clone(),
        _ => logged.id.clone(),
    });
    let history: Vec<TaskEventBody> = history.into_iter().map(TaskEventBody::from).collect();
    let ended = history.last().is_some_and(TaskEventBody::is_terminal);
    let replay: Vec<TaskEventBody> = history
        .into_iter()
        .filter(|event| {
            last_event_id
                .as_deref()
                .is_none_or(|seen| stream_id_after(&event.id, seen))
        })
        .collect();
    let Some(tail_from) = tail_from.filter(|_| !ended) else {
        if ended && replay.is_empty() {
            return Ok(Follow::Ended);
        }
        return Ok(Follow::Events(stream::iter(replay).boxed()));
    };
    let permit = state.live_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(
            "too many live event streams are open: try again later, or read the events without \
             `Accept: text/event-stream`"
                .to_owned(),
        )
    })?;
    let tail = LogTail::connect(&state.config.redis.url, state.store.keys().events(), tail_from).await?;
    let follower = Follower {
        task_id,
        tail,
        pending: VecDeque::new(),
        ended: false,
        shutdown: state.shutdown.clone(),
        deadline: Instant::now() + state.config.api.live_stream_max_lifetime(),
        _permit: permit,
    };
    let (sender, receiver) = mpsc::channel(HANDED_OVER);
    tokio::spawn(follower.run(sender));
    let live = stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((event, receiver))
    });
    Ok(Follow::Events(stream::iter(replay).chain(live).boxed()))
}

/// The live part of one stream, run by a task of its own; dropping it
/// gives back the stream's slot and closes its Redis connection.
struct Follower {
    task_id: TaskId,
    tail: LogTail,
    pending: VecDeque<TaskEventBody>,
    ended: bool,
    shutdown: CancellationToken,
    /// When the stream ends whether or not the task has: `[api] live_stream_max_seconds` after it opened.
    deadline: Instant,
    /// Held for the stream's life: the stream's place among the open ones.
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    /// Reads the task's events and hands them to the response body until
    /// the task ends, the lifetime is over, the server shuts down, Redis
    /// fails, or the client goes away (the body, and with it `sender`'s
    /// receiver, is dropped).
    async fn run(mut self, sender: mpsc::Sender<TaskEventBody>) {
        loop {
            let event = tokio::select! {
                biased;
                event = self.next() => event,
                () = sender.closed() => return,
            };
            let Some(event) = event else { return };
            // A client that does not read fills its socket, then the
            // channel: the wait for room ends with the lifetime too.
            tokio::select! {
                biased;
                sent = sender.send(event) => if sent.is_err() { return },
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(self.deadline) => {
                    tracing::debug!(task_id = %self.task_id, "live event stream ends: its lifetime is over and its client is not reading");
                    return;
                }
            }
        }
    }

    async fn next(&mut self) -> Option<TaskEventBody> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.ended = event.is_terminal();
                return Some(event);
            }
            if self.ended {
                return None;
            }
            // Checked only here, after `pending` is sent, and after a read
            // that has its answer (`biased`: the branches are tried in
            // order, not at random): the stream ends between events, never
            // with one read from Redis and not sent (though a reconnect
            // would replay it anyway).
            let read = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                read = self.tail.read(&self.task_id) => read,
                () = tokio::time::sleep_until(self.deadline) => {
                    // Ends as on shutdown: a clean end of the body, which SSE
                    // clients (`EventSource`, `savestream watch`) answer by
                    // reconnecting with `Last-Event-ID`.
                    tracing::debug!(task_id = %self.task_id, "live event stream ends: its lifetime is over");
                    return None;
                }
            };
            match read {
                Ok(events) => self.pending.extend(events),
                Err(error) => {
                    crate::metrics::redis_error();
                    tracing::warn!(task_id = %self.task_id, %error, "live event stream ends: redis read failed");
                    return None;
                }
            }
        }
    }
}

/// A blocking reader of the `events` stream on its own connection.
struct LogTail {
    client: Client,
    key: String,
    last_id: String,
}

impl LogTail {
    async fn connect(url: &str, key: String, last_id: String) -> Result<LogTail, ApiError> {
        let unavailable = |error: fred::error::Error| {
            crate::metrics::redis_error();
            tracing::warn!(%error, "cannot open a redis connection for a live event stream");
            ApiError::store_unavailable()
        };
        let config = RedisClientConfig::from_url(url).map_err(unavailable)?;
        let client = Builder::from_config(config)
            .with_performance_config(|performance| {
                // Longer than the block, so only a dead connection times out.
                performance.default_command_timeout = BLOCK + Duration::from_secs(5);
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(3);
            })
            .build()
            .map_err(unavailable)?;
        client.init().await.map_err(unavailable)?;
        Ok(LogTail { client, key, last_id })
    }

    /// The next entries after `last_id` that belong to `task_id`; empty when
    /// none came within [`BLOCK`].
    async fn read(&mut self, task_id: &TaskId) -> Result<Vec<TaskEventBody>, fred::error::Error> {
        let reply: Value = self
            .client
            .xread(
                Some(BATCH),
                Some(BLOCK.as_millis() as u64),
                self.key.as_str(),
                self.last_id.as_str(),
            )
            .await?;
        // A block that ran out answers nil, which does not convert to a map
        // (`xread_map` fails on it): read as an error, it ended every stream
        // after each quiet `BLOCK`, with a warning and a counted Redis error.
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let reply: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
        let mut events = Vec::new();
        for (_key, entries) in reply {
            for (id, fields) in entries {
                self.last_id = id.clone();
                match TaskEvent::from_fields(&fields) {
                    Ok(event) if &event.task_id == task_id => {
                        events.push(TaskEventBody::from(LoggedEvent { id, event }))
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(entry = %id, %error, "skipping an unreadable event entry"),
                }
            }
        }
        Ok(events)
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        // Closing the connection needs a round trip, which Drop cannot await.
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// Whether stream id `id` comes after `seen`. An unreadable `seen` is
/// ignored: everything comes after it.
fn stream_id_after(id: &str, seen: &str) -> bool {
    match (StreamId::parse(id), StreamId::parse(seen.trim())) {
        (Some(id), Some(seen)) => id > seen,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id_after("1700000000000-1", "1700000000000-0"));
        assert!(stream_id_after("1700000000001-0", "1700000000000-9"));
        assert!(stream_id_after("10-0", "9-5"));
        assert!(!stream_id_after("1700000000000-0", "1700000000000-0"));
        assert!(stream_id_after("1-0", "not an id"));
    }
}
