//! [`Dispatcher`]: the step functions that move a webhook from a terminal
//! event to a recorded result, and [`Dispatcher::run`], the loop that drives
//! them until shutdown.
//!
//! Two loops run side by side in `run`:
//! - **ingest** reads the `events` stream through the `webhooks` consumer
//!   group (`XREADGROUP BLOCK` on a connection of its own), acknowledges
//!   non-terminal events at once and turns each terminal one into a
//!   delivery, recorded and acknowledged in one atomic call. Every half
//!   lease it also takes over events that a dead dispatcher read but never
//!   recorded (`XAUTOCLAIM`, idle past the lease, as for jobs).
//! - **deliver** waits for a free slot (a semaphore of `concurrency`
//!   permits), claims as many due deliveries as it has slots, and tries each
//!   in a task of its own. With nothing due it sleeps until the earliest due
//!   time, at least [`MIN_EMPTY_CLAIM_WAIT`] (due times are Redis' clock, and
//!   this host's may run ahead) and at most `idle_poll`, or until ingest or
//!   a finished try wakes it.
//!   A retry never sleeps in a task: it waits in the due set.
//!
//! Outcomes: 2xx is delivered; 410 gives up this delivery (`gone`; later
//! events are still delivered to the same URL, which is the operator's
//! config, not a subscription the receiver can cancel); anything else, a
//! timeout or a connection error retries on the [`Backoff`] schedule, until
//! `max_attempts` tries or the span are used up (`gave_up`). A 429 or 503
//! with `Retry-After` waits that long when it is longer than the schedule's
//! delay, never shorter: a receiver answering `Retry-After: 0` would
//! otherwise use up every attempt in seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use savestream_shared::config::Config;
use savestream_shared::shutdown::unless_stuck;
use savestream_shared::store::webhooks::{
    ClaimedWebhook, EventEntry, WebhookClaim, WebhookResult, WebhookState,
};
use savestream_shared::store::{Store, StoreError};
use savestream_shared::task::{Millis, TaskId};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::body::{body_json, body_of};
use crate::error::WebhookError;
use crate::options::{Backoff, DispatcherOptions};
use crate::send::{check_url, Answer, Sender};
use crate::signature::Signer;

/// The metric that counts tries and events by outcome: see
/// [`DELIVERY_OUTCOMES`].
pub const DELIVERIES_METRIC: &str = "savestream_webhook_deliveries_total";

/// Every `outcome` label of [`DELIVERIES_METRIC`]: tries that ended
/// `delivered`, `retrying`, `gave_up` or `gone`; terminal events
/// acknowledged without a delivery (`skipped`); entries that cannot be read,
/// left pending, each time one is seen (`unreadable`).
pub const DELIVERY_OUTCOMES: [&str; 6] = [
    "delivered",
    "retrying",
    "gave_up",
    "gone",
    "skipped",
    "unreadable",
];

/// How many entries of the log at most are scanned for the history of a
/// task whose hash has expired (see `Store::task_events_on_log`).
const LOG_SCAN_LIMIT: usize = 20_000;

/// How many events one read takes at most.
const READ_BATCH: usize = 100;

/// How often idle consumers of the `webhooks` group are removed, and how
/// long one must have been idle (every dispatcher process names a new one).
const CONSUMER_CLEANUP_EVERY: Duration = Duration::from_secs(600);
const CONSUMER_IDLE_LIMIT: Duration = Duration::from_secs(3600);

/// The webhook id of the delivery of `task_id`'s event `event_id`: stable
/// across retries and dispatchers, so receivers can dedupe on it. The
/// event id alone (`<ms>-<seq>`) is unique only within one `events` stream,
/// and two deployments (two Redis servers, or two prefixes on one) posting
/// to one receiver would send different events under one id in the same
/// millisecond; the task id is an xid, unique across machines and
/// processes, so the pair is unique to the event wherever it was written.
pub fn webhook_id(task_id: &TaskId, event_id: &str) -> String {
    format!("msg_{task_id}_{event_id}")
}

/// What one [`Dispatcher::ingest`] step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events read (or taken over).
    pub read: usize,
    /// Deliveries recorded.
    pub enqueued: usize,
}

