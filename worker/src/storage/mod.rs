//! The [`Storage`] trait: where a task's bytes are kept, and the only thing
//! the pipeline knows about a storage.
//!
//! A storage writes a file through a partial file ([`PartialFile`]) that
//! becomes the file only when it is complete, so a reader never sees half a
//! file. Partial files belong to a task (the *owner*, its [`TaskId`]): every
//! attempt of the task finds its own partial files again, whether or not an
//! earlier attempt lived to record where they are. The path of a file is
//! decided when the task is resolved ([`Storage::reserve`] picks a free name
//! and holds it; an attempt that reserves again finds the name its earlier
//! attempt held), and a later attempt reopens the same partial file to
//! continue from its length. When the task ends, [`Storage::discard`]
//! removes whatever partial files it still has.
//!
//! Storages are built from `[[storages]]` in [`Storages::from_config`];
//! `local` is the only kind today. One that cannot be set up on this worker
//! (a base path read-only or not writable here) does not stop the worker:
//! an [`UnusableStorage`] stands in for it, failing its tasks retryably so
//! that a worker where it works takes them, and taking it into use once it
//! works.

mod local;
pub mod path;
mod unusable;
mod write_behind;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use savestream_shared::config::{Config, StorageKind};
use savestream_shared::task::TaskId;

pub use local::LocalStorage;
pub use path::{FileName, PathError, StorageDir, StoragePath};
pub use unusable::{UnusableStorage, STORAGE_USABLE_METRIC};

