//! Pure conversions between Telegram's TL types (as grammers generates them) and this crate's
//! plain types: what a message holds, which photo size is the largest, which topic a message
//! is in, and a [`FileLocation`] as an `InputFileLocation`. Unit-tested with constructed TL
//! values; no I/O.

use grammers_session::types::{PeerAuth, PeerId, PeerKind, PeerRef};
use grammers_tl_types as tl;

use crate::api::{ChatKey, ChatKind, FileKind, FileLocation, Media, MessageRef};

/// What a message's media is, reduced to [`Media`].
pub fn media_from_raw(media: Option<&tl::enums::MessageMedia>) -> Media {
    use tl::enums::MessageMedia as M;
    let Some(media) = media else {
        return Media::Unsupported("no media (it is a text message)".to_owned());
    };
    let holds = match media {
        M::Document(document) => return document_media(document),
        M::Photo(photo) => return photo_media(photo),
        M::Empty => "no media (it is a text message)",
        M::WebPage(_) => "a web page preview",
        M::Poll(_) => "a poll",
        M::Geo(_) | M::GeoLive(_) => "a location",
        M::Venue(_) => "a venue",
        M::Contact(_) => "a contact",
        M::Dice(_) => "an animated dice",
        M::Game(_) => "a game",
        M::Invoice(_) => "an invoice",
        M::Story(_) => "a story (save stories from the story link instead)",
        M::Giveaway(_) => "a giveaway",
        M::GiveawayResults(_) => "giveaway results",
        M::PaidMedia(_) => "paid media",
        M::ToDo(_) => "a to-do list",
        M::VideoStream(_) => "a live video stream",
        M::Unsupported => "media this version of Telegram's API does not describe",
    };
    Media::Unsupported(holds.to_owned())
}

fn document_media(media: &tl::types::MessageMediaDocument) -> Media {
    let Some(tl::enums::Document::Document(document)) = &media.document else {
        return Media::Unsupported("a file that is no longer available".to_owned());
    };
    let name = document.attributes.iter().find_map(|attribute| match attribute {
        tl::enums::DocumentAttribute::Filename(filename) if !filename.file_name.is_empty() => {
            Some(filename.file_name.clone())
        }
        _ => None,
    });
    let mime = Some(document.mime_type.clone()).filter(|mime| !mime.is_empty());
    Media::Document {
        name,
        mime,
        size: u64::try_from(document.size).unwrap_or(0),
        location: FileLocation {
            kind: FileKind::Document,
            id: document.id,
            access_hash: document.access_hash,
            file_reference: document.file_reference.clone(),
        },
        dc: document.dc_id,
    }
}

fn photo_media(media: &tl::types::MessageMediaPhoto) -> Media {
    let Some(tl::enums::Photo::Photo(photo)) = &media.photo else {
        return Media::Unsupported("a photo that is no longer available".to_owned());
    };
    let Some((thumb_size, size)) = largest_photo_size(&photo.sizes) else {
        return Media::Unsupported("a photo with no downloadable size".to_owned());
    };
    Media::Photo {
        size,
        location: FileLocation {
            kind: FileKind::Photo { thumb_size },
            id: photo.id,
            access_hash: photo.access_hash,
            file_reference: photo.file_reference.clone(),
        },
        dc: photo.dc_id,
    }
}

