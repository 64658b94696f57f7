//! The seam between savestream and Telegram: the [`TelegramApi`] trait and the plain data it
//! speaks ([`MediaMessage`], [`Media`], [`FileLocation`], [`MessageRef`]).
//!
//! Two implementations exist: [`crate::GrammersApi`] (the network) and
//! [`crate::fake::FakeTelegram`] (tests). Everything above this trait ([`crate::Downloader`],
//! naming, the worker's adapter) is tested against the fake and runs unchanged on the real
//! client. The link policy both implementations share (which messages an album link names,
//! which media can be saved) lives here too, so they cannot drift apart.
//!
//! No grammers type appears in this module's public items: grammers is an implementation
//! detail of [`crate::GrammersApi`].

use bytes::Bytes;
use futures::future::BoxFuture;
use savestream_shared::link::{ChatRef, TelegramLink};

use crate::error::TelegramError;

/// The three things the Telegram source needs from Telegram.
///
/// Methods return boxed futures so the trait is object-safe: the worker holds an
/// `Arc<dyn TelegramApi>` and tests swap in the fake.
pub trait TelegramApi: Send + Sync {
    /// Resolves a parsed link to the message(s) it names: one message, or every message of its
    /// album (same `grouped_id`) unless `link.single`. `?comment=` is followed through the
    /// channel's linked discussion chat; a topic link checks the message is in that topic.
    ///
    /// A message that holds neither a document nor a photo is an
    /// [`TelegramError::Unsupported`] that says what it holds.
    fn resolve<'a>(
        &'a self,
        link: &'a TelegramLink,
    ) -> BoxFuture<'a, Result<Vec<MediaMessage>, TelegramError>>;

    /// Fetches one message again, for a fresh file reference after FILE_REFERENCE_EXPIRED.
    fn refetch<'a>(&'a self, message: &'a MessageRef) -> BoxFuture<'a, Result<MediaMessage, TelegramError>>;

    /// `upload.getFile` in precise mode on data centre `dc`. Telegram requires `offset` and
    /// `limit` to be multiples of 1024, `limit` at most 1 MiB, and the range not to cross a
    /// 1 MiB boundary ([`crate::parts`] plans requests that way). An answer shorter than
    /// `limit` means the file ends there.
    fn get_part<'a>(
        &'a self,
        location: &'a FileLocation,
        dc: i32,
        offset: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Bytes, TelegramError>>;

    /// Nothing arrived over data centre `dc`'s connection for the [`crate::Downloader`]'s
    /// stall timeout: the connection may have died without closing, which nothing else
    /// notices. Drops it, failing every request in flight on it at once (as grammers does when
    /// a connection is dropped), so that the next request to `dc` opens a new one.
    fn drop_connection(&self, dc: i32) -> BoxFuture<'_, ()>;
}

/// The kind of chat a message lives in; with the id, it is how Telegram addresses a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatKind {
    /// A private conversation with a user or bot.
    User,
    /// A small (legacy) group.
    Group,
    /// A channel or supergroup (what `t.me/c/<id>` links point into).
    Channel,
}

/// A chat as Telegram addresses it: kind, bare id (as in `t.me/c/<id>`, without `-100`) and
/// the account-specific access hash (0 in the fake, and for small groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChatKey {
    pub kind: ChatKind,
    pub id: i64,
    pub access_hash: i64,
}

/// Everything [`TelegramApi::refetch`] needs to find a message again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageRef {
    pub chat: ChatKey,
    pub message_id: i32,
}

/// A message that a link named, with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaMessage {
    pub chat: ChatKey,
    pub message_id: i32,
    /// The album the message belongs to, if any.
    pub grouped_id: Option<i64>,
    pub media: Media,
}

impl MediaMessage {
    /// The chat's bare id, as it appears in `t.me/c/<id>` links and in fallback file names.
    pub fn chat_id(&self) -> i64 {
        self.chat.id
    }

    pub fn reference(&self) -> MessageRef {
        MessageRef {
            chat: self.chat,
            message_id: self.message_id,
        }
    }
}

/// What a message holds, reduced to what savestream can save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// A file: documents, videos, music, voice notes, stickers, GIFs.
    Document {
        /// The file name the sender gave, if any (unsanitised).
        name: Option<String>,
        mime: Option<String>,
        size: u64,
        location: FileLocation,
        /// The data centre that stores the file.
        dc: i32,
    },
    /// A photo, at its largest size.
    Photo {
        size: u64,
        location: FileLocation,
        dc: i32,
    },
    /// Anything else; the text says what, as in "a poll", "a web page preview" or "no media".
    Unsupported(String),
}

