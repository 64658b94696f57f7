//! File names for saved Telegram media, and the title of an album task. Pure and tested.
//!
//! The rule: the document's own name when it has a usable one; otherwise
//! `<chat>_<message>` plus the extension of the MIME type (`.jpg` for photos). Every name is
//! sanitised so it is one plain path component that cannot escape `dir_path`: no `/`, `\`,
//! NUL or control characters, never `.` or `..`, and at most [`MAX_FILE_NAME_BYTES`] bytes
//! with the extension kept.

use savestream_shared::task::SourceKind;
use savestream_shared::title;

use crate::api::{Media, MediaMessage};

/// The longest name produced, in bytes: the common file-system limit (ext4, XFS, APFS, NTFS
/// in UTF-16 units is more generous).
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// The longest extension kept whole when a name is shortened; longer "extensions" are just
/// part of the name.
const MAX_EXTENSION_BYTES: usize = 16;

/// The name to save `message`'s file under.
pub fn file_name(message: &MediaMessage) -> String {
    let document_name = match &message.media {
        Media::Document { name, .. } => name.as_deref().and_then(sanitize),
        Media::Photo { .. } | Media::Unsupported(_) => None,
    };
    document_name.unwrap_or_else(|| fallback_name(message.chat_id(), message.message_id, &message.media))
}

/// `<chat>_<message>` plus the extension the media's MIME type implies.
pub fn fallback_name(chat_id: i64, message_id: i32, media: &Media) -> String {
    let extension = match media {
        Media::Photo { .. } => Some("jpg"),
        other => other.mime().and_then(extension_for_mime),
    };
    match extension {
        Some(extension) => format!("{chat_id}_{message_id}.{extension}"),
        None => format!("{chat_id}_{message_id}"),
    }
}

/// The title of a task that saves an album of `files` files, `total_bytes` in all:
/// `[tgfiles](3 files/12.34MB)`.
pub fn album_title(files: usize, total_bytes: u64) -> String {
    title::batch(SourceKind::Telegram, files, total_bytes)
}

/// Makes `name` one safe path component, or `None` when nothing usable is left.
///
/// Separators, NUL and control characters become `_`; surrounding whitespace is trimmed; `.`
/// and `..` (and names of only dots) are refused; a long name is cut on a character boundary
/// keeping its extension, and refused when the cut leaves only dots.
pub fn sanitize(name: &str) -> Option<String> {
    let replaced: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = replaced.trim();
    if !is_usable(trimmed) {
        return None;
    }
    // Checked again after the cut: trimming the whitespace the cut exposes can
    // leave only dots (`"." + " " * 300 + "x."` becomes `..`), which would
    // name the directory itself or its parent.
    let shortened = truncate_keeping_extension(trimmed, MAX_FILE_NAME_BYTES);
    is_usable(&shortened).then_some(shortened)
}

/// False for an empty name and for names of only dots (`.`, `..`, `...`).
fn is_usable(name: &str) -> bool {
    !name.is_empty() && !name.chars().all(|c| c == '.')
}

fn truncate_keeping_extension(name: &str, max_bytes: usize) -> String {
    if name.len() <= max_bytes {
        return name.to_owned();
    }
    let (stem, extension) = match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= MAX_EXTENSION_BYTES + 1 => name.split_at(dot),
        _ => (name, ""),
    };
    let mut end = max_bytes - extension.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{}", stem[..end].trim_end(), extension)
}

