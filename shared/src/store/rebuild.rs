//! Rebuilding the projection from the event log.
//!
//! The log is the truth; the projection is a cache of `Task::fold` over it
//! that the function library keeps current. [`Store::rebuild`] recomputes it
//! from scratch (after a projection was lost or damaged, with no process
//! writing), and [`Store::fold_log`] / [`Store::projection`] let a test
//! prove that the live projection equals the fold.
//!
//! Two groups of a task hash's fields come from no event, and a rebuild
//! takes each from where it still lives:
//! - the webhook summary (`webhook_id`, `webhook_state`, `webhook_attempts`,
//!   `webhook_last_status`), a copy the dispatcher's calls keep of the
//!   task's delivery record (`{p}:webhook:<id>`): it is recomputed from
//!   that record, which outlives the task's hash (it expires a retention
//!   period after its final result, which comes after the task's end);
//! - progress (`done`, `total`, `bps`), which is not an event by design:
//!   it is kept from the hash being replaced. A hash that was lost had the
//!   only copy; its task shows no progress until its worker's next write
//!   (a running task), or never again (an ended one).
//!
//! Each task's hash is replaced in one transaction (`MULTI`: delete, write,
//! expiry or index), so a rebuild that dies midway leaves every task either
//! as it was, progress included, or rebuilt; never deleted and not yet
//! written. What a rebuild cannot read it skips with a warning instead of
//! failing as a whole: a key under a task's name that is not a hash (it is
//! rewritten from the log, with no progress to keep), and a delivery record
//! that is corrupt or expired since the scan (its task gets no webhook
//! summary).

use std::collections::{HashMap, HashSet};

use fred::clients::Transaction;
use fred::prelude::*;
use fred::types::scan::Scanner;
use fred::types::Value;
use futures::TryStreamExt;

use super::error::is_wrong_type;
use super::groups::StreamId;
use super::webhooks::WebhookState;
use super::{now_ms, stream_entries, task_from_hash, Store, StoreError};
use crate::event::EventKind;
use crate::keys::WORKERS_GROUP;
use crate::request::request_field;
use crate::task::{Task, TaskId, TaskStatus};

/// One task as the log tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldedTask {
    pub task: Task,
    /// The ids of its events on the log, oldest first.
    pub event_ids: Vec<String>,
    /// When its retry is due, if its last event is `retrying`.
    pub due_at: Option<i64>,
}

/// The log folded: every task whose whole history it holds, and the tasks
/// whose history it holds only the end of.
#[derive(Clone, Debug, Default)]
pub struct FoldedLog {
    pub tasks: HashMap<TaskId, FoldedTask>,
    /// Tasks whose `created` event was trimmed away (see `retention.rs`:
    /// only a task that had ended can lose it). Their projection, while it
    /// lasts, is the only record of how they began.
    pub truncated: HashSet<TaskId>,
}

/// What a rebuild wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub tasks: usize,
    pub queued: usize,
    pub running: usize,
    pub delayed: usize,
    /// Terminal tasks past retention, left out.
    pub expired: usize,
    /// Tasks whose history begins before the log does, whose projection
    /// was kept as it was (it cannot be folded; it can only be lost).
    pub kept: usize,
}

impl Store {
    /// Folds the whole log into tasks, with each task's event ids. A task
    /// whose first event on the log is not `created` had the start of its
    /// history trimmed: it is set aside in [`FoldedLog::truncated`], not
    /// folded. Any other transition the rules refuse is corruption.
    pub async fn fold_log(&self) -> Result<FoldedLog, StoreError> {
        let mut folded = FoldedLog::default();
        for logged in self.read_log().await? {
            let task_id = logged.event.task_id.clone();
            if folded.truncated.contains(&task_id) {
                continue;
            }
            let (state, mut event_ids) = match folded.tasks.remove(&task_id) {
                Some(task) => (Some(task.task), task.event_ids),
                None if !matches!(logged.event.kind, EventKind::Created { .. }) => {
                    folded.truncated.insert(task_id);
                    continue;
                }
                None => (None, Vec::new()),
            };
            let task = Task::apply(state, &logged.event)
                .map_err(|error| StoreError::Corrupt(format!("event {}: {error}", logged.id)))?;
            event_ids.push(logged.id);
            let due_at = match logged.event.kind {
                EventKind::Retrying { due_at, .. } => Some(due_at),
                _ => None,
            };
            folded.tasks.insert(
                task_id,
                FoldedTask {
                    task,
                    event_ids,
                    due_at,
                },
            );
        }
        Ok(folded)
    }

