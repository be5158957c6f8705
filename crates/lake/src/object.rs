//! A file sink's lake in an object store (S3 and S3-compatible servers, Google Cloud Storage,
//! Azure; spec section 5), where there is no rename to make a finished file appear at once.
//!
//! [`crate::FileSink`] writes exactly as into a local lake, but into a spool directory of its
//! own on local disk ([`Spool`]), so memory stays flat whatever a window holds. The commit
//! protocol:
//!
//! 1. a window's rows go to `.tmp` files in the spool; nothing of it is in the store;
//! 2. the window's commit finishes its files and uploads each to `<prefix>/<partition
//!    directories>/<the same file name>` ([`chatlake_store::Store::upload`]: one PUT, or a
//!    multipart upload completed only at its end, so an object appears whole or not at all),
//!    then deletes the spool file;
//! 3. the ledger stays the commit point: the window is listed once every sink committed it;
//! 4. a run killed before that leaves objects of a window the ledger does not list, and maybe an
//!    unfinished multipart upload: the next run's start aborts the upload and deletes those
//!    objects, as a local lake's start removes the renamed files of uncommitted windows (the
//!    same names, the same rule: [`window_key_of`]);
//! 5. rows a later run replaces: each object is downloaded to the spool, filtered by the format,
//!    and uploaded over its own key (a PUT replaces an object atomically) or deleted.
//!
//! The sink's state runs on tokio's blocking pool, so the store's requests are driven from
//! there with [`block_on`].

use std::collections::HashSet;
use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};

use chatlake_core::removal::Removal;
use chatlake_store::{ObjectLocation, ObjectPath, StorageOptions, Store};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::format::FileFormat;
use crate::layout::window_key_of;
use crate::remove::{Keys, Removed};

/// The directory below [`std::env::temp_dir`] that holds the spools of every sink writing to an
/// object store (`TMPDIR` moves it).
pub const SPOOL_DIR: &str = "chatlake-spool";

/// How old a probe object of the start-up check must be to be taken for one a killed run left
/// (well beyond object_store's default retry timeout of three minutes).
const STALE_PROBE_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// A sink's object store, opened and cleaned at the start of a run, with its spool.
/// Files of one window uploaded at once. Each holds at most a part of
/// [`chatlake_store::PART_BYTES`] × (parts in flight + 1) in memory, so this bounds what a
/// window's upload holds.
const UPLOADS_IN_FLIGHT: usize = 4;

pub(crate) struct ObjectLake {
    store: Store,
    spool: Spool,
    /// This sink's file names start with it and end with `extension`.
    prefix: String,
    extension: String,
}

impl ObjectLake {
    /// Opens the store at `location` and makes it ready for this run of sink `sink`, whose
    /// files' names start with `prefix` and end with `extension`: checks that the bucket is
    /// there and the credentials may list, write and delete (a missing bucket fails the run
    /// here, naming the URL and what the store answered, not in the middle of a window); aborts
    /// the multipart uploads a killed run left; when `committed` is given, deletes this sink's
    /// objects of windows it does not list; and makes the spool.
    pub(crate) fn start(
        location: &ObjectLocation,
        storage: &StorageOptions,
        pipeline: &str,
        sink: &str,
        prefix: &str,
        extension: &str,
        committed: Option<&HashSet<String>>,
    ) -> Result<ObjectLake> {
        let store = Store::open(location, storage)?;
        block_on(store.check())??;
        let owned = |key: &ObjectPath| key.filename().is_some_and(|n| n.starts_with(prefix));
        let aborted = block_on(store.abort_unfinished_uploads_of(owned))??;
        if aborted > 0 {
            tracing::warn!(
                sink,
                url = %location,
                aborted,
                "aborted multipart uploads an interrupted run left unfinished"
            );
        }
        block_on(store.remove_stale_probes(STALE_PROBE_AGE))??;
        if let Some(committed) = committed {
            remove_uncommitted(&store, sink, prefix, extension, committed)?;
        }
        let spool = Spool::create(pipeline, sink)?;
        Ok(ObjectLake {
            store,
            spool,
            prefix: prefix.to_string(),
            extension: extension.to_string(),
        })
    }

    /// The local directory the sink writes its files in before they are uploaded.
    pub(crate) fn spool(&self) -> &Path {
        &self.spool.dir
    }