/// The usual extension for a MIME type, for files Telegram sends without a name. Unknown types
/// get none rather than a guess.
pub fn extension_for_mime(mime: &str) -> Option<&'static str> {
    let essence = mime.split(';').next().unwrap_or(mime).trim().to_ascii_lowercase();
    Some(match essence.as_str() {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/heic" => "heic",
        "image/bmp" => "bmp",
        "image/svg+xml" => "svg",
        "video/mp4" => "mp4",
        "video/quicktime" => "mov",
        "video/x-matroska" => "mkv",
        "video/webm" => "webm",
        "video/x-msvideo" => "avi",
        "video/mpeg" => "mpeg",
        "video/3gpp" => "3gp",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/ogg" => "ogg",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/wav" | "audio/x-wav" => "wav",
        "audio/aac" => "aac",
        "audio/opus" => "opus",
        "application/pdf" => "pdf",
        "application/zip" | "application/x-zip-compressed" => "zip",
        "application/x-rar-compressed" | "application/vnd.rar" => "rar",
        "application/x-7z-compressed" => "7z",
        "application/gzip" | "application/x-gzip" => "gz",
        "application/x-tar" => "tar",
        "application/x-bittorrent" => "torrent",
        "application/epub+zip" => "epub",
        "application/json" => "json",
        "application/vnd.android.package-archive" => "apk",
        "application/x-tgsticker" => "tgs",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "text/plain" => "txt",
        "text/html" => "html",
        "text/csv" => "csv",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChatKey, ChatKind, FileKind, FileLocation};

    fn location() -> FileLocation {
        FileLocation {
            kind: FileKind::Document,
            id: 1,
            access_hash: 0,
            file_reference: Vec::new(),
        }
    }

    fn message(media: Media) -> MediaMessage {
        MediaMessage {
            chat: ChatKey {
                kind: ChatKind::Channel,
                id: 1234567,
                access_hash: 0,
            },
            message_id: 89,
            grouped_id: None,
            media,
        }
    }

    fn document(name: Option<&str>, mime: Option<&str>) -> Media {
        Media::Document {
            name: name.map(str::to_owned),
            mime: mime.map(str::to_owned),
            size: 1,
            location: location(),
            dc: 2,
        }
    }

    #[test]
    fn file_names_follow_the_rules() {
        let long_stem = "a".repeat(300);
        let long_name = format!("{long_stem}.mkv");
        let cases: Vec<(Media, String)> = vec![
            (
                document(Some("report.pdf"), Some("application/pdf")),
                "report.pdf".into(),
            ),
            (
                document(Some("  spaced name.txt  "), None),
                "spaced name.txt".into(),
            ),
            (document(None, Some("video/mp4")), "1234567_89.mp4".into()),
            (
                document(None, Some("application/octet-stream")),
                "1234567_89".into(),
            ),
            (document(None, None), "1234567_89".into()),
            (document(Some(""), Some("audio/mpeg")), "1234567_89.mp3".into()),
            (document(Some("."), Some("audio/ogg")), "1234567_89.ogg".into()),
            (document(Some(".."), None), "1234567_89".into()),
            (document(Some("..."), None), "1234567_89".into()),
            (
                document(Some("../../etc/passwd"), None),
                ".._.._etc_passwd".into(),
            ),
            (document(Some("..\\..\\boot.ini"), None), ".._.._boot.ini".into()),
            (document(Some("/abs/path.zip"), None), "_abs_path.zip".into()),
            (document(Some("nul\0byte.bin"), None), "nul_byte.bin".into()),
            (
                document(Some("line\nbreak\t.txt"), None),
                "line_break_.txt".into(),
            ),
            (
                document(Some("ünïcödé 文件.pdf"), None),
                "ünïcödé 文件.pdf".into(),
            ),
            (document(Some(".hidden"), None), ".hidden".into()),
            (
                document(Some(&long_name), None),
                format!("{}.mkv", "a".repeat(MAX_FILE_NAME_BYTES - 4)),
            ),
            (
                Media::Photo {
                    size: 1,
                    location: location(),
                    dc: 2,
                },
                "1234567_89.jpg".into(),
            ),
            (
                document(None, Some("image/jpeg; charset=binary")),
                "1234567_89.jpg".into(),
            ),
        ];
        for (media, expected) in cases {
            let name = file_name(&message(media.clone()));
            assert_eq!(name, expected, "{media:?}");
            assert!(name.len() <= MAX_FILE_NAME_BYTES);
            assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
            assert!(name != "." && name != "..");
        }
    }

    #[test]
    fn shortening_keeps_characters_whole() {
        let name = format!("{}.txt", "é".repeat(200));
        let shortened = sanitize(&name).unwrap();
        assert!(shortened.len() <= MAX_FILE_NAME_BYTES);
        assert!(shortened.ends_with(".txt"));
        assert!(shortened.starts_with('é'));
    }

    #[test]
    fn a_long_name_without_an_extension_is_cut() {
        let shortened = sanitize(&"x".repeat(400)).unwrap();
        assert_eq!(shortened.len(), MAX_FILE_NAME_BYTES);
        let odd = format!("{}.{}", "y".repeat(300), "z".repeat(40));
        assert_eq!(sanitize(&odd).unwrap().len(), MAX_FILE_NAME_BYTES);
    }

    #[test]
    fn a_cut_that_leaves_only_dots_is_refused() {
        let spaces = " ".repeat(300);
        for name in [
            format!(".{spaces}x."),
            format!(".{spaces}x"),
            format!("..{spaces}x"),
            format!("...{spaces}x."),
        ] {
            assert_eq!(sanitize(&name), None, "{name:?}");
            assert_eq!(
                file_name(&message(document(Some(&name), Some("audio/ogg")))),
                "1234567_89.ogg",
                "{name:?}"
            );
        }
    }

    #[test]
    fn album_titles_take_the_batch_form() {
        assert_eq!(
            album_title(3, 3 * 1024 * 1024 + 10_486),
            "[tgfiles](3 files/3.01MB)"
        );
    }
}
