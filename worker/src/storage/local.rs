//! The `local` storage: files under a directory of this machine.
//!
//! ## One file on disk
//! The file `C` of task `T` is written through `.C.T.part`, the task's own
//! partial file: hidden, and named after the task, so that every attempt of
//! `T` finds it again. While it is written, `C.part`, a second hard link to
//! the same file, holds the name `C` against other tasks. Whose a `C.part`
//! or a `C` is, is told by comparing it with the own partial file (device
//! and inode), never by its name or its size.
//!
//! - **Reserving** `C` creates the own partial file and links it to
//!   `C.part`. The link fails when `C.part` exists: of two tasks that want
//!   `C` at once, one gets `C_1`. `C` is looked at again once held, since
//!   another task may have finished `C` and given up `C.part` in between.
//! - **Finishing** links the own partial file to `C`. That link, too, fails
//!   rather than replace a file, so a `C` that is not the task's is left
//!   alone ([`StorageError::Occupied`]). Then `C.part` goes, and the own
//!   partial file last.
//! - A file is **finished** when `C` exists and the own partial file is gone
//!   or is `C` itself.
//!
//! So each step can be cut short by a crash and be done again by the next
//! attempt: a reservation the task could not record (its worker died, or
//! Redis was away) is found again by the next reservation, which takes the
//! same `C`, instead of blocking it and moving the file to `C_1`; a file
//! finished just before a crash is found finished. Whatever partial files a
//! task still has when it ends are found by their names (`.*.T.part`) and
//! removed with their holds. Since the own partial file always goes last, a
//! `C.part` of this layout always has a second link; a `C.part` with one
//! link is a partial file of a worker from before own partial files, which
//! the task that recorded its path adopts.
//!
//! The base path must be writable by the worker and on a file system with
//! hard links (any Unix one, not FAT): [`LocalStorage::new`] checks, and
//! says which is wrong ([`StorageError::NotWritable`],
//! [`StorageError::NoHardLinks`]). A task's files are never
//! reached by a path (see *Directories*), and partial files are opened
//! without following symlinks. Before a file is reported
//! finished (by `finish`, or by [`Storage::finished`] for an earlier
//! attempt's), its entry is synced in its directory, and each directory's
//! entry in its parent, up to the base path's entry for the topmost one,
//! whoever made the directories and whether or not anyone synced them
//! before: else a power loss could take a directory, and the file with it,
//! after the store recorded it completed. Making a directory syncs nothing.
//! A sync that fails (other than with `EINVAL` or `EOPNOTSUPP`, a file
//! system that cannot sync a directory, or `EACCES`/`EPERM`, a directory
//! the worker may not open: each loses only this guarantee) fails that
//! call, retryably ([`StorageError::Unsynced`]), and leaves the file
//! finished at its name, for the next attempt to sync again. Bytes are written through a
//! small buffer, so memory stays flat whatever the size of the file, each at
//! the offset this writer is at: an attempt that was taken over while frozen
//! and wakes up writes its bytes where it meant to, not after the new
//! holder's, and a partial file that does not end where its writer's bytes
//! end is not finished but discarded ([`StorageError::Interleaved`]). A
//! download that starts over ([`PartialFile::truncate`]) does so in a new
//! file, not in the old one emptied: an attempt that still has the old one
//! open writes, should it wake up, into a file no name leads to, never over
//! the new download (which may be of another file, replaced on the server).
//! The pipeline starts over in a new file whenever the download is of a
//! file with another validator, even when the partial file is still empty
//! (nothing the frozen attempt had queued reached it yet). Only a server
//! that gives no validator leaves a replaced file unseen: then the new
//! download goes into the same file, and what the old attempt had queued
//! (a few MiB at most, see `write_behind`) may land in it at offsets from
//! 0 without changing its length, as a resume with `Range` alone may
//! splice two files.
//!
//! ## Free space
//! A file whose size is known is checked against the free space of its
//! file system before it is written ([`PartialFile::check_space`]: what
//! an unprivileged writer may still use, less what the partial file holds
//! already), so a file that cannot fit fails its attempt at once, naming
//! the storage and both numbers, instead of filling a shared disk on every
//! attempt. It is a check, not a reservation; a disk that fills anyway
//! fails the write with `ENOSPC`, whose message says the disk is full.
//!
//! ## A failed write or sync
//! When writing the partial file, the disk's writeback of it or its `fsync`
//! fails (EIO, ENOSPC on some file systems, a network file system), Linux
//! may already have dropped the pages it could not write and marked them
//! clean: the file keeps its length but not its bytes, and the error is
//! reported once, so a later sync succeeds over the same loss. A later
//! attempt that resumed from such a file, or took it for complete, would
//! record corrupted bytes as a finished download. So whichever call hears
//! of the failure discards the partial file as `Interleaved` does, and the
//! next attempt starts from byte 0 ([`StorageError::Discarded`]). Should
//! the discard fail too and a name still lead to the file, the task fails
//! ([`StorageError::Untrusted`], see [`LocalPartialFile::untrusted`]).
//! Since another attempt of the task may discard the partial file while
//! this one writes it, `finish` links the file this attempt wrote, through
//! its open descriptor, never whatever its names lead to by then: a file no
//! name of the task leads to any more is not finished
//! ([`StorageError::Replaced`], see [`LocalPartialFile::link_target`]).
//!
//! ## Directories
//! Nothing is created, looked at, linked or removed by a path: the
//! directory of a `dir_path` is walked to from the base path one component
//! at a time, each opened in the one before without following a symlink
//! (`openat` with `O_DIRECTORY | O_NOFOLLOW`, and `O_PATH` on Linux, which
//! needs no permission to read it: a drop box, mode 0733, is walked into)
//! and made there when missing (`mkdirat`; one made by someone else
//! meanwhile is as good), and held open ([`Directory`]). Every name in it
//! is then used relative to that descriptor, as a single component
//! (`openat`, `fstatat`, `linkat`, `unlinkat`). So whoever may write inside
//! the base path (a media folder shared over Samba or NFS, while the
//! worker runs as root) cannot swap a directory for a symlink, once it was
//! walked, and have a file made, linked or removed where that leads
//! (`/etc`): the task goes on in the directory it walked, wherever that was
//! renamed to. A file met where the walk needs a directory fails the task
//! ([`StorageError::NotADirectory`], naming it): no retry moves it.
//!
//! A download holds that one descriptor, whatever its depth (a
//! `dir_path` may have 512 components), not one per directory walked
//! through: those are remembered by device and inode, and the syncs of a
//! finish climb back up to the base path through each one's `..`, checked
//! to be the directory walked through there (see [`sync_names`]: one moved
//! to another directory since stops the climb, retryably). The base path is
//! opened again by each walk, not held: a file system mounted on it after
//! the worker started is walked into, as its path would be.
//!
//! A symlink met on the walk is followed by the walk itself, and only to a
//! directory inside the base path: its target is walked the same way, from
//! the base path for an absolute one (which must be written under the
//! canonical base path, or under the base path as configured, which NAS
//! setups reach through a symlink: `/media` to `/mnt/...`) or from the
//! symlink's own directory for a relative one, a `..` going back to the
//! directory walked before and never above the base path. One that leads
//! anywhere else is refused ([`StorageError::Escapes`], naming the
//! symlink, where it leads and what to do) before anything is made where it
//! leads; so is one whose target reaches the base path through any other
//! spelling. Only the components the `dir_path` names are made: a
//! directory a symlink's target names must exist (an operator's link to a
//! disk not mounted yet would otherwise send downloads onto the disk
//! below), else the walk fails retryably, naming the symlink and what is
//! missing. A walk follows at most [`MAX_SYMLINKS`] symlinks, and takes at
//! most [`MAX_STEPS`] steps, its own components and its symlinks' together
//! (a symlink planted to lead thousands of directories down is refused
//! before anything is made on its way), holding at most three descriptors
//! at a time.
//!
//! The walk for partial files ([`Storage::partial_owners`]) never follows a
//! symlink at all: each directory is opened in its parent's descriptor
//! without following one, and listed through its own, so a directory
//! swapped for a symlink after its parent was listed is passed over.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use savestream_shared::dir_path::MAX_DIR_PATH_LEN;
use savestream_shared::task::TaskId;
use tokio::fs::File;
use tracing::{debug, warn};

use super::path::own_partial_parts;
use super::write_behind::WriteBehind;
use super::{FileName, PartialFile, Storage, StorageDir, StorageError, StoragePath};

/// How many alternative names (`name_1` … ) are tried before giving up.
const MAX_ALTERNATIVES: u32 = 10_000;

/// How many symlinks one walk to a directory follows before it gives up
/// (`ELOOP`), as many as Linux follows in one path.
const MAX_SYMLINKS: u32 = 40;

/// How many steps one walk to a directory takes at most, into a
/// directory or back up (`..`), the `dir_path`'s own components and those
/// of the symlinks it follows together: twice the most a `dir_path` has
/// (512, in its [`MAX_DIR_PATH_LEN`] bytes), so that symlinks may lead as
/// far again. A symlink planted to lead further (`x/x/x/...`, thousands of
/// components) is refused before anything is made on its way.
const MAX_STEPS: usize = 2 * (MAX_DIR_PATH_LEN / 2);

/// How many times a walk looks at one component again that was removed
/// while it looked (made, then gone before it could be opened): someone
/// removing directories as fast as the worker makes them is not waited out.
const MAX_LOOKS: u32 = 16;

#[derive(Debug)]
pub struct LocalStorage {
    name: String,
    /// The canonical base path, which every walk starts from.
    base: PathBuf,
    /// The base path as configured, made absolute but not resolved: an
    /// absolute symlink may be written under it too.
    configured: PathBuf,
}

impl LocalStorage {
    /// Creates `base_path` when missing, checks that it can hold hard links
    /// and remembers its canonical form.
    pub fn new(name: &str, base_path: &Path) -> Result<LocalStorage, StorageError> {
        let io = |action, source| StorageError::Io {
            storage: name.to_owned(),
            action,
            path: base_path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(base_path).map_err(|source| io("create the base path", source))?;
        let base = std::fs::canonicalize(base_path).map_err(|source| io("resolve the base path", source))?;
        check_hard_links(&base).map_err(|failed| match failed {
            HardLinkCheck::Write(source) => StorageError::NotWritable {
                storage: name.to_owned(),
                base: base_path.display().to_string(),
                uid: rustix::process::geteuid().as_raw(),
                source,
            },
            HardLinkCheck::Link(source) => StorageError::NoHardLinks {
                storage: name.to_owned(),
                base: base_path.display().to_string(),
                source,
            },
        })?;
        let configured =
            std::path::absolute(base_path).map_err(|source| io("resolve the base path", source))?;
        Ok(LocalStorage {
            name: name.to_owned(),
            base,
            configured,
        })
    }

    pub fn base_path(&self) -> &Path {
        &self.base
    }

    /// The name of `owner`'s own partial file of `name`, as it is on disk
    /// ([`own_partial_parts`] reads it back).
    pub fn own_partial_name(name: &FileName, owner: &TaskId) -> String {
        format!(".{name}.{owner}.part")
    }

    fn io_error(
        &self,
        action: &'static str,
        path: impl std::fmt::Display,
        source: std::io::Error,
    ) -> StorageError {
        StorageError::Io {
            storage: self.name.clone(),
            action,
            path: path.to_string(),
            source,
        }
    }

    fn escapes(&self, path: impl std::fmt::Display) -> StorageError {
        StorageError::Escapes {
            storage: self.name.clone(),
            path: path.to_string(),
        }
    }

    fn occupied(&self, path: impl std::fmt::Display) -> StorageError {
        StorageError::Occupied {
            storage: self.name.clone(),
            path: path.to_string(),
        }
    }

    /// The directory of `dir`, walked to from the base path and held open
    /// ([`walk`]), its missing components made on the way. No entry is
    /// synced here (see [`sync_names`]).
    async fn directory(&self, dir: &StorageDir) -> Result<Directory, StorageError> {
        match self.walk(dir, Missing::Make).await? {
            Some(directory) => Ok(directory),
            // A walk that makes what is missing finds everything.
            None => Err(self.io_error(
                "create the directory",
                dir,
                std::io::Error::from(ErrorKind::NotFound),
            )),
        }
    }

    /// The directory of `dir` if it exists, walked to as [`Self::directory`] does.
    async fn existing_directory(&self, dir: &StorageDir) -> Result<Option<Directory>, StorageError> {
        self.walk(dir, Missing::Answer).await
    }

    /// Runs [`walk`] for `dir` on a blocking thread, and says what stopped it.
    async fn walk(&self, dir: &StorageDir, missing: Missing) -> Result<Option<Directory>, StorageError> {
        let (base, configured, walked) = (self.base.clone(), self.configured.clone(), dir.clone());
        let directory = tokio::task::spawn_blocking(move || walk(&base, &configured, &walked, missing))
            .await
            .map_err(|error| WalkError::Io {
                action: "resolve the directory",
                source: std::io::Error::other(error.to_string()),
            })
            .and_then(|walked| walked)
            .map_err(|error| match error {
                WalkError::Io { action, source } => self.io_error(action, dir, source),
                WalkError::NotADirectory { component } => StorageError::NotADirectory {
                    storage: self.name.clone(),
                    dir: dir.to_string(),
                    component,
                },
                WalkError::Escapes { symlink, target } => self.escapes(format!(
                    "{dir} (through the symlink {symlink}, to {target}: replace it with a directory, \
                     or point it at one inside the base path)"
                )),
            })?;
        // The seam between the walk and the first use of what it found,
        // where tests swap a directory walked for a symlink.
        if directory.is_some() {
            fail::fail_point!("local::dir_resolved");
        }
        Ok(directory)
    }

    /// The identity of the own partial file, which must be a plain file.
    async fn own_identity(
        &self,
        directory: &Directory,
        files: &FileNames,
        path: &StoragePath,
    ) -> Result<Identity, StorageError> {
        match entry(directory, &files.own)
            .await
            .map_err(|source| self.io_error("check the partial file of", path, source))?
        {
            Some(own) if own.is_file() => Ok(own.identity),
            Some(_) => Err(self.escapes(format!("the partial file of {path}"))),
            None => Err(self.io_error(
                "find the partial file of",
                path,
                std::io::Error::from(ErrorKind::NotFound),
            )),
        }
    }

    /// Tries to hold `path` (whose names on disk are `files`, in
    /// `directory`) for their owner; `true` when it is held, by this call
    /// or an earlier attempt's.
    async fn hold(
        &self,
        directory: &Directory,
        files: &FileNames,
        path: &StoragePath,
    ) -> Result<bool, StorageError> {
        let io = |action: &'static str| move |source: std::io::Error| self.io_error(action, path, source);
        match entry(directory, &files.own).await.map_err(io("check"))? {
            Some(own) if !own.is_file() => {
                return Err(self.escapes(format!("the partial file of {path}")));
            }
            // An earlier attempt of the owner reserved this name and may
            // have died before recording it: the name is still its own if
            // the hold is.
            Some(_) => {}
            None => {
                // The cheap refusals first: a finished file, another's hold.
                for name in [&files.target, &files.hold] {
                    if entry(directory, name).await.map_err(io("check"))?.is_some() {
                        return Ok(false);
                    }
                }
                create_if_missing(directory, &files.own)
                    .await
                    .map_err(io("create the partial file of"))?;
            }
        }
        let own = self.own_identity(directory, files, path).await?;
        // The exclusion between tasks: one link to `C.part` succeeds.
        if !link_if_free(directory, &files.own, &files.hold)
            .await
            .map_err(io("hold the name of"))?
        {
            let holder = entry(directory, &files.hold).await.map_err(io("check"))?;
            if holder.map(|holder| holder.identity) != Some(own) {
                // Another task holds the name. The own partial file is a
                // reservation nobody recorded (a recorded one is never
                // reserved again): it holds nothing and goes.
                remove_if_same(directory, &files.own, own)
                    .await
                    .map_err(io("remove the partial file of"))?;
                return Ok(false);
            }
        }
        // Another task may have finished `C`, and given up its hold, after
        // the first look: with the hold taken, nobody else can any more.
        match entry(directory, &files.target).await.map_err(io("check"))? {
            Some(target) if target.identity != own => {
                remove_if_same(directory, &files.hold, own)
                    .await
                    .map_err(io("give up the name of"))?;
                remove_if_same(directory, &files.own, own)
                    .await
                    .map_err(io("remove the partial file of"))?;
                Ok(false)
            }
            _ => Ok(true),
        }
    }
}

/// What a walk does about a directory that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Missing {
    /// Makes it, and goes on.
    Make,
    /// Stops, and answers that there is none.
    Answer,
}