impl Media {
    /// Where the file's bytes are, for media that has a file.
    pub fn file(&self) -> Option<FileSource<'_>> {
        match self {
            Media::Document {
                size, location, dc, ..
            }
            | Media::Photo { size, location, dc } => Some(FileSource {
                size: *size,
                location,
                dc: *dc,
            }),
            Media::Unsupported(_) => None,
        }
    }

    /// The file's size in bytes, for media that has a file.
    pub fn size(&self) -> Option<u64> {
        self.file().map(|file| file.size)
    }

    /// The MIME type: the document's own, or `image/jpeg` for photos (Telegram stores photos
    /// as JPEG).
    pub fn mime(&self) -> Option<&str> {
        match self {
            Media::Document { mime, .. } => mime.as_deref(),
            Media::Photo { .. } => Some("image/jpeg"),
            Media::Unsupported(_) => None,
        }
    }
}

/// Borrowed view of the file part of a [`Media`].
#[derive(Debug, Clone, Copy)]
pub struct FileSource<'a> {
    pub size: u64,
    pub location: &'a FileLocation,
    pub dc: i32,
}

/// Which file a `upload.getFile` request asks for: Telegram's `InputFileLocation` for
/// documents and photos, without the grammers type.
#[derive(Clone, PartialEq, Eq)]
pub struct FileLocation {
    pub kind: FileKind,
    pub id: i64,
    pub access_hash: i64,
    /// Proves the account saw the file in a message; it expires, and refetching the message
    /// gives a new one.
    pub file_reference: Vec<u8>,
}

impl std::fmt::Debug for FileLocation {
    // The access hash and file reference are account-specific credentials for the file: they
    // stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLocation")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Documents are fetched whole; photos name the size (`thumb_size`) to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Document,
    Photo { thumb_size: String },
}

/// How a link's chat is named in messages: `@durov` or `123`.
pub fn chat_label(chat: &ChatRef) -> String {
    match chat {
        ChatRef::Username(username) => format!("@{username}"),
        ChatRef::Channel(id) => id.to_string(),
    }
}

/// Picks the messages a link names from the target and its neighbours: the target alone when
/// the link says `?single` or the target is not in an album, else every neighbour of the same
/// album, in message order.
pub(crate) fn select_album(
    target: MediaMessage,
    neighbours: Vec<MediaMessage>,
    single: bool,
) -> Vec<MediaMessage> {
    let Some(group) = target.grouped_id.filter(|_| !single) else {
        return vec![target];
    };
    let mut album: Vec<MediaMessage> = neighbours
        .into_iter()
        .filter(|message| message.grouped_id == Some(group) && message.message_id != target.message_id)
        .collect();
    album.push(target);
    album.sort_by_key(|message| message.message_id);
    album
}

/// Refuses a link whose target holds no file, saying what it holds. Album members without a
/// file (Telegram does not make such albums, but a future media type might) are dropped
/// rather than failing the files that can be saved.
pub(crate) fn require_files(
    messages: Vec<MediaMessage>,
    chat: &str,
    target_id: i32,
) -> Result<Vec<MediaMessage>, TelegramError> {
    if let Some(target) = messages.iter().find(|message| message.message_id == target_id) {
        if let Media::Unsupported(holds) = &target.media {
            return Err(TelegramError::unsupported_media(chat, target_id, holds));
        }
    }
    Ok(messages
        .into_iter()
        .filter(|message| !matches!(message.media, Media::Unsupported(_)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i32, grouped_id: Option<i64>, media: Media) -> MediaMessage {
        MediaMessage {
            chat: ChatKey {
                kind: ChatKind::Channel,
                id: 1,
                access_hash: 0,
            },
            message_id: id,
            grouped_id,
            media,
        }
    }

    fn photo() -> Media {
        Media::Photo {
            size: 10,
            location: FileLocation {
                kind: FileKind::Photo {
                    thumb_size: "y".into(),
                },
                id: 1,
                access_hash: 2,
                file_reference: vec![3],
            },
            dc: 2,
        }
    }

    #[test]
    fn album_links_take_every_member_in_order_unless_single() {
        let target = message(11, Some(7), photo());
        let neighbours = vec![
            message(9, None, photo()),
            message(10, Some(7), photo()),
            message(12, Some(7), photo()),
            message(13, Some(8), photo()),
        ];
        let ids = |messages: Vec<MediaMessage>| messages.iter().map(|m| m.message_id).collect::<Vec<_>>();
        assert_eq!(
            ids(select_album(target.clone(), neighbours.clone(), false)),
            [10, 11, 12]
        );
        assert_eq!(ids(select_album(target, neighbours.clone(), true)), [11]);
        assert_eq!(
            ids(select_album(message(9, None, photo()), neighbours, false)),
            [9]
        );
    }

    #[test]
    fn a_target_without_a_file_is_refused_with_what_it_holds() {
        let error = require_files(
            vec![message(5, None, Media::Unsupported("a poll".into()))],
            "@durov",
            5,
        )
        .unwrap_err();
        assert_eq!(error, TelegramError::unsupported_media("@durov", 5, "a poll"));
        assert!(!error.is_retryable());
    }

    #[test]
    fn file_locations_keep_credentials_out_of_debug_output() {
        let Media::Photo { location, .. } = photo() else {
            unreachable!()
        };
        let printed = format!("{location:?}");
        assert!(!printed.contains("access_hash"), "{printed}");
        assert!(!printed.contains("file_reference"), "{printed}");
    }
}
