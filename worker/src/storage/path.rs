//! Names and paths inside a storage, checked when they are made: a
//! [`FileName`] is one safe path component, a [`StorageDir`] a list of them,
//! and a [`StoragePath`] a directory plus a file name.
//!
//! Everything that reaches a storage goes through these types, so no name
//! taken from a header, a URL or Redis can climb out of the storage's base
//! path (`..`), smuggle a separator (`a/b`, `a\b`) or a NUL, or be empty.

use std::fmt;

use savestream_shared::task::TaskId;

/// How long a file name may be, in bytes. File systems allow 255; the rest
/// is room for what a download adds: the name of a task's own partial file
/// is `.<name>.<task id>.part`, 27 bytes more (the `_123` of a conflict
/// shortens the name itself). The API holds each directory of a
/// `dir_path` to the same ([`savestream_shared::dir_path::MAX_SEGMENT_LEN`]),
/// so that it never accepts a directory every worker refuses.
pub const MAX_NAME_BYTES: usize = savestream_shared::dir_path::MAX_SEGMENT_LEN;

/// The name used when a source gives nothing usable.
pub const FALLBACK_NAME: &str = "download";

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?} is not allowed: {reason}")]
pub struct PathError {
    /// "file name" or "path".
    pub what: &'static str,
    /// The refused text, cut to a printable length.
    pub text: String,
    pub reason: &'static str,
}

impl PathError {
    fn new(what: &'static str, text: &str, reason: &'static str) -> PathError {
        PathError {
            what,
            text: text.chars().take(120).collect(),
            reason,
        }
    }
}