/// A directory of the storage, walked to from the base path without
/// following a symlink of its own accord ([`walk`]) and held open: each
/// name in it is used relative to its descriptor, never by a path, so that
/// nothing done to the paths that led to it since (a directory renamed, a
/// symlink put in its place) moves what is done in it anywhere else. Only
/// its own descriptor is held, whatever its depth: the directories walked
/// through are remembered by identity, for the syncs of a finish to climb
/// back up through ([`sync_names`]). Cheap to clone.
#[derive(Clone, Debug)]
struct Directory {
    walked: Arc<Walked>,
}

#[derive(Debug)]
struct Walked {
    /// The canonical base path, for the warnings about a directory.
    base: PathBuf,
    /// Opened with [`WALK`]: a handle to the directory, for `*at` calls
    /// and for opening it again (`.`) to list or sync it.
    descriptor: OwnedFd,
    /// The base path first, each directory after it the one walked into
    /// from the one before, and this directory last: never empty.
    levels: Vec<Level>,
}

/// One directory of a [`Directory`]'s walk, as it was when walked.
#[derive(Debug)]
struct Level {
    /// Its path from the base path as walked, symlinks followed (`/a/b`,
    /// empty for the base path itself), for messages.
    relative: String,
    /// Which directory it was, to tell it again when a finish climbs to it.
    identity: Identity,
}

impl Directory {
    /// The descriptor of this directory itself.
    fn descriptor(&self) -> BorrowedFd<'_> {
        self.walked.descriptor.as_fd()
    }

    /// Runs `operation` on this directory's descriptor on a blocking
    /// thread, as `tokio::fs` runs its calls.
    async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let directory = self.clone();
        blocking(move || operation(directory.descriptor())).await
    }
}

/// Runs `operation` on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(operation)
        .await
        .map_err(|error| std::io::Error::other(error.to_string()))?
}

/// How a directory is opened to walk from it: never through a symlink
/// (`O_NOFOLLOW`, with `O_DIRECTORY`: a symlink, or anything else that is
/// no directory, answers `ELOOP` or `ENOTDIR`), and on Linux as a handle
/// only (`O_PATH`), which needs no permission to read the directory: one the
/// worker may write in but not read (a drop box, mode 0733) is walked into
/// as its path was before.
#[cfg(any(target_os = "linux", target_os = "android"))]
const WALK: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const WALK: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What stopped a [`walk`].
enum WalkError {
    /// `symlink` (its path from the base path) leads to `target`, which is
    /// not inside the base path.
    Escapes { symlink: String, target: String },
    /// `component` (its path from the base path as walked) is a file, where
    /// a directory must be.
    NotADirectory { component: String },
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

impl WalkError {
    /// A walk that cannot go on through `symlink` (to `target`), for the
    /// reason `why`, which says what to do: [`StorageError::Io`], since
    /// whoever made the symlink may yet fix it.
    fn symlink(kind: ErrorKind, symlink: &str, target: &str, why: String) -> WalkError {
        WalkError::Io {
            action: "resolve the directory",
            source: std::io::Error::new(
                kind,
                format!("the symlink {symlink} (to {}) {why}", shortened(target)),
            ),
        }
    }
}

/// `text`, cut after 100 characters: a symlink's target in a message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A symlink a [`walk`] follows: its path from the base path as walked,
/// and its target as written.
struct Symlink {
    path: String,
    target: String,
}

/// One step of a [`walk`]: into a directory by its name, or back up to
/// the directory walked before (a `..` of a symlink's target); `through`
/// the symlink whose target it is a component of, if any (else it is one
/// of the `dir_path`'s own).
struct Step {
    kind: StepKind,
    through: Option<Rc<Symlink>>,
}

enum StepKind {
    Into(OsString),
    Up,
}

/// What is at a name a [`walk`] looked at.
enum Found {
    Directory(OwnedFd),
    Symlink(OsString),
    /// A file, or anything else that is neither a directory nor a symlink.
    NotADirectory,
    Nothing,
}

/// The identity of the file or directory open as `descriptor`.
fn identity_of(descriptor: BorrowedFd<'_>) -> Result<Identity, Errno> {
    rustix::fs::fstat(descriptor).map(|stat| Entry::of(&stat).identity)
}

/// Walks from the canonical `base` to the directory of `dir`, one
/// component at a time, each opened in the directory before without
/// following a symlink, and made when `missing` says so and it is one of
/// `dir`'s own components (see the module docs, *Directories*); `None`
/// when a component does not exist and is not to be made. A symlink met
/// on the way is followed by the walk, as one more walk: from the base
/// path for an absolute target, which must be written under `base` or
/// under `configured` (the base path as the configuration spells it),
/// from the symlink's directory for a relative one. A `..` goes back to
/// the directory walked before (checked to be the parent it was), and
/// never above the base path. At most [`MAX_STEPS`] steps, and
/// [`MAX_SYMLINKS`] symlinks; at most three descriptors open at once.
fn walk(
    base: &Path,
    configured: &Path,
    dir: &StorageDir,
    missing: Missing,
) -> Result<Option<Directory>, WalkError> {
    let io = |action: &'static str| {
        move |errno: Errno| WalkError::Io {
            action,
            source: errno.into(),
        }
    };
    // The canonical base path: no component of it is a symlink, so its
    // last one must not be one either, and a directory. Opened again by
    // each walk, not held by the storage: a file system mounted on it
    // after the worker started is walked into, as its path would be.
    let base_descriptor = rustix::fs::openat(rustix::fs::CWD, base, WALK, Mode::empty())
        .map_err(io("open the base path for"))?;
    let mut levels = vec![Level {
        relative: String::new(),
        identity: identity_of(base_descriptor.as_fd()).map_err(io("open the base path for"))?,
    }];
    // The directory walked into last, `None` while that is the base path.
    let mut current: Option<OwnedFd> = None;
    let mut steps: VecDeque<Step> = dir
        .components()
        .iter()
        .map(|component| Step {
            kind: StepKind::Into(component.as_str().into()),
            through: None,
        })
        .collect();
    // Every step the walk has been given, its own and those of the
    // symlinks' targets: what it would take if nothing refused it.
    let mut planned = steps.len();
    let mut followed = 0;
    while let Some(Step { kind, through }) = steps.pop_front() {
        let at = current.as_ref().unwrap_or(&base_descriptor).as_fd();
        let name = match kind {
            StepKind::Into(name) => name,
            StepKind::Up if levels.len() > 2 => {
                let parent = levels[levels.len() - 2].identity;
                let moved = "a directory on the way was moved to another directory while it was \
                             walked (the next attempt walks again)";
                current = Some(climb(at, parent, moved).map_err(|source| WalkError::Io {
                    action: "resolve the directory",
                    source,
                })?);
                levels.pop();
                continue;
            }
            StepKind::Up if levels.len() == 2 => {
                current = None;
                levels.pop();
                continue;
            }
            StepKind::Up => {
                let (symlink, target) = through
                    .map(|through| (through.path.clone(), through.target.clone()))
                    .unwrap_or_default();
                return Err(WalkError::Escapes { symlink, target });
            }
        };
        let relative = format!(
            "{}/{}",
            levels
                .last()
                .expect("a walk holds at least the base path")
                .relative,
            name.to_string_lossy()
        );
        // Only what the `dir_path` names is made: a directory a symlink
        // leads to is its maker's (a disk not mounted yet, say), and one
        // made in its place would take the files the link was meant for.
        let make = if through.is_none() {
            missing
        } else {
            Missing::Answer
        };
        match look(at, &name, make)? {
            Found::Directory(descriptor) => {
                let identity = identity_of(descriptor.as_fd()).map_err(io("resolve the directory"))?;
                levels.push(Level { relative, identity });
                current = Some(descriptor);
            }
            Found::NotADirectory => return Err(WalkError::NotADirectory { component: relative }),
            Found::Nothing => {
                return match (through, missing) {
                    (Some(through), Missing::Make) => Err(WalkError::symlink(
                        ErrorKind::NotFound,
                        &through.path,
                        &through.target,
                        format!(
                            "leads where {relative} does not exist (a disk not mounted yet?): create \
                             it, or point the symlink at an existing directory"
                        ),
                    )),
                    _ => Ok(None),
                };
            }
            Found::Symlink(target) => {
                followed += 1;
                let target = PathBuf::from(target);
                let written = target.display().to_string();
                if followed > MAX_SYMLINKS {
                    return Err(WalkError::symlink(
                        ErrorKind::Other,
                        &relative,
                        &written,
                        format!(
                            "is one more than the {MAX_SYMLINKS} a walk follows: do symlinks lead to \
                             each other? point it at a directory"
                        ),
                    ));
                }
                let escapes = || WalkError::Escapes {
                    symlink: relative.clone(),
                    target: written.clone(),
                };
                let rest = if target.is_absolute() {
                    // Under the base path as the configuration spells it
                    // is as good: NAS setups reach it through symlinks
                    // (`/media` to `/mnt/...`), and their links say so.
                    let Some(rest) = [base, configured]
                        .into_iter()
                        .find_map(|prefix| target.strip_prefix(prefix).ok())
                    else {
                        return Err(escapes());
                    };
                    levels.truncate(1);
                    current = None;
                    rest
                } else {
                    &target
                };
                let through = Rc::new(Symlink {
                    path: relative.clone(),
                    target: written.clone(),
                });
                let mut target_steps = Vec::new();
                for component in rest.components() {
                    let kind = match component {
                        Component::Normal(name) => StepKind::Into(name.to_owned()),
                        Component::ParentDir => StepKind::Up,
                        Component::CurDir => continue,
                        // Not in a relative path, nor in what follows the base path.
                        Component::RootDir | Component::Prefix(_) => return Err(escapes()),
                    };
                    target_steps.push(Step {
                        kind,
                        through: Some(through.clone()),
                    });
                }
                planned += target_steps.len();
                if planned > MAX_STEPS {
                    return Err(WalkError::symlink(
                        ErrorKind::Other,
                        &relative,
                        &written,
                        format!(
                            "makes the walk to the directory longer than {MAX_STEPS} steps: point it \
                             at a directory fewer levels down"
                        ),
                    ));
                }
                for step in target_steps.into_iter().rev() {
                    steps.push_front(step);
                }
            }
        }
    }
    Ok(Some(Directory {
        walked: Arc::new(Walked {
            base: base.to_path_buf(),
            descriptor: current.unwrap_or(base_descriptor),
            levels,
        }),
    }))
}

/// Opens the parent of the directory open as `child`, which must be the
/// directory `expected` (a walk went from it to `child`), as a walk opens
/// a directory ([`WALK`]: `..` is never a symlink); else the error says
/// `moved`.
fn climb(child: BorrowedFd<'_>, expected: Identity, moved: &'static str) -> std::io::Result<OwnedFd> {
    let parent = rustix::fs::openat(child, "..", WALK, Mode::empty())?;
    if identity_of(parent.as_fd())? != expected {
        return Err(std::io::Error::other(moved));
    }
    Ok(parent)
}

/// Whether `openat` with `O_DIRECTORY | O_NOFOLLOW` answered `errno` for
/// a symlink (or something else that is no directory): `ELOOP` or
/// `ENOTDIR` on Linux and macOS, `EMLINK` on FreeBSD, `EFTYPE` on NetBSD.
fn no_directory(errno: Errno) -> bool {
    #[cfg(any(target_os = "freebsd", target_os = "dragonfly"))]
    if errno == Errno::MLINK {
        return true;
    }
    #[cfg(target_os = "netbsd")]
    if errno == Errno::FTYPE {
        return true;
    }
    errno == Errno::LOOP || errno == Errno::NOTDIR
}

