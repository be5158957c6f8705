//! [`DeltaSink`]: windows written as Parquet data files into the table directory, then made
//! part of the table by one Delta commit each, exactly once.
//!
//! The ledger is the commit point, as for every sink (spec section 4):
//!
//! 1. `write`: rows stream into the window's data files ([`crate::data_files`]: Hive directories
//!    of the partition columns, the sink's Parquet encoding), invisible to readers, who see only
//!    files the log lists.
//! 2. `commit`: the files are finished and a journal of the window ([`crate::journal`]) is
//!    written: its files' add actions and the version of its transaction. The ledger then
//!    records the window.
//! 3. `publish` (after the ledger): one Delta commit adds the files, removes the window's files
//!    of an earlier load and rewrites the files holding rows this window replaces (keep-latest
//!    dedupe across runs), with a `txn` action `chatlake/<pipeline>.<sink>/<window>` at the
//!    journal's version. A commit is retried (reloading the table) until it is in; the `txn`
//!    tells a retry, or a later process, that it already is.
//! 4. `start` of the next run rolls forward every journal whose window the ledger lists (killed
//!    between 2 and 3) and deletes the files and journal of every other (killed before the
//!    ledger recorded it).
//!
//! So a window is in the table at most once (its `txn`), and at least once if the ledger has it
//! (the roll forward): the ledger and the table never disagree after a restart.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use async_trait::async_trait;
use chatlake_core::config::StorageOptions;
use chatlake_core::removal::{Removal, RemovalLog};
use chatlake_core::stage::SinkLocation;
use chatlake_core::{Batch, Sink, SinkContext, WindowRef};
use chatlake_store::Location;
use deltalake::DeltaTable;
use deltalake::kernel::schema::cast::cast_record_batch;
use object_store::ObjectStoreExt as _;
use parquet::file::properties::WriterProperties;

use crate::data_files::{DataFiles, FilesAt};
use crate::error::{Error, Result};
use crate::files::{TableFile, files_of, tag};
use crate::journal::{Journal, Journals};
use crate::rewrite;
use crate::table::{self, Change, Committed, Operation};

/// Everything a delta sink is built from; no I/O has happened yet.
#[derive(Debug, Clone)]
pub struct TableOptions {
    /// As the pipeline file gives it.
    pub path: PathBuf,
    pub location: Location,
    pub partition_by: Vec<String>,
    pub properties: WriterProperties,
    pub target_file_size: Option<u64>,
    pub storage: StorageOptions,
    pub pipeline: String,
    pub sink: String,
}

/// A Delta Lake table sink.
pub struct DeltaSink {
    options: TableOptions,
    /// `<pipeline>.<sink>`: the writer tag of its files and the prefix of its `txn` app ids.
    writer: String,
    shown: String,
    journals: Journals,
    /// Opened by `start`; loaded once the table exists.
    table: Option<DeltaTable>,
    /// The data files of the windows being written; made by `start`. With the spool of a
    /// table in an object store, dropped after it.
    files: Option<DataFiles>,
    spool: Option<chatlake_lake::Spool>,
    /// The table's columns as Arrow types them, once this run has checked or created it.
    table_schema: Option<arrow::datatypes::SchemaRef>,
    /// Journals `commit` wrote, waiting for `publish`.
    committed: HashMap<String, Journal>,
    /// `<state_dir>/<pipeline>`, where removal logs are.
    pipeline_dir: Option<PathBuf>,
}

impl DeltaSink {
    pub fn new(options: TableOptions) -> Self {
        let writer = format!("{}.{}", options.pipeline, options.sink);
        let shown = options.path.display().to_string();
        DeltaSink {
            journals: Journals::new(&writer, &shown),
            writer,
            shown,
            options,
            table: None,
            files: None,
            spool: None,
            table_schema: None,
            committed: HashMap::new(),
            pipeline_dir: None,
        }
    }

    fn app_id(&self, window: &str) -> String {
        format!("chatlake/{}/{window}", self.writer)
    }

    fn table(&mut self) -> Result<&mut DeltaTable> {
        let shown = self.shown.clone();
        self.table.as_mut().ok_or_else(|| Error::Table {
            table: shown,
            message: "the sink was not started".into(),
        })
    }

    fn delta(&self, source: deltalake::DeltaTableError) -> Error {
        Error::Delta {
            table: self.shown.clone(),
            source: Box::new(source),
        }
    }

