//! [`WriteBehind`]: a file written in order by a thread of its own, so that
//! a download never waits on the disk chunk by chunk.
//!
//! It owns the writes and sync of one open file, and nothing
//! about names, links or which storage the file belongs to (that is
//! `local`'s). The async side gathers the chunks it is given, without
//! copying them, into batches of about [`BATCH_BYTES`] and hands each batch
//! to the thread through a queue of [`QUEUED_BATCHES`]; the thread writes
//! it with one vectored write.
//!
//! Every write goes at an offset the thread keeps (`pwritev`), starting
//! where it was told the file ends and moving on by what it wrote, never at
//! wherever the file ends by then (`O_APPEND`). Another process that writes
//! the same file (an attempt taken over while frozen, that wakes up) so
//! cannot push this writer's bytes further along: of two writers of the
//! same source, each writes the same bytes at the same offsets. `tokio::fs` would instead copy every write
//! into a buffer of its own and send it through `spawn_blocking`, one
//! round trip between threads per write, and the download would wait for
//! each. Memory stays bounded: at most one batch being gathered, the
//! queue, and the one batch being written.
//!
//! Writes are not answered one by one. A write that fails makes the thread
//! stop; the failure is given back by the next call that waits (a write
//! when the queue is closed, [`WriteBehind::flush`] or [`WriteBehind::sync`]),
//! and every later call gives the same failure.
//! A writeback the disk refuses and a failed sync stop it the same way.
//! After any of them the file's bytes cannot be trusted, whatever its
//! length says (see [`writeback`]); what becomes of the file is its
//! owner's business.
//!
//! Tests make the disk fail at the fail points `write_behind::write`,
//! `write_behind::writeback` and `write_behind::sync` (the `fail` crate:
//! they exist only in builds with its `failpoints` feature, which only
//! the worker's dev-dependencies turn on).
//!
//! The thread also starts the disk's writeback as it goes (every
//! [`WRITEBACK_BYTES`], `sync_file_range` without waiting), so the pages
//! reach the disk while the download continues and the `fsync` that makes a
//! finished file durable has only the tail left to wait for. Left alone, the
//! kernel starts writing back only once a tenth of memory is dirty, which a
//! file of a few GiB may never reach: the final sync then wrote the whole
//! file out after the download had ended. With it, that sync took 7 ms for
//! the 2 GiB file of the download benchmark.
//!
//! Once a stretch is on the disk, the thread drops its pages from the page
//! cache (`posix_fadvise(DONTNEED)`), waiting for the writeback of the
//! stretch before the one it just started. A download so holds at most
//! [`IN_WRITEBACK`] stretches of [`WRITEBACK_BYTES`] of the page cache and
//! the one being written (24 MiB), however large its file: a 50 GiB file
//! no longer pushes everything else the machine had cached out of memory,
//! and each stretch is written into pages the kernel just freed. Writing
//! into pages the machine had not touched for a while is what made the
//! download benchmark slow and uneven on a virtual machine: 575–944 MB/s
//! over HTTP, against 1.6–2.3 GB/s since (BENCHMARKS.md, benchmark 4). The
//! wait only holds a writer that runs ahead of its disk, which could not
//! keep that pace anyway.
//!
//! Dropping it abandons what is still queued, as dropping a buffered writer
//! would: the thread finishes the write it is in and closes the file, so a
//! dropped file (a canceled task, a lost lease) is no longer written to.

use std::fs::{File, Metadata};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// A batch is handed to the writing thread once it holds this many bytes:
/// large enough that the thread makes few system calls, small enough that
/// the queue stays a few MiB.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// How many batches may wait for the thread. With the batch being gathered
/// and the one being written, at most `QUEUED_BATCHES + 2` batches are
/// held, so the download can run ahead of the disk by that much only.
pub const QUEUED_BATCHES: usize = 2;

/// The thread asks the kernel to start writing back every this many bytes
/// written.
pub const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

/// How many stretches of [`WRITEBACK_BYTES`] may be in writeback at once:
/// when a stretch is started, those before the last ones are waited for
/// and dropped from the page cache.
pub const IN_WRITEBACK: u64 = 2;

/// How many slices one vectored write takes at most (Linux's `UIO_MAXIOV`).
const MAX_SLICES: usize = 1024;