/// Opens `name` in `parent` to walk into it, making it first when it is
/// missing and `missing` says so; what is there otherwise.
fn look(parent: BorrowedFd<'_>, name: &OsString, missing: Missing) -> Result<Found, WalkError> {
    let io = |action: &'static str| {
        move |errno: Errno| WalkError::Io {
            action,
            source: errno.into(),
        }
    };
    let mut last = Errno::NOENT;
    for _ in 0..MAX_LOOKS {
        match rustix::fs::openat(parent, name.as_os_str(), WALK, Mode::empty()) {
            Ok(descriptor) => return Ok(Found::Directory(descriptor)),
            Err(Errno::NOENT) if missing == Missing::Make => {
                // Not synced in its parent: a directory made here may be
                // found made by a later attempt, or by another task, before
                // its entry is durable (a worker killed after making it,
                // another task's sync still in flight), so durability cannot
                // rest on whoever made it. Every file is made durable when it
                // is finished instead, its directories' entries with it, up
                // to the base path ([`sync_names`]): until then a power loss
                // that takes the directory takes only a partial file, which
                // the next attempt makes again. One made by someone else in
                // the meantime (`EEXIST`) is opened as it is, like any other.
                match rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(io("create the directory")(errno)),
                }
            }
            Err(Errno::NOENT) => return Ok(Found::Nothing),
            // A symlink, or something that is no directory.
            Err(errno) if no_directory(errno) => {
                match rustix::fs::readlinkat(parent, name.as_os_str(), Vec::new()) {
                    Ok(target) => return Ok(Found::Symlink(OsString::from_vec(target.into_bytes()))),
                    // No symlink: a file, or something else, in the way.
                    Err(Errno::INVAL) => return Ok(Found::NotADirectory),
                    // Gone since it was opened: looked at again.
                    Err(errno @ Errno::NOENT) => last = errno,
                    Err(errno) => return Err(io("resolve the directory")(errno)),
                }
            }
            Err(errno) => return Err(io("resolve the directory")(errno)),
        }
    }
    Err(io("resolve the directory")(last))
}

/// The names on disk of one file of one task, in its directory: single
/// components, used relative to the directory's descriptor.
struct FileNames {
    /// `C`: the finished file.
    target: String,
    /// `C.part`: the hold on the name, a link to the own partial file.
    hold: String,
    /// `.C.T.part`: the task's own partial file.
    own: String,
}

impl FileNames {
    fn new(name: &FileName, owner: &TaskId) -> FileNames {
        FileNames {
            target: name.as_str().to_owned(),
            hold: format!("{name}.part"),
            own: LocalStorage::own_partial_name(name, owner),
        }
    }
}

/// The name `file_name` is `owner`'s own partial file of, if it is one.
fn own_partial_of(file_name: &str, owner: &TaskId) -> Option<FileName> {
    own_partial_parts(file_name)
        .filter(|(_, of)| of == owner)
        .map(|(name, _)| name)
}

/// What makes a file itself: names with the same identity are links to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
}

