//! [`FileSink`]: a [`Sink`] that writes any [`FileFormat`] in the lake layout of spec section 4.
//!
//! Files are keyed by (window, partition directory). Rows go to `part-….<ext>.tmp`; `commit`
//! of a window finishes and fsyncs its files, renames each to its final name and fsyncs the
//! directories; `abort` deletes them; `remove_rows` rewrites committed files without some rows
//! ([`crate::remove`]). Encoding and file I/O run on tokio's blocking pool, so the async workers
//! that move batches between stages never wait on a disk.
//!
//! A `path` in an object store is written the same way into a local spool; `commit` then
//! stages the window's files as uploads no reader sees, `publish` (once the ledger lists the
//! window) completes them, and `remove_rows` rewrites objects (see [`crate::object`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use chatlake_core::durable::sync_dir;
use chatlake_core::metrics::ComponentMetrics;
use chatlake_core::removal::Removal;
use chatlake_core::stage::{CommitRest, RunInfo, SinkLocation, StateOwner};
use chatlake_core::{Batch, Sink, SinkContext, Window, WindowRef};
use chatlake_store::{Location, StorageOptions};

use crate::error::{Error, Result};
use crate::format::{FileFormat, FormatWriter};
use crate::layout::{FileKey, LakeOptions, file_name, file_prefix, for_each_file, window_key_of};
use crate::object::ObjectLake;

/// The rest of a window's commit into an object store: its upload (see [`crate::object`]).
type CommitUpload = Box<dyn FnOnce() -> Result<()> + Send>;
use crate::partition::Partitioner;

/// Writes batches of any [`FileFormat`] into Hive partitions under [`LakeOptions::path`],
/// committing each window atomically.
pub struct FileSink<F: FileFormat> {
    /// Taken while a blocking task works on it; `None` afterwards only if that task panicked.
    state: Option<State<F>>,
}

impl<F: FileFormat> FileSink<F> {
    /// A sink writing `format` as `options` say. Does no I/O.
    pub fn new(format: F, options: LakeOptions) -> Self {
        FileSink {
            state: Some(State {
                format,
                options,
                partitioner: None,
                cleaned: false,
                listed: HashSet::new(),
                reload_files: HashMap::new(),
                reload_object_windows: HashSet::new(),
                windows: HashMap::new(),
                memory_budget: MEMORY_BUDGET_BYTES,
                storage: StorageOptions::default(),
                object: None,
            }),
        }
    }

    /// How to reach the object store when [`LakeOptions::path`] is an object-store URL (the
    /// sink's `storage` table over the pipeline's; the environment fills in the rest). Does no
    /// I/O: the store is opened and checked by `start`.
    pub fn with_storage(mut self, storage: StorageOptions) -> Self {
        if let Some(state) = self.state.as_mut() {
            state.storage = storage;
        }
        self
    }

    /// Sets what the open files may buffer in memory together (default [`MEMORY_BUDGET_BYTES`]).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        if let Some(state) = self.state.as_mut() {
            state.memory_budget = bytes;
        }
        self
    }

    /// Runs `work` on the blocking pool with the sink's state and turns its error into the
    /// core's, naming the sink.
    async fn run<R: Send + 'static>(
        &mut self,
        cx: &SinkContext,
        work: impl FnOnce(&mut State<F>, &RunCx) -> Result<R> + Send + 'static,
    ) -> chatlake_core::Result<R> {
        let mut state = self.state.take().ok_or_else(|| {
            chatlake_core::Error::component(&cx.name, "the file writer panicked earlier")
        })?;
        let run = RunCx {
            sink: cx.name.clone(),
            run: cx.run.clone(),
            metrics: cx.metrics.clone(),
        };
        let (state, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut state, &run);
            (state, result)
        })
        .await
        .map_err(|e| {
            chatlake_core::Error::component(&cx.name, format!("the file writer panicked: {e}"))
        })?;
        self.state = Some(state);
        result.map_err(|e| chatlake_core::Error::component(&cx.name, e))
    }
}

#[async_trait]
impl<F: FileFormat> Sink for FileSink<F> {
    fn location(&self) -> Option<SinkLocation> {
        let state = self.state.as_ref()?;
        Some(SinkLocation {
            path: state.options.path.clone(),
            extension: state.format.extension().to_string(),
        })
    }