/// What the async side asks of the thread, answered in order.
enum Command {
    /// Writes the chunks, in order, where the previous write ended.
    Write(Vec<Bytes>),
    /// Answers once everything before it is written.
    Flush(oneshot::Sender<io::Result<()>>),
    /// Makes everything before it durable (`fsync`) and answers the file's metadata.
    Sync(oneshot::Sender<io::Result<Metadata>>),
}

/// The first failure of the thread, kept so that every later call can
/// report it (an `io::Error` cannot be cloned, so its kind and text are).
#[derive(Default)]
struct Failure(Mutex<Option<(io::ErrorKind, String)>>);

impl Failure {
    fn set(&self, error: &io::Error) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some((error.kind(), error.to_string()));
        }
    }

    fn get(&self) -> Option<io::Error> {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .map(|(kind, message)| io::Error::new(*kind, message.clone()))
    }
}

/// An open file whose writes are done by a thread of its own.
pub struct WriteBehind {
    /// `None` once the thread is known to have stopped.
    commands: Option<mpsc::Sender<Command>>,
    /// Chunks given since the last batch was handed over.
    gathering: Vec<Bytes>,
    gathered_bytes: usize,
    failure: Arc<Failure>,
    /// Set on drop: the thread then writes nothing more.
    abandoned: Arc<AtomicBool>,
}

impl WriteBehind {
    /// Starts the thread that writes `file` from `offset` on (each write
    /// where the one before ended).
    /// `file` must not be opened for appending: Linux writes such a file
    /// at its end whatever the offset. `name` names the thread, for a
    /// reader of thread lists.
    pub fn start(file: File, offset: u64, name: &str) -> io::Result<WriteBehind> {
        let (commands, receiver) = mpsc::channel(QUEUED_BATCHES);
        let failure = Arc::new(Failure::default());
        let abandoned = Arc::new(AtomicBool::new(false));
        let thread_failure = failure.clone();
        let thread_abandoned = abandoned.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(file, offset, receiver, &thread_failure, &thread_abandoned))?;
        Ok(WriteBehind {
            commands: Some(commands),
            gathering: Vec::new(),
            gathered_bytes: 0,
            failure,
            abandoned,
        })
    }

    /// Writes `chunk` after the chunks before it, without copying it.
    /// Returns once it is queued, not written; waits only while the queue
    /// is full.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.gathered_bytes += chunk.len();
        self.gathering.push(chunk);
        if self.gathered_bytes >= BATCH_BYTES || self.gathering.len() >= MAX_SLICES {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Returns once everything given so far is written to the file (not
    /// synced).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.hand_over().await?;
        let (answer, answered) = oneshot::channel();
        self.send(Command::Flush(answer)).await?;
        self.answer(answered).await
    }

    /// Writes everything given so far and makes it durable; answers the
    /// file's metadata, taken after the sync.
    pub async fn sync(&mut self) -> io::Result<Metadata> {
        self.hand_over().await?;
        let (answer, answered) = oneshot::channel();
        self.send(Command::Sync(answer)).await?;
        self.answer(answered).await
    }

    /// Queues the gathered chunks as one batch.
    async fn hand_over(&mut self) -> io::Result<()> {
        if self.gathering.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.gathering);
        self.gathered_bytes = 0;
        self.send(Command::Write(batch)).await
    }

    async fn send(&mut self, command: Command) -> io::Result<()> {
        let Some(commands) = &self.commands else {
            return Err(self.stopped());
        };
        if commands.send(command).await.is_err() {
            // The thread closed the queue: it failed (or, never, panicked).
            self.commands = None;
            return Err(self.stopped());
        }
        Ok(())
    }

    async fn answer<T>(&mut self, answered: oneshot::Receiver<io::Result<T>>) -> io::Result<T> {
        match answered.await {
            Ok(answer) => answer,
            Err(_) => {
                self.commands = None;
                Err(self.stopped())
            }
        }
    }

    /// Why the thread stopped: its failure, else that it is gone.
    fn stopped(&self) -> io::Error {
        self.failure
            .get()
            .unwrap_or_else(|| io::Error::other("the thread writing the file stopped unexpectedly"))
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // The thread sees the flag before each batch, and the closed queue
        // once it has drained it, so it writes at most one more batch.
        self.abandoned.store(true, Ordering::Release);
    }
}