    async fn write_batch(&mut self, batch: Batch) -> Result<()> {
        if batch.data.num_rows() == 0 {
            return Ok(());
        }
        let key = batch.window.key();
        let (partition_by, shown) = (self.options.partition_by.clone(), self.shown.clone());
        if self.table_schema.is_none() {
            let table = self.table()?;
            table::ensure_created(table, &batch.data.schema(), &partition_by, &shown).await?;
            let schema = table::arrow_schema(table, &shown)?;
            self.table_schema = Some(schema);
        }
        // The rows as the table types them (its timestamps are microseconds); a batch whose
        // columns the table lacks is refused.
        let target = self.table_schema.clone().expect("set above");
        let data =
            cast_record_batch(&batch.data, target, false, false).map_err(|e| Error::Table {
                table: shown.clone(),
                message: format!("the rows do not fit the table's schema: {e}"),
            })?;
        let mut files = self.files.take().ok_or_else(|| Error::Table {
            table: shown.clone(),
            message: "the sink was not started".into(),
        })?;
        // Encoding is CPU work (the Parquet encoder's threads do most of it): off the runtime.
        let (files, written) = tokio::task::spawn_blocking(move || {
            let written = files.write(&key, &data);
            (files, written)
        })
        .await
        .map_err(|e| Error::Table {
            table: shown,
            message: format!("the data file writer panicked: {e}"),
        })?;
        self.files = Some(files);
        written
    }

    async fn commit_window(&mut self, window: &WindowRef, cx: &SinkContext) -> Result<()> {
        let key = window.key();
        let mut adds = match &mut self.files {
            Some(files) => files.finish_window(&key).await?,
            None => Vec::new(),
        };
        for add in &mut adds {
            tag(add, &self.writer, &key);
        }
        let table_exists = self.table()?.version().is_some();
        if adds.is_empty() && !table_exists {
            return Ok(());
        }
        let journal = Journal {
            window: key.clone(),
            run_id: cx.run.run_id.clone(),
            // Microseconds since the epoch: greater than any earlier load's version of the
            // window, so a reload is a new transaction and a replay of this one is not.
            version: chrono::Utc::now().timestamp_micros(),
            adds,
        };
        let table = self.table.as_ref().expect("checked above");
        self.journals.write(table, &journal).await?;
        self.committed.insert(key, journal);
        Ok(())
    }

    /// Makes the window's journal one Delta commit (see the module comment); nothing if the
    /// table has it already or it has no journal.
    async fn publish_key(&mut self, key: &str) -> Result<Option<Committed>> {
        let journal = match self.committed.remove(key) {
            Some(journal) => journal,
            None => {
                self.table()?;
                let table = self.table.as_ref().expect("checked above");
                let Some(journal) = self.journals.read(table, key).await? else {
                    return Ok(None);
                };
                journal
            }
        };
        let committed = self.publish_journal(&journal).await?;
        let table = self.table.as_ref().expect("publish_journal loaded it");
        self.journals.delete(table, key).await?;
        Ok(Some(committed))
    }

    async fn publish_journal(&mut self, journal: &Journal) -> Result<Committed> {
        let app_id = self.app_id(&journal.window);
        let (writer, shown) = (self.writer.clone(), self.shown.clone());
        let properties = self.options.properties.clone();
        let removals = self.removals_by(journal)?;
        let partition_by = self.options.partition_by.clone();
        let table = self.table()?;
        table.update_state().await.map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?;
        if table::txn_version(table, &app_id)
            .await
            .map_err(|source| Error::Delta {
                table: shown.clone(),
                source: Box::new(source),
            })?
            .is_some_and(|v| v >= journal.version)
        {
            return Ok(Committed::Already);
        }
        // The window's files of an earlier load leave in the same commit.
        let added: HashSet<&str> = journal.adds.iter().map(|a| a.path.as_str()).collect();
        let mut removes: HashSet<String> = files_of(
            table,
            &writer,
            Some(&HashSet::from([journal.window.clone()])),
        )
        .map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?
        .into_iter()
        .map(|f| f.path)
        .filter(|p| !added.contains(p.as_str()))
        .collect();
        // Rows this window replaces leave their earlier windows' files in the same commit.
        let mut adds = journal.adds.clone();
        let mut must_remove = HashSet::new();
        for removal in removals.iter().filter(|r| r.window != journal.window) {
            let files = files_of(
                table,
                &writer,
                Some(&HashSet::from([removal.window.clone()])),
            )
            .map_err(|source| Error::Delta {
                table: shown.clone(),
                source: Box::new(source),
            })?;
            let rewrite =
                rewrite::without_rows(table, &files, &removal.keys, &properties, &shown).await?;
            adds.extend(rewrite.adds);
            removes.extend(rewrite.replaced.iter().cloned());
            must_remove.extend(rewrite.replaced);
        }
        let change = Change {
            app_id,
            version: journal.version,
            adds,
            removes,
            must_remove,
            operation: Operation::Append,
        };
        let committed =
            table::commit(table, &change, &partition_by, &shown, &journal.window).await?;
        if let Committed::Version(version) = committed {
            tracing::debug!(table = %shown, window = %journal.window, version, "window committed to the table");
        }
        Ok(committed)
    }

