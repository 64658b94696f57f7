//! The worker side of the store: reading work items from `jobs`, holding
//! their [`Lease`]s, and the fenced transitions of a running attempt.
//!
//! A work item is an entry `{task: <id>}` on the `jobs` stream, read by the
//! `workers` consumer group; the one a create queues also carries the
//! task's fields that never change ([`Carried`]), so the start of a first
//! attempt reads no task hash. The entry stays pending while a worker holds it;
//! [`Store::heartbeat`] keeps its idle time low, and [`Store::claim_expired`]
//! hands entries idle past the lease (their worker died) to a live worker.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use super::{
    ensure_group, now_ms, pairs, stream_entries, task_from_hash, Progress, Store, StoreError, StreamEntry,
};
use crate::keys::WORKERS_GROUP;
use crate::task::{Task, TaskId, TaskStatus};

/// A work item read from `jobs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    /// The task it names, or the raw content when the entry cannot be
    /// decoded (such an entry fails alone and never stops the worker).
    pub task_id: Result<TaskId, String>,
    /// How many times the item was claimed from a worker that stopped
    /// renewing its lease since it was queued: 0 when read new. A retry
    /// or a release queues a new item, so this counts takeovers in a row,
    /// with no failure recorded in between.
    pub takeovers: u32,
    /// The task's fields that never change, when the item carries them:
    /// the item a create queued does, a retry's or a promotion's does not.
    pub carried: Option<Carried>,
}

/// What a task's first work item carries beside the task id: the fields of
/// the task that never change, written by the create. With them the start
/// of the task's first attempt builds its lease without reading the task
/// hash, which a first attempt's start finds holding exactly these and what
/// the start itself wrote: one command fewer per task, where every task
/// passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The projection's `request` field (source, link, user, storage, dir).
    request: String,
    title: String,
    /// When the task was created, in milliseconds, as the hash keeps it.
    created: String,
}

impl Carried {
    /// The item's `carried` field: created, request and title, the first
    /// two ended by a newline (the library's `create` writes it). `None`
    /// when it is not that: the start then reads the hash, as for an item
    /// that carries nothing.
    fn parse(text: &str) -> Option<Carried> {
        let mut parts = text.splitn(3, '\n');
        let created = parts.next().filter(|created| created.parse::<i64>().is_ok())?;
        let request = parts.next()?;
        let title = parts.next()?;
        Some(Carried {
            request: request.to_owned(),
            title: title.to_owned(),
            created: created.to_owned(),
        })
    }

    /// The task hash as the start of the first attempt left it, by
    /// `worker` at `started` (the fields [`task_from_hash`] reads).
    fn first_attempt_hash(&self, worker: &str, started: &str) -> HashMap<String, String> {
        [
            ("status", TaskStatus::Running.as_str()),
            ("created", self.created.as_str()),
            ("request", self.request.as_str()),
            ("title", self.title.as_str()),
            ("attempt", "1"),
            ("worker", worker),
            ("started", started),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
    }
}

/// The right to run one attempt of a task. Every transition a worker makes
/// presents it; the library refuses it once the attempt is no longer current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub task: Task,
    pub attempt: u32,
    pub job_id: String,
    /// Progress left by an earlier attempt, if any.
    pub progress: Progress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued again; a worker picks it up when the backoff is over.
    Retrying,
    /// The retries were used up: the task failed with the given error.
    Failed,
}

/// Whether a retry uses up one of the task's retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    /// A retryable failure of the attempt.
    Failure { max_retries: u32 },
    /// A hand-back that is not the task's fault: the worker is shutting
    /// down, or the source asked to wait (Telegram's FLOOD_WAIT). It uses
    /// up none of the task's retries.
    Release,
}

impl Store {
    /// Creates the `workers` group if it does not exist yet.
    pub async fn ensure_group(&self) -> Result<(), StoreError> {
        ensure_group(self.client(), self.keys()).await
    }