/// The thread: runs commands in order until the queue closes, the file is
/// abandoned, or a command fails (then the failure is kept and it stops).
/// `writeback.end` is where the next write goes.
fn run(
    file: File,
    offset: u64,
    mut receiver: mpsc::Receiver<Command>,
    failure: &Failure,
    abandoned: &AtomicBool,
) {
    let mut writeback = Writeback::at(offset);
    while let Some(command) = receiver.blocking_recv() {
        if abandoned.load(Ordering::Acquire) {
            return;
        }
        let result = match command {
            Command::Write(batch) => {
                write_at(&file, &batch, writeback.end).and_then(|written| writeback.wrote(&file, written))
            }
            Command::Flush(answer) => {
                // Every earlier batch was written before this command was
                // taken; a closed receiver just means nobody waits.
                let _ = answer.send(Ok(()));
                Ok(())
            }
            Command::Sync(answer) => reply(answer, sync(&file)),
        };
        if let Err(error) = result {
            failure.set(&error);
            return;
        }
    }
}

/// `fsync`: makes everything written durable, and answers the file's
/// metadata. A failure stops the thread like any other (the owner must not
/// trust the file: Linux may have dropped the pages it could not write).
fn sync(file: &File) -> io::Result<Metadata> {
    fail::fail_point!("write_behind::sync", |_| Err(io::Error::from_raw_os_error(
        libc::EIO
    )));
    file.sync_all()?;
    file.metadata()
}

/// Answers `result` and passes its failure on, so that the thread stops.
fn reply<T>(answer: oneshot::Sender<io::Result<T>>, result: io::Result<T>) -> io::Result<()> {
    let outcome = match &result {
        Ok(_) => Ok(()),
        Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
    };
    let _ = answer.send(result);
    outcome
}

/// Where the writes have got to, how much of it the kernel was asked to
/// write back, and how much of that is on the disk and out of the page
/// cache: `dropped_up_to <= started_up_to <= end`.
struct Writeback {
    dropped_up_to: u64,
    started_up_to: u64,
    end: u64,
}

impl Writeback {
    fn at(end: u64) -> Writeback {
        Writeback {
            dropped_up_to: end,
            started_up_to: end,
            end,
        }
    }

    /// Counts `written` more bytes written at `end`. Once what was written
    /// since the last start is [`WRITEBACK_BYTES`], starts its writeback,
    /// and drops what is more than [`IN_WRITEBACK`] stretches behind from
    /// the page cache once it is on the disk. Fails when the disk refuses
    /// a writeback.
    fn wrote(&mut self, file: &File, written: u64) -> io::Result<()> {
        self.end += written;
        if self.end - self.started_up_to < WRITEBACK_BYTES {
            return Ok(());
        }
        let failed =
            |error: io::Error| io::Error::new(error.kind(), format!("the disk's writeback failed: {error}"));
        writeback(file, self.started_up_to, self.end - self.started_up_to, Wait::No).map_err(failed)?;
        self.started_up_to = self.end;
        let drop_up_to = self.started_up_to.saturating_sub(IN_WRITEBACK * WRITEBACK_BYTES);
        if drop_up_to > self.dropped_up_to {
            let len = drop_up_to - self.dropped_up_to;
            writeback(file, self.dropped_up_to, len, Wait::Yes).map_err(failed)?;
            drop_cached(file, self.dropped_up_to, len);
            self.dropped_up_to = drop_up_to;
        }
        Ok(())
    }
}

/// Whether [`writeback`] returns once the pages are on the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    No,
    Yes,
}

