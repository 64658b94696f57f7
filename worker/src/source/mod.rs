//! The [`Source`] trait: where a task's bytes come from, and the only thing
//! the pipeline knows about a source.
//!
//! A source does two things: it resolves a task into the files it stands
//! for ([`RemoteFile`]: name, size, type), and it opens a stream of a file's
//! bytes from an offset, saying whether it could honour the offset (a
//! resumed download) or starts from the beginning. Errors say whether
//! retrying can help ([`SourceErrorKind`]) and carry a message a user can
//! act on.
//!
//! A source that can only find out what a file is by starting to send it
//! (the http source's GET) hands that download over instead of dropping it:
//! [`Source::resolve_and_open`] returns it with the files ([`Resolved`]),
//! and the attempt streams it rather than opening the file again, so a
//! single-use link is asked for once and a resource that differs per
//! request is saved as it was resolved. The attempt owns it: whatever ends
//! the attempt before its download (a cancel, a storage error) drops it,
//! and with it its connection.
//!
//! [`http`] serves direct links and [`telegram`] message links; [`Sources`]
//! holds the ones this worker has.

pub mod http;
pub mod ssrf;
pub mod telegram;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use savestream_shared::task::{SourceKind, Task};

/// A task's link as it may appear in logs and errors: an http(s) link
/// loses its user info and query string (signed links carry credentials
/// there); anything else is shown as it is.
pub fn shown_link(link: &str) -> String {
    match url::Url::parse(link.trim()) {
        Ok(url) if url.scheme() == "http" || url.scheme() == "https" => http::display_url(&url),
        _ => link.to_owned(),
    }
}

/// A file a task stands for, as the source describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteFile {
    /// The name the source gives the file, unsanitised; `None` when it has none.
    pub name: Option<String>,
    /// The size in bytes, when the source knows it.
    pub size: Option<u64>,
    pub mime: Option<String>,
    /// The source's own handle on the file, opaque to everyone else: how
    /// [`Source::open`] finds it again (the Telegram source's
    /// `<kind>:<chat>:<access hash>:<message>`). `None` for direct links,
    /// whose task link is the handle. Never recorded: a source that needs it
    /// resolves again on every attempt ([`Source::resolves_every_attempt`]).
    pub key: Option<String>,
    /// What identifies this version of the file on its server: a direct
    /// link's strong `ETag`, else its `Last-Modified` (see
    /// [`http::validator`]). Recorded with the resolved file; a resumed
    /// attempt gets the recorded one back and the http source sends it as
    /// `If-Range`, so a file replaced on the server (even by one of the same
    /// size) is sent whole rather than spliced onto the old one's bytes.
    /// `None` when the source has none: Telegram (the file reference is the
    /// file's identity), a server that sends neither header, a task
    /// resolved before validators were recorded (resumed as before).
    pub validator: Option<String>,
}

/// Whether a failure is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The network, a timeout, a server error: another attempt may succeed.
    Retryable,
    /// The link is wrong, the file is gone, the address is refused: no
    /// attempt will succeed.
    Permanent,
    /// The source asked to be left alone for a while (Telegram's
    /// FLOOD_WAIT: "wait X seconds and repeat the request"). That is its
    /// pacing, not a fault of the task or the link: the next attempt waits
    /// [`SourceError::retry_after`] and uses up none of the task's retries.
    RateLimited,
}

