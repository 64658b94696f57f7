//! One attempt of one task, as a step function: [`process`] takes a
//! [`Lease`] and returns what became of it ([`Outcome`]).
//!
//! The steps are: pick the source and the storage; resolve the file and
//! reserve its path (or, for a resumed attempt, reuse the path recorded
//! then); stream the bytes into the task's partial file from where it
//! stopped, reporting progress; finish the file; record `completed`.
//! Failures become a retry with backoff (at least as long as the source
//! asked to wait) or a permanent failure; a cancel, a lost lease or the end
//! of the shutdown grace period stop the attempt where it is.
//!
//! ## Several files per task
//! A source that resolves on every attempt ([`Source::resolves_every_attempt`],
//! Telegram) may name several files: an album is saved file by file into
//! `dir_path`, under the title `[tgfiles](N files/X.XXMB)`. Every file's
//! path is reserved and recorded (one `resolved` event per file, in the
//! order the source lists them) before the first byte is fetched, and the
//! files are then downloaded one after the other.
//!
//! **The resume rule.** A resumed attempt resolves again and finds the paths
//! of earlier attempts in the task's `resolved` events, each with the
//! sanitised name and the size of its file. A file takes the first unused
//! recorded path with the same name and size; only a file without one
//! reserves a new path. So names never change between attempts, a file
//! already finished at its path (at its size) is not downloaded again, and a
//! partial file continues from its length.
//!
//! **Unrecorded reservations.** A path is reserved (its partial file created
//! and its name held) before `resolved` records it, and an attempt can die,
//! or lose Redis, in between. The reservation then stays: partial files
//! belong to their task ([`Storage::reserve`]), so the next attempt's
//! reservation of the same name finds it and takes the same path, rather
//! than seeing the name taken and saving to `name_1`.
//!
//! **Nothing partial outlives the task.** A cancel or a failure removes all
//! of the task's partial files ([`Storage::discard`]), recorded or not;
//! files an album had finished stay, like files saved by tasks that
//! completed. A completion does the same first when an earlier attempt
//! could have left a reservation this one did not use. A cancel that
//! arrives between the last file being finished and `completed` being
//! recorded wins, and takes the task's files with it.
//!
//! Direct links keep the single-file path. A first attempt resolves with
//! [`Source::resolve_and_open`] and streams the download that resolving
//! opened (the http source's one GET), so a single-use link is asked for
//! once; it is held, unread, only while the path is reserved and recorded,
//! and dropped, closing its connection, if the attempt stops before its
//! download or needs another offset. A resumed attempt reuses the
//! recorded file and path without resolving again, and the recorded
//! validator (the server's strong ETag or Last-Modified when it resolved):
//! the source resumes with `If-Range`, so a file replaced on the server is
//! sent whole and the partial file starts over instead of being completed
//! with another file's bytes. A download that starts over from a file with
//! another validator (replaced before the resume; a first attempt streams
//! the very response it resolved, unless it has to ask again) records the new one in a second `resolved` event, after
//! the partial file is emptied and before its first byte is written, so a
//! later attempt resumes the file now being saved.
//!
//! This module writes only the fenced transitions of the attempt it was
//! given, and never decides a status itself: the function library does.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use savestream_shared::event::EventKind;
use savestream_shared::store::queue::RetryKind;
use savestream_shared::store::{Lease, Progress, RetryOutcome, StoreError};
use savestream_shared::task::TaskStatus;
use savestream_shared::title;
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::metrics;
use crate::retry::backoff_with_jitter;
use crate::running::AttemptSignals;
use crate::source::{shown_link, Download, RemoteFile, Resolved, Source, SourceError, SourceErrorKind};
use crate::storage::path::FALLBACK_NAME;
use crate::storage::{FileName, PartialFile, Storage, StorageDir, StorageError, StoragePath};

/// Progress reaches the projection at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The error a task released at shutdown carries until another worker takes it.
pub const RELEASED_MESSAGE: &str = "worker shut down before the task finished";

/// What became of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file is saved and `completed` recorded.
    Completed {
        /// The task's size: all of its files.
        bytes: u64,
        /// What this attempt downloaded of them: less than `bytes` when it
        /// resumed partial files an earlier attempt left (0 when it found
        /// them finished), so it, not `bytes`, measures this attempt's speed.
        fetched: u64,
    },
    /// A retryable failure; the task is queued again after `delay`.
    Retrying { delay: Duration, error: String },
    /// A permanent failure, or the retries were used up.
    Failed { error: String },
    /// The task was canceled; its partial file is gone.
    Canceled,
    /// The shutdown grace period ended; the task was handed back to the queue.
    Released,
    /// Another worker took the task over; its partial file stays for it.
    LeaseLost,
    /// The task ended while this attempt ran (another holder finished it).
    Ended(TaskStatus),
    /// The task no longer exists (it expired): its work item is obsolete.
    Vanished,
    /// Redis could not be reached to record the outcome; the work item stays
    /// pending and is claimed again once its lease expires.
    StoreUnavailable,
}

/// Why an attempt stopped before its end.
#[derive(Debug)]
enum Stop {
    /// The attempt failed.
    Failed(TaskError),
    /// Something outside told it to stop.
    Interrupted(Interrupt),
}