    /// Reads up to `count` new work items, waiting up to `block` for the
    /// first. Call it on a store [`with_own_connection`](Store::with_own_connection).
    pub async fn read_jobs(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Job>, StoreError> {
        let args: Vec<String> = vec![
            "GROUP".into(),
            WORKERS_GROUP.into(),
            consumer.into(),
            "COUNT".into(),
            count.to_string(),
            "BLOCK".into(),
            block.as_millis().to_string(),
            "STREAMS".into(),
            self.keys().jobs(),
            ">".into(),
        ];
        let read = self
            .client()
            .custom(fred::cmd!("XREADGROUP", blocking: true), args.clone())
            .await;
        let reply: Value = match read {
            Ok(reply) => reply,
            // Redis restarted without persistence and lost the group: make it
            // again (from the stream's start, so nothing appended since is
            // skipped) and read.
            Err(error) if error.details().starts_with("NOGROUP") => {
                self.ensure_group().await?;
                self.client()
                    .custom(fred::cmd!("XREADGROUP", blocking: true), args)
                    .await?
            }
            Err(error) => return Err(error.into()),
        };
        // RESP2 answers [[stream, entries]]; nil when the block timed out.
        let mut jobs = Vec::new();
        for stream in reply.into_array() {
            let mut parts = stream.into_array().into_iter();
            let _stream_name = parts.next();
            if let Some(entries) = parts.next() {
                jobs.extend(stream_entries(entries)?.into_iter().map(job_from_entry));
            }
        }
        Ok(jobs)
    }

    /// Claims up to `count` work items whose holder has not renewed the
    /// lease for longer than the lease duration: their worker is gone.
    pub async fn claim_expired(&self, consumer: &str, count: usize) -> Result<Vec<Job>, StoreError> {
        let min_idle = self.lease_duration();
        let jobs_key = self.keys().jobs();
        let entries = self
            .autoclaim(&jobs_key, WORKERS_GROUP, consumer, min_idle, count)
            .await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // XAUTOCLAIM's answer has no delivery counts; the pending list has
        // them (XREADGROUP's delivery was the first, each claim added one).
        let pipeline = self.client().pipeline();
        for (job_id, _) in &entries {
            let args = vec![jobs_key.as_str(), WORKERS_GROUP, job_id, job_id, "1"];
            let _: () = pipeline.custom(fred::cmd!("XPENDING"), args).await?;
        }
        let pending: Vec<Value> = pipeline.all().await?;
        Ok(entries
            .into_iter()
            .zip(pending)
            .map(|(entry, pending)| {
                let deliveries = pending
                    .into_array()
                    .into_iter()
                    .next()
                    .and_then(|item| item.into_array().into_iter().nth(3))
                    .and_then(|count| count.as_u64())
                    .unwrap_or(1);
                Job {
                    takeovers: u32::try_from(deliveries.saturating_sub(1)).unwrap_or(u32::MAX),
                    ..job_from_entry(entry)
                }
            })
            .collect())
    }

    /// Claims for `consumer` up to `count` entries of `group` on `stream`
    /// pending longer than `min_idle` (their reader is gone), scanning the
    /// pending list from its start.
    pub(crate) async fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let mut cursor = "0-0".to_owned();
        self.autoclaim_from(stream, group, consumer, min_idle, count, &mut cursor)
            .await
    }

    /// [`Store::autoclaim`] from `cursor`, following XAUTOCLAIM's cursor and
    /// leaving it where the next scan goes on (`0-0` once the scan went
    /// round the pending list); shared by the `workers` and `webhooks`
    /// groups.
    pub(crate) async fn autoclaim_from(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
        cursor: &mut String,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let mut claimed = Vec::new();
        let min_idle = min_idle.as_millis().to_string();
        while claimed.len() < count {
            let wanted = (count - claimed.len()).to_string();
            let args = vec![
                stream,
                group,
                consumer,
                min_idle.as_str(),
                cursor.as_str(),
                "COUNT",
                wanted.as_str(),
            ];
            let reply: Value = self.client().custom(fred::cmd!("XAUTOCLAIM"), args).await?;
            let mut parts = reply.into_array().into_iter();
            *cursor = parts
                .next()
                .and_then(|value| value.as_string())
                .unwrap_or_else(|| "0-0".into());
            if let Some(entries) = parts.next() {
                // Entries deleted or trimmed while pending come back as nil;
                // Redis drops them from the pending list itself.
                let entries: Vec<Value> = entries
                    .into_array()
                    .into_iter()
                    .filter(|entry| !entry.is_null())
                    .collect();
                claimed.extend(stream_entries(Value::Array(entries))?);
            }
            if cursor == "0-0" {
                break;
            }
        }
        Ok(claimed)
    }

