//! The `local` storage when the disk fails: a partial file whose write,
//! writeback or sync failed cannot be trusted (Linux may have dropped the
//! pages it could not write and kept the file's length), so it is
//! discarded, and the next attempt of the task starts from byte 0 instead
//! of resuming from it or taking it for complete. And the `local` storage
//! when a worker is killed, or another attempt of the task acts, at an
//! instant no test could otherwise hit: while a partial file is finished.
//! And the `local` storage when someone who may write inside its base path
//! swaps a directory a task works in for a symlink out of it, at such an
//! instant: nothing is made or linked where the symlink leads.
//!
//! And a disk without room for a file: refused before it is written, when
//! its size is known, else said to be full when a write fills it.
//! And a base path the worker may not write in, or on a file system
//! without hard links: the storage says which, and what to do.
//!
//! The disk is made to fail, and the worker to stop or wait, at the
//! storage's fail points (the `fail` crate's, compiled in by the worker's
//! dev-dependencies). A fail point is
//! the whole process's, so these tests have a test binary of their own,
//! and each holds a `FailScenario`, which runs them one at a time and
//! clears every fail point when it ends (a failed test's too).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fail::FailScenario;
use savestream_shared::task::TaskId;
use savestream_worker::storage::{
    FileName, LocalStorage, PartialFile, Storage, StorageDir, StorageError, StoragePath, Storages,
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

/// A file reserved, whose partial file `stale` (an attempt that took the
/// task over) wrote 1500 bytes of, and that another attempt of the task
/// (the one taken over, yet still running) discarded since: it had written
/// only the first 1000, so it found the file interleaved, and a new, empty
/// partial file holds the name now.
async fn discarded() -> (Reserved, Box<dyn PartialFile>) {
    let (reserved, mut first) = opened().await;
    first.write(Bytes::from(vec![b'a'; 1000])).await.unwrap();
    first.flush().await.unwrap();
    let mut stale = reserved
        .storage
        .open(&reserved.owner, &reserved.path)
        .await
        .unwrap();
    stale.write(Bytes::from(vec![b'a'; 500])).await.unwrap();
    stale.flush().await.unwrap();
    let interleaved = first.finish().await.unwrap_err();
    assert!(
        matches!(interleaved, StorageError::Interleaved { .. }),
        "{interleaved}"
    );
    (reserved, stale)
}

/// Finishes `partial` on a thread and a runtime of its own, and waits for
/// it: what another worker does while a fail point holds this one still.
fn finish_elsewhere(partial: Box<dyn PartialFile>) -> u64 {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(partial.finish())
    })
    .join()
    .unwrap()
    .unwrap()
}