/// What a storage call can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The name or path cannot be used (it would leave the storage).
    #[error("storage {storage}: {error}")]
    Path { storage: String, error: PathError },
    /// The path resolves outside the storage's base path, through a symlink.
    #[error("storage {storage}: {path} resolves outside the storage's base path")]
    Escapes { storage: String, path: String },
    /// Every alternative name for a file was taken.
    #[error("storage {storage}: no free name for {path} (tried {tries} alternatives)")]
    NoFreeName {
        storage: String,
        path: String,
        tries: u32,
    },
    /// The path a task holds is taken by a file the task did not write
    /// (someone put it there by hand): it is left alone, never replaced.
    #[error("storage {storage}: {path} is taken by a file this task did not write; it was left as it is")]
    Occupied { storage: String, path: String },
    /// The partial file does not end where the bytes this attempt wrote
    /// end: another attempt (taken over, yet still running) wrote it too.
    /// The partial file was discarded, so the next attempt starts over.
    #[error("storage {storage}: the partial file of {path} holds {on_disk} bytes, not the {written} this attempt wrote: another attempt wrote to it too; it was discarded, to start over")]
    Interleaved {
        storage: String,
        path: String,
        on_disk: u64,
        written: u64,
    },
    /// Writing the partial file, or making it durable, failed. Its bytes
    /// may then not be the ones written, whatever its length says: a
    /// failed `fsync` (or writeback) may have dropped the pages it could
    /// not write and marked them clean, and a later sync reports nothing.
    /// So it was discarded, and the next attempt starts over from byte 0.
    #[error(
        "storage {storage}: cannot {action} {path}: {source}{}; the partial file was discarded, to start over",
        advice(source)
    )]
    Discarded {
        storage: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// As [`StorageError::Discarded`], but discarding the partial file
    /// failed too, and a name still leads to it: a later attempt would
    /// resume from it (or take it for complete). The task fails instead,
    /// so that no attempt ever does.
    #[error("storage {storage}: cannot {action} {path}: {source}; nor discard the partial file ({discard}), which no later attempt may resume from: the task fails")]
    Untrusted {
        storage: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
        discard: std::io::Error,
    },
    /// The partial file this attempt wrote was discarded by another attempt
    /// of the task (one taken over, yet still running, or the one that took
    /// it over), for whatever reason (a failed write or sync, an interleaved
    /// file, a download started over), and its name leads to a new one:
    /// what this attempt wrote is in a file no name leads to, and is not
    /// finished.
    #[error("storage {storage}: the partial file of {path} was discarded by another attempt of the task while this one wrote it; to start over")]
    Replaced { storage: String, path: String },
    /// The file is larger than the storage accepts.
    #[error("storage {storage}: the file is {size} bytes, more than the {max} bytes this storage accepts")]
    TooLarge { storage: String, size: u64, max: u64 },
    /// A finished file is whole at its name, but the name could not be
    /// made durable (a directory's sync failed): a power loss might take it.
    #[error(
        "storage {storage}: {path} is saved whole, but cannot sync {what}: {source}; its name may not \
         survive a power loss: check the file system and the worker's permissions there (the next \
         attempt syncs again)"
    )]
    Unsynced {
        storage: String,
        path: String,
        /// The directory entry that failed, e.g. `its directory`, `the entry of /a/b in /a`.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A file is where the `dir_path` (or a symlink's target on the way)
    /// names a directory: no attempt gets further until someone moves it,
    /// so the task fails rather than retry.
    #[error(
        "storage {storage}: cannot use the directory {dir}: {component} is a file, not a directory: \
         create the task with a dir_path that does not go through it, or move the file out of the way"
    )]
    NotADirectory {
        storage: String,
        dir: String,
        /// The path, from the base path as walked, of the file in the way.
        component: String,
    },
    /// The base path exists, but this worker may not make a file in it
    /// (a read-only mount, or owned by another user).
    #[error(
        "storage {storage}: the base path {base} is not writable by this worker (uid {uid}): {source}; \
         make it writable, or remove the storage from config.toml"
    )]
    NotWritable {
        storage: String,
        base: String,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    /// The base path's file system cannot make hard links (FAT, exFAT),
    /// which holding names and finishing files rely on.
    #[error(
        "storage {storage}: the file system of the base path {base} cannot make hard links, which the \
         local storage needs: {source}; put the base path on a Unix file system (not FAT or exFAT), or \
         remove the storage from config.toml"
    )]
    NoHardLinks {
        storage: String,
        base: String,
        #[source]
        source: std::io::Error,
    },
    /// The storage could not be set up on this worker ([`UnusableStorage`]):
    /// another worker, where it works, may take the task.
    #[error(
        "storage {storage} is unusable on this worker: {reason}; the task is retried, for a worker where \
         the storage works"
    )]
    Unusable { storage: String, reason: String },
    /// The rest of a file of known size does not fit in the free space
    /// of the storage's disk: refused before it is written, rather than
    /// written until the disk is full (on every attempt, for every other
    /// user of a shared disk). Retryable: space may be freed meanwhile.
    #[error(
        "storage {storage}: {path} needs {needed} more bytes, and the storage's disk has {free} bytes \
         free: free space on it, or give the storage a bigger disk (the task is retried)"
    )]
    NoSpace {
        storage: String,
        path: String,
        needed: u64,
        free: u64,
    },
    /// A read or write failed: a full disk, a permission, an I/O error.
    /// The message says what to do about the common ones ([`advice`]).
    #[error("storage {storage}: cannot {action} {path}: {source}{}", advice(source))]
    Io {
        storage: String,
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether retrying cannot help: the name is refused, the file is too
    /// big for the storage, or a partial file that cannot be trusted could
    /// not be discarded. I/O errors (a full disk, a flaky mount) may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            StorageError::Path { .. }
            | StorageError::Escapes { .. }
            | StorageError::NoFreeName { .. }
            | StorageError::Occupied { .. }
            | StorageError::TooLarge { .. }
            | StorageError::NotADirectory { .. }
            | StorageError::Untrusted { .. } => true,
            StorageError::Interleaved { .. }
            | StorageError::NotWritable { .. }
            | StorageError::NoHardLinks { .. }
            | StorageError::Unusable { .. }
            | StorageError::NoSpace { .. }
            | StorageError::Replaced { .. }
            | StorageError::Unsynced { .. } => false,
            StorageError::Io { source, .. } | StorageError::Discarded { source, .. } => {
                source.kind() == std::io::ErrorKind::FileTooLarge
            }
        }
    }
}