    /// Renews the leases of the work items this consumer holds, and returns
    /// the ids of those it no longer holds (another worker took them over
    /// after this one missed its lease): their tasks must stop.
    pub async fn heartbeat(&self, consumer: &str, job_ids: &[String]) -> Result<Vec<String>, StoreError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = vec![consumer.into()];
        args.extend(job_ids.iter().cloned());
        let anchor = TaskId::generate();
        let reply = self
            .call(&anchor, "savestream_heartbeat", vec![self.keys().jobs()], args)
            .await?;
        Ok(reply
            .into_array()
            .into_iter()
            .filter_map(|id| id.as_string())
            .collect())
    }

    /// Starts the attempt a work item stands for, reading the task hash for
    /// the lease. `LeaseLost`, `Ended` and `NotFound` mean the item is
    /// obsolete: [`Store::discard_job`] it.
    pub async fn start(&self, job_id: &str, task_id: &TaskId, worker: &str) -> Result<Lease, StoreError> {
        let args = vec![task_id.to_string(), job_id.to_owned(), worker.to_owned()];
        let (reply, mut hashes) = self
            .call_then_read(
                task_id,
                &[task_id],
                "savestream_start",
                self.task_keys(task_id),
                args,
            )
            .await?;
        self.lease_of_start(task_id, job_id, worker, None, reply, hashes.pop())
            .await
    }

    /// [`Store::start`] for a work item as it was read: an item that
    /// carries its task's fields and was not taken over starts without
    /// reading the task hash, unless the start finds it is not the task's
    /// first attempt.
    pub async fn start_job(&self, job: &Job, worker: &str) -> Result<Lease, StoreError> {
        let task_id = job
            .task_id
            .as_ref()
            .map_err(|raw| unnamed_task(&job.job_id, raw))?;
        let Some(carried) = job.carried_for_start() else {
            return self.start(&job.job_id, task_id, worker).await;
        };
        let args = vec![task_id.to_string(), job.job_id.clone(), worker.to_owned()];
        let reply = self
            .call(task_id, "savestream_start", self.task_keys(task_id), args)
            .await?;
        self.lease_of_start(task_id, &job.job_id, worker, Some(carried), reply, None)
            .await
    }

    /// The lease a start answered (`reply`), from the task hash read with
    /// it (`read`), or from the fields the work item carried when the start
    /// was the task's first attempt; otherwise the hash is read now.
    pub(crate) async fn lease_of_start(
        &self,
        task_id: &TaskId,
        job_id: &str,
        worker: &str,
        carried: Option<&Carried>,
        reply: Value,
        read: Option<HashMap<String, String>>,
    ) -> Result<Lease, StoreError> {
        let (attempt, started) = started_attempt(task_id, reply)?;
        let fields = match (read, carried) {
            (Some(fields), _) => fields,
            (None, Some(carried)) if attempt == 1 => carried.first_attempt_hash(worker, &started),
            (None, _) => self.client().hgetall(self.keys().task(task_id)).await?,
        };
        self.lease_or_fail(task_id, job_id, attempt, fields).await
    }

    /// The lease of a started attempt, or, when the task's hash cannot be
    /// decoded (a field written by another build, a hand edit), the task
    /// failed with the reason as its error. The start has run by then: a
    /// task left `running` with its work item discarded would never end,
    /// and one whose item was kept would be taken over again every lease.
    /// Answers [`StoreError::Ended`] once the task is failed.
    async fn lease_or_fail(
        &self,
        task_id: &TaskId,
        job_id: &str,
        attempt: u32,
        fields: HashMap<String, String>,
    ) -> Result<Lease, StoreError> {
        let why = match lease_from(task_id, job_id, attempt, &fields) {
            Err(StoreError::Corrupt(why)) => why,
            answer => return answer,
        };
        tracing::error!(%task_id, %why, "the task's stored fields cannot be read: failing it");
        let error =
            format!("savestream cannot read this task's stored fields ({why}): create the task again");
        self.fail_attempt(task_id, attempt, &error).await?;
        Err(StoreError::Ended {
            task_id: task_id.clone(),
            status: TaskStatus::Failed,
        })
    }

    /// Acknowledges and deletes a work item that must not run: its task
    /// ended, was taken over, expired, or the entry cannot be decoded.
    pub async fn discard_job(&self, job_id: &str) -> Result<(), StoreError> {
        let pipeline = self.client().pipeline();
        let _: () = pipeline.xack(self.keys().jobs(), WORKERS_GROUP, job_id).await?;
        let _: () = pipeline.xdel(self.keys().jobs(), job_id).await?;
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }

    /// Records the resolved file: its name, size, path in the storage, the
    /// title, and the validator that identifies this version of the file
    /// on its server (`None`, or empty, when the source gave none: no field
    /// is written, and one an earlier `resolved` left is removed).
    pub async fn resolve(
        &self,
        lease: &Lease,
        file_name: &str,
        size: Option<u64>,
        path: &str,
        title: &str,
        validator: Option<&str>,
    ) -> Result<(), StoreError> {
        let args = vec![
            lease.task.id.to_string(),
            lease.attempt.to_string(),
            file_name.to_owned(),
            size.map(|size| size.to_string()).unwrap_or_default(),
            path.to_owned(),
            title.to_owned(),
            validator.unwrap_or_default().to_owned(),
        ];
        self.call(
            &lease.task.id,
            "savestream_resolve",
            self.task_keys(&lease.task.id),
            args,
        )
        .await?;
        Ok(())
    }

    /// Writes progress. An error answers that the lease is gone: the task
    /// was canceled (`Ended`) or taken over (`LeaseLost`), so stop.
    pub async fn progress(&self, lease: &Lease, progress: &Progress) -> Result<(), StoreError> {
        let args = vec![
            lease.task.id.to_string(),
            lease.attempt.to_string(),
            progress.downloaded_bytes.to_string(),
            progress
                .total_bytes
                .map(|total| total.to_string())
                .unwrap_or_default(),
            progress.bytes_per_second.to_string(),
        ];
        self.call(
            &lease.task.id,
            "savestream_progress",
            self.task_keys(&lease.task.id),
            args,
        )
        .await?;
        Ok(())
    }

    pub async fn complete(&self, lease: &Lease, size: Option<u64>, path: &str) -> Result<(), StoreError> {
        let args = vec![
            lease.task.id.to_string(),
            lease.attempt.to_string(),
            size.map(|size| size.to_string()).unwrap_or_default(),
            path.to_owned(),
            self.retention_ms(),
        ];
        self.call(
            &lease.task.id,
            "savestream_complete",
            self.task_keys(&lease.task.id),
            args,
        )
        .await?;
        Ok(())
    }

    /// Fails the task for good with `error` (a permanent failure).
    pub async fn fail(&self, lease: &Lease, error: &str) -> Result<(), StoreError> {
        self.fail_attempt(&lease.task.id, lease.attempt, error).await
    }

    /// Fails attempt `attempt` of `task_id`: [`fail`](Store::fail), for a
    /// start whose lease could not be built ([`Store::lease_or_fail`]).
    async fn fail_attempt(&self, task_id: &TaskId, attempt: u32, error: &str) -> Result<(), StoreError> {
        let args = vec![
            task_id.to_string(),
            attempt.to_string(),
            error.to_owned(),
            self.retention_ms(),
        ];
        self.call(task_id, "savestream_fail", self.task_keys(task_id), args)
            .await?;
        Ok(())
    }

    /// Queues the task again after `delay`, or fails it when a failure finds
    /// its retries used up.
    pub async fn retry(
        &self,
        lease: &Lease,
        error: &str,
        kind: RetryKind,
        delay: Duration,
    ) -> Result<RetryOutcome, StoreError> {
        let (counted, max_retries) = match kind {
            RetryKind::Failure { max_retries } => ("1", max_retries),
            RetryKind::Release => ("0", 0),
        };
        let args = vec![
            lease.task.id.to_string(),
            lease.attempt.to_string(),
            error.to_owned(),
            counted.to_owned(),
            max_retries.to_string(),
            delay.as_millis().to_string(),
            self.retention_ms(),
        ];
        let reply = self
            .call(
                &lease.task.id,
                "savestream_retry",
                self.task_keys(&lease.task.id),
                args,
            )
            .await?;
        match reply.as_string().as_deref() {
            Some("retrying") => Ok(RetryOutcome::Retrying),
            Some("failed") => Ok(RetryOutcome::Failed),
            _ => Err(StoreError::Corrupt(format!("retry answered {reply:?}"))),
        }
    }

    /// Moves up to `limit` tasks whose backoff is over onto `jobs`.
    pub async fn promote_due(&self, limit: usize) -> Result<usize, StoreError> {
        let keys = vec![self.keys().jobs(), self.keys().delayed()];
        let args = vec![self.keys().task_prefix(), limit.to_string()];
        let anchor = TaskId::generate();
        let reply = self.call(&anchor, "savestream_promote", keys, args).await?;
        Ok(reply.as_i64().unwrap_or_default() as usize)
    }

    /// When the earliest delayed task is due, if any is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let first: Vec<(String, f64)> = self
            .client()
            .zrange(self.keys().delayed(), 0, 0, None, false, None, true)
            .await?;
        Ok(first.first().map(|(_, score)| *score as i64))
    }

    /// Deletes consumers of the `workers` group that hold nothing and have
    /// not read for `min_idle`. A consumer that holds entries is never
    /// deleted: that would orphan them.
    pub async fn remove_idle_consumers(&self, min_idle: Duration) -> Result<Vec<String>, StoreError> {
        self.remove_idle_consumers_of(&self.keys().jobs(), WORKERS_GROUP, min_idle)
            .await
    }

    /// Deletes the consumers of `group` on `stream` that hold nothing and
    /// have not read for `min_idle`; shared by the `workers` and `webhooks`
    /// groups.
    pub(crate) async fn remove_idle_consumers_of(
        &self,
        stream: &str,
        group: &str,
        min_idle: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let reply: Value = self
            .client()
            .custom(fred::cmd!("XINFO"), vec!["CONSUMERS", stream, group])
            .await?;
        let mut removed = Vec::new();
        for consumer in reply.into_array() {
            let info = pairs(consumer.into_array());
            let name = info.get("name").cloned().unwrap_or_default();
            let pending: u64 = info
                .get("pending")
                .and_then(|value| value.parse().ok())
                .unwrap_or(1);
            let idle: u128 = info.get("idle").and_then(|value| value.parse().ok()).unwrap_or(0);
            if pending == 0 && idle > min_idle.as_millis() && !name.is_empty() {
                let _: Value = self
                    .client()
                    .custom(
                        fred::cmd!("XGROUP"),
                        vec!["DELCONSUMER", stream, group, name.as_str()],
                    )
                    .await?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Milliseconds since the epoch on this machine.
    pub fn now_ms() -> i64 {
        now_ms()
    }
}

fn job_from_entry((job_id, fields): (String, std::collections::HashMap<String, String>)) -> Job {
    let task_id = match fields.get("task") {
        Some(text) => TaskId::parse(text).map_err(|_| text.clone()),
        None => Err(format!("{fields:?}")),
    };
    let carried = fields.get("carried").and_then(|text| Carried::parse(text));
    Job {
        job_id,
        task_id,
        takeovers: 0,
        carried,
    }
}

impl Job {
    /// The fields this item carries, when a start may build its lease from
    /// them: not for an item taken over, whose task has had an attempt.
    pub(crate) fn carried_for_start(&self) -> Option<&Carried> {
        self.carried.as_ref().filter(|_| self.takeovers == 0)
    }
}

/// A work item whose task id cannot be read, refused before any start.
pub(crate) fn unnamed_task(job_id: &str, raw: &str) -> StoreError {
    StoreError::Corrupt(format!("work item {job_id} names no valid task: {raw}"))
}

/// The attempt a start answered and when it started (`{attempt, at}`).
fn started_attempt(task_id: &TaskId, reply: Value) -> Result<(u32, String), StoreError> {
    let mut parts = reply.into_array().into_iter();
    let attempt = parts.next().and_then(|value| value.as_u64());
    let started = parts.next().and_then(|value| value.as_string());
    match (attempt, started) {
        (Some(attempt), Some(started)) => Ok((attempt as u32, started)),
        _ => Err(StoreError::Corrupt(format!(
            "the start of task {task_id} answered no attempt and time"
        ))),
    }
}

/// The lease of a started attempt, from the task hash read right behind the start.
fn lease_from(
    task_id: &TaskId,
    job_id: &str,
    attempt: u32,
    fields: &HashMap<String, String>,
) -> Result<Lease, StoreError> {
    if fields.is_empty() {
        // Only a task past its retention has no hash, and it cannot start.
        return Err(StoreError::NotFound(task_id.clone()));
    }
    Ok(Lease {
        task: task_from_hash(task_id, fields)?,
        attempt,
        job_id: job_id.to_owned(),
        progress: super::progress_from_hash(fields),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_field_splits_at_its_first_two_newlines_only() {
        let carried =
            Carried::parse("1700000000000\n[\"http\",\"https://a/b\",1,\"s\",\"\"]\nline one\nline two")
                .expect("a well-formed field");
        assert_eq!(carried.created, "1700000000000");
        assert_eq!(carried.request, r#"["http","https://a/b",1,"s",""]"#);
        assert_eq!(carried.title, "line one\nline two");
        assert_eq!(
            Carried::parse("17\nrequest\n").map(|carried| carried.title),
            Some(String::new())
        );
    }

    #[test]
    fn a_malformed_carried_field_is_as_if_the_item_carried_nothing() {
        assert_eq!(Carried::parse("not a time\nrequest\ntitle"), None);
        assert_eq!(Carried::parse("1700000000000\nrequest"), None);
        let job = job_from_entry((
            "1-0".to_owned(),
            HashMap::from([
                ("task".to_owned(), TaskId::generate().to_string()),
                ("carried".to_owned(), "garbage".to_owned()),
            ]),
        ));
        assert_eq!(job.carried, None);
    }
}