    /// Every task hash in the projection.
    pub async fn projection(&self) -> Result<HashMap<TaskId, Task>, StoreError> {
        let mut tasks = HashMap::new();
        for (task_id, key) in self.task_hash_keys().await? {
            let fields: HashMap<String, String> = self.client().hgetall(&key).await?;
            tasks.insert(task_id.clone(), task_from_hash(&task_id, &fields)?);
        }
        Ok(tasks)
    }

    /// Rewrites the projection (task hashes, `queued`, `running`,
    /// `delayed`) from the log. Run it with no process writing. A task
    /// whose history was trimmed at its start keeps its hash as it is; if
    /// that hash says it is queued or running, it is indexed again. The
    /// fields no event carries come from where they live (see the module's
    /// docs): the webhook summary from the delivery records, progress from
    /// the hash being replaced, when there is one.
    pub async fn rebuild(&self) -> Result<RebuildReport, StoreError> {
        let FoldedLog {
            tasks: folded,
            truncated,
        } = self.fold_log().await?;
        let jobs = self.live_jobs().await?;
        let mut webhooks = self.task_webhook_fields().await?;
        let keys = self.keys().clone();
        let retention_ms = self.retention().as_millis() as i64;
        let now = now_ms();
        let mut report = RebuildReport::default();
        let mut old_hashes = self.old_hashes().await?;
        for task_id in old_hashes.keys() {
            if !folded.contains_key(task_id) && !truncated.contains(task_id) {
                let _: i64 = self.client().del(keys.task(task_id)).await?;
            }
        }
        let _: i64 = self
            .client()
            .del(vec![keys.queued(), keys.running(), keys.delayed()])
            .await?;
        for (
            task_id,
            FoldedTask {
                task,
                event_ids,
                due_at: due,
            },
        ) in folded
        {
            let hash_key = keys.task(&task_id);
            let old_hash = match old_hashes.remove(&task_id) {
                Some(OldHash::Fields(fields)) => Some(fields),
                Some(OldHash::NotAHash) => {
                    tracing::warn!(
                        key = hash_key,
                        "a task's key holds no hash: the rebuild replaces it with the task's hash from the log, \
                         without progress"
                    );
                    None
                }
                None => None,
            };
            if task.status.is_terminal() && task.ended_at.unwrap_or(0) + retention_ms <= now {
                let _: i64 = self.client().del(&hash_key).await?;
                report.expired += 1;
                continue;
            }
            let mut fields = task_to_hash(&task);
            fields.push(("job", jobs.get(&task_id).cloned().unwrap_or_default()));
            fields.push(("log", event_ids.join(" ")));
            // Progress is on no event: the hash being replaced holds the
            // only copy, if it is still there.
            if let Some(old_hash) = &old_hash {
                fields.extend(
                    PROGRESS_FIELDS
                        .into_iter()
                        .filter_map(|name| old_hash.get(name).map(|value| (name, value.clone()))),
                );
            }
            if let Some(webhook) = webhooks.remove(&task_id) {
                fields.extend(webhook.fields);
            }
            // The old hash goes in the same step as the new one is written:
            // progress lives in Redis until it is replaced, and a rebuild
            // that dies leaves no task without a hash, or without its
            // expiry or index.
            let transaction = self.client().multi();
            let _: () = transaction.del(&hash_key).await?;
            let _: () = transaction.hset(&hash_key, fields).await?;
            if task.status.is_terminal() {
                let expire_at = task.ended_at.unwrap_or(now) + retention_ms;
                let _: () = transaction.pexpire_at(&hash_key, expire_at, None).await?;
            } else {
                self.index_live(
                    &transaction,
                    &task_id,
                    &task,
                    due.unwrap_or(now),
                    &jobs,
                    &mut report,
                )
                .await?;
            }
            let _: Value = transaction.exec(true).await?;
            report.tasks += 1;
        }
        for task_id in truncated {
            let key = keys.task(&task_id);
            let task = match old_hashes.remove(&task_id) {
                None => continue, // ended, and expired since: nothing to keep
                Some(OldHash::NotAHash) => {
                    tracing::warn!(
                        key,
                        "a task's key holds no hash, and the log no longer holds the start of its history: \
                         the rebuild leaves it as it is"
                    );
                    continue;
                }
                Some(OldHash::Fields(fields)) => match task_from_hash(&task_id, &fields) {
                    Ok(task) => task,
                    Err(error) => {
                        tracing::warn!(
                            key,
                            %error,
                            "a task's hash cannot be read, and the log no longer holds the start of its \
                             history: the rebuild leaves it as it is"
                        );
                        continue;
                    }
                },
            };
            report.kept += 1;
            if !task.status.is_terminal() {
                let job = jobs.get(&task_id).cloned().unwrap_or_default();
                let transaction = self.client().multi();
                let _: () = transaction.hset(&key, ("job", job)).await?;
                // Its retry's due time went with the trimmed events, if it
                // was waiting: it is due now.
                self.index_live(&transaction, &task_id, &task, now, &jobs, &mut report)
                    .await?;
                let _: Value = transaction.exec(true).await?;
            }
        }
        Ok(report)
    }