    /// The rows the window of `journal` replaces, from its run's removal logs (durable before
    /// any window of that run committed, see `chatlake_core::removal`).
    fn removals_by(&self, journal: &Journal) -> Result<Vec<Removal>> {
        let Some(dir) = &self.pipeline_dir else {
            return Ok(Vec::new());
        };
        let core = |e: chatlake_core::Error| Error::Table {
            table: self.shown.clone(),
            message: format!("cannot read the removal logs: {e}"),
        };
        let by = HashMap::from([(journal.window.clone(), journal.run_id.clone())]);
        let mut out = Vec::new();
        for file in RemovalLog::new(dir).logs().map_err(core)? {
            if file.run_id == journal.run_id {
                out.extend(file.read(&by).map_err(core)?);
            }
        }
        Ok(out)
    }

    async fn start_table(&mut self, cx: &SinkContext) -> Result<()> {
        self.pipeline_dir = Some(cx.owner.dir.clone());
        let table = table::open(&self.options.location, &self.options.storage, &self.shown).await?;
        self.table = Some(table);
        let at = match &self.options.location {
            Location::Local(dir) => FilesAt::Table(dir.clone()),
            Location::Object(object) => {
                let store = chatlake_store::Store::open(object, &self.options.storage).map_err(
                    |source| Error::Store {
                        table: self.shown.clone(),
                        source,
                    },
                )?;
                let spool =
                    chatlake_lake::Spool::create(&cx.run.pipeline, &cx.name).map_err(|e| {
                        Error::Table {
                            table: self.shown.clone(),
                            message: e.to_string(),
                        }
                    })?;
                let dir = spool.dir().to_path_buf();
                self.spool = Some(spool);
                FilesAt::Spool { dir, store }
            }
        };
        self.files = Some(DataFiles::new(
            at,
            self.options.properties.clone(),
            self.options.partition_by.clone(),
            self.options.target_file_size,
            self.shown.clone(),
        ));
        if self.table()?.version().is_none() {
            return Ok(());
        }
        let table = self.table.as_ref().expect("opened above");
        let windows = self.journals.windows(table).await?;
        for window in windows {
            if cx.committed.contains(&window) {
                if let Some(Committed::Version(version)) = self.publish_key(&window).await? {
                    tracing::info!(table = %self.shown, window = %window, version, "rolled forward a window the ledger has and the table lacked");
                }
                continue;
            }
            // A worker of a sharded run settles only windows it began itself: another worker's
            // window the ledger does not list yet may be in flight (see `leftovers_only_of`).
            if cx
                .leftovers_only_of
                .as_ref()
                .is_some_and(|own| !own.contains(&window))
            {
                continue;
            }
            // Not in the ledger: its files never were in the table unless an earlier publish
            // got in (then the table keeps them until the window is loaded again).
            let table = self.table.as_ref().expect("opened above");
            let Some(journal) = self.journals.read(table, &window).await? else {
                continue;
            };
            let published = table::txn_version(table, &self.app_id(&window))
                .await
                .map_err(|e| self.delta(e))?
                .is_some_and(|v| v >= journal.version);
            if !published {
                for add in &journal.adds {
                    let file = TableFile {
                        path: add.path.clone(),
                        partition_values: HashMap::new(),
                        tags: None,
                    };
                    match table.object_store().delete(&file.object_path()).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(source) => {
                            return Err(Error::Object {
                                table: self.shown.clone(),
                                source,
                            });
                        }
                    }
                }
                tracing::info!(table = %self.shown, window = %window, files = journal.adds.len(), "deleted the files of a window the ledger does not have");
            }
            self.journals.delete(table, &window).await?;
        }
        Ok(())
    }

    /// One commit removing every file of `windows`; returns how many files left.
    async fn drop_files(&mut self, windows: &HashSet<String>, app: &str) -> Result<u64> {
        let (writer, shown) = (self.writer.clone(), self.shown.clone());
        let partition_by = self.options.partition_by.clone();
        let app_id = self.app_id(app);
        let table = self.table()?;
        if table.version().is_none() {
            return Ok(0);
        }
        table.update_state().await.map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?;
        let files = files_of(table, &writer, Some(windows)).map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?;
        if files.is_empty() {
            return Ok(0);
        }
        let n = files.len() as u64;
        let change = Change {
            app_id,
            version: chrono::Utc::now().timestamp_micros(),
            adds: Vec::new(),
            removes: files.into_iter().map(|f| f.path).collect(),
            must_remove: HashSet::new(),
            operation: Operation::Delete,
        };
        table::commit(table, &change, &partition_by, &shown, app).await?;
        Ok(n)
    }

    async fn remove(&mut self, removal: &Removal) -> Result<u64> {
        let (writer, shown) = (self.writer.clone(), self.shown.clone());
        let properties = self.options.properties.clone();
        let partition_by = self.options.partition_by.clone();
        let app_id = self.app_id(&format!("remove/{}", removal.window));
        let table = self.table()?;
        if table.version().is_none() {
            return Ok(0);
        }
        table.update_state().await.map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?;
        let files = files_of(
            table,
            &writer,
            Some(&HashSet::from([removal.window.clone()])),
        )
        .map_err(|source| Error::Delta {
            table: shown.clone(),
            source: Box::new(source),
        })?;
        // Rows already gone (taken out when the replacing window was published) are not found:
        // nothing is written.
        let rewrite =
            rewrite::without_rows(table, &files, &removal.keys, &properties, &shown).await?;
        if rewrite.replaced.is_empty() {
            return Ok(0);
        }
        let change = Change {
            app_id,
            version: chrono::Utc::now().timestamp_micros(),
            adds: rewrite.adds,
            removes: rewrite.replaced.clone(),
            must_remove: rewrite.replaced,
            operation: Operation::Delete,
        };
        table::commit(table, &change, &partition_by, &shown, &removal.window).await?;
        Ok(rewrite.rows_removed)
    }
}

