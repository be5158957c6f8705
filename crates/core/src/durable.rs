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
//!
//! A state directory kept in an object store is worked on as a local copy: a [`StateSync`]
//! installed for that copy ([`install_state_sync`]) is told of every file [`commit_file`] makes
//! durable below it, before `commit_file` returns, so the store receives state files in the
//! order the local protocol makes them durable.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
///
/// If a [`StateSync`] is installed for a directory above `path`, it is told of the file before
/// this returns, and its failure is this call's.
pub fn commit_file(file: File, tmp: &Path, path: &Path) -> Result<(), FileError> {
    file.sync_all().map_err(|e| FileError::new(tmp, e))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|e| FileError::new(path, e))?;
    notify_written(path)
}

/// Keeps a copy of a state directory elsewhere (an object store) up to date with the files
/// made durable in it.
///
/// Why a hook here and not in each writer: every state file that must survive a run (ledgers,
/// checkpoints, dedupe history, removal logs, run summaries) is made durable by
/// [`commit_file`], from core and from transforms alike, each of which knows only a directory.
/// The local protocol already makes durable whatever a ledger refers to before the ledger
/// itself; a sync that finishes before `commit_file` returns keeps that order in the copy.
pub trait StateSync: Send + Sync {
    /// `path` (below the directory this sync was installed for) was just made durable.
    /// An error fails the write that made it (a ledger that cannot reach the store is not
    /// committed).
    fn written(&self, path: &Path) -> Result<(), crate::BoxError>;
}

type Installed = Vec<(PathBuf, Arc<dyn StateSync>)>;

/// The syncs installed in this process, by the directory they watch. Process-wide because the
/// files are written from many places that are handed only a directory (see [`StateSync`]).
static STATE_SYNCS: RwLock<Installed> = RwLock::new(Vec::new());

/// Tells `sync` of every file [`commit_file`] makes durable below `dir`, until the returned
/// guard is dropped.
pub fn install_state_sync(dir: &Path, sync: Arc<dyn StateSync>) -> StateSyncGuard {
    let mut syncs = STATE_SYNCS.write().unwrap_or_else(|e| e.into_inner());
    syncs.push((dir.to_path_buf(), sync.clone()));
    StateSyncGuard {
        dir: dir.to_path_buf(),
        sync,
    }
}

/// Uninstalls a [`StateSync`] when dropped.
#[must_use = "the sync is uninstalled when the guard is dropped"]
pub struct StateSyncGuard {
    dir: PathBuf,
    sync: Arc<dyn StateSync>,
}

impl std::fmt::Debug for StateSyncGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSyncGuard")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for StateSyncGuard {
    fn drop(&mut self) {
        let mut syncs = STATE_SYNCS.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = syncs
            .iter()
            .position(|(d, s)| d == &self.dir && Arc::ptr_eq(s, &self.sync))
        {
            syncs.remove(i);
        }
    }
}

fn notify_written(path: &Path) -> Result<(), FileError> {
    let syncs: Vec<Arc<dyn StateSync>> = STATE_SYNCS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(dir, _)| path.starts_with(dir))
        .map(|(_, sync)| sync.clone())
        .collect();
    for sync in syncs {
        sync.written(path)
            .map_err(|e| FileError::new(path, io::Error::other(e)))?;
    }
    Ok(())
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
    fn an_installed_sync_hears_of_durable_files_below_its_directory_only() {
        #[derive(Default)]
        struct Heard(std::sync::Mutex<Vec<PathBuf>>);
        impl StateSync for Heard {
            fn written(&self, path: &Path) -> Result<(), crate::BoxError> {
                if path.ends_with("refused.json") {
                    return Err("the store said no".into());
                }
                self.0.lock().unwrap().push(path.to_path_buf());
                Ok(())
            }
        }
        let root = crate::config::tests::tempdir();
        let state = root.join("state");
        let lake = root.join("lake");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&lake).unwrap();
        let heard = Arc::new(Heard::default());
        let guard = install_state_sync(&state, heard.clone());
        write_atomic(&state.join("ledger.json"), b"{}").unwrap();
        write_atomic(&lake.join("part.parquet"), b"x").unwrap();
        let err = write_atomic(&state.join("refused.json"), b"{}").unwrap_err();
        assert!(err.to_string().contains("the store said no"), "{err}");
        drop(guard);
        write_atomic(&state.join("after.json"), b"{}").unwrap();
        assert_eq!(*heard.0.lock().unwrap(), vec![state.join("ledger.json")]);
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
