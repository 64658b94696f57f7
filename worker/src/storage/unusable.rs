//! [`UnusableStorage`]: a `[[storages]]` entry this worker could not set up
//! when it started (its base path read-only, not writable by the worker's
//! user, on a file system without hard links, or impossible to create),
//! standing in for it, so that one bad mount does not keep the worker, and
//! with it every other storage's tasks, from starting.
//!
//! Every call tries to set the storage up again (making the base path,
//! the hard-link probe: a few system calls), and once that works the
//! storage is used as any other from then on: a disk mounted, or a mount
//! made writable, after the worker started is taken into use without a
//! restart. Until then each call answers [`StorageError::Unusable`], which
//! is retryable: the task goes back to the queue, where a worker on which
//! the storage works can take it. It knows nothing of tasks: the pipeline
//! sees a storage whose calls fail.
//!
//! The worker says so loudly: an error in the log at start-up, and the
//! gauge `savestream_storage_usable{storage}` (0 until it works) on
//! `/metrics`.

use std::path::PathBuf;
use std::sync::OnceLock;

use async_trait::async_trait;
use savestream_shared::task::TaskId;
use tracing::{error, info};

use super::{FileName, LocalStorage, PartialFile, Storage, StorageDir, StorageError, StoragePath};

/// The gauge that tells a storage that works on this worker (1) from one
/// that does not (0), labelled `storage`.
pub const STORAGE_USABLE_METRIC: &str = "savestream_storage_usable";

/// A local storage that could not be set up; see the module docs.
#[derive(Debug)]
pub struct UnusableStorage {
    name: String,
    base_path: PathBuf,
    /// The storage, once a try set it up.
    usable: OnceLock<LocalStorage>,
}

impl UnusableStorage {
    /// Stands in for the local storage `name` at `base_path`, which could
    /// not be set up: `error` says why. Logs it, as an error.
    pub fn new(name: &str, base_path: PathBuf, error: StorageError) -> UnusableStorage {
        let reason = without_storage_name(name, &error.to_string());
        error!(
            storage = name,
            reason = %reason,
            "storage {name} is unusable on this worker: its tasks are retried for a worker where it works \
             (this one tries it again with each task, and uses it once it works)"
        );
        UnusableStorage {
            name: name.to_owned(),
            base_path,
            usable: OnceLock::new(),
        }
    }

    /// The storage, set up now if it was not yet; else why not.
    async fn storage(&self) -> Result<&LocalStorage, StorageError> {
        if let Some(storage) = self.usable.get() {
            return Ok(storage);
        }
        let (name, base_path) = (self.name.clone(), self.base_path.clone());
        let tried = tokio::task::spawn_blocking(move || LocalStorage::new(&name, &base_path))
            .await
            .map_err(|error| error.to_string());
        match tried {
            Ok(Ok(storage)) => {
                if self.usable.set(storage).is_ok() {
                    info!(storage = %self.name, "storage {} works on this worker now: using it", self.name);
                    metrics::gauge!(STORAGE_USABLE_METRIC, "storage" => self.name.clone()).set(1.0);
                }
                Ok(self.usable.get().expect("set just now, by this call or another"))
            }
            Ok(Err(error)) => {
                let reason = without_storage_name(&self.name, &error.to_string());
                Err(self.unusable(reason))
            }
            Err(panicked) => Err(self.unusable(panicked)),
        }
    }

    fn unusable(&self, reason: String) -> StorageError {
        StorageError::Unusable {
            storage: self.name.clone(),
            reason,
        }
    }
}

/// `message` without the `storage <name>: ` every storage error starts with.
fn without_storage_name(name: &str, message: &str) -> String {
    message
        .strip_prefix(&format!("storage {name}: "))
        .unwrap_or(message)
        .to_owned()
}

#[async_trait]
impl Storage for UnusableStorage {
    fn name(&self) -> &str {
        &self.name
    }

    fn is_usable(&self) -> bool {
        self.usable.get().is_some()
    }

    fn max_file_size(&self) -> Option<u64> {
        self.usable.get().and_then(Storage::max_file_size)
    }

    async fn reserve(
        &self,
        owner: &TaskId,
        dir: &StorageDir,
        name: &FileName,
        taken: &[StoragePath],
    ) -> Result<StoragePath, StorageError> {
        self.storage().await?.reserve(owner, dir, name, taken).await
    }

    async fn finished(&self, owner: &TaskId, path: &StoragePath) -> Result<Option<u64>, StorageError> {
        self.storage().await?.finished(owner, path).await
    }

    async fn open(&self, owner: &TaskId, path: &StoragePath) -> Result<Box<dyn PartialFile>, StorageError> {
        self.storage().await?.open(owner, path).await
    }

    async fn discard(&self, owner: &TaskId, dir: &StorageDir) -> Result<(), StorageError> {
        self.storage().await?.discard(owner, dir).await
    }

    async fn remove(&self, path: &StoragePath) -> Result<(), StorageError> {
        self.storage().await?.remove(path).await
    }

    async fn partial_owners(&self) -> Result<Vec<(TaskId, StorageDir)>, StorageError> {
        self.storage().await?.partial_owners().await
    }
}
