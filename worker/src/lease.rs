//! Keeping leases alive and the queue moving: the heartbeat, the reaper,
//! the retry promoter and the hourly housekeeping.
//!
//! - [`heartbeat`] renews, every third of a lease, the lease of every work
//!   item this process holds, so only a dead worker's items expire; stops
//!   the attempt of an item another worker took over; and registers the
//!   process in the registry of live workers (its `WorkerInfo`, with the
//!   tasks it holds at that moment).
//! - [`Reaper`] claims items idle past the lease (their worker is gone) for
//!   free slots; the intake loop runs it every half lease.
//! - [`promote`] moves tasks whose retry backoff is over back onto the
//!   queue. Redis' clock decides what is due; this process's clock only
//!   sets how long to sleep (between 200 ms and 1 s) while any retry
//!   waits, so clock skew neither delays retries nor makes it poll fast.
//! - [`housekeeping`] trims the event log to the retention horizon and
//!   removes consumers of dead workers that hold nothing, once an hour.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use savestream_shared::store::queue::Job;
use savestream_shared::store::WorkerInfo;
use savestream_shared::store::{Store, StoreError};
use savestream_shared::task::TaskStatus;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::metrics;
use crate::running::Holder;

/// The longest the promoter sleeps without looking for due retries: how
/// late a retry can be when this process's clock is behind Redis'.
pub const PROMOTER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// The shortest sleep between the promoter's rounds while a retry waits:
/// how often it asks Redis when this process's clock runs ahead of Redis'.
pub const PROMOTER_MIN_SLEEP: Duration = Duration::from_millis(200);
/// How many due tasks one promoter call moves.
const PROMOTE_BATCH: usize = 100;
/// How often the housekeeping runs.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// A consumer idle this long with nothing pending belongs to a gone worker.
pub const IDLE_CONSUMER_AGE: Duration = Duration::from_secs(60 * 60);
/// How many attempts in a row may die under their worker (each taken over
/// once its lease expired) before the task fails instead of starting again.
/// A file that crashes or freezes the worker that runs it would otherwise
/// take down the whole fleet, one worker per lease, forever; an attempt
/// that fails or is released queues a new work item and starts the count
/// again. Five leaves room for a worker killed by its host and for a Redis
/// outage longer than a lease, which also expires the leases of the
/// attempts under way.
pub const DEATHS_IN_A_ROW: u32 = 5;

/// Renews the leases of the items this process holds and registers
/// `registration` (with the tasks held now), at once and then every third
/// of a lease, until `stop`.
pub async fn heartbeat(context: Arc<Context>, registration: WorkerInfo, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(context.lease() / 3);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut registered = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // The holders are read before the renewal: an item the reaper hands
        // back to this process while the renewal is in flight belongs to a
        // new attempt, which a takeover seen by this renewal must not stop.
        let holders: HashMap<String, Holder> = context.running.holders().into_iter().collect();
        if !holders.is_empty() {
            let job_ids: Vec<String> = holders.keys().cloned().collect();
            match context.store.heartbeat(&context.consumer, &job_ids).await {
                // Items no longer pending to this consumer are not renewed
                // (that would pull a taken-over item back).
                Ok(lost) => {
                    for job_id in lost {
                        if let Some(holder) = holders.get(&job_id) {
                            stop_if_taken_over(&context, &job_id, holder).await;
                        }
                    }
                }
                Err(error) => {
                    count_redis_error(&error);
                    warn!(%error, held = job_ids.len(), "cannot renew leases");
                }
            }
        }
        let info = WorkerInfo {
            tasks: context.running.task_ids(),
            ..registration.clone()
        };
        match context.store.register_worker(&info).await {
            Ok(()) => {
                if !registered {
                    debug!(name = %info.name, "registered in the registry of live workers");
                }
                registered = true;
            }
            Err(error) => {
                count_redis_error(&error);
                // The registry is for operators; nothing waits on it.
                debug!(%error, "cannot register in the registry of live workers");
            }
        }
    }
}