#[derive(Debug)]
enum Interrupt {
    Canceled,
    Release,
    LeaseLost,
    Ended(TaskStatus),
    Vanished,
    StoreUnavailable,
}

/// A failure of the attempt, in the words the task's `error` will carry.
#[derive(Debug)]
struct TaskError {
    permanent: bool,
    message: String,
    /// The least the retry waits (a source's FLOOD_WAIT or `Retry-After`).
    retry_after: Option<Duration>,
    /// Whether the retry uses up one of the task's retries: not when the
    /// source only asked to wait ([`SourceErrorKind::RateLimited`]), nor
    /// when the download moved the file on before it broke off
    /// ([`progress_kept`]).
    counted: bool,
}

impl TaskError {
    fn permanent(message: impl Into<String>) -> TaskError {
        TaskError {
            permanent: true,
            message: message.into(),
            retry_after: None,
            counted: true,
        }
    }

    fn retryable(message: impl Into<String>) -> TaskError {
        TaskError {
            permanent: false,
            message: message.into(),
            retry_after: None,
            counted: true,
        }
    }
}

impl From<SourceError> for Stop {
    fn from(error: SourceError) -> Stop {
        Stop::Failed(TaskError {
            permanent: error.is_permanent(),
            retry_after: error.retry_after,
            counted: error.kind != SourceErrorKind::RateLimited,
            message: error.message,
        })
    }
}

/// How long a task waits after it met a storage this worker cannot use:
/// time for another worker, where the storage works, to take it.
pub const UNUSABLE_STORAGE_WAIT: Duration = Duration::from_secs(10);

impl From<StorageError> for Stop {
    fn from(error: StorageError) -> Stop {
        // A storage this worker could not set up is the worker's fault, not
        // the task's: one bad mount must not use up the retries of every
        // task that lands on it.
        let unusable = matches!(error, StorageError::Unusable { .. });
        Stop::Failed(TaskError {
            permanent: error.is_permanent(),
            message: error.to_string(),
            retry_after: unusable.then_some(UNUSABLE_STORAGE_WAIT),
            counted: !unusable,
        })
    }
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Stop {
        Stop::Interrupted(match error {
            StoreError::Ended {
                status: TaskStatus::Canceled,
                ..
            } => Interrupt::Canceled,
            StoreError::Ended { status, .. } => Interrupt::Ended(status),
            StoreError::LeaseLost(_) => Interrupt::LeaseLost,
            StoreError::NotFound(_) => Interrupt::Vanished,
            // Answers to a create, which no attempt makes: read as a store
            // fault, as corrupt data is.
            StoreError::AlreadyExists(_)
            | StoreError::IdempotencyKeyReused { .. }
            | StoreError::Unavailable(_)
            | StoreError::Corrupt(_) => Interrupt::StoreUnavailable,
        })
    }
}

/// Hands what the partial file was given to the storage before an attempt
/// that still holds its lease stops (a dropped partial file may lose what
/// it had not written yet). A failure here changes nothing more: the
/// storage discards a partial file it could not write, and the next attempt
/// starts from whatever length the file has (0 after a discard).
async fn keep_what_arrived(partial: &mut dyn PartialFile) {
    if let Err(error) = partial.flush().await {
        warn!(%error, "cannot write what was downloaded before the attempt stopped");
    }
}

/// Runs one attempt of the task `lease` holds. `signals.cancel` fires when
/// the task is canceled while it runs, `signals.lease_lost` when another
/// attempt holds its work item now.
pub async fn process(context: &Context, lease: &Lease, signals: &AttemptSignals) -> Outcome {
    let mut attempt = Attempt::new(context, lease, signals);
    match attempt.run().await {
        Ok(outcome) => outcome,
        Err(Stop::Failed(error)) => attempt.record_failure(error).await,
        Err(Stop::Interrupted(interrupt)) => attempt.interrupted(interrupt).await,
    }
}

/// How much a broken download must have moved its file on for the retry
/// to use up none of the task's retries.
pub const PROGRESS_WORTH_A_TRY: u64 = 1024 * 1024;

/// The stop for a download that broke off (`error`) after `arrived` bytes
/// of its own. One that moved the file on by [`PROGRESS_WORTH_A_TRY`] and
/// keeps them for the next attempt was a connection that broke, not a try
/// that failed: its retry uses up no retry, so a big file on a link that
/// drops every few minutes is not given up while it is still coming in.
/// Each such retry must get further than the one before, so the file's
/// size bounds them; an attempt that started over (`started_over`: the
/// source could not resume) keeps nothing new and always counts.
fn progress_kept(error: SourceError, arrived: u64, started_over: bool) -> Stop {
    let mut stop = Stop::from(error);
    if let Stop::Failed(failure) = &mut stop {
        if !failure.permanent && !started_over && arrived >= PROGRESS_WORTH_A_TRY {
            debug!(
                arrived,
                "the download moved on before it broke off: no retry used"
            );
            failure.counted = false;
        }
    }
    stop
}

