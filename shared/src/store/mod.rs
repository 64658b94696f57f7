//! The task store: savestream's only door into Redis.
//!
//! [`Store`] calls the function library (`library.lua`) for every state
//! transition and reads the projection for queries. It knows nothing of HTTP
//! or Telegram. The API uses the task-side calls (`create`, `get`, `list`,
//! `cancel`, `events`); workers use the queue-side calls in [`queue`].

mod batch;
mod error;
mod groups;
mod library;
pub use library::{LIBRARIES_IN_USE, LIBRARY_HORIZON};
pub mod queue;
mod registry;
pub use registry::{host_name, process_name, ApiInfo, WorkerInfo};
mod rebuild;
mod retention;
pub mod webhooks;
pub use rebuild::{FoldedLog, FoldedTask, RebuildReport};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

pub use error::{shown_redis_url, RedisConnectError, StoreError};
pub use queue::{Carried, Job, Lease, RetryOutcome};

use crate::config::{QueueConfig, RedisConfig};
use crate::event::TaskEvent;
use crate::keys::{Keys, WORKERS_GROUP};
use crate::request::{request_field, TaskRequest};
use crate::task::{Millis, SourceKind, Task, TaskId, TaskStatus};

/// Runs `attempt` until it succeeds, answers an error no wait can cure,
/// or `startup_wait` has passed since the first try: the pause between
/// tries doubles from 100 ms to 2 s, and the last one is cut to end at the
/// deadline, where one more try is made, so a Redis that answers within
/// the wait is always found. `shown_url` names Redis in the logs.
async fn wait_for_redis<F, Attempt>(
    startup_wait: Duration,
    shown_url: &str,
    mut attempt: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Attempt,
    Attempt: std::future::Future<Output = Result<(), StoreError>>,
{
    let deadline = tokio::time::Instant::now() + startup_wait;
    let mut pause = Duration::from_millis(100);
    let mut waiting = false;
    loop {
        let error = match attempt().await {
            Ok(()) => break,
            Err(error) => error,
        };
        let now = tokio::time::Instant::now();
        if !error.is_transient() || now >= deadline {
            return Err(error);
        }
        if !waiting {
            tracing::warn!(
                redis = %shown_url,
                %error,
                wait_seconds = (deadline - now).as_secs_f64().ceil() as u64,
                "redis is not answering: waiting for it ([redis] startup_wait_seconds)"
            );
            waiting = true;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    if waiting {
        tracing::info!(redis = %shown_url, "redis answers: starting");
    }
    Ok(())
}

/// How long an `Idempotency-Key` keeps returning the task it created.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether `key` can be an idempotency key that a repeat matches: 1 to
/// `max_len` printable ASCII characters, spaces allowed inside but not only
/// spaces (HTTP parsers trim those to nothing). The API (up to 255) and
/// `savestream add --idempotency-key` (shorter, for batch suffixes) both
/// check with it.
pub fn is_idempotency_key(key: &str, max_len: usize) -> bool {
    !key.trim_matches(' ').is_empty()
        && key.len() <= max_len
        && key.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ')
}

/// A task to create, validated by the caller.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub task_id: TaskId,
    pub source: SourceKind,
    pub link: String,
    pub user_id: i64,
    pub storage: String,
    pub dir: String,
    pub title: String,
}

/// The answer to [`Store::create`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub task_id: TaskId,
    /// `false` when an earlier request with the same idempotency key created it.
    pub is_new: bool,
}

impl Created {
    /// What the library answered to the create of `new_task`, alone or in a
    /// batch. A taken task id answers created: ids are minted for each
    /// request (`TaskId::generate`, unique across processes), so the only
    /// create that finds its id taken is the same create run again (fred
    /// sends a command once more when the connection it went out on dropped
    /// before the answer came, and Redis may have run it). The task is
    /// there, made by this request.
    pub(crate) fn from_answer(
        answer: Result<Value, StoreError>,
        new_task: &NewTask,
    ) -> Result<Created, StoreError> {
        match answer {
            Ok(reply) => Created::from_reply(reply),
            Err(StoreError::AlreadyExists(_)) => Ok(Created {
                task_id: new_task.task_id.clone(),
                is_new: true,
            }),
            Err(error) => Err(error),
        }
    }

    /// Reads the library's answer to a create: `{task_id, 1}` when created,
    /// `{existing_task_id, 0}` for a repeated idempotency key.
    fn from_reply(reply: Value) -> Result<Created, StoreError> {
        let mut parts = reply.into_array().into_iter();
        let task_id = parts
            .next()
            .and_then(|value| value.as_string())
            .unwrap_or_default();
        let is_new = parts.next().and_then(|value| value.as_i64()) == Some(1);
        let task_id = TaskId::parse(&task_id)
            .map_err(|error| StoreError::Corrupt(format!("create answered: {error}")))?;
        Ok(Created { task_id, is_new })
    }
}

/// Download progress, written by the running worker a few times a second.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub downloaded_bytes: u64,
    pub total_bytes: Option<u64>,
    pub bytes_per_second: u64,
}

