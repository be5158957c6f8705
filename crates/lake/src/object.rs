//! A file sink's lake in an object store (S3 and S3-compatible servers, Google Cloud Storage,
//! Azure; spec section 5), where there is no rename to make a finished file appear at once.
//!
//! [`crate::FileSink`] writes exactly as into a local lake, but into a spool directory of its
//! own on local disk ([`Spool`]), so memory stays flat whatever a window holds. The commit
//! protocol:
//!
//! 1. a window's rows go to `.tmp` files in the spool; nothing of it is in the store;
//! 2. the window's commit finishes its files and stages each as a multipart upload of its
//!    final key, `<prefix>/<partition directories>/<the same file name>`, whose parts are all
//!    sent but which is not completed, so no reader sees it ([`chatlake_store::Store::stage`]);
//!    the window's journal, `_chatlake_staged/<file prefix><window key>.json`, lists the upload
//!    ids before the parts go and the parts' ids once they are in;
//! 3. the ledger stays the commit point: the window is listed once every sink committed it;
//! 4. then the runtime calls `publish`, which completes the window's uploads (each object
//!    appears whole, at once) and deletes its journal;
//! 5. a run killed before its ledger commit leaves journals of windows the ledger does not
//!    list: the next start aborts their uploads; killed after it, journals of committed windows:
//!    the next start completes them (roll forward). Objects of uncommitted windows can no
//!    longer appear, but a start still deletes any (the same names, the same rule:
//!    [`window_key_of`]), as a local lake's start removes files of uncommitted windows;
//! 6. rows a later run replaces: each object is downloaded to the spool, filtered by the format,
//!    and uploaded over its own key (a PUT replaces an object atomically) or deleted.
//!
//! The sink's state runs on tokio's blocking pool, so the store's requests are driven from
//! there with [`block_on`].

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chatlake_core::removal::Removal;
use chatlake_store::{ObjectLocation, ObjectPath, PutMode, StagedUpload, StorageOptions, Store};
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

/// Below a sink's location: the journals of staged windows (see the module's protocol). No
/// data extension, so no reader's glob sees them.
pub const STAGED_DIR: &str = "_chatlake_staged";

/// Requests of one window in flight at once (starting, completing, deleting uploads), and the
/// most files of a window uploaded at once. A window spans a file per partition (31 for a month
/// by day), mostly small, and each request is a round trip to the store: one after another,
/// they were most of the time a window's commit took.
const REQUESTS_IN_FLIGHT: usize = 16;

/// What the files of a window being uploaded at once may hold in memory, in KiB: as four large
/// files hold ([`chatlake_store::PART_BYTES`] × (parts in flight + 1) each), which many small
/// files share (a file holds at most its size).
const UPLOAD_BUDGET_KIB: u32 =
    (4 * chatlake_store::PART_BYTES * (chatlake_store::PARTS_IN_FLIGHT + 1) / 1024) as u32;

/// What uploading a file of `bytes` holds in memory at most, in KiB (at least 1).
fn upload_weight_kib(bytes: u64) -> u32 {
    let most = (chatlake_store::PART_BYTES * (chatlake_store::PARTS_IN_FLIGHT + 1)) as u64;
    (bytes.min(most).div_ceil(1024)).max(1) as u32
}

/// A sink's object store, opened and cleaned at the start of a run, with its spool.
pub(crate) struct ObjectLake {
    store: Store,
    spool: Spool,
    /// This sink's file names start with it and end with `extension`.
    prefix: String,
    extension: String,
    /// Windows committed (staged) and not yet published, by key; shared with the [`Stager`]s
    /// uploading windows while the sink writes the next.
    staged: Arc<Mutex<HashMap<String, StagedWindow>>>,
}

/// What uploads a committed window's spool files (step 2 of the protocol) and hands them to
/// the sink's [`ObjectLake`] to publish: its own, so a window's upload runs while the sink
/// writes the next window's rows (the runtime's `Sink::begin_commit`).
#[derive(Clone)]
pub(crate) struct Stager {
    store: Store,
    /// The sink's spool directory, where the files are.
    spool: PathBuf,
    prefix: String,
    extension: String,
    staged: Arc<Mutex<HashMap<String, StagedWindow>>>,
}

