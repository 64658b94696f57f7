//! [`Context`]: what every part of a running worker shares — the store, the
//! consumer name, the sources and storages, the running tasks and the
//! signal that ends the shutdown grace period.

use std::time::Duration;

use savestream_shared::store::Store;
use tokio_util::sync::CancellationToken;

use crate::cancel::Leftovers;
use crate::running::RunningTasks;
use crate::source::Sources;
use crate::storage::Storages;

pub struct Context {
    pub store: Store,
    /// This process's consumer name in the `workers` group: `<hostname>-<pid>-<xid>`.
    pub consumer: String,
    pub sources: Sources,
    pub storages: Storages,
    pub running: RunningTasks,
    /// Retryable failures a task may have before it fails (`retry`).
    pub retry_limit: u32,
    /// Canceled when the shutdown grace period is over: running attempts
    /// stop and hand their tasks back to the queue.
    pub release: CancellationToken,
}

impl Context {
    /// How long a lease lasts without a heartbeat (`[queue] lease_seconds`).
    pub fn lease(&self) -> Duration {
        self.store.lease_duration()
    }

    /// What removes a canceled task's leftovers from this worker's storages.
    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            store: self.store.clone(),
            storages: self.storages.clone(),
        }
    }
}