/// What to do about an I/O error of a storage, for its message: `""` for
/// most, a clause starting with `; ` for those an operator must act on.
/// Each of these is retried (another worker, or a later attempt, may find
/// the disk mended), so each says so.
fn advice(source: &std::io::Error) -> String {
    // By kind, not by number: an error the writing thread hands back is
    // made again from its kind and text, without the number.
    use std::io::ErrorKind;
    match source.kind() {
        ErrorKind::ReadOnlyFilesystem => "; the storage's file system is mounted read-only on this worker: \
             remount it read-write, or remove the storage from config.toml here (the task is retried)"
            .to_owned(),
        ErrorKind::StorageFull => "; the storage's disk is full: free space on it, or give the storage a \
             bigger disk (the task is retried)"
            .to_owned(),
        ErrorKind::QuotaExceeded => "; the worker's disk quota on the storage is used up: free space, or \
             raise the quota (the task is retried)"
            .to_owned(),
        ErrorKind::PermissionDenied => format!(
            "; this worker (uid {}) may not write there: give it write permission (the task is retried)",
            rustix::process::geteuid().as_raw()
        ),
        _ => String::new(),
    }
}

/// Where files are kept.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The `[[storages]] name`.
    fn name(&self) -> &str;

    /// Whether the storage works on this worker: `false` for one that
    /// could not be set up yet ([`UnusableStorage`]), whose calls fail.
    fn is_usable(&self) -> bool {
        true
    }

    /// The largest file this storage accepts, if it has a limit.
    fn max_file_size(&self) -> Option<u64> {
        None
    }

    /// Picks a path for `owner`'s file `name` under `dir` and holds it, so
    /// that no other task picks it: the path an earlier attempt of `owner`
    /// held for `name`, if any, so a name survives an attempt that died
    /// before recording it; else the first free one of `name`, `name_1`,
    /// `name_2`, …. Paths in `taken` (the owner's other files) are skipped.
    async fn reserve(
        &self,
        owner: &TaskId,
        dir: &StorageDir,
        name: &FileName,
        taken: &[StoragePath],
    ) -> Result<StoragePath, StorageError>;

    /// The size of `owner`'s file at `path` if an earlier attempt finished
    /// it (and died before the task recorded it); what its partial file
    /// left behind is removed. `None` while it is not finished.
    async fn finished(&self, owner: &TaskId, path: &StoragePath) -> Result<Option<u64>, StorageError>;

    /// Opens `owner`'s partial file of `path`, creating it (and holding the
    /// path again) when missing; what it already holds is where a resumed
    /// download continues.
    async fn open(&self, owner: &TaskId, path: &StoragePath) -> Result<Box<dyn PartialFile>, StorageError>;

    /// Removes every partial file `owner` has under `dir`, and gives up the
    /// names they held: the task ended (canceled, failed, or completed
    /// without a reservation an earlier attempt made). Finished files stay.
    async fn discard(&self, owner: &TaskId, dir: &StorageDir) -> Result<(), StorageError>;

    /// Removes the finished file at `path`, if any (a task canceled in the
    /// instant between its file being finished and its completion recorded).
    async fn remove(&self, path: &StoragePath) -> Result<(), StorageError>;

    /// Every task that has partial files here, once per directory that
    /// holds some: what a starting worker looks over for tasks that ended
    /// while no worker was there to hear it ([`crate::cancel::Leftovers::sweep`]).
    async fn partial_owners(&self) -> Result<Vec<(TaskId, StorageDir)>, StorageError>;
}