/// A task with its progress, as `GET /api/v1/tasks/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub task: Task,
    pub progress: Progress,
    /// The delivery of the task's webhook, once a dispatcher recorded one.
    pub webhook: Option<webhooks::TaskWebhook>,
}

/// One line of `GET /api/v1/tasks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSummary {
    pub id: TaskId,
    pub title: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskList {
    pub queued: Vec<TaskSummary>,
    pub running: Vec<TaskSummary>,
    /// How many tasks are queued in all; `queued` holds the oldest of them.
    pub queued_total: u64,
    /// How many tasks are running in all; `running` holds the oldest of them.
    pub running_total: u64,
}

/// How much work the queue holds at one moment, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub queued: u64,
    pub running: u64,
    /// Queued tasks waiting out a retry backoff (also counted in `queued`).
    pub delayed: u64,
    /// Work items read by a worker and not yet acknowledged.
    pub jobs_pending: u64,
}

/// An event with its id on the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    pub id: String,
    pub event: TaskEvent,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    retention: Duration,
    lease: Duration,
}

impl Store {
    /// Connects to `[redis] url` and makes sure the function library in
    /// Redis is this build's. A Redis that does not answer yet (down,
    /// restarting, loading its data) is waited for, up to `[redis]
    /// startup_wait_seconds`: a process started during an outage (a fleet's
    /// replacement worker, everything after a reboot) comes up with Redis
    /// instead of exiting and leaving its restart to a supervisor's growing
    /// back-off. An error no wait can cure (a refused password, a bad
    /// database) returns at once.
    pub async fn connect(redis: &RedisConfig, queue: &QueueConfig) -> Result<Store, StoreError> {
        let config = Config::from_url(&redis.url)?;
        let client = Builder::from_config(config)
            .with_performance_config(|performance| {
                // A bounded wait, so that a request made while Redis is down
                // is answered (with 503) instead of hanging.
                performance.default_command_timeout = Duration::from_secs(5);
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(3);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()?;
        let store = Store {
            client,
            keys: Keys::new(&redis.prefix),
            retention: queue.retention(),
            lease: queue.lease(),
        };
        let shown_url = shown_redis_url(&redis.url);
        let started = AtomicBool::new(false);
        wait_for_redis(redis.startup_wait(), &shown_url, || store.connect_once(&started)).await?;
        Ok(store)
    }

    /// One try at what [`connect`](Store::connect) needs: the connection
    /// task (`started` once it is up) and the library.
    async fn connect_once(&self, started: &AtomicBool) -> Result<(), StoreError> {
        // Only until the connection task is up: a failed `init` stops its
        // task, so it can run again, but once one succeeded that task
        // reconnects on its own (the reconnect policy) whenever Redis goes
        // away. Another `init` beside it, while it reconnects, would start a
        // second task over the same command channel, and when that one
        // failed it would close the channel under the first: every command
        // after it failed with "Failed to send command to router", and the
        // process gave up on a Redis that was coming back.
        if !started.load(Ordering::Relaxed) {
            self.client.init().await?;
            started.store(true, Ordering::Relaxed);
        }
        self.load_library().await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// A store on a connection of its own, for blocking reads that would
    /// otherwise stall every other command multiplexed on this one.
    pub async fn with_own_connection(&self) -> Result<Store, StoreError> {
        let client = self.client.clone_new();
        client.init().await?;
        Ok(Store {
            client,
            ..self.clone()
        })
    }

    /// Closes this store's connection (one made by
    /// [`with_own_connection`](Store::with_own_connection), typically) now
    /// rather than when the last clone drops.
    pub async fn quit(&self) -> Result<(), StoreError> {
        self.client.quit().await?;
        Ok(())
    }

    /// Calls a library function, reloading the library once if Redis lost it
    /// (a restart without persistence) or holds another build's.
    async fn call(
        &self,
        task_id: &TaskId,
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        // Clones for the rare reload retry share the bytes: a `Key` or `Value`
        // clone is a reference count, a `String` clone a copy.
        let keys: Vec<fred::types::Key> = keys.into_iter().map(Into::into).collect();
        let args: Vec<Value> = args.into_iter().map(Into::into).collect();
        let name = Store::versioned(function);
        let mut reloaded = false;
        loop {
            match self
                .client
                .fcall::<Value, _, _, _>(name.as_str(), keys.clone(), args.clone())
                .await
            {
                Ok(value) => return Ok(value),
                Err(error) if !reloaded && error.details().contains("Function not found") => {
                    self.load_library().await?;
                    reloaded = true;
                }
                Err(error) => return Err(StoreError::from_reply(task_id, error)),
            }
        }
    }

    /// Calls a library function and reads the hashes of `task_ids` with
    /// plain `HGETALL`s pipelined right behind it, reloading the library
    /// once if Redis lost it or holds another build's. Redis answers an
    /// `HGETALL` straight from the hash; returned from inside the function,
    /// every field would be converted to Lua and back, which cost a third
    /// of a start.
    ///
    /// Another client's command may run between the call and the reads; for
    /// the start of an attempt that is harmless: the fields a worker uses
    /// (the link, the storage, an earlier attempt's file and progress) change
    /// only under the lease this call just took, and a cancel in between is
    /// refused at the worker's next fenced transition.
    ///
    /// `anchor` is the task a failure of the call itself is reported for.
    async fn call_then_read(
        &self,
        anchor: &TaskId,
        task_ids: &[&TaskId],
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(Value, Vec<HashMap<String, String>>), StoreError> {
        let keys: Vec<fred::types::Key> = keys.into_iter().map(Into::into).collect();
        let args: Vec<Value> = args.into_iter().map(Into::into).collect();
        let name = Store::versioned(function);
        let mut reloaded = false;
        loop {
            let pipeline = self.client.pipeline();
            let _: () = pipeline.fcall(name.as_str(), keys.clone(), args.clone()).await?;
            for task_id in task_ids {
                let _: () = pipeline.hgetall(self.keys.task(task_id)).await?;
            }
            let mut results = pipeline.try_all::<Value>().await.into_iter();
            let called = results
                .next()
                .ok_or_else(|| StoreError::Corrupt(format!("{function} got no answer")))?;
            match called {
                Err(error) if !reloaded && error.details().contains("Function not found") => {
                    self.load_library().await?;
                    reloaded = true;
                }
                Err(error) => return Err(StoreError::from_reply(anchor, error)),
                Ok(reply) => {
                    let hashes = results
                        .map(|hash| Ok(hash?.convert::<HashMap<String, String>>()?))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    return Ok((reply, hashes));
                }
            }
        }
    }

    /// The KEYS every per-task function takes, in the library's order.
    fn task_keys(&self, task_id: &TaskId) -> Vec<String> {
        vec![
            self.keys.task(task_id),
            self.keys.events(),
            self.keys.jobs(),
            self.keys.queued(),
            self.keys.running(),
            self.keys.delayed(),
        ]
    }

    fn retention_ms(&self) -> String {
        self.retention.as_millis().to_string()
    }

    /// Answers whether Redis responds, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.client.ping(None).await?;
        Ok(())
    }

    /// Creates a task: a `created` event, a queued projection and a work
    /// item, atomically. With an idempotency key, a repeat within
    /// [`IDEMPOTENCY_WINDOW`] returns the first task instead, as long as
    /// that task is kept (retention may end it sooner; the repeat then
    /// creates the task again).
    pub async fn create(
        &self,
        new_task: &NewTask,
        idempotency_key: Option<&str>,
    ) -> Result<Created, StoreError> {
        let mut keys = self.task_keys(&new_task.task_id);
        if let Some(key) = idempotency_key {
            keys.push(self.keys.idempotency(&idempotency_digest(key)));
        }
        let args = new_task.create_args(idempotency_key.is_some()).to_vec();
        let answer = self
            .call(&new_task.task_id, "savestream_create", keys, args)
            .await;
        Created::from_answer(answer, new_task)
    }

    /// The task and its progress, or `None` when there is no such task.
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        let fields: HashMap<String, String> = self.client.hgetall(self.keys.task(task_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(TaskRecord {
            task: task_from_hash(task_id, &fields)?,
            progress: progress_from_hash(&fields),
            webhook: webhooks::webhook_from_hash(&fields),
        }))
    }

    /// Queued and running tasks, oldest first, at most `limit` of each,
    /// with how many there are in all (so a reader knows when the lists
    /// were cut short).
    pub async fn list(&self, limit: usize) -> Result<TaskList, StoreError> {
        let stop = limit as i64 - 1;
        let pipeline = self.client.pipeline();
        let _: () = pipeline.zcard(self.keys.queued()).await?;
        let _: () = pipeline.zcard(self.keys.running()).await?;
        let _: () = pipeline
            .zrange(self.keys.queued(), 0, stop, None, false, None, false)
            .await?;
        let _: () = pipeline
            .zrange(self.keys.running(), 0, stop, None, false, None, false)
            .await?;
        let (queued_total, running_total, queued_ids, running_ids): (u64, u64, Vec<String>, Vec<String>) =
            pipeline.all().await?;
        // `ZRANGE 0 -1` would be everything: a limit of 0 lists none.
        let (queued_ids, running_ids) = if limit == 0 {
            (Vec::new(), Vec::new())
        } else {
            (queued_ids, running_ids)
        };
        Ok(TaskList {
            queued: self.summaries(queued_ids).await?,
            running: self.summaries(running_ids).await?,
            queued_total,
            running_total,
        })
    }

    async fn summaries(&self, ids: Vec<String>) -> Result<Vec<TaskSummary>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let task_ids = ids
            .iter()
            .map(|id| TaskId::parse(id).map_err(|error| StoreError::Corrupt(error.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let titles = self.field_of_each(&task_ids, "title").await?;
        Ok(task_ids
            .into_iter()
            .zip(titles)
            // A task may end between the two reads; it is no longer listed then.
            .filter_map(|(id, title)| title.map(|title| TaskSummary { id, title }))
            .collect())
    }

    /// One field of each task's hash, in order (`None` where a task has no
    /// hash, or the hash no such field), read with pipelined `HGET`s.
    pub(crate) async fn field_of_each(
        &self,
        task_ids: &[TaskId],
        field: &str,
    ) -> Result<Vec<Option<String>>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.client.pipeline();
        for task_id in task_ids {
            let _: () = pipeline.hget(self.keys.task(task_id), field).await?;
        }
        // fred answers a pipeline of one command with that command's reply,
        // not an array of it.
        Ok(if task_ids.len() == 1 {
            vec![pipeline.all().await?]
        } else {
            pipeline.all().await?
        })
    }

    /// The queue's depth: sizes of the sorted sets and the pending entries of `jobs`.
    pub async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline.zcard(self.keys.queued()).await?;
        let _: () = pipeline.zcard(self.keys.running()).await?;
        let _: () = pipeline.zcard(self.keys.delayed()).await?;
        let (queued, running, delayed): (u64, u64, u64) = pipeline.all().await?;
        let pending: Result<Value, fred::error::Error> =
            self.client.xpending(self.keys.jobs(), WORKERS_GROUP, ()).await;
        let jobs_pending = match pending {
            // The summary form: [count, smallest id, largest id, consumers].
            Ok(Value::Array(summary)) => summary.first().and_then(|count| count.as_u64()).unwrap_or(0),
            Ok(_) => 0,
            // Without the stream or the group nothing is pending.
            Err(error) if error.details().starts_with("NOGROUP") => 0,
            Err(error) => return Err(error.into()),
        };
        Ok(QueueDepth {
            queued,
            running,
            delayed,
            jobs_pending,
        })
    }

    /// Cancels a queued or running task. The pub/sub message it publishes
    /// tells the running worker at once; the `canceled` event is the truth.
    /// Returns the status the task had.
    pub async fn cancel(&self, task_id: &TaskId) -> Result<TaskStatus, StoreError> {
        let args = vec![
            task_id.to_string(),
            self.retention_ms(),
            self.keys.cancel_channel(),
        ];
        let reply = self
            .call(task_id, "savestream_cancel", self.task_keys(task_id), args)
            .await?;
        reply
            .as_string()
            .and_then(|status| TaskStatus::parse(&status))
            .ok_or_else(|| StoreError::Corrupt(format!("cancel answered {reply:?}")))
    }

    /// The task's events from the log, oldest first.
    pub async fn events(&self, task_id: &TaskId) -> Result<Vec<LoggedEvent>, StoreError> {
        // The task's event ids, space-separated in its hash (see library.lua).
        let log: Option<String> = self.client.hget(self.keys.task(task_id), "log").await?;
        let ids: Vec<String> = log
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut logged = Vec::with_capacity(ids.len());
        // One XRANGE per id, pipelined: a task has a handful of events.
        let pipeline = self.client.pipeline();
        for id in &ids {
            let _: () = pipeline
                .xrange(self.keys.events(), id.as_str(), id.as_str(), None)
                .await?;
        }
        let replies: Vec<Value> = if ids.is_empty() {
            Vec::new()
        } else {
            pipeline.all::<Vec<Value>>().await?
        };
        for reply in replies.into_iter() {
            for entry in stream_entries(reply)? {
                logged.push(LoggedEvent {
                    event: decode_event(&entry.1)?,
                    id: entry.0,
                });
            }
        }
        Ok(logged)
    }

    /// The id of the newest event on the log, or `None` while it is empty.
    pub async fn newest_log_id(&self) -> Result<Option<String>, StoreError> {
        let reply: Value = self
            .client
            .xrevrange(self.keys.events(), "+", "-", Some(1))
            .await?;
        Ok(stream_entries(reply)?.into_iter().next().map(|(id, _)| id))
    }

    /// Waits up to `block` for events after the log id `after` (`$` for
    /// "from now"), at most `count`. Call it on a store
    /// [`with_own_connection`](Store::with_own_connection): it blocks.
    pub async fn read_log_after(
        &self,
        after: &str,
        block: Duration,
        count: u64,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        let args: Vec<String> = vec![
            "COUNT".into(),
            count.to_string(),
            "BLOCK".into(),
            block.as_millis().to_string(),
            "STREAMS".into(),
            self.keys.events(),
            after.into(),
        ];
        let reply: Value = self
            .client
            .custom(fred::cmd!("XREAD", blocking: true), args)
            .await?;
        let mut logged = Vec::new();
        for stream in reply.into_array() {
            let mut parts = stream.into_array().into_iter();
            let _stream_name = parts.next();
            if let Some(entries) = parts.next() {
                for (id, fields) in stream_entries(entries)? {
                    logged.push(LoggedEvent {
                        event: decode_event(&fields)?,
                        id,
                    });
                }
            }
        }
        Ok(logged)
    }

    /// Reads every entry of the log, oldest first, for rebuilds and tests.
    pub async fn read_log(&self) -> Result<Vec<LoggedEvent>, StoreError> {
        let mut logged = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let reply: Value = self
                .client
                .xrange(self.keys.events(), start.as_str(), "+", Some(1000))
                .await?;
            let entries = stream_entries(reply)?;
            let Some(last) = entries.last() else { break };
            start = format!("({}", last.0);
            let full_page = entries.len() == 1000;
            for (id, fields) in entries {
                logged.push(LoggedEvent {
                    event: decode_event(&fields)?,
                    id,
                });
            }
            if !full_page {
                break;
            }
        }
        Ok(logged)
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }
}

/// Idempotency keys are client-chosen text: a digest of one makes a
/// short, safe Redis key whatever the key holds.
fn idempotency_digest(key: &str) -> String {
    hex_digest(key)
}

fn hex_digest(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as Millis)
        .unwrap_or_default()
}

fn decode_event(fields: &HashMap<String, String>) -> Result<TaskEvent, StoreError> {
    TaskEvent::from_fields(fields).map_err(|error| StoreError::Corrupt(error.to_string()))
}

/// A stream entry: its id and its fields.
pub(crate) type StreamEntry = (String, HashMap<String, String>);

/// Reads an XRANGE-style reply: `[[id, [field, value, ...]], ...]`.
pub(crate) fn stream_entries(reply: Value) -> Result<Vec<StreamEntry>, StoreError> {
    let mut entries = Vec::new();
    for entry in reply.into_array() {
        let mut parts = entry.into_array().into_iter();
        let id = parts
            .next()
            .and_then(|id| id.as_string())
            .ok_or_else(|| StoreError::Corrupt("stream entry without id".into()))?;
        let flat = parts.next().map(Value::into_array).unwrap_or_default();
        entries.push((id, pairs(flat)));
    }
    Ok(entries)
}

/// `[k1, v1, k2, v2, ...]` into a map.
pub(crate) fn pairs(flat: Vec<Value>) -> HashMap<String, String> {
    let mut map = HashMap::with_capacity(flat.len() / 2);
    let mut values = flat.into_iter();
    while let (Some(name), Some(value)) = (values.next(), values.next()) {
        if let (Some(name), Some(value)) = (name.as_string(), value.as_string()) {
            map.insert(name, value);
        }
    }
    map
}

impl NewTask {
    fn request_field(&self) -> String {
        request_field(self.source, &self.link, self.user_id, &self.storage, &self.dir)
    }