    /// What each key under a task's name holds, read before the rebuild
    /// writes anything. A hash that expired since the scan is left out.
    async fn old_hashes(&self) -> Result<HashMap<TaskId, OldHash>, StoreError> {
        let mut hashes = HashMap::new();
        for (task_id, key) in self.task_hash_keys().await? {
            let read: Result<HashMap<String, String>, fred::error::Error> = self.client().hgetall(&key).await;
            let old_hash = match read {
                Ok(fields) if fields.is_empty() => continue,
                Ok(fields) => OldHash::Fields(fields),
                Err(error) if is_wrong_type(&error) => OldHash::NotAHash,
                Err(error) => return Err(error.into()),
            };
            hashes.insert(task_id, old_hash);
        }
        Ok(hashes)
    }

    /// Every key under a task's name, with the task's id.
    async fn task_hash_keys(&self) -> Result<Vec<(TaskId, String)>, StoreError> {
        let prefix = self.keys().task_prefix();
        Ok(self
            .keys_under(&prefix)
            .await?
            .into_iter()
            .filter_map(|key| {
                // The `:log` lists share the prefix, and are no task's id.
                let task_id = TaskId::parse(key.strip_prefix(&prefix)?).ok()?;
                Some((task_id, key))
            })
            .collect())
    }

    /// The keys that begin with `prefix` (a literal, not a pattern).
    async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{}*", prefix.replace('{', "\\{").replace('}', "\\}"));
        let mut keys = Vec::new();
        let mut scan = self.client().scan(pattern, Some(1000), None);
        while let Some(mut page) = scan.try_next().await? {
            keys.extend(
                page.take_results()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|key| key.into_string()),
            );
            page.next();
        }
        Ok(keys)
    }

    /// The `webhook_*` fields of each task with a delivery record, as the
    /// webhook functions of the library would have left them in its hash.
    ///
    /// A delivery counts a try when it is claimed, the task's hash when its
    /// result is recorded, so a try claimed and not yet recorded is left
    /// out. The record cannot tell one case apart: a dispatcher that died
    /// holding a claim. While a later claim of the same delivery is still
    /// unrecorded, the dead claim counts here and not in the live hash;
    /// once the later claim records its try (numbered past both), they agree.
    ///
    /// A record that expired since the scan is left out, and one that
    /// cannot be read (corrupt, or a key of another type) is left out with
    /// a warning: its task's hash gets no webhook summary.
    async fn task_webhook_fields(&self) -> Result<HashMap<TaskId, TaskWebhookFields>, StoreError> {
        let prefix = self.keys().webhook_prefix();
        let mut found: HashMap<TaskId, TaskWebhookFields> = HashMap::new();
        for key in self.keys_under(&prefix).await? {
            let Some(webhook_id) = key.strip_prefix(&prefix) else {
                continue;
            };
            let delivery = match self.webhook_delivery(webhook_id).await {
                Ok(Some(delivery)) => delivery,
                // A final delivery's record expires, a retention period
                // after its result: this one did since the scan.
                Ok(None) => continue,
                Err(error) => {
                    let reason = unreadable(error)?;
                    tracing::warn!(
                        key,
                        %reason,
                        "a webhook delivery record cannot be read: the rebuild gives its task no webhook summary"
                    );
                    continue;
                }
            };
            // A task has one terminal event and so one delivery; should it
            // have more, the newest is the one its hash names (its enqueue
            // wrote last).
            if found
                .get(&delivery.task_id)
                .is_some_and(|other| other.created > delivery.created_at)
            {
                continue;
            }
            let in_flight = u32::from(delivery.claimed_by.is_some());
            // The task's fields show a 410 as gave up (see `TaskWebhook`).
            let state = match delivery.state {
                WebhookState::Gone => WebhookState::GaveUp,
                state => state,
            };
            let fields = vec![
                ("webhook_id", delivery.webhook_id),
                ("webhook_state", state.as_str().to_owned()),
                (
                    "webhook_attempts",
                    delivery.attempts.saturating_sub(in_flight).to_string(),
                ),
                (
                    "webhook_last_status",
                    delivery
                        .last_status
                        .map(|status| status.to_string())
                        .unwrap_or_default(),
                ),
            ];
            found.insert(
                delivery.task_id,
                TaskWebhookFields {
                    created: delivery.created_at,
                    fields,
                },
            );
        }
        Ok(found)
    }

    /// Puts a queued or running task into `queued` / `running`, and a
    /// queued one without a live work item into `delayed` at `due`, as
    /// commands of `transaction`.
    async fn index_live(
        &self,
        transaction: &Transaction,
        task_id: &TaskId,
        task: &Task,
        due: i64,
        jobs: &HashMap<TaskId, String>,
        report: &mut RebuildReport,
    ) -> Result<(), StoreError> {
        let keys = self.keys();
        let (set, score) = match task.status {
            TaskStatus::Queued => (keys.queued(), task.created_at),
            TaskStatus::Running => (keys.running(), task.started_at.unwrap_or(task.created_at)),
            _ => return Ok(()),
        };
        let _: () = transaction
            .zadd(set, None, None, false, false, (score as f64, task_id.as_str()))
            .await?;
        if task.status == TaskStatus::Running {
            report.running += 1;
            return Ok(());
        }
        report.queued += 1;
        if !jobs.contains_key(task_id) {
            let _: () = transaction
                .zadd(
                    keys.delayed(),
                    None,
                    None,
                    false,
                    false,
                    (due as f64, task_id.as_str()),
                )
                .await?;
            report.delayed += 1;
        }
        Ok(())
    }

    /// The live work item of each task that has one on `jobs`: an entry
    /// not yet handed to a worker, or handed out and not acknowledged.
    /// `jobs` also holds spent entries, acknowledged but kept because an
    /// older one is still pending (it is trimmed from its oldest pending
    /// entry on): giving a task one of those would leave it waiting for a
    /// delivery that never comes.
    async fn live_jobs(&self) -> Result<HashMap<TaskId, String>, StoreError> {
        let Some(position) = self.group_position(&self.keys().jobs(), WORKERS_GROUP).await? else {
            // No group yet: nothing was handed out, every entry is live.
            return self.jobs_where(|_| true).await;
        };
        let pending: HashSet<StreamId> = position.pending.iter().copied().collect();
        self.jobs_where(|id| position.still_needs(id, &pending)).await
    }

    /// The newest entry on `jobs` of each task, among the entries `keep` accepts.
    async fn jobs_where(
        &self,
        keep: impl Fn(StreamId) -> bool,
    ) -> Result<HashMap<TaskId, String>, StoreError> {
        let reply: Value = self.client().xrange(self.keys().jobs(), "-", "+", None).await?;
        let mut jobs = HashMap::new();
        for (job_id, fields) in stream_entries(reply)? {
            if !StreamId::parse(&job_id).is_some_and(&keep) {
                continue;
            }
            if let Some(task_id) = fields.get("task").and_then(|text| TaskId::parse(text).ok()) {
                jobs.insert(task_id, job_id);
            }
        }
        Ok(jobs)
    }
}