fn core_error(cx: &SinkContext, e: Error) -> chatlake_core::Error {
    chatlake_core::Error::component(&cx.name, e)
}

#[async_trait]
impl Sink for DeltaSink {
    fn location(&self) -> Option<SinkLocation> {
        // The table's data files are Parquet: no Parquet sink may write into its directory.
        Some(SinkLocation {
            path: self.options.path.clone(),
            extension: "parquet".into(),
        })
    }

    fn destination(&self) -> Option<String> {
        Some(format!("{} (Delta table)", self.shown))
    }

    async fn start(&mut self, cx: &SinkContext) -> chatlake_core::Result<()> {
        self.start_table(cx).await.map_err(|e| core_error(cx, e))
    }

    async fn write(&mut self, batch: Batch, cx: &SinkContext) -> chatlake_core::Result<()> {
        self.write_batch(batch).await.map_err(|e| core_error(cx, e))
    }

    async fn commit(&mut self, window: &WindowRef, cx: &SinkContext) -> chatlake_core::Result<()> {
        self.commit_window(window, cx)
            .await
            .map_err(|e| core_error(cx, e))
    }

    async fn publish(&mut self, window: &WindowRef, cx: &SinkContext) -> chatlake_core::Result<()> {
        self.publish_key(&window.key())
            .await
            .map(|_| ())
            .map_err(|e| core_error(cx, e))
    }

    async fn abort(&mut self, window: &WindowRef, _cx: &SinkContext) -> chatlake_core::Result<()> {
        // Its files were never in a journal or the log.
        if let Some(files) = &mut self.files {
            files.abort_window(&window.key());
        }
        Ok(())
    }

    async fn drop_windows(
        &mut self,
        keys: &HashSet<String>,
        cx: &SinkContext,
    ) -> chatlake_core::Result<u64> {
        self.drop_files(keys, "drop")
            .await
            .map_err(|e| core_error(cx, e))
    }

    fn removes_rows(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    async fn remove_rows(
        &mut self,
        removal: &Removal,
        cx: &SinkContext,
    ) -> chatlake_core::Result<u64> {
        self.remove(removal).await.map_err(|e| core_error(cx, e))
    }
}