/// Stops the attempt holding `job_id` if another worker took the item over.
///
/// The heartbeat reports every item that is no longer pending to this
/// consumer, and most of those are no takeover: the attempt's own
/// transition acknowledged it (`completed`, `failed`, a retry, a release, a
/// discard) while it tidies up, or the task was canceled (the cancel
/// message or the next progress write stops the attempt, which then
/// removes the partial files). Only a task that is still running can have
/// been taken over; its attempt stops writing at once, without waiting
/// for its next fenced progress write, since the new holder may be
/// appending to the same partial file, and it leaves that file alone.
async fn stop_if_taken_over(context: &Context, job_id: &str, holder: &Holder) {
    if !context.running.is_writing(job_id, holder) {
        debug!(
            job_id,
            "a work item acknowledged by its own attempt, which is ending (or was handed to a newer one)"
        );
        return;
    }
    match context.store.get(&holder.task_id).await {
        Ok(Some(record)) if record.task.status == TaskStatus::Running => {
            if context.running.lose(job_id, holder) {
                warn!(
                    job_id,
                    task_id = %holder.task_id,
                    attempt = record.task.attempt,
                    holder = record.task.worker.as_deref().unwrap_or("unknown"),
                    "lease lost to another worker: stopping this attempt and leaving the partial file to the new holder"
                );
            }
        }
        Ok(record) => debug!(
            job_id,
            task_id = %holder.task_id,
            status = ?record.map(|record| record.task.status),
            "a work item no longer pending because its task left the running state: its attempt learns it by itself"
        ),
        Err(error) => {
            count_redis_error(&error);
            debug!(%error, job_id, "cannot read the task of a work item no longer pending: its next progress write tells the attempt");
        }
    }
}

/// Counts a store failure that means Redis did not answer.
pub fn count_redis_error(error: &StoreError) {
    if matches!(error, StoreError::Unavailable(_)) {
        metrics::redis_error();
    }
}

/// When the intake loop should look for expired items, and the claim.
pub struct Reaper {
    every: Duration,
    next: Instant,
}

impl Reaper {
    /// A reaper that is due at once (a worker starting after a crash finds
    /// its predecessor's items) and then every `every`.
    pub fn new(every: Duration) -> Reaper {
        Reaper {
            every,
            next: Instant::now(),
        }
    }

    pub fn is_due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Claims up to `free` items idle past the lease.
    pub async fn claim(&mut self, context: &Context, free: usize) -> Vec<Job> {
        self.next = Instant::now() + self.every;
        match context.store.claim_expired(&context.consumer, free).await {
            Ok(jobs) => {
                if !jobs.is_empty() {
                    info!(
                        claimed = jobs.len(),
                        "claimed work items whose worker stopped renewing them"
                    );
                }
                jobs
            }
            Err(error) => {
                debug!(%error, "cannot claim expired work items");
                Vec::new()
            }
        }
    }
}

/// Moves due retries onto the queue until `stop`.
pub async fn promote(store: Store, stop: CancellationToken) {
    promote_with_clock(store, stop, Store::now_ms).await
}

/// [`promote`], with `local_now` as this process's clock (milliseconds
/// since the epoch), so tests can give it a skewed one.
///
/// Due times are Redis' clock, and only Redis decides what is due: while
/// anything waits out a backoff, every round asks it to promote. This
/// process's clock only sets how long to sleep until the next round, never
/// whether to ask, and the sleep is kept between [`PROMOTER_MIN_SLEEP`] and
/// [`PROMOTER_MAX_SLEEP`]: with a clock behind Redis' a retry is late by at
/// most the longest sleep, not by the skew, and with one ahead the
/// promoter asks at most every shortest sleep.
pub async fn promote_with_clock(store: Store, stop: CancellationToken, local_now: impl Fn() -> i64) {
    loop {
        let sleep = match store.next_due().await {
            Ok(Some(due)) => match store.promote_due(PROMOTE_BATCH).await {
                // More may be due at once: look again right away.
                Ok(promoted) if promoted > 0 => {
                    debug!(promoted, "queued tasks whose backoff is over");
                    continue;
                }
                // Nothing is due yet by Redis' clock.
                Ok(_) => {
                    let wait = Duration::from_millis(due.saturating_sub(local_now()).max(0) as u64);
                    wait.clamp(PROMOTER_MIN_SLEEP, PROMOTER_MAX_SLEEP)
                }
                Err(error) => {
                    debug!(%error, "cannot promote due retries");
                    PROMOTER_MAX_SLEEP
                }
            },
            Ok(None) => PROMOTER_MAX_SLEEP,
            Err(error) => {
                debug!(%error, "cannot look for due retries");
                PROMOTER_MAX_SLEEP
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Trims the log and removes dead consumers, now and then hourly, until `stop`.
pub async fn housekeeping(store: Store, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.trim_log().await {
            Ok(trimmed) if trimmed > 0 => info!(trimmed, "trimmed the event log to the retention horizon"),
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot trim the event log"),
        }
        match store.remove_idle_consumers(IDLE_CONSUMER_AGE).await {
            Ok(removed) if !removed.is_empty() => {
                info!(?removed, "removed consumers of stopped workers that held nothing")
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot remove idle consumers"),
        }
    }
}
