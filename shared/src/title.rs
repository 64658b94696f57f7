//! Task titles, in SaveAny-Bot's form: `[tgfiles](file.pdf->local1:/downloads/file.pdf)`.
//!
//! Before the source has named the file, the link stands in the file's place
//! and the directory in the path's: `[tgfiles](https://t.me/c/1/2->local1:/downloads)`.

use crate::task::SourceKind;

/// The title of a task whose file is not known yet.
pub fn pending(source: SourceKind, link: &str, storage: &str, dir: &str) -> String {
    single(source, link, storage, dir)
}

/// The title of a task whose file is resolved to `path` inside `storage`.
pub fn resolved(source: SourceKind, file_name: &str, storage: &str, path: &str) -> String {
    single(source, file_name, storage, path)
}

/// `[<tag>](<file>-><storage>:<path>)`, built by concatenation: the API
/// builds one for every task it creates, and `format!` costs several times more.
fn single(source: SourceKind, file: &str, storage: &str, path: &str) -> String {
    ["[", source.title_tag(), "](", file, "->", storage, ":", path, ")"].concat()
}

/// The title of an album saved as several files, in the seed's batch form
/// `[tgfiles](3 files/12.34MB)`.
pub fn batch(source: SourceKind, files: usize, total_bytes: u64) -> String {
    format!(
        "[{}]({} files/{:.2}MB)",
        source.title_tag(),
        files,
        total_bytes as f64 / (1024.0 * 1024.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_follow_the_seed_contract() {
        assert_eq!(
            resolved(SourceKind::Telegram, "file.pdf", "local1", "/downloads/file.pdf"),
            "[tgfiles](file.pdf->local1:/downloads/file.pdf)"
        );
        assert_eq!(
            pending(SourceKind::Http, "https://example.com/a.bin", "local1", "/"),
            "[directlinks](https://example.com/a.bin->local1:/)"
        );
        assert_eq!(
            batch(SourceKind::Telegram, 3, 3 * 1024 * 1024 + 10_486),
            "[tgfiles](3 files/3.01MB)"
        );
    }
}