/// Fails the task of `lease` instead of running it: its work item was
/// taken over `takeovers` times in a row, so every attempt so far died under
/// its worker (see [`crate::lease::DEATHS_IN_A_ROW`]). The partial files they
/// left are removed, as for any failure.
pub async fn fail_deaths_in_a_row(
    context: &Context,
    lease: &Lease,
    signals: &AttemptSignals,
    takeovers: u32,
) -> Outcome {
    let mut attempt = Attempt::new(context, lease, signals);
    if let Some(storage) = context.storages.get(&lease.task.storage) {
        attempt.know_partials(storage);
    }
    let error = TaskError::permanent(format!(
        "the task was not started again: its last {takeovers} attempts in a row ended with their worker \
         (each worker stopped renewing the lease: it was killed, froze, or lost Redis for longer \
         than [queue] lease_seconds), and a file that crashes the worker running it would take the \
         fleet down one worker at a time; look in the workers' logs for what ended them (the task \
         id is on every line), then add the task again"
    ));
    attempt.record_failure(error).await
}

struct Attempt<'a> {
    context: &'a Context,
    lease: &'a Lease,
    signals: &'a AttemptSignals,
    /// Where the task's files go, once known: what a cancel that comes
    /// after they were finished removes.
    placements: Vec<(Arc<dyn Storage>, StoragePath)>,
    /// The storage and directory of the task's partial files, once known:
    /// what is cleaned up when the task ends.
    partials: Option<(Arc<dyn Storage>, StorageDir)>,
}

impl<'a> Attempt<'a> {
    fn new(context: &'a Context, lease: &'a Lease, signals: &'a AttemptSignals) -> Attempt<'a> {
        Attempt {
            context,
            lease,
            signals,
            placements: Vec::new(),
            partials: None,
        }
    }

    /// Notes where the task's partial files are, in `storage`: what a
    /// failure or a cancel cleans up. Every file of the task is in its
    /// directory; one that does not parse holds none.
    fn know_partials(&mut self, storage: &Arc<dyn Storage>) {
        if let Ok(dir) = StorageDir::parse(&self.lease.task.dir) {
            self.partials = Some((storage.clone(), dir));
        }
    }
}

/// A file of a multi-file attempt and the path it is saved at.
struct Placed {
    file: RemoteFile,
    path: StoragePath,
}

/// What the single-file path's `resolved` event recorded, but the
/// validator: recorded again, with the new validator, when the download
/// starts over from a file the server replaced (see
/// [`Attempt::record_validator`]).
#[derive(Debug)]
struct Resolution {
    file_name: String,
    size: Option<u64>,
    path: String,
    title: String,
}

/// What [`Attempt::download`] leaves in a partial file.
#[derive(Debug)]
struct Downloaded {
    /// The partial file's size, finished.
    size: u64,
    /// The bytes of it this attempt wrote: not those an earlier attempt
    /// left, which a resume continues from.
    fetched: u64,
}

/// A path an earlier attempt recorded in a `resolved` event.
#[derive(Debug)]
struct Recorded {
    file_name: String,
    size: Option<u64>,
    path: StoragePath,
}

/// Takes the first recorded path for a file of this name and size, if any
/// (see the resume rule in the module docs).
fn take_recorded(recorded: &mut Vec<Recorded>, name: &FileName, size: Option<u64>) -> Option<StoragePath> {
    let index = recorded
        .iter()
        .position(|entry| entry.file_name == name.as_str() && entry.size == size)?;
    Some(recorded.remove(index).path)
}

impl Attempt<'_> {
    async fn run(&mut self) -> Result<Outcome, Stop> {
        let task = &self.lease.task;
        let source = self.context.sources.for_task(task)?;
        let storage = self.context.storages.get(&task.storage).cloned().ok_or_else(|| {
            Stop::Failed(TaskError::permanent(format!(
                "storage {:?} is not configured on this worker: add it to [[storages]] (enabled) \
                 on every worker, or create the task with another storage_name",
                task.storage
            )))
        })?;
        // Known before anything can stop the attempt, so that a cancel
        // finds the partial files earlier attempts left.
        self.know_partials(&storage);
        if source.resolves_every_attempt() {
            return self.run_files(source.as_ref(), storage).await;
        }

        let (file, path, resolution, opened) = match &task.path {
            Some(recorded) => {
                // A resumed attempt: the file and its path were decided by
                // an earlier one, and its partial file is where it stopped.
                let path = StoragePath::parse(recorded).map_err(|error| StorageError::Path {
                    storage: storage.name().to_owned(),
                    error,
                })?;
                // With the validator recorded then, the source resumes
                // only the very file those bytes came from.
                let file = RemoteFile {
                    name: task.file_name.clone(),
                    size: task.size,
                    mime: None,
                    key: None,
                    validator: task.validator.clone(),
                };
                self.placements.push((storage.clone(), path.clone()));
                // A hash with a path but no file name (edited by hand) is
                // not recorded again: its validator stays, and a resume
                // keeps starting over, which is safe.
                let resolution = task.file_name.clone().map(|file_name| Resolution {
                    file_name,
                    size: task.size,
                    path: recorded.clone(),
                    title: task.title.clone(),
                });
                (file, path, resolution, None)
            }
            None => {
                // The download resolving opened is this attempt's, held
                // here: any early return below drops it, and its connection.
                let Resolved { files, opened } = self.interruptible(source.resolve_and_open(task)).await??;
                let file = files.into_iter().next().ok_or_else(|| {
                    Stop::Failed(TaskError::permanent(format!(
                        "{} holds no file to save",
                        shown_link(&task.link)
                    )))
                })?;
                self.check_size(storage.as_ref(), file.size)?;
                let name = FileName::sanitize(file.name.as_deref().unwrap_or(FALLBACK_NAME));
                let dir = StorageDir::parse(&task.dir).map_err(|error| StorageError::Path {
                    storage: storage.name().to_owned(),
                    error,
                })?;
                let path = storage.reserve(&task.id, &dir, &name, &[]).await?;
                self.placements.push((storage.clone(), path.clone()));
                let path_text = path.to_string();
                let resolved_title = title::resolved(task.source, name.as_str(), storage.name(), &path_text);
                // Unrecorded, the reservation stays for the next attempt to
                // find (see the module docs).
                self.persist(|| {
                    self.context.store.resolve(
                        self.lease,
                        name.as_str(),
                        file.size,
                        &path_text,
                        &resolved_title,
                        file.validator.as_deref(),
                    )
                })
                .await?;
                let size = file
                    .size
                    .map_or_else(|| "unknown".to_owned(), |size| size.to_string());
                info!(file = %name, %size, storage = %storage.name(), path = %path, "resolved");
                let resolution = Resolution {
                    file_name: name.as_str().to_owned(),
                    size: file.size,
                    path: path_text,
                    title: resolved_title,
                };
                (file, path, Some(resolution), opened)
            }
        };
        self.check_size(storage.as_ref(), file.size)?;

        // An earlier attempt may have finished the file and died before
        // recording it.
        if let Some(size) = self.finished(storage.as_ref(), &path, file.size).await? {
            info!(bytes = size, "the file was already saved by an earlier attempt");
            return self.complete(size, 0, &path.to_string()).await;
        }

        let mut partial = storage.open(&task.id, &path).await?;
        if let Some(size) = file.size {
            partial.check_space(size).await?;
        }
        let Downloaded { size: bytes, fetched } = self
            .download(
                source.as_ref(),
                &file,
                partial.as_mut(),
                0,
                None,
                resolution.as_ref(),
                opened,
            )
            .await?;
        if let Some(size) = file.size {
            if bytes != size {
                return Err(Stop::Failed(TaskError::retryable(format!(
                    "the download of {} ended after {bytes} of {size} bytes",
                    shown_link(&task.link)
                ))));
            }
        }
        // A last, fenced progress write: it records the final count, and a
        // task canceled or taken over in the meantime is not finished.
        match self.write_progress(bytes, file.size.or(Some(bytes)), 0).await {
            // Redis being away is no reason to drop a finished file:
            // recording `completed` retries below.
            Ok(()) | Err(Stop::Interrupted(Interrupt::StoreUnavailable)) => {}
            Err(stop) => return Err(stop),
        }
        self.still_held()?;
        partial.finish().await?;
        self.complete(bytes, fetched, &path.to_string()).await
    }