/// The fields of a task hash that the progress function writes.
const PROGRESS_FIELDS: [&str; 3] = ["done", "total", "bps"];

/// What a key under a task's name held before the rebuild.
enum OldHash {
    Fields(HashMap<String, String>),
    /// A key of another type: a damaged projection, with nothing to keep.
    NotAHash,
}

/// Why a record cannot be read, when that is what `error` says (it is
/// corrupt, or its key holds another type); otherwise `error` itself:
/// Redis failed, and the rebuild with it.
fn unreadable(error: StoreError) -> Result<String, StoreError> {
    match error {
        StoreError::Corrupt(reason) => Ok(reason),
        StoreError::Unavailable(error) if is_wrong_type(&error) => Ok(error.details().to_owned()),
        error => Err(error),
    }
}

/// A task's `webhook_*` fields, from the delivery record made `created`.
struct TaskWebhookFields {
    created: i64,
    fields: Vec<(&'static str, String)>,
}

/// The projection hash of a task, field for field as the library writes it.
fn task_to_hash(task: &Task) -> Vec<(&'static str, String)> {
    let optional = |value: Option<i64>| value.map(|value| value.to_string());
    let mut fields = vec![
        ("status", task.status.as_str().to_owned()),
        (
            "request",
            request_field(task.source, &task.link, task.user_id, &task.storage, &task.dir),
        ),
        ("title", task.title.clone()),
        ("created", task.created_at.to_string()),
        ("updated", task.updated_at.to_string()),
        ("attempt", task.attempt.to_string()),
        ("retries", task.retries.to_string()),
        ("error", task.error.clone()),
    ];
    let optional_fields = [
        ("file", task.file_name.clone()),
        ("size", task.size.map(|size| size.to_string())),
        ("path", task.path.clone()),
        ("validator", task.validator.clone()),
        ("started", optional(task.started_at)),
        ("ended", optional(task.ended_at)),
        ("worker", task.worker.clone()),
    ];
    fields.extend(
        optional_fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name, value))),
    );
    fields
}