/// The staged uploads of one window, and its journal.
struct StagedWindow {
    journal: ObjectPath,
    uploads: Vec<StagedUpload>,
    /// Its objects replace every earlier object of the window (it was committed before).
    replaces: bool,
}

/// A window's journal (`_chatlake_staged/…json`): what a later run needs to finish or undo the
/// window's uploads.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    window: String,
    replaces: bool,
    /// Every upload started, `(key, upload id)`; written before any part is sent.
    started: Vec<(String, String)>,
    /// Written once every part is in: the uploads, ready to complete.
    staged: Option<Vec<StagedUpload>>,
}

/// What a sink's start knows of the ledger (see [`ObjectLake::start`]).
pub(crate) struct LedgerView<'a> {
    /// The windows whose objects belong in the lake: committed or waiting to be reloaded.
    pub committed: &'a HashSet<String>,
    /// Those of them waiting to be loaded again.
    pub reloading: &'a HashSet<String>,
    /// For a worker of a sharded run: the windows it began and did not finish, the only ones
    /// whose leftovers it may remove.
    pub worker_leftovers: Option<&'a HashSet<String>>,
}

impl ObjectLake {
    /// Opens the store at `location` and makes it ready for this run of sink `sink`, whose
    /// files' names start with `prefix` and end with `extension`: checks that the bucket is
    /// there and the credentials may list, write and delete (a missing bucket fails the run
    /// here, naming the URL and what the store answered, not in the middle of a window); aborts
    /// the multipart uploads a killed run left; makes the spool; and when `ledger` is given,
    /// settles what a killed run left staged and deletes this sink's objects of windows it does
    /// not list. `ledger`: the windows whose objects belong in the lake (committed or waiting to be
    /// reloaded) and those of them waiting to be loaded again. Staged windows (journals) the
    /// ledger lists as committed and not waiting are published (roll forward), the others'
    /// uploads aborted — only those of `ledger.worker_leftovers` for a worker of a sharded run.
    pub(crate) fn start(
        location: &ObjectLocation,
        storage: &StorageOptions,
        pipeline: &str,
        sink: &str,
        prefix: &str,
        extension: &str,
        ledger: Option<LedgerView<'_>>,
    ) -> Result<ObjectLake> {
        let store = Store::open(location, storage)?;
        let owned = |key: &ObjectPath| key.filename().is_some_and(|n| n.starts_with(prefix));
        // Side by side: each is a round trip or more, before the first row can be written. The
        // check's answer comes first (a missing bucket fails the others too, less clearly).
        let (checked, aborted, stale) = block_on(async {
            futures::join!(
                store.check(),
                store.abort_unfinished_uploads_of(owned),
                store.remove_stale_probes(STALE_PROBE_AGE)
            )
        })?;
        checked?;
        let aborted = aborted?;
        stale?;
        if aborted > 0 {
            tracing::warn!(
                sink,
                url = %location,
                aborted,
                "aborted multipart uploads an interrupted run left unfinished"
            );
        }
        let spool = Spool::create(pipeline, sink)?;
        let lake = ObjectLake {
            store,
            spool,
            prefix: prefix.to_string(),
            extension: extension.to_string(),
            staged: Arc::new(Mutex::new(HashMap::new())),
        };
        if let Some(LedgerView {
            committed,
            reloading,
            worker_leftovers,
        }) = ledger
        {
            lake.settle_journals(sink, committed, reloading, worker_leftovers)?;
            // A worker of a sharded run deletes only its own leftovers (its caller does):
            // objects of windows no ledger of its lists may be another worker's, just published.
            if worker_leftovers.is_none() {
                remove_uncommitted(&lake.store, sink, prefix, extension, committed)?;
            }
        }
        Ok(lake)
    }

