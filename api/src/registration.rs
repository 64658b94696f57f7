//! The API process's entry in the registry of live API processes
//! (`{p}:apis`, see `Store::register_api`).
//!
//! No request depends on it. It is there so that an operator can see which
//! API processes run, and above all so that `savestream-worker rebuild`,
//! which must run with nothing writing, can refuse while an API process
//! that creates and cancels tasks is up. The entry is written before the
//! server answers its first request (so the keys a request finds never
//! change under it but for the entry's heartbeat), then every third of
//! `[queue] lease_seconds`, and removed when the server has stopped; an API
//! process that dies without stopping stays listed for three lease periods
//! after its last heartbeat.

use std::time::Duration;

use savestream_shared::store::{host_name, process_name, ApiInfo, Store};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How long the first registration, and the entry's removal at shutdown,
/// may take before the server goes on without them: a Redis that does not
/// answer must hold up neither the start nor the stop.
const REGISTRY_WAIT: Duration = Duration::from_secs(2);

/// This process's entry, listening on `address`.
pub fn this_process(address: String) -> ApiInfo {
    ApiInfo {
        name: process_name(),
        host: host_name(),
        pid: std::process::id(),
        address,
        started_at: Store::now_ms(),
        seen_at: 0,
    }
}

/// Writes the entry once, waiting at most [`REGISTRY_WAIT`].
pub async fn register(store: &Store, info: &ApiInfo) {
    match tokio::time::timeout(REGISTRY_WAIT, store.register_api(info)).await {
        Ok(Ok(())) => tracing::debug!(name = %info.name, "registered in the registry of live API processes"),
        Ok(Err(error)) => {
            crate::metrics::redis_error();
            // Nothing waits on the registry; the heartbeat tries again.
            tracing::warn!(%error, "cannot register in the registry of live API processes");
        }
        Err(_) => tracing::warn!(
            "redis did not answer in time: registering in the registry of live API processes later"
        ),
    }
}

/// Refreshes the entry every third of a lease until `stop`, then removes it.
/// The first refresh comes a third of a lease after the call: [`register`]
/// wrote the entry before.
pub async fn heartbeat(store: Store, info: ApiInfo, stop: CancellationToken) {
    let every = store.lease_duration() / 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            result = store.register_api(&info) => result,
        };
        if let Err(error) = result {
            crate::metrics::redis_error();
            tracing::debug!(%error, "cannot refresh the entry in the registry of live API processes");
        }
    }
    match tokio::time::timeout(REGISTRY_WAIT, store.unregister_api(&info.name)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "cannot leave the registry of live API processes"),
        Err(_) => tracing::debug!(
            "redis did not answer in time: leaving the registry of live API processes to age out"
        ),
    }
}