impl Identity {
    fn of(metadata: &Metadata) -> Identity {
        Identity {
            device: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// What is at a name in a directory ([`entry`]).
#[derive(Clone, Copy, Debug)]
struct Entry {
    identity: Identity,
    kind: FileType,
    len: u64,
    links: u64,
}

impl Entry {
    // The fields' types are the platform's (`st_nlink` is a `u32` on
    // aarch64, a `u64` on x86_64): a conversion useless on one is needed
    // on another. `st_dev` is an `i32` on macOS, which `u64::from` does not
    // take: a device number is an identifier, its bits kept as they are.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    fn of(stat: &rustix::fs::Stat) -> Entry {
        Entry {
            identity: Identity {
                device: stat.st_dev as u64,
                inode: u64::from(stat.st_ino),
            },
            kind: FileType::from_raw_mode(stat.st_mode),
            // A file's size is never negative.
            len: u64::try_from(stat.st_size).unwrap_or(0),
            links: u64::from(stat.st_nlink),
        }
    }

    fn is_file(&self) -> bool {
        self.kind == FileType::RegularFile
    }
}

/// What is at `name` in `directory` (a symlink is not followed), if anything.
async fn entry(directory: &Directory, name: &str) -> std::io::Result<Option<Entry>> {
    let name = name.to_owned();
    directory
        .run(move |descriptor| {
            match rustix::fs::statat(descriptor, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => Ok(Some(Entry::of(&stat))),
                Err(Errno::NOENT) => Ok(None),
                Err(errno) => Err(errno.into()),
            }
        })
        .await
}

async fn remove_if_present(directory: &Directory, name: &str) -> std::io::Result<()> {
    let name = name.to_owned();
    directory
        .run(
            move |descriptor| match rustix::fs::unlinkat(descriptor, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(errno) => Err(errno.into()),
            },
        )
        .await
}

/// Removes `name` if it is a link to the file `identity`: holds and partial
/// files are only ever removed by their owner.
async fn remove_if_same(directory: &Directory, name: &str, identity: Identity) -> std::io::Result<()> {
    match entry(directory, name).await? {
        Some(found) if found.identity == identity => remove_if_present(directory, name).await,
        _ => Ok(()),
    }
}

/// Links `original` to `link`, both in `directory`; `false` when something
/// is at `link` already (which is never replaced).
async fn link_if_free(directory: &Directory, original: &str, link: &str) -> std::io::Result<bool> {
    let (original, link) = (original.to_owned(), link.to_owned());
    directory
        .run(move |descriptor| {
            match rustix::fs::linkat(
                descriptor,
                original.as_str(),
                descriptor,
                link.as_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST) => Ok(false),
                Err(errno) => Err(errno.into()),
            }
        })
        .await
}

/// Creates `name` in `directory`, a new empty file, open for writing;
/// `None` when something is there already. `O_EXCL`: a symlink there is
/// not followed, and a file there is not ours.
async fn create_new(directory: &Directory, name: &str) -> std::io::Result<Option<std::fs::File>> {
    let name = name.to_owned();
    directory
        .run(move |descriptor| {
            match rustix::fs::openat(
                descriptor,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Ok(file) => Ok(Some(std::fs::File::from(file))),
                Err(Errno::EXIST) => Ok(None),
                Err(errno) => Err(errno.into()),
            }
        })
        .await
}

/// Creates an empty file at `name` in `directory` unless something is
/// there; a symlink there is not followed (`O_EXCL`).
async fn create_if_missing(directory: &Directory, name: &str) -> std::io::Result<()> {
    create_new(directory, name).await.map(drop)
}

/// Opens the existing file `name` in `directory` for writing, and answers
/// it with what it is (its `fstat`, on the same blocking thread: no call
/// that may block on a slow disk runs on the runtime's). `O_NOFOLLOW`: a
/// symlink planted in its place since it was checked is refused, not
/// written through. Not `O_APPEND`: the writes go at this file's own
/// offsets (see `finish`).
async fn open_for_writing(directory: &Directory, name: &str) -> std::io::Result<(std::fs::File, Metadata)> {
    let name = name.to_owned();
    directory
        .run(move |descriptor| {
            let file = std::fs::File::from(rustix::fs::openat(
                descriptor,
                name.as_str(),
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
            let metadata = file.metadata()?;
            Ok((file, metadata))
        })
        .await
}

/// The names of `owner`'s own partial files in `directory`.
async fn own_partial_files(directory: &Directory, owner: &TaskId) -> std::io::Result<Vec<FileName>> {
    let owner = owner.clone();
    directory
        .run(move |descriptor| {
            // Opened again to be read: the walk's handle (`O_PATH`) cannot list.
            let readable = rustix::fs::openat(
                descriptor,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let mut listing = rustix::fs::Dir::new(readable)?;
            let mut found = Vec::new();
            while let Some(listed) = listing.read() {
                let listed = listed?;
                if let Some(name) = listed
                    .file_name()
                    .to_str()
                    .ok()
                    .and_then(|file_name| own_partial_of(file_name, &owner))
                {
                    found.push(name);
                }
            }
            Ok(found)
        })
        .await
}

/// Replaces the own partial file `identity` and its hold by a new empty
/// one, as a reservation makes them: whatever still has the old one open
/// writes into a file no name leads to. The name is held again at once,
/// so that no other task takes it before the next attempt; if one did in
/// that instant, the next attempt finds it taken.
async fn start_over(directory: &Directory, files: &FileNames, identity: Identity) -> std::io::Result<()> {
    start_afresh(directory, files, identity).await.map(drop)
}

/// As [`start_over`], and answers the new partial file, open for writing,
/// when this call created it; `None` when another one was there already:
/// another attempt had started over first, and the file `identity` was no
/// longer the task's.
async fn start_afresh(
    directory: &Directory,
    files: &FileNames,
    identity: Identity,
) -> std::io::Result<Option<File>> {
    remove_if_same(directory, &files.hold, identity).await?;
    remove_if_same(directory, &files.own, identity).await?;
    fail::fail_point!("local::start_over", |_| Err(std::io::Error::from_raw_os_error(
        libc::EIO
    )));
    let created = create_new(directory, &files.own).await?.map(File::from_std);
    link_if_free(directory, &files.own, &files.hold).await?;
    Ok(created)
}

/// Makes the names in the directory open as `descriptor` (`relative` from
/// `base`, for the warning) durable, by an `fsync` of it (opened again,
/// as `.` in itself: the walk's handle cannot be synced). A file system
/// that cannot sync a directory (`EINVAL`, `EOPNOTSUPP`) loses nothing but
/// that guarantee, and neither does a directory the worker may write in
/// but not open (`EACCES`, `EPERM`: an operator's drop-box directory, mode
/// 0733), which it cannot sync whatever it does: failing every file in it
/// would only turn a saved file into a failed task. The directory synced
/// is the one walked, whatever its path leads to by now: nothing planted
/// since is synced through, nor opened (a FIFO would hang the open).
fn sync_directory(base: &Path, relative: &str, descriptor: BorrowedFd<'_>) -> std::io::Result<()> {
    let opened = match failed_directory_sync() {
        Some(error) => Err(error),
        None => rustix::fs::openat(
            descriptor,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from),
    };
    let synced = match opened {
        Ok(directory) => rustix::fs::fsync(&directory).map_err(std::io::Error::from),
        Err(error) if matches!(error.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            tracing::warn!(
                directory = %format!("{}{relative}", base.display()),
                %error,
                "cannot open the directory to sync it: its names may not survive a power loss \
                 (give the worker read permission on it)"
            );
            Ok(())
        }
        Err(error) => Err(error),
    };
    match synced {
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => Ok(()),
        synced => synced,
    }
}

/// Makes a file finished in `directory` durable by name, whoever made its
/// directories: its entry in `directory`, then that directory's entry in
/// its parent, and so on up to the base path's entry for the topmost one:
/// the directories the walk to `directory` went through, the ones the
/// file is in (symlinks followed). For a file in `base/a/b/c`, four syncs
/// (of `c`, `b`, `a` and `base`); for one directly in `base`, one. Each
/// file finished pays them (an album's retry again for each file an
/// earlier attempt finished); a sync of a clean directory may still flush
/// the disk's cache, so a deep `dir_path` costs a flush per level. Said
/// which failed, if one did.
///
/// The directories above `directory` are not held open ([`Directory`]):
/// each is reached again from the one below it, as its `..`, and must be
/// the directory the walk went through there (device and inode), which a
/// rename in place keeps. One that is not was moved to another directory
/// since the walk, with the file in it: the file is then no longer where
/// its path leads, the climb stops there, and the finish fails retryably
/// ([`StorageError::Unsynced`], saying so): the next attempt walks the
/// path again, and finds the file there, or not. Syncing wherever the
/// directory is now instead would climb to directories outside the base
/// path, and make durable a name no task records. So a finish holds two
/// descriptors at a time, at any depth.
async fn sync_names(directory: &Directory) -> Result<(), UnsyncedName> {
    let directory = directory.clone();
    tokio::task::spawn_blocking(move || {
        let Walked {
            base,
            descriptor,
            levels,
        } = &*directory.walked;
        let last = levels.len() - 1;
        sync_directory(base, &levels[last].relative, descriptor.as_fd()).map_err(|source| UnsyncedName {
            directory: None,
            source,
        })?;
        // The directory synced last, `None` while it is `directory` itself.
        let mut below: Option<OwnedFd> = None;
        for index in (0..last).rev() {
            // Whose entry in this level is made durable: the next level's.
            let unsynced = |source| UnsyncedName {
                directory: Some(levels[index + 1].relative.clone()),
                source,
            };
            let child = below.as_ref().unwrap_or(descriptor).as_fd();
            let moved = "it was moved to another directory since it was walked, so the file is no \
                         longer where its path leads (the next attempt walks that path again)";
            let parent = climb(child, levels[index].identity, moved).map_err(unsynced)?;
            sync_directory(base, &levels[index].relative, parent.as_fd()).map_err(unsynced)?;
            below = Some(parent);
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|error| {
        Err(UnsyncedName {
            directory: None,
            source: std::io::Error::other(error.to_string()),
        })
    })
}

/// Syncs the names in `directory` itself ([`sync_directory`]).
async fn sync_own_names(directory: &Directory) -> std::io::Result<()> {
    let directory = directory.clone();
    blocking(move || {
        let walked = &*directory.walked;
        let relative = &walked
            .levels
            .last()
            .expect("a walk holds at least the base path")
            .relative;
        sync_directory(&walked.base, relative, walked.descriptor.as_fd())
    })
    .await
}

/// The sync of [`sync_names`] that failed.
struct UnsyncedName {
    /// The directory (relative to the base path) whose entry in its parent
    /// could not be synced; `None` for the file's own entry in its directory.
    directory: Option<String>,
    source: std::io::Error,
}

impl UnsyncedName {
    /// The error of `storage` for the file `path`: [`StorageError::Unsynced`],
    /// one that may pass. The file stays finished: its bytes were synced, and
    /// only a name's durability is in doubt, which the next attempt syncs
    /// again ([`Storage::finished`]) before reporting the file complete.
    fn into_error(self, storage: &str, path: &str) -> StorageError {
        let what = match self.directory {
            None => "its entry in its directory".to_owned(),
            Some(directory) => {
                let parent = Path::new(&directory)
                    .parent()
                    .map(|parent| parent.display().to_string())
                    .filter(|parent| parent != "/")
                    .unwrap_or_else(|| "the base path".to_owned());
                format!("the entry of {directory} in {parent}")
            }
        };
        StorageError::Unsynced {
            storage: storage.to_owned(),
            path: path.to_owned(),
            what,
            source: self.source,
        }
    }
}

/// The failure a test makes a directory's sync answer, if any: its fail
/// point answers the error number it is given (`return(22)`), EIO when
/// given none, in place of opening the directory; [`sync_directory`]
/// tolerates it as it would the open's or the sync's.
fn failed_directory_sync() -> Option<std::io::Error> {
    fail::fail_point!("local::sync_directory", |errno: Option<String>| Some(
        std::io::Error::from_raw_os_error(errno.and_then(|errno| errno.parse().ok()).unwrap_or(libc::EIO))
    ));
    None
}

/// How linking a file by its descriptor went ([`link_descriptor`]).
#[derive(Debug, PartialEq, Eq)]
enum DescriptorLink {
    /// The name leads to the file now.
    Linked,
    /// Something was at the name already; it is never replaced.
    Taken,
    /// No name leads to the file any more, and Linux gives none to such a
    /// file again: it was discarded.
    Unnamed,
    /// A file cannot be linked by its descriptor here (no `/proc`, or not
    /// Linux): only by one of its names.
    Unavailable,
}

/// Links the file open as `file` to `link` in `directory` (which it never
/// replaces) through its descriptor, `/proc/self/fd/<fd>` followed
/// (`linkat` with `AT_SYMLINK_FOLLOW`): that file itself, whatever its
/// names lead to by now. A file with no name left gives `ENOENT`, as does a
/// missing `/proc`; which it was, the file's own link count tells.
#[cfg(target_os = "linux")]
fn link_descriptor(
    file: &std::fs::File,
    directory: BorrowedFd<'_>,
    link: &str,
) -> std::io::Result<DescriptorLink> {
    use std::os::fd::AsRawFd;
    fail::fail_point!("local::link_descriptor", |_| Ok(DescriptorLink::Unavailable));
    let descriptor = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(
        rustix::fs::CWD,
        descriptor.as_str(),
        directory,
        link,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Ok(()) => Ok(DescriptorLink::Linked),
        Err(Errno::EXIST) => Ok(DescriptorLink::Taken),
        Err(Errno::NOENT) if file.metadata()?.nlink() == 0 => Ok(DescriptorLink::Unnamed),
        // The descriptor's own entry is missing: no `/proc` (else
        // `directory` was removed, which is an error).
        Err(Errno::NOENT) if std::fs::symlink_metadata(&descriptor).is_err() => {
            Ok(DescriptorLink::Unavailable)
        }
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn link_descriptor(
    _file: &std::fs::File,
    _directory: BorrowedFd<'_>,
    _link: &str,
) -> std::io::Result<DescriptorLink> {
    Ok(DescriptorLink::Unavailable)
}

/// The writer of the partial file `file` from `offset` on, and a descriptor
/// of the same file kept beside it, to link that very file when it is
/// finished ([`LocalPartialFile::link_target`]). Not the writer's own: its
/// thread closes it when it stops, and the number may then name another file.
fn writer(file: std::fs::File, offset: u64) -> std::io::Result<(Arc<std::fs::File>, WriteBehind)> {
    let descriptor = Arc::new(file.try_clone()?);
    Ok((descriptor, WriteBehind::start(file, offset, "partial-writer")?))
}

/// What [`check_hard_links`] could not do.
enum HardLinkCheck {
    /// Make a file in the base path at all: it is not writable.
    Write(std::io::Error),
    /// Link the file it made.
    Link(std::io::Error),
}

/// Fails unless files under `base` can be made and hard linked, which
/// holding names and finishing files rely on: better at start-up than at
/// the first task.
fn check_hard_links(base: &Path) -> Result<(), HardLinkCheck> {
    // Where tests make the base path read-only (`write`) or its file
    // system one without hard links (`link`).
    fail::fail_point!("local::check_hard_links", |failed| match failed.as_deref() {
        Some("link") => Err(HardLinkCheck::Link(std::io::Error::from_raw_os_error(
            libc::EPERM
        ))),
        _ => Err(HardLinkCheck::Write(std::io::Error::from_raw_os_error(
            libc::EROFS
        ))),
    });
    let probe = base.join(format!(".savestream-link-check-{}", xid::new()));
    let link = base.join(format!(".savestream-link-check-{}", xid::new()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(HardLinkCheck::Write)?;
    let linked = std::fs::hard_link(&probe, &link);
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&probe);
    linked.map_err(HardLinkCheck::Link)
}

#[async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reserve(
        &self,
        owner: &TaskId,
        dir: &StorageDir,
        name: &FileName,
        taken: &[StoragePath],
    ) -> Result<StoragePath, StorageError> {
        let directory = self.directory(dir).await?;
        // Candidates are tried in the same order by every attempt, so the
        // first one an earlier attempt of the owner holds is the one it took.
        for number in 0..MAX_ALTERNATIVES {
            let candidate = if number == 0 {
                name.clone()
            } else {
                name.numbered(number)
            };
            let path = StoragePath::new(dir.clone(), candidate.clone());
            if taken.contains(&path) {
                continue;
            }
            if self
                .hold(&directory, &FileNames::new(&candidate, owner), &path)
                .await?
            {
                return Ok(path);
            }
        }
        Err(StorageError::NoFreeName {
            storage: self.name.clone(),
            path: StoragePath::new(dir.clone(), name.clone()).to_string(),
            tries: MAX_ALTERNATIVES,
        })
    }

    async fn finished(&self, owner: &TaskId, path: &StoragePath) -> Result<Option<u64>, StorageError> {
        let Some(directory) = self.existing_directory(&path.dir).await? else {
            return Ok(None);
        };
        let files = FileNames::new(&path.name, owner);
        let io = |action: &'static str| move |source: std::io::Error| self.io_error(action, path, source);
        let target = match entry(&directory, &files.target).await.map_err(io("check"))? {
            Some(target) if target.is_file() => target,
            _ => return Ok(None),
        };
        let identity = target.identity;
        if let Some(own) = entry(&directory, &files.own).await.map_err(io("check"))? {
            if own.identity != identity {
                // Still being written; `C` is somebody else's.
                return Ok(None);
            }
        }
        // Finished, by an attempt that may have died before tidying up.
        remove_if_same(&directory, &files.hold, identity)
            .await
            .map_err(io("give up the name of"))?;
        remove_if_same(&directory, &files.own, identity)
            .await
            .map_err(io("remove the partial file of"))?;
        // The attempt that finished it may have died, or failed, before
        // its names were durable.
        sync_names(&directory)
            .await
            .map_err(|unsynced| unsynced.into_error(&self.name, &path.to_string()))?;
        Ok(Some(target.len))
    }

    async fn open(&self, owner: &TaskId, path: &StoragePath) -> Result<Box<dyn PartialFile>, StorageError> {
        let directory = self.directory(&path.dir).await?;
        let files = FileNames::new(&path.name, owner);
        let io = |action: &'static str| move |source: std::io::Error| self.io_error(action, path, source);
        if entry(&directory, &files.own)
            .await
            .map_err(io("check"))?
            .is_none()
        {
            match entry(&directory, &files.hold).await.map_err(io("check"))? {
                // A partial file from before own partial files: the task
                // recorded this path, so it is the task's.
                Some(hold) if hold.is_file() && hold.links == 1 => {
                    link_if_free(&directory, &files.hold, &files.own)
                        .await
                        .map_err(io("adopt the partial file of"))?;
                }
                _ => create_if_missing(&directory, &files.own)
                    .await
                    .map_err(io("create the partial file of"))?,
            }
        }
        let own = self.own_identity(&directory, &files, path).await?;
        // The path was held when it was recorded; hold it again if an
        // attempt got no further than creating the partial file.
        if !link_if_free(&directory, &files.own, &files.hold)
            .await
            .map_err(io("hold the name of"))?
        {
            let holder = entry(&directory, &files.hold).await.map_err(io("check"))?;
            if holder.map(|holder| holder.identity) != Some(own) {
                return Err(self.occupied(format!("{path}.part")));
            }
        }
        let (file, metadata) = open_for_writing(&directory, &files.own)
            .await
            .map_err(io("open the partial file of"))?;
        let len = metadata.len();
        let (descriptor, file) =
            writer(file, len).map_err(io("start the thread writing the partial file of"))?;
        Ok(Box::new(LocalPartialFile {
            storage: self.name.clone(),
            path: path.to_string(),
            directory,
            files,
            identity: Identity::of(&metadata),
            descriptor,
            file,
            len,
        }))
    }

    async fn discard(&self, owner: &TaskId, dir: &StorageDir) -> Result<(), StorageError> {
        let Some(directory) = self.existing_directory(dir).await? else {
            return Ok(());
        };
        let io = |action: &'static str| move |source: std::io::Error| self.io_error(action, dir, source);
        for name in own_partial_files(&directory, owner).await.map_err(io("list"))? {
            let files = FileNames::new(&name, owner);
            let Some(own) = entry(&directory, &files.own)
                .await
                .map_err(io("check a partial file in"))?
            else {
                continue;
            };
            remove_if_same(&directory, &files.hold, own.identity)
                .await
                .map_err(io("give up a name in"))?;
            remove_if_present(&directory, &files.own)
                .await
                .map_err(io("remove a partial file in"))?;
        }
        Ok(())
    }

    async fn remove(&self, path: &StoragePath) -> Result<(), StorageError> {
        let Some(directory) = self.existing_directory(&path.dir).await? else {
            return Ok(());
        };
        remove_if_present(&directory, path.name.as_str())
            .await
            .map_err(|source| self.io_error("remove", path, source))
    }

    async fn partial_owners(&self) -> Result<Vec<(TaskId, StorageDir)>, StorageError> {
        let base = self.base.clone();
        tokio::task::spawn_blocking(move || partial_owners_under(&base))
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))
            .and_then(|walked| walked)
            .map_err(|source| self.io_error("look for partial files in", "/", source))
    }
}

/// Walks the tree under `base` for own partial files, `.C.T.part`, and
/// answers each owner `T` once per directory. Never by a path, so never
/// through a symlink: each directory is opened in its parent's descriptor
/// (`O_DIRECTORY | O_NOFOLLOW`), and what it lists is read from its own.
/// A directory swapped for a symlink after its parent was listed (to `/`,
/// say, which a worker running as root would walk whole) answers
/// `ELOOP`/`ENOTDIR` and is passed over. So are directories whose names no
/// `dir_path` could have made, which hold no task's files, and those
/// below them (a path from the base longer than [`MAX_DIR_PATH_LEN`]):
/// so the walk holds at most one descriptor per level of that depth. And
/// so are directories below the base that cannot be read (a root-only
/// `lost+found`) and entries that vanish during the walk: one of them must
/// not keep every other task's leftovers in place. Only a base that cannot
/// be read fails the walk.
fn partial_owners_under(base: &Path) -> std::io::Result<Vec<(TaskId, StorageDir)>> {
    const LIST: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);
    let mut owners = Vec::new();
    // The base first; then each directory still to be listed: its
    // parent's descriptor (held while a child of it waits), its name, and
    // its path from the base.
    let mut next = Some((
        Arc::new(rustix::fs::openat(rustix::fs::CWD, base, LIST, Mode::empty())?),
        String::new(),
    ));
    let mut pending: Vec<(Arc<OwnedFd>, OsString, String)> = Vec::new();
    loop {
        let (directory, relative) = match next.take() {
            Some(base) => base,
            None => {
                let Some((parent, name, relative)) = pending.pop() else {
                    break;
                };
                // The seam between listing a directory and opening one it
                // listed, where tests swap that one for a symlink.
                fail::fail_point!("local::partial_owners::listed");
                match rustix::fs::openat(&*parent, name.as_os_str(), LIST, Mode::empty()) {
                    Ok(opened) => (Arc::new(opened), relative),
                    Err(errno) => {
                        passed_over(&relative, &errno.into());
                        continue;
                    }
                }
            }
        };
        let mut listing = match rustix::fs::Dir::read_from(&*directory) {
            Ok(listing) => listing,
            Err(errno) if relative.is_empty() => return Err(errno.into()),
            Err(errno) => {
                passed_over(&relative, &errno.into());
                continue;
            }
        };
        let mut found: Vec<TaskId> = Vec::new();
        while let Some(listed) = listing.read() {
            let listed = match listed {
                Ok(listed) => listed,
                Err(errno) => {
                    // What was listed before still counts.
                    passed_over(&relative, &errno.into());
                    break;
                }
            };
            let Some(name) = listed.file_name().to_str().ok().map(str::to_owned) else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match listed.file_type() {
                // A file system that does not say in its listing (some
                // NFS servers): asked, without following a symlink.
                FileType::Unknown => {
                    match rustix::fs::statat(&*directory, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                        Err(errno) => {
                            passed_over(&format!("{relative}/{name}"), &errno.into());
                            continue;
                        }
                    }
                }
                kind => kind,
            };
            if kind == FileType::Directory {
                let below = format!("{relative}/{name}");
                if below.len() <= MAX_DIR_PATH_LEN {
                    pending.push((directory.clone(), name.into(), below));
                }
            } else if kind == FileType::RegularFile {
                if let Some((_, owner)) = own_partial_parts(&name) {
                    if !found.contains(&owner) {
                        found.push(owner);
                    }
                }
            }
        }
        // `relative` is empty for the base itself, which parses as the root.
        let Ok(dir) = StorageDir::parse(&relative) else {
            continue;
        };
        owners.extend(found.into_iter().map(|owner| (owner, dir.clone())));
    }
    Ok(owners)
}

/// Says why the walk for partial files passes over `relative` (said once,
/// as the walk comes to each only once): at debug when it vanished while
/// the walk went on, else as a warning, since partial files there stay.
fn passed_over(relative: &str, error: &std::io::Error) {
    let no_longer_a_directory = error
        .raw_os_error()
        .is_some_and(|errno| no_directory(Errno::from_raw_os_error(errno)));
    if error.kind() == ErrorKind::NotFound || no_longer_a_directory {
        debug!(
            path = relative,
            %error,
            "gone, or no longer a directory (a symlink put in its place?), while looking for \
             partial files: passed over"
        );
    } else {
        warn!(
            path = relative,
            %error,
            "cannot look for partial files here: passed over, so partial files of ended tasks in it stay"
        );
    }
}

struct LocalPartialFile {
    storage: String,
    /// The storage path of the file, for messages.
    path: String,
    /// The directory the file is in, as walked when it was opened: every
    /// name of the file is used in it, and `finish` syncs up its walk.
    directory: Directory,
    files: FileNames,
    /// The own partial file's identity, of the file opened (its names may
    /// lead elsewhere later, once it is discarded), or of the new one a
    /// truncate made.
    identity: Identity,
    /// The same file, kept open to link it by when it is finished.
    descriptor: Arc<std::fs::File>,
    /// The own partial file, written by its own thread at offsets of its
    /// own, from the length it had when opened (a truncate starts a new
    /// file, and a new thread writing it from 0).
    file: WriteBehind,
    /// Where the file ends as this writer wrote it: the length it had when
    /// opened (or 0 after a truncate) and every byte written since.
    len: u64,
}

impl LocalPartialFile {
    fn io_error(&self, action: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io {
            storage: self.storage.clone(),
            action,
            path: self.path.clone(),
            source,
        }
    }

    /// Discards the partial file after its writing thread failed to
    /// `action` it (every failure of the thread, a write's, the
    /// writeback's or a sync's, is one of the disk's), and answers the
    /// error that says so: its bytes cannot be trusted (see the module
    /// docs), so the next attempt must start over.
    ///
    /// If the discard fails too, no later attempt may find the file
    /// either. One whose names no longer lead to it (only holding the name
    /// again failed) is out of reach: its next attempt creates a new one,
    /// as after any discard. One still reachable (or that cannot be told)
    /// fails the task for good ([`StorageError::Untrusted`]). Nothing else
    /// would do: a storage that refused to remove the file will not take
    /// a mark beside it either, the next attempt may run in another worker
    /// (so this one cannot remember it), and a sync by that attempt would
    /// succeed over the loss, since Linux reports a writeback error once.
    async fn untrusted(&self, action: &'static str, source: std::io::Error) -> StorageError {
        let Err(discard) = self.discard().await else {
            return self.discarded(action, source);
        };
        if !leads_to(&self.directory, &self.files, self.identity).await {
            warn!(
                storage = %self.storage,
                path = %self.path,
                error = %discard,
                "the partial file was discarded, but its name could not be held again"
            );
            return self.discarded(action, source);
        }
        StorageError::Untrusted {
            storage: self.storage.clone(),
            action,
            path: self.path.clone(),
            source,
            discard,
        }
    }

    /// Replaces the own partial file by a new, empty one ([`start_over`]).
    async fn discard(&self) -> std::io::Result<()> {
        fail::fail_point!("local::discard", |_| Err(std::io::Error::from_raw_os_error(
            libc::EIO
        )));
        start_over(&self.directory, &self.files, self.identity).await
    }

    /// The error of a partial file another attempt of the task discarded.
    fn replaced(&self) -> StorageError {
        StorageError::Replaced {
            storage: self.storage.clone(),
            path: self.path.clone(),
        }
    }

    /// Links the file this writer opened (or made, by a truncate) to its
    /// finished name; `false` when something is there already, which is
    /// never replaced. The file itself is linked, through the descriptor
    /// kept open: the name it was opened by may lead to another file by
    /// now (another attempt discarded this one and made a new, empty one),
    /// and a link by that name would make the finished name lead to the
    /// new file, if only until a check took it away again, and a worker
    /// killed in between would leave it there, finished in the eyes of
    /// [`Storage::finished`] (see [`DescriptorLink`]). A file no name leads
    /// to any more is [`StorageError::Replaced`].
    ///
    /// The caller checked that a name of the task still leads to the file
    /// ([`leads_to`]): a file discarded while a name elsewhere still led to
    /// it (a hard link made by hand, or by a backup) has links left, and
    /// would be linked again. What that check cannot exclude is another
    /// attempt discarding the file between it and the link: the finished
    /// name then leads to the file this attempt wrote, whole and synced,
    /// though another attempt had found reason to discard it.
    async fn link_target(&self) -> Result<bool, StorageError> {
        let (descriptor, target) = (self.descriptor.clone(), self.files.target.clone());
        let linked = self
            .directory
            .run(move |directory| link_descriptor(&descriptor, directory, &target))
            .await
            .map_err(|source| self.io_error("link the partial file to", source))?;
        match linked {
            DescriptorLink::Linked => Ok(true),
            DescriptorLink::Taken => Ok(false),
            DescriptorLink::Unnamed => Err(self.replaced()),
            DescriptorLink::Unavailable => self.link_by_name().await,
        }
    }

    /// [`Self::link_target`] where a file cannot be linked by its
    /// descriptor: by a name that leads to the file, checked just before.
    ///
    /// This leaves open what linking by descriptor closes: another attempt
    /// that discards the file between the check and the link makes the
    /// name lead to its new, empty file, which is then linked. That link
    /// goes again at once, but a worker killed before that leaves the new
    /// file at the finished name (which [`Storage::finished`] then takes
    /// for finished: an empty file recorded as complete when the size is
    /// unknown, else [`StorageError::Occupied`] for good), and should the
    /// attempt writing the new file finish it in that instant, it finds
    /// its own file at the name, completes, and loses it to this removal.
    async fn link_by_name(&self) -> Result<bool, StorageError> {
        let (own, files, directory) = (self.identity, &self.files, &self.directory);
        let mut named = None;
        for name in [&files.own, &files.hold] {
            let at = entry(directory, name)
                .await
                .map_err(|source| self.io_error("check", source))?;
            if at.map(|at| at.identity) == Some(own) {
                named = Some(name);
                break;
            }
        }
        let Some(name) = named else {
            return Err(self.replaced());
        };
        let linked = link_if_free(directory, name, &files.target)
            .await
            .map_err(|source| self.io_error("link the partial file to", source))?;
        if linked {
            let existing = entry(directory, &files.target)
                .await
                .map_err(|source| self.io_error("check", source))?
                .map(|existing| existing.identity);
            if existing != Some(own) {
                // The name led to another file by the time it was linked.
                if let Some(linked) = existing {
                    remove_if_same(directory, &files.target, linked)
                        .await
                        .map_err(|source| self.io_error("remove the wrong link of", source))?;
                }
                return Err(self.replaced());
            }
        }
        Ok(linked)
    }

    fn discarded(&self, action: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Discarded {
            storage: self.storage.clone(),
            action,
            path: self.path.clone(),
            source,
        }
    }
}

/// Whether a name a later attempt opens, the own partial file or the hold,
/// still leads to the file `identity`; yes when that cannot be told.
async fn leads_to(directory: &Directory, files: &FileNames, identity: Identity) -> bool {
    for name in [&files.own, &files.hold] {
        if names(directory, name, identity).await {
            return true;
        }
    }
    false
}

/// Whether `name` leads to the file `identity`; yes when that cannot be told.
async fn names(directory: &Directory, name: &str, identity: Identity) -> bool {
    match entry(directory, name).await {
        Ok(None) => false,
        Ok(Some(found)) => found.identity == identity,
        Err(_) => true,
    }
}

#[async_trait]
impl PartialFile for LocalPartialFile {
    fn len(&self) -> u64 {
        self.len
    }

    /// Starts over in a new, empty partial file ([`start_afresh`]), not in
    /// the old one emptied: an attempt taken over while frozen that still
    /// has the old one open, and wakes up, writes what it had queued into a
    /// file no name leads to, not at its old offsets over the bytes of a
    /// download that started over (from a file replaced on the server, say).
    /// So it only ever writes a file it opened or made itself: when another
    /// attempt started over first, this one is [`StorageError::Replaced`].
    async fn truncate(&mut self) -> Result<(), StorageError> {
        // Written first: a failed write is reported as one, and the file
        // discarded as untrusted, should starting over fail and leave it.
        self.flush().await?;
        let Some(file) = start_afresh(&self.directory, &self.files, self.identity)
            .await
            .map_err(|source| self.io_error("start over the partial file of", source))?
        else {
            return Err(self.replaced());
        };
        let metadata = file
            .metadata()
            .await
            .map_err(|source| self.io_error("check the partial file of", source))?;
        let identity = Identity::of(&metadata);
        // Held again at once; another task may have taken the name in that
        // instant, and the file is then not to be finished under it.
        let holder = entry(&self.directory, &self.files.hold)
            .await
            .map_err(|source| self.io_error("check", source))?;
        if holder.map(|holder| holder.identity) != Some(identity) {
            return Err(StorageError::Occupied {
                storage: self.storage.clone(),
                path: format!("{}.part", self.path),
            });
        }
        let (descriptor, file) = writer(file.into_std().await, 0)
            .map_err(|source| self.io_error("start the thread writing the partial file of", source))?;
        // The old writer is dropped, and with it whatever it still had queued.
        (self.identity, self.descriptor, self.file, self.len) = (identity, descriptor, file, 0);
        // Durable before it answers: the pipeline records a new file's
        // validator once the partial file is empty, and a power loss must
        // not bring the old file's bytes back under it.
        if let Err(source) = self.file.sync().await {
            return Err(self.untrusted("truncate the partial file of", source).await);
        }
        sync_own_names(&self.directory)
            .await
            .map_err(|source| self.io_error("sync the directory of", source))
    }

    /// Asks the file system of the partial file (`fstatvfs` on its own
    /// descriptor) how many bytes an unprivileged writer may still use.
    async fn check_space(&mut self, size: u64) -> Result<(), StorageError> {
        let needed = size.saturating_sub(self.len);
        if needed == 0 {
            return Ok(());
        }
        let descriptor = self.descriptor.clone();
        let free = blocking(move || {
            fail::fail_point!("local::free_space", |free| Ok(free
                .and_then(|free| free.parse().ok())
                .unwrap_or(0)));
            let stat = rustix::fs::fstatvfs(descriptor.as_fd())?;
            Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
        })
        .await
        .map_err(|source| self.io_error("check the free space for", source))?;
        if needed > free {
            return Err(StorageError::NoSpace {
                storage: self.storage.clone(),
                path: self.path.clone(),
                needed,
                free,
            });
        }
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let chunk_len = chunk.len() as u64;
        if let Err(source) = self.file.write(chunk).await {
            return Err(self.untrusted("write the partial file of", source).await);
        }
        self.len += chunk_len;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StorageError> {
        match self.file.flush().await {
            Ok(()) => Ok(()),
            Err(source) => Err(self.untrusted("write the partial file of", source).await),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        // Flushed first, so that a failed write is not reported as a failed sync.
        self.flush().await?;
        let synced = match self.file.sync().await {
            Ok(synced) => synced,
            Err(source) => return Err(self.untrusted("sync the partial file of", source).await),
        };
        let own = self.identity;
        let (files, directory) = (&self.files, &self.directory);
        // An attempt taken over while it was frozen may have written this
        // file after this one opened it. Its bytes went at its own offsets:
        // the same bytes where both wrote the same source from the same
        // file on the server. (Not so after a download started over, from
        // a file replaced there: but that happens in a new partial file,
        // see `truncate`, except when the partial file was empty already,
        // see the module docs.) A file that does not end where this
        // writer's bytes end holds bytes it did not write, and is not
        // finished. It goes: the next attempt starts over.
        if synced.len() != self.len {
            start_over(directory, files, own)
                .await
                .map_err(|source| self.io_error("discard the partial file of", source))?;
            return Err(StorageError::Interleaved {
                storage: self.storage.clone(),
                path: self.path.clone(),
                on_disk: synced.len(),
                written: self.len,
            });
        }
        // Another attempt of the task may have discarded this file (for
        // whatever reason: a failed write or sync, an interleaved file, a
        // download started over) and made a new one in its place. A file
        // no name of the task leads to any more is not finished (unless
        // it is the finished file already: another attempt that had it
        // open finished it first). The hold counts as such a name even
        // alone: no discard leaves it so (each gives up the hold before
        // the own partial file, and only when both lead to the file it
        // discards), and a later attempt would open it and resume from it
        // (as a partial file from before own partial files), so the file
        // is still the task's. Any other name does not count (see
        // `link_target`).
        if !leads_to(directory, files, own).await && !names(directory, &files.target, own).await {
            return Err(self.replaced());
        }
        fail::fail_point!("local::finish::link");
        // No-clobber: a link fails where a rename would replace. The task
        // holds the name, so a file already there is this same file,
        // linked by another attempt that had it open too (and may have
        // died before tidying up), or one put there by hand.
        let linked = self.link_target().await?;
        fail::fail_point!("local::finish::linked", |_| Err(
            self.io_error("finish", std::io::Error::from_raw_os_error(libc::EIO))
        ));
        if !linked {
            let existing = entry(directory, &files.target)
                .await
                .map_err(|source| self.io_error("check", source))?;
            if existing.map(|existing| existing.identity) != Some(own) {
                // Discarded after the check above, and the new file
                // finished by its own attempt in the meantime?
                if !leads_to(directory, files, own).await {
                    return Err(self.replaced());
                }
                return Err(StorageError::Occupied {
                    storage: self.storage.clone(),
                    path: self.path.clone(),
                });
            }
        }
        // The hold first, the own partial file last (see the module docs).
        remove_if_same(directory, &files.hold, own)
            .await
            .map_err(|source| self.io_error("give up the name of", source))?;
        remove_if_same(directory, &files.own, own)
            .await
            .map_err(|source| self.io_error("remove the partial file of", source))?;
        // The new names durable, and every directory's up to the base
        // path, before the file is reported finished (see `sync_names`).
        sync_names(directory)
            .await
            .map_err(|unsynced| unsynced.into_error(&self.storage, &self.path))?;
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;

    fn storage(dir: &tempfile::TempDir) -> LocalStorage {
        LocalStorage::new("local1", &dir.path().join("base")).unwrap()
    }

    fn name(text: &str) -> FileName {
        FileName::parse(text).unwrap()
    }

    fn storage_dir(text: &str) -> StorageDir {
        StorageDir::parse(text).unwrap()
    }

    fn task() -> TaskId {
        TaskId::generate()
    }

    /// Every name under the base path, hidden ones too, relative and sorted.
    fn on_disk(storage: &LocalStorage) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![storage.base_path().to_path_buf()];
        while let Some(directory) = pending.pop() {
            for listed in std::fs::read_dir(&directory).unwrap().flatten() {
                let path = listed.path();
                if path.is_dir() && !path.is_symlink() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(storage.base_path()).unwrap();
                    found.push(relative.display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    fn identity(path: &Path) -> Identity {
        Identity::of(&std::fs::symlink_metadata(path).unwrap())
    }

    /// Saves `bytes` as `owner`'s file `file` under `dir`, from reservation to finish.
    async fn save(
        storage: &LocalStorage,
        owner: &TaskId,
        dir_text: &str,
        file: &str,
        bytes: &[u8],
    ) -> StoragePath {
        let path = storage
            .reserve(owner, &storage_dir(dir_text), &name(file), &[])
            .await
            .unwrap();
        let mut partial = storage.open(owner, &path).await.unwrap();
        partial.write(Bytes::copy_from_slice(bytes)).await.unwrap();
        partial.finish().await.unwrap();
        path
    }

    #[tokio::test]
    async fn a_file_is_written_through_the_tasks_own_partial_file_which_holds_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/a/b"), &name("file.bin"), &[])
            .await
            .unwrap();
        assert_eq!(path.to_string(), "/a/b/file.bin");
        let own = storage.base_path().join(format!("a/b/.file.bin.{owner}.part"));
        let hold = storage.base_path().join("a/b/file.bin.part");
        assert_eq!(
            identity(&own),
            identity(&hold),
            "the hold is a link to the own partial file"
        );

        let mut partial = storage.open(&owner, &path).await.unwrap();
        assert_eq!(partial.len(), 0);
        partial.write(Bytes::from_static(b"hello ")).await.unwrap();
        partial.write(Bytes::from_static(b"world")).await.unwrap();
        assert_eq!(storage.finished(&owner, &path).await.unwrap(), None);
        assert_eq!(partial.finish().await.unwrap(), 11);

        assert_eq!(on_disk(&storage), vec!["a/b/file.bin"]);
        assert_eq!(
            std::fs::read(storage.base_path().join("a/b/file.bin")).unwrap(),
            b"hello world"
        );
        assert_eq!(storage.finished(&owner, &path).await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn partial_owners_finds_each_tasks_partial_files_once_per_directory_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let (deep, root, finished) = (task(), task(), task());
        for file in ["one.bin", "two.bin"] {
            storage
                .reserve(&deep, &storage_dir("/a/b"), &name(file), &[])
                .await
                .unwrap();
        }
        storage
            .reserve(&root, &storage_dir("/"), &name("r.bin"), &[])
            .await
            .unwrap();
        save(&storage, &finished, "/a", "done.bin", b"x").await;
        // Names that only look like partial files, and a symlink out of the base.
        std::fs::write(dir.path().join("plain.part"), b"").unwrap();
        std::fs::write(dir.path().join(".x.not-a-task-id.part"), b"").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join(format!(".o.bin.{}.part", task())), b"").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();

        let mut owners: Vec<(String, String)> = storage
            .partial_owners()
            .await
            .unwrap()
            .into_iter()
            .map(|(owner, dir)| (owner.to_string(), dir.to_string()))
            .collect();
        owners.sort();

        let mut expected = vec![
            (deep.to_string(), "/a/b".to_owned()),
            (root.to_string(), "/".to_owned()),
        ];
        expected.sort();
        assert_eq!(owners, expected);
    }

    #[tokio::test]
    async fn partial_owners_passes_over_directories_it_cannot_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        storage
            .reserve(&owner, &storage_dir("/a"), &name("f.bin"), &[])
            .await
            .unwrap();
        // A root-only `lost+found`: unreadable, unless the tests run as root.
        let locked = storage.base_path().join("lost+found");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // One nobody can read, root neither: its path is longer than a
        // path may be (PATH_MAX, 4096 bytes), so it cannot be opened by
        // it. Built in two halves, each within the limit, one moved into
        // the other.
        let chain = |first: char| -> Vec<String> {
            (0..12)
                .map(|index| format!("{first}{index:02}{}", "x".repeat(197)))
                .collect()
        };
        let upper = storage
            .base_path()
            .join("deep")
            .join(chain('u').iter().collect::<PathBuf>());
        std::fs::create_dir_all(&upper).unwrap();
        let lower = chain('l');
        std::fs::create_dir_all(dir.path().join(lower.iter().collect::<PathBuf>())).unwrap();
        std::fs::rename(dir.path().join(&lower[0]), upper.join(&lower[0])).unwrap();
        let too_deep = upper.join(lower.iter().collect::<PathBuf>());
        assert!(too_deep.as_os_str().len() > 4096);
        assert!(std::fs::read_dir(&too_deep).is_err(), "{too_deep:?} can be read");

        let owners = storage.partial_owners().await;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();

        let owners: Vec<(String, String)> = owners
            .unwrap()
            .into_iter()
            .map(|(owner, dir)| (owner.to_string(), dir.to_string()))
            .collect();
        assert_eq!(owners, vec![(owner.to_string(), "/a".to_owned())]);
    }

    #[tokio::test]
    async fn a_name_taken_by_a_file_or_by_another_tasks_download_gets_a_number_before_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let first = save(&storage, &task(), "/", "file.tar.gz", b"1").await;
        let second = save(&storage, &task(), "/", "file.tar.gz", b"2").await;
        // A name held by a download in progress is taken too.
        let third = storage
            .reserve(&task(), &storage_dir("/"), &name("file.tar.gz"), &[])
            .await
            .unwrap();
        let fourth = storage
            .reserve(&task(), &storage_dir("/"), &name("file.tar.gz"), &[])
            .await
            .unwrap();

        assert_eq!(first.to_string(), "/file.tar.gz");
        assert_eq!(second.to_string(), "/file.tar_1.gz");
        assert_eq!(third.to_string(), "/file.tar_2.gz");
        assert_eq!(fourth.to_string(), "/file.tar_3.gz");
        assert_eq!(
            std::fs::read(storage.base_path().join("file.tar.gz")).unwrap(),
            b"1"
        );
        assert_eq!(
            std::fs::read(storage.base_path().join("file.tar_1.gz")).unwrap(),
            b"2"
        );
    }

    #[tokio::test]
    async fn an_unrecorded_reservation_is_found_again_by_the_next_attempt_of_its_task_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // The first attempt reserves and dies before recording the path.
        let reserved = storage
            .reserve(&owner, &storage_dir("/d"), &name("f.bin"), &[])
            .await
            .unwrap();

        let other = storage
            .reserve(&task(), &storage_dir("/d"), &name("f.bin"), &[])
            .await
            .unwrap();
        let again = storage
            .reserve(&owner, &storage_dir("/d"), &name("f.bin"), &[])
            .await
            .unwrap();

        assert_eq!(reserved.to_string(), "/d/f.bin");
        assert_eq!(other.to_string(), "/d/f_1.bin", "another task sees the name held");
        assert_eq!(again, reserved, "the same task takes its own reservation back");
    }

    #[tokio::test]
    async fn a_reservation_skips_the_paths_it_is_told_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // Two files of one album with the same name: the first is recorded
        // at `a.bin`, the second reserved `a_1.bin` and was not recorded.
        let first = storage
            .reserve(&owner, &storage_dir("/"), &name("a.bin"), &[])
            .await
            .unwrap();
        let second = storage
            .reserve(
                &owner,
                &storage_dir("/"),
                &name("a.bin"),
                std::slice::from_ref(&first),
            )
            .await
            .unwrap();

        let again = storage
            .reserve(
                &owner,
                &storage_dir("/"),
                &name("a.bin"),
                std::slice::from_ref(&first),
            )
            .await
            .unwrap();

        assert_eq!(second.to_string(), "/a_1.bin");
        assert_eq!(again, second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tasks_reserving_one_name_at_once_each_get_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(storage(&dir));
        let reservations: Vec<_> = (0..24)
            .map(|_| {
                let storage = storage.clone();
                tokio::spawn(async move {
                    let owner = task();
                    let path = storage
                        .reserve(&owner, &storage_dir("/same"), &name("same.bin"), &[])
                        .await
                        .unwrap();
                    (owner, path)
                })
            })
            .collect();
        let mut held = Vec::new();
        for reservation in reservations {
            held.push(reservation.await.unwrap());
        }

        let names: BTreeSet<String> = held.iter().map(|(_, path)| path.to_string()).collect();
        assert_eq!(names.len(), held.len(), "two tasks got one name: {held:?}");
        for (owner, path) in &held {
            let directory = storage.base_path().join("same");
            let own = directory.join(LocalStorage::own_partial_name(&path.name, owner));
            let hold = directory.join(format!("{}.part", path.name));
            assert_eq!(identity(&own), identity(&hold), "{path} is held by {owner}");
        }
    }

    #[tokio::test]
    async fn a_name_finished_by_another_task_while_a_reservation_was_cut_short_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // An attempt created its own partial file and died before holding
        // the name; another task then saved a file under it.
        std::fs::write(
            storage
                .base_path()
                .join(LocalStorage::own_partial_name(&name("f.bin"), &owner)),
            b"",
        )
        .unwrap();
        let others = save(&storage, &task(), "/", "f.bin", b"theirs").await;

        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("f.bin"), &[])
            .await
            .unwrap();

        assert_eq!(others.to_string(), "/f.bin");
        assert_eq!(path.to_string(), "/f_1.bin");
        assert_eq!(
            std::fs::read(storage.base_path().join("f.bin")).unwrap(),
            b"theirs"
        );
        assert_eq!(
            on_disk(&storage),
            vec![
                format!(".f_1.bin.{owner}.part"),
                "f.bin".to_owned(),
                "f_1.bin.part".to_owned()
            ]
        );
    }

    #[tokio::test]
    async fn reopening_a_partial_file_resumes_from_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("big.bin"), &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        partial.write(Bytes::from(vec![1u8; 1000])).await.unwrap();
        partial.flush().await.unwrap();
        // The worker dies here: what was flushed to the partial file stays.
        drop(partial);

        let mut resumed = storage.open(&owner, &path).await.unwrap();
        assert_eq!(resumed.len(), 1000);
        resumed.write(Bytes::from(vec![2u8; 500])).await.unwrap();
        assert_eq!(resumed.finish().await.unwrap(), 1500);
        let bytes = std::fs::read(storage.base_path().join("big.bin")).unwrap();
        assert_eq!(bytes.len(), 1500);
        assert!(bytes[..1000].iter().all(|&byte| byte == 1));
        assert!(bytes[1000..].iter().all(|&byte| byte == 2));
        assert_eq!(on_disk(&storage), vec!["big.bin"]);
    }

    /// Task `owner`'s `f.bin`: an attempt (`old`) wrote 1000 bytes of `a` to
    /// its partial file, then a second attempt (`new`) opened the same one,
    /// as a takeover does while the first is frozen.
    struct TakenOver {
        owner: TaskId,
        path: StoragePath,
        old: Box<dyn PartialFile>,
        new: Box<dyn PartialFile>,
    }

    async fn taken_over(storage: &LocalStorage) -> TakenOver {
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("f.bin"), &[])
            .await
            .unwrap();
        let mut old = storage.open(&owner, &path).await.unwrap();
        old.write(Bytes::from(vec![b'a'; 1000])).await.unwrap();
        old.flush().await.unwrap();
        let new = storage.open(&owner, &path).await.unwrap();
        TakenOver {
            owner,
            path,
            old,
            new,
        }
    }

    #[tokio::test]
    async fn a_taken_over_attempt_that_writes_late_writes_at_its_own_offsets_not_after_the_new_holders() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        // The task is taken over while the old attempt is frozen ...
        let TakenOver { mut old, mut new, .. } = taken_over(&storage).await;
        assert_eq!(new.len(), 1000);
        // ... which then wakes up and writes what it had queued.
        old.write(Bytes::from(vec![b'b'; 500])).await.unwrap();
        old.flush().await.unwrap();
        drop(old);
        new.write(Bytes::from(vec![b'c'; 500])).await.unwrap();

        assert_eq!(new.finish().await.unwrap(), 1500);
        let bytes = std::fs::read(storage.base_path().join("f.bin")).unwrap();
        assert_eq!(bytes.len(), 1500, "the old attempt's bytes were appended");
        assert!(bytes[..1000].iter().all(|&byte| byte == b'a'));
        assert!(bytes[1000..].iter().all(|&byte| byte == b'c'));
        assert_eq!(on_disk(&storage), vec!["f.bin"]);
    }

    #[tokio::test]
    async fn a_partial_file_that_ends_past_what_its_writer_wrote_is_discarded_not_finished() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let TakenOver {
            owner,
            path,
            mut old,
            mut new,
        } = taken_over(&storage).await;
        // The old attempt, taken over while frozen, gets further than the
        // new one ends.
        old.write(Bytes::from(vec![b'a'; 800])).await.unwrap();
        old.flush().await.unwrap();
        new.write(Bytes::from(vec![b'a'; 500])).await.unwrap();

        let error = new.finish().await.unwrap_err();

        assert!(!error.is_permanent(), "{error}");
        assert!(
            error.to_string().contains("holds 1800 bytes, not the 1500"),
            "{error}"
        );
        assert!(!storage.base_path().join("f.bin").exists(), "not finished");
        // A new, empty partial file holds the name; the old one's late
        // writes go to a file no name leads to any more.
        old.write(Bytes::from(vec![b'a'; 100])).await.unwrap();
        old.flush().await.unwrap();
        drop(old);
        let own = format!(".f.bin.{owner}.part");
        assert_eq!(on_disk(&storage), vec![own.clone(), "f.bin.part".to_owned()]);
        let base = storage.base_path();
        assert_eq!(identity(&base.join(&own)), identity(&base.join("f.bin.part")));
        let mut again = storage.open(&owner, &path).await.unwrap();
        assert_eq!(again.len(), 0, "the next attempt starts over");
        again.write(Bytes::from(vec![b'a'; 1500])).await.unwrap();
        assert_eq!(again.finish().await.unwrap(), 1500);
        assert_eq!(std::fs::read(base.join("f.bin")).unwrap().len(), 1500);
    }