    /// The attempt of a source that resolves every time: one file or
    /// several, with the paths of earlier attempts kept (the resume rule in
    /// the module docs).
    async fn run_files(&mut self, source: &dyn Source, storage: Arc<dyn Storage>) -> Result<Outcome, Stop> {
        let task = &self.lease.task;
        let files = self.interruptible(source.resolve(task)).await??;
        if files.is_empty() {
            return Err(Stop::Failed(TaskError::permanent(format!(
                "{} holds no file to save",
                shown_link(&task.link)
            ))));
        }
        for file in &files {
            self.check_size(storage.as_ref(), file.size)?;
        }
        let dir = StorageDir::parse(&task.dir).map_err(|error| StorageError::Path {
            storage: storage.name().to_owned(),
            error,
        })?;
        let total: Option<u64> = files.iter().map(|file| file.size).sum();
        let count = files.len();
        let batch_title = (count > 1).then(|| title::batch(task.source, count, total.unwrap_or(0)));
        // Only an attempt after one that resolved can have recorded paths.
        let mut recorded = if task.path.is_some() {
            self.recorded_paths().await?
        } else {
            Vec::new()
        };
        // Every recorded path is one of the task's files: a new reservation
        // must not pick one that a file later in the list will reuse.
        let mut held: Vec<StoragePath> = recorded.iter().map(|entry| entry.path.clone()).collect();

        let mut placed = Vec::with_capacity(count);
        for file in files {
            let name = FileName::sanitize(file.name.as_deref().unwrap_or(FALLBACK_NAME));
            let path = match take_recorded(&mut recorded, &name, file.size) {
                Some(path) => {
                    debug!(file = %name, path = %path, "reusing the path an earlier attempt recorded");
                    self.placements.push((storage.clone(), path.clone()));
                    path
                }
                None => {
                    let path = storage.reserve(&task.id, &dir, &name, &held).await?;
                    held.push(path.clone());
                    self.placements.push((storage.clone(), path.clone()));
                    let path_text = path.to_string();
                    let resolved_title = batch_title.clone().unwrap_or_else(|| {
                        title::resolved(task.source, name.as_str(), storage.name(), &path_text)
                    });
                    // Unrecorded, the reservation stays for the next attempt
                    // to find (see the module docs).
                    self.persist(|| {
                        self.context.store.resolve(
                            self.lease,
                            name.as_str(),
                            file.size,
                            &path_text,
                            &resolved_title,
                            file.validator.as_deref(),
                        )
                    })
                    .await?;
                    let size = file
                        .size
                        .map_or_else(|| "unknown".to_owned(), |size| size.to_string());
                    info!(file = %name, %size, storage = %storage.name(), path = %path, "resolved");
                    path
                }
            };
            placed.push(Placed { file, path });
        }

        let mut done: u64 = 0;
        let mut fetched: u64 = 0;
        for (index, Placed { file, path }) in placed.iter().enumerate() {
            // An earlier attempt may have finished this file (and died
            // before the next one, or before recording `completed`).
            if let Some(size) = self.finished(storage.as_ref(), path, file.size).await? {
                debug!(path = %path, bytes = size, "the file was saved by an earlier attempt");
                done += size;
                continue;
            }
            let mut partial = storage.open(&task.id, path).await?;
            if let Some(size) = file.size {
                partial.check_space(size).await?;
            }
            // Nothing to record again: every attempt resolves afresh, and
            // a file's validator is only ever that of the attempt's own
            // `resolve` (none from Telegram).
            let downloaded = self
                .download(source, file, partial.as_mut(), done, total, None, None)
                .await?;
            let bytes = downloaded.size;
            fetched += downloaded.fetched;
            if let Some(size) = file.size {
                if bytes != size {
                    return Err(Stop::Failed(TaskError::retryable(format!(
                        "the download of {} ({path}) ended after {bytes} of {size} bytes",
                        shown_link(&task.link)
                    ))));
                }
            }
            // A fenced progress write before each file becomes visible: a
            // task canceled or taken over in the meantime is not finished.
            match self
                .write_progress(done + bytes, total.or(Some(done + bytes)), 0)
                .await
            {
                Ok(()) | Err(Stop::Interrupted(Interrupt::StoreUnavailable)) => {}
                Err(stop) => return Err(stop),
            }
            self.still_held()?;
            partial.finish().await?;
            done += bytes;
            if count > 1 {
                info!(path = %path, bytes, "saved file {} of {count}", index + 1);
            }
        }
        let completed_path = match placed.as_slice() {
            [only] => only.path.to_string(),
            _ => dir.to_string(),
        };
        self.complete(done, fetched, &completed_path).await
    }

