//! [`WriteBehind`]: a file appended to by a thread of its own, so that a
//! download never waits on the disk chunk by chunk.
//!
//! It owns the writes, truncation and sync of one open file, and nothing
//! about names, links or which storage the file belongs to (that is
//! `local`'s). The async side gathers the chunks it is given, without
//! copying them, into batches of about [`BATCH_BYTES`] and hands each batch
//! to the thread through a queue of [`QUEUED_BATCHES`]; the thread appends
//! it with one vectored write. `tokio::fs` would instead copy every write
//! into a buffer of its own and send it through `spawn_blocking`, one
//! round trip between threads per write, and the download would wait for
//! each. Memory stays bounded: at most one batch being gathered, the
//! queue, and the one batch being written.
//!
//! Writes are not answered one by one. A write that fails makes the thread
//! stop; the failure is given back by the next call that waits (a write
//! when the queue is closed, [`WriteBehind::flush`], [`WriteBehind::truncate`]
//! or [`WriteBehind::sync`]), and every later call gives the same failure.
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
//! Dropping it abandons what is still queued, as dropping a buffered writer
//! would: the thread finishes the write it is in and closes the file, so a
//! dropped file (a canceled task, a lost lease) is no longer written to.

use std::fs::{File, Metadata};
use std::io::{self, IoSlice, Write};
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

/// How many slices one vectored write takes at most (Linux's `UIO_MAXIOV`).
const MAX_SLICES: usize = 1024;

/// What the async side asks of the thread, answered in order.
enum Command {
    /// Appends the chunks, in order.
    Append(Vec<Bytes>),
    /// Answers once everything before it is written.
    Flush(oneshot::Sender<io::Result<()>>),
    /// Empties the file, after everything before it is written.
    Truncate(oneshot::Sender<io::Result<()>>),
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

/// An open file whose appends are done by a thread of its own.
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
    /// Starts the thread that writes `file` (opened for appending: writes
    /// go to its end, which is 0 again after a truncate). `name` names the
    /// thread, for a reader of thread lists.
    pub fn start(file: File, name: &str) -> io::Result<WriteBehind> {
        let (commands, receiver) = mpsc::channel(QUEUED_BATCHES);
        let failure = Arc::new(Failure::default());
        let abandoned = Arc::new(AtomicBool::new(false));
        let thread_failure = failure.clone();
        let thread_abandoned = abandoned.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(file, receiver, &thread_failure, &thread_abandoned))?;
        Ok(WriteBehind {
            commands: Some(commands),
            gathering: Vec::new(),
            gathered_bytes: 0,
            failure,
            abandoned,
        })
    }

    /// Appends `chunk`, without copying it. Returns once it is queued, not
    /// written; waits only while the queue is full.
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

    /// Writes everything given so far, then empties the file.
    pub async fn truncate(&mut self) -> io::Result<()> {
        self.hand_over().await?;
        let (answer, answered) = oneshot::channel();
        self.send(Command::Truncate(answer)).await?;
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
        self.send(Command::Append(batch)).await
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
fn run(mut file: File, mut receiver: mpsc::Receiver<Command>, failure: &Failure, abandoned: &AtomicBool) {
    let mut writeback = Writeback::at(file.metadata().map_or(0, |metadata| metadata.len()));
    while let Some(command) = receiver.blocking_recv() {
        if abandoned.load(Ordering::Acquire) {
            return;
        }
        let result = match command {
            Command::Append(batch) => {
                append(&mut file, &batch).map(|written| writeback.wrote(&file, written))
            }
            Command::Flush(answer) => {
                // Every earlier batch was written before this command was
                // taken; a closed receiver just means nobody waits.
                let _ = answer.send(Ok(()));
                Ok(())
            }
            Command::Truncate(answer) => {
                let truncated = file.set_len(0);
                if truncated.is_ok() {
                    writeback = Writeback::at(0);
                }
                reply(answer, truncated)
            }
            Command::Sync(answer) => reply(answer, file.sync_all().and_then(|()| file.metadata())),
        };
        if let Err(error) = result {
            failure.set(&error);
            return;
        }
    }
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

/// Where the file ends and how much of it the kernel was asked to write back.
struct Writeback {
    started_up_to: u64,
    end: u64,
}

impl Writeback {
    fn at(end: u64) -> Writeback {
        Writeback {
            started_up_to: end,
            end,
        }
    }

    /// Counts `written` more bytes at the end of `file`, and starts the
    /// writeback of what was written since the last start once that is
    /// [`WRITEBACK_BYTES`].
    fn wrote(&mut self, file: &File, written: u64) {
        self.end += written;
        if self.end - self.started_up_to >= WRITEBACK_BYTES {
            start_writeback(file, self.started_up_to, self.end - self.started_up_to);
            self.started_up_to = self.end;
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` to the disk,
/// without waiting for them. Only a hint: a failure (a file that is not on
/// a disk) is ignored, and a real I/O error is reported by the final sync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Writes every byte of `batch`, in as few system calls as the kernel
/// allows, and returns how many that was.
fn append(file: &mut File, batch: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => IoSlice::advance_slices(&mut remaining, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(batch.iter().map(|chunk| chunk.len() as u64).sum())
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    fn appending(path: &std::path::Path) -> File {
        OpenOptions::new().create(true).append(true).open(path).unwrap()
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
        let mut file = WriteBehind::start(appending(&path), "test-writer").unwrap();
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
    async fn flush_returns_once_the_bytes_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = WriteBehind::start(appending(&path), "test-writer").unwrap();

        file.write(Bytes::from_static(b"abc")).await.unwrap();
        file.flush().await.unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn truncate_empties_the_file_and_later_writes_start_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old bytes").unwrap();
        let mut file = WriteBehind::start(appending(&path), "test-writer").unwrap();
        file.write(Bytes::from(vec![9u8; BATCH_BYTES + 1])).await.unwrap();

        file.truncate().await.unwrap();
        file.write(Bytes::from_static(b"new")).await.unwrap();
        let metadata = file.sync().await.unwrap();

        assert_eq!(metadata.len(), 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_by_the_next_call_and_every_later_one() {
        // /dev/full refuses every write with ENOSPC, like a full disk.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut file = WriteBehind::start(full, "test-writer").unwrap();

        file.write(Bytes::from_static(b"lost")).await.unwrap();
        let flushed = file.flush().await.unwrap_err();
        let again = file.write(Bytes::from(vec![0u8; BATCH_BYTES])).await.unwrap_err();
        let synced = file.sync().await.unwrap_err();

        for error in [&flushed, &again, &synced] {
            assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        }
    }

    #[tokio::test]
    async fn a_dropped_file_is_not_written_to_any_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = WriteBehind::start(appending(&path), "test-writer").unwrap();
        file.write(Bytes::from_static(b"kept")).await.unwrap();
        file.flush().await.unwrap();
        // Less than a batch: still being gathered when the file is dropped.
        file.write(Bytes::from_static(b"dropped")).await.unwrap();

        drop(file);

        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }
}
