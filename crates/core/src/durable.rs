//! Durable file writes, the one place for them: every file chatlake commits (ledgers, run
//! summaries, removal logs, lake files, dedupe history) is written under a temporary name,
//! fsynced and renamed over its final name, so a reader sees the old file or the new one and
//! never half of one; the rename itself is durable once its directory is fsynced.

use std::fs::File;
use std::path::{Path, PathBuf};

/// A file-system operation failed on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    fn new(path: &Path, source: std::io::Error) -> Self {
        FileError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it and renames it into place. The
/// directory is not fsynced: call [`sync_dir`] when the rename must survive a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut file = File::create(&tmp).map_err(|e| FileError::new(&tmp, e))?;
    file.write_all(bytes).map_err(|e| FileError::new(&tmp, e))?;
    commit_file(file, &tmp, path)
}

/// Fsyncs `file`, written under the temporary name `tmp`, closes it and renames it to `path`.
/// The directory is not fsynced: call [`sync_dir`] (once for many files, if need be).
pub fn commit_file(file: File, tmp: &Path, path: &Path) -> Result<(), FileError> {
    file.sync_all().map_err(|e| FileError::new(tmp, e))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|e| FileError::new(path, e))
}

/// Makes the renames (and creations and deletions) in `dir` durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new(dir, e))
}

/// Makes the renames in `dir` durable, as far as the platform allows.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> Result<(), FileError> {
    // Directories cannot be opened for fsync here; the rename itself is what the OS offers.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = crate::config::tests::tempdir();
        let path = dir.join("last_run.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        sync_dir(&dir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("last_run.json")]);
    }

    #[test]
    fn an_error_names_the_file() {
        let dir = crate::config::tests::tempdir();
        let path = dir.join("missing").join("state.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.path, dir.join("missing").join("state.json.tmp"));
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", err.path.display()))
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
