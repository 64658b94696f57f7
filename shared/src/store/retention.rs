//! What the event log keeps: it is trimmed by time to the retention
//! horizon (`[queue] retention_hours`), never by length, and never past an
//! event that is still needed.
//!
//! Two things need old events. A task that is still queued or running
//! needs its whole history, from its `created` event on: the log is the
//! truth a rebuild folds, and a history cut in two cannot be folded. And
//! the webhook dispatcher needs every event it has not acknowledged, or an
//! outcome it fell behind on would never be delivered (an entry no
//! dispatcher can read is left pending only until it is older than the
//! retention period, then given up, so it never holds the trim back past
//! the horizon: see `savestream_webhook::dispatcher`). Terminal tasks need
//! nothing: their projection expires on its own (`PEXPIRE` at the end), so
//! a rebuild keeps a projection whose history was trimmed as it is (see
//! `rebuild.rs`).

use fred::prelude::*;
use fred::types::Value;

use super::groups::StreamId;
use super::{now_ms, Store, StoreError};
use crate::keys::WEBHOOKS_GROUP;
use crate::task::{Millis, TaskId};

impl Store {
    /// The first id of the retention horizon: every entry of the event log
    /// before it is older than the retention period, by the time in its id.
    pub(crate) fn retention_horizon(&self) -> StreamId {
        StreamId {
            millis: (now_ms() - self.retention().as_millis() as Millis).max(0) as u64,
            sequence: 0,
        }
    }

    /// Trims the event log to the retention horizon, by time (MINID), but
    /// never past the `created` event of the oldest queued or running task
    /// nor past an event the `webhooks` group has not acknowledged. Returns
    /// how many events went.
    pub async fn trim_log(&self) -> Result<u64, StoreError> {
        let horizon = self.retention_horizon();
        let mut floor = horizon;
        if let Some(first_event) = self.oldest_live_history().await? {
            // From the start of its millisecond: a task created in the same
            // millisecond but ranked after it in `queued` may hold an
            // earlier id of it.
            floor = floor.min(StreamId {
                millis: first_event.millis,
                sequence: 0,
            });
        }
        let events = self.keys().events();
        if let Some(position) = self.group_position(&events, WEBHOOKS_GROUP).await? {
            let needed = position.oldest_needed();
            if needed < horizon && self.any_event_between(needed, horizon).await? {
                tracing::warn!(
                    behind_since_ms = needed.millis,
                    "the event log is kept past [queue] retention_hours: the webhook dispatcher has not \
                     acknowledged older events; run a worker that delivers webhooks, or, if webhooks are \
                     off for good, remove the `webhooks` consumer group of the events stream (XGROUP DESTROY)"
                );
            }
            floor = floor.min(needed);
        }
        let trimmed: u64 = self
            .client()
            .custom(
                fred::cmd!("XTRIM"),
                vec![events, "MINID".into(), "~".into(), floor.to_string()],
            )
            .await?;
        Ok(trimmed)
    }

    /// The id of the first event (its `created`) of the oldest task that
    /// is queued (or waiting out a retry, which `queued` holds too) or
    /// running, read from the task's `log`: exact, where its `created` time
    /// and its event's id come from two readings of the clock. `queued` is
    /// scored by creation, so its first task is its oldest; `running` is
    /// scored by start, so all of its tasks are read.
    async fn oldest_live_history(&self) -> Result<Option<StreamId>, StoreError> {
        let keys = self.keys();
        // Both sets in one transaction: a task that starts, or is queued
        // again, between two separate reads would be in neither.
        let transaction = self.client().multi();
        let _: () = transaction
            .zrange(keys.queued(), 0, 0, None, false, None, false)
            .await?;
        let _: () = transaction
            .zrange(keys.running(), 0, -1, None, false, None, false)
            .await?;
        let (oldest_queued, running): (Vec<String>, Vec<String>) = transaction.exec(true).await?;
        let live: Vec<TaskId> = oldest_queued
            .iter()
            .chain(&running)
            .filter_map(|id| TaskId::parse(id).ok())
            .collect();
        let logs = self.field_of_each(&live, "log").await?;
        Ok(logs
            .iter()
            .flatten()
            .filter_map(|log| log.split(' ').next().and_then(StreamId::parse))
            .min())
    }

    /// Whether the log holds an event at or after `from` and before `until`.
    async fn any_event_between(&self, from: StreamId, until: StreamId) -> Result<bool, StoreError> {
        let reply: Value = self
            .client()
            .custom(
                fred::cmd!("XRANGE"),
                vec![
                    self.keys().events(),
                    from.to_string(),
                    format!("({until}"),
                    "COUNT".into(),
                    "1".into(),
                ],
            )
            .await?;
        Ok(!reply.into_array().is_empty())
    }
}