/// The webhook dispatcher. Cheap to share: the state is in Redis.
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    options: DispatcherOptions,
    backoff: Backoff,
    consumer: String,
    sender: Sender,
    /// Woken when a delivery is recorded or a try ends, so the deliver loop
    /// claims without waiting out its poll.
    wake: Notify,
    /// Where the next reclaim scan of the pending events goes on.
    reclaim_cursor: std::sync::Mutex<String>,
}

impl Dispatcher {
    /// A dispatcher for `[api] webhook_url`, with options from config.
    ///
    /// Returns [`WebhookError::Disabled`] when no URL is configured: the
    /// caller then runs no dispatcher (see [`WebhookError::is_disabled`]).
    /// Fails for a URL that is not http(s) and for a secret that is not
    /// `whsec_` followed by base64 (see [`Signer::from_secret`]).
    pub fn new(store: Store, config: &Config) -> Result<Dispatcher, WebhookError> {
        Dispatcher::with_options(store, config, DispatcherOptions::from_config(config))
    }

    /// Like [`Dispatcher::new`] with explicit options (tests shrink the
    /// backoff, lease and polling).
    pub fn with_options(
        store: Store,
        config: &Config,
        options: DispatcherOptions,
    ) -> Result<Dispatcher, WebhookError> {
        let url = config.api.webhook_url.clone().ok_or(WebhookError::Disabled)?;
        check_url(&url)?;
        options.validate().map_err(WebhookError::InvalidOptions)?;
        let signer = config
            .api
            .webhook_secret
            .as_ref()
            .map(|secret| Signer::from_secret(secret.expose()))
            .transpose()?;
        let sender = Sender::new(url, config.api.token.expose(), signer, &options)?;
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                store,
                backoff: options.backoff(),
                options,
                consumer: consumer_name(),
                sender,
                wake: Notify::new(),
                reclaim_cursor: std::sync::Mutex::new("0-0".to_owned()),
            }),
        })
    }

    /// This dispatcher's consumer name in the `webhooks` group and on its
    /// claims: `<host>-<pid>-<xid>`, new for every dispatcher.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    pub fn options(&self) -> &DispatcherOptions {
        &self.inner.options
    }

    /// Creates the `webhooks` group if missing (at the end of the stream:
    /// see `Store::ensure_webhooks_group`). `run` does it first; tests call
    /// it before the events they want delivered.
    pub async fn ensure_group(&self) -> Result<(), WebhookError> {
        Ok(self.inner.store.ensure_webhooks_group().await?)
    }

    /// Step: reads new events (waiting up to `block`) on `reader`, a store
    /// on a connection of its own, and handles them.
    pub async fn ingest(&self, reader: &Store, block: Duration) -> Result<Ingested, WebhookError> {
        let entries = reader
            .read_events(&self.inner.consumer, READ_BATCH, block)
            .await?;
        self.handle_events(entries).await
    }

    /// Step: takes over events that a consumer read but did not record for
    /// longer than the lease, and handles them.
    pub async fn reclaim_events(&self) -> Result<Ingested, WebhookError> {
        // Taken out for the call: only the ingest loop reclaims.
        let mut cursor = std::mem::take(&mut *self.inner.reclaim_cursor.lock().expect("never poisoned"));
        if cursor.is_empty() {
            cursor = "0-0".to_owned();
        }
        let claimed = self
            .inner
            .store
            .claim_stale_events(
                &self.inner.consumer,
                self.inner.options.lease,
                READ_BATCH,
                &mut cursor,
            )
            .await;
        *self.inner.reclaim_cursor.lock().expect("never poisoned") = cursor;
        let entries = claimed?;
        if !entries.is_empty() {
            info!(
                count = entries.len(),
                "took over webhook events of a dead dispatcher"
            );
        }
        self.handle_events(entries).await
    }

    /// Acknowledges the non-terminal events, and records a delivery
    /// (acknowledging its event in the same call) for each terminal one.
    ///
    /// Terminality is read from the entry's raw `type` and `task` fields
    /// alone, so a terminal event this build cannot decode as a whole (a
    /// newer format version during a rolling upgrade) is still delivered.
    /// An entry with no `type`, or a terminal one with no valid `task`,
    /// cannot be read at all: it is left pending (not acknowledged), with a
    /// warning and `outcome="unreadable"` counted, for a build that can read
    /// it. New reads never return it again, and the reclaim passes over it
    /// (see `Store::claim_stale_events`), so it blocks nothing; while
    /// pending it holds the log's trim at it, so once it is older than the
    /// retention period (the trim's horizon) it is acknowledged and given
    /// up (`outcome="skipped"`, logged as an error): it never keeps the log
    /// longer than retention would anyway.
    ///
    /// A terminal event whose task cannot be read (a corrupt hash, a key of
    /// another type) or whose delivery key is of another type (WRONGTYPE)
    /// is logged and acknowledged without a delivery, and does not hold
    /// back the rest of the batch; any other Redis error (unreachable,
    /// `OOM` at maxmemory with noeviction) fails the step, leaving the
    /// event pending (the batch is taken over again later, and recording a
    /// delivery twice records it once).
    pub async fn handle_events(&self, entries: Vec<EventEntry>) -> Result<Ingested, WebhookError> {
        let mut ingested = Ingested {
            read: entries.len(),
            enqueued: 0,
        };
        let mut acks = Vec::new();
        for entry in entries {
            match classify(&entry) {
                Classified::Terminal(task_id) => {
                    if let Err(why) = &entry.event {
                        debug!(
                            event_id = %entry.id, %why,
                            "a terminal event this build cannot decode whole: delivered from its type and task"
                        );
                    }
                    if self.enqueue(&entry, &task_id).await? {
                        ingested.enqueued += 1;
                    }
                }
                Classified::Other => acks.push(entry.id),
                Classified::Unreadable(why) => {
                    if self.inner.store.is_past_retention(&entry.id) {
                        error!(
                            event_id = %entry.id, why,
                            "giving up an events entry no dispatcher could read within the retention \
                             period: it is acknowledged without a webhook"
                        );
                        metrics::counter!(DELIVERIES_METRIC, "outcome" => "skipped").increment(1);
                        acks.push(entry.id);
                    } else {
                        warn!(
                            event_id = %entry.id, why,
                            "an events entry cannot be read (no type, or no task): left pending for a \
                             dispatcher that can read it; given up once older than the retention period"
                        );
                        metrics::counter!(DELIVERIES_METRIC, "outcome" => "unreadable").increment(1);
                    }
                }
            }
        }
        self.inner.store.ack_events(&acks).await?;
        if ingested.enqueued > 0 {
            self.inner.wake.notify_one();
        }
        Ok(ingested)
    }

    /// Records the delivery of one terminal event, with its body built from
    /// the projection now (a terminal task never changes again).
    async fn enqueue(&self, entry: &EventEntry, task_id: &TaskId) -> Result<bool, WebhookError> {
        let event_id = entry.id.as_str();
        let store = &self.inner.store;
        let record = match store.get(task_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Only an event older than the retention period has no task
                // hash (it expires that long after the end): this dispatcher
                // fell behind. The outcome is still owed: the body is built
                // from what the log holds.
                let body = self.body_from_log(entry, task_id).await?;
                return self.record(entry, task_id, &body).await;
            }
            Err(StoreError::Corrupt(why)) => {
                // The task's hash cannot be decoded (a field another build
                // wrote, a hand edit; the store fails such a task at its
                // start). That is this event's problem alone: answering the
                // error would fail the whole read batch, the reclaim would
                // retry it every lease for ever, and the terminal events
                // after it would never get their webhooks, nor would the
                // log be trimmed past it. The body cannot be built from the
                // event alone (it has no title nor creation time), so the
                // event is acknowledged without a delivery.
                error!(
                    %task_id, event_id, %why,
                    "no webhook for this task: its stored fields in redis cannot be read, so the \
                     event is acknowledged without a delivery; inspect the task's hash (HGETALL) \
                     and create the task again if its outcome matters to the receiver"
                );
                return self.skip_event(event_id).await;
            }
            Err(error) if error.is_wrong_type() => {
                // A Redis error of this task's alone (its key holds another
                // type: WRONGTYPE): like a corrupt hash, it costs this
                // webhook only, never the rest of the batch. Any other
                // error (Redis at maxmemory, down, refusing the command)
                // fails the batch, which is read again: acknowledging it
                // would lose the webhook.
                error!(
                    %task_id, event_id, %error,
                    "no webhook for this task: redis refuses to read its hash, so the event is \
                     acknowledged without a delivery; inspect the task's key (TYPE, HGETALL)"
                );
                return self.skip_event(event_id).await;
            }
            Err(error) => return Err(error.into()),
        };
        self.record(entry, task_id, &body_json(&record.task)).await
    }

    /// Records the delivery of `entry` with `body`, acknowledging the entry.
    async fn record(&self, entry: &EventEntry, task_id: &TaskId, body: &str) -> Result<bool, WebhookError> {
        let webhook_id = webhook_id(task_id, &entry.id);
        let recorded = match self
            .inner
            .store
            .enqueue_webhook(&entry.id, &webhook_id, task_id, body, self.inner.options.span)
            .await
        {
            Ok(recorded) => recorded,
            Err(error) if error.is_wrong_type() => {
                // This event's keys alone are refused (a delivery key of
                // another type): the rest of the batch goes on. Any other
                // error (`OOM` from Redis at maxmemory with noeviction, a
                // refused script) is Redis's, not the event's: the batch
                // fails and is read again, the event kept pending.
                error!(
                    %task_id, event_id = %entry.id, %webhook_id, %error,
                    "recording this webhook's delivery failed: the event is acknowledged without a delivery"
                );
                return self.skip_event(&entry.id).await;
            }
            Err(error) => return Err(error.into()),
        };
        debug!(%webhook_id, %task_id, recorded, "webhook delivery recorded");
        Ok(recorded)
    }

    /// The body of a terminal event whose task's hash has expired, from the
    /// log: the status is the event's type, the error its `error` field
    /// (for a cancel, the last `retrying` event's, which the cancel keeps);
    /// the title is the task's last `resolved` title, else its `created`
    /// one, and the creation time its `created` event's, when those are
    /// still on the log (see `Store::task_events_on_log`). When they were
    /// trimmed, the title is empty and the creation time is the one in the
    /// task's id (whole seconds): the contract has every field present.
    async fn body_from_log(&self, entry: &EventEntry, task_id: &TaskId) -> Result<String, WebhookError> {
        let history = self
            .inner
            .store
            .task_events_on_log(task_id, &entry.id, LOG_SCAN_LIMIT)
            .await?;
        let created = history.iter().find(|event| event.kind() == Some("created"));
        let title = history
            .iter()
            .rev()
            .find(|event| event.kind() == Some("resolved"))
            .or(created)
            .map_or("", |event| event.field("title"));
        // A cancel keeps the error of the task's last retry (the projection
        // does: see `Task::apply`); the failed event carries its own.
        let error = if entry.kind() == Some("canceled") {
            history
                .iter()
                .rev()
                .find(|event| event.kind() == Some("retrying"))
                .map_or("", |event| event.field("error"))
        } else {
            entry.field("error")
        };
        let created_at = created
            .and_then(|event| event.field("at").parse::<Millis>().ok())
            .or_else(|| task_id.created_ms())
            .unwrap_or_default();
        warn!(
            %task_id, event_id = %entry.id, created_on_log = created.is_some(),
            "the task's projection had expired (the webhook dispatcher fell behind by more than \
             [queue] retention_hours): its webhook body is built from the log"
        );
        Ok(body_of(
            task_id.as_str(),
            entry.kind().unwrap_or_default(),
            title,
            created_at,
            error,
        ))
    }

    /// Acknowledges a terminal event that gets no delivery (the caller has
    /// logged why), counting it as skipped; answers that nothing was recorded.
    async fn skip_event(&self, event_id: &str) -> Result<bool, WebhookError> {
        metrics::counter!(DELIVERIES_METRIC, "outcome" => "skipped").increment(1);
        self.inner.store.ack_events(&[event_id.to_owned()]).await?;
        Ok(false)
    }

    /// Step: claims up to `concurrency` due deliveries, tries them all at
    /// once and records the results. Returns how many it tried.
    pub async fn deliver_due(&self) -> Result<usize, WebhookError> {
        let claim = self
            .inner
            .store
            .claim_due_webhooks(
                &self.inner.consumer,
                self.inner.options.concurrency,
                self.inner.options.lease,
            )
            .await?;
        let claimed = counted_claim(claim);
        let count = claimed.len();
        let mut tries = JoinSet::new();
        for claimed_webhook in claimed {
            let inner = Arc::clone(&self.inner);
            tries.spawn(async move { inner.deliver(claimed_webhook).await });
        }
        while let Some(joined) = tries.join_next().await {
            if let Ok(Err(error)) = joined {
                log_unrecorded(&error);
            }
        }
        Ok(count)
    }

    /// Step: one try of a claimed delivery, and its result recorded.
    /// Returns the state the delivery is left in.
    pub async fn deliver(&self, claimed: ClaimedWebhook) -> Result<WebhookState, WebhookError> {
        self.inner.deliver(claimed).await
    }

    /// Runs until `shutdown` is cancelled: ingest and deliver (see the
    /// module docs). On shutdown it stops claiming and reading, lets the
    /// tries in flight finish (each is bounded by the request timeout) and
    /// records them; a try cut short by a harder stop is left claimed and
    /// another dispatcher takes it over after the lease.
    ///
    /// Fails only at start, when Redis refuses to create the group or open
    /// the reading connection (a refused password, a key of the wrong
    /// type); a Redis that does not answer is waited for there, and later
    /// Redis errors are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebhookError> {
        // A Redis outage stops no process (ARCHITECTURE.md): a worker whose
        // dispatcher failed here would exit, so start-up waits out errors
        // that time mends, as the ingest loop does.
        let mut failures = 0u32;
        let reader = loop {
            let started = async {
                self.ensure_group().await?;
                Ok::<_, WebhookError>(self.inner.store.with_own_connection().await?)
            }
            .await;
            match started {
                Ok(reader) => break reader,
                Err(WebhookError::Store(error)) if error.is_transient() => {
                    failures += 1;
                    warn!(%error, "starting the webhook dispatcher: redis is not answering; trying again");
                    pause(error_backoff(failures), &shutdown).await;
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error),
            }
        };
        info!(
            consumer = %self.inner.consumer,
            host = %self.inner.sender.host(),
            concurrency = self.inner.options.concurrency,
            "webhook dispatcher started"
        );
        tokio::join!(self.ingest_loop(&reader, &shutdown), self.deliver_loop(&shutdown));
        info!(consumer = %self.inner.consumer, "webhook dispatcher stopped");
        Ok(())
    }

    async fn ingest_loop(&self, reader: &Store, shutdown: &CancellationToken) {
        let reclaim_every = (self.inner.options.lease / 2).max(Duration::from_millis(50));
        let mut last_reclaim: Option<Instant> = None;
        let mut last_cleanup = Instant::now();
        let mut failures = 0u32;
        // The read is never cancelled mid-way: events it took would be left
        // pending on this consumer until the lease ran out. It blocks for at
        // most `idle_poll`, which bounds how late shutdown is noticed.
        while !shutdown.is_cancelled() {
            let step = async {
                if last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every) {
                    self.reclaim_events().await?;
                    last_reclaim = Some(Instant::now());
                }
                if last_cleanup.elapsed() >= CONSUMER_CLEANUP_EVERY {
                    last_cleanup = Instant::now();
                    let removed = self
                        .inner
                        .store
                        .remove_idle_webhook_consumers(CONSUMER_IDLE_LIMIT)
                        .await?;
                    if !removed.is_empty() {
                        debug!(?removed, "removed idle webhook consumers");
                    }
                }
                self.ingest(reader, self.inner.options.idle_poll).await
            };
            // A blocked read returns within `idle_poll` when Redis answers.
            let Some(result) = unless_stuck(step, shutdown, self.inner.options.idle_poll).await else {
                debug!("redis did not answer the event read during shutdown: leaving it to the lease");
                break;
            };
            match result {
                Ok(_) => failures = 0,
                Err(error) => {
                    failures += 1;
                    warn!(%error, "reading events for webhooks failed; retrying");
                    if error.to_string().contains("NOGROUP") {
                        // Redis lost the group (a restart without persistence):
                        // it is created again at the start of the stream, whose
                        // every entry came after the loss (at `$`, the terminal
                        // events written since the loss would be skipped).
                        warn!("the webhooks group is gone (redis lost its data?): creating it again from the start of the events stream");
                        if let Err(error) = self.inner.store.recreate_webhooks_group().await {
                            warn!(%error, "re-creating the webhooks group failed");
                        }
                    }
                    pause(error_backoff(failures), shutdown).await;
                }
            }
        }
    }

    async fn deliver_loop(&self, shutdown: &CancellationToken) {
        let options = &self.inner.options;
        let slots = Arc::new(Semaphore::new(options.concurrency));
        let mut tries: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        loop {
            while tries.try_join_next().is_some() {}
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                // The semaphore is never closed, so acquiring cannot fail.
                permit = Arc::clone(&slots).acquire_owned() => permit.expect("the slots semaphore is never closed"),
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }
            let claim =
                self.inner
                    .store
                    .claim_due_webhooks(&self.inner.consumer, permits.len(), options.lease);
            let Some(claim) = unless_stuck(claim, shutdown, Duration::ZERO).await else {
                debug!("redis did not answer the claim during shutdown: leaving it to the lease");
                break;
            };
            let claimed = match claim {
                Ok(claim) => {
                    failures = 0;
                    counted_claim(claim)
                }
                Err(error) => {
                    failures += 1;
                    warn!(%error, "claiming due webhooks failed; retrying");
                    drop(permits);
                    pause(error_backoff(failures), shutdown).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                drop(permits);
                let Some(sleep) = unless_stuck(self.time_to_next_due(), shutdown, Duration::ZERO).await
                else {
                    break;
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.inner.wake.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
                continue;
            }
            // Surplus permits (fewer deliveries were due) are dropped here.
            for (claimed_webhook, permit) in claimed.into_iter().zip(permits) {
                let inner = Arc::clone(&self.inner);
                tries.spawn(async move {
                    if let Err(error) = inner.deliver(claimed_webhook).await {
                        log_unrecorded(&error);
                    }
                    drop(permit);
                    inner.wake.notify_one();
                });
            }
        }
        // Dropping the set (a harder stop) would abort the tries; on a
        // graceful one they finish, bounded by the request timeout.
        while tries.join_next().await.is_some() {}
    }

    /// How long to sleep after a claim that found nothing due: see
    /// [`wait_after_empty_claim`].
    async fn time_to_next_due(&self) -> Duration {
        let poll = self.inner.options.idle_poll;
        match self.inner.store.next_webhook_due().await {
            Ok(next_due) => wait_after_empty_claim(next_due, Store::now_ms(), poll),
            Err(_) => poll,
        }
    }
}

