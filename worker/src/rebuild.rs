//! `savestream-worker rebuild`: the operator's door to
//! [`Store::rebuild`], which recomputes the projection (task hashes and the
//! `queued`, `running` and `delayed` sets) from the event log after the
//! projection was lost or damaged.
//!
//! A rebuild must run with no process writing: a transition made while it
//! runs can be overwritten by what it read before. Worker processes are
//! registered in `{p}:workers` (the heartbeat's [`Store::register_worker`]),
//! so [`run`] refuses while any is registered as live, naming them, unless
//! forced (a worker that crashed stays registered for
//! [`Store::worker_horizon`] after its last heartbeat). API processes are in
//! no registry: the operator is told to stop them too, and this cannot check
//! it. The check is made once, before the rebuild: a worker started after it
//! is not seen.
//!
//! Nothing here prints `[redis] url` as written: it may hold a password,
//! and only [`RedisConfig::shown_url`](savestream_shared::config::RedisConfig::shown_url)
//! (password redacted) reaches a message.

use std::time::Duration;

use savestream_shared::config::Config;
use savestream_shared::store::{RebuildReport, Store, StoreError, WorkerInfo};

/// Why a rebuild did not run, or did not finish. Each message is complete on
/// its own line, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("cannot connect to redis at {url}: {error}")]
    Connect { url: String, error: StoreError },
    #[error("cannot read the registry of live workers on redis at {url}: {error}; nothing was rebuilt")]
    Registry { url: String, error: StoreError },
    #[error(
        "refusing to rebuild: {} registered as live, and a process writing would race the rebuild: {}. \
         Stop the workers and the API first, or wait for their registrations to expire ({}s after their \
         last heartbeat: in {}s at most); if they are gone already (a worker that crashed stays \
         registered until then), `rebuild --force` runs anyway",
        count_workers(.workers.len()),
        describe_workers(.workers, *.now),
        .horizon.as_secs(),
        expires_in(.workers, *.horizon, *.now).as_secs(),
    )]
    LiveWorkers {
        workers: Vec<WorkerInfo>,
        horizon: Duration,
        now: i64,
    },
    #[error(
        "the rebuild failed on redis at {url}: {error}; run it again once redis answers (each task is \
         rebuilt whole or not at all, and a second rebuild finishes what a first one left)"
    )]
    Rebuild { url: String, error: StoreError },
    /// The log (or a record the rebuild needs) holds what this version
    /// cannot read: a transition the rules refuse, an undecodable entry.
    #[error(
        "the rebuild failed: {0}; this version cannot read what redis holds there, so running it again \
         will not help"
    )]
    Unreadable(StoreError),
}

/// Connects with `config`'s `[redis]` settings (as a worker does: waiting up
/// to `[redis] startup_wait_seconds` for a Redis that does not answer yet),
/// checks that no worker is registered as live (unless `force`), and
/// rebuilds the projection.
pub async fn run(config: &Config, force: bool) -> Result<RebuildReport, RebuildError> {
    let url = config.redis.shown_url();
    let store = Store::connect(&config.redis, &config.queue)
        .await
        .map_err(|error| RebuildError::Connect {
            url: url.clone(),
            error,
        })?;
    let workers = store.workers().await.map_err(|error| RebuildError::Registry {
        url: url.clone(),
        error,
    })?;
    if !workers.is_empty() {
        let now = Store::now_ms();
        if !force {
            return Err(RebuildError::LiveWorkers {
                workers,
                horizon: store.worker_horizon(),
                now,
            });
        }
        tracing::warn!(
            workers = %describe_workers(&workers, now),
            "--force: rebuilding although {} registered as live",
            count_workers(workers.len())
        );
    }
    store.rebuild().await.map_err(|error| match error {
        StoreError::Corrupt(_) => RebuildError::Unreadable(error),
        error => RebuildError::Rebuild { url, error },
    })
}

/// The report as printed on standard output, one count a line.
pub fn report_lines(report: &RebuildReport) -> String {
    let RebuildReport {
        tasks,
        queued,
        running,
        delayed,
        expired,
        kept,
    } = report;
    format!(
        "tasks rebuilt: {tasks}\nqueued: {queued}\nrunning: {running}\ndelayed: {delayed}\nexpired: {expired}\n\
         kept: {kept}\n"
    )
}

fn count_workers(count: usize) -> String {
    match count {
        1 => "1 worker process is".to_owned(),
        count => format!("{count} worker processes are"),
    }
}

fn describe_workers(workers: &[WorkerInfo], now: i64) -> String {
    workers
        .iter()
        .map(|worker| {
            format!(
                "{} (host {}, pid {}, last heartbeat {}s ago)",
                worker.name,
                worker.host,
                worker.pid,
                (now - worker.seen_at).max(0) / 1000
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long until the last of `workers`' registrations expires.
fn expires_in(workers: &[WorkerInfo], horizon: Duration, now: i64) -> Duration {
    let last_seen = workers.iter().map(|worker| worker.seen_at).max().unwrap_or(now);
    let expires_at = last_seen + horizon.as_millis() as i64;
    // Rounded up: a wait this long is always enough.
    Duration::from_secs(((expires_at - now).max(0) as u64).div_ceil(1000))
}