    async fn start(&mut self, cx: &SinkContext) -> chatlake_core::Result<()> {
        let ledger = Ledger {
            committed: cx.committed.clone(),
            reloading: cx.reloading.clone(),
            owner: cx.owner.clone(),
            leftovers_only_of: cx.leftovers_only_of.clone(),
        };
        self.run(cx, move |state, run| state.start(run, Some(&ledger)))
            .await
    }

    async fn drop_windows(
        &mut self,
        keys: &HashSet<String>,
        cx: &SinkContext,
    ) -> chatlake_core::Result<u64> {
        let keys = keys.clone();
        self.run(cx, move |state, run| state.drop_windows(&keys, run))
            .await
    }

    async fn write(&mut self, batch: Batch, cx: &SinkContext) -> chatlake_core::Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.run(cx, move |state, run| state.write(batch, run))
            .await
    }

    async fn commit(&mut self, window: &WindowRef, cx: &SinkContext) -> chatlake_core::Result<()> {
        let window = window.clone();
        self.run(cx, move |state, run| state.commit(&window, run))
            .await
    }

    async fn begin_commit(
        &mut self,
        window: &WindowRef,
        cx: &SinkContext,
    ) -> chatlake_core::Result<Option<CommitRest>> {
        let window = window.clone();
        let Some(upload) = self
            .run(cx, move |state, run| state.begin_commit(&window, run))
            .await?
        else {
            return Ok(None);
        };
        let name = cx.name.clone();
        Ok(Some(Box::pin(async move {
            tokio::task::spawn_blocking(upload)
                .await
                .map_err(|e| {
                    chatlake_core::Error::component(&name, format!("an upload panicked: {e}"))
                })?
                .map_err(|e| chatlake_core::Error::component(&name, e))
        })))
    }

    async fn publish(&mut self, window: &WindowRef, cx: &SinkContext) -> chatlake_core::Result<()> {
        let window = window.clone();
        self.run(cx, move |state, run| state.publish(&window, run))
            .await
    }

    async fn abort(&mut self, window: &WindowRef, cx: &SinkContext) -> chatlake_core::Result<()> {
        let window = window.clone();
        self.run(cx, move |state, run| {
            state.abort(&window, run);
            Ok(())
        })
        .await
    }

    async fn finish(&mut self, cx: &SinkContext) -> chatlake_core::Result<()> {
        self.run(cx, |state, run| state.finish(run)).await
    }

    fn destination(&self) -> Option<String> {
        let state = self.state.as_ref()?;
        Some(match &state.object {
            Some(lake) => lake.url(),
            None => state.options.location().map_or_else(
                |_| state.options.path.display().to_string(),
                |l| l.to_string(),
            ),
        })
    }

    fn removes_rows(&self) -> std::result::Result<(), String> {
        match &self.state {
            Some(state) => state.format.filters_rows(),
            None => Err("the file writer panicked earlier".into()),
        }
    }

    async fn remove_rows(
        &mut self,
        removal: &Removal,
        cx: &SinkContext,
    ) -> chatlake_core::Result<u64> {
        let removal = removal.clone();
        self.run(cx, move |state, run| state.remove_rows(&removal, run))
            .await
    }
}

/// What [`Sink::start`] learns of the ledger: which windows' files are legitimate, and whose.
struct Ledger {
    committed: Arc<HashSet<String>>,
    reloading: Arc<HashSet<String>>,
    owner: Arc<StateOwner>,
    /// See [`SinkContext::leftovers_only_of`].
    leftovers_only_of: Option<Arc<HashSet<String>>>,
}

/// What the blocking work needs of the [`SinkContext`].
struct RunCx {
    sink: String,
    run: Arc<RunInfo>,
    metrics: Arc<ComponentMetrics>,
}

struct State<F> {
    format: F,
    options: LakeOptions,
    /// Built from the first batch's schema.
    partitioner: Option<Partitioner>,
    /// Stale temporary files were removed.
    cleaned: bool,
    /// Windows whose files belong in the lake when the run started (committed or reloading):
    /// a commit of one of them that fails part-way leaves what it renamed, as removing it would
    /// leave the window with no files.
    listed: HashSet<String>,
    /// The files, found at start, of each window waiting to be loaded again: replaced when the
    /// window commits again (those its new files do not overwrite are deleted).
    reload_files: HashMap<String, Vec<PathBuf>>,
    /// In an object store: windows reset for reloading, whose objects the next commit of the
    /// window replaces (locally `reload_files` holds their files).
    reload_object_windows: HashSet<String>,
    /// Uncommitted files by window key.
    windows: HashMap<String, WindowFiles>,
    /// What open files may buffer in memory together.
    memory_budget: usize,
    /// How to reach the object store of an object-store `path`.
    storage: StorageOptions,
    /// Set by `start` when `path` is in an object store: files are written to its spool (which
    /// `options.path` then names) and uploaded at each window's commit.
    object: Option<ObjectLake>,
}