    /// Uploads the committed files of one window from the spool to their keys, deleting each
    /// spool file once its object is complete. If one fails, the window's objects already
    /// uploaded are deleted again (best effort: the next run's start deletes what is left, as
    /// the ledger will not list the window) and so are its spool files.
    /// `listed`: the window is in the ledger already (loaded again, or reset for reloading):
    /// its uploaded objects then replace every earlier object of the window, and on a failure
    /// the ones already uploaded stay (they overwrote the window's own earlier objects).
    pub(crate) fn upload(
        &self,
        files: &[PathBuf],
        sink: &str,
        window: &str,
        listed: bool,
    ) -> Result<()> {
        // Several files of the window go at once: each is a round trip or more to the store,
        // and a window spans a file per partition (31 for a month by day).
        let sent: Vec<Result<(u64, ObjectPath)>> = block_on(
            futures::stream::iter(files.iter().map(|path| async move {
                let key = self.key_of(path)?;
                let size = self.store.upload(path, &key).await?;
                remove_quietly(path);
                Ok((size, key))
            }))
            .buffered(UPLOADS_IN_FLIGHT)
            .collect(),
        )?;
        let mut uploaded = Vec::with_capacity(files.len());
        let mut bytes = 0;
        let mut first_error = None;
        for result in sent {
            match result {
                Ok((size, key)) => {
                    bytes += size;
                    uploaded.push(key);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for key in uploaded.iter().filter(|_| !listed) {
                if let Ok(Err(e)) = block_on(self.store.delete(key)) {
                    tracing::warn!(
                        sink,
                        window,
                        "could not delete an uploaded object of a failed window: {e}"
                    );
                }
            }
            files.iter().for_each(|p| remove_quietly(p));
            return Err(e);
        }
        tracing::info!(
            sink,
            window,
            url = %self.store.location(),
            objects = uploaded.len(),
            bytes,
            "uploaded window"
        );
        if listed {
            let uploaded: HashSet<&str> = uploaded.iter().map(|k| k.as_ref()).collect();
            let stale = self.delete_windows(&HashSet::from([window.to_string()]), |key| {
                !uploaded.contains(key.as_ref())
            })?;
            if stale > 0 {
                tracing::info!(
                    sink,
                    window,
                    removed = stale,
                    "a window loaded again is committed; its earlier objects are replaced"
                );
            }
        }
        Ok(())
    }

    /// Deletes this sink's objects of the windows `keys` that `also` accepts; returns how many.
    pub(crate) fn delete_windows(
        &self,
        keys: &HashSet<String>,
        also: impl Fn(&ObjectPath) -> bool,
    ) -> Result<u64> {
        let mut removed = 0;
        for meta in block_on(self.store.list(""))?? {
            let listed = meta
                .location
                .filename()
                .and_then(|name| window_key_of(name, &self.prefix, &self.extension))
                .is_some_and(|w| keys.contains(w));
            if listed && also(&meta.location) {
                block_on(self.store.delete(&meta.location))??;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The key a spool file goes to: the same path below the location as below the spool.
    /// Built with [`ObjectPath::parse`], which keeps the text as it is: a Hive-escaped value
    /// (`%3A`) must reach the store as written, not escaped again.
    fn key_of(&self, path: &Path) -> Result<ObjectPath> {
        let bad = |message: String| Error::ObjectKey {
            path: path.to_path_buf(),
            message,
        };
        let relative = path
            .strip_prefix(&self.spool.dir)
            .map_err(|_| bad("not in the spool directory".into()))?;
        let mut parts: Vec<&str> = Vec::new();
        let prefix = self.store.location().prefix().as_ref();
        if !prefix.is_empty() {
            parts.push(prefix);
        }
        for component in relative.components() {
            parts.push(
                component
                    .as_os_str()
                    .to_str()
                    .ok_or_else(|| bad("the name is not UTF-8".into()))?,
            );
        }
        ObjectPath::parse(parts.join("/")).map_err(|e| bad(e.to_string()))
    }

    /// The `name=value` directory segments of `key` below the location, as stored (escaped).
    fn directory_segments(&self, key: &ObjectPath) -> Vec<(String, String)> {
        let prefix = self.store.location().prefix().as_ref();
        let below = key
            .as_ref()
            .strip_prefix(prefix)
            .unwrap_or(key.as_ref())
            .trim_start_matches('/');
        let mut segments: Vec<&str> = below.split('/').collect();
        segments.pop();
        segments
            .into_iter()
            .filter_map(|s| {
                let (name, value) = s.split_once('=')?;
                Some((name.to_string(), value.to_string()))
            })
            .collect()
    }

    /// Takes the rows `removal` names out of this sink's objects of `removal.window` (see
    /// [`crate::remove`] for how keys are matched). Each object is downloaded to the spool and
    /// counted; one with rows to drop is replaced by an upload of the filtered copy over its
    /// key, or deleted when no row is left. Either is atomic, so a kill leaves each object old
    /// or new, and rows already gone are not found again.
    pub(crate) fn remove_rows(
        &self,
        format: &dyn FileFormat,
        partition_by: &[String],
        prefix: &str,
        removal: &Removal,
    ) -> Result<Removed> {
        let mut removed = Removed::default();
        if removal.keys.num_rows() == 0 {
            return Ok(removed);
        }
        let keys = Keys::new(removal, partition_by)?;
        let mut objects: Vec<ObjectPath> = block_on(self.store.list(""))??
            .into_iter()
            .map(|meta| meta.location)
            .filter(|key| {
                key.filename()
                    .and_then(|n| window_key_of(n, prefix, format.extension()))
                    == Some(removal.window.as_str())
            })
            .collect();
        objects.sort();
        let work = self.spool.dir.join("_remove");
        fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        let (original, copy) = (work.join("object"), work.join("copy"));
        for key in objects {
            let (columns, wanted) = keys.for_directory(&self.directory_segments(&key));
            if wanted.is_empty() {
                continue;
            }
            let goes = |k: &[u8]| wanted.contains(k);
            let url = self.store.location().display_key(&key);
            let filter = |output: Option<File>| {
                let input = File::open(&original).map_err(|e| Error::io(&original, e))?;
                format
                    .filter_file(input, &columns, &goes, output)
                    .map_err(|source| Error::Remove {
                        path: PathBuf::from(&url),
                        source,
                    })
            };
            let done = (|| -> Result<()> {
                block_on(self.store.download(&key, &original))??;
                let counted = filter(None)?;
                if counted.dropped == 0 {
                    return Ok(());
                }
                if counted.kept == 0 {
                    block_on(self.store.delete(&key))??;
                    removed.deleted += 1;
                } else {
                    let output = File::create(&copy).map_err(|e| Error::io(&copy, e))?;
                    // The format hands the file back finished; closing it is enough, as the
                    // copy only has to last until its upload.
                    drop(filter(Some(output))?.output);
                    block_on(self.store.upload(&copy, &key))??;
                    removed.rewritten += 1;
                }
                removed.rows += counted.dropped;
                Ok(())
            })();
            remove_quietly(&original);
            remove_quietly(&copy);
            done?;
        }
        Ok(removed)
    }

    /// The location, for messages.
    pub(crate) fn url(&self) -> String {
        self.store.location().to_string()
    }
}

/// Deletes this sink's objects (names starting with `prefix`, ending in `.extension`) of windows
/// `committed` does not list: a run that stopped before its commit point uploaded them.
fn remove_uncommitted(
    store: &Store,
    sink: &str,
    prefix: &str,
    extension: &str,
    committed: &HashSet<String>,
) -> Result<usize> {
    let mut removed = 0;
    for meta in block_on(store.list(""))?? {
        let Some(window) = meta
            .location
            .filename()
            .and_then(|name| window_key_of(name, prefix, extension))
        else {
            continue;
        };
        if committed.contains(window) {
            continue;
        }
        block_on(store.delete(&meta.location))??;
        tracing::warn!(
            sink,
            object = %store.location().display_key(&meta.location),
            "deleted an object of a window the ledger does not list (an interrupted run uploaded it)"
        );
        removed += 1;
    }
    Ok(removed)
}

/// Runs `future` to its end from the blocking pool (where the sink's state lives), on the
/// runtime the sink runs in, or on one of its own when there is none.
fn block_on<F: Future>(future: F) -> Result<F::Output> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(future)),
        Err(_) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("<the object store's runtime>", e))?;
            Ok(runtime.block_on(future))
        }
    }
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Harmless: the spool directory goes at the end of the run, or the next run's start.
        Err(e) => tracing::debug!(path = %path.display(), "could not remove a spool file: {e}"),
    }
}

/// A sink's spool: `<temp dir>/chatlake-spool/<pipeline>-<sink>-<pid>`, made at the start of a
/// run and removed when the sink is dropped. A killed run leaves its spool behind; the next
/// start of any sink removes the spools of processes that are gone.
struct Spool {
    dir: PathBuf,
}

impl Spool {
    fn create(pipeline: &str, sink: &str) -> Result<Spool> {
        let root = std::env::temp_dir().join(SPOOL_DIR);
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        remove_dead_spools(&root);
        let dir = root.join(format!("{pipeline}-{sink}-{}", std::process::id()));
        // Left by an earlier process with this pid (pids are reused): it is gone.
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Spool { dir })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), "could not remove the spool directory: {e}");
        }
    }
}

/// Removes the spool directories under `root` whose process (the number after the last `-`)
/// is gone. Failures are only logged: another process may be removing them too.
fn remove_dead_spools(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed the spool of a process that is gone")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), "could not remove the spool of a process that is gone: {e}")
            }
        }
    }
}

/// Whether process `pid` runs. Known on Linux (`/proc`); elsewhere every process is taken to
/// run, so no spool is removed from under its owner (a dead one's stays until a reboot clears
/// the temporary directory).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

#[cfg(test)]
mod tests;
