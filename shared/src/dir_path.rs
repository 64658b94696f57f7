//! [`DirPath`]: a directory inside a storage, as a user names it in `dir_path`,
//! validated and normalised.
//!
//! This module owns one job: turning user text (`/downloads`, `/a//b/`) into a
//! [`DirPath`] that is absolute, never escapes its storage's root, holds no
//! control characters and is short enough to store, or into a
//! [`DirPathError`] that tells the user what to change. It is pure: whether
//! the directory exists is the storage's business.
//!
//! ## Decisions worth knowing
//! - The path must start with `/`: it is always relative to the storage's
//!   root, and a leading `/` says so, as SaveAny-Bot's `dir_path` does.
//! - `..` segments are refused rather than resolved, because a path that
//!   climbs and comes back down is never what a user meant to type.
//! - `//` and a trailing `/` are normalised away, and so is `.`: they name
//!   the same directory, so two spellings should not make two titles.
//! - The length limit counts the text as given, before normalising, so a
//!   hostile value costs nothing.
//! - Each segment is held to what a storage accepts as one directory name
//!   (the worker's `FileName`): at most [`MAX_SEGMENT_LEN`] bytes, not only
//!   white space. A segment no storage takes would be accepted here and
//!   fail in every worker.

use std::fmt;

/// The longest `dir_path` accepted, in bytes.
pub const MAX_DIR_PATH_LEN: usize = 1024;

/// The longest segment (one directory's name) accepted, in bytes: what
/// the worker's storages take as one name (`MAX_NAME_BYTES` there), safely
/// below the 255 bytes of common file systems.
pub const MAX_SEGMENT_LEN: usize = 200;

/// An absolute directory inside a storage: starts with `/`, has no `..`, no
/// empty or `.` segments, no trailing `/` (except the root itself), and no
/// control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirPath(String);

/// Why a `dir_path` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirPathError {
    #[error("the path is {0} bytes long, more than the {max} allowed: use a shorter directory", max = MAX_DIR_PATH_LEN)]
    TooLong(usize),
    #[error("the path contains the control character U+{:04X}: use printable characters only", u32::from(*.0))]
    ControlCharacter(char),
    #[error("`{0}` is not absolute: start it with `/` (the storage's root)")]
    NotAbsolute(String),
    #[error("`{0}` contains a `..` segment: name the directory from the storage's root without `..`")]
    ParentSegment(String),
    #[error("the directory name `{}` is {} bytes long, more than the {max} a storage accepts: use a shorter name", shortened(.0), .0.len(), max = MAX_SEGMENT_LEN)]
    SegmentTooLong(String),
    #[error("a directory name in `{0}` is only white space: name each directory with at least one visible character")]
    BlankSegment(String),
}

/// `text`, cut after 40 characters: a long segment in a message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

impl DirPath {
    /// The storage's root, `/`: the default when no `dir_path` is given.
    pub fn root() -> DirPath {
        DirPath("/".to_owned())
    }

    pub fn parse(text: &str) -> Result<DirPath, DirPathError> {
        if text.len() > MAX_DIR_PATH_LEN {
            return Err(DirPathError::TooLong(text.len()));
        }
        if let Some(control) = text.chars().find(|c| c.is_control()) {
            return Err(DirPathError::ControlCharacter(control));
        }
        if !text.starts_with('/') {
            return Err(DirPathError::NotAbsolute(text.to_owned()));
        }
        let mut segments = Vec::new();
        for segment in text.split('/') {
            // A storage on Windows, or a worker that sanitises names the
            // Windows way, would read `\..\` as a step up too: refuse it here
            // rather than accept a task every worker then refuses.
            if segment.split('\\').any(|part| part == "..") {
                return Err(DirPathError::ParentSegment(text.to_owned()));
            }
            match segment {
                "" | "." => {}
                name if name.len() > MAX_SEGMENT_LEN => {
                    return Err(DirPathError::SegmentTooLong(name.to_owned()));
                }
                name if name.trim().is_empty() => return Err(DirPathError::BlankSegment(text.to_owned())),
                name => segments.push(name),
            }
        }
        Ok(DirPath(format!("/{}", segments.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DirPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, DirPathError>) {
        let got = DirPath::parse(input).map(|path| path.to_string());
        assert_eq!(got, expected.map(str::to_owned), "input: {input:?}");
    }

    #[test]
    fn dir_path_normalises_equivalent_spellings() {
        let cases = [
            ("/", "/"),
            ("//", "/"),
            ("/downloads", "/downloads"),
            ("/downloads/", "/downloads"),
            ("//downloads//films///", "/downloads/films"),
            ("/./downloads/.", "/downloads"),
            ("/a b/ä€/x..y/...", "/a b/ä€/x..y/..."),
        ];
        for (input, normalised) in cases {
            check(input, Ok(normalised));
        }
        assert_eq!(DirPath::root().as_str(), "/");
    }

    #[test]
    fn dir_path_refuses_relative_escaping_and_control_characters() {
        check("downloads", Err(DirPathError::NotAbsolute("downloads".into())));
        check("", Err(DirPathError::NotAbsolute(String::new())));
        check("/a/../b", Err(DirPathError::ParentSegment("/a/../b".into())));
        check("/..", Err(DirPathError::ParentSegment("/..".into())));
        check("/a\\..\\x", Err(DirPathError::ParentSegment("/a\\..\\x".into())));
        check("/..\\x", Err(DirPathError::ParentSegment("/..\\x".into())));
        check("/a/\u{0}", Err(DirPathError::ControlCharacter('\0')));
        check("/a\nb", Err(DirPathError::ControlCharacter('\n')));
        let long = format!("/{}", "a/".repeat(MAX_DIR_PATH_LEN / 2));
        check(&long, Err(DirPathError::TooLong(long.len())));
        check(
            &format!("/{}", "a/".repeat(MAX_DIR_PATH_LEN / 2 - 1)),
            Ok(&long[..MAX_DIR_PATH_LEN - 2]),
        );
    }

    #[test]
    fn dir_path_refuses_a_directory_name_no_storage_accepts() {
        let longest = "a".repeat(MAX_SEGMENT_LEN);
        check(&format!("/x/{longest}"), Ok(&format!("/x/{longest}")));
        let too_long = "b".repeat(MAX_SEGMENT_LEN + 100);
        check(
            &format!("/x/{too_long}/y"),
            Err(DirPathError::SegmentTooLong(too_long.clone())),
        );
        let text = DirPath::parse(&format!("/{too_long}")).unwrap_err().to_string();
        assert!(text.contains("300 bytes") && text.contains("200"), "{text}");
        assert!(text.len() < 200, "the message repeats the whole name: {text}");
        check("/a/ /b", Err(DirPathError::BlankSegment("/a/ /b".into())));
    }

    #[test]
    fn dir_path_errors_are_lowercase_without_trailing_period() {
        let too_long = format!("/{}", "c".repeat(MAX_SEGMENT_LEN + 1));
        for input in ["x", "/..", "/\u{1}", too_long.as_str(), "/ "] {
            let text = DirPath::parse(input).unwrap_err().to_string();
            assert!(!text.ends_with('.'), "{text}");
            assert!(!text.starts_with(|c: char| c.is_uppercase()), "{text}");
        }
    }
}