/// The shortest sleep after a claim that found nothing due (unless
/// `idle_poll` is shorter still).
///
/// Due times are Redis' clock (`TIME`, in the library), `now` is this
/// host's. On a host whose clock is ahead of Redis', a retry looks due
/// before Redis hands it out; without a floor the loop would claim and read
/// the due set every millisecond until Redis' clock caught up. The cost is
/// that a retry may start up to this much after its due time, which no
/// backoff measured in seconds notices.
pub const MIN_EMPTY_CLAIM_WAIT: Duration = Duration::from_millis(100);

/// How long the deliver loop sleeps after a claim that found nothing due:
/// until the earliest due time `next_due` (Redis' clock, compared with this
/// host's `now`), but at least [`MIN_EMPTY_CLAIM_WAIT`] and at most `poll`.
/// A claimed delivery counts at its lease's end, which is harmless: the
/// finished try wakes the loop anyway.
pub fn wait_after_empty_claim(next_due: Option<Millis>, now: Millis, poll: Duration) -> Duration {
    let floor = MIN_EMPTY_CLAIM_WAIT.min(poll);
    let until_due = match next_due {
        Some(due) => Duration::from_millis(due.saturating_sub(now).max(0) as u64),
        None => poll,
    };
    until_due.clamp(floor, poll)
}

