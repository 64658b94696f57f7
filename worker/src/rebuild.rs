//! `savestream-worker rebuild`: the operator's door to
//! [`Store::rebuild`], which recomputes the projection (task hashes and the
//! `queued`, `running` and `delayed` sets) from the event log after the
//! projection was lost or damaged.
//!
//! A rebuild must run with no process writing: a transition made while it
//! runs can be overwritten by what it read before. Worker and API processes
//! register themselves on every heartbeat (`{p}:workers`, `{p}:apis`), so
//! [`run`] refuses while any is registered as live, naming them, unless
//! forced (a process that crashed stays registered for
//! [`Store::registration_horizon`] after its last heartbeat). The check is
//! made once, before the rebuild: a process started after it is not seen.
//!
//! Nothing here prints `[redis] url` as written: it may hold a password,
//! and only [`RedisConfig::shown_url`](savestream_shared::config::RedisConfig::shown_url)
//! (password redacted) reaches a message.

use std::time::Duration;

use savestream_shared::config::Config;
use savestream_shared::store::{ApiInfo, RebuildReport, RedisConnectError, Store, StoreError, WorkerInfo};

/// Why a rebuild did not run, or did not finish. Each message is complete on
/// its own line, saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The worker's and the API's own start-up message, advice included,
    /// so an operator meets one wording for one fault.
    #[error("{0}")]
    Connect(RedisConnectError),
    #[error("cannot read the registries of live processes on redis at {url}: {error}; nothing was rebuilt")]
    Registry { url: String, error: StoreError },
    #[error(
        "refusing to rebuild: {} registered as live, and a process writing would race the rebuild: {}. \
         Stop the workers and the API first, or wait for their registrations to expire ({}s after their \
         last heartbeat: in {}s at most); if they are gone already (a process that crashed stays \
         registered until then), `rebuild --force` runs anyway",
        count_processes(.live),
        describe_processes(.live, *.now),
        .horizon.as_secs(),
        expires_in(.live, *.horizon, *.now).as_secs(),
    )]
    LiveProcesses {
        live: LiveProcesses,
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
        .map_err(|error| {
            RebuildError::Connect(RedisConnectError {
                at: url.clone(),
                error,
            })
        })?;
    let registry_error = |error| RebuildError::Registry {
        url: url.clone(),
        error,
    };
    let live = LiveProcesses {
        workers: store.workers().await.map_err(registry_error)?,
        apis: store.apis().await.map_err(registry_error)?,
    };
    if !live.is_empty() {
        let now = Store::now_ms();
        if !force {
            return Err(RebuildError::LiveProcesses {
                live,
                horizon: store.registration_horizon(),
                now,
            });
        }
        tracing::warn!(
            processes = %describe_processes(&live, now),
            "--force: rebuilding although {} registered as live",
            count_processes(&live)
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

/// The processes registered as live when a rebuild was asked for.
#[derive(Debug)]
pub struct LiveProcesses {
    pub workers: Vec<WorkerInfo>,
    pub apis: Vec<ApiInfo>,
}

impl LiveProcesses {
    fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.apis.is_empty()
    }

    /// When each was last seen.
    fn seen(&self) -> impl Iterator<Item = i64> + '_ {
        let workers = self.workers.iter().map(|worker| worker.seen_at);
        workers.chain(self.apis.iter().map(|api| api.seen_at))
    }
}

/// "1 worker process is", "2 API processes are", "1 worker process and 1 API process are".
fn count_processes(live: &LiveProcesses) -> String {
    let counted = |count: usize, kind: &str| match count {
        0 => None,
        1 => Some(format!("1 {kind} process")),
        count => Some(format!("{count} {kind} processes")),
    };
    let parts: Vec<String> = [
        counted(live.workers.len(), "worker"),
        counted(live.apis.len(), "API"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let verb = if live.workers.len() + live.apis.len() == 1 {
        "is"
    } else {
        "are"
    };
    format!("{} {verb}", parts.join(" and "))
}

fn describe_processes(live: &LiveProcesses, now: i64) -> String {
    let ago = |seen_at: i64| (now - seen_at).max(0) / 1000;
    let workers = live.workers.iter().map(|worker| {
        format!(
            "{} (host {}, pid {}, last heartbeat {}s ago)",
            worker.name,
            worker.host,
            worker.pid,
            ago(worker.seen_at)
        )
    });
    let apis = live.apis.iter().map(|api| {
        format!(
            "{} (API on {}, host {}, pid {}, last heartbeat {}s ago)",
            api.name,
            api.address,
            api.host,
            api.pid,
            ago(api.seen_at)
        )
    });
    workers.chain(apis).collect::<Vec<_>>().join(", ")
}

/// How long until the last of the registrations expires.
fn expires_in(live: &LiveProcesses, horizon: Duration, now: i64) -> Duration {
    let last_seen = live.seen().max().unwrap_or(now);
    let expires_at = last_seen + horizon.as_millis() as i64;
    // Rounded up: a wait this long is always enough.
    Duration::from_secs(((expires_at - now).max(0) as u64).div_ceil(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str) -> WorkerInfo {
        WorkerInfo {
            name: name.to_owned(),
            host: "h".to_owned(),
            pid: 1,
            role: "all".to_owned(),
            slots: 1,
            tasks: Vec::new(),
            started_at: 0,
            seen_at: 0,
        }
    }

    fn api(name: &str) -> ApiInfo {
        ApiInfo {
            name: name.to_owned(),
            host: "h".to_owned(),
            pid: 2,
            address: "127.0.0.1:8080".to_owned(),
            started_at: 0,
            seen_at: 0,
        }
    }

    #[test]
    fn the_refusal_counts_workers_and_api_processes_in_words() {
        let count = |workers: usize, apis: usize| {
            count_processes(&LiveProcesses {
                workers: (0..workers).map(|index| worker(&format!("w{index}"))).collect(),
                apis: (0..apis).map(|index| api(&format!("a{index}"))).collect(),
            })
        };
        assert_eq!(count(1, 0), "1 worker process is");
        assert_eq!(count(2, 0), "2 worker processes are");
        assert_eq!(count(0, 1), "1 API process is");
        assert_eq!(count(1, 1), "1 worker process and 1 API process are");
        assert_eq!(count(3, 2), "3 worker processes and 2 API processes are");
    }
}
