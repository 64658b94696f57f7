//! The registry of live worker processes: who runs, where, with how many
//! slots, holding which tasks.
//!
//! Each worker writes its [`WorkerInfo`] into the `{p}:workers` hash on every
//! heartbeat and scores itself in `{p}:workers:seen`; an entry whose
//! heartbeat is older than three lease periods is a dead process and is left
//! out of [`Store::workers`] (and pruned by the next live worker that
//! registers). The registry is for operators; no transition depends on it.

use std::time::Duration;

use fred::prelude::*;
use serde::{Deserialize, Serialize};

use super::{now_ms, Store, StoreError};
use crate::task::Millis;

/// What a worker process says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its consumer name in the `workers` group: `<host>-<pid>-<xid>`.
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// What it runs: `tasks`, `webhooks` or `all`.
    pub role: String,
    /// Tasks it runs at once.
    pub slots: usize,
    /// The ids of the tasks it holds now.
    pub tasks: Vec<String>,
    pub started_at: Millis,
    /// Its last heartbeat, set by [`Store::register_worker`].
    #[serde(default)]
    pub seen_at: Millis,
}

impl Store {
    fn workers_seen_key(&self) -> String {
        format!("{}:seen", self.keys().workers())
    }

    /// How long a worker stays listed without a heartbeat: three lease
    /// periods. A worker that crashed stays registered this long after its
    /// last one.
    pub fn worker_horizon(&self) -> Duration {
        self.lease_duration() * 3
    }

    /// Records (or refreshes) a worker's entry and prunes dead ones.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let now = now_ms();
        let mut info = info.clone();
        info.seen_at = now;
        let json = serde_json::to_string(&info).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let horizon = now - self.worker_horizon().as_millis() as Millis;
        let dead: Vec<String> = self
            .client()
            .zrangebyscore(self.workers_seen_key(), "-inf", horizon as f64, false, None)
            .await?;
        let pipeline = self.client().pipeline();
        let _: () = pipeline
            .hset(self.keys().workers(), (info.name.as_str(), json))
            .await?;
        let _: () = pipeline
            .zadd(
                self.workers_seen_key(),
                None,
                None,
                false,
                false,
                (now as f64, info.name.as_str()),
            )
            .await?;
        if !dead.is_empty() {
            let _: () = pipeline.hdel(self.keys().workers(), dead.clone()).await?;
            let _: () = pipeline.zrem(self.workers_seen_key(), dead).await?;
        }
        let _: Vec<fred::types::Value> = pipeline.all().await?;
        Ok(())
    }

    /// Removes a worker's entry, when it stops.
    pub async fn unregister_worker(&self, name: &str) -> Result<(), StoreError> {
        let pipeline = self.client().pipeline();
        let _: () = pipeline.hdel(self.keys().workers(), name).await?;
        let _: () = pipeline.zrem(self.workers_seen_key(), name).await?;
        let _: Vec<fred::types::Value> = pipeline.all().await?;
        Ok(())
    }

    /// The live workers, by name.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let horizon = now_ms() - self.worker_horizon().as_millis() as Millis;
        let entries: std::collections::HashMap<String, String> =
            self.client().hgetall(self.keys().workers()).await?;
        let mut workers: Vec<WorkerInfo> = entries
            .into_values()
            .filter_map(|json| serde_json::from_str::<WorkerInfo>(&json).ok())
            .filter(|info| info.seen_at > horizon)
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }
}