impl Inner {
    async fn deliver(&self, claimed: ClaimedWebhook) -> Result<WebhookState, WebhookError> {
        let answer = self.sender.send(&claimed.webhook_id, &claimed.body).await;
        let result = decide(
            &answer,
            claimed.attempt,
            &self.options,
            &self.backoff,
            rand::random(),
        );
        let recorded = self
            .store
            .record_webhook(&claimed, &self.consumer, result, answer.status, &answer.error)
            .await;
        let state = match recorded {
            Ok(state) => state,
            Err(StoreError::LeaseLost(why)) => {
                // The claim outlived its lease and another dispatcher took
                // the delivery over; its result is the one that counts.
                debug!(webhook_id = %claimed.webhook_id, %why, "webhook result dropped: claim taken over");
                return Err(StoreError::LeaseLost(why).into());
            }
            Err(error) => return Err(error.into()),
        };
        metrics::counter!(DELIVERIES_METRIC, "outcome" => state.as_str()).increment(1);
        let status = answer.status.map(|status| status.to_string()).unwrap_or_default();
        match state {
            WebhookState::Delivered => debug!(
                webhook_id = %claimed.webhook_id, task_id = %claimed.task_id,
                attempt = claimed.attempt, "webhook delivered"
            ),
            WebhookState::Retrying => info!(
                webhook_id = %claimed.webhook_id, task_id = %claimed.task_id,
                attempt = claimed.attempt, %status, error = %answer.error, "webhook try failed; retrying"
            ),
            _ => warn!(
                webhook_id = %claimed.webhook_id, task_id = %claimed.task_id,
                attempt = claimed.attempt, %status, error = %answer.error, state = state.as_str(),
                "webhook delivery given up"
            ),
        }
        Ok(state)
    }
}

