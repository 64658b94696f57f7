//! The `local` storage when the disk fails: a partial file whose write,
//! writeback or sync failed cannot be trusted (Linux may have dropped the
//! pages it could not write and kept the file's length), so it is
//! discarded, and the next attempt of the task starts from byte 0 instead
//! of resuming from it or taking it for complete.
//!
//! The disk is made to fail at the storage's fail points (the `fail`
//! crate's, compiled in by the worker's dev-dependencies). A fail point is
//! the whole process's, so these tests have a test binary of their own,
//! and each holds a `FailScenario`, which runs them one at a time and
//! clears every fail point when it ends (a failed test's too).

use bytes::Bytes;
use fail::FailScenario;
use savestream_shared::task::TaskId;
use savestream_worker::storage::{
    FileName, LocalStorage, PartialFile, Storage, StorageDir, StorageError, StoragePath,
};

/// Task `owner`'s file `/f.bin`, reserved, in a storage of its own.
struct Reserved {
    _dir: tempfile::TempDir,
    storage: LocalStorage,
    owner: TaskId,
    path: StoragePath,
}

/// A file reserved, and its partial file opened.
async fn opened() -> (Reserved, Box<dyn PartialFile>) {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new("local1", &dir.path().join("base")).unwrap();
    let owner = TaskId::generate();
    let path = storage
        .reserve(
            &owner,
            &StorageDir::parse("/").unwrap(),
            &FileName::parse("f.bin").unwrap(),
            &[],
        )
        .await
        .unwrap();
    let partial = storage.open(&owner, &path).await.unwrap();
    let reserved = Reserved {
        _dir: dir,
        storage,
        owner,
        path,
    };
    (reserved, partial)
}

impl Reserved {
    /// Asserts that nothing of what was written is left for a later
    /// attempt: no finished file, and the partial file the next attempt
    /// opens, still holding the name, is empty. Then saves the file whole
    /// through it, as that attempt would, the disk being well again.
    async fn assert_the_next_attempt_starts_over(&self) {
        let base = self.storage.base_path();
        assert!(!base.join("f.bin").exists(), "a file was finished");
        let own = base.join(LocalStorage::own_partial_name(&self.path.name, &self.owner));
        assert_eq!(
            std::fs::metadata(&own).unwrap().len(),
            0,
            "the partial file was kept"
        );
        assert!(base.join("f.bin.part").exists(), "the name is no longer held");

        let mut again = self.storage.open(&self.owner, &self.path).await.unwrap();
        assert_eq!(again.len(), 0, "the next attempt resumes from a partial file");
        again.write(Bytes::from(vec![b'b'; 3000])).await.unwrap();
        assert_eq!(again.finish().await.unwrap(), 3000);
        let saved = std::fs::read(base.join("f.bin")).unwrap();
        assert!(saved.len() == 3000 && saved.iter().all(|&byte| byte == b'b'));
    }
}

/// Writes `chunks` and flushes them, up to the first failure.
async fn write_all(partial: &mut dyn PartialFile, chunks: Vec<Bytes>) -> Result<(), StorageError> {
    for chunk in chunks {
        partial.write(chunk).await?;
    }
    partial.flush().await
}

/// Asserts that `error` names what `failed`, and can be retried.
fn assert_names(error: &StorageError, failed: &str) {
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("storage local1: cannot {failed}")),
        "{text}"
    );
    assert!(!error.is_permanent(), "{error}");
}

/// Asserts that `error` says the partial file was discarded.
fn assert_discarded(error: &StorageError) {
    assert!(matches!(error, StorageError::Discarded { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .ends_with("; the partial file was discarded, to start over"),
        "{error}"
    );
}

#[tokio::test]
async fn a_partial_file_whose_sync_fails_in_finish_is_discarded_so_the_next_attempt_starts_over() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    // All of the file: a next attempt that resumed would take it for complete.
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    partial.flush().await.unwrap();
    fail::cfg("write_behind::sync", "return").unwrap();

    let error = partial.finish().await.unwrap_err();

    assert_names(
        &error,
        "sync the partial file of /f.bin: Input/output error (os error 5)",
    );
    fail::remove("write_behind::sync");
    reserved.assert_the_next_attempt_starts_over().await;
    assert_discarded(&error);
    scenario.teardown();
}

#[tokio::test]
async fn a_partial_file_whose_write_fails_is_discarded_so_the_next_attempt_starts_over() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    partial.flush().await.unwrap();
    fail::cfg("write_behind::write", "return").unwrap();

    let error = write_all(partial.as_mut(), vec![Bytes::from(vec![b'a'; 1000])])
        .await
        .unwrap_err();

    assert_names(
        &error,
        "write the partial file of /f.bin: Input/output error (os error 5)",
    );
    fail::remove("write_behind::write");
    drop(partial);
    reserved.assert_the_next_attempt_starts_over().await;
    assert_discarded(&error);
    scenario.teardown();
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_partial_file_whose_writeback_fails_is_discarded_so_the_next_attempt_starts_over() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    fail::cfg("write_behind::writeback", "return").unwrap();

    // Past the 8 MiB after which the writing thread starts the writeback.
    let chunks = (0..9).map(|_| Bytes::from(vec![b'a'; 1 << 20])).collect();
    let error = write_all(partial.as_mut(), chunks).await.unwrap_err();

    assert_names(
        &error,
        "write the partial file of /f.bin: the disk's writeback failed: Input/output error (os error 5)",
    );
    fail::remove("write_behind::writeback");
    drop(partial);
    reserved.assert_the_next_attempt_starts_over().await;
    assert_discarded(&error);
    scenario.teardown();
}

#[tokio::test]
async fn emptying_a_partial_file_is_synced_and_one_whose_sync_fails_is_discarded() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    partial.flush().await.unwrap();
    fail::cfg("write_behind::sync", "return").unwrap();

    // A truncate that is not synced could come back after a power loss,
    // old bytes and all, under the validator of the file that replaced them.
    let error = partial.truncate().await.unwrap_err();

    assert_names(
        &error,
        "truncate the partial file of /f.bin: Input/output error (os error 5)",
    );
    fail::remove("write_behind::sync");
    drop(partial);
    reserved.assert_the_next_attempt_starts_over().await;
    assert_discarded(&error);
    scenario.teardown();
}

#[tokio::test]
async fn a_partial_file_whose_sync_fails_and_that_cannot_be_discarded_fails_the_task() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    fail::cfg("write_behind::sync", "return").unwrap();
    fail::cfg("local::discard", "return").unwrap();

    let error = partial.finish().await.unwrap_err();

    // The partial file is still there, whole: only a task that is over
    // never has an attempt that resumes from it.
    assert!(error.is_permanent(), "{error}");
    let base = reserved.storage.base_path();
    let own = base.join(LocalStorage::own_partial_name(
        &reserved.path.name,
        &reserved.owner,
    ));
    assert_eq!(std::fs::metadata(own).unwrap().len(), 3000);
    assert!(matches!(error, StorageError::Untrusted { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "storage local1: cannot sync the partial file of /f.bin: Input/output error (os error 5); \
         nor discard the partial file (Input/output error (os error 5)), which no later attempt \
         may resume from: the task fails"
    );
    assert!(!base.join("f.bin").exists());
    scenario.teardown();
}
