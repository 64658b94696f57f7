//! The registries of live processes: the workers (who runs, where, with how
//! many slots, holding which tasks) and the API processes (where they
//! listen).
//!
//! Each process writes its entry ([`WorkerInfo`], [`ApiInfo`]) into its
//! registry's hash (`{p}:workers`, `{p}:apis`) on every heartbeat and
//! scores itself in the matching `…:seen` sorted set; an entry whose
//! heartbeat is older than [`Store::registration_horizon`] belongs to a
//! dead process and is left out of [`Store::workers`] / [`Store::apis`]
//! (and pruned by the next live process that registers). The registries are
//! for operators and for `savestream-worker rebuild`, which refuses to run
//! while any process that writes is live; no transition depends on them.
//! Each heartbeat also stamps the process's build in the libraries in use,
//! which keeps that build's function library loaded (store/library.rs).

use std::time::Duration;

use fred::prelude::*;
use serde::de::DeserializeOwned;
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

/// What an API process says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiInfo {
    /// `<host>-<pid>-<xid>`, made by [`process_name`].
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// The address it listens on, as bound (`127.0.0.1:8080`).
    pub address: String,
    pub started_at: Millis,
    /// Its last heartbeat, set by [`Store::register_api`].
    #[serde(default)]
    pub seen_at: Millis,
}

/// An entry of a registry: named, and stamped with its last heartbeat.
trait Registered: Serialize + DeserializeOwned {
    fn name(&self) -> &str;
    fn seen_at(&self) -> Millis;
    fn set_seen_at(&mut self, at: Millis);
}

impl Registered for WorkerInfo {
    fn name(&self) -> &str {
        &self.name
    }
    fn seen_at(&self) -> Millis {
        self.seen_at
    }
    fn set_seen_at(&mut self, at: Millis) {
        self.seen_at = at;
    }
}

impl Registered for ApiInfo {
    fn name(&self) -> &str {
        &self.name
    }
    fn seen_at(&self) -> Millis {
        self.seen_at
    }
    fn set_seen_at(&mut self, at: Millis) {
        self.seen_at = at;
    }
}

/// A name no other process shares, even on the same host after a restart
/// with the same pid: `<hostname>-<pid>-<xid>`, with anything but ASCII
/// letters, digits, `.` and `_` in the host name made `-` (a worker's name
/// is its consumer name in the `workers` group).
pub fn process_name() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}-{}", std::process::id(), xid::new())
}

/// This machine's host name, as the registries show it (`unknown` when the
/// system will not say).
pub fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Store {
    /// How long a process stays listed without a heartbeat: three lease
    /// periods. A process that crashed stays registered this long after
    /// its last one.
    pub fn registration_horizon(&self) -> Duration {
        self.lease_duration() * 3
    }

    /// Records (or refreshes) a worker's entry and prunes dead ones.
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        self.register(&self.worker_registry(), info).await
    }

    /// Removes a worker's entry, when it stops.
    pub async fn unregister_worker(&self, name: &str) -> Result<(), StoreError> {
        self.unregister(&self.worker_registry(), name).await
    }

    /// The live workers, by name.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        self.live(&self.keys().workers()).await
    }

    /// Records (or refreshes) an API process's entry and prunes dead ones.
    pub async fn register_api(&self, info: &ApiInfo) -> Result<(), StoreError> {
        self.register(&self.api_registry(), info).await
    }

    /// Removes an API process's entry, when it stops.
    pub async fn unregister_api(&self, name: &str) -> Result<(), StoreError> {
        self.unregister(&self.api_registry(), name).await
    }

    /// The live API processes, by name.
    pub async fn apis(&self) -> Result<Vec<ApiInfo>, StoreError> {
        self.live(&self.keys().apis()).await
    }

    fn worker_registry(&self) -> RegistryKeys {
        RegistryKeys {
            entries: self.keys().workers(),
            seen: self.keys().workers_seen(),
        }
    }

    fn api_registry(&self) -> RegistryKeys {
        RegistryKeys {
            entries: self.keys().apis(),
            seen: self.keys().apis_seen(),
        }
    }

    async fn register<T: Registered + Clone>(
        &self,
        registry: &RegistryKeys,
        info: &T,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut info = info.clone();
        info.set_seen_at(now);
        let json = serde_json::to_string(&info).map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let horizon = now - self.registration_horizon().as_millis() as Millis;
        let dead: Vec<String> = self
            .client()
            .zrangebyscore(&registry.seen, "-inf", horizon as f64, false, None)
            .await?;
        let pipeline = self.client().pipeline();
        let _: () = pipeline.hset(&registry.entries, (info.name(), json)).await?;
        let _: () = pipeline
            .zadd(
                &registry.seen,
                None,
                None,
                false,
                false,
                (now as f64, info.name()),
            )
            .await?;
        if !dead.is_empty() {
            let _: () = pipeline.hdel(&registry.entries, dead.clone()).await?;
            let _: () = pipeline.zrem(&registry.seen, dead).await?;
        }
        let _: Vec<fred::types::Value> = pipeline.all().await?;
        self.stamp_library(now).await;
        Ok(())
    }

    async fn unregister(&self, registry: &RegistryKeys, name: &str) -> Result<(), StoreError> {
        let pipeline = self.client().pipeline();
        let _: () = pipeline.hdel(&registry.entries, name).await?;
        let _: () = pipeline.zrem(&registry.seen, name).await?;
        let _: Vec<fred::types::Value> = pipeline.all().await?;
        Ok(())
    }

    async fn live<T: Registered>(&self, registry: &str) -> Result<Vec<T>, StoreError> {
        let horizon = now_ms() - self.registration_horizon().as_millis() as Millis;
        let entries: std::collections::HashMap<String, String> = self.client().hgetall(registry).await?;
        let mut live: Vec<T> = entries
            .into_values()
            .filter_map(|json| serde_json::from_str::<T>(&json).ok())
            .filter(|info| info.seen_at() > horizon)
            .collect();
        live.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(live)
    }
}

/// A registry's two keys: the hash of its entries and the sorted set of
/// their heartbeats.
struct RegistryKeys {
    entries: String,
    seen: String,
}