/// The result of a try: see the module docs. `unit` is a uniform random
/// number in `[0, 1)` for the jitter.
pub fn decide(
    answer: &Answer,
    attempt: u32,
    options: &DispatcherOptions,
    backoff: &Backoff,
    unit: f64,
) -> WebhookResult {
    if answer.is_success() {
        return WebhookResult::Delivered;
    }
    if answer.status == Some(410) {
        return WebhookResult::Gone;
    }
    if attempt >= options.max_attempts {
        return WebhookResult::GaveUp;
    }
    // `Retry-After` only ever lengthens the wait. Taken alone, a receiver
    // that answers `Retry-After: 0` while it is down would get every try
    // within seconds and the delivery would give up, where the schedule
    // would have kept trying for the whole span.
    let scheduled = backoff.delay(attempt, unit);
    let delay = answer.retry_after.map_or(scheduled, |asked| asked.max(scheduled));
    WebhookResult::Retry { delay }
}

/// Logs a try whose result could not be recorded. A lost claim was logged
/// where it was found (another dispatcher owns the delivery now); any other
/// failure leaves the claim to expire, and the try is made again.
fn log_unrecorded(error: &WebhookError) {
    if !matches!(error, WebhookError::Store(StoreError::LeaseLost(_))) {
        warn!(%error, "recording a webhook result failed; the try is repeated after the lease");
    }
}

