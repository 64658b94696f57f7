//! The webhook side of the store: the `webhooks` consumer group on the
//! `events` stream, webhook deliveries waiting in the `webhooks:due` sorted
//! set, their claims (leases) and the `webhook_*` fields of a task.
//!
//! It owns the Redis operations only; when and how a delivery is sent is the
//! `savestream-webhook` crate's business. The atomic steps are functions of
//! the library (`savestream_webhook_*` in `library.lua`), following the same
//! rules as the `jobs` stream in [`super::queue`]: an event stays pending in
//! the group until its delivery is recorded, a delivery's try is claimed for
//! a lease, and a result is recorded only by the claim that made the try.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use super::{stream_entries, Store, StoreError};
use crate::event::TaskEvent;
use crate::keys::WEBHOOKS_GROUP;
use crate::task::{Millis, TaskId};

/// An entry of the `events` stream read through the `webhooks` group.
///
/// The dispatcher needs only the raw `type` and `task` fields (the body
/// comes from the projection), so an entry this build cannot decode as a
/// whole (another format version `v`, written by a newer build during a
/// rolling upgrade, or a field it does not know) still gets its webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventEntry {
    /// The entry's id on the stream.
    pub id: String,
    /// The entry's fields as written, whatever their format version.
    pub fields: HashMap<String, String>,
    /// The event, or why this build cannot decode the entry as a whole.
    pub event: Result<TaskEvent, String>,
}

impl EventEntry {
    /// The raw `type` field (`completed`, `failed`, ...), if any.
    pub fn kind(&self) -> Option<&str> {
        self.fields.get("type").map(String::as_str)
    }

    /// The raw `task` field, if it is a well-formed task id.
    pub fn task_id(&self) -> Option<TaskId> {
        self.fields.get("task").and_then(|task| TaskId::parse(task).ok())
    }

    /// A raw field, empty when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// A delivery's try, claimed for one lease by one consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedWebhook {
    /// The `webhook-id`, the same for every try of the delivery.
    pub webhook_id: String,
    /// Which try this is, from 1; the fence every result presents.
    pub attempt: u32,
    pub task_id: TaskId,
    /// The JSON body, fixed when the delivery was recorded.
    pub body: String,
}

/// The result of one try, as the dispatcher decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    /// The receiver answered 2xx.
    Delivered,
    /// Try again after `delay` (never later than the delivery's deadline).
    Retry { delay: Duration },
    /// The attempts are used up.
    GaveUp,
    /// The receiver answered 410 Gone: no more tries of this delivery.
    Gone,
}

impl WebhookResult {
    fn as_arg(self) -> &'static str {
        match self {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Retry { .. } => "retry",
            WebhookResult::GaveUp => "gave_up",
            WebhookResult::Gone => "gone",
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookState {
    /// Recorded, never tried yet.
    Pending,
    /// Tried without success; the next try waits in the due set.
    Retrying,
    Delivered,
    /// The attempts or the span were used up.
    GaveUp,
    /// The receiver answered 410 Gone.
    Gone,
}

impl WebhookState {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookState::Pending => "pending",
            WebhookState::Retrying => "retrying",
            WebhookState::Delivered => "delivered",
            WebhookState::GaveUp => "gave_up",
            WebhookState::Gone => "gone",
        }
    }

    pub fn parse(text: &str) -> Option<WebhookState> {
        [
            WebhookState::Pending,
            WebhookState::Retrying,
            WebhookState::Delivered,
            WebhookState::GaveUp,
            WebhookState::Gone,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    /// Delivered, gave up and gone deliveries are never tried again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            WebhookState::Delivered | WebhookState::GaveUp | WebhookState::Gone
        )
    }
}

/// What a claim of due deliveries got: the deliveries to try, and how many
/// records that could not be read it gave up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookClaim {
    pub claimed: Vec<ClaimedWebhook>,
    pub given_up: usize,
}

/// One delivery as Redis holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub webhook_id: String,
    pub task_id: TaskId,
    /// The id of the terminal event on the `events` stream it delivers.
    pub event_id: String,
    pub body: String,
    pub state: WebhookState,
    /// Tries claimed so far.
    pub attempts: u32,
    /// The HTTP status of the last try, `None` when it got no answer.
    pub last_status: Option<u16>,
    /// Why the last try failed, empty when it did not.
    pub last_error: String,
    pub created_at: Millis,
    /// No try is due after this.
    pub deadline: Millis,
    /// The consumer holding the current claim, if any.
    pub claimed_by: Option<String>,
}