/// Asks the kernel to write `len` bytes at `offset` to the disk, and with
/// [`Wait::Yes`] waits until they are there. A file the kernel does not
/// write back this way (a pipe, a device) only goes without, and so does a
/// kernel short of memory for the request (`ENOMEM`: nothing was written,
/// nor dropped). Any other failure (EIO, ENOSPC, a network file system's
/// error) is the disk's, and fails the file: the kernel may already have
/// dropped the pages it could not write, keeping the file's length, and
/// the final sync is not sure to hear of it again (Linux reports a
/// writeback error once, if at all).
#[cfg(target_os = "linux")]
fn writeback(file: &File, offset: u64, len: u64, wait: Wait) -> io::Result<()> {
    match sync_file_range(file, offset, len, wait) {
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOMEM)
            ) =>
        {
            Ok(())
        }
        started => started,
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`, waiting before and after it
/// with [`Wait::Yes`]. Its fail point answers the error number it is given
/// (`return(12)`), EIO when given none.
#[cfg(target_os = "linux")]
fn sync_file_range(file: &File, offset: u64, len: u64, wait: Wait) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    fail::fail_point!("write_behind::writeback", |errno: Option<String>| Err(
        io::Error::from_raw_os_error(errno.and_then(|errno| errno.parse().ok()).unwrap_or(libc::EIO))
    ));
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    let flags = match wait {
        Wait::No => libc::SYNC_FILE_RANGE_WRITE,
        Wait::Yes => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range reads no memory of ours.
    let status = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn writeback(_file: &File, _offset: u64, _len: u64, _wait: Wait) -> io::Result<()> {
    Ok(())
}

/// Drops `len` bytes at `offset` from the page cache, where they are
/// written back (the kernel keeps any page that is not). Only advice: if
/// the kernel cannot take it, the pages stay cached, as they would have.
#[cfg(target_os = "linux")]
fn drop_cached(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // posix_fadvise reads no memory of ours.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_file: &File, _offset: u64, _len: u64) {}

/// Writes every byte of `batch` at `offset` on, in as few system calls as
/// the kernel allows, and returns how many that was.
fn write_at(file: &File, batch: &[Bytes], offset: u64) -> io::Result<u64> {
    fail::fail_point!("write_behind::write", |errno: Option<String>| Err(
        io::Error::from_raw_os_error(errno.and_then(|errno| errno.parse().ok()).unwrap_or(libc::EIO))
    ));
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    let mut at = offset;
    while !remaining.is_empty() {
        match write_vectored_at(file, remaining, at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => {
                at += written as u64;
                IoSlice::advance_slices(&mut remaining, written);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(at - offset)
}

/// One `pwritev`: as much of `slices` as the kernel takes, at `offset`,
/// leaving the file's own position alone.
#[cfg(target_os = "linux")]
fn write_vectored_at(file: &File, slices: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    let count = slices.len().min(MAX_SLICES) as libc::c_int;
    // SAFETY: `IoSlice` is ABI compatible with `iovec` on Unix (its
    // documented guarantee), the first `count` slices are alive and only
    // read during the call, and the descriptor is open for as long as
    // `file` is borrowed.
    let written = unsafe {
        libc::pwritev(
            file.as_raw_fd(),
            slices.as_ptr().cast::<libc::iovec>(),
            count,
            offset,
        )
    };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}

/// Elsewhere one slice at a time (`pwrite`), which only costs system calls.
#[cfg(not(target_os = "linux"))]
fn write_vectored_at(file: &File, slices: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    match slices.iter().find(|slice| !slice.is_empty()) {
        Some(slice) => file.write_at(slice, offset),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    /// Starts a writer of the file at `path` (created when missing) at its end.
    fn at_end(path: &std::path::Path) -> WriteBehind {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .unwrap();
        let len = file.metadata().unwrap().len();
        WriteBehind::start(file, len, "test-writer").unwrap()
    }

    /// Chunks of every size around a batch, each of a different byte.
    fn chunks() -> Vec<Bytes> {
        let sizes = [
            1,
            7,
            4096,
            BATCH_BYTES - 1,
            3,
            BATCH_BYTES,
            2 * BATCH_BYTES + 5,
            65536,
        ];
        sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| Bytes::from(vec![index as u8 + 1; size]))
            .collect()
    }

    #[tokio::test]
    async fn it_writes_exactly_the_bytes_it_is_given_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"before").unwrap();
        let mut file = at_end(&path);
        let mut expected = b"before".to_vec();

        for chunk in chunks() {
            expected.extend_from_slice(&chunk);
            file.write(chunk).await.unwrap();
        }
        // Many small chunks make batches of many slices.
        for index in 0..5000u32 {
            let chunk = Bytes::from(index.to_le_bytes().to_vec());
            expected.extend_from_slice(&chunk);
            file.write(chunk).await.unwrap();
        }
        let metadata = file.sync().await.unwrap();

        assert_eq!(metadata.len(), expected.len() as u64);
        assert!(std::fs::read(&path).unwrap() == expected, "the file differs");
    }

    #[tokio::test]
    async fn it_writes_at_its_own_offsets_whatever_else_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut file = at_end(&path);
        file.write(Bytes::from_static(b"abc")).await.unwrap();
        file.flush().await.unwrap();
        // Someone else writes the file meanwhile, past where this writer is.
        let mut other = at_end(&path);
        other.write(Bytes::from_static(b"XYZW")).await.unwrap();
        other.flush().await.unwrap();

        file.write(Bytes::from_static(b"de")).await.unwrap();
        let metadata = file.sync().await.unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789abcdeZW");
        assert_eq!(metadata.len(), 17);
    }

    #[tokio::test]
    async fn flush_returns_once_the_bytes_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = at_end(&path);

        file.write(Bytes::from_static(b"abc")).await.unwrap();
        file.flush().await.unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call_and_every_later_one() {
        // /dev/full refuses every write with ENOSPC, like a full disk.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut file = WriteBehind::start(full, 0, "test-writer").unwrap();

        file.write(Bytes::from_static(b"lost")).await.unwrap();
        let flushed = file.flush().await.unwrap_err();
        let again = file.write(Bytes::from(vec![0u8; BATCH_BYTES])).await.unwrap_err();
        let synced = file.sync().await.unwrap_err();

        for error in [&flushed, &again, &synced] {
            assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        }
    }

    #[tokio::test]
    async fn a_large_file_leaves_only_its_last_stretches_in_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            // tmpfs pages are the file itself: there is no disk to drop them to.
            eprintln!("skipped: {} is on tmpfs", dir.path().display());
            return;
        }
        let path = dir.path().join("f");
        let mut file = at_end(&path);
        let stretches = 3 * IN_WRITEBACK + 2;
        let size = stretches * WRITEBACK_BYTES;
        let chunk = Bytes::from(vec![7u8; BATCH_BYTES]);

        for _ in 0..size / BATCH_BYTES as u64 {
            file.write(chunk.clone()).await.unwrap();
        }
        file.flush().await.unwrap();

        // Everything but the stretches still in writeback is out of the
        // cache; without dropping, the whole file would still be there.
        let cached = cached_bytes(&path);
        assert!(
            cached <= IN_WRITEBACK * WRITEBACK_BYTES,
            "{cached} bytes of the {size}-byte file are still cached, more than the last {IN_WRITEBACK} \
             stretches of {WRITEBACK_BYTES}"
        );
        let metadata = file.sync().await.unwrap();
        assert_eq!(metadata.len(), size);
        let written = std::fs::read(&path).unwrap();
        assert!(written.iter().all(|&byte| byte == 7), "the file differs");
    }

    /// Whether `path` is on tmpfs (Linux's `TMPFS_MAGIC`).
    fn on_tmpfs(path: &std::path::Path) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `path` is a valid C string, and `stats` is written by the call.
        let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::statfs(path.as_ptr(), &mut stats) };
        assert_eq!(result, 0, "statfs: {}", io::Error::last_os_error());
        stats.f_type == libc::TMPFS_MAGIC
    }

    /// How many bytes of the file at `path` are in the page cache (`mincore`
    /// over a mapping of it).
    fn cached_bytes(path: &std::path::Path) -> u64 {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: sysconf reads no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a read-only shared mapping of an open file, unmapped below;
        // mincore writes one byte per page into `resident`, which has that many.
        unsafe {
            let mapping = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(mapping, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
            let mut resident = vec![0u8; len.div_ceil(page)];
            let result = libc::mincore(mapping, len, resident.as_mut_ptr());
            libc::munmap(mapping, len);
            assert_eq!(result, 0, "mincore: {}", io::Error::last_os_error());
            resident.iter().filter(|&&flags| flags & 1 == 1).count() as u64 * page as u64
        }
    }

    #[tokio::test]
    async fn a_dropped_file_is_not_written_to_any_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = at_end(&path);
        file.write(Bytes::from_static(b"kept")).await.unwrap();
        file.flush().await.unwrap();
        // Less than a batch: still being gathered when the file is dropped.
        file.write(Bytes::from_static(b"dropped")).await.unwrap();

        drop(file);

        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }
}