    #[tokio::test]
    async fn a_partial_file_another_attempt_discarded_is_not_finished_through_the_name_of_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let TakenOver {
            owner,
            path,
            old,
            mut new,
        } = taken_over(&storage).await;
        new.write(Bytes::from(vec![b'a'; 500])).await.unwrap();
        new.flush().await.unwrap();
        // The old attempt finishes first: the file ends past the 1000 bytes
        // it wrote, so it discards it, and an empty one takes its names.
        let interleaved = old.finish().await.unwrap_err();
        assert!(
            matches!(interleaved, StorageError::Interleaved { .. }),
            "{interleaved}"
        );

        let error = new.finish().await.unwrap_err();

        assert!(matches!(error, StorageError::Replaced { .. }), "{error}");
        assert!(!error.is_permanent());
        assert!(
            !storage.base_path().join("f.bin").exists(),
            "the empty file was finished for the 1500 bytes written"
        );
        let own = format!(".f.bin.{owner}.part");
        assert_eq!(on_disk(&storage), vec![own, "f.bin.part".to_owned()]);
        assert_eq!(storage.open(&owner, &path).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_late_write_of_a_taken_over_attempt_never_reaches_the_download_another_attempt_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let TakenOver { mut old, mut new, .. } = taken_over(&storage).await;
        // The file was replaced on the server: the new attempt starts over,
        // and downloads the new file whole.
        new.truncate().await.unwrap();
        new.write(Bytes::from(vec![b'n'; 1500])).await.unwrap();
        new.flush().await.unwrap();
        // The old attempt wakes up and writes what it had queued of the old
        // file, where it meant to: inside the new one's length.
        old.write(Bytes::from(vec![b'o'; 500])).await.unwrap();
        old.flush().await.unwrap();

        assert_eq!(new.finish().await.unwrap(), 1500);
        let bytes = std::fs::read(storage.base_path().join("f.bin")).unwrap();
        assert_eq!(bytes.len(), 1500);
        assert!(
            bytes.iter().all(|&byte| byte == b'n'),
            "the old attempt's bytes are in the finished file"
        );
        let error = old.finish().await.unwrap_err();
        assert!(matches!(error, StorageError::Replaced { .. }), "{error}");
        assert_eq!(on_disk(&storage), vec!["f.bin"]);
        assert_eq!(std::fs::read(storage.base_path().join("f.bin")).unwrap(), bytes);
    }