/// The type letter and byte size of the largest size of a photo that `upload.getFile` serves.
/// Cached, stripped and path sizes are inline thumbnails, never the photo itself.
pub fn largest_photo_size(sizes: &[tl::enums::PhotoSize]) -> Option<(String, u64)> {
    sizes
        .iter()
        .filter_map(|size| match size {
            tl::enums::PhotoSize::Size(size) => Some((size.r#type.clone(), i64::from(size.size))),
            tl::enums::PhotoSize::Progressive(size) => size
                .sizes
                .iter()
                .max()
                .map(|largest| (size.r#type.clone(), i64::from(*largest))),
            _ => None,
        })
        .max_by_key(|(_, size)| *size)
        .map(|(kind, size)| (kind, u64::try_from(size).unwrap_or(0)))
}

/// The forum topic a message is in, when its reply header says so. Messages of the General
/// topic carry no topic, and neither do messages of chats that are not forums.
pub fn topic_of(reply_to: Option<&tl::enums::MessageReplyHeader>) -> Option<i32> {
    match reply_to? {
        tl::enums::MessageReplyHeader::Header(header) if header.forum_topic => {
            header.reply_to_top_id.or(header.reply_to_msg_id)
        }
        _ => None,
    }
}

/// The `InputFileLocation` that asks for `location`'s bytes.
pub fn location_to_tl(location: &FileLocation) -> tl::enums::InputFileLocation {
    match &location.kind {
        FileKind::Document => tl::types::InputDocumentFileLocation {
            id: location.id,
            access_hash: location.access_hash,
            file_reference: location.file_reference.clone(),
            thumb_size: String::new(),
        }
        .into(),
        FileKind::Photo { thumb_size } => tl::types::InputPhotoFileLocation {
            id: location.id,
            access_hash: location.access_hash,
            file_reference: location.file_reference.clone(),
            thumb_size: thumb_size.clone(),
        }
        .into(),
    }
}

pub fn chat_key(peer: PeerRef) -> ChatKey {
    ChatKey {
        kind: match peer.id.kind() {
            PeerKind::User => ChatKind::User,
            PeerKind::Chat => ChatKind::Group,
            PeerKind::Channel => ChatKind::Channel,
        },
        id: peer.id.bare_id().unwrap_or_default(),
        access_hash: peer.auth.hash(),
    }
}

/// The peer a [`MessageRef`] names, or `None` when its id is out of Telegram's ranges.
pub fn peer_ref(message: &MessageRef) -> Option<PeerRef> {
    let id = match message.chat.kind {
        ChatKind::User => PeerId::user(message.chat.id),
        ChatKind::Group => PeerId::chat(message.chat.id),
        ChatKind::Channel => PeerId::channel(message.chat.id),
    }?;
    Some(PeerRef {
        id,
        auth: PeerAuth::from_hash(message.chat.access_hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(attributes: Vec<tl::enums::DocumentAttribute>, mime: &str) -> tl::enums::MessageMedia {
        tl::enums::MessageMedia::Document(tl::types::MessageMediaDocument {
            nopremium: false,
            spoiler: false,
            video: false,
            round: false,
            voice: false,
            document: Some(tl::enums::Document::Document(tl::types::Document {
                id: 11,
                access_hash: 22,
                file_reference: vec![1, 2, 3],
                date: 0,
                mime_type: mime.to_owned(),
                size: 5_000_000,
                thumbs: None,
                video_thumbs: None,
                dc_id: 4,
                attributes,
            })),
            alt_documents: None,
            video_cover: None,
            video_timestamp: None,
            ttl_seconds: None,
        })
    }

    fn photo(sizes: Vec<tl::enums::PhotoSize>) -> tl::enums::MessageMedia {
        tl::enums::MessageMedia::Photo(tl::types::MessageMediaPhoto {
            spoiler: false,
            live_photo: false,
            photo: Some(tl::enums::Photo::Photo(tl::types::Photo {
                has_stickers: false,
                id: 33,
                access_hash: 44,
                file_reference: vec![9],
                date: 0,
                sizes,
                video_sizes: None,
                dc_id: 2,
            })),
            ttl_seconds: None,
            video: None,
        })
    }

    fn size(kind: &str, bytes: i32) -> tl::enums::PhotoSize {
        tl::types::PhotoSize {
            r#type: kind.to_owned(),
            w: 1,
            h: 1,
            size: bytes,
        }
        .into()
    }

    #[test]
    fn documents_keep_name_mime_size_location_and_data_centre() {
        let filename = tl::types::DocumentAttributeFilename {
            file_name: "movie.mkv".to_owned(),
        };
        let media = media_from_raw(Some(&document(vec![filename.into()], "video/x-matroska")));
        let Media::Document {
            name,
            mime,
            size,
            location,
            dc,
        } = media
        else {
            panic!("{media:?}");
        };
        assert_eq!(name.as_deref(), Some("movie.mkv"));
        assert_eq!(mime.as_deref(), Some("video/x-matroska"));
        assert_eq!(size, 5_000_000);
        assert_eq!(dc, 4);
        assert_eq!((location.id, location.access_hash), (11, 22));
        assert_eq!(location.file_reference, vec![1, 2, 3]);
    }

    #[test]
    fn nameless_documents_and_empty_mimes_become_none() {
        let Media::Document { name, mime, .. } = media_from_raw(Some(&document(Vec::new(), ""))) else {
            panic!();
        };
        assert_eq!((name, mime), (None, None));
    }

    #[test]
    fn photos_take_their_largest_downloadable_size() {
        let sizes = vec![
            tl::types::PhotoStrippedSize {
                r#type: "i".into(),
                bytes: vec![0; 9_000_000],
            }
            .into(),
            size("m", 20_000),
            tl::types::PhotoSizeProgressive {
                r#type: "y".into(),
                w: 1,
                h: 1,
                sizes: vec![10_000, 90_000, 150_000],
            }
            .into(),
            size("x", 100_000),
        ];
        let Media::Photo { size, location, dc } = media_from_raw(Some(&photo(sizes))) else {
            panic!();
        };
        assert_eq!(size, 150_000);
        assert_eq!(dc, 2);
        assert_eq!(
            location.kind,
            FileKind::Photo {
                thumb_size: "y".into()
            }
        );
    }

    #[test]
    fn other_media_says_what_it_is() {
        let cases = [
            (None, "no media"),
            (Some(tl::enums::MessageMedia::Empty), "no media"),
            (Some(tl::enums::MessageMedia::Unsupported), "does not describe"),
            (
                Some(tl::enums::MessageMedia::Geo(tl::types::MessageMediaGeo {
                    geo: tl::enums::GeoPoint::Empty,
                })),
                "a location",
            ),
            (
                Some(tl::enums::MessageMedia::Dice(tl::types::MessageMediaDice {
                    value: 3,
                    emoticon: "🎲".into(),
                    game_outcome: None,
                })),
                "dice",
            ),
            (Some(photo(Vec::new())), "no downloadable size"),
        ];
        for (media, expected) in cases {
            let Media::Unsupported(holds) = media_from_raw(media.as_ref()) else {
                panic!("{media:?} should be unsupported");
            };
            assert!(holds.contains(expected), "{holds:?} should contain {expected:?}");
        }
    }

    #[test]
    fn topics_come_from_forum_reply_headers_only() {
        let header = |forum_topic: bool, top: Option<i32>, reply: Option<i32>| {
            tl::enums::MessageReplyHeader::Header(tl::types::MessageReplyHeader {
                reply_to_scheduled: false,
                forum_topic,
                quote: false,
                reply_to_ephemeral: false,
                reply_to_msg_id: reply,
                reply_to_peer_id: None,
                reply_from: None,
                reply_media: None,
                reply_to_top_id: top,
                quote_text: None,
                quote_entities: None,
                quote_offset: None,
                todo_item_id: None,
                poll_option: None,
            })
        };
        assert_eq!(topic_of(None), None);
        assert_eq!(topic_of(Some(&header(false, None, Some(5)))), None);
        assert_eq!(topic_of(Some(&header(true, None, Some(5)))), Some(5));
        assert_eq!(topic_of(Some(&header(true, Some(3), Some(9)))), Some(3));
    }

    #[test]
    fn locations_round_trip_into_input_file_locations() {
        let location = FileLocation {
            kind: FileKind::Photo {
                thumb_size: "w".into(),
            },
            id: 1,
            access_hash: 2,
            file_reference: vec![3],
        };
        let tl::enums::InputFileLocation::InputPhotoFileLocation(input) = location_to_tl(&location) else {
            panic!();
        };
        assert_eq!(
            (input.id, input.access_hash, input.thumb_size.as_str()),
            (1, 2, "w")
        );
        let document = FileLocation {
            kind: FileKind::Document,
            ..location
        };
        assert!(matches!(
            location_to_tl(&document),
            tl::enums::InputFileLocation::InputDocumentFileLocation(_)
        ));
    }

    #[test]
    fn message_refs_become_peer_refs_and_back() {
        let message = MessageRef {
            chat: ChatKey {
                kind: ChatKind::Channel,
                id: 1234567,
                access_hash: 99,
            },
            message_id: 5,
        };
        let peer = peer_ref(&message).unwrap();
        assert_eq!(chat_key(peer), message.chat);
    }
}