    /// The paths earlier attempts recorded, from the task's `resolved` events.
    async fn recorded_paths(&self) -> Result<Vec<Recorded>, Stop> {
        let logged = self
            .persist(|| self.context.store.events(&self.lease.task.id))
            .await?;
        let mut recorded: Vec<Recorded> = Vec::new();
        for logged_event in logged {
            let EventKind::Resolved {
                file_name,
                size,
                path,
                ..
            } = logged_event.event.kind
            else {
                continue;
            };
            match StoragePath::parse(&path) {
                Ok(path) if !recorded.iter().any(|entry| entry.path == path) => recorded.push(Recorded {
                    file_name,
                    size,
                    path,
                }),
                Ok(_) => {}
                Err(error) => warn!(%error, "ignoring a recorded path that cannot be used"),
            }
        }
        Ok(recorded)
    }

    /// The size of the file at `path` if an earlier attempt finished it.
    /// It was checked against `expected` before it was finished, so a
    /// different size means somebody else's file took its place.
    async fn finished(
        &self,
        storage: &dyn Storage,
        path: &StoragePath,
        expected: Option<u64>,
    ) -> Result<Option<u64>, Stop> {
        match storage.finished(&self.lease.task.id, path).await? {
            Some(size) if expected.is_some_and(|expected| expected != size) => Err(StorageError::Occupied {
                storage: storage.name().to_owned(),
                path: path.to_string(),
            }
            .into()),
            finished => Ok(finished),
        }
    }