    /// The library's `create` ARGV for this task: its id, `request`, title
    /// and the idempotency key's time to live, which is given only with a
    /// key (a batch reads it as "a key follows this task's hash in KEYS").
    pub(crate) fn create_args(&self, with_idempotency_key: bool) -> [String; 4] {
        let idempotency_ttl = if with_idempotency_key {
            IDEMPOTENCY_WINDOW.as_millis().to_string()
        } else {
            String::new()
        };
        [
            self.task_id.to_string(),
            self.request_field(),
            self.title.clone(),
            idempotency_ttl,
        ]
    }
}

/// Reads a projection hash into a [`Task`].
pub(crate) fn task_from_hash(task_id: &TaskId, fields: &HashMap<String, String>) -> Result<Task, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("task {task_id}: {what}"));
    let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let optional_text = |name: &str| fields.get(name).filter(|value| !value.is_empty()).cloned();
    let number = |name: &str| -> Result<i64, StoreError> {
        text(name)
            .parse()
            .map_err(|_| corrupt(&format!("field `{name}` is not a number")))
    };
    let optional_number = |name: &str| -> Result<Option<i64>, StoreError> {
        optional_text(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| corrupt(&format!("field `{name}` is not a number")))
            })
            .transpose()
    };
    let created_at = number("created")?;
    let started_at = optional_number("started")?;
    let ended_at = optional_number("ended")?;
    // The library writes `updated` only in a transition that sets no
    // timestamp of its own (resolved, retrying): otherwise the latest of
    // `created`, `started` and `ended` is when the task last changed.
    let updated_at = [optional_number("updated")?, started_at, ended_at]
        .into_iter()
        .flatten()
        .fold(created_at, i64::max);
    let TaskRequest {
        source,
        link,
        user_id,
        storage,
        dir,
    } = TaskRequest::parse(fields.get("request").map_or("", String::as_str))
        .map_err(|error| corrupt(&error))?;
    Ok(Task {
        id: task_id.clone(),
        status: TaskStatus::parse(&text("status")).ok_or_else(|| corrupt("unknown status"))?,
        source,
        link,
        user_id,
        storage,
        dir,
        title: text("title"),
        file_name: optional_text("file"),
        size: optional_number("size")?.map(|size| size as u64),
        path: optional_text("path"),
        validator: optional_text("validator"),
        created_at,
        updated_at,
        started_at,
        ended_at,
        // Absent until they are not 0, which keeps a queued task small.
        attempt: optional_number("attempt")?.unwrap_or(0) as u32,
        retries: optional_number("retries")?.unwrap_or(0) as u32,
        error: text("error"),
        worker: optional_text("worker"),
    })
}

