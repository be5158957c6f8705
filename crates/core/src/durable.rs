//! Durable file writes, the one place for them: every file chatlake commits (ledgers, run
//! summaries, removal logs, lake files, dedupe history) is written under a temporary name,
//! fsynced and renamed over its final name, so a reader sees the old file or the new one and
//! never half of one; the rename itself is durable once its directory is fsynced.
//!
//! State (ledgers, locks, run summaries, removal logs, dedupe history and spill, dead letters,
//! which hold message text) is private to the user running chatlake, whatever the umask: its
//! directories are created 0700 ([`create_private_dir_all`]) and its files 0600
//! ([`private_file_options`], [`create_private_file`], [`write_atomic`]). Sinks' files are for
//! readers who may be other users: they keep the umask.

use std::fs::{File, OpenOptions};
use std::io;
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
    let mut file = create_private_file(&tmp).map_err(|e| FileError::new(&tmp, e))?;
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

/// Options that open (or create) a state file readable and writable by its owner only (0600 on
/// Unix; a file that exists keeps its mode).
pub fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Creates (or truncates) a state file for writing, 0600: [`File::create`] for state.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Creates the state directory `dir` 0700 if it is missing, and its missing parents with the
/// umask's mode: a state_dir inside the lake (`./lake/_state`) must not make the lake's own
/// directory private. What is below a private directory is private with it, so every place
/// that makes a directory of state calls this for that directory.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        // Another thread made it in between.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
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

    #[cfg(unix)]
    #[test]
    fn state_is_private_whatever_the_umask_and_its_parents_are_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = crate::config::tests::tempdir();
        let lake = root.join("lake");
        let state = lake.join("_state");
        create_private_dir_all(&state).unwrap();
        create_private_dir_all(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let other = root.join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(
            mode(&lake),
            mode(&other),
            "the state_dir's parent keeps the umask"
        );
        let ledger = state.join("ledger.json");
        write_atomic(&ledger, b"{}").unwrap();
        assert_eq!(mode(&ledger), 0o600);
        let log = state.join("dead.jsonl");
        drop(create_private_file(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
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