    fn check_size(&self, storage: &dyn Storage, size: Option<u64>) -> Result<(), Stop> {
        match (size, storage.max_file_size()) {
            (Some(size), Some(max)) if size > max => Err(StorageError::TooLarge {
                storage: storage.name().to_owned(),
                size,
                max,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Streams the file into `partial`, from its length when the source can
    /// resume there. Returns the size of the finished partial file and how
    /// much of it this attempt downloaded.
    ///
    /// Progress counts `before` bytes of earlier files of the task and, when
    /// given, `task_total` as the whole (an album); else the file's size.
    ///
    /// `resolution` is what the task's `resolved` event recorded for the
    /// file (the single-file path): a download that starts over from a
    /// file with another validator than `file`'s records that one with it.
    ///
    /// `opened` is the download of `file` from byte 0 that resolving
    /// opened ([`Resolved::opened`]): streamed instead of opening the file
    /// again when the partial file is empty, else dropped.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is one thing the two callers differ in; a struct would only rename them"
    )]
    async fn download(
        &self,
        source: &dyn Source,
        file: &RemoteFile,
        partial: &mut dyn PartialFile,
        before: u64,
        task_total: Option<u64>,
        resolution: Option<&Resolution>,
        opened: Option<Download>,
    ) -> Result<Downloaded, Stop> {
        let task = &self.lease.task;
        if let Some(size) = file.size {
            if partial.len() > size {
                partial.truncate().await?;
            }
            if size > 0 && partial.len() == size {
                debug!(bytes = size, "the partial file is complete already");
                return Ok(Downloaded { size, fetched: 0 });
            }
        }
        let offset = partial.len();
        let download = match opened.filter(|_| offset == 0) {
            Some(opened) => opened,
            // Dropped first (by `filter`), so its connection closes before
            // another is opened.
            None => self.interruptible(source.open(task, file, offset)).await??,
        };
        // A source that says the file has another size than the one
        // recorded for the task serves another file: every attempt would
        // download it whole and then fail at the wrong size. It fails now,
        // before one byte of it is read.
        if let (Some(size), Some(total)) = (file.size, download.total) {
            if total != size {
                return Err(SourceError::changed_size(&task.link, size, Some(total)).into());
            }
        }
        // A new validator: the server replaced the file since it was
        // recorded, and this download starts over with the new one.
        // A download without one names no file: the recorded one is kept
        // (see `record_validator`).
        let replacing = match (download.offset, resolution, download.validator.as_deref()) {
            (0, Some(resolution), Some(now)) if file.validator.as_deref() != Some(now) => {
                Some((resolution, now))
            }
            _ => None,
        };
        // Starting over takes a new partial file, even when this one is
        // empty: an earlier attempt taken over while frozen may still hold
        // bytes of the old file it has not written yet, and on waking it
        // writes them into the file it opened, which no name leads to now.
        if download.offset != offset || replacing.is_some() {
            partial.truncate().await?;
        }
        // Where this attempt's own bytes begin, and whether it threw away
        // bytes an earlier attempt left (a source that cannot resume).
        let started_at = partial.len();
        let started_over = offset > 0 && download.offset != offset;
        // The partial file is empty now, and not one byte of the stream is
        // written before the new validator is recorded (see there).
        if let Some((resolution, now)) = replacing {
            self.record_validator(resolution, file.validator.as_deref(), now)
                .await?;
        }
        if download.offset > 0 {
            info!(offset = download.offset, "resuming the download");
        } else if offset > 0 {
            info!(discarded = offset, "the source cannot resume: starting over");
        } else {
            debug!("downloading");
        }
        let total = task_total.or(file.size).or(download.total);
        let downloaded_bytes = metrics::downloaded_bytes(task.source);
        let mut stream = download.stream;
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_reported = (partial.len(), Instant::now());
        let mut last_reached_redis = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.signals.cancel.cancelled() => return Err(Stop::Interrupted(Interrupt::Canceled)),
                // Another attempt appends to the same partial file now: not
                // one more byte from this one, not even what is queued (the
                // partial file is dropped, which abandons it).
                _ = self.signals.lease_lost.cancelled() => return Err(Stop::Interrupted(Interrupt::LeaseLost)),
                _ = self.context.release.cancelled() => {
                    // The lease is still this worker's: what arrived is
                    // kept for the attempt that resumes.
                    keep_what_arrived(partial).await;
                    return Err(Stop::Interrupted(Interrupt::Release));
                }
                _ = ticker.tick() => {
                    partial.flush().await?;
                    let (bytes_before, at_before) = last_reported;
                    let elapsed = at_before.elapsed().as_secs_f64();
                    let bytes_per_second = if elapsed > 0.0 {
                        (partial.len().saturating_sub(bytes_before) as f64 / elapsed) as u64
                    } else {
                        0
                    };
                    last_reported = (partial.len(), Instant::now());
                    match self.write_progress(before + partial.len(), total, bytes_per_second).await {
                        Ok(()) => last_reached_redis = Instant::now(),
                        Err(Stop::Interrupted(Interrupt::StoreUnavailable)) => {
                            // Past half a lease without Redis, another worker
                            // may soon take the task over and write the same
                            // partial file: stop before that can happen.
                            if last_reached_redis.elapsed() > self.context.lease() / 2 {
                                warn!("redis has been unreachable for half a lease: stopping the download");
                                return Err(Stop::Interrupted(Interrupt::StoreUnavailable));
                            }
                        }
                        Err(stop) => return Err(stop),
                    }
                }
                chunk = stream.next() => match chunk {
                    Some(Ok(bytes)) => {
                        let chunk_len = bytes.len() as u64;
                        // A source that did not say the size sends more
                        // than the size recorded: the file changed.
                        if let Some(size) = file.size.filter(|&size| partial.len() + chunk_len > size) {
                            return Err(SourceError::changed_size(&task.link, size, None).into());
                        }
                        partial.write(bytes).await?;
                        downloaded_bytes.increment(chunk_len);
                    }
                    Some(Err(error)) => {
                        // A retry resumes from the partial file's length:
                        // what arrived before the source failed is kept.
                        keep_what_arrived(partial).await;
                        let arrived = partial.len().saturating_sub(started_at);
                        return Err(progress_kept(error, arrived, started_over));
                    }
                    None => {
                        return Ok(Downloaded {
                            size: partial.len(),
                            fetched: partial.len().saturating_sub(started_at),
                        })
                    }
                },
            }
        }
    }