/// A failure of a source, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub message: String,
    /// How long the source asked to be left alone (Telegram's FLOOD_WAIT,
    /// an HTTP server's `Retry-After`): the retry waits at least this long.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    pub fn retryable(message: impl Into<String>) -> SourceError {
        SourceError {
            kind: SourceErrorKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> SourceError {
        SourceError {
            kind: SourceErrorKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A wait the source asked for, which the retry honours without
    /// counting it ([`SourceErrorKind::RateLimited`]).
    pub fn rate_limited(message: impl Into<String>, wait: Duration) -> SourceError {
        SourceError {
            kind: SourceErrorKind::RateLimited,
            message: message.into(),
            retry_after: Some(wait),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == SourceErrorKind::Permanent
    }

    /// The file behind `link` is no longer the size recorded for the task
    /// (`was`): it is another file now. Resuming would splice two files
    /// together and downloading it whole would end at the wrong size, so
    /// no attempt can succeed; the task is not the new file's. `now` is
    /// `None` when the source sent more than `was` bytes without saying how
    /// many it has.
    pub fn changed_size(link: &str, was: u64, now: Option<u64>) -> SourceError {
        let now = now.map_or_else(|| "larger".to_owned(), |now| now.to_string());
        SourceError::permanent(format!(
            "the file at {} changed on the server (was {was} bytes, now {now}): add the link again \
             to download the new file",
            shown_link(link)
        ))
    }
}

/// An open stream of a file's bytes.
pub struct Download {
    /// Where the stream starts: the offset asked for when the source could
    /// honour it, else 0 (the caller then starts its copy over).
    pub offset: u64,
    /// The whole file's size, when the source told it.
    pub total: Option<u64>,
    /// What identifies the version of the file these bytes come from, as
    /// [`RemoteFile::validator`] does (the http source's [`http::validator`]
    /// of this very response); `None` when the source has none (Telegram).
    /// A download that starts over at 0 may be of a file replaced since the
    /// validator was recorded: the pipeline then records this one, so that
    /// a later attempt resumes the file now being saved.
    pub validator: Option<String>,
    pub stream: BoxStream<'static, Result<Bytes, SourceError>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("offset", &self.offset)
            .field("total", &self.total)
            .field("validator", &self.validator)
            .finish_non_exhaustive()
    }
}

/// What [`Source::resolve_and_open`] found.
#[derive(Debug)]
pub struct Resolved {
    /// The files the task stands for, as [`Source::resolve`] returns them.
    pub files: Vec<RemoteFile>,
    /// The first file's download from its first byte, when resolving
    /// already opened it (the http source); `None` when it did not
    /// (Telegram). It is what [`Source::open`] of that file at offset 0
    /// would return. Dropping it closes its connection.
    pub opened: Option<Download>,
}

/// Where bytes come from.
#[async_trait]
pub trait Source: Send + Sync {
    /// The files `task` stands for (one for a direct link; an album may be several).
    async fn resolve(&self, task: &Task) -> Result<Vec<RemoteFile>, SourceError>;

    /// [`Source::resolve`], with the first file's download from byte 0 when
    /// resolving had to open it anyway ([`Resolved::opened`]). The default
    /// opens nothing.
    async fn resolve_and_open(&self, task: &Task) -> Result<Resolved, SourceError> {
        Ok(Resolved {
            files: self.resolve(task).await?,
            opened: None,
        })
    }

    /// Streams `file` of `task` from `offset` (0 for the whole file).
    async fn open(&self, task: &Task, file: &RemoteFile, offset: u64) -> Result<Download, SourceError>;

    /// Whether every attempt resolves the task again, resumed or not. A
    /// source whose files can only be opened through what `resolve` returns
    /// (Telegram: fresh file references, the members of an album) says yes;
    /// the pipeline then keeps names stable from what earlier attempts
    /// recorded. Direct links say no: a resumed attempt reuses the recorded
    /// file and path without asking the server again.
    fn resolves_every_attempt(&self) -> bool {
        false
    }
}

/// The sources of this worker, one per [`SourceKind`] it can serve.
#[derive(Clone)]
pub struct Sources {
    pub http: Arc<dyn Source>,
    /// `None` when `[telegram]` has no credentials: such tasks fail at once.
    pub telegram: Option<Arc<dyn Source>>,
}

impl Sources {
    /// The source for a task, or the permanent error that no such source is here.
    pub fn for_task(&self, task: &Task) -> Result<Arc<dyn Source>, SourceError> {
        match task.source {
            SourceKind::Http => Ok(self.http.clone()),
            SourceKind::Telegram => self.telegram.clone().ok_or_else(|| {
                SourceError::permanent(format!(
                    "this worker has no Telegram source yet: {} cannot be saved until the workers' \
                     `[telegram]` has credentials (a bot `token`, or `[telegram.userbot]` with a \
                     session from `savestream-worker login`) and `app_id`/`app_hash`; send a direct \
                     link as `url` instead",
                    shown_link(&task.link)
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_size_says_what_changed_and_what_to_do() {
        let error = SourceError::changed_size("https://example.com/f.bin?sig=x", 2000, Some(3000));
        assert!(error.is_permanent());
        assert_eq!(
            error.message,
            "the file at https://example.com/f.bin?… changed on the server (was 2000 bytes, now 3000): \
             add the link again to download the new file"
        );
        let error = SourceError::changed_size("https://example.com/f.bin", 2000, None);
        assert!(error.message.contains("(was 2000 bytes, now larger)"), "{error}");
    }

    #[test]
    fn links_are_shown_without_their_query_or_user_info() {
        assert_eq!(
            shown_link("https://user:pw@example.com/a.bin?X-Amz-Signature=abc"),
            "https://example.com/a.bin?…"
        );
        assert_eq!(shown_link("https://t.me/channel/123"), "https://t.me/channel/123");
        assert_eq!(shown_link("not a link"), "not a link");
    }
}