/// The uncommitted files of one window.
struct WindowFiles {
    window: WindowRef,
    partitions: BTreeMap<String, PartitionFiles>,
    /// Written into an object store's spool: see [`PartitionFiles::spooled`].
    spooled: bool,
}

/// The uncommitted files of one window in one partition directory.
#[derive(Default)]
struct PartitionFiles {
    open: Option<OpenFile>,
    /// Finished (fsynced) files waiting for the commit.
    finished: Vec<FinishedFile>,
    /// Files being finished on threads of their own (see [`finish_in_background`]).
    finishing: Vec<(PathBuf, std::thread::JoinHandle<Result<FinishedFile>>)>,
    next_part: u32,
    /// Its files are in an object store's spool: the upload makes them durable, so they are
    /// not fsynced (a killed run's spool is removed, not read; fsync cost the sink's thread a
    /// wait per file).
    spooled: bool,
}

impl PartitionFiles {
    /// Waits for the files being finished in the background; the first error, after waiting for
    /// all of them.
    fn wait_for_finishing(&mut self) -> Result<()> {
        let mut first_error = None;
        for (tmp, finishing) in self.finishing.drain(..) {
            match finishing.join() {
                Ok(Ok(file)) => self.finished.push(file),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Write {
                        path: tmp,
                        source: "the thread finishing the file panicked".into(),
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

struct OpenFile {
    writer: Box<dyn FormatWriter>,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
    /// When it was last written to (a counter), to finish the least recent first.
    last_write: u64,
    /// Not fsynced when finished: see [`PartitionFiles::spooled`].
    spooled: bool,
}

struct FinishedFile {
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
    bytes: u64,
}

/// Open files per sink. Each open file costs its encoder state (a Parquet writer holds a zstd
/// context per column, about 1.3 MB each), so a 31-day window partitioned by date would keep 31
/// writers alive; past this many the least recently written file is finished early (it stays
/// temporary until its window commits, and a later row of its partition starts a new part).
/// Provider windows arrive in time order, so date partitions are written one after another.
pub const MAX_OPEN_FILES: usize = 4;

/// Orders writes, so the least recently written open file can be found.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the open files of one sink may hold in memory together before the largest are flushed.
/// A window spans many partitions (a 31-day window has 31 `sent_date` files open at once), and a
/// Parquet writer keeps a whole row group in memory, so without a budget memory would grow
/// with the window's volume.
pub const MEMORY_BUDGET_BYTES: usize = 64 << 20;

impl<F: FileFormat> State<F> {
    /// Claims the sink's path for the run's state directory ([`crate::owner`]), then removes
    /// what an interrupted run left under it; see [`reconcile`]. Every deletion is logged at
    /// WARN, with a sample of names.
    fn start(&mut self, cx: &RunCx, ledger: Option<&Ledger>) -> Result<()> {
        let prefix = file_prefix(&cx.run.pipeline, &cx.sink);
        if self.object.is_none()
            && let Location::Object(location) = self.options.location()?
        {
            // Objects of windows waiting to be loaded again stay, as files do. A worker of a
            // sharded run deletes only its own leftovers, below: the other workers' windows
            // the ledger does not list may be theirs, in flight.
            let shared = ledger.and_then(|l| l.leftovers_only_of.clone());
            let keep: Option<HashSet<String>> = ledger.map(|l| {
                l.committed
                    .iter()
                    .chain(l.reloading.iter())
                    .cloned()
                    .collect()
            });
            let lake = ObjectLake::start(
                &location,
                &self.storage,
                &cx.run.pipeline,
                &cx.sink,
                &prefix,
                self.format.extension(),
                keep.as_ref()
                    .zip(ledger)
                    .map(|(committed, l)| crate::object::LedgerView {
                        committed,
                        reloading: &l.reloading,
                        worker_leftovers: shared.as_deref(),
                    }),
            )?;
            if let Some(own) = shared.filter(|own| !own.is_empty()) {
                let removed = lake.delete_windows(&own, |_| true)?;
                if removed > 0 {
                    tracing::warn!(
                        sink = %cx.sink,
                        url = %lake.url(),
                        removed,
                        "removed objects of windows this worker began and did not commit (left by an interrupted run)"
                    );
                }
            }
            // From here on the sink writes as into a local lake, in the spool.
            self.options.path = lake.spool().to_path_buf();
            self.object = Some(lake);
            if let Some(ledger) = ledger {
                self.listed = ledger.committed.as_ref().clone();
                self.reload_object_windows = ledger.reloading.as_ref().clone();
            }
            self.cleaned = true;
            return Ok(());
        }
        if let Some(ledger) = ledger {
            crate::owner::claim(
                &self.options.path,
                &cx.run.pipeline,
                &cx.sink,
                &ledger.owner,
            )?;
        }
        let found = reconcile(
            &self.options.path,
            &prefix,
            self.format.extension(),
            ledger.map(|l| (&*l.committed, &*l.reloading)),
            ledger.and_then(|l| l.leftovers_only_of.as_deref()),
        )?;
        if !found.temporary.is_empty() || !found.uncommitted.is_empty() {
            let sample: Vec<&str> = found
                .uncommitted
                .iter()
                .chain(&found.temporary)
                .take(5)
                .map(String::as_str)
                .collect();
            tracing::warn!(
                sink = %cx.sink,
                path = %self.options.path.display(),
                temporary = found.temporary.len(),
                uncommitted = found.uncommitted.len(),
                sample = %sample.join(", "),
                "removed files of windows the ledger does not list (left by an interrupted run)"
            );
        }
        if let Some(ledger) = ledger {
            self.listed = ledger.committed.as_ref().clone();
        }
        self.reload_files = found.reloading;
        self.cleaned = true;
        Ok(())
    }

    /// Deletes the committed files of windows `keys`; see [`Sink::drop_windows`].
    fn drop_windows(&mut self, keys: &HashSet<String>, cx: &RunCx) -> Result<u64> {
        if let Some(lake) = &mut self.object {
            let aborted = lake.abort_staged(keys)?;
            if aborted > 0 {
                tracing::warn!(
                    sink = %cx.sink,
                    uploads = aborted,
                    "aborted the staged uploads of windows the ledger does not list"
                );
            }
            let removed = lake.delete_windows(keys, |_| true)?;
            if removed > 0 {
                tracing::warn!(
                    sink = %cx.sink,
                    objects = removed,
                    "deleted objects of windows the ledger no longer lists"
                );
            }
            return Ok(removed);
        }
        let prefix = file_prefix(&cx.run.pipeline, &cx.sink);
        let extension = self.format.extension().to_string();
        let mut removed = Vec::new();
        for_each_file(&self.options.path, |path, name| {
            if window_key_of(name, &prefix, &extension).is_some_and(|k| keys.contains(k)) {
                remove_file(&path)?;
                removed.push(path);
            }
            Ok(())
        })?;
        for key in keys {
            self.reload_files.remove(key);
            self.listed.remove(key);
        }
        sync_parents(&removed)?;
        if !removed.is_empty() {
            tracing::info!(
                sink = %cx.sink,
                windows = keys.len(),
                files = removed.len(),
                "removed the files of windows the ledger no longer lists"
            );
        }
        Ok(removed.len() as u64)
    }

    /// Finishes the least recently written open files until at most [`MAX_OPEN_FILES`] remain.
    fn keep_open_files_few(&mut self) -> Result<()> {
        loop {
            let mut open = 0;
            let mut oldest: Option<(u64, &mut PartitionFiles)> = None;
            for part in self
                .windows
                .values_mut()
                .flat_map(|w| w.partitions.values_mut())
            {
                if let Some(f) = &part.open {
                    open += 1;
                    if oldest.as_ref().is_none_or(|(t, _)| f.last_write < *t) {
                        oldest = Some((f.last_write, part));
                    }
                }
            }
            if open <= MAX_OPEN_FILES {
                return Ok(());
            }
            let Some((_, part)) = oldest else {
                return Ok(());
            };
            if let Some(file) = part.open.take() {
                finish_in_background(part, file)?;
            }
        }
    }

    /// Flushes the open files with the most buffered bytes until they hold at most half the
    /// budget (half, so the next writes do not trigger a flush each).
    fn keep_within_budget(&mut self) -> Result<()> {
        let mut open: Vec<(usize, &mut OpenFile)> = self
            .windows
            .values_mut()
            .flat_map(|w| w.partitions.values_mut())
            .filter_map(|p| p.open.as_mut())
            .map(|f| (f.writer.buffered_bytes(), f))
            .collect();
        let mut total: usize = open.iter().map(|(b, _)| b).sum();
        if total <= self.memory_budget {
            return Ok(());
        }
        open.sort_by_key(|(b, _)| std::cmp::Reverse(*b));
        for (bytes, file) in open {
            if total <= self.memory_budget / 2 {
                break;
            }
            file.writer.flush_buffer().map_err(|source| Error::Write {
                path: file.tmp.clone(),
                source,
            })?;
            total -= bytes;
        }
        Ok(())
    }

    fn write(&mut self, batch: Batch, cx: &RunCx) -> Result<()> {
        if !self.cleaned {
            // Driven without `start` (a sink used on its own): at least clear temporary files.
            self.start(cx, None)?;
        }
        let partitioner = match &self.partitioner {
            Some(p) => {
                p.check(&batch.data)?;
                p
            }
            None => self.partitioner.insert(Partitioner::new(
                batch.data.schema(),
                &self.options.partition_by,
            )?),
        };
        let schema = partitioner.data_schema().clone();
        for (dir, rows) in partitioner.split(&batch.data)? {
            let files = self
                .windows
                .entry(batch.window.key())
                .or_insert_with(|| WindowFiles {
                    window: batch.window.clone(),
                    partitions: BTreeMap::new(),
                    spooled: self.object.is_some(),
                });
            let spooled = files.spooled;
            let part = files
                .partitions
                .entry(dir.clone())
                .or_insert_with(|| PartitionFiles {
                    spooled,
                    ..PartitionFiles::default()
                });
            // A directory shortened from a long partition value has a column more: the
            // whole value (see `partition`).
            let schema = if rows.num_columns() == schema.fields().len() {
                schema.clone()
            } else {
                rows.schema()
            };
            part.append(
                rows,
                &dir,
                &batch.window,
                &schema,
                &self.format,
                &self.options,
                cx,
            )?;
        }
        self.keep_open_files_few()?;
        self.keep_within_budget()
    }

    /// Commits `window` whole: see [`State::begin_commit`].
    fn commit(&mut self, window: &Window, cx: &RunCx) -> Result<()> {
        match self.begin_commit(window, cx)? {
            Some(upload) => upload(),
            None => Ok(()),
        }
    }

    /// Finishes the window's files and renames them into place (a local lake: the whole
    /// commit). In an object store, returns what is left: staging the files, which needs
    /// nothing more of the sink's state, so the sink may write the next window meanwhile.
    fn begin_commit(&mut self, window: &Window, cx: &RunCx) -> Result<Option<CommitUpload>> {
        let key = window.key();
        let listed = self.listed.contains(&key);
        // No rows of this window reached the sink: nothing to rename (a reloaded window that
        // now has no rows here still replaces its earlier files, below).
        let committed = match self.windows.remove(&key) {
            None => Vec::new(),
            Some(mut files) => match files.commit(&self.options.path, listed, cx) {
                Ok(paths) => paths,
                Err(e) => {
                    files.discard();
                    return Err(e);
                }
            },
        };
        // The window was loaded before and reset: its new files replaced those of the same
        // names; the earlier ones the new commit did not overwrite (another partition, a part
        // number it did not reach) go too, or the window would hold old rows beside new ones.
        if let Some(old) = self.reload_files.remove(&key) {
            let stale: Vec<PathBuf> = old.into_iter().filter(|p| !committed.contains(p)).collect();
            for path in &stale {
                remove_file(path)?;
            }
            sync_parents(&stale)?;
            tracing::info!(
                sink = %cx.sink,
                window = %window,
                removed = stale.len(),
                "a window reset for reloading is committed again; its earlier files are replaced"
            );
        }
        match &mut self.object {
            // In the store, the window is staged, invisible, until `publish`; its objects
            // replace all its earlier ones when it was in the ledger already (loaded again, or
            // reset for reloading).
            Some(lake) => {
                let replaces = listed || self.reload_object_windows.remove(&key);
                let stager = lake.stager();
                let sink = cx.sink.clone();
                Ok(Some(Box::new(move || {
                    stager.stage(&committed, &sink, &key, replaces)
                })))
            }
            None => Ok(None),
        }
    }

    /// Makes a committed window's staged objects visible; see [`Sink::publish`]. A local lake
    /// renamed its files into place at the commit already.
    fn publish(&mut self, window: &Window, cx: &RunCx) -> Result<()> {
        match &mut self.object {
            Some(lake) => lake.publish(&cx.sink, &window.key()),
            None => Ok(()),
        }
    }

    fn abort(&mut self, window: &Window, cx: &RunCx) {
        if let Some(files) = self.windows.remove(&window.key()) {
            let removed = files.discard();
            tracing::info!(sink = %cx.sink, window = %window, removed, "aborted window; removed its temporary files");
        }
    }

    /// Takes rows out of committed files. Needs neither the partitioner nor a `start`: it may
    /// come before the first write, so the layout comes from the options and the files.
    fn remove_rows(&mut self, removal: &Removal, cx: &RunCx) -> Result<u64> {
        let prefix = file_prefix(&cx.run.pipeline, &cx.sink);
        if !self.cleaned && self.options.location()?.is_object() {
            // Before any `start` (a sink used on its own): the store is opened here.
            self.start(cx, None)?;
        }
        let removed = match &self.object {
            Some(lake) => {
                lake.remove_rows(&self.format, &self.options.partition_by, &prefix, removal)?
            }
            None => crate::remove::remove_rows(&self.format, &self.options, &prefix, removal)?,
        };
        if removed.rows > 0 {
            tracing::info!(
                sink = %cx.sink,
                window = %removal.window,
                rewritten = removed.rewritten,
                deleted = removed.deleted,
                rows = removed.rows,
                "removed rows a later run replaced"
            );
        } else {
            tracing::debug!(sink = %cx.sink, window = %removal.window, "no rows to remove were in the files");
        }
        Ok(removed.rows)
    }

    fn finish(&mut self, cx: &RunCx) -> Result<()> {
        // The runtime commits or aborts every window before `finish`; whatever is still here
        // arrived outside any window's commit, and the trait says to commit it.
        let mut keys: Vec<String> = self.windows.keys().cloned().collect();
        keys.sort();
        for key in keys {
            if let Some(files) = self.windows.get(&key) {
                let window = files.window.clone();
                tracing::warn!(sink = %cx.sink, window = %window, "committing a window at the end of input");
                self.commit(&window, cx)?;
            }
        }
        Ok(())
    }
}

impl<F> Drop for State<F> {
    /// A sink dropped with uncommitted files (the run failed) removes them; a killed process
    /// leaves them for the next run's cleanup.
    fn drop(&mut self) {
        for (_, files) in self.windows.drain() {
            files.discard();
        }
    }
}

impl PartitionFiles {
    /// Appends rows, finishing a file and starting the next whenever one is full.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        mut rows: RecordBatch,
        dir: &str,
        window: &Window,
        schema: &SchemaRef,
        format: &dyn FileFormat,
        options: &LakeOptions,
        cx: &RunCx,
    ) -> Result<()> {
        let max = options.max_rows_per_file.unwrap_or(u64::MAX);
        while rows.num_rows() > 0 {
            let open = match &mut self.open {
                Some(open) => open,
                None => {
                    let mut file =
                        open_file(format, options, schema, window, dir, self.next_part, cx)?;
                    file.spooled = self.spooled;
                    self.next_part += 1;
                    self.open.insert(file)
                }
            };
            let room = max - open.rows;
            let n = (rows.num_rows() as u64).min(room) as usize;
            open.writer
                .write(&rows.slice(0, n))
                .map_err(|source| Error::Write {
                    path: open.tmp.clone(),
                    source,
                })?;
            open.rows += n as u64;
            open.last_write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rows = rows.slice(n, rows.num_rows() - n);
            if open.rows >= max
                && let Some(full) = self.open.take()
            {
                finish_in_background(self, full)?;
            }
        }
        Ok(())
    }
}

impl WindowFiles {
    /// Finishes every file, renames each into place and fsyncs the directories; returns the
    /// files' final paths. On error the caller discards what is left; files already renamed are
    /// deleted here unless the window is `listed` (its renamed files then replaced the window's
    /// own earlier ones, and deleting them would leave it with nothing).
    fn commit(&mut self, root: &Path, listed: bool, cx: &RunCx) -> Result<Vec<PathBuf>> {
        // The files still open are finished side by side.
        for part in self.partitions.values_mut() {
            if let Some(open) = part.open.take() {
                finish_in_background(part, open)?;
            }
        }
        let mut first_error = None;
        for part in self.partitions.values_mut() {
            if let Err(e) = part.wait_for_finishing() {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut committed = Vec::new();
        let renamed = self.rename_all(&mut committed);
        let synced = renamed.and_then(|()| {
            if self.spooled {
                Ok(())
            } else {
                sync_parents_within(root, &committed)
            }
        });
        if let Err(e) = synced {
            if !listed {
                // A window that failed must not show in the lake until the next run's start.
                let mut removed = 0;
                for f in &committed {
                    if fs::remove_file(&f.path).is_ok() {
                        removed += 1;
                    }
                }
                tracing::warn!(
                    sink = %cx.sink,
                    window = %self.window,
                    removed,
                    "the window's commit failed part-way; removed the files it had renamed"
                );
            }
            return Err(e);
        }
        let (mut rows, mut bytes) = (0, 0);
        for f in &committed {
            cx.metrics.add_file(f.bytes);
            rows += f.rows;
            bytes += f.bytes;
        }
        tracing::info!(
            sink = %cx.sink,
            window = %self.window,
            files = committed.len(),
            rows,
            bytes,
            "committed window"
        );
        Ok(committed.into_iter().map(|f| f.path).collect())
    }

    /// Renames every finished file into place, into `committed`; stops at the first error,
    /// leaving the rest as temporary files for [`WindowFiles::discard`].
    fn rename_all(&mut self, committed: &mut Vec<FinishedFile>) -> Result<()> {
        for part in self.partitions.values_mut() {
            let mut pending = std::mem::take(&mut part.finished).into_iter();
            while let Some(f) = pending.next() {
                if let Err(e) = fs::rename(&f.tmp, &f.path) {
                    let path = f.path.clone();
                    part.finished.push(f);
                    part.finished.extend(pending);
                    return Err(Error::io(path, e));
                }
                committed.push(f);
            }
        }
        Ok(())
    }
}

/// Fsyncs the directories of `files` up to `root` (the renames, and any directory created for
/// them, are durable only then).
fn sync_parents_within(root: &Path, files: &[FinishedFile]) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let mut dir = f.path.parent();
        while let Some(d) = dir {
            if !dirs.insert(d.to_path_buf()) || d == root || !d.starts_with(root) {
                break;
            }
            dir = d.parent();
        }
    }
    for dir in &dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Deletes `path` (already gone is fine).
fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Fsyncs the directories that held `removed` files, so a deletion survives a power cut.
fn sync_parents(removed: &[PathBuf]) -> Result<()> {
    let dirs: BTreeSet<&Path> = removed.iter().filter_map(|p| p.parent()).collect();
    for dir in dirs {
        match sync_dir(dir) {
            Ok(()) => {}
            // A directory left empty may be gone (nothing removes them today, but a user may).
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl WindowFiles {
    /// Drops the writers and deletes every temporary file; returns how many were deleted.
    fn discard(self) -> usize {
        let mut removed = 0;
        let mut remove = |tmp: &Path| match fs::remove_file(tmp) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Harmless for readers (no data extension); the next run's cleanup retries it.
            Err(e) => tracing::warn!(
                window = %self.window,
                path = %tmp.display(),
                "could not remove a temporary file: {e}"
            ),
        };
        for mut part in self.partitions.into_values() {
            if let Some(open) = part.open.take() {
                drop(open.writer);
                remove(&open.tmp);
            }
            // A file that failed to finish has removed its temporary file itself.
            let _ = part.wait_for_finishing();
            for f in part.finished {
                remove(&f.tmp);
            }
        }
        removed
    }
}

fn open_file(
    format: &dyn FileFormat,
    options: &LakeOptions,
    schema: &SchemaRef,
    window: &Window,
    dir: &str,
    part: u32,
    cx: &RunCx,
) -> Result<OpenFile> {
    let directory = if dir.is_empty() {
        options.path.clone()
    } else {
        options.path.join(dir)
    };
    fs::create_dir_all(&directory).map_err(|e| Error::io(&directory, e))?;
    let name = file_name(&FileKey {
        pipeline: &cx.run.pipeline,
        sink: &cx.sink,
        run_id: &cx.run.run_id,
        window,
        partition: dir,
        part,
        extension: format.extension(),
    });
    let tmp = directory.join(format!("{name}.tmp"));
    let path = directory.join(name);
    // `create_new`: two writers on one name (two sinks sharing a path and format) fail loudly
    // instead of interleaving bytes.
    let file = File::create_new(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let writer = match format.create(file, schema.clone()) {
        Ok(w) => w,
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Write { path: tmp, source });
        }
    };
    tracing::debug!(sink = %cx.sink, window = %window, path = %tmp.display(), "opened file");
    Ok(OpenFile {
        writer,
        tmp,
        path,
        rows: 0,
        last_write: 0,
        spooled: false,
    })
}

/// Finishes `file` (closed to keep few files open, full, or at its window's commit) on a thread
/// of its own: its last row group is encoded and compressed, its footer written and the file
/// fsynced while this thread goes on with the files still open (Zoom, 1M rows: 60–90 ms of the
/// sink's thread, which bounds the second phase of `keep = "latest"`). The window's commit
/// waits for it. If no thread can be started, the file is finished here.
fn finish_in_background(part: &mut PartitionFiles, file: OpenFile) -> Result<()> {
    let tmp = file.tmp.clone();
    let file = std::sync::Arc::new(std::sync::Mutex::new(Some(file)));
    let theirs = file.clone();
    let started = std::thread::Builder::new()
        .name("chatlake-finish".into())
        .spawn(move || {
            let file = theirs
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .expect("handed over once");
            finish_file(file)
        });
    match started {
        Ok(finishing) => part.finishing.push((tmp, finishing)),
        Err(_) => {
            let file = file
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .expect("the thread never started");
            part.finished.push(finish_file(file)?);
        }
    }
    Ok(())
}

/// Finishes a file's encoding and fsyncs it (unless spooled); on error removes it.
fn finish_file(open: OpenFile) -> Result<FinishedFile> {
    let OpenFile {
        writer,
        tmp,
        path,
        rows,
        spooled,
        ..
    } = open;
    let synced = writer
        .finish()
        .map_err(|source| Error::Write {
            path: tmp.clone(),
            source,
        })
        .and_then(|file| {
            if !spooled {
                file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            }
            file.metadata().map_err(|e| Error::io(&tmp, e))
        });
    match synced {
        Ok(meta) => Ok(FinishedFile {
            tmp,
            path,
            rows,
            bytes: meta.len(),
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// What [`reconcile`] removed and found, by file name (removed) or path (kept).
#[derive(Debug, Default)]
struct Reconciled {
    temporary: Vec<String>,
    uncommitted: Vec<String>,
    /// Files of windows waiting to be loaded again, by window key: kept.
    reloading: HashMap<String, Vec<PathBuf>>,
}

/// Removes this sink's temporary files (`part-….<extension>.tmp`: only this format's, as a sink
/// of another format may share the directory and be writing right now) and, when the ledger's
/// `(committed, reloading)` windows are given, its data files of windows it lists as neither:
/// both are leftovers of a run that stopped before its commit point. Files of windows waiting
/// to be loaded again are kept (and listed). Files of other sinks and pipelines (other prefixes)
/// are never touched. `only_of` (a worker of a sharded run) limits both removals to the files of
/// those windows: the lake's other uncommitted files may be other workers', being written.
fn reconcile(
    root: &Path,
    prefix: &str,
    extension: &str,
    ledger: Option<(&HashSet<String>, &HashSet<String>)>,
    only_of: Option<&HashSet<String>>,
) -> Result<Reconciled> {
    let tmp_suffix = format!(".{extension}.tmp");
    let mut found = Reconciled::default();
    for_each_file(root, |path, name| {
        if !name.starts_with(prefix) {
            return Ok(());
        }
        if let Some(own) = only_of {
            let data_name = name.strip_suffix(".tmp").unwrap_or(name);
            if !window_key_of(data_name, prefix, extension).is_some_and(|w| own.contains(w)) {
                // Another worker's, or a committed window's: only reloading files are listed.
                if let (Some((_, reloading)), Some(window)) =
                    (ledger, window_key_of(name, prefix, extension))
                    && reloading.contains(window)
                {
                    found
                        .reloading
                        .entry(window.to_string())
                        .or_default()
                        .push(path);
                }
                return Ok(());
            }
        }
        if name.ends_with(&tmp_suffix) {
            remove_file(&path)?;
            found.temporary.push(name.to_string());
        } else if let (Some((committed, reloading)), Some(window)) =
            (ledger, window_key_of(name, prefix, extension))
        {
            if reloading.contains(window) {
                found
                    .reloading
                    .entry(window.to_string())
                    .or_default()
                    .push(path);
            } else if !committed.contains(window) {
                remove_file(&path)?;
                found.uncommitted.push(name.to_string());
            }
        }
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests;