/// One path component that is safe to join under a directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Accepts `text` as it is, or refuses it: no separators, no NUL or
    /// other control characters, not empty, not `.` or `..`, at most
    /// [`MAX_NAME_BYTES`]. Leading dots are fine (`.bashrc`).
    pub fn parse(text: &str) -> Result<FileName, PathError> {
        let refuse = |reason| Err(PathError::new("file name", text, reason));
        if text.is_empty() {
            return refuse("it is empty");
        }
        if text == "." || text == ".." {
            return refuse("it names a directory, not a file");
        }
        if text.contains(['/', '\\']) {
            return refuse("it contains a path separator");
        }
        if text.chars().any(char::is_control) {
            return refuse("it contains a NUL or another control character");
        }
        if text.len() > MAX_NAME_BYTES {
            return refuse("it is longer than 200 bytes");
        }
        if text.trim().is_empty() {
            return refuse("it is only white space");
        }
        Ok(FileName(text.to_owned()))
    }

    /// Makes a safe name out of any text (a header, a URL segment): path
    /// separators and control characters become `_`, surrounding white space
    /// goes, a name too long is shortened (keeping a short extension), and a
    /// name with nothing left, `.` or `..` becomes [`FALLBACK_NAME`]. A name
    /// that reads as a task's own partial file (`.C.T.part`, see
    /// [`own_partial_parts`]) gets `_` for its leading dot: the finished
    /// file would be taken for one, and removed when task `T` ends.
    pub fn sanitize(text: &str) -> FileName {
        let replaced: String = text
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
        let shortened = shorten(trimmed, MAX_NAME_BYTES);
        // `_` and `._` are what a bare separator leaves behind: no name at all.
        let meaningless = shortened.len() <= 2 && shortened.chars().all(|c| c == '.' || c == '_');
        match FileName::parse(&shortened) {
            Ok(_) if own_partial_parts(&shortened).is_some() => FileName(format!("_{}", &shortened[1..])),
            Ok(name) if !meaningless => name,
            _ => FileName(FALLBACK_NAME.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name split before its extension: `a.tar.gz` gives `("a.tar", ".gz")`,
    /// `.bashrc` and `README` give no extension.
    pub fn stem_and_extension(&self) -> (&str, &str) {
        match self.0.rfind('.') {
            Some(0) | None => (&self.0, ""),
            Some(dot) => self.0.split_at(dot),
        }
    }

    /// The `number`th alternative for a taken name: `name_1.ext`, `name_2.ext`, …
    pub fn numbered(&self, number: u32) -> FileName {
        let (stem, extension) = self.stem_and_extension();
        let suffix = format!("_{number}");
        // Keep the result within the limit by shortening the stem, never the suffix.
        let room = MAX_NAME_BYTES.saturating_sub(suffix.len() + extension.len());
        let stem = cut_at_char_boundary(stem, room);
        FileName(format!("{stem}{suffix}{extension}"))
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name and the task of a task's own partial file, `.C.T.part` (the
/// local storage writes file `C` of task `T` through it), read back from
/// its file name; `None` for any other file. A task id holds no dot, so `T`
/// is what follows the last one.
pub fn own_partial_parts(file_name: &str) -> Option<(FileName, TaskId)> {
    let (name, owner) = file_name
        .strip_prefix('.')?
        .strip_suffix(".part")?
        .rsplit_once('.')?;
    Some((FileName::parse(name).ok()?, TaskId::parse(owner).ok()?))
}

/// Shortens `text` to at most `limit` bytes, keeping an extension of up to
/// 16 bytes so that the file still opens with the right program.
fn shorten(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let extension = match text.rfind('.') {
        Some(dot) if dot > 0 && text.len() - dot <= 16 => &text[dot..],
        _ => "",
    };
    let stem = cut_at_char_boundary(&text[..text.len() - extension.len()], limit - extension.len());
    format!("{stem}{extension}")
}

fn cut_at_char_boundary(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A directory inside a storage: `/`, `/downloads`, `/a/b`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StorageDir(Vec<FileName>);

impl StorageDir {
    /// Reads a `dir_path`: `/` and `\` separate components, empty and `.`
    /// components are dropped, and `..` (or any component [`FileName`]
    /// refuses) refuses the whole path rather than being resolved.
    pub fn parse(text: &str) -> Result<StorageDir, PathError> {
        let mut components = Vec::new();
        for component in text.split(['/', '\\']) {
            if component.is_empty() || component == "." {
                continue;
            }
            if component == ".." {
                return Err(PathError::new(
                    "path",
                    text,
                    "it climbs out of its directory with `..`",
                ));
            }
            match FileName::parse(component) {
                Ok(name) => components.push(name),
                Err(error) => return Err(PathError::new("path", text, error.reason)),
            }
        }
        Ok(StorageDir(components))
    }

    pub fn components(&self) -> &[FileName] {
        &self.0
    }
}

impl fmt::Display for StorageDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for component in &self.0 {
            write!(f, "/{component}")?;
        }
        Ok(())
    }
}

/// A file inside a storage, as tasks record it: `/downloads/file.pdf`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoragePath {
    pub dir: StorageDir,
    pub name: FileName,
}

impl StoragePath {
    pub fn new(dir: StorageDir, name: FileName) -> StoragePath {
        StoragePath { dir, name }
    }

    /// Reads a path recorded earlier (a resumed attempt's `path`), checking
    /// it as strictly as a new one.
    pub fn parse(text: &str) -> Result<StoragePath, PathError> {
        let mut dir = StorageDir::parse(text)?;
        match dir.0.pop() {
            Some(name) => Ok(StoragePath { dir, name }),
            None => Err(PathError::new("path", text, "it names no file")),
        }
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for component in self.dir.components() {
            write!(f, "/{component}")?;
        }
        write!(f, "/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_file_names_are_refused() {
        for hostile in [
            "",
            ".",
            "..",
            "../../etc/passwd",
            "a/../../b",
            "a/b",
            "..\\..\\windows",
            "a\\b",
            "nul\0byte",
            "line\nbreak",
            "   ",
            &"x".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(FileName::parse(hostile).is_err(), "{hostile:?} was accepted");
        }
    }

    #[test]
    fn ordinary_file_names_are_accepted() {
        for fine in [
            ".bashrc",
            "file.pdf",
            "a b.txt",
            "...",
            "наш файл.zip",
            "..hidden",
        ] {
            assert_eq!(FileName::parse(fine).map(|name| name.0), Ok(fine.to_owned()));
        }
    }

    #[test]
    fn sanitizing_makes_any_text_a_safe_name() {
        for (text, expected) in [
            ("file.pdf", "file.pdf"),
            ("../../etc/passwd", ".._.._etc_passwd"),
            ("a/../../b", "a_.._.._b"),
            ("nul\0byte", "nul_byte"),
            ("", FALLBACK_NAME),
            (".", FALLBACK_NAME),
            ("..", FALLBACK_NAME),
            ("/", FALLBACK_NAME),
            ("  spaced.txt  ", "spaced.txt"),
            ("C:\\Users\\x.doc", "C:_Users_x.doc"),
        ] {
            assert_eq!(FileName::sanitize(text).as_str(), expected, "{text:?}");
        }
    }

    #[test]
    fn sanitizing_a_name_that_reads_as_a_tasks_partial_file_changes_it() {
        let task = TaskId::generate();
        let partial_like = format!(".x.{task}.part");
        assert!(own_partial_parts(&partial_like).is_some());

        let name = FileName::sanitize(&partial_like);

        assert_eq!(name.as_str(), format!("_x.{task}.part"));
        assert!(own_partial_parts(name.as_str()).is_none());
        // Names that only look alike stay as they are.
        for fine in [
            ".x.not-a-task-id.part".to_owned(),
            format!("x.{task}.part"),
            format!(".x.{task}.part.zip"),
            format!(".{task}.part"),
        ] {
            assert_eq!(FileName::sanitize(&fine).as_str(), fine, "{fine:?}");
        }
    }

    #[test]
    fn sanitizing_a_long_name_keeps_its_extension_and_char_boundaries() {
        let long = format!("{}.tar.gz", "é".repeat(300));
        let name = FileName::sanitize(&long);
        assert!(name.as_str().len() <= MAX_NAME_BYTES);
        assert!(name.as_str().ends_with(".gz"), "{name}");
        assert!(FileName::parse(name.as_str()).is_ok());
    }

    #[test]
    fn numbered_names_go_before_the_extension() {
        let name = FileName::parse("report.tar.gz").unwrap();
        assert_eq!(name.numbered(1).as_str(), "report.tar_1.gz");
        assert_eq!(
            FileName::parse("README").unwrap().numbered(2).as_str(),
            "README_2"
        );
        assert_eq!(
            FileName::parse(".bashrc").unwrap().numbered(3).as_str(),
            ".bashrc_3"
        );
        let long = FileName::parse(&format!("{}.bin", "x".repeat(196))).unwrap();
        let numbered = long.numbered(12345);
        assert!(numbered.as_str().len() <= MAX_NAME_BYTES);
        assert!(numbered.as_str().ends_with("_12345.bin"));
    }

    #[test]
    fn directories_are_normalised_and_dot_dot_is_refused() {
        for (text, expected) in [
            ("/", "/"),
            ("", "/"),
            ("/downloads", "/downloads"),
            ("downloads/", "/downloads"),
            ("//a/./b//", "/a/b"),
            ("\\a\\b", "/a/b"),
        ] {
            assert_eq!(StorageDir::parse(text).unwrap().to_string(), expected, "{text:?}");
        }
        for hostile in ["/..", "../x", "/a/../../b", "a/..", "/a/\0/b"] {
            assert!(StorageDir::parse(hostile).is_err(), "{hostile:?} was accepted");
        }
    }

    #[test]
    fn recorded_paths_parse_back_and_hostile_ones_are_refused() {
        let path = StoragePath::parse("/downloads/file.pdf").unwrap();
        assert_eq!(path.name.as_str(), "file.pdf");
        assert_eq!(path.dir.to_string(), "/downloads");
        assert_eq!(path.to_string(), "/downloads/file.pdf");
        assert_eq!(StoragePath::parse("/f").unwrap().to_string(), "/f");
        for hostile in ["/", "", "/../etc/passwd", "/a/../../b"] {
            assert!(StoragePath::parse(hostile).is_err(), "{hostile:?} was accepted");
        }
    }
}