fn progress_from_hash(fields: &HashMap<String, String>) -> Progress {
    let number = |name: &str| fields.get(name).and_then(|value| value.parse::<u64>().ok());
    Progress {
        downloaded_bytes: number("done").unwrap_or(0),
        total_bytes: number("total"),
        bytes_per_second: number("bps").unwrap_or(0),
    }
}

/// Creates the `workers` group on `jobs` (and the stream) if missing.
pub(crate) async fn ensure_group(client: &Client, keys: &Keys) -> Result<(), StoreError> {
    let created: Result<String, fred::error::Error> = client
        .custom(
            fred::cmd!("XGROUP"),
            vec![
                "CREATE".to_owned(),
                keys.jobs(),
                WORKERS_GROUP.to_owned(),
                "0".to_owned(),
                "MKSTREAM".to_owned(),
            ],
        )
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(error) if error.details().contains("BUSYGROUP") => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn task_id() -> TaskId {
        TaskId::parse("d4g5h6j7k8l9m0n1p2q3").unwrap()
    }

    /// The instants, from the start, at which [`wait_for_redis`] tried a
    /// Redis that never answers, waiting `startup_wait`, on tokio's paused
    /// clock (its sleeps end when the clock is advanced to them, at once).
    async fn tries_of_a_redis_that_never_answers(startup_wait: Duration) -> Vec<Duration> {
        let start = tokio::time::Instant::now();
        let tries = std::cell::RefCell::new(Vec::new());
        let answer = wait_for_redis(startup_wait, "redis://test", || {
            tries.borrow_mut().push(start.elapsed());
            async {
                Err(StoreError::Unavailable(fred::error::Error::new(
                    fred::error::ErrorKind::IO,
                    "connection refused",
                )))
            }
        })
        .await;
        assert!(answer.is_err(), "a redis that never answers was found");
        tries.into_inner()
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_redis_tries_once_more_at_its_deadline_not_before_it() {
        for seconds in [3, 10] {
            let startup_wait = Duration::from_secs(seconds);

            let tries = tries_of_a_redis_that_never_answers(startup_wait).await;

            assert_eq!(tries.last(), Some(&startup_wait), "{seconds} s: {tries:?}");
            // 0, 0.1, 0.3, 0.7, 1.5, 3.1 (3 s: cut to 3), then every 2 s.
            let pauses: Vec<Duration> = tries.windows(2).map(|pair| pair[1] - pair[0]).collect();
            assert!(
                pauses
                    .iter()
                    .all(|pause| *pause <= Duration::from_secs(2) && !pause.is_zero()),
                "{pauses:?}"
            );
        }
        let tries = tries_of_a_redis_that_never_answers(Duration::from_secs(3)).await;
        assert_eq!(tries.len(), 6, "{tries:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_redis_gives_up_at_once_on_an_error_no_wait_can_cure() {
        let mut tries = 0;
        let answer = wait_for_redis(Duration::from_secs(10), "redis://test", || {
            tries += 1;
            async {
                Err(StoreError::Unavailable(fred::error::Error::new(
                    fred::error::ErrorKind::Auth,
                    "WRONGPASS invalid username-password pair",
                )))
            }
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_startup_wait_tries_once() {
        let tries = tries_of_a_redis_that_never_answers(Duration::ZERO).await;
        assert_eq!(tries, vec![Duration::ZERO]);
    }

    #[test]
    fn the_request_field_round_trips_every_request_field() {
        let request = request_field(
            SourceKind::Http,
            "https://example.com/a \"b\".bin",
            42,
            "local1",
            "/x/y",
        );
        let fields = hash(&[
            ("status", "queued"),
            ("created", "1000"),
            ("request", &request),
            ("title", "t"),
        ]);
        let task = task_from_hash(&task_id(), &fields).unwrap();
        assert_eq!(task.source, SourceKind::Http);
        assert_eq!(task.link, "https://example.com/a \"b\".bin");
        assert_eq!(task.user_id, 42);
        assert_eq!(task.storage, "local1");
        assert_eq!(task.dir, "/x/y");
    }

    #[test]
    fn a_task_was_updated_at_the_latest_of_its_timestamps() {
        let request = request_field(SourceKind::Http, "https://example.com/a", 1, "s", "/");
        let read = |extra: &[(&str, &str)]| {
            let mut fields = hash(&[("status", "running"), ("created", "1000"), ("request", &request)]);
            fields.extend(hash(extra));
            task_from_hash(&task_id(), &fields).unwrap().updated_at
        };
        assert_eq!(read(&[]), 1000);
        assert_eq!(read(&[("started", "2000")]), 2000);
        assert_eq!(read(&[("started", "2000"), ("updated", "2500")]), 2500);
        assert_eq!(read(&[("started", "3000"), ("updated", "2500")]), 3000);
        assert_eq!(
            read(&[("started", "2000"), ("updated", "2500"), ("ended", "4000")]),
            4000
        );
    }

    #[test]
    fn a_request_field_that_is_not_the_array_is_reported_as_corrupt() {
        let fields = hash(&[("status", "queued"), ("created", "1000"), ("request", "http")]);
        let error = task_from_hash(&task_id(), &fields).unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(message) if message.contains("field `request`")),
            "{error}"
        );
    }
}