/// The `webhook_*` fields of a task, for the API to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskWebhook {
    pub webhook_id: String,
    /// Pending, retrying, delivered or gave up (a 410 shows as gave up with
    /// `last_status` 410).
    pub state: WebhookState,
    pub attempts: u32,
    pub last_status: Option<u16>,
}

/// The `webhook_*` fields of a task's hash, or `None` when it has no
/// delivery (or an unreadable state).
pub(crate) fn webhook_from_hash(fields: &HashMap<String, String>) -> Option<TaskWebhook> {
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    Some(TaskWebhook {
        state: WebhookState::parse(field("webhook_state"))?,
        webhook_id: field("webhook_id").to_owned(),
        attempts: field("webhook_attempts").parse().unwrap_or_default(),
        last_status: field("webhook_last_status").parse().ok(),
    })
}

impl Store {
    /// Creates the `webhooks` group on `events` if missing, at the end of
    /// the stream (`$`): a new deployment does not replay the history of
    /// tasks that ended before any dispatcher ran. Once the group exists, its
    /// position is kept in Redis, so a restart misses nothing.
    pub async fn ensure_webhooks_group(&self) -> Result<(), StoreError> {
        self.create_webhooks_group("$").await
    }

    /// Creates the `webhooks` group again, at the start of the stream (`0`),
    /// when it went missing under a running dispatcher: Redis lost its data
    /// (a restart without persistence), so every entry of the stream came
    /// after the loss, and a group at `$` would skip the terminal events
    /// written between the loss and now. A group removed by hand (`XGROUP
    /// DESTROY`) while its dispatchers run is replayed from the start of
    /// what the log still holds: at least once, as every delivery is; an
    /// event whose delivery is still recorded (until retention after its
    /// end) is not recorded again, and receivers dedupe on `webhook-id`.
    pub async fn recreate_webhooks_group(&self) -> Result<(), StoreError> {
        self.create_webhooks_group("0").await
    }

