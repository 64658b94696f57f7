//! The API process's entry in the registry of live API processes
//! (`{p}:apis`, see `Store::register_api`).
//!
//! No request depends on it. It is there so that an operator can see which
//! API processes run, and above all so that `savestream-worker rebuild`,
//! which must run with nothing writing, can refuse while an API process
//! that creates and cancels tasks is up. The entry is written when the
//! server starts and then every third of `[queue] lease_seconds`, and
//! removed when it stops; an API process that dies without stopping stays
//! listed for three lease periods after its last heartbeat.

use std::time::Duration;

use savestream_shared::store::{host_name, process_name, ApiInfo, Store};
use tokio_util::sync::CancellationToken;

/// How long the entry's removal may take at shutdown before it is left to
/// age out.
const UNREGISTER_WAIT: Duration = Duration::from_secs(2);

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

/// Registers `info` at once and then every third of a lease, until `stop`;
/// then removes it.
pub async fn heartbeat(store: Store, info: ApiInfo, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(store.lease_duration() / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registered = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match store.register_api(&info).await {
            Ok(()) => {
                if !registered {
                    tracing::debug!(name = %info.name, "registered in the registry of live API processes");
                }
                registered = true;
            }
            Err(error) => {
                crate::metrics::redis_error();
                // Nothing waits on the registry; a rebuild that misses this
                // process is what the operator was told to prevent anyway.
                tracing::debug!(%error, "cannot register in the registry of live API processes");
            }
        }
    }
    match tokio::time::timeout(UNREGISTER_WAIT, store.unregister_api(&info.name)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "cannot leave the registry of live API processes"),
        Err(_) => tracing::debug!(
            "redis did not answer in time: leaving the registry of live API processes to age out"
        ),
    }
}