    /// The key a spool file goes to (see [`key_of`]).
    #[cfg(test)]
    fn key_of(&self, path: &Path) -> Result<ObjectPath> {
        key_of(&self.store, &self.spool.dir, path)
    }

    /// A stager of this sink's windows.
    pub(crate) fn stager(&self) -> Stager {
        Stager {
            store: self.store.clone(),
            spool: self.spool.dir.clone(),
            prefix: self.prefix.clone(),
            extension: self.extension.clone(),
            staged: Arc::clone(&self.staged),
        }
    }

    /// The staged windows, by key (a stager that panicked poisons nothing worth refusing).
    fn staged(&self) -> std::sync::MutexGuard<'_, HashMap<String, StagedWindow>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What an interrupted run left staged: windows the ledger lists as committed (and not
    /// waiting to be loaded again) are published, every other journal's uploads are aborted —
    /// for a worker of a sharded run (`worker_leftovers`: the windows it began and did not
    /// finish) only its own: another worker's journal may be a window it is committing now.
    fn settle_journals(
        &self,
        sink: &str,
        committed: &HashSet<String>,
        reloading: &HashSet<String>,
        worker_leftovers: Option<&HashSet<String>>,
    ) -> Result<()> {
        for meta in block_on(self.store.list(STAGED_DIR))?? {
            let owned = meta
                .location
                .filename()
                .is_some_and(|n| n.starts_with(&self.prefix) && n.ends_with(".json"));
            if !owned {
                continue;
            }
            let Some((bytes, _)) = block_on(self.store.read(&meta.location))?? else {
                continue;
            };
            let journal: Journal = match serde_json::from_slice(&bytes) {
                Ok(j) => j,
                Err(e) => {
                    // Journals are written whole (one PUT), so this is not ours to read.
                    tracing::warn!(sink, journal = %meta.location, "ignoring an unreadable journal: {e}");
                    continue;
                }
            };
            let listed =
                committed.contains(&journal.window) && !reloading.contains(&journal.window);
            match journal.staged {
                Some(uploads) if listed => {
                    let staged = StagedWindow {
                        journal: meta.location.clone(),
                        uploads,
                        // Whatever else of the window is there belongs to an earlier load.
                        replaces: true,
                    };
                    self.stager()
                        .publish_staged(sink, &journal.window, &staged)?;
                    tracing::warn!(
                        sink,
                        window = %journal.window,
                        "published a committed window an interrupted run had not published"
                    );
                }
                _ if worker_leftovers.is_some_and(|own| !own.contains(&journal.window)) => {}
                _ => {
                    let aborted = journal.started.len();
                    for (key, id) in &journal.started {
                        let key = ObjectPath::parse(key.as_str())
                            .unwrap_or_else(|_| ObjectPath::from(key.as_str()));
                        block_on(self.store.abort_staged(&key, id))??;
                    }
                    block_on(self.store.delete(&meta.location))??;
                    tracing::warn!(
                        sink,
                        window = %journal.window,
                        uploads = aborted,
                        "aborted the staged uploads of a window the ledger does not list (an interrupted run staged them)"
                    );
                }
            }
        }
        Ok(())
    }

    /// The local directory the sink writes its files in before they are uploaded.
    pub(crate) fn spool(&self) -> &Path {
        &self.spool.dir
    }

    /// Publishes a staged window (step 4 of the protocol): completes its uploads, then, when it
    /// replaces an earlier load, deletes the window's other objects, then forgets its journal.
    /// A window not staged here (no rows reached the sink, or published already) has nothing
    /// to publish. On failure the journal stays, and the next run's start publishes it.
    pub(crate) fn publish(&mut self, sink: &str, window: &str) -> Result<()> {
        let Some(staged) = self.staged().remove(window) else {
            return Ok(());
        };
        if staged.uploads.is_empty() && !staged.replaces {
            return Ok(());
        }
        self.stager().publish_staged(sink, window, &staged)
    }