    /// Records `now`, the validator of the file a download starts over
    /// from (at byte 0), which is not `recorded`: the file was replaced on
    /// the server since `recorded` was taken (before a resume whose
    /// `If-Range` it failed, or before a first attempt that could not use
    /// the download its resolving opened asked again). Without
    /// it every later attempt would resume with the old validator, be sent
    /// the whole file again, and never resume. The `resolved` event is
    /// written again, the same file name, size, path and title with the new
    /// validator (the function library allows a second one in an attempt;
    /// the fold and the projection take its fields as the latest).
    ///
    /// **Order.** It is called after the partial file was started over
    /// (emptied, or empty already) and before the first byte of the new
    /// file is written into it, so that at every instant the partial file
    /// holds only bytes of the file the recorded validator names. A crash
    /// (a killed worker, a lost network) before the record leaves an empty
    /// partial file under the old validator: the next attempt starts over
    /// as this one did. A crash after it leaves bytes of the new file
    /// under the new validator, which a resume continues with `If-Range`.
    /// Recorded before the truncate, a crash in between would leave the
    /// old file's bytes under the new validator, and a resume would be
    /// sent the new file's rest after them: two files spliced. Recorded
    /// after new bytes were written, a crash in between would leave them
    /// under the old validator, spliced the same way should the server
    /// serve the old file again.
    ///
    /// A download without a validator (the server no longer sends one) is
    /// not recorded: the recorded one stays. The server, which matches
    /// nothing now, answers a resume's `If-Range` with the whole file: the
    /// download keeps starting over, slower but never spliced. Recording
    /// none instead would resume with `Range` alone, which splices if the
    /// file is replaced again. (Only a server that serves the old file,
    /// with its old validator, once more would match it over the new
    /// file's bytes.)
    async fn record_validator(
        &self,
        resolution: &Resolution,
        recorded: Option<&str>,
        now: &str,
    ) -> Result<(), Stop> {
        self.persist(|| {
            self.context.store.resolve(
                self.lease,
                &resolution.file_name,
                resolution.size,
                &resolution.path,
                &resolution.title,
                Some(now),
            )
        })
        .await?;
        info!(
            was = recorded.unwrap_or("none"),
            now, "the file changed on the server: recorded its new validator"
        );
        Ok(())
    }

