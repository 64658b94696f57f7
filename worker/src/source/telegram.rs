//! The Telegram source: the worker's [`Source`] over `savestream-telegram`'s
//! [`TelegramApi`] (grammers in production, `FakeTelegram` in tests) and its
//! parallel-parts [`Downloader`].
//!
//! [`TelegramSource::resolve`] parses the task's link with
//! [`TelegramLink::parse`], asks Telegram for the message (or every message
//! of its album) and describes each file: the name from
//! [`naming::file_name`], the size, the MIME type, and a [`RemoteFile::key`]
//! (`<kind>:<chat>:<access hash>:<message>`) by which
//! [`TelegramSource::open`] finds the message again. `open` refetches the
//! message, which also gives a fresh file reference, and streams its file
//! from the offset the partial file has reached.
//!
//! This module owns the translation of [`TelegramError`] into
//! [`SourceError`]: retryable exactly when Telegram's error is
//! ([`TelegramError::is_retryable`]), with the wait Telegram asked for. It
//! knows nothing of storages or of Redis, and it never logs a credential
//! (file locations print without their access hash or reference).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use savestream_shared::config::Config;
use savestream_shared::link::TelegramLink;
use savestream_shared::task::Task;
use savestream_telegram::{
    naming, ChatKey, ChatKind, DownloadOptions, Downloader, GrammersApi, MediaMessage, MessageRef,
    TelegramApi, TelegramError,
};

use super::{shown_link, Download, RemoteFile, Source, SourceError, SourceErrorKind};

/// The longest flood wait slept through inside a download, whatever the
/// lease: past a minute the slot is better given to another task.
pub const MAX_FLOOD_WAIT: Duration = Duration::from_secs(60);

/// Downloads from Telegram. One per worker process: it holds the process's
/// one connection (inside the [`TelegramApi`]), shared by every task slot.
pub struct TelegramSource {
    api: Arc<dyn TelegramApi>,
    downloader: Downloader,
}

impl std::fmt::Debug for TelegramSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramSource")
            .field("options", self.downloader.options())
            .finish_non_exhaustive()
    }
}

/// Whether `[telegram]` names an account to sign in as: a bot token, or a
/// user session (`[telegram.userbot] enable`). Without one the worker has no
/// Telegram source and Telegram tasks fail at once, saying so.
pub fn has_credentials(config: &Config) -> bool {
    !config.telegram.token.is_empty() || config.telegram.userbot.enable
}

/// The download options for this worker: `threads` parts in flight, and a
/// flood wait cap below the lease, so a long FLOOD_WAIT ends the attempt
/// with a retryable error (the task is released with `retrying` and the slot
/// serves other tasks) instead of sleeping while holding the slot.
pub fn download_options(threads: usize, lease: Duration) -> DownloadOptions {
    let mut options = DownloadOptions::new(threads);
    options.max_flood_wait = (lease / 2).min(MAX_FLOOD_WAIT);
    options
}

impl TelegramSource {
    pub fn new(api: Arc<dyn TelegramApi>, options: DownloadOptions) -> TelegramSource {
        let downloader = Downloader::new(api.clone(), options);
        TelegramSource { api, downloader }
    }

    /// The real source for `config`, when `[telegram]` has credentials; `None`
    /// when it has none. Nothing touches the network here: the connection is
    /// made on the first task and then reused, so a worker starts (and its
    /// Telegram tasks fail with a clear reason) even where Telegram is out of
    /// reach. Fails for credentials that cannot be used (no app id, say).
    pub fn from_config(config: &Config) -> Result<Option<TelegramSource>, TelegramError> {
        if !has_credentials(config) {
            return Ok(None);
        }
        let api = GrammersApi::new(&config.telegram)?;
        let options = download_options(config.threads, config.queue.lease());
        Ok(Some(TelegramSource::new(Arc::new(api), options)))
    }

    /// The message `file` stands for, fetched again (with a fresh file
    /// reference); a file without a key (never made by `resolve`) is found by
    /// resolving the task's link once more.
    async fn message_for(&self, task: &Task, file: &RemoteFile) -> Result<MediaMessage, SourceError> {
        let Some(key) = file.key.as_deref() else {
            let link = parse_link(task)?;
            let messages = self
                .api
                .resolve(&link)
                .await
                .map_err(|error| source_error(task, error))?;
            return match messages.as_slice() {
                [only] => Ok(only.clone()),
                _ => Err(SourceError::permanent(format!(
                    "{} names {} files and the task does not say which: send the task again",
                    shown_link(&task.link),
                    messages.len()
                ))),
            };
        };
        let reference = parse_key(key).ok_or_else(|| {
            SourceError::permanent(format!(
                "the recorded message of {} (`{key}`) cannot be read: send the task again",
                shown_link(&task.link)
            ))
        })?;
        self.api
            .refetch(&reference)
            .await
            .map_err(|error| source_error(task, error))
    }
}

#[async_trait]
impl Source for TelegramSource {
    async fn resolve(&self, task: &Task) -> Result<Vec<RemoteFile>, SourceError> {
        let link = parse_link(task)?;
        let messages = self
            .api
            .resolve(&link)
            .await
            .map_err(|error| source_error(task, error))?;
        messages
            .iter()
            .map(|message| remote_file(task, message))
            .collect()
    }

