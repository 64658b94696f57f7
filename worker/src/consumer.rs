//! The intake loop: takes work items for free task slots and runs each in
//! a task of its own.
//!
//! A semaphore holds one permit per slot (`workers` in config.toml). The
//! loop waits for at least one free slot, takes every free one, and asks
//! for exactly that many items: first expired ones the reaper finds
//! (`XAUTOCLAIM`, every half lease), then new ones with `XREADGROUP ...
//! BLOCK`, so an idle worker is woken by Redis the moment a task arrives,
//! with no polling. Each item keeps its permit until its attempt ends.
//!
//! [`run_job`] is what happens to one item: start the attempt, run the
//! pipeline, and discard items that must not run.

use std::sync::Arc;
use std::time::Duration;

use savestream_shared::shutdown::unless_stuck;
use savestream_shared::store::queue::Job;
use savestream_shared::store::{Store, StoreError};
use savestream_shared::task::TaskStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, field, info, warn, Instrument};

use crate::context::Context;
use crate::lease::{count_redis_error, Reaper, DEATHS_IN_A_ROW};
use crate::metrics::{self, Ended};
use crate::pipeline::{self, Outcome};
use crate::source::shown_link;

/// How long one `XREADGROUP` waits for a new item. It bounds how late the
/// reaper runs on an idle worker and how long shutdown waits for the read.
pub const BLOCK: Duration = Duration::from_secs(2);