    /// Aborts what is staged of the windows `keys` (committed by this sink, never listed by the
    /// ledger); returns how many uploads went.
    pub(crate) fn abort_staged(&mut self, keys: &HashSet<String>) -> Result<u64> {
        let mut aborted = 0;
        for key in keys {
            let Some(staged) = self.staged().remove(key) else {
                continue;
            };
            for upload in &staged.uploads {
                block_on(
                    self.store
                        .abort_staged(&upload.object_key(), &upload.upload_id),
                )??;
                aborted += 1;
            }
            block_on(self.store.delete(&staged.journal))??;
        }
        Ok(aborted)
    }

    /// Deletes this sink's objects of the windows `keys` that `also` accepts; returns how many.
    pub(crate) fn delete_windows(
        &self,
        keys: &HashSet<String>,
        also: impl Fn(&ObjectPath) -> bool,
    ) -> Result<u64> {
        self.stager().delete_windows(keys, also)
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
impl Stager {
    fn publish_staged(&self, sink: &str, window: &str, staged: &StagedWindow) -> Result<()> {
        let completed: Vec<std::result::Result<bool, chatlake_store::StoreError>> = block_on(
            futures::stream::iter(staged.uploads.iter().map(|u| self.store.complete_staged(u)))
                .buffered(REQUESTS_IN_FLIGHT)
                .collect(),
        )?;
        let mut bytes = 0;
        for (upload, done) in staged.uploads.iter().zip(completed) {
            if !done? {
                tracing::warn!(
                    sink,
                    window,
                    object = %upload.key,
                    "a staged upload of a committed window is gone (aborted from outside); its rows are missing"
                );
            }
            bytes += upload.bytes;
        }
        tracing::info!(
            sink,
            window,
            url = %self.store.location(),
            objects = staged.uploads.len(),
            bytes,
            "published window"
        );
        if staged.replaces {
            let published: HashSet<&str> = staged.uploads.iter().map(|u| u.key.as_str()).collect();
            let stale = self.delete_windows(&HashSet::from([window.to_string()]), |key| {
                !published.contains(key.as_ref())
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
        block_on(self.store.delete(&staged.journal))??;
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

    /// Stages the committed files of one window from the spool (step 2 of the protocol):
    /// starts a multipart upload per file, journals their ids, sends every part, journals the
    /// parts, and deletes the spool files. Nothing is visible until [`ObjectLake::publish`]. If
    /// anything fails, the window's uploads are aborted and its journal deleted (best effort: the
    /// next run's start aborts what a journal still lists, as the ledger will not list the
    /// window), and its spool files deleted.
    /// `replaces`: the window is in the ledger already (loaded again, or reset for reloading):
    /// its objects then replace every earlier object of the window when it is published.
    pub(crate) fn stage(
        &self,
        files: &[PathBuf],
        sink: &str,
        window: &str,
        replaces: bool,
    ) -> Result<()> {
        let staged = self.stage_files(files, window, replaces);
        files.iter().for_each(|p| remove_quietly(p));
        let (journal, uploads) = staged?;
        let bytes: u64 = uploads.iter().map(|u| u.bytes).sum();
        tracing::debug!(
            sink,
            window,
            url = %self.store.location(),
            objects = uploads.len(),
            bytes,
            "staged window"
        );
        self.staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                window.to_string(),
                StagedWindow {
                    journal,
                    uploads,
                    replaces,
                },
            );
        Ok(())
    }

    fn stage_files(
        &self,
        files: &[PathBuf],
        window: &str,
        replaces: bool,
    ) -> Result<(ObjectPath, Vec<StagedUpload>)> {
        let journal = journal_key(&self.store, &self.prefix, window);
        if files.is_empty() && !replaces {
            return Ok((journal, Vec::new()));
        }
        let keys = files
            .iter()
            .map(|path| key_of(&self.store, &self.spool, path))
            .collect::<Result<Vec<ObjectPath>>>()?;
        // Several files of the window go at once: each is a round trip or more to the store,
        // and a window spans a file per partition (31 for a month by day).
        let ids: Vec<std::result::Result<String, chatlake_store::StoreError>> = block_on(
            futures::stream::iter(keys.iter().map(|key| self.store.start_staged(key)))
                .buffered(REQUESTS_IN_FLIGHT)
                .collect(),
        )?;
        let mut started = Vec::with_capacity(keys.len());
        let mut first_error = None;
        for (key, id) in keys.iter().zip(ids) {
            match id {
                Ok(id) => started.push((key.clone(), id)),
                Err(e) => {
                    first_error.get_or_insert(Error::from(e));
                }
            }
        }
        let write_journal = |staged: Option<Vec<StagedUpload>>| -> Result<()> {
            let body = Journal {
                window: window.to_string(),
                replaces,
                started: started
                    .iter()
                    .map(|(k, id)| (k.as_ref().to_string(), id.clone()))
                    .collect(),
                staged,
            };
            let bytes = serde_json::to_vec(&body).map_err(|e| Error::ObjectKey {
                path: PathBuf::from(journal.as_ref()),
                message: e.to_string(),
            })?;
            block_on(self.store.write(&journal, bytes.into(), PutMode::Overwrite))??;
            Ok(())
        };
        let abort_all = || {
            for (key, id) in &started {
                if let Ok(Err(e)) = block_on(self.store.abort_staged(key, id)) {
                    tracing::warn!(window, "could not abort an upload of a failed window: {e}");
                }
            }
            let _ = block_on(self.store.delete(&journal));
        };
        if first_error.is_none()
            && let Err(e) = write_journal(None)
        {
            first_error = Some(e);
        }
        if let Some(e) = first_error {
            abort_all();
            return Err(e);
        }
        // Many small files go at once, a few large ones: each takes its share of the budget
        // before it reads anything.
        let budget = tokio::sync::Semaphore::new(UPLOAD_BUDGET_KIB as usize);
        let sent: Vec<std::result::Result<StagedUpload, chatlake_store::StoreError>> = block_on(
            futures::stream::iter(files.iter().zip(&started).map(|(path, (key, id))| {
                let weight = upload_weight_kib(fs::metadata(path).map_or(u64::MAX, |m| m.len()));
                let budget = &budget;
                async move {
                    let _held = budget
                        .acquire_many(weight)
                        .await
                        .expect("the budget is never closed");
                    self.store.stage(path, key, id).await
                }
            }))
            .buffered(REQUESTS_IN_FLIGHT)
            .collect(),
        )?;
        let mut uploads = Vec::with_capacity(sent.len());
        for result in sent {
            match result {
                Ok(upload) => uploads.push(upload),
                Err(e) => {
                    first_error.get_or_insert(Error::from(e));
                }
            }
        }
        if first_error.is_none()
            && let Err(e) = write_journal(Some(uploads.clone()))
        {
            first_error = Some(e);
        }
        if let Some(e) = first_error {
            abort_all();
            return Err(e);
        }
        Ok((journal, uploads))
    }
}

/// The key a spool file goes to: the same path below the location as below the spool.
/// Built with [`ObjectPath::parse`], which keeps the text as it is: a Hive-escaped value
/// (`%3A`) must reach the store as written, not escaped again.
fn key_of(store: &Store, spool: &Path, path: &Path) -> Result<ObjectPath> {
    let bad = |message: String| Error::ObjectKey {
        path: path.to_path_buf(),
        message,
    };
    let relative = path
        .strip_prefix(spool)
        .map_err(|_| bad("not in the spool directory".into()))?;
    let mut parts: Vec<&str> = Vec::new();
    let prefix = store.location().prefix().as_ref();
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

/// The journal of `window`'s staged uploads in `store`, for a sink whose files start with
/// `prefix`.
fn journal_key(store: &Store, prefix: &str, window: &str) -> ObjectPath {
    store.key(&format!("{STAGED_DIR}/{prefix}{window}.json"))
}

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
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Makes the spool of sink `sink` of `pipeline` for this process (removing those of
    /// processes that are gone).
    pub fn create(pipeline: &str, sink: &str) -> Result<Spool> {
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

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