    async fn open(&self, task: &Task, file: &RemoteFile, offset: u64) -> Result<Download, SourceError> {
        let message = self.message_for(task, file).await?;
        let size = message.media.size();
        if let (Some(expected), Some(now)) = (file.size, size) {
            if expected != now {
                // The message was edited to hold another file: resuming would
                // splice two files together.
                return Err(SourceError::permanent(format!(
                    "message {} of {} now holds a file of {now} bytes instead of {expected}: it was \
                     edited; send the task again",
                    message.message_id,
                    shown_link(&task.link)
                )));
            }
        }
        let stream = self
            .downloader
            .stream(&message, offset)
            .map_err(|error| source_error(task, error))?;
        let shown = shown_link(&task.link);
        let stream = stream
            .map(move |chunk| chunk.map_err(|error| source_error_for(&shown, error)))
            .boxed();
        Ok(Download {
            // The downloader always honours the offset: parts are fetched
            // from the first missing byte.
            offset,
            total: size,
            // The file reference is the file's identity: nothing to record.
            validator: None,
            stream,
        })
    }

    fn resolves_every_attempt(&self) -> bool {
        // File references expire and an album is only known from Telegram,
        // so every attempt asks again; the recorded paths keep the names.
        true
    }
}

fn parse_link(task: &Task) -> Result<TelegramLink, SourceError> {
    TelegramLink::parse(&task.link).map_err(|error| {
        SourceError::permanent(format!(
            "{} is not a Telegram message link: {error}",
            shown_link(&task.link)
        ))
    })
}

fn remote_file(task: &Task, message: &MediaMessage) -> Result<RemoteFile, SourceError> {
    let Some(size) = message.media.size() else {
        // `resolve` refuses a target without a file and drops album members
        // without one, so this is a message that changed in between.
        let holds = match &message.media {
            savestream_telegram::Media::Unsupported(holds) => holds.clone(),
            _ => "no file".to_owned(),
        };
        return Err(source_error(
            task,
            TelegramError::unsupported_media(&message.chat_id().to_string(), message.message_id, &holds),
        ));
    };
    Ok(RemoteFile {
        name: Some(naming::file_name(message)),
        size: Some(size),
        mime: message.media.mime().map(str::to_owned),
        key: Some(message_key(&message.reference())),
        // The file reference, not a header, says which file this is.
        validator: None,
    })
}

/// A message's address as text: `<kind>:<chat id>:<access hash>:<message id>`.
/// The access hash is the account's handle on the chat, not a secret of the
/// user's; it stays inside the worker (it is not recorded in Redis).
pub fn message_key(reference: &MessageRef) -> String {
    let kind = match reference.chat.kind {
        ChatKind::User => 'u',
        ChatKind::Group => 'g',
        ChatKind::Channel => 'c',
    };
    format!(
        "{kind}:{}:{}:{}",
        reference.chat.id, reference.chat.access_hash, reference.message_id
    )
}

/// The inverse of [`message_key`].
pub fn parse_key(key: &str) -> Option<MessageRef> {
    let mut parts = key.split(':');
    let kind = match parts.next()? {
        "u" => ChatKind::User,
        "g" => ChatKind::Group,
        "c" => ChatKind::Channel,
        _ => return None,
    };
    let id = parts.next()?.parse().ok()?;
    let access_hash = parts.next()?.parse().ok()?;
    let message_id = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(MessageRef {
        chat: ChatKey {
            kind,
            id,
            access_hash,
        },
        message_id,
    })
}

fn source_error(task: &Task, error: TelegramError) -> SourceError {
    source_error_for(&shown_link(&task.link), error)
}

/// A [`TelegramError`] as the pipeline sees it: retryable when Telegram's
/// error is, with the wait Telegram asked for. Telegram's own words already
/// name the chat and message; a connection failure (whose words say that
/// Telegram could not be reached, and what to check) is prefixed with the
/// link, so the task's error says which download it was.
fn source_error_for(link: &str, error: TelegramError) -> SourceError {
    let kind = if error.retry_after().is_some() {
        SourceErrorKind::RateLimited
    } else if error.is_retryable() {
        SourceErrorKind::Retryable
    } else {
        SourceErrorKind::Permanent
    };
    let message = match &error {
        TelegramError::Disconnected(_) => format!("{link}: {error}"),
        _ => error.to_string(),
    };
    SourceError {
        kind,
        message,
        retry_after: error.retry_after(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_round_trip_and_refuse_anything_else() {
        let reference = MessageRef {
            chat: ChatKey {
                kind: ChatKind::Channel,
                id: 1_234_567,
                access_hash: -42,
            },
            message_id: 9,
        };
        assert_eq!(message_key(&reference), "c:1234567:-42:9");
        assert_eq!(parse_key(&message_key(&reference)), Some(reference));
        for bad in ["", "c:1:2", "x:1:2:3", "c:1:2:3:4", "c:a:2:3"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn telegram_errors_keep_their_retry_class_and_wait() {
        let flood = source_error_for(
            "https://t.me/a/1",
            TelegramError::FloodWait {
                seconds: 90,
                premium: false,
            },
        );
        assert_eq!(flood.kind, SourceErrorKind::RateLimited);
        assert_eq!(flood.retry_after, Some(Duration::from_secs(90)));
        let missing = source_error_for(
            "https://t.me/a/1",
            TelegramError::NotMember { chat: "123".into() },
        );
        assert_eq!(missing.kind, SourceErrorKind::Permanent);
        assert!(
            missing.message.contains("not a member of chat 123"),
            "{}",
            missing.message
        );
        let offline = source_error_for("https://t.me/a/1", TelegramError::Disconnected("reset".into()));
        assert_eq!(offline.kind, SourceErrorKind::Retryable);
        assert_eq!(
            offline.message,
            "https://t.me/a/1: the connection to Telegram failed: reset"
        );
    }

    #[test]
    fn the_flood_wait_cap_stays_below_the_lease() {
        assert_eq!(
            download_options(4, Duration::from_secs(30)).max_flood_wait,
            Duration::from_secs(15)
        );
        assert_eq!(
            download_options(4, Duration::from_secs(600)).max_flood_wait,
            MAX_FLOOD_WAIT
        );
    }
}