/// Runs the intake loop until `intake` is canceled. Items already read
/// when it is are still run (the shutdown grace period covers them).
pub async fn run(
    context: Arc<Context>,
    reader: Store,
    slots: Arc<Semaphore>,
    intake: CancellationToken,
    tasks: TaskTracker,
) {
    let mut reaper = Reaper::new(context.lease() / 2);
    let mut failures: u32 = 0;
    loop {
        let first = tokio::select! {
            biased;
            _ = intake.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; if it were, there would be no slot to fill.
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }

        if reaper.is_due() {
            for job in reaper.claim(&context, permits.len()).await {
                if let Some(permit) = permits.pop() {
                    dispatch(&context, &tasks, job, permit);
                }
            }
            if permits.is_empty() {
                continue;
            }
        }

        let read = reader.read_jobs(&context.consumer, permits.len(), BLOCK);
        let Some(read) = unless_stuck(read, &intake, BLOCK).await else {
            debug!("redis did not answer the read of work items during shutdown: leaving it to the lease");
            break;
        };
        match read {
            Ok(jobs) => {
                if failures > 0 {
                    info!("redis is reachable again: taking work");
                }
                failures = 0;
                for job in jobs {
                    if let Some(permit) = permits.pop() {
                        dispatch(&context, &tasks, job, permit);
                    }
                }
            }
            Err(error) => {
                drop(permits);
                count_redis_error(&error);
                failures += 1;
                let delay = read_backoff(failures);
                if failures == 1 {
                    warn!(%error, "cannot read work items: retrying every {delay:?} or so until redis answers");
                } else {
                    debug!(%error, failures, "cannot read work items");
                }
                // A Redis that restarted without persistence lost the
                // group; reading again without it would fail forever.
                if error.to_string().contains("NOGROUP") {
                    if let Err(error) = context.store.ensure_group().await {
                        debug!(%error, "cannot create the workers group yet");
                    }
                }
                tokio::select! {
                    _ = intake.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    debug!("intake stopped");
}

/// 100 ms, doubling up to 2 s: quick to notice Redis is back, and no
/// flood of attempts while it is not.
fn read_backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(5);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(Duration::from_secs(2))
}

/// Runs `job` in a task of its own, holding `permit` until it ends.
pub fn dispatch(context: &Arc<Context>, tasks: &TaskTracker, job: Job, permit: OwnedSemaphorePermit) {
    let context = context.clone();
    tasks.spawn(async move {
        run_job(&context, job).await;
        drop(permit);
    });
}

/// Starts the attempt `job` stands for and runs it to its end.
pub async fn run_job(context: &Context, job: Job) {
    let task_id = match &job.task_id {
        Ok(task_id) => task_id.clone(),
        Err(raw) => {
            warn!(job_id = %job.job_id, content = %raw, "discarding a work item that names no valid task");
            discard(context, &job.job_id).await;
            return;
        }
    };
    let span = tracing::info_span!("task", task_id = %task_id, attempt = field::Empty);
    async move {
        // Registered before the start, so the lease is renewed from the first moment.
        let running = context.running.register(&job.job_id, &task_id);
        let lease = match context.store.start_job(&job, &context.consumer).await {
            Ok(lease) => lease,
            Err(StoreError::Ended { status, .. }) => {
                debug!(%status, "the task has ended already: discarding its work item");
                running.signals.ending();
                discard(context, &job.job_id).await;
                if status == TaskStatus::Canceled {
                    // Canceled after this worker read the item: its cancel
                    // listener took the task for one that runs here, so it
                    // left what earlier attempts left to this attempt, which
                    // will not run.
                    context.leftovers().remove(&task_id).await;
                }
                return;
            }
            Err(error @ (StoreError::NotFound(_) | StoreError::LeaseLost(_))) => {
                debug!(%error, "the work item is obsolete: discarding it");
                running.signals.ending();
                discard(context, &job.job_id).await;
                return;
            }
            Err(
                error @ (StoreError::Corrupt(_)
                | StoreError::AlreadyExists(_)
                | StoreError::IdempotencyKeyReused { .. }),
            ) => {
                error!(%error, "cannot read the task: discarding its work item");
                running.signals.ending();
                discard(context, &job.job_id).await;
                return;
            }
            Err(StoreError::Unavailable(error)) => {
                metrics::redis_error();
                // Not renewed from now on, the item is claimed again once
                // its lease expires, by this worker or another.
                drop(running);
                warn!(%error, "cannot start the task: redis is unavailable; it is claimed again after the lease");
                return;
            }
        };
        tracing::Span::current().record("attempt", lease.attempt);
        info!(link = %shown_link(&lease.task.link), storage = %lease.task.storage, "started");
        let source = lease.task.source;
        metrics::task_started(source);
        if lease.attempt == 1 {
            let started_at = lease.task.started_at.unwrap_or_else(Store::now_ms);
            let waited = started_at.saturating_sub(lease.task.created_at).max(0);
            metrics::task_waited(source, Duration::from_millis(waited as u64));
        }
        let started = std::time::Instant::now();
        // Every claim in a row stands for one attempt that died: the one
        // that read the item first, then each takeover but this one.
        let outcome = if job.takeovers >= DEATHS_IN_A_ROW {
            pipeline::fail_deaths_in_a_row(context, &lease, &running.signals, job.takeovers).await
        } else {
            pipeline::process(context, &lease, &running.signals).await
        };
        observe(&outcome, source, started.elapsed());
        if outcome == Outcome::Vanished {
            running.signals.ending();
            discard(context, &job.job_id).await;
        }
        drop(running);
    }
    .instrument(span)
    .await
}

/// The one place every attempt's outcome passes: the log line and the
/// counters.
fn observe(outcome: &Outcome, source: savestream_shared::task::SourceKind, elapsed: Duration) {
    let ended = match outcome {
        Outcome::Completed { .. } => Some(Ended::Completed),
        Outcome::Failed { .. } => Some(Ended::Failed),
        Outcome::Canceled => Some(Ended::Canceled),
        Outcome::Retrying { .. } => Some(Ended::Retried),
        // Not this attempt's doing: another holder, the shutdown, or Redis.
        Outcome::Released
        | Outcome::LeaseLost
        | Outcome::Ended(_)
        | Outcome::Vanished
        | Outcome::StoreUnavailable => None,
    };
    if let Some(ended) = ended {
        metrics::task_ended(source, ended, elapsed);
    }
    match outcome {
        Outcome::Completed { bytes, fetched } => {
            let seconds = elapsed.as_secs_f64().max(0.001);
            // The speed of what this attempt fetched in `elapsed`: the bytes
            // a resumed attempt found in its partial files came earlier.
            info!(
                bytes,
                fetched,
                seconds = (seconds * 1000.0).round() / 1000.0,
                bytes_per_second = (*fetched as f64 / seconds) as u64,
                "completed"
            );
        }
        other => debug!(outcome = ?other, seconds = elapsed.as_secs_f64(), "attempt over"),
    }
}

async fn discard(context: &Context, job_id: &str) {
    if let Err(error) = context.store.discard_job(job_id).await {
        warn!(%error, job_id, "cannot discard a work item; it is claimed again after the lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_failures_back_off_from_100_ms_to_2_s() {
        assert_eq!(read_backoff(1), Duration::from_millis(100));
        assert_eq!(read_backoff(2), Duration::from_millis(200));
        assert_eq!(read_backoff(5), Duration::from_millis(1600));
        assert_eq!(read_backoff(6), Duration::from_secs(2));
        assert_eq!(read_backoff(u32::MAX), Duration::from_secs(2));
    }
}