/// Asserts that `error` says another attempt discarded the partial file.
fn assert_replaced(error: &StorageError) {
    assert!(matches!(error, StorageError::Replaced { .. }), "{error:?}");
    assert!(!error.is_permanent(), "{error}");
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

/// Asserts that `error` says the finished file is whole but `unsynced`
/// (what failed), tells what to do, and may pass.
fn assert_unsynced(error: &StorageError, unsynced: &str) {
    assert!(matches!(error, StorageError::Unsynced { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with(&format!("storage local1: {unsynced}")), "{text}");
    assert!(text.contains("check the file system"), "{text}");
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
    // Past the 8 MiB after which the writing thread starts the writeback.
    assert_a_failed_writeback_discards_the_partial_file("return", 9).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_partial_file_whose_writeback_fails_while_it_is_waited_for_is_discarded() {
    // The writing thread starts the writeback of each 8 MiB (calls 1, 2
    // and 3 by 24 MiB) and then waits for the oldest stretch, to drop it
    // from the page cache (call 4): that wait is what fails here.
    assert_a_failed_writeback_discards_the_partial_file("3*off->return", 25).await;
}

/// Writes `mebibytes` MiB into a new partial file while the fail point
/// `write_behind::writeback` does `action`, and checks that the write fails
/// as the disk's writeback and that the next attempt starts over.
#[cfg(target_os = "linux")]
async fn assert_a_failed_writeback_discards_the_partial_file(action: &str, mebibytes: usize) {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    fail::cfg("write_behind::writeback", action).unwrap();

    let chunks = (0..mebibytes).map(|_| Bytes::from(vec![b'a'; 1 << 20])).collect();
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

#[tokio::test]
async fn a_partial_file_whose_sync_fails_and_whose_discard_fails_once_no_name_leads_to_it_is_discarded() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    fail::cfg("write_behind::sync", "return").unwrap();
    // The discard gets as far as removing both names, and no further.
    fail::cfg("local::start_over", "return").unwrap();

    let error = partial.finish().await.unwrap_err();

    fail::remove("local::start_over");
    fail::remove("write_behind::sync");
    // Out of every later attempt's reach: no need to fail the task.
    assert_names(
        &error,
        "sync the partial file of /f.bin: Input/output error (os error 5)",
    );
    assert_discarded(&error);
    let base = reserved.storage.base_path();
    let own = base.join(LocalStorage::own_partial_name(
        &reserved.path.name,
        &reserved.owner,
    ));
    assert!(!own.exists() && !base.join("f.bin.part").exists());
    assert!(!base.join("f.bin").exists());
    let mut again = reserved
        .storage
        .open(&reserved.owner, &reserved.path)
        .await
        .unwrap();
    assert_eq!(again.len(), 0);
    again.write(Bytes::from(vec![b'b'; 3000])).await.unwrap();
    assert_eq!(again.finish().await.unwrap(), 3000);
    scenario.teardown();
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_writeback_the_kernel_has_no_memory_to_start_is_no_failure_of_the_disk() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    // ENOMEM: the request was refused, nothing was written or dropped.
    fail::cfg("write_behind::writeback", "return(12)").unwrap();

    // Past the 8 MiB after which the writing thread starts the writeback.
    let chunks = (0..9).map(|_| Bytes::from(vec![b'a'; 1 << 20])).collect();
    write_all(partial.as_mut(), chunks).await.unwrap();
    let finished = partial.finish().await;

    fail::remove("write_behind::writeback");
    assert_eq!(finished.unwrap(), 9 << 20);
    let saved = std::fs::read(reserved.storage.base_path().join("f.bin")).unwrap();
    assert!(saved.len() == 9 << 20 && saved.iter().all(|&byte| byte == b'a'));
    scenario.teardown();
}

#[tokio::test]
async fn a_worker_killed_while_finishing_a_partial_file_another_attempt_discarded_leaves_no_finished_file() {
    let scenario = FailScenario::setup();
    let (reserved, stale) = discarded().await;
    // The worker is killed right after it links the finished name, before
    // any check could take a wrong link away again.
    fail::cfg("local::finish::linked", "return").unwrap();

    let error = stale.finish().await.unwrap_err();

    fail::remove("local::finish::linked");
    assert!(
        !reserved.storage.base_path().join("f.bin").exists(),
        "the finished name leads to the new, empty partial file"
    );
    assert_eq!(
        reserved
            .storage
            .finished(&reserved.owner, &reserved.path)
            .await
            .unwrap(),
        None
    );
    assert_replaced(&error);
    reserved.assert_the_next_attempt_starts_over().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_partial_file_discarded_between_the_check_and_the_link_is_not_linked_not_even_for_an_instant() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    let base = reserved.storage.base_path().to_path_buf();
    let own = base.join(LocalStorage::own_partial_name(
        &reserved.path.name,
        &reserved.owner,
    ));
    let hold = base.join("f.bin.part");
    // Another attempt discards the partial file just after `finish` found
    // it still the task's, as `start_over` does: a new, empty one takes
    // both names. And the worker is killed right after its link.
    fail::cfg_callback("local::finish::link", move || {
        std::fs::remove_file(&hold).unwrap();
        std::fs::remove_file(&own).unwrap();
        std::fs::write(&own, b"").unwrap();
        std::fs::hard_link(&own, &hold).unwrap();
    })
    .unwrap();
    fail::cfg("local::finish::linked", "return").unwrap();

    let error = partial.finish().await.unwrap_err();

    fail::remove("local::finish::link");
    fail::remove("local::finish::linked");
    assert!(
        !base.join("f.bin").exists(),
        "the finished name leads to the new, empty partial file"
    );
    assert_replaced(&error);
    reserved.assert_the_next_attempt_starts_over().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_new_partial_file_finished_while_a_discarded_one_is_finished_too_is_kept() {
    let scenario = FailScenario::setup();
    let (reserved, stale) = discarded().await;
    let mut new = reserved
        .storage
        .open(&reserved.owner, &reserved.path)
        .await
        .unwrap();
    new.write(Bytes::from(vec![b'b'; 3000])).await.unwrap();
    new.flush().await.unwrap();
    // The attempt writing the new partial file finishes it just after the
    // stale one linked the finished name.
    let waiting = Arc::new(Mutex::new(Some(new)));
    let finishing = waiting.clone();
    fail::cfg_callback("local::finish::linked", move || {
        // Taken out first: its finish comes by this fail point too.
        let new = finishing.lock().unwrap().take();
        if let Some(new) = new {
            assert_eq!(finish_elsewhere(new), 3000);
        }
    })
    .unwrap();

    let error = stale.finish().await.unwrap_err();

    fail::remove("local::finish::linked");
    assert_replaced(&error);
    let new = waiting.lock().unwrap().take();
    if let Some(new) = new {
        assert_eq!(new.finish().await.unwrap(), 3000);
    }
    let saved = std::fs::read(reserved.storage.base_path().join("f.bin"))
        .expect("the file the new partial file was finished into is gone");
    assert!(saved.len() == 3000 && saved.iter().all(|&byte| byte == b'b'));
    assert_eq!(
        reserved
            .storage
            .finished(&reserved.owner, &reserved.path)
            .await
            .unwrap(),
        Some(3000)
    );
    scenario.teardown();
}

#[tokio::test]
async fn without_proc_a_partial_file_is_linked_by_its_name_and_one_another_attempt_discarded_is_not() {
    let scenario = FailScenario::setup();
    // As where a file cannot be linked by its descriptor.
    fail::cfg("local::link_descriptor", "return").unwrap();
    let (reserved, mut partial) = opened().await;
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    assert_eq!(partial.finish().await.unwrap(), 3000);
    assert_eq!(
        std::fs::read(reserved.storage.base_path().join("f.bin"))
            .unwrap()
            .len(),
        3000
    );

    let (reserved, stale) = discarded().await;
    let error = stale.finish().await.unwrap_err();

    assert_replaced(&error);
    reserved.assert_the_next_attempt_starts_over().await;
    fail::remove("local::link_descriptor");
    scenario.teardown();
}

/// A storage of its own, with no file yet.
fn empty_storage() -> (tempfile::TempDir, LocalStorage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new("local1", &dir.path().join("base")).unwrap();
    (dir, storage)
}

/// A file `file` of a new task under `dir`, reserved, and its partial file
/// opened and written whole (3000 bytes): all that is left is to finish it.
async fn written_in(
    storage: &LocalStorage,
    dir: &str,
    file: &str,
) -> (TaskId, StoragePath, Box<dyn PartialFile>) {
    let owner = TaskId::generate();
    let path = storage
        .reserve(
            &owner,
            &StorageDir::parse(dir).unwrap(),
            &FileName::parse(file).unwrap(),
            &[],
        )
        .await
        .unwrap();
    let mut partial = storage.open(&owner, &path).await.unwrap();
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    partial.flush().await.unwrap();
    (owner, path, partial)
}

/// Counts the directory syncs `local::sync_directory` sees; `take` answers
/// how many there were since it was last called.
struct SyncCount(Arc<Mutex<usize>>);

impl SyncCount {
    fn start() -> SyncCount {
        let syncs = Arc::new(Mutex::new(0));
        let counted = syncs.clone();
        fail::cfg_callback("local::sync_directory", move || *counted.lock().unwrap() += 1).unwrap();
        SyncCount(syncs)
    }

    fn take(&self) -> usize {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn a_finish_whose_directory_entry_cannot_be_synced_in_an_ancestor_is_an_error_and_the_file_not_complete(
) {
    let scenario = FailScenario::setup();
    let (_dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    let (owner, path, partial) = written_in(&storage, "/a/b/c", "f.bin").await;
    // The file's own directory syncs; its entry in `b` does not.
    fail::cfg("local::sync_directory", "1*off->return").unwrap();

    let error = partial.finish().await.unwrap_err();

    // A power loss could take `c`, and the file with it, after the store
    // recorded it completed.
    assert_unsynced(
        &error,
        "/a/b/c/f.bin is saved whole, but cannot sync the entry of /a/b/c in /a/b: \
         Input/output error (os error 5)",
    );
    // Its bytes were synced: the file stays, at its name, for the next
    // attempt to find finished ...
    assert_eq!(std::fs::read(base.join("a/b/c/f.bin")).unwrap().len(), 3000);
    // ... which syncs its directories again before it reports it complete.
    fail::cfg("local::sync_directory", "return").unwrap();
    let again = storage.finished(&owner, &path).await;
    assert!(matches!(again, Err(StorageError::Unsynced { .. })), "{again:?}");
    fail::remove("local::sync_directory");
    assert_eq!(storage.finished(&owner, &path).await.unwrap(), Some(3000));

    // A file system that cannot sync a directory, or a directory the worker
    // may write in but not open (mode 0733), loses only that guarantee.
    for errno in [libc::EINVAL, libc::EOPNOTSUPP, libc::EACCES, libc::EPERM] {
        let file = format!("g{errno}.bin");
        let (_, _, partial) = written_in(&storage, "/a/b/c", &file).await;
        fail::cfg("local::sync_directory", &format!("1*off->return({errno})")).unwrap();
        let tolerated = partial.finish().await;
        fail::remove("local::sync_directory");
        assert_eq!(tolerated.unwrap(), 3000, "errno {errno}");
    }
    scenario.teardown();
}

#[tokio::test]
async fn finishing_a_file_syncs_its_directory_and_each_ancestor_up_to_the_base_and_nothing_before() {
    let scenario = FailScenario::setup();
    let (_dir, storage) = empty_storage();
    let syncs = SyncCount::start();

    let (_, _, deep) = written_in(&storage, "/a/b/c", "f.bin").await;
    let (_, _, top) = written_in(&storage, "/", "f.bin").await;
    let before = syncs.take();
    deep.finish().await.unwrap();
    let deep = syncs.take();
    top.finish().await.unwrap();
    let top = syncs.take();

    fail::remove("local::sync_directory");
    // Making directories syncs nothing: durability is the finish's.
    assert_eq!(before, 0, "reserving and opening");
    // `c`'s entry for the file, `b`'s for `c`, `a`'s for `b`, the base's for `a`.
    assert_eq!(deep, 4, "a file in /a/b/c");
    assert_eq!(top, 1, "a file in the base path");
    scenario.teardown();
}

#[tokio::test]
async fn a_file_finished_in_directories_someone_else_made_still_has_each_ancestor_synced() {
    let scenario = FailScenario::setup();
    let (_dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    // Made by hand, and by another task (which may have died before any
    // sync of its own, or still be syncing).
    std::fs::create_dir_all(base.join("x/y")).unwrap();
    written_in(&storage, "/a/b/c", "other.bin").await;
    let syncs = SyncCount::start();

    let (_, _, by_hand) = written_in(&storage, "/x/y", "f.bin").await;
    by_hand.finish().await.unwrap();
    let by_hand = syncs.take();
    let (_, _, by_another) = written_in(&storage, "/a/b/c", "f.bin").await;
    by_another.finish().await.unwrap();
    let by_another = syncs.take();

    fail::remove("local::sync_directory");
    assert_eq!(by_hand, 3, "a file in /x/y, made by hand");
    assert_eq!(by_another, 4, "a file in /a/b/c, made by another task");
    scenario.teardown();
}

#[tokio::test]
async fn the_syncs_of_a_finish_go_from_the_files_directory_up_to_the_base() {
    let scenario = FailScenario::setup();
    let (_dir, storage) = empty_storage();
    // The sync that fails tells which directory it was.
    let expected = [
        "/a/b/c/f0.bin is saved whole, but cannot sync its entry in its directory",
        "/a/b/c/f1.bin is saved whole, but cannot sync the entry of /a/b/c in /a/b",
        "/a/b/c/f2.bin is saved whole, but cannot sync the entry of /a/b in /a",
        "/a/b/c/f3.bin is saved whole, but cannot sync the entry of /a in the base path",
    ];
    for (skipped, failed) in expected.iter().enumerate() {
        let (_, _, partial) = written_in(&storage, "/a/b/c", &format!("f{skipped}.bin")).await;
        fail::cfg("local::sync_directory", &format!("{skipped}*off->return")).unwrap();
        let error = partial.finish().await.unwrap_err();
        fail::remove("local::sync_directory");
        assert_unsynced(&error, &format!("{failed}: Input/output error (os error 5)"));
    }
    // And no fifth.
    let (_, _, partial) = written_in(&storage, "/a/b/c", "f4.bin").await;
    fail::cfg("local::sync_directory", "4*off->return").unwrap();
    let finished = partial.finish().await;
    fail::remove("local::sync_directory");
    assert_eq!(finished.unwrap(), 3000);
    scenario.teardown();
}

/// Every name under `directory`, relative and sorted, directories too
/// (a symlink is listed, not followed).
fn everything_under(directory: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(listed) = pending.pop() {
        for entry in std::fs::read_dir(&listed).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(directory).unwrap().display().to_string());
        }
    }
    found.sort();
    found
}

/// Swaps the directory `base/a` for a symlink to `outside` (which has a
/// `b` of its own, as `base/a` has), moving it to `base/moved`: what someone
/// who may write in a shared base path does to make a worker running as
/// root write where it may not. Only the first call swaps.
fn swap_a_for_a_symlink_to(base: &std::path::Path, outside: &std::path::Path) -> impl Fn() + Send + Sync {
    let (base, outside) = (base.to_path_buf(), outside.to_path_buf());
    let swapped = std::sync::atomic::AtomicBool::new(false);
    move || {
        if !swapped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::fs::rename(base.join("a"), base.join("moved")).unwrap();
            std::os::unix::fs::symlink(&outside, base.join("a")).unwrap();
        }
    }
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_after_it_was_walked_gets_no_partial_file_outside_the_base_path() {
    let scenario = FailScenario::setup();
    // Arrange: a file reserved in /a/b, and somewhere outside the base path
    // that looks like it.
    let (dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("b")).unwrap();
    let owner = TaskId::generate();
    let path = storage
        .reserve(
            &owner,
            &StorageDir::parse("/a/b").unwrap(),
            &FileName::parse("f.bin").unwrap(),
            &[],
        )
        .await
        .unwrap();
    // `a` becomes a symlink out of the base path just after the next
    // attempt walked to /a/b, before it opens or makes anything there.
    fail::cfg_callback("local::dir_resolved", swap_a_for_a_symlink_to(&base, &outside)).unwrap();

    // Act: that attempt opens the partial file, writes it whole and finishes it.
    let saved = async {
        let mut partial = storage.open(&owner, &path).await?;
        partial.write(Bytes::from(vec![b'a'; 3000])).await?;
        partial.finish().await
    }
    .await;

    // Assert: nothing was made where the symlink leads; the file is saved
    // in the directory that was walked, which is `moved/b` now.
    fail::remove("local::dir_resolved");
    assert!(base.join("a").is_symlink(), "the directory was not swapped");
    assert_eq!(
        everything_under(&outside),
        vec!["b"],
        "made outside the base path"
    );
    assert_eq!(saved.unwrap(), 3000);
    assert_eq!(everything_under(&base.join("moved")), vec!["b", "b/f.bin"]);
    assert_eq!(std::fs::read(base.join("moved/b/f.bin")).unwrap().len(), 3000);
    scenario.teardown();
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_before_its_file_is_finished_gets_no_file_linked_outside_the_base_path(
) {
    let scenario = FailScenario::setup();
    // Arrange: a file written whole in /a/b, and somewhere outside the base
    // path that looks like it.
    let (dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("b")).unwrap();
    let (_, _, partial) = written_in(&storage, "/a/b", "f.bin").await;
    // `a` becomes a symlink out of the base path just before the finished
    // name is linked.
    fail::cfg_callback("local::finish::link", swap_a_for_a_symlink_to(&base, &outside)).unwrap();

    let syncs = SyncCount::start();

    // Act
    let finished = partial.finish().await;

    // Assert: the finished name was linked, and its directories synced, in
    // the directory the file was written in, which is `moved/b` now: `b`,
    // then `moved` and the base, each reached as the `..` of the one below
    // and checked to be the directory walked there (`a`, renamed in
    // place, is), never `outside/b` nor `outside`, which are not.
    fail::remove("local::finish::link");
    fail::remove("local::sync_directory");
    assert!(base.join("a").is_symlink(), "the directory was not swapped");
    assert_eq!(
        everything_under(&outside),
        vec!["b"],
        "made outside the base path"
    );
    assert_eq!(finished.unwrap(), 3000);
    assert_eq!(everything_under(&base.join("moved")), vec!["b", "b/f.bin"]);
    assert_eq!(syncs.take(), 3, "b, moved and the base");
    scenario.teardown();
}

#[tokio::test]
async fn a_directory_moved_to_another_directory_before_its_file_is_finished_is_synced_but_nothing_above_it() {
    let scenario = FailScenario::setup();
    // Arrange: a file written whole in /a/b, whose directory `b` is moved
    // out of `a`, to `elsewhere/b`, just before the finished name is linked.
    let (dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (owner, path, partial) = written_in(&storage, "/a/b", "f.bin").await;
    let (from, to) = (base.join("a/b"), elsewhere.join("b"));
    fail::cfg_callback("local::finish::link", move || {
        let _ = std::fs::rename(&from, &to);
    })
    .unwrap();
    let syncs = SyncCount::start();

    // Act
    let finished = partial.finish().await;

    // Assert: linked in `b`, wherever it is; `b` synced, and then the climb
    // stops, since `elsewhere` is not the `a` walked through: not synced,
    // nor anything above it. The file is no longer where its path leads,
    // which the error says, and the next attempt finds it not finished.
    fail::remove("local::finish::link");
    fail::remove("local::sync_directory");
    assert!(
        elsewhere.join("b/f.bin").exists(),
        "not linked in the directory walked"
    );
    assert_eq!(syncs.take(), 1, "b alone");
    let error = finished.unwrap_err();
    assert_unsynced(
        &error,
        "/a/b/f.bin is saved whole, but cannot sync the entry of /a/b in /a: it was moved to another \
         directory since it was walked, so the file is no longer where its path leads (the next \
         attempt walks that path again)",
    );
    assert_eq!(storage.finished(&owner, &path).await.unwrap(), None);
    scenario.teardown();
}

#[tokio::test]
async fn a_directory_swapped_for_a_symlink_while_partial_files_are_looked_for_is_passed_over() {
    let scenario = FailScenario::setup();
    // Arrange: a task's partial file in /d, and another's outside the base
    // path, where a symlink put in place of `d` would lead.
    let (dir, storage) = empty_storage();
    let base = storage.base_path().to_path_buf();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    written_in(&storage, "/d", "in.bin").await;
    let (stranger, _, _) = written_in(&storage, "/x", "out.bin").await;
    std::fs::rename(base.join("x"), outside.join("x")).unwrap();
    // `d` becomes a symlink to outside just after the base was listed,
    // before `d` is opened to be listed in turn.
    let (swapped, target) = (base.join("d"), outside.join("x"));
    let once = std::sync::Once::new();
    fail::cfg_callback("local::partial_owners::listed", move || {
        once.call_once(|| {
            std::fs::rename(&swapped, swapped.with_file_name("moved")).unwrap();
            std::os::unix::fs::symlink(&target, &swapped).unwrap();
        })
    })
    .unwrap();

    // Act
    let owners = storage.partial_owners().await;

    // Assert: the symlink was not followed: nothing outside the base path
    // is reported (`d` is passed over, and `moved` came after the listing).
    fail::remove("local::partial_owners::listed");
    assert!(base.join("d").is_symlink(), "the directory was not swapped");
    let owners: Vec<String> = owners
        .unwrap()
        .into_iter()
        .map(|(found, dir)| format!("{found} {dir}"))
        .collect();
    assert!(
        !owners.contains(&format!("{stranger} /d")),
        "a partial file outside the base path was reported: {owners:?}"
    );
    assert!(owners.is_empty(), "{owners:?}");
    scenario.teardown();
}

#[test]
fn a_base_path_the_worker_may_not_write_says_so_not_that_it_cannot_make_hard_links() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("x");
    fail::cfg("local::check_hard_links", "return(write)").unwrap();

    let error = LocalStorage::new("ro", &base).unwrap_err();

    assert!(matches!(error, StorageError::NotWritable { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "storage ro: the base path {} is not writable by this worker (uid {}): Read-only file system \
             (os error 30); make it writable, or remove the storage from config.toml",
            base.display(),
            rustix::process::geteuid().as_raw()
        )
    );
    assert!(!error.is_permanent(), "{error}");
    scenario.teardown();
}

#[test]
fn a_base_path_on_a_file_system_without_hard_links_says_so_and_what_to_do() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    fail::cfg("local::check_hard_links", "return(link)").unwrap();

    let error = LocalStorage::new("fat", &dir.path().join("x")).unwrap_err();

    assert!(matches!(error, StorageError::NoHardLinks { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("cannot make hard links, which the local storage needs: Operation not permitted")
            && text.ends_with("put the base path on a Unix file system (not FAT or exFAT), or remove the storage from config.toml"),
        "{text}"
    );
    scenario.teardown();
}

#[tokio::test]
async fn a_storage_that_cannot_be_set_up_fails_each_call_retryably_until_it_can_then_works() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("x");
    let text = format!(
        "[[storages]]\nname = \"ro\"\ntype = \"local\"\nbase_path = \"{}\"\n\
         [[users]]\nid = 1\nstorages = [\"ro\"]\n",
        base.display()
    );
    let config = savestream_shared::config::Config::from_toml_str(&text, "test.toml", Vec::new())
        .unwrap()
        .config;
    fail::cfg("local::check_hard_links", "return(write)").unwrap();

    let storages = Storages::from_config(&config);
    let storage = storages
        .get("ro")
        .expect("the storage stands in for itself")
        .clone();
    let owner = TaskId::generate();
    let (dir_root, file) = (StorageDir::parse("/").unwrap(), FileName::parse("f.bin").unwrap());
    let refused = storage.reserve(&owner, &dir_root, &file, &[]).await.unwrap_err();

    assert!(!storage.is_usable());
    assert!(!refused.is_permanent(), "{refused}");
    assert!(
        refused.to_string().starts_with(&format!(
            "storage ro is unusable on this worker: the base path {} is not writable by this worker",
            base.display()
        )) && refused
            .to_string()
            .ends_with("the task is retried, for a worker where the storage works"),
        "{refused}"
    );

    fail::remove("local::check_hard_links");
    let path = storage.reserve(&owner, &dir_root, &file, &[]).await.unwrap();
    assert!(storage.is_usable());
    let mut partial = storage.open(&owner, &path).await.unwrap();
    partial.write(Bytes::from_static(b"saved")).await.unwrap();
    assert_eq!(partial.finish().await.unwrap(), 5);
    assert_eq!(std::fs::read(base.join("f.bin")).unwrap(), b"saved");
    scenario.teardown();
}

#[tokio::test]
async fn a_file_larger_than_the_free_space_is_refused_before_it_is_written_naming_the_storage_and_both_sizes()
{
    let scenario = FailScenario::setup();
    let (_reserved, mut partial) = opened().await;
    fail::cfg("local::free_space", "return(1000)").unwrap();

    let refused = partial.check_space(5000).await.unwrap_err();

    assert!(matches!(refused, StorageError::NoSpace { .. }), "{refused:?}");
    assert!(!refused.is_permanent(), "{refused}");
    assert_eq!(
        refused.to_string(),
        "storage local1: /f.bin needs 5000 more bytes, and the storage's disk has 1000 bytes free: free \
         space on it, or give the storage a bigger disk (the task is retried)"
    );
    // What the partial file holds already (a resume) needs no more room.
    partial.write(Bytes::from(vec![b'a'; 3000])).await.unwrap();
    partial.flush().await.unwrap();
    assert!(partial.check_space(3900).await.is_ok());
    assert!(partial.check_space(4001).await.is_err());
    scenario.teardown();
}

#[tokio::test]
async fn the_free_space_is_that_of_the_real_file_system() {
    let scenario = FailScenario::setup();
    let (_reserved, mut partial) = opened().await;

    let refused = partial.check_space(u64::MAX).await.unwrap_err();

    assert!(
        matches!(refused, StorageError::NoSpace { needed: u64::MAX, free, .. } if free < u64::MAX),
        "{refused:?}"
    );
    assert!(partial.check_space(1).await.is_ok());
    scenario.teardown();
}

#[tokio::test]
async fn a_write_that_fills_the_disk_says_the_storages_disk_is_full() {
    let scenario = FailScenario::setup();
    let (reserved, mut partial) = opened().await;
    fail::cfg("write_behind::write", "return(28)").unwrap();

    let error = write_all(partial.as_mut(), vec![Bytes::from(vec![b'a'; 1000])])
        .await
        .unwrap_err();

    let text = error.to_string();
    assert!(
        text.starts_with(
            "storage local1: cannot write the partial file of /f.bin: No space left on device (os error 28); \
             the storage's disk is full: free space on it"
        ),
        "{text}"
    );
    assert!(!error.is_permanent(), "{text}");
    fail::remove("write_behind::write");
    drop(partial);
    reserved.assert_the_next_attempt_starts_over().await;
    scenario.teardown();
}