    async fn write_progress(
        &self,
        downloaded_bytes: u64,
        total_bytes: Option<u64>,
        bytes_per_second: u64,
    ) -> Result<(), Stop> {
        let progress = Progress {
            downloaded_bytes,
            total_bytes,
            bytes_per_second,
        };
        match self.context.store.progress(self.lease, &progress).await {
            Ok(()) => Ok(()),
            Err(StoreError::Unavailable(error)) => {
                metrics::redis_error();
                debug!(%error, "cannot write progress");
                Err(Stop::Interrupted(Interrupt::StoreUnavailable))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Records `completed` with the task's size and its path (the file's,
    /// or the directory of an album). `fetched` is what this attempt
    /// downloaded of the task's files, for [`Outcome::Completed`].
    async fn complete(&mut self, bytes: u64, fetched: u64, path_text: &str) -> Result<Outcome, Stop> {
        // An earlier attempt may have reserved a file this one did not use
        // (the source named it differently this time); once the task has
        // ended nothing would remove it. This attempt's own files are all
        // finished by now, so only such leftovers go.
        if self.lease.attempt > 1 {
            self.discard_partials().await;
        }
        self.signals.ending();
        match self
            .persist(|| self.context.store.complete(self.lease, Some(bytes), path_text))
            .await
        {
            Ok(()) => Ok(Outcome::Completed { bytes, fetched }),
            Err(Stop::Interrupted(Interrupt::Canceled)) => {
                // Canceled in the instant between finishing the files and
                // recording it: the cancel wins, and takes the files with it.
                for (storage, path) in self.placements.drain(..) {
                    if let Err(error) = storage.remove(&path).await {
                        warn!(%error, path = %path, "cannot remove the file of a canceled task");
                    }
                }
                Err(Stop::Interrupted(Interrupt::Canceled))
            }
            Err(stop) => Err(stop),
        }
    }

    /// Whether the heartbeat found the work item held by another attempt:
    /// a file it may be writing is not this attempt's to finish.
    fn still_held(&self) -> Result<(), Stop> {
        if self.signals.lease_lost.is_cancelled() {
            return Err(Stop::Interrupted(Interrupt::LeaseLost));
        }
        Ok(())
    }

    /// Runs `future` unless the task is canceled, its lease is lost or the
    /// grace period ends first.
    async fn interruptible<T>(&self, future: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            _ = self.signals.cancel.cancelled() => Err(Stop::Interrupted(Interrupt::Canceled)),
            _ = self.signals.lease_lost.cancelled() => Err(Stop::Interrupted(Interrupt::LeaseLost)),
            _ = self.context.release.cancelled() => Err(Stop::Interrupted(Interrupt::Release)),
            value = future => Ok(value),
        }
    }

    /// Runs a transition, again and again while Redis is unreachable, for
    /// up to one lease: the heartbeat keeps the lease meanwhile.
    async fn persist<T, F, Fut>(&self, transition: F) -> Result<T, Stop>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + self.context.lease();
        let mut delay = Duration::from_millis(100);
        loop {
            match transition().await {
                Ok(value) => return Ok(value),
                Err(StoreError::Unavailable(error)) if Instant::now() + delay < deadline => {
                    metrics::redis_error();
                    warn!(%error, "redis is unavailable: trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(StoreError::Unavailable(error)) => {
                    metrics::redis_error();
                    warn!(%error, "redis stayed unavailable: leaving the task to be claimed again");
                    return Err(Stop::Interrupted(Interrupt::StoreUnavailable));
                }
                Err(error) => {
                    debug!(%error, "the store refused the transition");
                    return Err(error.into());
                }
            }
        }
    }

    /// Removes all of the task's partial files, this attempt's and any an
    /// earlier one left (finished files stay).
    async fn discard_partials(&self) {
        if let Some((storage, dir)) = &self.partials {
            if let Err(error) = storage.discard(&self.lease.task.id, dir).await {
                warn!(%error, dir = %dir, "cannot remove the task's partial files");
            }
        }
    }

    async fn record_failure(&mut self, error: TaskError) -> Outcome {
        // The transition acknowledges the work item; nothing is written
        // into the partial files after it.
        self.signals.ending();
        if error.permanent {
            warn!(error = %error.message, "failed");
            let result = self
                .persist(|| self.context.store.fail(self.lease, &error.message))
                .await;
            return match result {
                Ok(()) => {
                    self.discard_partials().await;
                    Outcome::Failed { error: error.message }
                }
                Err(Stop::Interrupted(interrupt)) => self.interrupted(interrupt).await,
                Err(Stop::Failed(_)) => Outcome::StoreUnavailable,
            };
        }
        // A wait the source asked for is its pacing, and a download that
        // broke off after moving the file on is a dropped connection, not
        // a try that failed: neither uses up a retry, and the retry number
        // (and the next failure's backoff) stays.
        let retry_number = self.lease.task.retries + u32::from(error.counted);
        // Never sooner than the source asked (Telegram's FLOOD_WAIT): an
        // earlier attempt would only be refused again.
        let delay = backoff_with_jitter(retry_number).max(error.retry_after.unwrap_or_default());
        let kind = if error.counted {
            RetryKind::Failure {
                max_retries: self.context.retry_limit,
            }
        } else {
            RetryKind::Release
        };
        let result = self
            .persist(|| self.context.store.retry(self.lease, &error.message, kind, delay))
            .await;
        match result {
            Ok(RetryOutcome::Retrying) if !error.counted => {
                warn!(error = %error.message, "failed: retrying in {delay:?}, no retry used");
                Outcome::Retrying {
                    delay,
                    error: error.message,
                }
            }
            Ok(RetryOutcome::Retrying) => {
                warn!(error = %error.message, retry = retry_number, "failed: retrying in {delay:?}");
                Outcome::Retrying {
                    delay,
                    error: error.message,
                }
            }
            Ok(RetryOutcome::Failed) => {
                warn!(error = %error.message, "failed: no retries left");
                self.discard_partials().await;
                Outcome::Failed { error: error.message }
            }
            Err(Stop::Interrupted(interrupt)) => self.interrupted(interrupt).await,
            Err(Stop::Failed(_)) => Outcome::StoreUnavailable,
        }
    }

    async fn interrupted(&mut self, interrupt: Interrupt) -> Outcome {
        match interrupt {
            Interrupt::Canceled => {
                info!("canceled: stopped");
                self.discard_partials().await;
                Outcome::Canceled
            }
            Interrupt::Release => {
                self.signals.ending();
                let result = self
                    .persist(|| {
                        self.context.store.retry(
                            self.lease,
                            RELEASED_MESSAGE,
                            RetryKind::Release,
                            Duration::ZERO,
                        )
                    })
                    .await;
                match result {
                    Ok(_) => {
                        info!("released: another worker resumes the task");
                        Outcome::Released
                    }
                    // A release that finds the task canceled or taken over
                    // is handled like a progress write that found it.
                    Err(Stop::Interrupted(Interrupt::Release)) | Err(Stop::Failed(_)) => {
                        Outcome::StoreUnavailable
                    }
                    Err(Stop::Interrupted(interrupt)) => Box::pin(self.interrupted(interrupt)).await,
                }
            }
            Interrupt::LeaseLost => {
                info!("lease lost: another worker took the task over");
                Outcome::LeaseLost
            }
            Interrupt::Ended(status) => {
                info!(%status, "the task ended elsewhere: stopped");
                Outcome::Ended(status)
            }
            Interrupt::Vanished => {
                warn!("the task no longer exists: dropping its work item");
                Outcome::Vanished
            }
            Interrupt::StoreUnavailable => Outcome::StoreUnavailable,
        }
    }
}