    async fn create_webhooks_group(&self, start: &str) -> Result<(), StoreError> {
        let created: Result<String, fred::error::Error> = self
            .client()
            .custom(
                fred::cmd!("XGROUP"),
                vec![
                    "CREATE".to_owned(),
                    self.keys().events(),
                    WEBHOOKS_GROUP.to_owned(),
                    start.to_owned(),
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

    /// Reads up to `count` new events for the `webhooks` group, waiting up
    /// to `block` for the first. Call it on a store
    /// [`with_own_connection`](Store::with_own_connection).
    pub async fn read_events(
        &self,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<EventEntry>, StoreError> {
        let args: Vec<String> = vec![
            "GROUP".into(),
            WEBHOOKS_GROUP.into(),
            consumer.into(),
            "COUNT".into(),
            count.to_string(),
            "BLOCK".into(),
            block.as_millis().to_string(),
            "STREAMS".into(),
            self.keys().events(),
            ">".into(),
        ];
        let reply: Value = self
            .client()
            .custom(fred::cmd!("XREADGROUP", blocking: true), args)
            .await?;
        // RESP2 answers [[stream, entries]]; nil when the block timed out.
        let mut entries = Vec::new();
        for stream in reply.into_array() {
            let mut parts = stream.into_array().into_iter();
            let _stream_name = parts.next();
            if let Some(stream_entries_value) = parts.next() {
                entries.extend(stream_entries(stream_entries_value)?.into_iter().map(event_entry));
            }
        }
        Ok(entries)
    }

    /// Claims up to `count` events that a consumer of the `webhooks` group
    /// read but has not acknowledged for longer than `min_idle`: it died
    /// before recording their deliveries, or no dispatcher could read them
    /// (see `savestream_webhook::dispatcher`).
    ///
    /// The scan starts at `cursor` and leaves it where the next one goes
    /// on (`0-0` once it has gone round the pending list): entries that stay
    /// pending on purpose are passed over by the next scan rather than
    /// claimed again first, so however many there are, they never keep a
    /// dead dispatcher's events from being taken over.
    pub async fn claim_stale_events(
        &self,
        consumer: &str,
        min_idle: Duration,
        count: usize,
        cursor: &mut String,
    ) -> Result<Vec<EventEntry>, StoreError> {
        let events = self.keys().events();
        let claimed = self
            .autoclaim_from(&events, WEBHOOKS_GROUP, consumer, min_idle, count, cursor)
            .await?;
        Ok(claimed.into_iter().map(event_entry).collect())
    }

    /// The events of `task_id` still on the log, oldest first, up to and
    /// including `until` (its terminal event), for a delivery whose task's
    /// hash has expired. The scan goes backwards from `until` down to a
    /// minute before the creation time in the task's id (an xid made by the
    /// API just before its `created` event, on a clock that may differ from
    /// Redis' by that much), reads pages of 1000 entries, and stops after
    /// `max_scanned` entries: the events nearest the end (the last
    /// `resolved`, whose title the body carries) are found first, and only
    /// the `created` event of a task with more than `max_scanned` entries
    /// between its creation and its end is missed. A dispatcher that fell
    /// behind by more than the retention period pays for each such event
    /// with a bounded scan, and the hot paths write nothing for it.
    pub async fn task_events_on_log(
        &self,
        task_id: &TaskId,
        until: &str,
        max_scanned: usize,
    ) -> Result<Vec<EventEntry>, StoreError> {
        const PAGE: usize = 1000;
        let created_ms = task_id.created_ms().unwrap_or(0);
        let start = crate::stream_id::StreamId {
            millis: u64::try_from(created_ms.saturating_sub(60_000)).unwrap_or(0),
            sequence: 0,
        }
        .to_string();
        let mut end = until.to_owned();
        let mut found = Vec::new();
        let mut scanned = 0;
        while scanned < max_scanned {
            let count = PAGE.min(max_scanned - scanned);
            let reply: Value = self
                .client()
                .custom(
                    fred::cmd!("XREVRANGE"),
                    vec![
                        self.keys().events(),
                        end.clone(),
                        start.clone(),
                        "COUNT".into(),
                        count.to_string(),
                    ],
                )
                .await?;
            let page = stream_entries(reply)?;
            let page_len = page.len();
            scanned += page_len;
            let Some((last_id, _)) = page.last() else {
                break;
            };
            end = format!("({last_id}");
            // Only the task's own entries are decoded: a scan may pass
            // thousands of other tasks' events.
            found.extend(
                page.into_iter()
                    .filter(|(_, fields)| fields.get("task").map(String::as_str) == Some(task_id.as_str()))
                    .map(event_entry),
            );
            if page_len < count {
                break;
            }
        }
        found.reverse();
        Ok(found)
    }

    /// Whether the entry `event_id` of the `events` stream is older than the
    /// retention period (`[queue] retention_hours`), by the time in its id.
    pub fn is_past_retention(&self, event_id: &str) -> bool {
        crate::stream_id::StreamId::parse(event_id).is_some_and(|id| id < self.retention_horizon())
    }

    /// Acknowledges events that need no delivery (not terminal, or given up).
    pub async fn ack_events(&self, event_ids: &[String]) -> Result<(), StoreError> {
        if event_ids.is_empty() {
            return Ok(());
        }
        let _: Value = self
            .client()
            .xack(self.keys().events(), WEBHOOKS_GROUP, event_ids.to_vec())
            .await?;
        Ok(())
    }

    /// Records the delivery of a terminal event and acknowledges the event,
    /// atomically: a delivery is recorded once per event even when a crash
    /// makes the event be read again. It is due at once; no try is due after
    /// `span` from now. Returns `false` when it was recorded before.
    pub async fn enqueue_webhook(
        &self,
        event_id: &str,
        webhook_id: &str,
        task_id: &TaskId,
        body: &str,
        span: Duration,
    ) -> Result<bool, StoreError> {
        let keys = vec![
            self.keys().events(),
            self.keys().webhook(webhook_id),
            self.keys().webhooks_due(),
            self.keys().task(task_id),
        ];
        let args = vec![
            WEBHOOKS_GROUP.to_owned(),
            event_id.to_owned(),
            webhook_id.to_owned(),
            task_id.to_string(),
            body.to_owned(),
            span.as_millis().to_string(),
        ];
        let reply = self
            .call(task_id, "savestream_webhook_enqueue", keys, args)
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Claims up to `limit` deliveries that are due, each for `lease`: until
    /// then no other consumer tries them, and after it (the consumer died
    /// mid-try) they are due again. See [`Store::claim_due_webhooks`],
    /// which also says how many unreadable records it gave up.
    pub async fn claim_webhooks(
        &self,
        consumer: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        Ok(self.claim_due_webhooks(consumer, limit, lease).await?.claimed)
    }

    /// Claims up to `limit` due deliveries as [`Store::claim_webhooks`]
    /// does; a record that cannot be read is given up (see
    /// `give_up_webhook`) and counted in `given_up`, for the caller's metric.
    pub async fn claim_due_webhooks(
        &self,
        consumer: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<WebhookClaim, StoreError> {
        let mut claim = WebhookClaim::default();
        if limit == 0 {
            return Ok(claim);
        }
        let keys = vec![self.keys().webhooks_due()];
        let args = vec![
            self.keys().webhook_prefix(),
            limit.to_string(),
            lease.as_millis().to_string(),
            consumer.to_owned(),
        ];
        // The call names no task; an anchor id only labels errors.
        let anchor = TaskId::generate();
        let reply = self.call(&anchor, "savestream_webhook_claim", keys, args).await?;
        // Each record is read on its own: one that cannot be read is logged
        // and given up (its claim already taken by the call), and never
        // costs the other deliveries their claims.
        for claimed in reply.into_array() {
            let mut parts = claimed.into_array().into_iter();
            let webhook_id = parts.next().and_then(|value| value.as_string());
            let attempt = parts.next().and_then(|value| value.as_i64());
            let task_id = parts.next().and_then(|value| value.as_string());
            let body = parts.next().and_then(|value| value.as_string());
            let Some(webhook_id) = webhook_id else {
                tracing::error!("a claimed webhook has no id; skipped");
                continue;
            };
            if attempt == Some(0) {
                // The library answers attempt 0 for a member of the due set
                // whose key is not a delivery hash: it removed the member
                // and left the key alone (it is not a delivery's to touch).
                tracing::error!(
                    %webhook_id, why = body.as_deref().unwrap_or_default(),
                    "a due webhook's record cannot be read (its key holds another type): it is \
                     dropped from the due set and never tried"
                );
                continue;
            }
            // The task the record names, when it is one: its webhook
            // summary says when the record is given up.
            let named_task = task_id.as_deref().and_then(|task_id| TaskId::parse(task_id).ok());
            let parsed = match (attempt, task_id, body) {
                // The library answers attempt -1 for a record whose attempts
                // are not a number: removed from the due set, why in place of
                // the body; given up like any record that cannot be read.
                (Some(-1), _, why) => Err(why.unwrap_or_default()),
                (Some(attempt), Some(task_id), Some(body)) => TaskId::parse(&task_id)
                    .map(|task_id| ClaimedWebhook {
                        webhook_id: webhook_id.clone(),
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        task_id,
                        body,
                    })
                    .map_err(|error| format!("its task is not a task id: {error}")),
                _ => Err("it lacks its task or its body".to_owned()),
            };
            match parsed {
                Ok(claimed_webhook) => claim.claimed.push(claimed_webhook),
                Err(why) => {
                    tracing::error!(
                        %webhook_id, %why,
                        "a claimed webhook's record cannot be read: it is given up (gave_up, expiring \
                         after the retention period)"
                    );
                    match self.give_up_webhook(&webhook_id, named_task.as_ref(), &why).await {
                        Ok(()) => claim.given_up += 1,
                        Err(error) => tracing::warn!(
                            %webhook_id, %error,
                            "giving up an unreadable webhook failed: it is claimed again after the lease"
                        ),
                    }
                }
            }
        }
        Ok(claim)
    }

    /// Gives up a delivery whose record cannot be read: `gave_up` with
    /// `why` as its last error, out of the due set, expiring after the
    /// retention period like any final delivery; the webhook summary of
    /// `task_id`'s hash says `gave_up` when it names this delivery.
    async fn give_up_webhook(
        &self,
        webhook_id: &str,
        task_id: Option<&TaskId>,
        why: &str,
    ) -> Result<(), StoreError> {
        let key = self.keys().webhook(webhook_id);
        let task_key = task_id.map_or_else(|| key.clone(), |task_id| self.keys().task(task_id));
        let keys = vec![key, self.keys().webhooks_due(), task_key];
        let args = vec![
            webhook_id.to_owned(),
            why.to_owned(),
            self.retention().as_millis().to_string(),
        ];
        // The call may name no task; an anchor id then only labels errors.
        let anchor = task_id.cloned().unwrap_or_else(TaskId::generate);
        self.call(&anchor, "savestream_webhook_give_up", keys, args)
            .await?;
        Ok(())
    }

    /// Records the result of a claimed try and returns the state it left
    /// the delivery in (a retry asked for past the deadline gives up).
    /// `LeaseLost` means the claim had expired and another consumer took the
    /// delivery over: this result no longer counts.
    pub async fn record_webhook(
        &self,
        claimed: &ClaimedWebhook,
        consumer: &str,
        result: WebhookResult,
        http_status: Option<u16>,
        error: &str,
    ) -> Result<WebhookState, StoreError> {
        let delay = match result {
            WebhookResult::Retry { delay } => delay,
            _ => Duration::ZERO,
        };
        let keys = vec![
            self.keys().webhook(&claimed.webhook_id),
            self.keys().webhooks_due(),
            self.keys().task(&claimed.task_id),
        ];
        let args = vec![
            claimed.webhook_id.clone(),
            claimed.attempt.to_string(),
            consumer.to_owned(),
            result.as_arg().to_owned(),
            http_status.map(|status| status.to_string()).unwrap_or_default(),
            error.to_owned(),
            delay.as_millis().to_string(),
            self.retention().as_millis().to_string(),
        ];
        let reply = self
            .call(&claimed.task_id, "savestream_webhook_record", keys, args)
            .await?;
        reply
            .as_string()
            .and_then(|state| WebhookState::parse(&state))
            .ok_or_else(|| StoreError::Corrupt(format!("webhook record answered {reply:?}")))
    }

    /// When the earliest delivery is due (ms since the epoch), if any is waiting.
    pub async fn next_webhook_due(&self) -> Result<Option<Millis>, StoreError> {
        let first: Vec<(String, f64)> = self
            .client()
            .zrange(self.keys().webhooks_due(), 0, 0, None, false, None, true)
            .await?;
        Ok(first.first().map(|(_, score)| *score as Millis))
    }

    /// One delivery, or `None` when there is no such delivery (never
    /// recorded, or expired after its final state).
    pub async fn webhook_delivery(&self, webhook_id: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        let fields: HashMap<String, String> = self.client().hgetall(self.keys().webhook(webhook_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {webhook_id}: {what}"));
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let number = |name: &str| -> Result<i64, StoreError> {
            text(name)
                .parse()
                .map_err(|_| corrupt(&format!("field `{name}` is not a number")))
        };
        Ok(Some(WebhookDelivery {
            webhook_id: webhook_id.to_owned(),
            task_id: TaskId::parse(&text("task")).map_err(|error| corrupt(&error.to_string()))?,
            event_id: text("event"),
            body: text("body"),
            state: WebhookState::parse(&text("status")).ok_or_else(|| corrupt("unknown status"))?,
            attempts: number("attempts")? as u32,
            last_status: text("last_status").parse().ok(),
            last_error: text("last_error"),
            created_at: number("created")?,
            deadline: number("deadline")?,
            claimed_by: fields.get("claimed_by").filter(|name| !name.is_empty()).cloned(),
        }))
    }

    /// The task's webhook fields, or `None` when the task has no delivery
    /// (not ended, no dispatcher running, or no such task).
    pub async fn task_webhook(&self, task_id: &TaskId) -> Result<Option<TaskWebhook>, StoreError> {
        // Read apart from the task's other fields, which may be unreadable
        // (a task the dispatcher skipped still shows its webhook fields).
        let fields: HashMap<String, String> = self.client().hgetall(self.keys().task(task_id)).await?;
        Ok(webhook_from_hash(&fields))
    }

    /// Deletes consumers of the `webhooks` group that hold nothing and have
    /// not read for `min_idle` (each dispatcher process names a new one).
    /// A consumer that holds events is never deleted: that would orphan them.
    pub async fn remove_idle_webhook_consumers(&self, min_idle: Duration) -> Result<Vec<String>, StoreError> {
        self.remove_idle_consumers_of(&self.keys().events(), WEBHOOKS_GROUP, min_idle)
            .await
    }
}

fn event_entry((id, fields): (String, HashMap<String, String>)) -> EventEntry {
    EventEntry {
        event: TaskEvent::from_fields(&fields).map_err(|error| error.to_string()),
        fields,
        id,
    }
}