/// What the dispatcher makes of an entry of the `events` stream, from its
/// raw fields.
#[derive(Debug, PartialEq, Eq)]
enum Classified {
    /// A `completed`, `failed` or `canceled` event of this task.
    Terminal(TaskId),
    /// Any other type, known to this build or not: no webhook.
    Other,
    /// No `type`, or a terminal type without a valid `task`: why.
    Unreadable(&'static str),
}

fn classify(entry: &EventEntry) -> Classified {
    match entry.kind() {
        None => Classified::Unreadable("the entry has no `type` field"),
        Some("completed" | "failed" | "canceled") => match entry.task_id() {
            Some(task_id) => Classified::Terminal(task_id),
            None => Classified::Unreadable("a terminal entry without a valid `task` field"),
        },
        Some(_) => Classified::Other,
    }
}

/// Waits `delay` or until shutdown, whichever comes first.
async fn pause(delay: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// The deliveries a claim got to try, counting the unreadable records it
/// gave up as `outcome="gave_up"`.
fn counted_claim(claim: WebhookClaim) -> Vec<ClaimedWebhook> {
    if claim.given_up > 0 {
        metrics::counter!(DELIVERIES_METRIC, "outcome" => "gave_up").increment(claim.given_up as u64);
    }
    claim.claimed
}

/// 100 ms, doubling per consecutive Redis failure, at most 5 s.
fn error_backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

/// `<host>-<pid>-<xid>`: readable in `XINFO CONSUMERS`, unique per dispatcher.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}-{}", std::process::id(), xid::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use savestream_shared::config::Config;

    fn answer(status: Option<u16>, retry_after: Option<Duration>) -> Answer {
        Answer {
            status,
            retry_after,
            error: String::new(),
        }
    }

    fn decide_default(answer: &Answer, attempt: u32) -> WebhookResult {
        let options = DispatcherOptions::from_config(&Config::default());
        decide(answer, attempt, &options, &options.backoff(), 0.5)
    }

    #[test]
    fn a_2xx_is_delivered_whatever_the_attempt() {
        assert_eq!(
            decide_default(&answer(Some(204), None), 10),
            WebhookResult::Delivered
        );
        assert_eq!(
            decide_default(&answer(Some(200), None), 1),
            WebhookResult::Delivered
        );
    }

    #[test]
    fn a_410_gives_up_at_once() {
        assert_eq!(decide_default(&answer(Some(410), None), 1), WebhookResult::Gone);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503() {
        let delay = Duration::from_secs(42);
        for status in [429, 503] {
            assert_eq!(
                decide_default(&answer(Some(status), Some(delay)), 1),
                WebhookResult::Retry { delay }
            );
        }
    }

    #[test]
    fn a_retry_after_shorter_than_the_backoff_waits_the_backoff() {
        let options = DispatcherOptions::from_config(&Config::default());
        let backoff = options.backoff();
        for attempt in [1, 5, 9] {
            let scheduled = backoff.delay(attempt, 0.5);
            for retry_after in [Duration::ZERO, Duration::from_secs(1)] {
                for status in [429, 503] {
                    assert_eq!(
                        decide_default(&answer(Some(status), Some(retry_after)), attempt),
                        WebhookResult::Retry { delay: scheduled },
                        "status {status}, Retry-After {retry_after:?}, attempt {attempt}"
                    );
                }
            }
        }
    }

    #[test]
    fn failures_follow_the_backoff_until_the_last_attempt() {
        assert_eq!(
            decide_default(&answer(Some(500), None), 1),
            WebhookResult::Retry {
                delay: Duration::from_secs(5)
            }
        );
        assert!(matches!(
            decide_default(&answer(None, None), 9),
            WebhookResult::Retry { .. }
        ));
        assert_eq!(decide_default(&answer(None, None), 10), WebhookResult::GaveUp);
        assert_eq!(
            decide_default(&answer(Some(503), Some(Duration::ZERO)), 10),
            WebhookResult::GaveUp
        );
    }

    #[test]
    fn a_delivery_that_looks_overdue_on_a_fast_clock_does_not_make_the_loop_spin() {
        let poll = Duration::from_secs(1);
        let now = 1_700_000_000_000;

        // This host is 5 s ahead of Redis: the earliest delivery looks 5 s
        // overdue, yet the claim found nothing due.
        let wait = wait_after_empty_claim(Some(now - 5_000), now, poll);

        assert!(wait >= Duration::from_millis(100), "waits only {wait:?}");
        assert_eq!(wait_after_empty_claim(Some(now), now, poll), MIN_EMPTY_CLAIM_WAIT);
    }

    #[test]
    fn the_wait_after_an_empty_claim_runs_to_the_next_due_time_within_the_poll() {
        let poll = Duration::from_secs(1);
        let now = 1_700_000_000_000;

        assert_eq!(
            wait_after_empty_claim(Some(now + 300), now, poll),
            Duration::from_millis(300)
        );
        assert_eq!(wait_after_empty_claim(Some(now + 60_000), now, poll), poll);
        assert_eq!(wait_after_empty_claim(None, now, poll), poll);
        let short_poll = Duration::from_millis(50);
        assert_eq!(
            wait_after_empty_claim(Some(now - 5_000), now, short_poll),
            short_poll
        );
    }

    #[test]
    fn consumer_names_are_unique_per_dispatcher() {
        let (first, second) = (consumer_name(), consumer_name());
        assert_ne!(first, second);
        assert!(first.contains(&format!("-{}-", std::process::id())));
    }

    #[test]
    fn webhook_ids_of_events_with_one_stream_id_in_two_deployments_differ() {
        let (one, other) = (TaskId::generate(), TaskId::generate());

        assert_ne!(
            webhook_id(&one, "1795856003643-0"),
            webhook_id(&other, "1795856003643-0")
        );
        assert_eq!(
            webhook_id(&one, "1795856003643-0"),
            format!("msg_{one}_1795856003643-0"),
            "stable: the same event always gets the same id"
        );
    }
}
