//! The `local` storage: files under a directory of this machine.
//!
//! A file is written as `<name>.part` beside its final place and renamed
//! when complete. Every directory is checked after it is created and its
//! symlinks resolved, so nothing is written outside the base path even when
//! someone plants a symlink inside it. Bytes are appended through a small
//! buffer, so memory stays flat whatever the size of the file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{FileName, PartialFile, Storage, StorageDir, StorageError, StoragePath};

/// How many alternative names (`name_1` … ) are tried before giving up.
const MAX_ALTERNATIVES: u32 = 10_000;

/// The write buffer of a partial file: large enough to keep system calls
/// few, small enough that memory does not depend on the file.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct LocalStorage {
    name: String,
    /// The canonical base path: every file must resolve below it.
    base: PathBuf,
}

impl LocalStorage {
    /// Creates `base_path` when missing and remembers its canonical form.
    pub fn new(name: &str, base_path: &Path) -> Result<LocalStorage, StorageError> {
        let io = |action, source| StorageError::Io {
            storage: name.to_owned(),
            action,
            path: base_path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(base_path).map_err(|source| io("create the base path", source))?;
        let base = std::fs::canonicalize(base_path).map_err(|source| io("resolve the base path", source))?;
        Ok(LocalStorage {
            name: name.to_owned(),
            base,
        })
    }

    pub fn base_path(&self) -> &Path {
        &self.base
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

    /// The directory of `dir` on disk, created when missing, after checking
    /// that it really is under the base path.
    async fn directory(&self, dir: &StorageDir) -> Result<PathBuf, StorageError> {
        let mut joined = self.base.clone();
        for component in dir.components() {
            joined.push(component.as_str());
        }
        tokio::fs::create_dir_all(&joined)
            .await
            .map_err(|source| self.io_error("create the directory", dir, source))?;
        let canonical = tokio::fs::canonicalize(&joined)
            .await
            .map_err(|source| self.io_error("resolve the directory", dir, source))?;
        if !canonical.starts_with(&self.base) {
            return Err(StorageError::Escapes {
                storage: self.name.clone(),
                path: dir.to_string(),
            });
        }
        Ok(canonical)
    }

    /// The finished file and its partial file, on disk.
    async fn locate(&self, path: &StoragePath) -> Result<(PathBuf, PathBuf), StorageError> {
        let directory = self.directory(&path.dir).await?;
        Ok((
            directory.join(path.name.as_str()),
            directory.join(part_name(&path.name)),
        ))
    }
}

fn part_name(name: &FileName) -> String {
    format!("{name}.part")
}

/// Whether anything (a file, a directory, a dangling symlink) is at `path`.
async fn occupied(path: &Path) -> std::io::Result<bool> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

async fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reserve(&self, dir: &StorageDir, name: &FileName) -> Result<StoragePath, StorageError> {
        let directory = self.directory(dir).await?;
        for number in 0..MAX_ALTERNATIVES {
            let candidate = if number == 0 {
                name.clone()
            } else {
                name.numbered(number)
            };
            let path = StoragePath::new(dir.clone(), candidate.clone());
            let target = directory.join(candidate.as_str());
            if occupied(&target)
                .await
                .map_err(|source| self.io_error("check", &path, source))?
            {
                continue;
            }
            // Creating the partial file exclusively is the reservation: of
            // two tasks that want the same name at once, one gets `_1`.
            let part = directory.join(part_name(&candidate));
            match OpenOptions::new().write(true).create_new(true).open(&part).await {
                Ok(_) => return Ok(path),
                Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(self.io_error("create", &path, source)),
            }
        }
        Err(StorageError::NoFreeName {
            storage: self.name.clone(),
            path: StoragePath::new(dir.clone(), name.clone()).to_string(),
            tries: MAX_ALTERNATIVES,
        })
    }

    async fn open(&self, path: &StoragePath) -> Result<Box<dyn PartialFile>, StorageError> {
        let (target, part) = self.locate(path).await?;
        // A symlink planted in place of the partial file would be followed
        // by open(2) and written through, outside the base path.
        if let Ok(metadata) = tokio::fs::symlink_metadata(&part).await {
            if !metadata.file_type().is_file() {
                return Err(StorageError::Escapes {
                    storage: self.name.clone(),
                    path: format!("{path}.part"),
                });
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .map_err(|source| self.io_error("open", format!("{path}.part"), source))?;
        let len = file
            .metadata()
            .await
            .map_err(|source| self.io_error("read the size of", format!("{path}.part"), source))?
            .len();
        Ok(Box::new(LocalPartialFile {
            storage: self.name.clone(),
            path: path.to_string(),
            part,
            target,
            file: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            len,
        }))
    }

    async fn stored_size(&self, path: &StoragePath) -> Result<Option<u64>, StorageError> {
        let (target, _) = self.locate(path).await?;
        match tokio::fs::symlink_metadata(&target).await {
            Ok(metadata) if metadata.file_type().is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io_error("check", path, source)),
        }
    }

    async fn discard(&self, path: &StoragePath) -> Result<(), StorageError> {
        let (_, part) = self.locate(path).await?;
        remove_if_present(&part)
            .await
            .map_err(|source| self.io_error("remove", format!("{path}.part"), source))
    }

    async fn remove(&self, path: &StoragePath) -> Result<(), StorageError> {
        let (target, _) = self.locate(path).await?;
        remove_if_present(&target)
            .await
            .map_err(|source| self.io_error("remove", path, source))
    }
}

struct LocalPartialFile {
    storage: String,
    /// The storage path, for messages.
    path: String,
    part: PathBuf,
    target: PathBuf,
    /// Opened for appending, so after a truncate writes start at zero again.
    file: BufWriter<File>,
    len: u64,
}

impl LocalPartialFile {
    fn io_error(&self, action: &'static str, source: std::io::Error) -> StorageError {
        StorageError::Io {
            storage: self.storage.clone(),
            action,
            path: format!("{}.part", self.path),
            source,
        }
    }
}

#[async_trait]
impl PartialFile for LocalPartialFile {
    fn len(&self) -> u64 {
        self.len
    }

    async fn truncate(&mut self) -> Result<(), StorageError> {
        self.file
            .flush()
            .await
            .map_err(|source| self.io_error("write", source))?;
        self.file
            .get_mut()
            .set_len(0)
            .await
            .map_err(|source| self.io_error("truncate", source))?;
        self.len = 0;
        Ok(())
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all(chunk)
            .await
            .map_err(|source| self.io_error("write", source))?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StorageError> {
        self.file
            .flush()
            .await
            .map_err(|source| self.io_error("write", source))
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        self.file
            .flush()
            .await
            .map_err(|source| self.io_error("write", source))?;
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(|source| self.io_error("sync", source))?;
        // The path was reserved for this task when it was resolved, so a
        // file already there is this task's own, from an attempt that
        // finished the file but died before recording it.
        tokio::fs::rename(&self.part, &self.target)
            .await
            .map_err(|source| StorageError::Io {
                storage: self.storage.clone(),
                action: "rename the partial file to",
                path: self.path.clone(),
                source,
            })?;
        // Make the rename itself durable; a file system that cannot sync a
        // directory loses nothing but that guarantee.
        if let Some(directory) = self.target.parent() {
            if let Ok(directory) = File::open(directory).await {
                let _ = directory.sync_all().await;
            }
        }
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &tempfile::TempDir) -> LocalStorage {
        LocalStorage::new("local1", &dir.path().join("base")).unwrap()
    }

    fn name(text: &str) -> FileName {
        FileName::parse(text).unwrap()
    }

    async fn save(storage: &LocalStorage, dir: &str, file: &str, bytes: &[u8]) -> StoragePath {
        let path = storage
            .reserve(&StorageDir::parse(dir).unwrap(), &name(file))
            .await
            .unwrap();
        let mut partial = storage.open(&path).await.unwrap();
        partial.write(bytes).await.unwrap();
        partial.finish().await.unwrap();
        path
    }

    #[tokio::test]
    async fn a_file_is_written_through_a_part_file_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let path = storage
            .reserve(&StorageDir::parse("/a/b").unwrap(), &name("file.bin"))
            .await
            .unwrap();
        assert_eq!(path.to_string(), "/a/b/file.bin");
        let part = storage.base_path().join("a/b/file.bin.part");
        assert!(part.exists(), "the reservation is the partial file");

        let mut partial = storage.open(&path).await.unwrap();
        assert_eq!(partial.len(), 0);
        partial.write(b"hello ").await.unwrap();
        partial.write(b"world").await.unwrap();
        assert_eq!(storage.stored_size(&path).await.unwrap(), None);
        assert_eq!(partial.finish().await.unwrap(), 11);

        assert!(!part.exists());
        assert_eq!(
            std::fs::read(storage.base_path().join("a/b/file.bin")).unwrap(),
            b"hello world"
        );
        assert_eq!(storage.stored_size(&path).await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn a_taken_name_gets_a_number_before_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let first = save(&storage, "/", "file.tar.gz", b"1").await;
        let second = save(&storage, "/", "file.tar.gz", b"2").await;
        // A name held by a download in progress is taken too.
        let third = storage
            .reserve(&StorageDir::parse("/").unwrap(), &name("file.tar.gz"))
            .await
            .unwrap();
        let fourth = storage
            .reserve(&StorageDir::parse("/").unwrap(), &name("file.tar.gz"))
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
    async fn reopening_a_part_file_resumes_from_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let path = storage
            .reserve(&StorageDir::parse("/").unwrap(), &name("big.bin"))
            .await
            .unwrap();
        let mut partial = storage.open(&path).await.unwrap();
        partial.write(&[1u8; 1000]).await.unwrap();
        partial.flush().await.unwrap();
        // The worker dies here: what was flushed to the partial file stays.
        drop(partial);

        let mut resumed = storage.open(&path).await.unwrap();
        assert_eq!(resumed.len(), 1000);
        resumed.write(&[2u8; 500]).await.unwrap();
        assert_eq!(resumed.finish().await.unwrap(), 1500);
        let bytes = std::fs::read(storage.base_path().join("big.bin")).unwrap();
        assert_eq!(bytes.len(), 1500);
        assert!(bytes[..1000].iter().all(|&byte| byte == 1));
        assert!(bytes[1000..].iter().all(|&byte| byte == 2));
    }

    #[tokio::test]
    async fn truncating_starts_the_part_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let path = storage
            .reserve(&StorageDir::parse("/").unwrap(), &name("f"))
            .await
            .unwrap();
        let mut partial = storage.open(&path).await.unwrap();
        partial.write(b"stale bytes").await.unwrap();
        partial.flush().await.unwrap();
        drop(partial);

        let mut partial = storage.open(&path).await.unwrap();
        assert_eq!(partial.len(), 11);
        partial.truncate().await.unwrap();
        assert_eq!(partial.len(), 0);
        partial.write(b"fresh").await.unwrap();
        partial.finish().await.unwrap();
        assert_eq!(std::fs::read(storage.base_path().join("f")).unwrap(), b"fresh");
    }

    #[tokio::test]
    async fn discard_and_remove_delete_the_part_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
        let saved = save(&storage, "/", "done.txt", b"x").await;
        let pending = storage
            .reserve(&StorageDir::parse("/").unwrap(), &name("pending.txt"))
            .await
            .unwrap();

        storage.discard(&pending).await.unwrap();
        storage.remove(&saved).await.unwrap();
        // Both are idempotent.
        storage.discard(&pending).await.unwrap();
        storage.remove(&saved).await.unwrap();

        assert_eq!(std::fs::read_dir(storage.base_path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn paths_that_would_leave_the_base_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir);
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
            .reserve(&StorageDir::parse("/escape").unwrap(), &name("f"))
            .await;
        assert!(
            matches!(escaped, Err(StorageError::Escapes { .. })),
            "{escaped:?}"
        );
        assert!(escaped.unwrap_err().is_permanent());
        // So is a symlink in place of a partial file.
        std::os::unix::fs::symlink(outside.join("target"), storage.base_path().join("g.part")).unwrap();
        let planted = storage.open(&StoragePath::parse("/g").unwrap()).await;
        assert!(
            matches!(planted, Err(StorageError::Escapes { .. })),
            "{:?}",
            planted.err()
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing was written outside"
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
}