    #[tokio::test]
    async fn an_attempt_whose_partial_file_another_attempt_started_over_does_not_start_over_in_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let TakenOver { mut old, mut new, .. } = taken_over(&storage).await;
        new.truncate().await.unwrap();
        new.write(Bytes::from_static(b"new file")).await.unwrap();
        new.flush().await.unwrap();

        // The old attempt's source cannot resume either.
        let error = old.truncate().await.unwrap_err();

        assert!(matches!(error, StorageError::Replaced { .. }), "{error}");
        assert!(!error.is_permanent());
        assert_eq!(new.finish().await.unwrap(), 8);
        assert_eq!(
            std::fs::read(storage.base_path().join("f.bin")).unwrap(),
            b"new file"
        );
        assert_eq!(on_disk(&storage), vec!["f.bin"]);
    }

    #[tokio::test]
    async fn a_partial_file_discarded_while_a_name_elsewhere_still_leads_to_it_is_not_finished() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let TakenOver {
            owner, old, mut new, ..
        } = taken_over(&storage).await;
        new.write(Bytes::from(vec![b'a'; 500])).await.unwrap();
        new.flush().await.unwrap();
        // A link made by hand (or by a backup) outside the task's names.
        let base = storage.base_path();
        let own = base.join(format!(".f.bin.{owner}.part"));
        std::fs::hard_link(&own, base.join("backup")).unwrap();
        let interleaved = old.finish().await.unwrap_err();
        assert!(
            matches!(interleaved, StorageError::Interleaved { .. }),
            "{interleaved}"
        );

        // The file still has a name, but none of the task's: it was discarded.
        let error = new.finish().await.unwrap_err();

        assert!(matches!(error, StorageError::Replaced { .. }), "{error}");
        assert!(!base.join("f.bin").exists(), "a discarded file was finished");
        assert_eq!(std::fs::metadata(base.join("backup")).unwrap().len(), 1500);
    }

    #[tokio::test]
    async fn a_partial_file_only_its_hold_leads_to_is_still_the_tasks_and_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("f.bin"), &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        partial.write(Bytes::from_static(b"held")).await.unwrap();
        // No discard leaves this (each gives up the hold first), but the
        // hold alone is what a later attempt would open and resume from.
        std::fs::remove_file(
            storage
                .base_path()
                .join(LocalStorage::own_partial_name(&path.name, &owner)),
        )
        .unwrap();

        assert_eq!(partial.finish().await.unwrap(), 4);
        assert_eq!(std::fs::read(storage.base_path().join("f.bin")).unwrap(), b"held");
        assert_eq!(on_disk(&storage), vec!["f.bin"]);
    }

    #[test]
    fn climbing_out_of_a_directory_moved_elsewhere_since_it_was_walked_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        let open = |path: &str| {
            rustix::fs::openat(rustix::fs::CWD, dir.path().join(path), WALK, Mode::empty()).unwrap()
        };
        let parent = identity_of(open("a").as_fd()).unwrap();
        let child = open("a/b");
        // Where it was walked, `..` is still the directory it was reached from.
        let climbed = climb(child.as_fd(), parent, "moved").unwrap();
        assert_eq!(identity_of(climbed.as_fd()).unwrap(), parent);

        std::fs::rename(dir.path().join("a/b"), dir.path().join("elsewhere/b")).unwrap();
        let refused = climb(child.as_fd(), parent, "moved").unwrap_err();
        assert_eq!(refused.to_string(), "moved");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_is_linked_by_its_descriptor_whatever_its_name_leads_to_and_not_once_it_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let directory = std::fs::File::open(dir.path()).unwrap();
        let mut file = std::fs::File::create(at("first")).unwrap();
        std::io::Write::write_all(&mut file, b"mine").unwrap();
        // Its name leads to another file now.
        std::fs::rename(at("first"), at("moved")).unwrap();
        std::fs::write(at("first"), b"another").unwrap();

        assert_eq!(
            link_descriptor(&file, directory.as_fd(), "linked").unwrap(),
            DescriptorLink::Linked
        );
        assert_eq!(std::fs::read(at("linked")).unwrap(), b"mine");
        assert_eq!(
            link_descriptor(&file, directory.as_fd(), "first").unwrap(),
            DescriptorLink::Taken
        );
        assert_eq!(std::fs::read(at("first")).unwrap(), b"another");
        // Into a directory removed since it was opened.
        std::fs::create_dir(at("removed")).unwrap();
        let removed = std::fs::File::open(at("removed")).unwrap();
        std::fs::remove_dir(at("removed")).unwrap();
        let missing = link_descriptor(&file, removed.as_fd(), "linked").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        for name in ["moved", "linked"] {
            std::fs::remove_file(at(name)).unwrap();
        }
        assert_eq!(
            link_descriptor(&file, directory.as_fd(), "again").unwrap(),
            DescriptorLink::Unnamed
        );
        assert!(!at("again").exists());
    }

    #[tokio::test]
    async fn a_truncated_partial_file_starts_over_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("again.bin"), &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        partial.write(Bytes::from(vec![7u8; 3 << 20])).await.unwrap();

        partial.truncate().await.unwrap();
        assert_eq!(partial.len(), 0);
        partial.write(Bytes::from_static(b"fresh")).await.unwrap();

        assert_eq!(partial.finish().await.unwrap(), 5);
        assert_eq!(
            std::fs::read(storage.base_path().join("again.bin")).unwrap(),
            b"fresh"
        );
    }

    #[tokio::test]
    async fn a_large_file_is_saved_byte_for_byte_through_many_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("large.bin"), &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        // Chunks of odd sizes, more than the writing thread's queue holds,
        // with a flush (as every progress write does) along the way.
        let mut expected = Vec::new();
        for index in 0..200u32 {
            let chunk: Vec<u8> = (0..(index * 997 % 150_000))
                .map(|byte| (byte ^ index) as u8)
                .collect();
            expected.extend_from_slice(&chunk);
            partial.write(Bytes::from(chunk)).await.unwrap();
            if index % 50 == 0 {
                partial.flush().await.unwrap();
            }
        }

        assert_eq!(partial.finish().await.unwrap(), expected.len() as u64);
        assert!(std::fs::read(storage.base_path().join("large.bin")).unwrap() == expected);
        assert_eq!(on_disk(&storage), vec!["large.bin"]);
    }

    #[tokio::test]
    async fn a_file_finished_before_a_crash_is_found_finished_whatever_step_the_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        for removed in [&[][..], &["hold"][..], &["hold", "own"][..]] {
            let owner = task();
            let file = format!("f-{}.bin", removed.len());
            let path = storage
                .reserve(&owner, &storage_dir("/"), &name(&file), &[])
                .await
                .unwrap();
            let mut partial = storage.open(&owner, &path).await.unwrap();
            partial.write(Bytes::from_static(b"12345")).await.unwrap();
            partial.flush().await.unwrap();
            drop(partial);
            // Finishing, done by hand up to the crash: linked, then `removed` gone.
            let own = storage
                .base_path()
                .join(LocalStorage::own_partial_name(&path.name, &owner));
            let hold = storage.base_path().join(format!("{file}.part"));
            std::fs::hard_link(&own, storage.base_path().join(&file)).unwrap();
            for gone in removed {
                std::fs::remove_file(if *gone == "hold" { &hold } else { &own }).unwrap();
            }

            assert_eq!(
                storage.finished(&owner, &path).await.unwrap(),
                Some(5),
                "{removed:?}"
            );
            assert!(!own.exists() && !hold.exists(), "{removed:?}: tidied up");
            let other = storage
                .reserve(&task(), &storage_dir("/"), &name(&file), &[])
                .await
                .unwrap();
            assert_ne!(other, path, "{removed:?}: the finished file keeps its name");
        }
    }

    #[tokio::test]
    async fn a_file_by_the_same_name_that_is_not_the_tasks_is_not_finished_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name("f.bin"), &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        partial.write(Bytes::from_static(b"ours")).await.unwrap();
        // Somebody puts a file in its place by hand while it downloads.
        std::fs::write(storage.base_path().join("f.bin"), b"by hand").unwrap();

        assert_eq!(storage.finished(&owner, &path).await.unwrap(), None);
        let finished = partial.finish().await;

        assert!(
            matches!(finished, Err(StorageError::Occupied { .. })),
            "{finished:?}"
        );
        assert!(finished.unwrap_err().is_permanent());
        assert_eq!(
            std::fs::read(storage.base_path().join("f.bin")).unwrap(),
            b"by hand"
        );
    }

    #[tokio::test]
    async fn discard_removes_every_partial_file_of_the_task_with_its_hold_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let other = task();
        let saved = save(&storage, &owner, "/d", "done.txt", b"x").await;
        // One recorded reservation with bytes, one reservation never used.
        let pending = storage
            .reserve(&owner, &storage_dir("/d"), &name("p.txt"), &[])
            .await
            .unwrap();
        storage
            .open(&owner, &pending)
            .await
            .unwrap()
            .write(Bytes::from_static(b"abc"))
            .await
            .unwrap();
        storage
            .reserve(&owner, &storage_dir("/d"), &name("unused.txt"), &[])
            .await
            .unwrap();
        let others = storage
            .reserve(&other, &storage_dir("/d"), &name("p.txt"), &[])
            .await
            .unwrap();

        storage.discard(&owner, &storage_dir("/d")).await.unwrap();
        // It is idempotent, and a directory that does not exist holds nothing.
        storage.discard(&owner, &storage_dir("/d")).await.unwrap();
        storage.discard(&owner, &storage_dir("/nowhere")).await.unwrap();

        assert_eq!(others.to_string(), "/d/p_1.txt");
        assert_eq!(
            on_disk(&storage),
            vec![
                format!("d/.p_1.txt.{other}.part"),
                "d/done.txt".to_owned(),
                "d/p_1.txt.part".to_owned()
            ]
        );
        assert!(!storage.base_path().join("nowhere").exists());
        storage.remove(&saved).await.unwrap();
        storage.remove(&saved).await.unwrap();
        assert!(!storage.base_path().join("d/done.txt").exists());
    }

    #[tokio::test]
    async fn a_finished_file_whose_name_a_server_made_look_like_a_partial_file_is_kept_when_its_task_ends() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // The name a Content-Disposition gave, made safe as the pipeline does.
        let name = FileName::sanitize(&format!(".x.{owner}.part"));
        let path = storage
            .reserve(&owner, &storage_dir("/"), &name, &[])
            .await
            .unwrap();
        let mut partial = storage.open(&owner, &path).await.unwrap();
        partial.write(Bytes::from_static(b"kept")).await.unwrap();
        partial.finish().await.unwrap();

        storage.discard(&owner, &storage_dir("/")).await.unwrap();

        assert_eq!(on_disk(&storage), vec![name.to_string()]);
        assert_eq!(
            std::fs::read(storage.base_path().join(name.as_str())).unwrap(),
            b"kept"
        );
        // Nor does the sweep take it for a leftover of the task.
        assert!(storage.partial_owners().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_partial_file_from_before_own_partial_files_is_adopted_by_the_task_that_recorded_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // The layout of earlier workers: `<name>.part` alone, its path recorded.
        std::fs::write(storage.base_path().join("old.bin.part"), b"12345").unwrap();
        let path = StoragePath::parse("/old.bin").unwrap();

        let mut partial = storage.open(&owner, &path).await.unwrap();
        assert_eq!(partial.len(), 5);
        partial.write(Bytes::from_static(b"678")).await.unwrap();
        partial.finish().await.unwrap();

        assert_eq!(
            std::fs::read(storage.base_path().join("old.bin")).unwrap(),
            b"12345678"
        );
        assert_eq!(on_disk(&storage), vec!["old.bin"]);
    }

    #[tokio::test]
    async fn paths_that_would_leave_the_base_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // Hostile names never become a FileName or a StorageDir at all ...
        for hostile in ["../../etc/passwd", "a/../../b", "nul\0", "", ".", ".."] {
            assert!(FileName::parse(hostile).is_err(), "{hostile:?}");
        }
        for hostile in ["/../../etc/passwd", "/a/../../b", "/x/nul\0", "/.."] {
            assert!(StoragePath::parse(hostile).is_err(), "{hostile:?}");
        }
        for hostile in ["/../outside", "/a/../../outside"] {
            assert!(StorageDir::parse(hostile).is_err(), "{hostile:?}");
        }
        // ... and a symlink planted inside the base path is caught after joining.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, storage.base_path().join("escape")).unwrap();
        let escaped = storage
            .reserve(&owner, &storage_dir("/escape"), &name("f"), &[])
            .await;
        assert!(
            matches!(escaped, Err(StorageError::Escapes { .. })),
            "{escaped:?}"
        );
        assert!(escaped.unwrap_err().is_permanent());
        // So is a symlink in place of the task's own partial file ...
        std::os::unix::fs::symlink(
            outside.join("target"),
            storage
                .base_path()
                .join(LocalStorage::own_partial_name(&name("g"), &owner)),
        )
        .unwrap();
        let planted = storage.open(&owner, &StoragePath::parse("/g").unwrap()).await;
        assert!(
            matches!(planted, Err(StorageError::Escapes { .. })),
            "{:?}",
            planted.err()
        );
        // ... and one in place of a hold is somebody else's, never written through.
        std::os::unix::fs::symlink(outside.join("target"), storage.base_path().join("h.part")).unwrap();
        let held = storage.open(&owner, &StoragePath::parse("/h").unwrap()).await;
        assert!(
            matches!(held, Err(StorageError::Occupied { .. })),
            "{:?}",
            held.err()
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was written outside"
        );
    }

    #[tokio::test]
    async fn no_directory_is_created_outside_the_base_path_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, storage.base_path().join("escape")).unwrap();
        std::fs::create_dir(storage.base_path().join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, storage.base_path().join("a/escape")).unwrap();
        // A symlink that stays inside the base path is followed.
        std::fs::create_dir(storage.base_path().join("real")).unwrap();
        std::os::unix::fs::symlink(
            storage.base_path().join("real"),
            storage.base_path().join("inside"),
        )
        .unwrap();

        for dir_path in ["/escape/sub/deep", "/a/escape/sub", "/escape"] {
            let escaped = storage
                .reserve(&owner, &storage_dir(dir_path), &name("f"), &[])
                .await;
            assert!(
                matches!(escaped, Err(StorageError::Escapes { .. })),
                "{dir_path}: {escaped:?}"
            );
        }
        let inside = storage
            .reserve(&owner, &storage_dir("/inside/sub"), &name("f"), &[])
            .await
            .unwrap();
        // A file where a directory should be is no directory.
        std::fs::write(storage.base_path().join("file"), b"").unwrap();
        let under_a_file = storage
            .reserve(&owner, &storage_dir("/file/sub"), &name("f"), &[])
            .await;

        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was created outside"
        );
        assert_eq!(inside.to_string(), "/inside/sub/f");
        assert!(storage.base_path().join("real/sub/f.part").exists());
        assert!(
            matches!(under_a_file, Err(StorageError::NotADirectory { .. })),
            "{under_a_file:?}"
        );
    }

    #[tokio::test]
    async fn a_symlink_in_a_dir_path_that_leads_out_of_the_base_path_is_refused_saying_which_where_to_and_what_to_do(
    ) {
        // Arrange: symlinks planted in the base path before anything runs,
        // two that lead out of it (one absolute, one relative that climbs
        // above it) and one that leads back inside.
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let base = storage.base_path().to_path_buf();
        let owner = task();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("escape")).unwrap();
        std::fs::create_dir_all(base.join("a")).unwrap();
        std::os::unix::fs::symlink("../..", base.join("a/up")).unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::os::unix::fs::symlink("../real", base.join("a/back")).unwrap();

        // Act
        let escaped = storage
            .reserve(&owner, &storage_dir("/escape/sub"), &name("f"), &[])
            .await;
        let climbed = storage
            .reserve(&owner, &storage_dir("/a/up/base/x"), &name("f"), &[])
            .await;
        let inside = storage
            .reserve(&owner, &storage_dir("/a/back/sub"), &name("f"), &[])
            .await;

        // Assert: refused, permanently, each saying which symlink leads
        // where, and what to do about it; nothing made where they lead.
        let refusal = |dir_path: &str, symlink: &str, target: &str| {
            format!(
                "storage local1: {dir_path} (through the symlink {symlink}, to {target}: replace it \
                 with a directory, or point it at one inside the base path) resolves outside the \
                 storage's base path"
            )
        };
        for (refused, expected) in [
            (
                escaped,
                refusal("/escape/sub", "/escape", &outside.display().to_string()),
            ),
            (climbed, refusal("/a/up/base/x", "/a/up", "../..")),
        ] {
            let error = refused.unwrap_err();
            assert!(matches!(error, StorageError::Escapes { .. }), "{error:?}");
            assert!(error.is_permanent());
            assert_eq!(error.to_string(), expected);
        }
        assert_eq!(
            std::fs::read_dir(outside.join("sub")).unwrap().count(),
            0,
            "something was made outside"
        );
        assert!(!base.join("x").exists() && !dir.path().join("x").exists());
        assert_eq!(inside.unwrap().to_string(), "/a/back/sub/f");
        assert!(base.join("real/sub/f.part").exists());
    }

    /// How many of this process's descriptors are open on something under
    /// `dir` (tests run in parallel threads: only this test's count).
    fn descriptors_under(dir: &Path) -> usize {
        let dir = std::fs::canonicalize(dir).unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|listed| std::fs::read_link(listed.path()).is_ok_and(|target| target.starts_with(&dir)))
            .count()
    }

    #[tokio::test]
    async fn an_open_download_holds_as_many_descriptors_whatever_the_depth_of_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let owner = task();
        // 500 levels: a `dir_path` of 1,000 bytes, which the API accepts.
        let deep = "/a".repeat(500);
        let mut held = Vec::new();
        for dir_path in ["/s", deep.as_str()] {
            let path = storage
                .reserve(&owner, &storage_dir(dir_path), &name("f.bin"), &[])
                .await
                .unwrap();
            let before = descriptors_under(dir.path());
            let mut partial = storage.open(&owner, &path).await.unwrap();
            partial.write(Bytes::from_static(b"x")).await.unwrap();
            held.push(descriptors_under(dir.path()) - before);
            // And it finishes, syncing each of the 501 directories.
            assert_eq!(partial.finish().await.unwrap(), 1, "{dir_path}");
        }
        // The directory's own, the partial file's to link it by, and its writer's.
        assert_eq!(held, vec![3, 3], "held in /s, and 500 levels down");
    }

    #[tokio::test]
    async fn a_symlink_that_makes_a_walk_too_long_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let base = storage.base_path().to_path_buf();
        // 2,000 components, 4,000 bytes: within what a symlink may hold.
        let long = vec!["x"; 2000].join("/");
        std::os::unix::fs::symlink(&long, base.join("s")).unwrap();
        // One that stays within the bound is followed, and what the
        // `dir_path` names below it made.
        std::fs::create_dir_all(base.join(vec!["y"; 400].join("/"))).unwrap();
        std::os::unix::fs::symlink(vec!["y"; 400].join("/"), base.join("t")).unwrap();

        let refused = storage
            .reserve(&task(), &storage_dir("/s/sub"), &name("f"), &[])
            .await
            .unwrap_err();
        let followed = storage
            .reserve(&task(), &storage_dir("/t/sub"), &name("f"), &[])
            .await;

        assert!(matches!(refused, StorageError::Io { .. }), "{refused:?}");
        let message = refused.to_string();
        assert!(
            message
                .starts_with("storage local1: cannot resolve the directory /s/sub: the symlink /s (to x/x/")
                && message.ends_with(
                    "makes the walk to the directory longer than 1024 steps: point it at a directory \
                     fewer levels down"
                ),
            "{message}"
        );
        assert!(!base.join("x").exists(), "made on the way");
        assert_eq!(followed.unwrap().to_string(), "/t/sub/f");
        assert!(base.join(vec!["y"; 400].join("/")).join("sub/f.part").exists());
    }

    #[tokio::test]
    async fn symlinks_that_lead_to_each_other_are_refused_after_40_not_followed_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let base = storage.base_path().to_path_buf();
        std::os::unix::fs::symlink("b", base.join("a")).unwrap();
        std::os::unix::fs::symlink("a", base.join("b")).unwrap();
        std::os::unix::fs::symlink("self", base.join("self")).unwrap();
        // Each turn one level deeper: only the count of symlinks stops it.
        std::os::unix::fs::symlink(base.join("deeper/x"), base.join("deeper")).unwrap();
        // 40 in a row are followed.
        for index in 0..39 {
            std::os::unix::fs::symlink(format!("c{}", index + 1), base.join(format!("c{index}"))).unwrap();
        }
        std::fs::create_dir(base.join("c39")).unwrap();

        for (dir_path, symlink) in [("/a/sub", "/a"), ("/self", "/self"), ("/deeper", "/deeper")] {
            let refused = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                storage.reserve(&task(), &storage_dir(dir_path), &name("f"), &[]),
            )
            .await
            .expect("the walk did not end")
            .unwrap_err();
            assert!(matches!(refused, StorageError::Io { .. }), "{refused:?}");
            let message = refused.to_string();
            assert!(
                message.starts_with(&format!(
                    "storage local1: cannot resolve the directory {dir_path}: the symlink {symlink} (to "
                )) && message.ends_with(
                    "is one more than the 40 a walk follows: do symlinks lead to each other? point \
                     it at a directory"
                ),
                "{message}"
            );
        }
        let forty = storage
            .reserve(&task(), &storage_dir("/c0"), &name("f"), &[])
            .await
            .unwrap();
        assert_eq!(forty.to_string(), "/c0/f");
        assert!(base.join("c39/f.part").exists());
    }

    #[tokio::test]
    async fn a_symlink_to_a_directory_that_does_not_exist_is_not_made_a_directory_but_retried() {
        // Arrange: an operator's symlink to a disk not mounted yet, and one
        // to a directory that exists, below which the `dir_path` goes on.
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let base = storage.base_path().to_path_buf();
        std::os::unix::fs::symlink("gone/deeper", base.join("link")).unwrap();
        std::fs::create_dir(base.join("disk")).unwrap();
        std::os::unix::fs::symlink("disk", base.join("mounted")).unwrap();
        let owner = task();

        // Act
        let dangling = storage
            .reserve(&owner, &storage_dir("/link"), &name("f"), &[])
            .await
            .unwrap_err();
        let looked_up = storage
            .finished(&owner, &StoragePath::parse("/link/f").unwrap())
            .await;
        let below = storage
            .reserve(&owner, &storage_dir("/mounted/new/dir"), &name("f"), &[])
            .await
            .unwrap();

        // Assert: nothing made where the symlink leads; an error that may
        // pass, saying which symlink, to what, and what to do.
        assert!(!base.join("gone").exists(), "the symlink's target was made");
        assert!(!dangling.is_permanent(), "{dangling}");
        assert_eq!(
            dangling.to_string(),
            "storage local1: cannot resolve the directory /link: the symlink /link (to gone/deeper) \
             leads where /gone does not exist (a disk not mounted yet?): create it, or point the \
             symlink at an existing directory"
        );
        assert_eq!(looked_up.unwrap(), None);
        // What the `dir_path` itself names is made, below a symlink too.
        assert_eq!(below.to_string(), "/mounted/new/dir/f");
        assert!(base.join("disk/new/dir/f.part").exists());
    }

    #[tokio::test]
    async fn an_absolute_symlink_written_with_the_configured_spelling_of_the_base_path_is_followed() {
        // Arrange: the base path configured through a symlink (`/media`
        // to `/mnt/...` on a NAS), and a symlink in it written that way.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real/base/Films")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("alias")).unwrap();
        let configured = dir.path().join("alias/base");
        let storage = LocalStorage::new("local1", &configured).unwrap();
        std::os::unix::fs::symlink(configured.join("Films"), configured.join("Movies")).unwrap();
        // Another spelling of a directory outside the base path is not.
        std::fs::create_dir_all(dir.path().join("real/other")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("alias/other"), configured.join("Other")).unwrap();

        // Act
        let followed = storage
            .reserve(&task(), &storage_dir("/Movies/2024"), &name("f.mkv"), &[])
            .await;
        let escaped = storage
            .reserve(&task(), &storage_dir("/Other"), &name("f.mkv"), &[])
            .await;

        // Assert
        assert_eq!(followed.unwrap().to_string(), "/Movies/2024/f.mkv");
        assert!(dir.path().join("real/base/Films/2024/f.mkv.part").exists());
        assert!(
            matches!(escaped, Err(StorageError::Escapes { .. })),
            "{escaped:?}"
        );
    }

    #[tokio::test]
    async fn a_base_path_that_cannot_be_created_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let error = LocalStorage::new("local1", &file.join("below")).unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("storage local1: cannot create the base path"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_file_where_the_dir_path_names_a_directory_fails_the_task_saying_which_and_what_to_change() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        save(&storage, &task(), "/", "small.txt", b"x").await;

        // Act
        let error = storage
            .reserve(&task(), &storage_dir("/small.txt/sub"), &name("f.bin"), &[])
            .await
            .unwrap_err();

        // Assert
        assert!(matches!(error, StorageError::NotADirectory { .. }), "{error:?}");
        assert!(error.is_permanent(), "{error}");
        assert_eq!(
            error.to_string(),
            "storage local1: cannot use the directory /small.txt/sub: /small.txt is a file, not a \
             directory: create the task with a dir_path that does not go through it, or move the file \
             out of the way"
        );
    }

    #[tokio::test]
    async fn a_file_a_symlinks_target_goes_through_is_named_too() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        std::fs::create_dir(storage.base_path().join("a")).unwrap();
        std::fs::write(storage.base_path().join("a/file"), b"x").unwrap();
        std::os::unix::fs::symlink("a/file/deeper", storage.base_path().join("link")).unwrap();

        let error = storage
            .reserve(&task(), &storage_dir("/link/sub"), &name("f.bin"), &[])
            .await
            .unwrap_err();

        assert!(error.is_permanent(), "{error}");
        assert!(
            error.to_string().contains(": /a/file is a file, not a directory"),
            "{error}"
        );
    }

    #[test]
    fn the_check_for_hard_links_leaves_nothing_in_the_base_path() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        assert_eq!(on_disk(&storage), Vec::<String>::new());
    }
}