/// A file being written. Bytes are appended in order; [`PartialFile::finish`]
/// turns it into the finished file.
///
/// When writing it or making it durable fails, whichever call reports the
/// failure discards it ([`StorageError::Discarded`]): what it holds can no
/// longer be trusted, so the next attempt starts over rather than resume.
#[async_trait]
pub trait PartialFile: Send {
    /// How many bytes it holds.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fails early ([`StorageError::NoSpace`], retryable) when the rest of
    /// a file of `size` bytes, what it holds already counted, does not fit
    /// in the storage's free space. A check, not a reservation: another
    /// download may take the space meanwhile, and a full disk is then
    /// reported by the write that meets it. Storages that cannot tell
    /// accept every size.
    async fn check_space(&mut self, size: u64) -> Result<(), StorageError> {
        let _ = size;
        Ok(())
    }

    /// Drops everything written, to start over (the source could not
    /// resume), durably. The storage may start a new partial file rather
    /// than empty this one, so that no other attempt that still writes the
    /// old one reaches the new download
    /// ([`StorageError::Replaced`] when another attempt started over first).
    async fn truncate(&mut self) -> Result<(), StorageError>;

    /// Appends `chunk`. The storage may keep it rather than copy it, and
    /// may write it later: a failure can surface at a later call.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Hands buffered bytes to the storage, so that a crash loses only
    /// what arrived since (the pipeline calls it with every progress write).
    async fn flush(&mut self) -> Result<(), StorageError>;

    /// Makes the written bytes durable and the file visible under its path,
    /// never replacing a file someone else put there
    /// ([`StorageError::Occupied`]); returns its size. A partial file that
    /// holds more or fewer bytes than were written to it through this one
    /// (another attempt wrote it too) is discarded instead
    /// ([`StorageError::Interleaved`], worth a retry), and one another
    /// attempt discarded is not finished ([`StorageError::Replaced`]).
    async fn finish(self: Box<Self>) -> Result<u64, StorageError>;
}

/// The enabled storages of this worker, by name.
#[derive(Clone, Debug, Default)]
pub struct Storages {
    by_name: HashMap<String, Arc<dyn Storage>>,
}

impl Storages {
    /// Builds every enabled `[[storages]]` entry, creating base paths that
    /// do not exist yet. One that cannot be set up is an
    /// [`UnusableStorage`] (logged as an error), never a failed start: one
    /// bad mount must not keep every worker, and every other storage's
    /// tasks, from running.
    pub fn from_config(config: &Config) -> Storages {
        let mut storages = Storages::default();
        for storage in config.storages.iter().filter(|storage| storage.enable) {
            match storage.kind {
                StorageKind::Local => match LocalStorage::new(&storage.name, &storage.base_path) {
                    Ok(local) => storages.insert(Arc::new(local)),
                    Err(error) => storages.insert(Arc::new(UnusableStorage::new(
                        &storage.name,
                        storage.base_path.clone(),
                        error,
                    ))),
                },
            }
        }
        storages
    }

    pub fn insert(&mut self, storage: Arc<dyn Storage>) {
        self.by_name.insert(storage.name().to_owned(), storage);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Storage>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Storage>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: rustix::io::Errno) -> StorageError {
        StorageError::Io {
            storage: "local1".to_owned(),
            action: "create the directory",
            path: "/a".to_owned(),
            source: errno.into(),
        }
    }

    #[test]
    fn a_read_only_or_full_disk_says_so_and_what_to_do_and_is_retried() {
        for (errno, says) in [
            (
                rustix::io::Errno::ROFS,
                "mounted read-only on this worker: remount it read-write",
            ),
            (
                rustix::io::Errno::NOSPC,
                "the storage's disk is full: free space on it",
            ),
            (rustix::io::Errno::DQUOT, "disk quota on the storage is used up"),
            (
                rustix::io::Errno::ACCESS,
                "may not write there: give it write permission",
            ),
        ] {
            let error = io(errno);

            let text = error.to_string();

            assert!(!error.is_permanent(), "{text}");
            assert!(
                text.starts_with("storage local1: cannot create the directory /a: "),
                "{text}"
            );
            assert!(text.contains(says), "{text}");
            assert!(text.ends_with("(the task is retried)"), "{text}");
        }
        let plain = io(rustix::io::Errno::IO).to_string();
        assert!(plain.ends_with("Input/output error (os error 5)"), "{plain}");
    }
}
